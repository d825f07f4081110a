"""The hoja de vida over HTTP: read (level 1), export as PDF, add, correct and void entries
(level 2; a correction or void is a new entry referencing the original, which stays).

Writes are recorded as ``api:<user>`` in the entry and in the access log, like every other
level-2 change of the API.
"""

from __future__ import annotations

import datetime as dt
import json
from datetime import date
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict

from cgm import hoja_de_vida as hv
from cgm.api.app import JSON, Reader, Writer, _frontier_id, _pool, _record_access
from cgm.api.guard import API
from cgm.security import users

router = APIRouter(prefix=API)
Section = Literal["equipment", "seal", "calibration", "verification", "maintenance",
                  "cable_error", "adjustment_factor", "note"]  # fmt: skip


class CorrectionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str
    date: dt.date | None = None
    data: dict[str, Any] | None = None


class EntryBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    date: date
    data: dict[str, Any]


async def _record(request: Request, code: str, user: users.User) -> dict[str, Any]:
    async with _pool(request).connection() as conn:
        await _frontier_id(conn, code, user)  # 404 outside a scoped user's frontiers
        try:
            return await hv.record(conn, code)
        except hv.EntryError as exc:
            raise HTTPException(404, str(exc)) from None


@router.get("/frontiers/{code}/hoja-de-vida", summary="The frontier's hoja de vida (JSON)")
async def read(code: str, request: Request, user: Reader) -> Response:
    rec = await _record(request, code, user)
    return Response(json.dumps(rec, ensure_ascii=False, default=str), media_type=JSON)


@router.get("/frontiers/{code}/hoja-de-vida.pdf", summary="The frontier's hoja de vida (PDF)")
async def pdf(code: str, request: Request, user: Reader) -> Response:
    from cgm.hoja_pdf import render

    return Response(render(await _record(request, code, user)), media_type="application/pdf")


@router.post("/frontiers/{code}/hoja-de-vida/{section}",
             summary="Add a dated entry to the hoja de vida (level 2)")  # fmt: skip
async def add(
    code: str, section: Section, body: EntryBody, request: Request, user: Writer
) -> dict[str, Any]:
    request.state.frontier = code
    actor = f"api:{user.username}"
    async with _pool(request).connection() as conn, conn.transaction():
        await _frontier_id(conn, code, user)  # 404 outside a scoped user's frontiers
        try:
            eid = await hv.add_entry(conn, frontier=code, section=section,
                                     entry_date=body.date, data=body.data, actor=actor)  # fmt: skip
        except hv.EntryError as exc:
            status = 404 if str(exc).startswith("unknown frontier") else 422
            raise HTTPException(status, str(exc)) from None
        await _record_access(conn, request.scope, 200, {"section": section, "entry": eid})
    request.state.access_logged = True
    return {"frontier": code, "section": section, "entry": eid, "actor": actor}


@router.post("/frontiers/{code}/hoja-de-vida/entries/{entry}/{action}",
             summary="Correct or void an entry by a new one that references it (level 2)")
async def correct(
    code: str, entry: int, action: Literal["correct", "void"], body: CorrectionBody,
    request: Request, user: Writer,
) -> dict[str, Any]:  # fmt: skip
    request.state.frontier = code
    request.state.reason = body.reason
    actor = f"api:{user.username}"
    async with _pool(request).connection() as conn, conn.transaction():
        await _frontier_id(conn, code, user)  # 404 outside a scoped user's frontiers
        try:
            eid = await hv.correct_entry(
                conn, frontier=code, entry_id=entry, action=action, reason=body.reason,
                actor=actor, data=body.data, entry_date=body.date,
            )  # fmt: skip
        except hv.EntryError as exc:
            status = 404 if str(exc).startswith("unknown entry") else 422
            raise HTTPException(status, str(exc)) from None
        await _record_access(conn, request.scope, 200,
                             {"entry": eid, "corrects": entry, "action": action})  # fmt: skip
    request.state.access_logged = True
    return {"frontier": code, "entry": eid, "corrects": entry, "action": action,
            "actor": actor}  # fmt: skip
