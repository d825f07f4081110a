"""``cgm audit``: every frontier checked against what the CGM can verify, pass or fail with
evidence. One grouped query per check for the whole fleet (never one per frontier), so the
report over 10,000 frontiers takes seconds (benchmarks/README.md).

Checks (README, "cgm audit"): backup meter present where required; Table 2 classes of the
meters and of the CTs/VTs recorded in the hoja de vida; clock: the largest |offset| of every
read of the last day (collection sessions, before any correction) inside its Table 3 limit;
capture period and memory depth (the configuration findings collection records); both access
levels configured and distinct, comparing the decrypted secrets (in memory only, never
logged or shown); maintenance (Table 4) and calibration due; failures against Table 5; days
unreported or estimated for too long; and, fleet-wide, the audit hash chains.

Calibration validity: neither the Código's text kept in DESIGN.md nor the issue fixes how long
a calibration certificate stays valid. The interval is therefore a registry setting per
frontier (``calibration_interval_years``) whose default is the Table 4 maintenance interval
of the frontier's point type (type 1: 2 years, 2–3: 4, 4–5: 10; Código de Medida, Table 4),
the periodic verification that would renew the calibration. Hoja de vida entries that were
corrected or voided (``hoja_de_vida.correct_entry``) are read as their current version.
"""

from __future__ import annotations

import hmac
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg

from cgm.failures import fleet_counts
from cgm.hoja_de_vida import CURRENT, TABLE4_YEARS, add_months, maintenance_due
from cgm.localtime import day_bounds, local_day
from cgm.registry import rules
from cgm.security import SecretBox, SecretKeyError
from cgm.storage.settled import on_days

CHECKS = ("backup_meter", "table2_classes", "clock", "capture_and_memory", "access_levels",
          "maintenance_calibration", "table5_failures", "reporting")  # fmt: skip
UNREPORTED_LOOKBACK_DAYS = 7
ESTIMATED_HOURS_LIMIT = 72  # estimated hours of the last week before it is "too long"


