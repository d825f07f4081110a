"""End to end: simulated meters with faults → a collection cycle → VEE of the affected days.

The fleet's principal loses one hour and five hours of memory, and its backup diverges by
5 %: the settled series must take the principal where it is, cover the holes from the
backup (art. 36), and flag the divergence.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from cgm.collection.engine import Collector, EngineConfig, current_cycle
from cgm.collection.session import SessionPolicy
from cgm.localtime import day_bounds, local_day
from cgm.storage import Quality
from cgm.vee import affected_days, vee_after_collection
from simulators.fleet import build_fleet, start_fleet
from simulators.meter import Faults
from tests.fixtures.fleet import FleetEnv, exact_clocks, migrated_database

FAST = EngineConfig(policy=SessionPolicy(timeout=2.0, attempts=1, backoff=0.01))


async def test_vee_after_a_collection_cycle_with_faults(
    new_database: Callable[[], str], tmp_path: Path, mqtt_broker: tuple[str, int]
) -> None:
    url = migrated_database(new_database)
    fleet = build_fleet(1, seed=9, mix={"dlms": 1.0}, first_code=99101)
    frontier = fleet.frontiers[0]
    now = datetime.now(UTC)
    day = local_day(now) - timedelta(days=2)  # a whole day inside the meters' memory
    start, _ = day_bounds(day)
    hole_1h = (start + timedelta(hours=3), start + timedelta(hours=4))
    hole_5h = (start + timedelta(hours=10), start + timedelta(hours=15))
    frontier.principal.faults = Faults(missing=[hole_1h, hole_5h])
    frontier.backup.faults = Faults(divergence_pct=5.0)
    exact_clocks(fleet)
    await start_fleet(fleet, mqtt=mqtt_broker)
    try:
        env = FleetEnv(url, fleet, tmp_path)
        env.import_()
        cycle = current_cycle(now)
        summary = await Collector(url, env.box, FAST).run_cycle(cycle)
        assert summary.ok == 2
    finally:
        await fleet.stop()

    async with await psycopg.AsyncConnection.connect(url) as conn:
        pairs = await affected_days(conn, cycle)
        assert day in {d for _, d in pairs} and len({f for f, _ in pairs}) == 1
        result = await vee_after_collection(conn, cycle, now=now)
        assert day in result.days
        cur = await conn.execute(
            """SELECT interval_start, value, source, flags,
                      settled_detail(detail, meter_id, reading_version, secondary, factor)
               FROM settled_reading s
               JOIN frontier f ON f.id = s.frontier_id
               WHERE f.code = %s AND channel = 1 AND interval_start >= %s
                 AND interval_start < %s ORDER BY interval_start""",
            (frontier.code, start, start + timedelta(days=1)),
        )
        rows = await cur.fetchall()
    assert len(rows) == 24
    holes = {3, 10, 11, 12, 13, 14}
    assert [i for i, r in enumerate(rows) if r[2] == "backup"] == sorted(holes)
    assert all(r[2] == "principal" for i, r in enumerate(rows) if i not in holes)
    # The backup reads 5 % high: beyond the accuracy tolerance, so flagged (and, where the
    # backup is the source, the settled value carries the flag).
    flagged = [i for i, r in enumerate(rows) if r[3] & Quality.SUSPECT]
    assert flagged == [i for i in range(24) if i not in holes]
    assert "backup_divergence" in rows[0][4]["checks"]["principal"]
    assert rows[3][4]["checks"]["principal"]["missing"] == "no reading for the period"
