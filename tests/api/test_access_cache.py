"""A credential that authenticated is remembered (no database round trip per request), and
every change that alters who it is or what it sees — password, disable, level, scope —
takes effect on the next request once the change is notified; without a listening
connection nothing is remembered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from cgm.api import create_app
from cgm.api.access import APPLICATION_NAME, AccessCache
from cgm.config import Settings
from cgm.security import users
from cgm.security.scope import set_scope
from tests.api.conftest import make_frontier, make_user

NEW_PASSWORD = "another long enough password"


@pytest.fixture
async def served(
    db_url: str, pool: AsyncConnectionPool
) -> AsyncIterator[tuple[httpx.AsyncClient, AccessCache]]:
    app = create_app(db_url, pool, settings=Settings(database_url=db_url))
    cache: AccessCache = app.state.auth.cache
    async with cache.listening(db_url):
        assert cache.live, "the access cache did not start listening"
        transport = httpx.ASGITransport(app=app, client=("10.0.0.8", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://cgm.test") as c:
            yield c, cache


async def _notified(cache: AccessCache, seen: int) -> None:
    deadline = time.monotonic() + 10
    while cache.invalidations == seen:
        assert time.monotonic() < deadline, "no invalidation within 10 s of the change"
        await asyncio.sleep(0.01)


async def _change(db_url: str, cache: AccessCache, change) -> None:  # noqa: ANN001
    """Make ``change`` on its own connection and wait for its notification to arrive."""
    seen = cache.invalidations
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await change(conn)
    await _notified(cache, seen)


async def _user(db_url: str, cache: AccessCache, level: int) -> tuple[str, str]:
    """A new user, once its creation has been notified (a notification that arrives
    while a request authenticates keeps that request's answer out of the cache)."""
    seen = cache.invalidations
    auth = await make_user(db_url, level)
    await _notified(cache, seen)
    return auth


async def _cached_ok(c: httpx.AsyncClient, cache: AccessCache, path: str, auth) -> None:  # noqa: ANN001
    assert (await c.get(path, auth=auth)).status_code == 200
    assert cache.get(cache.key(*auth)) is not None, "the credential was not remembered"


async def test_remembered_credential_needs_no_user_query(
    served: tuple[httpx.AsyncClient, AccessCache], db_url: str
) -> None:
    c, cache = served
    auth = await _user(db_url, cache, 1)
    await _cached_ok(c, cache, "/api/v1/frontiers?limit=1", auth)
    # The row behind it is gone from the cache's point of view only through a notification:
    # a change that notifies nothing (a login timestamp) keeps the entry.
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute(
            "UPDATE app_user_password SET last_login_at = now() WHERE user_id = "
            "(SELECT id FROM app_user WHERE username = %s)",
            (auth[0],),
        )
    await asyncio.sleep(0.3)
    assert cache.get(cache.key(*auth)) is not None
    wrong = (auth[0], auth[1] + "!")
    assert (await c.get("/api/v1/frontiers?limit=1", auth=wrong)).status_code == 401


async def test_cached_credential_forgotten_on_password_change(
    served: tuple[httpx.AsyncClient, AccessCache], db_url: str
) -> None:
    c, cache = served
    name, pw = await _user(db_url, cache, 1)
    await _cached_ok(c, cache, "/api/v1/frontiers?limit=1", (name, pw))
    await _change(db_url, cache, lambda conn: users.set_password(conn, name, NEW_PASSWORD, "t"))
    assert (await c.get("/api/v1/frontiers?limit=1", auth=(name, pw))).status_code == 401
    r = await c.get("/api/v1/frontiers?limit=1", auth=(name, NEW_PASSWORD))
    assert r.status_code == 200


async def test_cached_credential_forgotten_on_disable(
    served: tuple[httpx.AsyncClient, AccessCache], db_url: str
) -> None:
    c, cache = served
    name, pw = await _user(db_url, cache, 1)
    await _cached_ok(c, cache, "/api/v1/frontiers?limit=1", (name, pw))
    await _change(db_url, cache, lambda conn: users.set_active(conn, name, False, "t"))
    assert (await c.get("/api/v1/frontiers?limit=1", auth=(name, pw))).status_code == 401


async def test_cached_level_follows_a_level_change(
    served: tuple[httpx.AsyncClient, AccessCache], db_url: str
) -> None:
    c, cache = served
    fr = await make_frontier(db_url)
    name, pw = await _user(db_url, cache, 2)
    hold = f"/api/v1/frontiers/{fr.code}/hold"
    r = await c.post(hold, json={"reason": "check"}, auth=(name, pw))
    assert r.status_code == 200, r.text
    assert cache.get(cache.key(name, pw)) is not None

    async def demote(conn: psycopg.AsyncConnection) -> None:
        await conn.execute("UPDATE app_user SET level = 1 WHERE username = %s", (name,))

    await _change(db_url, cache, demote)
    r = await c.post(hold, json={"reason": "check"}, auth=(name, pw))
    assert r.status_code == 403


async def test_cached_scope_follows_a_scope_change(
    served: tuple[httpx.AsyncClient, AccessCache], db_url: str
) -> None:
    c, cache = served
    mine, other = await make_frontier(db_url), await make_frontier(db_url)
    name, pw = await _user(db_url, cache, 1)
    await _cached_ok(c, cache, f"/api/v1/frontiers/{other.code}", (name, pw))
    await _change(db_url, cache, lambda conn: set_scope(conn, name, [mine.code], "t"))
    assert (await c.get(f"/api/v1/frontiers/{other.code}", auth=(name, pw))).status_code == 404
    assert (await c.get(f"/api/v1/frontiers/{mine.code}", auth=(name, pw))).status_code == 200


async def test_nothing_remembered_without_a_listening_connection(
    db_url: str, pool: AsyncConnectionPool
) -> None:
    app = create_app(db_url, pool, settings=Settings(database_url=db_url))
    cache: AccessCache = app.state.auth.cache
    auth = await make_user(db_url, 1)
    transport = httpx.ASGITransport(app=app, client=("10.0.0.9", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://cgm.test") as c:
        assert (await c.get("/api/v1/frontiers?limit=1", auth=auth)).status_code == 200
        assert not cache.live and cache.get(cache.key(*auth)) is None


async def test_lost_listener_turns_the_cache_off_until_it_listens_again(
    served: tuple[httpx.AsyncClient, AccessCache], db_url: str
) -> None:
    c, cache = served
    auth = await _user(db_url, cache, 1)
    await _cached_ok(c, cache, "/api/v1/frontiers?limit=1", auth)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute(
            """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
               WHERE application_name = %s AND datname = current_database()""",
            (APPLICATION_NAME,),
        )
    deadline = time.monotonic() + 10
    while cache.live:  # the listener notices the lost connection
        assert time.monotonic() < deadline, "the cache stayed on without its listener"
        await asyncio.sleep(0.01)
    assert cache.get(cache.key(*auth)) is None  # forgotten: changes may have been missed
    deadline = time.monotonic() + 20
    while not cache.live:
        assert time.monotonic() < deadline, "the listener did not reconnect"
        await asyncio.sleep(0.05)
    await _cached_ok(c, cache, "/api/v1/frontiers?limit=1", auth)
