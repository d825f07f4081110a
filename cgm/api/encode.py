"""Readings as response bodies, built column-wise with numpy.

A month of one frontier is ~6,000 readings and a year ~70,000: building a dict per reading,
naming its quality flags through ``IntFlag`` each time and letting the framework walk the
result cost seconds. Here times are formatted by numpy in one call per column, flag names
are computed once per distinct quality value, and the JSON is encoded once by
orjson. Four shapes (rows, columns and csv a page at a time):

* ``rows`` (default): one object per reading, grouped by meter (the original shape).
* ``columns``: per meter and channel, parallel arrays — several times smaller and faster.
* ``csv``: one line per reading, for spreadsheets and scripts.
* ``hourly``: time implicit (``start``, ``step_s``, ``count``); per meter and channel a value
  and a quality array with one slot per hour, ``null`` where nothing was read. Read from
  ``reading_day`` (one row of 24 slots per meter, channel and local day, kept by the write
  path): a year of a frontier is 2,920 rows instead of 70,080, decoded from one binary COPY
  by numpy and laid out by indexing, not by a Python loop.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from typing import Any

import numpy as np
import orjson
import psycopg

from cgm.localtime import day_bounds, local_day
from cgm.storage import Quality
from cgm.storage.common import CHANNELS_BY_ID
from cgm.storage.readings import STORED_DTYPE

MeterRow = tuple[int, str, str, bool]  # id, serial, role, active

# One page of the rows, columns and CSV formats, a series (meter and channel) at a time: the
# series' readings after the keyset by its primary key, in time order, as one row of arrays
# (one message instead of one per reading). Times go as integer microseconds through
# date_part (float8, exact to the microsecond for these dates): extract() computes in
# numeric, which cost the server a third of the query. One query per series rather than one
# ordered by the response's meter order: that order is not the index's, so the database
# would read and sort every reading of the range for each page (a year: 70,080), however
# small the page.
_SERIES_PAGE_SQL = """
SELECT array_agg((date_part('epoch', interval_start) * 1e6)::int8),
       array_agg(value),
       array_agg(quality),
       array_agg(version),
       array_agg((date_part('epoch', collected_at) * 1e6)::int8)
FROM (SELECT interval_start, value, quality, version, collected_at
      FROM reading
      WHERE meter_id = %(m)s AND channel = %(c)s
        AND interval_start > %(after)s AND interval_start < %(e)s
      ORDER BY interval_start LIMIT %(limit)s) r
