"""Pull API: a unit's token reads the meters it owns or shares, with each value's source and
the estimated share per period; anything else is 403, and it reads nothing outside the
portal endpoints."""

from __future__ import annotations

import uuid
from datetime import date, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest

from cgm.localtime import hour_starts
from cgm.portal import loader, store
from cgm.portal.access import add_unit_user
from cgm.storage import write_settled
from cgm.storage.settled import SettledValue
from tests.api.conftest import PASSWORD, client, make_frontier, make_user, pool  # noqa: F401
from tests.portal.conftest import tag, unit, write

DAY = date(2026, 3, 10)


async def _setup(db_url: str, tmp_path: Path) -> dict:
    fr = await make_frontier(db_url)
    number, m1, m2 = tag(), f"M{tag()}", f"M{tag()}"
    link = {"frontier": fr.code, "channel": "active_import"}
    meters = [
        {"number": m1, "smart": True, "shared": True, "invoice_access": True, "cgm": link},
        {"number": m2, "smart": False, "shared": False, "invoice_access": True},
    ]
    cn = {"company": "Chilquinta", "number": number, "tariff_type": "AT-4.3", "meters": meters}
    owner = unit(client_numbers=[cn])
    other = unit(associate=[{"company": "Chilquinta", "number": number, "meters": [m1]}])
    stranger = unit()
    names = {}
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        inv = loader.load(write(tmp_path / "u.yaml", [owner, other, stranger]))
        await store.import_inventory(conn, inv, "test")
        await conn.commit()
        for key, u in (("owner", owner), ("other", other), ("stranger", stranger)):
            names[key] = f"unit{uuid.uuid4().hex[:8]}"
            await add_unit_user(conn, names[key], PASSWORD, u["code"], "test")
            await conn.commit()
        # Two days: hour 5 of the first estimated, hour 6 from the backup, day two misses
        # its last hour (never a zero).
        rows = []
        for d, hours in ((DAY, 24), (DAY + timedelta(days=1), 23)):
            for i, t in enumerate(hour_starts(d)[:hours]):
                src, method = "principal", None
                if d == DAY and i == 4:
                    src, method = "estimate", "linear_interpolation"
                elif d == DAY and i == 5:
                    src = "backup"
                rows.append(SettledValue(fr.id, "active_import", t, 10.0 + i, src, method))
        await write_settled(conn, rows, actor="test")
        await conn.commit()
    return {"m1": m1, "m2": m2, "fr": fr, "names": names, "owner": owner, "other": other,
            "stranger": stranger}  # fmt: skip


async def test_consumption_for_owner_and_associated(
    db_url: str,
    client: httpx.AsyncClient,  # noqa: F811
    tmp_path: Path,
) -> None:
    s = await _setup(db_url, tmp_path)
    url = f"/api/v1/portal/meters/{s['m1']}/consumption"
    day2 = (DAY + timedelta(days=1)).isoformat()
    q = {"start": DAY.isoformat(), "end": day2, "resolution": "daily"}
    for who in ("owner", "other"):
        r = await client.get(url, params=q, auth=(s["names"][who], PASSWORD))
        assert r.status_code == 200, r.text
        body = r.json()
        d1, d2 = body["values"]
        assert d1["period"] == DAY.isoformat() and d1["hours"] == 24
        assert d1["value"] == pytest.approx(sum(10.0 + i for i in range(24)))
        assert d1["estimated_hours"] == 1 and d1["estimated_value"] == pytest.approx(14.0)
        assert d1["by_source"] == {
            "principal": 22,
            "backup": 1,
            "estimate:linear_interpolation": 1,
        }
        assert d2["hours"] == 23 and d2["missing_hours"] == 1
        assert body["totals"]["estimated_hours"] == 1 and body["totals"]["missing_hours"] == 1

    r = await client.get(
        url,
        params={**q, "end": DAY.isoformat(), "resolution": "hourly"},
        auth=(s["names"]["other"], PASSWORD),
    )
    hours = r.json()["values"]
    assert len(hours) == 24 and hours[0]["hour_period"] == 1
    assert (hours[4]["source"], hours[4]["method"], hours[4]["estimated"]) == (
        "estimate",
        "linear_interpolation",
        True,
    )
    assert hours[5]["source"] == "backup" and hours[0]["source"] == "principal"

    r = await client.get(
        url, params={**q, "resolution": "monthly"}, auth=(s["names"]["owner"], PASSWORD)
    )
    (month,) = r.json()["values"]
    assert month["period"] == "2026-03" and month["hours"] == 47 and month["estimated_hours"] == 1


