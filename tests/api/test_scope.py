"""Scoped users (art. 9.1.1.21): a frontier's user, network operator or ASIC user sees its
own frontiers through every endpoint, and gets 404 — as for an unknown code — on others."""

from __future__ import annotations

import httpx
import psycopg
import pytest

from cgm.security.scope import scope_of, set_scope
from cgm.security.users import UserError
from tests.api.conftest import all_pages, make_frontier, make_user


async def _scope(db_url: str, name: str, codes: list[str] | None) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await set_scope(conn, name, codes, actor="test")


async def test_scoped_user_sees_only_its_frontiers(client: httpx.AsyncClient, db_url: str) -> None:
    mine, other = await make_frontier(db_url), await make_frontier(db_url)
    name, pw = await make_user(db_url, 1)
    await _scope(db_url, name, [mine.code])
    auth = (name, pw)

    listed = (await client.get("/api/v1/frontiers", auth=auth)).json()
    assert [f["code"] for f in listed] == [mine.code]
    for path in ("", "/log", "/settled?day=2026-03-01", "/hoja-de-vida",
                 "/readings?start=2026-03-01T00:00:00Z&end=2026-03-02T00:00:00Z"):  # fmt: skip
        ok = await client.get(f"/api/v1/frontiers/{mine.code}{path}", auth=auth)
        assert ok.status_code == 200, (path, ok.text)
        no = await client.get(f"/api/v1/frontiers/{other.code}{path}", auth=auth)
        unknown = await client.get(f"/api/v1/frontiers/Frt000000001{path}", auth=auth)
        assert no.status_code == unknown.status_code == 404, (path, no.text)
    health = (await client.get("/api/v1/meters/health", auth=auth)).json()["meters"]
    assert {m["frontier"] for m in health} == {mine.code}
    r = await client.get(f"/api/v1/meters/health?frontier={other.code}", auth=auth)
    assert r.status_code == 404
    sessions = await client.get(f"/api/v1/collection/sessions?frontier={other.code}", auth=auth)
    assert sessions.status_code == 404
    status = (await client.get("/api/v1/reports/asic/status?day=2026-03-01", auth=auth)).json()
    assert {s["frontier"] for s in status["frontiers"]} <= {mine.code}

    # Lifting the scope shows everything again; an empty scope shows nothing.
    await _scope(db_url, name, None)
    codes = {f["code"] for f in await all_pages(client, "/api/v1/frontiers?limit=1000", auth)}
    assert {mine.code, other.code} <= codes
    await _scope(db_url, name, [])
    assert (await client.get("/api/v1/frontiers", auth=auth)).json() == []


async def test_scoped_level2_user_cannot_hold_another_frontier(
    client: httpx.AsyncClient, db_url: str
) -> None:
    mine, other = await make_frontier(db_url), await make_frontier(db_url)
    name, pw = await make_user(db_url, 2)
    await _scope(db_url, name, [mine.code])
    body = {"reason": "review"}
    r = await client.post(f"/api/v1/frontiers/{other.code}/hold", json=body, auth=(name, pw))
    assert r.status_code == 404
    note = {"date": "2026-03-01", "data": {"text": "visit"}}
    r = await client.post(
        f"/api/v1/frontiers/{other.code}/hoja-de-vida/note", json=note, auth=(name, pw)
    )
    assert r.status_code == 404
    r = await client.post(f"/api/v1/frontiers/{mine.code}/hold", json=body, auth=(name, pw))
    assert r.status_code == 200


async def test_scope_refuses_unknown_frontiers_and_users(db_url: str) -> None:
    mine = await make_frontier(db_url)
    name, _ = await make_user(db_url, 1)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await set_scope(conn, name, [mine.code], actor="test")
        with pytest.raises(UserError, match="unknown frontier"):
            await set_scope(conn, name, [mine.code, "Frt000000002"], actor="test")
        assert await scope_of(conn, name) == [mine.code]  # unchanged
        with pytest.raises(UserError, match="unknown user"):
            await set_scope(conn, "nobody-here", None, actor="test")
