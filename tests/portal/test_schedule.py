"""The scheduled portal push of ``cgm run``: scheduled at the configured local time only when
a portal endpoint is configured, delivering complete days to the portal simulator over real
HTTP and re-pushing a corrected day as a new version; ``cgm run --simulate`` wires the push
to a portal simulator of its own."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from apscheduler.triggers.cron import CronTrigger

from cgm.config import Settings
from cgm.localtime import local_day
from cgm.portal.push import delivery_log
from cgm.portal.schedule import days_to_push, register_jobs
from cgm.service import Service
from simulators.portal import PortalSimulator
from tests.portal.test_push import DAY, _meter, _settle


async def test_push_job_scheduled_at_the_configured_time_only_with_an_endpoint(
    db_url: str,
) -> None:
    service = Service(Settings(database_url=db_url), db_url=db_url)
    job = register_jobs(service)
    await job.start(service)
    assert service.scheduler.get_jobs() == []  # no endpoint: nothing scheduled

    s = Settings(database_url=db_url, portal_push_url="http://127.0.0.1:9/x",
                 portal_push_time="05:30")  # fmt: skip
    service = Service(s, db_url=db_url)
    job = register_jobs(service)
    await job.start(service)
    (daily,) = service.scheduler.get_jobs()
    assert daily.id == "portal-push" and isinstance(daily.trigger, CronTrigger)
    fields = {f.name: str(f) for f in daily.trigger.fields}
    assert (fields["hour"], fields["minute"]) == ("5", "30")
    assert str(daily.trigger.timezone) in ("COT", "UTC-05:00")


def test_days_to_push_are_the_days_before_today() -> None:
    assert days_to_push(DAY, 3) == [DAY - timedelta(days=n) for n in (3, 2, 1)]


async def test_push_job_delivers_and_repushes_a_corrected_day_as_a_new_version(
    db_url: str, conn: psycopg.AsyncConnection, tmp_path: Path
) -> None:
    number, fid = await _meter(db_url, conn, tmp_path)
    await _settle(conn, fid, DAY, 24, est=2)
    await _settle(conn, fid, DAY + timedelta(days=1), 20, est=None)  # incomplete: held
    with PortalSimulator() as portal:
        s = Settings(database_url=db_url, portal_push_url=portal.url, portal_push_days=2,
                     portal_push_attempts=2)  # fmt: skip
        job = register_jobs(Service(s, db_url=db_url))
        today = DAY + timedelta(days=2)
        await job.run(today)
        (v1,) = portal.state.versions(number, DAY.isoformat())
        assert v1["version"] == 1 and v1["estimated_hours"] == 1
        assert portal.state.versions(number, (DAY + timedelta(days=1)).isoformat()) == []

        # Unchanged: the next run sends nothing for it.
        sent = portal.state.requests
        await job.run(today)
        assert len(portal.state.versions(number, DAY.isoformat())) == 1

        # A correction of the settled day, then the next run: version 2, marked as such.
        await _settle(conn, fid, DAY, 24, est=None, value=7.0)
        await job.run(today)
        v1, v2 = portal.state.versions(number, DAY.isoformat())
        assert (v2["version"], v2["correction"], v2["estimated_hours"]) == (2, True, 0)
        assert v2["total_kwh"] == sum(7.0 + i for i in range(24))
        assert portal.state.requests > sent
        log = await delivery_log(conn, DAY, number)
        assert [(e["version"], e["state"]) for e in log] == [(2, "delivered"), (1, "delivered")]


async def test_scheduler_runs_the_push_job_and_it_lands_in_the_portal(
    db_url: str, conn: psycopg.AsyncConnection, tmp_path: Path
) -> None:
    """The job as the service's scheduler runs it (interval trigger), not called by hand."""
    number, fid = await _meter(db_url, conn, tmp_path)
    yesterday = local_day(datetime.now(UTC)) - timedelta(days=1)
    await _settle(conn, fid, yesterday, 24, est=5)
    with PortalSimulator() as portal:
        s = Settings(database_url=db_url, portal_push_url=portal.url, portal_push_days=1,
                     portal_push_interval_s=0.5)  # fmt: skip
        service = Service(s, db_url=db_url)
        job = register_jobs(service)
        for hook in service.on_start:
            await hook(service)
        assert {j.id for j in service.scheduler.get_jobs()} == {
            "portal-push", "portal-push-interval"}  # fmt: skip
        service.scheduler.start()
        try:
            for _ in range(600):  # a loaded host can be slow; the first run lands in ~0.5 s
                if job.runs:  # one whole run done (every linked meter of the database)
                    break
                await asyncio.sleep(0.1)
        finally:
            service.scheduler.shutdown(wait=False)
        (v1,) = portal.state.versions(number, yesterday.isoformat())
        assert v1["day"] == yesterday.isoformat() and v1["estimated_hours"] == 1
        assert any(s.delivered for run in job.runs for s in run)


async def test_cgm_run_simulate_pushes_to_its_own_portal_simulator(
    db_url: str, conn: psycopg.AsyncConnection, monkeypatch, tmp_path: Path
) -> None:
    from cgm.commands.run import _import_demo_portal, build_service
    from cgm.portal import store
    from tests.api.conftest import make_frontier

    monkeypatch.setenv("CGM_DATABASE_URL", db_url)
    monkeypatch.setenv("CGM_API_PORT", "0")
    monkeypatch.setenv("CGM_PORTAL_PUSH_URL", "http://portal.example.invalid/push")
    svc = build_service(simulate=2)
    portal = svc.portal_simulator  # type: ignore[attr-defined]
    try:
        # Never the configured portal: the simulator's, often enough to watch.
        assert svc.settings.portal_push_url == portal.url
        assert svc.settings.portal_push_interval_s == 60.0
        from cgm.config import get_settings

        assert get_settings().portal_push_url == "http://portal.example.invalid/push"
        svc.db_url = db_url
        await svc.portal_push.start(svc)  # type: ignore[attr-defined]
        assert {j.id for j in svc.scheduler.get_jobs()} >= {"portal-push", "portal-push-interval"}
    finally:
        portal.server.server_close()
    # The demo's portal inventory: an owner of the simulated frontiers' meters, and a unit
    # sharing the first one.
    codes = [(await make_frontier(db_url)).code for _ in range(2)]
    demo = Service(Settings(database_url=db_url, data_dir=tmp_path), db_url=db_url)
    await _import_demo_portal(demo, codes)
    owned = await store.unit_meters(conn, "SIM-OWNER")
    assert {m["meter"] for m in owned} >= {f"SIM-{c}" for c in codes}
    shared = await store.unit_meters(conn, "SIM-SHARED")
    assert (f"SIM-{codes[0]}", "associated") in {(m["meter"], m["relation"]) for m in shared}
