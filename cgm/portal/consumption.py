"""A portal meter's consumption from the settled series, hourly, daily or monthly.

Every value keeps where it came from (measured by the principal or the backup meter,
estimated with its method, or entered by hand), and every period says how much of it is
estimated. A missing hour is never a zero: a period with hours missing says so
(``missing_hours``) and its total covers only the hours present.

Why it is built in SQL: a year of hourly values is 8,760 rows, and turning each into Python
objects (timestamps, the ``detail`` JSON, a dict per hour, the framework's generic encoder)
cost about a second a request. PostgreSQL groups the daily and monthly periods itself
(``width_bucket`` over period starts computed by :mod:`cgm.localtime`, so local days still
come from there only) and writes the hourly array as JSON text, which passes through
untouched; only the few-hundred-row summaries are assembled here. Figures:
``benchmarks/README.md`` (portal pull).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal

import psycopg

from cgm.localtime import HOUR, day_bounds

Resolution = Literal["hourly", "daily", "monthly"]
Layout = Literal["objects", "columns"]
# Source codes of the columns layout: the first three are fixed, then one per estimation
# method present in the range (``source_codes`` in the document names them all).
SOURCE_CODES = ("principal", "backup", "manual")
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


async def find_meter(
    conn: psycopg.AsyncConnection, number: str, unit_id: int | None = None
) -> PortalMeter | None:
    """The meter ``number``; with ``unit_id``, only if that unit owns it or is associated
    with it (None otherwise, as for an unknown meter). One query: it runs on every pull."""
    cur = await conn.execute(
        """SELECT m.id, m.number, m.frontier_id, f.code, m.channel, ch.name, ch.unit
           FROM portal_meter m LEFT JOIN frontier f ON f.id = m.frontier_id
           LEFT JOIN channel ch ON ch.id = m.channel
           WHERE m.number = %(n)s AND (%(u)s::bigint IS NULL
               OR EXISTS (SELECT 1 FROM portal_client_number c
                          WHERE c.id = m.client_number_id AND c.owner_unit_id = %(u)s)
               OR EXISTS (SELECT 1 FROM portal_meter_unit a
                          WHERE a.meter_id = m.id AND a.unit_id = %(u)s))""",
        {"n": number, "u": unit_id},
    )
    row = await cur.fetchone()
    return PortalMeter(*row) if row else None


def _periods(first: date, last: date, resolution: Resolution) -> tuple[list[datetime], list[str]]:
    """Period starts in UTC plus the range's end (``len(keys) + 1`` edges), and each
    period's key: local days for hourly and daily, ``YYYY-MM`` months for monthly."""
    edges: list[datetime] = []
    keys: list[str] = []
    d = first
    while d <= last:
        key = d.strftime("%Y-%m") if resolution == "monthly" else d.isoformat()
        if not keys or keys[-1] != key:
            keys.append(key)
            edges.append(day_bounds(d)[0])
        d += timedelta(days=1)
    edges.append(day_bounds(last)[1])
    return edges, keys


_WHERE = """frontier_id = %(f)s AND channel = %(c)s
            AND interval_start >= (%(e)s::timestamptz[])[1]
            AND interval_start < (%(e)s::timestamptz[])[array_length(%(e)s::timestamptz[], 1)]"""

_GROUPED = f"""SELECT width_bucket(interval_start, %(e)s::timestamptz[]), source, method,
                      count(*), sum(value)
               FROM settled_reading WHERE {_WHERE}
               GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"""

# One JSON object per hour, in time order, written as text: json_build_object costs four
# times as much per row (benchmarks/README.md). The day and hour period (1..24: hours since
# the local day's start) come from the day starts passed in; the instant's text is Python's
# isoformat of a UTC datetime. Sources are a closed set (CHECK) and values finite (refused on
# write), so only the method needs JSON quoting.
_HOURLY = f"""SELECT coalesce('[' || string_agg(concat(
                  '{{"interval_start":"',
                  replace((r.interval_start AT TIME ZONE 'UTC')::text, ' ', 'T'),
                  '+00:00","day":"', to_char((%(k)s::date[])[b], 'YYYY-MM-DD'),
                  '","hour_period":',
                  date_part('epoch', r.interval_start - (%(e)s::timestamptz[])[b])::int / 3600 + 1,
                  ',"value":', r.value, ',"source":"', r.source,
                  '","method":', coalesce(to_json(r.method)::text, 'null'),
                  ',"estimated":', (r.source = 'estimate')::text,
                  ',"version":', r.version, '}}'),
                  ',' ORDER BY r.interval_start) || ']', '[]'),
              count(*), coalesce(sum(r.value), 0),
              count(*) FILTER (WHERE r.source = 'estimate'),
              coalesce(sum(r.value) FILTER (WHERE r.source = 'estimate'), 0)
              FROM (SELECT interval_start, value, source, method, version,
                           width_bucket(interval_start, %(e)s::timestamptz[]) AS b
                    FROM settled_reading WHERE {_WHERE}) r"""


