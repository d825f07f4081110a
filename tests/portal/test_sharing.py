"""The shared-meter life through the API, as the units' own users: look up a client number,
associate, read as associated, edit and invoice refused to a non-owner (403 naming the
owner), allowed to the owner, and the change of owner an administrator's logged action."""

from __future__ import annotations

from pathlib import Path

import httpx
import psycopg

from tests.api.conftest import PASSWORD, client, make_user, pool  # noqa: F401
from tests.portal.test_api import DAY, _setup

API = "/api/v1/portal"


async def test_shared_meter_life_through_the_api(
    db_url: str,
    client: httpx.AsyncClient,  # noqa: F811
    tmp_path: Path,
) -> None:
    s = await _setup(db_url, tmp_path)
    owner = s["names"]["owner"]
    owner_code = s["owner"]["code"]
    number = s["owner"]["client_numbers"][0]["number"]
    as_ = {k: (v, PASSWORD) for k, v in s["names"].items()}

    # The stranger enters company + client number and is told it exists, by whom, which meters.
    r = await client.get(f"{API}/client-numbers", params={"company": "CHILQUINTA",
                         "number": number}, auth=as_["stranger"])  # fmt: skip
    body = r.json()
    assert r.status_code == 200 and body["exists"] is True and body["owner"] == owner_code
    assert body["meters"] == sorted([s["m1"], s["m2"]]) and "associate" in body["message"]
    r = await client.get(f"{API}/client-numbers", params={"company": "Chilquinta",
                         "number": "no-such-number"}, auth=as_["stranger"])  # fmt: skip
    assert r.json()["exists"] is False

    # It associates with one of them and reads its consumption.
    q = {"start": DAY.isoformat(), "end": DAY.isoformat()}
    url = f"{API}/meters/{s['m1']}/consumption"
    assert (await client.get(url, params=q, auth=as_["stranger"])).status_code == 403
    r = await client.post(f"{API}/associations", json={"company": "Chilquinta", "number": number,
                          "meters": [s["m1"]]}, auth=as_["stranger"])  # fmt: skip
    assert r.status_code == 200, r.text
    assert [(m["meter"], m["relation"]) for m in r.json()["meters"]] == [(s["m1"], "associated")]
    r = await client.get(url, params=q, auth=as_["stranger"])
    assert r.status_code == 200 and r.json()["totals"]["hours"] == 24

    # Editing and invoices are the owner's: 403 naming the owner.
    r = await client.patch(f"{API}/meters/{s['m1']}", json={"shared": False}, auth=as_["stranger"])
    assert r.status_code == 403
    assert r.json()["error"] == (
        f"meter {s['m1']} is owned by unit {owner_code}; only the owner edits it"
    )
    invoice = {"period_start": "2026-03-01", "period_end": "2026-03-31", "energy_kwh": 1200.5,
               "amount": 180000, "invoice_number": "F-1"}  # fmt: skip
    r = await client.post(f"{API}/meters/{s['m1']}/invoices", json=invoice, auth=as_["stranger"])
    assert r.status_code == 403 and "only the owner loads its invoices" in r.json()["error"]
    # A unit's user cannot act for another unit either.
    r = await client.patch(f"{API}/meters/{s['m1']}", json={"shared": False, "unit": owner_code},
                           auth=as_["stranger"])  # fmt: skip
    assert r.status_code == 403 and "acts for unit" in r.json()["error"]

    # The owner edits and loads the invoice; the associated unit reads it.
    r = await client.patch(f"{API}/meters/{s['m1']}", json={"smart": False}, auth=as_["owner"])
    assert r.status_code == 200 and r.json()["changed"] == {"smart": False}
    r = await client.get(f"{API}/meters", auth=as_["owner"])
    assert {m["meter"]: m["smart"] for m in r.json()["meters"]}[s["m1"]] is False
    r = await client.post(f"{API}/meters/{s['m1']}/invoices", json=invoice, auth=as_["owner"])
    assert r.status_code == 201, r.text
    r = await client.post(f"{API}/meters/{s['m1']}/invoices", json=invoice, auth=as_["owner"])
    assert r.status_code == 422 and "already has an invoice" in r.json()["error"]
    r = await client.get(f"{API}/meters/{s['m1']}/invoices", auth=as_["stranger"])
    (inv,) = r.json()["invoices"]
    assert (inv["energy_kwh"], inv["invoice_number"], inv["loaded_by"]) == (1200.5, "F-1",
                                                                            owner_code)  # fmt: skip

    # Change of owner: not for a unit's user, nor a level-1 service user; a level-2 one does
    # it, with a reason, and it is logged (its own log and the API access log).
    change = {"company": "Chilquinta", "number": number, "new_owner": s["other"]["code"],
              "reason": "the building changed hands"}  # fmt: skip
    r = await client.post(f"{API}/client-numbers/owner", json=change, auth=as_["owner"])
    assert r.status_code == 403 and "administrator" in r.json()["error"]
    reader = await make_user(db_url, 1)
    r = await client.post(f"{API}/client-numbers/owner", json=change, auth=reader)
    assert r.status_code == 403
    admin = await make_user(db_url, 2)
    r = await client.post(f"{API}/client-numbers/owner", json=change, auth=admin)
    assert r.status_code == 200, r.text
    (entry,) = r.json()["log"]
    assert (entry["old_owner"], entry["new_owner"], entry["actor"]) == (
        owner_code, s["other"]["code"], f"api:{admin[0]}")  # fmt: skip
    assert entry["reason"] == "the building changed hands"
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        cur = await conn.execute(
            "SELECT status, reason FROM api_access WHERE username = %s AND path = %s",
            (admin[0], f"{API}/client-numbers/owner"),
        )
        assert await cur.fetchall() == [(200, "the building changed hands")]
        cur = await conn.execute(
            "SELECT status FROM api_access WHERE username = %s AND path = %s",
            (owner, f"{API}/client-numbers/owner"),
        )
        assert await cur.fetchall() == [(403,)]
    # The new owner edits; the old owner now only reads.
    r = await client.patch(f"{API}/meters/{s['m1']}", json={"smart": True}, auth=as_["other"])
    assert r.status_code == 200
    r = await client.patch(f"{API}/meters/{s['m1']}", json={"smart": True}, auth=as_["owner"])
    assert r.status_code == 403 and f"owned by unit {s['other']['code']}" in r.json()["error"]
    r = await client.get(f"{API}/meters", auth=as_["owner"])
    assert {m["meter"]: m["relation"] for m in r.json()["meters"]}[s["m1"]] == "associated"


