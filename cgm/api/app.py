"""The HTTP API (FastAPI): read the registry, readings, hoja de vida, collection and ASIC
status with a level-1 user; hold and release ASIC reporting with a level-2 user.

Authentication is HTTP Basic against the service's own users (``cgm.security.users``); TLS
belongs to the reverse proxy in front. The level is checked on every write endpoint by its
dependency, and every request to a write endpoint — allowed, refused or failed — lands in
``api_access`` (in the same transaction as the change when it succeeds), and a change to a
frontier also in its hoja de vida (``frontier_log``, art. 17).

Errors are JSON ``{"error": ..., "problems": [...]}``: 4xx for bad input, 500 without any
detail for bugs (the traceback goes to the server log only).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

import psycopg
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from cgm import registry
from cgm.api import encode
from cgm.api.access import Principal, scope_ids
from cgm.api.guard import API, Authenticator, Refused, RequestGuard, client_of, refusal_headers
from cgm.config import Settings
from cgm.localtime import day_bounds, local_day, period_of
from cgm.reporting import holds
from cgm.reporting.asic.status import day_status
from cgm.security import users
from cgm.storage import read_settled
from cgm.storage.common import CHANNELS_BY_ID, channel_id, set_audit_context
from drivers.base import Channel

log = logging.getLogger(__name__)

MAX_READING_SPAN = timedelta(days=31)  # one request stays a bounded amount of work
MAX_COMPACT_SPAN = timedelta(days=366)  # the compact formats: a year in one request
JSON = "application/json"
MAX_BODY_BYTES = 64 * 1024  # default cap; the only bodies are short reasons
# Days and instants outside these bounds are refused as input (422): nothing is stored
# there, and near year 9999 the arithmetic of a day's bounds overflows.
FIRST_DAY, LAST_DAY = date(2000, 1, 1), date(2199, 12, 31)


def _instant_in_range(value: datetime) -> datetime:
    if not FIRST_DAY <= value.astimezone(UTC).date() <= LAST_DAY:
        raise ValueError(f"must be between {FIRST_DAY} and {LAST_DAY}")
    return value


Instant = Annotated[AwareDatetime, AfterValidator(_instant_in_range)]

_basic = HTTPBasic(auto_error=False, realm="cgm")


# --- context and authentication ----------------------------------------------------------


def _pool(request: Request) -> AsyncConnectionPool:
    return request.app.state.pool


async def current_user(
    request: Request, _: Annotated[HTTPBasicCredentials | None, Depends(_basic)]
) -> users.User:
    """Level 1 or more: any active user with the right password (``_`` documents HTTP Basic
    in the OpenAPI description; the header is read by the authenticator itself)."""
    auth: Authenticator = request.app.state.auth
    try:
        user = await auth.user(request.scope, request.headers.get("authorization"))
    except Refused as exc:
        raise HTTPException(
            exc.status,
            exc.message,
            headers={k.decode(): v.decode() for k, v in refusal_headers(exc)},
        ) from None
    from cgm.api.portal import refuse_outside_portal  # the portal router imports this module

    await refuse_outside_portal(request, user)
    return user


async def level2_user(
    request: Request, user: Annotated[users.User, Depends(current_user)]
) -> users.User:
    """Level 2: every write endpoint depends on this; level 1 gets 403 (and is logged)."""
    if user.level < 2:
        raise HTTPException(403, "this operation needs a level-2 user")
    return user


Reader = Annotated[users.User, Depends(current_user)]
Writer = Annotated[users.User, Depends(level2_user)]


async def _record_access(
    conn: psycopg.AsyncConnection, scope: dict[str, Any], status: int, detail: dict[str, Any]
) -> None:
    """One api_access row: who, when (the insert), what, on which frontier, why, outcome."""
    state = scope.get("state", {})
    user: users.User | None = state.get("user")
    await conn.execute(
        """INSERT INTO api_access (username, user_level, method, path, frontier, reason,
                                   status, client, detail)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)""",
        (
            user.username if user else None,
            user.level if user else None,
            _printable(scope.get("method")),
            _printable(scope.get("path")),
            _printable(state.get("frontier")),
            _printable(state.get("reason")),
            status,
            client_of(scope) if scope.get("client") else None,
            Jsonb(detail),
        ),
    )


# --- helpers -------------------------------------------------------------------------------


def _printable(text: str | None, limit: int = 2000) -> str | None:
    """A client-supplied string fit for the log: control characters escaped, length bounded
    (a refused request is logged as it came, and PostgreSQL text cannot hold NUL)."""
    if text is None:
        return None
    text = text[:limit]
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        text = "".join(c if 0x20 <= ord(c) != 0x7F else f"\\x{ord(c):02x}" for c in text)
    return text


async def _scope(conn: psycopg.AsyncConnection, user: users.User) -> list[int] | None:
    """Frontier ids a scoped user may see (art. 9.1.1.21: the user, the network operator
    and the ASIC see their own frontiers); None for an unscoped user (all). An
    authenticated request's user carries it already (``Principal``)."""
    if isinstance(user, Principal):
        return scope_ids(user)
    cur = await conn.execute(
        """SELECT u.scoped, coalesce(array_agg(s.frontier_id)
                  FILTER (WHERE s.frontier_id IS NOT NULL), '{}')
           FROM app_user u LEFT JOIN app_user_frontier s ON s.user_id = u.id
           WHERE u.id = %s GROUP BY u.scoped""",
        (user.id,),
    )
    row = await cur.fetchone()
    return None if row is None or not row[0] else list(row[1])


