"""HTTP API latency: every read endpoint, idle and while a collection cycle and VEE run.

    .venv/bin/python benchmarks/api.py [--frontiers 500] [--requests 200]
        [--database-url postgresql://127.0.0.1:5432/test] [--no-load] [--api-on thread]
        [--only "label;label"]

A scratch database gets the inventory of ``cgm simulate --frontiers N`` (another process,
real DLMS/Modbus/MQTT simulators on loopback), and one frontier of it a year of hourly
readings (principal and backup, 4 channels: 70,080 rows) and a year of settled values. The
API is served the way ``cgm run`` serves it: uvicorn in a process of its own, over a
real socket, with the service's pool (``--api-on thread`` instead: on a thread and event
loop of this process, beside the collector, as it was served before). A client in another
process asks each endpoint ``--requests`` times in turn, over one keep-alive connection, as a
level-1 user (a tenth as many for a year in one request; the paged readings: their second
page, after counting the range's pages), and reports p50/p99, the body size
and the CPU per request of the API process and of its PostgreSQL backends (found by their
application_name; client and server on one host).

Then the same again while this process runs collection cycles over the fleet (forced, so
every cycle interrogates every meter) followed by VEE over the last two local days for every
frontier, in a loop — as ``cgm run`` does: the collector on this process's loop, VEE on
its worker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collect import drop_db, engine_config, scratch_db, seed, start_simulators  # noqa: E402

from cgm import registry  # noqa: E402
from cgm.collection.engine import Collector, current_cycle  # noqa: E402
from cgm.config import Settings  # noqa: E402
from cgm.localtime import local_day  # noqa: E402
from cgm.migrate import upgrade  # noqa: E402
from cgm.security import secret_box, users  # noqa: E402
from cgm.storage import readings_array, write_readings  # noqa: E402

PASSWORD = "benchmark password long enough"
YEAR_HOURS = 365 * 24


def endpoints(code: str, other: str, now: datetime) -> list[tuple[str, str]]:
    """(label, path) for every read endpoint."""
    end = now.replace(minute=0, second=0, microsecond=0)
    m31 = quote((end - timedelta(days=31)).isoformat())
    y = quote((end - timedelta(days=365)).isoformat())
    e = quote(end.isoformat())
    day = (local_day(now) - timedelta(days=2)).isoformat()
    q = "&"
    return [
        ("healthz (no auth)", "/healthz"),
        ("registry entry", f"/api/v1/frontiers/{other}"),
        ("registry, a page (100 frontiers)", "/api/v1/frontiers"),
        ("settled day", f"/api/v1/frontiers/{code}/settled?day={day}"),
        (
            "readings 31 days rows, a page (1,000)",
            f"/api/v1/frontiers/{code}/readings?start={m31}{q}end={e}",
        ),
        (
            "readings 31 days hourly",
            f"/api/v1/frontiers/{code}/readings?start={m31}{q}end={e}{q}format=hourly",
        ),
        (
            "readings 31 days columnar",
            f"/api/v1/frontiers/{code}/readings?start={m31}{q}end={e}{q}format=columns",
        ),
        (
            "readings 1 year columnar, a page (5,000)",
            f"/api/v1/frontiers/{code}/readings?start={y}{q}end={e}{q}format=columns",
        ),
        (
            "readings 1 year hourly",
            f"/api/v1/frontiers/{code}/readings?start={y}{q}end={e}{q}format=hourly",
        ),
        (
            "readings 1 year CSV, a page (5,000)",
            f"/api/v1/frontiers/{code}/readings?start={y}{q}end={e}{q}format=csv",
        ),
        ("hoja de vida", f"/api/v1/frontiers/{other}/log"),
        ("collection sessions", "/api/v1/collection/sessions"),
        ("meter health, one frontier", f"/api/v1/meters/health?frontier={other}"),
        ("meter health, a page (100 meters)", "/api/v1/meters/health"),
        ("ASIC status", "/api/v1/reports/asic/status"),
    ]


# --- the client (another process) ------------------------------------------------------


API_APP = "cgm-bench-api"  # application_name of the API's connections: its backends' CPU


def _cpu_s(pids: list[int]) -> float:
    """CPU time (user + system) of processes, from /proc (same host)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def _backends(db_url: str | None) -> list[int]:
    if not db_url:
        return []
    with psycopg.connect(db_url) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (API_APP,)
            )
        ]


