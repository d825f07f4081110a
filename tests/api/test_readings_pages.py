"""format=rows, columns and csv answer a page at a time: following the next cursors gives
exactly the readings of the one-request answer, in its order, once each — pages ending in
the middle of a series or on its end, and readings changing version between pages."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import httpx
import numpy as np
import psycopg
import pytest

from cgm.api import encode
from cgm.api.app import MAX_EXPORT_PAGE, MAX_ROWS_PAGE
from cgm.localtime import hour_starts
from cgm.storage import readings_array, write_readings
from cgm.storage.common import CHANNELS_BY_ID
from tests.api.conftest import make_frontier, make_user
from tests.api.test_api import DAY

T0 = hour_starts(DAY)[0]
N = 24 * 3  # hours per series; 2 meters x 2 channels = 4 series, 288 readings
FORMATS = ("rows", "columns", "csv")


def _utc(t: str) -> str:
    return t.replace("Z", "+00:00")


def parse(fmt: str, r: httpx.Response) -> tuple[list[tuple], str | None]:
    """(serial, channel, interval start, value, version, collected at) of each reading of
    a page, in the body's order, and the page's next cursor."""
    assert r.status_code == 200, r.text
    nxt = r.headers.get("x-next-cursor")
    if nxt is None:
        assert "link" not in r.headers
    else:
        assert r.links["next"]["url"].startswith("http://cgm.test/api/v1/")
    if fmt == "csv":
        lines = r.text.splitlines()
        assert lines[0] == ",".join(encode.CSV_HEADER)  # each page a CSV file on its own
        got = [(x["meter"], x["channel"], _utc(x["interval_start"]), float(x["value"]),
                int(x["version"]), _utc(x["collected_at"]))
               for x in csv.DictReader(io.StringIO(r.text))]  # fmt: skip
        return got, nxt
    body = r.json()
    assert body["next"] == nxt
    if fmt == "rows":
        got = [(m["serial"], x["channel"], x["interval_start"], x["value"], x["version"],
                x["collected_at"]) for m in body["meters"] for x in m["readings"]]  # fmt: skip
        return got, nxt
    got = [
        (m["serial"], ch, _utc(t), v, ver, _utc(c))
        for m in body["meters"]
        for ch, s in m["channels"].items()
        for t, v, ver, c in zip(s["interval_start"], s["value"], s["version"],
                                s["collected_at"], strict=True)
    ]  # fmt: skip
    return got, nxt


async def _frontier(db_url: str):
    fr = await make_frontier(db_url)
    m, c, h = np.meshgrid([fr.principal_id, fr.backup_id], [1, 3], np.arange(N), indexing="ij")
    t = np.datetime64(T0.replace(tzinfo=None), "us") + h.ravel().astype("m8[h]")
    rows = readings_array(m.ravel(), c.ravel(), t, h.ravel() * 0.5, 0,
                          np.datetime64("2026-04-01", "us"))  # fmt: skip
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        await write_readings(conn, rows, source="t", actor="t")
    return fr, rows


async def _change(db_url: str, rows: np.ndarray, at: list[int]) -> None:
    changed = rows[at].copy()
    changed["value"] += 1
    changed["collected_at"] = np.datetime64("2026-04-02", "us")
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        await write_readings(conn, changed, source="t", actor="t")


SPAN = {"start": T0.isoformat(), "end": (T0 + timedelta(hours=N)).isoformat()}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("limit", [50, N, 1000])  # mid-series, on a series' end, one page
async def test_pages_are_the_whole_answer(
    client: httpx.AsyncClient, db_url: str, fmt: str, limit: int
) -> None:
    fr, rows = await _frontier(db_url)
    await _change(db_url, rows, [0, 1, 2, 3, 4])
    auth = await make_user(db_url, 1)
    url = f"/api/v1/frontiers/{fr.code}/readings"
    most = MAX_ROWS_PAGE if fmt == "rows" else MAX_EXPORT_PAGE
    one = await client.get(url, params={**SPAN, "format": fmt, "limit": most}, auth=auth)
    whole, nxt = parse(fmt, one)
    assert nxt is None and len(whole) == len(rows)
    assert [x[0] for x in whole[::N]] == [fr.principal, fr.principal, fr.backup, fr.backup]
    assert sum(x[4] == 2 for x in whole) == 5
    got, pages, params = [], 0, {**SPAN, "format": fmt, "limit": limit}
    while True:
        page, nxt = parse(fmt, await client.get(url, params=params, auth=auth))
        assert 0 < len(page) <= limit
        got += page
        pages += 1
        if nxt is None:
            break
        params = {**SPAN, "format": fmt, "limit": limit, "cursor": nxt}
    assert got == whole
    assert pages == -(-len(rows) // limit)
    # the formats carry the same readings
    cols, _ = parse("columns", await client.get(
        url, params={**SPAN, "format": "columns", "limit": 1000}, auth=auth))  # fmt: skip
    assert got == cols


@pytest.mark.parametrize("fmt", FORMATS)
async def test_a_reading_changing_between_pages(
    client: httpx.AsyncClient, db_url: str, fmt: str
) -> None:
    """Each reading comes once, as it is when its page is read: one changed on a page
    already read is not sent again, one changed on a page still to come comes changed."""
    fr, rows = await _frontier(db_url)
    auth = await make_user(db_url, 1)
    url = f"/api/v1/frontiers/{fr.code}/readings"
    params = {**SPAN, "format": fmt, "limit": 50}
    got, nxt = parse(fmt, await client.get(url, params=params, auth=auth))
    await _change(db_url, rows, [0, 49, 50, 120])  # 49 on the page read, 50 on the next
    while nxt is not None:
        page, nxt = parse(fmt, await client.get(url, params={**params, "cursor": nxt}, auth=auth))
        got += page
    now, _ = parse(fmt, await client.get(url, params={**params, "limit": 1000}, auth=auth))
    assert [x[:3] for x in got] == [x[:3] for x in now] and len(got) == len(rows)
    assert [i for i, x in enumerate(got) if x[4] == 2] == [50, 120]
    assert [i for i, x in enumerate(now) if x[4] == 2] == [0, 49, 50, 120]
    assert got[50] == now[50] and got[0] != now[0]


@pytest.mark.parametrize("fmt", FORMATS)
async def test_a_cursor_not_of_this_request_is_refused(
    client: httpx.AsyncClient, db_url: str, fmt: str
) -> None:
    fr, _ = await _frontier(db_url)
    other, _ = await _frontier(db_url)
    auth = await make_user(db_url, 1)
    params = {**SPAN, "format": fmt, "limit": N + 10}  # the page ends in channel 3's series
    r = await client.get(f"/api/v1/frontiers/{other.code}/readings", params=params, auth=auth)
    foreign = r.headers["x-next-cursor"]
    r = await client.get(f"/api/v1/frontiers/{fr.code}/readings", params=params, auth=auth)
    own = r.headers["x-next-cursor"]
    registry = (await client.get("/api/v1/frontiers?limit=1", auth=auth)).headers["x-next-cursor"]
    url = f"/api/v1/frontiers/{fr.code}/readings"
    ch1 = CHANNELS_BY_ID[1].value
    for cursor, extra in [("bm90IGEgY3Vyc29y", {}), ("%%%", {}), (foreign, {}),
                          (registry, {}), (own, {"channel": ch1})]:  # fmt: skip
        bad = await client.get(url, params={**params, **extra, "cursor": cursor}, auth=auth)
        assert bad.status_code == 422, (cursor, bad.text)
        assert "cursor" in bad.json()["error"]
    assert (await client.get(url, params={**params, "cursor": own}, auth=auth)).status_code == 200


async def test_page_size_bounds(client: httpx.AsyncClient, db_url: str) -> None:
    fr, rows = await _frontier(db_url)
    auth = await make_user(db_url, 1)
    url = f"/api/v1/frontiers/{fr.code}/readings"
    r = await client.get(url, params={**SPAN, "limit": MAX_ROWS_PAGE + 1}, auth=auth)
    assert r.status_code == 422
    for fmt in ("columns", "csv"):
        r = await client.get(url, params={**SPAN, "format": fmt, "limit": MAX_EXPORT_PAGE},
                             auth=auth)  # fmt: skip
        assert r.status_code == 200 and "x-next-cursor" not in r.headers
        r = await client.get(url, params={**SPAN, "format": fmt, "limit": MAX_EXPORT_PAGE + 1},
                             auth=auth)  # fmt: skip
        assert r.status_code == 422
