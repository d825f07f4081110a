"""Interval energy from cumulative registers: the one path every protocol uses.

A meter that captures cumulative registers (DLMS ``1.0.x.8.*``, a Modbus energy counter, an
MQTT "total" field) measures an interval as the advance between two readings. Getting that
wrong is the worst error a CGM can make (a register stored as an hour's energy is off by
orders of magnitude), so it lives in one tested place, shared by the DLMS, Modbus and MQTT
drivers and by ``cgm.collection.derive`` (hourly intervals from register snapshots).

API
---
``Reading(at, value)``
    One register value at an instant (for a profile row: the capture time, the interval END).
``rollover_value(digits=None, bits=None, scaler=0, factor=1.0) -> float``
    Where a register wraps, in the caller's units: ``10**digits`` (display digits) or
    ``2**bits`` (data type width) raw counts, times ``10**scaler`` times ``factor``
    (DLMS Wh counts to kWh: ``factor=1e-3``).
``differences(readings, *, period, register_max=None, max_advance=None) -> Differenced``
    Consecutive readings exactly ``period`` apart give one :class:`Advance` each.
``interpolated(readings, *, step=1 h, register_max=None, max_gap=2 h) -> Differenced``
    Readings at arbitrary times (snapshots) give advances between ``step`` boundaries,
    interpolating linearly between readings at most ``max_gap`` apart.
``profile_entries(rows, *, period, register_max=None, channels=None, max_advance=None)
-> (entries, events)``
    Rows of cumulative values (``CumulativeRow(end, values, status)``) become interval
    :class:`~drivers.base.ProfileEntry` objects, per channel; several columns of one channel
    (tariff registers) are differenced one by one and summed. ``register_max`` is one value
    or one per column; ``channels`` maps column keys to channels (default: the keys are
    channels); ``max_advance`` is per channel. An entry's ``rollover`` names the channels
    that wrapped; its ``status`` is the status of the row that closes it.
``Event(kind, at, before, after, key)``, ``EventKind``: ``rollover``, ``reset``, ``gap``,
``invalid``, ``implausible``; ``str(event)`` is a log line.

Rules (each one a test in ``tests/drivers/test_cumulative.py``)
---------------------------------------------------------------
* An advance needs both ends. After a gap (a missing reading, spacing other than
  ``period``) nothing is produced for the interval that ends at the first reading after the
  gap: it is left for validation to estimate, never invented. A :data:`GAP` event says so.
* A register that goes down is a **rollover** when ``register_max`` is known, the previous
  value lies in its top 10 % and the new one in its bottom 10 %: the advance wraps
  (``max − before + after``) and is flagged. Any other drop is a **reset** (meter replaced or
  cleared): no advance across it. Both give an :class:`Event`.
* A value below zero, or at or above ``register_max``, is not a register reading
  (:data:`INVALID`): dropped, so the neighbouring intervals become gaps.
* ``max_advance`` (optional): an advance above it is refused (:data:`IMPLAUSIBLE`).
* No advance is ever negative. Advances are rounded to 6 decimals (1 mWh in kWh units).

Events are returned, not logged: the caller logs them with the meter's name and counts them.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from drivers.base import Channel, ProfileEntry

HOUR = timedelta(hours=1)
ROLLOVER_MARGIN = 0.1  # a drop from the top 10 % of the range to the bottom 10 % is a rollover


@dataclass(frozen=True)
class Reading:
    """A cumulative register value at an instant (aware UTC)."""

    at: datetime
    value: float


@dataclass(frozen=True)
class Advance:
    """The register's advance over ``[start, end)``; ``rollover`` if it wrapped inside."""

    start: datetime
    end: datetime
    value: float
    rollover: bool = False


class EventKind(StrEnum):
    ROLLOVER = "rollover"  # wrapped past register_max: advance produced and flagged
    RESET = "reset"  # went down otherwise: no advance across it
    GAP = "gap"  # readings not one period apart: no advance for that interval
    INVALID = "invalid"  # negative or beyond register_max: reading dropped
    IMPLAUSIBLE = "implausible"  # advance above max_advance: refused


ROLLOVER, RESET, GAP, INVALID, IMPLAUSIBLE = EventKind