async def test_access_boundaries(
    db_url: str,
    client: httpx.AsyncClient,  # noqa: F811
    tmp_path: Path,
) -> None:
    s = await _setup(db_url, tmp_path)
    q = {"start": DAY.isoformat(), "end": DAY.isoformat()}
    # The associated unit does not see the owner's other meter; a stranger sees none.
    r = await client.get(
        f"/api/v1/portal/meters/{s['m2']}/consumption",
        params=q,
        auth=(s["names"]["other"], PASSWORD),
    )
    assert (
        r.status_code == 403 and f"meter {s['m2']} is not owned by or shared" in r.json()["error"]
    )
    r = await client.get(
        f"/api/v1/portal/meters/{s['m1']}/consumption",
        params=q,
        auth=(s["names"]["stranger"], PASSWORD),
    )
    assert r.status_code == 403
    # An unknown meter is no different from another unit's meter for a unit's token.
    r = await client.get(
        "/api/v1/portal/meters/NOPE/consumption", params=q, auth=(s["names"]["owner"], PASSWORD)
    )
    assert r.status_code == 403
    # A unit's token reads nothing outside the portal endpoints.
    r = await client.get(f"/api/v1/frontiers/{s['fr'].code}", auth=(s["names"]["owner"], PASSWORD))
    assert r.status_code == 403 and "portal" in r.json()["error"]
    # Its meter list: owned and associated, and only its own unit.
    r = await client.get("/api/v1/portal/meters", auth=(s["names"]["other"], PASSWORD))
    assert [(m["meter"], m["relation"]) for m in r.json()["meters"]] == [(s["m1"], "associated")]
    r = await client.get(
        "/api/v1/portal/meters",
        params={"unit": s["owner"]["code"]},
        auth=(s["names"]["other"], PASSWORD),
    )
    assert r.status_code == 403
    # A service user reads any meter; a meter without a CGM link says so.
    name, pw = await make_user(db_url, 1)
    r = await client.get(f"/api/v1/portal/meters/{s['m1']}/consumption", params=q, auth=(name, pw))
    assert r.status_code == 200 and r.json()["totals"]["hours"] == 24
    r = await client.get(f"/api/v1/portal/meters/{s['m2']}/consumption", params=q, auth=(name, pw))
    assert r.status_code == 409 and "not linked" in r.json()["error"]
    r = await client.get(f"/api/v1/frontiers/{s['fr'].code}", auth=(name, pw))
    assert r.status_code == 200


async def test_range_limits(db_url: str, client: httpx.AsyncClient) -> None:  # noqa: F811
    name, pw = await make_user(db_url, 1)
    url = "/api/v1/portal/meters/X/consumption"
    r = await client.get(url, params={"start": "2026-01-02", "end": "2026-01-01"}, auth=(name, pw))
    assert r.status_code == 422
    r = await client.get(url, params={"start": "2025-01-01", "end": "2026-06-01"}, auth=(name, pw))
    assert r.status_code == 422 and "366" in r.json()["error"]


