"""A cycle's database connection that survives a database restart.

A cycle holds connections for minutes (claims and heartbeat, writes). When the database
restarts under it, the connection is dead for good: every later statement on it fails. A
:class:`Link` drops a connection on the first connection-level error and opens a new one on
next use, and :func:`retrying` repeats an operation through such errors for a bounded time,
so a short outage delays a cycle instead of ending it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psycopg

log = logging.getLogger(__name__)

T = TypeVar("T")

# libpq settings: give up on an unreachable server, notice a silently dead one.
CONNECT_OPTIONS = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


class Link:
    """One connection, one statement sequence at a time, reopened after a failure."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.AsyncConnection | None = None
        self._lock = asyncio.Lock()

    async def run(self, fn: Callable[[psycopg.AsyncConnection], Awaitable[T]]) -> T:
        async with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(self.url, **CONNECT_OPTIONS)
            try:
                return await fn(self._conn)
            except psycopg.OperationalError:
                await self._drop()
                raise

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except psycopg.Error:  # already broken: nothing to close cleanly
                pass

    async def close(self) -> None:
        async with self._lock:
            await self._drop()


async def retrying(
    what: str,
    link: Link,
    fn: Callable[[psycopg.AsyncConnection], Awaitable[T]],
    *,
    within: float,
) -> T:
    """``link.run(fn)``, repeated through connection errors for up to ``within`` seconds.

    ``fn`` must be safe to repeat (a transaction that was rolled back, or idempotent).
    Raises the last :class:`psycopg.OperationalError` once the time is spent.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    delay = 0.5
    while True:
        try:
            return await link.run(fn)
        except psycopg.OperationalError as exc:
            if loop.time() + delay > deadline:
                raise
            log.warning("%s: database unavailable (%s); retrying in %.1f s", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
