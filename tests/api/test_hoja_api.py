"""The hoja de vida over HTTP: level 1 reads, level 2 adds, bad entries refused, PDF served."""

from __future__ import annotations

import io

import httpx
from pypdf import PdfReader

from .conftest import make_frontier, make_user
from .test_api import _rows


async def test_hoja_de_vida_api(client: httpx.AsyncClient, db_url: str) -> None:
    fr = await make_frontier(db_url)
    reader, rpw = await make_user(db_url, 1)
    writer, wpw = await make_user(db_url, 2)
    url = f"/api/v1/frontiers/{fr.code}/hoja-de-vida"
    seal = {"date": "2026-01-10", "data": {"location": "meter cover", "serial": "S-9",
                                           "action": "installed", "by": "J. Pérez"}}  # fmt: skip
    r = await client.post(f"{url}/seal", json=seal, auth=(reader, rpw))
    assert r.status_code == 403
    r = await client.post(f"{url}/seal", json=seal, auth=(writer, wpw))
    assert r.status_code == 200, r.text
    assert r.json()["actor"] == f"api:{writer}"
    bad = b'{"date": "2026-01-10", "data": {"length_m": 1e400, "section_mm2": 2.5, "burden_va": 2}}'
    r = await client.post(f"{url}/cable_error", content=bad, auth=(writer, wpw),
                          headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 422  # infinity is not a length
    r = await client.post(f"{url}/seal", json={"date": "2026-01-10", "data": {"x": 1}},
                          auth=(writer, wpw))  # fmt: skip
    assert r.status_code == 422 and "seal" in r.text
    r = await client.post("/api/v1/frontiers/Frt1234567890/hoja-de-vida/note",
                          json={"date": "2026-01-10", "data": {"text": "x"}},
                          auth=(writer, wpw))  # fmt: skip
    assert r.status_code == 404
    assert await _rows(db_url, "SELECT section, actor FROM hoja_entry e JOIN frontier f "
                       "ON f.id = e.frontier_id WHERE f.code = %s", fr.code) == [
        ("seal", f"api:{writer}")]  # fmt: skip
    r = await client.get(url, auth=(reader, rpw))
    assert r.status_code == 200 and r.json()["seal"][0]["by"] == "J. Pérez"
    r = await client.get(f"{url}.pdf", auth=(reader, rpw))
    assert r.headers["content-type"] == "application/pdf"
    assert "S-9" in PdfReader(io.BytesIO(r.content)).pages[0].extract_text()


async def test_hoja_entries_corrected_and_voided_by_new_entries(
    client: httpx.AsyncClient, db_url: str
) -> None:
    """Level 2 corrects or voids an entry with a new one that references it; the original
    stays (and cannot be changed in the database); JSON and PDF show both."""
    import psycopg

    fr = await make_frontier(db_url)
    reader, rpw = await make_user(db_url, 1)
    writer, wpw = await make_user(db_url, 2)
    url = f"/api/v1/frontiers/{fr.code}/hoja-de-vida"
    seal = {"location": "meter cover", "serial": "S-1", "action": "installed", "by": "Ana"}
    r = await client.post(f"{url}/seal", json={"date": "2026-01-10", "data": seal},
                          auth=(writer, wpw))  # fmt: skip
    first = r.json()["entry"]
    r = await client.post(f"{url}/note", json={"date": "2026-01-11", "data": {"text": "dup"}},
                          auth=(writer, wpw))  # fmt: skip
    note = r.json()["entry"]
    fixed = {**seal, "serial": "S-7"}
    body = {"reason": "serial misread", "data": fixed}
    r = await client.post(f"{url}/entries/{first}/correct", json=body, auth=(reader, rpw))
    assert r.status_code == 403
    r = await client.post(f"{url}/entries/{first}/correct", json=body, auth=(writer, wpw))
    assert r.status_code == 200, r.text
    fix = r.json()["entry"]
    r = await client.post(f"{url}/entries/{first}/correct", json=body, auth=(writer, wpw))
    assert r.status_code == 422 and f"correct {fix} instead" in r.json()["error"]
    r = await client.post(f"{url}/entries/{fix}/correct",
                          json={"reason": "x", "data": {"serial": 5}}, auth=(writer, wpw))
    assert r.status_code == 422  # validated like any entry of its section
    r = await client.post(f"{url}/entries/{note}/void", json={"reason": "duplicate"},
                          auth=(writer, wpw))  # fmt: skip
    assert r.status_code == 200, r.text
    other = await make_frontier(db_url)
    r = await client.post(f"/api/v1/frontiers/{other.code}/hoja-de-vida/entries/{note}/void",
                          json={"reason": "x"}, auth=(writer, wpw))  # fmt: skip
    assert r.status_code == 404  # the entry belongs to another frontier

    rec = (await client.get(url, auth=(reader, rpw))).json()
    assert [(e["serial"], e["entry_status"]) for e in rec["seal"]] == [
        ("S-1", "corrected"), ("S-7", "current")]  # fmt: skip
    assert rec["seal"][1]["corrects"] == first and rec["seal"][1]["reason"] == "serial misread"
    assert rec["seal"][1]["recorded_by"] == f"api:{writer}"
    assert [e["entry_status"] for e in rec["note"]] == ["voided", "void"]
    text = "".join(p.extract_text() for p in PdfReader(
        io.BytesIO((await client.get(f"{url}.pdf", auth=(reader, rpw))).content)).pages)
    assert "S-1" in text and "S-7" in text and "corrected" in text and "serial misread" in text
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as c:
        for sql in ("UPDATE hoja_entry SET data = '{}' WHERE id = %s",
                    "DELETE FROM hoja_entry WHERE id = %s"):  # fmt: skip
            try:
                await c.execute(sql, (first,))
                raise AssertionError("the original entry was changed")
            except psycopg.errors.RaiseException as exc:
                assert "add-only" in str(exc)
    assert await _rows(db_url, "SELECT count(*) FROM api_access WHERE username = %s "
                       "AND path LIKE %s", writer, "%/entries/%") == [(5,)]  # fmt: skip
