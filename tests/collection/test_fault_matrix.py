"""The fault matrix: nothing lost and no task or claim left behind when the database stops
and starts mid-cycle, the broker is down, a meter hangs, or the service is killed (-9) and
restarted. Real PostgreSQL (behind a TCP proxy the test cuts), a real broker (likewise),
simulated meters over real sockets, and the real ``cgm run`` process."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cgm.collection.engine import Collector, EngineConfig, current_cycle
from cgm.collection.session import SessionPolicy
from simulators.fleet import Fleet, build_fleet, start_fleet
from tests.fixtures.fleet import FleetEnv, exact_clocks, migrated_database
from tests.fixtures.mqtt import run_code

DEPTH = 48  # hours of meter memory: short cycles, still a real catch-up
FIRST = run_code(86001)  # the fleet's first code: this run's own (see env)
FIRST_PRINCIPAL = f"P{FIRST}"


class Proxy:
    """A TCP proxy that can be cut (connections reset, new ones refused) and restored."""

    def __init__(self, connect: Callable[[], Awaitable[tuple]]) -> None:
        self._connect = connect
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await self._connect()
        except OSError:
            writer.transport.abort()
            return
        self._links |= {writer, up_writer}
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            dst.transport.abort()
            self._links.discard(dst)

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._links):
            w.transport.abort()
        self._links.clear()
        await asyncio.sleep(0.1)

    async def restore(self) -> None:
        await self.start()

    async def stop(self) -> None:
        await self.cut()
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)


class Env(FleetEnv):
    """The fleet's database, also reachable through a proxy the test cuts."""

    def __init__(self, url: str, proxied_url: str, fleet: Fleet, tmp: Path, db_proxy: Proxy):
        super().__init__(url, fleet, tmp)
        self.proxied_url, self.db_proxy = proxied_url, db_proxy

    def open_claims(self) -> int:
        return self.rows("SELECT count(*) FROM collection_claim WHERE done_at IS NULL")[0][0]

    def holes(self) -> dict[str, int]:
        """Per meter serial: hours missing between its first stored hour and the last
        closed hour (every channel counted), or the whole memory if nothing is stored."""
        last = current_cycle() - timedelta(hours=1)
        out = {}
        for _, meter in self.fleet.meters():
            (n, first) = self.rows(
                "SELECT count(*), min(interval_start) FROM reading r JOIN meter m "
                "ON m.id = r.meter_id WHERE m.serial = %s AND r.channel = 1 "
                "AND r.interval_start <= %s",
                meter.serial,
                last,
            )[0]
            expected = DEPTH if first is None else int((last - first) / timedelta(hours=1)) + 1
            out[meter.serial] = expected - n if first is None or n < DEPTH else 0
        return {k: v for k, v in out.items() if v}


def _collector_tasks() -> list[asyncio.Task]:
    me = asyncio.current_task()
    return [
        t
        for t in asyncio.all_tasks()
        if t is not me and getattr(t.get_coro(), "__qualname__", "").startswith("Collector.")
    ]


async def _pg_connect(params: dict) -> tuple:
    host = params.get("host") or "/var/run/postgresql"
    port = int(params.get("port") or 5432)
    if host.startswith("/"):
        return await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
    return await asyncio.open_connection(host, port)


@pytest_asyncio.fixture(loop_scope="session")
async def env(
    new_database: Callable[[], str], tmp_path: Path, mqtt_broker: tuple[str, int]
) -> AsyncIterator[Env]:
    url = migrated_database(new_database)
    params = conninfo_to_dict(url)
    db_proxy = await Proxy(lambda: _pg_connect(params)).start()
    proxied = make_conninfo(url, host="127.0.0.1", port=str(db_proxy.port))
    # Codes of this run's own: the MQTT frontier is served on the shared broker.
    fleet = build_fleet(3, seed=11, mix={"dlms": 1.0}, first_code=FIRST)
    fleet.frontiers[2].protocol = "mqtt"  # one frontier's meters speak MQTT
    exact_clocks(fleet, depth=DEPTH)
    await start_fleet(fleet, mqtt=mqtt_broker)
    yield Env(url, proxied, fleet, tmp_path, db_proxy)
    await fleet.stop()
    await db_proxy.stop()


def _config(**kw: object) -> EngineConfig:
    base = dict(
        policy=SessionPolicy(timeout=2.0, attempts=1, backoff=0.01),
        stale_after=timedelta(seconds=6),
        max_sessions=2,
        write_batch=1,
    )
    base.update(kw)
    return EngineConfig(**base)  # type: ignore[arg-type]


