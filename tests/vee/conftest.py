"""VEE test helpers: frontiers with principal and backup meters, and readings written
straight through cgm.storage (the simulator's load shape, with faults applied by hand)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import psycopg
import pytest_asyncio

from cgm.localtime import hour_starts
from cgm.storage import readings_array, write_readings
from simulators.meter import SimulatedMeter

_codes = itertools.count(700001)
COLLECTED = datetime(2030, 1, 1, tzinfo=UTC)


@dataclass
class Frontier:
    id: int
    code: str
    principal: int
    backup: int
    sim: SimulatedMeter


@pytest_asyncio.fixture(loop_scope="session")
async def conn(db_url: str) -> AsyncIterator[psycopg.AsyncConnection]:
    async with await psycopg.AsyncConnection.connect(db_url) as c:
        yield c


async def make_frontier(
    conn: psycopg.AsyncConnection,
    *,
    ct: float = 1.0,
    vt: float = 1.0,
    adjustment: float = 1.0,
    capacity_mva: float | None = None,
    accuracy: str = "0.2S",
    channels: Sequence[str] = ("active_import",),
    seed: int = 1,
) -> Frontier:
    code = f"Frt{next(_codes)}"
    cur = await conn.execute(
        """INSERT INTO frontier (code, name, kind, voltage_level, point_type,
                                 installed_capacity_mva, adjustment_factor)
           VALUES (%s, %s, 'commercialisation', 2, 1, %s, %s) RETURNING id""",
        (code, code, capacity_mva, adjustment),
    )
    (fid,) = await cur.fetchone()  # type: ignore[misc]
    ids = []
    for role in ("principal", "backup"):
        cur = await conn.execute(
            """INSERT INTO meter (frontier_id, serial, role, protocol, primary_host,
                                  primary_port, ct_ratio, vt_ratio, accuracy_active,
                                  accuracy_reactive, ct_accuracy, vt_accuracy, channels)
               VALUES (%s, %s, %s, 'dlms', '127.0.0.1', 4059, %s, %s, %s, '2', '0.2S',
                       '0.2', %s) RETURNING id""",
            (fid, f"{role[0].upper()}{code}", role, ct, vt, accuracy, list(channels)),
        )
        ids.append((await cur.fetchone())[0])  # type: ignore[index]
    await conn.commit()
    return Frontier(fid, code, ids[0], ids[1], SimulatedMeter("x", seed=seed, mean_kw=100.0))


def load(f: Frontier, day: date) -> np.ndarray:
    """The simulator's active-import energy for the 24 periods of ``day`` (secondary)."""
    from drivers.base import Channel

    starts = np.array([int(t.timestamp()) for t in hour_starts(day)])
    return f.sim.interval_values(starts)[Channel.ACTIVE_IMPORT]


async def put(
    conn: psycopg.AsyncConnection,
    meter_id: int,
    day: date,
    values: Sequence[float] | np.ndarray,
    *,
    channel: str = "active_import",
    skip: Sequence[int] = (),
    quality: dict[int, int] | None = None,
) -> None:
    """Write one day of hourly readings (index 0 = period 1); ``skip`` leaves holes."""
    starts = hour_starts(day)
    keep = [i for i in range(24) if i not in set(skip)]
    if not keep:
        return
    q = [int((quality or {}).get(i, 0)) for i in keep]
    arr = readings_array(
        meter_id,
        channel,
        [starts[i] for i in keep],
        [float(values[i]) for i in keep],
        q,
        COLLECTED,
    )
    await write_readings(conn, arr, source="test", actor="pytest")
    await conn.commit()


async def settled(
    conn: psycopg.AsyncConnection, f: Frontier, day: date, channel: int = 1
) -> list[tuple]:
    """(value, source, method, flags, detail, version) of the day, in period order."""
    start = hour_starts(day)[0]
    cur = await conn.execute(
        """SELECT value, source, method, flags,
                  settled_detail(detail, meter_id, reading_version, secondary, factor),
                  version FROM settled_reading
           WHERE frontier_id = %s AND channel = %s AND interval_start >= %s
             AND interval_start < %s ORDER BY interval_start""",
        (f.id, channel, start, start + timedelta(days=1)),
    )
    return list(await cur.fetchall())
