"""Frontiers reported monthly (registry ``asic_period: monthly``, XM's ReadingCount 1): sent
by the monthly job in XM's message against the ASIC simulator, once per version; left out of
the daily report, which goes on unchanged for daily-hourly frontiers."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import psycopg
from apscheduler.triggers.cron import CronTrigger

from cgm.config import Settings
from cgm.localtime import hour_starts
from cgm.reporting.schedule import register_jobs
from cgm.service import Service
from cgm.storage import SettledValue, write_settled

from .conftest import backup_readings, make_frontier, rows, settle, value
from .test_cli_jobs import cli_env, sim_thread  # noqa: F401 - fixtures

FEB = [date(2026, 2, 1) + timedelta(days=n) for n in range(28)]
MARCH_2 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


async def _monthly(db: str, fr) -> None:  # noqa: ANN001
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as c:
        await c.execute("UPDATE frontier SET asic_period = 'monthly' WHERE id = %s", (fr.id,))


async def test_monthly_frontiers_sent_monthly_daily_ones_unaffected(db, asic,
                                                                    make_reporter) -> None:
    sim, _ = asic
    monthly, daily = await make_frontier(db), await make_frontier(db)
    await _monthly(db, monthly)
    for d in FEB:
        await settle(db, monthly, d, channels=(1,))
        await backup_readings(db, monthly, d)
    await settle(db, daily, FEB[-1])
    await backup_readings(db, daily, FEB[-1])
    sim.known_frontiers.update({monthly.code, daily.code})
    reporter = make_reporter(asic_format="xm_xml", now=MARCH_2)

    # The monthly job on 2 March: February, of the monthly frontier only, in one message.
    result = await reporter.run_monthly()
    assert result.month == date(2026, 2, 1) and not result.failed and not result.rejected
    assert sorted(result.sent) == [f"{monthly.code}_P_202602", f"{monthly.code}_R_202602"]
    (msg,) = sim.messages.values()
    assert msg.zip_name.startswith("CGM0042_202602_M_") and msg.zip_name.endswith(".xml")
    got = {d["IsBackup"]: d for d in msg.documents.values()}
    day_total = sum(value(1, p) for p in range(1, 25))
    assert got[False]["BorderCode"] == monthly.code
    assert got[False]["StartDate"] == "2026-02-01T00:00:00"
    assert got[False]["Readings"] == [28 * day_total]  # one value: ReadingCount 1
    assert abs(got[True]["Readings"][0] - 28 * day_total * 1.01) < 1e-3
    assert await reporter.poll(rounds=20, interval_s=0.05) == 0
    stored = await rows(db, "SELECT role, day, period, state, kind FROM asic_document "
                        "WHERE frontier_id = %s ORDER BY role DESC", monthly.id)  # fmt: skip
    assert stored == [("principal", date(2026, 2, 1), "month", "success", "original"),
                      ("backup", date(2026, 2, 1), "month", "success", "original")]  # fmt: skip

    # The daily report of 28 February: the daily frontier only, 24 hourly values.
    day = await reporter.report_day(FEB[-1], [monthly.code, daily.code])
    assert sorted(day.sent) == [f"{daily.code}_P_20260228", f"{daily.code}_R_20260228"]
    assert "reported monthly" in day.build.not_ready[monthly.code]

    # Sent once: again, nothing new; a changed month goes again as a correction.
    again = await reporter.report_month(date(2026, 2, 1))
    assert again.sent == [] and len(again.unchanged) == 2 and len(sim.messages) == 2
    async with await psycopg.AsyncConnection.connect(db) as c:
        await write_settled(c, [SettledValue(monthly.id, 1, hour_starts(FEB[3])[4], 999.0,
                                             "principal")], actor="vee", reason="re-read")
    fixed = await reporter.report_month(date(2026, 2, 1))
    assert fixed.sent == [f"{monthly.code}_P_202602"] and fixed.unchanged == [
        f"{monthly.code}_R_202602"]  # fmt: skip
    new = [m for m in sim.messages.values() if m is not msg and "_M_" in m.zip_name][-1]
    (item,) = new.documents.values()
    assert item["Readings"] == [28 * day_total - value(1, 5) + 999.0]
    kinds = await rows(db, "SELECT kind FROM asic_document WHERE frontier_id = %s "
                       "AND role = 'principal' ORDER BY id", monthly.id)  # fmt: skip
    assert kinds == [("original",), ("correction",)]


async def test_incomplete_or_held_months_are_not_sent(db, asic, make_reporter) -> None:
    sim, _ = asic
    short = await make_frontier(db, backup=False)
    await _monthly(db, short)
    for d in FEB[:-1]:
        await settle(db, short, d, channels=(1,))
    sim.known_frontiers.add(short.code)
    result = await make_reporter(asic_format="xm_xml", now=MARCH_2).run_monthly()
    assert result.sent == [] and result.not_ready == {short.code: "settled series 648/672 hours"}
    assert sim.messages == {}


async def test_cgm_run_schedules_the_monthly_job(db: str) -> None:
    s = Settings(database_url=db, asic_base_url="http://127.0.0.1:9", asic_client_id="x",
                 asic_client_secret="y", asic_report_time="05:30",
                 asic_monthly_report_day=3)  # fmt: skip
    service = Service(s, db_url=db)
    register_jobs(service)
    for hook in service.on_start:
        await hook(service)
    job = service.scheduler.get_job("asic-monthly")
    assert isinstance(job.trigger, CronTrigger)
    text = str(job.trigger)
    assert "day='3'" in text and "hour='5'" in text and "minute='30'" in text
    for hook in service.on_stop:
        await hook(service)


def test_cli_sends_a_month(cli_env, sim_thread, capsys) -> None:  # noqa: F811
    import asyncio
    import json

    from cgm.cli import main

    db, sim = cli_env, sim_thread[0]

    async def setup():  # noqa: ANN202
        fr = await make_frontier(db, backup=False)
        await _monthly(db, fr)
        for d in FEB:
            await settle(db, fr, d, channels=(1,))
        return fr

    fr = asyncio.run(setup())
    sim.known_frontiers.add(fr.code)
    assert main(["report", "asic-month", "--month", "2026-02", "--send"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["month"] == "2026-02" and out["sent"] == [f"{fr.code}_P_202602"]
    assert main(["report", "asic-month", "--month", "2026-02", "--send"]) == 0
    assert json.loads(capsys.readouterr().out)["unchanged"] == [f"{fr.code}_P_202602"]
    assert len(sim.messages) == 1