async def test_hourly_values_written_by_postgresql_match_the_local_time_module(
    db_url: str,
    client: httpx.AsyncClient,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The hourly array is JSON text made by PostgreSQL: each instant, local day and hour
    period must be what cgm.localtime says, across two days with the last hour missing."""
    s = await _setup(db_url, tmp_path)
    day2 = DAY + timedelta(days=1)
    r = await client.get(
        f"/api/v1/portal/meters/{s['m1']}/consumption",
        params={"start": DAY.isoformat(), "end": day2.isoformat(), "resolution": "hourly"},
        auth=(s["names"]["owner"], PASSWORD),
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    expected = [(d, i + 1, t) for d in (DAY, day2) for i, t in enumerate(hour_starts(d))][:47]
    got = body["values"]
    assert [(h["day"], h["hour_period"], h["interval_start"]) for h in got] == [
        (d.isoformat(), p, t.isoformat()) for d, p, t in expected
    ]
    assert [h["value"] for h in got] == [10.0 + i for i in range(24)] + [
        10.0 + i for i in range(23)
    ]
    assert {h["version"] for h in got} == {1} and got[4]["method"] == "linear_interpolation"
    assert [h["estimated"] for h in got].count(True) == 1 and got[0]["method"] is None
    t = body["totals"]
    assert (t["hours"], t["expected_hours"], t["missing_hours"]) == (47, 48, 1)
    assert t["value"] == pytest.approx(sum(h["value"] for h in got))
    assert t["estimated_share"] == pytest.approx(14.0 / t["value"])


async def test_columns_layout_holds_the_same_values_and_sources_as_the_objects(
    db_url: str,
    client: httpx.AsyncClient,  # noqa: F811
    tmp_path: Path,
) -> None:
    """layout=columns: one slot per hour from ``start`` every ``step_s``, the same value and
    source as the object form, null (never 0) for the missing hour, the same totals."""
    s = await _setup(db_url, tmp_path)
    day2 = DAY + timedelta(days=1)
    async with await psycopg.AsyncConnection.connect(db_url) as conn:  # gaps first, mid-range
        await conn.execute(
            "DELETE FROM settled_reading WHERE frontier_id = %s AND interval_start = ANY(%s)",
            (s["fr"].id, [hour_starts(DAY)[0], hour_starts(day2)[10]]),
        )
        # Made out of band (the service never deletes a settled value), so the day read
        # model is rebuilt for those days, as retention does.
        await conn.execute("SELECT settled_day_rebuild(%s, %s)", (DAY, day2))
        await conn.commit()
    url = f"/api/v1/portal/meters/{s['m1']}/consumption"
    q = {"start": DAY.isoformat(), "end": day2.isoformat(), "resolution": "hourly"}
    auth = (s["names"]["other"], PASSWORD)
    objects = (await client.get(url, params=q, auth=auth)).json()
    r = await client.get(url, params={**q, "layout": "columns"}, auth=auth)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    cols = r.json()
    starts = hour_starts(DAY) + hour_starts(day2)
    assert (cols["start"], cols["step_s"], cols["count"]) == (starts[0].isoformat(), 3600, 48)
    assert len(cols["values"]) == len(cols["sources"]) == 48
    for i in (0, 34, 47):
        assert cols["values"][i] is None and cols["sources"][i] is None
    assert cols["totals"]["missing_hours"] == 3
    assert cols["totals"] == objects["totals"]
    codes = cols["source_codes"]
    assert codes[:3] == ["principal", "backup", "manual"]
    by_start = {h["interval_start"]: h for h in objects["values"]}
    for i, (value, code) in enumerate(zip(cols["values"], cols["sources"], strict=True)):
        t = (starts[0] + timedelta(hours=i)).isoformat()
        assert t == starts[i].isoformat()
        h = by_start.get(t)
        if h is None:
            assert (value, code) == (None, None)
            continue
        name = f"estimate:{h['method']}" if h["estimated"] else h["source"]
        assert (value, codes[code]) == (h["value"], name)
    assert [codes[c] for c in cols["sources"][3:6]] == [
        "principal", "estimate:linear_interpolation", "backup"
    ]
    assert cols["values"][1] == 11.0 and cols["sources"][1] == 0
    # A day with nothing stored: every hour null, nothing counted.
    r = await client.get(url, params={**q, "start": "2026-01-01", "end": "2026-01-01",
                                      "layout": "columns"}, auth=auth)  # fmt: skip
    empty = r.json()
    assert empty["values"] == [None] * 24 and empty["sources"] == [None] * 24
    assert empty["totals"]["hours"] == 0 and empty["totals"]["missing_hours"] == 24
    # Unit scoping is the same: a stranger's token is refused; columns are hourly only.
    r = await client.get(url, params={**q, "layout": "columns"},
                         auth=(s["names"]["stranger"], PASSWORD))  # fmt: skip
    assert r.status_code == 403
    r = await client.get(url, params={**q, "resolution": "daily", "layout": "columns"},
                         auth=auth)  # fmt: skip
    assert r.status_code == 422 and "hourly" in r.json()["error"]


async def test_a_correction_reaches_every_resolution_and_layout(
    db_url: str,
    client: httpx.AsyncClient,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A re-settled day (an estimate replaced by the measured value, another hour edited by
    hand) is what every resolution and layout says next: the day read model follows the
    write that changed settled_reading, and agrees with the hourly objects read there."""
    s = await _setup(db_url, tmp_path)
    hours = hour_starts(DAY)
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        fid = s["fr"].id
        await write_settled(
            conn, [SettledValue(fid, "active_import", hours[4], 99.0, "backup")], actor="test"
        )
        await write_settled(
            conn, [SettledValue(fid, "active_import", hours[7], 5.0, "manual")],
            actor="test", reason="meter swap",
        )  # fmt: skip
        await conn.commit()
    url = f"/api/v1/portal/meters/{s['m1']}/consumption"
    q = {"start": DAY.isoformat(), "end": DAY.isoformat()}
    auth = (s["names"]["owner"], PASSWORD)
    objects = (await client.get(url, params={**q, "resolution": "hourly"}, auth=auth)).json()
    got = objects["values"]
    assert (got[4]["value"], got[4]["source"], got[4]["version"]) == (99.0, "backup", 2)
    assert (got[7]["value"], got[7]["source"], got[7]["version"]) == (5.0, "manual", 2)
    expected_total = sum(10.0 + i for i in range(24)) - 14.0 + 99.0 - 17.0 + 5.0
    cols = (await client.get(url, params={**q, "resolution": "hourly", "layout": "columns"},
                             auth=auth)).json()  # fmt: skip
    assert cols["values"] == [h["value"] for h in got]
    assert [cols["source_codes"][c] for c in cols["sources"]] == [h["source"] for h in got]
    r = await client.get(url, params={**q, "resolution": "daily"}, auth=auth)
    (day,) = r.json()["values"]
    assert day["value"] == pytest.approx(expected_total) and day["estimated_hours"] == 0
    assert day["by_source"] == {"backup": 2, "manual": 1, "principal": 21}
    (month,) = (await client.get(url, params={**q, "resolution": "monthly"},
                                 auth=auth)).json()["values"]  # fmt: skip
    assert month["value"] == pytest.approx(expected_total) and month["hours"] == 24
    for doc in (objects, cols):
        assert doc["totals"]["value"] == pytest.approx(expected_total)
        assert doc["totals"]["estimated_hours"] == 0
