"""List endpoints answer a page at a time: following the next cursors yields every row once,
in order, and a forged cursor is a 422, never a 500."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import psycopg

from cgm.security.scope import set_scope
from tests.api.conftest import all_pages, make_frontier, make_user


async def _scoped_user(db_url: str, codes: list[str]) -> tuple[str, str]:
    name, pw = await make_user(db_url, 1)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await set_scope(conn, name, codes, actor="test")
    return name, pw


async def test_registry_pages_list_every_frontier_once_in_code_order(
    client: httpx.AsyncClient, db_url: str
) -> None:
    mine = sorted([(await make_frontier(db_url)).code for _ in range(5)])
    auth = await _scoped_user(db_url, mine)
    first = await client.get("/api/v1/frontiers?limit=2", auth=auth)
    assert [f["code"] for f in first.json()] == mine[:2]
    assert first.headers["x-next-cursor"] and 'rel="next"' in first.headers["link"]
    listed = await all_pages(client, "/api/v1/frontiers?limit=2", auth)
    assert [f["code"] for f in listed] == mine
    last = await client.get("/api/v1/frontiers?limit=5", auth=auth)
    assert len(last.json()) == 5 and "link" not in last.headers  # no empty page after it


async def test_meter_health_pages_list_every_meter_once(
    client: httpx.AsyncClient, db_url: str
) -> None:
    frs = [await make_frontier(db_url) for _ in range(3)]
    auth = await _scoped_user(db_url, [f.code for f in frs])
    whole = (await client.get("/api/v1/meters/health?limit=1000", auth=auth)).json()
    assert whole["next"] is None and len(whole["meters"]) == 6
    paged = await all_pages(client, "/api/v1/meters/health?limit=4", auth, "meters")
    assert paged == whole["meters"]
    first = (await client.get("/api/v1/meters/health?limit=4", auth=auth)).json()
    assert len(first["meters"]) == 4 and first["next"]


async def test_session_pages_go_back_in_time_without_repeats(
    client: httpx.AsyncClient, db_url: str
) -> None:
    fr = await make_frontier(db_url)
    auth = await make_user(db_url, 1)
    t = datetime(2026, 3, 1, 6, 2, tzinfo=UTC)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        for i in range(5):  # two sessions share a start: the id breaks the tie
            at = t + timedelta(seconds=min(i, 3))
            await c.execute(
                """INSERT INTO collection_session (meter_id, cycle, collector, started_at,
                                                   finished_at, result, attempts)
                   VALUES (%s, %s, 'c1', %s, %s, 'ok', 1)""",
                (fr.principal_id, t, at, at),
            )
    path = f"/api/v1/collection/sessions?frontier={fr.code}"
    whole = (await client.get(path, auth=auth)).json()["sessions"]
    assert len(whole) == 5
    paged = await all_pages(client, path + "&limit=2", auth, "sessions")
    assert [s["id"] for s in paged] == [s["id"] for s in whole]


async def test_forged_cursor_is_a_422(client: httpx.AsyncClient, db_url: str) -> None:
    auth = await make_user(db_url, 1)
    for path in ("/api/v1/frontiers", "/api/v1/meters/health", "/api/v1/collection/sessions"):
        for cursor in ("not-base64!", "bnVsbA", "WzEsMiwzXQ", "WyJ4IiwgIngiXQ", "WyJ4IiwxXQ"):
            r = await client.get(f"{path}?cursor={cursor}", auth=auth)
            assert r.status_code == 422, (path, cursor, r.text)
            assert "cursor" in r.json()["error"]
