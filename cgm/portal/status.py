"""The portal's status report for a period: which units report, which do not and whether
they justified it, totals, and the energy-efficiency indicator set.

A unit reports for a period when at least one meter it owns or is associated with has
settled consumption in it. The indicator set is derived, never typed in: units that report
and whose consumption is not shared, i.e. every meter they read is exclusive and they own it.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import psycopg


async def status_report(conn: psycopg.AsyncConnection, first: date, last: date) -> dict[str, Any]:
    cur = await conn.execute(
        """WITH readable AS (
               SELECT c.owner_unit_id AS unit_id, m.id AS meter_id, true AS owned
               FROM portal_meter m JOIN portal_client_number c ON c.id = m.client_number_id
               UNION ALL
               SELECT a.unit_id, a.meter_id, false FROM portal_meter_unit a
           ), per_unit AS (
               SELECT r.unit_id,
                      count(*) AS meters,
                      bool_and(r.owned AND NOT m.shared) AS exclusive_only,
                      bool_or(EXISTS (
                          SELECT 1 FROM settled_day s
                          WHERE s.frontier_id = m.frontier_id AND s.channel = m.channel
                            AND s.day BETWEEN %(first)s AND %(last)s
                      )) AS has_data
               FROM readable r JOIN portal_meter m ON m.id = r.meter_id
               GROUP BY r.unit_id
           )
           SELECT u.code, u.institution, u.service, u.name, u.non_reporting_justification,
                  coalesce(p.meters, 0), coalesce(p.exclusive_only, false),
                  coalesce(p.has_data, false)
           FROM portal_unit u LEFT JOIN per_unit p ON p.unit_id = u.id
           ORDER BY u.code""",
        {"first": first, "last": last},
    )
    rows = await cur.fetchall()
    not_reporting, indicator = [], []
    reporting = 0
    for code, inst, service, name, why, meters, exclusive, has_data in rows:
        if has_data:
            reporting += 1
            if exclusive:
                indicator.append(code)
            continue
        justified = bool((why or "").strip())
        not_reporting.append(
            {
                "unit": code,
                "institution": inst,
                "service": service,
                "name": name,
                "meters": meters,
                "justified": justified,
                "will_report": "no, " + why.strip() if justified else "no justification given",
            }
        )
    return {
        "first_day": first.isoformat(),
        "last_day": last.isoformat(),
        "totals": {
            "units_loaded": len(rows),
            "units_reporting": reporting,
            "units_not_reporting": len(not_reporting),
            "not_reporting_justified": sum(1 for n in not_reporting if n["justified"]),
            "not_reporting_unjustified": sum(1 for n in not_reporting if not n["justified"]),
            "indicator_set": len(indicator),
        },
        "not_reporting": not_reporting,
        "indicator_set": indicator,
    }
