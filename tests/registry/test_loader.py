"""Inventory parsing: line-numbered errors, unknown fields, text fields, secrets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cgm import registry
from cgm.registry import InventoryError
from tests.registry.conftest import frontier, meter

DATA = Path(__file__).parent / "data"


def _issues(path: Path) -> list[tuple[int | None, str]]:
    with pytest.raises(InventoryError) as exc:
        registry.load(path)
    return [(i.line, f"{i.where}: {i.message}") for i in exc.value.issues]


def test_yaml_bad_rows_report_each_line() -> None:
    issues = _issues(DATA / "bad_rows.yaml")
    assert [line for line, _ in issues] == [22, 23, 26, 27]
    assert "endpoint" in issues[0][1]
    assert "ratio" in issues[1][1]
    assert "kind" in issues[2][1]
    assert "voltage_level" in issues[3][1]
    assert all(str(DATA / "bad_rows.yaml") in str(i) for i in _raw(DATA / "bad_rows.yaml"))


def _raw(path: Path) -> list[registry.Issue]:
    with pytest.raises(InventoryError) as exc:
        registry.load(path)
    return exc.value.issues


def test_csv_bad_rows_report_each_line() -> None:
    issues = _issues(DATA / "bad_rows.csv")
    assert issues == [
        (3, "column accuracy_active: accuracy class must be one of 0.2S, 0.2, 0.5S, 0.5, 1, 2, 3"),
        (4, "column ct_ratio: ratio must be a number or 'primary/secondary' like '200/5'"),
        (5, "column voltage_level: Input should be less than or equal to 4"),
    ]


@pytest.mark.parametrize(
    ("name", "line", "needle"),
    [("unknown_field.yaml", 12, "ct_raito"), ("unknown_column.csv", 1, "ct_raito")],
)
def test_unknown_field_is_an_error(name: str, line: int, needle: str) -> None:
    [(got_line, text)] = _issues(DATA / name)
    assert got_line == line
    assert needle in text and "unknown" in text


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("frontiers:\n  - code: Frt1\n    name: [unclosed\n    kind: x\n")
    [issue] = _raw(p)
    assert issue.line is not None and issue.line >= 3
    assert "YAML syntax error" in issue.message


def test_duplicate_key_and_duplicate_frontier(tmp_path: Path) -> None:
    p = tmp_path / "dup.yaml"
    p.write_text(
        "frontiers:\n"
        "  - {code: Frt1, name: a, kind: distribution, voltage_level: 1, point_type: 3}\n"
        "  - {code: Frt1, name: b, kind: distribution, voltage_level: 1, point_type: 3}\n"
        "  - code: Frt2\n"
        "    name: c\n"
        "    name: d\n"
        "    kind: distribution\n"
        "    voltage_level: 1\n"
        "    point_type: 3\n"
    )
    issues = _raw(p)
    assert [(i.line, "line 2" in i.message or "duplicate key" in i.message) for i in issues] == [
        (3, True),
        (6, True),
    ]


def test_point_type_undeterminable_is_an_error(write_yaml: Callable[..., Path]) -> None:
    fr = frontier("Frt1", monthly_energy_mwh=None)
    [issue] = _raw(write_yaml(fr))
    assert "point type cannot be determined" in issue.message
    assert issue.line == 2


def test_two_principals_is_an_error_at_the_second_meter(write_yaml: Callable[..., Path]) -> None:
    fr = frontier("Frt1", meters=[meter("A"), meter("B")])
    [issue] = _raw(write_yaml(fr))
    assert "more than one principal" in issue.message
    text = write_yaml(fr).read_text().splitlines()
    assert text[issue.line - 1].strip() == "- serial: B"


def test_serial_listed_in_two_frontiers_is_an_error(write_yaml: Callable[..., Path]) -> None:
    p = write_yaml(frontier("Frt1", meters=[meter("X")]), frontier("Frt2", meters=[meter("X")]))
    [issue] = _raw(p)
    assert "already listed under Frt1" in issue.message


def test_numeric_looking_text_fields_stay_as_written(tmp_path: Path) -> None:
    p = tmp_path / "inv.yaml"
    p.write_text(
        "frontiers:\n"
        "  - code: Frt1\n    name: 2024\n    kind: distribution\n    voltage_level: 2\n"
        "    monthly_energy_mwh: 100\n"
        "    meters:\n"
        "      - serial: 00123\n        role: principal\n        protocol: dlms\n"
        "        endpoint: '[::1]:4059'\n        accuracy_active: 1\n"
        "        accuracy_reactive: 2.0\n        ct_ratio: 200/5\n        vt_ratio: 1\n"
        "        credentials:\n          level1: {secret: 0123, client: 16}\n"
    )
    inv = registry.load(p)
    fr = inv.frontiers[0]
    m = fr.meters[0]
    assert (fr.name, m.serial) == ("2024", "00123")
    assert (m.accuracy_active, m.accuracy_reactive) == ("1", "2")
    assert (m.endpoint.host, m.endpoint.port, m.ct_ratio, m.vt_ratio) == ("::1", 4059, 40.0, 1.0)
    assert m.credentials.level1 is not None
    assert m.credentials.level1.secret.get_secret_value() == "0123"  # not octal 83
    assert m.credentials.level1.client == "16"
    assert any("inline" in w for w in inv.warnings)


def test_env_secret_resolved_and_missing_var_reported(
    write_yaml: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    fr = frontier(
        "Frt1",
        monthly_energy_mwh=100,
        meters=[meter("P", credentials={"level1": {"secret": "env:CGM_T_L1", "client": "16"}})],
    )
    monkeypatch.setenv("CGM_T_L1", "s3cr3t-from-env")
    inv = registry.load(write_yaml(fr))
    cred = inv.frontiers[0].meters[0].credentials.level1
    assert cred is not None and cred.from_env
    assert cred.secret.get_secret_value() == "s3cr3t-from-env"
    assert inv.warnings == []
    monkeypatch.delenv("CGM_T_L1")
    [issue] = _raw(write_yaml(fr))
    assert "CGM_T_L1" in issue.message and "not set" in issue.message


def test_errors_never_echo_a_secret(write_yaml: Callable[..., Path]) -> None:
    # A secret in the wrong type, next to a bad field: the message must not quote it.
    fr = frontier(
        "Frt1",
        monthly_energy_mwh=100,
        meters=[meter("P", credentials={"level1": {"secret": ["hunter2-secret"], "bogus": 1}})],
    )
    issues = _raw(write_yaml(fr))
    assert issues and "hunter2-secret" not in "\n".join(map(str, issues))


def test_secret_like_params_are_refused(write_yaml: Callable[..., Path]) -> None:
    fr = frontier("Frt1", meters=[meter("P", params={"password": "x"})])
    [issue] = _raw(write_yaml(fr))
    assert "credentials" in issue.message


def test_csv_frontier_columns_must_agree(tmp_path: Path) -> None:
    p = tmp_path / "inv.csv"
    p.write_text(
        "frontier_code,frontier_name,kind,voltage_level,monthly_energy_mwh,serial,role,protocol,endpoint\n"
        "Frt1,A,distribution,2,100,P1,principal,dlms,h:1\n"
        "Frt1,A,distribution,3,,B1,backup,dlms,h:2\n"
    )
    [issue] = _raw(p)
    assert issue.line == 3 and "voltage_level" in issue.where and "line 2" in issue.message


def test_csv_semicolon_params_channels(tmp_path: Path) -> None:
    p = tmp_path / "inv.csv"
    p.write_text(
        "frontier_code;frontier_name;kind;voltage_level;monthly_energy_mwh;serial;role;"
        "protocol;endpoint;channels;param.unit_id;param.map;attr.region\n"
        "Frt1;A;distribution;2;100;P1;principal;modbus;h:502;active_import active_export;7;"
        "generic;Caribe\n"
    )
    fr = registry.load(p).frontiers[0]
    m = fr.meters[0]
    assert m.params == {"unit_id": 7, "map": "generic"}
    assert [c.value for c in m.channels] == ["active_import", "active_export"]
    assert fr.attributes == {"region": "Caribe"}


def test_examples_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(__file__).parents[2] / "examples"
    for var in ("FRT10001_P_L1", "FRT10001_P_L2", "FRT10001_B_L1", "FRT20002_L1", "FRT30003_L1"):
        monkeypatch.setenv(var, "x")
    yaml_inv = registry.load(root / "inventory.yaml")
    csv_inv = registry.load(root / "inventory.csv")
    assert [f.code for f in yaml_inv.frontiers] == ["Frt10001", "Frt20002"]
    assert [f.code for f in csv_inv.frontiers] == ["Frt10001", "Frt30003"]
