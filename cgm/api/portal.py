"""The portal's API: the meters a unit may read and their consumption, and what a unit
does with its meters (associate with a shared one, edit or load invoices of its own).

A unit's token is an ordinary level-1 user tied to one unit (``portal_unit_user``); it sees
only the meters its unit owns or is associated with, anything else is a clear 403, and it
is refused outside ``/api/v1/portal`` (``refuse_outside_portal``). A service user (not tied
to a unit) reads every meter; it acts for a unit only as a level-2 user naming the unit.

Creating: a unit creates a client number with its meters and owns them (``POST
/client-numbers``); when the company + number exists already the answer is 409 saying by
whom and with which meters, and the unit may associate instead. Linking a meter to the CGM
meter that reads it (``cgm``) is an administrator's action: a unit's user linking any
frontier would read that frontier. Administrators create units (``POST /units``, the
inventory file's entry as JSON).

Shared meters: a unit asks whether a company + client number exists (``GET
/client-numbers``), and may then associate with any of its meters (``POST /associations``).
Only the owner unit edits a meter (``PATCH /meters/{n}``) or loads its invoices (``POST
/meters/{n}/invoices``): anyone else gets 403 saying who the owner is. A change of owner is
an administrator's (level-2 service user's) action, logged with its reason
(``POST /client-numbers/owner``). Every write lands in ``api_access`` (the request guard).
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from cgm.api.access import Principal
from cgm.api.app import FIRST_DAY, LAST_DAY, Reader
from cgm.api.guard import API
from cgm.portal import store
from cgm.portal.access import unit_of
from cgm.portal.consumption import MAX_DAYS, Layout, Resolution, consumption_json, find_meter
from cgm.portal.model import ClientNumberSpec, UnitSpec, meter_source
from cgm.portal.status import status_report
from cgm.security import users

PREFIX = f"{API}/portal"
router = APIRouter(prefix=PREFIX, tags=["portal"])
Day = Annotated[date, Query(ge=FIRST_DAY, le=LAST_DAY, description="Colombian local day")]


async def refuse_outside_portal(request: Request, user: users.User) -> None:
    """403 for a unit's user anywhere but the portal endpoints (it reads its meters only)."""
    if request.url.path.startswith(PREFIX + "/") or request.url.path == PREFIX:
        return
    if isinstance(user, Principal):  # the unit came with the authentication
        if user.unit is not None:
            raise HTTPException(403, "a portal unit's user reads only /api/v1/portal")
        return
    async with request.app.state.pool.connection() as conn:
        if await own_unit(conn, user) is not None:
            raise HTTPException(403, "a portal unit's user reads only /api/v1/portal")


async def own_unit(conn: Any, user: users.User) -> int | None:
    """The unit a user acts for (None: a service user). An authenticated request's user is
    a Principal that carries it already (kept current by the access cache's invalidation);
    the database is asked only for a bare user."""
    if isinstance(user, Principal):
        return user.unit
    return await unit_of(conn, user)


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
        own = await own_unit(conn, user)
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
    layout: Annotated[
        Layout,
        Query(description="hourly only: 'columns' gives values and sources as arrays over "
                          "implicit hours (start, step_s, count) instead of one object per hour"),
    ] = "objects",
) -> Response:
    if layout == "columns" and resolution != "hourly":
        raise HTTPException(422, "layout=columns is for resolution=hourly only")
    if end < start:
        raise HTTPException(422, "end must not be before start")
    if (end - start).days + 1 > MAX_DAYS:
        raise HTTPException(422, f"at most {MAX_DAYS} days per request")
    async with request.app.state.pool.connection() as conn:
        own = await own_unit(conn, user)
        meter = await find_meter(conn, number, own)
        if meter is None:
            if own is not None:  # an unknown meter looks the same to a unit's user
                code = await _unit_code(conn, own)
                raise HTTPException(
                    403, f"meter {number} is not owned by or shared with unit {code}"
                )
            raise HTTPException(404, f"unknown meter {number}")
        try:
            body = await consumption_json(conn, meter, start, end, resolution, layout)
        except LookupError as exc:
            raise HTTPException(409, str(exc)) from None
    # The document is JSON already (built mostly by PostgreSQL): no re-encoding.
    return Response(body, media_type="application/json")


@router.get("/status", summary="Units reporting or not (with justification), the indicator set")
async def status(request: Request, user: Reader, start: Day, end: Day) -> dict[str, Any]:
    if end < start:
        raise HTTPException(422, "end must not be before start")
    async with request.app.state.pool.connection() as conn:
        if await own_unit(conn, user) is not None:
            raise HTTPException(403, "the status report is for the service's users, not a unit's")
        return await status_report(conn, start, end)


# --- shared meters: association, editing, invoices, change of owner ----------------------


async def acting_unit(conn: Any, user: users.User, unit: str | None) -> str:
    """The unit a write acts for: a unit user's own unit (``unit``, if given, must be it);
    a service user must be level 2 and name the unit."""
    own = await own_unit(conn, user)
    if own is not None:
        code = await _unit_code(conn, own)
        if unit is not None and unit != code:
            raise HTTPException(403, f"this user acts for unit {code} only")
        return code
    if user.level < 2:
        raise HTTPException(403, "acting for a unit needs the unit's user or a level-2 user")
    if unit is None:
        raise HTTPException(422, "give the unit this change is made for")
    return unit


