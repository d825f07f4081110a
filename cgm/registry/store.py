"""The registry in PostgreSQL: idempotent import, listing, and the collector's read API.

An import is one transaction under an advisory lock: any error rolls everything back, so a
file is either wholly applied or not at all. Rows are updated only when a value actually
changes, so re-importing the same file writes nothing (and the audit log, fed by triggers
on every write, records only real changes, with ``cgm.actor`` naming who imported).

Meters of an imported frontier that the file no longer lists (or lists with another role)
are deactivated, never deleted: their readings keep referring to them. Frontiers absent from
the file are left alone, so an inventory may cover part of the registry.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from cgm.registry import compliance, rules
from cgm.registry.loader import Inventory, InventoryError
from cgm.registry.model import FrontierSpec, MeterSpec
from cgm.security import SecretBox, SecretKeyError
from drivers.base import AccessLevel, Channel, Credentials, Endpoint

IMPORT_LOCK = 0x43474D5F524547  # "CGM_REG"
BROKER_LEVEL = 0  # meter_credential.level of an MQTT meter's broker login (migration 0080)


@dataclass(frozen=True)
class BrokerAccount:
    """The CGM's decrypted login to an MQTT meter's broker; secrets stay out of the repr."""

    username: str | None
    password: str | None = field(default=None, repr=False)
    client_key: str | None = field(default=None, repr=False)  # PEM private key


def _broker_account(client: str | None, sealed: str) -> BrokerAccount:
    data = json.loads(sealed)
    return BrokerAccount(client, data.get("password"), data.get("client_key"))


@dataclass
class ImportReport:
    """What an import did; ``violations`` maps frontier code → its current findings."""

    frontiers_inserted: int = 0
    frontiers_updated: int = 0
    frontiers_unchanged: int = 0
    meters_inserted: int = 0
    meters_updated: int = 0
    meters_unchanged: int = 0
    meters_deactivated: int = 0
    credentials_changed: int = 0
    violations: dict[str, list[compliance.Finding]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def changed(self) -> bool:
        return bool(
            self.frontiers_inserted
            or self.frontiers_updated
            or self.meters_inserted
            or self.meters_updated
            or self.meters_deactivated
            or self.credentials_changed
        )


class _DryRun(Exception):
    """Raised inside the import transaction to roll a dry run back."""


_FRONTIER_COLS = (
    "name", "kind", "stn", "voltage_level", "installed_capacity_mva", "monthly_energy_mwh",
    "adjustment_factor", "point_type", "point_type_explicit", "clock_target_s", "attributes",
    "network_operator", "asic_period", "calibration_interval_years",
)  # fmt: skip
_METER_COLS = (
    "frontier_id", "role", "protocol", "primary_host", "primary_port", "backup_host",
    "backup_port", "params", "ct_ratio", "vt_ratio", "accuracy_active", "accuracy_reactive",
    "ct_accuracy", "vt_accuracy", "manufacturer", "model", "channels", "active",
)  # fmt: skip


def _upsert_sql(table: str, key: str, cols: Iterable[str]) -> str:
    """INSERT … ON CONFLICT that updates only when some column differs (no audit noise)."""
    cols = tuple(cols)
    names = ", ".join((key, *cols))
    values = ", ".join(["%s"] * (len(cols) + 1))
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols)
    mine = ", ".join(f"{table}.{c}" for c in cols)
    theirs = ", ".join(f"EXCLUDED.{c}" for c in cols)
    return (
        f"INSERT INTO {table} ({names}) VALUES ({values}) "
        f"ON CONFLICT ({key}) DO UPDATE SET {sets}, updated_at = now() "
        f"WHERE ({mine}) IS DISTINCT FROM ({theirs}) "
        "RETURNING id, (xmax = 0) AS inserted"
    )


_FRONTIER_UPSERT = _upsert_sql("frontier", "code", _FRONTIER_COLS)
_METER_UPSERT = _upsert_sql("meter", "serial", _METER_COLS)


def _frontier_values(fr: FrontierSpec) -> tuple[Any, ...]:
    return (
        fr.code, fr.name, fr.kind, fr.stn, fr.voltage_level, fr.installed_capacity_mva,
        fr.monthly_energy_mwh, fr.adjustment_factor, fr.effective_point_type,
        fr.point_type is not None, fr.clock_target_s, Jsonb(fr.attributes),
        fr.network_operator, fr.asic_period, fr.calibration_interval_years,
    )  # fmt: skip


def _meter_values(m: MeterSpec, frontier_id: int) -> tuple[Any, ...]:
    backup = m.backup_endpoint
    return (
        m.serial, frontier_id, m.role, m.protocol, m.endpoint.host, m.endpoint.port,
        backup.host if backup else None, backup.port if backup else None, Jsonb(m.params),
        m.ct_ratio, m.vt_ratio, m.accuracy_active, m.accuracy_reactive, m.ct_accuracy,
        m.vt_accuracy, m.manufacturer, m.model, [c.value for c in m.channels], True,
    )  # fmt: skip


def _upsert(
    conn: psycopg.Connection, sql: str, values: tuple[Any, ...], table: str, key: str
) -> tuple[int, str]:
    """(id, "inserted" | "updated" | "unchanged")."""
    row = conn.execute(sql, values).fetchone()
    if row is not None:
        return row[0], ("inserted" if row[1] else "updated")
    found = conn.execute(f"SELECT id FROM {table} WHERE {key} = %s", (values[0],)).fetchone()
    assert found is not None
    return found[0], "unchanged"


def _sync_credentials(
    conn: psycopg.Connection, meter_id: int, meter: MeterSpec, box: SecretBox
) -> int:
    """Write a credential only when its secret or client changed; Fernet ciphertexts are
    random, so re-encrypting an unchanged secret would be a spurious change."""
    existing = {
        level: (client, bytes(enc))
        for level, client, enc in conn.execute(
            "SELECT level, client, secret_enc FROM meter_credential WHERE meter_id = %s",
            (meter_id,),
        )
    }
    wanted: dict[int, tuple[str | None, str]] = {
        int(level): (spec.client, spec.secret.get_secret_value())
        for level, spec in meter.credentials.by_level().items()
    }
    if meter.credentials.broker is not None:
        broker = meter.credentials.broker
        wanted[BROKER_LEVEL] = (broker.username, broker.sealed())
    changed = 0
    for level, (client, secret) in wanted.items():
        old = existing.get(level)
        if old is not None and old[0] == client:
            try:
                if box.decrypt(old[1]) == secret:
                    continue
            except SecretKeyError:
                pass  # stored under another key: replace it
        conn.execute(
            """INSERT INTO meter_credential (meter_id, level, client, secret_enc)
               VALUES (%s, %s, %s, %s)
               ON CONFLICT (meter_id, level) DO UPDATE
               SET client = EXCLUDED.client, secret_enc = EXCLUDED.secret_enc,
                   updated_at = now()""",
            (meter_id, level, client, box.encrypt(secret)),
        )
        changed += 1
    for level in existing.keys() - wanted.keys():
        conn.execute(
            "DELETE FROM meter_credential WHERE meter_id = %s AND level = %s", (meter_id, level)
        )
        changed += 1
    return changed


def _sync_violations(
    conn: psycopg.Connection, frontier_id: int, findings: list[compliance.Finding]
) -> None:
    keys = [(f.rule, f.subject) for f in findings]
    conn.execute(
        """DELETE FROM frontier_violation
           WHERE frontier_id = %s
             AND (rule, subject) NOT IN (SELECT * FROM unnest(%s::text[], %s::text[]))""",
        (frontier_id, [k[0] for k in keys], [k[1] for k in keys]),
    )
    for f in findings:
        conn.execute(
            """INSERT INTO frontier_violation (frontier_id, rule, subject, article, message)
               VALUES (%s, %s, %s, %s, %s)
               ON CONFLICT (frontier_id, rule, subject) DO UPDATE
               SET article = EXCLUDED.article, message = EXCLUDED.message
               WHERE (frontier_violation.article, frontier_violation.message)
                     IS DISTINCT FROM (EXCLUDED.article, EXCLUDED.message)""",
            (frontier_id, f.rule, f.subject, f.article, f.message),
        )


def import_inventory(
    conn: psycopg.Connection,
    inventory: Inventory,
    box: SecretBox,
    *,
    actor: str,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Upsert ``inventory`` in one transaction; raise InventoryError and write nothing when a
    frontier or meter conflicts with the registry. ``dry_run`` rolls back at the end.
    ``progress(1)`` is called after each frontier (the CLI shows it on a terminal)."""
    report = ImportReport(warnings=list(inventory.warnings), dry_run=dry_run)
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (IMPORT_LOCK,))
            conn.execute("SELECT set_config('cgm.actor', %s, true)", (actor,))
            conn.execute(
                "SELECT set_config('cgm.reason', %s, true)",
                (f"registry import {inventory.source}",),
            )
            _apply(conn, inventory, box, report, progress)
            if dry_run:
                raise _DryRun
    except _DryRun:
        pass
    return report


