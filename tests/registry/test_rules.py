"""Tables 1–3 and the accuracy-class order, at their edges."""

from __future__ import annotations

import pytest

from cgm.registry import rules


@pytest.mark.parametrize(
    ("energy", "expected"),
    [
        (15_000, 1),
        (1e9, 1),
        (14_999.9, 2),
        (500, 2),
        (499.99, 3),
        (50, 3),
        (49.999, 4),
        (5, 4),
        (4.99, 5),
        (0, 5),
    ],
)
def test_table1_by_monthly_energy(energy: float, expected: int) -> None:
    assert rules.type_by_energy(energy) == expected
    assert rules.table1_type(energy, None) == expected


@pytest.mark.parametrize(
    ("capacity", "expected"),
    [
        (30, 1),
        (29.999, 2),
        (1, 2),
        (0.999, 3),
        (0.1, 3),
        (0.0999, 4),
        (0.01, 4),
        (0.00999, 5),
        (0, 5),
    ],
)
def test_table1_by_installed_capacity(capacity: float, expected: int) -> None:
    assert rules.type_by_capacity(capacity) == expected
    assert rules.table1_type(None, capacity) == expected


@pytest.mark.parametrize(
    ("energy", "capacity", "expected"),
    [
        (100, 30, 1),  # energy says 3, capacity says 1 → 1
        (15_000, 0.001, 1),  # energy says 1, capacity says 5 → 1
        (4, 0.5, 3),  # 5 vs 3 → 3
        (600, 0.5, 2),  # 2 vs 3 → 2
        (10, 0.05, 4),  # agree
    ],
)
def test_table1_disagreement_stricter_wins(energy: float, capacity: float, expected: int) -> None:
    assert rules.table1_type(energy, capacity) == expected


def test_table1_without_criteria_is_undetermined() -> None:
    assert rules.table1_type(None, None) is None


@pytest.mark.parametrize(
    ("point_type", "target", "expected"),
    [(1, None, 30), (2, None, 30), (3, None, 60), (4, None, 60), (5, None, 60),
     (1, 10, 10), (3, 45, 45), (2, 90, 30)],
)  # fmt: skip
def test_clock_limit_from_table3_tighter_target_wins(
    point_type: int, target: float | None, expected: float
) -> None:
    assert rules.clock_limit(point_type, target) == expected


@pytest.mark.parametrize(
    ("actual", "required", "ok"),
    [
        ("0.2S", "0.2S", True),
        ("0.2", "0.2S", True),  # S variants rank at their number
        ("0.5S", "0.2S", False),
        ("0.2S", "0.5S", True),
        ("1", "0.5S", False),
        ("1", "1", True),
        ("2", "1", False),
        ("2", "2", True),
        ("3", "2", False),
    ],
)
def test_class_order(actual: str, required: str, ok: bool) -> None:
    assert rules.meets(actual, required) is ok


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [("0.2s", "0.2S"), (" 0.5S ", "0.5S"), (1, "1"), (2.0, "2"), ("0,2S", "0.2S"), ("3", "3")],
)
def test_normalize_class(raw: object, canonical: str) -> None:
    assert rules.normalize_class(raw) == canonical  # type: ignore[arg-type]


@pytest.mark.parametrize("raw", ["0.1", "4", "class 1", "", "0.2X"])
def test_unknown_class_rejected(raw: str) -> None:
    with pytest.raises(ValueError):
        rules.normalize_class(raw)


@pytest.mark.parametrize(
    ("point_type", "kind", "stn", "required"),
    [
        (1, "distribution", False, True),
        (2, "commercialisation", False, True),
        (3, "commercialisation", False, False),
        (5, "generation", False, True),
        (4, "distribution", True, True),
        (5, "international_link", False, False),
    ],
)
def test_backup_required(point_type: int, kind: str, stn: bool, required: bool) -> None:
    assert rules.backup_required(point_type, kind, stn) is required
