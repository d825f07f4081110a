"""Validation and critique rules (art. 18), vectorised over many series at once.

A *series* is one meter's channel over a window of ``W`` hourly columns: the 24 periods of
the local day being settled plus one hour either side (the neighbours interpolation needs).
Values are primary energy, NaN where there is no reading. Each rule yields a boolean mask
and, where it fired, a reason that names the numbers it compared — so a flag on a settled
value can always be explained without re-running anything.

Day rules (completeness, spikes, runs, register sum) look only at the 24 core columns; the
point rules (negative, meter status, capacity, clock) also screen the two neighbours, so an
interpolation never starts from a bad value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

# At import, not in the first call: the registry package's import (its models, ~0.4 s) is
# paid when the VEE worker starts, not by its first run.
from cgm.registry.rules import class_rank
from cgm.storage import Quality
from cgm.vee.config import VeeConfig

CORE = slice(1, 25)
"""Columns of the local day's periods 1..24 inside a 26-column window."""

INVALID_STATUS = int(
    Quality.METER_CRITICAL_ERROR | Quality.METER_CLOCK_INVALID | Quality.METER_DATA_NOT_VALID
)


@dataclass
class Checks:
    """What the rules found for a batch of series: one (S, W) mask per rule that fired
    anywhere, and a reason formatter per rule."""

    shape: tuple[int, int]
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    _why: dict[str, Callable[[int, int], str]] = field(default_factory=dict)

    def add(self, rule: str, mask: np.ndarray, why: Callable[[int, int], str]) -> None:
        if mask.any():
            self.masks[rule] = mask if rule not in self.masks else self.masks[rule] | mask
            self._why[rule] = why

    def any_of(self, rules: frozenset[str] | set[str]) -> np.ndarray:
        out = np.zeros(self.shape, dtype=bool)
        for rule, mask in self.masks.items():
            if rule in rules:
                out |= mask
        return out

    def reasons(self, s: int, w: int) -> dict[str, str]:
        """{rule: reason} for series ``s``, column ``w``; empty when nothing fired."""
        return {r: self._why[r](s, w) for r, m in self.masks.items() if m[s, w]}


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def run_lengths(cond: np.ndarray) -> np.ndarray:
    """Length of the run of consecutive True values each True cell belongs to (0 elsewhere),
    along axis 1. ``cond[:, j]`` joins column j to j-1 when ``link[:, j]`` — here a run is
    any stretch of True cells."""
    s, w = cond.shape
    fwd = np.zeros((s, w), dtype=np.int32)
    fwd[:, 0] = cond[:, 0]
    for j in range(1, w):
        fwd[:, j] = np.where(cond[:, j], fwd[:, j - 1] + 1, 0)
    total = fwd.copy()
    for j in range(w - 2, -1, -1):
        total[:, j] = np.where(cond[:, j] & cond[:, j + 1], total[:, j + 1], fwd[:, j])
    return total


def equal_runs(values: np.ndarray) -> np.ndarray:
    """Length of the run of identical consecutive values each cell belongs to (1 for a value
    unlike both neighbours; 0 for NaN)."""
    same = np.zeros(values.shape, dtype=bool)
    same[:, 1:] = values[:, 1:] == values[:, :-1]
    s, w = values.shape
    fwd = np.where(np.isnan(values), 0, 1).astype(np.int32)
    for j in range(1, w):
        fwd[:, j] = np.where(same[:, j], fwd[:, j - 1] + 1, fwd[:, j])
    total = fwd.copy()
    for j in range(w - 2, -1, -1):
        total[:, j] = np.where(same[:, j + 1], total[:, j + 1], fwd[:, j])
    return total