def _apply(
    conn: psycopg.Connection,
    inv: Inventory,
    box: SecretBox,
    report: ImportReport,
    progress: Callable[[int], None] | None = None,
) -> None:
    ids: dict[str, int] = {}
    for fr in inv.frontiers:
        if progress is not None:
            progress(1)
        fid, outcome = _upsert(conn, _FRONTIER_UPSERT, _frontier_values(fr), "frontier", "code")
        ids[fr.code] = fid
        setattr(report, f"frontiers_{outcome}", getattr(report, f"frontiers_{outcome}") + 1)
        # Free roles first: a replaced or re-roled meter must not block the one-role index.
        cur = conn.execute(
            """UPDATE meter SET active = false, updated_at = now()
               WHERE frontier_id = %s AND active
                 AND (serial, role) NOT IN (SELECT * FROM unnest(%s::text[], %s::text[]))""",
            (fid, [m.serial for m in fr.meters], [m.role for m in fr.meters]),
        )
        report.meters_deactivated += cur.rowcount
    # A serial still active under a frontier outside this file is a conflict (a typo must
    # not silently move another frontier's meter).
    pairs = [(m.serial, ids[fr.code]) for fr in inv.frontiers for m in fr.meters]
    if pairs:
        clashes = conn.execute(
            """SELECT m.serial, f.code FROM meter m JOIN frontier f ON f.id = m.frontier_id
               JOIN unnest(%s::text[], %s::bigint[]) AS want(serial, frontier_id)
                 ON want.serial = m.serial
               WHERE m.active AND m.frontier_id <> want.frontier_id""",
            ([p[0] for p in pairs], [p[1] for p in pairs]),
        ).fetchall()
        if clashes:
            raise InventoryError(
                [
                    inv.issue(
                        meter=serial,
                        msg=f"meter {serial} is active under frontier {code}; remove it there "
                        "first (re-import that frontier without it)",
                    )
                    for serial, code in clashes
                ]
            )
    for fr in inv.frontiers:
        fid = ids[fr.code]
        for meter in fr.meters:
            mid, outcome = _upsert(
                conn, _METER_UPSERT, _meter_values(meter, fid), "meter", "serial"
            )
            setattr(report, f"meters_{outcome}", getattr(report, f"meters_{outcome}") + 1)
            report.credentials_changed += _sync_credentials(conn, mid, meter, box)
        findings = compliance.check(fr)
        _sync_violations(conn, fid, findings)
        if findings:
            report.violations[fr.code] = findings


