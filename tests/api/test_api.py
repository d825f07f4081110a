"""The HTTP API end to end: authentication, levels, logging of level-2 requests, errors,
and that each endpoint returns what the database holds."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from cgm.api import create_app
from cgm.localtime import hour_starts
from cgm.storage import Quality, Reading, SettledValue, write_readings, write_settled
from tests.api.conftest import all_pages, make_frontier, make_user

DAY = date(2026, 3, 1)
T0 = hour_starts(DAY)[0]  # 05:00 UTC = 00:00 Colombia


async def _rows(db_url: str, sql: str, *params: object) -> list[tuple]:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        cur = await c.execute(sql, params)
        return await cur.fetchall()


# --- authentication and levels -------------------------------------------------------------


async def test_unauthenticated_and_wrong_password_get_401(
    client: httpx.AsyncClient, db_url: str
) -> None:
    r = await client.get("/api/v1/frontiers")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    assert r.json()["error"]
    name, pw = await make_user(db_url, 2)
    r = await client.get("/api/v1/frontiers", auth=(name, pw + "!"))
    assert r.status_code == 401
    r = await client.get("/api/v1/frontiers", headers={"Authorization": "Basic !!notbase64"})
    assert r.status_code == 401


async def test_disabled_user_refused(client: httpx.AsyncClient, db_url: str) -> None:
    name, pw = await make_user(db_url, 2, active=False)
    assert (await client.get("/api/v1/frontiers", auth=(name, pw))).status_code == 401


async def test_level1_reads_but_cannot_write(client: httpx.AsyncClient, db_url: str) -> None:
    fr = await make_frontier(db_url)
    name, pw = await make_user(db_url, 1)
    r = await client.get(f"/api/v1/frontiers/{fr.code}", auth=(name, pw))
    assert r.status_code == 200 and r.json()["code"] == fr.code
    r = await client.post(
        f"/api/v1/frontiers/{fr.code}/hold", json={"reason": "look"}, auth=(name, pw)
    )
    assert r.status_code == 403 and "level-2" in r.json()["error"]
    assert await _rows(db_url, "SELECT 1 FROM asic_hold WHERE frontier_id = %s", fr.id) == []
    # The refused attempt is on record too.
    rows = await _rows(
        db_url,
        "SELECT user_level, method, status, client FROM api_access WHERE username = %s",
        name,
    )
    assert rows == [(1, "POST", 403, "10.0.0.7")]


async def test_level2_hold_and_release_are_logged(client: httpx.AsyncClient, db_url: str) -> None:
    fr = await make_frontier(db_url)
    name, pw = await make_user(db_url, 2)
    r = await client.post(
        f"/api/v1/frontiers/{fr.code}/hold",
        json={"reason": "  meter replaced, under review "},
        auth=(name, pw),
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "frontier": fr.code,
        "action": "hold",
        "changed": True,
        "held": True,
        "actor": f"api:{name}",
        "reason": "meter replaced, under review",
    }
    held = await _rows(db_url, "SELECT reason, actor FROM asic_hold WHERE frontier_id = %s", fr.id)
    assert held == [("meter replaced, under review", f"api:{name}")]
    # Holding again changes nothing, and is still logged.
    r = await client.post(
        f"/api/v1/frontiers/{fr.code}/hold", json={"reason": "again"}, auth=(name, pw)
    )
    assert r.status_code == 200 and r.json()["changed"] is False
    r = await client.post(
        f"/api/v1/frontiers/{fr.code}/release", json={"reason": "reviewed"}, auth=(name, pw)
    )
    assert r.status_code == 200 and r.json()["held"] is False
    assert await _rows(db_url, "SELECT 1 FROM asic_hold WHERE frontier_id = %s", fr.id) == []

    access = await _rows(
        db_url,
        """SELECT user_level, method, path, frontier, reason, status, detail ->> 'action'
           FROM api_access WHERE username = %s ORDER BY id""",
        name,
    )
    assert access == [
        (2, "POST", f"/api/v1/frontiers/{fr.code}/hold", fr.code,
         "meter replaced, under review", 200, "hold"),
        (2, "POST", f"/api/v1/frontiers/{fr.code}/hold", fr.code, "again", 200, "hold"),
        (2, "POST", f"/api/v1/frontiers/{fr.code}/release", fr.code, "reviewed", 200, "release"),
    ]  # fmt: skip
    log = await _rows(
        db_url,
        """SELECT actor, kind, purpose, activities ->> 'changed', proof FROM frontier_log
           WHERE frontier_id = %s ORDER BY id""",
        fr.id,
    )
    assert [r[:4] for r in log] == [
        (f"api:{name}", "level2_access", "meter replaced, under review", "true"),
        (f"api:{name}", "level2_access", "again", "false"),
        (f"api:{name}", "level2_access", "reviewed", "true"),
    ]
    assert log[0][4].startswith("held since") and log[2][4].startswith("not held")
    # The hoja de vida endpoint shows them, newest first.
    r = await client.get(f"/api/v1/frontiers/{fr.code}/log", auth=(name, pw))
    assert [e["purpose"] for e in r.json()["entries"]] == [
        "reviewed",
        "again",
        "meter replaced, under review",
    ]


async def test_write_attempts_without_valid_credentials_are_logged(
    client: httpx.AsyncClient, db_url: str
) -> None:
    fr = await make_frontier(db_url)
    r = await client.post(f"/api/v1/frontiers/{fr.code}/hold", json={"reason": "x"})
    assert r.status_code == 401
    rows = await _rows(
        db_url, "SELECT username, status FROM api_access WHERE path = %s",
        f"/api/v1/frontiers/{fr.code}/hold",
    )  # fmt: skip
    assert rows == [(None, 401)]
    assert await _rows(db_url, "SELECT 1 FROM asic_hold WHERE frontier_id = %s", fr.id) == []


# --- malformed requests ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "needle"),
    [
        ("post", "/frontiers/{code}/hold", {}, 422, "body.reason"),
        ("post", "/frontiers/{code}/hold", {"reason": "   "}, 422, "blank"),
        ("post", "/frontiers/{code}/hold", {"reason": "x", "extra": 1}, 422, "body.extra"),
        ("post", "/frontiers/{code}/hold", "not json", 422, "JSON"),
        ("post", "/frontiers/Frt999999999999/hold", {"reason": "x"}, 404, "unknown frontier"),
        ("post", "/frontiers/Frt999999999999/release", {"reason": "x"}, 404, "unknown frontier"),
        ("get", "/frontiers/Frt999999999999", None, 404, "unknown frontier"),
        ("get", "/frontiers/Frt999999999999/log", None, 404, "unknown frontier"),
        ("get", "/frontiers/{code}/readings?start=yesterday&end=2026-03-02T00:00Z", None, 422,
         "query.start"),
        ("get", "/frontiers/{code}/readings?start=2026-03-01T00:00", None, 422, "query.end"),
        ("get", "/frontiers/{code}/readings?start=2026-03-01T00:00&end=2026-03-02T00:00", None,
         422, "timezone"),
        ("get", "/frontiers/{code}/readings?start=2026-03-02T00:00Z&end=2026-03-01T00:00Z",
         None, 422, "after start"),
        ("get", "/frontiers/{code}/readings?start=2026-01-01T00:00Z&end=2026-03-01T00:00Z",
         None, 422, "at most"),
        ("get", "/frontiers/{code}/readings?start=2026-03-01T00:00Z&end=2026-03-02T00:00Z"
         "&channel=7", None, 422, "query.channel"),
        ("get", "/frontiers/{code}/settled?day=2026-02-30", None, 422, "query.day"),
        ("get", "/frontiers/{code}/settled", None, 422, "query.day"),
        ("get", "/reports/asic/status?day=01/03/2026", None, 422, "query.day"),
        ("get", "/collection/sessions?limit=0", None, 422, "query.limit"),
        ("get", "/collection/sessions?frontier=Frt999999999999", None, 404, "unknown frontier"),
        ("get", "/nothing-here", None, 404, "Not Found"),
    ],
)  # fmt: skip
async def test_malformed_requests_get_clear_4xx(
    client: httpx.AsyncClient,
    db_url: str,
    method: str,
    path: str,
    body: object,
    status: int,
    needle: str,
) -> None:
    fr = await make_frontier(db_url)
    auth = await make_user(db_url, 2)
    url = "/api/v1" + path.format(code=fr.code)
    if method == "get":
        r = await client.get(url, auth=auth)
    elif isinstance(body, str):
        r = await client.post(
            url, content=body, headers={"content-type": "application/json"}, auth=auth
        )
    else:
        r = await client.post(url, json=body, auth=auth)
    assert r.status_code == status, r.text
    assert needle.lower() in r.text.lower(), r.text
    assert "Traceback" not in r.text and "error" in r.json()
    assert await _rows(db_url, "SELECT 1 FROM asic_hold WHERE frontier_id = %s", fr.id) == []


async def test_a_bug_is_a_plain_500_and_the_write_is_logged(
    db_url: str, pool: AsyncConnectionPool
) -> None:
    app = create_app(db_url, pool)

    async def boom() -> None:
        raise RuntimeError("secret internal detail")

    app.add_api_route("/api/v1/boom", boom, methods=["POST"])
    transport = httpx.ASGITransport(app=app)
    auth = await make_user(db_url, 2)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.post("/api/v1/boom", auth=auth)
    assert r.status_code == 500 and r.json() == {"error": "internal error"}
    assert await _rows(db_url, "SELECT status FROM api_access WHERE path = '/api/v1/boom'") == [
        (500,)
    ]


# --- what the endpoints return ------------------------------------------------------------


async def test_registry_endpoints_never_show_secrets(
    client: httpx.AsyncClient, db_url: str
) -> None:
    fr = await make_frontier(db_url)
    auth = await make_user(db_url, 1)
    listed = await all_pages(client, "/api/v1/frontiers?limit=1000", auth)
    assert fr.code in [f["code"] for f in listed]
    r = await client.get(f"/api/v1/frontiers/{fr.code}", auth=auth)
    body = r.json()
    assert body["point_type"] == 2 and body["clock_limit_s"] == 30
    assert sorted(m["serial"] for m in body["meters"]) == sorted([fr.principal, fr.backup])
    assert "violations" in body
    assert "ciphertext" not in r.text and "secret" not in r.text


async def test_readings_endpoint_returns_what_storage_holds(
    client: httpx.AsyncClient, db_url: str
) -> None:
    fr = await make_frontier(db_url)
    auth = await make_user(db_url, 1)
    now = datetime(2026, 3, 2, 12, tzinfo=UTC)
    rows = [
        Reading(fr.principal_id, 1, T0 + timedelta(hours=h), 10.0 + h, 0, now) for h in range(3)
    ]
    rows.append(Reading(fr.principal_id, 3, T0, 5.5, int(Quality.BACKUP_CHANNEL), now))
    rows.append(Reading(fr.backup_id, 1, T0, 10.1, 0, now))
    async with await psycopg.AsyncConnection.connect(db_url) as c:
        await write_readings(c, rows, source="test", actor="test")
        # A late, different value: version 2.
        await write_readings(
            c, [Reading(fr.principal_id, 1, T0, 11.0, 0, now)], source="test", actor="test"
        )
    params = {"start": "2026-03-01T00:00:00-05:00", "end": "2026-03-01T02:00:00-05:00"}
    r = await client.get(f"/api/v1/frontiers/{fr.code}/readings", params=params, auth=auth)
    assert r.status_code == 200, r.text
    meters = {m["serial"]: m for m in r.json()["meters"]}
    assert meters[fr.principal]["role"] == "principal"
    got = [
        (x["channel"], x["interval_start"], x["value"], x["version"], x["flags"])
        for x in meters[fr.principal]["readings"]
    ]
    assert got == [
        ("active_import", "2026-03-01T05:00:00+00:00", 11.0, 2, []),
        ("active_import", "2026-03-01T06:00:00+00:00", 11.0, 1, []),
        ("reactive_import", "2026-03-01T05:00:00+00:00", 5.5, 1, ["BACKUP_CHANNEL"]),
    ]
    assert [x["value"] for x in meters[fr.backup]["readings"]] == [10.1]
    r = await client.get(
        f"/api/v1/frontiers/{fr.code}/readings",
        params={**params, "channel": "reactive_import"},
        auth=auth,
    )
    assert [len(m["readings"]) for m in r.json()["meters"]] == [1, 0]


async def test_settled_endpoint_shows_source_and_method_per_period(
    client: httpx.AsyncClient, db_url: str
) -> None:
    fr = await make_frontier(db_url)
    auth = await make_user(db_url, 1)
    rows = [
        SettledValue(fr.id, 1, t, float(p), "estimate" if p == 3 else "principal",
                     "typical_curve" if p == 3 else None)
        for p, t in enumerate(hour_starts(DAY), 1)
    ]  # fmt: skip
    async with await psycopg.AsyncConnection.connect(db_url) as c:
        await write_settled(c, rows, actor="vee", reason="test")
    r = await client.get(f"/api/v1/frontiers/{fr.code}/settled?day=2026-03-01", auth=auth)
    assert r.status_code == 200, r.text
    values = r.json()["values"]
    assert [v["period"] for v in values] == list(range(1, 25))
    assert [v["value"] for v in values] == [float(p) for p in range(1, 25)]
    assert (values[2]["source"], values[2]["method"]) == ("estimate", "typical_curve")
    assert (values[0]["source"], values[0]["method"]) == ("principal", None)
    assert values[0]["interval_start"] == "2026-03-01T05:00:00+00:00"
    r = await client.get(f"/api/v1/frontiers/{fr.code}/settled?day=2026-03-02", auth=auth)
    assert r.json()["values"] == []


async def test_asic_status_lists_frontier_state(client: httpx.AsyncClient, db_url: str) -> None:
    fr = await make_frontier(db_url)
    auth = await make_user(db_url, 1)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        cur = await c.execute(
            """INSERT INTO asic_submission (zip_name, payload_hash, size_bytes, documents,
                                            transport, message_id, state, sent_at, final_at)
               VALUES ('z.zip', 'h', 10, 1, 'http', %s, 'success', now(), now())
               RETURNING id""",
            (f"msg-{fr.code}",),
        )
        (sid,) = await cur.fetchone()
        await c.execute(
            """INSERT INTO asic_document (frontier_id, meter_id, role, day, file_name, kind,
                                          content, content_hash, settled_version, state,
                                          submission_id, sent_at, final_at)
               VALUES (%s, %s, 'principal', %s, %s, 'original', %s, 'hash1', 1, 'success',
                       %s, now(), now())""",
            (fr.id, fr.principal_id, DAY, f"{fr.principal}_20260301.json", Jsonb({}), sid),
        )
    r = await client.get("/api/v1/reports/asic/status?day=2026-03-01", auth=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["day"] == "2026-03-01" and body["deadline"] == "2026-03-02T08:00:00-05:00"
    mine = next(f for f in body["frontiers"] if f["frontier"] == fr.code)
    assert mine["held"] is None
    [doc] = mine["documents"]
    assert (doc["file_name"], doc["state"], doc["message_id"], doc["kind"]) == (
        f"{fr.principal}_20260301.json",
        "success",
        f"msg-{fr.code}",
        "original",
    )
    assert doc["sent_at"] is not None
    other = await client.get("/api/v1/reports/asic/status?day=2026-03-05", auth=auth)
    assert next(f for f in other.json()["frontiers"] if f["frontier"] == fr.code)["documents"] == []


async def test_collection_sessions_and_meter_health(client: httpx.AsyncClient, db_url: str) -> None:
    fr = await make_frontier(db_url)
    auth = await make_user(db_url, 1)
    t = datetime(2026, 3, 1, 6, 2, tzinfo=UTC)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        for i, result in enumerate(("ok", "timeout")):
            await c.execute(
                """INSERT INTO collection_session (meter_id, cycle, collector, started_at,
                                                   finished_at, result, attempts)
                   VALUES (%s, %s, 'c1', %s, %s, %s, 1)""",
                (fr.principal_id, t, t + timedelta(seconds=i), t + timedelta(seconds=i), result),
            )
        await c.execute(
            """INSERT INTO meter_health (meter_id, consecutive_failures, last_result,
                                         clock_offset_s) VALUES (%s, 1, 'timeout', 12.5)""",
            (fr.principal_id,),
        )
    r = await client.get(f"/api/v1/collection/sessions?frontier={fr.code}&limit=5", auth=auth)
    assert r.status_code == 200, r.text
    got = [(s["meter"], s["result"]) for s in r.json()["sessions"]]
    assert got == [(fr.principal, "timeout"), (fr.principal, "ok")]
    r = await client.get(f"/api/v1/collection/sessions?frontier={fr.code}&limit=1", auth=auth)
    assert len(r.json()["sessions"]) == 1
    r = await client.get(f"/api/v1/meters/health?frontier={fr.code}", auth=auth)
    health = {m["meter"]: m for m in r.json()["meters"]}
    assert health[fr.principal]["consecutive_failures"] == 1
    assert health[fr.principal]["clock_offset_s"] == 12.5
    assert health[fr.backup]["last_result"] is None  # never collected: shown, not invented


async def test_healthz_needs_no_auth_and_reports_scheduler(
    db_url: str, pool: AsyncConnectionPool, client: httpx.AsyncClient
) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200 and r.json()["database"] is True
    app = create_app(db_url, pool, scheduler_running=lambda: False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.get("/healthz")
    assert r.status_code == 503 and r.json() == {
        "status": "unavailable",
        "database": True,
        "scheduler": False,
    }


async def test_openapi_is_served(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/openapi.json")
    paths = r.json()["paths"]
    assert "/api/v1/frontiers/{code}/hold" in paths and "/api/v1/reports/asic/status" in paths


async def test_readings_in_columns_and_csv_match_the_rows_and_allow_a_year(
    client: httpx.AsyncClient, db_url: str
) -> None:
    fr = await make_frontier(db_url)
    auth = await make_user(db_url, 1)
    now = datetime(2026, 3, 2, 12, tzinfo=UTC)
    rows = [
        Reading(fr.principal_id, 1, T0 + timedelta(hours=h), 1.25 * h, 0, now) for h in range(5)
    ]
    rows.append(Reading(fr.backup_id, 3, T0, 0.5, int(Quality.BACKUP_CHANNEL), now))
    async with await psycopg.AsyncConnection.connect(db_url) as c:
        await write_readings(c, rows, source="test", actor="test")
    url = f"/api/v1/frontiers/{fr.code}/readings"
    year = {"start": "2025-03-02T00:00:00-05:00", "end": "2026-03-02T00:00:00-05:00"}
    r = await client.get(url, params=year, auth=auth)
    assert r.status_code == 422 and "format=columns" in r.text  # rows: 31 days at most
    cols = (await client.get(url, params={**year, "format": "columns"}, auth=auth)).json()
    by_serial = {m["serial"]: m["channels"] for m in cols["meters"]}
    principal = by_serial[fr.principal]["active_import"]
    assert principal["value"] == [0.0, 1.25, 2.5, 3.75, 5.0]
    assert principal["interval_start"][0] == "2026-03-01T05:00:00Z"
    assert principal["version"] == [1] * 5
    assert by_serial[fr.backup]["reactive_import"]["quality"] == [int(Quality.BACKUP_CHANNEL)]
    assert cols["flags"] == {str(int(Quality.BACKUP_CHANNEL)): ["BACKUP_CHANNEL"]}
    r = await client.get(url, params={**year, "format": "csv"}, auth=auth)
    assert r.headers["content-type"].startswith("text/csv")
    lines = r.text.splitlines()
    assert lines[0].startswith("meter,role,channel,interval_start,value,quality,flags")
    assert len(lines) == 1 + 6
    assert any(line.startswith(f"{fr.backup},backup,reactive_import,2026-03-01T05:00:00Z,0.5,")
               and "BACKUP_CHANNEL" in line for line in lines)  # fmt: skip
    too_long = {"start": "2024-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"}
    r = await client.get(url, params={**too_long, "format": "csv"}, auth=auth)
    assert r.status_code == 422 and "366 days" in r.text


async def test_hourly_readings_round_trip_to_the_rows_with_null_for_missing_hours(
    client: httpx.AsyncClient, db_url: str
) -> None:
    fr = await make_frontier(db_url)
    auth = await make_user(db_url, 1)
    now = datetime(2026, 3, 2, 12, tzinfo=UTC)
    gap = {2, 3, 7}  # hours never read: null in the hourly body, not 0
    rows = [
        Reading(fr.principal_id, 1, T0 + timedelta(hours=h), 0.0 if h == 5 else 1.5 * h,
                int(Quality.ESTIMATED) if h == 4 else 0, now)
        for h in range(10) if h not in gap
    ]  # fmt: skip
    rows.append(Reading(fr.backup_id, 3, T0 + timedelta(hours=23), 0.5, 0, now))
    async with await psycopg.AsyncConnection.connect(db_url) as c:
        await write_readings(c, rows, source="test", actor="test")
    url = f"/api/v1/frontiers/{fr.code}/readings"
    # Two Colombian days (UTC-5 all year, no DST): 48 hour slots.
    span = {"start": f"{DAY.isoformat()}T00:00:00-05:00",
            "end": f"{(DAY + timedelta(days=2)).isoformat()}T00:00:00-05:00"}  # fmt: skip
    r = await client.get(url, params={**span, "format": "hourly"}, auth=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["format"], body["step_s"], body["count"]) == ("hourly", 3600, 48)
    by_serial = {m["serial"]: m["channels"] for m in body["meters"]}
    p = by_serial[fr.principal]["active_import"]
    assert len(p["value"]) == len(p["quality"]) == 48
    assert [h for h, v in enumerate(p["value"]) if v is None] == [2, 3, 7, *range(10, 48)]
    assert [h for h, q in enumerate(p["quality"]) if q is None] == [2, 3, 7, *range(10, 48)]
    assert p["value"][5] == 0.0 and p["quality"][4] == int(Quality.ESTIMATED)
    assert body["flags"] == {str(int(Quality.ESTIMATED)): ["ESTIMATED"]}
    # Exactly the readings of the row format, placed by start + i * step_s.
    start = datetime.fromisoformat(span["start"])
    from_hourly = {
        (serial, ch, (start + timedelta(seconds=i * body["step_s"])).astimezone(UTC), v, q)
        for serial, chans in by_serial.items()
        for ch, series in chans.items()
        for i, (v, q) in enumerate(zip(series["value"], series["quality"], strict=True))
        if v is not None
    }
    rows_body = (await client.get(url, params=span, auth=auth)).json()
    from_rows = {
        (m["serial"], x["channel"], datetime.fromisoformat(x["interval_start"]), x["value"],
         x["quality"])
        for m in rows_body["meters"] for x in m["readings"]
    }  # fmt: skip
    assert from_hourly == from_rows and len(from_rows) == len(rows)
    off = {**span, "start": f"{DAY.isoformat()}T00:30:00-05:00", "format": "hourly"}
    r = await client.get(url, params=off, auth=auth)
    assert r.status_code == 422 and "whole hours" in r.text


async def test_hourly_refuses_rather_than_drop_a_quarter_hour_reading(
    client: httpx.AsyncClient, db_url: str
) -> None:
    fr = await make_frontier(db_url)
    auth = await make_user(db_url, 1)
    now = datetime(2026, 3, 2, 12, tzinfo=UTC)
    rows = [Reading(fr.principal_id, 1, T0 + timedelta(minutes=15 * k), 0.25, 0, now)
            for k in range(4)]  # fmt: skip
    async with await psycopg.AsyncConnection.connect(db_url) as c:
        await write_readings(c, rows, source="test", actor="test", interval=timedelta(minutes=15))
    url = f"/api/v1/frontiers/{fr.code}/readings"
    span = {"start": f"{DAY.isoformat()}T00:00:00-05:00",
            "end": f"{DAY.isoformat()}T02:00:00-05:00"}  # fmt: skip
    r = await client.get(url, params={**span, "format": "hourly"}, auth=auth)
    assert r.status_code == 409 and "format=columns" in r.text
    cols = (await client.get(url, params={**span, "format": "columns"}, auth=auth)).json()
    assert len(cols["meters"][0]["channels"]["active_import"]["value"]) == 4


async def test_registry_attribute_beyond_64_bits_is_served(
    client: httpx.AsyncClient, db_url: str
) -> None:
    # The bodies are encoded by orjson, which refuses integers past 64 bits; a registry
    # attribute may hold one (jsonb keeps any number), and must come back as stored.
    fr = await make_frontier(db_url)
    auth = await make_user(db_url, 1)
    big = 123456789012345678901234567890
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        await c.execute(
            "UPDATE frontier SET attributes = jsonb_build_object('big', %s::numeric) WHERE id = %s",
            (str(big), fr.id),
        )
    r = await client.get(f"/api/v1/frontiers/{fr.code}", auth=auth)
    assert r.status_code == 200, r.text
    assert r.json()["attributes"] == {"big": big}
