"""Day types for typical curves: working day, Saturday, Sunday or Colombian holiday.

Holidays come from the maintained ``holidays`` package (``holidays.Colombia``), which
follows Ley Emiliani's Monday moves; a holiday counts as a Sunday (load behaves like one).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta
from functools import lru_cache

import holidays

WORKING, SATURDAY, SUNDAY_HOLIDAY = "working", "saturday", "sunday_holiday"


@lru_cache(maxsize=64)
def _colombia(year: int) -> holidays.HolidayBase:
    return holidays.Colombia(years=year)


def is_holiday(day: date) -> bool:
    return day in _colombia(day.year)


def day_type(day: date) -> str:
    if day.weekday() == 6 or is_holiday(day):
        return SUNDAY_HOLIDAY
    if day.weekday() == 5:
        return SATURDAY
    return WORKING


def same_type_days(
    day: date,
    weeks: int,
    max_days: int | None = None,
    kind_of: Callable[[date], str] = day_type,
) -> list[date]:
    """Earlier days of ``day``'s type within ``weeks`` weeks, most recent first (at most
    ``max_days`` of them when given). ``kind_of`` is Colombia's calendar unless a
    benchmark on another country's load gives its own."""
    kind = kind_of(day)
    out = []
    for back in range(1, weeks * 7 + 1):
        d = day - timedelta(days=back)
        if kind_of(d) == kind:
            out.append(d)
            if max_days is not None and len(out) >= max_days:
                break
    return out
