"""Creating through the API: a unit creates a client number with its meters and owns them;
another unit entering the same company and number is told that it exists (409, by whom,
which meters) and associates instead; bad input is a clear 4xx and stores nothing;
administrators create units. Every write lands in ``api_access``."""

from __future__ import annotations

from pathlib import Path

import httpx
import psycopg

from tests.api.conftest import PASSWORD, client, make_user, pool  # noqa: F401
from tests.portal.conftest import tag, unit
from tests.portal.test_api import DAY, _setup

API = "/api/v1/portal"


def _new(number: str, *meters: str, **over: object) -> dict:
    body = {
        "company": "Chilquinta",
        "number": number,
        "tariff_type": "BT-1",
        "connected_power_kw": 15,
        "meters": [{"number": m, "smart": True, "shared": True, "invoice_access": True}
                   for m in meters],
    }  # fmt: skip
    body.update(over)
    return body


async def test_create_then_exists_then_associate(
    db_url: str,
    client: httpx.AsyncClient,  # noqa: F811
    tmp_path: Path,
) -> None:
    s = await _setup(db_url, tmp_path)
    as_ = {k: (v, PASSWORD) for k, v in s["names"].items()}
    number, ma, mb = tag(), f"M{tag()}", f"M{tag()}"

    # The stranger unit creates it: it owns the client number and both meters.
    r = await client.post(f"{API}/client-numbers", json=_new(number, ma, mb),
                          auth=as_["stranger"])  # fmt: skip
    assert r.status_code == 201, r.text
    assert r.json()["meters"] == sorted([ma, mb])
    r = await client.get(f"{API}/meters", auth=as_["stranger"])
    assert {m["meter"]: m["relation"] for m in r.json()["meters"]} == {
        ma: "owner", mb: "owner"}  # fmt: skip
    r = await client.get(f"{API}/client-numbers", params={"company": "Chilquinta",
                         "number": number}, auth=as_["other"])  # fmt: skip
    assert r.json()["exists"] is True and r.json()["owner"] == s["stranger"]["code"]

    # Another unit entering the same company (any case) and number: told that it exists, by
    # whom and with which meters, and where to associate; nothing changes.
    r = await client.post(f"{API}/client-numbers", json=_new(number, f"M{tag()}",
                          company="CHILQUINTA"), auth=as_["other"])  # fmt: skip
    assert r.status_code == 409
    body = r.json()
    assert body["exists"] is True and body["owner"] == s["stranger"]["code"]
    assert body["meters"] == sorted([ma, mb]) and body["associate"] == f"{API}/associations"
    assert "associate with its meters instead" in body["error"]
    r = await client.post(f"{API}/associations", json={"company": "Chilquinta",
                          "number": number, "meters": [mb]}, auth=as_["other"])  # fmt: skip
    assert r.status_code == 200
    r = await client.get(f"{API}/meters", auth=as_["other"])
    assert {m["meter"]: m["relation"] for m in r.json()["meters"]}[mb] == "associated"
    # The owner unit itself creating it again: it exists (its own).
    r = await client.post(f"{API}/client-numbers", json=_new(number, f"M{tag()}"),
                          auth=as_["stranger"])  # fmt: skip
    assert r.status_code == 409 and r.json()["owner"] == s["stranger"]["code"]

    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        cur = await conn.execute(
            "SELECT status FROM api_access WHERE username = %s AND path = %s ORDER BY id",
            (s["names"]["other"], f"{API}/client-numbers"),
        )
        assert await cur.fetchall() == [(409,)]
        cur = await conn.execute(
            """SELECT c.owner_unit_id = u.id FROM portal_client_number c, portal_unit u
               WHERE c.number = %s AND u.code = %s""",
            (number, s["stranger"]["code"]),
        )
        assert await cur.fetchall() == [(True,)]