# --- reading the registry -----------------------------------------------------------------

_LIST_SQL = """
SELECT f.id, f.code, f.name, f.kind, f.stn, f.voltage_level, f.installed_capacity_mva,
       f.monthly_energy_mwh, f.adjustment_factor, f.point_type, f.point_type_explicit,
       f.clock_target_s, f.attributes, f.network_operator, f.asic_period,
       f.calibration_interval_years,
       coalesce((SELECT json_agg(json_build_object(
                    'serial', m.serial, 'role', m.role, 'protocol', m.protocol,
                    'active', m.active,
                    'endpoint', m.primary_host || ':' || m.primary_port,
                    'backup_endpoint', m.backup_host || ':' || m.backup_port,
                    'params', m.params, 'ct_ratio', m.ct_ratio, 'vt_ratio', m.vt_ratio,
                    'accuracy_active', m.accuracy_active,
                    'accuracy_reactive', m.accuracy_reactive,
                    'ct_accuracy', m.ct_accuracy, 'vt_accuracy', m.vt_accuracy,
                    'manufacturer', m.manufacturer, 'model', m.model,
                    'channels', m.channels,
                    'credentials', coalesce((SELECT json_agg(json_build_object(
                                       'level', c.level, 'client', c.client)
                                       ORDER BY c.level)
                                     FROM meter_credential c WHERE c.meter_id = m.id), '[]'))
                  ORDER BY m.active DESC, m.role DESC, m.serial)
                 FROM meter m WHERE m.frontier_id = f.id), '[]') AS meters,
       coalesce((SELECT json_agg(json_build_object(
                    'rule', v.rule, 'subject', v.subject, 'article', v.article,
                    'message', v.message, 'detected_at', v.detected_at)
                  ORDER BY v.rule, v.subject)
                 FROM frontier_violation v WHERE v.frontier_id = f.id), '[]') AS violations
FROM frontier f
WHERE (%(code)s::text IS NULL OR f.code = %(code)s)
  AND (%(ids)s::bigint[] IS NULL OR f.id = ANY(%(ids)s))
  AND (%(after)s::text IS NULL OR f.code > %(after)s)
ORDER BY f.code
LIMIT %(limit)s
"""
_ALL = {"ids": None, "after": None, "limit": None}


