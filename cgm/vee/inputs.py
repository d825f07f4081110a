"""Everything VEE reads for one local day, as arrays: the registry, readings, register
snapshots, clock corrections, power samples, settled history and the stored settled values.

VEE only reads what collection stored (one-way flow); it never talks to meters.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, fields
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any

import numpy as np
import psycopg

from cgm.energy import primary_factor
from cgm.frontier_log import clock_corrections
from cgm.localtime import HOUR, day_bounds
from cgm.storage import pgbinary
from cgm.storage.common import CHANNELS_BY_ID, channel_id, packed, to_utc_us
from cgm.storage.pgbinary import int8_array
from cgm.storage.settled import detail_sql, on_days
from cgm.vee.config import VeeConfig
from cgm.vee.rules import meter_error_pct

# A time as timestamptz's own binary form, int64 µs since 2000-01-01: no numeric arithmetic
# in the server (extract() was a third of the server's cost of loading a day's readings);
# :func:`_unix_us` makes it Unix µs on arrival.
_TIME = "timestamptz_send({t})"


def _unix_us(arr: np.ndarray) -> np.ndarray:
    """``arr`` (packed, native byte order) with its ``t`` field from PostgreSQL µs to Unix µs."""
    arr["t"] += pgbinary.PG_EPOCH_US
    return arr


class _KeyTable:
    """(id, channel) keys as one sorted int64 column that numpy searches: which entry a
    row's key is, for millions of rows at once (a dict would be a Python call per row)."""

    def __init__(self, ids: np.ndarray, channels: np.ndarray) -> None:
        keys = ids.astype(np.int64) * 8 + channels
        self.order = np.argsort(keys, kind="stable")
        self.keys = keys[self.order]

    def find(self, ids: np.ndarray, channels: np.ndarray) -> np.ndarray:
        """Each row's position in the arrays the table was made from, or -1."""
        if not len(self.keys):
            return np.full(len(ids), -1, dtype=np.int64)
        k = ids.astype(np.int64) * 8 + channels
        pos = np.clip(np.searchsorted(self.keys, k), 0, len(self.keys) - 1)
        return np.where(self.keys[pos] == k, self.order[pos], -1)


W = 26  # window columns: the hour before, periods 1..24, the hour after
ROLES = ("principal", "backup")
_ACCURACY_COLUMN = {1: "accuracy_active", 2: "accuracy_active", 3: "accuracy_reactive"}


@lru_cache(maxsize=256)  # a fleet has a few channel lists, met 20,000 times
def _channel_bits(names: tuple[str, ...]) -> int:
    """A meter's channels as bits (1 << channel id)."""
    return sum(1 << c for c in {channel_id(c) for c in names})


@dataclass
class Series:
    """The (frontier, channel) pairs being settled, as parallel arrays of length S."""

    frontier_id: np.ndarray
    channel: np.ndarray
    code: list[str]
    meter: dict[str, np.ndarray]  # role -> meter id (0: none)
    factor: dict[str, np.ndarray]  # role -> primary factor (NaN: no meter)
    tolerance_pct: np.ndarray
    capacity_kwh: np.ndarray
    index: dict[tuple[int, int], int] = field(init=False)  # (frontier, channel) -> position

    def __post_init__(self) -> None:
        pairs = zip(self.frontier_id.tolist(), self.channel.tolist(), strict=True)
        self.index = {(f, c): i for i, (f, c) in enumerate(pairs)}

    def __len__(self) -> int:
        return len(self.frontier_id)

    def take(self, keep: np.ndarray) -> Series:
        """The series where the boolean ``keep`` is true, in the same order."""
        return Series(
            self.frontier_id[keep],
            self.channel[keep],
            [c for c, k in zip(self.code, keep.tolist(), strict=True) if k],
            {r: a[keep] for r, a in self.meter.items()},
            {r: a[keep] for r, a in self.factor.items()},
            self.tolerance_pct[keep],
            self.capacity_kwh[keep],
        )