@dataclass(frozen=True)
class Event:
    """Something the caller must log and count. ``at`` is the reading after the event."""

    kind: EventKind
    at: datetime
    before: float | None
    after: float | None
    key: Hashable = None  # the column or channel it happened on (set by profile_entries)

    def __str__(self) -> str:
        where = f" {self.key}" if self.key is not None else ""
        return f"{self.kind}{where} at {self.at.isoformat()}: {self.before} -> {self.after}"


@dataclass
class Differenced:
    advances: list[Advance] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


def rollover_value(
    *,
    digits: int | None = None,
    bits: int | None = None,
    scaler: int = 0,
    factor: float = 1.0,
) -> float:
    """The value at which a register wraps to zero, in the caller's units.

    ``digits``: decimal digits of the raw counter (a register shown with 8 digits wraps at
    10**8 counts); ``bits``: width of an unsigned counter (a DLMS double-long-unsigned wraps at
    2**32). Exactly one of the two.
    """
    if (digits is None) == (bits is None):
        raise ValueError("give exactly one of digits or bits")
    counts = 10**digits if digits is not None else 2**bits  # type: ignore[operator]
    if counts <= 1:
        raise ValueError("a register needs at least one digit or bit")
    return float(counts) * 10.0**scaler * factor


def _is_rollover(before: float, after: float, register_max: float | None) -> bool:
    return (
        register_max is not None
        and before >= register_max * (1 - ROLLOVER_MARGIN)
        and after <= register_max * ROLLOVER_MARGIN
    )


def _runs(
    readings: Iterable[Reading], register_max: float | None
) -> tuple[list[list[tuple[datetime, float]]], list[Event]]:
    """Continuous runs of (time, unwrapped value); a reset starts a new run.

    Readings are sorted by time; a second reading at the same instant is ignored.
    """
    runs: list[list[tuple[datetime, float]]] = []
    events: list[Event] = []
    offset = 0.0
    prev: Reading | None = None
    for r in sorted(readings, key=lambda r: r.at):
        if prev is not None and r.at == prev.at:
            continue
        if r.value < 0 or (register_max is not None and r.value >= register_max):
            events.append(Event(INVALID, r.at, None, r.value))
            continue
        if prev is None:
            runs.append([])
        elif r.value < prev.value:
            if _is_rollover(prev.value, r.value, register_max):
                offset += register_max  # type: ignore[operator]
                events.append(Event(ROLLOVER, r.at, prev.value, r.value))
            else:
                events.append(Event(RESET, r.at, prev.value, r.value))
                runs.append([])
                offset = 0.0
        runs[-1].append((r.at, r.value + offset))
        prev = r
    return runs, events


def _wrapped(events: list[Event]) -> list[datetime]:
    return [e.at for e in events if e.kind is ROLLOVER]


def differences(
    readings: Sequence[Reading],
    *,
    period: timedelta,
    register_max: float | None = None,
    max_advance: float | None = None,
) -> Differenced:
    """One advance per pair of consecutive readings exactly ``period`` apart, oldest first."""
    runs, events = _runs(readings, register_max)
    wraps = set(_wrapped(events))
    out = Differenced(events=events)
    for run in runs:  # a reset starts a new run: no advance across it (its RESET event)
        for (t0, v0), (t1, v1) in zip(run, run[1:], strict=False):
            if t1 - t0 != period:
                out.events.append(Event(GAP, t1, v0, v1))
                continue
            value = round(v1 - v0, 6)
            if max_advance is not None and value > max_advance:
                out.events.append(Event(IMPLAUSIBLE, t1, v0, v1))
                continue
            out.advances.append(Advance(t0, t1, value, t1 in wraps))
    out.events.sort(key=lambda e: e.at)
    return out


