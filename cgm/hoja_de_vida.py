"""The hoja de vida of a frontier (art. 9.1.1.29): its sections, checks and export.

Each part is a dated entry (``hoja_entry``) whose data is validated by the section's model,
so a bad entry is refused with a clear error rather than stored half-right. The level-2
accesses and alarms already logged by collection (``frontier_log``) are read into the same
record. Maintenance due dates follow Table 4 by point type; the cable error of art. 9.1.1.8 is
computed here from the secondary circuit's length, section and burden and kept with its
inputs.

Entries are add-only (migration 0181 refuses updates and deletes). A level-2 user corrects
an entry, or voids it, by adding a new entry that references it (:func:`correct_entry`):
the original stays in the record, marked ``corrected`` or ``voided`` with the id of the
entry that did it, so an auditor sees both; everything that reads the record for a
decision (maintenance due, the audit) reads the current version only (:data:`CURRENT`).
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from typing import Any, Literal

import psycopg
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cgm.frontier_log import LEVEL2_ACCESS

# --- sections ------------------------------------------------------------------------------


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Equipment(_Entry):
    """A meter, a CT or VT (one per phase), or a communication device."""

    kind: Literal["meter", "ct", "vt", "modem", "other"]
    serial: str = Field(min_length=1)
    phase: Literal["A", "B", "C"] | None = None
    role: Literal["principal", "backup"] | None = None
    manufacturer: str | None = None
    model: str | None = None
    ratio: str | None = None  # e.g. "200/5" or "13200/120"
    accuracy_class: str | None = None
    certificate: str | None = None
    action: Literal["installed", "removed"] = "installed"


class Seal(_Entry):
    location: str = Field(min_length=1)  # e.g. "meter cover", "CT terminal box phase A"
    serial: str = Field(min_length=1)
    action: Literal["installed", "removed"]
    by: str = Field(min_length=1)  # who installed or removed it


class Calibration(_Entry):
    element_serial: str = Field(min_length=1)
    laboratory: str = Field(min_length=1)
    certificate: str = Field(min_length=1)
    result: str = Field(min_length=1)


class Verification(_Entry):
    kind: Literal["initial", "periodic", "extraordinary"]
    by: str = Field(min_length=1)
    result: str = Field(min_length=1)
    report: str | None = None


class Maintenance(_Entry):
    status: Literal["planned", "done"]
    description: str = Field(min_length=1)
    by: str | None = None


class CableError(_Entry):
    """Inputs of the art. 9.1.1.8 calculation; the error itself is computed, not typed."""

    length_m: float = Field(gt=0)  # one way, meter to instrument transformer
    section_mm2: float = Field(gt=0)
    burden_va: float = Field(gt=0)  # meter burden per phase on the VT circuit
    secondary_v: float = Field(default=120 / math.sqrt(3), gt=0)  # phase-to-neutral
    resistivity_ohm_mm2_m: float = Field(default=0.0178, gt=0)  # copper at 20 °C


class AdjustmentFactor(_Entry):
    factor: float = Field(gt=0)
    support: str = Field(min_length=1)  # the document or study that justifies it
    reference: str | None = None


class Note(_Entry):
    text: str = Field(min_length=1)


SECTIONS: dict[str, type[_Entry]] = {
    "equipment": Equipment,
    "seal": Seal,
    "calibration": Calibration,
    "verification": Verification,
    "maintenance": Maintenance,
    "cable_error": CableError,
    "adjustment_factor": AdjustmentFactor,
    "note": Note,
}

CABLE_ERROR_LIMIT_PCT = 0.1  # art. 9.1.1.8
TABLE4_YEARS = {1: 2, 2: 4, 3: 4, 4: 10, 5: 10}  # maintenance interval by point type
NOTICE_MONTHS = (6, 3)


class EntryError(ValueError):
    """An entry that cannot be stored (unknown section, invalid data, unknown frontier)."""


def cable_error(c: CableError) -> dict[str, float | bool]:
    """Voltage drop of the VT secondary loop (two conductors) as % of the secondary voltage:
    R = ρ·2L/S, I = burden / V, error = I·R / V."""
    resistance = c.resistivity_ohm_mm2_m * 2 * c.length_m / c.section_mm2
    current = c.burden_va / c.secondary_v
    pct = 100 * current * resistance / c.secondary_v
    return {"resistance_ohm": round(resistance, 6), "current_a": round(current, 6),
            "error_pct": round(pct, 6), "limit_pct": CABLE_ERROR_LIMIT_PCT,
            "within_limit": pct <= CABLE_ERROR_LIMIT_PCT}  # fmt: skip


def validate(section: str, data: dict[str, Any]) -> dict[str, Any]:
    """The entry's data as stored: validated, with computed results where the section has
    them (the cable error)."""
    model = SECTIONS.get(section)
    if model is None:
        raise EntryError(f"unknown section {section!r}; one of {', '.join(SECTIONS)}")
    try:
        entry = model.model_validate(data)
    except ValidationError as exc:
        errs = "; ".join(f"{'.'.join(map(str, e['loc'])) or section}: {e['msg']}"
                         for e in exc.errors())  # fmt: skip
        raise EntryError(f"{section}: {errs}") from None
    out = entry.model_dump(exclude_none=True)
    if any(isinstance(v, str) and ("\x00" in v or len(v) > 2000) for v in out.values()):
        raise EntryError(f"{section}: text fields must be under 2000 characters, without NUL")
    if isinstance(entry, CableError):
        out["result"] = cable_error(entry)
    return out


# SQL condition: hoja entry ``{e}`` is current (not corrected by a later entry, not a void).
CURRENT = ("NOT EXISTS (SELECT 1 FROM hoja_entry x WHERE x.corrects = {e}.id) "
           "AND {e}.correction IS DISTINCT FROM 'void'")  # fmt: skip
CORRECTIONS = ("correct", "void")


def add_months(d: date, months: int) -> date:
    y, m = divmod(d.month - 1 + months, 12)
    year, month = d.year + y, m + 1
    for day in (d.day, 30, 29, 28):
        try:
            return date(year, month, day)
        except ValueError:
            continue
    raise AssertionError("unreachable")


def maintenance_due(point_type: int, last_done: date | None, since: date, today: date) -> dict:
    """Next maintenance under Table 4, and the notice due 6 and 3 months ahead."""
    years = TABLE4_YEARS[point_type]
    due = add_months(last_done or since, 12 * years)
    if today >= due:
        notice = "overdue"
    elif today >= add_months(due, -NOTICE_MONTHS[1]):
        notice = "3_months"
    elif today >= add_months(due, -NOTICE_MONTHS[0]):
        notice = "6_months"
    else:
        notice = None
    return {"interval_years": years, "last_done": last_done.isoformat() if last_done else None,
            "next_due": due.isoformat(), "notice": notice}  # fmt: skip


# --- storage -------------------------------------------------------------------------------


async def add_entry(
    conn: psycopg.AsyncConnection,
    *,
    frontier: str,
    section: str,
    entry_date: date,
    data: dict[str, Any],
    actor: str,
) -> int:
    """Store one validated entry; the actor is the authenticated level-2 user."""
    stored = validate(section, data)
    cur = await conn.execute(
        """INSERT INTO hoja_entry (frontier_id, section, entry_date, data, actor)
           SELECT id, %s, %s, %s, %s FROM frontier WHERE code = %s RETURNING id""",
        (section, entry_date, Jsonb(stored), actor, frontier),
    )
    row = await cur.fetchone()
    if row is None:
        raise EntryError(f"unknown frontier {frontier}")
    return row[0]


async def correct_entry(
    conn: psycopg.AsyncConnection,
    *,
    frontier: str,
    entry_id: int,
    action: str,
    reason: str,
    actor: str,
    data: dict[str, Any] | None = None,
    entry_date: date | None = None,
) -> int:
    """Correct (new data for the same section, validated as any entry) or void entry
    ``entry_id`` of ``frontier`` by a new entry that references it; returns its id. The
    original is left as it was. An entry is corrected once: to change it again, correct
    the correction."""
    if action not in CORRECTIONS:
        raise EntryError(f"action must be one of {', '.join(CORRECTIONS)}")
    reason = (reason or "").strip()
    if not reason or len(reason) > 2000 or "\x00" in reason:
        raise EntryError("a reason (under 2000 characters) is required")
    cur = await conn.execute(
        """SELECT e.frontier_id, e.section, e.entry_date, e.correction,
                  (SELECT x.id FROM hoja_entry x WHERE x.corrects = e.id)
           FROM hoja_entry e JOIN frontier f ON f.id = e.frontier_id
           WHERE e.id = %s AND f.code = %s""",
        (entry_id, frontier),
    )
    row = await cur.fetchone()
    if row is None:
        raise EntryError(f"unknown entry {entry_id} of frontier {frontier}")
    fid, section, original_date, kind, by = row
    if kind == "void":
        raise EntryError(f"entry {entry_id} voids another entry; it cannot be corrected")
    if by is not None:
        raise EntryError(f"entry {entry_id} was already corrected by entry {by}; "
                         f"correct {by} instead")  # fmt: skip
    if action == "correct":
        if data is None:
            raise EntryError("a correction needs the corrected data")
        stored = validate(section, data)
    elif data:
        raise EntryError("a void carries a reason only, no data")
    else:
        stored = {}
    try:
        cur = await conn.execute(
            """INSERT INTO hoja_entry (frontier_id, section, entry_date, data, actor, corrects,
                                       correction, reason)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
            (fid, section, entry_date or original_date, Jsonb(stored), actor, entry_id,
             action, reason),
        )  # fmt: skip
    except psycopg.errors.UniqueViolation:
        raise EntryError(f"entry {entry_id} was corrected meanwhile; reload it") from None
    return (await cur.fetchone())[0]  # type: ignore[index]