"""


async def load_page(
    conn: psycopg.AsyncConnection,
    meter_ids: Sequence[int],
    start: datetime,
    end: datetime,
    channels: Sequence[int],
    after: tuple[int, int, datetime] | None,
    limit: int,
) -> np.ndarray:
    """At most ``limit`` current readings of [start, end) after the keyset ``after``
    (meter id, channel, interval start of the previous page's last reading), as
    ``STORED_DTYPE`` in the responses' order: meters as in ``meter_ids``, then channel,
    then time. The caller checks that the keyset's meter and channel are in the lists."""
    series = [(m, c) for m in meter_ids for c in sorted(channels)]
    first, t = 0, start - timedelta(microseconds=1)
    if after is not None:
        first, t = series.index(after[:2]), after[2]
    parts, need = [], limit
    cur = conn.cursor(binary=True)
    for mid, chan in series[first:]:
        await cur.execute(
            _SERIES_PAGE_SQL, {"m": mid, "c": chan, "after": t, "e": end, "limit": need}
        )
        starts, values, quality, version, collected = await cur.fetchone()  # type: ignore[misc]
        t = start - timedelta(microseconds=1)  # the following series from their start
        if not starts:
            continue
        a = np.empty(len(starts), dtype=STORED_DTYPE)
        a["meter_id"], a["channel"] = mid, chan
        a["interval_start"] = np.array(starts, dtype=np.int64).astype("M8[us]")
        a["value"] = values
        a["quality"] = quality
        a["version"] = version
        a["collected_at"] = np.array(collected, dtype=np.int64).astype("M8[us]")
        if len(a) > 1 and not (a["interval_start"][1:] > a["interval_start"][:-1]).all():
            a = a[np.argsort(a["interval_start"], kind="stable")]  # SQL does not promise it
        parts.append(a)
        need -= len(a)
        if need <= 0:
            break
    return np.concatenate(parts) if parts else np.empty(0, dtype=STORED_DTYPE)


# The hourly shape: only what it carries (value, quality) and each reading's offset from
# ``start`` in microseconds (a reading a second off the hour is not put on it). No sort: the
# offsets place each value, and one aggregation keeps the three arrays aligned; the sort
# was a third of the database's time for a year.
_HOURLY_SQL = """
SELECT meter_id, channel,
       array_agg(((date_part('epoch', interval_start) - %s) * 1e6)::int8),
       array_agg(value),
       array_agg(quality)
FROM reading
WHERE meter_id = ANY(%s) AND channel = ANY(%s) AND interval_start >= %s AND interval_start < %s
GROUP BY meter_id, channel ORDER BY meter_id, channel
"""

STEP_S = 3600


class OffGrid(ValueError):
    """A reading in the range does not start on a whole hour (a sub-hourly meter)."""


# The days covering the range as ONE bytea of fixed-size records (NULL slots sent as NaN / -1,
# never stored: values are finite, qualities >= 0), which numpy reads at once: a binary COPY
# of the same 2,920 rows cost the API a trip through the driver's async iterator per row,
# half of its CPU for a year.
_DAYS_SQL = """
SELECT string_agg(int8send(meter_id) || int2send(channel) || int4send(day - %(lo)s)
                  || array_send(array_replace(value, NULL, 'NaN'::float8))
                  || array_send(array_replace(quality, NULL, -1)) || boolsend(off_grid),
                  ''::bytea)
FROM reading_day
WHERE meter_id = ANY(%(m)s) AND channel = ANY(%(c)s) AND day BETWEEN %(lo)s AND %(hi)s
"""
_DAY_RECORD = np.dtype(
    [
        ("meter_id", ">i8"),
        ("channel", ">i2"),
        ("day", ">i4"),  # days after the first day of the range
        ("value_head", ">i4", (5,)),  # ndim, has nulls, element type, length, lower bound
        ("value", [("len", ">i4"), ("x", ">f8")], (24,)),
        ("quality_head", ">i4", (5,)),
        ("quality", [("len", ">i4"), ("x", ">i4")], (24,)),
        ("off_grid", "u1"),
    ]
)
# float8[24] and int4[24] (the "has nulls" word, index 1, may be set with no NULL left)
_VALUE_HEAD, _QUALITY_HEAD = (1, 701, 24, 1), (1, 23, 24, 1)


def _day_records(data: bytes | None) -> np.ndarray:
    days = np.frombuffer(data or b"", dtype=_DAY_RECORD)
    if len(days) and not (
        (days["value_head"][:, [0, 2, 3, 4]] == _VALUE_HEAD).all()
        and (days["quality_head"][:, [0, 2, 3, 4]] == _QUALITY_HEAD).all()
        and (days["value"]["len"] == 8).all()
        and (days["quality"]["len"] == 4).all()
    ):
        raise ValueError("reading_day records are not of the expected layout")
    return days


async def hourly_body(
    conn: psycopg.AsyncConnection,
    head: dict[str, Any],
    meters: Sequence[MeterRow],
    start: datetime,
    end: datetime,
    channels: Sequence[int],
) -> bytes:
    """The ``hourly`` document: ``start`` and ``end`` on whole hours (checked by the caller).
    Missing hours are ``null`` in both arrays, never 0. Raises :class:`OffGrid` rather than
    drop a reading that has no hour slot.

    From ``reading_day``; a range with a day of off-grid (sub-hourly) readings is answered
    from ``reading`` as before, which places them or refuses."""
    count = int((end - start).total_seconds()) // STEP_S
    first, last = local_day(start), local_day(end - timedelta(microseconds=1))
    cur = conn.cursor(binary=True)
    await cur.execute(
        _DAYS_SQL, {"m": [m[0] for m in meters], "c": list(channels), "lo": first, "hi": last}
    )
    (data,) = await cur.fetchone()  # type: ignore[misc]
    days = _day_records(data)
    if days["off_grid"].any():
        return await _hourly_from_readings(conn, head, meters, start, end, channels)
    # Hour k of the range is slot k + skip of the days laid end to end from ``first``.
    skip = int((start - day_bounds(first)[0]).total_seconds()) // STEP_S
    n_slots = ((last - first).days + 1) * 24
    slot = days["day"].astype("i8")[:, None] * 24 + np.arange(24)[None, :]
    series: dict[int, dict[str, Any]] = {m[0]: {} for m in meters}
    seen_quality: set[int] = set()
    key = days["meter_id"].astype("i8") * 8 + days["channel"]
    for k in np.unique(key).tolist():
        sel = key == k
        v = np.full(n_slots, np.nan)
        q = np.full(n_slots, -1, dtype=np.int64)
        v[slot[sel]] = days["value"]["x"][sel]
        q[slot[sel]] = days["quality"]["x"][sel]
        v, q = v[skip : skip + count], q[skip : skip + count]
        if not (q >= 0).any():
            continue  # days of the series exist, but no reading inside the range
        present = q >= 0
        seen_quality.update(np.unique(q[present]).tolist())
        qo = q.astype(object)
        qo[~present] = None
        series[k // 8][CHANNELS_BY_ID[k % 8].value] = {"value": v, "quality": qo.tolist()}
    return _hourly_document(head, meters, count, series, seen_quality)


def _hourly_document(
    head: dict[str, Any],
    meters: Sequence[MeterRow],
    count: int,
    series: dict[int, dict[str, Any]],
    seen_quality: set[int],
) -> bytes:
    out = [
        {"serial": serial, "role": role, "active": active, "channels": series[mid]}
        for mid, serial, role, active in meters
    ]
    legend = {str(q): list(flag_names(q)) for q in sorted(seen_quality) if q}
    return dumps(
        {**head, "format": "hourly", "step_s": STEP_S, "count": count, "flags": legend,
         "meters": out}
    )  # fmt: skip


async def _hourly_from_readings(
    conn: psycopg.AsyncConnection,
    head: dict[str, Any],
    meters: Sequence[MeterRow],
    start: datetime,
    end: datetime,
    channels: Sequence[int],
) -> bytes:
    """The ``hourly`` document aggregated from ``reading`` (ranges with off-grid days)."""
    count = int((end - start).total_seconds()) // STEP_S
    cur = conn.cursor(binary=True)
    await cur.execute(
        _HOURLY_SQL, (start.timestamp(), [m[0] for m in meters], list(channels), start, end)
    )
    series: dict[int, dict[str, Any]] = {m[0]: {} for m in meters}
    seen_quality: set[int] = set()
    for mid, ch, offsets, values, quality in await cur.fetchall():
        off = np.asarray(offsets, dtype=np.int64)
        idx, rest = np.divmod(off, STEP_S * 1_000_000)
        if rest.any():
            raise OffGrid(f"readings of channel {CHANNELS_BY_ID[ch].value} are not hourly")
        v = np.full(count, np.nan)  # orjson writes NaN as null
        v[idx] = values
        q = np.full(count, None, dtype=object)
        q[idx] = quality
        seen_quality.update(quality)
        series[mid][CHANNELS_BY_ID[ch].value] = {"value": v, "quality": q.tolist()}
    return _hourly_document(head, meters, count, series, seen_quality)


def dumps(body: object, default: Any = None) -> bytes:
    """Compact JSON by orjson (numpy arrays as arrays, datetimes as ISO 8601): several
    times faster than the standard library on the large bodies of the readings and the
    registry, where encoding was a large share of a request's CPU."""
    try:
        return orjson.dumps(
            body, default=default, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
        )
    except orjson.JSONEncodeError:
        # What orjson refuses and the standard library writes: integers beyond 64 bits
        # (a registry attribute may hold one), lone surrogates in strings.
        return json.dumps(
            body, separators=(",", ":"), default=lambda v: _plain(v, default)
        ).encode()


def _plain(value: object, default: Any) -> object:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return default(value) if default is not None else str(value)


@lru_cache(maxsize=4096)
def flag_names(bits: int) -> tuple[str, ...]:
    return tuple(f.name or str(int(f)) for f in Quality if f & bits)


def iso_utc(times: np.ndarray, suffix: str = "+00:00") -> list[str]:
    """ISO 8601 strings of ``datetime64[us]`` UTC values, seconds or microseconds as needed
    (what ``datetime.isoformat`` gives), formatted by numpy in one call."""
    if len(times) == 0:
        return []
    unit = "s" if ((times.astype("i8") % 1_000_000) == 0).all() else "us"
    if suffix == "Z":
        return np.datetime_as_string(times, unit=unit, timezone="UTC").tolist()
    return [s + suffix for s in np.datetime_as_string(times, unit=unit).tolist()]


def _by_meter(arr: np.ndarray, meters: Sequence[MeterRow]) -> dict[int, np.ndarray]:
    ids = arr["meter_id"]
    return {m[0]: arr[ids == m[0]] for m in meters}


def rows_body(head: dict[str, Any], meters: Sequence[MeterRow], arr: np.ndarray) -> bytes:
    parts = _by_meter(arr, meters)
    out = []
    for mid, serial, role, active in meters:
        a = parts[mid]
        starts, collected = iso_utc(a["interval_start"]), iso_utc(a["collected_at"])
        quality = a["quality"].tolist()
        readings = [
            {
                "channel": CHANNELS_BY_ID[ch].value,
                "interval_start": s,
                "value": v,
                "quality": q,
                "flags": list(flag_names(q)),
                "version": ver,
                "collected_at": c,
            }
            for ch, s, v, q, ver, c in zip(
                a["channel"].tolist(), starts, a["value"].tolist(), quality,
                a["version"].tolist(), collected, strict=True,
            )
        ]  # fmt: skip
        out.append({"serial": serial, "role": role, "active": active, "readings": readings})
    return dumps({**head, "meters": out})


def columns_body(head: dict[str, Any], meters: Sequence[MeterRow], arr: np.ndarray) -> bytes:
    parts = _by_meter(arr, meters)
    out = []
    seen_quality: set[int] = set()
    for mid, serial, role, active in meters:
        a = parts[mid]
        channels: dict[str, Any] = {}
        for ch in np.unique(a["channel"]).tolist():
            c = a[a["channel"] == ch]
            quality = c["quality"].tolist()
            seen_quality.update(quality)
            channels[CHANNELS_BY_ID[ch].value] = {
                "interval_start": iso_utc(c["interval_start"], "Z"),
                "value": np.ascontiguousarray(c["value"]),
                "quality": quality,
                "version": np.ascontiguousarray(c["version"]),
                "collected_at": iso_utc(c["collected_at"], "Z"),
            }
        out.append({"serial": serial, "role": role, "active": active, "channels": channels})
    legend = {str(q): list(flag_names(q)) for q in sorted(seen_quality) if q}
    return dumps({**head, "format": "columns", "flags": legend, "meters": out})


CSV_HEADER = (
    "meter", "role", "channel", "interval_start", "value", "quality", "flags", "version",
    "collected_at",
)  # fmt: skip


def csv_body(meters: Sequence[MeterRow], arr: np.ndarray) -> bytes:
    """One line per reading, as the standard library's ``csv`` writes them (its quoting
    for the meter's serial and role), built column by column: every other field is a
    plain token (channel and flag names, ISO times, ``repr`` of a float, integers) that
    needs no quoting. Line by line through ``csv.writer`` a year cost ~150 ms of CPU."""
    parts = _by_meter(arr, meters)
    lines = [",".join(CSV_HEADER)]
    names = {c: ch.value for c, ch in CHANNELS_BY_ID.items()}
    for mid, serial, role, _active in meters:
        a = parts[mid]
        if not len(a):
            continue
        prefix = _csv_quote(serial) + "," + _csv_quote(role) + ","
        quality = a["quality"].tolist()
        flags = {q: "|".join(flag_names(q)) for q in set(quality)}
        lines += map(
            ",".join,
            zip(
                (prefix + names[c] for c in a["channel"].tolist()),
                iso_utc(a["interval_start"], "Z"),
                map(repr, a["value"].tolist()),
                map(str, quality),
                map(flags.__getitem__, quality),
                map(str, a["version"].tolist()),
                iso_utc(a["collected_at"], "Z"),
                strict=True,
            ),
        )
    lines.append("")
    return "\n".join(lines).encode()


def _csv_quote(field: str) -> str:
    """``field`` as ``csv.writer`` writes it in these bodies (quoted when it holds a comma,
    a quote or the line terminator)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([field, ""])
    return buf.getvalue()[:-2]