# The columns layout (hourly only): time is implicit (start, 3600 s step, count), so the
# document is two number arrays plus the legend, written by PostgreSQL as text in one
# ordered pass over the stored rows: each row is preceded by one ``null`` per hour missing
# since the previous row (``lag``), and Python appends the missing hours after the last row.
# A missing hour is null in both arrays, never 0. Settled values are hourly on the UTC hour
# (primary key per hour; Colombia has no DST). Left-joining a generate_series of the hours
# instead cost four times as much (benchmarks/README.md).
_COLUMNS = f"""WITH r AS (SELECT date_part('epoch', interval_start - (%(e)s::timestamptz[])[1])::int
                                / 3600 AS i, value, source, method
                         FROM settled_reading WHERE {_WHERE}),
              m AS (SELECT coalesce(array_agg(DISTINCT method ORDER BY method)
                                    FILTER (WHERE method IS NOT NULL), '{{}}') AS ms FROM r),
              w AS (SELECT i, value, source, method,
                           i - coalesce(lag(i) OVER (ORDER BY i), -1) - 1 AS gap FROM r)
              SELECT string_agg(repeat('null,', gap) || value::text, ',' ORDER BY i),
                     string_agg(repeat('null,', gap) || CASE source WHEN 'principal' THEN '0'
                                WHEN 'backup' THEN '1' WHEN 'manual' THEN '2'
                                ELSE (2 + array_position((SELECT ms FROM m), method))::text END,
                                ',' ORDER BY i),
                     (SELECT ms FROM m), max(i), count(*), coalesce(sum(value), 0),
                     count(*) FILTER (WHERE source = 'estimate'),
                     coalesce(sum(value) FILTER (WHERE source = 'estimate'), 0)
              FROM w"""


def _column(text: str | None, last: int | None, count: int) -> str:
    """A JSON array of ``count`` slots from PostgreSQL's text up to slot ``last``."""
    if text is None or last is None:
        return "[" + ",".join(["null"] * count) + "]"
    return "[" + text + ",null" * (count - 1 - last) + "]"


def _totals(expected: int, hours: int, value: float, est_hours: int, est_value: float) -> dict:
    return {
        "value": value,
        "hours": hours,
        "expected_hours": expected,
        "missing_hours": expected - hours,
        "estimated_hours": est_hours,
        "estimated_value": est_value,
        "estimated_share": (est_value / value) if value else None,
    }


async def consumption_json(
    conn: psycopg.AsyncConnection,
    meter: PortalMeter,
    first: date,
    last: date,
    resolution: Resolution,
    layout: Layout = "objects",
) -> bytes:
    """The consumption of ``meter`` over local days ``first``..``last`` (inclusive), as the
    JSON document the pull API answers. ``layout="columns"`` (hourly only) gives the values
    and sources as two arrays over implicit hours instead of one object per hour."""
    if layout == "columns" and resolution != "hourly":
        raise ValueError("layout=columns is for resolution=hourly only")
    if meter.frontier_id is None or meter.channel is None:
        raise LookupError(f"meter {meter.number} is not linked to a CGM meter")
    edges, keys = _periods(first, last, resolution)
    expected = int((edges[-1] - edges[0]) / HOUR)
    params: dict[str, Any] = {"f": meter.frontier_id, "c": meter.channel, "e": edges}
    head: dict[str, Any] = {
        "meter": meter.number,
        "frontier": meter.frontier,
        "channel": meter.channel_name,
        "units": f"{meter.unit} (primary)",
        "first_day": first.isoformat(),
        "last_day": last.isoformat(),
        "resolution": resolution,
    }
    if layout == "columns":
        params["n"] = expected
        cur = await conn.execute(_COLUMNS, params)
        row = await cur.fetchone()
        values, sources, methods, last_i, n, total, n_est, est = row  # type: ignore[misc]
        head.update(
            layout="columns", start=edges[0].isoformat(), step_s=3600, count=expected,
            totals=_totals(expected, n, total, n_est, est),
            source_codes=[*SOURCE_CODES, *(f"estimate:{m}" for m in methods)],
        )  # fmt: skip
        text = json.dumps(head, separators=(",", ":"))
        values = _column(values, last_i, expected)
        sources = _column(sources, last_i, expected)
        return f'{text[:-1]},"values":{values},"sources":{sources}}}'.encode()
    if resolution == "hourly":
        params["k"] = [date.fromisoformat(k) for k in keys]
        cur = await conn.execute(_HOURLY, params)
        values, n, total, n_est, est = await cur.fetchone()  # type: ignore[misc]
        head["totals"] = _totals(expected, n, total, n_est, est)
        text = json.dumps(head, separators=(",", ":"))
        return f'{text[:-1]},"values":{values}}}'.encode()
    periods = []
    for i, key in enumerate(keys):
        n = int((edges[i + 1] - edges[i]) / HOUR)
        periods.append({
            "period": key, "value": 0.0, "hours": 0, "expected_hours": n, "missing_hours": n,
            "estimated_hours": 0, "estimated_value": 0.0, "by_source": {},
        })  # fmt: skip
    cur = await conn.execute(_GROUPED, params)
    for bucket, source, method, count, value in await cur.fetchall():
        p = periods[bucket - 1]
        p["value"] += value
        p["hours"] += count
        p["missing_hours"] -= count
        name = f"estimate:{method}" if source == "estimate" else source
        p["by_source"][name] = p["by_source"].get(name, 0) + count
        if source == "estimate":
            p["estimated_hours"] += count
            p["estimated_value"] += value
    head["totals"] = _totals(
        expected,
        sum(p["hours"] for p in periods),
        sum(p["value"] for p in periods),
        sum(p["estimated_hours"] for p in periods),
        sum(p["estimated_value"] for p in periods),
    )
    head["values"] = periods
    return json.dumps(head, separators=(",", ":")).encode()


async def consumption(
    conn: psycopg.AsyncConnection,
    meter: PortalMeter,
    first: date,
    last: date,
    resolution: Resolution,
) -> dict[str, Any]:
    """:func:`consumption_json` as Python values (for the page: a day, month or year)."""
    return json.loads(await consumption_json(conn, meter, first, last, resolution))
