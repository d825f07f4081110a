"""A portal meter's consumption from the settled series, hourly, daily or monthly.

Every value keeps where it came from (measured by the principal or the backup meter,
estimated with its method, or entered by hand), and every period says how much of it is
estimated. A missing hour is never a zero: a period with hours missing says so
(``missing_hours``) and its total covers only the hours present.

Where it reads: the daily and monthly periods and the hourly ``columns`` layout come from
``settled_day`` (one row per local day with its 24 values, sources and methods as arrays,
kept equal to ``settled_reading`` by the write that changes it): a year is 365 rows read as
one packed value (``read_settled_days``) and summed or laid out with numpy, instead of 8,760
rows grouped or written out by PostgreSQL. The hourly ``objects`` layout carries each hour's
``version``, which only ``settled_reading`` has, so it reads there: PostgreSQL writes the
array as JSON text, passed through untouched. Figures: ``benchmarks/README.md`` (portal
pull).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal

import numpy as np
import orjson
import psycopg

from cgm.localtime import HOUR, day_bounds
from cgm.storage.settled import on_days, read_settled_days

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


def _periods(first: date, last: date) -> tuple[list[datetime], list[str]]:
    """Local day starts in UTC plus the range's end (``len(keys) + 1`` edges), and each
    day's key (for the hourly objects' ``day`` and ``hour_period``)."""
    edges: list[datetime] = []
    keys: list[str] = []
    d = first
    while d <= last:
        keys.append(d.isoformat())
        edges.append(day_bounds(d)[0])
        d += timedelta(days=1)
    edges.append(day_bounds(last)[1])
    return edges, keys


_WHERE = f"""{on_days(days="%(k)s")} AND frontier_id = %(f)s AND channel = %(c)s
            AND interval_start >= (%(e)s::timestamptz[])[1]
            AND interval_start < (%(e)s::timestamptz[])[array_length(%(e)s::timestamptz[], 1)]"""

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

# settled_day's source codes (migration 0200): 0 nothing settled, then these.
_PRINCIPAL, _BACKUP, _ESTIMATE, _MANUAL = 1, 2, 3, 4


@dataclass(frozen=True)
class _Days:
    """The range's hours as (days, 24) arrays, every local day of the range present."""

    value: np.ndarray  # float64, NaN where nothing is settled
    source: np.ndarray  # int16, settled_day's codes
    methods: dict[tuple[int, int], str]  # (day index, hour index): estimation method


async def _days(
    conn: psycopg.AsyncConnection, meter: PortalMeter, first: date, last: date
) -> _Days:
    sd = await read_settled_days(conn, [meter.frontier_id], first, last, [meter.channel])  # type: ignore[list-item]
    n = (last - first).days + 1
    at = (sd.day - np.datetime64(first, "D")).astype(np.int64)
    value = np.full((n, 24), np.nan)
    source = np.zeros((n, 24), dtype=np.int16)
    value[at] = sd.value
    source[at] = sd.source
    methods = {((d - first).days, h): m for (_, _, d, h), m in sd.methods.items()}
    return _Days(value, source, methods)


def _sums(days: _Days, group: np.ndarray, groups: int) -> dict[str, np.ndarray]:
    """Per group (``group[i]``: the group of day ``i``): value, hours, estimated hours and
    value, and the hours from each source."""
    present = days.source != 0
    est = days.source == _ESTIMATE

    def per(x: np.ndarray) -> np.ndarray:
        return np.bincount(group, weights=x.sum(axis=1), minlength=groups)

    value = np.where(present, days.value, 0.0)
    return {
        "value": per(value),
        "hours": per(present).astype(np.int64),
        "estimated_hours": per(est).astype(np.int64),
        "estimated_value": per(np.where(est, value, 0.0)),
        "backup": per(days.source == _BACKUP).astype(np.int64),
        "manual": per(days.source == _MANUAL).astype(np.int64),
        "principal": per(days.source == _PRINCIPAL).astype(np.int64),
    }


def _columns(days: _Days) -> tuple[str, str, list[str]]:
    """The values and source-code arrays as JSON text, and the methods in code order."""
    names = sorted(set(days.methods.values()))
    code = np.full(days.source.shape, -1, dtype=np.int64)
    code[days.source == _PRINCIPAL] = 0
    code[days.source == _BACKUP] = 1
    code[days.source == _MANUAL] = 2
    index = {m: 3 + i for i, m in enumerate(names)}
    for (d, h), m in days.methods.items():
        code[d, h] = index[m]
    # Every hour of the range, null where nothing is settled (never 0): orjson writes NaN
    # as null; the codes through a table of their texts.
    values = orjson.dumps(days.value.ravel(), option=orjson.OPT_SERIALIZE_NUMPY).decode()
    texts = np.array(["null", *(str(i) for i in range(3 + len(names)))], dtype=object)
    sources = "[" + ",".join(texts[code.ravel() + 1]) + "]"
    return values, sources, names


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


