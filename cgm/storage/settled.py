"""Settled hourly series per frontier: the same idempotent, versioned write as readings.

A local day of a large fleet is about a million values, almost all of them plain measured
values (a principal's or backup's reading with its meter, reading version, secondary value
and factor), so they get the readings path's treatment: a numpy array
(:data:`MEASURED_DTYPE`, built with :func:`measured_array`), validated column-wise, sent by
binary COPY (cgm.storage.pgbinary) into a staging table, and their ``detail`` built by the
server. The other values (estimates, flagged or manual ones, with a free-form ``detail``)
are few and come as :class:`SettledValue` objects through a text COPY. Both meet in one
set-based upsert.

Next to it, in the same transaction, ``settled_day`` (migration 0200): a read model with one
row per frontier, channel and local day holding the day's 24 values as arrays, for readers of
whole days (:func:`read_settled_days`). The batch's rows are laid out as day arrays in numpy
and merged server-side, hour by hour, into the days the write changed, with the manual rule
below; so settled_day always says what settled_reading says.

The manual rule, which VEE relies on: a stored value whose source is ``manual`` is only
superseded by another ``manual`` write. Automatic writes (principal, backup, estimate) over
it are not applied and are counted as ``kept_manual``. A manual write must name an actor and
a reason, which the audit log keeps with the old image.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
from psycopg import errors

from cgm.localtime import local_days, sql_local_day
from cgm.storage import pgbinary
from cgm.storage.common import (
    CHANNELS_BY_ID,
    HOUR,
    InvalidRows,
    UnknownKeys,
    WriteResult,
    channel_id,
    examples,
    from_us,
    packed,
    set_audit_context,
    to_utc_us,
)
from cgm.storage.quality import KNOWN_MASK
from drivers.base import Channel

SOURCES = ("principal", "backup", "estimate", "manual")
_STAGE = "cgm_settled_stage"
_MEASURED_STAGE = "cgm_settled_measured_stage"
_DAY_STAGE = "cgm_settled_day_stage"
_DAY_METHOD = "cgm_settled_day_method"
_CHANGED = "cgm_settled_changed_day"
DAY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("frontier_id", "i8"),
    ("channel", "i2"),
    ("day", "M8[D]"),
    ("value", "f8[24]"),
    ("source", "i2[24]"),  # 0 none, then SOURCES' order from 1
    ("flags", "i4[24]"),
)
_DAY_DTYPE = np.dtype(
    [
        ("frontier_id", "i8"),
        ("channel", "i2"),
        ("day", "M8[D]"),
        ("value", "f8", (24,)),
        ("source", "i2", (24,)),
        ("flags", "i4", (24,)),
    ]
)
_LOCAL_OFFSET_US = -5 * 3_600_000_000  # Colombia, UTC−5 all year (cgm.localtime)
_DAY_US = 86_400_000_000
_HOUR_US = 3_600_000_000
_COLS = "frontier_id, channel, interval_start, value, source, method, flags, detail"
# A plain measured value's provenance, typed columns since migration 0220 (NULL elsewhere).
_PROVENANCE = "meter_id, reading_version, secondary, factor"

# settled_reading's unique key (migration 0240), led by the local day: a run's new hours go
# together at the index's end instead of one index page per series. Writers upsert on it
# and write in its order; readers of chosen frontiers name the days (:func:`on_days`).
KEY = "settled_local_day(interval_start), frontier_id, channel, interval_start"


def on_days(alias: str = "", days: str = "%(days)s") -> str:
    """The condition that lets a query of chosen frontiers use settled_reading's key: the
    local days of ``interval_start`` in the date array ``days`` (a placeholder; its value
    from :func:`cgm.localtime.local_days`). One index descent per day; without it such a
    query reads every frontier's rows of its time range."""
    column = f"{alias}.interval_start" if alias else "interval_start"
    return f"settled_local_day({column}) = ANY({days}::date[])"


def _key_columns(arr: np.ndarray) -> tuple[np.ndarray, ...]:
    """``arr``'s columns of settled_reading's key (:data:`KEY`), least significant first."""
    t = arr["interval_start"].view("i8")
    return t, arr["channel"], arr["frontier_id"], (t + _LOCAL_OFFSET_US) // _DAY_US


def _key_sort(arr: np.ndarray) -> np.ndarray:
    """Indices of ``arr``'s rows in settled_reading's key order."""
    return np.lexsort(_key_columns(arr))


def _first_in_key_order(arr: np.ndarray) -> int:
    """Index of ``arr``'s first row in key order: a pass per key column, not a sort of
    every row (a fleet's first settle: ~1 M rows to find one)."""
    idx = np.arange(len(arr))
    for col in reversed(_key_columns(arr)):
        c = col[idx]
        idx = idx[c == c.min()]
    return int(idx[0])