def _registry_entry(row: tuple[Any, ...]) -> dict[str, Any]:
    (fid, code, name, kind, stn, vlevel, cap, energy, factor, ptype, explicit,
     target, attrs, operator, period, calibration, meters, violations) = row  # fmt: skip
    ptype = governing_type(ptype, energy, cap)
    return {
        "code": code,
        "name": name,
        "kind": kind,
        "stn": stn,
        "voltage_level": vlevel,
        "installed_capacity_mva": cap,
        "monthly_energy_mwh": energy,
        "adjustment_factor": factor,
        "point_type": ptype,
        "point_type_explicit": explicit,
        "table1_type": rules.table1_type(energy, cap),
        "clock_target_s": target,
        "clock_limit_s": rules.clock_limit(ptype, target),
        "backup_required": rules.backup_required(ptype, kind, stn),
        "attributes": attrs,
        "network_operator": operator,
        "asic_period": period,
        "calibration_interval_years": calibration,
        "meters": meters,
        "violations": violations,
    }


def list_registry(conn: psycopg.Connection, code: str | None = None) -> list[dict[str, Any]]:
    """The registry as JSON-ready dicts. Credentials appear as levels and clients only:
    this function never reads ``secret_enc``."""
    return [_registry_entry(row) for row in conn.execute(_LIST_SQL, {"code": code, **_ALL})]