async def _frontier_id(
    conn: psycopg.AsyncConnection, code: str, user: users.User | None = None
) -> int:
    """The frontier's id; 404 when unknown or outside the user's scope (the same answer, so
    a scoped user cannot tell whether another's frontier exists)."""
    cur = await conn.execute("SELECT id FROM frontier WHERE code = %s", (code,))
    row = await cur.fetchone()
    scope = await _scope(conn, user) if user is not None else None
    if row is None or (scope is not None and row[0] not in scope):
        raise HTTPException(404, f"unknown frontier {code}")
    return row[0]


async def _visible_codes(request: Request, user: users.User) -> set[str] | None:
    if isinstance(user, Principal) and user.scope is None:
        return None
    async with _pool(request).connection() as conn:
        scope = await _scope(conn, user)
        if scope is None:
            return None
        cur = await conn.execute("SELECT code FROM frontier WHERE id = ANY(%s)", (scope,))
        return {r[0] for r in await cur.fetchall()}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _flags(bits: int) -> list[str]:
    return list(encode.flag_names(bits))


def _json(body: object) -> Response:
    """Encode once with orjson (the framework's generic walk over a large registry costs
    more than the query)."""
    return Response(encode.dumps(body, default=_plain), media_type=JSON)


def _plain(value: object) -> object:
    if isinstance(value, Decimal):
        return float(value)
    return str(value)


# --- pages ----------------------------------------------------------------------------------
# List endpoints answer a page at a time (keyset pagination: stable while rows are added,
# and each page costs the same however deep): ``limit`` rows, and when more follow an
# opaque cursor to pass back as ``cursor``, in a ``Link: rel="next"`` header, in
# ``X-Next-Cursor`` and, for object bodies, as ``next``.

DEFAULT_PAGE, MAX_PAGE = 100, 1000
# format=rows: ~1,000 readings are ~170 KB of JSON and a few ms of CPU; 31 days of a
# frontier (2 meters x 4 channels) are ~6,000.
DEFAULT_ROWS_PAGE, MAX_ROWS_PAGE = 1000, 10_000
# format=columns and csv: a page of 5,000 readings (a bit less than 31 days of a frontier)
# answers within 50 ms p99 on the development host (benchmarks/README.md, "HTTP API"); up
# to 100,000 per page for a bulk export, a year of a frontier (70,080) in one request.
DEFAULT_EXPORT_PAGE, MAX_EXPORT_PAGE = 5000, 100_000
PageLimit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="rows per page")]
Cursor = Annotated[
    str | None,
    Query(max_length=512, description="the previous page's next cursor (first page: none)"),
]