async def test_create_refusals_are_clear_and_store_nothing(
    db_url: str,
    client: httpx.AsyncClient,  # noqa: F811
    tmp_path: Path,
) -> None:
    s = await _setup(db_url, tmp_path)
    who = (s["names"]["stranger"], PASSWORD)
    number = tag()

    async def refused(body: dict, status: int, text: str, auth: tuple = who) -> None:
        r = await client.post(f"{API}/client-numbers", json=body, auth=auth)
        assert r.status_code == status, r.text
        assert text in r.text, r.text

    taken = s["m1"]  # a meter of the owner unit's client number
    await refused(_new(number, f"M{tag()}", taken), 409, f"duplicate meter number {taken}")
    m = f"M{tag()}"
    await refused(_new(number, m, m), 422, f"duplicate meter number {m}: given twice")
    await refused(_new(number, f"M{tag()}", connected_power_kw=-5), 422,
                  "greater than or equal to 0")  # fmt: skip
    diesel = _new(number, f"M{tag()}")
    diesel["meters"][0]["source"] = "diesel"
    await refused(diesel, 422, "energy source 'diesel' cannot have meters")
    gas = _new(number, f"M{tag()}")
    gas["meters"][0]["source"] = "natural_gas"
    await refused(gas, 422, "natural_gas, which is not switched on for unit")
    await refused(_new(number), 422, "meters")  # no meter
    await refused({**_new(number, f"M{tag()}"), "colour": "red"}, 422, "colour")
    await refused(_new(number, f"M{tag()}", tariff_type=""), 422, "tariff_type")
    await refused(_new(number, "M\x00X"), 422, "control characters")
    linked = _new(number, f"M{tag()}")
    linked["meters"][0]["cgm"] = {"frontier": s["fr"].code}
    await refused(linked, 403, "administrator")  # a unit's user linking a frontier
    # Service users: level 1 cannot act for a unit; level 2 must name it.
    await refused(_new(number, f"M{tag()}"), 403, "level-2", await make_user(db_url, 1))
    admin = await make_user(db_url, 2)
    await refused(_new(number, f"M{tag()}"), 422, "give the unit", admin)
    await refused(_new(number, f"M{tag()}", unit="NO-SUCH-UNIT"), 404, "unknown unit", admin)
    # Nothing of the above was stored.
    r = await client.get(f"{API}/client-numbers", params={"company": "Chilquinta",
                         "number": number}, auth=who)  # fmt: skip
    assert r.json()["exists"] is False
    # An administrator creates it for the unit, linked to the CGM meter; the unit reads it.
    linked["unit"] = s["stranger"]["code"]
    r = await client.post(f"{API}/client-numbers", json=linked, auth=admin)
    assert r.status_code == 201, r.text
    r = await client.get(f"{API}/meters/{linked['meters'][0]['number']}/consumption",
                         params={"start": DAY.isoformat(), "end": DAY.isoformat()},
                         auth=who)  # fmt: skip
    assert r.status_code == 200 and r.json()["totals"]["hours"] == 24


async def test_administrator_creates_units_with_clear_refusals(
    db_url: str,
    client: httpx.AsyncClient,  # noqa: F811
    tmp_path: Path,
) -> None:
    s = await _setup(db_url, tmp_path)
    admin = await make_user(db_url, 2)
    new = unit()

    async def refused(body: dict, status: int, text: str, auth: tuple = admin) -> None:
        r = await client.post(f"{API}/units", json=body, auth=auth)
        assert r.status_code == status, r.text
        assert text in r.text, r.text

    await refused(unit(building={**new["building"], "region": "Atlántida"}), 422,
                  "unknown region 'Atlántida'")  # fmt: skip
    await refused(unit(surface_m2=-10), 422, "surface_m2")
    await refused(unit(roll_numbers=["12A-4"]), 422, "malformed roll number '12A-4'")
    await refused(unit(energy_sources={"electricity": True, "diesel": True}), 422,
                  "energy source 'diesel' is not one of electricity, natural_gas, lpg")  # fmt: skip
    await refused(new, 403, "administrator", (s["names"]["owner"], PASSWORD))
    await refused(new, 403, "administrator", await make_user(db_url, 1))
    r = await client.post(f"{API}/units", json=new, auth=admin)
    assert r.status_code == 201, r.text
    await refused(new, 409, f"unit {new['code']} exists already")
    # A unit declaring another unit's client number is told that it exists; nothing stored.
    clash = unit(client_numbers=[{**s["owner"]["client_numbers"][0], "meters": []}])
    await refused(clash, 409, "already exists")
    r = await client.get(f"{API}/page", params={"unit": clash["code"]}, auth=admin)
    assert r.status_code == 404


async def test_two_units_creating_one_client_number_at_once(
    db_url: str,
    client: httpx.AsyncClient,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Both enter the same pair at the same moment: one owns it, the other is told that it
    exists (by whom), never a 500 and never two owners."""
    import asyncio

    s = await _setup(db_url, tmp_path)
    for _ in range(3):
        number = tag()
        answers = await asyncio.gather(*(
            client.post(f"{API}/client-numbers", json=_new(number, f"M{tag()}"),
                        auth=(s["names"][who], PASSWORD))
            for who in ("stranger", "other")
        ))  # fmt: skip
        assert sorted(r.status_code for r in answers) == [201, 409], [r.text for r in answers]
        winner = next(r for r in answers if r.status_code == 201).json()["unit"]
        assert next(r for r in answers if r.status_code == 409).json()["owner"] == winner
