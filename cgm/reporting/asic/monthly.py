"""Monthly items of XM's message (``ReadingCount`` 1): one month's active energy per meter.

For frontiers reported monthly (embedded frontiers), the item's single reading is the month's
kWh of active import (export where the frontier has no import channel), ``StartDate`` the
first local day of the month. The principal's value is the settled series' sum; the
backup's is its own validated readings' sum. A month with any hour missing gives no item
(the reason is returned), never a partial sum. Two set-based queries for the whole fleet.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import psycopg

from cgm.energy import primary_factor
from cgm.localtime import PERIODS, day_bounds
from cgm.reporting.asic.format import UNUSABLE
from cgm.reporting.asic.xm_xml import ReportItem


def month_bounds(month: date) -> tuple[date, date]:
    first = month.replace(day=1)
    nxt = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return first, nxt


async def build_month(
    conn: psycopg.AsyncConnection, month: date, frontiers: Sequence[str] | None = None
) -> tuple[list[ReportItem], dict[str, str]]:
    """Items for every frontier (or ``frontiers``) with a complete month; and code → why not."""
    first, nxt = month_bounds(month)
    start, end = day_bounds(first)[0], day_bounds(nxt)[0]
    hours = (nxt - first).days * PERIODS
    params = {"codes": list(frontiers) if frontiers else None, "s": start, "e": end}
    cur = await conn.execute(
        """WITH f AS (SELECT id, code FROM frontier
                      WHERE %(codes)s::text[] IS NULL OR code = ANY(%(codes)s)),
                ch AS (SELECT f.id, f.code, min(s.channel) AS channel
                       FROM f JOIN settled_reading s ON s.frontier_id = f.id
                        AND s.channel IN (1, 2)
                        AND s.interval_start >= %(s)s AND s.interval_start < %(e)s
                       GROUP BY f.id, f.code)
           SELECT ch.code, ch.channel, count(*), sum(s.value)
           FROM ch JOIN settled_reading s ON s.frontier_id = ch.id AND s.channel = ch.channel
            AND s.interval_start >= %(s)s AND s.interval_start < %(e)s
           GROUP BY ch.code, ch.channel ORDER BY ch.code""",
        params,
    )
    items: list[ReportItem] = []
    why: dict[str, str] = {}
    channel_of: dict[str, int] = {}
    for code, channel, n, total in await cur.fetchall():
        if n != hours:
            why[code] = f"settled series {n}/{hours} hours"
            continue
        channel_of[code] = channel
        items.append(ReportItem(code, False, first, (round(total, 6),)))
    for code in set(frontiers or ()) - set(channel_of) - set(why):
        why[code] = "no settled series"
    cur = await conn.execute(
        """SELECT f.code, m.ct_ratio, m.vt_ratio, f.adjustment_factor, r.channel, count(*),
                  sum(r.value)
           FROM frontier f JOIN meter m ON m.frontier_id = f.id AND m.active
                AND m.role = 'backup'
           JOIN reading r ON r.meter_id = m.id AND r.channel IN (1, 2)
            AND r.interval_start >= %(s)s AND r.interval_start < %(e)s
            AND r.quality & %(bad)s = 0
           WHERE %(codes)s::text[] IS NULL OR f.code = ANY(%(codes)s)
           GROUP BY f.id, m.id, r.channel ORDER BY f.code""",
        {**params, "bad": int(UNUSABLE)},
    )
    for code, ct, vt, adj, channel, n, total in await cur.fetchall():
        if channel_of.get(code) != channel:
            continue
        if n != hours:
            why[f"{code} (backup)"] = f"own validated readings {n}/{hours} hours"
            continue
        kwh = round(total * primary_factor(ct, vt, adj), 6)
        items.append(ReportItem(code, True, first, (kwh,)))
    items.sort(key=lambda i: (i.border_code, i.is_backup))
    return items, why