def _cursor_out(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def _cursor_in(text: str, types: tuple[type, ...]) -> list[Any]:
    """A cursor made by :func:`_cursor_out`; 422 for anything else."""
    try:
        values = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, binascii.Error):
        values = None
    if (
        not isinstance(values, list)
        or len(values) != len(types)
        or not all(
            isinstance(v, t) and not isinstance(v, bool) for v, t in zip(values, types, strict=True)
        )
        or any(isinstance(v, str) and (len(v) > 200 or "\x00" in v) for v in values)
    ):
        raise HTTPException(422, "invalid cursor: pass the next cursor of the previous page")
    return values


def _next_headers(request: Request, nxt: str | None, limit: int) -> dict[str, str]:
    if nxt is None:
        return {}
    url = request.url.include_query_params(cursor=nxt, limit=limit)
    return {"link": f'<{url}>; rel="next"', "x-next-cursor": nxt}


def _page(request: Request, body: object, nxt: list[Any] | None, limit: int) -> Response:
    """A page: ``body`` with the next cursor in the headers (and in ``body["next"]`` when
    the body is an object)."""
    cursor = _cursor_out(nxt) if nxt is not None else None
    if isinstance(body, dict):
        body["next"] = cursor
    response = _json(body)
    response.headers.update(_next_headers(request, cursor, limit))
    return response


def _yesterday() -> date:
    return local_day(datetime.now(UTC)) - timedelta(days=1)