async def load_series(
    conn: psycopg.AsyncConnection,
    config: VeeConfig,
    frontier_ids: list[int] | None = None,
) -> Series:
    """Active meters grouped by frontier and channel, with factors and tolerances.

    Column-wise: a Python step per meter and per series was ~0.5 s of every run of a
    20,000-meter fleet; here only the few distinct classes and channel lists are looked up
    one by one."""
    cur = await conn.execute(
        """SELECT f.id, f.code, f.adjustment_factor, f.installed_capacity_mva,
                  m.id, m.role, m.ct_ratio, m.vt_ratio, m.accuracy_active,
                  m.accuracy_reactive, m.ct_accuracy, m.vt_accuracy, m.channels
           FROM frontier f JOIN meter m ON m.frontier_id = f.id AND m.active
           WHERE %(ids)s::bigint[] IS NULL OR f.id = ANY(%(ids)s)
           ORDER BY f.id, m.role DESC""",
        {"ids": None if frontier_ids is None else int8_array(frontier_ids)},
    )
    rows = await cur.fetchall()
    if not rows:
        ids, floats = np.zeros(0, np.int64), np.zeros(0)
        return Series(ids, np.zeros(0, np.int16), [], dict.fromkeys(ROLES, ids),
                      dict.fromkeys(ROLES, floats), floats, floats)  # fmt: skip
    fid, code, adj, cap, mid, role, ct, vt, acc_a, acc_r, ct_acc, vt_acc, chans = zip(
        *rows, strict=True
    )
    # Per meter: its factor (validated as cgm.energy.primary_factor does), the error bound
    # of its chain for active and for reactive channels, and its channels as bits.
    factor = np.array(ct, dtype=float) * np.array(vt, dtype=float) * np.array(adj, dtype=float)
    for k in np.flatnonzero(~(factor > 0)).tolist()[:1]:  # the first bad one raises
        primary_factor(ct[k], vt[k], adj[k])
    error_pct = lru_cache(maxsize=256)(meter_error_pct)  # a fleet has few class triples
    default = config.divergence_default_class
    err = {
        kind: np.array(
            [error_pct(c, t, v, default) for c, t, v in zip(cls, ct_acc, vt_acc, strict=True)]
        )
        for kind, cls in (("accuracy_active", acc_a), ("accuracy_reactive", acc_r))
    }
    bits = np.array([_channel_bits(tuple(c)) for c in chans], dtype=np.int64)
    # Per frontier (rows come by frontier): which meter holds each role, or -1.
    fids, first, inv = np.unique(np.array(fid, dtype=np.int64), True, True)
    at = {r: np.full(len(fids), -1, dtype=np.int64) for r in ROLES}
    for r in ROLES:
        mine = np.flatnonzero(np.array(role, dtype=object) == r)
        at[r][inv[mine]] = mine
    union = np.zeros(len(fids), dtype=np.int64)
    for r in ROLES:
        union |= np.where(at[r] >= 0, bits[at[r]], 0)
    # The series: each frontier's channels in order (the union of its meters').
    ids = np.array(sorted(CHANNELS_BY_ID))
    f_of, c_of = np.nonzero((union[:, None] >> ids[None, :]) & 1)
    channel = ids[c_of]
    meters: dict[str, np.ndarray] = {}
    factors: dict[str, np.ndarray] = {}
    tolerance = np.zeros(len(f_of))
    active = np.isin(
        channel, [c for c, col in _ACCURACY_COLUMN.items() if col == "accuracy_active"]
    )
    for r in ROLES:
        m = at[r][f_of]
        present = m >= 0
        holds = present & ((bits[m] >> channel) & 1).astype(bool)
        meters[r] = np.where(holds, np.array(mid, dtype=np.int64)[m], 0)
        factors[r] = np.where(holds, factor[m], np.nan)
        # A meter's bound counts whether or not it measures the channel itself.
        e = np.where(active, err["accuracy_active"][m], err["accuracy_reactive"][m])
        tolerance = tolerance + np.where(present, e, 0.0)
    capacity = np.array([np.nan if not c else c * 1000.0 for c in cap], dtype=float)
    return Series(
        fids[f_of],
        channel.astype(np.int16),
        [code[i] for i in first[f_of].tolist()],
        meters,
        factors,
        config.divergence_factor * tolerance,
        capacity[first[f_of]],
    )


