"""Failures and thefts of a frontier's measuring elements, counted against Table 5 (art. 36).

Counting rules (README, "Failures and Table 5"):

* only ``failure`` events count; thefts are recorded and noticed but not counted (Table 5
  bounds failures of the measuring system, a theft is not one; an assumption to confirm);
* a failure of the principal meter does not count while the backup meter operates, and
  vice versa: with a backup meter, a meter failure counts only when the other meter was
  failed at some moment of it (a frontier without a backup counts every principal failure);
* CT, VT and communication failures always count;
* counted failures that overlap in time are one failure (simultaneous failures count once);
* the window is the 12 months before ``now``: a failure counts when it started inside it;
* the limit is Table 5 by year of operation: year 1: 4, year 2: 4, year 3: 3, year ≥4: 2;
  the alarm is raised ``margin`` failures before the limit (default 1) and the status is
  ``exceeded`` once the count passes the limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

import psycopg

from cgm.frontier_log import ALARM, FAILURE

ELEMENTS = ("principal", "backup", "ct", "vt", "communication")
KINDS = ("failure", "theft")
TABLE5 = {1: 4, 2: 4, 3: 3}
TABLE5_LATER = 2


def table5_limit(year_of_operation: int) -> int:
    if year_of_operation < 1:
        raise ValueError(f"year of operation {year_of_operation} < 1")
    return TABLE5.get(year_of_operation, TABLE5_LATER)


def year_of_operation(operation_start: date, today: date) -> int:
    """1 during the first 12 months after ``operation_start``, 2 in the next, …"""
    months = (today.year - operation_start.year) * 12 + today.month - operation_start.month
    if today.day < operation_start.day:
        months -= 1
    return max(months, 0) // 12 + 1


def twelve_months_before(now: datetime) -> datetime:
    try:
        return now.replace(year=now.year - 1)
    except ValueError:  # 29 February
        return now.replace(year=now.year - 1, day=28)


@dataclass(frozen=True)
class Event:
    id: int
    element: str
    kind: str
    started_at: datetime
    ended_at: datetime | None


@dataclass(frozen=True)
class Count:
    """A frontier's Table 5 position: counted failures (each a group of event ids)."""

    year: int
    limit: int
    groups: tuple[tuple[int, ...], ...]
    margin: int = 1

    @property
    def count(self) -> int:
        return len(self.groups)

    @property
    def status(self) -> str:
        if self.count > self.limit:
            return "exceeded"
        if self.count >= self.limit - self.margin:
            return "warning"
        return "ok"

    def as_dict(self) -> dict[str, object]:
        return {"year_of_operation": self.year, "limit": self.limit, "count": self.count,
                "status": self.status, "failures": [list(g) for g in self.groups]}  # fmt: skip


def _overlaps(a: Event, b: Event, now: datetime) -> bool:
    return a.started_at <= (b.ended_at or now) and b.started_at <= (a.ended_at or now)


def counted_failures(
    events: Iterable[Event], *, has_backup: bool, now: datetime, since: datetime
) -> tuple[tuple[int, ...], ...]:
    """The failures that count, as groups of simultaneous event ids (oldest first)."""
    failures = [e for e in events if e.kind == "failure" and e.started_at <= now]
    counted = []
    for e in failures:
        if e.element in ("principal", "backup") and has_backup:
            other = "backup" if e.element == "principal" else "principal"
            if not any(o.element == other and _overlaps(e, o, now) for o in failures):
                continue  # the other meter operated throughout: it kept the measurement
        counted.append(e)
    counted.sort(key=lambda e: e.started_at)
    groups: list[list[Event]] = []
    end: datetime | None = None
    for e in counted:
        if groups and end is not None and e.started_at <= end:
            groups[-1].append(e)
            end = max(end, e.ended_at or now)
        else:
            groups.append([e])
            end = e.ended_at or now
    return tuple(
        tuple(x.id for x in g) for g in groups if since <= min(x.started_at for x in g) <= now
    )


def count(
    events: Sequence[Event],
    *,
    has_backup: bool,
    operation_start: date,
    now: datetime,
    margin: int = 1,
) -> Count:
    year = year_of_operation(operation_start, now.astimezone(UTC).date())
    groups = counted_failures(
        events, has_backup=has_backup, now=now, since=twelve_months_before(now)
    )
    return Count(year, table5_limit(year), groups, margin)


# --- storage -------------------------------------------------------------------------------


async def _frontier(conn: psycopg.AsyncConnection, code: str) -> int:
    cur = await conn.execute("SELECT id FROM frontier WHERE code = %s", (code,))
    row = await cur.fetchone()
    if row is None:
        raise LookupError(f"unknown frontier {code}")
    return row[0]


