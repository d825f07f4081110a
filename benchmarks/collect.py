"""One collection cycle of a simulated fleet, simulators in a separate process.

    .venv/bin/python benchmarks/collect.py --frontiers 1000 2000 5000 [--per-port 100]
        [--collectors 2] [--per-endpoint 8] [--concurrency 256]
        [--database-url postgresql://127.0.0.1:5432/test]

For each size: start ``cgm simulate`` (another process), import its inventory into a fresh
scratch database, seed one reading per meter and channel two hours ago (so the measured cycle
is the steady-state hourly one: identify, clock, profile config, one new hour, registers —
not the one-off 35-day first contact), run one cycle, and report meters per second, p50/p95
session time (overall and per protocol), CPU of every process, the machine's load average
when the run started (other work on the machine distorts the numbers), and whether the
cycle fit in 60 s.

``--collectors 1 2 4`` runs the fleet once per count, with that many collector processes
sharing it through claims as a deployment scales out (the cycle time is from the first
collector's start to the last outcome stored; ``collectors_exit_s`` adds the time the
collectors then keep watching each other's claims), and prints the speed-up over the first
count. After every run the
script checks what the cycle stored: one session row per meter, every reading row counted
once by the sessions that stored it, no claim left open.

``--driver instant`` answers every session in process at once (``benchmarks/instant.py``):
the collector's CPU is then the engine's own (claims, scheduling, session sequence,
screening, writer), without the protocols.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
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


def start_simulators(
    n: int,
    per_port: int,
    out: Path,
    mix: str | None,
    mqtt_url: str,
    latency: tuple[float, float] = (0.0, 0.0),
) -> subprocess.Popen:
    log_path = out.with_suffix(".log")
    log = log_path.open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            *(
                ["-m", "cProfile", "-o", os.environ["CGM_BENCH_SIM_PROFILE"]]
                if os.environ.get("CGM_BENCH_SIM_PROFILE")
                else []
            ),
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
            *(["--mix", mix] if mix else []),
            *(["--latency", str(latency[0]), "--jitter", str(latency[1])] if any(latency) else []),
            *([] if mqtt_url == "embedded" else ["--mqtt-url", mqtt_url]),
        ],
        cwd=out.parent,
        stdout=subprocess.DEVNULL,
        # A file, not a pipe: nobody reads a pipe during the cycle, and once its buffer fills
        # the simulator blocks in its next log call (measured: MQTT answers stalled 30 s).
        stderr=log,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not out.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"simulators exited: {log_path.read_text()[-2000:]}")
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


def engine_config(concurrency: int, per_endpoint: int, stale_after: float = 90.0) -> EngineConfig:
    return EngineConfig(
        max_sessions=concurrency,
        per_endpoint=per_endpoint,
        policy=SessionPolicy(timeout=30.0, attempts=2),
        stale_after=timedelta(seconds=stale_after),
    )


async def run_collector(
    url: str, data_dir: Path, config: EngineConfig, driver: str = "real"
) -> dict[str, object]:
    """One collector's cycle, timed and with its own CPU (the parent or a worker process)."""
    box = secret_box(Settings(database_url=url, data_dir=data_dir))
    kind = Collector
    if driver == "instant":
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from instant import InstantCollector

        kind = InstantCollector
    # The parent parsed the fleet's YAML (import_inventory): its garbage, hundreds of
    # thousands of objects in reference cycles, would be collected during the cycle and
    # charged to the collector (measured: half its CPU at 2,000 meters).
    gc.collect()
    gc_cpu = _GcClock()
    gc.callbacks.append(gc_cpu)
    rss0 = _reset_peak_rss()
    me0 = resource.getrusage(resource.RUSAGE_SELF)
    profiler = None
    if os.environ.get("CGM_BENCH_PROFILE"):
        import cProfile

        # CPU time, not wall time: on a shared host a wall-clock profile charges whatever
        # function was running when the scheduler took the core away.
        profiler = cProfile.Profile(time.process_time)
        # Without the garbage collector: a profile charges a collection to whatever function
        # allocated when it started (its total is collector_gc_cpu_s of an unprofiled run).
        gc.disable()
        profiler.enable()
    start = time.time()
    summary = await kind(url, box, config).run_cycle()
    finish = time.time()
    if profiler is not None:
        profiler.disable()
        gc.enable()
        profiler.dump_stats(f"{os.environ['CGM_BENCH_PROFILE']}.{os.getpid()}")
    me1 = resource.getrusage(resource.RUSAGE_SELF)
    gc.callbacks.remove(gc_cpu)
    return {
        "gc_cpu": gc_cpu.total,
        # The cycle's own peak: with one collector this process parsed the fleet's YAML and
        # imported it first (its peak, not the collector's, was ru_maxrss: 564 of 10,000
        # meters' MB, where the cycle itself stayed at 353).
        "max_rss_mb": _status_mb("VmHWM") if rss0 is not None else round(me1.ru_maxrss / 1024, 1),
        "rss_at_start_mb": rss0,
        "start": start,
        "finish": finish,
        "meters": summary.meters,
        "ok": summary.ok,
        "failed": dict(summary.failed),
        "intervals": summary.intervals_stored,
        "errors": summary.errors,
        "cpu": (me1.ru_utime - me0.ru_utime) + (me1.ru_stime - me0.ru_stime),
    }


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    raise KeyError(field)


