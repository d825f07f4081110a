"""``cgm audit``: a fleet with one planted violation per frontier, each found with its
evidence, and a compliant frontier that passes every check."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime, timedelta

import psycopg

from cgm import failures, hoja_de_vida
from cgm.cli import main
from cgm.compliance_audit import audit
from cgm.config import get_settings
from cgm.localtime import hour_starts, local_day
from cgm.security import secret_box

from .test_table5 import cli_db  # noqa: F401 - the fixture


async def _frontier(
    c: psycopg.AsyncConnection, code: str, now: datetime, **over: object
) -> None:
    """A compliant type-3 frontier as of ``now``; ``over`` plants one violation."""
    today = local_day(now)
    cur = await c.execute(
        """INSERT INTO frontier (code, name, kind, voltage_level, point_type, operation_start,
                                 calibration_interval_years)
           VALUES (%s, 't', 'commercialisation', 2, %s, %s, %s) RETURNING id""",
        (code, over.get("point_type", 3), over.get("since", today - timedelta(days=400)),
         over.get("cal_years")),
    )
    (fid,) = await cur.fetchone()
    cur = await c.execute(
        """INSERT INTO meter (frontier_id, serial, role, protocol, primary_host, primary_port,
                              accuracy_active, accuracy_reactive)
           VALUES (%s, %s, 'principal', 'dlms', 'h', 1, %s, '2') RETURNING id""",
        (fid, f"M{code}", over.get("accuracy", "0.5S")),
    )
    (mid,) = await cur.fetchone()
    await c.execute(
        """INSERT INTO meter_health (meter_id, clock_offset_s, last_success, config_findings)
           VALUES (%s, %s, %s, %s)""",
        (mid, 1.5, now - timedelta(hours=1), over.get("findings", [])),
    )
    # Every hour of the last day was read; the planted offset is one read early in the day,
    # the last read is fine (the audit takes the worst of the day, not the last).
    offsets = [1.5, -2.0, 1.0] * 8
    if "offset" in over:
        offsets[3] = over["offset"]
    for h, off in enumerate(offsets):
        at = now - timedelta(hours=23 - h, minutes=30)
        await c.execute(
            """INSERT INTO collection_session (meter_id, cycle, collector, started_at,
                   finished_at, result, attempts, clock_offset_s)
               VALUES (%s, %s, 't', %s, %s, 'ok', 1, %s)""",
            (mid, at, at, at, off),
        )
    box = secret_box(get_settings())
    for level in over.get("levels", (1, 2)):
        secret = "same-secret-1234" if over.get("same_secrets") else f"secret-of-level-{level}"
        await c.execute("INSERT INTO meter_credential (meter_id, level, secret_enc) "
                        "VALUES (%s, %s, %s)", (mid, level, box.encrypt(secret)))  # fmt: skip
    add = hoja_de_vida.add_entry
    for kind, cls in (("ct", over.get("ct_class", "0.5S")), ("vt", "0.5")):
        serial = f"{kind}{code}"
        await add(c, frontier=code, section="equipment", entry_date=today,
                  data={"kind": kind, "serial": serial, "phase": "A", "accuracy_class": cls},
                  actor="t")  # fmt: skip
        if not (kind == "ct" and over.get("uncalibrated")):
            await add(c, frontier=code, section="calibration",
                      entry_date=over.get("calibrated", today) if kind == "ct" else today,
                      data={"element_serial": serial, "laboratory": "L", "certificate": "C",
                            "result": "ok"}, actor="t")  # fmt: skip
    await add(c, frontier=code, section="calibration", entry_date=today,
              data={"element_serial": f"M{code}", "laboratory": "L", "certificate": "C",
                    "result": "ok"}, actor="t")  # fmt: skip
    if not over.get("no_maintenance"):
        await add(c, frontier=code, section="maintenance", entry_date=today - timedelta(days=30),
                  data={"status": "done", "description": "x"}, actor="t")  # fmt: skip
    for n in range(1, 8):
        day = today - timedelta(days=n)
        if day == over.get("unreported"):
            continue
        await c.execute(
            """INSERT INTO asic_document (frontier_id, meter_id, role, day, file_name, kind,
                   content, content_hash, settled_version, state)
               VALUES (%s, %s, 'principal', %s, 'x', 'original', '{}', %s, 1, 'success')""",
            (fid, mid, day, f"{code}{day}"),
        )
    for k in range(over.get("estimated", 0)):
        day = today - timedelta(days=1 + k // 24)
        await c.execute(
            """INSERT INTO settled_reading (frontier_id, channel, interval_start, value, source,
                                            method) VALUES (%s, 1, %s, 1, 'estimate', 'x')""",
            (fid, hour_starts(day)[k % 24]),
        )
    for k in range(over.get("failures", 0)):
        at = now - timedelta(days=10 * (k + 1))
        eid, _ = await failures.open_event(c, frontier=code, element="ct", kind="failure",
                                           started_at=at, description="x", actor="t")  # fmt: skip
        await failures.close_event(c, eid, ended_at=at + timedelta(hours=1), note="x", actor="t")


def planted(today: date) -> dict[str, tuple[dict[str, object], str, str]]:
    """code: (violation, check that must fail, text its evidence must contain)."""
    return {
        "Frt100": ({"point_type": 2, "accuracy": "0.2S"}, "backup_meter", "requires a backup"),
        "Frt101": ({"accuracy": "1"}, "table2_classes", "active class 1 below 0.5S"),
        "Frt102": ({"ct_class": "1"}, "table2_classes", "CT ctFrt102: class 1 below 0.5S"),
        "Frt103": ({"offset": -75.0}, "clock", "offset -75.0 s at "),
        "Frt104": ({"findings": ["capture period 900 s, expected 3600 s"]}, "capture_and_memory",
                   "capture period 900 s"),
        "Frt105": ({"levels": (1,)}, "access_levels", "levels [1], need 1 and 2"),
        "Frt106": ({"since": date(2015, 1, 1), "no_maintenance": True}, "maintenance_calibration",
                   "maintenance overdue since 2019-01-01"),
        "Frt107": ({"uncalibrated": True}, "maintenance_calibration",
                   "ct ctFrt107: no calibration certificate"),
        "Frt108": ({"since": date(2015, 1, 1), "failures": 3}, "table5_failures",
                   "3 failures in 12 months, Table 5 limit 2"),
        "Frt109": ({"unreported": today - timedelta(days=3)}, "reporting",
                   f"1 of the last 7 days not accepted by the ASIC: {today - timedelta(days=3)}"),
        "Frt110": ({"estimated": 80}, "reporting", "80 estimated hours in the last 7 days"),
        "Frt111": ({"same_secrets": True}, "access_levels",
                   "level-1 and level-2 secrets are identical"),
        "Frt112": ({"calibrated": today - timedelta(days=5 * 365)}, "maintenance_calibration",
                   "every 4 years, Table 4 default for type 3"),
        "Frt113": ({"calibrated": today - timedelta(days=400), "cal_years": 1},
                   "maintenance_calibration", "every 1 years, registry setting"),
    }


def test_audit_finds_every_planted_violation(cli_db: str, capsys) -> None:  # noqa: F811
    # "Now" taken here, not at import: the CLI below audits at the real now, and a suite
    # that crosses Colombian midnight between collection and this test saw another day.
    now = datetime.now(UTC)
    PLANTED = planted(local_day(now))

    async def build() -> list:
        async with await psycopg.AsyncConnection.connect(cli_db, autocommit=True) as c:
            await _frontier(c, "Frt1", now)
            for code, (over, _, _) in PLANTED.items():
                await _frontier(c, code, now, **over)
            return await audit(c, now=now, box=secret_box(get_settings()))

    results = {r.code: r for r in asyncio.run(build())}
    good = results["Frt1"]
    assert good.ok, dict(good.failures)
    for code, (_, check, evidence) in PLANTED.items():
        r = results[code]
        assert set(r.failures) == {check}, (code, dict(r.failures))
        assert any(evidence in e for e in r.failures[check]), (code, r.failures[check])

    assert main(["audit", "--json"]) == 1  # something fails: exit 1
    report = json.loads(capsys.readouterr().out)
    assert report["frontiers"] == 15 and report["failed"] == 14
    assert report["audit_chain"]["ok"] is True
    by = {r["frontier"]: r for r in report["results"]}
    (evidence,) = by["Frt103"]["checks"]["clock"]["evidence"]
    assert evidence.startswith("MFrt103: offset -75.0 s at ")
    assert evidence.endswith("beyond the 60 s limit (largest of 24 reads in the last day)")
    assert main(["audit", "check", "--frontier", "Frt1"]) == 0
    text = capsys.readouterr().out
    assert "Frt1  PASS" in text and "audit chain  PASS" in text
    assert main(["audit", "--frontier", "Frt105"]) == 1
    assert "FAIL access_levels: MFrt105: credentials for levels [1]" in capsys.readouterr().out
    assert main(["audit", "--frontier", "Frt999"]) == 2  # unknown: a clear error


def test_audit_reads_corrected_hoja_entries_as_corrected(cli_db: str) -> None:  # noqa: F811
    """A CT recorded with a wrong class and then corrected passes; a calibration voided by a
    later entry no longer counts; the originals stay in the record."""

    now = datetime.now(UTC)

    async def go() -> tuple[list, list, dict]:
        async with await psycopg.AsyncConnection.connect(cli_db, autocommit=True) as c:
            await _frontier(c, "Frt200", now, ct_class="1")
            await _frontier(c, "Frt201", now)
            before = await audit(c, now=now, box=secret_box(get_settings()))
            cur = await c.execute(
                "SELECT e.id, e.section FROM hoja_entry e JOIN frontier f ON f.id = e.frontier_id"
                " WHERE (f.code, e.section) IN (('Frt200', 'equipment'), ('Frt201', "
                "'calibration')) AND e.data->>'kind' IS DISTINCT FROM 'vt'"
                " AND coalesce(e.data->>'element_serial', 'ctFrt201') = 'ctFrt201'"
            )
            ids = dict((s, i) for i, s in await cur.fetchall())
            await hoja_de_vida.correct_entry(
                c, frontier="Frt200", entry_id=ids["equipment"], action="correct",
                reason="class misread from the plate", actor="t",
                data={"kind": "ct", "serial": "ctFrt200", "phase": "A",
                      "accuracy_class": "0.5S"})  # fmt: skip
            await hoja_de_vida.correct_entry(
                c, frontier="Frt201", entry_id=ids["calibration"], action="void",
                reason="certificate belongs to another CT", actor="t")  # fmt: skip
            after = await audit(c, now=now, box=secret_box(get_settings()))
            return before, after, await hoja_de_vida.record(c, "Frt200")

    before, after, rec = asyncio.run(go())
    b, a = {r.code: r for r in before}, {r.code: r for r in after}
    assert set(b["Frt200"].failures) == {"table2_classes"} and b["Frt201"].ok
    assert a["Frt200"].ok, dict(a["Frt200"].failures)
    assert a["Frt201"].failures["maintenance_calibration"] == [
        "ct ctFrt201: no calibration certificate"]  # fmt: skip
    cts = [e for e in rec["equipment"] if e["serial"] == "ctFrt200"]
    assert [(e["accuracy_class"], e["entry_status"]) for e in cts] == [
        ("1", "corrected"), ("0.5S", "current")]  # fmt: skip
    assert cts[1]["corrects"] == cts[0]["id"] == cts[1]["corrects"]
    assert cts[0]["superseded_by"] == cts[1]["id"]


def test_audit_without_the_key_does_not_pass_access_levels(cli_db: str) -> None:  # noqa: F811
    now = datetime.now(UTC)

    async def go() -> list:
        async with await psycopg.AsyncConnection.connect(cli_db, autocommit=True) as c:
            await _frontier(c, "Frt300", now)
            return await audit(c, now=now)

    (r,) = asyncio.run(go())
    assert r.failures["access_levels"] == [
        "MFrt300: secrets not compared: no encryption key given to the audit"]  # fmt: skip
