"""Import against the real database: upsert, idempotence, atomicity, audit, secrets, reads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from cgm import registry
from cgm.registry import InventoryError
from cgm.security import SecretBox
from drivers.base import AccessLevel, Channel
from tests.registry.conftest import frontier, meter, new_code


def _import(conn: psycopg.Connection, path: Path, box: SecretBox) -> registry.ImportReport:
    return registry.import_inventory(conn, registry.load(path), box, actor="tester")


def _audit_count(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM audit_log").fetchone()[0]  # type: ignore[index]


def _creds(serial: str, level1: str, level2: str | None = None) -> dict:
    c = {"level1": {"secret": level1, "client": "16"}}
    if level2:
        c["level2"] = {"secret": level2}
    return c


def test_import_yaml_then_reimport_changes_nothing(
    conn: psycopg.Connection, box: SecretBox, write_yaml: Callable[..., Path]
) -> None:
    code = new_code()
    fr = frontier(
        code,
        meters=[
            meter(f"{code}-P", credentials=_creds("P", "pw-principal-1", "pw-principal-2")),
            meter(f"{code}-B", "backup", credentials=_creds("B", "pw-backup-1", "pw-backup-2")),
        ],
    )
    path = write_yaml(fr)
    first = _import(conn, path, box)
    assert (first.frontiers_inserted, first.meters_inserted, first.credentials_changed) == (1, 2, 4)
    assert first.violations == {}

    before = _audit_count(conn)
    updated_at = conn.execute("SELECT updated_at FROM frontier WHERE code = %s", (code,)).fetchone()
    again = _import(conn, path, box)
    assert not again.changed
    assert (again.frontiers_unchanged, again.meters_unchanged) == (1, 2)
    assert _audit_count(conn) == before
    assert (
        conn.execute("SELECT updated_at FROM frontier WHERE code = %s", (code,)).fetchone()
        == updated_at
    )


def test_import_csv(conn: psycopg.Connection, box: SecretBox, tmp_path: Path) -> None:
    code = new_code()
    p = tmp_path / "inv.csv"
    p.write_text(
        "frontier_code,frontier_name,kind,stn,voltage_level,installed_capacity_mva,serial,role,"
        "protocol,endpoint,backup_endpoint,ct_ratio,vt_ratio,accuracy_active,accuracy_reactive,"
        "level1_secret,param.unit_id\n"
        f"{code},CSV frontier,generation,false,2,0.5,{code}-P,principal,modbus,h1:502,h2:502,"
        "100/5,1,0.5S,2,csv-secret,3\n"
    )
    report = _import(conn, p, box)
    assert report.frontiers_inserted == 1 and report.meters_inserted == 1
    # generation → backup required although type 3; the CSV gives no level-2 secret
    assert [f.rule for f in report.violations[code]] == ["backup_missing", "level2_secret_missing"]
    [fr] = registry.list_registry(conn, code)
    assert (fr["point_type"], fr["clock_limit_s"], fr["kind"]) == (3, 60, "generation")
    [m] = fr["meters"]
    assert (m["endpoint"], m["backup_endpoint"], m["ct_ratio"]) == ("h1:502", "h2:502", 20)
    assert m["params"] == {"unit_id": 3}
    assert not _import(conn, p, box).changed


def test_changed_field_updates_and_audit_names_actor(
    conn: psycopg.Connection, box: SecretBox, write_yaml: Callable[..., Path]
) -> None:
    code = new_code()
    _import(conn, write_yaml(frontier(code)), box)
    report = _import(conn, write_yaml(frontier(code, name="Renamed frontier")), box)
    assert (report.frontiers_updated, report.meters_unchanged) == (1, 2)
    old, new, actor, reason = conn.execute(
        """SELECT old_row ->> 'name', new_row ->> 'name', actor, reason FROM audit_log
           WHERE table_name = 'frontier' AND op = 'U' AND new_row ->> 'code' = %s
           ORDER BY id DESC LIMIT 1""",
        (code,),
    ).fetchone()  # type: ignore[misc]
    assert (old, new, actor) == (f"Frontier {code}", "Renamed frontier", "tester")
    assert reason.startswith("registry import ")


def test_bad_row_writes_nothing(
    conn: psycopg.Connection, box: SecretBox, write_yaml: Callable[..., Path]
) -> None:
    good, bad = new_code(), new_code()
    path = write_yaml(frontier(good), frontier(bad, voltage_level=9))
    with pytest.raises(InventoryError) as exc:
        _import(conn, path, box)
    [issue] = exc.value.issues
    assert issue.file == str(path) and issue.line is not None
    assert path.read_text().splitlines()[issue.line - 1].strip() == "voltage_level: 9"
    assert conn.execute(
        "SELECT count(*) FROM frontier WHERE code = ANY(%s)", ([good, bad],)
    ).fetchone() == (0,)


def test_conflict_with_registry_rolls_back_everything(
    conn: psycopg.Connection, box: SecretBox, write_yaml: Callable[..., Path]
) -> None:
    """A meter active under another frontier: the whole file, already half-applied in the
    transaction, is rolled back."""
    owner, newcomer = new_code(), new_code()
    _import(conn, write_yaml(frontier(owner)), box)
    path = write_yaml(frontier(newcomer, meters=[meter(f"{owner}-P")]))
    audit_before = _audit_count(conn)
    with pytest.raises(InventoryError) as exc:
        _import(conn, path, box)
    [issue] = exc.value.issues
    assert f"active under frontier {owner}" in issue.message and issue.where.startswith(newcomer)
    assert issue.line is not None
    assert path.read_text().splitlines()[issue.line - 1].strip() == f"- serial: {owner}-P"
    count = conn.execute("SELECT count(*) FROM frontier WHERE code = %s", (newcomer,))
    assert count.fetchone() == (0,)
    assert _audit_count(conn) == audit_before


def test_replaced_meter_is_deactivated_not_deleted(
    conn: psycopg.Connection, box: SecretBox, write_yaml: Callable[..., Path]
) -> None:
    code = new_code()
    _import(conn, write_yaml(frontier(code)), box)
    # principal replaced by a new serial; principal and backup swap roles is also allowed
    replaced = frontier(code, meters=[meter(f"{code}-B"), meter(f"{code}-N", "backup")])
    report = _import(conn, write_yaml(replaced), box)
    assert report.meters_deactivated == 2  # old principal, and the backup changing role
    rows = {
        serial: (active, role)
        for serial, active, role in conn.execute(
            "SELECT serial, active, role FROM meter m JOIN frontier f ON f.id = m.frontier_id "
            "WHERE f.code = %s",
            (code,),
        )
    }
    assert rows == {
        f"{code}-P": (False, "principal"),
        f"{code}-B": (True, "principal"),
        f"{code}-N": (True, "backup"),
    }


def test_violations_stored_listed_and_cleared(
    conn: psycopg.Connection, box: SecretBox, write_yaml: Callable[..., Path]
) -> None:
    code = new_code()
    bad = frontier(code, meters=[meter(f"{code}-P", accuracy_active="0.5S")])
    report = _import(conn, write_yaml(bad), box)
    rules = {(f.rule, f.subject) for f in report.violations[code]}
    assert rules == {("backup_missing", ""), ("accuracy_active_below", f"{code}-P")}
    stored = conn.execute(
        "SELECT rule, subject, detected_at FROM frontier_violation v "
        "JOIN frontier f ON f.id = v.frontier_id WHERE f.code = %s ORDER BY rule",
        (code,),
    ).fetchall()
    assert {(r, s) for r, s, _ in stored} == rules
    # unchanged re-import keeps the first detection time
    _import(conn, write_yaml(bad), box)
    assert (
        conn.execute(
            "SELECT rule, subject, detected_at FROM frontier_violation v "
            "JOIN frontier f ON f.id = v.frontier_id WHERE f.code = %s ORDER BY rule",
            (code,),
        ).fetchall()
        == stored
    )
    # fixed → cleared
    _import(conn, write_yaml(frontier(code)), box)
    assert registry.list_registry(conn, code)[0]["violations"] == []


def test_secrets_encrypted_at_rest_and_decrypted_for_collector(
    conn: psycopg.Connection, box: SecretBox, write_yaml: Callable[..., Path]
) -> None:
    code = new_code()
    secret = "Very-Secret-Passw0rd"
    fr = frontier(
        code,
        meters=[
            meter(f"{code}-P", credentials=_creds("P", secret, "level-two-secret")),
            meter(f"{code}-B", "backup", endpoint="b:1", backup_endpoint="c:2", credentials=None),
        ],
    )
    report = _import(conn, write_yaml(fr), box)
    assert {(f.rule, f.subject) for f in report.violations[code]} == {
        ("level1_secret_missing", f"{code}-B"),
        ("level2_secret_missing", f"{code}-B"),
    }
    rows = conn.execute(
        "SELECT c.secret_enc FROM meter_credential c JOIN meter m ON m.id = c.meter_id "
        "WHERE m.serial = %s",
        (f"{code}-P",),
    ).fetchall()
    assert len(rows) == 2
    for (enc,) in rows:
        assert secret.encode() not in bytes(enc) and b"level-two-secret" not in bytes(enc)
    audit = conn.execute(
        "SELECT new_row::text FROM audit_log WHERE table_name = 'meter_credential'"
    )
    assert all(secret not in r[0] for r in audit)

    metres = registry.active_meters(conn, box, frontier=code)
    assert [m.serial for m in metres] == [f"{code}-P", f"{code}-B"]
    p, b = metres
    cred = p.credential(AccessLevel.READ)
    assert cred is not None and (cred.secret, cred.client) == (secret, "16")
    assert p.credentials[AccessLevel.CONFIGURE].secret == "level-two-secret"
    assert secret not in repr(p)
    assert (p.ct_ratio, p.vt_ratio, p.point_type, p.clock_limit_s) == (40, 110, 1, 30)
    assert p.channels == tuple(Channel)
    assert [str(e) for e in b.endpoints] == ["b:1", "c:2"] and b.credentials == {}
    got = registry.meter_credentials(conn, f"{code}-P", AccessLevel.READ, box)
    assert got is not None and got.secret == secret

    # List output never contains the secret, nor the ciphertext
    assert secret not in registry.to_json(registry.list_registry(conn, code))


async def test_async_read_api(
    db_url: str, conn: psycopg.Connection, box: SecretBox, write_yaml: Callable[..., Path]
) -> None:
    code = new_code()
    fr = frontier(code, meters=[meter(f"{code}-P", credentials=_creds("P", "async-pw"))])
    _import(conn, write_yaml(fr), box)
    async with await psycopg.AsyncConnection.connect(db_url) as aconn:
        [m] = await registry.active_meters_async(aconn, box, frontier=code)
        cred = await registry.meter_credentials_async(aconn, m.serial, AccessLevel.READ, box)
    assert m.credential(AccessLevel.READ).secret == "async-pw"  # type: ignore[union-attr]
    assert cred is not None and cred.secret == "async-pw"


def test_changed_secret_is_reencrypted_unchanged_is_not(
    conn: psycopg.Connection, box: SecretBox, write_yaml: Callable[..., Path]
) -> None:
    code = new_code()
    ms = lambda pw: [meter(f"{code}-P", credentials=_creds("P", pw))]  # noqa: E731
    _import(conn, write_yaml(frontier(code, monthly_energy_mwh=10, meters=ms("one"))), box)
    r = _import(conn, write_yaml(frontier(code, monthly_energy_mwh=10, meters=ms("one"))), box)
    assert r.credentials_changed == 0
    r = _import(conn, write_yaml(frontier(code, monthly_energy_mwh=10, meters=ms("two"))), box)
    assert r.credentials_changed == 1
    [m] = registry.active_meters(conn, box, frontier=code)
    assert m.credential(AccessLevel.READ).secret == "two"  # type: ignore[union-attr]


def test_dry_run_rolls_back(
    conn: psycopg.Connection, box: SecretBox, write_yaml: Callable[..., Path]
) -> None:
    code = new_code()
    report = registry.import_inventory(
        conn, registry.load(write_yaml(frontier(code))), box, actor="t", dry_run=True
    )
    assert report.frontiers_inserted == 1 and report.dry_run
    assert registry.list_registry(conn, code) == []


def test_understated_type_governs_nowhere_even_in_older_rows(
    conn: psycopg.Connection, box: SecretBox, write_yaml: Callable[..., Path]
) -> None:
    """Declared type 3 at 20,000 MWh/month: stored, listed and collected as type 1 (30 s);
    a row written before the stricter type governed is read back as type 1 too."""
    code = new_code()
    creds = _creds("P", "pw-l1-aaaa", "pw-l2-bbbb")
    path = write_yaml(frontier(code, point_type=3, meters=[meter(f"{code}-P", credentials=creds)]))
    report = _import(conn, path, box)
    assert "point_type_understated" in {f.rule for f in report.violations[code]}
    conn.execute("UPDATE frontier SET point_type = 3 WHERE code = %s", (code,))  # older row
    [fr] = registry.list_registry(conn, code)
    assert (fr["point_type"], fr["clock_limit_s"], fr["backup_required"]) == (1, 30, True)
    [target] = registry.active_meters(conn, box, frontier=code)
    assert (target.point_type, target.clock_limit_s) == (1, 30)


def test_csv_broker_login_is_stored_encrypted_and_reaches_the_collector(
    conn: psycopg.Connection, box: SecretBox, tmp_path: Path
) -> None:
    code = new_code()
    p = tmp_path / "inv.csv"
    p.write_text(
        "frontier_code,frontier_name,kind,voltage_level,monthly_energy_mwh,serial,role,"
        "protocol,endpoint,param.serial,level1_secret,level2_secret,broker_username,"
        "broker_password\n"
        f"{code},A,distribution,2,100,{code}-P,principal,mqtt,h:1883,{code}-P,r1,c2,cgm,"
        "csv-broker-pw\n"
    )
    _import(conn, p, box)
    (enc,) = conn.execute(
        "SELECT secret_enc FROM meter_credential c JOIN meter m ON m.id = c.meter_id "
        "WHERE m.serial = %s AND c.level = 0", (f"{code}-P",),
    ).fetchone()  # fmt: skip
    assert b"csv-broker-pw" not in bytes(enc)
    [target] = registry.active_meters(conn, box, frontier=code)
    assert target.broker is not None
    assert (target.broker.username, target.broker.password) == ("cgm", "csv-broker-pw")
    assert _import(conn, p, box).credentials_changed == 0  # re-import: nothing changes
