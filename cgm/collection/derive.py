"""Hourly intervals from cumulative register snapshots, for meters without a load profile.

The register value at each hour boundary is interpolated linearly between the snapshots
around it (snapshots are taken a few minutes after the hour), and an interval is the advance
between its two boundaries. An interval is produced only where both boundaries lie between
snapshots at most ``max_gap`` apart: anything else is a gap for validation to estimate,
never a guess here.

A register that goes down is either a rollover (the previous value was near the register's
maximum, given by the meter map) — the advance wraps — or a reset (meter replaced or cleared):
no interval is derived across a reset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

HOUR = timedelta(hours=1)
ROLLOVER_MARGIN = 0.1  # a drop from the top 10 % of the range to the bottom is a rollover


@dataclass(frozen=True)
class Snapshot:
    read_at: datetime
    value: float


@dataclass(frozen=True)
class DerivedInterval:
    start: datetime
    value: float
    rollover: bool = False


def _unwrap(
    snapshots: Sequence[Snapshot], register_max: float | None
) -> list[list[tuple[datetime, float]]]:
    """Split into continuous runs, adding the register range at each rollover."""
    runs: list[list[tuple[datetime, float]]] = []
    offset = 0.0
    prev: Snapshot | None = None
    for snap in sorted(snapshots, key=lambda s: s.read_at):
        if prev is not None and snap.value < prev.value:
            wrapped = (
                register_max is not None
                and prev.value >= register_max * (1 - ROLLOVER_MARGIN)
                and snap.value <= register_max * ROLLOVER_MARGIN
            )
            if wrapped:
                offset += register_max  # type: ignore[operator]
            else:
                runs.append([])  # reset: start a new run
                offset = 0.0
        if not runs:
            runs.append([])
        runs[-1].append((snap.read_at, snap.value + offset))
        prev = snap
    return runs


def _at(points: list[tuple[datetime, float]], t: datetime, max_gap: timedelta) -> float | None:
    for (t0, v0), (t1, v1) in zip(points, points[1:], strict=False):
        if t0 <= t <= t1:
            if t1 - t0 > max_gap:
                return None
            if t1 == t0:
                return v0
            return v0 + (v1 - v0) * ((t - t0) / (t1 - t0))
    return None


def derive_intervals(
    snapshots: Sequence[Snapshot],
    *,
    register_max: float | None = None,
    max_gap: timedelta = timedelta(hours=2),
) -> list[DerivedInterval]:
    """Hourly intervals (UTC starts) fully bracketed by snapshots, oldest first."""
    out: list[DerivedInterval] = []
    rollovers = _rollover_segments(snapshots, register_max)
    for run in _unwrap(snapshots, register_max):
        if len(run) < 2:
            continue
        first = run[0][0].replace(minute=0, second=0, microsecond=0)
        if first < run[0][0]:
            first += HOUR
        start = first
        while start + HOUR <= run[-1][0]:
            a, b = _at(run, start, max_gap), _at(run, start + HOUR, max_gap)
            if a is not None and b is not None:
                # Flag every interval whose boundaries interpolate across the wrap.
                wrapped = any(t0 < start + HOUR and t1 > start for t0, t1 in rollovers)
                out.append(DerivedInterval(start, round(b - a, 6), wrapped))
            start += HOUR
    return out


def _rollover_segments(
    snapshots: Sequence[Snapshot], register_max: float | None
) -> list[tuple[datetime, datetime]]:
    """(before, after) snapshot times around each rollover."""
    if register_max is None:
        return []
    ordered = sorted(snapshots, key=lambda s: s.read_at)
    return [
        (prev.read_at, cur.read_at)
        for prev, cur in zip(ordered, ordered[1:], strict=False)
        if cur.value < prev.value
        and prev.value >= register_max * (1 - ROLLOVER_MARGIN)
        and cur.value <= register_max * ROLLOVER_MARGIN
    ]
