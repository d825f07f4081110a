"""format=rows answers a page at a time: following the next cursors gives every reading of
the range exactly once, in order, with its version — the same rows format=columns gives."""

from __future__ import annotations

from datetime import timedelta

import httpx
import numpy as np
import psycopg

from cgm.localtime import hour_starts
from cgm.storage import readings_array, write_readings
from tests.api.conftest import make_frontier, make_user
from tests.api.test_api import DAY

T0 = hour_starts(DAY)[0]


async def test_rows_pages_cover_the_range_once(client: httpx.AsyncClient, db_url: str) -> None:
    fr = await make_frontier(db_url)
    auth = await make_user(db_url, 1)
    n = 24 * 3
    m, c, h = np.meshgrid([fr.principal_id, fr.backup_id], [1, 3], np.arange(n), indexing="ij")
    t = np.datetime64(T0.replace(tzinfo=None), "us") + h.ravel().astype("m8[h]")
    rows = readings_array(m.ravel(), c.ravel(), t, h.ravel() * 0.5, 0,
                          np.datetime64("2026-04-01", "us"))  # fmt: skip
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        await write_readings(conn, rows, source="t", actor="t")
        changed = rows[:5].copy()
        changed["value"] += 1
        await write_readings(conn, changed, source="t", actor="t")
    url = f"/api/v1/frontiers/{fr.code}/readings"
    span = {"start": T0.isoformat(), "end": (T0 + timedelta(hours=n)).isoformat()}
    got: list[tuple] = []
    pages = 0
    params: dict = {**span, "limit": 50}
    while True:
        r = await client.get(url, params=params, auth=auth)
        assert r.status_code == 200, r.text
        body = r.json()
        pages += 1
        for meter in body["meters"]:
            got += [(meter["serial"], x["channel"], x["interval_start"], x["value"], x["version"])
                    for x in meter["readings"]]  # fmt: skip
        if body["next"] is None:
            assert "link" not in r.headers
            break
        assert r.headers["x-next-cursor"] == body["next"]
        params = {**span, "limit": 50, "cursor": body["next"]}
    assert pages == -(-len(rows) // 50)
    cols = (await client.get(url, params={**span, "format": "columns"}, auth=auth)).json()
    want = [
        (meter["serial"], ch, t.replace("Z", "+00:00"), v, ver)
        for meter in cols["meters"]
        for ch, series in meter["channels"].items()
        for t, v, ver in zip(series["interval_start"], series["value"], series["version"],
                             strict=True)
    ]  # fmt: skip
    assert got == want and len(got) == len(rows)
    assert sum(x[4] == 2 for x in got) == 5
    bad = await client.get(url, params={**span, "cursor": "bm90IGEgY3Vyc29y"}, auth=auth)
    assert bad.status_code == 422
