"""Storage tests share the session database; each test gets meters/frontiers of its own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[psycopg.AsyncConnection]:
    async with await psycopg.AsyncConnection.connect(db_url) as c:
        yield c


async def make_frontiers(db_url: str, n: int) -> list[tuple[int, int]]:
    """n fresh (frontier_id, principal meter_id) pairs, committed."""
    tag = uuid.uuid4().int % 10**12
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        out = []
        for i in range(n):
            cur = await c.execute(
                """INSERT INTO frontier (code, name, kind, voltage_level, point_type)
                   VALUES (%s, 'test', 'generation', 2, 3) RETURNING id""",
                (f"Frt{tag}{i:03d}",),
            )
            (fid,) = await cur.fetchone()
            cur = await c.execute(
                """INSERT INTO meter (frontier_id, serial, role, protocol, primary_host,
                                      primary_port)
                   VALUES (%s, %s, 'principal', 'dlms', '127.0.0.1', 4059) RETURNING id""",
                (fid, f"T{tag}-{i}"),
            )
            (mid,) = await cur.fetchone()
            out.append((fid, mid))
        return out


@pytest.fixture
async def pairs(db_url: str) -> list[tuple[int, int]]:
    return await make_frontiers(db_url, 3)


@pytest.fixture
def meters(pairs: list[tuple[int, int]]) -> list[int]:
    return [m for _, m in pairs]


@pytest.fixture
def frontiers(pairs: list[tuple[int, int]]) -> list[int]:
    return [f for f, _ in pairs]