async def record(
    conn: psycopg.AsyncConnection, frontier: str, *, today: date | None = None
) -> dict[str, Any]:
    """The whole hoja de vida of one frontier, as exported (JSON-ready)."""
    today = today or datetime.now(UTC).date()
    cur = await conn.execute(
        """SELECT id, code, name, point_type, voltage_level,
                  coalesce(operation_start, (created_at AT TIME ZONE 'UTC')::date),
                  adjustment_factor
           FROM frontier WHERE code = %s""",
        (frontier,),
    )
    row = await cur.fetchone()
    if row is None:
        raise EntryError(f"unknown frontier {frontier}")
    fid, code, name, point_type, voltage, since, adj = row
    cur = await conn.execute(
        """SELECT e.id, e.section, e.entry_date, e.data, e.actor, e.recorded_at, e.corrects,
                  e.correction, e.reason, x.id, x.correction
           FROM hoja_entry e LEFT JOIN hoja_entry x ON x.corrects = e.id
           WHERE e.frontier_id = %s ORDER BY e.entry_date, e.id""",
        (fid,),
    )
    sections: dict[str, list[dict[str, Any]]] = {s: [] for s in SECTIONS}
    for (eid, section, d, data, actor, at, corrects, correction, reason, by,
         by_kind) in await cur.fetchall():  # fmt: skip
        entry: dict[str, Any] = {"id": eid, "date": d.isoformat(), **data}
        if corrects is not None:
            entry.update(corrects=corrects, correction=correction, reason=reason)
        if correction == "void":
            entry["entry_status"] = "void"
        elif by is not None:
            entry.update(entry_status="voided" if by_kind == "void" else "corrected",
                         superseded_by=by)  # fmt: skip
        else:
            entry["entry_status"] = "current"
        sections[section].append({**entry, "recorded_by": actor, "recorded_at": at.isoformat()})
    cur = await conn.execute(
        """SELECT serial, role, protocol, manufacturer, model, ct_ratio, vt_ratio,
                  accuracy_active, accuracy_reactive, active
           FROM meter WHERE frontier_id = %s ORDER BY role DESC, serial""",
        (fid,),
    )
    cols = ("serial", "role", "protocol", "manufacturer", "model", "ct_ratio", "vt_ratio",
            "accuracy_active", "accuracy_reactive", "active")  # fmt: skip
    meters = [dict(zip(cols, r, strict=True)) for r in await cur.fetchall()]
    cur = await conn.execute(
        """SELECT l.at, l.actor, l.purpose, l.activities, m.serial FROM frontier_log l
           LEFT JOIN meter m ON m.id = l.meter_id
           WHERE l.frontier_id = %s AND l.kind = %s ORDER BY l.at""",
        (fid, LEVEL2_ACCESS),
    )
    level2 = [
        {"at": at.isoformat(), "actor": actor, "purpose": purpose, "meter": serial,
         "activities": act}
        for at, actor, purpose, act, serial in await cur.fetchall()
    ]  # fmt: skip
    done = [date.fromisoformat(e["date"]) for e in sections["maintenance"]
            if e["entry_status"] == "current" and e.get("status") == "done"]  # fmt: skip
    return {
        "frontier": {"code": code, "name": name, "point_type": point_type,
                     "voltage_level": voltage, "operation_start": since.isoformat(),
                     "adjustment_factor": adj},  # fmt: skip
        "generated_at": datetime.now(UTC).isoformat(),
        "registry_meters": meters,
        **sections,
        "maintenance_due": maintenance_due(point_type, max(done, default=None), since, today),
        "level2_log": level2,
    }