def _in_key_order(arr: np.ndarray) -> np.ndarray:
    """``arr`` in settled_reading's key order: itself when it already is (VEE writes a day's
    series in order), checked in one pass instead of sorted."""
    before = np.zeros(len(arr) - 1 if len(arr) else 0, dtype=bool)  # row i < row i + 1
    tie = np.ones_like(before)
    for col in reversed(_key_columns(arr)):
        a, b = col[:-1], col[1:]
        before |= tie & (a < b)
        tie &= a == b
    return arr if before.all() else arr[_key_sort(arr)]


def detail_sql(alias: str = "") -> str:
    """SQL for a stored row's ``detail`` with its provenance columns merged in (what readers
    show; migration 0220's ``settled_detail``), of the row named ``alias`` if given."""
    a = f"{alias}." if alias else ""
    return f"settled_detail({a}detail, {a}meter_id, {a}reading_version, {a}secondary, {a}factor)"


MEASURED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("frontier_id", "i8"),
    ("channel", "i2"),
    ("interval_start", "M8[us]"),
    ("value", "f8"),
    ("source", "i2"),  # 1 principal, 2 backup
    ("flags", "i4"),
    ("meter_id", "i8"),
    ("reading_version", "i4"),
    ("secondary", "f8"),
    ("factor", "f8"),
)
MEASURED_DTYPE = np.dtype([(n, k) for n, k in MEASURED_COLUMNS])
"""A plain measured settled value: stored with source principal/backup, no method, and its
provenance (meter_id, reading_version, secondary, factor) in typed columns, shown as
``detail`` by readers."""
# The columns of a measured value's row as sent straight to settled_reading: ``source``
# (text there) is a constant of each COPY, one per source.
_DIRECT_COLUMNS = tuple(c for c in MEASURED_COLUMNS if c[0] != "source")
_DIRECT_NAMES = ", ".join(n for n, _ in _DIRECT_COLUMNS)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def measured_array(**columns: Any) -> np.ndarray:
    """A :data:`MEASURED_DTYPE` array from equal-length columns (scalars broadcast);
    ``interval_start`` as ``datetime64[us]`` (UTC) or POSIX microseconds."""
    missing = set(MEASURED_DTYPE.names) - set(columns)
    if missing:
        raise InvalidRows("measured settled values", [f"missing column(s) {sorted(missing)}"])
    shaped = np.broadcast_arrays(*(np.asarray(columns[n]) for n in MEASURED_DTYPE.names))
    out = np.empty(shaped[0].shape[0] if shaped[0].ndim else 1, dtype=MEASURED_DTYPE)
    for name, col in zip(MEASURED_DTYPE.names, shaped, strict=True):
        if name == "interval_start" and col.dtype.kind != "M":
            col = col.astype("i8").view("M8[us]")
        out[name] = col
    return out


@dataclass(frozen=True, slots=True)
class SettledValue:
    """One settled hourly value in primary units. ``method`` names the estimation method
    and is required exactly when ``source`` is ``estimate``."""

    frontier_id: int
    channel: int | str | Channel
    interval_start: datetime
    value: float
    source: str
    method: str | None = None
    flags: int = 0
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredSettled:
    """A current settled value as read back."""

    frontier_id: int
    channel: int
    interval_start: datetime
    value: float
    source: str
    method: str | None
    flags: int
    detail: dict[str, Any]
    version: int
    settled_at: datetime
    actor: str
    reason: str | None


