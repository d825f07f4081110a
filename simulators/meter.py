"""A protocol-neutral software meter: clock, load shape, profile memory, registers, faults.

The DLMS, Modbus and MQTT simulators each serve :class:`SimulatedMeter` objects over their
own protocol, so every protocol shows the same physics and the same faults.

The load is a pure function of (seed, interval start): a principal and a backup meter built
with the same seed measure the same energy, and a backup with ``divergence_pct`` reads that
much more. Registers are the running sum of the rounded interval values, so the register
advance over any window equals the profile sum over it, as on a real meter.

``mean_kw`` is the meter's own (secondary-side) mean power: a meter behind CTs and VTs sees
the primary load divided by CT × VT ratios, and the CGM multiplies back when settling. The
daily and weekly shape is normalised so that the long-run mean is ``mean_kw``. On top of it
the load carries autocorrelated noise, an AR(1) process (hour-to-hour correlation 0.9, 5 %
standard deviation) computed as a truncated moving sum of per-interval innovations, so each
interval's value still depends only on (seed, interval) and never on what was asked before.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import numpy as np

from drivers.base import (
    ALL_CHANNELS,
    AccessLevel,
    Channel,
    MeterIdentity,
    ProfileConfig,
    ProfileEntry,
)

COLOMBIA_OFFSET = timedelta(hours=-5)  # official time, no daylight saving
RESOLUTION = 3  # decimals of kWh kept by the meter (1 Wh)
AR_PHI_HOURLY = 0.9  # correlation of the load noise from one hour to the next
AR_STD = 0.05  # standard deviation of the load noise (fraction of the load)
AR_TAIL = 1e-4  # innovations older than the weight φ^k < AR_TAIL are dropped
# Profile status bit for an interval in which the clock was set: bit 5 of the DLMS "AMR
# profile status" byte (Blue Book), written from the standard rather than taken from the
# drivers, so that a wrong bit in a driver does not pass unnoticed.
STATUS_CLOCK_ADJUSTED = 0x20
_ROW_CACHE = 256  # intervals remembered per meter (see SimulatedMeter._rows)
_ROW_AHEAD = 48  # intervals computed ahead of the last one asked for


class FaultAction(StrEnum):
    """What a protocol server does with the answer to one request."""

    ANSWER = "answer"
    SILENT = "silent"  # read the request, never answer (a meter that times out)
    DROP = "drop"  # close the connection instead of answering
    CORRUPT = "corrupt"  # answer with a damaged frame


@dataclass
class Faults:
    """Faults injected into one meter. Mutable so that tests can change them live."""

    latency: float = 0.0  # seconds added before every answer
    # Up to this many seconds more, uniformly at random per answer: a GPRS/4G link's round
    # trip varies (0.3-2 s is latency=0.3, jitter=1.7).
    jitter: float = 0.0
    no_answer: bool = False
    drop_after_requests: int | None = None  # drop the connection after N answered requests
    corrupt_next: int = 0  # damage the next N answers
    missing: list[tuple[datetime, datetime]] = field(default_factory=list)  # holes in memory
    register_reset_at: datetime | None = None  # meter replaced: registers restart at zero
    divergence_pct: float = 0.0  # every energy value scaled by (1 + pct/100)

    async def before_answer(self, answered_in_session: int) -> FaultAction:
        """Apply latency and decide the fate of the next answer (consumes ``corrupt_next``)."""
        delay = self.delay()
        if delay:
            await asyncio.sleep(delay)
        return self.decide(answered_in_session)

    def delay(self) -> float:
        """Seconds to wait before the next answer (latency plus this answer's jitter)."""
        if self.latency or self.jitter:
            return self.latency + self.jitter * random.random()
        return 0.0

    def decide(self, answered_in_session: int) -> FaultAction:
        """The fate of the next answer, without the latency (consumes ``corrupt_next``)."""
        if self.no_answer:
            return FaultAction.SILENT
        if self.drop_after_requests is not None and answered_in_session >= self.drop_after_requests:
            return FaultAction.DROP
        if self.corrupt_next > 0:
            self.corrupt_next -= 1
            return FaultAction.CORRUPT
        return FaultAction.ANSWER


@dataclass
class Secrets:
    """The meter's two art. 17 access levels."""

    level1: str = "reader-1"
    level2: str = "config-2"

    def level_for(self, secret: str) -> AccessLevel | None:
        """The level a presented secret grants, or None when it matches neither."""
        if secret == self.level2:
            return AccessLevel.CONFIGURE
        if secret == self.level1:
            return AccessLevel.READ
        return None


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit hash, so noise is a pure function of (seed, interval)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _uniform(seed: int, index: np.ndarray, stream: int) -> np.ndarray:
    key = index.astype(np.uint64) * np.uint64(4) + np.uint64(stream)
    mixed = _splitmix64(key ^ _splitmix64(np.array([seed], dtype=np.uint64)))
    return (mixed >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def ar1_noise(seed: int, index: np.ndarray, period_h: float) -> np.ndarray:
    """AR(1) noise x[t] = φ·x[t−1] + e[t] at interval numbers ``index``, as a pure function.

    Written as x[t] = Σ φ^k·e[t−k] over the last K innovations (φ^K < AR_TAIL), where e[t]
    is a zero-mean uniform innovation drawn from (seed, t): the same interval gives the same
    value whichever window it is computed in. Stationary standard deviation: AR_STD.
    """
    index = np.asarray(index, dtype=np.int64)
    if index.size == 0:
        return np.zeros(0)
    phi = AR_PHI_HOURLY**period_h
    k = int(np.ceil(np.log(AR_TAIL) / np.log(phi)))
    weights = phi ** np.arange(k)
    # e uniform on ±a has variance a²/3; x has variance var(e) / (1 − φ²).
    scale = AR_STD * np.sqrt(1 - phi**2) * np.sqrt(3.0) * 2.0
    lo, hi = int(index.min()) - k + 1, int(index.max())
    innovations = (_uniform(seed, np.arange(lo, hi + 1, dtype=np.int64), 3) - 0.5) * scale
    x = np.convolve(innovations, weights, mode="full")[k - 1 : k - 1 + hi - lo - k + 2]
    return x[index - (lo + k - 1)]


def _shape(hour: np.ndarray) -> np.ndarray:
    """Daily load shape at local hour ``hour``: a base, a late-morning and an evening peak."""
    return (
        0.55
        + 0.35 * np.exp(-(((hour - 11.0) / 3.0) ** 2))
        + 0.45 * np.exp(-(((hour - 19.5) / 2.0) ** 2))
    )


class SimulatedMeter:
    """One software meter. Time comes from ``now`` (UTC), injectable for tests."""

    def __init__(
        self,
        serial: str,
        *,
        seed: int = 0,
        mean_kw: float = 100.0,
        generator: bool = False,
        capture_period: timedelta = timedelta(hours=1),
        depth: int = 24 * 35,
        clock_offset: float = 0.0,
        drift_ppm: float = 0.0,
        secrets: Secrets | None = None,
        manufacturer: str = "CGM Simulated Meters",
        model: str = "SIM-4Q",
        firmware: str = "1.0.0",
        faults: Faults | None = None,
        initial_register: float | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        if capture_period <= timedelta(0) or timedelta(days=1) % capture_period:
            raise ValueError("capture period must divide a day")
        self.serial = serial
        self.seed = seed
        self.mean_kw = mean_kw
        self.generator = generator
        self.capture_period = capture_period
        self._norm = self._mean_shape(capture_period)
        self.depth = depth
        self.drift_ppm = drift_ppm
        self.secrets = secrets or Secrets()
        self.identity = MeterIdentity(serial, manufacturer, model, firmware)
        self.faults = faults or Faults()
        self._now = now or (lambda: datetime.now(UTC))
        self._clock_ref = self._now()
        self._clock_offset = clock_offset
        self.clock_adjustments: list[tuple[datetime, float]] = []  # (real time, seconds moved)
        self._rows_key: tuple[object, ...] | None = None
        self._row_cache: dict[int, dict[Channel, float]] = {}
        # (what the values depend on, current interval, closed sums, current interval's value)
        self._register_cache: (
            tuple[tuple[object, ...], int, dict[Channel, float], dict[Channel, float]] | None
        ) = None
        rng = np.random.default_rng(seed)
        self.initial_register = (
            float(round(rng.uniform(1e4, 1e6), RESOLUTION))
            if initial_register is None
            else initial_register
        )
        # Registers count from here; long enough before memory starts to look installed.
        self.installed_at = self._floor(self._now() - capture_period * depth - timedelta(days=30))

    # --- clock ---------------------------------------------------------------------------

    def real_now(self) -> datetime:
        return self._now()

    def clock(self) -> datetime:
        """The meter's own time: real time plus offset plus accumulated drift."""
        real = self._now()
        drift = (real - self._clock_ref).total_seconds() * self.drift_ppm * 1e-6
        return real + timedelta(seconds=self._clock_offset + drift)

    @property
    def clock_offset(self) -> float:
        return (self.clock() - self._now()).total_seconds()

    def set_clock(self, when: datetime) -> None:
        """Set the meter time (a level-2 operation; the protocol server checks the level)."""
        if when.tzinfo is None:
            raise ValueError("meter time must be aware")
        real = self._now()
        moved = (when - self.clock()).total_seconds()
        self._clock_ref = real
        self._clock_offset = (when - real).total_seconds()
        self.clock_adjustments.append((real, moved))

    # --- load ----------------------------------------------------------------------------

    def _floor(self, t: datetime) -> datetime:
        step = int(self.capture_period.total_seconds())
        ts = int(t.timestamp())
        return datetime.fromtimestamp(ts - ts % step, UTC)

    def interval_values(self, starts: np.ndarray) -> dict[Channel, np.ndarray]:
        """Energy (kWh/kvarh, rounded to the meter resolution) for intervals starting at
        ``starts`` (POSIX seconds, UTC), before any register reset or divergence."""
        starts = np.asarray(starts, dtype=np.int64)
        hours = self.capture_period.total_seconds() / 3600.0
        local = starts + int(COLOMBIA_OFFSET.total_seconds())
        hour = (local % 86400) / 3600.0 + hours / 2  # mid-interval local hour
        weekday = ((local // 86400) + 3) % 7  # 1970-01-01 was a Thursday (3)
        weekly = np.where(weekday == 6, 0.7, np.where(weekday == 5, 0.85, 1.0))
        index = starts // int(self.capture_period.total_seconds())
        noise = np.clip(1.0 + ar1_noise(self.seed, index, hours), 0.5, None)
        shape = _shape(hour) / self._norm
        load = self.mean_kw * shape * weekly * noise * hours
        scale = 1.0 + self.faults.divergence_pct / 100.0
        if self.generator:
            sun = np.clip(np.sin((hour - 6.0) / 12.0 * np.pi), 0.0, None)
            # sin⁺ of the day averages 1/π: π × mean_kw makes the long-run export mean_kw.
            cloud = 0.8 + 0.4 * _uniform(self.seed, index, 1)
            export = self.mean_kw * np.pi * sun * cloud * hours
            aux = 0.03 * load
            active_import, active_export = np.where(sun > 0, 0.0, aux), export
        else:
            active_import, active_export = load, np.zeros_like(load)
        pf = 0.25 + 0.1 * _uniform(self.seed, index, 2)
        values = {
            Channel.ACTIVE_IMPORT: active_import,
            Channel.ACTIVE_EXPORT: active_export,
            Channel.REACTIVE_IMPORT: (active_import + active_export) * pf,
            Channel.REACTIVE_EXPORT: (active_import + active_export) * 0.02,
        }
        return {ch: np.round(v * scale, RESOLUTION) for ch, v in values.items()}

    @property
    def peak_kw(self) -> float:
        """The highest mean power of any interval this meter can show (for sizing CTs)."""
        if self.generator:
            return self.mean_kw * np.pi * 1.2
        hours = np.arange(0, 24, 0.25)
        return self.mean_kw * float(_shape(hours).max()) / self._norm * (1 + 5 * AR_STD)

    @staticmethod
    def _mean_shape(capture_period: timedelta) -> float:
        """Mean of the daily × weekly shape over a week of intervals (its long-run mean)."""
        hours = capture_period.total_seconds() / 3600.0
        starts = np.arange(0, 7 * 86400, int(capture_period.total_seconds()))
        hour = (starts % 86400) / 3600.0 + hours / 2
        weekday = starts // 86400
        weekly = np.where(weekday == 6, 0.7, np.where(weekday == 5, 0.85, 1.0))
        return float(np.mean(_shape(hour) * weekly))

    # --- memory --------------------------------------------------------------------------

    def _first_recorded(self) -> datetime:
        reset = self.faults.register_reset_at
        return self.installed_at if reset is None else max(self.installed_at, self._floor(reset))

    def profile_config(self) -> ProfileConfig:
        return ProfileConfig(self.capture_period, self.depth, ALL_CHANNELS)

    def _in_memory(self) -> tuple[datetime, datetime]:
        """[oldest start, newest end) of the intervals the meter still holds."""
        newest_end = self._floor(self._now())
        oldest = max(newest_end - self.capture_period * self.depth, self._first_recorded())
        return oldest, newest_end

    def profile(self, start: datetime, end: datetime) -> list[ProfileEntry]:
        """Entries whose interval starts in [start, end) and that the meter still holds."""
        oldest, newest_end = self._in_memory()
        lo, hi = max(start, oldest), min(end, newest_end)
        if lo >= hi:
            return []
        step = int(self.capture_period.total_seconds())
        first = int(self._floor(lo).timestamp())
        if first < int(lo.timestamp()):
            first += step
        starts = range(first, int(hi.timestamp()), step)
        rows = self._rows(starts)
        adjusted = {int(self._floor(t).timestamp()) for t, moved in self.clock_adjustments if moved}
        out: list[ProfileEntry] = []
        for ts, row in zip(starts, rows, strict=True):
            t = datetime.fromtimestamp(ts, UTC)
            if any(a <= t < b for a, b in self.faults.missing):
                continue
            status = STATUS_CLOCK_ADJUSTED if ts in adjusted else 0
            out.append(ProfileEntry(t, self.capture_period, dict(row), status))
        return out

    def _rows(self, starts: range) -> list[dict[Channel, float]]:
        """Each interval's values, as :meth:`interval_values` gives them.

        Short windows (the steady state's last hour or two) are remembered per interval, so
        a meter read every hour computes each interval once instead of once per read: the
        numpy set-up of a one-interval call was most of a simulated session's CPU. The memory
        is dropped when anything the values depend on changes (divergence, load, seed).
        """
        if len(starts) > _ROW_CACHE // 4:
            values = self.interval_values(np.asarray(starts, dtype=np.int64))
            columns = {ch: v.tolist() for ch, v in values.items()}
            return [{ch: c[i] for ch, c in columns.items()} for i in range(len(starts))]
        key = (self.faults.divergence_pct, self.mean_kw, self.generator, self.seed, starts.step)
        if key != self._rows_key or len(self._row_cache) > _ROW_CACHE:
            self._rows_key, self._row_cache = key, {}
        cache = self._row_cache
        missing = [t for t in starts if t not in cache]
        if missing:
            # The next _ROW_AHEAD intervals too: an hourly read then finds its new interval
            # computed (values are a pure function of the interval), and the numpy set-up
            # is paid once per day instead of once per read.
            step = starts.step
            ahead = np.arange(missing[0], missing[-1] + step * (_ROW_AHEAD + 1), step)
            values = self.interval_values(ahead)
            columns = {ch: v.tolist() for ch, v in values.items()}
            for i, t in enumerate(ahead.tolist()):
                cache[t] = {ch: c[i] for ch, c in columns.items()}
        return [cache[t] for t in starts]

    def register_values(self, ends: list[datetime]) -> dict[Channel, list[float]]:
        """The cumulative registers at interval boundaries ``ends`` (what a meter captures
        in a cumulative-register profile): the same running sum as :meth:`registers`."""
        if not ends:
            return {}
        step = int(self.capture_period.total_seconds())
        installed = int(self.installed_at.timestamp())
        last = max(int(max(ends).timestamp()), installed)
        values = self.interval_values(np.arange(installed, last, step, dtype=np.int64))
        reset = self.faults.register_reset_at
        reset_n = (
            None
            if reset is None
            else max(0, (int(self._floor(reset).timestamp()) - installed) // step)
        )
        out: dict[Channel, list[float]] = {}
        for ch, v in values.items():
            running = np.concatenate(([0.0], np.cumsum(v)))
            column = []
            for end in ends:
                n = min(max(0, (int(end.timestamp()) - installed) // step), len(running) - 1)
                if reset is not None and reset_n is not None and reset <= end:
                    total = float(running[n] - running[min(reset_n, n)])  # counts from zero
                else:
                    total = self.initial_register + float(running[n])
                column.append(round(total, RESOLUTION))
            out[ch] = column
        return out

    def registers(self) -> dict[Channel, float]:
        """Cumulative registers now: every whole interval since installation (or the last
        reset), plus the elapsed share of the current one."""
        now = self._now()
        reset = self.faults.register_reset_at
        base = 0.0 if reset is not None and reset <= now else self.initial_register
        first = self._first_recorded()
        current = self._floor(now)
        step = int(self.capture_period.total_seconds())
        # The closed intervals only change when an interval closes: summed once (the sum
        # spans months of intervals), then advanced by the intervals closed since, as a
        # meter's register advances; re-summed when anything the values depend on changes.
        key = (
            int(first.timestamp()),
            step,
            self.faults.divergence_pct,
            self.mean_kw,
            self.generator,
            self.seed,
        )
        now_at = int(current.timestamp())
        cache = self._register_cache
        if cache is not None and cache[0] == key and cache[1] == now_at:
            _, _, closed, running = cache
        elif cache is not None and cache[0] == key and 0 < now_at - cache[1] <= step * 32:
            rows = self._rows(range(cache[1], now_at + step, step))
            closed = dict(cache[2])
            for row in rows[:-1]:
                for ch in closed:
                    closed[ch] += row[ch]
            running = rows[-1]
            self._register_cache = (key, now_at, closed, running)
        else:
            starts = np.arange(int(first.timestamp()), now_at + step, step)
            values = self.interval_values(starts)
            closed = {ch: float(v[:-1].sum()) for ch, v in values.items()}
            running = {ch: float(v[-1]) for ch, v in values.items()}
            self._register_cache = (key, now_at, closed, running)
        share = (now - current).total_seconds() / step
        return {ch: round(base + closed[ch] + running[ch] * share, RESOLUTION) for ch in closed}

    def registers_at(
        self,
        ends: list[datetime],
        weights: Callable[[np.ndarray], np.ndarray] | None = None,
        share: float = 1.0,
    ) -> dict[Channel, list[float]]:
        """Cumulative registers at the interval boundaries ``ends``, as :meth:`registers`
        would have read them then (what a profile of cumulative registers captures).

        A tariff register counts only some intervals (``weights(starts)`` gives 0 or 1 each)
        from ``share`` of the initial reading. The register keeps counting through holes in
        the profile memory, as a meter's does.
        """
        if not ends:
            return {ch: [] for ch in ALL_CHANNELS}
        reset = self.faults.register_reset_at
        step = int(self.capture_period.total_seconds())
        first = int(self._first_recorded().timestamp())
        last = max(int(t.timestamp()) for t in ends)
        starts = np.arange(first, max(first, last), step, dtype=np.int64)
        values = self.interval_values(starts)
        mask = weights(starts) if weights is not None else np.ones(len(starts))
        sums = {ch: np.concatenate([[0.0], np.cumsum(v * mask)]) for ch, v in values.items()}
        out: dict[Channel, list[float]] = {ch: [] for ch in values}
        for t in ends:
            index = min(max(0, (int(t.timestamp()) - first) // step), len(starts))
            start = round(self.initial_register * share, RESOLUTION)  # whole Wh per register
            base = 0.0 if reset is not None and reset <= t else start
            for ch in values:
                out[ch].append(round(base + float(sums[ch][index]), RESOLUTION))
        return out