class ReasonBody(BaseModel):
    """Why a level-2 change is made: it goes to the hoja de vida and the access log."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=1000)

    @field_validator("reason")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("reason must not be blank")
        if any((ord(c) < 0x20 and c not in "\t\n\r") or ord(c) == 0x7F for c in v):
            raise ValueError("reason must not contain control characters")
        return v.strip()


# --- endpoints -----------------------------------------------------------------------------

router = APIRouter(prefix=API)


@router.get(
    "/frontiers",
    summary="The registry: frontiers with their meters and violations, a page at a time",
    description="Frontiers in code order, `limit` per page. When more follow, the response "
    'has a `Link: <...>; rel="next"` header (and `X-Next-Cursor`): pass that cursor as '
    "`cursor` for the next page.",
)
async def frontiers(
    request: Request, user: Reader, limit: PageLimit = DEFAULT_PAGE, cursor: Cursor = None
) -> Response:
    after = _cursor_in(cursor, (str,))[0] if cursor else None
    async with _pool(request).connection() as conn:
        found = await registry.list_registry_async(
            conn, ids=await _scope(conn, user), after=after, limit=limit + 1
        )
    more = found[limit:]
    page = found[:limit]
    return _page(request, page, [page[-1]["code"]] if more else None, limit)


@router.get("/frontiers/{code}", summary="One frontier of the registry (never secrets)")
async def frontier(code: str, request: Request, user: Reader) -> Response:
    async with _pool(request).connection() as conn:
        found = await registry.list_registry_async(conn, code, ids=await _scope(conn, user))
    if not found:
        raise HTTPException(404, f"unknown frontier {code}")
    return _json(found[0])


@router.get(
    "/frontiers/{code}/readings",
    summary="Raw readings per meter, as stored (rows, columns or CSV)",
    response_model=None,
)
async def readings(
    code: str,
    request: Request,
    user: Reader,
    start: Annotated[Instant, Query(description="inclusive, with a UTC offset")],
    end: Annotated[Instant, Query(description="exclusive, with a UTC offset")],
    channel: Annotated[Channel | None, Query(description="one channel (default: all)")] = None,
    format: Annotated[  # noqa: A002 - the query parameter's name
        Literal["rows", "columns", "csv", "hourly"],
        Query(
            description="rows: an object per reading (at most 31 days); columns: parallel "
            "arrays per meter and channel; csv: a line per reading (the header line on every "
            "page) — these three a page of `limit` readings at a time; hourly: per meter "
            "and channel a value and a quality array with one slot per hour from start, "
            "null where nothing was read (start and end on whole "
            "hours; at most 366 days each)"
        ),
    ] = "rows",
    limit: Annotated[
        int | None,
        Query(
            ge=1,
            le=MAX_EXPORT_PAGE,
            description=f"readings per page: rows {DEFAULT_ROWS_PAGE:,} by default, at most "
            f"{MAX_ROWS_PAGE:,}; columns and csv {DEFAULT_EXPORT_PAGE:,} by default, at most "
            f"{MAX_EXPORT_PAGE:,} (a year of a frontier in one request)",
        ),
    ] = None,
    cursor: Cursor = None,
) -> Response:
    if end <= start:
        raise HTTPException(422, "end must be after start")
    if limit is None:
        limit = DEFAULT_ROWS_PAGE if format == "rows" else DEFAULT_EXPORT_PAGE
    if format == "rows" and limit > MAX_ROWS_PAGE:
        raise HTTPException(422, f"format=rows: at most {MAX_ROWS_PAGE:,} readings per page")
    span = MAX_READING_SPAN if format == "rows" else MAX_COMPACT_SPAN
    if end - start > span:
        raise HTTPException(
            422,
            f"at most {span.days} days per request"
            + (" (format=columns, csv or hourly allow a year)" if format == "rows" else ""),
        )
    if format == "hourly" and (start.timestamp() % 3600 or end.timestamp() % 3600):
        raise HTTPException(422, "format=hourly needs start and end on whole hours")
    async with _pool(request).connection() as conn:
        fid = await _frontier_id(conn, code, user)
        cur = await conn.execute(
            """SELECT id, serial, role, active FROM meter WHERE frontier_id = %s
               ORDER BY role DESC, serial""",
            (fid,),
        )
        meters = await cur.fetchall()
        chans = [channel_id(channel)] if channel else sorted(CHANNELS_BY_ID)
        head = {
            "frontier": code,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "units": "secondary (as read: kWh, kvarh)",
        }
        if format == "hourly":
            try:
                hourly = await encode.hourly_body(conn, head, meters, start, end, chans)
            except encode.OffGrid as exc:
                raise HTTPException(409, f"{exc}: ask format=columns") from None
            return Response(hourly, media_type="application/json")
        ids = [m[0] for m in meters]
        after = _readings_cursor(cursor, ids, chans) if cursor else None
        arr = await encode.load_page(conn, ids, start, end, chans, after, limit + 1)
    more, arr = len(arr) > limit, arr[:limit]
    nxt = None
    if more:
        last = arr[-1]
        t_us = int(last["interval_start"].astype("M8[us]").astype("i8"))
        nxt = _cursor_out([int(last["meter_id"]), int(last["channel"]), t_us])
    if format == "csv":
        body, media = encode.csv_body(meters, arr), "text/csv; charset=utf-8"
    elif format == "columns":
        body, media = encode.columns_body({**head, "next": nxt}, meters, arr), JSON
    else:
        body, media = encode.rows_body({**head, "next": nxt}, meters, arr), JSON
    response = Response(body, media_type=media)
    response.headers.update(_next_headers(request, nxt, limit))
    return response


def _readings_cursor(
    text: str, meter_ids: list[int], channels: list[int]
) -> tuple[int, int, datetime]:
    """(meter id, channel, interval start) of a readings page's next cursor; 422 for one
    that is not, or not of this request (a meter not of the frontier, a channel not asked)."""
    mid, ch, t_us = _cursor_in(text, (int, int, int))
    if mid not in meter_ids or ch not in channels or not 1 <= t_us < 10**17:
        raise HTTPException(422, "invalid cursor: pass the next cursor of the previous page")
    return mid, ch, datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=t_us)


@router.get(
    "/frontiers/{code}/settled",
    summary="Settled hourly series of a Colombian day",
    response_model=None,
)
async def settled(
    code: str,
    request: Request,
    user: Reader,
    day: Annotated[
        date, Query(description="Colombian local day, YYYY-MM-DD", ge=FIRST_DAY, le=LAST_DAY)
    ],
    channel: Annotated[Channel | None, Query(description="one channel (default: all)")] = None,
) -> Response:
    start, end = day_bounds(day)
    async with _pool(request).connection() as conn:
        fid = await _frontier_id(conn, code, user)
        rows = await read_settled(conn, [fid], start, end, channels=[channel] if channel else None)
    return _json(
        {
            "frontier": code,
            "day": day.isoformat(),
            "units": "primary (kWh, kvarh)",
            "values": [
                {
                    "channel": CHANNELS_BY_ID[r.channel].value,
                    "period": period_of(r.interval_start)[1],
                    "interval_start": r.interval_start.isoformat(),
                    "value": r.value,
                    "source": r.source,
                    "method": r.method,
                    "flags": _flags(r.flags),
                    "version": r.version,
                    "settled_at": r.settled_at.isoformat(),
                    "actor": r.actor,
                    "reason": r.reason,
                }
                for r in rows
            ],
        }
    )


@router.get("/frontiers/{code}/log", summary="The frontier's hoja de vida, newest first")
async def frontier_log(
    code: str,
    request: Request,
    user: Reader,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    async with _pool(request).connection() as conn:
        fid = await _frontier_id(conn, code, user)
        cur = await conn.execute(
            """SELECT l.id, l.at, l.actor, l.kind, l.purpose, l.activities, l.proof, m.serial
               FROM frontier_log l LEFT JOIN meter m ON m.id = l.meter_id
               WHERE l.frontier_id = %s ORDER BY l.at DESC, l.id DESC LIMIT %s""",
            (fid, limit),
        )
        rows = await cur.fetchall()
    keys = ("id", "at", "actor", "kind", "purpose", "activities", "proof", "meter")
    entries = [dict(zip(keys, r, strict=True)) for r in rows]
    for e in entries:
        e["at"] = _iso(e["at"])
    return _json({"frontier": code, "entries": entries})


@router.get(
    "/collection/sessions",
    summary="Latest sessions with meters, newest first, a page at a time",
    description="`limit` sessions per page; `next` (also in the `Link` header) is the cursor "
    "of the following page, null on the last.",
)
async def collection_sessions(
    request: Request,
    user: Reader,
    frontier: Annotated[str | None, Query(description="only this frontier's meters")] = None,
    limit: PageLimit = DEFAULT_PAGE,
    cursor: Cursor = None,
) -> Response:
    before = _cursor_in(cursor, (str, int)) if cursor else [None, None]
    if before[0] is not None:
        try:
            before[0] = datetime.fromisoformat(before[0])
        except ValueError:
            raise HTTPException(
                422, "invalid cursor: pass the next cursor of the previous page"
            ) from None
    async with _pool(request).connection() as conn:
        fid = await _frontier_id(conn, frontier, user) if frontier else None
        scope = await _scope(conn, user)
        cur = await conn.execute(
            """SELECT s.id, f.code, m.serial, m.role, s.cycle, s.collector, s.started_at,
                      s.finished_at, s.result, s.error, s.channel_used, s.attempts,
                      s.entries_read, s.intervals_stored, s.clock_offset_s, s.clock_corrected,
                      s.read_from, s.read_to
               FROM collection_session s
               JOIN meter m ON m.id = s.meter_id JOIN frontier f ON f.id = m.frontier_id
               WHERE (%(fid)s::bigint IS NULL OR m.frontier_id = %(fid)s)
                 AND (%(scope)s::bigint[] IS NULL OR m.frontier_id = ANY(%(scope)s))
                 AND (s.started_at, s.id) < (%(at)s, %(id)s)
               ORDER BY s.started_at DESC, s.id DESC LIMIT %(limit)s""",
            # The keyset as one row comparison (the first page: after +infinity), which the
            # index collection_session_recent (started_at DESC, id DESC) answers in order.
            {
                "fid": fid,
                "limit": limit + 1,
                "scope": scope,
                "at": before[0] if before[0] is not None else "infinity",
                "id": before[1] if before[1] is not None else 2**63 - 1,
            },  # fmt: skip
        )
        rows = await cur.fetchall()
    keys = (
        "id", "frontier", "meter", "role", "cycle", "collector", "started_at", "finished_at",
        "result", "error", "channel_used", "attempts", "entries_read", "intervals_stored",
        "clock_offset_s", "clock_corrected", "read_from", "read_to",
    )  # fmt: skip
    more, rows = rows[limit:], rows[:limit]
    nxt = [rows[-1][6].isoformat(), rows[-1][0]] if more else None
    body = {"sessions": [_jsonable(dict(zip(keys, r, strict=True))) for r in rows]}
    return _page(request, body, nxt, limit)


@router.get(
    "/meters/health",
    summary="Per-meter health: failures, backoff, clock offset; a page at a time",
    description="Meters in frontier, role and serial order, `limit` per page; `next` (also "
    "in the `Link` header) is the cursor of the following page, null on the last.",
)
async def meters_health(
    request: Request,
    user: Reader,
    frontier: Annotated[str | None, Query(description="only this frontier's meters")] = None,
    limit: PageLimit = DEFAULT_PAGE,
    cursor: Cursor = None,
) -> Response:
    after = _cursor_in(cursor, (str, str, str)) if cursor else [None, None, None]
    async with _pool(request).connection() as conn:
        fid = await _frontier_id(conn, frontier, user) if frontier else None
        scope = await _scope(conn, user)
        cur = await conn.execute(
            """SELECT f.code, m.serial, m.role, m.active, h.consecutive_failures,
                      h.last_result, h.last_attempt, h.last_success, h.next_attempt_at,
                      h.clock_offset_s, h.config_findings
               FROM meter m JOIN frontier f ON f.id = m.frontier_id
               LEFT JOIN meter_health h ON h.meter_id = m.id
               WHERE (%(fid)s::bigint IS NULL OR m.frontier_id = %(fid)s)
                 AND (%(scope)s::bigint[] IS NULL OR m.frontier_id = ANY(%(scope)s))
                 AND (%(code)s::text IS NULL OR f.code > %(code)s
                      OR (f.code = %(code)s AND (m.role < %(role)s
                          OR (m.role = %(role)s AND m.serial > %(serial)s))))
               ORDER BY f.code, m.role DESC, m.serial LIMIT %(limit)s""",
            {"fid": fid, "scope": scope, "limit": limit + 1,
             "code": after[0], "role": after[1], "serial": after[2]},
        )  # fmt: skip
        rows = await cur.fetchall()
    keys = (
        "frontier", "meter", "role", "active", "consecutive_failures", "last_result",
        "last_attempt", "last_success", "next_attempt_at", "clock_offset_s", "config_findings",
    )  # fmt: skip
    more, rows = rows[limit:], rows[:limit]
    nxt = [rows[-1][0], rows[-1][2], rows[-1][1]] if more else None
    body = {"meters": [_jsonable(dict(zip(keys, r, strict=True))) for r in rows]}
    return _page(request, body, nxt, limit)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in d.items()}


@router.get("/reports/asic/status", summary="Per frontier: what was sent for a day and when")
async def asic_status(
    request: Request,
    user: Reader,
    day: Annotated[
        date | None,
        Query(
            description="Colombian local day, YYYY-MM-DD (default: yesterday)",
            ge=FIRST_DAY,
            le=LAST_DAY,
        ),
    ] = None,
) -> Response:
    day = day or _yesterday()
    async with _pool(request).connection() as conn:
        status = await day_status(conn, day)
    settings: Settings | None = request.app.state.settings
    out: dict[str, Any] = {"day": day.isoformat()}
    if settings is not None:
        from cgm.reporting.asic.delivery import deadline

        out["deadline"] = deadline(settings, day).isoformat()
    visible = await _visible_codes(request, user)
    out["frontiers"] = [s.as_dict() for s in status if visible is None or s.frontier in visible]
    return _json(out)


async def _hold_action(
    request: Request, user: users.User, code: str, reason: str, action: str
) -> dict[str, Any]:
    """Hold or release, the hoja de vida entry and the access record, in one transaction."""
    request.state.frontier, request.state.reason = code, reason
    actor = f"api:{user.username}"
    async with _pool(request).connection() as conn, conn.transaction():
        fid = await _frontier_id(conn, code, user)
        await set_audit_context(conn, actor, reason)
        change = holds.hold if action == "hold" else holds.release
        changed = await change(conn, code, reason, actor)
        cur = await conn.execute("SELECT since FROM asic_hold WHERE frontier_id = %s", (fid,))
        row = await cur.fetchone()
        held = row is not None
        proof = f"held since {row[0].isoformat()}" if held else "not held: reported when ready"
        await conn.execute(
            """INSERT INTO frontier_log (frontier_id, actor, kind, purpose, activities, proof)
               VALUES (%s, %s, 'level2_access', %s, %s, %s)""",
            (
                fid,
                actor,
                reason,
                Jsonb(
                    {
                        "activities": [f"ASIC reporting {action}"],
                        "changed": changed,
                        "via": f"{request.method} {request.url.path}",
                        "level": user.level,
                    }
                ),
                proof,
            ),
        )
        await _record_access(conn, request.scope, 200, {"action": action, "changed": changed})
    request.state.access_logged = True
    return {
        "frontier": code,
        "action": action,
        "changed": changed,
        "held": held,
        "actor": actor,
        "reason": reason,
    }


@router.post("/frontiers/{code}/hold", summary="Hold a frontier's ASIC reporting (level 2)")
async def hold(code: str, body: ReasonBody, request: Request, user: Writer) -> dict[str, Any]:
    return await _hold_action(request, user, code, body.reason, "hold")


@router.post("/frontiers/{code}/release", summary="Release a held frontier (level 2)")
async def release(code: str, body: ReasonBody, request: Request, user: Writer) -> dict[str, Any]:
    return await _hold_action(request, user, code, body.reason, "release")


# --- the application -----------------------------------------------------------------------


def _problems(exc: RequestValidationError) -> list[dict[str, str]]:
    # Only where and what: never the offending input back (it may hold anything).
    return [
        {"where": ".".join(str(p) for p in e.get("loc", ())), "message": str(e.get("msg", ""))}
        for e in exc.errors()
    ]


def create_app(
    db_url: str,
    pool: AsyncConnectionPool,
    *,
    settings: Settings | None = None,
    scheduler_running: Callable[[], bool] | None = None,
) -> FastAPI:
    """The API over ``pool`` (autocommit connections: a failed login must be counted even
    though the request is refused). ``scheduler_running`` feeds ``/healthz``."""
    app = FastAPI(
        title="cgm",
        summary="Centro de Gestión de Medidas: registry, readings, ASIC status",
        version="1",
        openapi_url=f"{API}/openapi.json",
        docs_url=f"{API}/docs",
        redoc_url=None,
    )
    app.state.db_url, app.state.pool, app.state.settings = db_url, pool, settings
    app.state.auth = Authenticator(pool)
    app.include_router(router)
    from cgm.api.portal import router as portal_router

    app.include_router(portal_router)
    from cgm.api.hoja import router as hoja_router  # imports this module's dependencies

    app.include_router(hoja_router)
    from cgm.api.failures import router as failures_router

    app.include_router(failures_router)
    from cgm.api.portal_page import router as portal_page

    app.include_router(portal_page)

    @app.get("/healthz", summary="Liveness: database reachable, scheduler running (no auth)")
    async def healthz() -> JSONResponse:
        db_ok = False
        try:
            async with pool.connection(timeout=2.0) as conn:
                await conn.execute("SELECT 1")
            db_ok = True
        except Exception as exc:  # any failure is "unavailable"; the reason goes to the log
            log.warning("healthz: database unreachable: %s", exc)
        sched = scheduler_running() if scheduler_running else None
        ok = db_ok and sched is not False
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "database": db_ok, "scheduler": sched},
            status_code=200 if ok else 503,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            {"error": "invalid request", "problems": _problems(exc)}, status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    async def record(scope: dict[str, Any], status: int, detail: dict[str, Any]) -> None:
        async with pool.connection() as conn:
            await _record_access(conn, scope, status, detail)

    app.add_middleware(
        RequestGuard,
        pool=pool,
        auth=app.state.auth,
        max_body_bytes=settings.api_max_body_bytes if settings else MAX_BODY_BYTES,
        record_access=record,
    )
    return app