def _objects(rows: list[SettledValue]) -> tuple[np.ndarray, list[tuple[Any, ...]]]:
    """SettledValue objects as a key/value array (for the shared numpy checks) and their
    free-form parts (source, method, detail); a row that cannot be read at all is an
    error for the whole batch."""
    arr = np.zeros(len(rows), dtype=MEASURED_DTYPE)
    rest: list[tuple[Any, ...]] = []
    problems: list[str] = []
    step = timedelta(microseconds=1)
    for i, r in enumerate(rows):
        try:
            if not isinstance(r, SettledValue):
                raise ValueError("not a SettledValue")
            if isinstance(r.frontier_id, bool) or not isinstance(r.frontier_id, int):
                raise ValueError(f"frontier_id {r.frontier_id!r} is not an integer")
            t = r.interval_start
            if not isinstance(t, datetime):
                raise ValueError(f"interval_start {t!r} is not a datetime")
            if t.tzinfo is None or t.utcoffset() is None:
                raise ValueError(f"interval_start {t.isoformat()} is naive (needs a time zone)")
            if r.source not in SOURCES:
                raise ValueError(f"source {r.source!r} not one of {SOURCES}")
            if (r.source == "estimate") != (r.method is not None):
                raise ValueError("method is required for, and only for, source 'estimate'")
            arr[i] = (
                r.frontier_id,
                channel_id(r.channel),
                np.datetime64((t - _EPOCH) // step, "us"),
                float(r.value),
                SOURCES.index(r.source) + 1,
                int(r.flags),
                0,
                0,
                0.0,
                1.0,
            )
        except (ValueError, TypeError, OverflowError) as exc:
            problems.append(f"row {i}: {exc}")
            rest.append(())
            continue
        rest.append((r.source, r.method, r.detail))
    if problems:
        _reject(len(rows), problems)
    return arr, rest


def _copy_text(
    obj: np.ndarray, rest: list[tuple[Any, ...]], items: list[SettledValue], keep: np.ndarray
) -> bytes:
    """The kept objects as COPY text rows (:data:`_COLS`), formatted here: psycopg's
    ``write_row`` dumps field by field, ~35 µs a row with the detail's JSON, and a fleet's
    first settle has ~14,000 such rows (flagged values and estimates)."""
    dumps, lines = json.dumps, []
    fid, channel, value, flags = (
        obj[name].tolist() for name in ("frontier_id", "channel", "value", "flags")
    )
    for i in keep.tolist():
        source, method, detail = rest[i]
        fields = (
            str(fid[i]),
            str(channel[i]),
            items[i].interval_start.isoformat(),
            repr(value[i]),
            _copy_escape(source),
            "\\N" if method is None else _copy_escape(method),
            str(flags[i]),
            _copy_escape(dumps(dict(detail))),
        )
        lines.append("\t".join(fields))
    return ("\n".join(lines) + "\n").encode()


def _copy_escape(text: str) -> str:
    """Text as a COPY text-format field (backslash, tab, newline and carriage return
    escaped)."""
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        text = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
        text = text.replace("\r", "\\r")
    return text


def _reject(n: int, problems: list[str]) -> None:
    shown = problems[:5] + ([f"… {len(problems) - 5} more"] if len(problems) > 5 else [])
    raise InvalidRows(f"{n} settled values", shown)


def _check(arr: np.ndarray, interval: timedelta, *, measured: bool) -> list[str]:
    """Column-wise checks of a MEASURED_DTYPE array; problems, one line per check."""
    out = []
    step = interval // timedelta(microseconds=1)
    t = arr["interval_start"].view("i8")

    def bad(mask: np.ndarray, what: str, describe) -> None:  # noqa: ANN001
        if mask.any():
            out.append(f"{what}: " + examples(mask, describe))

    bad(arr["frontier_id"] < 1, "frontier_id must be >= 1", lambda i: arr["frontier_id"][i])
    bad(
        ~np.isin(arr["channel"], list(CHANNELS_BY_ID)),
        "unknown channel",
        lambda i: arr["channel"][i],
    )
    bad(t == np.iinfo("i8").min, "interval_start missing", lambda i: "NaT")
    bad(
        t % step != 0,
        f"interval_start not on a {interval} boundary",
        lambda i: from_us(arr["interval_start"][i]).isoformat(),
    )
    v = arr["value"]
    bad(~np.isfinite(v) | (v < 0), "value not a finite non-negative number", lambda i: v[i])
    f = arr["flags"]
    bad((f < 0) | (f & ~KNOWN_MASK != 0), "flags with undefined bits", lambda i: hex(f[i]))
    if measured:
        bad(
            ~np.isin(arr["source"], (1, 2)),
            "source not principal (1) or backup (2)",
            lambda i: arr["source"][i],
        )
        bad(arr["meter_id"] < 1, "meter_id must be >= 1", lambda i: arr["meter_id"][i])
        for name in ("secondary", "factor"):
            col = arr[name]
            bad(
                ~np.isfinite(col) | (col < 0),
                f"{name} not a finite non-negative number",
                lambda i, col=col: col[i],
            )
    return out


def _key_order(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices in key order, and a mask of rows whose key repeats the previous one."""
    t = arr["interval_start"].view("i8")
    order = _key_sort(arr)
    k = arr[order]
    kt = t[order]
    dup = np.zeros(len(arr), dtype=bool)
    if len(arr) > 1:
        dup[1:] = (
            (k["frontier_id"][1:] == k["frontier_id"][:-1])
            & (k["channel"][1:] == k["channel"][:-1])
            & (kt[1:] == kt[:-1])
        )
    return order, dup


def _collapse(
    obj: np.ndarray, rest: list[tuple[Any, ...]], measured: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Indices of the object rows and measured rows to write, in-batch duplicates with
    identical content collapsed; problems for duplicates that disagree."""
    n_obj = len(obj)
    both = np.concatenate([obj, measured])
    order, dup = _key_order(both)
    keep = np.ones(len(both), dtype=bool)
    problems = []
    for pos in np.flatnonzero(dup):
        i, j = int(order[pos - 1]), int(order[pos])
        same = both[i] == both[j]
        if i < n_obj and j < n_obj:
            same = same and rest[i] == rest[j]
        elif (i < n_obj) != (j < n_obj):
            same = False
        if same:
            keep[j] = False
        else:
            problems.append(
                f"row {j if j < n_obj else j - n_obj}{'' if j < n_obj else ' (measured)'}: "
                "same (frontier, channel, interval) as an earlier row with a different value"
            )
    return np.flatnonzero(keep[:n_obj]), np.flatnonzero(keep[n_obj:]), problems


def _day_rows(
    obj: np.ndarray, methods: list[str | None], meas: np.ndarray
) -> tuple[np.ndarray, list[tuple[int, int, date, int, str]]]:
    """The batch as settled_day rows (source 0 where the batch has no value for an hour)
    and the (frontier, channel, day, hour, method) of its estimates."""
    both = np.concatenate([obj, meas]) if len(obj) else meas
    local = both["interval_start"].view("i8") + _LOCAL_OFFSET_US
    day = local // _DAY_US
    hour = (local % _DAY_US) // _HOUR_US
    order = np.lexsort((day, both["channel"], both["frontier_id"]))
    f, c, d = both["frontier_id"][order], both["channel"][order], day[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (f[1:] != f[:-1]) | (c[1:] != c[:-1]) | (d[1:] != d[:-1])
    group = np.empty(len(order), dtype=np.int64)
    group[order] = np.cumsum(new) - 1
    out = np.zeros(int(new.sum()), dtype=_DAY_DTYPE)
    out["frontier_id"], out["channel"] = f[new], c[new]
    out["day"] = d[new].astype("M8[D]")
    out["value"][group, hour] = both["value"]
    out["source"][group, hour] = both["source"]
    out["flags"][group, hour] = both["flags"]
    est = [
        (int(obj["frontier_id"][i]), int(obj["channel"][i]), int(day[i]), int(hour[i]), m)
        for i, m in enumerate(methods)
        if m is not None
    ]
    epoch = date(1970, 1, 1)
    return out, [(a, b, epoch + timedelta(days=x), h, m) for a, b, x, h, m in est]


async def write_settled(
    conn: psycopg.AsyncConnection,
    rows: Iterable[SettledValue] = (),
    *,
    measured: np.ndarray | None = None,
    actor: str,
    reason: str | None = None,
    interval: timedelta = HOUR,
    analyze: bool = True,
) -> WriteResult:
    """Store settled values idempotently in one transaction (see the module docstring).

    ``rows``: SettledValue objects; ``measured``: plain measured values as a
    :data:`MEASURED_DTYPE` array (the bulk of a VEE run). Equal values are left alone; a
    different value (or source, method, flags, detail) becomes version + 1 with the old
    image in the audit log, unless the stored value is manual and the new one is not.
    ``actor`` and ``reason`` are stored on the rows written and in the audit log. Raises
    :class:`InvalidRows` before writing anything. ``analyze``: refresh the statistics of
    the hours written after a large batch (:func:`analyze_settled`); False when the caller
    does it once for several batches.
    """
    items = list(rows)
    obj, rest = _objects(items)
    if measured is None:
        measured = np.zeros(0, dtype=MEASURED_DTYPE)
    if measured.dtype != MEASURED_DTYPE:
        raise InvalidRows("measured settled values", ["array is not of MEASURED_DTYPE"])
    problems = _check(obj, interval, measured=False) + _check(measured, interval, measured=True)
    if problems:
        _reject(len(items) + len(measured), problems)
    keep_obj, keep_meas, problems = _collapse(obj, rest, measured)
    if problems:
        _reject(len(items) + len(measured), problems)
    if not actor:
        raise InvalidRows("settled values", ["actor is required"])
    if interval != HOUR:
        raise InvalidRows("settled values", ["settled values are hourly (settled_day)"])
    sources = {rest[i][0] for i in keep_obj} | {
        SOURCES[int(c) - 1] for c in np.unique(measured["source"][keep_meas])
    }
    if "manual" in sources and not reason:
        raise InvalidRows("settled values", ["a manual value needs a reason"])
    received = len(items) + len(measured)
    checked = len(keep_obj) + len(keep_meas)
    if not checked:
        return WriteResult(None, 0, 0, 0, 0)
    meas = measured[keep_meas]
    days, estimates = _day_rows(obj[keep_obj], [rest[i][1] for i in keep_obj], meas)
    async with conn.transaction():
        fids = np.unique(np.concatenate([obj["frontier_id"][keep_obj], meas["frontier_id"]]))
        # The frontier check that replaces a per-row foreign key (migration 0050): once
        # per batch, locking the rows so that a concurrent delete waits for this commit.
        cur = await conn.execute(
            "SELECT id FROM frontier WHERE id = ANY(%s) ORDER BY id FOR KEY SHARE",
            (pgbinary.int8_array(fids),),
        )
        found = {r[0] for r in await cur.fetchall()}
        unknown = [int(f) for f in fids if int(f) not in found]
        if unknown:
            raise UnknownKeys("settled values", [f"unknown frontier id(s) {unknown[:20]}"])
        cur = await conn.execute(
            """INSERT INTO ingest_batch (actor, source, received, inserted, unchanged,
                                         superseded, target)
               VALUES (%s, %s, %s, 0, 0, 0, 'settled_reading') RETURNING id""",
            (actor, ",".join(sorted(sources)), received),
        )
        (batch_id,) = await cur.fetchone()  # type: ignore[misc]
        await set_audit_context(
            conn, actor, f"ingest_batch {batch_id}" + (f": {reason}" if reason else "")
        )
        await conn.execute(
            f"""CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (
                    frontier_id bigint, channel smallint, interval_start timestamptz,
                    value double precision, source text, method text, flags integer,
                    detail jsonb)"""
        )
        await conn.execute(
            f"""CREATE TEMP TABLE IF NOT EXISTS {_MEASURED_STAGE} (
                    frontier_id bigint, channel smallint, interval_start timestamptz,
                    value double precision, source smallint, flags integer, meter_id bigint,
                    reading_version integer, secondary double precision,
                    factor double precision)"""
        )
        await conn.execute(
            f"""CREATE TEMP TABLE IF NOT EXISTS {_DAY_STAGE} (
                    frontier_id bigint, channel smallint, day date,
                    value double precision[], source smallint[], flags integer[]);
                CREATE TEMP TABLE IF NOT EXISTS {_DAY_METHOD} (
                    frontier_id bigint, channel smallint, day date, hour integer,
                    method text);
                CREATE TEMP TABLE IF NOT EXISTS {_CHANGED} (
                    frontier_id bigint, channel smallint, day date)"""
        )
        await conn.execute(
            f"TRUNCATE {_STAGE}, {_MEASURED_STAGE}, {_DAY_STAGE}, {_DAY_METHOD}, {_CHANGED}"
        )
        # The upsert sorts the batch in key order (index locality, one lock order for
        # concurrent writers): a large fleet's day (~200 MB) in memory, not spilled to disk.
        await conn.execute("SELECT set_config('work_mem', '256MB', true)")
        if len(keep_obj):
            async with conn.cursor() as c, c.copy(f"COPY {_STAGE} ({_COLS}) FROM STDIN") as copy:
                await copy.write(_copy_text(obj, rest, items, keep_obj))
        async with (
            conn.cursor() as c,
            c.copy(
                f"COPY {_DAY_STAGE} ({', '.join(n for n, _ in DAY_COLUMNS)})"
                " FROM STDIN (FORMAT BINARY)"
            ) as copy,
        ):
            await copy.write(pgbinary.encode(DAY_COLUMNS, days))
        if estimates:
            async with conn.cursor() as c, c.copy(f"COPY {_DAY_METHOD} FROM STDIN") as copy:
                for row in estimates:
                    await copy.write_row(row)
        rows_sql = f"""INSERT INTO settled_reading AS t ({_COLS}, {_PROVENANCE}, actor, reason)
                  SELECT {_COLS}, {_PROVENANCE}, %(actor)s, %(reason)s FROM (
                    SELECT {_COLS}, NULL::bigint AS meter_id, NULL::integer AS reading_version,
                           NULL::float8 AS secondary, NULL::float8 AS factor FROM {_STAGE}
                    UNION ALL
                    SELECT frontier_id, channel, interval_start, value,
                           CASE source WHEN 1 THEN 'principal' ELSE 'backup' END, NULL,
                           flags, '{{}}'::jsonb, {_PROVENANCE}
                    FROM {_MEASURED_STAGE}) x
                  ORDER BY {KEY}"""
        upsert = f"""WITH up AS (
                  {rows_sql}
                  ON CONFLICT ({KEY}) DO UPDATE
                    SET value = excluded.value, source = excluded.source,
                        method = excluded.method, flags = excluded.flags,
                        detail = excluded.detail, meter_id = excluded.meter_id,
                        reading_version = excluded.reading_version,
                        secondary = excluded.secondary, factor = excluded.factor,
                        actor = excluded.actor, reason = excluded.reason, settled_at = now(),
                        version = t.version + 1
                    WHERE (t.source <> 'manual' OR excluded.source = 'manual')
                      -- provenance compared as readers see it: a row stored before
                      -- migration 0220 (in detail) equals the same value typed
                      AND (t.value, t.source, t.method, t.flags, {detail_sql("t")})
                          IS DISTINCT FROM (excluded.value, excluded.source, excluded.method,
                                            excluded.flags, {detail_sql("excluded")})
                  RETURNING t.frontier_id, t.channel, t.interval_start, t.version),
                changed_days AS (
                  INSERT INTO {_CHANGED}
                  SELECT DISTINCT frontier_id, channel, {sql_local_day("interval_start")}
                  FROM up),
                bumped AS (
                  -- The changed days' counters (migration 0190): what VEE compares
                  -- instead of re-reading a day's values.
                  INSERT INTO settled_day_version AS v (frontier_id, day)
                  SELECT DISTINCT frontier_id, {sql_local_day("interval_start")} FROM up
                  ON CONFLICT (frontier_id, day) DO UPDATE SET version = v.version + 1)
                SELECT count(*) FILTER (WHERE version = 1),
                       count(*) FILTER (WHERE version > 1) FROM up"""
        params = {"actor": actor, "reason": reason}
        cur = None
        if await _all_new(conn, obj[keep_obj], meas):
            # Likely a first settle: the objects by a plain INSERT (no conflict check per
            # row, nothing returned) and the measured values by binary COPY straight into
            # the table, in a savepoint, the changed days being all the batch's days; if
            # some key is stored after all (or a concurrent writer commits one first), the
            # upsert below does it.
            try:
                async with conn.transaction():
                    cur = await conn.execute(rows_sql, params)
                    await _copy_measured(conn, meas, actor, reason)
                    inserted, superseded = cur.rowcount + len(meas), 0
                    await conn.execute(
                        f"""INSERT INTO {_CHANGED} SELECT frontier_id, channel, day
                              FROM {_DAY_STAGE};
                            INSERT INTO settled_day_version AS v (frontier_id, day)
                            SELECT DISTINCT frontier_id, day FROM {_DAY_STAGE}
                            ON CONFLICT (frontier_id, day) DO UPDATE
                              SET version = v.version + 1"""
                    )
            except (errors.UniqueViolation, errors.DeadlockDetected):
                cur = None
        if cur is None:
            if len(meas):
                names = ", ".join(MEASURED_DTYPE.names)
                async with (
                    conn.cursor() as c,
                    c.copy(f"COPY {_MEASURED_STAGE} ({names}) FROM STDIN (FORMAT BINARY)") as cp,
                ):
                    await cp.write(pgbinary.encode(MEASURED_COLUMNS, meas))
            cur = await conn.execute(upsert, params)
            inserted, superseded = await cur.fetchone()  # type: ignore[misc]
        if inserted or superseded:
            await _merge_days(conn)
        if analyze and inserted >= ANALYZE_AFTER:
            t = np.concatenate([meas["interval_start"], obj[keep_obj]["interval_start"]])
            await analyze_settled(conn, from_us(t.min()), from_us(t.max()))
        kept = 0
        if inserted + superseded < checked:
            # Some rows were not applied: equal to what is stored, or refused because a
            # manual value stands. Only then is the (costly) comparison worth making.
            cur = await conn.execute(
                f"""SELECT count(*) FROM (
                      SELECT frontier_id, channel, interval_start FROM {_STAGE}
                       WHERE source <> 'manual'
                      UNION ALL
                      SELECT frontier_id, channel, interval_start FROM {_MEASURED_STAGE}) s
                    JOIN settled_reading t
                      ON settled_local_day(t.interval_start) = settled_local_day(s.interval_start)
                     AND (t.frontier_id, t.channel, t.interval_start)
                         = (s.frontier_id, s.channel, s.interval_start)
                    WHERE t.source = 'manual'"""
            )
            (kept,) = await cur.fetchone()  # type: ignore[misc]
        await conn.execute(
            f"TRUNCATE {_STAGE}, {_MEASURED_STAGE}, {_DAY_STAGE}, {_DAY_METHOD}, {_CHANGED}"
        )
        unchanged = checked - inserted - superseded - kept
        await conn.execute(
            """UPDATE ingest_batch SET inserted = %s, unchanged = %s, superseded = %s,
                                      kept_manual = %s WHERE id = %s""",
            (inserted, unchanged, superseded, kept, batch_id),
        )
    return WriteResult(batch_id, received, inserted, unchanged, superseded, kept_manual=kept)


ANALYZE_AFTER = 50_000
"""New values in one write from which the written hours' statistics are refreshed."""


async def _copy_measured(
    conn: psycopg.AsyncConnection, meas: np.ndarray, actor: str, reason: str | None
) -> None:
    """New plain measured values by binary COPY into settled_reading, in key order (appended
    at the index's end, and the order concurrent writers lock keys in), one COPY per source.

    Straight into the table rather than through a staging table and an INSERT: the server
    then batches the heap inserts, about half the insert's server time (benchmarks/README.md,
    VEE)."""
    if not len(meas):
        return
    meas = _in_key_order(meas)
    constants = [("actor", actor)] + ([("reason", reason)] if reason is not None else [])
    names = ", ".join([_DIRECT_NAMES, "source", *(n for n, _ in constants)])
    for code, source in ((1, "principal"), (2, "backup")):
        part = meas[meas["source"] == code]
        if not len(part):
            continue
        data = pgbinary.encode(_DIRECT_COLUMNS, part, [("source", source), *constants])
        async with (
            conn.cursor() as c,
            c.copy(f"COPY settled_reading ({names}) FROM STDIN (FORMAT BINARY)") as copy,
        ):
            await copy.write(data)


async def _all_new(conn: psycopg.AsyncConnection, *batches: np.ndarray) -> bool:
    """Whether the batch's first key in key order is not stored: then the batch is most
    likely all new (a first settle of the hours; the upsert's order puts that key first, so
    a plain INSERT that meets a stored key fails early)."""
    rows = np.concatenate(batches)
    first = rows[_first_in_key_order(rows)]
    t = _EPOCH + int(first["interval_start"].view("i8")) * timedelta(microseconds=1)
    cur = await conn.execute(
        "SELECT NOT EXISTS (SELECT 1 FROM settled_reading"
        " WHERE settled_local_day(interval_start) = settled_local_day(%(t)s)"
        " AND frontier_id = %(f)s AND channel = %(c)s AND interval_start = %(t)s)",
        {"t": t, "f": int(first["frontier_id"]), "c": int(first["channel"])},
    )
    return bool((await cur.fetchone())[0])  # type: ignore[index]


async def analyze_settled(conn: psycopg.AsyncConnection, first: datetime, last: datetime) -> None:
    """Statistics of the part of settled_reading that new rows from ``first`` to ``last``
    (interval starts) went to.

    A fleet's first settle of a day adds a day the planner's statistics do not know of; until
    autovacuum analyzes (days later: a day is a few percent of a table or a 30-day chunk)
    queries on that day are planned as if it were empty (seen on TimescaleDB: a scan of the
    whole day through the time index for 200 frontiers' values, 6 s instead of 10 ms). So
    ANALYZE it now, in this transaction: the chunks the batch fell in on TimescaleDB, the
    table (a fixed-size sample) otherwise."""
    cur = await conn.execute("SELECT to_regclass('timescaledb_information.chunks')")
    if (await cur.fetchone())[0] is None:  # type: ignore[index]
        await conn.execute("ANALYZE settled_reading")
        return
    cur = await conn.execute(
        """SELECT format('%%I.%%I', chunk_schema, chunk_name)
           FROM timescaledb_information.chunks
           WHERE hypertable_schema = current_schema() AND hypertable_name = 'settled_reading'
             AND range_end > %s AND range_start <= %s""",
        (first, last),
    )
    chunks = [r[0] for r in await cur.fetchall()]
    for chunk in chunks or ["settled_reading"]:
        await conn.execute(f"ANALYZE {chunk}")  # noqa: S608 - names from the catalog, quoted


async def _merge_days(conn: psycopg.AsyncConnection) -> None:
    """Merge the staged day rows of the days this write changed into settled_day.

    Hour by hour, the batch's value where it has one unless the stored hour is manual and
    the batch's is not (settled_reading's rule, so the result is what settled_reading
    holds: the batch's hours are locked by the upsert, and ON CONFLICT sees the latest
    settled_day row); the stored hour elsewhere. A day the batch covers whole over no
    manual hour is the batch's arrays as they are."""
    merge = "settled_day_merge(d.source, excluded.source, d.{c}, excluded.{c})"
    whole = "NOT (0 = ANY(excluded.source) OR 4 = ANY(d.source))"
    await conn.execute(
        f"""INSERT INTO settled_day AS d (frontier_id, channel, day, value, source, flags,
                                          method)
            SELECT s.frontier_id, s.channel, s.day,
                   CASE WHEN 0 = ANY(s.source) THEN ARRAY(
                     SELECT CASE WHEN s.source[k] <> 0 THEN s.value[k] END
                     FROM generate_series(1, 24) k ORDER BY k) ELSE s.value END,
                   s.source, s.flags, m.method
            FROM {_DAY_STAGE} s JOIN {_CHANGED} USING (frontier_id, channel, day)
            LEFT JOIN (SELECT frontier_id, channel, day,
                              settled_day_spread(array_agg(hour), array_agg(method)) method
                       FROM {_DAY_METHOD} GROUP BY 1, 2, 3) m
              USING (frontier_id, channel, day)
            ORDER BY 1, 2, 3
            ON CONFLICT (frontier_id, channel, day) DO UPDATE SET
              value = CASE WHEN {whole} THEN excluded.value ELSE {merge.format(c="value")} END,
              source = CASE WHEN {whole} THEN excluded.source
                            ELSE {merge.format(c="source")} END,
              flags = CASE WHEN {whole} THEN excluded.flags ELSE {merge.format(c="flags")} END,
              method = CASE WHEN {whole} THEN excluded.method
                            WHEN 3 = ANY({merge.format(c="source")})
                            THEN {merge.format(c="method")} END,
              version = d.version + 1"""
    )


async def read_settled(
    conn: psycopg.AsyncConnection,
    frontier_ids: Sequence[int],
    start: datetime,
    end: datetime,
    *,
    channels: Sequence[int | str | Channel] | None = None,
) -> list[StoredSettled]:
    """Current settled values with interval_start in [start, end), in key order."""
    to_utc_us(start, "start"), to_utc_us(end, "end")  # refuse naive bounds
    chans = sorted({channel_id(c) for c in channels}) if channels else sorted(CHANNELS_BY_ID)
    # One lookup per frontier by equality (the OFFSET 0 keeps it one): the planner uses an
    # equal frontier id in the key's descent whatever it believes of the days, but checks
    # ``= ANY(ids)`` row by row over the whole day when statistics show the day empty, as
    # they do for the day being settled (a first settle's 960,000 rows: 290 ms).
    cur = await conn.execute(
        f"""SELECT s.* FROM unnest(%(f)s::bigint[]) f(id), LATERAL (
              SELECT frontier_id, channel, interval_start, value, source, method, flags,
                     {detail_sql()}, version, settled_at, actor, reason
              FROM settled_reading
              WHERE {on_days()} AND frontier_id = f.id AND channel = ANY(%(c)s)
                AND interval_start >= %(a)s AND interval_start < %(b)s OFFSET 0) s
           ORDER BY 1, 2, 3""",
        {
            "days": local_days(start, end),
            "f": sorted(set(frontier_ids)),
            "c": chans,
            "a": start,
            "b": end,
        },
    )
    return [StoredSettled(*r) for r in await cur.fetchall()]


@dataclass(frozen=True)
class SettledDays:
    """Settled days as arrays, one row per (frontier, channel, local day) that has settled
    values, in key order; hour index 0 is period 1 (00:00–01:00 local)."""

    frontier_id: np.ndarray  # (N,) int64
    channel: np.ndarray  # (N,) int16
    day: np.ndarray  # (N,) datetime64[D], the Colombian local day
    value: np.ndarray  # (N, 24) float64, NaN where nothing is settled
    source: np.ndarray  # (N, 24) int16: 0 none, 1 principal, 2 backup, 3 estimate, 4 manual
    flags: np.ndarray  # (N, 24) int32 quality bits (cgm.storage.Quality), 0 where none
    version: np.ndarray  # (N,) int64, + 1 each time a write changed the day
    methods: dict[tuple[int, int, date, int], str]  # (frontier, channel, day, hour): method

    def __len__(self) -> int:
        return len(self.frontier_id)


_DAY_RECORD = np.dtype(
    [
        ("frontier_id", ">i8"),
        ("channel", ">i2"),
        ("day", ">i4"),
        ("version", ">i8"),
        ("value", pgbinary.array_dtype("f8", 24)),
        ("source", pgbinary.array_dtype("i2", 24)),
        ("flags", pgbinary.array_dtype("i4", 24)),
    ]
)


async def read_settled_days(
    conn: psycopg.AsyncConnection,
    frontier_ids: Sequence[int] | None,
    first_day: date,
    last_day: date,
    channels: Sequence[int | str | Channel] | None = None,
) -> SettledDays:
    """The settled values of local days ``first_day``..``last_day`` (inclusive) from
    ``settled_day``: one row per frontier, channel and day instead of 24 (None: every
    frontier; ``channels`` None: all)."""
    chans = sorted({channel_id(c) for c in channels}) if channels else sorted(CHANNELS_BY_ID)
    where = (
        " FROM settled_day WHERE (%(f)s::bigint[] IS NULL OR frontier_id = ANY(%(f)s))"
        " AND channel = ANY(%(c)s) AND day BETWEEN %(a)s AND %(b)s"
    )
    params = {
        "f": None if frontier_ids is None else [int(f) for f in frontier_ids],
        "c": chans,
        "a": first_day,
        "b": last_day,
    }
    # Rows packed by the server (cgm.storage.common.packed); NULL values as NaN so that
    # every array has array_send's fixed layout.
    raw = await packed(
        conn,
        "int8send(frontier_id) || int2send(channel) || int4send(day - DATE '2000-01-01')"
        " || int8send(version) || array_send(array_replace(value, NULL, 'NaN'::float8))"
        " || array_send(source) || array_send(flags)",
        "FROM (SELECT *" + where + " ORDER BY frontier_id, channel, day) x",
        params,
        _DAY_RECORD,
    )
    cur = await conn.execute(
        "SELECT frontier_id, channel, day, k - 1, method[k]"
        + where.replace(" FROM settled_day", " FROM settled_day, generate_series(1, 24) k")
        + " AND method IS NOT NULL AND method[k] IS NOT NULL",
        params,
    )
    methods = {(f, c, d, h): m for f, c, d, h, m in await cur.fetchall()}
    return SettledDays(
        raw["frontier_id"].astype(np.int64),
        raw["channel"].astype(np.int16),
        (raw["day"].astype(np.int64) + pgbinary.PG_EPOCH_DAYS).astype("M8[D]"),
        pgbinary.read_array(raw["value"]),
        pgbinary.read_array(raw["source"]),
        pgbinary.read_array(raw["flags"]),
        raw["version"].astype(np.int64),
        methods,
    )
