"""Hourly intervals from cumulative register snapshots, for meters without a load profile.

The arithmetic (rollover, reset, interpolation to the hour, gaps) is the one cumulative path
every protocol shares, :mod:`drivers.cumulative`; this module only fixes the collector's
choices: hourly steps, snapshots at most two hours apart.

The register value at each hour boundary is interpolated linearly between the snapshots
around it (snapshots are taken a few minutes after the hour), and an interval is the advance
between its two boundaries. Anything not bracketed is a gap for validation to estimate.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from drivers.cumulative import HOUR, Advance, Reading, interpolated

Snapshot = Reading  # Snapshot(read_at, value)
DerivedInterval = Advance


def derive_intervals(
    snapshots: Sequence[Reading],
    *,
    register_max: float | None = None,
    max_gap: timedelta = timedelta(hours=2),
) -> list[Advance]:
    """Hourly intervals (UTC starts) fully bracketed by snapshots, oldest first."""
    return interpolated(snapshots, step=HOUR, register_max=register_max, max_gap=max_gap).advances
