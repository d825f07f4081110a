"""``cgm run`` consumes MQTT meters' pushed hourly entries, and the hourly cycle then needs no
request to them until their next full session."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import psycopg

from cgm.collection.engine import Collector, EngineConfig
from cgm.collection.push import PushConsumer
from cgm.collection.session import SessionPolicy
from drivers.base import Channel
from drivers.mqtt import protocol as p
from simulators.fleet import build_fleet, start_fleet
from tests.fixtures.fleet import FleetEnv, migrated_database
from tests.fixtures.mqtt import run_code

CONFIG = EngineConfig(
    policy=SessionPolicy(timeout=5.0, attempts=1, backoff=0.01),
    stale_after=timedelta(seconds=10),
)


def _rows(url: str, sql: str, *params: object) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


async def _wait_for(url: str, sql: str, *params: object, timeout: float = 10.0) -> list[tuple]:
    async with asyncio.timeout(timeout):
        while True:
            rows = await asyncio.to_thread(_rows, url, sql, *params)
            if rows and rows[0][0]:
                return rows
            await asyncio.sleep(0.1)


async def test_pushed_entries_are_stored_and_the_cycle_skips_current_meters(
    new_database, tmp_path: Path, mqtt_broker: tuple[str, int]
) -> None:
    url = migrated_database(new_database)
    fleet = build_fleet(1, seed=21, mix={"mqtt": 1.0}, first_code=run_code(88701))
    await start_fleet(fleet, mqtt=mqtt_broker)
    principal = fleet.frontiers[0].principal
    env = FleetEnv(url, fleet, tmp_path)
    env.import_()
    box = env.box
    (pid,) = _rows(url, "SELECT id FROM meter WHERE serial = %s", principal.serial)[0]
    consumer = PushConsumer(
        url, box, collector_id="pytest-push", batch_wait=0.05,
        client_id=f"pytest-{uuid.uuid4().hex[:8]}", session_expiry=30,
    )  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await asyncio.wait_for(consumer.subscribed.wait(), 30)
        # An unsigned push for a registered meter, with made-up energy: refused.
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
        forged = {"schema": p.SCHEMA, "serial": principal.serial, "entries": [{
            "start": p.iso(hour), "end": p.iso(hour + timedelta(hours=1)), "status": 0,
            "values": {"active_import": {"value": 55555.0, "unit": "kWh"}}}]}  # fmt: skip
        async with aiomqtt.Client(*mqtt_broker, protocol=aiomqtt.ProtocolVersion.V5) as rogue:
            await rogue.publish(
                p.profile_topic("cgm", principal.serial), json.dumps(forged).encode(), 1
            )
        # A full session first (as the cycle of the hour before would have made it)...
        first = await Collector(url, box, CONFIG).run_cycle(now=hour)
        assert first.ok == 2 and first.skipped_pushed == 0
        assert _rows(
            url, "SELECT count(*) FROM reading WHERE meter_id = %s AND interval_start >= %s",
            pid, hour,
        ) == [(0,)]  # fmt: skip
        # ... then the meters push the hour that just closed: stored as it arrives.
        published = await _publish(fleet)
        rows = await _wait_for(
            url, "SELECT count(*) FROM reading WHERE meter_id = %s AND interval_start = %s",
            pid, hour,
        )  # fmt: skip
        assert rows[0][0] == len(published[principal.serial][0].values)
        (value,) = _rows(
            url,
            "SELECT value FROM reading WHERE meter_id = %s AND channel = 1 AND interval_start = %s",
            pid, hour,
        )[0]  # fmt: skip
        assert value == published[principal.serial][0].values[Channel.ACTIVE_IMPORT]
        assert value != 55555.0
        sources = {s for (s,) in _rows(url, "SELECT source FROM ingest_batch")}
        assert "mqtt-push:pytest-push" in sources
        # Their last hour came by push and the full session is fresh: this hour's cycle
        # sends them nothing.
        requests = _requests(fleet)
        later = await Collector(url, box, CONFIG).run_cycle()
        assert later.skipped_pushed == 2 and later.meters == 0
        assert _requests(fleet) == requests
        # On demand (forced) they are read as usual.
        forced = await Collector(url, box, CONFIG).run_cycle(force=True)
        assert forced.ok == 2 and _requests(fleet) > requests
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await fleet.stop()


async def _publish(fleet) -> dict:  # noqa: ANN001 - the fleet's MQTT simulator
    from simulators.mqtt import MqttMeterSimulator

    sims = [s for s in fleet.servers if isinstance(s, MqttMeterSimulator)]
    out: dict = {}
    for sim in sims:
        out.update(await sim.publish_profile_now())
    return out


def _requests(fleet) -> int:  # noqa: ANN001
    from simulators.mqtt import MqttMeterSimulator

    return sum(s.requests for s in fleet.servers if isinstance(s, MqttMeterSimulator))
