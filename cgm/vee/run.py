"""A VEE run: validate one local day's readings, choose or estimate each hour, and write
the settled series — only what changed, so a re-run on unchanged input writes nothing.

Choice per hour (art. 36): the validated principal; else the validated backup; else an
estimate (art. 38). Values are primary energy (cgm.energy), one per frontier, channel and
period. A manual value is never replaced here (the storage layer enforces it too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from cgm import metrics
from cgm.frontier_log import ALARM
from cgm.localtime import HOUR, day_bounds, local_day
from cgm.storage import Quality, SettledValue, write_settled
from cgm.storage.common import CHANNELS_BY_ID, channel_id
from cgm.storage.pgbinary import int8_array
from cgm.storage.settled import ANALYZE_AFTER, analyze_settled, measured_array
from cgm.vee import estimate as est
from cgm.vee import priority
from cgm.vee.config import ALL_RULES, VeeConfig
from cgm.vee.daytype import day_type, same_type_days
from cgm.vee.inputs import (
    ROLES,
    SOURCE_CODES,
    MeterMatrix,
    Recorded,
    Series,
    Stored,
    W,
    day_versions,
    input_digests,
    load_clock_corrections,
    load_history,
    load_power,
    load_readings,
    load_series,
    load_snapshots,
    load_stored,
    record_inputs,
    recorded_inputs,
    seal,
    snapshot_near,
    window,
)
from cgm.vee.rules import CORE, Checks, check_divergence, check_meter
from cgm.vee.typical import typical_curves

log = logging.getLogger(__name__)

# Meter/collection bits a settled value inherits from the reading it came from.
_CARRIED = int(
    Quality.METER_CLOCK_ADJUSTED
    | Quality.METER_POWER_DOWN
    | Quality.CLOCK_CORRECTED
    | Quality.LARGE_CLOCK_CORRECTION
    | Quality.DERIVED_FROM_REGISTERS
    | Quality.PARTIAL
    | Quality.REGISTER_ROLLOVER
)


@dataclass
class VeeSummary:
    """What a run did. ``values`` counts settled values produced (changed or not);
    ``written`` those stored as new or as a new version."""

    days: list[date] = field(default_factory=list)
    frontiers: int = 0
    series: int = 0
    values: int = 0
    by_source: Counter[str] = field(default_factory=Counter)
    by_method: Counter[str] = field(default_factory=Counter)
    flagged: Counter[str] = field(default_factory=Counter)
    written: int = 0
    skipped: int = 0  # frontier-days whose inputs had not changed since their last run
    kept_manual: int = 0
    unsettled: int = 0
    alarms: int = 0
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    def merge(self, other: VeeSummary) -> None:
        self.days += other.days
        self.frontiers = max(self.frontiers, other.frontiers)
        self.series += other.series
        self.values += other.values
        self.by_source.update(other.by_source)
        self.by_method.update(other.by_method)
        self.flagged.update(other.flagged)
        self.written += other.written
        self.skipped += other.skipped
        self.kept_manual += other.kept_manual
        self.unsettled += other.unsettled
        self.alarms += other.alarms
        self.seconds += other.seconds
        for k, v in other.timings.items():
            self.timings[k] = self.timings.get(k, 0.0) + v

    def as_dict(self) -> dict[str, Any]:
        return {
            "days": [d.isoformat() for d in self.days],
            "frontiers": self.frontiers,
            "series": self.series,
            "values": self.values,
            "by_source": dict(self.by_source),
            "by_method": dict(self.by_method),
            "flagged": dict(self.flagged),
            "written": self.written,
            "skipped": self.skipped,
            "kept_manual": self.kept_manual,
            "unsettled": self.unsettled,
            "alarms": self.alarms,
            "seconds": round(self.seconds, 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }


class _Timer:
    def __init__(self, into: dict[str, float]) -> None:
        self.into, self.t = into, time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.into[name] = self.into.get(name, 0.0) + now - self.t
        self.t = now


async def run_vee(
    conn_or_url: psycopg.AsyncConnection | str,
    day: date,
    frontier: str | int | None = None,
    *,
    config: VeeConfig | None = None,
    now: datetime | None = None,
) -> VeeSummary:
    """Settle local day ``day`` for every frontier (or one, by code or id).

    Hours that have not ended by ``now`` (default: the current time) are left alone.
    """
    if isinstance(conn_or_url, str):
        async with await psycopg.AsyncConnection.connect(conn_or_url) as conn:
            return await run_vee(conn, day, frontier, config=config, now=now)
    conn = conn_or_url
    ids = None
    if frontier is not None:
        ids = [await _frontier_id(conn, frontier)]
    return await _run_day(conn, day, ids, config or VeeConfig(), now or datetime.now(UTC))


async def run_vee_pairs(
    conn_or_url: psycopg.AsyncConnection | str,
    pairs: Iterable[tuple[str | int, date]],
    *,
    config: VeeConfig | None = None,
    now: datetime | None = None,
) -> VeeSummary:
    """Settle the given (frontier code or id, local day) pairs: one run per day over the
    frontiers that need it. What the service calls after a collection cycle."""
    if isinstance(conn_or_url, str):
        async with await psycopg.AsyncConnection.connect(conn_or_url) as conn:
            return await run_vee_pairs(conn, pairs, config=config, now=now)
    conn = conn_or_url
    by_day: dict[date, set[int]] = {}
    for f, d in pairs:
        by_day.setdefault(d, set()).add(await _frontier_id(conn, f))
    total = VeeSummary()
    for d in sorted(by_day):
        total.merge(
            await _run_day(
                conn, d, sorted(by_day[d]), config or VeeConfig(), now or datetime.now(UTC)
            )
        )
    return total


async def vee_after_collection(
    conn_or_url: psycopg.AsyncConnection | str,
    cycle: datetime,
    *,
    config: VeeConfig | None = None,
    now: datetime | None = None,
) -> VeeSummary:
    """Settle the (frontier, day) pairs that collection cycle ``cycle`` stored readings
    for (from ``collection_session``: read_from..read_to of sessions that read entries)."""
    if isinstance(conn_or_url, str):
        async with await psycopg.AsyncConnection.connect(conn_or_url) as conn:
            return await vee_after_collection(conn, cycle, config=config, now=now)
    pairs = await affected_days(conn_or_url, cycle)
    return await run_vee_pairs(conn_or_url, pairs, config=config, now=now)


async def affected_days(conn: psycopg.AsyncConnection, cycle: datetime) -> list[tuple[int, date]]:
    """(frontier id, local day) pairs touched by the sessions of ``cycle``."""
    cur = await conn.execute(
        """SELECT DISTINCT m.frontier_id, s.read_from, s.read_to
           FROM collection_session s JOIN meter m ON m.id = s.meter_id
           WHERE s.cycle = %s AND s.entries_read > 0 AND s.read_from IS NOT NULL
             AND s.read_to IS NOT NULL""",
        (cycle,),
    )
    out: set[tuple[int, date]] = set()
    for fid, a, b in await cur.fetchall():
        d, last = local_day(a), local_day(max(a, b - timedelta(microseconds=1)))
        while d <= last:
            out.add((fid, d))
            d += timedelta(days=1)
    return sorted(out)


async def _frontier_id(conn: psycopg.AsyncConnection, frontier: str | int) -> int:
    if isinstance(frontier, int):
        return frontier
    cur = await conn.execute("SELECT id FROM frontier WHERE code = %s", (frontier,))
    row = await cur.fetchone()
    if row is None:
        raise LookupError(f"unknown frontier {frontier}")
    return int(row[0])


async def _run_day(
    conn: psycopg.AsyncConnection,
    day: date,
    frontier_ids: list[int] | None,
    config: VeeConfig,
    now: datetime,
) -> VeeSummary:
    t_start = time.perf_counter()
    summary = VeeSummary(days=[day])
    timer = _Timer(summary.timings)
    series = await load_series(conn, config, frontier_ids)
    summary.series = len(series)
    summary.frontiers = len(set(series.frontier_id.tolist()))
    if not len(series):
        return summary
    w0, _ = window(day)
    due_cols = [w0 + (j + 1) * HOUR <= now for j in range(W)]
    hist_days = same_type_days(day, config.typical_weeks)
    timer.lap("load registry")

    # Frontier-days whose inputs are those of their last run have nothing to do (only
    # the prolonged-estimation check, for those whose day ends in an estimate).
    digests, own = await input_digests(conn, series, day, hist_days, config, sum(due_cols))
    recorded = await recorded_inputs(conn, sorted(digests), day)
    skip = {f for f, r in recorded.items() if r.digest == seal(digests[f], own[f])}
    summary.skipped = len(skip)
    skipped = np.isin(series.frontier_id, sorted(skip))
    alarm_only = series.take(
        skipped & np.isin(series.frontier_id, [f for f in skip if recorded[f].ends_estimated])
    )
    series = series.take(~skipped)
    timer.lap("inputs unchanged")
    S = len(series)
    if not S:
        summary.alarms, _ = await _prolonged_estimation(conn, alarm_only, day, now, config)
        await conn.commit()
        timer.lap("alarms")
        summary.seconds = time.perf_counter() - t_start
        metrics.VEE_RUN_SECONDS.set(summary.seconds)
        return summary
    fids = sorted({int(f) for f in series.frontier_id})
    meter_ids = sorted({int(m) for r in ROLES for m in series.meter[r] if m})

    whole_fleet = frontier_ids is None and not skip
    if S * W < _SPLIT_AFTER:
        mats = await load_readings(conn, series, day)
        timer.lap("load readings")
        history, hist_est = await _history(conn, series, hist_days, config, whole_fleet)
    else:
        # A large run reads the history on a second connection while the readings come:
        # the server works on one while this process decodes the other.
        async with await _connect_like(conn, WRITER_NAME) as side:
            hist = asyncio.create_task(_history(side, series, hist_days, config, whole_fleet))
            try:
                mats = await load_readings(conn, series, day)
            except BaseException:
                hist.cancel()
                await asyncio.gather(hist, return_exceptions=True)
                raise
            timer.lap("load readings")
            history, hist_est = await hist
    # Candidate days no series has anything for (the older ones when every series found
    # its max_days among the recent ones) change no curve: left out of the arrays.
    has_data = ~np.isnan(history).all(axis=(0, 2)) | hist_est.any(axis=0)
    n_days = int(np.flatnonzero(has_data)[-1]) + 1 if has_data.any() else 0
    history, hist_est, hist_days = history[:, :n_days], hist_est[:, :n_days], hist_days[:n_days]
    timer.lap("load history")
    snaps = await load_snapshots(conn, meter_ids, day, config.register_skew)
    clock_rows = await load_clock_corrections(conn, meter_ids, day)
    power = await load_power(conn, fids, day, config.scada_max_sample_gap) if config.scada else {}
    timer.lap("load snapshots, clock log, power")
    stored = await load_stored(conn, fids, day)
    timer.lap("load stored")
    inputs = _DayInputs(
        day, w0, config, series, mats, history, hist_est, hist_days, snaps, clock_rows, power,
        stored, np.array(due_cols),
    )  # fmt: skip

    # A large write refreshes the statistics on a side connection while the run records
    # what it settled; awaited (or cancelled on failure) before the run returns.
    async with _beside() as beside:
        if S * W < _SPLIT_AFTER:
            part = _settle(inputs, np.ones(S, dtype=bool))
            summary.merge(part.summary)
            estimated = part.estimated
            if part.changed or len(part.measured):
                r = await write_settled(
                    conn, part.changed, measured=part.measured, actor=config.actor,
                    reason=f"vee {day}",
                )  # fmt: skip
                summary.written = r.inserted + r.superseded
                summary.kept_manual += r.kept_manual
                _count_written(part)
        else:
            estimated = await _settle_in_parts(conn, inputs, summary, beside)
        timer.lap("settle and write")

        summary.alarms, ongoing = await _prolonged_estimation(conn, series, day, now, config)
        more, _ = await _prolonged_estimation(conn, alarm_only, day, now, config)
        summary.alarms += more
        # What was settled from what. The day's own settled version is recorded as this run
        # leaves it (a later change, e.g. a manual edit, is a reason to run again), except for
        # a frontier with an estimate: that depends on the day's own stored values (the day
        # before's window ends in this day's first hour), so its record has the version the
        # run read, and a run that changed them is followed by one more.
        after = await day_versions(conn, fids, day)
        await record_inputs(
            conn,
            day,
            {
                f: Recorded(
                    seal(digests[f], own[f] if f in estimated else after.get(f, 0)),
                    f in estimated,
                    f in ongoing,
                )
                for f in fids
            },
        )
        await conn.commit()
        timer.lap("alarms")
    timer.lap("statistics")
    summary.seconds = time.perf_counter() - t_start
    metrics.VEE_RUN_SECONDS.set(summary.seconds)
    for rule, n in summary.flagged.items():
        metrics.VEE_FLAGS.labels(rule).inc(n)
    return summary


@dataclass
class _DayInputs:
    """What a run has read for its day, every series' (the whole run's arrays)."""

    day: date
    w0: datetime
    config: VeeConfig
    series: Series
    mats: dict[str, MeterMatrix]
    history: np.ndarray
    hist_est: np.ndarray
    hist_days: list[date]
    snaps: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]
    clock_rows: list[tuple[int, datetime, datetime]]
    power: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]
    stored: Stored
    due_cols: np.ndarray  # (W,) hours that have ended by the run's "now"


@dataclass
class _Part:
    """Some series settled (:func:`_settle`): counts, the rows to write, and the frontiers
    with an hour to estimate."""

    summary: VeeSummary
    changed: list[SettledValue]
    measured: np.ndarray
    estimated: set[int]


def _settle(inp: _DayInputs, keep: np.ndarray) -> _Part:
    """Validate, choose, estimate and build the settled rows of the series where ``keep``
    is true (whole frontiers). Computation only, no I/O: a large run calls it in a thread,
    a part at a time, while the parts before are written."""
    config, w0, day = inp.config, inp.w0, inp.day
    summary = VeeSummary()
    timer = _Timer(summary.timings)
    series = inp.series.take(keep)
    mats = {role: m.take(keep) for role, m in inp.mats.items()}
    history, hist_est, hist_days = inp.history[keep], inp.hist_est[keep], inp.hist_days
    snaps, power = inp.snaps, inp.power
    S = len(series)
    due = inp.due_cols[None, :].repeat(S, 0)
    typical, hist_ok = typical_curves(
        history,
        ~hist_est,
        config.typical_statistic,
        config.typical_max_days,
        config.typical_decay,
        CORE,
    )
    has_typical = hist_ok.any(axis=1)
    typ_for_rules = np.where(has_typical[:, None], typical[:, CORE], np.nan)
    timer.lap("typical curves")

    # --- validation -----------------------------------------------------------------
    checks: dict[str, Checks] = {}
    for role in ROLES:
        m = mats[role]
        clock_logged = _clock_mask(series, role, inp.clock_rows, w0)
        checks[role] = check_meter(
            m.value,
            m.quality,
            due=due & (series.meter[role] != 0)[:, None],
            config=config,
            typical=typ_for_rules,
            capacity_kwh=series.capacity_kwh,
            duplicate=m.duplicate,
            off_grid=m.off_grid,
            clock_logged=clock_logged,
            raw=m.raw,
        )
        if config.on("register_mismatch") and snaps:
            _register_check(checks[role], series, role, m.raw, snaps, day, config)
    check_divergence(
        mats["principal"].value,
        mats["backup"].value,
        series.tolerance_pct,
        config,
        checks["principal"],
        checks["backup"],
    )
    timer.lap("validate")

    # --- choice -----------------------------------------------------------------------
    flag_rules = set(ALL_RULES) - config.reject
    usable, flagged = {}, {}
    for role in ROLES:
        m = mats[role]
        usable[role] = ~np.isnan(m.value) & ~checks[role].any_of(config.reject)
        flagged[role] = checks[role].any_of(flag_rules)
    chosen = np.where(
        usable["principal"],
        mats["principal"].value,
        np.where(usable["backup"], mats["backup"].value, np.nan),
    )
    src = np.where(usable["principal"], 1, np.where(usable["backup"], 2, 0))
    core = np.zeros((S, W), dtype=bool)
    core[:, CORE] = True
    need = core & due & np.isnan(chosen)
    fired = {r: np.zeros((S, W), bool) for r in ROLES}
    for role in ROLES:
        for rule, mask in checks[role].masks.items():
            fired[role] |= mask
            summary.flagged[rule] += int((mask & core & due).sum())
    timer.lap("choose")

    # --- estimation -------------------------------------------------------------------
    estimates: dict[int, dict[int, est.Estimate]] = {}
    day_kind = day_type(day)
    weighted = config.typical_statistic == "weighted"
    for s in np.flatnonzero(need.any(axis=1)):
        s = int(s)
        key = (int(series.frontier_id[s]), int(series.channel[s]))
        typ_w = typical[s] if has_typical[s] else np.full(W, np.nan)
        used = [d.isoformat() for d, ok in zip(hist_days, hist_ok[s], strict=True) if ok]
        samples = power.get(key)
        estimates[s] = est.fill(
            np.where(due[s], chosen[s], np.nan),
            need[s],
            config,
            scada=(lambda c, smp=samples: _scada(smp, w0, c, config)) if samples else None,
            typical=typ_w,
            typical_inputs={
                "day_type": day_kind,
                "statistic": config.typical_statistic,
                **({"decay": config.typical_decay} if weighted else {}),
                "days": used,
            },
            registers=lambda a, b, s=s: _register_advance(series, s, snaps, w0, a, b, config),
        )
    timer.lap("estimate")

    # --- settled rows, diffed against what is stored ------------------------------------
    stored = inp.stored
    changed: list[SettledValue] = []
    starts = [w0 + j * HOUR for j in range(W)]
    p, b = mats["principal"], mats["backup"]
    settle = core & due
    # Vectorised first: plain measured values (no check fired) equal to a plain stored
    # row are unchanged; manual rows are kept. Only the rest is built row by row.
    any_fired = fired["principal"] | fired["backup"]
    meter_of = np.where(
        src == 1, series.meter["principal"][:, None], series.meter["backup"][:, None]
    )
    fac = np.where(src == 1, series.factor["principal"][:, None], series.factor["backup"][:, None])
    raw = np.where(src == 1, p.raw, b.raw)
    ver = np.where(src == 1, p.version, b.version)
    qual = np.where(src == 1, p.quality, b.quality)
    sus = np.where(src == 1, flagged["principal"], flagged["backup"])
    flags_m = (qual & _CARRIED) | np.where(sus, int(Quality.SUSPECT), 0)
    st = _stored_matrix(stored.rows, series, w0)
    plain = settle & (src > 0) & ~any_fired
    same = (
        plain
        & (st["simple"] == 1)
        & (st["source"] == src)
        & (st["value"] == chosen)
        & (st["flags"] == flags_m)
        & (st["meter_id"] == meter_of)
        & (st["version"] == ver)
        & (st["secondary"] == raw)
        & (st["factor"] == fac)
    )
    manual = settle & (st["source"] == SOURCE_CODES["manual"])
    for code, name in ((1, "principal"), (2, "backup")):
        n_same = int((same & (src == code)).sum())
        if n_same:
            summary.by_source[name] += n_same
    summary.values += int(same.sum())
    todo = settle & ~same
    # Plain measured values that changed (or are new) go to storage as one array; only
    # estimates, flagged and manual-covered values are built one by one.
    bulk = todo & plain & ~manual
    for code, name in ((1, "principal"), (2, "backup")):
        n_bulk = int((bulk & (src == code)).sum())
        if n_bulk:
            summary.by_source[name] += n_bulk
    summary.values += int(bulk.sum())
    bs, bj = np.nonzero(bulk)
    measured = measured_array(
        frontier_id=series.frontier_id[bs],
        channel=series.channel[bs],
        interval_start=int(w0.timestamp()) * 1_000_000 + bj * 3_600_000_000,
        value=chosen[bs, bj],
        source=src[bs, bj],
        flags=flags_m[bs, bj],
        meter_id=meter_of[bs, bj],
        reading_version=ver[bs, bj],
        secondary=raw[bs, bj],
        factor=fac[bs, bj],
    )
    for s, j in zip(*np.nonzero(todo & ~bulk), strict=True):
        s, j = int(s), int(j)
        fid, ch = int(series.frontier_id[s]), int(series.channel[s])
        ests = estimates.get(s, {})
        checks_detail = {}
        if any_fired[s, j]:
            for role in ROLES:
                if fired[role][s, j]:
                    checks_detail[role] = checks[role].reasons(s, j)
        source = int(src[s, j])
        if source:
            role = ROLES[source - 1]
            flags = int(flags_m[s, j])
            detail: dict[str, Any] = {
                "meter_id": int(meter_of[s, j]),
                "reading_version": int(ver[s, j]),
                "secondary": float(raw[s, j]),
                "factor": float(fac[s, j]),
            }
            value, method = float(chosen[s, j]), None
            source_name = role
        elif j in ests:
            e = ests[j]
            value, method, source_name = e.value, e.method, "estimate"
            flags = int(Quality.ESTIMATED)
            detail = {"inputs": e.inputs}
        else:
            summary.unsettled += 1
            continue
        if checks_detail:
            detail["checks"] = checks_detail
        summary.values += 1
        summary.by_source[source_name] += 1
        if method:
            summary.by_method[method] += 1
        if manual[s, j]:
            summary.kept_manual += 1
            continue
        old = stored.full.get((fid, ch, starts[j]))
        if old is not None and old == (value, source_name, method, flags, detail):
            continue
        changed.append(SettledValue(fid, ch, starts[j], value, source_name, method, flags, detail))
    timer.lap("build rows")
    estimated = {int(f) for f in series.frontier_id[need.any(axis=1)]}
    return _Part(summary, changed, measured, estimated)


WRITER_NAME = "cgm vee write"  # extra connections of a large run (write, history read)
_SPLIT_AFTER = 100_000  # values; below it one connection (the run's own transaction)
_PARTS = 4  # a large run's series, by frontier: settled and written a part at a time
_WRITERS = 2  # parts written at once, each on a connection of its own


async def _connect_like(conn: psycopg.AsyncConnection, name: str) -> psycopg.AsyncConnection:
    """Another connection to the same database as ``conn``, its backend at this process's
    CPU priority (cgm.vee.priority: a lowered VEE process lowers its backends too)."""
    params = {o.keyword.decode(): o.val.decode() for o in conn.pgconn.info if o.val is not None}
    params["application_name"] = name
    other = await psycopg.AsyncConnection.connect(**params)
    priority.follow(other)
    return other


async def _settle_in_parts(
    conn: psycopg.AsyncConnection,
    inp: _DayInputs,
    summary: VeeSummary,
    beside: list[asyncio.Task[None]],
) -> set[int]:
    """A large run (a fleet's first settle: ~1 M values, the server's insert being most of
    the run): its series split by frontier into :data:`_PARTS` parts, each settled in a
    thread and written as soon as it is built, on a connection of its own (one transaction
    a part, at most :data:`_WRITERS` at once), so that the server writes one part while this
    process builds the next instead of both taking turns. A failure leaves each
    frontier-day settled whole or not at all; the run's input digests are recorded (in the
    run's transaction) only after every part has committed, so the next run settles
    whatever is missing and finds the rest unchanged. The day's statistics are then
    refreshed by a task added to ``beside``, on a connection of its own. Returns the
    frontiers with an hour to estimate."""
    fids = np.unique(inp.series.frontier_id)
    bounds = [int(fids[len(fids) * k // _PARTS]) for k in range(_PARTS)] + [int(fids[-1]) + 1]
    slots = asyncio.Semaphore(_WRITERS)
    estimated: set[int] = set()

    async def write(part: _Part) -> tuple[int, int, int]:
        async with slots, await _connect_like(conn, WRITER_NAME) as wconn:
            r = await write_settled(
                wconn, part.changed, measured=part.measured, actor=inp.config.actor,
                reason=f"vee {inp.day}", analyze=False,
            )  # fmt: skip
            await wconn.commit()
        _count_written(part)
        return r.inserted, r.superseded, r.kept_manual

    tasks: list[asyncio.Task[tuple[int, int, int]]] = []
    try:
        for lo, hi in sorted(set(zip(bounds, bounds[1:], strict=False))):
            keep = (inp.series.frontier_id >= lo) & (inp.series.frontier_id < hi)
            if not keep.any():
                continue
            # In a thread: the event loop meanwhile sends the parts before to the server.
            part = await asyncio.to_thread(_settle, inp, keep)
            summary.merge(part.summary)
            estimated |= part.estimated
            if part.changed or len(part.measured):
                tasks.append(asyncio.create_task(write(part)))
        done = await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    inserted, superseded, kept = (int(sum(x)) for x in zip(*done, strict=True)) if done else [0] * 3
    summary.written, summary.kept_manual = inserted + superseded, summary.kept_manual + kept
    if inserted >= ANALYZE_AFTER:  # once for the parts, after they have all committed
        beside.append(asyncio.create_task(_analyze_aside(conn, inp.day)))
    return estimated


def _count_written(part: _Part) -> None:
    """The values a part wrote, by source, in the metrics."""
    written = Counter(v.source for v in part.changed)
    for code, name in ((1, "principal"), (2, "backup")):
        written[name] += int((part.measured["source"] == code).sum())
    for source, n in written.items():
        if n:
            metrics.VEE_VALUES_WRITTEN.labels(source).inc(n)


async def _analyze_aside(conn: psycopg.AsyncConnection, day: date) -> None:
    """The statistics of the day's hours (:func:`analyze_settled`), on a connection of its
    own: 0.2–0.6 s of a fleet's first settle that need not wait for the run's last steps
    (they read settled_day and the run's records, not settled_reading). A failure here loses
    nothing (the values are committed; autovacuum analyzes later): a warning, not an error."""
    start, end = day_bounds(day)  # a run writes the hours of its day only
    try:
        async with await _connect_like(conn, WRITER_NAME) as side:
            await analyze_settled(side, start, end - HOUR)
            await side.commit()
    except psycopg.Error as e:
        log.warning("VEE %s: statistics of settled_reading not refreshed: %s", day, e)


@contextlib.asynccontextmanager
async def _beside() -> AsyncIterator[list[asyncio.Task[None]]]:
    """Tasks a run starts beside its own last steps: all awaited before the run returns (so
    what they do is done when it has returned), cancelled when the run fails."""
    tasks: list[asyncio.Task[None]] = []
    try:
        yield tasks
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    await asyncio.gather(*tasks)


async def _history(
    conn: psycopg.AsyncConnection,
    series: Series,
    days: list[date],
    config: VeeConfig,
    whole_fleet: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """History for the typical curves: the ``typical_max_days`` most recent candidate days
    first, and the older ones only for the series that lack usable days among those (a
    failure reaches further back), so a normal run reads max_days days, not four weeks.
    The arrays cover ``days`` from the first; only as many as were read (the caller keeps
    those up to the last one with data)."""
    first = days[: config.typical_max_days]
    history, estimated = await load_history(conn, series, first, whole_fleet=whole_fleet)
    rest = days[len(first) :]
    if not rest:
        return history, estimated
    usable = (~estimated & ~np.isnan(history[:, :, CORE]).any(axis=2)).sum(axis=1)
    short = np.flatnonzero(usable < config.typical_max_days)
    if not len(short):
        # Nobody reads further back: the older days would be all NaN (the caller keeps
        # the days up to the last one with data), so they are not built at all.
        return history, estimated
    more = np.full((len(series), len(rest), W), np.nan)
    more_est = np.zeros((len(series), len(rest)), dtype=bool)
    h2, e2 = await load_history(conn, series, rest, only=short)
    more[short], more_est[short] = h2[short], e2[short]
    return np.concatenate([history, more], axis=1), np.concatenate([estimated, more_est], axis=1)


def _stored_matrix(rows: np.ndarray, series: Series, w0: datetime) -> dict[str, np.ndarray]:
    """The packed stored rows laid out as (S, W) arrays (source 0: nothing stored)."""
    S = len(series)
    out = {n: np.zeros((S, W), dtype=rows.dtype[n]) for n in rows.dtype.names}
    out["value"][:] = np.nan
    if not len(rows):
        return out
    keys = rows["frontier_id"] * 8 + rows["channel"]
    uniq, inv = np.unique(keys, return_inverse=True)
    u_s = np.array([series.index.get((int(k) // 8, int(k) % 8), -1) for k in uniq])
    s_ = u_s[inv]
    col = (rows["t"] - int(w0.timestamp()) * 1_000_000) // 3_600_000_000
    ok = (s_ >= 0) & (col >= 0) & (col < W)
    for n in rows.dtype.names:
        out[n][s_[ok], col[ok]] = rows[n][ok]
    return out


def _clock_mask(
    series: Series, role: str, rows: list[tuple[int, datetime, datetime]], w0: datetime
) -> np.ndarray | None:
    """Intervals each large correction's span [from, at] touches."""
    if not rows:
        return None
    mask = np.zeros((len(series), W), dtype=bool)
    for meter_id, since, at in rows:
        first = max(0, int((since - w0) // HOUR))
        last = min(W - 1, int((at - w0) // HOUR))
        if first <= last:
            mask[series.meter[role] == meter_id, first : last + 1] = True
    return mask


def _register_check(
    checks: Checks,
    series: Series,
    role: str,
    raw: np.ndarray,
    snaps: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]],
    day: date,
    config: VeeConfig,
) -> None:
    """Interval sum over the day against the register advance between snapshots taken
    at (within ``register_skew`` of) the day's first and last instants."""
    start, end = day_bounds(day)
    skew = config.register_skew.total_seconds()
    mask = np.zeros(raw.shape, dtype=bool)
    why: dict[int, str] = {}
    for s in np.flatnonzero(series.meter[role]):
        mid, ch = int(series.meter[role][s]), int(series.channel[s])
        a = snapshot_near(snaps, mid, ch, start.timestamp(), skew)
        b = snapshot_near(snaps, mid, ch, end.timestamp(), skew)
        row = raw[s, CORE]
        if a is None or b is None or np.isnan(row).any():
            continue
        advance = b[1] - a[1]
        total = float(row.sum())
        edge = (abs(a[0] - start.timestamp()) + abs(b[0] - end.timestamp())) / 3600.0
        allowed = (
            config.register_tolerance_pct / 100.0 * abs(advance)
            + config.register_tolerance_kwh
            + edge * float(np.max(row))
        )
        if abs(total - advance) > allowed:
            mask[s, CORE] = True
            why[int(s)] = (
                f"day sum {total:.6g} vs register advance {advance:.6g} "
                f"(allowed ±{allowed:.3g}, secondary units)"
            )
    checks.add("register_mismatch", mask, lambda s, w: why[s])


def _register_advance(
    series: Series,
    s: int,
    snaps: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]],
    w0: datetime,
    a: int,
    b: int,
    config: VeeConfig,
) -> tuple[float, dict[str, Any]] | None:
    """Primary register advance over window columns [a, b), from the principal's
    snapshots, else the backup's."""
    skew = config.register_skew.total_seconds()
    t0, t1 = (w0 + a * HOUR).timestamp(), (w0 + b * HOUR).timestamp()
    for role in ROLES:
        mid = int(series.meter[role][s])
        if not mid:
            continue
        ch = int(series.channel[s])
        x = snapshot_near(snaps, mid, ch, t0, skew)
        y = snapshot_near(snaps, mid, ch, t1, skew)
        if x is None or y is None or y[1] < x[1]:
            continue
        factor = float(series.factor[role][s])
        return (y[1] - x[1]) * factor, {
            "register_meter_id": mid,
            "register_start": x[1],
            "register_end": y[1],
            "register_read_at": [
                datetime.fromtimestamp(x[0], UTC).isoformat(),
                datetime.fromtimestamp(y[0], UTC).isoformat(),
            ],
            "factor": factor,
        }
    return None


def _scada(
    samples: tuple[np.ndarray, np.ndarray], w0: datetime, col: int, config: VeeConfig
) -> est.Estimate | None:
    times, kw = samples
    t0 = (w0 + col * HOUR).timestamp()
    kwh = est.integrate_power(
        times, kw, t0, t0 + 3600.0, config.scada_max_sample_gap.total_seconds()
    )
    if kwh is None:
        return None
    inside = int(((times >= t0) & (times <= t0 + 3600.0)).sum())
    return est.Estimate(round(kwh, 9), est.SCADA, {"samples": inside, "unit": "kW"})


async def _prolonged_estimation(
    conn: psycopg.AsyncConnection,
    series: Series,
    day: date,
    now: datetime,
    config: VeeConfig,
) -> tuple[int, set[int]]:
    """Alarm (hoja de vida + metric) for each channel estimated without a break for longer
    than ``config.prolonged_estimation`` up to the end of the day. One alarm per streak:
    the streak's start identifies it, so re-runs do not repeat it. Returns the alarms
    raised and the frontiers with a streak going on."""
    if not len(series):
        return 0, set()
    _, end = day_bounds(day)
    end = min(end, now)
    streaks = await _estimate_streaks(conn, series, end)
    alarms = 0
    # A channel of these series that is measured again drops its gauge series (bounded by
    # the fleet). Only the series the gauge holds are looked at: asking it to remove every
    # series of a fleet cost ~0.5 s a run.
    ongoing = {(fid, ch) for fid, ch, _, _ in streaks}
    frontier_of = dict(zip(series.code, series.frontier_id.tolist(), strict=True))
    for family in metrics.VEE_ESTIMATED_HOURS.collect():
        for sample in family.samples:
            code, name = sample.labels["frontier"], sample.labels["channel"]
            key = (frontier_of.get(code), channel_id(name))
            if key in series.index and key not in ongoing:
                metrics.VEE_ESTIMATED_HOURS.remove(code, name)
    for fid, ch, last_measured, first in streaks:
        since = (last_measured + HOUR if last_measured is not None else first).astimezone(UTC)
        streak = _floor_hour(end) - since
        name = CHANNELS_BY_ID[ch].value
        code = series.code[series.index[(fid, ch)]]
        metrics.VEE_ESTIMATED_HOURS.labels(code, name).set(streak / HOUR)
        if streak <= config.prolonged_estimation:
            continue
        found = await conn.execute(
            """SELECT 1 FROM frontier_log WHERE frontier_id = %s AND kind = %s
                 AND purpose = 'prolonged estimation'
                 AND activities ->> 'channel' = %s AND activities ->> 'since' = %s""",
            (fid, ALARM, name, since.isoformat()),
        )
        if await found.fetchone():
            continue
        await conn.execute(
            """INSERT INTO frontier_log (frontier_id, actor, kind, purpose, activities)
               VALUES (%s, %s, %s, 'prolonged estimation', %s)""",
            (
                fid,
                config.actor,
                ALARM,
                Jsonb(
                    {
                        "channel": name,
                        "since": since.isoformat(),
                        "hours": streak / HOUR,
                        "limit_hours": config.prolonged_estimation / HOUR,
                        "article": "38",
                    }
                ),
            ),
        )
        alarms += 1
        metrics.VEE_PROLONGED_ALARMS.inc()
    return alarms, {int(fid) for fid, _, _, _ in streaks}


async def _estimate_streaks(
    conn: psycopg.AsyncConnection, series: Series, end: datetime
) -> list[tuple[int, int, datetime | None, datetime]]:
    """(frontier, channel, last non-estimated hour before ``end`` or None, first settled
    hour) of the series whose last hour before ``end`` is an estimate, from settled_day:
    one row per series and day instead of an index over every hourly value."""
    last = _floor_hour(end) - HOUR
    last_day, last_h = local_day(last), int((last - day_bounds(local_day(last))[0]) // HOUR)
    cur = await conn.execute(
        """SELECT frontier_id, channel FROM settled_day
           WHERE day = %s AND source[%s] = 3 AND frontier_id = ANY(%s)""",
        (last_day, last_h + 1, int8_array(np.unique(series.frontier_id))),
    )
    pairs = [(f, c) for f, c in await cur.fetchall() if (f, c) in series.index]
    if not pairs:
        return []
    # The latest two days up to end's day with a measured or manual hour: the latest may
    # have them only at or after `end`; the one before lies wholly before it.
    cur = await conn.execute(
        """SELECT x.f, x.c, m.day, m.source, first.day, first.source
           FROM unnest(%(f)s::bigint[], %(c)s::smallint[]) AS x(f, c)
           LEFT JOIN LATERAL (
             SELECT day, source FROM settled_day d
             WHERE d.frontier_id = x.f AND d.channel = x.c AND d.day <= %(d)s
               AND d.source && '{1,2,4}'::smallint[]
             ORDER BY day DESC LIMIT 2) m ON true
           CROSS JOIN LATERAL (
             SELECT day, source FROM settled_day d
             WHERE d.frontier_id = x.f AND d.channel = x.c ORDER BY day LIMIT 1) first""",
        {"f": int8_array(f for f, _ in pairs), "c": [c for _, c in pairs], "d": local_day(end)},
    )
    measured: dict[tuple[int, int], datetime] = {}
    first: dict[tuple[int, int], datetime] = {}
    for f, c, mday, msource, fday, fsource in await cur.fetchall():
        if mday is not None:
            start = day_bounds(mday)[0]
            for k in range(23, -1, -1):
                t = start + k * HOUR
                if msource[k] in (1, 2, 4) and t < end:
                    if t > measured.get((f, c), t - HOUR):
                        measured[(f, c)] = t
                    break
        k0 = next(k for k, x in enumerate(fsource) if x)
        first[(f, c)] = day_bounds(fday)[0] + k0 * HOUR
    return [(f, c, measured.get((f, c)), first[(f, c)]) for f, c in pairs]


def _floor_hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)
