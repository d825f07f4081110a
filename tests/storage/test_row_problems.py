"""Per-row screening: what a collector sets aside, row by row, instead of losing a batch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from cgm.storage.readings import readings_array, row_problems

T = datetime(2026, 3, 1, 5, tzinfo=UTC)


def test_row_problems_name_each_bad_row_and_leave_good_rows_alone() -> None:
    rows = readings_array(
        [1, 1, 2, 2, 3, 3, 4],
        [1, 1, 1, 1, 1, 1, 9],
        [T, T + timedelta(hours=1), T + timedelta(minutes=15), T, T, T, T],
        [1.0, -2.0, 3.0, float("nan"), 5.0, 6.0, 7.0],
        0,
        T,
    )
    problems = row_problems(rows).tolist()
    assert problems[0] is None
    assert problems[1] == "value is negative"
    assert problems[2] == "interval_start not on a 1:00:00 boundary"
    assert problems[3] == "value is NaN"
    # Meter 3 gave two different values for one hour: both set aside, neither chosen.
    assert problems[4] == problems[5] == "the same (meter, channel, interval) with different values"
    assert problems[6] == "unknown channel (ids 1..4)"


def test_identical_duplicates_are_not_problems() -> None:
    rows = readings_array([1, 1], [1, 1], [T, T], [2.5, 2.5], 0, T)
    assert (row_problems(rows) == None).all()  # noqa: E711
    assert len(row_problems(np.empty(0, rows.dtype))) == 0