@dataclass
class MeterMatrix:
    """One role's readings in the window: (S, W) arrays."""

    raw: np.ndarray  # secondary values, NaN where absent
    value: np.ndarray  # primary
    quality: np.ndarray
    version: np.ndarray
    duplicate: np.ndarray
    off_grid: np.ndarray

    def take(self, keep: np.ndarray) -> MeterMatrix:
        """The rows (series) where the boolean ``keep`` is true."""
        return MeterMatrix(*(getattr(self, f.name)[keep] for f in fields(self)))


_READING_RECORD = np.dtype(
    [
        ("meter_id", ">i8"),
        ("channel", ">i2"),
        ("t", ">i8"),
        ("value", ">f8"),
        ("quality", ">i4"),
        ("version", ">i4"),
    ]
)


def window(day: date) -> tuple[datetime, datetime]:
    start, end = day_bounds(day)
    return start - HOUR, end + HOUR


async def load_readings(
    conn: psycopg.AsyncConnection, series: Series, day: date
) -> dict[str, MeterMatrix]:
    """Readings of every series' principal and backup over the day's window."""
    w0, w1 = window(day)
    # (meter, channel) → (series, role)
    has = [np.flatnonzero(series.meter[role]) for role in ROLES]
    t_series = np.concatenate(has)
    t_role = np.concatenate([np.full(len(h), r, dtype=np.int8) for r, h in enumerate(has)])
    meters = np.concatenate([series.meter[role][h] for role, h in zip(ROLES, has, strict=True)])
    table = _KeyTable(meters, series.channel[t_series])
    wire = await packed(
        conn,
        "int8send(meter_id) || int2send(channel) || "
        + _TIME.format(t="interval_start")
        + " || float8send(value) || int4send(quality) || int4send(version)",
        "FROM reading WHERE meter_id = ANY(%(m)s) AND interval_start >= %(a)s"
        " AND interval_start < %(b)s",
        {"m": int8_array(np.unique(meters)), "a": w0, "b": w1},
        _READING_RECORD,
        native=False,
    )
    # Placed in a thread: numpy lets go of the GIL for most of it, so the event loop goes on
    # taking the replies of a concurrent read (a large run's history, on another
    # connection) instead of leaving the server waiting to send them (~1 s a run).
    return await asyncio.to_thread(_place_readings, wire, series, table, t_series, t_role, w0)


def _place_readings(
    wire: np.ndarray,
    series: Series,
    table: _KeyTable,
    t_series: np.ndarray,
    t_role: np.ndarray,
    w0: datetime,
) -> dict[str, MeterMatrix]:
    """The readings (big-endian records) in each role's (S, W) matrices."""
    arr = _unix_us(wire.astype(wire.dtype.newbyteorder("=")))
    S = len(series)
    out: dict[str, MeterMatrix] = {}
    for role in ROLES:
        out[role] = MeterMatrix(
            np.full((S, W), np.nan),
            np.full((S, W), np.nan),
            np.zeros((S, W), dtype=np.int64),
            np.zeros((S, W), dtype=np.int32),
            np.zeros((S, W), dtype=bool),
            np.zeros((S, W), dtype=bool),
        )
    if not len(arr) or not len(t_series):
        return out
    # Each reading's (meter, channel) → (role, series); a channel no series has: none.
    at = table.find(arr["meter_id"], arr["channel"])
    found = at >= 0
    srow, rrole = np.where(found, t_series[at], -1), np.where(found, t_role[at], -1)
    offset = arr["t"] - to_utc_us(w0, "w0").astype(np.int64)
    hour_us = 3_600_000_000
    col = offset // hour_us
    off = offset % hour_us != 0
    for r, role in enumerate(ROLES):
        m = out[role]
        sel = np.flatnonzero(rrole == r)
        on, away = sel[~off[sel]], sel[off[sel]]
        s_, c_ = srow[on], col[on]
        m.duplicate[:] = (np.bincount(s_ * W + c_, minlength=S * W) > 1).reshape(S, W)
        m.off_grid[srow[away], col[away]] = True
        m.raw[s_, c_] = arr["value"][on]
        m.quality[s_, c_] = arr["quality"][on]
        m.version[s_, c_] = arr["version"][on]
        m.value[:] = m.raw * series.factor[role][:, None]
    return out