async def list_registry_async(
    conn: psycopg.AsyncConnection,
    code: str | None = None,
    *,
    ids: list[int] | None = None,
    after: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """:func:`list_registry` on an async connection (the API's pool: no thread, no new
    connection per request): only frontiers in ``ids`` (None: all), and a page of them in
    code order — ``limit`` frontiers whose code comes after ``after``."""
    params = {"code": code, "ids": ids, "after": after, "limit": limit}
    cur = await conn.execute(_LIST_SQL, params)
    return [_registry_entry(row) for row in await cur.fetchall()]


@dataclass(frozen=True)
class MeterConfig:
    """Everything the collector needs to interrogate one active meter.

    ``endpoints`` is primary first, then the backup communication channel if any.
    ``credentials`` are decrypted; ``Credentials`` keeps the secret out of its repr.
    """

    meter_id: int
    serial: str
    role: str
    protocol: str
    endpoints: tuple[Endpoint, ...]
    params: Mapping[str, Any]
    ct_ratio: float
    vt_ratio: float
    channels: tuple[Channel, ...]
    frontier_id: int
    frontier_code: str
    point_type: int
    clock_limit_s: float
    adjustment_factor: float
    credentials: Mapping[AccessLevel, Credentials] = field(repr=False)
    installed_capacity_mva: float | None = None  # the frontier's, for the plausibility guard
    broker: BrokerAccount | None = field(default=None, repr=False)  # MQTT broker login
    # Stored credentials the current key cannot decrypt ("level 1", "level 2", "broker"):
    # left out of ``credentials``/``broker`` so that only this meter fails, with this reason.
    unreadable: tuple[str, ...] = ()

    def credential(self, level: AccessLevel) -> Credentials | None:
        return self.credentials.get(level)


def governing_type(stored: int, energy: float | None, capacity: float | None) -> int:
    """The stricter of the stored type and Table 1's, so that rows stored before the
    stricter type governed (art. 9.1.1.5) never loosen a limit."""
    table1 = rules.table1_type(energy, capacity)
    return stored if table1 is None else min(stored, table1)


_METERS_SQL = """
SELECT m.id, m.serial, m.role, m.protocol, m.primary_host, m.primary_port, m.backup_host,
       m.backup_port, m.params, m.ct_ratio, m.vt_ratio, m.channels, f.id, f.code,
       f.point_type, f.clock_target_s, f.adjustment_factor, f.installed_capacity_mva,
       f.monthly_energy_mwh
FROM meter m JOIN frontier f ON f.id = m.frontier_id
WHERE m.active AND (%(code)s::text IS NULL OR f.code = %(code)s)
ORDER BY f.code, m.role DESC, m.serial
"""
_CREDS_SQL = """
SELECT meter_id, level, client, secret_enc FROM meter_credential WHERE meter_id = ANY(%s)
"""


def _meter_configs(
    rows: list[tuple[Any, ...]], creds: list[tuple[Any, ...]], box: SecretBox
) -> list[MeterConfig]:
    by_meter: dict[int, dict[AccessLevel, Credentials]] = {}
    brokers: dict[int, BrokerAccount] = {}
    unreadable: dict[int, list[str]] = {}
    for meter_id, level, client, enc in creds:
        # One credential sealed under another key (a restored backup, a replaced key file)
        # must fail only its meter: the collector records why and reads the rest.
        try:
            secret = box.decrypt(bytes(enc))
        except SecretKeyError:
            name = "broker" if level == BROKER_LEVEL else f"level {level}"
            unreadable.setdefault(meter_id, []).append(name)
            continue
        if level == BROKER_LEVEL:
            brokers[meter_id] = _broker_account(client, secret)
            continue
        lv = AccessLevel(level)
        by_meter.setdefault(meter_id, {})[lv] = Credentials(lv, secret, client)
    out = []
    for (mid, serial, role, protocol, host, port, bhost, bport, params, ct, vt, channels,
         fid, code, ptype, target, factor, capacity, energy) in rows:  # fmt: skip
        ptype = governing_type(ptype, energy, capacity)
        endpoints = (Endpoint(host, port),) + ((Endpoint(bhost, bport),) if bhost else ())
        out.append(
            MeterConfig(
                meter_id=mid,
                serial=serial,
                role=role,
                protocol=protocol,
                endpoints=endpoints,
                params=params,
                ct_ratio=ct,
                vt_ratio=vt,
                channels=tuple(Channel(c) for c in channels),
                frontier_id=fid,
                frontier_code=code,
                point_type=ptype,
                clock_limit_s=rules.clock_limit(ptype, target),
                adjustment_factor=factor,
                credentials=by_meter.get(mid, {}),
                installed_capacity_mva=capacity,
                broker=brokers.get(mid),
                unreadable=tuple(sorted(unreadable.get(mid, ()))),
            )
        )
    return out


def active_meters(
    conn: psycopg.Connection, box: SecretBox, *, frontier: str | None = None
) -> list[MeterConfig]:
    """Active meters (optionally of one frontier) with decrypted credentials."""
    rows = conn.execute(_METERS_SQL, {"code": frontier}).fetchall()
    creds = conn.execute(_CREDS_SQL, ([r[0] for r in rows],)).fetchall()
    return _meter_configs(rows, creds, box)


async def active_meters_async(
    conn: psycopg.AsyncConnection, box: SecretBox, *, frontier: str | None = None
) -> list[MeterConfig]:
    """Async twin of :func:`active_meters` for the collector."""
    cur = await conn.execute(_METERS_SQL, {"code": frontier})
    rows = await cur.fetchall()
    cur = await conn.execute(_CREDS_SQL, ([r[0] for r in rows],))
    return _meter_configs(rows, await cur.fetchall(), box)


_ONE_CRED_SQL = """
SELECT c.client, c.secret_enc FROM meter_credential c JOIN meter m ON m.id = c.meter_id
WHERE m.serial = %s AND c.level = %s
"""


def meter_credentials(
    conn: psycopg.Connection, serial: str, level: AccessLevel, box: SecretBox
) -> Credentials | None:
    """Decrypted credentials of one meter at one access level (None when not registered)."""
    row = conn.execute(_ONE_CRED_SQL, (serial, int(level))).fetchone()
    return Credentials(level, box.decrypt(bytes(row[1])), row[0]) if row else None


async def meter_credentials_async(
    conn: psycopg.AsyncConnection, serial: str, level: AccessLevel, box: SecretBox
) -> Credentials | None:
    cur = await conn.execute(_ONE_CRED_SQL, (serial, int(level)))
    row = await cur.fetchone()
    return Credentials(level, box.decrypt(bytes(row[1])), row[0]) if row else None


def to_json(registry: list[dict[str, Any]]) -> str:
    return json.dumps(registry, indent=2, ensure_ascii=False, default=str)