def check_meter(
    values: np.ndarray,
    quality: np.ndarray,
    *,
    due: np.ndarray,
    config: VeeConfig,
    typical: np.ndarray | None = None,
    capacity_kwh: np.ndarray | None = None,
    duplicate: np.ndarray | None = None,
    off_grid: np.ndarray | None = None,
    clock_logged: np.ndarray | None = None,
    raw: np.ndarray | None = None,
) -> Checks:
    """Run the per-meter rules on (S, W) ``values`` (primary, NaN = no reading).

    ``due``: (S, W) columns that have ended (a future hour is not missing).
    ``typical``: (S, 24) typical curve of the day type, NaN where there is no history.
    ``capacity_kwh``: (S,) energy one hour at installed capacity allows, NaN if unknown.
    ``duplicate``/``off_grid``/``clock_logged``: (S, W) findings from loading.
    ``raw``: (S, W) secondary values (the frozen rule ignores repeats at the resolution).
    """
    v = values
    shape = v.shape
    checks = Checks(shape)
    present = ~np.isnan(v)
    core = np.zeros(shape, dtype=bool)
    core[:, CORE] = True
    on = config.on

    with np.errstate(invalid="ignore"):
        if on("missing"):
            checks.add("missing", ~present & due & core, lambda s, w: "no reading for the period")
        if on("duplicate") and duplicate is not None:
            checks.add(
                "duplicate",
                duplicate,
                lambda s, w: "more than one reading for the interval; none is trusted",
            )
        if on("off_grid") and off_grid is not None:
            checks.add(
                "off_grid", off_grid, lambda s, w: "a reading stamped off the hour in the period"
            )
        if on("negative"):
            checks.add(
                "negative", present & (v < 0), lambda s, w: f"negative value {_fmt(v[s, w])}"
            )
        if on("meter_status"):
            bad = (quality & INVALID_STATUS) != 0
            checks.add(
                "meter_status",
                present & bad,
                lambda s, w: f"meter status {Quality(int(quality[s, w]) & INVALID_STATUS)!r}",
            )
        if on("capacity") and capacity_kwh is not None:
            limit = capacity_kwh * config.capacity_margin
            checks.add(
                "capacity",
                present & (v > limit[:, None]),
                lambda s, w: (
                    f"{_fmt(v[s, w])} above {_fmt(limit[s])} "
                    f"(installed capacity × {config.capacity_margin} × 1 h)"
                ),
            )
        if on("clock_correction"):
            clk = (quality & int(Quality.LARGE_CLOCK_CORRECTION)) != 0
            if clock_logged is not None:
                clk = clk | clock_logged
            checks.add(
                "clock_correction",
                present & clk,
                lambda s, w: "interval touched by a large clock correction (art. 16)",
            )
        if on("partial"):
            # An incomplete hour understates the energy: rejected by default, so the backup
            # or an estimate stands in for it.
            checks.add(
                "partial",
                present & ((quality & int(Quality.PARTIAL)) != 0),
                lambda s, w: "incomplete hour: the sub-hourly entries did not cover the interval",
            )
        if on("register_rollover"):
            # The advance is computed across the wrap: right if one wrap, so kept, but
            # marked for review.
            checks.add(
                "register_rollover",
                present & ((quality & int(Quality.REGISTER_ROLLOVER)) != 0),
                lambda s, w: "a cumulative register wrapped past its maximum in the interval",
            )

        c = v[:, CORE]
        if on("spike_day"):
            positive = np.where(c > 0, c, np.nan)
            all_nan = np.isnan(positive).all(axis=1)
            positive[all_nan, 0] = 0.0  # keep nanmedian quiet; such rows cannot spike
            med = np.nanmedian(positive, axis=1)
            hit = (c > config.spike_day_factor * med[:, None]) & (
                c - med[:, None] > config.spike_min_kwh
            )
            checks.add(
                "spike_day",
                _widen(hit, shape),
                lambda s, w: (
                    f"{_fmt(v[s, w])} > {config.spike_day_factor} × day median {_fmt(med[s])}"
                ),
            )
        if typical is not None:
            if on("spike_history"):
                hit = (c > config.spike_history_factor * typical) & (
                    c - typical > config.spike_min_kwh
                )
                checks.add(
                    "spike_history",
                    _widen(hit, shape),
                    lambda s, w: (
                        f"{_fmt(v[s, w])} > {config.spike_history_factor} × typical "
                        f"{_fmt(typical[s, w - 1])} for the day type"
                    ),
                )
            if on("zero_run"):
                zeros = run_lengths(c == 0)
                hit = (zeros >= config.zero_run_hours) & (typical > 0)
                checks.add(
                    "zero_run",
                    _widen(hit, shape),
                    lambda s, w: (
                        f"zero in a run of {zeros[s, w - 1]} h where the typical "
                        f"curve is {_fmt(typical[s, w - 1])}"
                    ),
                )
        if on("frozen"):
            runs = equal_runs(c)
            hit = (runs >= config.frozen_run_hours) & (c != 0)
            if raw is not None:
                hit &= np.abs(raw[:, CORE]) >= config.frozen_min_secondary
            checks.add(
                "frozen",
                _widen(hit, shape),
                lambda s, w: f"value {_fmt(v[s, w])} repeated for {runs[s, w - 1]} h",
            )
    return checks


def _widen(core_mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    out[:, CORE] = core_mask
    return out


@lru_cache(maxsize=1024)  # a fleet has a handful of class combinations, met 40,000 times
def meter_error_pct(
    meter_class: str | None, ct: str | None, vt: str | None, default: float
) -> float:
    """Worst-case error bound of one measuring chain (%): meter + CT + VT classes.

    An unregistered meter class counts as ``default``; an unregistered transformer class
    as 0 (a direct-connected meter has none).
    """
    total = class_rank(meter_class) if meter_class else default
    for t in (ct, vt):
        if t:
            total += class_rank(t)
    return total


def check_divergence(
    principal: np.ndarray,
    backup: np.ndarray,
    tolerance_pct: np.ndarray,
    config: VeeConfig,
    checks_p: Checks,
    checks_b: Checks,
) -> None:
    """Flag both meters where their hourly values differ by more than the tolerance
    (``tolerance_pct``: (S,) from the meters' accuracy classes)."""
    if not config.on("backup_divergence"):
        return
    with np.errstate(invalid="ignore"):
        diff = np.abs(principal - backup)
        ref = np.fmax(np.abs(principal), np.abs(backup))
        allowed = tolerance_pct[:, None] / 100.0 * ref + config.divergence_floor_kwh
        hit = diff > allowed
    hit[:, [0, -1]] = False

    def why(s: int, w: int) -> str:
        p, b = principal[s, w], backup[s, w]
        pct = 100.0 * abs(p - b) / max(abs(p), abs(b))
        return (
            f"principal {_fmt(p)} vs backup {_fmt(b)}: {pct:.3g} % > "
            f"{tolerance_pct[s]:.3g} % (accuracy classes)"
        )

    checks_p.add("backup_divergence", hit, why)
    checks_b.add("backup_divergence", hit, why)