async def _series_by_key(
    cur: psycopg.AsyncCursor,
) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """Rows (id, channel, time, value) → per (id, channel): (POSIX seconds, values)."""
    grouped: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for key, ch, at, value in await cur.fetchall():
        grouped.setdefault((key, ch), []).append((at.timestamp(), value))
    return _arrays(grouped)


async def load_snapshots(
    conn: psycopg.AsyncConnection, meter_ids: list[int], day: date, skew: timedelta
) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """Register snapshots near the window, per (meter, channel): (POSIX seconds, value)."""
    w0, w1 = window(day)
    cur = await conn.execute(
        """SELECT meter_id, channel, read_at, value FROM register_snapshot
           WHERE meter_id = ANY(%s) AND read_at >= %s AND read_at <= %s
           ORDER BY meter_id, channel, read_at""",
        (int8_array(meter_ids), w0 - skew, w1 + skew),
    )
    return await _series_by_key(cur)


def snapshot_near(
    snaps: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]],
    meter_id: int,
    channel: int,
    t: float,
    skew_s: float,
) -> tuple[float, float] | None:
    """(read_at seconds, value) of the snapshot closest to ``t`` within ``skew_s``."""
    found = snaps.get((meter_id, channel))
    if found is None:
        return None
    times, values = found
    i = int(np.argmin(np.abs(times - t)))
    if abs(times[i] - t) > skew_s:
        return None
    return float(times[i]), float(values[i])


async def load_clock_corrections(
    conn: psycopg.AsyncConnection, meter_ids: list[int], day: date
) -> list[tuple[int, datetime, datetime]]:
    """Large clock corrections recorded in the hoja de vida whose span meets the window."""
    w0, w1 = window(day)
    return await clock_corrections(conn, meter_ids, w0, w1)


async def load_power(
    conn: psycopg.AsyncConnection, frontier_ids: list[int], day: date, margin: timedelta
) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """Power samples (SCADA) per (frontier, channel): (POSIX seconds, kW)."""
    w0, w1 = window(day)
    cur = await conn.execute(
        """SELECT frontier_id, channel, measured_at, kw FROM power_sample
           WHERE frontier_id = ANY(%s) AND measured_at >= %s AND measured_at <= %s
           ORDER BY frontier_id, channel, measured_at""",
        (int8_array(frontier_ids), w0 - margin, w1 + margin),
    )
    return await _series_by_key(cur)


_HISTORY_RECORD = np.dtype(
    [
        ("frontier_id", ">i8"),
        ("channel", ">i2"),
        ("day", ">i4"),
        ("estimated", ">i2"),
        ("value", pgbinary.array_dtype("f8", 24)),
    ]
)
_EDGE_RECORD = np.dtype(
    [
        ("frontier_id", ">i8"),
        ("channel", ">i2"),
        ("day", ">i4"),
        ("first", ">f8"),
        ("last", ">f8"),
    ]
)
_PG_DAY0 = date(2000, 1, 1)


