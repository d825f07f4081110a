"""One collection cycle of a simulated fleet, simulators in a separate process.

    .venv/bin/python benchmarks/collect.py --frontiers 1000 2000 5000 [--per-port 100]
        [--database-url postgresql://127.0.0.1:5432/test]

For each size: start ``cgm simulate`` (another process), import its inventory into a fresh
scratch database, seed one reading per meter and channel two hours ago (so the measured cycle
is the steady-state hourly one: identify, clock, profile config, one new hour, registers —
not the one-off 35-day first contact), run one cycle, and report meters per second, p50/p95
session time, CPU of both processes, and whether the cycle fit in 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psutil
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cgm import registry
from cgm.collection.engine import Collector, EngineConfig, current_cycle
from cgm.collection.session import SessionPolicy
from cgm.config import Settings
from cgm.migrate import upgrade
from cgm.security import secret_box
from cgm.storage import readings_array, write_readings

ROOT = Path(__file__).resolve().parent.parent


def scratch_db(server: str) -> tuple[str, str]:
    name = f"cgm_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(server)
    params["dbname"] = name
    return name, make_conninfo(**params)


def drop_db(server: str, name: str) -> None:
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_simulators(n: int, per_port: int, out: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cgm.cli",
            "simulate",
            "--frontiers",
            str(n),
            "--seed",
            "1",
            "--per-port",
            str(per_port),
            "--out",
            str(out),
        ],
        cwd=out.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not out.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"simulators exited: {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise RuntimeError("simulators did not start in 300 s")
        time.sleep(0.2)
    time.sleep(0.5)  # the file is written after every server listens; let the write finish
    return proc


async def seed(url: str, meter_ids: list[int], at: datetime) -> None:
    ids = np.repeat(np.array(meter_ids), 4)
    channels = np.tile(np.arange(1, 5), len(meter_ids))
    rows = readings_array(ids, channels, at, 1.0, 0, at)
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await write_readings(conn, rows, source="benchmark-seed", actor="benchmark")


async def measure(n: int, per_port: int, server: str, concurrency: int) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="cgm-bench-"))
    name, url = scratch_db(server)
    sim = None
    try:
        upgrade(url, Settings(database_url=url))
        t0 = time.perf_counter()
        sim = start_simulators(n, per_port, work / "fleet.yaml")
        started = time.perf_counter() - t0
        box = secret_box(Settings(database_url=url, data_dir=work))
        with psycopg.connect(url) as conn:
            registry.import_inventory(
                conn, registry.load(work / "fleet.yaml"), box, actor="benchmark"
            )
            ids = [r[0] for r in conn.execute("SELECT id FROM meter")]
        now = datetime.now(UTC)
        await seed(url, ids, current_cycle(now) - timedelta(hours=2))
        sim_proc = psutil.Process(sim.pid)
        sim_cpu0 = sum(sim_proc.cpu_times()[:2])
        me0 = resource.getrusage(resource.RUSAGE_SELF)
        config = EngineConfig(
            max_sessions=concurrency, per_endpoint=8, policy=SessionPolicy(timeout=30.0, attempts=2)
        )
        profiler = None
        if os.environ.get("CGM_BENCH_PROFILE"):
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        summary = await Collector(url, box, config).run_cycle()
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(os.environ["CGM_BENCH_PROFILE"])
        me1 = resource.getrusage(resource.RUSAGE_SELF)
        sim_cpu = sum(sim_proc.cpu_times()[:2]) - sim_cpu0
        with psycopg.connect(url) as conn:
            durations = [
                r[0]
                for r in conn.execute(
                    "SELECT extract(epoch FROM finished_at - started_at) FROM collection_session"
                )
            ]
        d = np.array(durations, dtype=float)
        collector_cpu = (me1.ru_utime - me0.ru_utime) + (me1.ru_stime - me0.ru_stime)
        return {
            "frontiers": n,
            "meters": summary.meters,
            "ok": summary.ok,
            "failed": dict(summary.failed),
            "intervals": summary.intervals_stored,
            "cycle_s": round(summary.seconds, 2),
            "meters_per_s": round(summary.meters / summary.seconds, 1),
            "session_p50_s": round(float(np.percentile(d, 50)), 3),
            "session_p95_s": round(float(np.percentile(d, 95)), 3),
            "collector_cpu_s": round(collector_cpu, 1),
            "simulator_cpu_s": round(sim_cpu, 1),
            "simulators_start_s": round(started, 1),
            "within_60s": summary.seconds <= 60,
        }
    finally:
        if sim is not None:
            sim.send_signal(signal.SIGINT)
            try:
                sim.wait(30)
            except subprocess.TimeoutExpired:
                sim.kill()
        drop_db(server, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frontiers", type=int, nargs="+", default=[500, 1000, 2000])
    parser.add_argument("--per-port", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("CGM_DATABASE_URL", "postgresql://127.0.0.1:5432/test"),
    )
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    for n in args.frontiers:
        result = asyncio.run(measure(n, args.per_port, args.database_url, args.concurrency))
        print(" ".join(f"{k}={v}" for k, v in result.items()), flush=True)


if __name__ == "__main__":
    main()
