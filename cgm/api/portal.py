"""The portal's pull API: the meters a unit may read and their consumption.

A unit's token is an ordinary level-1 user tied to one unit (``portal_unit_user``); it sees
only the meters its unit owns or is associated with, anything else is a clear 403, and it
is refused outside ``/api/v1/portal`` (``refuse_outside_portal``). A service user (not tied
to a unit) reads every meter.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response

from cgm.api.app import FIRST_DAY, LAST_DAY, Reader
from cgm.api.guard import API
from cgm.portal import store
from cgm.portal.access import unit_of
from cgm.portal.consumption import MAX_DAYS, Resolution, consumption_json, find_meter
from cgm.portal.status import status_report
from cgm.security import users

PREFIX = f"{API}/portal"
router = APIRouter(prefix=PREFIX, tags=["portal"])
Day = Annotated[date, Query(ge=FIRST_DAY, le=LAST_DAY, description="Colombian local day")]


async def refuse_outside_portal(request: Request, user: users.User) -> None:
    """403 for a unit's user anywhere but the portal endpoints (it reads its meters only)."""
    if request.url.path.startswith(PREFIX + "/") or request.url.path == PREFIX:
        return
    async with request.app.state.pool.connection() as conn:
        if await unit_of(conn, user) is not None:
            raise HTTPException(403, "a portal unit's user reads only /api/v1/portal")


async def _unit_code(conn: Any, unit_id: int) -> str:
    cur = await conn.execute("SELECT code FROM portal_unit WHERE id = %s", (unit_id,))
    return (await cur.fetchone())[0]


@router.get("/meters", summary="The meters a unit owns or is associated with")
async def meters(
    request: Request,
    user: Reader,
    unit: Annotated[str | None, Query(description="for service users: which unit")] = None,
) -> dict[str, Any]:
    async with request.app.state.pool.connection() as conn:
        own = await unit_of(conn, user)
        if own is not None:
            code = await _unit_code(conn, own)
            if unit is not None and unit != code:
                raise HTTPException(403, f"this user reads for unit {code} only")
            unit = code
        if unit is None:
            raise HTTPException(422, "give ?unit=CODE")
        try:
            found = await store.unit_meters(conn, unit)
        except store.PortalError as exc:
            raise HTTPException(404, str(exc)) from None
    return {"unit": unit, "meters": found}


@router.get(
    "/meters/{number}/consumption",
    summary="A meter's consumption with each value's source and the estimated share",
)
async def meter_consumption(
    number: str,
    request: Request,
    user: Reader,
    start: Day,
    end: Day,
    resolution: Annotated[Resolution, Query()] = "daily",
) -> Response:
    if end < start:
        raise HTTPException(422, "end must not be before start")
    if (end - start).days + 1 > MAX_DAYS:
        raise HTTPException(422, f"at most {MAX_DAYS} days per request")
    async with request.app.state.pool.connection() as conn:
        own = await unit_of(conn, user)
        if own is not None and not await store.may_read(conn, own, number):
            code = await _unit_code(conn, own)
            raise HTTPException(403, f"meter {number} is not owned by or shared with unit {code}")
        meter = await find_meter(conn, number)
        if meter is None:
            raise HTTPException(404, f"unknown meter {number}")
        try:
            body = await consumption_json(conn, meter, start, end, resolution)
        except LookupError as exc:
            raise HTTPException(409, str(exc)) from None
    # The document is JSON already (built mostly by PostgreSQL): no re-encoding.
    return Response(body, media_type="application/json")


@router.get("/status", summary="Units reporting or not (with justification), the indicator set")
async def status(request: Request, user: Reader, start: Day, end: Day) -> dict[str, Any]:
    if end < start:
        raise HTTPException(422, "end must not be before start")
    async with request.app.state.pool.connection() as conn:
        if await unit_of(conn, user) is not None:
            raise HTTPException(403, "the status report is for the service's users, not a unit's")
        return await status_report(conn, start, end)
