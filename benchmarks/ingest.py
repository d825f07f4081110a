"""Readings write-path benchmark: cgm.storage.write_readings beside a raw binary COPY.

    .venv/bin/python benchmarks/ingest.py [URL] [--meters 1000] [--hours 250] [--repeat 3]
        [--write-cost]

URL (or --database-url, or CGM_DATABASE_URL, else postgresql://127.0.0.1:5432/test) names a
server where a scratch database is created, migrated, used and dropped; on a server that
preloads TimescaleDB the tables are hypertables, as deployed. Every run that loads the full set
starts from an empty ``reading`` table (TRUNCATE + CHECKPOINT), so each measures the same work.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC

import numpy as np
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cgm.config import Settings
from cgm.migrate import upgrade
from cgm.storage import READING_DTYPE, pgbinary, write_readings
from cgm.storage.readings import _NAMES, READING_COLUMNS, prepare

DEFAULT_URL = "postgresql://127.0.0.1:5432/test"


def make_rows(meters: int, hours: int, seed: int = 7) -> np.ndarray:
    """meters × 4 channels × hours readings in random (unsorted) arrival order."""
    rng = np.random.default_rng(seed)
    n = meters * 4 * hours
    idx = rng.permutation(n)
    m, rest = np.divmod(idx, 4 * hours)
    c, h = np.divmod(rest, hours)
    rows = np.empty(n, dtype=READING_DTYPE)
    rows["meter_id"] = m + 1
    rows["channel"] = c + 1
    t0 = np.datetime64("2026-01-01T05:00", "us")
    rows["interval_start"] = t0 + h.astype("m8[h]")
    rows["value"] = np.round(rng.gamma(2.0, 50.0, n), 3)
    rows["quality"] = 0
    rows["collected_at"] = rows["interval_start"] + np.timedelta64(65, "m")
    return rows


async def reset(conn: psycopg.AsyncConnection) -> None:
    # ingest_batch is append-only and chained (it refuses TRUNCATE); it only grows by a row
    # per batch, so it is left as it is.
    await conn.execute("TRUNCATE reading")
    cur = await conn.execute("SELECT to_regclass('reading_day') IS NOT NULL")
    if (await cur.fetchone())[0]:  # type: ignore[index]
        await conn.execute("TRUNCATE reading_day")
    await conn.commit()
    await conn.execute("CHECKPOINT")
    await conn.commit()  # idle: each write_readings commits its own batch, as in service


async def chain_cost(conn: psycopg.AsyncConnection, rows: np.ndarray, meters: int) -> None:
    """The hash chains (migration 0041) with their triggers on, then off: small hourly
    batches (one chained ingest_batch row each) and a late batch of changed values (one
    chained audit row per superseded reading)."""
    per = meters * 4
    hourly = np.sort(rows, order=["interval_start", "meter_id", "channel"])[: 48 * per]
    late = hourly[::4][:10_000].copy()
    late["value"] += 1.0
    late["collected_at"] += np.timedelta64(1, "D")
    small = 40
    print(f"audit hash chain cost (trigger on vs off; the table holds {len(hourly):,} rows):")
    for state in ("ENABLE", "DISABLE"):
        await conn.execute(f"ALTER TABLE ingest_batch {state} TRIGGER ingest_batch_chain")
        await conn.execute(f"ALTER TABLE audit_log {state} TRIGGER audit_log_chain")
        await conn.commit()
        await reset(conn)
        await write_readings(conn, hourly, source="bench", actor="bench")
        batch = hourly[-small:].copy()
        batch["value"] += 0.5
        t = time.perf_counter()
        for _ in range(500):  # 500 batches of 40 changed values: 40 chained audit rows each
            batch["value"] += 1.0
            await write_readings(conn, batch, source="bench", actor="bench")
        s_small = time.perf_counter() - t
        late["value"] += 1.0
        s_late, out = await timed(lambda: write_readings(conn, late, source="bench", actor="bench"))
        assert out.superseded == len(late), out
        print(
            f"  chain {state.lower()[:-1]}ed: 500 batches of {small} changed values "
            f"{s_small / 500 * 1000:6.2f} ms/batch;"
            f" {len(late):,} changed values in one batch {fmt(len(late), s_late)}"
        )
    await conn.execute("ALTER TABLE ingest_batch ENABLE TRIGGER ingest_batch_chain")
    await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_chain")
    await conn.commit()


async def timed(fn: Callable[[], Awaitable[object]]) -> tuple[float, object]:
    t = time.perf_counter()
    out = await fn()
    return time.perf_counter() - t, out


async def raw_copy(conn: psycopg.AsyncConnection, rows: np.ndarray, table: str = "reading") -> None:
    """COPY the rows as they are (numpy-encoded binary: the fastest client side)."""
    async with conn.transaction():
        data = pgbinary.encode(READING_COLUMNS, rows)
        stmt = f"COPY {table} ({_NAMES}) FROM STDIN (FORMAT BINARY)"
        async with conn.cursor() as cur, cur.copy(stmt) as copy:
            view = memoryview(data)
            for i in range(0, len(view), 4 << 20):
                await copy.write(view[i : i + (4 << 20)])


async def write_row_copy(conn: psycopg.AsyncConnection, rows: list[tuple]) -> None:
    """The textbook psycopg way: copy.write_row per row, with set_types (rolled back)."""
    async with conn.transaction(force_rollback=True):
        stmt = f"COPY reading ({_NAMES}) FROM STDIN (FORMAT BINARY)"
        async with conn.cursor() as cur, cur.copy(stmt) as copy:
            copy.set_types(["int8", "int2", "timestamptz", "float8", "int4", "timestamptz"])
            for r in rows:
                await copy.write_row(r)


def fmt(n: int, s: float) -> str:
    return f"{s:7.2f} s  {n / s:>10,.0f} rows/s"


def backend_cpu_s(pid: int) -> float:
    """CPU time of a PostgreSQL backend on this host (/proc/PID/schedstat: ns on CPU)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