def _dumps(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


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
    head: dict[str, Any] = {
        "meter": meter.number,
        "frontier": meter.frontier,
        "channel": meter.channel_name,
        "units": f"{meter.unit} (primary)",
        "first_day": first.isoformat(),
        "last_day": last.isoformat(),
        "resolution": resolution,
    }
    if resolution == "hourly" and layout == "objects":
        edges, keys = _periods(first, last)
        expected = int((edges[-1] - edges[0]) / HOUR)
        params: dict[str, Any] = {"f": meter.frontier_id, "c": meter.channel, "e": edges}
        params["k"] = [date.fromisoformat(k) for k in keys]
        cur = await conn.execute(_HOURLY, params)
        values, n, total, n_est, est = await cur.fetchone()  # type: ignore[misc]
        head["totals"] = _totals(expected, n, total, n_est, est)
        text = json.dumps(head, separators=(",", ":"))
        return f'{text[:-1]},"values":{values}}}'.encode()
    # From settled_day: hour k of the range's day i is slot 24·i + k, from the first day's
    # start (a local day is 24 hours: cgm.localtime.day_bounds).
    days = await _days(conn, meter, first, last)
    n_days = len(days.value)
    start = day_bounds(first)[0]
    expected = 24 * n_days
    if resolution == "hourly":  # columns
        t = _sums(days, np.zeros(n_days, dtype=np.int64), 1)
        values, sources, names = _columns(days)
        head.update(
            layout="columns", start=start.isoformat(), step_s=3600, count=expected,
            totals=_totals(expected, int(t["hours"][0]), float(t["value"][0]),
                           int(t["estimated_hours"][0]), float(t["estimated_value"][0])),
            source_codes=[*SOURCE_CODES, *(f"estimate:{m}" for m in names)],
        )  # fmt: skip
        return _dumps(head)[:-1] + f',"values":{values},"sources":{sources}}}'.encode()
    # Daily or monthly: the period of each local day.
    day_list = np.arange(np.datetime64(first, "D"), np.datetime64(last, "D") + 1)
    if resolution == "daily":
        keys, group = list(np.datetime_as_string(day_list)), np.arange(n_days, dtype=np.int64)
    else:
        months, group = np.unique(day_list.astype("M8[M]"), return_inverse=True)
        keys = list(np.datetime_as_string(months))
    sums = _sums(days, group, len(keys))
    t = {k: v.tolist() for k, v in sums.items()}  # Python numbers: one conversion, not 365
    period_hours = (24 * np.bincount(group, minlength=len(keys))).tolist()
    by_method: list[dict[str, int]] = [{} for _ in keys]
    for (d, _), m in sorted(days.methods.items()):
        counts = by_method[group[d]]
        counts[m] = counts.get(m, 0) + 1
    periods = []
    for i, key in enumerate(keys):
        n, hours = period_hours[i], t["hours"][i]
        by_source = {}  # source, then method: the order of the former grouped query
        if t["backup"][i]:
            by_source["backup"] = t["backup"][i]
        for m in sorted(by_method[i]):
            by_source[f"estimate:{m}"] = by_method[i][m]
        for name in ("manual", "principal"):
            if t[name][i]:
                by_source[name] = t[name][i]
        periods.append({
            "period": str(key), "value": t["value"][i], "hours": hours,
            "expected_hours": n, "missing_hours": n - hours,
            "estimated_hours": t["estimated_hours"][i],
            "estimated_value": t["estimated_value"][i], "by_source": by_source,
        })  # fmt: skip
    head["totals"] = _totals(
        expected,
        int(sums["hours"].sum()),
        float(sums["value"].sum()),
        int(sums["estimated_hours"].sum()),
        float(sums["estimated_value"].sum()),
    )
    head["values"] = periods
    return _dumps(head)


async def consumption(
    conn: psycopg.AsyncConnection,
    meter: PortalMeter,
    first: date,
    last: date,
    resolution: Resolution,
) -> dict[str, Any]:
    """:func:`consumption_json` as Python values (for the page: a day, month or year)."""
    return json.loads(await consumption_json(conn, meter, first, last, resolution))