def interpolated(
    readings: Sequence[Reading],
    *,
    step: timedelta = HOUR,
    register_max: float | None = None,
    max_gap: timedelta = timedelta(hours=2),
) -> Differenced:
    """Advances between ``step`` boundaries (UTC-aligned) from readings at arbitrary times.

    The value at each boundary is interpolated linearly between the readings around it; an
    advance is produced only where both boundaries lie between readings at most ``max_gap``
    apart, within one run (never across a reset). An advance whose boundaries interpolate
    across a rollover is flagged.
    """
    runs, events = _runs(readings, register_max)
    wraps = _wrapped(events)
    ordered = sorted(readings, key=lambda r: r.at)
    # (before, after) reading times around each rollover.
    segments = [
        (max(r.at for r in ordered if r.at < w), w) for w in wraps if any(r.at < w for r in ordered)
    ]
    out = Differenced(events=events)
    seconds = int(step.total_seconds())
    for run in runs:
        if len(run) < 2:
            continue
        t0 = run[0][0]
        start = datetime.fromtimestamp(-(-t0.timestamp() // seconds) * seconds, t0.tzinfo)
        while start + step <= run[-1][0]:
            a, b = _at(run, start, max_gap), _at(run, start + step, max_gap)
            if a is not None and b is not None:
                wrapped = any(t0 < start + step and t1 > start for t0, t1 in segments)
                out.advances.append(Advance(start, start + step, round(b - a, 6), wrapped))
            start += step
    return out


def _at(points: list[tuple[datetime, float]], t: datetime, max_gap: timedelta) -> float | None:
    for (t0, v0), (t1, v1) in zip(points, points[1:], strict=False):
        if t0 <= t <= t1:
            if t1 - t0 > max_gap:
                return None
            if t1 == t0:
                return v0
            return v0 + (v1 - v0) * ((t - t0) / (t1 - t0))
    return None


# --- profile rows ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CumulativeRow:
    """One captured row: its capture time (interval END), register values, status byte.

    ``values`` is keyed by column (a :class:`Channel`, or any key that ``channels`` maps to
    one, e.g. a tariff register). A column absent from a row was not captured in it.
    """

    end: datetime
    values: Mapping[Hashable, float]
    status: int = 0


def profile_entries(
    rows: Sequence[CumulativeRow],
    *,
    period: timedelta,
    register_max: Mapping[Hashable, float | None] | float | None = None,
    channels: Mapping[Hashable, Channel] | None = None,
    max_advance: Mapping[Channel, float] | None = None,
) -> tuple[list[ProfileEntry], list[Event]]:
    """Interval entries from cumulative rows; the oldest row only opens the first interval.

    Each column is differenced on its own (its own rollover); a channel's value is the sum of
    its columns' advances and is present only when every one of its columns has one. An
    entry carries the status of the row that closes it and the channels that rolled over.
    """
    keys: list[Hashable] = []
    for row in rows:
        keys.extend(k for k in row.values if k not in keys)
    channel_of = {k: (channels[k] if channels is not None else k) for k in keys}
    by_channel: dict[Channel, list[Hashable]] = {}
    for k in keys:
        by_channel.setdefault(channel_of[k], []).append(k)  # type: ignore[arg-type]
    events: list[Event] = []
    advances: dict[Hashable, dict[datetime, Advance]] = {}
    for k in keys:
        limit = register_max.get(k) if isinstance(register_max, Mapping) else register_max
        d = differences(
            [Reading(r.end, r.values[k]) for r in rows if k in r.values],
            period=period,
            register_max=limit,
        )
        advances[k] = {a.end: a for a in d.advances}
        events.extend(
            Event(e.kind, e.at, e.before, e.after, k if channels is not None else channel_of[k])
            for e in d.events
        )
    entries: list[ProfileEntry] = []
    for row in sorted({r.end: r for r in rows}.values(), key=lambda r: r.end):
        values: dict[Channel, float] = {}
        rolled: set[Channel] = set()
        for channel, columns in by_channel.items():
            parts = [advances[k].get(row.end) for k in columns]
            if any(p is None for p in parts):
                continue
            value = round(sum(p.value for p in parts), 6)  # type: ignore[union-attr]
            limit = (max_advance or {}).get(channel)
            if limit is not None and value > limit:
                events.append(Event(IMPLAUSIBLE, row.end, None, value, channel))
                continue
            values[channel] = value
            if any(p.rollover for p in parts):  # type: ignore[union-attr]
                rolled.add(channel)
        if values:
            entries.append(
                ProfileEntry(row.end - period, period, values, row.status, frozenset(rolled))
            )
    events.sort(key=lambda e: e.at)
    return entries, events
