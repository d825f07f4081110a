"""Failures over HTTP: level 2 opens and closes events (logged), level 1 reads the list, the
Table 5 counters and the ASIC notice, each scoped to the user's frontiers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import psycopg

from cgm.security.scope import set_scope

from .conftest import make_frontier, make_user
from .test_api import _rows


async def test_failure_events_over_the_api(client: httpx.AsyncClient, db_url: str) -> None:
    fr, other = await make_frontier(db_url), await make_frontier(db_url)
    reader, rpw = await make_user(db_url, 1)
    writer, wpw = await make_user(db_url, 2)
    scoped, spw = await make_user(db_url, 1)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        await set_scope(c, scoped, [other.code], actor="test")
    start = datetime.now(UTC) - timedelta(days=3)
    body = {"element": "ct", "kind": "failure", "started_at": start.isoformat(),
            "description": "CT phase B open circuit"}  # fmt: skip
    url = f"/api/v1/frontiers/{fr.code}/failures"
    r = await client.post(url, json=body, auth=(reader, rpw))
    assert r.status_code == 403
    r = await client.post(url, json={**body, "started_at": "2026-01-01T00:00:00"},
                          auth=(writer, wpw))  # fmt: skip
    assert r.status_code == 422  # a start without a time zone
    r = await client.post(url, json={**body, "element": "fuse"}, auth=(writer, wpw))
    assert r.status_code == 422
    r = await client.post(url, json=body, auth=(writer, wpw))
    assert r.status_code == 200, r.text
    event = r.json()["event"]
    assert r.json()["actor"] == f"api:{writer}" and r.json()["table5"]["count"] == 1
    theft = await client.post(url, json={**body, "element": "principal", "kind": "theft",
                                         "description": "meter stolen"}, auth=(writer, wpw))
    assert theft.status_code == 200

    # Level 1 reads: the list, the Table 5 counter and the notice.
    events = (await client.get(f"/api/v1/failures?frontier={fr.code}", auth=(reader, rpw))).json()
    assert [(e["element"], e["kind"]) for e in events] == [("principal", "theft"),
                                                           ("ct", "failure")]  # fmt: skip
    t5 = (await client.get(f"/api/v1/failures/table5?frontier={fr.code}",
                           auth=(reader, rpw))).json()  # fmt: skip
    assert t5[fr.code]["count"] == 1 and t5[fr.code]["failures"] == [[event]]  # theft not counted
    n = (await client.get(f"/api/v1/failures/{event}/notice", auth=(reader, rpw))).json()
    assert n["frontera"] == fr.code and n["elemento"] == "ct" and n["fin"] is None

    # Close: level 2; twice is a conflict; an end before the start is refused.
    close = {"ended_at": (start + timedelta(hours=5)).isoformat(), "note": "CT replaced"}
    r = await client.post(f"/api/v1/failures/{event}/close", json=close, auth=(reader, rpw))
    assert r.status_code == 403
    r = await client.post(f"/api/v1/failures/{event}/close",
                          json={**close, "ended_at": (start - timedelta(days=1)).isoformat()},
                          auth=(writer, wpw))  # fmt: skip
    assert r.status_code == 409 and "before the start" in r.json()["error"]
    r = await client.post(f"/api/v1/failures/{event}/close", json=close, auth=(writer, wpw))
    assert r.status_code == 200, r.text
    r = await client.post(f"/api/v1/failures/{event}/close", json=close, auth=(writer, wpw))
    assert r.status_code == 409
    open_now = (await client.get(f"/api/v1/failures?frontier={fr.code}&open=true",
                                 auth=(reader, rpw))).json()  # fmt: skip
    assert [e["kind"] for e in open_now] == ["theft"]

    # A user scoped to another frontier sees none of it, as if it did not exist.
    sauth = (scoped, spw)
    assert (await client.get("/api/v1/failures", auth=sauth)).json() == []
    for path in (f"/api/v1/failures?frontier={fr.code}", f"/api/v1/failures/{event}/notice",
                 f"/api/v1/failures/table5?frontier={fr.code}"):  # fmt: skip
        assert (await client.get(path, auth=sauth)).status_code == 404, path
    assert list((await client.get("/api/v1/failures/table5", auth=sauth)).json()) == [other.code]

    # Every write request is logged (allowed, refused, failed), and the hoja de vida has
    # the opening and closing with the API user as actor.
    logged = await _rows(db_url, "SELECT username, status FROM api_access WHERE path LIKE %s "
                         "AND username IN (%s, %s) ORDER BY id",
                         "%failures%", writer, reader)  # fmt: skip
    assert [s for u, s in logged if u == writer] == [422, 422, 200, 200, 409, 200, 409]
    assert [s for u, s in logged if u == reader] == [403, 403]
    log = await _rows(db_url, "SELECT actor, purpose FROM frontier_log l JOIN frontier f "
                      "ON f.id = l.frontier_id WHERE f.code = %s AND l.kind = 'failure' "
                      "ORDER BY l.id", fr.code)  # fmt: skip
    assert log == [(f"api:{writer}", "failure opened: ct"),
                   (f"api:{writer}", "theft opened: principal"),
                   (f"api:{writer}", "failure closed: ct")]  # fmt: skip
