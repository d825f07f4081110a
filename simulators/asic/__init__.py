"""A simulated ASIC reading service (XM): token, upload, status, with fault injection."""

from simulators.asic.server import AsicSimulator

__all__ = ["AsicSimulator"]
