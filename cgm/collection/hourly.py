"""A meter's profile entries as hourly values: sub-hourly capture periods summed per hour.

Art. 15 allows any capture period up to 60 minutes, so a meter may record every 5, 10, 15
or 30 minutes; the CGM stores hours. Each hour's value is the sum of the entries inside it,
per channel. An hour whose entries do not cover it completely (a hole in the meter's memory,
the oldest hour still held) is stored with what was measured and flagged
:attr:`Quality.PARTIAL`, never padded. The meter's status bytes of the hour are OR-ed.

Entries that cannot be placed in an hour honestly are refused with a reason, never guessed:
a capture period that does not divide the hour or exceeds it, an entry not aligned to its
period, two different entries for the same start.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cgm.storage.quality import Quality
from drivers.base import Channel, ProfileEntry

HOUR = timedelta(hours=1)
_HOUR_S = 3600


@dataclass(frozen=True)
class HourlyValue:
    start: datetime
    channel: Channel
    value: float
    # meter status bits (OR of the hour's entries), REGISTER_ROLLOVER where a cumulative
    # register wrapped, PARTIAL when the entries do not cover the hour
    quality: int


@dataclass(frozen=True)
class RefusedEntry:
    start: datetime
    channel: Channel | None
    value: float | None
    status: int
    reason: str


@dataclass
class Hourly:
    values: list[HourlyValue] = field(default_factory=list)
    refused: list[RefusedEntry] = field(default_factory=list)
    sub_hourly: list[ProfileEntry] = field(default_factory=list)  # the entries summed, for audit


def _flags(e: ProfileEntry, ch: Channel) -> int:
    """The entry's status byte, plus the rollover flag where its register wrapped."""
    wrapped = int(Quality.REGISTER_ROLLOVER) if ch in e.rollover else 0
    return (e.status & 0xFF) | wrapped


def _refuse(out: Hourly, e: ProfileEntry, reason: str) -> None:
    for ch, v in e.values.items():
        out.refused.append(RefusedEntry(e.start, Channel(ch), v, e.status, reason))
    if not e.values:
        out.refused.append(RefusedEntry(e.start, None, None, e.status, reason))


def to_hourly(entries: Sequence[ProfileEntry]) -> Hourly:
    """Hourly values of ``entries`` (hourly entries pass through unchanged)."""
    out = Hourly()
    by_hour: dict[datetime, dict[datetime, ProfileEntry]] = {}
    conflicting: set[datetime] = set()
    for e in entries:
        period_s = e.period.total_seconds()
        if e.period == HOUR:
            for ch, v in e.values.items():
                out.values.append(HourlyValue(e.start, Channel(ch), v, _flags(e, ch)))
            continue
        if period_s > _HOUR_S:
            _refuse(out, e, f"capture period {e.period} exceeds the hour (art. 15)")
            continue
        if period_s <= 0 or _HOUR_S % period_s:
            _refuse(out, e, f"capture period {e.period} does not divide the hour")
            continue
        if e.start.timestamp() % period_s:
            _refuse(out, e, f"entry at {e.start.isoformat()} not aligned to its {e.period} period")
            continue
        hour = e.start.replace(minute=0, second=0, microsecond=0)
        slot = by_hour.setdefault(hour, {})
        seen = slot.get(e.start)
        if seen is None:
            slot[e.start] = e
        elif seen != e:
            conflicting.add(hour)
    for hour, slot in sorted(by_hour.items()):
        if hour in conflicting:
            for e in slot.values():
                _refuse(out, e, "the meter gave two different entries for one start")
            continue
        out.sub_hourly.extend(slot[t] for t in sorted(slot))
        channels = {ch for e in slot.values() for ch in e.values}
        for ch in sorted(channels, key=list(Channel).index):
            having = [e for e in slot.values() if ch in e.values]
            covered = sum(e.period.total_seconds() for e in having)
            status = 0
            for e in having:
                status |= _flags(e, ch)
            if covered < _HOUR_S:
                status |= int(Quality.PARTIAL)
            # fsum, then rounding away binary noise: 0.1 + 0.2 is stored as 0.3.
            value = round(math.fsum(e.values[ch] for e in having), 9)
            out.values.append(HourlyValue(hour, Channel(ch), value, status))
    return out
