"""WAL written by settled values: a fleet's first settle, then a day of hourly runs.

    .venv/bin/python benchmarks/settled_wal.py DBNAME [URL]

DBNAME is a database kept by ``benchmarks/vee.py --keep`` (its frontiers, readings and
settled history; URL as given to it, default CGM_DATABASE_URL or the local server). Each
step starts right after a CHECKPOINT, as the service's runs do (checkpoint_timeout is 5 min,
collection hourly), so every page a step touches is written whole to the WAL once:

1. the day's first settle (``run_vee``, as in ``vee.py``): WAL bytes, records, seconds;
2. the next local day settled hour by hour, 24 writes of one hour of every series
   (``write_settled`` with a measured array, the bulk of what a cycle's VEE run writes):
   WAL per hour (first, median, last) and for the day.

The WAL is read from the server (``pg_current_wal_insert_lsn``, ``pg_stat_wal``), so it is
the whole cluster's: run it with nothing else writing. The next day's values are removed at
the end, so the database can be used again.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import timedelta

import numpy as np
import psycopg
from psycopg.conninfo import make_conninfo

sys.path.insert(0, os.path.dirname(__file__))
from vee import DAY, DEFAULT_URL, forget_day, quiet_disk, timed_run  # noqa: E402

from cgm.localtime import day_bounds  # noqa: E402
from cgm.storage.settled import measured_array, write_settled  # noqa: E402
from cgm.vee import VeeConfig  # noqa: E402


async def wal_now(conn: psycopg.AsyncConnection) -> tuple[str, int, int]:
    cur = await conn.execute(
        "SELECT pg_current_wal_insert_lsn(), wal_records, wal_fpi FROM pg_stat_wal"
    )
    return await cur.fetchone()  # type: ignore[return-value]


async def measure(url: str, step) -> tuple[float, int, int, int]:  # noqa: ANN001
    """(seconds, WAL bytes, records, full-page images) of ``step()`` after a checkpoint."""
    await quiet_disk(url)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
        lsn0, rec0, fpi0 = await wal_now(c)
        t0 = time.perf_counter()
        await step()
        wall = time.perf_counter() - t0
        await asyncio.sleep(0.5)  # the step's connections have ended: their counters flushed
        lsn1, rec1, fpi1 = await wal_now(c)
        cur = await c.execute("SELECT pg_wal_lsn_diff(%s, %s)", (lsn1, lsn0))
        (size,) = await cur.fetchone()  # type: ignore[misc]
    return wall, int(size), rec1 - rec0, fpi1 - fpi0


async def main(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(
            """SELECT f.id, m.id FROM frontier f
               JOIN meter m ON m.frontier_id = f.id AND m.role = 'principal' ORDER BY f.id"""
        )
        pairs = np.array(await cur.fetchall(), dtype=np.int64)
        cur = await conn.execute("SELECT count(*) FROM settled_reading")
        (stored,) = await cur.fetchone()  # type: ignore[misc]
    print(f"{len(pairs)} frontiers, {stored} settled values stored")
    nxt = DAY + timedelta(days=1)
    await drop_day(url, nxt)
    await forget_day(url)

    async def first_settle() -> None:
        await timed_run(url, VeeConfig())

    wall, size, rec, fpi = await measure(url, first_settle)
    print(f"first settle of {DAY}: {wall:.1f} s, WAL {size / 2**20:.0f} MiB, "
          f"{rec} records, {fpi} full-page images")  # fmt: skip

    series = np.repeat(pairs, 4, axis=0)
    channels = np.tile(np.arange(1, 5, dtype=np.int16), len(pairs))
    start_us = int(day_bounds(nxt)[0].timestamp()) * 1_000_000
    hours: list[tuple[float, int, int, int]] = []
    for h in range(24):

        async def one_hour(h: int = h) -> None:
            values = measured_array(
                frontier_id=series[:, 0], channel=channels,
                interval_start=start_us + h * 3_600_000_000, value=1.0 + h, source=1,
                flags=0, meter_id=series[:, 1], reading_version=1, secondary=0.0, factor=1.0,
            )  # fmt: skip
            async with await psycopg.AsyncConnection.connect(url) as conn:
                await write_settled(conn, measured=values, actor="bench")
                await conn.commit()

        hours.append(await measure(url, one_hour))
    per = np.array([s for _, s, _, _ in hours]) / 2**20
    fpis = [f for _, _, _, f in hours]
    walls = [w for w, _, _, _ in hours]
    print(f"{nxt} hour by hour ({len(series)} values an hour): WAL per hour first "
          f"{per[0]:.1f} MiB, median {np.median(per):.1f}, last {per[-1]:.1f}, max {per.max():.1f};"
          f" day {per.sum():.0f} MiB; full-page images per hour median {int(np.median(fpis))},"
          f" max {max(fpis)}; write {np.median(walls):.2f} s median")  # fmt: skip
    await drop_day(url, nxt)


async def drop_day(url: str, day) -> None:  # noqa: ANN001
    """Day ``day``'s settled values and their read model removed (triggers off)."""
    start, end = day_bounds(day)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
        await c.execute("ALTER TABLE settled_reading DISABLE TRIGGER USER")
        await c.execute(
            "DELETE FROM settled_reading WHERE interval_start >= %s AND interval_start < %s",
            (start, end),
        )
        await c.execute("ALTER TABLE settled_reading ENABLE TRIGGER USER")
        await c.execute("DELETE FROM settled_day WHERE day = %s", (day,))
        await c.execute("DELETE FROM settled_day_version WHERE day = %s", (day,))
        await c.execute("VACUUM ANALYZE settled_reading, settled_day")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    base = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("CGM_DATABASE_URL", DEFAULT_URL)
    asyncio.run(main(make_conninfo(base, dbname=sys.argv[1])))