async def load_history(
    conn: psycopg.AsyncConnection,
    series: Series,
    days: list[date],
    *,
    whole_fleet: bool = False,
    only: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Settled values of ``days`` over their windows (the neighbour hours too, which the
    anchored estimate needs): ((S, D, W) values, (S, D) day had an estimate in 1..24).
    ``only``: series indices to read (the others stay NaN); ``whole_fleet``: the series
    are every frontier's, so no frontier filter is needed.

    Read from ``settled_day`` (one row per frontier, channel and day, kept equal to
    settled_reading by cgm.storage.write_settled): the history of a large fleet is a few
    hundred thousand rows instead of millions of hourly ones. Each day's row whole, and of
    the days either side only the hour next to it."""
    S, D = len(series), len(days)
    values = np.full((S, D, W), np.nan)
    estimated = np.zeros((S, D), dtype=bool)
    if not D or not S:
        return values, estimated
    chosen = series.frontier_id if only is None else series.frontier_id[only]
    fids = None if whole_fleet and only is None else int8_array(np.unique(chosen))
    keys = np.array(list(series.index), dtype=np.int64).reshape(-1, 2)
    rows_of = np.array(list(series.index.values()), dtype=np.int64)
    table = _KeyTable(keys[:, 0], keys[:, 1])

    def series_of(arr: np.ndarray) -> np.ndarray:
        at = table.find(arr["frontier_id"], arr["channel"])
        return np.where(at >= 0, rows_of[at], -1)

    where = " FROM settled_day WHERE (%(f)s::bigint[] IS NULL OR frontier_id = ANY(%(f)s))"
    for i, d in enumerate(days):  # one day a query: a bounded reply
        arr = await packed(
            conn,
            "int8send(frontier_id) || int2send(channel) || int4send(day - DATE '2000-01-01')"
            " || int2send((3 = ANY(source))::int::int2)"
            " || array_send(array_replace(value, NULL, 'NaN'::float8))",
            where + " AND day = %(d)s",
            {"f": fids, "d": d},
            _HISTORY_RECORD,
        )
        s_ = series_of(arr)
        ok = s_ >= 0
        values[s_[ok], i, 1 : W - 1] = pgbinary.read_array(arr["value"][ok])
        estimated[s_[ok], i] = arr["estimated"][ok] != 0
    edges = sorted({d + timedelta(days=k) for d in days for k in (-1, 1)})
    arr = await packed(
        conn,
        "int8send(frontier_id) || int2send(channel) || int4send(day - DATE '2000-01-01')"
        " || float8send(coalesce(value[1], 'NaN')) || float8send(coalesce(value[24], 'NaN'))",
        where + " AND day = ANY(%(d)s)",
        {"f": fids, "d": edges},
        _EDGE_RECORD,
    )
    if len(arr):
        s_ = series_of(arr)
        # index of each history day by its day number (days since 2000-01-01), -1 elsewhere
        numbers = np.array([(d - _PG_DAY0).days for d in days], dtype=np.int64)
        base = int(numbers.min()) - 1
        day_no = np.full(int(numbers.max()) - base + 2, -1, dtype=np.int64)
        day_no[numbers - base] = np.arange(D)
        row_day = arr["day"].astype(np.int64) - base
        for k, col, field in ((1, 0, "last"), (-1, W - 1, "first")):
            # the day before a history day gives its last hour, the day after its first
            at = row_day + k
            inside = (at >= 0) & (at < len(day_no))
            target = np.where(inside, day_no[np.clip(at, 0, len(day_no) - 1)], -1)
            ok = (s_ >= 0) & (target >= 0)
            values[s_[ok], target[ok], col] = arr[field][ok]
    if only is not None:
        drop = np.ones(S, dtype=bool)
        drop[only] = False
        values[drop], estimated[drop] = np.nan, False
    return values, estimated


_STORED_RECORD = np.dtype(
    [
        ("frontier_id", ">i8"),
        ("channel", ">i2"),
        ("t", ">i8"),
        ("value", ">f8"),
        ("source", ">i2"),
        ("flags", ">i4"),
        ("meter_id", ">i8"),
        ("version", ">i4"),
        ("secondary", ">f8"),
        ("factor", ">f8"),
        ("simple", ">i2"),
    ]
)
SOURCE_CODES = {"principal": 1, "backup": 2, "estimate": 3, "manual": 4}


@dataclass
class Stored:
    """The day's current settled values: a packed summary of every row, and the full
    detail of the rows that are not plain measured values (estimates, flagged, manual)."""

    rows: np.ndarray
    full: dict[tuple[int, int, datetime], tuple[Any, ...]]


async def load_stored(conn: psycopg.AsyncConnection, frontier_ids: list[int], day: date) -> Stored:
    start, end = day_bounds(day)
    params = {"f": int8_array(frontier_ids), "a": start, "b": end, "days": [day]}
    where = (
        f"FROM settled_reading WHERE {on_days()} AND frontier_id = ANY(%(f)s)"
        " AND interval_start >= %(a)s AND interval_start < %(b)s"
    )
    # A plain measured value: principal/backup without findings ("checks" in detail when
    # a rule fired); its provenance in the typed columns, or in detail before 0220.
    simple = "source IN ('principal', 'backup') AND NOT detail ? 'checks'"
    rows = await packed(
        conn,
        "int8send(frontier_id) || int2send(channel) || "
        + _TIME.format(t="interval_start")
        + " || float8send(value) || int2send(CASE source WHEN 'principal' THEN 1"
        " WHEN 'backup' THEN 2 WHEN 'estimate' THEN 3 ELSE 4 END::int2) || int4send(flags)"
        " || int8send(CASE WHEN simple THEN m ELSE 0 END)"
        " || int4send(CASE WHEN simple THEN rv ELSE 0 END)"
        " || float8send(CASE WHEN simple THEN sec ELSE 0 END)"
        " || float8send(CASE WHEN simple THEN fac ELSE 0 END)"
        " || int2send(simple::int::int2)",
        # Provenance in typed columns (migration 0220), or in detail on older rows.
        "FROM (SELECT frontier_id, channel, interval_start, value, source, flags,"
        " coalesce(meter_id, (detail->>'meter_id')::int8) AS m,"
        " coalesce(reading_version, (detail->>'reading_version')::int4) AS rv,"
        " coalesce(secondary, (detail->>'secondary')::float8) AS sec,"
        " coalesce(factor, (detail->>'factor')::float8) AS fac,"
        f" {simple} AS simple {where}) x",
        params,
        _STORED_RECORD,
    )
    _unix_us(rows)
    cur = await conn.execute(
        "SELECT frontier_id, channel, interval_start, value, source, method, flags, "
        + detail_sql()
        + where
        + f" AND NOT ({simple})",
        params,
    )
    return Stored(rows, {(r[0], r[1], r[2]): r[3:] for r in await cur.fetchall()})


def _arrays(
    grouped: dict[tuple[int, int], list[tuple[float, float]]],
) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    return {
        k: (np.array([t for t, _ in v]), np.array([x for _, x in v])) for k, v in grouped.items()
    }


# --- recorded inputs: skip a frontier-day whose inputs did not change -------------------

DIGEST_FORMAT = b"cgm-vee-inputs-2"  # change when what a run computes from its inputs does
_XOR = "count(*), coalesce(bit_xor({h}), 0)"
# One 64-bit hash per row of every column VEE reads; summed up per key by XOR (rows are
# unique by key, so nothing cancels out) with the row count.
# Times as float8 microseconds: date_part is far cheaper than extract (numeric) per row,
# and a hash input needs to be deterministic, not exact.
_T = "(date_part('epoch', {t}) * 1e6)::int8"
# A (meter, channel, day) of readings stands for its rows by its change counter.
_READING_DAY_HASH = "hashint8extended(version * 8 + channel, day - DATE '2000-01-01')"
_SNAPSHOT_HASH = (
    "hashint8extended(channel, hashfloat8extended(value, " + _T.format(t="read_at") + "))"
)
_POWER_HASH = (
    "hashint8extended(channel, hashfloat8extended(kw, " + _T.format(t="measured_at") + "))"
)


@dataclass
class Recorded:
    digest: bytes
    uses_day: bool
    ends_estimated: bool


async def input_digests(
    conn: psycopg.AsyncConnection,
    series: Series,
    day: date,
    history_days: list[date],
    config: VeeConfig,
    due_columns: int,
) -> tuple[dict[int, bytes], dict[int, int]]:
    """Per frontier, a digest of everything its run of ``day`` reads but the day's own
    settled values, and the day's ``settled_day_version`` (0: none): ({fid: digest},
    {fid: version}); :func:`seal` joins them.

    The readings count by the change counters of their local days (``reading_day.version``
    of the day and its neighbours, kept by cgm.storage.write_readings); the server hashes
    those and the rows of register snapshots per meter and power samples per frontier, so
    that only a few numbers per meter travel; the history days and the day itself count by
    their ``settled_day_version`` (bumped by every write that changes a settled value,
    cgm.storage.write_settled), not by their rows. The registry, the settings and the hours
    due come from this side.
    """
    import hashlib

    w0, w1 = window(day)
    fids = sorted({int(f) for f in series.frontier_id})
    meters = sorted({int(m) for r in ROLES for m in series.meter[r] if m})
    meter_param, frontier_param = int8_array(meters), int8_array(fids)
    per_meter: dict[int, list[Any]] = {m: [] for m in meters}
    per_frontier: dict[int, list[Any]] = {f: [] for f in fids}

    async def rows(sql: str, params: dict[str, Any]) -> list[tuple]:
        cur = await conn.execute(sql, params)
        return list(await cur.fetchall())

    # The readings count by the change counters of the local days the window meets
    # (reading_day.version, bumped by write_readings whenever a reading of the day is
    # inserted or changes): three rows per meter and channel instead of every hourly row.
    for mid, n, h in await rows(
        f"SELECT meter_id, {_XOR.format(h=_READING_DAY_HASH)} FROM reading_day"
        " WHERE meter_id = ANY(%(m)s) AND day BETWEEN %(a)s AND %(b)s GROUP BY meter_id",
        {"m": meter_param, "a": day - timedelta(days=1), "b": day + timedelta(days=1)},
    ):
        per_meter[mid].append(("r", n, h))
    skew = config.register_skew
    for mid, n, h in await rows(
        f"SELECT meter_id, {_XOR.format(h=_SNAPSHOT_HASH)} FROM register_snapshot"
        " WHERE meter_id = ANY(%(m)s) AND read_at >= %(a)s AND read_at <= %(b)s"
        " GROUP BY meter_id",
        {"m": meter_param, "a": w0 - skew, "b": w1 + skew},
    ):
        per_meter[mid].append(("s", n, h))
    for mid, since, at in await clock_corrections(conn, meter_param, w0, w1):
        per_meter[mid].append(("c", since.timestamp(), at.timestamp()))
    if config.scada:
        margin = config.scada_max_sample_gap
        for fid, n, h in await rows(
            f"SELECT frontier_id, {_XOR.format(h=_POWER_HASH)} FROM power_sample"
            " WHERE frontier_id = ANY(%(f)s) AND measured_at >= %(a)s AND measured_at <= %(b)s"
            " GROUP BY frontier_id",
            {"f": frontier_param, "a": w0 - margin, "b": w1 + margin},
        ):
            per_frontier[fid].append(("p", n, h))
    near = {d + timedelta(days=k) for d in history_days for k in (-1, 0, 1)} | {day}
    own: dict[int, int] = {}
    for fid, n, h, v in await rows(
        "SELECT frontier_id, count(*) FILTER (WHERE day <> %(d)s),"
        " coalesce(bit_xor(hashint8extended(version, day - DATE '2000-01-01'))"
        " FILTER (WHERE day <> %(d)s), 0), max(version) FILTER (WHERE day = %(d)s)"
        " FROM settled_day_version WHERE frontier_id = ANY(%(f)s) AND day = ANY(%(days)s)"
        " GROUP BY frontier_id",
        {"f": frontier_param, "d": day, "days": sorted(near)},
    ):
        if n:  # no history row and no row but the day's own: the same input
            per_frontier[fid].append(("h", n, h))
        own[fid] = v or 0
    common = repr((DIGEST_FORMAT, day.isoformat(), due_columns, _settings(config))).encode()
    by_frontier: dict[int, list[int]] = {}
    for s, f in enumerate(series.frontier_id.tolist()):
        by_frontier.setdefault(f, []).append(s)
    # Columns as Python lists once (indexing numpy per element costs more than the hash).
    channel, tolerance = series.channel.tolist(), series.tolerance_pct.tolist()
    capacity = series.capacity_kwh.tolist()
    meter_ids = list(zip(*(series.meter[r].tolist() for r in ROLES), strict=True))
    factors = list(zip(*(series.factor[r].tolist() for r in ROLES), strict=True))
    out = {}
    for fid, idx in by_frontier.items():
        parts: list[Any] = [per_frontier[fid]]
        for s in idx:
            mids = list(meter_ids[s])
            parts.append(
                (
                    series.code[s],
                    channel[s],
                    mids,
                    list(factors[s]),
                    tolerance[s],
                    capacity[s],
                    [per_meter.get(m, ()) for m in mids],
                )
            )
        h = hashlib.blake2b(common, digest_size=16)
        h.update(repr(parts).encode())
        out[fid] = h.digest()
    return out, {f: own.get(f, 0) for f in out}


def seal(base: bytes, day_version: int) -> bytes:
    """The digest of a frontier-day's inputs with its own settled version."""
    import hashlib

    return hashlib.blake2b(base + day_version.to_bytes(8, "big"), digest_size=16).digest()


