"""The portal inventory in storage: import (all or nothing), who may see and edit which
meter, association with a shared meter, and the logged change of owner.

Ownership: the unit that first creates a client number owns it and its meters. Another unit
naming the same company and number is told that it exists and may associate with its
meters; associated units read, only the owner edits. A change of owner needs a level-2 user
and lands in ``portal_owner_change``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from cgm.portal.loader import PortalInventory
from cgm.portal.model import SOURCES, ClientNumberSpec, MeterSpec, UnitSpec
from cgm.registry.loader import InventoryError, Issue
from cgm.storage.common import channel_id, set_audit_context


class PortalError(ValueError):
    """A portal change that cannot be made (unknown unit or meter, bad value)."""


class NotOwner(PortalError):
    """Only the owner unit of a client number may change it or its meters."""


class ClientNumberExists(PortalError):
    """The company and client number are already registered by another unit."""

    def __init__(self, company: str, number: str, owner: str, meters: list[str]) -> None:
        self.owner, self.meters = owner, meters
        super().__init__(
            f"client number {company} {number} already exists (owner unit {owner}; meters "
            f"{', '.join(meters) or 'none'}): associate with its meters instead"
        )


class MeterExists(PortalError):
    """A meter number is registered already (meter numbers are unique)."""


class UnitExists(PortalError):
    """A unit code is registered already (creating through the API never overwrites)."""


@dataclass(frozen=True)
class ImportResult:
    units: int
    buildings: int
    client_numbers: int
    meters: int
    associations: int


async def _unit_id(conn: psycopg.AsyncConnection, code: str) -> int:
    cur = await conn.execute("SELECT id FROM portal_unit WHERE code = %s", (code,))
    row = await cur.fetchone()
    if row is None:
        raise PortalError(f"unknown unit {code}")
    return row[0]


async def _client(
    conn: psycopg.AsyncConnection, company: str, number: str
) -> tuple[int, int, str] | None:
    cur = await conn.execute(
        """SELECT c.id, c.owner_unit_id, u.code FROM portal_client_number c
           JOIN portal_unit u ON u.id = c.owner_unit_id
           WHERE lower(c.company) = lower(%s) AND c.number = %s""",
        (company, number),
    )
    return await cur.fetchone()


async def _client_meters(conn: psycopg.AsyncConnection, client_id: int) -> list[str]:
    cur = await conn.execute(
        "SELECT number FROM portal_meter WHERE client_number_id = %s ORDER BY number",
        (client_id,),
    )
    return [r[0] for r in await cur.fetchall()]


async def _upsert_unit(conn: psycopg.AsyncConnection, u: UnitSpec) -> tuple[int, bool]:
    b = u.building
    cur = await conn.execute(
        """INSERT INTO portal_building (region, province, commune, street, number, latitude,
                                        longitude)
           VALUES (%s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (lower(region), lower(commune), lower(street), lower(number))
           DO UPDATE SET latitude = coalesce(EXCLUDED.latitude, portal_building.latitude),
                         longitude = coalesce(EXCLUDED.longitude, portal_building.longitude)
           RETURNING id, xmax = 0""",
        (b.region, b.province, b.commune, b.street, b.number, b.latitude, b.longitude),
    )
    bid, new_building = await cur.fetchone()  # type: ignore[misc]
    holder = u.invoice.holder if u.invoice.access != "yes" else None
    cur = await conn.execute(
        """INSERT INTO portal_unit (code, building_id, institution, service, name, use_type,
               floors, surface_m2, property_type, roll_numbers, roll_justification,
               construction_year, staff_count, reports_pmg, invoice_access, invoice_holder,
               non_reporting_justification)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (code) DO UPDATE SET building_id = EXCLUDED.building_id,
               institution = EXCLUDED.institution, service = EXCLUDED.service,
               name = EXCLUDED.name, use_type = EXCLUDED.use_type, floors = EXCLUDED.floors,
               surface_m2 = EXCLUDED.surface_m2, property_type = EXCLUDED.property_type,
               roll_numbers = EXCLUDED.roll_numbers,
               roll_justification = EXCLUDED.roll_justification,
               construction_year = EXCLUDED.construction_year,
               staff_count = EXCLUDED.staff_count, reports_pmg = EXCLUDED.reports_pmg,
               invoice_access = EXCLUDED.invoice_access,
               invoice_holder = EXCLUDED.invoice_holder,
               non_reporting_justification = EXCLUDED.non_reporting_justification
           RETURNING id""",
        (
            u.code, bid, u.institution, u.service, u.name, u.use_type, u.floors, u.surface_m2,
            u.property_type, u.roll_numbers, u.roll_justification, u.construction_year,
            u.staff_count, u.reports_pmg, u.invoice.access, holder,
            u.non_reporting_justification,
        ),
    )  # fmt: skip
    (uid,) = await cur.fetchone()  # type: ignore[misc]
    await conn.execute("DELETE FROM portal_energy_source WHERE unit_id = %s", (uid,))
    for source in SOURCES:
        if source in u.energy_sources:
            await conn.execute(
                "INSERT INTO portal_energy_source VALUES (%s, %s, %s)",
                (uid, source, u.energy_sources[source]),
            )
    return uid, bool(new_building)


async def _link(conn: psycopg.AsyncConnection, m: MeterSpec) -> tuple[int | None, int | None]:
    if m.cgm is None:
        return None, None
    cur = await conn.execute("SELECT id FROM frontier WHERE code = %s", (m.cgm.frontier,))
    row = await cur.fetchone()
    if row is None:
        raise PortalError(f"meter {m.number}: unknown CGM frontier {m.cgm.frontier}")
    return row[0], channel_id(m.cgm.channel)


async def _upsert_meter(conn: psycopg.AsyncConnection, client_id: int, m: MeterSpec) -> None:
    fid, chan = await _link(conn, m)
    cur = await conn.execute(
        "SELECT client_number_id FROM portal_meter WHERE number = %s", (m.number,)
    )
    row = await cur.fetchone()
    if row is not None and row[0] != client_id:
        raise PortalError(f"duplicate meter number {m.number}: it belongs to another client number")
    await conn.execute(
        """INSERT INTO portal_meter (client_number_id, number, energy_source, smart, shared,
                                     invoice_access, frontier_id, channel)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (number) DO UPDATE SET energy_source = EXCLUDED.energy_source,
               smart = EXCLUDED.smart, shared = EXCLUDED.shared,
               invoice_access = EXCLUDED.invoice_access, frontier_id = EXCLUDED.frontier_id,
               channel = EXCLUDED.channel""",
        (client_id, m.number, m.source, m.smart, m.shared, m.invoice_access, fid, chan),
    )


async def import_inventory(
    conn: psycopg.AsyncConnection, inv: PortalInventory, actor: str
) -> ImportResult:
    """Upsert every unit of ``inv`` in one transaction; any problem rolls all of it back and
    is raised as :class:`InventoryError` at the unit's line."""
    issues: list[Issue] = []
    counts = {"buildings": 0, "clients": 0, "meters": 0, "assoc": 0}
    try:
        async with conn.transaction():
            await set_audit_context(conn, actor, f"portal import {inv.source}")
            for u in inv.units:
                line = inv.unit_lines.get(u.code)
                try:
                    async with conn.transaction():
                        await _import_unit(conn, u, counts)
                except PortalError as exc:
                    issues.append(Issue(inv.source, line, u.code, str(exc)))
                except psycopg.errors.IntegrityError as exc:
                    why = exc.diag.message_primary or "constraint violated"
                    issues.append(Issue(inv.source, line, u.code, why))
            if issues:
                raise InventoryError(issues)
    except InventoryError:
        raise
    return ImportResult(
        len(inv.units), counts["buildings"], counts["clients"], counts["meters"], counts["assoc"]
    )


async def _import_unit(conn: psycopg.AsyncConnection, u: UnitSpec, counts: dict[str, int]) -> None:
    uid, new_building = await _upsert_unit(conn, u)
    counts["buildings"] += new_building
    for cn in u.client_numbers:
        found = await _client(conn, cn.company, cn.number)
        if found is not None and found[1] != uid:
            raise ClientNumberExists(
                cn.company, cn.number, found[2], await _client_meters(conn, found[0])
            )
        if found is None:
            cur = await conn.execute(
                """INSERT INTO portal_client_number (company, number, tariff_type,
                       connected_power_kw, owner_unit_id) VALUES (%s, %s, %s, %s, %s)
                   RETURNING id""",
                (cn.company, cn.number, cn.tariff_type, cn.connected_power_kw, uid),
            )
            (client_id,) = await cur.fetchone()  # type: ignore[misc]
        else:
            client_id = found[0]
            await conn.execute(
                """UPDATE portal_client_number SET tariff_type = %s, connected_power_kw = %s
                   WHERE id = %s""",
                (cn.tariff_type, cn.connected_power_kw, client_id),
            )
        counts["clients"] += 1
        for m in cn.meters:
            await _upsert_meter(conn, client_id, m)
            counts["meters"] += 1
    for a in u.associate:
        counts["assoc"] += await _associate(conn, uid, a.company, a.number, a.meters)


async def create_client_number(
    conn: psycopg.AsyncConnection, unit: str, spec: ClientNumberSpec, actor: str
) -> dict[str, Any]:
    """Unit ``unit`` creates a client number with its meters and owns them.

    Refused, nothing stored: :class:`ClientNumberExists` when the company and number are
    registered already (by another unit: associate instead; by this one: it is its own),
    :class:`MeterExists` for a meter number registered already, :class:`PortalError` for a
    meter number twice in ``spec``, a meter of a source the unit has not switched on, or an
    unknown CGM frontier. Two units creating the same pair at once: one wins, the other is
    told that it exists (the unique index decides)."""
    numbers = [m.number for m in spec.meters]
    for n in numbers:
        if numbers.count(n) > 1:
            raise PortalError(f"duplicate meter number {n}: given twice")
    try:
        async with conn.transaction():
            await set_audit_context(conn, actor, f"portal create client number {unit}")
            uid = await _unit_id(conn, unit)
            await _refuse_existing(conn, spec.company, spec.number, numbers)
            cur = await conn.execute(
                "SELECT source FROM portal_energy_source WHERE unit_id = %s AND enabled",
                (uid,),
            )
            on = {r[0] for r in await cur.fetchall()}
            for m in spec.meters:
                if m.source not in on:
                    raise PortalError(
                        f"meter {m.number} is {m.source}, which is not switched on for unit "
                        f"{unit} (switched on: {', '.join(sorted(on)) or 'none'})"
                    )
            cur = await conn.execute(
                """INSERT INTO portal_client_number (company, number, tariff_type,
                       connected_power_kw, owner_unit_id) VALUES (%s, %s, %s, %s, %s)
                   RETURNING id""",
                (spec.company, spec.number, spec.tariff_type, spec.connected_power_kw, uid),
            )
            (client_id,) = await cur.fetchone()  # type: ignore[misc]
            for m in spec.meters:
                fid, chan = await _link(conn, m)
                # A plain insert: a meter number taken meanwhile is a unique violation,
                # never an update of another unit's meter.
                await conn.execute(
                    """INSERT INTO portal_meter (client_number_id, number, energy_source,
                           smart, shared, invoice_access, frontier_id, channel)
                       VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
                    (client_id, m.number, m.source, m.smart, m.shared, m.invoice_access,
                     fid, chan),
                )  # fmt: skip
    except psycopg.errors.UniqueViolation:
        # Created meanwhile by another request: say by whom, as if it had been there.
        await _refuse_existing(conn, spec.company, spec.number, numbers)
        raise
    return {
        "unit": unit, "company": spec.company, "number": spec.number,
        "tariff_type": spec.tariff_type, "connected_power_kw": spec.connected_power_kw,
        "meters": sorted(numbers),
    }  # fmt: skip


async def _refuse_existing(
    conn: psycopg.AsyncConnection, company: str, number: str, meters: list[str]
) -> None:
    found = await _client(conn, company, number)
    if found is not None:
        raise ClientNumberExists(company, number, found[2], await _client_meters(conn, found[0]))
    cur = await conn.execute(
        """SELECT m.number, c.company, c.number, u.code FROM portal_meter m
           JOIN portal_client_number c ON c.id = m.client_number_id
           JOIN portal_unit u ON u.id = c.owner_unit_id
           WHERE m.number = ANY(%s) ORDER BY m.number LIMIT 1""",
        (meters,),
    )
    row = await cur.fetchone()
    if row is not None:
        raise MeterExists(
            f"duplicate meter number {row[0]}: it is registered already (client number "
            f"{row[1]} {row[2]} of unit {row[3]})"
        )


async def create_unit(conn: psycopg.AsyncConnection, u: UnitSpec, actor: str) -> ImportResult:
    """One unit as an inventory entry declares it, created (never overwritten: an existing
    code is :class:`UnitExists`); all of it or nothing."""
    counts = {"buildings": 0, "clients": 0, "meters": 0, "assoc": 0}
    try:
        async with conn.transaction():
            await set_audit_context(conn, actor, f"portal create unit {u.code}")
            # Two requests creating one code: the second waits here, then finds it.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('portal_unit:' || %s))", (u.code,)
            )
            cur = await conn.execute("SELECT 1 FROM portal_unit WHERE code = %s", (u.code,))
            if await cur.fetchone() is not None:
                raise UnitExists(f"unit {u.code} exists already")
            await _import_unit(conn, u, counts)
    except psycopg.errors.IntegrityError as exc:
        raise PortalError(exc.diag.message_primary or "constraint violated") from None
    return ImportResult(1, counts["buildings"], counts["clients"], counts["meters"],
                        counts["assoc"])  # fmt: skip


async def _associate(
    conn: psycopg.AsyncConnection, uid: int, company: str, number: str, meters: list[str]
) -> int:
    found = await _client(conn, company, number)
    if found is None:
        raise PortalError(f"client number {company} {number} does not exist yet: create it")
    if found[1] == uid:
        raise PortalError(f"client number {company} {number} is the unit's own")
    known = set(await _client_meters(conn, found[0]))
    for m in meters:
        if m not in known:
            raise PortalError(f"meter {m} is not a meter of client number {company} {number}")
        await conn.execute(
            """INSERT INTO portal_meter_unit (meter_id, unit_id)
               SELECT id, %s FROM portal_meter WHERE number = %s ON CONFLICT DO NOTHING""",
            (uid, m),
        )
    return len(meters)


async def associate(
    conn: psycopg.AsyncConnection, unit: str, company: str, number: str, meters: list[str],
    actor: str,
) -> int:  # fmt: skip
    """Unit ``unit`` reads ``meters`` of another unit's client number from now on."""
    async with conn.transaction():
        await set_audit_context(conn, actor, f"portal associate {unit}")
        return await _associate(conn, await _unit_id(conn, unit), company, number, meters)


EDITABLE = {"smart", "shared", "invoice_access"}


async def edit_meter(
    conn: psycopg.AsyncConnection, unit: str, meter: str, changes: dict[str, Any], actor: str
) -> None:
    """Change a meter's attributes; only its owner unit may (:class:`NotOwner` otherwise)."""
    bad = set(changes) - EDITABLE
    if bad or not changes:
        raise PortalError(f"editable fields are {', '.join(sorted(EDITABLE))}")
    async with conn.transaction():
        await set_audit_context(conn, actor, f"portal edit meter {meter}")
        meter_id, _ = await _owned_meter(conn, unit, meter, "edits it")
        for key, value in changes.items():
            if not isinstance(value, bool):
                raise PortalError(f"{key} must be true or false")
            # key is one of EDITABLE, never free input
            await conn.execute(
                f"UPDATE portal_meter SET {key} = %s WHERE id = %s",  # noqa: S608
                (value, meter_id),
            )


async def change_owner(
    conn: psycopg.AsyncConnection, company: str, number: str, new_unit: str, *, actor: str,
    level: int, reason: str,
) -> None:  # fmt: skip
    """Give a client number and its meters to another unit: administrators (level 2) only,
    logged with who and why. The old owner keeps reading them as an associated unit."""
    if level < 2:
        raise NotOwner("a change of owner needs a level-2 (administrator) user")
    if not reason.strip():
        raise PortalError("a change of owner needs a reason")
    async with conn.transaction():
        await set_audit_context(conn, actor, reason)
        found = await _client(conn, company, number)
        if found is None:
            raise PortalError(f"unknown client number {company} {number}")
        new_id = await _unit_id(conn, new_unit)
        if found[1] == new_id:
            raise PortalError(f"unit {new_unit} already owns {company} {number}")
        await conn.execute(
            "UPDATE portal_client_number SET owner_unit_id = %s WHERE id = %s",
            (new_id, found[0]),
        )
        await conn.execute(
            """INSERT INTO portal_meter_unit (meter_id, unit_id)
               SELECT id, %s FROM portal_meter WHERE client_number_id = %s
               ON CONFLICT DO NOTHING""",
            (found[1], found[0]),
        )
        await conn.execute(
            """DELETE FROM portal_meter_unit WHERE unit_id = %s
               AND meter_id IN (SELECT id FROM portal_meter WHERE client_number_id = %s)""",
            (new_id, found[0]),
        )
        await conn.execute(
            """INSERT INTO portal_owner_change (client_number_id, old_unit_id, new_unit_id,
                                                actor, reason) VALUES (%s, %s, %s, %s, %s)""",
            (found[0], found[1], new_id, actor, reason.strip()),
        )


async def unit_meters(conn: psycopg.AsyncConnection, unit: str) -> list[dict[str, Any]]:
    """The meters a unit owns or is associated with, with its relation to each."""
    uid = await _unit_id(conn, unit)
    cur = await conn.execute(
        """SELECT m.number, m.energy_source, m.smart, m.shared, m.invoice_access, c.company,
                  c.number, o.code, f.code, ch.name,
                  CASE WHEN c.owner_unit_id = %(u)s THEN 'owner' ELSE 'associated' END
           FROM portal_meter m JOIN portal_client_number c ON c.id = m.client_number_id
           JOIN portal_unit o ON o.id = c.owner_unit_id
           LEFT JOIN frontier f ON f.id = m.frontier_id LEFT JOIN channel ch ON ch.id = m.channel
           WHERE c.owner_unit_id = %(u)s
              OR m.id IN (SELECT meter_id FROM portal_meter_unit WHERE unit_id = %(u)s)
           ORDER BY m.number""",
        {"u": uid},
    )
    keys = ("meter", "source", "smart", "shared", "invoice_access", "company",
            "client_number", "owner", "frontier", "channel", "relation")  # fmt: skip
    return [dict(zip(keys, r, strict=True)) for r in await cur.fetchall()]


async def may_read(conn: psycopg.AsyncConnection, unit_id: int, meter: str) -> bool:
    cur = await conn.execute(
        """SELECT 1 FROM portal_meter m JOIN portal_client_number c ON c.id = m.client_number_id
           WHERE m.number = %(m)s AND (c.owner_unit_id = %(u)s OR EXISTS (
               SELECT 1 FROM portal_meter_unit a WHERE a.meter_id = m.id AND a.unit_id = %(u)s))""",
        {"m": meter, "u": unit_id},
    )
    return await cur.fetchone() is not None


async def list_units(conn: psycopg.AsyncConnection) -> list[dict[str, Any]]:
    cur = await conn.execute(
        """SELECT u.code, u.institution, u.service, u.name, b.region, b.commune, b.street,
                  b.number, u.surface_m2::float8,
                  (SELECT count(*) FROM portal_client_number c WHERE c.owner_unit_id = u.id),
                  (SELECT count(*) FROM portal_meter m JOIN portal_client_number c
                       ON c.id = m.client_number_id WHERE c.owner_unit_id = u.id),
                  (SELECT count(*) FROM portal_meter_unit a WHERE a.unit_id = u.id)
           FROM portal_unit u JOIN portal_building b ON b.id = u.building_id ORDER BY u.code"""
    )
    keys = ("code", "institution", "service", "name", "region", "commune", "street",
            "street_number", "surface_m2", "client_numbers", "meters_owned",
            "meters_associated")  # fmt: skip
    return [dict(zip(keys, r, strict=True)) for r in await cur.fetchall()]


async def lookup_client_number(
    conn: psycopg.AsyncConnection, company: str, number: str
) -> dict[str, Any] | None:
    """Is this company + client number registered? By which unit, with which meters."""
    found = await _client(conn, company, number)
    if found is None:
        return None
    return {"owner": found[2], "meters": await _client_meters(conn, found[0])}


async def _owned_meter(
    conn: psycopg.AsyncConnection, unit: str, meter: str, action: str
) -> tuple[int, int]:
    """(meter id, unit id) when ``unit`` owns ``meter``; :class:`NotOwner` otherwise, saying
    that only the owner does ``action``."""
    cur = await conn.execute(
        """SELECT m.id, u.id, u.code FROM portal_meter m
           JOIN portal_client_number c ON c.id = m.client_number_id
           JOIN portal_unit u ON u.id = c.owner_unit_id WHERE m.number = %s""",
        (meter,),
    )
    row = await cur.fetchone()
    if row is None:
        raise PortalError(f"unknown meter {meter}")
    if row[2] != unit:
        raise NotOwner(f"meter {meter} is owned by unit {row[2]}; only the owner {action}")
    return row[0], row[1]


async def load_invoice(
    conn: psycopg.AsyncConnection, unit: str, meter: str, *, period_start: Any,
    period_end: Any, energy_kwh: float, amount: float, invoice_number: str, actor: str,
) -> int:  # fmt: skip
    """Record an invoice of ``meter`` for a billing period; only its owner unit may."""
    if period_end < period_start:
        raise PortalError("the billing period ends before it starts")
    if energy_kwh < 0 or amount < 0:
        raise PortalError("energy and amount must not be negative")
    if not invoice_number.strip():
        raise PortalError("an invoice needs its number")
    async with conn.transaction():
        await set_audit_context(conn, actor, f"portal invoice {meter}")
        meter_id, unit_id = await _owned_meter(conn, unit, meter, "loads its invoices")
        try:
            cur = await conn.execute(
                """INSERT INTO portal_invoice (meter_id, period_start, period_end, energy_kwh,
                       amount, invoice_number, loaded_by_unit, actor)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
                (meter_id, period_start, period_end, energy_kwh, amount,
                 invoice_number.strip(), unit_id, actor),
            )  # fmt: skip
        except psycopg.errors.UniqueViolation:
            raise PortalError(
                f"meter {meter} already has an invoice for {period_start}..{period_end}"
            ) from None
        (iid,) = await cur.fetchone()  # type: ignore[misc]
    return iid


async def invoices(conn: psycopg.AsyncConnection, meter: str) -> list[dict[str, Any]]:
    cur = await conn.execute(
        """SELECT i.period_start, i.period_end, i.energy_kwh::float8, i.amount::float8,
                  i.invoice_number, u.code, i.actor, i.loaded_at
           FROM portal_invoice i JOIN portal_meter m ON m.id = i.meter_id
           JOIN portal_unit u ON u.id = i.loaded_by_unit
           WHERE m.number = %s ORDER BY i.period_start""",
        (meter,),
    )
    keys = ("period_start", "period_end", "energy_kwh", "amount", "invoice_number",
            "loaded_by", "actor", "loaded_at")  # fmt: skip
    return [dict(zip(keys, r, strict=True)) for r in await cur.fetchall()]


async def owner_changes(conn: psycopg.AsyncConnection, company: str, number: str) -> list[dict]:
    """The logged changes of owner of a client number, oldest first."""
    cur = await conn.execute(
        """SELECT x.at, o.code, n.code, x.actor, x.reason FROM portal_owner_change x
           JOIN portal_client_number c ON c.id = x.client_number_id
           JOIN portal_unit o ON o.id = x.old_unit_id JOIN portal_unit n ON n.id = x.new_unit_id
           WHERE lower(c.company) = lower(%s) AND c.number = %s ORDER BY x.at, x.id""",
        (company, number),
    )
    keys = ("at", "old_owner", "new_owner", "actor", "reason")
    return [dict(zip(keys, r, strict=True)) for r in await cur.fetchall()]
