"""Collection cycles against simulated meters over real sockets and a real database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio

from cgm.collection.engine import Collector, EngineConfig, current_cycle
from cgm.collection.session import SessionPolicy
from cgm.storage import Quality
from simulators.dlms import serve as serve_dlms
from simulators.fleet import build_fleet, start_fleet
from tests.fixtures.fleet import FleetEnv, exact_clocks, migrated_database

ACCOUNTABLE = "svc-collector"  # the level-2 service user the collector's clock sets name
# Generous enough that a healthy simulated meter never times out on a loaded CI machine;
# the one test that expects timeouts uses SILENT_FAST.
FAST = EngineConfig(
    policy=SessionPolicy(timeout=5.0, attempts=1, backoff=0.01),
    stale_after=timedelta(seconds=10),
    accountable=ACCOUNTABLE,
)
SILENT_FAST = EngineConfig(
    policy=SessionPolicy(timeout=1.0, attempts=1, backoff=0.01),
    stale_after=timedelta(seconds=10),
)


Env = FleetEnv


@pytest_asyncio.fixture(loop_scope="session")
async def env(
    new_database: Callable[[], str], tmp_path: Path, mqtt_broker: tuple[str, int]
) -> AsyncIterator[Env]:
    url = migrated_database(new_database, ACCOUNTABLE)
    fleet = build_fleet(2, seed=5, mix={"dlms": 1.0}, first_code=88001)
    exact_clocks(fleet)
    await start_fleet(fleet, mqtt=mqtt_broker)
    yield Env(url, fleet, tmp_path)
    await fleet.stop()


def _set_energy(inv: dict, code: str, mwh: float) -> None:
    for f in inv["frontiers"]:
        if f["code"] == code:
            f["monthly_energy_mwh"] = mwh


async def test_first_cycle_reads_meter_memory_and_catches_up_after_days(env: Env) -> None:
    env.import_()
    collector = Collector(env.url, env.box, FAST)
    real_now = datetime.now(UTC)
    earlier = real_now - timedelta(days=4)
    first = await collector.run_cycle(current_cycle(earlier), now=earlier)
    assert first.ok == 4 and not first.failed
    p = env.meter_id("P88001")
    (last_before,) = env.rows("SELECT max(interval_start) FROM reading WHERE meter_id = %s", p)[0]
    assert last_before == current_cycle(earlier) - timedelta(hours=1)

    second = await collector.run_cycle(current_cycle(real_now))
    assert second.ok == 4
    starts = [
        r[0]
        for r in env.rows(
            "SELECT interval_start FROM reading WHERE meter_id = %s AND channel = 1 "
            "ORDER BY interval_start",
            p,
        )
    ]
    # No hole between what the first cycle stored and now: the 4 days came from memory.
    assert starts[-1] == current_cycle(real_now) - timedelta(hours=1)
    assert all(b - a == timedelta(hours=1) for a, b in zip(starts, starts[1:], strict=False))
    meter = env.fleet.meter("P88001")
    assert len(starts) == meter.depth  # the whole memory, once
    truth = meter.profile(starts[-3], starts[-1] + timedelta(hours=1))
    stored = env.rows(
        "SELECT value FROM reading WHERE meter_id = %s AND channel = 1 "
        "AND interval_start >= %s ORDER BY interval_start",
        p,
        starts[-3],
    )
    assert [r[0] for r in stored] == [e.values["active_import"] for e in truth]


async def test_clock_corrected_at_a_third_of_each_frontiers_own_limit(env: Env) -> None:
    # Frt88001 is type 1 (limit 30 s: target 10 s), Frt88002 type 4 (limit 60 s: target
    # 20 s); all meters 15 s ahead — inside both limits — and Frt88002's backup 25 s ahead.
    env.import_(
        lambda inv: (_set_energy(inv, "Frt88001", 20_000), _set_energy(inv, "Frt88002", 10))
    )
    for _, meter in env.fleet.meters():
        meter.set_clock(datetime.now(UTC) + timedelta(seconds=15))
    env.fleet.meter("B88002").set_clock(datetime.now(UTC) + timedelta(seconds=25))

    summary = await Collector(env.url, env.box, FAST).run_cycle()
    assert summary.clocks_corrected == 3  # P88001, B88001 (15 > 10) and B88002 (25 > 20)
    assert abs(env.fleet.meter("P88001").clock_offset) < 2
    assert abs(env.fleet.meter("B88002").clock_offset) < 2
    assert 13 < env.fleet.meter("P88002").clock_offset < 17  # inside type 4's 20 s: left
    log = env.rows(
        "SELECT m.serial, l.actor, l.purpose, l.activities, l.proof FROM frontier_log l "
        "JOIN meter m ON m.id = l.meter_id WHERE l.kind = 'level2_access' ORDER BY m.serial"
    )
    assert [r[0] for r in log] == ["B88001", "B88002", "P88001"]
    for _, actor, purpose, activities, proof in log:
        assert actor == ACCOUNTABLE and purpose == "clock synchronisation" and "re-read" in proof
        assert activities["result"] == "done"
        assert activities["offset_before_s"] > 10 and abs(activities["offset_after_s"]) < 2
        assert activities["target_s"] in (10, 20)


async def test_wrong_level2_secret_leaves_drift_raises_alarm_and_keeps_readings(env: Env) -> None:
    def wrong_l2(inv: dict) -> None:
        _set_energy(inv, "Frt88001", 20_000)
        for f in inv["frontiers"]:
            for m in f["meters"]:
                if m["serial"] == "P88001":
                    m["credentials"]["level2"]["secret"] = "not-the-secret"

    env.import_(wrong_l2)
    env.fleet.meter("P88001").set_clock(datetime.now(UTC) + timedelta(seconds=45))
    summary = await Collector(env.url, env.box, FAST).run_cycle()
    assert summary.ok == 4 and summary.clock_corrections_failed == 1
    assert 43 < env.fleet.meter("P88001").clock_offset < 47
    (alarm,) = env.rows(
        "SELECT l.purpose, l.activities FROM frontier_log l JOIN meter m ON m.id = l.meter_id "
        "WHERE m.serial = 'P88001' AND l.kind = 'alarm'"
    )
    assert alarm[0] == "clock correction failed" and alarm[1]["error"].startswith("auth")
    (n,) = env.rows("SELECT count(*) FROM reading WHERE meter_id = %s", env.meter_id("P88001"))[0]
    assert n > 0


async def test_backup_channel_used_when_primary_fails(env: Env) -> None:
    meter = env.fleet.meter("P88001")
    spare = await serve_dlms({1: meter}, "127.0.0.1", 0)  # the backup channel
    try:

        def with_backup_channel(inv: dict) -> None:
            for f in inv["frontiers"]:
                for m in f["meters"]:
                    if m["serial"] == "P88001":
                        m["endpoint"] = "127.0.0.1:9"  # nothing listens: primary is down
                        m["backup_endpoint"] = f"127.0.0.1:{spare.port}"

        env.import_(with_backup_channel)
        summary = await Collector(env.url, env.box, FAST).run_cycle()
        assert summary.ok == 4
        (used,) = env.rows(
            "SELECT channel_used FROM collection_session WHERE meter_id = %s",
            env.meter_id("P88001"),
        )[0]
        assert used == "backup"
        flags = {
            r[0]
            for r in env.rows(
                "SELECT DISTINCT quality FROM reading WHERE meter_id = %s", env.meter_id("P88001")
            )
        }
        assert flags and all(q & Quality.BACKUP_CHANNEL for q in flags)
    finally:
        await spare.stop()


# window 1: each claim statement offers one id, so a cycle walks the list window by window
# (a fleet larger than the claim window) and stale claims are looked for at its end.
@pytest.mark.parametrize("window", [4096, 1])
async def test_two_collectors_share_a_fleet_without_reading_a_meter_twice(
    env: Env, window: int
) -> None:
    env.import_()
    config = replace(FAST, claim_window=window)
    a, b = Collector(env.url, env.box, config), Collector(env.url, env.box, config)
    cycle = current_cycle()
    sa, sb = await asyncio.gather(a.run_cycle(cycle), b.run_cycle(cycle))
    assert sa.ok + sb.ok == 4
    sessions = env.rows(
        "SELECT meter_id, count(*) FROM collection_session WHERE cycle = %s GROUP BY meter_id",
        cycle,
    )
    assert len(sessions) == 4 and all(n == 1 for _, n in sessions)


@pytest.mark.parametrize("window", [4096, 1])
async def test_a_dead_collectors_claims_are_taken_over_within_the_cycle(
    env: Env, window: int
) -> None:
    env.import_()
    cycle = current_cycle()
    victim = env.meter_id("P88001")
    with psycopg.connect(env.url) as conn:
        conn.execute(
            "INSERT INTO collector (id, host, pid, heartbeat) "
            "VALUES ('dead', 'gone', 1, now() - interval '1 hour')"
        )
        conn.execute(
            "INSERT INTO collection_claim (meter_id, cycle, collector) VALUES (%s, %s, 'dead')",
            (victim, cycle),
        )
    summary = await Collector(env.url, env.box, replace(FAST, claim_window=window)).run_cycle(
        cycle
    )
    assert summary.ok == 4
    (holder, done) = env.rows(
        "SELECT collector, done_at FROM collection_claim WHERE meter_id = %s AND cycle = %s",
        victim,
        cycle,
    )[0]
    assert holder != "dead" and done is not None


async def test_a_failing_meter_is_backed_off_not_hammered(env: Env) -> None:
    env.import_()
    env.fleet.meter("B88002").faults.no_answer = True
    # FAST's per-call timeout: with SILENT_FAST's 1 s, healthy meters timed out too on a
    # loaded host (load average 28: all four failed in one cycle).
    collector = Collector(env.url, env.box, replace(SILENT_FAST, policy=FAST.policy))
    base = current_cycle()
    for i in range(3):
        s = await collector.run_cycle(base + timedelta(hours=i))
        assert s.failed.get("timeout") == 1
    s = await collector.run_cycle(base + timedelta(hours=3))
    assert s.skipped_backoff == 1 and s.meters == 3  # not tried again this cycle
    forced = await collector.run_cycle(base + timedelta(hours=3), force=True)
    assert forced.meters == 4  # on demand, the operator can still force it


async def test_two_on_demand_runs_within_one_second_both_read_the_meters(env: Env) -> None:
    """Regression: an on-demand cycle was keyed by the second it was asked, so a second run
    within that second found every claim done and read nothing (reporting 0 ok, no error)."""
    env.import_()
    asked = datetime.now(UTC).replace(microsecond=100)
    first = await Collector(env.url, env.box, FAST).run_cycle(force=True, now=asked)
    again = await Collector(env.url, env.box, FAST).run_cycle(
        force=True, now=asked + timedelta(milliseconds=1)
    )
    assert first.ok == again.ok == 4


async def test_hls_gmac_level2_counters_survive_a_collector_restart(env: Env) -> None:
    """Level 2 by HLS-GMAC: keys from the encrypted store, counters from the database."""
    secret = "ek=000102030405060708090a0b0c0d0e0f;ak=d0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
    meter = env.fleet.meter("P88001")
    meter.secrets.level2 = secret
    (server,) = [s for s in env.fleet.servers if meter in getattr(s, "meters", {}).values()]
    server.security_of(meter).level2 = "hls-gmac"

    def gmac(inv: dict) -> None:
        _set_energy(inv, "Frt88001", 20_000)
        for f in inv["frontiers"]:
            for m in f["meters"]:
                if m["serial"] == "P88001":
                    m["credentials"]["level2"]["secret"] = secret
                    m.setdefault("params", {})["level2_auth"] = "hls-gmac"

    env.import_(gmac)
    try:
        for _ in range(2):  # two collector processes, one after the other
            meter.set_clock(datetime.now(UTC) + timedelta(seconds=45))
            summary = await Collector(env.url, env.box, FAST).run_cycle(force=True)
            assert summary.clock_corrections_failed == 0
            assert abs(meter.clock_offset) < 2
        seen = server.stats.invocation_counters
        assert len(seen) > 4 and seen == sorted(set(seen))  # never reused, across processes
        ((stored,),) = env.rows("SELECT max(next_value) FROM dlms_invocation_counter")
        assert stored > max(seen)
        assert secret.split(";")[0][3:] not in str(env.rows("SELECT * FROM meter_credential"))
    finally:
        server.security_of(meter).level2 = "lls"
        meter.secrets.level2 = "config-2"
