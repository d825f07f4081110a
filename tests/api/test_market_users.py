"""Network-operator and ASIC users made from the registry (art. 9.1.1.21), and what each can
reach through the HTTP API: its own frontiers only, reads only."""

from __future__ import annotations

import uuid

import httpx
import psycopg
import pytest

from cgm.security import users
from cgm.security.market import operator_user, password_env, sync_market_users
from cgm.security.users import UserError

from .conftest import PASSWORD, all_pages, make_frontier, make_user


async def _sync(db_url: str) -> object:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        return await sync_market_users(c, actor="test")


async def _set(db_url: str, sql: str, *params: object) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        await c.execute(sql, params)


async def test_market_users_follow_the_registry(
    client: httpx.AsyncClient, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tag = uuid.uuid4().hex[:6].upper()
    or_a, or_b = f"ORA{tag}", f"ORB{tag}"
    a1, a2, b1, none = [await make_frontier(db_url) for _ in range(4)]
    for fr, op in ((a1, or_a), (a2, or_a), (b1, or_b)):
        await _set(db_url, "UPDATE frontier SET network_operator = %s WHERE id = %s", op, fr.id)
    monkeypatch.setenv(password_env(operator_user(or_a)), PASSWORD)
    result = await _sync(db_url)
    user_a, user_b = operator_user(or_a), operator_user(or_b)
    assert result.created[user_a] is None  # from the environment: nothing to show
    generated = result.created[user_b]
    assert generated and len(generated) >= 24  # generated, returned once to the caller
    assert result.scopes[user_a] == sorted([a1.code, a2.code])
    assert result.scopes[user_b] == [b1.code]
    asic = next(n for n, codes in result.scopes.items() if n not in (user_a, user_b)
                and none.code in codes)  # fmt: skip
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        await users.set_password(c, asic, PASSWORD, actor="test")
        cur = await c.execute("SELECT level, market_role FROM app_user WHERE username = %s",
                              (user_b,))  # fmt: skip
        assert await cur.fetchone() == (1, f"network_operator:{or_b}")
        cur = await c.execute("SELECT count(*) FROM audit_log "
                              "WHERE concat(old_row, new_row) LIKE %s", (f"%{generated}%",))
        assert (await cur.fetchone())[0] == 0  # the password is in no log

    # Through the API: each OR sees exactly its frontiers; others are 404 as if unknown.
    auth_a, auth_b = (user_a, PASSWORD), (user_b, generated)
    listed = {f["code"] for f in (await client.get("/api/v1/frontiers", auth=auth_a)).json()}
    assert listed == {a1.code, a2.code}
    listed = {f["code"] for f in (await client.get("/api/v1/frontiers", auth=auth_b)).json()}
    assert listed == {b1.code}
    for path in ("", "/log", "/hoja-de-vida", "/settled?day=2026-03-01"):
        assert (await client.get(f"/api/v1/frontiers/{a1.code}{path}",
                                 auth=auth_a)).status_code == 200, path  # fmt: skip
        for fr in (b1, none):
            r = await client.get(f"/api/v1/frontiers/{fr.code}{path}", auth=auth_a)
            assert r.status_code == 404, (path, r.text)
    assert (await client.get(f"/api/v1/failures?frontier={b1.code}", auth=auth_a)
            ).status_code == 404  # fmt: skip
    # The ASIC sees every reported frontier, these four included.
    listed = {f["code"] for f in await all_pages(client, "/api/v1/frontiers", (asic, PASSWORD))}
    assert {a1.code, a2.code, b1.code, none.code} <= listed
    # Level 1: no writes, even on their own frontiers.
    for auth, fr in ((auth_a, a1), ((asic, PASSWORD), none)):
        r = await client.post(f"/api/v1/frontiers/{fr.code}/hold", json={"reason": "x"},
                              auth=auth)  # fmt: skip
        assert r.status_code == 403
        r = await client.post(f"/api/v1/frontiers/{fr.code}/hoja-de-vida/note",
                              json={"date": "2026-01-01", "data": {"text": "x"}}, auth=auth)
        assert r.status_code == 403

    # The registry changes: a2 moves to OR B, OR A leaves the registry altogether.
    await _set(db_url, "UPDATE frontier SET network_operator = %s WHERE id = ANY(%s)",
               or_b, [a1.id, a2.id])  # fmt: skip
    again = await _sync(db_url)
    assert user_a not in again.created and user_b not in again.created  # no new password
    assert again.scopes[user_b] == sorted([a1.code, a2.code, b1.code])
    assert again.scopes[user_a] == [] and user_a in again.emptied
    assert (await client.get("/api/v1/frontiers", auth=auth_a)).json() == []
    listed = {f["code"] for f in (await client.get("/api/v1/frontiers", auth=auth_b)).json()}
    assert listed == {a1.code, a2.code, b1.code}

    # A market user raised to level 2, or a stranger holding the name: refused, no change.
    await _set(db_url, "UPDATE app_user SET level = 2 WHERE username = %s", user_b)
    with pytest.raises(UserError, match="level 2; it must be 1"):
        await _sync(db_url)
    await _set(db_url, "UPDATE app_user SET level = 1 WHERE username = %s", user_b)
    or_c = f"ORC{tag}"
    name, _ = await make_user(db_url, 1)
    await _set(db_url, "UPDATE app_user SET username = %s WHERE username = %s",
               operator_user(or_c), name)  # fmt: skip
    await _set(db_url, "UPDATE frontier SET network_operator = %s WHERE id = %s", or_c, b1.id)
    try:
        with pytest.raises(UserError, match="is not the network_operator"):
            await _sync(db_url)
    finally:  # the database is shared: leave no registry that later syncs would refuse
        await _set(db_url, "UPDATE frontier SET network_operator = NULL WHERE id = %s", b1.id)
    listed = {f["code"] for f in (await client.get("/api/v1/frontiers", auth=auth_b)).json()}
    assert b1.code in listed  # the failed sync changed nothing