def _reset_peak_rss() -> float | None:
    """Reset this process's peak RSS (Linux: clear_refs 5) and return the RSS now; None
    where that is not possible (ru_maxrss, the process's lifetime peak, is reported then)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_mb("VmRSS")
    except OSError:
        return None


class _GcClock:
    """CPU time spent in the garbage collector (charged by a profile to whatever function
    happened to allocate when a collection started)."""

    def __init__(self) -> None:
        self.total = 0.0
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.process_time()
        else:
            self.total += time.process_time() - self._t0


def spawn_collectors(
    count: int,
    url: str,
    data_dir: Path,
    concurrency: int,
    per_endpoint: int,
    driver: str,
    stale_after: float,
) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                url,
                str(data_dir),
                "--concurrency",
                str(concurrency),
                "--per-endpoint",
                str(per_endpoint),
                "--driver",
                driver,
                "--stale-after",
                str(stale_after),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]


async def measure(
    n: int,
    per_port: int,
    server: str,
    concurrency: int,
    per_endpoint: int,
    collectors: int,
    mix: str | None = None,
    mqtt_url: str = "embedded",
    since_hours: int = 2,
    latency: tuple[float, float] = (0.0, 0.0),
    driver: str = "real",
    kill_after: float | None = None,
    stale_after: float = 90.0,
) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="cgm-bench-"))
    name, url = scratch_db(server)
    sim = None
    try:
        upgrade(url, Settings(database_url=url))
        t0 = time.perf_counter()
        sim = start_simulators(n, per_port, work / "fleet.yaml", mix, mqtt_url, latency)
        started = time.perf_counter() - t0
        box = secret_box(Settings(database_url=url, data_dir=work))
        with psycopg.connect(url) as conn:
            registry.import_inventory(
                conn, registry.load(work / "fleet.yaml"), box, actor="benchmark"
            )
            ids = [r[0] for r in conn.execute("SELECT id FROM meter")]
        now = datetime.now(UTC)
        await seed(url, ids, current_cycle(now) - timedelta(hours=since_hours))
        load = os.getloadavg()[0]
        sim_proc = psutil.Process(sim.pid)
        sim_cpu0 = sum(sim_proc.cpu_times()[:2])
        config = engine_config(concurrency, per_endpoint, stale_after)
        killed = None
        if collectors == 1:
            runs = [await run_collector(url, work, config, driver)]
        else:
            spawned = time.time()
            procs = spawn_collectors(
                collectors, url, work, concurrency, per_endpoint, driver, stale_after
            )
            runs = []
            if kill_after is not None:
                # One collector dies (SIGKILL) mid-cycle: the others must take over its
                # open claims once its heartbeat is older than --stale-after.
                await asyncio.sleep(kill_after)
                victim = psutil.Process(procs[0].pid)
                cpu = sum(victim.cpu_times()[:2])
                rss = victim.memory_info().rss / 2**20
                procs[0].kill()
                procs[0].wait()
                killed = {"start": spawned, "finish": time.time(), "meters": 0, "ok": 0,
                          "gc_cpu": 0.0, "failed": {}, "intervals": 0, "errors": [], "cpu": cpu,
                          "max_rss_mb": round(rss, 1)}  # fmt: skip
                runs.append(killed)
                procs = procs[1:]
            for proc in procs:
                out, _ = proc.communicate()
                runs.append(json.loads(out.strip().splitlines()[-1]))
        sim_cpu = sum(sim_proc.cpu_times()[:2]) - sim_cpu0
        began = min(r["start"] for r in runs)
        exited = max(r["finish"] for r in runs) - began
        failed: Counter[str] = Counter()
        for r in runs:
            failed.update(r["failed"])
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                """SELECT m.protocol, extract(epoch FROM s.finished_at - s.started_at)
                   FROM collection_session s JOIN meter m ON m.id = s.meter_id"""
            ).fetchall()
            failed_by_protocol = dict(
                conn.execute(
                    """SELECT m.protocol, count(*) FROM collection_session s
                       JOIN meter m ON m.id = s.meter_id
                       WHERE s.result NOT IN ('ok', 'partial') GROUP BY 1"""
                ).fetchall()
            )
            checks = stored_once(conn, len(ids))
            # The cycle ends when the last outcome is stored (its claim done), not when the
            # last collector exits: a collector that has run out of meters keeps watching the
            # others' open claims (to take them over should one die) for up to a recheck.
            (last_done,) = conn.execute(
                "SELECT extract(epoch FROM max(done_at)) FROM collection_claim"
            ).fetchone()
        seconds = float(last_done) - began if last_done is not None else exited
        d = np.array([r[1] for r in rows], dtype=float)
        meters = len(ids)
        result: dict[str, object] = {
            "frontiers": n,
            "meters": meters,
            "ok": sum(r["ok"] for r in runs),
            "failed": dict(failed),
            "failed_by_protocol": failed_by_protocol,
            "intervals": sum(r["intervals"] for r in runs),
            "cycle_s": round(seconds, 2),
            "collectors_exit_s": round(exited, 2),
            "meters_per_s": round(meters / seconds, 1),
            "session_p50_s": round(float(np.percentile(d, 50)), 3),
            "session_p95_s": round(float(np.percentile(d, 95)), 3),
        }
        for protocol in ("dlms", "modbus", "mqtt"):
            p = np.array([r[1] for r in rows if r[0] == protocol], dtype=float)
            if len(p):
                result[f"{protocol}_p50_p95_s"] = (
                    f"{np.percentile(p, 50):.3f}/{np.percentile(p, 95):.3f}"
                )
        result.update(
            {
                "collectors": collectors,
                "collector_cpu_s": round(sum(r["cpu"] for r in runs), 1),
                "collector_cpu_ms_per_meter": round(
                    1000 * sum(r["cpu"] for r in runs) / max(meters, 1), 2
                ),
                "sessions_per_cpu_s": round(meters / max(sum(r["cpu"] for r in runs), 1e-9)),
                # Collector cores for 50,000 sessions in a 60 s cycle at this CPU per session.
                "cores_for_50k_per_60s": round(
                    50_000 * sum(r["cpu"] for r in runs) / max(meters, 1) / 60, 2
                ),
                "collector_gc_cpu_s": round(sum(r.get("gc_cpu", 0.0) for r in runs), 2),
                "simulator_cpu_ms_per_meter": round(1000 * sim_cpu / max(meters, 1), 2),
                "collector_max_rss_mb": max(r["max_rss_mb"] for r in runs),
                "collector_rss_at_start_mb": max(r.get("rss_at_start_mb") or 0 for r in runs),
                "simulator_cpu_s": round(sim_cpu, 1),
                "simulators_start_s": round(started, 1),
                "load_before": round(load, 2),
                "within_60s": seconds <= 60,
                "killed_one": killed is not None,
                **checks,
                "errors": [e for r in runs for e in r["errors"]],
            }
        )
        return result
    finally:
        if sim is not None:
            sim.send_signal(signal.SIGINT)
            try:
                sim.wait(30)
            except subprocess.TimeoutExpired:
                sim.kill()
        drop_db(server, name)


def stored_once(conn: psycopg.Connection, meters: int) -> dict[str, object]:
    """What the cycle stored, checked: one session row per meter, the readings the sessions
    say they stored are the rows in the table (beyond the seed), no claim left open."""
    sessions, distinct, claimed = conn.execute(
        "SELECT count(*), count(DISTINCT meter_id), sum(intervals_stored) FROM collection_session"
    ).fetchone()
    # The seed is one row per meter and channel; everything else the cycle stored.
    readings = conn.execute("SELECT count(*) FROM reading").fetchone()[0] - 4 * meters
    open_claims = conn.execute(
        "SELECT count(*) FROM collection_claim WHERE done_at IS NULL"
    ).fetchone()[0]
    ok = sessions == distinct == meters and claimed == readings and open_claims == 0
    return {
        "sessions_rows": sessions,
        "reading_rows_new": readings,
        "open_claims": open_claims,
        "stored_once": ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frontiers", type=int, nargs="+", default=[500, 1000, 2000])
    parser.add_argument("--per-port", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--per-endpoint", type=int, default=8)
    parser.add_argument("--collectors", type=int, nargs="+", default=[1])
    parser.add_argument(
        "--driver",
        choices=("real", "instant"),
        default="real",
        help="instant: sessions answered in process at once (the engine's own CPU)",
    )
    parser.add_argument("--mix", help="protocol shares, as cgm simulate --mix (dlms=.5,...)")
    parser.add_argument(
        "--mqtt-url",
        default=os.environ.get("CGM_MQTT_URL", "mqtt://127.0.0.1:1883"),
        help="broker for the MQTT meters, as in production (Mosquitto); 'embedded' for cgm "
        "simulate's in-process development broker, whose linear topic routing runs in the "
        "simulator process and dominates it beyond a few hundred MQTT meters",
    )
    parser.add_argument(
        "--since-hours",
        type=int,
        default=2,
        help="each meter's store stops this many hours ago: 2 is the steady state (one new "
        "hour); 720 is a 30-day catch-up",
    )
    parser.add_argument(
        "--latency",
        type=float,
        default=0.0,
        help="seconds each simulated meter waits before every answer (cgm simulate --latency)",
    )
    parser.add_argument(
        "--jitter", type=float, default=0.0, help="up to this much more, at random, per answer"
    )
    parser.add_argument(
        "--kill-after",
        type=float,
        help="with 2+ collectors, SIGKILL the first this many seconds into the cycle",
    )
    parser.add_argument(
        "--stale-after",
        type=float,
        default=90.0,
        help="seconds without a heartbeat before a collector's claims are taken over",
    )
    parser.add_argument("--worker", nargs=2, metavar=("URL", "DATA_DIR"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("CGM_DATABASE_URL", "postgresql://127.0.0.1:5432/test"),
    )
    args = parser.parse_args()
    if args.worker:
        url, data_dir = args.worker
        config = engine_config(args.concurrency, args.per_endpoint, args.stale_after)
        print(
            json.dumps(asyncio.run(run_collector(url, Path(data_dir), config, args.driver))),
            flush=True,
        )
        return
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(
        f"settings: per_port={args.per_port} concurrency={args.concurrency} "
        f"per_endpoint={args.per_endpoint} collectors={args.collectors} mix={args.mix} "
        f"mqtt={args.mqtt_url}"
    )
    for n in args.frontiers:
        first: float | None = None
        for collectors in args.collectors:
            result = asyncio.run(
                measure(
                    n,
                    args.per_port,
                    args.database_url,
                    args.concurrency,
                    args.per_endpoint,
                    collectors,
                    args.mix,
                    args.mqtt_url,
                    args.since_hours,
                    (args.latency, args.jitter),
                    args.driver,
                    args.kill_after if collectors > 1 else None,
                    args.stale_after,
                )
            )
            first = first or float(result["cycle_s"])  # type: ignore[arg-type]
            result["speedup"] = round(first / float(result["cycle_s"]), 2)  # type: ignore[arg-type]
            print(" ".join(f"{k}={v}" for k, v in result.items()), flush=True)


if __name__ == "__main__":
    main()
