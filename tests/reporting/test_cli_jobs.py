"""``cgm report`` commands and the service hook, end to end."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from apscheduler.triggers.cron import CronTrigger

from cgm.cli import main
from cgm.config import Settings, get_settings
from cgm.reporting.schedule import register_jobs
from cgm.service import Service
from simulators.asic import AsicSimulator
from tests.reporting.conftest import backup_readings, make_frontier, rows, settle


@pytest.fixture
def sim_thread() -> Iterator[tuple[AsicSimulator, str]]:
    sim = AsicSimulator(client_id="cgm-cli", client_secret="cli-s3cret")
    url = sim.start_in_thread()
    yield sim, url
    sim.stop_thread()


@pytest.fixture
def cli_env(db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim_thread) -> Iterator[str]:
    monkeypatch.setenv("CGM_DATABASE_URL", db)
    monkeypatch.setenv("CGM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CGM_ASIC_BASE_URL", sim_thread[1])
    monkeypatch.setenv("CGM_ASIC_CLIENT_ID", "cgm-cli")
    monkeypatch.setenv("CGM_ASIC_CLIENT_SECRET", "cli-s3cret")
    get_settings.cache_clear()
    yield db
    get_settings.cache_clear()


@pytest.fixture
def ops(cli_env: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """CLI arguments authenticating a level-2 user (created through ``cgm user add``)."""
    monkeypatch.setenv("CGM_T_OPS_PW", "ops-password-long-enough")
    name = f"ops-{id(monkeypatch)}"
    assert main(["user", "add", name, "--level", "2", "--password-env", "CGM_T_OPS_PW"]) == 0
    return ["--user", name, "--password-env", "CGM_T_OPS_PW"]


def _frontier(db: str, sim: AsicSimulator):
    async def go():
        fr = await make_frontier(db)
        await settle(db, fr, estimate={7: "typical_curve"})
        await backup_readings(db, fr)
        return fr

    fr = asyncio.run(go())
    sim.known_frontiers.add(fr.code)
    return fr


def test_dry_run_send_status_hold(cli_env, sim_thread, tmp_path, capsys, ops) -> None:
    db = cli_env
    sim = sim_thread[0]
    fr = _frontier(db, sim)
    out = tmp_path / "out"
    assert main(["report", "asic", "--day", "2026-03-01", "--dry-run", "--out", str(out)]) == 0
    files = sorted(p.name for p in out.iterdir())
    # The default XM message: one XML for every frontier; the stored record of each item
    # (with its estimated hours, which the XML cannot carry) beside it.
    assert f"{fr.code}_P_20260301.json" in files and "estimacion_20260301.json" in files
    (xml,) = [f for f in files if f.endswith(".xml")]
    assert b"<BorderCode>" + fr.code.encode() in (out / xml).read_bytes()
    est = json.loads((out / "estimacion_20260301.json").read_text())["estimated"]
    assert est == [
        {"frontier": fr.code, "day": "2026-03-01", "serie": serie, "periodos": [7],
         "metodo": "typical_curve"}
        for serie in ("lecturas", "lecturasReactiva")
    ]  # fmt: skip
    assert sim.messages == {}  # a dry run sends nothing
    assert asyncio.run(rows(db, "SELECT 1 FROM asic_document")) == []

    assert main(["report", "hold", "--frontier", fr.code, "--reason", "review", *ops]) == 0
    capsys.readouterr()
    assert main(["report", "asic", "--day", "2026-03-01", "--wait", "0"]) == 0
    assert "held" in capsys.readouterr().out and sim.messages == {}
    assert main(["report", "status", "--day", "2026-03-01"]) == 0
    assert "HELD: review" in capsys.readouterr().out

    assert main(["report", "release", "--frontier", fr.code, "--reason", "ok", *ops]) == 0
    assert capsys.readouterr().out.endswith(f"{fr.code} released\n")
    assert main(["report", "asic", "--day", "2026-03-01", "--wait", "20", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert len(summary["sent"]) == 2 and summary["still_processing"] == 0
    assert main(["report", "status", "--day", "2026-03-01", "--json"]) == 0
    status = {s["frontier"]: s for s in json.loads(capsys.readouterr().out)}
    docs = status[fr.code]["documents"]
    assert {(d["role"], d["state"]) for d in docs} == {
        ("principal", "success"),  # XM's XML has no field for estimated hours
        ("backup", "success"),
    }
    assert all(d["message_id"] and d["sent_at"] for d in docs)


def test_hold_unknown_frontier_is_an_error(cli_env, capsys, ops) -> None:
    assert main(["report", "hold", "--frontier", "Frt999999999", "--reason", "x", *ops]) == 2
    assert "unknown frontier" in capsys.readouterr().err


def test_secret_not_in_settings_repr() -> None:
    s = Settings(database_url="postgresql://db/cgm", asic_client_secret="very-secret-value")
    assert "very-secret-value" not in repr(s) and "very-secret-value" not in str(s)


async def test_register_jobs_schedules_daily_and_poll(db: str) -> None:
    s = Settings(
        database_url=db,
        asic_base_url="http://127.0.0.1:9",
        asic_client_id="x",
        asic_client_secret="y",
        asic_report_time="05:30",
    )
    service = Service(s, db_url=db)
    jobs = register_jobs(service)
    for hook in service.on_start:
        await hook(service)
    daily = service.scheduler.get_job("asic-daily")
    assert isinstance(daily.trigger, CronTrigger)
    assert "hour='5'" in str(daily.trigger) and "minute='30'" in str(daily.trigger)
    assert service.scheduler.get_job("asic-poll") is not None
    for hook in service.on_stop:
        await hook(service)
    assert jobs.reporter is not None


async def test_register_jobs_without_url_schedules_nothing(db: str) -> None:
    service = Service(Settings(database_url=db), db_url=db)
    register_jobs(service)
    for hook in service.on_start:
        await hook(service)
    assert service.scheduler.get_jobs() == []


def test_refused_token_leaves_documents_pending_until_the_secret_is_fixed(
    cli_env, sim_thread, monkeypatch, capsys
) -> None:
    db = cli_env
    sim = sim_thread[0]
    fr = _frontier(db, sim)
    monkeypatch.setenv("CGM_ASIC_CLIENT_SECRET", "a-wrong-secret")
    get_settings.cache_clear()
    assert main(["report", "asic", "--day", "2026-03-01", "--frontier", fr.code,
                 "--wait", "0"]) == 1  # fmt: skip
    assert "token refused" in capsys.readouterr().out
    states = asyncio.run(rows(
        db, "SELECT state FROM asic_document d JOIN frontier f ON f.id = d.frontier_id "
            "WHERE f.code = %s", fr.code,
    ))  # fmt: skip
    assert states == [("pending",), ("pending",)] and sim.messages == {}
    # The operator fixes the secret: the next run sends them (it used to say "sent 0,
    # unchanged 2", the documents marked failed for good).
    monkeypatch.setenv("CGM_ASIC_CLIENT_SECRET", "cli-s3cret")
    get_settings.cache_clear()
    assert main(["report", "asic", "--day", "2026-03-01", "--frontier", fr.code,
                 "--wait", "20", "--json"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert len(summary["sent"]) == 2 and summary["unchanged"] == []


def test_operator_forces_a_resend_as_a_level2_user(cli_env, sim_thread, monkeypatch, capsys):
    from cgm.security import users

    db = cli_env
    sim = sim_thread[0]
    fr = _frontier(db, sim)
    day = ["report", "asic", "--day", "2026-03-01", "--frontier", fr.code, "--wait", "20"]
    assert main(day) == 0
    assert len(sim.messages) == 1
    assert main(day) == 0 and len(sim.messages) == 1  # unchanged: not sent again

    async def add(name: str, level: int) -> None:
        import psycopg

        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as c:
            await users.add_user(c, name, "resend password long", level, actor="test")

    asyncio.run(add("ana-resend", 2))
    asyncio.run(add("luis-resend", 1))
    monkeypatch.setenv("RESEND_PW", "resend password long")
    capsys.readouterr()
    resend = [*day, "--resend", "--password-env", "RESEND_PW", "--reason", "ASIC asked again"]
    assert main([*resend, "--user", "luis-resend"]) == 2
    assert "needs level 2" in capsys.readouterr().err and len(sim.messages) == 1
    assert main(day + ["--resend", "--user", "ana-resend", "--password-env", "RESEND_PW"]) == 2
    assert "--reason" in capsys.readouterr().err
    assert main([*resend, "--user", "ana-resend"]) == 0
    out = capsys.readouterr().out
    assert "2 documents marked for re-send by cli:ana-resend" in out
    assert len(sim.messages) == 2  # uploaded again
    log = asyncio.run(rows(
        db, "SELECT l.actor, l.purpose FROM frontier_log l JOIN frontier f "
            "ON f.id = l.frontier_id WHERE f.code = %s AND l.kind = 'level2_access'", fr.code,
    ))  # fmt: skip
    assert log == [("cli:ana-resend", "ASIC asked again")]
    detail = asyncio.run(rows(db, "SELECT d.detail->'resend'->>'previous_state' FROM "
                                  "asic_document d JOIN frontier f ON f.id = d.frontier_id "
                                  "WHERE f.code = %s", fr.code))  # fmt: skip
    assert len(detail) == 2  # who and why stay on each document beside the new answer
    assert all(d in {"waiting", "success", "success_warning"} for (d,) in detail)
