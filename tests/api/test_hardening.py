"""The API under hostile input: no lock-out by strangers, no pool exhaustion by hashing,
no body read before authentication, 4xx for every malformed request, bounded logging."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from cgm.api import create_app
from cgm.config import Settings
from tests.api.conftest import make_frontier, make_user


def _client(app, host: str) -> httpx.AsyncClient:  # noqa: ANN001 - a FastAPI app
    transport = httpx.ASGITransport(app=app, client=(host, 4000))
    return httpx.AsyncClient(transport=transport, base_url="http://cgm.test", timeout=30)


async def _rows(db_url: str, sql: str, *params: object) -> list[tuple]:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        cur = await c.execute(sql, params)
        return await cur.fetchall()


@pytest.fixture
async def app(db_url: str, pool: AsyncConnectionPool):  # noqa: ANN201
    # A fresh application per test: the login throttle and the anonymous-failure log are
    # per application, so tests do not see each other's failures.
    return create_app(db_url, pool, settings=Settings(database_url=db_url))


async def test_failed_logins_from_a_stranger_never_lock_out_the_user(
    app, db_url: str
) -> None:
    name, pw = await make_user(db_url, 1)
    async with _client(app, "203.0.113.5") as attacker, _client(app, "10.1.1.1") as user:
        statuses = [
            (await attacker.get("/api/v1/frontiers", auth=(name, f"guess {i}"))).status_code
            for i in range(8)
        ]
        # A few free failures, then the attacker is told to wait; the password is no
        # longer even checked for them.
        assert statuses[:3] == [401, 401, 401] and 429 in statuses
        r = await attacker.get("/api/v1/frontiers", auth=(name, pw))
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        # The real user, from their own address, is not affected at all.
        assert (await user.get("/api/v1/frontiers", auth=(name, pw))).status_code == 200
        # And the account itself is not locked: one hour later is not needed.
        r = await user.get("/api/v1/frontiers", auth=(name, pw))
        assert r.status_code == 200


async def test_many_user_names_from_one_client_are_slowed_down(app, db_url: str) -> None:
    async with _client(app, "203.0.113.6") as c:
        codes = [
            (await c.get("/api/v1/frontiers", auth=(f"nobody{i}", "x" * 12))).status_code
            for i in range(25)
        ]
    assert codes[0] == 401 and codes[-1] == 429


async def test_password_hashing_never_holds_a_database_connection(db_url: str) -> None:
    # One connection only: if a password check held it while hashing, /healthz would
    # wait behind the flood and report the database down.
    async with AsyncConnectionPool(
        db_url, min_size=1, max_size=1, open=False, kwargs={"autocommit": True}
    ) as small:
        app = create_app(db_url, small, scheduler_running=lambda: True)
        clients = [_client(app, f"198.51.100.{i}") for i in range(12)]
        flood = [
            asyncio.create_task(
                c.get("/api/v1/frontiers", auth=(f"made-up-{uuid.uuid4().hex[:8]}", "x" * 20))
            )
            for c in clients
        ]
        await asyncio.sleep(0.3)  # the flood is hashing now
        async with _client(app, "127.0.0.1") as probe:
            r = await probe.get("/healthz")
        assert r.status_code == 200 and r.json()["database"] is True
        assert [f.status_code for f in await asyncio.gather(*flood)] == [401] * 12
        for c in clients:
            await c.aclose()


async def _chunks(total: int, sent: list[int]) -> AsyncIterator[bytes]:
    block = b"x" * 65536
    while sent[0] < total:
        sent[0] += len(block)
        yield block


async def test_anonymous_body_is_not_read_before_the_401(app, db_url: str) -> None:
    fr = await make_frontier(db_url)
    sent = [0]
    async with _client(app, "203.0.113.7") as c:
        r = await c.post(
            f"/api/v1/frontiers/{fr.code}/hold",
            content=_chunks(150 * 1024 * 1024, sent),
            headers={"content-type": "application/json"},
        )
    assert r.status_code == 401
    assert sent[0] <= 2 * 65536  # not the 150 MB


async def test_body_over_the_cap_is_refused_with_413(app, db_url: str) -> None:
    fr = await make_frontier(db_url)
    auth = await make_user(db_url, 2)
    url = f"/api/v1/frontiers/{fr.code}/hold"
    big = b'{"reason": "' + b"x" * (Settings().api_max_body_bytes + 10) + b'"}'
    async with _client(app, "10.1.1.2") as c:
        r = await c.post(url, content=big, auth=auth)  # declared length
        assert r.status_code == 413 and "larger than" in r.json()["error"]
        sent = [0]
        r = await c.post(url, content=_chunks(10 * 1024 * 1024, sent), auth=auth)  # chunked
        assert r.status_code == 413
        assert sent[0] < 1024 * 1024
    assert await _rows(db_url, "SELECT 1 FROM asic_hold WHERE frontier_id = %s", fr.id) == []


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("post", "/api/v1/frontiers/{code}/hold", {"reason": "nul \x00 here"}, 422),
        ("post", "/api/v1/frontiers/{code}%00/hold", {"reason": "x"}, 400),
        ("get", "/api/v1/frontiers/{code}%00", None, 400),
        ("get", "/api/v1/collection/sessions?frontier=Frt%00", None, 400),
        ("get", "/api/v1/frontiers/{code}/settled?day=9999-12-31", None, 422),
        ("get", "/api/v1/reports/asic/status?day=9999-12-31", None, 422),
        ("get", "/api/v1/reports/asic/status?day=0001-01-01", None, 422),
        ("get", "/api/v1/frontiers/{code}/readings?start=9999-12-30T00:00Z"
                "&end=9999-12-31T00:00Z", None, 422),
        ("get", "/api/v1/frontiers/{code}/log?limit=99999999999999999999999", None, 422),
    ],
)  # fmt: skip
async def test_nul_bytes_and_far_dates_are_a_4xx_never_a_500(
    app, db_url: str, method: str, path: str, body: object, status: int
) -> None:
    fr = await make_frontier(db_url)
    auth = await make_user(db_url, 2)
    url = path.format(code=fr.code)
    async with _client(app, "10.1.1.3") as c:
        if method == "get":
            r = await c.get(url, auth=auth)
        else:
            r = await c.post(url, json=body, auth=auth)
    assert r.status_code == status, r.text
    assert "error" in r.json()
    if method == "post":  # the refused write is on record, as every write request is
        rows = await _rows(
            db_url, "SELECT status FROM api_access WHERE path LIKE %s", f"%{fr.code}%"
        )
        assert rows == [(status,)]


async def test_nul_byte_in_the_user_name_is_a_401(app) -> None:
    async with _client(app, "10.1.1.4") as c:
        r = await c.get("/api/v1/frontiers", auth=("ana\x00", "a long password here"))
    assert r.status_code == 401


async def test_anonymous_write_failures_are_logged_in_bounded_form(app, db_url: str) -> None:
    fr = await make_frontier(db_url)
    path = f"/api/v1/frontiers/{fr.code}/hold"
    async with _client(app, "203.0.113.8") as c:
        for _ in range(40):
            assert (await c.post(path, json={"reason": "x"})).status_code == 401
    rows = await _rows(db_url, "SELECT username, status FROM api_access WHERE path = %s", path)
    assert rows == [(None, 401)]  # one row a minute per client, not forty
    # An authenticated user's refused write is still logged every time.
    auth = await make_user(db_url, 1)
    async with _client(app, "10.1.1.5") as c:
        for _ in range(2):
            assert (await c.post(path, json={"reason": "x"}, auth=auth)).status_code == 403
    rows = await _rows(db_url, "SELECT status FROM api_access WHERE path = %s", path)
    assert sorted(rows) == [(401,), (403,), (403,)]
