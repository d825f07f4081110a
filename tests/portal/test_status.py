"""Status report: who reports, who does not and whether it is justified, totals, and the
indicator set derived from exclusive meters only; over the API for service users only."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import httpx
import psycopg

from cgm.localtime import hour_starts
from cgm.portal import loader, store
from cgm.portal.access import add_unit_user
from cgm.portal.status import status_report
from cgm.storage import write_settled
from cgm.storage.settled import SettledValue
from tests.api.conftest import PASSWORD, client, make_frontier, make_user, pool  # noqa: F401
from tests.portal.conftest import tag, unit, write

DAY = date(2027, 5, 3)


def _meter(number: str, frontier: str, shared: bool) -> dict:
    return {
        "number": number,
        "smart": True,
        "shared": shared,
        "invoice_access": True,
        "cgm": {"frontier": frontier, "channel": "active_import"},
    }


async def test_status_report(
    db_url: str,
    conn: psycopg.AsyncConnection,
    client: httpx.AsyncClient,  # noqa: F811
    tmp_path: Path,
) -> None:
    before = (await status_report(conn, DAY, DAY))["totals"]
    f1, f2, f3 = [await make_frontier(db_url) for _ in range(3)]

    def cn(m: dict) -> list[dict]:
        return [{"company": "CGE", "number": tag(), "tariff_type": "BT-2", "meters": [m]}]

    mb = f"M{tag()}"
    a = unit(client_numbers=cn(_meter(f"M{tag()}", f1.code, False)))
    b = unit(client_numbers=[{"company": "CGE", "number": (nb := tag()), "tariff_type": "BT-2",
                              "meters": [_meter(mb, f2.code, True)]}])  # fmt: skip
    c = unit(associate=[{"company": "CGE", "number": nb, "meters": [mb]}])
    d = unit(non_reporting_justification="building closed for repairs")
    e = unit(client_numbers=cn(_meter(f"M{tag()}", f3.code, False)))
    await store.import_inventory(
        conn, loader.load(write(tmp_path / "s.yaml", [a, b, c, d, e])), "t"
    )
    rows = [
        SettledValue(f.id, "active_import", t, 3.0, "principal")
        for f in (f1, f2)
        for t in hour_starts(DAY)
    ]
    await write_settled(conn, rows, actor="test")
    await conn.commit()

    r = await status_report(conn, DAY, DAY)
    t = r["totals"]
    assert t["units_loaded"] - before["units_loaded"] == 5
    assert t["units_reporting"] - before["units_reporting"] == 3
    assert t["not_reporting_justified"] - before["not_reporting_justified"] == 1
    assert t["not_reporting_unjustified"] - before["not_reporting_unjustified"] == 1
    mine = {n["unit"]: n for n in r["not_reporting"]}
    assert mine[d["code"]]["justified"] is True
    assert mine[d["code"]]["will_report"] == "no, building closed for repairs"
    assert mine[e["code"]]["justified"] is False
    assert a["code"] not in mine and b["code"] not in mine and c["code"] not in mine
    ours = {u["code"] for u in (a, b, c, d, e)}
    assert set(r["indicator_set"]) & ours == {a["code"]}

    # Over the API: service users read it, a unit's user does not.
    name, pw = await make_user(db_url, 1)
    q = {"start": DAY.isoformat(), "end": DAY.isoformat()}
    resp = await client.get("/api/v1/portal/status", params=q, auth=(name, pw))
    assert resp.status_code == 200 and a["code"] in resp.json()["indicator_set"]
    uname = f"unit{tag()}"
    await add_unit_user(conn, uname, PASSWORD, a["code"], "t")
    await conn.commit()
    resp = await client.get("/api/v1/portal/status", params=q, auth=(uname, PASSWORD))
    assert resp.status_code == 403
