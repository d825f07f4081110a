"""Portal pull API: a year of hourly consumption for one meter, as a unit's user (hourly
in both layouts, objects and columns; daily; monthly).

    .venv/bin/python benchmarks/portal_pull.py [--requests 200]
        [--cases hourly:columns,hourly:objects,daily,monthly]
        [--database-url postgresql://127.0.0.1:5432/test]

A scratch database gets one frontier with a year of settled hourly values (1 in 50
estimated), a portal unit owning a meter linked to it, and a unit user. The API runs as
``cgm run`` serves it (uvicorn on its own thread and loop, real socket, the service's pool);
the client (httpx, one keep-alive connection) runs in this process's main thread, so it
competes with the server for the interpreter: the figures are pessimistic.

Besides wall-clock percentiles (meaningless on a loaded host without the load average, which
is printed), it reports CPU time per request, which survives load: the API server's thread
and this whole process (server and client) from the scheduler's run time
(``/proc/self/task/TID/schedstat``, ``time.process_time``), and PostgreSQL from the run time
(``/proc/PID/schedstat``) of the backends connected to the scratch database, when the server
runs on this host. The goal (issue: a year of hourly data, p99 ≤ 50 ms) is checked on the
first case.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collect import drop_db, scratch_db  # noqa: E402

from cgm.api.server import ApiThread, _bind  # noqa: E402
from cgm.config import Settings  # noqa: E402
from cgm.localtime import hour_starts  # noqa: E402
from cgm.migrate import upgrade  # noqa: E402
from cgm.portal import loader, store  # noqa: E402
from cgm.portal.access import add_unit_user  # noqa: E402
from cgm.storage import write_settled  # noqa: E402
from cgm.storage.settled import SettledValue  # noqa: E402

FIRST = date(2025, 1, 1)
PASSWORD = "benchmark password long"
UNIT_YAML = """units:
  - code: UBENCH
    building: {region: Maule, province: Talca, commune: Talca, street: Uno Sur, number: "1"}
    institution: Ministerio
    service: Servicio
    name: Oficina
    use_type: office
    floors: "1"
    surface_m2: 800
    property_type: own
    roll_numbers: ["100-1"]
    staff_count: 20
    reports_pmg: true
    invoice: {access: "yes"}
    energy_sources: {electricity: true}
    client_numbers:
      - company: CGE
        number: "42"
        tariff_type: AT-4.3
        meters:
          - {number: MBENCH, smart: true, shared: false, invoice_access: true,
             cgm: {frontier: Frt900000001, channel: active_import}}
"""


async def seed(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            """INSERT INTO frontier (code, name, kind, voltage_level, point_type)
               VALUES ('Frt900000001', 'bench', 'commercialisation', 2, 1) RETURNING id"""
        )
        (fid,) = await cur.fetchone()
        await conn.commit()
        rows = []
        for n in range(365):
            for i, t in enumerate(hour_starts(FIRST + timedelta(days=n))):
                est = (n * 24 + i) % 50 == 0
                rows.append(SettledValue(fid, "active_import", t, 50.0 + i,
                                         "estimate" if est else "principal",
                                         "linear_interpolation" if est else None))  # fmt: skip
        await write_settled(conn, rows, actor="bench")
        await conn.commit()
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "u.yaml"
            p.write_text(UNIT_YAML)
            await store.import_inventory(conn, loader.load(p), "bench")
        await conn.commit()
        await add_unit_user(conn, "benchunit", PASSWORD, "UBENCH", "bench")
        await conn.commit()


def _thread_cpu(tid: int | None) -> float | None:
    """Seconds of CPU a thread of this process has used (None where /proc has no such)."""
    try:
        return int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def _backend_cpu(server: str, name: str) -> float | None:
    """Seconds of CPU the scratch database's backends have used (None when not local)."""
    with psycopg.connect(server, autocommit=True) as conn:
        pids = [r[0] for r in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,))]  # fmt: skip
    total = 0.0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            return None
    return total


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument(
        "--cases", default="hourly:columns,hourly:objects,daily,monthly",
        help="resolution[:layout] list, comma-separated",
    )  # fmt: skip
    default_url = os.environ.get("CGM_BENCH_DATABASE_URL", "postgresql://127.0.0.1:5432/test")
    ap.add_argument("--database-url", default=default_url)
    args = ap.parse_args()
    name, url = scratch_db(args.database_url)
    try:
        upgrade(url, Settings(database_url=url))
        await seed(url)
        api = ApiThread(url, Settings(database_url=url), _bind("127.0.0.1", 0), None)
        await api.start()
        port = api.sock.getsockname()[1]
        base = f"http://127.0.0.1:{port}/api/v1/portal/meters/MBENCH/consumption"
        last = FIRST + timedelta(days=364)
        print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        try:
            cases = [(c.split(":") + ["objects"])[:2] for c in args.cases.split(",")]
            goal: tuple[str, float] | None = None
            for resolution, layout in cases:
                q = {"start": FIRST.isoformat(), "end": last.isoformat(), "resolution": resolution}
                if layout != "objects":
                    q["layout"] = layout
                times = []

                def run(q: dict[str, str] = q, times: list[float] = times) -> int:
                    with httpx.Client(auth=("benchunit", PASSWORD), timeout=30) as c:
                        r = c.get(base, params=q)
                        assert r.status_code == 200, r.text
                        assert r.json()["totals"]["hours"] == 8760
                        for _ in range(args.requests):
                            t0 = time.perf_counter()
                            r = c.get(base, params=q)
                            times.append(time.perf_counter() - t0)
                        return len(r.content)

                tid = api.thread.native_id
                pg0, cpu0 = _backend_cpu(args.database_url, name), time.process_time()
                srv0 = _thread_cpu(tid)
                size = await asyncio.to_thread(run)
                n = args.requests + 1
                cpu = (time.process_time() - cpu0) / n * 1000
                srv1, pg1 = _thread_cpu(tid), _backend_cpu(args.database_url, name)
                pg = f"{(pg1 - pg0) / n * 1000:.1f} ms" if None not in (pg0, pg1) else "n/a"
                srv = f"{(srv1 - srv0) / n * 1000:.1f} ms" if None not in (srv0, srv1) else "n/a"
                times.sort()
                p99 = times[int(0.99 * (len(times) - 1))]
                goal = goal or (f"{resolution} {layout}", p99)
                print(f"{resolution:8s} {layout:7s} year, {args.requests} requests: p50 "
                      f"{statistics.median(times) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
                      f"body {size / 1024:.0f} KiB; CPU per request: API server {srv}, "
                      f"this process (server + client) {cpu:.1f} ms, PostgreSQL {pg}")  # fmt: skip
            print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
            if goal is not None:
                verdict = "met" if goal[1] <= 0.050 else "NOT met"
                print(f"goal p99 <= 50 ms for a year ({goal[0]}): {verdict} "
                      f"(p99 {goal[1] * 1000:.1f} ms)")  # fmt: skip
        finally:
            await api.stop()
    finally:
        drop_db(args.database_url, name)


if __name__ == "__main__":
    asyncio.run(main())
