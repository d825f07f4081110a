"""Monthly items of XM's message (``ReadingCount`` 1): one month's active energy per meter.

Frontiers whose registry entry says ``asic_period: monthly`` are left out of the daily
report and sent by the monthly job (``AsicReporter.report_month``): one item per meter for
the month, recorded like daily documents (``asic_document`` with ``period = 'month'``), so a
month is sent once per version and a changed month is sent again as a correction.

For frontiers reported monthly (embedded frontiers), the item's single reading is the month's
kWh of active import (export where the frontier has no import channel), ``StartDate`` the
first local day of the month. The principal's value is the settled series' sum; the
backup's is its own validated readings' sum. A month with any hour missing gives no item
(the reason is returned), never a partial sum. Two set-based queries for the whole fleet.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import psycopg

from cgm.energy import primary_factor
from cgm.localtime import PERIODS, day_bounds, local_days
from cgm.reporting.asic.format import UNUSABLE
from cgm.reporting.asic.xm_xml import ReportItem
from cgm.storage.settled import on_days

_S_DAYS = on_days("s")  # settled_reading s: its key, for chosen frontiers


def month_bounds(month: date) -> tuple[date, date]:
    first = month.replace(day=1)
    nxt = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return first, nxt


async def build_month(
    conn: psycopg.AsyncConnection,
    month: date,
    frontiers: Sequence[str] | None = None,
    *,
    monthly_only: bool = False,
) -> tuple[list[ReportItem], dict[str, str]]:
    """Items for every frontier (or ``frontiers``; with ``monthly_only``, those of the
    registry's ``asic_period: monthly``) with a complete month; and code → why not."""
    first, nxt = month_bounds(month)
    start, end = day_bounds(first)[0], day_bounds(nxt)[0]
    hours = (nxt - first).days * PERIODS
    params = {"codes": list(frontiers) if frontiers else None, "s": start, "e": end,
              "monthly": monthly_only, "days": local_days(start, end)}  # fmt: skip
    cur = await conn.execute(
        f"""WITH f AS (SELECT id, code FROM frontier
                      WHERE (%(codes)s::text[] IS NULL OR code = ANY(%(codes)s))
                        AND (NOT %(monthly)s OR asic_period = 'monthly')),
                ch AS (SELECT f.id, f.code, min(s.channel) AS channel
                       FROM f JOIN settled_reading s ON s.frontier_id = f.id
                        AND s.channel IN (1, 2) AND {_S_DAYS}
                        AND s.interval_start >= %(s)s AND s.interval_start < %(e)s
                       GROUP BY f.id, f.code)
           SELECT ch.code, ch.channel, count(*), sum(s.value)
           FROM ch JOIN settled_reading s ON s.frontier_id = ch.id AND s.channel = ch.channel
            AND {_S_DAYS} AND s.interval_start >= %(s)s AND s.interval_start < %(e)s
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
        why[code] = "no settled series" + (" (or not reported monthly)" if monthly_only else "")
    cur = await conn.execute(
        """SELECT f.code, m.ct_ratio, m.vt_ratio, f.adjustment_factor, r.channel, count(*),
                  sum(r.value)
           FROM frontier f JOIN meter m ON m.frontier_id = f.id AND m.active
                AND m.role = 'backup'
           JOIN reading r ON r.meter_id = m.id AND r.channel IN (1, 2)
            AND r.interval_start >= %(s)s AND r.interval_start < %(e)s
            AND r.quality & %(bad)s = 0
           WHERE (%(codes)s::text[] IS NULL OR f.code = ANY(%(codes)s))
             AND (NOT %(monthly)s OR f.asic_period = 'monthly')
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


@dataclass(frozen=True)
class MonthDocument:
    """One meter's month as delivered: the XM item, and the stored record (content and its
    hash) that delivery compares to send each version once, as for daily documents."""

    frontier_id: int
    meter_id: int
    role: str
    item: ReportItem
    content: dict[str, Any]
    settled_version: int
    estimated: list[dict[str, Any]] = field(default_factory=list)
    period: str = "month"

    @property
    def day(self) -> date:
        return self.item.start

    @property
    def file_name(self) -> str:
        return self.item.name

    @property
    def content_hash(self) -> str:
        body = json.dumps(self.content, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(body).hexdigest()


async def month_documents(
    conn: psycopg.AsyncConnection,
    month: date,
    frontiers: Sequence[str] | None = None,
    held: dict[str, str] | None = None,
) -> tuple[list[MonthDocument], dict[str, str], dict[str, str]]:
    """The month's documents of the frontiers reported monthly (not held); code → why not
    ready; code → hold reason."""
    items, why = await build_month(conn, month, frontiers, monthly_only=True)
    first, nxt = month_bounds(month)
    cur = await conn.execute(
        f"""SELECT f.code, f.id, m.role, m.id, m.serial,
                  (SELECT max(s.version) FROM settled_reading s WHERE s.frontier_id = f.id
                    AND {_S_DAYS}
                      AND s.interval_start >= %(s)s AND s.interval_start < %(e)s),
                  (SELECT count(*) FILTER (WHERE s.source = 'estimate') FROM settled_reading s
                    WHERE s.frontier_id = f.id AND s.channel IN (1, 2)
                      AND {_S_DAYS}
                      AND s.interval_start >= %(s)s AND s.interval_start < %(e)s),
                  (SELECT count(*) FILTER (WHERE s.source = 'backup') FROM settled_reading s
                    WHERE s.frontier_id = f.id AND s.channel IN (1, 2)
                      AND {_S_DAYS}
                      AND s.interval_start >= %(s)s AND s.interval_start < %(e)s)
           FROM frontier f JOIN meter m ON m.frontier_id = f.id AND m.active
           WHERE f.code = ANY(%(codes)s)""",
        {"codes": sorted({i.border_code for i in items}), "s": day_bounds(first)[0],
         "e": day_bounds(nxt)[0], "days": local_days(day_bounds(first)[0], day_bounds(nxt)[0])},
    )  # fmt: skip
    meta: dict[tuple[str, str], tuple] = {}
    for code, fid, role, mid, serial, version, estimated, backup in await cur.fetchall():
        meta[(code, role)] = (fid, mid, serial, version or 1, estimated, backup)
    held = held or {}
    docs: list[MonthDocument] = []
    held_out: dict[str, str] = {}
    for item in items:
        if item.border_code in held:
            held_out[item.border_code] = held[item.border_code]
            continue
        role = "backup" if item.is_backup else "principal"
        fid, mid, serial, version, estimated, backup = meta[(item.border_code, role)]
        content: dict[str, Any] = {
            "frontera": item.border_code, "medidor": serial, "mes": f"{first:%Y-%m}",
            "kWh": item.readings[0], "horas": (nxt - first).days * PERIODS,
        }  # fmt: skip
        if role == "principal":  # what the one value cannot say, kept with the record
            content.update(horasEstimadas=estimated, horasRespaldo=backup)
        docs.append(MonthDocument(fid, mid, role, item, content, version,
                                  [{"hours": estimated}] if estimated and role == "principal"
                                  else []))  # fmt: skip
    return docs, why, held_out