async def test_association_refusals_are_clear(
    db_url: str,
    client: httpx.AsyncClient,  # noqa: F811
    tmp_path: Path,
) -> None:
    s = await _setup(db_url, tmp_path)
    number = s["owner"]["client_numbers"][0]["number"]
    who = (s["names"]["stranger"], PASSWORD)
    post = {"company": "Chilquinta", "number": number, "meters": ["NOT-A-METER"]}
    r = await client.post(f"{API}/associations", json=post, auth=who)
    assert r.status_code == 422 and "is not a meter of client number" in r.json()["error"]
    r = await client.post(f"{API}/associations", json={**post, "number": "nope"}, auth=who)
    assert r.status_code == 404 and "does not exist" in r.json()["error"]
    own = (s["names"]["owner"], PASSWORD)
    r = await client.post(f"{API}/associations", json={**post, "meters": [s["m1"]]}, auth=own)
    assert r.status_code == 422 and "the unit's own" in r.json()["error"]
    # A level-1 service user acts for no unit; a level-2 one must say which.
    reader = await make_user(db_url, 1)
    r = await client.post(f"{API}/associations", json={**post, "meters": [s["m1"]]}, auth=reader)
    assert r.status_code == 403
    admin = await make_user(db_url, 2)
    r = await client.post(f"{API}/associations", json={**post, "meters": [s["m1"]]}, auth=admin)
    assert r.status_code == 422 and "give the unit" in r.json()["error"]
    bad = {"period_start": "2026-03-31", "period_end": "2026-03-01", "energy_kwh": 1,
           "amount": 1, "invoice_number": "F-2"}  # fmt: skip
    r = await client.post(f"{API}/meters/{s['m1']}/invoices", json=bad, auth=own)
    assert r.status_code == 422 and "ends before it starts" in r.json()["error"]
    r = await client.post(f"{API}/meters/{s['m1']}/invoices", json={**bad, "energy_kwh": -1},
                          auth=own)  # fmt: skip
    assert r.status_code == 422


async def test_control_characters_in_a_write_are_refused_not_a_server_error(
    db_url: str,
    client: httpx.AsyncClient,  # noqa: F811
    tmp_path: Path,
) -> None:
    s = await _setup(db_url, tmp_path)
    who = (s["names"]["stranger"], PASSWORD)
    r = await client.post(f"{API}/associations", json={"company": "Chil\x00quinta",
                          "number": "1", "meters": ["M"]}, auth=who)  # fmt: skip
    assert r.status_code == 422
    admin = await make_user(db_url, 2)
    r = await client.patch(f"{API}/meters/{s['m1']}", json={"smart": True, "unit": "U\x00"},
                           auth=admin)  # fmt: skip
    assert r.status_code == 422
