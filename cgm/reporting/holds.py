"""Frontiers held for manual review: not reported to the ASIC until released.

A hold is an operator's decision, so both hold and release need an actor and a reason, and
both are kept (asic_hold_event) next to the current state (asic_hold).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg


class UnknownFrontier(LookupError):
    pass


@dataclass(frozen=True)
class Hold:
    frontier: str
    reason: str
    actor: str
    since: datetime


async def _frontier_id(conn: psycopg.AsyncConnection, code: str) -> int:
    cur = await conn.execute("SELECT id FROM frontier WHERE code = %s", (code,))
    row = await cur.fetchone()
    if row is None:
        raise UnknownFrontier(f"unknown frontier {code}")
    return row[0]


async def hold(conn: psycopg.AsyncConnection, code: str, reason: str, actor: str) -> bool:
    """Hold ``code``; False if it was already held (the first hold's reason stands)."""
    if not reason.strip():
        raise ValueError("a hold needs a reason")
    fid = await _frontier_id(conn, code)
    async with conn.transaction():
        cur = await conn.execute(
            """INSERT INTO asic_hold (frontier_id, reason, actor) VALUES (%s, %s, %s)
               ON CONFLICT (frontier_id) DO NOTHING RETURNING 1""",
            (fid, reason, actor),
        )
        new = await cur.fetchone() is not None
        if new:
            await conn.execute(
                """INSERT INTO asic_hold_event (frontier_id, action, reason, actor)
                   VALUES (%s, 'hold', %s, %s)""",
                (fid, reason, actor),
            )
    return new


async def release(conn: psycopg.AsyncConnection, code: str, reason: str, actor: str) -> bool:
    """Release ``code``; False if it was not held."""
    if not reason.strip():
        raise ValueError("a release needs a reason")
    fid = await _frontier_id(conn, code)
    async with conn.transaction():
        cur = await conn.execute("DELETE FROM asic_hold WHERE frontier_id = %s RETURNING 1", (fid,))
        released = await cur.fetchone() is not None
        if released:
            await conn.execute(
                """INSERT INTO asic_hold_event (frontier_id, action, reason, actor)
                   VALUES (%s, 'release', %s, %s)""",
                (fid, reason, actor),
            )
    return released


async def current(conn: psycopg.AsyncConnection) -> dict[str, Hold]:
    cur = await conn.execute(
        """SELECT f.code, h.reason, h.actor, h.since
           FROM asic_hold h JOIN frontier f ON f.id = h.frontier_id ORDER BY f.code"""
    )
    return {r[0]: Hold(*r) for r in await cur.fetchall()}