async def _when(env: Env, sql: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not env.rows(sql)[0][0]:
        assert time.monotonic() < deadline, f"timed out waiting for: {sql}"
        await asyncio.sleep(0.05)


def _slow(env: Env, seconds: float) -> None:
    for _, meter in env.fleet.meters():
        meter.faults.latency = seconds


async def test_the_database_stopping_and_starting_mid_cycle_loses_nothing(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "cgm.collection")
    env.import_()
    _slow(env, 0.05)
    proxy = env.db_proxy
    collector = Collector(env.proxied_url, env.box, _config(db_outage=timedelta(seconds=60)))
    cycle = asyncio.create_task(collector.run_cycle())
    await _when(env, "SELECT count(*) FROM collection_session")  # mid-cycle: one stored
    await proxy.cut()
    await asyncio.sleep(4)  # two heartbeats fail; sessions go on, outcomes wait in the queue
    await proxy.restore()
    summary = await asyncio.wait_for(cycle, 120)
    assert summary.ok == 6 and not summary.failed and not summary.unstored, summary.as_dict()
    # The outage was felt (and waited out), not missed by a fast cycle.
    assert any("database unavailable" in r.getMessage() for r in caplog.records)
    assert env.holes() == {}
    assert env.open_claims() == 0
    assert _collector_tasks() == []
    # The heartbeat came back after the outage: the collector is alive, not stale.
    (beat,) = env.rows("SELECT heartbeat FROM collector WHERE id = %s", collector.id)[0]
    assert beat > datetime.now(UTC) - timedelta(seconds=30)


async def test_an_outage_longer_than_the_cycle_waits_is_caught_up_by_the_next_cycle(
    env: Env,
) -> None:
    env.import_()
    _slow(env, 0.05)
    proxy = env.db_proxy
    collector = Collector(env.proxied_url, env.box, _config(db_outage=timedelta(seconds=1)))
    cycle = asyncio.create_task(collector.run_cycle())
    await _when(env, "SELECT count(*) FROM collection_session")
    await proxy.cut()
    summary = await asyncio.wait_for(cycle, 120)  # gives up on what it cannot store
    assert summary.errors and summary.ok < 6
    assert _collector_tasks() == []  # ended cleanly all the same
    await proxy.restore()
    # The next cycle releases the claims the outage kept open and reads the rest from the
    # meters' memory: nothing is lost. Forced, because on a loaded host a session of the cut
    # cycle may also have failed, and the failure backoff would rightly delay that meter.
    after = await collector.run_cycle(current_cycle() + timedelta(minutes=1), force=True)
    assert not after.errors, after.as_dict()
    assert env.open_claims() == 0
    assert env.holes() == {}


async def test_a_broker_down_fails_only_the_mqtt_meters_and_the_next_cycle_catches_up(
    env: Env, mqtt_broker: tuple[str, int]
) -> None:
    broker = await Proxy(lambda: asyncio.open_connection(*mqtt_broker)).start()
    try:

        def through_proxy(inv: dict) -> None:
            for f in inv["frontiers"]:
                for m in f["meters"]:
                    if m["protocol"] == "mqtt":
                        m["endpoint"] = f"127.0.0.1:{broker.port}"

        env.import_(through_proxy)
        await broker.cut()
        collector = Collector(env.url, env.box, _config())
        down = await collector.run_cycle()
        assert down.ok == 4 and sum(down.failed.values()) == 2, down.as_dict()
        assert env.open_claims() == 0 and _collector_tasks() == []
        await broker.restore()
        up = await collector.run_cycle(current_cycle() + timedelta(minutes=1))
        assert up.ok == 6, up.as_dict()
        assert env.holes() == {}
    finally:
        await broker.stop()


async def test_a_meter_that_hangs_fails_alone_within_its_timeouts(env: Env) -> None:
    env.import_()
    hung = env.fleet.meter(FIRST_PRINCIPAL)
    hung.faults.no_answer = True  # accepts the connection, never answers
    collector = Collector(env.url, env.box, _config())
    t0 = time.monotonic()
    s = await collector.run_cycle()
    assert time.monotonic() - t0 < 60
    assert s.ok == 5 and s.failed == {"timeout": 1}, s.as_dict()
    assert env.open_claims() == 0 and _collector_tasks() == []
    hung.faults.no_answer = False
    again = await collector.run_cycle(current_cycle() + timedelta(minutes=1))
    # MQTT meters kept current by their pushes may be skipped; the hung meter is read again.
    assert again.ok == again.meters and not again.failed and env.holes() == {}


async def test_kill_9_of_the_service_and_a_restart_lose_nothing(env: Env, tmp_path: Path) -> None:
    env.import_()
    _slow(env, 0.1)
    # One meter far slower than the rest, so that the cycle is surely still running when the
    # others' sessions are stored: the kill lands mid-cycle however loaded the host is.
    env.fleet.meter(FIRST_PRINCIPAL).faults.latency = 2.0
    settings_env = {
        **os.environ,
        "CGM_DATABASE_URL": env.url,
        "CGM_DATA_DIR": str(tmp_path),  # the key the registry's credentials were sealed with
        "CGM_METRICS_PORT": "0",
        "CGM_API_PORT": "0",
        "CGM_MQTT_URL": "mqtt://127.0.0.1:1",  # none of this fleet's meters is MQTT-pushed
        "CGM_COLLECT_STALE_AFTER_S": "4",
    }
    cmd = [sys.executable, "-c", "from cgm.cli import main; main()", "run"]

    logfile = tmp_path / "service.log"

    def start() -> subprocess.Popen:
        with logfile.open("ab") as out:  # a file, not a pipe: a full pipe would block it
            return subprocess.Popen(cmd, env=settings_env, stdout=out, stderr=out)

    first = start()
    try:
        await _when(
            env,
            "SELECT count(*) FROM collection_session WHERE EXISTS "
            "(SELECT 1 FROM collection_claim WHERE done_at IS NULL)",
            timeout=90,
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    assert "Traceback" not in logfile.read_text(), logfile.read_text()
    assert first.returncode == -signal.SIGKILL
    # Killed mid-cycle: claims it held are open, with a heartbeat that has stopped.
    assert env.open_claims() > 0
    second = start()
    try:
        deadline = time.monotonic() + 120
        while env.open_claims() or env.holes():
            assert second.poll() is None, logfile.read_text()
            assert time.monotonic() < deadline, (env.open_claims(), env.holes())
            await asyncio.sleep(0.5)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    # Each meter read once per cycle, its claim finished by the survivor.
    dup = env.rows(
        "SELECT meter_id, cycle, count(*) FROM collection_session WHERE result = 'ok' "
        "GROUP BY 1, 2 HAVING count(*) > 1"
    )
    assert dup == []
