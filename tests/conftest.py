"""Fixtures live in tests/fixtures/; each starts a real service when none is reachable, and
installs the Debian program a test drives when it is missing and it can (debian.py)."""

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.mqtt",
    "tests.fixtures.debian",
    "tests.fixtures.gurux_server",
]
