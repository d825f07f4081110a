"""Portal inventory: bad input refused at file:line, all or nothing, and the whole life of a
shared meter (create, associate, read, edit refused, edit by owner, change of owner)."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from cgm.portal import loader, store
from cgm.registry.loader import InventoryError
from tests.portal.conftest import client, tag, unit, write


def _errors(path: Path) -> str:
    with pytest.raises(InventoryError) as exc:
        loader.load(path)
    return str(exc.value)


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, t in enumerate(path.read_text().splitlines(), 1) if needle in t)


def test_unknown_region(tmp_path: Path) -> None:
    u = unit()
    u["building"]["region"] = "Cundinamarca"
    p = write(tmp_path / "u.yaml", [u])
    err = _errors(p)
    assert f"u.yaml:{_line_of(p, 'Cundinamarca')}:" in err
    assert "unknown region 'Cundinamarca'" in err


def test_negative_surface(tmp_path: Path) -> None:
    p = write(tmp_path / "u.yaml", [unit(), unit(surface_m2=-10)])
    err = _errors(p)
    assert f"u.yaml:{_line_of(p, '-10')}: units[1].surface_m2: " in err
    assert "greater than 0" in err


def test_malformed_roll_number(tmp_path: Path) -> None:
    p = write(tmp_path / "u.yaml", [unit(roll_numbers=["12A45"])])
    err = _errors(p)
    assert "malformed roll number '12A45'" in err and "u.yaml:" in err


def test_roll_numbers_or_a_justification(tmp_path: Path) -> None:
    p = write(tmp_path / "u.yaml", [unit(roll_numbers=[])])
    assert "roll_justification" in _errors(p)
    ok = write(tmp_path / "ok.yaml", [unit(roll_numbers=[], roll_justification="fiscal land")])
    assert loader.load(ok).units[0].roll_justification == "fiscal land"


def test_fourth_energy_source(tmp_path: Path) -> None:
    sources = {"electricity": True, "natural_gas": True, "lpg": False, "diesel": True}
    p = write(tmp_path / "u.yaml", [unit(energy_sources=sources)])
    err = _errors(p)
    assert "energy source 'diesel' is not one of electricity, natural_gas, lpg" in err


def test_duplicate_meter_number_in_file(tmp_path: Path) -> None:
    m = f"M{tag()}"
    p = write(tmp_path / "u.yaml", [unit(client_numbers=[client(meters=[m, m])])])
    err = _errors(p)
    first = _line_of(p, f"number: {m}")
    assert f"duplicate meter number (also at line {first})" in err


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    bad = unit(surface_m2=-1, roll_numbers=["x"])
    bad["building"]["region"] = "Nowhere"
    err = _errors(write(tmp_path / "u.yaml", [bad]))
    assert "surface_m2" in err and "roll number" in err and "unknown region" in err


def test_client_number_kept_as_written(tmp_path: Path) -> None:
    p = tmp_path / "u.yaml"
    write(p, [unit(client_numbers=[client(number="X")])])
    p.write_text(p.read_text().replace("number: X", "number: 00123"))
    assert loader.load(p).units[0].client_numbers[0].number == "00123"


async def _count(conn: psycopg.AsyncConnection, code: str) -> int:
    cur = await conn.execute("SELECT count(*) FROM portal_unit WHERE code = %s", (code,))
    return (await cur.fetchone())[0]


async def test_import_is_all_or_nothing(conn: psycopg.AsyncConnection, tmp_path: Path) -> None:
    m = f"M{tag()}"
    first = unit(client_numbers=[client(meters=[m])])
    await store.import_inventory(conn, loader.load(write(tmp_path / "a.yaml", [first])), "t")
    # A second file: a good unit, and one reusing the meter number under another client.
    good, dup = unit(), unit(client_numbers=[client(meters=[m])])
    p = write(tmp_path / "b.yaml", [good, dup])
    with pytest.raises(InventoryError) as exc:
        await store.import_inventory(conn, loader.load(p), "t")
    assert f"duplicate meter number {m}" in str(exc.value)
    assert f"b.yaml:{_line_of(p, dup['code'])}: {dup['code']}" in str(exc.value)
    assert await _count(conn, good["code"]) == 0
    assert await _count(conn, first["code"]) == 1


async def test_one_address_is_one_building(conn: psycopg.AsyncConnection, tmp_path: Path) -> None:
    a, b = unit(), unit()
    b["building"] = dict(a["building"], street=a["building"]["street"].upper())
    res = await store.import_inventory(conn, loader.load(write(tmp_path / "a.yaml", [a, b])), "t")
    assert res.buildings == 1
    cur = await conn.execute(
        "SELECT count(DISTINCT building_id) FROM portal_unit WHERE code = ANY(%s)",
        ([a["code"], b["code"]],),
    )
    assert (await cur.fetchone())[0] == 1


async def test_shared_meter_life(conn: psycopg.AsyncConnection, tmp_path: Path) -> None:
    number, m1, m2 = tag(), f"M{tag()}", f"M{tag()}"
    owner = unit(client_numbers=[client(number=number, meters=[m1, m2])])
    await store.import_inventory(conn, loader.load(write(tmp_path / "o.yaml", [owner])), "t")

    # Another unit entering the same company and client number is told it exists.
    other = unit(client_numbers=[client(number=number, meters=[m1])])
    with pytest.raises(InventoryError) as exc:
        await store.import_inventory(conn, loader.load(write(tmp_path / "x.yaml", [other])), "t")
    assert f"client number Chilquinta {number} already exists (owner unit {owner['code']}" in str(
        exc.value
    )
    assert m1 in str(exc.value) and m2 in str(exc.value)

    # It associates with one of the meters instead, and reads it.
    other = unit(associate=[{"company": "chilquinta", "number": number, "meters": [m1]}])
    await store.import_inventory(conn, loader.load(write(tmp_path / "y.yaml", [other])), "t")
    seen = await store.unit_meters(conn, other["code"])
    assert [(s["meter"], s["relation"], s["owner"]) for s in seen] == [
        (m1, "associated", owner["code"])
    ]
    cur = await conn.execute("SELECT id FROM portal_unit WHERE code = %s", (other["code"],))
    other_id = (await cur.fetchone())[0]
    assert await store.may_read(conn, other_id, m1)
    assert not await store.may_read(conn, other_id, m2)

    # Only the owner edits.
    with pytest.raises(store.NotOwner, match=f"owned by unit {owner['code']}"):
        await store.edit_meter(conn, other["code"], m1, {"smart": False}, "t")
    await store.edit_meter(conn, owner["code"], m1, {"smart": False}, "t")
    cur = await conn.execute("SELECT smart FROM portal_meter WHERE number = %s", (m1,))
    assert (await cur.fetchone())[0] is False

    # Change of owner: administrators only, logged; the old owner keeps reading.
    with pytest.raises(store.NotOwner):
        await store.change_owner(
            conn, "Chilquinta", number, other["code"], actor="u1", level=1, reason="x"
        )
    await store.change_owner(
        conn, "Chilquinta", number, other["code"], actor="admin", level=2, reason="moved"
    )
    cur = await conn.execute(
        """SELECT o.actor, o.reason, a.code, b.code FROM portal_owner_change o
           JOIN portal_unit a ON a.id = o.old_unit_id JOIN portal_unit b ON b.id = o.new_unit_id
           JOIN portal_client_number c ON c.id = o.client_number_id WHERE c.number = %s""",
        (number,),
    )
    assert await cur.fetchall() == [("admin", "moved", owner["code"], other["code"])]
    rel = {s["meter"]: s["relation"] for s in await store.unit_meters(conn, other["code"])}
    assert rel == {m1: "owner", m2: "owner"}
    rel = {s["meter"]: s["relation"] for s in await store.unit_meters(conn, owner["code"])}
    assert rel == {m1: "associated", m2: "associated"}
    with pytest.raises(store.NotOwner):
        await store.edit_meter(conn, owner["code"], m2, {"shared": False}, "t")
    await conn.commit()


async def test_link_to_unknown_frontier(conn: psycopg.AsyncConnection, tmp_path: Path) -> None:
    c = client()
    c["meters"][0]["cgm"] = {"frontier": "FrtNOPE", "channel": "active_import"}
    p = write(tmp_path / "u.yaml", [unit(client_numbers=[c])])
    with pytest.raises(InventoryError, match="unknown CGM frontier FrtNOPE"):
        await store.import_inventory(conn, loader.load(p), "t")
