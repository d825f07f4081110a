"""``cgm audit`` over a large fleet: how long the compliance report takes.

    .venv/bin/python benchmarks/audit.py [--frontiers 10000] [--repeat 3]
        [--database-url postgresql://127.0.0.1:5432/test]

A scratch database gets N frontiers (principal and backup meters, health, both credentials,
CT/VT and calibration entries, a maintenance, 7 days of accepted ASIC items, 48 settled hours,
48 hourly collection sessions per meter with clock offsets and a failure each), seeded
set-based, the meter secrets encrypted with a real key (the audit decrypts all of them to
compare the levels); then ``audit()`` runs ``--repeat`` times and the wall and CPU time of
each run is printed. The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from cryptography.fernet import Fernet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collect import drop_db, scratch_db  # noqa: E402

from cgm.compliance_audit import audit  # noqa: E402
from cgm.config import Settings  # noqa: E402
from cgm.localtime import day_bounds, local_day  # noqa: E402
from cgm.migrate import upgrade  # noqa: E402
from cgm.security import SecretBox  # noqa: E402

SEED = """
INSERT INTO frontier (code, name, kind, voltage_level, point_type, operation_start)
SELECT 'Frt' || g, 'bench', 'generation', 2, 1 + g %% 5, current_date - 400 - g %% 2000
FROM generate_series(1, %(n)s) g;
INSERT INTO meter (frontier_id, serial, role, protocol, primary_host, primary_port,
                   accuracy_active, accuracy_reactive)
SELECT f.id, r.role || f.id, r.role, 'dlms', 'h', 1,
       CASE WHEN f.id %% 97 = 0 THEN '1' ELSE '0.2S' END, '2'
FROM frontier f CROSS JOIN (VALUES ('principal'), ('backup')) r(role);
INSERT INTO meter_health (meter_id, clock_offset_s, last_success, config_findings)
SELECT id, (id %% 50) - 20, now() - interval '1 hour',
       CASE WHEN id %% 113 = 0 THEN ARRAY['capture period 900 s'] ELSE '{}' END FROM meter;
INSERT INTO collection_session (meter_id, cycle, collector, started_at, finished_at, result,
                                attempts, clock_offset_s)
SELECT m.id, date_trunc('hour', now()) - h * interval '1 hour', 'bench',
       date_trunc('hour', now()) - h * interval '1 hour' + interval '1 minute',
       date_trunc('hour', now()) - h * interval '1 hour' + interval '2 minutes', 'ok', 1,
       CASE WHEN h = 7 AND m.id %% 101 = 0 THEN 90 ELSE (m.id %% 50) - 20 END
FROM meter m, generate_series(0, 47) h;
INSERT INTO hoja_entry (frontier_id, section, entry_date, data, actor)
SELECT f.id, 'equipment', current_date - 30,
       jsonb_build_object('kind', k, 'serial', k || f.id || p, 'phase', p,
                          'accuracy_class', '0.2S', 'action', 'installed'), 'bench'
FROM frontier f, (VALUES ('ct'), ('vt')) kinds(k), (VALUES ('A'), ('B'), ('C')) ph(p);
INSERT INTO hoja_entry (frontier_id, section, entry_date, data, actor)
SELECT f.id, 'calibration', current_date - 30,
       jsonb_build_object('element_serial', k || f.id || p, 'laboratory', 'L',
                          'certificate', 'C', 'result', 'ok'), 'bench'
FROM frontier f, (VALUES ('ct'), ('vt')) kinds(k), (VALUES ('A'), ('B'), ('C')) ph(p)
WHERE f.id %% 89 <> 0;
INSERT INTO hoja_entry (frontier_id, section, entry_date, data, actor)
SELECT id, 'maintenance', current_date - 300 - (id %% 1500)::int,
       '{"status": "done", "description": "x"}', 'bench' FROM frontier;
INSERT INTO asic_document (frontier_id, meter_id, role, day, file_name, kind, content,
                           content_hash, settled_version, state)
SELECT m.frontier_id, m.id, m.role, %(today)s::date - d, 'x', 'original', '{}',
       m.id || '-' || d, 1, 'success'
FROM meter m, generate_series(1, 7) d WHERE NOT (m.frontier_id %% 61 = 0 AND d = 3);
INSERT INTO settled_reading (frontier_id, channel, interval_start, value, source, method)
SELECT f.id, 1, %(start)s + h * interval '1 hour', 1,
       CASE WHEN h %% 2 = 0 THEN 'estimate' ELSE 'principal' END,
       CASE WHEN h %% 2 = 0 THEN 'x' END
FROM frontier f, generate_series(0, 47) h;
INSERT INTO failure_event (frontier_id, element, kind, started_at, ended_at, description,
                           opened_by, closed_by)
SELECT f.id, 'ct', 'failure', now() - (f.id %% 300) * interval '1 day',
       now() - (f.id %% 300) * interval '1 day' + interval '2 hours', 'x', 'bench', 'bench'
FROM frontier f;
ANALYZE;
"""


async def run(url: str, n: int, repeat: int) -> list[float]:
    now = datetime.now(UTC)
    today = local_day(now)
    box = SecretBox(Fernet.generate_key())
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
        t0 = time.perf_counter()
        for stmt in SEED.split(";\n"):
            if stmt.strip():
                start = day_bounds(today - timedelta(days=2))[0]
                await c.execute(stmt, {"n": n, "today": today, "start": start})
        ids = [r[0] for r in await (await c.execute("SELECT id FROM meter")).fetchall()]
        async with c.cursor().copy(
            "COPY meter_credential (meter_id, level, secret_enc) FROM STDIN"
        ) as copy:
            for mid in ids:
                for level in (1, 2):
                    # every 103rd meter has the same secret at both levels: a violation
                    secret = f"s{mid}" if mid % 103 == 0 else f"s{mid}-{level}"
                    await copy.write_row((mid, level, box.encrypt(secret)))
        await c.execute("ANALYZE")
        print(f"seeded {n} frontiers in {time.perf_counter() - t0:.1f} s")
        backend = (await (await c.execute("SELECT pg_backend_pid()")).fetchone())[0]
        times = []
        for _ in range(repeat):
            t0, c0, d0 = time.perf_counter(), time.process_time(), _backend_cpu(backend)
            results = await audit(c, now=now, box=box)
            times.append(time.perf_counter() - t0)
            cpu, db = time.process_time() - c0, _backend_cpu(backend) - d0
            failed = sum(not r.ok for r in results)
            print(f"audit of {len(results)} frontiers: {times[-1]:.2f} s wall, {cpu:.2f} s CPU "
                  f"in this process, {db:.2f} s CPU in its PostgreSQL backend ({failed} failing)")
    return times


def _backend_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a local PostgreSQL backend, from /proc: a figure that
    survives a loaded host, unlike the wall time. NaN when the server is not local."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frontiers", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--database-url",
                    default=os.environ.get("CGM_DATABASE_URL", "postgresql://127.0.0.1:5432/test"))
    args = ap.parse_args()
    name, url = scratch_db(args.database_url)
    try:
        upgrade(url, Settings(database_url=url))
        times = asyncio.run(run(url, args.frontiers, args.repeat))
        print(f"best {min(times):.2f} s, worst {max(times):.2f} s; load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        drop_db(args.database_url, name)


if __name__ == "__main__":
    main()
