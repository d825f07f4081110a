"""A portal meter's consumption from the settled series, hourly, daily or monthly.

Every value keeps where it came from (measured by the principal or the backup meter,
estimated with its method, or entered by hand), and every period says how much of it is
estimated. A missing hour is never a zero: a period with hours missing says so
(``missing_hours``) and its total covers only the hours present.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Literal

import psycopg

from cgm.localtime import day_bounds, local_day, period_of
from cgm.storage import read_settled

Resolution = Literal["hourly", "daily", "monthly"]
MAX_DAYS = 366  # a year of hourly values per request


@dataclass(frozen=True)
class PortalMeter:
    id: int
    number: str
    frontier_id: int | None
    frontier: str | None
    channel: int | None
    channel_name: str | None
    unit: str | None  # the channel's unit (kWh, kvarh)


async def find_meter(conn: psycopg.AsyncConnection, number: str) -> PortalMeter | None:
    cur = await conn.execute(
        """SELECT m.id, m.number, m.frontier_id, f.code, m.channel, ch.name, ch.unit
           FROM portal_meter m LEFT JOIN frontier f ON f.id = m.frontier_id
           LEFT JOIN channel ch ON ch.id = m.channel WHERE m.number = %s""",
        (number,),
    )
    row = await cur.fetchone()
    return PortalMeter(*row) if row else None


def _hours(first: date, last: date) -> dict[date, int]:
    """Hours in each local day (always 24: Colombia keeps no daylight saving)."""
    out, d = {}, first
    while d <= last:
        start, end = day_bounds(d)
        out[d] = int((end - start).total_seconds() // 3600)
        d += timedelta(days=1)
    return out


def _new_period(key: str, expected: int) -> dict[str, Any]:
    return {
        "period": key,
        "value": 0.0,
        "hours": 0,
        "expected_hours": expected,
        "missing_hours": expected,
        "estimated_hours": 0,
        "estimated_value": 0.0,
        "by_source": {},
    }


async def consumption(
    conn: psycopg.AsyncConnection,
    meter: PortalMeter,
    first: date,
    last: date,
    resolution: Resolution,
) -> dict[str, Any]:
    """The consumption of ``meter`` over local days ``first``..``last`` (inclusive)."""
    if meter.frontier_id is None or meter.channel is None:
        raise LookupError(f"meter {meter.number} is not linked to a CGM meter")
    start, _ = day_bounds(first)
    _, end = day_bounds(last)
    rows = await read_settled(conn, [meter.frontier_id], start, end, channels=[meter.channel])
    days = _hours(first, last)
    hourly: list[dict[str, Any]] = []
    periods: dict[str, dict[str, Any]] = {}
    if resolution != "hourly":
        for d, n in days.items():
            key = d.isoformat() if resolution == "daily" else d.strftime("%Y-%m")
            p = periods.get(key) or periods.setdefault(key, _new_period(key, 0))
            p["expected_hours"] += n
            p["missing_hours"] += n
    for r in rows:
        estimated = r.source == "estimate"
        source = f"estimate:{r.method}" if estimated else r.source
        if resolution == "hourly":
            d, period = period_of(r.interval_start)
            hourly.append(
                {
                    "interval_start": r.interval_start.isoformat(),
                    "day": d.isoformat(),
                    "hour_period": period,
                    "value": r.value,
                    "source": r.source,
                    "method": r.method,
                    "estimated": estimated,
                    "version": r.version,
                }
            )
            continue
        d = local_day(r.interval_start)
        key = d.isoformat() if resolution == "daily" else d.strftime("%Y-%m")
        p = periods[key]
        p["value"] += r.value
        p["hours"] += 1
        p["missing_hours"] -= 1
        p["by_source"][source] = p["by_source"].get(source, 0) + 1
        if estimated:
            p["estimated_hours"] += 1
            p["estimated_value"] += r.value
    expected = sum(days.values())
    total = sum(r.value for r in rows)
    est = [r for r in rows if r.source == "estimate"]
    out: dict[str, Any] = {
        "meter": meter.number,
        "frontier": meter.frontier,
        "channel": meter.channel_name,
        "units": f"{meter.unit} (primary)",
        "first_day": first.isoformat(),
        "last_day": last.isoformat(),
        "resolution": resolution,
        "totals": {
            "value": total,
            "hours": len(rows),
            "expected_hours": expected,
            "missing_hours": expected - len(rows),
            "estimated_hours": len(est),
            "estimated_value": sum(r.value for r in est),
            "estimated_share": (sum(r.value for r in est) / total) if total else None,
        },
    }
    out["values"] = hourly if resolution == "hourly" else list(periods.values())
    return out
