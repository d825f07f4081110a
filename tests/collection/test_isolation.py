"""One meter's data can fail only that meter: sub-hourly profiles, bad and implausible
values, and counters that agree — real simulators, real sockets, a real database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest_asyncio
from cryptography.fernet import Fernet
from prometheus_client import REGISTRY

from cgm.collection.engine import Collector, CycleSummary, EngineConfig, current_cycle
from cgm.collection.link import Link
from cgm.collection.schedule import CollectionJob
from cgm.collection.session import MeterOutcome, SessionPolicy
from cgm.config import Settings
from cgm.frontier_log import UNREADABLE_CREDENTIAL
from cgm.registry import active_meters_async
from cgm.registry.model import parse_ratio
from cgm.security import SecretBox, secret_box
from cgm.service import Service
from cgm.storage import Quality
from drivers.base import Channel
from simulators.fleet import build_fleet, start_fleet
from tests.fixtures.fleet import FleetEnv, exact_clocks, migrated_database

FAST = EngineConfig(
    policy=SessionPolicy(timeout=5.0, attempts=1, backoff=0.01),
    stale_after=timedelta(seconds=10),
    accountable="svc-collector",  # the level-2 user the clock sets name (created below)
)
QUARTER = timedelta(minutes=15)


Env = FleetEnv


@pytest_asyncio.fixture(loop_scope="session")
async def env(
    new_database: Callable[[], str], tmp_path: Path, mqtt_broker: tuple[str, int]
) -> AsyncIterator[Env]:
    url = migrated_database(new_database, "svc-collector")
    fleet = build_fleet(2, seed=5, mix={"dlms": 1.0}, first_code=87001)
    exact_clocks(fleet, depth=24 * 3)  # three days of memory keeps the cycles short
    await start_fleet(fleet, mqtt=mqtt_broker)
    yield Env(url, fleet, tmp_path)
    await fleet.stop()


def _sub_hourly(env: Env, serial: str, period: timedelta) -> None:
    meter = env.fleet.meter(serial)
    meter.capture_period = period
    meter.depth = int(timedelta(days=3) / period)


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_15_minute_meter_is_stored_hourly_and_the_fleet_with_it(env: Env) -> None:
    _sub_hourly(env, "P87001", QUARTER)
    env.import_()
    batches = _metric("cgm_store_batch_duration_seconds_count")
    summary = await Collector(env.url, env.box, FAST).run_cycle()
    assert summary.ok == 4 and not summary.failed and summary.intervals_refused == 0
    # Every stored batch is timed for the dashboards (the database's share of a cycle).
    assert _metric("cgm_store_batch_duration_seconds_count") > batches
    p = env.meter_id("P87001")
    stored = env.rows(
        "SELECT interval_start, value, quality FROM reading WHERE meter_id = %s AND channel = 1 "
        "ORDER BY interval_start",
        p,
    )
    assert len(stored) == 72  # three days of hours from 288 quarter-hour entries
    meter = env.fleet.meter("P87001")
    for start, value, quality in stored[-5:]:
        quarters = meter.profile(start, start + timedelta(hours=1))
        assert len(quarters) == 4
        assert abs(value - sum(e.values[Channel.ACTIVE_IMPORT] for e in quarters)) < 1e-9
        assert quality == 0
    # The meter's own entries are kept for audit, as it gave them.
    (n_entries,) = env.rows(
        "SELECT count(*) FROM meter_entry WHERE meter_id = %s AND channel = 1 AND period_s = 900",
        p,
    )[0]
    # Memory holds 288 quarters ending at the last closed quarter, so unless the cycle runs on
    # the hour the oldest stored hour is partial: count what the meter held over the hours read.
    held = meter.profile(stored[0][0], stored[-1][0] + timedelta(hours=1))
    assert n_entries == len(held) and 285 <= n_entries <= 288
    # The hourly meters of the same batch were stored too.
    for serial in ("B87001", "P87002", "B87002"):
        (n,) = env.rows(
            "SELECT count(*) FROM reading WHERE meter_id = %s AND channel = 1",
            env.meter_id(serial),
        )[0]
        assert n == 72


async def test_an_incomplete_hour_is_stored_flagged_partial_never_padded(env: Env) -> None:
    _sub_hourly(env, "P87001", QUARTER)
    meter = env.fleet.meter("P87001")
    hole_hour = current_cycle() - timedelta(hours=5)
    meter.faults.missing = [(hole_hour + QUARTER, hole_hour + 2 * QUARTER)]
    env.import_()
    await Collector(env.url, env.box, FAST).run_cycle()
    rows = env.rows(
        "SELECT interval_start, value, quality FROM reading WHERE meter_id = %s AND channel = 1",
        env.meter_id("P87001"),
    )
    by_start = {r[0]: (r[1], r[2]) for r in rows}
    value, quality = by_start[hole_hour]
    quarters = meter.profile(hole_hour, hole_hour + timedelta(hours=1))
    assert len(quarters) == 3
    assert abs(value - sum(e.values[Channel.ACTIVE_IMPORT] for e in quarters)) < 1e-9
    assert quality & Quality.PARTIAL
    complete = by_start[hole_hour + timedelta(hours=1)]
    assert not complete[1] & Quality.PARTIAL


async def test_a_capture_period_that_does_not_divide_the_hour_fails_only_that_meter(
    env: Env,
) -> None:
    _sub_hourly(env, "B87002", timedelta(minutes=45))
    env.import_()
    summary = await Collector(env.url, env.box, FAST).run_cycle()
    assert summary.ok == 4 and summary.intervals_refused > 0
    bad = env.meter_id("B87002")
    assert env.rows("SELECT count(*) FROM reading WHERE meter_id = %s", bad)[0][0] == 0
    (refused, refusals, error) = env.rows(
        "SELECT intervals_refused, refusals, error FROM collection_session WHERE meter_id = %s",
        bad,
    )[0]
    assert refused > 0 and "capture period 0:45:00 does not divide the hour" in refusals
    assert "refused" in error
    # Recorded in the reading_refused table with the values, and in the hoja de vida.
    (n,) = env.rows("SELECT count(*) FROM reading_refused WHERE meter_id = %s", bad)[0]
    assert n == refused
    (finding,) = env.rows(
        "SELECT activities FROM frontier_log WHERE meter_id = %s AND kind = 'config_violation'",
        bad,
    )[0]
    assert any("does not divide the hour" in f for f in finding["findings"])
    for serial in ("P87001", "B87001", "P87002"):
        assert (
            env.rows("SELECT count(*) FROM reading WHERE meter_id = %s", env.meter_id(serial))[0][0]
            == 72 * 4
        )


async def test_energy_beyond_the_registered_capacity_is_refused_before_vee(env: Env) -> None:
    # Register a capacity far below what the frontier really draws (a fifth of its mean
    # power): the guard must refuse the hours beyond it, on the secondary side.
    site: dict[str, float] = {}

    def capacity(inv: dict) -> None:
        for f in inv["frontiers"]:
            if f["code"] == "Frt87002":
                site["mva"] = round(f["monthly_energy_mwh"] / 730 / 5, 3)
                f["installed_capacity_mva"] = site["mva"]
                meter = f["meters"][0]
                site["factor"] = parse_ratio(meter["ct_ratio"]) * parse_ratio(meter["vt_ratio"])

    env.import_(capacity)
    summary = await Collector(env.url, env.box, FAST).run_cycle()
    assert summary.ok == 4
    for serial in ("P87002", "B87002"):
        m = env.meter_id(serial)
        stored = env.rows("SELECT max(value) FROM reading WHERE meter_id = %s", m)[0][0]
        # capacity × 1 h × 1.2 margin, brought to the secondary side by CT × VT.
        assert stored is None or stored <= site["mva"] * 1000 * 1.2 / site["factor"]
        reasons = env.rows("SELECT DISTINCT reason FROM reading_refused WHERE meter_id = %s", m)
        assert reasons and all(r[0].startswith("implausible") for r in reasons)
        assert f"{site['mva']:g} MVA" in reasons[0][0]
    # The other frontier, without a registered capacity, is stored whole.
    assert (
        env.rows("SELECT count(*) FROM reading WHERE meter_id = %s", env.meter_id("P87001"))[0][0]
        == 72 * 4
    )


async def test_the_session_log_the_summary_and_the_metric_count_the_same_values(
    env: Env,
) -> None:
    _sub_hourly(env, "P87001", QUARTER)
    env.import_()
    before = _metric("cgm_intervals_stored_total", protocol="dlms")
    summary = await Collector(env.url, env.box, FAST).run_cycle()
    after = _metric("cgm_intervals_stored_total", protocol="dlms")
    (sessions,) = env.rows("SELECT sum(intervals_stored) FROM collection_session")[0]
    (readings,) = env.rows("SELECT count(*) FROM reading")[0]
    assert summary.intervals_stored == sessions == after - before == readings == 4 * 72 * 4
    # A second cycle re-reads nothing new: every counter says 0 again.
    again = await Collector(env.url, env.box, FAST).run_cycle(
        current_cycle(datetime.now(UTC)) + timedelta(minutes=1)
    )
    assert again.intervals_stored == 0


def _server_of(env: Env, serial: str):  # noqa: ANN202
    port = env.fleet.placements[serial].port
    return next(s for s in env.fleet.servers if s.port == port)


def _secret(inv: dict, serial: str, level: str, secret: str) -> None:
    for f in inv["frontiers"]:
        f["monthly_energy_mwh"] = 20_000  # type 1: a 30 s clock limit
        for m in f["meters"]:
            if m["serial"] == serial:
                m["credentials"][level]["secret"] = secret


async def test_a_wrong_level2_secret_reaches_the_meter_at_most_3_times_a_day(env: Env) -> None:
    env.import_(lambda inv: _secret(inv, "P87001", "level2", "not-the-secret"))
    meter = env.fleet.meter("P87001")
    meter.set_clock(datetime.now(UTC) + timedelta(seconds=45))  # beyond the limit: level 2
    server = _server_of(env, "P87001")
    refused_before = server.stats.rejected
    metric_before = _metric("cgm_auth_refusals_total", level="2")
    collector = Collector(env.url, env.box, FAST)
    base = current_cycle()
    for i in range(6):  # six hourly cycles: without the guard, six wrong passwords
        s = await collector.run_cycle(base + timedelta(minutes=i))
        assert s.ok == 4  # the meter is still read at level 1 every cycle
    assert server.stats.rejected - refused_before == 3
    assert _metric("cgm_auth_refusals_total", level="2") - metric_before == 3
    p = env.meter_id("P87001")
    assert env.rows("SELECT count(*) FROM auth_refusal WHERE meter_id = %s", p)[0][0] == 3
    alarms = env.rows(
        "SELECT activities->>'error' FROM frontier_log WHERE meter_id = %s AND kind = 'alarm'", p
    )
    assert len(alarms) == 3 and all(a[0].startswith("auth") for a in alarms)
    (health,) = env.rows("SELECT last_result FROM meter_health WHERE meter_id = %s", p)[0]
    assert health == "auth_level2"  # read fine, but not healthy
    # The operator registers the right secret: the budget starts afresh and the clock is set.
    env.import_()
    s = await collector.run_cycle(base + timedelta(minutes=10))
    assert s.clocks_corrected == 1 and abs(meter.clock_offset) < 2
    (health,) = env.rows("SELECT last_result FROM meter_health WHERE meter_id = %s", p)[0]
    assert health == "ok"


async def test_a_wrong_level1_secret_is_not_presented_again_after_3_refusals(env: Env) -> None:
    env.import_(lambda inv: _secret(inv, "B87002", "level1", "not-the-secret"))
    server = _server_of(env, "B87002")
    refused_before = server.stats.rejected
    collector = Collector(env.url, env.box, FAST)
    base = current_cycle()
    skipped = []
    for i in range(5):
        # Forced (on demand, past the failure backoff): the lockout guard still holds.
        s = await collector.run_cycle(base + timedelta(minutes=i), force=True)
        assert s.ok == 3
        skipped.append(s.skipped_auth)
    assert server.stats.rejected - refused_before == 3
    assert skipped == [0, 0, 0, 1, 1]
    b = env.meter_id("B87002")
    (n,) = env.rows(
        "SELECT count(*) FROM frontier_log WHERE meter_id = %s AND kind = 'alarm' "
        "AND purpose = 'level-1 authentication refused'",
        b,
    )[0]
    assert n == 3
    (health,) = env.rows("SELECT last_result FROM meter_health WHERE meter_id = %s", b)[0]
    assert health == "auth"


async def test_an_outcome_that_cannot_be_stored_fails_alone_and_the_writer_goes_on(
    env: Env,
) -> None:
    env.import_()
    collector = Collector(env.url, env.box, FAST)
    good = await collector.run_cycle()  # the outcomes of a normal cycle, to store again
    assert good.ok == 4
    targets = await _targets(env)
    # A meter removed from the registry between its session and the write: nothing about it
    # can be stored (every table refers to the meter).
    ghost = replace(targets[0], meter_id=10**12)
    now = datetime.now(UTC)
    batch = [
        MeterOutcome(target=t, started_at=now, finished_at=now)
        for t in (targets[1], ghost, targets[2])
    ]
    cycle = current_cycle() + timedelta(minutes=30)
    summary = CycleSummary(cycle)
    link = Link(env.url)
    try:
        await collector._store(link, batch, cycle, summary)  # noqa: SLF001
    finally:
        await link.close()
    assert summary.ok == 2 and summary.unstored == 1
    assert summary.failed == {"store_error": 1}
    stored = env.rows("SELECT meter_id FROM collection_session WHERE cycle = %s", cycle)
    assert sorted(r[0] for r in stored) == sorted([targets[1].meter_id, targets[2].meter_id])


async def _targets(env: Env) -> list:
    async with await psycopg.AsyncConnection.connect(env.url) as conn:
        return await active_meters_async(conn, env.box)


async def test_a_failed_cycle_still_runs_the_next_stages(tmp_path: Path) -> None:
    # The database is unreachable: the cycle fails, VEE (an after-cycle hook) still runs.
    url = "postgresql://127.0.0.1:9/nothing?connect_timeout=2"
    settings = Settings(database_url=url, data_dir=tmp_path)
    job = CollectionJob(Service(settings, db_url=url))
    job.collector = Collector(url, secret_box(settings), FAST)
    seen: list[CycleSummary] = []

    async def hook(summary: CycleSummary) -> None:
        seen.append(summary)

    job.after_cycle.append(hook)
    await job.run()
    assert len(seen) == 1 and seen[0].errors and seen[0].intervals_stored == 0


def _seal_under_another_key(env: Env, serial: str, level: int) -> None:
    """What a restored backup or a replaced key file leaves: one credential the current key
    cannot open."""
    other = SecretBox(Fernet.generate_key())
    with psycopg.connect(env.url) as conn:
        conn.execute(
            """UPDATE meter_credential SET secret_enc = %s
               WHERE level = %s AND meter_id = (SELECT id FROM meter WHERE serial = %s)""",
            (other.encrypt("whatever it was"), level, serial),
        )


async def test_a_credential_that_cannot_be_decrypted_fails_only_its_meter(env: Env) -> None:
    env.import_()
    _seal_under_another_key(env, "P87001", 1)  # cannot be read at all
    _seal_under_another_key(env, "B87002", 2)  # read; its clock could not be set
    collector = Collector(env.url, env.box, FAST)
    s = await collector.run_cycle()
    assert s.errors == []  # the cycle itself went through
    assert s.ok == 3 and s.failed == {"credential": 1}
    p, b = env.meter_id("P87001"), env.meter_id("B87002")
    (result, error, stored), *_ = env.rows(
        "SELECT result, error, intervals_stored FROM collection_session WHERE meter_id = %s", p
    )
    assert result == "credential" and stored == 0
    assert "level 1 credential" in error and "cannot be decrypted" in error
    assert "whatever" not in error
    # The rest of the fleet is collected, the level-2 case included.
    for serial in ("B87001", "P87002", "B87002"):
        (n,) = env.rows(
            "SELECT count(*) FROM reading WHERE meter_id = %s", env.meter_id(serial)
        )[0]
        assert n > 0, serial
    for meter_id, names in ((p, ["level 1"]), (b, ["level 2"])):
        alarms = env.rows(
            "SELECT activities FROM frontier_log WHERE meter_id = %s AND kind = 'alarm' "
            "AND purpose = %s", meter_id, UNREADABLE_CREDENTIAL,
        )  # fmt: skip
        assert [a[0]["credentials"] for a in alarms] == [names]
        (health,) = env.rows(
            "SELECT last_result FROM meter_health WHERE meter_id = %s", meter_id
        )[0]
        assert health == "credential"
    # Hourly again: still one alarm a day, not one a cycle.
    await collector.run_cycle(current_cycle() + timedelta(minutes=5), force=True)
    (n,) = env.rows(
        "SELECT count(*) FROM frontier_log WHERE meter_id = %s AND purpose = %s",
        p, UNREADABLE_CREDENTIAL,
    )[0]  # fmt: skip
    assert n == 1
    # Re-importing the credentials mends it.
    env.import_()
    s = await collector.run_cycle(current_cycle() + timedelta(minutes=10), force=True)
    assert s.ok == 4
    (health,) = env.rows("SELECT last_result FROM meter_health WHERE meter_id = %s", p)[0]
    assert health == "ok"
