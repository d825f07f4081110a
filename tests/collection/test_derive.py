"""Hourly intervals derived from register snapshots (meters without a profile)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cgm.collection.derive import Snapshot, derive_intervals

T0 = datetime(2026, 3, 1, 5, 2, tzinfo=UTC)  # snapshots two minutes after each hour
H = timedelta(hours=1)


def snaps(values: list[float], start: datetime = T0) -> list[Snapshot]:
    return [Snapshot(start + i * H, v) for i, v in enumerate(values)]


def test_steady_advance_gives_hourly_intervals_on_the_hour() -> None:
    out = derive_intervals(snaps([100.0, 110.0, 120.0, 130.0]))
    # Boundaries 06:00, 07:00, 08:00 are bracketed; intervals 06-07 and 07-08.
    assert [i.start for i in out] == [
        datetime(2026, 3, 1, 6, tzinfo=UTC),
        datetime(2026, 3, 1, 7, tzinfo=UTC),
    ]
    assert [i.value for i in out] == pytest.approx([10.0, 10.0])


def test_rollover_wraps_the_advance() -> None:
    out = derive_intervals(snaps([99_980.0, 99_995.0, 10.0, 25.0]), register_max=100_000.0)
    assert [round(i.value, 6) for i in out] == [15.0, 15.0]
    # The wrap happened between 06:02 and 07:02: both intervals interpolate across it.
    assert [i.rollover for i in out] == [True, True]


def test_reset_produces_no_interval_across_it() -> None:
    # Meter replaced between 07:02 and 08:02: no interval may straddle the reset.
    out = derive_intervals(snaps([5000.0, 5010.0, 3.0, 13.0, 23.0]), register_max=100_000.0)
    # Only 08:00-09:00 lies wholly after the reset; nothing before 07:02 is bracketed twice.
    assert [i.start.hour for i in out] == [8]
    assert [i.value for i in out] == pytest.approx([10.0])


def test_a_long_gap_between_snapshots_is_left_as_a_gap() -> None:
    values = snaps([0.0, 10.0, 20.0]) + snaps([60.0, 70.0, 80.0], start=T0 + 6 * H)
    out = derive_intervals(values, max_gap=timedelta(hours=2))
    assert [i.start.hour for i in out] == [6, 12]  # nothing invented between 07:02 and 11:02
