"""Pushed entries survive cgm being down (a persistent MQTT session acknowledged only after
the store), refused pushes are recorded like refused reads, and the demo fleet runs against
the shipped, non-anonymous Mosquitto — real brokers, real simulators, a real database."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import psycopg
import pytest
import pytest_asyncio
import yaml

from cgm import registry
from cgm.collection.engine import Collector, EngineConfig
from cgm.collection.push import UNAUTHENTICATED, PushConsumer
from cgm.collection.session import SessionPolicy
from cgm.config import Settings
from cgm.embedded.broker import Broker
from cgm.migrate import upgrade
from cgm.security import secret_box
from drivers.mqtt import protocol as p
from simulators.fleet import COLLECTOR_ACCOUNT, broker_accounts, build_fleet, inventory, start_fleet
from tests.fixtures.mosquitto import Deployed, deployed_mosquitto
from tests.fixtures.mqtt import run_code

CONFIG = EngineConfig(
    policy=SessionPolicy(timeout=5.0, attempts=1, backoff=0.01),
    stale_after=timedelta(seconds=10),
)
SEED = b"pytest broker seed"


def _client_id() -> str:
    """A client id of the test's own: persistent sessions outlive a test run on a shared
    broker, and a fixed id would resume one that queued other runs' pushes."""
    return f"pytest-{uuid.uuid4().hex[:10]}"


def _rows(url: str, sql: str, *params: object) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


async def _until(url: str, sql: str, *params: object, timeout: float = 15.0) -> int:
    async with asyncio.timeout(timeout):
        while True:
            (n,) = (await asyncio.to_thread(_rows, url, sql, *params))[0]
            if n:
                return n
            await asyncio.sleep(0.1)


def _fleet_of_mqtt(code: int):  # noqa: ANN202
    fleet = build_fleet(1, seed=code, mix={"mqtt": 1.0}, first_code=code)
    for _, meter in fleet.meters():
        meter.depth = 24 * 2
    return fleet


def _sims(fleet) -> list:  # noqa: ANN001
    from simulators.mqtt import MqttMeterSimulator

    return [s for s in fleet.servers if isinstance(s, MqttMeterSimulator)]


async def _publish(fleet) -> dict:  # noqa: ANN001
    out: dict = {}
    for sim in _sims(fleet):
        out.update(await sim.publish_profile_now())
    return out


def _import(url: str, box, fleet, tmp: Path, edit=None) -> None:  # noqa: ANN001
    inv = inventory(fleet)
    if edit is not None:
        edit(inv)
    path = tmp / "fleet.yaml"
    path.write_text(yaml.safe_dump(inv))
    with psycopg.connect(url) as conn:
        registry.import_inventory(conn, registry.load(path), box, actor="pytest")


@pytest.fixture(scope="module")
def shipped_mosquitto(
    tmp_path_factory: pytest.TempPathFactory, mosquitto_programs: tuple[str, str]
) -> Iterator[Deployed]:
    """The shipped configuration, with the accounts of the fleets these tests build."""
    accounts: dict[str, str] = {}
    for code in (88801, 88811):
        accounts |= broker_accounts(_fleet_of_mqtt(code), SEED)
    tmp = tmp_path_factory.mktemp("shipped")
    with deployed_mosquitto(tmp, accounts, mosquitto_programs) as deployed:
        yield deployed


@pytest_asyncio.fixture(loop_scope="session")
async def embedded_broker() -> AsyncIterator[tuple[str, int]]:
    broker = Broker("127.0.0.1", 0)
    address = await broker.start()
    yield address
    await broker.stop()


async def test_the_demo_fleet_logs_in_to_the_shipped_mosquitto(
    new_database, tmp_path: Path, shipped_mosquitto: Deployed
) -> None:
    url = new_database()
    upgrade(url, Settings(database_url=url))
    box = secret_box(Settings(database_url=url, data_dir=tmp_path))
    # Anonymous, as the demo fleet used to connect: the shipped broker refuses it.
    with pytest.raises(ConnectionError, match="refused"):
        await start_fleet(_fleet_of_mqtt(88801), mqtt=shipped_mosquitto.plain)
    fleet = _fleet_of_mqtt(88801)
    await start_fleet(fleet, mqtt=shipped_mosquitto.plain, broker_seed=SEED)
    consumer = PushConsumer(
        url, box, collector_id="pytest-demo", batch_wait=0.05, client_id=_client_id(),
        session_expiry=30,
    )  # fmt: skip
    stop = asyncio.Event()
    task: asyncio.Task | None = None
    try:
        _import(url, box, fleet, tmp_path)
        summary = await Collector(url, box, CONFIG).run_cycle()
        assert summary.ok == 2, summary.as_dict()
        task = asyncio.create_task(consumer.run(stop))
        await asyncio.wait_for(consumer.subscribed.wait(), 30)
        published = await _publish(fleet)
        n = sum(len(e[0].values) for e in published.values())
        await _until(url, "SELECT count(*) FROM ingest_batch WHERE source LIKE 'mqtt-push:%%'")
        assert consumer.refused == 0
        serials = list(published)
        assert len(serials) == 2
        assert consumer.stored + summary.intervals_stored >= n
    finally:
        stop.set()
        if task is not None:
            await asyncio.wait_for(task, 10)
        await fleet.stop()


