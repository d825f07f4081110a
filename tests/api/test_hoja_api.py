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
