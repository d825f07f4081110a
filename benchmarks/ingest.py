"""Readings write-path benchmark: cgm.storage.write_readings beside a raw binary COPY.

    .venv/bin/python benchmarks/ingest.py [URL] [--meters 1000] [--hours 250] [--repeat 3]

URL (or CGM_DATABASE_URL, else postgresql://127.0.0.1:5432/test) names a server where a
scratch database is created, migrated, used and dropped. Every run that loads the full set
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
    await conn.execute("TRUNCATE reading, ingest_batch")
    await conn.execute("CHECKPOINT")


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


async def bench(url: str, meters: int, hours: int, repeat: int) -> None:
    rows = make_rows(meters, hours)
    n = len(rows)
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
        (ver,) = await (await c.execute("SHOW server_version")).fetchone()
    print(f"server: PostgreSQL {ver}")
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
        print(f"{hours} hourly batches of {per:,} (table growing)         {fmt(n, s)}")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url", nargs="?", default=os.environ.get("CGM_DATABASE_URL", DEFAULT_URL))
    ap.add_argument("--meters", type=int, default=1000)
    ap.add_argument("--hours", type=int, default=250)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
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
        await bench(url, a.meters, a.hours, a.repeat)
    finally:
        with psycopg.connect(a.url, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    asyncio.run(main())
