# ruff: noqa: F811 - the env fixture is shared from test_engine
"""Clock synchronisation branches (art. 16) against simulated meters, a real database and a
real local SNTP server: target, failed sets, the CGM's own clock, accountability, backoff,
and the spans fed to validation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg.types.json import Jsonb

from cgm.collection.engine import Collector
from cgm.collection.timeref import ReferenceConfig
from cgm.frontier_log import clock_corrections
from tests.collection.test_engine import ACCOUNTABLE, FAST, Env, _set_energy, env  # noqa: F401
from tests.fixtures.sntp import SntpServer


@pytest.fixture
def sntp() -> Iterator[SntpServer]:
    server = SntpServer()
    yield server
    server.close()


def _type1(env: Env) -> None:
    env.import_(lambda inv: _set_energy(inv, "Frt88001", 20_000))  # limit 30 s, target 10 s


def _log(env: Env, serial: str, kind: str) -> list[tuple]:
    return env.rows(
        "SELECT l.actor, l.purpose, l.activities, l.proof FROM frontier_log l "
        "JOIN meter m ON m.id = l.meter_id WHERE m.serial = %s AND l.kind = %s ORDER BY l.id",
        serial,
        kind,
    )


async def test_set_that_does_not_take_is_a_failed_correction_with_alarm(env: Env) -> None:
    """The meter accepts the set but its clock stays 45 s off (a failing RTC): logged as a
    level-2 access whose result is "failed", an alarm, never counted as corrected."""
    _type1(env)
    meter = env.fleet.meter("P88001")
    meter.set_clock(datetime.now(UTC) + timedelta(seconds=45))
    meter.set_clock = lambda when: None  # type: ignore[method-assign]
    summary = await Collector(env.url, env.box, FAST).run_cycle()
    assert summary.clocks_corrected == 0 and summary.clock_corrections_failed == 1
    assert 43 < meter.clock_offset < 47
    ((actor, purpose, act, proof),) = _log(env, "P88001", "level2_access")
    assert actor == ACCOUNTABLE and purpose == "clock synchronisation"
    assert act["result"] == "failed" and 43 < act["offset_after_s"] < 47
    assert "outside the target 10 s" in act["error"] and "outside the target" in proof
    ((_, alarm, detail, _),) = _log(env, "P88001", "alarm")
    assert alarm == "clock correction failed" and detail["limit_s"] == 30


async def test_offset_inside_target_is_left_alone(env: Env) -> None:
    _type1(env)
    meter = env.fleet.meter("P88001")
    meter.set_clock(datetime.now(UTC) + timedelta(seconds=8))  # target 10 s
    summary = await Collector(env.url, env.box, FAST).run_cycle()
    assert summary.clocks_corrected == 0 and summary.clock_corrections_failed == 0
    assert 6 < meter.clock_offset < 10 and _log(env, "P88001", "level2_access") == []


async def test_cgm_clock_on_official_time_lets_meters_be_set(env: Env, sntp: SntpServer) -> None:
    _type1(env)
    sntp.offset = 0.05
    meter = env.fleet.meter("P88001")
    meter.set_clock(datetime.now(UTC) + timedelta(seconds=20))
    config = replace(FAST, reference=ReferenceConfig(servers=(sntp.address,), max_offset_s=0.5))
    summary = await Collector(env.url, env.box, config).run_cycle()
    assert summary.clock_reference is None and summary.clocks_corrected == 1
    assert abs(meter.clock_offset) < 2 and sntp.requests == 1


@pytest.mark.parametrize("silent", [False, True], ids=["cgm-clock-off", "no-ntp-answer"])
async def test_cgm_clock_not_on_official_time_sets_no_meter(
    env: Env, sntp: SntpServer, silent: bool
) -> None:
    _type1(env)
    sntp.offset, sntp.silent = 4.0, silent
    meter = env.fleet.meter("P88001")
    meter.set_clock(datetime.now(UTC) + timedelta(seconds=20))
    sets = len(meter.clock_adjustments)
    ref = ReferenceConfig(servers=(sntp.address,), max_offset_s=0.5, timeout_s=0.3)
    summary = await Collector(env.url, env.box, replace(FAST, reference=ref)).run_cycle()
    assert summary.clocks_corrected == 0 and summary.clock_corrections_failed >= 1
    assert "not on official time" in (summary.clock_reference or "")
    assert ("not established" if silent else "beyond 0.5 s") in summary.clock_reference
    assert 18 < meter.clock_offset < 22 and len(meter.clock_adjustments) == sets
    assert _log(env, "P88001", "level2_access") == []
    ((_, purpose, detail, _),) = _log(env, "P88001", "alarm")
    assert purpose == "clock correction refused" and "official time" in detail["error"]


@pytest.mark.parametrize("who", [None, "nobody", "level1-user", "disabled-user"])
async def test_no_accountable_level2_user_sets_no_meter(env: Env, who: str | None) -> None:
    _type1(env)
    with psycopg.connect(env.url) as conn:
        conn.execute("INSERT INTO app_user (username, level) VALUES ('level1-user', 1)")
        conn.execute(
            "INSERT INTO app_user (username, level, active) VALUES ('disabled-user', 2, false)"
        )
    meter = env.fleet.meter("P88001")
    meter.set_clock(datetime.now(UTC) + timedelta(seconds=20))
    sets = len(meter.clock_adjustments)
    summary = await Collector(env.url, env.box, replace(FAST, accountable=who)).run_cycle()
    assert summary.clocks_corrected == 0 and len(meter.clock_adjustments) == sets
    assert "accountable" in (summary.clock_reference or "")
    ((_, purpose, detail, _),) = _log(env, "P88001", "alarm")
    assert purpose == "clock correction refused" and "accountable" in detail["error"]


@pytest.mark.parametrize(("hours_ago", "read"), [(1, False), (23, True), (30, True)])
async def test_meter_in_backoff_still_read_once_a_day(env: Env, hours_ago: int, read: bool) -> None:
    _type1(env)
    p = env.meter_id("P88001")
    with psycopg.connect(env.url) as conn:
        conn.execute(
            """INSERT INTO meter_health (meter_id, consecutive_failures, last_result,
                 last_attempt, next_attempt_at)
               VALUES (%s, 9, 'timeout', now() - make_interval(hours => %s),
                       now() + interval '12 hours')""",
            (p, hours_ago),
        )
    env.fleet.meter("P88001").set_clock(datetime.now(UTC) + timedelta(seconds=20))
    summary = await Collector(env.url, env.box, FAST).run_cycle()
    assert summary.skipped_backoff == (0 if read else 1)
    assert (abs(env.fleet.meter("P88001").clock_offset) < 2) is read


async def test_large_correction_spans_reach_back_for_validation(env: Env) -> None:
    """A correction of 2 days touches the intervals of those 2 days before it; a correction
    inside the limit (here 8 s of 30 s) is not large and touches none."""
    _type1(env)
    p, b = env.meter_id("P88001"), env.meter_id("B88001")
    at = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    with psycopg.connect(env.url) as conn:
        (fid,) = conn.execute("SELECT frontier_id FROM meter WHERE id = %s", (p,)).fetchone()
        for meter_id, off in ((p, 2 * 86400.0), (b, 8.0)):
            conn.execute(
                """INSERT INTO frontier_log (frontier_id, meter_id, actor, kind, purpose,
                     activities, at) VALUES (%s, %s, %s, 'level2_access',
                     'clock synchronisation', %s, %s)""",
                (fid, meter_id, ACCOUNTABLE,
                 Jsonb({"offset_before_s": off, "limit_s": 30, "set_to": at.isoformat()}), at),
            )  # fmt: skip
    async with await psycopg.AsyncConnection.connect(env.url) as conn:
        day_before = at - timedelta(days=1)
        found = await clock_corrections(conn, [p, b], day_before, day_before + timedelta(hours=1))
        assert found == [(p, at - timedelta(days=2), at)]
        assert await clock_corrections(conn, [p], at + timedelta(hours=1)) == []


async def test_meter_without_level1_secret_is_not_read_with_level2(env: Env) -> None:
    """Art. 17: reading is level 1 only; the missing secret is a registry violation."""

    def drop_level1(inv: dict) -> None:
        for f in inv["frontiers"]:
            for m in f["meters"]:
                if m["serial"] == "P88001":
                    del m["credentials"]["level1"]

    env.import_(drop_level1)
    summary = await Collector(env.url, env.box, FAST).run_cycle()
    assert summary.ok == 3 and summary.failed == {"auth": 1}
    ((n,),) = env.rows("SELECT count(*) FROM reading WHERE meter_id = %s", env.meter_id("P88001"))
    assert n == 0
    (rule,) = env.rows(
        "SELECT rule FROM frontier_violation WHERE subject = 'P88001' "
        "AND rule IN ('level1_secret_missing', 'level2_secret_missing')"
    )
    assert rule == ("level1_secret_missing",)
