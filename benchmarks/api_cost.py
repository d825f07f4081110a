"""Where an API request's time goes: CPU per request of the server process, of the client and
of the database backends, per endpoint and server configuration. CPU time, unlike wall
time, survives a host shared with other work.

    .venv/bin/python benchmarks/api_cost.py [--frontiers 20] [--requests 300]
        [--database-url URL] [--configs h11-asyncio,httptools-uvloop] [--cprofile LABEL]
        [--before-tree DIR --configs before:h11-asyncio,h11-asyncio]

A scratch database gets ``cgm simulate``'s inventory of ``--frontiers`` frontiers and one
frontier a year of hourly readings (as ``benchmarks/api.py``). The API is served in a child
process (``create_app`` over the same pool settings as ``cgm run``), one per configuration
of uvicorn's HTTP parser and event loop, or of an older tree (``before:``); this process is
the client (one keep-alive connection per server, a level-1 user), and asks each endpoint
of every server in turn, so a change of the host's load falls on all alike. The child's CPU,
ours, and that of the child's PostgreSQL backends (found by application name) are read
before and after each endpoint's batch.
``--cprofile LABEL`` also writes the server's profile of that endpoint's batch (top
functions by own time) for the first configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psutil
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api import PASSWORD, endpoints, year_of_data  # noqa: E402
from collect import drop_db, scratch_db, start_simulators  # noqa: E402

from cgm import registry  # noqa: E402
from cgm.config import Settings  # noqa: E402
from cgm.migrate import upgrade  # noqa: E402
from cgm.security import secret_box, users  # noqa: E402

APP_NAME = "cgm-api-cost"


def serve(url: str, port: int, http: str, loop: str, profile: str) -> None:
    """The child: the API on ``port`` until killed; SIGUSR1/SIGUSR2 start/stop cProfile."""
    import cProfile
    import pstats
    import signal

    import uvicorn

    from cgm.api import create_app
    from cgm.api.server import make_pool

    prof = cProfile.Profile()

    def start(*_: object) -> None:
        prof.enable()

    def stop(*_: object) -> None:
        prof.disable()
        st = pstats.Stats(prof, stream=open(profile, "w"))  # noqa: SIM115
        st.sort_stats("tottime").print_stats(30)
        st.sort_stats("cumulative").print_stats(40)
        st.stream.close()

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)

    async def main() -> None:
        pool = make_pool(url)
        await pool.open(wait=True)
        app = create_app(url, pool, settings=Settings(database_url=url), scheduler_running=None)
        config = uvicorn.Config(app, port=port, http=http, log_config=None, lifespan="off")
        cache = getattr(app.state.auth, "cache", None)  # the access cache, where there is one
        if cache is None:
            await uvicorn.Server(config).serve()
            return
        async with cache.listening(url):
            await uvicorn.Server(config).serve()

    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _start_server(url: str, config: str, before: str | None, work: Path) -> tuple:
    """A child serving the API: ``[before:]HTTP-LOOP`` (``before:`` runs the tree
    ``--before-tree``, e.g. an export of an older commit, on the same database)."""
    import httpx

    tree, _, impl = config.rpartition(":")
    http, loop = impl.split("-")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    name = f"{APP_NAME}-{config.replace(':', '-')}"
    script, env = __file__, dict(os.environ)
    if tree == "before":
        assert before, "--before-tree is needed for before: configurations"
        script = str(Path(before) / "benchmarks" / "api_cost.py")
        env["PYTHONPATH"] = before
    child = subprocess.Popen(
        [sys.executable, script, "--serve", f"{url} application_name={name}", str(port), http,
         loop, str(work / f"profile-{config.replace(':', '-')}.txt")],
        env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(base + "/healthz", timeout=2)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline or child.poll() is not None:
                raise
            time.sleep(0.2)
    return child, base, name


def backends_of(url: str, name: str) -> list[psutil.Process]:
    with psycopg.connect(url) as conn:
        pids = [
            r[0]
            for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (name,)
            )
        ]
    return [psutil.Process(p) for p in pids]


def measure(url: str, configs: list[str], paths: list[tuple[str, str]], n: int,
            prof: str | None, work: Path, before: str | None) -> list[dict]:  # fmt: skip
    """Every endpoint on every configuration, the configurations interleaved per endpoint
    (so a change in the host's load falls on all of them alike)."""
    import signal

    import httpx

    servers = [_start_server(url, c, before, work) for c in configs]
    out = []
    try:
        clients = [
            httpx.Client(base_url=base, auth=("bench", PASSWORD), timeout=60)
            for _, base, _ in servers
        ]
        for label, path in paths:
            for config, (child, _, name), c in zip(configs, servers, clients, strict=True):
                r = c.get(path)
                assert r.status_code < 400, (config, label, r.status_code, r.text[:200])
                size = len(r.content)
                for _ in range(5):
                    c.get(path)
                pg = backends_of(url, name)
                server = psutil.Process(child.pid)
                profiling = prof == label and config == configs[0]
                if profiling:
                    child.send_signal(signal.SIGUSR1)
                s0, c0, p0 = cpu([server]), time.process_time(), cpu(pg)
                times = []
                for _ in range(n):
                    t0 = time.perf_counter()
                    c.get(path)
                    times.append(time.perf_counter() - t0)
                s1, c1, p1 = cpu([server]), time.process_time(), cpu(pg)
                if profiling:
                    child.send_signal(signal.SIGUSR2)
                    time.sleep(1)
                ms = np.array(times) * 1000
                out.append(
                    {
                        "config": config,
                        "endpoint": label,
                        "server_cpu_ms": round((s1 - s0) / n * 1000, 2),
                        "client_cpu_ms": round((c1 - c0) / n * 1000, 2),
                        "db_cpu_ms": round((p1 - p0) / n * 1000, 2),
                        "p50_ms": round(float(np.percentile(ms, 50)), 1),
                        "p99_ms": round(float(np.percentile(ms, 99)), 1),
                        "bytes": size,
                        "backends": len(pg),
                        "load": round(os.getloadavg()[0], 1),
                    }
                )
                print(json.dumps(out[-1]), file=sys.stderr, flush=True)
        for c in clients:
            c.close()
    finally:
        for child, _, _ in servers:
            child.terminate()
            child.wait(10)
    return out


async def prepare(url: str, n: int, work: Path) -> tuple[str, str, subprocess.Popen]:
    settings = Settings(database_url=url, data_dir=work)
    upgrade(url, settings)
    sim = start_simulators(n, 100, work / "fleet.yaml", None, "embedded")
    with psycopg.connect(url) as conn:
        registry.import_inventory(
            conn, registry.load(work / "fleet.yaml"), secret_box(settings), actor="b"
        )
        codes = [r[0] for r in conn.execute("SELECT code FROM frontier ORDER BY code")]
    code, other = codes[0], codes[len(codes) // 2]
    await year_of_data(url, code, datetime.now(UTC))
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await users.add_user(conn, "bench", PASSWORD, 1, actor="benchmark")
        await conn.execute("VACUUM ANALYZE")
    return code, other, sim


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        _, _, url, port, http, loop, profile = sys.argv
        serve(url, int(port), http, loop, profile)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frontiers", type=int, default=20)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument(
        "--database-url",
        default=os.environ.get("CGM_DATABASE_URL", "postgresql://127.0.0.1:5432/test"),
    )
    ap.add_argument(
        "--configs",
        default="h11-asyncio,httptools-uvloop",
        help="[before:]HTTP-LOOP,...: uvicorn's parser and event loop per server",
    )
    ap.add_argument("--before-tree", default=None, help="the tree that before: configs run")
    ap.add_argument("--only", default="", help="endpoint labels separated by ; (default all)")
    ap.add_argument("--cprofile", default=None, metavar="LABEL")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cgm-bench-api-cost-"))
    name, url = scratch_db(args.database_url)
    sim = None
    try:
        code, other, sim = asyncio.run(prepare(url, args.frontiers, work))
        paths = endpoints(code, other, datetime.now(UTC) - timedelta(hours=1))
        if args.only:
            wanted = set(args.only.split(";"))
            paths = [p for p in paths if p[0] in wanted]
        rows = measure(
            url, args.configs.split(","), paths, args.requests, args.cprofile, work,
            args.before_tree,
        )  # fmt: skip
        print(f"load average {os.getloadavg()}; profiles in {work}")
        print(
            "| endpoint | config | server CPU ms | db CPU ms | client CPU ms | p50 | p99 | load |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['endpoint']} | {r['config']} | {r['server_cpu_ms']} | {r['db_cpu_ms']} "
                f"| {r['client_cpu_ms']} | {r['p50_ms']} | {r['p99_ms']} | {r['load']} |"
            )
    finally:
        if sim is not None:
            sim.terminate()
            sim.wait(30)
        drop_db(args.database_url, name)


if __name__ == "__main__":
    main()
