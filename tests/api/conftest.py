"""API tests: the real application over a real database, called in-process through httpx's
ASGI transport (the app itself, not a mock); users and frontiers are unique per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from cgm.api import create_app
from cgm.config import Settings
from cgm.security import users

PASSWORD = "a long enough test password"


@dataclass
class Fr:
    id: int
    code: str
    principal_id: int
    principal: str
    backup_id: int
    backup: str


@pytest.fixture(scope="session")
async def pool(db_url: str) -> AsyncIterator[AsyncConnectionPool]:
    p = AsyncConnectionPool(db_url, min_size=1, max_size=4, open=False, kwargs={"autocommit": True})
    await p.open(wait=True)
    yield p
    await p.close()


@pytest.fixture(scope="session")
async def client(db_url: str, pool: AsyncConnectionPool) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(db_url, pool, settings=Settings(database_url=db_url))
    transport = httpx.ASGITransport(app=app, client=("10.0.0.7", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://cgm.test") as c:
        yield c


async def make_user(db_url: str, level: int, *, active: bool = True) -> tuple[str, str]:
    """A new user; returns (name, password) ready for ``auth=``."""
    name = f"u{uuid.uuid4().hex[:10]}"
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await users.add_user(conn, name, PASSWORD, level, actor="test")
        if not active:
            await users.set_active(conn, name, False, actor="test")
    return name, PASSWORD


async def make_frontier(db_url: str) -> Fr:
    tag = uuid.uuid4().int % 10**9
    code = f"Frt{tag}"
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        cur = await c.execute(
            """INSERT INTO frontier (code, name, kind, voltage_level, point_type)
               VALUES (%s, 'api test', 'generation', 2, 2) RETURNING id""",
            (code,),
        )
        (fid,) = await cur.fetchone()
        ids = {}
        for role in ("principal", "backup"):
            cur = await c.execute(
                """INSERT INTO meter (frontier_id, serial, role, protocol, primary_host,
                                      primary_port)
                   VALUES (%s, %s, %s, 'dlms', '127.0.0.1', 4059) RETURNING id""",
                (fid, f"{role[0].upper()}{tag}", role),
            )
            (ids[role],) = await cur.fetchone()
        await c.execute(
            """INSERT INTO meter_credential (meter_id, level, client, secret_enc)
               VALUES (%s, 2, 'mgmt', 'ciphertext-not-to-leak')""",
            (ids["principal"],),
        )
    return Fr(fid, code, ids["principal"], f"P{tag}", ids["backup"], f"B{tag}")


async def all_pages(
    client: httpx.AsyncClient, path: str, auth: tuple[str, str], key: str | None = None
) -> list[dict]:
    """Every item of a paged list endpoint, following its ``Link: rel="next"`` headers."""
    items: list[dict] = []
    url: str | None = path
    while url is not None:
        r = await client.get(url, auth=auth)
        assert r.status_code == 200, r.text
        body = r.json()
        items += body if key is None else body[key]
        url = r.links.get("next", {}).get("url")
    return items
