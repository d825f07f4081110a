"""The consumption portal: the inventory of buildings, units and their meters, the pull API
over settled series, pushes of validated daily consumption and the status report."""