async def write_cost(url: str, meters: int, hours: int, repeat: int) -> None:
    """The write path alone, with CPU: a full load (catch-up, whole days) and the collector's
    hourly steady state, as wall time, this process's CPU and its PostgreSQL backend's CPU
    (read from /proc: client and server on one host). CPU survives a loaded host."""
    rows = make_rows(meters, hours)
    n, per = len(rows), meters * 4
    hourly = np.sort(rows, order=["interval_start", "meter_id", "channel"])
    async with await psycopg.AsyncConnection.connect(url) as conn:
        pid = (await (await conn.execute("SELECT pg_backend_pid()")).fetchone())[0]  # type: ignore[index]
        await conn.commit()

        async def measured(label: str, count: int, fn: Callable[[], Awaitable[object]]) -> None:
            load0 = os.getloadavg()[0]
            w, c, b = time.perf_counter(), time.process_time(), backend_cpu_s(pid)
            await fn()
            w, c = time.perf_counter() - w, time.process_time() - c
            b = backend_cpu_s(pid) - b
            print(
                f"  {label:44s} wall {w:7.2f} s  client CPU {c:6.2f} s  server CPU {b:6.2f} s"
                f"  ({(c + b) / count * 1e6:5.1f} µs CPU/row, load {load0:.1f})"
            )

        async def steady() -> None:
            for i in range(per * hours // 2, n, per):
                await write_readings(conn, hourly[i : i + per], source="bench", actor="bench")

        for _ in range(repeat):
            await reset(conn)
            await measured(
                f"full load, {n:,} rows",
                n,
                lambda: write_readings(conn, rows, source="bench", actor="bench"),
            )
            await reset(conn)
            await write_readings(conn, hourly[: per * (hours // 2)], source="bench", actor="bench")
            k = hours - hours // 2
            await measured(f"{k} hourly batches of {per:,}", k * per, steady)


async def bench(url: str, meters: int, hours: int, repeat: int) -> None:
    rows = make_rows(meters, hours)
    n = len(rows)
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
        (ver,) = await (await c.execute("SHOW server_version")).fetchone()
        ts = await (
            await c.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
        ).fetchone()
    print(f"server: PostgreSQL {ver}, " + (f"TimescaleDB {ts[0]}" if ts else "plain tables"))
    print(f"rows: {n:,} ({meters} meters x 4 channels x {hours} h, random arrival order)\n")

    t = time.perf_counter()
    pgbinary.encode(READING_COLUMNS, rows)
    enc = time.perf_counter() - t
    t = time.perf_counter()
    prepare(rows)
    prep = time.perf_counter() - t
    print("client side (numpy):")
    print(f"  binary COPY encoding of {n:,} rows           {enc * 1000:6.0f} ms")
    print(f"  validation + key sort + duplicate check      {prep * 1000:6.0f} ms")

    async with await psycopg.AsyncConnection.connect(url) as conn:
        sub = [
            (m, c, t.replace(tzinfo=UTC), v, q, a.replace(tzinfo=UTC))
            for m, c, t, v, q, a in rows[:100_000].tolist()
        ]
        s, _ = await timed(lambda: write_row_copy(conn, sub))
        print(f"  for scale, psycopg copy.write_row, 100k rows {fmt(len(sub), s)}\n")

        await conn.execute("DROP TABLE IF EXISTS reading_nofk")
        await conn.execute("CREATE TABLE reading_nofk (LIKE reading INCLUDING ALL)")
        await conn.commit()
        sorted_rows = np.sort(rows, order=["meter_id", "channel", "interval_start"])
        runs = {
            "A raw COPY, unsorted (baseline)": lambda: raw_copy(conn, rows),
            "B write_readings, empty table (direct COPY)": lambda: write_readings(
                conn, rows, source="bench", actor="bench"
            ),
            "C write_readings fast=False (staging upsert)": lambda: write_readings(
                conn, rows, source="bench", actor="bench", fast=False
            ),
            "D raw COPY, sorted in key order": lambda: raw_copy(conn, sorted_rows),
            "E raw COPY, unsorted, table without FKs": lambda: raw_copy(conn, rows, "reading_nofk"),
            "F raw COPY, sorted, table without FKs": lambda: raw_copy(
                conn, sorted_rows, "reading_nofk"
            ),
        }
        results: dict[str, list[float]] = {}
        for _ in range(repeat):
            for name, fn in runs.items():
                await reset(conn)
                await conn.execute("TRUNCATE reading_nofk")
                await conn.commit()
                s, out = await timed(fn)
                results.setdefault(name, []).append(s)
                if out is not None:
                    assert out.inserted == n, out
        print(f"fresh table each run, best of {repeat}:")
        for name, times in results.items():
            runs_s = ", ".join(f"{x:.2f}" for x in times)
            print(f"  {name:46s} {fmt(n, min(times))}   runs: {runs_s}")
        base = min(results["A raw COPY, unsorted (baseline)"])
        ratio = base / min(results["B write_readings, empty table (direct COPY)"])
        print(f"\nthroughput write_readings / raw COPY unsorted: {ratio:.2f}x\n")

        # The table holds all rows (from the last run of B or C); re-write them all.
        await reset(conn)
        await write_readings(conn, rows, source="bench", actor="bench")
        s, out = await timed(lambda: write_readings(conn, rows, source="bench", actor="bench"))
        assert out.unchanged == n and out.inserted == out.superseded == 0, out
        print(f"re-write of the same {n:,} (all unchanged)           {fmt(n, s)}")
        s, out = await timed(
            lambda: write_readings(conn, rows, source="bench", actor="bench", fast=False)
        )
        assert out.unchanged == n, out
        print(f"  same, fast=False (server-side upsert only)        {fmt(n, s)}")

        rng = np.random.default_rng(1)
        pick = rng.permutation(n)
        late = rows[pick[:10_000]].copy()
        late["value"] += 1.0
        late["collected_at"] += np.timedelta64(1, "D")
        s, out = await timed(lambda: write_readings(conn, late, source="bench", actor="bench"))
        assert out.superseded == len(late), out
        print(f"late batch: {len(late):,} changed values (new versions)   {fmt(len(late), s)}")
        mixed = rows[pick[10_000:110_000]].copy()
        mixed["value"][:10_000] += 2.0
        s, out = await timed(lambda: write_readings(conn, mixed, source="bench", actor="bench"))
        assert (out.superseded, out.unchanged) == (10_000, 90_000), out
        print(f"re-read of 100,000 with 10% changed                {fmt(len(mixed), s)}")

        # The collector's steady state: each hour one new interval for every meter/channel.
        await reset(conn)
        hourly = np.sort(rows, order=["interval_start", "meter_id", "channel"])
        per = meters * 4
        t = time.perf_counter()
        for i in range(0, n, per):
            await write_readings(conn, hourly[i : i + per], source="bench", actor="bench")
        s = time.perf_counter() - t
        print(f"{hours} hourly batches of {per:,} (table growing)         {fmt(n, s)}\n")
        await chain_cost(conn, rows, meters)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url", nargs="?", default=os.environ.get("CGM_DATABASE_URL", DEFAULT_URL))
    ap.add_argument("--meters", type=int, default=1000)
    ap.add_argument("--hours", type=int, default=250)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--database-url", dest="url_option", help="same as URL")
    ap.add_argument(
        "--write-cost",
        action="store_true",
        help="only the full load and the hourly batches, with client and server CPU",
    )
    a = ap.parse_args()
    a.url = a.url_option or a.url
    name = f"cgm_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(a.url, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(a.url)
    params["dbname"] = name
    url = make_conninfo(**params)
    try:
        upgrade(url, Settings(database_url=url))
        with psycopg.connect(url) as c:
            c.execute(
                """INSERT INTO frontier (code, name, kind, voltage_level, point_type)
                   SELECT 'Frt' || g, 'bench ' || g, 'commercialisation', 2, 3
                   FROM generate_series(1, %s) g""",
                (a.meters,),
            )
            c.execute(
                """INSERT INTO meter (frontier_id, serial, role, protocol, primary_host,
                                      primary_port)
                   SELECT id, 'BENCH' || id, 'principal', 'dlms', '127.0.0.1', 4059
                   FROM frontier ORDER BY id"""
            )
        if a.write_cost:
            await write_cost(url, a.meters, a.hours, a.repeat)
        else:
            await bench(url, a.meters, a.hours, a.repeat)
    finally:
        with psycopg.connect(a.url, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    asyncio.run(main())
