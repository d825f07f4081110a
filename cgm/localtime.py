"""The one place where Colombian local time, days and XM hour periods are computed.

Official time is UTC−5 with no daylight saving. XM's convention: period h (1..24) of local
day D is the interval (h−1):00–h:00 local time; period 24 ends at 00:00 of D+1. Everything
else in cgm stores and passes UTC.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone

import numpy as np

COLOMBIA = timezone(timedelta(hours=-5), "COT")
HOUR = timedelta(hours=1)
PERIODS = 24


def parse_hhmm(value: str) -> time:
    """A local clock time written ``HH:MM`` (settings for report and push times)."""
    hh, _, mm = value.partition(":")
    return time(int(hh), int(mm or 0))


def sql_local_day(column: str) -> str:
    """SQL for the local day of the timestamptz ``column`` (the server's zone setting
    plays no part)."""
    offset = int(COLOMBIA.utcoffset(None).total_seconds())
    return f"(({column} AT TIME ZONE 'UTC') + make_interval(secs => {offset}))::date"


def local_day_hour(starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise (local day as ``datetime64[D]``, local hour 0..23, or -1 for an instant
    not on a whole hour) of UTC ``datetime64[us]`` instants: the slots of ``reading_day``."""
    offset_us = int(COLOMBIA.utcoffset(None) / timedelta(microseconds=1))
    local = starts.astype("M8[us]").view("i8") + offset_us
    day, within = np.divmod(local, 86_400_000_000)
    hour, rest = np.divmod(within, 3_600_000_000)
    return day.astype("M8[D]"), np.where(rest == 0, hour, -1)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """[start, end) of local day ``day`` in UTC."""
    start = datetime.combine(day, time(0), COLOMBIA).astimezone(UTC)
    return start, start + timedelta(days=1)


def local_days(start: datetime, end: datetime) -> list[date]:
    """The local days that [start, end) overlaps, in order (none when it is empty)."""
    if end <= start:
        return []
    first, last = local_day(start), local_day(end - timedelta(microseconds=1))
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def local_day(instant: datetime) -> date:
    """The local day an instant falls in."""
    return _aware(instant).astimezone(COLOMBIA).date()


def period_of(interval_start: datetime) -> tuple[date, int]:
    """(local day, period 1..24) of the hourly interval starting at ``interval_start``."""
    local = _aware(interval_start).astimezone(COLOMBIA)
    if local.minute or local.second or local.microsecond:
        raise ValueError(f"{interval_start.isoformat()} is not on the hour")
    return local.date(), local.hour + 1


def period_start(day: date, period: int) -> datetime:
    """UTC start of period ``period`` (1..24) of local day ``day``."""
    if not 1 <= period <= PERIODS:
        raise ValueError(f"period must be 1..24, got {period}")
    return day_bounds(day)[0] + (period - 1) * HOUR


def hour_starts(day: date) -> list[datetime]:
    """UTC starts of the 24 periods of local day ``day``, in period order."""
    start = day_bounds(day)[0]
    return [start + i * HOUR for i in range(PERIODS)]


def floor_hour(instant: datetime) -> datetime:
    return _aware(instant).astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _aware(instant: datetime) -> datetime:
    if instant.tzinfo is None:
        raise ValueError("naive datetime: cgm works in aware UTC")
    return instant