def test_cgm_run_writes_the_demo_fleets_broker_accounts(tmp_path: Path) -> None:
    """The one command that gives a broker with the shipped configuration the demo fleet's
    accounts: ``cgm run --simulate N --broker-accounts FILE``, then ``mosquitto_passwd -U``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CGM_")}
    environ["CGM_DATA_DIR"] = str(tmp_path / "data")
    out = tmp_path / "accounts"
    done = subprocess.run(
        [sys.executable, "-m", "cgm.cli", "run", "--simulate", "10", "--broker-accounts",
         str(out)], capture_output=True, text=True, timeout=60, env=environ, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    lines = dict(line.split(":", 1) for line in out.read_text().splitlines())
    fleet = build_fleet(10, seed=0)
    mqtt = {m.serial for f, m in fleet.meters() if f.protocol == "mqtt"}
    assert mqtt and set(lines) == mqtt | {COLLECTOR_ACCOUNT}
    assert all(len(pw) >= 20 for pw in lines.values())
    # Stable for an installation (from its secret key), so the broker's file stays valid.
    again = subprocess.run(
        [sys.executable, "-m", "cgm.cli", "run", "--simulate", "10", "--broker-accounts",
         str(tmp_path / "again")], capture_output=True, text=True, timeout=60, env=environ,
        cwd=tmp_path,
    )  # fmt: skip
    assert again.returncode == 0
    assert (tmp_path / "again").read_text() == out.read_text()


@pytest.mark.parametrize("which", ["mosquitto", "embedded"])
async def test_pushes_made_while_cgm_is_down_are_stored_once_after_restart(
    which: str,
    new_database,
    tmp_path: Path,
    shipped_mosquitto: Deployed,
    embedded_broker: tuple[str, int],
) -> None:
    url = new_database()
    upgrade(url, Settings(database_url=url))
    box = secret_box(Settings(database_url=url, data_dir=tmp_path))
    broker = shipped_mosquitto.plain if which == "mosquitto" else embedded_broker
    fleet = _fleet_of_mqtt(88811)
    await start_fleet(fleet, mqtt=broker, broker_seed=SEED)
    ids = []
    client_id = _client_id()
    consumers: list[PushConsumer] = []

    async def run_consumer(name: str, batch_wait: float, until=None) -> PushConsumer:  # noqa: ANN001
        consumer = PushConsumer(
            url, box, collector_id=name, batch_wait=batch_wait, client_id=client_id,
            session_expiry=60,
        )  # fmt: skip
        consumers.append(consumer)
        stop = asyncio.Event()
        task = asyncio.create_task(consumer.run(stop))
        try:
            await asyncio.wait_for(consumer.subscribed.wait(), 30)
            await (until or (lambda: asyncio.sleep(1.5)))()
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
        return consumer

    try:
        _import(url, box, fleet, tmp_path)
        ids = [r[0] for r in _rows(url, "SELECT id FROM meter ORDER BY serial")]
        await run_consumer("first", 0.05)  # subscribes, then cgm stops
        published = await _publish(fleet)  # while cgm is down
        n = sum(len(e[0].values) for e in published.values())
        hour = next(iter(published.values()))[0].start
        count = (
            "SELECT count(*) FROM reading WHERE meter_id = ANY(%s) AND interval_start = %s"
        )
        assert _rows(url, count, ids, hour) == [(0,)]
        # Restarted, it receives them, but stops before its batch is stored (its writer
        # waits 30 s to fill a batch): received, not stored, so not acknowledged.
        async def received() -> None:
            async with asyncio.timeout(30):
                while not consumers[-1].received:  # noqa: ASYNC110 - a counter, not an event
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)

        second = await run_consumer("second", 30.0, received)
        assert second.received and second.stored == 0 and _rows(url, count, ids, hour) == [(0,)]

        # Started again: the broker sends them once more, and they are stored once.
        async def stored() -> None:
            await _until(url, f"SELECT count(*) >= {n} FROM reading WHERE meter_id = ANY(%s) "
                         "AND interval_start = %s", ids, hour)  # fmt: skip
            await asyncio.sleep(0.5)  # any duplicate delivery would land by now

        third = await run_consumer("third", 0.05, stored)
        assert _rows(url, count, ids, hour) == [(n,)]
        assert third.stored == n
        # Nothing more on the next start: acknowledged means done.
        fourth = await run_consumer("fourth", 0.05)
        assert fourth.stored == 0
        batches = _rows(
            url, "SELECT count(*) FROM ingest_batch WHERE source LIKE 'mqtt-push:%%'"
        )[0][0]
        assert batches >= 1
    finally:
        await fleet.stop()


async def test_refused_pushed_values_are_recorded_in_the_session_log_and_hoja_de_vida(
    new_database, tmp_path: Path, mqtt_broker: tuple[str, int]
) -> None:
    url = new_database()
    upgrade(url, Settings(database_url=url))
    box = secret_box(Settings(database_url=url, data_dir=tmp_path))
    fleet = build_fleet(1, seed=3, mix={"mqtt": 1.0}, first_code=run_code(88821))
    await start_fleet(fleet, mqtt=mqtt_broker)
    principal, backup = fleet.frontiers[0].principal, fleet.frontiers[0].backup

    def tiny_rating(inv: dict) -> None:
        # The principal registered with a current rating its energy cannot come from.
        for m in inv["frontiers"][0]["meters"]:
            if m["serial"] == principal.serial:
                m["params"]["max_current_a"] = 0.0001

    consumer = PushConsumer(
        url, box, collector_id="pytest-refused", batch_wait=0.05, client_id=_client_id(),
        session_expiry=30,
    )  # fmt: skip
    stop = asyncio.Event()
    task = None
    try:
        _import(url, box, fleet, tmp_path, tiny_rating)
        pid, bid = (
            _rows(url, "SELECT id FROM meter WHERE serial = %s", s)[0][0]
            for s in (principal.serial, backup.serial)
        )
        task = asyncio.create_task(consumer.run(stop))
        await asyncio.wait_for(consumer.subscribed.wait(), 30)
        published = await _publish(fleet)
        # A forged push for the backup: no signature.
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
        forged = {"schema": p.SCHEMA, "serial": backup.serial, "entries": [{
            "start": p.iso(hour), "end": p.iso(hour + timedelta(hours=1)), "status": 0,
            "values": {"active_import": {"value": 55555.0, "unit": "kWh"}}}]}  # fmt: skip
        async with aiomqtt.Client(*mqtt_broker, protocol=aiomqtt.ProtocolVersion.V5) as rogue:
            for _ in range(3):
                await rogue.publish(
                    p.profile_topic("cgm", backup.serial), json.dumps(forged).encode(), 1
                )
        sql = (
            "SELECT count(*) FROM collection_session WHERE meter_id = %s "
            "AND result = 'push_refused'"
        )
        await _until(url, sql, pid)
        await _until(url, sql, bid)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        if task is not None:
            await asyncio.wait_for(task, 10)
        await fleet.stop()
    # The principal's implausible values: refused with the reason, in every place a refused
    # read goes.
    values = published[principal.serial][0].values.values()
    n = sum(1 for v in values if v > 0)  # a zero is within any rating
    assert n
    (error, refused, reasons), *_ = _rows(
        url, "SELECT error, intervals_refused, refusals FROM collection_session "
        "WHERE meter_id = %s AND result = 'push_refused'", pid,
    )  # fmt: skip
    assert refused == n and "implausible" in error
    assert all(r.startswith("implausible") for r in reasons)
    assert _rows(url, "SELECT count(*) FROM reading_refused WHERE meter_id = %s", pid) == [(n,)]
    assert _rows(url, "SELECT count(*) FROM reading WHERE meter_id = %s", pid) == [
        (len(values) - n,)
    ]
    (findings,) = _rows(
        url, "SELECT activities->'findings' FROM frontier_log WHERE meter_id = %s "
        "AND kind = 'config_violation' AND purpose = 'pushed entries check'", pid,
    )[0]  # fmt: skip
    assert any("allows" in f for f in findings)
    # The backup's forged pushes: refused for the signature, logged, one alarm.
    rows = _rows(
        url, "SELECT error, intervals_refused FROM collection_session "
        "WHERE meter_id = %s AND result = 'push_refused'", bid,
    )  # fmt: skip
    assert sum(r[1] for r in rows) == 3
    assert all("signature" in r[0] for r in rows)
    alarms = _rows(
        url, "SELECT activities FROM frontier_log WHERE meter_id = %s AND kind = 'alarm' "
        "AND purpose = %s", bid, UNAUTHENTICATED,
    )  # fmt: skip
    assert len(alarms) == 1
    # The backup's own, signed push is stored; the forged value is not.
    forged_stored = "SELECT count(*) FROM reading WHERE meter_id = %s AND value = 55555"
    assert _rows(url, forged_stored, bid) == [(0,)]
    assert _rows(url, "SELECT count(*) FROM reading WHERE meter_id = %s", bid)[0][0] == len(
        published[backup.serial][0].values
    )


async def test_a_push_that_cannot_be_stored_does_not_stop_the_push_writer(
    new_database, tmp_path: Path, mqtt_broker: tuple[str, int]
) -> None:
    from dataclasses import replace

    from cgm.collection.push import Pushed
    from cgm.registry import active_meters_async

    url = new_database()
    upgrade(url, Settings(database_url=url))
    box = secret_box(Settings(database_url=url, data_dir=tmp_path))
    fleet = build_fleet(1, seed=4, mix={"mqtt": 1.0}, first_code=run_code(88831))
    await start_fleet(fleet, mqtt=mqtt_broker)
    try:
        _import(url, box, fleet, tmp_path)
    finally:
        await fleet.stop()
    async with await psycopg.AsyncConnection.connect(url) as conn:
        good, other = await active_meters_async(conn, box)
    ghost = replace(other, meter_id=10**12)  # removed from the registry meanwhile
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    entries = fleet.meter(good.serial).profile(end - timedelta(hours=1), end)
    acked: list[str] = []
    batch = [
        Pushed(t, entries, datetime.now(UTC), (lambda s=t.serial: acked.append(s)))
        for t in (ghost, good)
    ]
    consumer = PushConsumer(url, box, collector_id="pytest-poison", client_id=_client_id())
    conn = await consumer._store_acked(None, batch)  # noqa: SLF001
    assert conn is not None
    await conn.close()
    assert consumer.stored == len(entries[0].values)  # the good push is stored
    assert sorted(acked) == sorted([ghost.serial, good.serial])  # neither is sent again


async def test_pushes_survive_broker_restarts_and_are_stored_once(
    new_database, tmp_path: Path, mosquitto_programs: tuple[str, str]
) -> None:
    """The shipped Mosquitto (persistence on) restarted twice: once while cgm is down with
    pushes queued for it, once while cgm runs. Every pushed value is stored exactly once."""
    url = new_database()
    upgrade(url, Settings(database_url=url))
    box = secret_box(Settings(database_url=url, data_dir=tmp_path))
    fleet = _fleet_of_mqtt(88841)
    accounts = broker_accounts(fleet, SEED)
    client_id = _client_id()
    (tmp_path / "broker").mkdir()
    with deployed_mosquitto(tmp_path / "broker", accounts, mosquitto_programs) as broker:
        await start_fleet(fleet, mqtt=broker.plain, broker_seed=SEED)
        try:
            _import(url, box, fleet, tmp_path)
            ids = [r[0] for r in _rows(url, "SELECT id FROM meter ORDER BY serial")]

            def consumer() -> PushConsumer:
                return PushConsumer(url, box, collector_id="pytest-restart", batch_wait=0.05,
                                    client_id=client_id, session_expiry=600)  # fmt: skip

            first, stop = consumer(), asyncio.Event()
            task = asyncio.create_task(first.run(stop))
            await asyncio.wait_for(first.subscribed.wait(), 30)
            stop.set()
            await asyncio.wait_for(task, 10)

            # Pushed while cgm is down, then the broker restarts: the queue is on its disk.
            hour_end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
            sent = {}
            for sim in _sims(fleet):
                sent.update(await sim.publish_hour(hour_end - timedelta(hours=1)))
            n = sum(len(e.values) for entries in sent.values() for e in entries)
            assert n > 0
            await asyncio.to_thread(broker.restart)

            second, stop = consumer(), asyncio.Event()
            task = asyncio.create_task(second.run(stop))
            try:
                count = ("SELECT count(*) FROM reading WHERE meter_id = ANY(%s) "
                         "AND interval_start = %s")  # fmt: skip
                hour1 = hour_end - timedelta(hours=2)
                await _until(url, count.replace("count(*)", f"count(*) >= {n}"), ids, hour1)
                # The broker restarts under the running consumer: it reconnects, resumes
                # its session and stores what the meters push next.
                await asyncio.to_thread(broker.restart)
                for sim in _sims(fleet):
                    await sim.publish_hour(hour_end)
                hour2 = hour_end - timedelta(hours=1)
                await _until(url, count.replace("count(*)", f"count(*) >= {n}"), ids, hour2,
                             timeout=60)  # fmt: skip
                await asyncio.sleep(1.0)  # a duplicate delivery would land by now
            finally:
                stop.set()
                await asyncio.wait_for(task, 10)
            assert _rows(url, count, ids, hour1) == [(n,)]
            assert _rows(url, count, ids, hour2) == [(n,)]
            assert _rows(url, "SELECT count(*) FROM reading WHERE version > 1") == [(0,)]
            assert second.stored == 2 * n
        finally:
            await fleet.stop()