def _refusal(exc: store.PortalError) -> HTTPException:
    """NotOwner → 403 (it names the owner); unknown unit, meter or client number → 404;
    any other refused change → 422."""
    text = str(exc)
    if isinstance(exc, store.NotOwner):
        return HTTPException(403, text)
    if text.startswith("unknown ") or "does not exist" in text:
        return HTTPException(404, text)
    return HTTPException(422, text)


def _printable(value: str) -> str:
    """No control characters (PostgreSQL text cannot hold NUL; none belongs in a name)."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("must not contain control characters")
    return value


Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_printable)]
UnitCode = Annotated[
    str | None,
    Field(default=None, max_length=200, description="service users only"),
    AfterValidator(lambda v: v if v is None else _printable(v)),
]


class Association(BaseModel):
    model_config = ConfigDict(extra="forbid")
    company: Name
    number: Name
    meters: list[Name] = Field(min_length=1, max_length=100)
    unit: UnitCode = None


class MeterEdit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    smart: bool | None = None
    shared: bool | None = None
    invoice_access: bool | None = None
    unit: UnitCode = None


class Invoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    period_start: date = Field(ge=FIRST_DAY, le=LAST_DAY)
    period_end: date = Field(ge=FIRST_DAY, le=LAST_DAY)
    energy_kwh: float = Field(ge=0, allow_inf_nan=False)
    amount: float = Field(ge=0, allow_inf_nan=False)
    invoice_number: Name
    unit: UnitCode = None


class MeterLink(BaseModel):
    model_config = ConfigDict(extra="forbid")
    frontier: Name
    channel: Literal["active_import", "active_export", "reactive_import", "reactive_export"] = (
        "active_import"
    )


class NewMeter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    number: Name
    source: Annotated[
        Literal["electricity", "natural_gas", "lpg"], BeforeValidator(meter_source)
    ] = "electricity"
    smart: bool
    shared: bool
    invoice_access: bool
    cgm: MeterLink | None = Field(default=None, description="administrators only")


class NewClientNumber(BaseModel):
    model_config = ConfigDict(extra="forbid")
    company: Name
    number: Name
    tariff_type: Name
    connected_power_kw: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    meters: list[NewMeter] = Field(min_length=1, max_length=100)
    unit: UnitCode = None


def _no_control(value: Any, where: str = "") -> None:
    if isinstance(value, str):
        _printable(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            _no_control(k, where)
            _no_control(v, f"{where}.{k}")
    elif isinstance(value, list):
        for v in value:
            _no_control(v, where)


class NewUnit(UnitSpec):
    """A unit as one entry of the inventory file declares it (``cgm portal import``)."""

    @model_validator(mode="before")
    @classmethod
    def _printable_text(cls, data: Any) -> Any:
        _no_control(data)
        return data


class OwnerChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    company: Name
    number: Name
    new_owner: Name
    reason: Annotated[str, Field(min_length=1, max_length=1000), AfterValidator(_printable)]


@router.get("/client-numbers", summary="Is this company + client number registered?")
async def client_number(
    request: Request,
    user: Reader,
    company: Annotated[str, Query(min_length=1, max_length=200)],
    number: Annotated[str, Query(min_length=1, max_length=200)],
) -> dict[str, Any]:
    async with request.app.state.pool.connection() as conn:
        found = await store.lookup_client_number(conn, company, number)
    if found is None:
        return {"company": company, "number": number, "exists": False,
                "message": "not registered: your unit can create it and will own it"}  # fmt: skip
    return {
        "company": company, "number": number, "exists": True, **found,
        "message": f"already registered by unit {found['owner']}: your unit may associate "
                   "with any of its meters to read their consumption",
    }  # fmt: skip


async def associate_unit(request: Request, user: users.User, body: Association) -> dict:
    async with request.app.state.pool.connection() as conn:
        unit = await acting_unit(conn, user, body.unit)
        try:
            n = await store.associate(
                conn, unit, body.company, body.number, body.meters, f"api:{user.username}"
            )
        except store.PortalError as exc:
            raise _refusal(exc) from None
        return {"unit": unit, "associated": n, "meters": await store.unit_meters(conn, unit)}


@router.post("/associations", summary="Associate a unit with meters of a shared client number")
async def associations(request: Request, user: Reader, body: Association) -> dict[str, Any]:
    return await associate_unit(request, user, body)


async def edit_unit_meter(
    request: Request, user: users.User, number: str, changes: dict[str, bool], unit: str | None
) -> str:
    async with request.app.state.pool.connection() as conn:
        acting = await acting_unit(conn, user, unit)
        try:
            await store.edit_meter(conn, acting, number, changes, f"api:{user.username}")
        except store.PortalError as exc:
            raise _refusal(exc) from None
    return acting


@router.patch("/meters/{number}", summary="Edit a meter (its owner unit only)")
async def edit_meter(
    number: str, request: Request, user: Reader, body: MeterEdit
) -> dict[str, Any]:
    changes = body.model_dump(exclude_none=True, exclude={"unit"})
    unit = await edit_unit_meter(request, user, number, changes, body.unit)
    return {"meter": number, "unit": unit, "changed": changes}


async def add_invoice(request: Request, user: users.User, number: str, body: Invoice) -> dict:
    async with request.app.state.pool.connection() as conn:
        unit = await acting_unit(conn, user, body.unit)
        try:
            iid = await store.load_invoice(
                conn, unit, number, period_start=body.period_start,
                period_end=body.period_end, energy_kwh=body.energy_kwh, amount=body.amount,
                invoice_number=body.invoice_number, actor=f"api:{user.username}",
            )  # fmt: skip
        except store.PortalError as exc:
            raise _refusal(exc) from None
    return {"meter": number, "unit": unit, "invoice": iid}


@router.post("/meters/{number}/invoices", status_code=201,
             summary="Load an invoice of a meter (its owner unit only)")  # fmt: skip
async def invoices(number: str, request: Request, user: Reader, body: Invoice) -> dict[str, Any]:
    return await add_invoice(request, user, number, body)


@router.get("/meters/{number}/invoices", summary="A meter's invoices")
async def list_invoices(number: str, request: Request, user: Reader) -> dict[str, Any]:
    async with request.app.state.pool.connection() as conn:
        own = await own_unit(conn, user)
        if own is not None and not await store.may_read(conn, own, number):
            code = await _unit_code(conn, own)
            raise HTTPException(403, f"meter {number} is not owned by or shared with unit {code}")
        found = await store.invoices(conn, number)
    return {"meter": number, "invoices": found}


def _exists(exc: store.ClientNumberExists, company: str, number: str) -> JSONResponse:
    return JSONResponse(
        {"error": str(exc), "exists": True, "company": company, "number": number,
         "owner": exc.owner, "meters": exc.meters, "associate": f"{PREFIX}/associations"},
        status_code=409,
    )  # fmt: skip


async def create_for_unit(request: Request, user: users.User, body: NewClientNumber) -> Any:
    """Create the client number and its meters for the acting unit: the created document, or
    the 409 "exists" answer; HTTPException for any other refusal."""
    async with request.app.state.pool.connection() as conn:
        unit = await acting_unit(conn, user, body.unit)
        if any(m.cgm for m in body.meters) and await own_unit(conn, user) is not None:
            raise HTTPException(
                403, "linking a meter to a CGM meter (cgm) is an administrator's action"
            )
        spec = ClientNumberSpec(**body.model_dump(exclude={"unit"}))
        try:
            return await store.create_client_number(conn, unit, spec, f"api:{user.username}")
        except store.ClientNumberExists as exc:
            return _exists(exc, body.company, body.number)
        except store.MeterExists as exc:
            raise HTTPException(409, str(exc)) from None
        except store.PortalError as exc:
            raise _refusal(exc) from None


@router.post(
    "/client-numbers", status_code=201,
    summary="Create a client number and its meters; the unit owns them",
    responses={409: {"description": "registered already: by whom, which meters (associate)"}},
)  # fmt: skip
async def create_client_number(request: Request, user: Reader, body: NewClientNumber) -> Any:
    return await create_for_unit(request, user, body)


@router.post("/units", status_code=201, summary="Create a unit (administrators, level 2)")
async def create_unit(request: Request, user: Reader, body: NewUnit) -> dict[str, Any]:
    async with request.app.state.pool.connection() as conn:
        if await own_unit(conn, user) is not None or user.level < 2:
            raise HTTPException(403, "creating a unit is an administrator's action (level 2)")
        try:
            r = await store.create_unit(conn, body, f"api:{user.username}")
        except (store.ClientNumberExists, store.UnitExists, store.MeterExists) as exc:
            raise HTTPException(409, str(exc)) from None
        except store.PortalError as exc:
            raise _refusal(exc) from None
    return {"unit": body.code, "new_building": bool(r.buildings), "client_numbers":
            r.client_numbers, "meters": r.meters, "associations": r.associations}  # fmt: skip


async def change_client_owner(request: Request, user: users.User, body: OwnerChange) -> dict:
    request.state.reason = body.reason
    async with request.app.state.pool.connection() as conn:
        if await own_unit(conn, user) is not None or user.level < 2:
            raise HTTPException(
                403, "a change of owner is an administrator's action (a level-2 service user)"
            )
        try:
            await store.change_owner(
                conn, body.company, body.number, body.new_owner,
                actor=f"api:{user.username}", level=user.level, reason=body.reason,
            )  # fmt: skip
        except store.PortalError as exc:
            raise _refusal(exc) from None
        log = await store.owner_changes(conn, body.company, body.number)
    return {"company": body.company, "number": body.number, "owner": body.new_owner,
            "log": log}  # fmt: skip


@router.post("/client-numbers/owner", summary="Change the owner of a client number (level 2)")
async def change_owner(request: Request, user: Reader, body: OwnerChange) -> dict[str, Any]:
    return await change_client_owner(request, user, body)
