"""Failures and thefts over HTTP (art. 36, Table 5): read with level 1, scoped to the user's
frontiers; open and close with level 2, each write logged in ``api_access`` in the same
transaction and in the frontier's hoja de vida (``cgm.failures`` writes the log entry)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from cgm import failures
from cgm.api.app import Instant, Reader, Writer, _frontier_id, _json, _pool, _record_access, _scope
from cgm.api.guard import API

router = APIRouter(prefix=API)


class OpenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    element: Literal["principal", "backup", "ct", "vt", "communication"]
    kind: Literal["failure", "theft"] = "failure"
    started_at: Instant
    description: str = Field(min_length=1, max_length=2000)


class CloseBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ended_at: Instant
    note: str = Field(min_length=1, max_length=2000)


_EVENT_COLS = ("id", "frontier", "element", "kind", "started_at", "ended_at", "description",
               "opened_by", "closed_by", "close_note")  # fmt: skip


async def _events(conn: Any, scope: list[int] | None, code: str | None, open_only: bool) -> list:
    cur = await conn.execute(
        """SELECT e.id, f.code, e.element, e.kind, e.started_at, e.ended_at, e.description,
                  e.opened_by, e.closed_by, e.close_note
           FROM failure_event e JOIN frontier f ON f.id = e.frontier_id
           WHERE (%(scope)s::bigint[] IS NULL OR f.id = ANY(%(scope)s))
             AND (%(code)s::text IS NULL OR f.code = %(code)s)
             AND (NOT %(open)s OR e.ended_at IS NULL)
           ORDER BY e.started_at DESC, e.id DESC LIMIT 10000""",
        {"scope": scope, "code": code, "open": open_only},
    )
    return [dict(zip(_EVENT_COLS, r, strict=True)) for r in await cur.fetchall()]


@router.get("/failures", summary="Failure and theft events, newest first (scoped)")
async def list_events(
    request: Request,
    user: Reader,
    frontier: Annotated[str | None, Query(max_length=40)] = None,
    open_only: Annotated[bool, Query(alias="open")] = False,
) -> Response:
    async with _pool(request).connection() as conn:
        if frontier is not None:
            await _frontier_id(conn, frontier, user)  # 404 outside the scope
        return _json(await _events(conn, await _scope(conn, user), frontier, open_only))


@router.get("/failures/table5", summary="Table 5 count per frontier over the last 12 months")
async def table5(
    request: Request, user: Reader, frontier: Annotated[list[str] | None, Query()] = None
) -> Response:
    async with _pool(request).connection() as conn:
        scope = await _scope(conn, user)
        codes = frontier
        if scope is not None:
            cur = await conn.execute("SELECT code FROM frontier WHERE id = ANY(%s)", (scope,))
            visible = {r[0] for r in await cur.fetchall()}
            if frontier and set(frontier) - visible:
                raise HTTPException(404, "unknown frontier")  # the same answer as unknown
            codes = frontier or sorted(visible)
            if not codes:
                return _json({})  # an empty list would mean "every frontier" below
        counts = await failures.fleet_counts(conn, datetime.now(UTC), frontiers=codes)
    missing = set(frontier or ()) - set(counts)
    if missing:
        raise HTTPException(404, f"unknown frontier {', '.join(sorted(missing))}")
    return _json({code: c.as_dict() for code, c in sorted(counts.items())})


async def _event_frontier(conn: Any, event: int, user: Any) -> str:
    """The code of the event's frontier; 404 when unknown or outside the user's scope."""
    cur = await conn.execute(
        "SELECT f.code FROM failure_event e JOIN frontier f ON f.id = e.frontier_id "
        "WHERE e.id = %s", (event,),
    )  # fmt: skip
    row = await cur.fetchone()
    if row is None:
        raise HTTPException(404, f"no failure event {event}")
    try:
        await _frontier_id(conn, row[0], user)
    except HTTPException:
        raise HTTPException(404, f"no failure event {event}") from None
    return row[0]


@router.get("/failures/{event}/notice", summary="The event's notice for the ASIC (JSON)")
async def notice(event: int, request: Request, user: Reader) -> Response:
    settings = request.app.state.settings
    async with _pool(request).connection() as conn:
        await _event_frontier(conn, event, user)
        body = await failures.notice(conn, event, cgm_code=settings.cgm_code if settings
                                     else "CGM0000", now=datetime.now(UTC))  # fmt: skip
    return _json(body)


@router.post("/frontiers/{code}/failures", summary="Open a failure or theft event (level 2)")
async def open_event(code: str, body: OpenBody, request: Request, user: Writer) -> dict[str, Any]:
    request.state.frontier = code
    request.state.reason = body.description
    actor = f"api:{user.username}"
    async with _pool(request).connection() as conn, conn.transaction():
        await _frontier_id(conn, code, user)  # 404 outside a scoped user's frontiers
        eid, count = await failures.open_event(
            conn, frontier=code, element=body.element, kind=body.kind,
            started_at=body.started_at, description=body.description, actor=actor,
        )  # fmt: skip
        await _record_access(conn, request.scope, 200, {"event": eid, "element": body.element,
                                                        "kind": body.kind})  # fmt: skip
    request.state.access_logged = True
    return {"frontier": code, "event": eid, "actor": actor, "table5": count.as_dict()}


@router.post("/failures/{event}/close", summary="Close a failure or theft event (level 2)")
async def close_event(event: int, body: CloseBody, request: Request, user: Writer) -> dict:
    request.state.reason = body.note
    actor = f"api:{user.username}"
    async with _pool(request).connection() as conn, conn.transaction():
        code = await _event_frontier(conn, event, user)
        request.state.frontier = code
        try:
            await failures.close_event(conn, event, ended_at=body.ended_at, note=body.note,
                                       actor=actor)  # fmt: skip
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        await _record_access(conn, request.scope, 200, {"event": event})
    request.state.access_logged = True
    return {"frontier": code, "event": event, "actor": actor, "closed_at": body.ended_at}
