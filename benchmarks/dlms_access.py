"""What each DLMS access method costs the collector: LLS, HLS mechanism 2, HLS-GMAC, HDLC.

    .venv/bin/python benchmarks/dlms_access.py [--sessions 300] [--concurrency 30]
        [--database-url postgresql://127.0.0.1:5432/test]

A child process serves 30 simulated meters per access method (one port each); this process
runs ``--sessions`` hourly-style sessions per method (associate, clock, profile of the last
two hours, release) with ``--concurrency`` at a time, and reports sessions per second,
p50/p95 session time and this process's CPU per session (the driver's side: framing,
authentication, ciphering). GMAC counters come from PostgreSQL when ``--database-url`` is
given (a scratch database on that server, one reservation per 64 APDUs), else from
memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from drivers.base import AccessLevel, Credentials, Endpoint  # noqa: E402
from drivers.dlms import DlmsDriver  # noqa: E402
from drivers.dlms.security import MemoryCounterStore  # noqa: E402

GMAC = "ek=000102030405060708090a0b0c0d0e0f;ak=d0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
HLS = "hls-key-0123456"
METHODS = {
    # name: (level-2 mechanism, framing, secret)
    "lls-wrapper": ("lls", "wrapper", "config-2"),
    "hls-wrapper": ("hls", "wrapper", HLS),
    "gmac-wrapper": ("hls-gmac", "wrapper", GMAC),
    "lls-hdlc": ("lls", "hdlc", "config-2"),
}
PER_PORT = 30


async def _serve() -> None:
    from simulators.dlms import serve
    from simulators.dlms.security import MeterSecurity
    from simulators.meter import Secrets, SimulatedMeter

    ports = {}
    servers = []
    for name, (mechanism, framing, secret) in METHODS.items():
        meters = {
            i + 1: SimulatedMeter(f"{name}-{i}", seed=i, secrets=Secrets("reader-1", secret))
            for i in range(PER_PORT)
        }
        security = {i: MeterSecurity(level2=mechanism) for i in meters}
        server = await serve(meters, security=security, framing=framing)
        servers.append(server)
        ports[name] = server.port
    print(json.dumps(ports), flush=True)
    await asyncio.Event().wait()


async def _run(name: str, port: int, sessions: int, concurrency: int, store: object) -> dict:
    mechanism, framing, secret = METHODS[name]
    driver = DlmsDriver(counter_store=store)  # type: ignore[arg-type]
    creds = Credentials(AccessLevel.CONFIGURE, secret)
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    gate = asyncio.Semaphore(concurrency)
    times: list[float] = []

    async def one(i: int) -> None:
        params = {"server_address": i % PER_PORT + 1, "level2_auth": mechanism}
        if framing == "hdlc":
            params["framing"] = "hdlc"
        async with gate:
            t0 = time.perf_counter()
            async with await driver.connect(
                Endpoint("127.0.0.1", port), creds, params, timeout=30
            ) as session:
                await session.read_clock()
                await session.read_profile(end - timedelta(hours=2), end)
            times.append(time.perf_counter() - t0)

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(sessions)))
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    times.sort()
    return {
        "method": name,
        "sessions_per_s": round(sessions / wall, 1),
        "p50_ms": round(times[len(times) // 2] * 1000, 1),
        "p95_ms": round(times[int(len(times) * 0.95)] * 1000, 1),
        "driver_cpu_ms_per_session": round(cpu / sessions * 1000, 2),
    }


async def main(args: argparse.Namespace, ports: dict[str, int]) -> None:
    store: object = MemoryCounterStore()
    if args.database_url:
        from cgm.security.counters import PgInvocationCounterStore

        store = PgInvocationCounterStore(args.database_url)
    print(f"load average at start: {os.getloadavg()[0]:.2f} (2 cores)")
    for name, port in ports.items():
        await _run(name, port, 20, args.concurrency, store)  # warm-up
        print(json.dumps(await _run(name, port, args.sessions, args.concurrency, store)))


def _scratch_database(server_url: str) -> str:
    """A fresh migrated database on ``server_url``'s server (dropped by the caller)."""
    import uuid

    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from cgm.config import Settings
    from cgm.migrate import upgrade

    name = f"cgm_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(server_url)
    params["dbname"] = name
    url = make_conninfo(**params)
    upgrade(url, Settings(database_url=url))
    return url


def _drop(server_url: str, url: str) -> None:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    name = conninfo_to_dict(url)["dbname"]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sessions", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=30)
    parser.add_argument("--database-url")
    arguments = parser.parse_args()
    if arguments.serve:
        asyncio.run(_serve())
        sys.exit(0)
    server_url = arguments.database_url
    if server_url:
        arguments.database_url = _scratch_database(server_url)
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert child.stdout is not None
        asyncio.run(main(arguments, json.loads(child.stdout.readline())))
    finally:
        child.terminate()
        child.wait()
        if server_url:
            _drop(server_url, arguments.database_url)
