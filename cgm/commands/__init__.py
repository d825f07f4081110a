"""Command-line sub-commands, one module per area."""
