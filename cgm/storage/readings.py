"""The raw readings write path: validated, idempotent, versioned, bulk.

``reading`` holds one current row per (meter, channel, interval_start). A batch is
validated completely in numpy before the database is touched, sorted in key order and
written in one transaction:

* rows later than everything stored for their meter and channel (the normal hourly case:
  a meter's new intervals) are COPYed straight into ``reading`` — in key order, which makes
  the primary-key index maintenance append-only and is what makes this path fast;
* the other rows are first compared with the stored ones (read back with one binary COPY,
  compared in numpy) and equal rows dropped, so a re-read writes nothing;
* what remains goes through a temp staging table and one set-based upsert that inserts the
  missing keys, leaves equal values alone (no new version, no audit row), and turns a
  different value or quality into an UPDATE with ``version + 1`` whose old image the audit
  trigger keeps (visible in the ``reading_version`` view);
* one ``ingest_batch`` row records the batch (source, actor, counts); its id is the audit
  reason of the versions the batch superseded;
* the rows that were inserted or changed are applied to ``reading_day`` (one row per meter,
  channel and local day, the 24 values as arrays, a change counter ``version``; migration
  0210) by one upsert of per-day patches built in numpy: an hourly batch sets one slot per
  series, a catch-up inserts whole days.

If a concurrent writer commits one of the "new" keys first, the direct COPY fails on the
key and is redone, inside a savepoint, through the staging upsert; nothing is lost or
duplicated. Duplicate keys inside one batch: identical rows (same value and quality)
collapse to the first; rows that disagree reject the whole batch, because choosing one
would silently drop a measured value.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import psycopg
from psycopg import errors, sql

from cgm.localtime import local_day_hour
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
    missing_ids,
    set_audit_context,
    to_utc_us,
)
from cgm.storage.quality import KNOWN_MASK
from drivers.base import Channel

log = logging.getLogger(__name__)

READING_COLUMNS: tuple[tuple[str, str], ...] = (
    ("meter_id", "i8"),
    ("channel", "i2"),
    ("interval_start", "M8[us]"),
    ("value", "f8"),
    ("quality", "i4"),
    ("collected_at", "M8[us]"),
)
READING_DTYPE = np.dtype([(n, k) for n, k in READING_COLUMNS])
"""One reading as a numpy record. datetime64 fields are UTC (numpy has no time zones)."""

STORED_COLUMNS = (*READING_COLUMNS, ("version", "i4"))
STORED_DTYPE = np.dtype([(n, k) for n, k in STORED_COLUMNS])
"""A current reading as read back: :data:`READING_DTYPE` plus ``version``."""

_NAMES = ", ".join(n for n, _ in READING_COLUMNS)
_COPY_READING = f"COPY reading ({_NAMES}) FROM STDIN (FORMAT BINARY)"
_STAGE = "cgm_reading_stage"
_CHANGED = "cgm_reading_changed"
_DAY_STAGE = "cgm_reading_day_stage"
DAY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("meter_id", "i8"),
    ("channel", "i2"),
    ("day", "M8[D]"),
    ("value", "f8[24]"),
    ("quality", "i4[24]"),
    ("off_grid", "?"),
)
DAY_DTYPE = np.dtype(
    [
        ("meter_id", "i8"),
        ("channel", "i2"),
        ("day", "M8[D]"),
        ("value", "f8", (24,)),
        ("quality", "i4", (24,)),
        ("off_grid", "?"),
    ]
)
"""A ``reading_day`` patch: NaN / -1 in the slots it leaves as they are."""
_CHANGED_COLUMNS = (
    ("meter_id", "i8"),
    ("channel", "i2"),
    ("interval_start", "M8[us]"),
    ("value", "f8"),
    ("quality", "i4"),
)
_MAX_DEADLOCK_RETRIES = 3
_MAX_SPARSE_KEYS = 200_000


@dataclass(frozen=True, slots=True)
class Reading:
    """One reading, the convenient (row-by-row) form. Datetimes must be aware."""

    meter_id: int
    channel: int | str | Channel
    interval_start: datetime
    value: float
    quality: int
    collected_at: datetime


ReadingRows = np.ndarray | Mapping[str, Any] | Iterable[Reading]


def readings_array(
    meter_id: Any,
    channel: Any,
    interval_start: Any,
    value: Any,
    quality: Any = 0,
    collected_at: Any = None,
) -> np.ndarray:
    """A :data:`READING_DTYPE` array from columns (scalars broadcast).

    Datetime columns: ``datetime64`` (taken as UTC) or aware ``datetime`` objects.
    ``collected_at`` is required; it is a parameter with a default only so that it can be
    given by name after ``quality``.
    """
    if collected_at is None:
        raise InvalidRows("readings", ["collected_at is required"])
    cols = {
        "meter_id": _int_column(meter_id, "meter_id"),
        "channel": _channel_column(channel),
        "interval_start": _time_column(interval_start, "interval_start"),
        "value": _float_column(value),
        "quality": _int_column(quality, "quality"),
        "collected_at": _time_column(collected_at, "collected_at"),
    }
    try:
        shaped = np.broadcast_arrays(*cols.values())
    except ValueError as exc:
        raise InvalidRows("readings", [f"columns of different lengths ({exc})"]) from None
    n = max((a.shape[0] if a.ndim else 1) for a in shaped)
    out = np.empty(n, dtype=READING_DTYPE)
    for name, col in zip(cols, shaped, strict=True):
        out[name] = np.broadcast_to(col, (n,))
    return out


def as_array(rows: ReadingRows) -> np.ndarray:
    """Any accepted row form as a fresh :data:`READING_DTYPE` array (not yet validated)."""
    if isinstance(rows, np.ndarray):
        if rows.dtype.names is None or set(READING_DTYPE.names) - set(rows.dtype.names):
            raise InvalidRows(
                "readings", [f"a structured array needs the fields {READING_DTYPE.names}"]
            )
        return readings_array(*(rows[n] for n in READING_DTYPE.names))
    if isinstance(rows, Mapping):
        missing = set(READING_DTYPE.names) - set(rows)
        if missing:
            raise InvalidRows("readings", [f"missing columns {sorted(missing)}"])
        return readings_array(*(rows[n] for n in READING_DTYPE.names))
    items = list(rows)
    if items and not all(isinstance(r, Reading) for r in items):
        raise InvalidRows("readings", ["rows must be Reading instances"])
    if not items:
        return np.empty(0, dtype=READING_DTYPE)
    return readings_array(
        [r.meter_id for r in items],
        [r.channel for r in items],
        [r.interval_start for r in items],
        [r.value for r in items],
        [r.quality for r in items],
        [r.collected_at for r in items],
    )


def _int_column(values: Any, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype == object:
        if not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in arr.flat):
            raise InvalidRows("readings", [f"{what} must be integers"])
        arr = arr.astype("i8")
    if arr.dtype.kind not in "iu":
        raise InvalidRows("readings", [f"{what} must be integers, got {arr.dtype}"])
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo("i8").max:
        raise InvalidRows("readings", [f"{what} out of range"])
    return arr.astype("i8")


def _channel_column(values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":
        return arr.astype("i8")  # range-checked in validate()
    try:
        return np.vectorize(channel_id, otypes=["i8"])(arr) if arr.size else arr.astype("i8")
    except ValueError as exc:
        raise InvalidRows("readings", [str(exc)]) from None


def _float_column(values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind not in "iuf":
        raise InvalidRows("readings", [f"value must be numbers, got {arr.dtype}"])
    return arr.astype("f8")


def _time_column(values: Any, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind == "M":
        return arr.astype("M8[us]")
    if arr.dtype == object:
        try:
            return np.array([to_utc_us(v, what) for v in arr.flat], dtype="M8[us]").reshape(
                arr.shape
            )
        except ValueError as exc:
            raise InvalidRows("readings", [str(exc)]) from None
    raise InvalidRows("readings", [f"{what} must be datetimes, got {arr.dtype}"])


def _checks(arr: np.ndarray, interval: timedelta) -> list[tuple[str, np.ndarray, Any]]:
    """(problem, mask of offending rows, describe(i)) for every row check, in order."""
    step = int(interval / timedelta(microseconds=1))
    start = arr["interval_start"].view("i8")
    start_nat = start == np.datetime64("NaT").astype("i8")
    return [
        ("meter_id must be >= 1", arr["meter_id"] < 1, lambda i: arr["meter_id"][i]),
        (
            "unknown channel (ids 1..4)",
            (arr["channel"] < 1) | (arr["channel"] > 4),
            lambda i: arr["channel"][i],
        ),
        ("interval_start missing", start_nat, lambda i: "NaT"),
        (
            f"interval_start not on a {interval} boundary",
            ~start_nat & (start % step != 0),
            lambda i: arr["interval_start"][i],
        ),
        ("value is NaN", np.isnan(arr["value"]), lambda i: "nan"),
        ("value is infinite", np.isinf(arr["value"]), lambda i: arr["value"][i]),
        ("value is negative", arr["value"] < 0, lambda i: arr["value"][i]),
        (
            f"quality has undefined bits (known mask {KNOWN_MASK:#x})",
            (arr["quality"] < 0) | ((arr["quality"] & ~KNOWN_MASK) != 0),
            lambda i: hex(arr["quality"][i]),
        ),
        ("collected_at missing", np.isnat(arr["collected_at"]), lambda i: "NaT"),
    ]


def validate(arr: np.ndarray, interval: timedelta = HOUR) -> None:
    """Raise :class:`InvalidRows` listing every problem of the batch, or return.

    Refused: meter ids < 1, channels other than 1..4, missing (NaT) times, interval starts
    not on a multiple of ``interval`` (UTC; the hour for the Código de Medida), NaN, ±inf
    or negative values (channels are per direction, so energy is never negative), quality
    bits that :mod:`cgm.storage.quality` does not define.
    """
    problems = [
        f"{what}: {examples(mask, describe)}"
        for what, mask, describe in _checks(arr, interval)
        if mask.any()
    ]
    if problems:
        raise InvalidRows(f"{len(arr)} readings", problems)


def row_problems(arr: np.ndarray, interval: timedelta = HOUR) -> np.ndarray:
    """The first problem of each row (``None`` for a good row), as an object array.

    The per-row form of :func:`validate` plus the in-batch duplicate check, for writers that
    must store the good rows of a batch and set the bad ones aside with a reason (a
    collector: one meter's bad data must not stop the others).
    """
    out = np.full(len(arr), None, dtype=object)
    for what, mask, _ in _checks(arr, interval):
        out[mask & (out == None)] = what  # noqa: E711 - elementwise on an object array
    ok = out == None  # noqa: E711
    idx = np.flatnonzero(ok)
    if len(idx) > 1:
        s = arr[idx]
        order = np.lexsort((s["interval_start"], s["channel"], s["meter_id"]))
        s = s[order]
        key_same = (
            (s["meter_id"][1:] == s["meter_id"][:-1])
            & (s["channel"][1:] == s["channel"][:-1])
            & (s["interval_start"][1:] == s["interval_start"][:-1])
        )
        differs = key_same & (
            (s["value"][1:] != s["value"][:-1]) | (s["quality"][1:] != s["quality"][:-1])
        )
        if differs.any():
            # Every row of a key whose rows disagree: choosing one would drop a measured value.
            run = np.cumsum(np.r_[True, ~key_same])
            bad_runs = np.unique(run[1:][differs])
            bad = np.isin(run, bad_runs)
            out[idx[order[bad]]] = "the same (meter, channel, interval) with different values"
    return out


def sort_and_collapse(arr: np.ndarray) -> np.ndarray:
    """Rows in key order with identical duplicates collapsed to their first occurrence.

    Raises :class:`InvalidRows` if one key has different values or qualities in the batch.
    """
    order = np.lexsort((arr["interval_start"], arr["channel"], arr["meter_id"]))
    s = arr[order]
    if len(s) < 2:
        return s
    same_key = (
        (s["meter_id"][1:] == s["meter_id"][:-1])
        & (s["channel"][1:] == s["channel"][:-1])
        & (s["interval_start"][1:] == s["interval_start"][:-1])
    )
    if not same_key.any():
        return s
    # Compare each row with the first row of its run of equal keys.
    run_head = np.r_[True, ~same_key]
    first = np.flatnonzero(run_head)[np.cumsum(run_head) - 1]
    conflict = (s["value"] != s["value"][first]) | (s["quality"] != s["quality"][first])
    if conflict.any():
        raise InvalidRows(
            f"{len(arr)} readings",
            [
                "the same (meter, channel, interval) has different values in one batch: "
                + examples(
                    conflict,
                    lambda i: (
                        f"({s['meter_id'][i]}, {s['channel'][i]}, "
                        f"{s['interval_start'][i]}) {s['value'][i]!r}/{s['quality'][i]} vs "
                        f"{s['value'][first[i]]!r}/{s['quality'][first[i]]}"
                    ),
                ).replace("row ", "sorted row ")
            ],
        )
    return s[run_head]


def prepare(rows: ReadingRows, interval: timedelta = HOUR) -> tuple[int, np.ndarray]:
    """(rows received, validated rows in key order without duplicates)."""
    arr = as_array(rows)
    validate(arr, interval)
    return len(arr), sort_and_collapse(arr)


def _groups(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start index of each (meter, channel) run in sorted rows, and each row's run number."""
    change = np.r_[
        True, (s["meter_id"][1:] != s["meter_id"][:-1]) | (s["channel"][1:] != s["channel"][:-1])
    ]
    starts = np.flatnonzero(change)
    return starts, np.cumsum(change) - 1


async def _stored_max(
    conn: psycopg.AsyncConnection, meters: np.ndarray, channels: np.ndarray
) -> np.ndarray:
    """Latest stored interval_start per (meter, channel) pair, NaT where none (index probes)."""
    cur = await conn.execute(
        """SELECT (SELECT r.interval_start FROM reading r
                   WHERE r.meter_id = g.m AND r.channel = g.c
                   ORDER BY r.interval_start DESC LIMIT 1)
           FROM unnest(%s::bigint[], %s::smallint[]) WITH ORDINALITY AS g(m, c, i)
           ORDER BY g.i""",
        (meters.tolist(), channels.tolist()),
    )
    found = await cur.fetchall()
    return np.array(
        [np.datetime64("NaT") if t is None else to_utc_us(t, "stored") for (t,) in found],
        dtype="M8[us]",
    )


async def _stored_equal(
    conn: psycopg.AsyncConnection,
    s: np.ndarray,
    candidates: np.ndarray,
    g_meter: np.ndarray,
    g_channel: np.ndarray,
    group: np.ndarray,
    interval: timedelta,
) -> np.ndarray:
    """Mask of rows of ``s`` (among ``candidates``) whose stored value and quality are equal.

    Reads the stored rows of each candidate group's [first, last] interval range with one
    binary COPY and compares in numpy. A row judged equal here may be changed by a concurrent
    writer right after; that is the order "ours, then theirs", so nothing is lost.
    """
    idx = np.flatnonzero(candidates)
    gi = group[idx]
    ug, first, counts = np.unique(gi, return_index=True, return_counts=True)
    last = first + counts - 1
    step = int(interval / timedelta(microseconds=1))
    t_us = s["interval_start"].view("i8")
    lo, hi = t_us[idx[first]], t_us[idx[last]]
    # Dense groups (most intervals of their range in the batch: re-reads) are read back as
    # ranges; sparse ones (scattered late values) by their exact keys, so a small late batch
    # does not scan whole histories.
    dense = counts * 2 >= (hi - lo) // step + 1
    sparse_rows = ~dense[np.searchsorted(ug, gi)]
    if sparse_rows.sum() > _MAX_SPARSE_KEYS:  # too many keys for one query text: upsert them
        sparse_rows[:] = False
    parts = [
        sql.SQL(
            "SELECT g.i, r.interval_start, r.value, r.quality"
            " FROM (SELECT m, c, i, timestamptz 'epoch' + lo * interval '1 microsecond' AS lo,"
            "              timestamptz 'epoch' + hi * interval '1 microsecond' AS hi"
            "       FROM unnest({m}::bigint[], {c}::smallint[], {lo}::bigint[], {hi}::bigint[],"
            "                   {i}::bigint[]) AS u(m, c, lo, hi, i)) AS g"
            " CROSS JOIN LATERAL (SELECT interval_start, value, quality FROM reading r"
            "   WHERE r.meter_id = g.m AND r.channel = g.c"
            "     AND r.interval_start BETWEEN g.lo AND g.hi) AS r"
        ).format(
            m=sql.Literal(g_meter[ug[dense]].tolist()),
            c=sql.Literal(g_channel[ug[dense]].tolist()),
            lo=sql.Literal(lo[dense].tolist()),
            hi=sql.Literal(hi[dense].tolist()),
            i=sql.Literal((np.flatnonzero(dense) + 1).tolist()),
        )
    ]
    if sparse_rows.any():
        sp = idx[sparse_rows]
        parts.append(
            sql.SQL(
                "SELECT k.i, r.interval_start, r.value, r.quality"
                " FROM (SELECT m, c, i, timestamptz 'epoch' + t * interval '1 microsecond' AS t"
                "       FROM unnest({m}::bigint[], {c}::smallint[], {t}::bigint[],"
                "                   {i}::bigint[]) AS u(m, c, t, i)) AS k"
                " JOIN reading r ON r.meter_id = k.m AND r.channel = k.c"
                "  AND r.interval_start = k.t"
            ).format(
                m=sql.Literal(s["meter_id"][sp].tolist()),
                c=sql.Literal(s["channel"][sp].tolist()),
                t=sql.Literal(t_us[sp].tolist()),
                i=sql.Literal((np.searchsorted(ug, group[sp]) + 1).tolist()),
            )
        )
    query = sql.SQL("COPY ({}) TO STDOUT (FORMAT BINARY)").format(
        sql.SQL(" UNION ALL ").join(parts)
    )
    buf = bytearray()
    async with conn.cursor() as cur, cur.copy(query) as copy:
        async for data in copy:
            buf += data
    cols = (("i", "i8"), ("interval_start", "M8[us]"), ("value", "f8"), ("quality", "i4"))
    stored = pgbinary.decode(cols, buf)
    # One int64 key per row: group ordinal in the high bits, interval number in the low 32.
    cand_key = (np.searchsorted(ug, gi).astype("i8") << 32) | (t_us[idx] // step)
    st_key = ((stored["i"] - 1) << 32) | (stored["interval_start"].view("i8") // step)
    order = np.argsort(st_key, kind="stable")
    st_key = st_key[order]
    pos = np.minimum(np.searchsorted(st_key, cand_key), max(len(st_key) - 1, 0))
    same = np.zeros(len(s), dtype=bool)
    if len(st_key):
        hit = st_key[pos] == cand_key
        src = order[pos]
        same[idx] = (
            hit
            & (stored["value"][src] == s["value"][idx])
            & (stored["quality"][src] == s["quality"][idx])
        )
    return same


async def _copy(conn: psycopg.AsyncConnection, statement: str, data: bytes) -> None:
    chunk = 4 << 20
    view = memoryview(data)
    async with conn.cursor() as cur, cur.copy(statement) as copy:
        for i in range(0, len(view), chunk):
            await copy.write(view[i : i + chunk])


_CHANGED_DTYPE = np.dtype(list(_CHANGED_COLUMNS))


def _plain(rows: np.ndarray) -> np.ndarray:
    """``rows``' changed-row fields as a packed :data:`_CHANGED_DTYPE` array."""
    out = np.empty(len(rows), dtype=_CHANGED_DTYPE)
    for name in _CHANGED_DTYPE.names:
        out[name] = rows[name]
    return out


async def _upsert_staged(
    conn: psycopg.AsyncConnection, rows: np.ndarray
) -> tuple[int, int, dict[int, int], np.ndarray]:
    """(inserted, superseded, rows stored per meter, the rows inserted or changed) for
    ``rows`` through the staging table and one upsert."""
    await conn.execute(
        f"""CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (
                meter_id bigint, channel smallint, interval_start timestamptz,
                value double precision, quality integer, collected_at timestamptz)"""
    )
    await conn.execute(
        f"""CREATE TEMP TABLE IF NOT EXISTS {_CHANGED} (
                meter_id bigint, channel smallint, interval_start timestamptz,
                value double precision, quality integer)"""
    )
    await conn.execute(f"TRUNCATE {_STAGE}, {_CHANGED}")
    await _copy(
        conn,
        f"COPY {_STAGE} ({_NAMES}) FROM STDIN (FORMAT BINARY)",
        pgbinary.encode(READING_COLUMNS, rows),
    )
    # ORDER BY: keys are locked in one global order, so concurrent batches cannot deadlock
    # here, and index insertions are in key order.
    cur = await conn.execute(
        f"""WITH up AS (
              INSERT INTO reading AS r ({_NAMES})
              SELECT {_NAMES} FROM {_STAGE} ORDER BY meter_id, channel, interval_start
              ON CONFLICT (meter_id, channel, interval_start) DO UPDATE
                SET value = excluded.value, quality = excluded.quality,
                    collected_at = excluded.collected_at, version = r.version + 1
                WHERE r.value <> excluded.value OR r.quality <> excluded.quality
              RETURNING r.meter_id, r.channel, r.interval_start, r.value, r.quality,
                        r.version),
            kept AS (
              INSERT INTO {_CHANGED}
              SELECT meter_id, channel, interval_start, value, quality FROM up)
            SELECT meter_id, count(*) FILTER (WHERE version = 1),
                   count(*) FILTER (WHERE version > 1)
            FROM up GROUP BY meter_id"""
    )
    per_meter = await cur.fetchall()
    changed = await _copy_out(
        conn, sql.SQL("COPY {} TO STDOUT (FORMAT BINARY)").format(sql.Identifier(_CHANGED))
    )
    await conn.execute(f"TRUNCATE {_STAGE}, {_CHANGED}")
    inserted = sum(r[1] for r in per_meter)
    superseded = sum(r[2] for r in per_meter)
    return inserted, superseded, {m: i + s for m, i, s in per_meter}, changed


async def _copy_out(conn: psycopg.AsyncConnection, query: sql.Composable) -> np.ndarray:
    buf = bytearray()
    async with conn.cursor() as cur, cur.copy(query) as copy:
        async for data in copy:
            buf += data
    return pgbinary.decode(_CHANGED_COLUMNS, buf)


def day_patches(rows: np.ndarray) -> np.ndarray:
    """:data:`DAY_DTYPE` patches, one per (meter, channel, local day) of ``rows`` (readings
    in key order), in key order: each row's value and quality in its hour's slot, NaN / -1
    in the others; a row not on a whole local hour has no slot and marks ``off_grid``."""
    day, hour = local_day_hour(rows["interval_start"])
    n = len(rows)
    head = np.ones(n, dtype=bool)
    head[1:] = (
        (rows["meter_id"][1:] != rows["meter_id"][:-1])
        | (rows["channel"][1:] != rows["channel"][:-1])
        | (day[1:] != day[:-1])
    )
    grp = np.cumsum(head) - 1
    out = np.empty(int(head.sum()), dtype=DAY_DTYPE)
    out["meter_id"] = rows["meter_id"][head]
    out["channel"] = rows["channel"][head]
    out["day"] = day[head]
    out["value"] = np.nan
    out["quality"] = -1
    on = hour >= 0
    out["value"][grp[on], hour[on]] = rows["value"][on]
    out["quality"][grp[on], hour[on]] = rows["quality"][on]
    out["off_grid"] = False
    out["off_grid"][grp[~on]] = True
    return out


async def _apply_days(conn: psycopg.AsyncConnection, changed: np.ndarray) -> None:
    """Apply the inserted or changed readings to ``reading_day``, in key order (concurrent
    writers lock day rows in one global order, after all their reading rows).

    A patch of one slot into a stored day (the collector's hourly batch) is one element
    assignment in an UPDATE; the rest (new days, several slots) goes through one upsert
    that merges element-wise with ``reading_day_merge`` (plpgsql, several µs a row: on the
    hourly batch it tripled the day rows' cost)."""
    order = np.lexsort((changed["interval_start"], changed["channel"], changed["meter_id"]))
    patches = day_patches(changed[order])
    set_slots = patches["quality"] >= 0
    single = (set_slots.sum(axis=1) == 1) & ~patches["off_grid"]
    if single.any():
        p = patches[single]
        h = np.argmax(set_slots[single], axis=1)
        rows = np.arange(len(p))
        cur = await conn.execute(
            """WITH u AS (
                 UPDATE reading_day AS d
                 SET value[u.h] = u.v, quality[u.h] = u.q, version = d.version + 1
                 FROM unnest(%s::bigint[], %s::smallint[], %s::date[], %s::int[],
                             %s::float8[], %s::int[], %s::int[]) AS u(m, c, dy, h, v, q, i)
                 WHERE d.meter_id = u.m AND d.channel = u.c AND d.day = u.dy
                 RETURNING u.i)
               SELECT coalesce(array_agg(i), '{}') FROM u""",
            (
                p["meter_id"].tolist(),
                p["channel"].tolist(),
                p["day"].tolist(),
                (h + 1).tolist(),
                p["value"][rows, h].tolist(),
                p["quality"][rows, h].tolist(),
                rows.tolist(),
            ),
        )
        (done,) = await cur.fetchone()  # type: ignore[misc]
        left = np.ones(len(patches), dtype=bool)
        left[np.flatnonzero(single)[np.asarray(done, dtype=np.int64)]] = False
        patches = patches[left]
        if not len(patches):
            return
    await conn.execute(
        f"""CREATE TEMP TABLE IF NOT EXISTS {_DAY_STAGE} (
                meter_id bigint, channel smallint, day date, value double precision[],
                quality integer[], off_grid boolean)"""
    )
    await conn.execute(f"TRUNCATE {_DAY_STAGE}")
    await _copy(
        conn,
        f"COPY {_DAY_STAGE} FROM STDIN (FORMAT BINARY)",
        pgbinary.encode(DAY_COLUMNS, patches),
    )
    # NaN / -1 (never stored: values are checked finite, qualities >= 0) mark the slots a
    # patch leaves alone; array_replace makes them NULL in C, reading_day_merge keeps the
    # stored element where the patch has NULL.
    await conn.execute(
        f"""INSERT INTO reading_day AS d (meter_id, channel, day, value, quality, off_grid)
            SELECT meter_id, channel, day, array_replace(value, 'NaN', NULL),
                   array_replace(quality, -1, NULL), off_grid
            FROM {_DAY_STAGE} ORDER BY meter_id, channel, day
            ON CONFLICT (meter_id, channel, day) DO UPDATE
              SET value = reading_day_merge(d.value, excluded.value),
                  quality = reading_day_merge(d.quality, excluded.quality),
                  off_grid = d.off_grid OR excluded.off_grid,
                  version = d.version + 1"""
    )
    await conn.execute(f"TRUNCATE {_DAY_STAGE}")


async def write_readings(
    conn: psycopg.AsyncConnection,
    rows: ReadingRows,
    *,
    source: str,
    actor: str | None,
    reason: str | None = None,
    interval: timedelta = HOUR,
    fast: bool = True,
) -> WriteResult:
    """Store a batch of readings idempotently in one transaction; see the module docstring.

    ``rows``: a :data:`READING_DTYPE`-compatible structured array or a mapping of columns
    (fast), or an iterable of :class:`Reading`. ``source`` names the writer (e.g.
    ``"collector:dlms"``), ``actor`` the person or service behind it; both go to
    ``ingest_batch`` and the audit log. ``fast=False`` sends every row through the staging
    upsert, skipping the direct COPY and the client-side comparison (the reference path
    for tests and benchmarks). Raises :class:`InvalidRows` (nothing written) for bad or
    unknown rows.

    Owns its transaction when ``conn`` is idle (and retries a deadlock then); inside a
    caller's transaction it uses a savepoint and the caller decides.
    """
    if not source:
        raise InvalidRows("readings", ["source is required"])
    received, s = prepare(rows, interval)
    if received == 0:
        return WriteResult(None, 0, 0, 0, 0)
    own = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    for attempt in range(_MAX_DEADLOCK_RETRIES + 1):
        try:
            async with conn.transaction():
                return await _write(conn, s, received, source, actor, reason, interval, fast)
        except errors.DeadlockDetected:
            if not own or attempt == _MAX_DEADLOCK_RETRIES:
                raise
            log.warning("readings batch deadlocked, retrying (attempt %d)", attempt + 1)
    raise AssertionError("unreachable")


async def _write(
    conn: psycopg.AsyncConnection,
    s: np.ndarray,
    received: int,
    source: str,
    actor: str | None,
    reason: str | None,
    interval: timedelta,
    fast: bool,
) -> WriteResult:
    n_rows = len(s)
    starts, group = _groups(s)
    g_meter = s["meter_id"][starts]
    g_channel = s["channel"][starts]
    unknown = await missing_ids(conn, "meter", np.unique(g_meter))
    if unknown:
        raise UnknownKeys(f"{received} readings", [f"unknown meter id(s) {unknown[:20]}"])
    cur = await conn.execute(
        """INSERT INTO ingest_batch (actor, source, received, inserted, unchanged, superseded)
           VALUES (%s, %s, %s, 0, 0, 0) RETURNING id""",
        (actor, source, received),
    )
    (batch_id,) = await cur.fetchone()  # type: ignore[misc]
    why = f"ingest_batch {batch_id}" + (f": {reason}" if reason else "")
    await set_audit_context(conn, actor, why)

    new = np.zeros(len(s), dtype=bool)
    if fast:
        latest = (await _stored_max(conn, g_meter, g_channel))[group]
        new = np.isnat(latest) | (s["interval_start"] > latest)
        if not new.all():
            # Drop rows already stored with the same value: a re-read then costs one range
            # scan out instead of a locked tuple per row.
            same = await _stored_equal(conn, s, ~new, g_meter, g_channel, group, interval)
            keep = ~same
            s, new = s[keep], new[keep]
    n_direct = int(new.sum())
    inserted = superseded = 0
    changed: list[np.ndarray] = []
    by_meter: dict[int, int] = {}
    if n_direct:
        try:
            async with conn.transaction():  # savepoint: a lost race falls back below
                await _copy(conn, _COPY_READING, pgbinary.encode(READING_COLUMNS, s[new]))
            inserted += n_direct
            changed.append(s[new][[n for n, _ in _CHANGED_COLUMNS]])
            ids, counts = np.unique(s["meter_id"][new], return_counts=True)
            by_meter = dict(zip(ids.tolist(), counts.tolist(), strict=True))
        except errors.UniqueViolation:
            log.info("batch %s: direct COPY raced a concurrent writer; upserting", batch_id)
            new[:] = False
            n_direct = 0
    if not new.all():
        ins, sup, staged, upserted = await _upsert_staged(conn, s[~new])
        changed.append(upserted)
        inserted += ins
        superseded += sup
        for m, n in staged.items():
            by_meter[m] = by_meter.get(m, 0) + n
    if sum(len(c) for c in changed):
        await _apply_days(conn, np.concatenate([_plain(c) for c in changed]))
    unchanged = n_rows - inserted - superseded
    await conn.execute(
        "UPDATE ingest_batch SET inserted = %s, unchanged = %s, superseded = %s WHERE id = %s",
        (inserted, unchanged, superseded, batch_id),
    )
    return WriteResult(
        batch_id,
        received,
        inserted,
        unchanged,
        superseded,
        direct=n_direct,
        stored_by_meter=by_meter,
    )


# --- queries ------------------------------------------------------------------------------


async def last_interval(
    conn: psycopg.AsyncConnection,
    meter_ids: Sequence[int],
    *,
    channels: Sequence[int | str | Channel] | None = None,
) -> dict[int, datetime]:
    """Latest stored interval_start per meter (over ``channels``, default all): where a
    catch-up read resumes. Meters without readings are absent from the result."""
    chans = sorted({channel_id(c) for c in channels}) if channels else sorted(CHANNELS_BY_ID)
    cur = await conn.execute(
        """SELECT m.id, max(x.t)
           FROM unnest(%s::bigint[]) AS m(id)
           CROSS JOIN unnest(%s::smallint[]) AS c(id)
           CROSS JOIN LATERAL (SELECT r.interval_start AS t FROM reading r
                               WHERE r.meter_id = m.id AND r.channel = c.id
                               ORDER BY r.interval_start DESC LIMIT 1) AS x
           GROUP BY m.id""",
        (list(meter_ids), chans),
    )
    return {m: t for m, t in await cur.fetchall()}


async def read_readings(
    conn: psycopg.AsyncConnection,
    meter_ids: Sequence[int],
    start: datetime,
    end: datetime,
    *,
    channels: Sequence[int | str | Channel] | None = None,
) -> np.ndarray:
    """Current readings with interval_start in [start, end), as a :data:`STORED_DTYPE`
    array in key order (binary COPY, parsed by numpy: cheap for millions of rows)."""
    start_us, end_us = to_utc_us(start, "start"), to_utc_us(end, "end")
    chans = sorted({channel_id(c) for c in channels}) if channels else sorted(CHANNELS_BY_ID)
    names = ", ".join(n for n, _ in STORED_COLUMNS)
    query = sql.SQL(
        "COPY (SELECT {names} FROM reading WHERE meter_id = ANY({m}) AND channel = ANY({c})"
        " AND interval_start >= {s} AND interval_start < {e}"
        " ORDER BY meter_id, channel, interval_start) TO STDOUT (FORMAT BINARY)"
    ).format(
        names=sql.SQL(names),
        m=sql.Literal([int(m) for m in meter_ids]) + sql.SQL("::bigint[]"),
        c=sql.Literal(chans) + sql.SQL("::smallint[]"),
        s=sql.Literal(from_us(start_us)),
        e=sql.Literal(from_us(end_us)),
    )
    buf = bytearray()
    async with conn.cursor() as cur, cur.copy(query) as copy:
        async for data in copy:
            buf += data
    return pgbinary.decode(STORED_COLUMNS, buf)
