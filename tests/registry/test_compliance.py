"""Violations of the Código: backup requirement, Table 2 classes, principal/backup mismatch."""

from __future__ import annotations

from typing import Any

import pytest

from cgm.registry import FrontierSpec, compliance
from tests.registry.conftest import frontier, meter


def _rules(fr: dict[str, Any]) -> set[tuple[str, str]]:
    return {(f.rule, f.subject) for f in compliance.check(FrontierSpec.model_validate(fr))}


def test_compliant_type1_frontier_has_no_violation() -> None:
    assert _rules(frontier("Frt1")) == set()


@pytest.mark.parametrize(
    ("over", "needs_backup"),
    [
        ({"monthly_energy_mwh": 20000}, True),  # type 1
        ({"monthly_energy_mwh": 600}, True),  # type 2
        ({"monthly_energy_mwh": 100}, False),  # type 3
        ({"monthly_energy_mwh": 100, "kind": "generation"}, True),
        ({"monthly_energy_mwh": 1, "stn": True}, True),
        ({"monthly_energy_mwh": 1}, False),
        ({"monthly_energy_mwh": 100, "installed_capacity_mva": 2}, True),  # CI → type 2
    ],
)
def test_backup_missing(over: dict[str, Any], needs_backup: bool) -> None:
    fr = frontier("Frt2", meters=[meter("P", accuracy_active="0.2S")], **over)
    assert (("backup_missing", "") in _rules(fr)) is needs_backup


@pytest.mark.parametrize(
    ("energy", "active", "reactive", "expected"),
    [
        (20000, "0.2S", "2", set()),
        (20000, "0.5S", "2", {"accuracy_active_below"}),
        (20000, "0.2S", "3", {"accuracy_reactive_below"}),
        (600, "0.5S", "2", set()),  # type 2
        (600, "1", "2", {"accuracy_active_below"}),
        (100, "0.5S", "2", set()),  # type 3
        (10, "1", "2", set()),  # type 4
        (10, "2", "2", {"accuracy_active_below"}),
        (10, "1", "3", {"accuracy_reactive_below"}),
        (1, "2", "3", set()),  # type 5: 1 or 2 / 2 or 3
        (1, "1", "2", set()),
        (1, "3", "3", {"accuracy_active_below"}),
        (100, None, "2", {"accuracy_active_undeclared"}),
    ],
)
def test_table2_accuracy(
    energy: float, active: str | None, reactive: str, expected: set[str]
) -> None:
    fr = frontier(
        "Frt3",
        monthly_energy_mwh=energy,
        meters=[
            meter("P", accuracy_active=active, accuracy_reactive=reactive),
            meter("B", "backup", accuracy_active=active, accuracy_reactive=reactive),
        ],
    )
    found = {rule for rule, _ in _rules(fr) if rule.startswith("accuracy")}
    assert found == expected


def test_transformer_classes_checked_when_declared() -> None:
    fr = frontier(
        "Frt4",
        meters=[
            meter("P", ct_accuracy="0.5S", vt_accuracy="0.2"),
            meter("B", "backup", ct_accuracy="0.2S", vt_accuracy="0.2"),
        ],
    )
    assert _rules(fr) == {("ct_accuracy_below", "P")}


@pytest.mark.parametrize(
    ("backup_over", "rule"),
    [
        ({"ct_ratio": "400/5"}, "backup_mismatch_ct_ratio"),
        ({"vt_ratio": 100}, "backup_mismatch_vt_ratio"),
        ({"accuracy_active": "0.2"}, "backup_mismatch_accuracy_active"),
        ({"accuracy_reactive": "1"}, "backup_mismatch_accuracy_reactive"),
        ({"channels": ["active_import", "active_export"]}, "backup_mismatch_channels"),
    ],
)
def test_principal_backup_mismatch(backup_over: dict[str, Any], rule: str) -> None:
    fr = frontier("Frt5", meters=[meter("P"), meter("B", "backup", **backup_over)])
    assert (rule, "B") in _rules(fr)


def test_equal_ratios_written_differently_are_not_a_mismatch() -> None:
    fr = frontier("Frt6", meters=[meter("P", ct_ratio="200/5"), meter("B", "backup", ct_ratio=40)])
    assert _rules(fr) == set()


def test_understated_type_loses_to_table1_and_is_flagged() -> None:
    """A 20,000 MWh/month frontier declared as type 3 is type 1: 30 s limit, backup required,
    type 1 accuracy classes."""
    spec = FrontierSpec.model_validate(
        frontier(
            "Frt7",
            monthly_energy_mwh=20000,
            point_type=3,
            meters=[meter("P", accuracy_active="0.5S")],
        )
    )
    assert spec.table1_type == 1
    assert spec.effective_point_type == 1
    assert spec.clock_limit_s == 30
    found = {f.rule: f for f in compliance.check(spec)}
    assert "type 1 governs" in found["point_type_understated"].message
    assert "backup_missing" in found
    assert "accuracy_active_below" in found


def test_declared_stricter_type_governs_and_is_shown() -> None:
    spec = FrontierSpec.model_validate(
        frontier("Frt8", monthly_energy_mwh=100, point_type=2, meters=[meter("P")])
    )
    assert spec.effective_point_type == 2
    assert spec.clock_limit_s == 30
    found = {f.rule: f for f in compliance.check(spec)}
    assert "point_type_understated" not in found
    assert "declared type 2 governs" in found["point_type_differs"].message
    assert "backup_missing" in found  # type 2 requires one


def test_declared_type_equal_to_table1_is_not_a_finding() -> None:
    spec = FrontierSpec.model_validate(
        frontier("Frt8", monthly_energy_mwh=100, point_type=3, meters=[meter("P")])
    )
    assert not {f.rule for f in compliance.check(spec)} & {
        "point_type_understated",
        "point_type_differs",
    }


def test_principal_missing() -> None:
    assert ("principal_missing", "") in _rules(frontier("Frt9", meters=[meter("B", "backup")]))


@pytest.mark.parametrize(
    ("credentials", "expected"),
    [
        ({"level1": {"secret": "r"}, "level2": {"secret": "w"}}, set()),
        ({"level2": {"secret": "w"}}, {"level1_secret_missing"}),
        ({"level1": {"secret": "r"}}, {"level2_secret_missing"}),
        (None, {"level1_secret_missing", "level2_secret_missing"}),
        ({"level1": {"secret": "same"}, "level2": {"secret": "same"}}, {"secrets_not_distinct"}),
    ],
)
def test_both_access_levels_required_and_distinct(
    credentials: dict[str, Any] | None, expected: set[str]
) -> None:
    """Art. 17: a meter without a level-1 secret (read with the level-2 one before) or with
    one secret for both levels is a violation, on that meter."""
    fr = frontier("Frt10", meters=[meter("P"), meter("B", "backup", credentials=credentials)])
    assert _rules(fr) == {(rule, "B") for rule in expected}
