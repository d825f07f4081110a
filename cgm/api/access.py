"""Who a request is, remembered between requests: the user with their frontier scope and
portal unit (:class:`Principal`), kept for a short while per credential.

HTTP Basic sends the password with every request. Reading the user row, the scope and the
unit again each time made an ordinary read wait for three or four database round trips
before its own query, and on a busy host each round trip waits for the scheduler too.
A credential that authenticated is therefore remembered (keyed by a keyed digest of name
and password, never the password), and a change that could alter the answer — a password,
level, disable, scope or unit change, made by any process — empties the cache at once:
triggers on those tables ``NOTIFY cgm_access`` (migration 0150), and :meth:`AccessCache.listen`
holds a connection that listens. The cache is used only while that connection is known to
be listening; otherwise every request is checked against the database as before, so a lost
notification can never keep a revoked credential alive. Entries also expire after
``ttl_s``. Level checks stay on every request (they read the cached level, which a level
change invalidates).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from cgm.security import users

log = logging.getLogger(__name__)

CHANNEL = "cgm_access"
APPLICATION_NAME = "cgm-api-access"  # the listening connection, as pg_stat_activity shows it
HEARTBEAT_S = 15.0  # a listening connection that died silently is found within this


@dataclass(frozen=True)
class Principal(users.User):
    """An authenticated user with what it may see: ``scope`` is the frontier ids of a scoped
    user (None: every frontier) and ``unit`` the portal unit it acts for (None: none)."""

    scope: tuple[int, ...] | None = None
    unit: int | None = None


_PRINCIPAL_SQL = """
SELECT u.scoped,
       coalesce((SELECT array_agg(s.frontier_id) FROM app_user_frontier s
                 WHERE s.user_id = u.id), '{}'),
       (SELECT p.unit_id FROM portal_unit_user p WHERE p.user_id = u.id)
FROM app_user u WHERE u.id = %s
"""


async def principal(conn: psycopg.AsyncConnection, user: users.User) -> Principal:
    """The user's scope and unit, read in one query."""
    cur = await conn.execute(_PRINCIPAL_SQL, (user.id,))
    row = await cur.fetchone()
    scoped, ids, unit = row if row is not None else (False, [], None)
    return Principal(
        user.id, user.username, user.level, user.active,
        scope=tuple(ids) if scoped else None, unit=unit,
    )  # fmt: skip


def scope_ids(user: users.User) -> list[int] | None:
    """A principal's scope as a query parameter (None: unscoped)."""
    assert isinstance(user, Principal)
    return None if user.scope is None else list(user.scope)


class AccessCache:
    """Principals by credential, valid only while the invalidation channel is listened to."""

    def __init__(self, ttl_s: float = 300.0, max_entries: int = 4096) -> None:
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._key = os.urandom(32)
        self._entries: dict[bytes, tuple[float, Principal]] = {}
        self.generation = 0  # bumped on every invalidation
        self.live = False  # True only while LISTEN holds on a working connection
        self.invalidations = 0

    def key(self, username: str, password: str) -> bytes:
        return hmac.new(self._key, f"{username}\0{password}".encode(), hashlib.sha256).digest()

    def get(self, key: bytes) -> Principal | None:
        if not self.live:
            return None
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            self._entries.pop(key, None)
            return None
        return entry[1]

    def put(self, key: bytes, who: Principal, generation: int) -> None:
        """Remember ``who`` unless an invalidation came since ``generation`` was read (the
        row it was built from may be older than the change)."""
        if not self.live or generation != self.generation:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = (time.monotonic() + self.ttl_s, who)

    def clear(self) -> None:
        self._entries.clear()
        self.generation += 1
        self.invalidations += 1

    def _down(self) -> None:
        self.live = False
        self.clear()

    async def listen(self, conninfo: str, retry_s: Sequence[float] = (0.5, 1, 2, 5)) -> None:
        """Listen on ``cgm_access`` until cancelled; reconnect after a failure (uncached
        meanwhile). Run it as a task beside the server."""
        failures = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    conninfo, autocommit=True, application_name=APPLICATION_NAME
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.clear()  # whatever changed while nobody listened
                    self.live, failures = True, 0
                    beat = time.monotonic() + HEARTBEAT_S
                    while True:
                        async for _ in conn.notifies(timeout=1.0):
                            self.clear()
                        # A terminated backend is seen here (libpq marks the connection
                        # bad); one that vanished silently, by the heartbeat query.
                        if conn.pgconn.status != psycopg.pq.ConnStatus.OK:
                            raise psycopg.OperationalError("the listening connection was lost")
                        if time.monotonic() >= beat:
                            await conn.execute("SELECT 1")
                            beat = time.monotonic() + HEARTBEAT_S
            except asyncio.CancelledError:
                self._down()
                raise
            except Exception as exc:  # down: no cache until listening again
                self._down()
                delay = retry_s[min(failures, len(retry_s) - 1)]
                failures += 1
                log.warning("API access cache off (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)

    @contextlib.asynccontextmanager
    async def listening(self, conninfo: str, wait_s: float = 5.0):  # noqa: ANN201
        """Run :meth:`listen` for the duration of the block (waits briefly for it to hold)."""
        task = asyncio.create_task(self.listen(conninfo), name="cgm-api-access-listen")
        deadline = time.monotonic() + wait_s
        while not self.live and not task.done() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
