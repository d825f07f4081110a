"""The one cumulative-to-interval path (drivers.cumulative): table-driven cases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from drivers.base import Channel
from drivers.cumulative import (
    GAP,
    IMPLAUSIBLE,
    INVALID,
    RESET,
    ROLLOVER,
    CumulativeRow,
    Reading,
    differences,
    interpolated,
    profile_entries,
    rollover_value,
)

T0 = datetime(2026, 3, 1, 5, tzinfo=UTC)
H = timedelta(hours=1)
Q = timedelta(minutes=15)

# (case, readings one period apart with None where the meter holds no entry, register_max,
#  expected advances as (index of the closing reading, value, rollover), expected events)
CASES = [
    (
        "steady",
        [100.0, 100.3, 100.7, 101.0],
        None,
        [(1, 0.3, False), (2, 0.4, False), (3, 0.3, False)],
        [],
    ),
    ("flat is a measured zero", [5.0, 5.0], None, [(1, 0.0, False)], []),
    ("one reading gives nothing", [5.0], None, [], []),
    (
        "gap: the entry after it is not invented",
        [10.0, 11.0, None, 13.0, 14.0],
        None,
        [(1, 1.0, False), (4, 1.0, False)],
        [(3, GAP)],
    ),
    (
        "rollover near the top wraps",
        [99_999.0, 99_999.6, 0.4, 1.0],
        100_000.0,
        [(1, 0.6, False), (2, 0.8, True), (3, 0.6, False)],
        [(2, ROLLOVER)],
    ),
    (
        "drop without a known maximum is a reset",
        [99_999.0, 99_999.6, 0.4, 1.0],
        None,
        [(1, 0.6, False), (3, 0.6, False)],
        [(2, RESET)],
    ),
    (
        "drop from mid-range is a reset, not a rollover",
        [5000.0, 5010.0, 3.0, 13.0],
        100_000.0,
        [(1, 10.0, False), (3, 10.0, False)],
        [(2, RESET)],
    ),
    (
        "negative reading dropped",
        [10.0, -1.0, 12.0, 13.0],
        None,
        [(3, 1.0, False)],
        [(1, INVALID), (2, GAP)],
    ),
    (
        "reading beyond the maximum dropped",
        [10.0, 11.0, 1e9, 13.0],
        100_000.0,
        [(1, 1.0, False)],
        [(2, INVALID), (3, GAP)],
    ),
]


def _readings(values: list[float | None], period: timedelta) -> list[Reading]:
    return [Reading(T0 + i * period, v) for i, v in enumerate(values) if v is not None]


@pytest.mark.parametrize(("case", "values", "register_max", "advances", "events"), CASES)
@pytest.mark.parametrize("period", [H, Q])
def test_differences(
    case: str,
    values: list[float | None],
    register_max: float | None,
    advances: list[tuple[int, float, bool]],
    events: list[tuple[int, object]],
    period: timedelta,
) -> None:
    out = differences(_readings(values, period), period=period, register_max=register_max)
    got = [((a.end - T0) // period, a.value, a.rollover) for a in out.advances]
    assert [(i, pytest.approx(v), r) for i, v, r in advances] == got, case
    assert [((e.at - T0) // period, e.kind) for e in out.events] == events, case
    assert all(a.value >= 0 and a.end - a.start == period for a in out.advances)


def test_max_advance_refuses_an_implausible_jump() -> None:
    out = differences(_readings([1.0, 2.0, 9_000.0], H), period=H, max_advance=100.0)
    assert [a.value for a in out.advances] == [1.0]
    assert [e.kind for e in out.events] == [IMPLAUSIBLE]


def test_unsorted_and_duplicated_readings() -> None:
    readings = _readings([1.0, 2.0, 4.0], H)
    out = differences([readings[2], readings[0], readings[1], readings[1]], period=H)
    assert [a.value for a in out.advances] == [1.0, 2.0]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"digits": 8, "scaler": 0, "factor": 1e-3}, 100_000.0),  # 8-digit Wh counter in kWh
        ({"digits": 6, "scaler": 1, "factor": 1e-3}, 10_000.0),  # 6 digits of 10 Wh
        ({"bits": 32, "factor": 1e-3}, 4_294_967.296),  # double-long-unsigned Wh
        ({"digits": 7, "scaler": -2}, 100_000.0),  # 7 digits of 0.01 kWh
    ],
)
def test_rollover_value(kwargs: dict, expected: float) -> None:
    assert rollover_value(**kwargs) == pytest.approx(expected)


def test_rollover_value_needs_one_width() -> None:
    with pytest.raises(ValueError):
        rollover_value(digits=8, bits=32)
    with pytest.raises(ValueError):
        rollover_value()


def test_interpolated_matches_the_snapshot_rules() -> None:
    snaps = [Reading(T0 + timedelta(minutes=2) + i * H, v) for i, v in enumerate([0, 10, 20])]
    out = interpolated(snaps)
    assert [(a.start.hour, a.value) for a in out.advances] == [(6, 10.0)]


# --- profile rows -------------------------------------------------------------------------


def rows(table: list[dict], period: timedelta = H) -> list[CumulativeRow]:
    return [CumulativeRow(T0 + i * period, values) for i, values in enumerate(table)]


def test_profile_entries_per_channel_and_the_extra_first_row() -> None:
    ai, ri = Channel.ACTIVE_IMPORT, Channel.REACTIVE_IMPORT
    entries, events = profile_entries(
        rows([{ai: 16316.0, ri: 50.0}, {ai: 16316.3, ri: 50.1}, {ai: 16316.7, ri: 50.3}]), period=H
    )
    # The first row only opens the first interval: two entries from three rows.
    assert [e.start for e in entries] == [T0, T0 + H]
    assert [e.values[ai] for e in entries] == pytest.approx([0.3, 0.4])
    assert [e.values[ri] for e in entries] == pytest.approx([0.1, 0.2])
    assert events == []


def test_profile_entries_sum_tariffs_each_with_its_own_rollover() -> None:
    ai = Channel.ACTIVE_IMPORT
    t1, t2 = ("1.8.1", "1.8.2")
    table = [{t1: 99_999.5, t2: 10.0}, {t1: 0.2, t2: 10.5}, {t1: 0.4, t2: 11.5}]
    entries, events = profile_entries(
        rows(table), period=H, register_max=100_000.0, channels={t1: ai, t2: ai}
    )
    assert [e.values[ai] for e in entries] == pytest.approx([0.7 + 0.5, 0.2 + 1.0])
    assert [e.rollover for e in entries] == [frozenset({ai}), frozenset()]
    assert [(e.kind, e.key) for e in events] == [(ROLLOVER, t1)]


def test_profile_entries_channel_absent_when_one_tariff_is_missing() -> None:
    ai = Channel.ACTIVE_IMPORT
    table = [{"t1": 1.0, "t2": 1.0}, {"t1": 2.0}, {"t1": 3.0, "t2": 3.0}]
    entries, _ = profile_entries(rows(table), period=H, channels={"t1": ai, "t2": ai})
    # t2 has no advance for either interval (its middle reading is missing): nothing summed.
    assert entries == []


def test_profile_entries_reset_leaves_a_hole_never_a_negative() -> None:
    ai = Channel.ACTIVE_IMPORT
    table = [{ai: 500.0}, {ai: 501.0}, {ai: 0.5}, {ai: 1.5}]
    entries, events = profile_entries(rows(table, Q), period=Q, register_max=100_000.0)
    assert [(e.start, e.values[ai]) for e in entries] == [(T0, 1.0), (T0 + 2 * Q, 1.0)]
    assert [e.kind for e in events] == [RESET]


def test_profile_entries_plausibility_per_channel() -> None:
    ai = Channel.ACTIVE_IMPORT
    entries, events = profile_entries(
        rows([{ai: 1.0}, {ai: 2.0}, {ai: 5_000.0}]), period=H, max_advance={ai: 100.0}
    )
    assert [e.values[ai] for e in entries] == [1.0]
    assert [e.kind for e in events] == [IMPLAUSIBLE]
