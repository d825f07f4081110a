"""MQTT meters through the collector: rogue answers are never stored, and the broker login
comes from the registry's encrypted credentials."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import psycopg
import pytest
import yaml
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cgm import registry
from cgm.collection.engine import Collector, EngineConfig
from cgm.collection.session import SessionPolicy
from cgm.config import Settings
from cgm.embedded.broker import Broker
from cgm.migrate import upgrade
from cgm.security import secret_box
from drivers.mqtt import protocol as p
from simulators.fleet import build_fleet, inventory, start_fleet
from simulators.meter import Faults, SimulatedMeter
from simulators.mqtt import serve
from tests.fixtures.fleet import import_inventory
from tests.fixtures.mqtt import run_code

ROGUE_KWH = 77777.0
CONFIG = EngineConfig(
    policy=SessionPolicy(timeout=3.0, attempts=1, backoff=0.01),
    stale_after=timedelta(seconds=10),
)


@asynccontextmanager
async def rogue(broker: tuple[str, int], serials: list[str]) -> AsyncIterator[list[str]]:
    """Answers these meters' commands at once, unsigned, with made-up energy and clock."""
    seen: list[str] = []

    async def answer(client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            req = json.loads(msg.payload)
            seen.append(req["command"])
            args = req["args"]
            result: dict[str, object] = {
                "hello": {"level": 1},
                "identify": {"serial": req["serial"], "manufacturer": "x", "model": "x",
                             "firmware": "x"},
                "read_clock": {"time": p.iso(datetime.now(UTC))},
                "read_profile_config": {"capture_period_s": 3600, "depth": 2000,
                                        "channels": ["active_import"]},
                "read_registers": {"registers": [], "at": p.iso(datetime.now(UTC))},
            }.get(req["command"], {})  # fmt: skip
            if req["command"] == "read_profile":
                start = p.parse_time(args["from"])
                result = {"entries": [{
                    "start": p.iso(start), "end": p.iso(start + timedelta(hours=1)),
                    "values": {"active_import": {"value": ROGUE_KWH, "unit": "kWh"}}}]}  # fmt: skip
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = msg.properties.CorrelationData  # type: ignore[union-attr]
            body = p.dumps(p.result_response(req["serial"], req["command"], result))
            await client.publish(msg.properties.ResponseTopic, body, 1, properties=props)  # type: ignore[union-attr]

    async with aiomqtt.Client(*broker, protocol=aiomqtt.ProtocolVersion.V5) as c:
        for serial in serials:  # only these meters: the broker may be shared with other runs
            await c.subscribe(p.command_topic("cgm", serial), qos=1)
        task = asyncio.create_task(answer(c))
        try:
            yield seen
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _rows(url: str, sql: str, *params: object) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


async def test_rogue_mqtt_answers_are_not_stored(
    new_database, tmp_path: Path, mqtt_broker: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    url = new_database()
    upgrade(url, Settings(database_url=url))
    fleet = build_fleet(1, seed=11, mix={"mqtt": 1.0}, first_code=run_code(88501))
    serials = [m.serial for _, m in fleet.meters()]
    await start_fleet(fleet, mqtt=mqtt_broker)
    caplog.set_level(logging.WARNING, logger="drivers.mqtt.driver")
    try:
        import_inventory(url, tmp_path, inventory(fleet))
        box = secret_box(Settings(database_url=url, data_dir=tmp_path))
        # 1. Only the rogue answers (the meters are silent): nothing is stored.
        for _, m in fleet.meters():
            m.faults = Faults(no_answer=True)
        async with rogue(mqtt_broker, serials) as seen:
            summary = await Collector(url, box, CONFIG).run_cycle(force=True)
        assert seen and summary.ok == 0
        assert _rows(url, "SELECT count(*) FROM reading") == [(0,)]
        results = {r for (r,) in _rows(url, "SELECT result FROM collection_session")}
        assert results == {"timeout"}
        assert "refused an unauthenticated answer to hello" in caplog.text
        # 2. The rogue answers first, the meters a little later: the meters' values are stored.
        for _, m in fleet.meters():
            m.faults = Faults(latency=0.1)
        async with rogue(mqtt_broker, serials):
            summary = await Collector(url, box, CONFIG).run_cycle(force=True)
        assert summary.ok == 2
        stored = _rows(url, "SELECT value FROM reading WHERE channel = 1")
        assert len(stored) > 24 and ROGUE_KWH not in {v for (v,) in stored}
    finally:
        await fleet.stop()


async def test_broker_login_comes_from_the_registry(
    new_database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker without anonymous access: the collector logs in with the account stored
    (encrypted) in the registry; the inventory names it by env: reference."""
    url = new_database()
    upgrade(url, Settings(database_url=url))
    monkeypatch.setenv("CGM_TEST_BROKER_PW", "collector-pw")
    meter = SimulatedMeter("MQ-LOGIN-1")
    users = {"cgm-collector": "collector-pw", "gateway": "gateway-pw"}
    async with Broker(users=users) as broker:
        sim = await serve([meter], *broker.address, username="gateway", password="gateway-pw")
        try:
            inv = {"frontiers": [{
                "code": "Frt88601", "name": "broker login", "kind": "commercialisation",
                "voltage_level": 2, "monthly_energy_mwh": 100.0,
                "meters": [{
                    "serial": "MQ-LOGIN-1", "role": "principal", "protocol": "mqtt",
                    "endpoint": f"{broker.host}:{broker.port}",
                    "credentials": {
                        "level1": {"secret": "reader-1"},
                        "broker": {"username": "cgm-collector",
                                   "password": "env:CGM_TEST_BROKER_PW"},
                    },
                }],
            }]}  # fmt: skip
            import_inventory(url, tmp_path, inv)
            box = secret_box(Settings(database_url=url, data_dir=tmp_path))
            summary = await Collector(url, box, CONFIG).run_cycle(force=True)
            assert summary.ok == 1, summary.as_dict()
            assert _rows(url, "SELECT count(*) > 0 FROM reading") == [(True,)]
            stored = _rows(url, "SELECT client, secret_enc FROM meter_credential WHERE level = 0")
            assert stored[0][0] == "cgm-collector"
            assert b"collector-pw" not in bytes(stored[0][1])  # encrypted at rest
            with psycopg.connect(url) as conn:
                listed = registry.to_json(registry.list_registry(conn))
            assert "collector-pw" not in listed
            # A wrong password in the registry: the broker refuses, recorded as auth.
            monkeypatch.setenv("CGM_TEST_BROKER_PW", "wrong")
            import_inventory(url, tmp_path, inv)
            # An on-demand run is the cycle of the second it was asked: a later second here,
            # or a run within the same second as the first finds its claim taken.
            later = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
            summary = await Collector(url, box, CONFIG).run_cycle(later, force=True)
            assert dict(summary.failed) == {"auth": 1}
        finally:
            await sim.stop(clear_retained=True)


def test_broker_password_in_params_is_still_refused() -> None:
    text = yaml.safe_dump({"frontiers": [{
        "code": "Frt88602", "name": "x", "kind": "commercialisation", "voltage_level": 2,
        "monthly_energy_mwh": 100.0,
        "meters": [{"serial": "MQ-P", "role": "principal", "protocol": "mqtt",
                    "endpoint": "127.0.0.1:1883", "params": {"password": "x"},
                    "credentials": {"level1": {"secret": "reader-1"}}}],
    }]})  # fmt: skip
    with pytest.raises(registry.InventoryError, match="credentials"):
        registry.parse(text, "inv.yaml", "yaml")
