"""Invocation counters for DLMS HLS-GMAC, persisted in PostgreSQL and never handed out twice.

The DLMS driver (``drivers.dlms``) asks an ``InvocationCounterStore`` for ranges of counters
(it never imports ``cgm``); this is the store the collector and ``cgm probe`` give it. A
range is reserved by one upsert that PostgreSQL serialises on the row, so two collectors
sharing a fleet, or a collector that restarts, always get disjoint ranges. Counters skipped
by a crash are simply never used: a gap is harmless, a reuse is not.
"""

from __future__ import annotations

import asyncio

import psycopg

MAX_COUNTER = 0xFFFF_FFFF

_RESERVE = """
INSERT INTO dlms_invocation_counter AS c (counter_key, next_value) VALUES (%(key)s, 1 + %(n)s)
ON CONFLICT (counter_key) DO UPDATE
    SET next_value = c.next_value + %(n)s, updated_at = now()
RETURNING next_value - %(n)s
"""

_RAISE = """
INSERT INTO dlms_invocation_counter AS c (counter_key, next_value) VALUES (%(key)s, %(at)s)
ON CONFLICT (counter_key) DO UPDATE
    SET next_value = greatest(c.next_value, %(at)s), updated_at = now()
RETURNING next_value
"""


class CountersExhausted(RuntimeError):
    """A key has used up its 2^32 invocation counters: the meter needs new keys."""


class PgInvocationCounterStore:
    """``reserve(key, count) -> first`` on one lazily opened autocommit connection."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self._conn: psycopg.AsyncConnection | None = None
        self._lock = asyncio.Lock()

    async def reserve(self, key: str, count: int) -> int:
        if count < 1:
            raise ValueError("reserve at least one counter")
        async with self._lock:
            for attempt in (1, 2):  # one reconnect if the server dropped the connection
                conn = await self._connection()
                try:
                    cur = await conn.execute(_RESERVE, {"key": key, "n": count})
                    row = await cur.fetchone()
                    break
                except psycopg.OperationalError:
                    await self._reset()
                    if attempt == 2:
                        raise
                except psycopg.errors.CheckViolation:
                    raise CountersExhausted(
                        "DLMS invocation counters exhausted for this key: change the keys"
                    ) from None
        assert row is not None
        first = int(row[0])
        if first + count - 1 > MAX_COUNTER:
            raise CountersExhausted(
                "DLMS invocation counters exhausted for this key: change the keys"
            )
        return first

    async def raise_floor(self, key: str, at: int) -> int:
        """Make the next counter at least ``at`` (a meter that another head-end used)."""
        async with self._lock:
            conn = await self._connection()
            cur = await conn.execute(_RAISE, {"key": key, "at": at})
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def close(self) -> None:
        async with self._lock:
            await self._reset()

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(self.db_url, autocommit=True)
        return self._conn

    async def _reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            await conn.close()