def client(
    base: str,
    user: str,
    n: int,
    paths: list[tuple[str, str]],
    server_pid: int = 0,
    db_url: str | None = None,
) -> None:
    import httpx

    out = []
    with httpx.Client(base_url=base, auth=(user, PASSWORD), timeout=60) as c:
        for label, path in paths:
            pages = None
            if "a page" in label and "readings" in label:
                # Paged readings: count the pages of the range by following the Link
                # headers, and measure the second page (it ends one series and starts the
                # next: two queries, the dearer case).
                url, pages, second = path, 0, None
                while url is not None:
                    r = c.get(url)
                    pages += 1
                    url = r.links.get("next", {}).get("url")
                    second = second or url
                path = second or path
            r = c.get(path)  # warm-up (and the one argon2 verify of the session)
            if r.status_code >= 400:
                out.append({"endpoint": label, "status": r.status_code, "error": r.text[:200]})
                continue
            times = []
            size = len(r.content)
            # CPU per request of the API process and of its PostgreSQL backends (the pool's
            # connections, by application_name), next to the wall times.
            server = [server_pid] if server_pid else []
            db = _backends(db_url)
            s0, d0 = _cpu_s(server), _cpu_s(db)
            # A year in one request takes seconds of the host: a tenth as many samples.
            k = max(5, n // 10) if "1 year" in label and "page" not in label else n
            for _ in range(k):
                t0 = time.perf_counter()
                r = c.get(path)
                times.append(time.perf_counter() - t0)
                assert r.status_code < 400, (label, r.status_code)
            s1, d1 = _cpu_s(server), _cpu_s(db)
            ms = np.array(times) * 1000
            out.append(
                {
                    "endpoint": label,
                    "p50_ms": round(float(np.percentile(ms, 50)), 1),
                    "p99_ms": round(float(np.percentile(ms, 99)), 1),
                    "max_ms": round(float(ms.max()), 1),
                    "server_cpu_ms": round((s1 - s0) / k * 1000, 1) if server else None,
                    "db_cpu_ms": round((d1 - d0) / k * 1000, 1) if db else None,
                    "bytes": size,
                    **({"pages": pages} if pages is not None else {}),
                }
            )
    print(json.dumps(out))


async def run_client(
    base: str,
    user: str,
    n: int,
    paths: list[tuple[str, str]],
    server_pid: int = 0,
    db_url: str = "",
) -> list[dict]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--client",
        base,
        user,
        str(n),
        json.dumps(paths),
        str(server_pid),
        db_url,
        stdout=subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    return json.loads(out.decode().strip().splitlines()[-1])


# --- the server side --------------------------------------------------------------------


async def year_of_data(url: str, code: str, now: datetime) -> None:
    """A year of hourly readings for both meters of ``code``, and its settled series."""
    end = np.datetime64(current_cycle(now).replace(tzinfo=None), "us")
    t = end - np.arange(1, YEAR_HOURS + 1)[::-1] * np.timedelta64(3600, "s")
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            """SELECT m.id, f.id FROM meter m JOIN frontier f ON f.id = m.frontier_id
               WHERE f.code = %s ORDER BY m.role DESC""",
            (code,),
        )
        meters = await cur.fetchall()
        fid = meters[0][1]
        hours = (t.astype("M8[h]").astype(np.int64) % 24).astype(float)
        load = 1.0 + 0.5 * np.sin(hours / 24 * 2 * np.pi)
        for mid, _ in meters:
            for ch in range(1, 5):
                rows = readings_array(
                    np.full(len(t), mid), np.full(len(t), ch), t, np.round(load * ch, 3), 0, end
                )
                await write_readings(conn, rows, source="benchmark", actor="benchmark")
        await conn.execute(
            """INSERT INTO settled_reading (frontier_id, channel, interval_start, value, source)
               SELECT %s, c, t, 100 + c, 'principal'
               FROM generate_series(%s::timestamptz - interval '365 days',
                                    %s::timestamptz - interval '1 hour', '1 hour') t,
                    generate_series(1, 4) c""",
            (fid, current_cycle(now), current_cycle(now)),
        )
        await conn.commit()


async def load_loop(url: str, box: object, stop: asyncio.Event, stats: dict) -> None:
    """Collection cycles, each followed by VEE over the last two local days, as ``cgm run``
    does it: in the VEE process where there is one, else on this loop."""
    from cgm.vee import run_vee

    try:
        from cgm.vee.worker import VeeWorker
    except ImportError:  # before VEE had its own thread
        worker = None
    else:
        worker = VeeWorker(url)
        await worker.start()
    stats["vee_on"] = "VEE process" if worker else "event loop"
    collector = Collector(url, box, engine_config(256, 8))
    while not stop.is_set():
        t0 = time.perf_counter()
        summary = await collector.run_cycle(force=True)
        stats["cycles"] += 1
        stats["cycle_s"].append(round(time.perf_counter() - t0, 1))
        stats["meters"] = summary.meters
        today = local_day(datetime.now(UTC))
        for day in (today - timedelta(days=1), today):
            if stop.is_set():
                break
            t0 = time.perf_counter()
            if worker is None:
                await run_vee(url, day)
            else:
                await worker.run_day(day)
            stats["vee_s"].append(round(time.perf_counter() - t0, 1))
    if worker is not None:
        await worker.stop()


