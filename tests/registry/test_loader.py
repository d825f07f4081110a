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


# --- hostile files ----------------------------------------------------------------------

BOMB = "".join(
    f"{k}: &{k} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['lol'] * 9)}]\n"
    for p, k in zip(["", "a", "b", "c", "d", "e", "f", "g", "h"], "abcdefghi", strict=True)
)


def test_yaml_alias_bomb_is_refused_without_expanding_it(tmp_path: Path) -> None:
    import resource
    import time

    p = tmp_path / "bomb.yaml"
    p.write_text(BOMB)
    assert len(BOMB) < 400  # a few hundred bytes naming 9^9 (387 million) values
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    [issue] = _raw(p)
    assert "alias" in issue.message and issue.line is not None
    # Refused early: expanding it took gigabytes and minutes.
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100 and time.monotonic() - t0 < 30


def test_yaml_anchors_and_merge_keys_still_work(tmp_path: Path) -> None:
    p = tmp_path / "inv.yaml"
    p.write_text(
        "defaults: &m {protocol: dlms, ct_ratio: 40, vt_ratio: 1}\n"
        "frontiers:\n"
        "  - {code: Frt1, name: A, kind: distribution, voltage_level: 2,"
        " monthly_energy_mwh: 100, meters: [{<<: *m, serial: P1, role: principal,"
        " endpoint: 'h:1'}, {<<: *m, serial: B1, role: backup, endpoint: 'h:2'}]}\n"
    )
    # Only the top-level "defaults" key is refused: the meters built from the anchor
    # through merge keys are valid.
    assert [i.where for i in _raw(p)] == ["defaults"]


def test_deeply_nested_yaml_is_an_error_not_a_crash(tmp_path: Path) -> None:
    p = tmp_path / "deep.yaml"
    p.write_text("[" * 20000 + "]" * 20000)
    [issue] = _raw(p)
    assert "nested too deeply" in issue.message


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('frontiers:\n  - code: "Frt1\\0"\n    name: A\n', 2),  # escaped NUL in a value
        ("frontiers:\n  - code: Frt1\n    name: \"A\\x07b\"\n", 3),  # BEL in a name
        ("frontiers:\n  - code: Frt1\x00\n", 2),  # a raw NUL byte in the file
    ],
)
def test_yaml_control_characters_are_refused_with_file_and_line(
    tmp_path: Path, text: str, line: int
) -> None:
    p = tmp_path / "ctl.yaml"
    p.write_text(text)
    issues = _raw(p)
    assert any(i.line == line and "control character" in i.message for i in issues), issues
    assert all("\x00" not in str(i) and "\x07" not in str(i) for i in issues)
    assert str(p) in str(issues[0])


def test_csv_nul_in_a_cell_is_refused_with_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "inv.csv"
    p.write_text(
        "frontier_code,frontier_name,kind,voltage_level,monthly_energy_mwh,serial,role,protocol,endpoint\n"
        "Frt1,A,distribution,2,100,P1,principal,dlms,h:1\n"
        "Frt1,A,distribution,2,100,B\x001,backup,dlms,h:2\n"
    )
    [issue] = _raw(p)
    assert issue.line == 3 and "U+0000" in issue.message and issue.where == "column serial"


def test_csv_row_shorter_than_its_header_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "inv.csv"
    p.write_text(
        "frontier_code,frontier_name,kind,voltage_level,monthly_energy_mwh,serial,role,protocol,"
        "endpoint,level1_secret\n"
        "Frt1,A,distribution,2,100,P1,principal,dlms,h:1,a-level-1-secret\n"
        "Frt1,A,distribution,2,100,B1,backup,dlms,h:2\n"  # no credentials cell at all
        "\n"
        "# a comment row is fine\n"
    )
    [issue] = _raw(p)
    assert issue.line == 3 and "9 cells" in issue.message and "10 columns" in issue.message


_CSV_MQTT_HEAD = (
    "frontier_code,frontier_name,kind,voltage_level,monthly_energy_mwh,serial,role,protocol,"
    "endpoint,param.serial,level1_secret,level2_secret,broker_username,broker_password,"
    "broker_client_key\n"
)


def test_csv_carries_the_broker_login_like_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MQTT_CGM_PASSWORD", "broker-pw")
    key = "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----"
    monkeypatch.setenv("MQTT_CGM_KEY", key)
    p = tmp_path / "inv.csv"
    p.write_text(
        _CSV_MQTT_HEAD
        + "Frt1,A,distribution,2,100,P1,principal,mqtt,h:1883,P1,r1,c2,cgm,env:MQTT_CGM_PASSWORD,\n"
        "Frt1,,,,,B1,backup,mqtt,h:1883,B1,r3,c4,,,env:MQTT_CGM_KEY\n"
    )
    p1, b1 = registry.load(p).frontiers[0].meters
    assert p1.credentials.broker is not None
    assert p1.credentials.broker.username == "cgm"
    assert p1.credentials.broker.password.get_secret_value() == "broker-pw"  # type: ignore[union-attr]
    assert b1.credentials.broker is not None and b1.credentials.broker.username is None
    assert "BEGIN PRIVATE KEY" in b1.credentials.broker.client_key.get_secret_value()  # type: ignore[union-attr]
    assert "broker-pw" not in repr(p1)


@pytest.mark.parametrize(
    ("cells", "where", "needle"),
    [
        (",cgm,env:NOT_SET_ANYWHERE_42,", "columns broker_*", "NOT_SET_ANYWHERE_42"),  # unset env:
        (",,pw,", "columns broker_*", "needs its username"),  # a password without a user
    ],
)
def test_csv_broker_login_errors_name_file_line_and_column(
    tmp_path: Path, cells: str, where: str, needle: str
) -> None:
    p = tmp_path / "inv.csv"
    p.write_text(
        _CSV_MQTT_HEAD
        + "Frt1,A,distribution,2,100,P1,principal,mqtt,h:1883,P1,r1,c2,cgm,pw,\n"
        + f"Frt1,,,,,B1,backup,mqtt,h:1883,B1,r3,c4{cells}\n"
    )
    [issue] = _raw(p)
    assert issue.file == str(p) and issue.line == 3
    assert where in f"{issue.where}: {issue.message}" and needle in issue.message


def test_csv_broker_login_on_a_dlms_meter_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "inv.csv"
    p.write_text(
        _CSV_MQTT_HEAD
        + "Frt1,A,distribution,2,100,P1,principal,dlms,h:4059,,r1,c2,cgm,pw,\n"
    )
    [issue] = _raw(p)
    assert issue.line == 2 and "MQTT meters only" in issue.message