async def open_event(
    conn: psycopg.AsyncConnection,
    *,
    frontier: str,
    element: str,
    kind: str,
    started_at: datetime,
    description: str,
    actor: str,
    now: datetime | None = None,
    margin: int = 1,
) -> tuple[int, Count]:
    """Record a failure or theft, logged in the hoja de vida; when the frontier's Table 5
    count reaches the alarm margin (or passes the limit), an alarm entry is logged too.
    Returns the event id and the count."""
    if element not in ELEMENTS:
        raise ValueError(f"element must be one of {', '.join(ELEMENTS)}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    if started_at.tzinfo is None:
        raise ValueError("the start needs a time zone")
    if not description.strip():
        raise ValueError("a description is required")
    fid = await _frontier(conn, frontier)
    async with conn.transaction():
        cur = await conn.execute(
            """INSERT INTO failure_event (frontier_id, element, kind, started_at, description,
                                          opened_by)
               VALUES (%s, %s, %s, %s, %s, %s) RETURNING id""",
            (fid, element, kind, started_at, description, actor),
        )
        (eid,) = await cur.fetchone()  # type: ignore[misc]
        await _log(conn, fid, actor, f"{kind} opened: {element}",
                   {"event": eid, "at": started_at.isoformat(), "description": description})
        now = now or datetime.now(UTC)
        c = (await fleet_counts(conn, now, frontiers=[frontier], margin=margin))[frontier]
        if c.status != "ok":
            await _log(conn, fid, "cgm", f"Table 5 failures {c.status}: {c.count} of {c.limit}",
                       c.as_dict(), kind=ALARM)  # fmt: skip
    return eid, c


async def close_event(
    conn: psycopg.AsyncConnection, event_id: int, *, ended_at: datetime, note: str, actor: str
) -> None:
    if ended_at.tzinfo is None:
        raise ValueError("the end needs a time zone")
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT frontier_id, started_at, ended_at, element, kind FROM failure_event "
            "WHERE id = %s FOR UPDATE",
            (event_id,),
        )
        row = await cur.fetchone()
        if row is None:
            raise LookupError(f"no failure event {event_id}")
        fid, started, ended, element, kind = row
        if ended is not None:
            raise ValueError(f"failure event {event_id} was already closed at {ended}")
        if ended_at < started:
            raise ValueError(f"the end {ended_at} is before the start {started}")
        await conn.execute(
            "UPDATE failure_event SET ended_at = %s, closed_by = %s, close_note = %s "
            "WHERE id = %s",
            (ended_at, actor, note, event_id),
        )
        await _log(conn, fid, actor, f"{kind} closed: {element}",
                   {"event": event_id, "at": ended_at.isoformat(), "note": note})


async def _log(conn: psycopg.AsyncConnection, fid: int, actor: str, purpose: str,
               activities: dict[str, object], kind: str = FAILURE) -> None:  # fmt: skip
    from psycopg.types.json import Jsonb

    await conn.execute(
        "INSERT INTO frontier_log (frontier_id, actor, kind, purpose, activities) "
        "VALUES (%s, %s, %s, %s, %s)",
        (fid, actor, kind, purpose, Jsonb(activities)),
    )


async def fleet_counts(
    conn: psycopg.AsyncConnection,
    now: datetime,
    *,
    frontiers: Sequence[str] | None = None,
    margin: int = 1,
) -> dict[str, Count]:
    """Table 5 position of every frontier (or ``frontiers``): one query for the fleet."""
    since = twelve_months_before(now)
    cur = await conn.execute(
        """SELECT f.code, coalesce(f.operation_start, (f.created_at AT TIME ZONE 'UTC')::date),
                  EXISTS (SELECT 1 FROM meter m WHERE m.frontier_id = f.id AND m.active
                          AND m.role = 'backup'),
                  coalesce(array_agg(ARRAY[e.id::text, e.element, e.kind,
                                           extract(epoch FROM e.started_at)::text,
                                           coalesce(extract(epoch FROM e.ended_at)::text, '')])
                           FILTER (WHERE e.id IS NOT NULL), '{}')
           FROM frontier f
           LEFT JOIN failure_event e ON e.frontier_id = f.id
             AND coalesce(e.ended_at, 'infinity') >= %(since)s - interval '1 year'
             AND e.started_at <= %(now)s
           WHERE %(codes)s::text[] IS NULL OR f.code = ANY(%(codes)s)
           GROUP BY f.id""",
        {"since": since, "now": now, "codes": list(frontiers) if frontiers else None},
    )
    out: dict[str, Count] = {}
    for code, start, has_backup, raw in await cur.fetchall():
        events = [
            Event(int(i), el, k, _ts(s), _ts(e) if e else None) for i, el, k, s, e in raw
        ]
        out[code] = count(
            events, has_backup=has_backup, operation_start=start, now=now, margin=margin
        )
    return out


def _ts(epoch: str) -> datetime:
    return datetime.fromtimestamp(float(epoch), UTC)


async def notice(
    conn: psycopg.AsyncConnection, event_id: int, *, cgm_code: str, now: datetime
) -> dict[str, object]:
    """The notice of one failure or theft for the ASIC, with the frontier's Table 5 count.
    Field names are the project's (no public schema of XM's notice was found)."""
    cur = await conn.execute(
        """SELECT f.code, e.element, e.kind, e.started_at, e.ended_at, e.description,
                  e.opened_by, e.closed_by, e.close_note
           FROM failure_event e JOIN frontier f ON f.id = e.frontier_id WHERE e.id = %s""",
        (event_id,),
    )
    row = await cur.fetchone()
    if row is None:
        raise LookupError(f"no failure event {event_id}")
    code, element, kind, start, end, desc, opened_by, closed_by, note = row
    c = (await fleet_counts(conn, now, frontiers=[code]))[code]
    return {
        "tipo": "ReporteFallaHurto" if kind == "theft" else "ReporteFalla",
        "codigoCGM": cgm_code,
        "frontera": code,
        "evento": event_id,
        "elemento": element,
        "clase": kind,
        "inicio": start.isoformat(),
        "fin": end.isoformat() if end else None,
        "descripcion": desc,
        "registradoPor": opened_by,
        "cerradoPor": closed_by,
        "notaCierre": note,
        "tabla5": c.as_dict(),
        "generado": now.isoformat(),
    }