async def serve_and_measure(args: argparse.Namespace) -> dict:
    import socket

    work = Path(tempfile.mkdtemp(prefix="cgm-bench-api-"))
    name, url = scratch_db(args.database_url)
    sim = None
    result: dict = {"frontiers": args.frontiers, "requests": args.requests}
    try:
        settings = Settings(database_url=url, data_dir=work)
        upgrade(url, settings)
        sim = start_simulators(args.frontiers, 100, work / "fleet.yaml", None, "embedded")
        box = secret_box(settings)
        with psycopg.connect(url) as conn:
            registry.import_inventory(conn, registry.load(work / "fleet.yaml"), box, actor="b")
            ids = [r[0] for r in conn.execute("SELECT id FROM meter")]
            codes = [r[0] for r in conn.execute("SELECT code FROM frontier ORDER BY code")]
        now = datetime.now(UTC)
        code, other = codes[0], codes[len(codes) // 2]
        await seed(url, ids, current_cycle(now) - timedelta(hours=2))
        await year_of_data(url, code, now)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await users.add_user(conn, "bench", PASSWORD, 1, actor="benchmark")
            await conn.execute("VACUUM ANALYZE")
        sock = socket.create_server(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        if args.api_on == "process":  # as cgm run serves it: a process of its own
            from cgm.api.server import ApiProcess

            api = ApiProcess(f"{url} application_name={API_APP}", settings, sock)
            await api.start()
            server_pid = api.process.pid or 0

            async def beat() -> None:  # the service's heartbeat: its scheduler runs
                while True:
                    api.beat(True)
                    await asyncio.sleep(1.0)

            beating = asyncio.create_task(beat())
        else:  # a thread and event loop of this process, beside the collector's loop
            from cgm.api.server import ApiThread

            api = ApiThread(f"{url} application_name={API_APP}", settings, sock, lambda: True)
            await api.start()
            server_pid = 0  # shares this process: its CPU is not the API's alone
        stop_api = api.stop
        result["api_on"] = args.api_on
        base = f"http://127.0.0.1:{port}"
        paths = endpoints(code, other, now)
        if args.only:
            keep = set(args.only.split(";"))
            paths = [p for p in paths if p[0] in keep]
        # One cycle first, so sessions, health and the hoja de vida have rows to show.
        first = Collector(url, box, engine_config(256, 8))
        s = await first.run_cycle()
        result["first_cycle"] = {"meters": s.meters, "ok": s.ok}
        result["load_before"] = round(os.getloadavg()[0], 2)
        result["idle"] = await run_client(
            base, "bench", args.requests, paths, server_pid, url
        )
        result["load_after"] = round(os.getloadavg()[0], 2)
        print(table(result["idle"], "idle"), file=sys.stderr, flush=True)
        if not args.no_load:
            stop = asyncio.Event()
            stats: dict = {"cycles": 0, "cycle_s": [], "vee_s": [], "meters": 0}
            loader = asyncio.create_task(load_loop(url, box, stop, stats))
            await asyncio.sleep(2)
            result["load_before_loaded"] = round(os.getloadavg()[0], 2)
            result["loaded"] = await run_client(
                base, "bench", args.requests, paths, server_pid, url
            )
            result["load_after_loaded"] = round(os.getloadavg()[0], 2)
            print(table(result["loaded"], "loaded"), file=sys.stderr, flush=True)
            stop.set()
            await loader
            result["load"] = stats
        if args.api_on == "process":
            beating.cancel()
        await stop_api()
        return result
    finally:
        if sim is not None:
            sim.terminate()
            try:
                sim.wait(30)
            except subprocess.TimeoutExpired:
                sim.kill()
        drop_db(args.database_url, name)


def table(rows: list[dict], title: str) -> str:
    lines = [
        f"\n{title}",
        "| endpoint | p50 ms | p99 ms | max ms | server CPU ms | PostgreSQL CPU ms | body |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['endpoint']} | {r['status']} | | | {r['error'][:60]} |")
        else:
            lines.append(
                f"| {r['endpoint']} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} "
                f"| {r.get('server_cpu_ms')} | {r.get('db_cpu_ms')} | {r['bytes']:,} B"
                + (f", {r['pages']} pages in all |" if "pages" in r else " |")
            )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        _, _, base, user, n, paths, pid, db_url = sys.argv
        client(base, user, int(n), [tuple(p) for p in json.loads(paths)], int(pid), db_url)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frontiers", type=int, default=500)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument(
        "--database-url",
        default=os.environ.get("CGM_DATABASE_URL", "postgresql://127.0.0.1:5432/test"),
    )
    ap.add_argument("--no-load", action="store_true")
    ap.add_argument("--only", default="", help="endpoint labels separated by ; (default all)")
    ap.add_argument(
        "--api-on",
        choices=("process", "thread"),
        default="process",
        help="process: as cgm run serves it; thread: beside the collector in this process",
    )
    args = ap.parse_args()
    result = asyncio.run(serve_and_measure(args))
    print(json.dumps({k: v for k, v in result.items() if k not in ("idle", "loaded")}))
    print(table(result["idle"], "idle"))
    if "loaded" in result:
        print(table(result["loaded"], "during collection cycles + VEE"))


if __name__ == "__main__":
    main()
