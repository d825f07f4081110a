"""Colombian local days and XM hour periods (period h = (h−1):00–h:00 local, UTC−5)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from cgm.localtime import day_bounds, hour_starts, local_day, period_of, period_start


def test_local_day_starts_at_five_utc() -> None:
    start, end = day_bounds(date(2026, 3, 1))
    assert start == datetime(2026, 3, 1, 5, tzinfo=UTC)
    assert end == datetime(2026, 3, 2, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("utc_start", "day", "period"),
    [
        (datetime(2026, 3, 1, 5, tzinfo=UTC), date(2026, 3, 1), 1),
        (datetime(2026, 3, 2, 4, tzinfo=UTC), date(2026, 3, 1), 24),  # 23:00–24:00 local
        (datetime(2026, 3, 1, 4, tzinfo=UTC), date(2026, 2, 28), 24),
        (datetime(2026, 12, 31, 17, tzinfo=UTC), date(2026, 12, 31), 13),
    ],
)
def test_period_of(utc_start: datetime, day: date, period: int) -> None:
    assert period_of(utc_start) == (day, period)
    assert period_start(day, period) == utc_start


def test_hour_starts_cover_the_day_in_order() -> None:
    starts = hour_starts(date(2026, 6, 15))
    assert len(starts) == 24
    assert [period_of(s)[1] for s in starts] == list(range(1, 25))
    assert local_day(starts[-1]) == date(2026, 6, 15)


def test_naive_and_off_hour_times_are_rejected() -> None:
    with pytest.raises(ValueError, match="naive"):
        local_day(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="not on the hour"):
        period_of(datetime(2026, 1, 1, 5, 30, tzinfo=UTC))
    with pytest.raises(ValueError, match="1..24"):
        period_start(date(2026, 1, 1), 25)
