"""The CGM's annual management report (art. 9.1.1.39), produced from the data of one year.

Per frontier and for the fleet: days reported to the ASIC (accepted, rejected, never sent),
settled hours and how many were estimated or taken from the backup meter, failures and thefts
by element, the Table 5 position at the year's end, level-2 accesses and clock corrections,
and the hoja de vida work of the year (maintenance, calibrations, verifications, seals). It
goes to the ASIC before the last business day of February; its layout is the project's (no
public template was found). A handful of grouped queries, whatever the fleet size.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import psycopg

from cgm.failures import fleet_counts
from cgm.frontier_log import CLOCK_SYNC, LEVEL2_ACCESS
from cgm.localtime import day_bounds

_QUERIES: dict[str, str] = {
    "asic_days": """
        SELECT f.code, count(DISTINCT d.day) FILTER (WHERE d.state IN ('success',
                   'success_warning')),
               count(DISTINCT d.day) FILTER (WHERE d.state = 'error')
        FROM frontier f JOIN asic_document d ON d.frontier_id = f.id AND d.role = 'principal'
         AND d.day >= %(first)s AND d.day < %(next)s
        GROUP BY f.code""",
    "settled": """
        SELECT f.code, count(*), count(*) FILTER (WHERE s.source = 'estimate'),
               count(*) FILTER (WHERE s.source = 'backup'),
               count(*) FILTER (WHERE s.source = 'manual')
        FROM frontier f JOIN settled_reading s ON s.frontier_id = f.id AND s.channel = 1
         AND s.interval_start >= %(start)s AND s.interval_start < %(end)s
        GROUP BY f.code""",
    "failures": """
        SELECT f.code, e.kind, e.element, count(*)
        FROM frontier f JOIN failure_event e ON e.frontier_id = f.id
         AND e.started_at >= %(start)s AND e.started_at < %(end)s
        GROUP BY f.code, e.kind, e.element""",
    "log": """
        SELECT f.code, count(*) FILTER (WHERE l.kind = %(l2)s),
               count(*) FILTER (WHERE l.kind = %(l2)s AND l.purpose = %(clock)s
                                  AND l.activities->>'result' IS DISTINCT FROM 'failed')
        FROM frontier f JOIN frontier_log l ON l.frontier_id = f.id
         AND l.at >= %(start)s AND l.at < %(end)s
        GROUP BY f.code""",
    "hoja": """
        SELECT f.code, h.section, count(*)
        FROM frontier f JOIN hoja_entry h ON h.frontier_id = f.id
         AND h.entry_date >= %(first)s AND h.entry_date < %(next)s
        GROUP BY f.code, h.section""",
}


async def _q(conn: psycopg.AsyncConnection, name: str, params: dict[str, Any]) -> list[tuple]:
    return await (await conn.execute(_QUERIES[name], params)).fetchall()


async def annual_report(
    conn: psycopg.AsyncConnection, year: int, *, cgm_code: str, now: datetime | None = None
) -> dict[str, Any]:
    first, nxt = date(year, 1, 1), date(year + 1, 1, 1)
    start, end = day_bounds(first)[0], day_bounds(nxt)[0]
    params = {"first": first, "next": nxt, "start": start, "end": end,
              "l2": LEVEL2_ACCESS, "clock": CLOCK_SYNC}  # fmt: skip
    cur = await conn.execute("SELECT code FROM frontier ORDER BY code")
    days = (nxt - first).days
    per: dict[str, dict[str, Any]] = {
        code: {"asic_days_accepted": 0, "asic_days_rejected": 0, "asic_days_missing": days,
               "settled_hours": 0, "estimated_hours": 0, "backup_hours": 0, "manual_hours": 0,
               "failures": {}, "thefts": {}, "level2_accesses": 0, "clock_corrections": 0,
               "hoja_de_vida": {}}  # fmt: skip
        for (code,) in await cur.fetchall()
    }
    for code, ok, rejected in await _q(conn, "asic_days", params):
        per[code].update(asic_days_accepted=ok, asic_days_rejected=rejected,
                         asic_days_missing=days - ok)  # fmt: skip
    for code, n, est, bkp, man in await _q(conn, "settled", params):
        per[code].update(settled_hours=n, estimated_hours=est, backup_hours=bkp, manual_hours=man)
    for code, kind, element, n in await _q(conn, "failures", params):
        per[code]["thefts" if kind == "theft" else "failures"][element] = n
    for code, l2, clock in await _q(conn, "log", params):
        per[code].update(level2_accesses=l2, clock_corrections=clock)
    for code, section, n in await _q(conn, "hoja", params):
        per[code]["hoja_de_vida"][section] = n
    year_end = min(end, now or datetime.now(UTC))
    for code, c in (await fleet_counts(conn, year_end)).items():
        per[code]["table5_at_year_end"] = c.as_dict()
    totals = {
        k: sum(p[k] for p in per.values())
        for k in ("asic_days_accepted", "asic_days_rejected", "asic_days_missing",
                  "settled_hours", "estimated_hours", "backup_hours", "manual_hours",
                  "level2_accesses", "clock_corrections")  # fmt: skip
    }
    totals["failures"] = sum(sum(p["failures"].values()) for p in per.values())
    totals["thefts"] = sum(sum(p["thefts"].values()) for p in per.values())
    totals["frontiers_over_table5"] = sorted(
        c for c, p in per.items() if p.get("table5_at_year_end", {}).get("status") == "exceeded"
    )
    return {"report": "InformeAnualCGM", "codigoCGM": cgm_code, "year": year,
            "generated_at": (now or datetime.now(UTC)).isoformat(), "frontiers": len(per),
            "totals": totals, "by_frontier": per}  # fmt: skip