async def day_versions(
    conn: psycopg.AsyncConnection, frontier_ids: list[int], day: date
) -> dict[int, int]:
    cur = await conn.execute(
        "SELECT frontier_id, version FROM settled_day_version"
        " WHERE day = %s AND frontier_id = ANY(%s)",
        (day, int8_array(frontier_ids)),
    )
    return {f: v for f, v in await cur.fetchall()}


def _settings(config: VeeConfig) -> list[tuple[str, str]]:
    """The settings as text that does not depend on the process (sets sorted)."""
    from dataclasses import fields as dc_fields

    out = []
    for f in dc_fields(config):
        v = getattr(config, f.name)
        out.append((f.name, repr(sorted(v) if isinstance(v, frozenset) else v)))
    return out


async def recorded_inputs(
    conn: psycopg.AsyncConnection, frontier_ids: list[int], day: date
) -> dict[int, Recorded]:
    cur = await conn.execute(
        "SELECT frontier_id, digest, uses_day, ends_estimated FROM vee_day_inputs"
        " WHERE day = %s AND frontier_id = ANY(%s)",
        (day, int8_array(frontier_ids)),
    )
    return {r[0]: Recorded(bytes(r[1]), r[2], r[3]) for r in await cur.fetchall()}


async def record_inputs(
    conn: psycopg.AsyncConnection, day: date, records: dict[int, Recorded]
) -> None:
    """Upsert the inputs of the frontier-days just settled (in the run's transaction)."""
    if not records:
        return
    fids = sorted(records)
    await conn.execute(
        """INSERT INTO vee_day_inputs AS v (frontier_id, day, digest, uses_day, ends_estimated)
           SELECT f, %(d)s, g, u, e
           FROM unnest(%(f)s::bigint[], %(g)s::bytea[], %(u)s::bool[], %(e)s::bool[])
             AS x(f, g, u, e)
           ON CONFLICT (frontier_id, day) DO UPDATE
             SET digest = excluded.digest, uses_day = excluded.uses_day,
                 ends_estimated = excluded.ends_estimated, settled_at = now()""",
        {
            "d": day,
            "f": int8_array(fids),
            "g": [records[f].digest for f in fids],
            "u": [records[f].uses_day for f in fids],
            "e": [records[f].ends_estimated for f in fids],
        },
    )