@dataclass
class FrontierAudit:
    code: str
    failures: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    notes: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def fail(self, check: str, evidence: str) -> None:
        self.failures[check].append(evidence)

    @property
    def ok(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {
            "frontier": self.code,
            "ok": self.ok,
            "checks": {c: {"ok": c not in self.failures, "evidence": self.failures.get(c, []),
                           **({"notes": self.notes[c]} if self.notes.get(c) else {})}
                       for c in CHECKS},  # fmt: skip
        }


async def _rows(conn: psycopg.AsyncConnection, sql: str, params: dict[str, Any]) -> list[tuple]:
    return await (await conn.execute(sql, params)).fetchall()


_SCOPE = "(%(codes)s::text[] IS NULL OR f.code = ANY(%(codes)s))"


async def audit(
    conn: psycopg.AsyncConnection,
    *,
    now: datetime | None = None,
    frontiers: list[str] | None = None,
    box: SecretBox | None = None,
) -> list[FrontierAudit]:
    """``box`` decrypts the meter secrets to compare the two levels; without it (no key)
    the access check fails with that evidence rather than guess from ciphertexts."""
    now = now or datetime.now(UTC)
    today = local_day(now)
    p: dict[str, Any] = {"codes": frontiers, "now": now, "day_ago": now - timedelta(days=1)}
    base = await _rows(conn, f"""
        SELECT f.code, f.point_type, f.kind, f.stn, f.clock_target_s,
               coalesce(f.operation_start, (f.created_at AT TIME ZONE 'UTC')::date),
               f.calibration_interval_years
        FROM frontier f WHERE {_SCOPE} ORDER BY f.code""", p)  # fmt: skip
    out = {code: FrontierAudit(code) for code, *_ in base}
    info = {code: rest for code, *rest in base}

    # Meters: backup presence, classes, clock over the last day, capture/memory findings,
    # credentials. The clock figures come from every session of the last day (index
    # collection_session (meter_id, started_at)), the worst |offset| first.
    meters = await _rows(conn, f"""
        SELECT f.code, m.id, m.serial, m.role, m.accuracy_active, m.accuracy_reactive,
               h.last_success, h.config_findings, c.n, c.hi, c.lo
        FROM frontier f JOIN meter m ON m.frontier_id = f.id AND m.active
        LEFT JOIN meter_health h ON h.meter_id = m.id
        LEFT JOIN LATERAL (
            SELECT count(s.clock_offset_s) AS n, max(s.clock_offset_s) AS hi,
                   min(s.clock_offset_s) AS lo
            FROM collection_session s
            WHERE s.meter_id = m.id AND s.started_at >= %(day_ago)s
              AND s.started_at <= %(now)s) c ON true
        WHERE {_SCOPE}""", p)  # fmt: skip
    secrets = await _rows(conn, f"""
        SELECT c.meter_id, c.level, c.secret_enc FROM frontier f
        JOIN meter m ON m.frontier_id = f.id AND m.active
        JOIN meter_credential c ON c.meter_id = m.id AND c.level IN (1, 2)
        WHERE {_SCOPE}""", p)  # fmt: skip
    creds: dict[int, dict[int, bytes]] = defaultdict(dict)
    for mid, level, enc in secrets:
        creds[mid][level] = bytes(enc)
    roles: dict[str, set[str]] = defaultdict(set)
    late: dict[int, tuple[FrontierAudit, str, float, float, int]] = {}  # clock past its limit
    for code, mid, serial, role, acc_a, acc_r, last_ok, findings, n, hi, lo in meters:
        a = out[code]
        pt, _, _, target, _, _ = info[code]
        roles[code].add(role)
        req = rules.TABLE2_ACCURACY[pt]
        for what, actual, required in (("active", acc_a, req.active),
                                       ("reactive", acc_r, req.reactive)):  # fmt: skip
            if actual is None:
                a.fail("table2_classes", f"{serial}: {what} class not declared (type {pt} "
                       f"requires {required})")  # fmt: skip
            elif not rules.meets(actual, required):
                a.fail("table2_classes", f"{serial}: {what} class {actual} below {required}")
        limit = rules.clock_limit(pt, target)
        if not n:
            a.fail("clock", f"{serial}: clock not read in the last day (last read {last_ok})")
        elif max(hi, -lo) > limit:
            late[mid] = (a, serial, hi if hi >= -lo else lo, limit, n)
        for finding in findings or []:
            a.fail("capture_and_memory", f"{serial}: {finding}")
        levels = sorted(creds.get(mid, {}))
        if levels != [1, 2]:
            a.fail("access_levels", f"{serial}: credentials for levels {levels}, need 1 and 2")
        else:
            problem = _same_secrets(box, creds[mid][1], creds[mid][2])
            if problem:
                a.fail("access_levels", f"{serial}: {problem}")
        if last_ok is None or last_ok < p["day_ago"]:
            a.fail("access_levels", f"{serial}: no successful level-1 read in the last day")
    if late:  # when the worst offset was read: one index lookup per failing meter
        when = dict(await _rows(conn, """
            SELECT m, (SELECT s.started_at FROM collection_session s WHERE s.meter_id = m
                        AND s.started_at >= %(day_ago)s AND s.started_at <= %(now)s
                        AND s.clock_offset_s IS NOT NULL
                        ORDER BY abs(s.clock_offset_s) DESC, s.started_at DESC LIMIT 1)
            FROM unnest(%(mids)s::bigint[]) m""", {**p, "mids": list(late)}))  # fmt: skip
        for mid, (a, serial, worst, limit, n) in late.items():
            a.fail("clock", f"{serial}: offset {worst:+.1f} s at {when[mid]:%Y-%m-%d %H:%M} "
                   f"UTC beyond the {limit:.0f} s limit (largest of {n} reads in the last day)")
    for code, (pt, kind, stn, _, _, _) in info.items():
        if "principal" not in roles[code]:
            out[code].fail("backup_meter", "no active principal meter")
        if rules.backup_required(pt, kind, stn) and "backup" not in roles[code]:
            out[code].fail("backup_meter", f"type {pt} {kind}{' STN' if stn else ''} frontier "
                           "requires a backup meter; none active")  # fmt: skip

    # CT/VT classes and calibrations from the hoja de vida (the latest current entry per
    # serial: corrected and voided entries are read as their correction).
    equipment = await _rows(conn, f"""
        SELECT DISTINCT ON (f.code, e.data->>'serial') f.code, e.data->>'kind',
               e.data->>'serial', e.data->>'accuracy_class', e.data->>'action',
               (SELECT max(c.entry_date) FROM hoja_entry c WHERE c.frontier_id = f.id
                 AND c.section = 'calibration' AND {CURRENT.format(e="c")}
                 AND c.data->>'element_serial' = e.data->>'serial')
        FROM frontier f JOIN hoja_entry e ON e.frontier_id = f.id AND e.section = 'equipment'
         AND e.data->>'kind' IN ('ct', 'vt', 'meter') AND {CURRENT.format(e="e")}
        WHERE {_SCOPE}
        ORDER BY f.code, e.data->>'serial', e.entry_date DESC, e.id DESC""", p)  # fmt: skip
    has_ct_vt: set[str] = set()
    for code, kind, serial, cls, action, calibrated in equipment:
        if action == "removed":
            continue
        a, pt = out[code], info[code][0]
        years = info[code][5]
        if kind in ("ct", "vt"):
            has_ct_vt.add(code)
            required = getattr(rules.TABLE2_ACCURACY[pt], kind)
            if required and cls is None:
                a.fail("table2_classes", f"{kind.upper()} {serial}: class not recorded")
            elif required and not rules.meets(cls, required):
                a.fail("table2_classes", f"{kind.upper()} {serial}: class {cls} below {required}")
        if calibrated is None:
            a.fail("maintenance_calibration", f"{kind} {serial}: no calibration certificate")
            continue
        due = add_months(calibrated, round(12 * (years or TABLE4_YEARS[pt])))
        source = "registry setting" if years else f"Table 4 default for type {pt}"
        if today >= due:
            a.fail("maintenance_calibration", f"{kind} {serial}: calibration of {calibrated} "
                   f"due since {due} (every {years or TABLE4_YEARS[pt]:g} years, {source})")
        elif today >= add_months(due, -3):
            a.notes["maintenance_calibration"].append(
                f"{kind} {serial}: calibration due {due}")
    for code in out:
        if info[code][0] <= 4 and code not in has_ct_vt:
            out[code].notes["table2_classes"].append("no CT/VT recorded in the hoja de vida")

    # Maintenance under Table 4.
    done = dict(await _rows(conn, f"""
        SELECT f.code, max(e.entry_date) FROM frontier f JOIN hoja_entry e
          ON e.frontier_id = f.id AND e.section = 'maintenance' AND e.data->>'status' = 'done'
         AND {CURRENT.format(e="e")}
        WHERE {_SCOPE} GROUP BY f.code""", p))  # fmt: skip
    for code, (pt, _, _, _, since, _) in info.items():
        due = maintenance_due(pt, done.get(code), since, today)
        if due["notice"] == "overdue":
            out[code].fail("maintenance_calibration",
                           f"maintenance overdue since {due['next_due']} (Table 4: every "
                           f"{due['interval_years']} years)")  # fmt: skip
        elif due["notice"]:
            out[code].notes["maintenance_calibration"].append(
                f"maintenance due {due['next_due']} ({due['notice']} notice)")

    # Table 5.
    for code, c in (await fleet_counts(conn, now, frontiers=frontiers)).items():
        if c.status == "exceeded":
            out[code].fail("table5_failures", f"{c.count} failures in 12 months, Table 5 limit "
                           f"{c.limit} (year {c.year}): events {list(c.groups)}")  # fmt: skip
        elif c.status == "warning":
            out[code].notes["table5_failures"].append(f"{c.count} of {c.limit} failures")

    # Reporting: days not accepted by the ASIC, estimation too long.
    first = today - timedelta(days=UNREPORTED_LOOKBACK_DAYS)
    p.update(first=first, yesterday=today - timedelta(days=1),
             start=day_bounds(first)[0], end=day_bounds(today)[0],
             days=[first + timedelta(days=n) for n in range(UNREPORTED_LOOKBACK_DAYS)])  # fmt: skip
    reported = await _rows(conn, f"""
        SELECT f.code, array_agg(DISTINCT d.day) FROM frontier f JOIN asic_document d
          ON d.frontier_id = f.id AND d.role = 'principal' AND d.day BETWEEN %(first)s
         AND %(yesterday)s AND d.state IN ('success', 'success_warning')
        WHERE {_SCOPE} GROUP BY f.code""", p)  # fmt: skip
    ok_days = {code: set(days) for code, days in reported}
    wanted = {first + timedelta(days=n) for n in range(UNREPORTED_LOOKBACK_DAYS)}
    for code, a in out.items():
        missing = sorted(wanted - ok_days.get(code, set()))
        if missing:
            days = ", ".join(map(date.isoformat, missing))
            a.fail("reporting", f"{len(missing)} of the last {UNREPORTED_LOOKBACK_DAYS} days "
                   f"not accepted by the ASIC: {days}")  # fmt: skip
    estimated = await _rows(conn, f"""
        SELECT f.code, count(*) FROM frontier f JOIN settled_reading s ON s.frontier_id = f.id
         AND {on_days("s")} AND s.channel = 1 AND s.source = 'estimate'
         AND s.interval_start >= %(start)s AND s.interval_start < %(end)s
        WHERE {_SCOPE} GROUP BY f.code HAVING count(*) > {ESTIMATED_HOURS_LIMIT}""", p)  # fmt: skip
    for code, n in estimated:
        out[code].fail("reporting", f"{n} estimated hours in the last {UNREPORTED_LOOKBACK_DAYS}"
                       f" days (limit {ESTIMATED_HOURS_LIMIT})")  # fmt: skip
    return list(out.values())


def _same_secrets(box: SecretBox | None, level1: bytes, level2: bytes) -> str | None:
    """Why the two levels' secrets fail art. 17's distinctness, or None. Ciphertexts are
    random, so only the decrypted secrets can be compared; they stay in this frame."""
    if box is None:
        return "secrets not compared: no encryption key given to the audit"
    try:
        same = hmac.compare_digest(box.decrypt(level1).encode(), box.decrypt(level2).encode())
    except SecretKeyError:
        return "a stored secret cannot be decrypted with the current key"
    return "level-1 and level-2 secrets are identical" if same else None
