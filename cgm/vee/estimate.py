"""Estimation methods (art. 38), for one series whose chosen values have holes.

In order: integration of active power from another source (SCADA) over the hour; linear
interpolation across short gaps; the typical curve of the day type, scaled to the register
advance when snapshots bracket the gap. Every estimate carries its method and inputs, so
the settled value says how it was made (art. 38: the method used is reported).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cgm.vee.config import VeeConfig

SCADA = "scada_integration"
INTERPOLATION = "linear_interpolation"
TYPICAL = "typical_curve"
TYPICAL_REGISTERS = "typical_curve_registers"


@dataclass
class Estimate:
    value: float
    method: str
    inputs: dict[str, Any] = field(default_factory=dict)


def integrate_power(
    times_s: np.ndarray, kw: np.ndarray, t0: float, t1: float, max_gap_s: float
) -> float | None:
    """kWh over [t0, t1] from instantaneous kW samples (trapezoids), or None when the
    samples do not cover the hour with no gap longer than ``max_gap_s``."""
    if len(times_s) < 2:
        return None
    before = np.flatnonzero(times_s <= t0)
    after = np.flatnonzero(times_s >= t1)
    if not len(before) or not len(after):
        return None
    i0, i1 = before[-1], after[0]
    t, p = times_s[i0 : i1 + 1], kw[i0 : i1 + 1]
    if np.max(np.diff(t)) > max_gap_s:
        return None
    edges = np.interp([t0, t1], t, p)
    inner = (t > t0) & (t < t1)
    tt = np.concatenate([[t0], t[inner], [t1]])
    pp = np.concatenate([[edges[0]], p[inner], [edges[1]]])
    return float(np.sum((pp[1:] + pp[:-1]) / 2 * np.diff(tt)) / 3600.0)


def gaps(unknown: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) column runs where ``unknown`` is True."""
    out = []
    w = len(unknown)
    j = 0
    while j < w:
        if unknown[j]:
            k = j
            while k < w and unknown[k]:
                k += 1
            out.append((j, k))
            j = k
        else:
            j += 1
    return out


def interpolate(left: float, right: float, n: int) -> np.ndarray:
    """``n`` values on the straight line between the known neighbours ``left`` and ``right``
    (hourly energies), exact on a linear ramp."""
    steps = np.arange(1, n + 1) / (n + 1)
    return left + (right - left) * steps


def fill(
    known: np.ndarray,
    need: np.ndarray,
    config: VeeConfig,
    *,
    scada: Callable[[int], Estimate | None] | None = None,
    typical: np.ndarray | None = None,
    typical_inputs: dict[str, Any] | None = None,
    registers: Callable[[int, int], tuple[float, dict[str, Any]] | None] | None = None,
) -> dict[int, Estimate]:
    """Estimates for the columns of ``need`` (a bool mask over the window).

    ``known``: window values, NaN where unknown (including ``need`` columns).
    ``scada(col)``: an estimate from power samples, or None.
    ``typical``: typical value per window column (NaN where none).
    ``registers(start, end)``: (primary advance over the columns, inputs) or None.
    Columns that no method can fill are absent from the result.
    """
    out: dict[int, Estimate] = {}
    values = known.copy()
    if config.scada and scada is not None:
        for col in np.flatnonzero(need):
            est = scada(int(col))
            if est is not None:
                out[int(col)] = est
                values[col] = est.value
    unknown = np.isnan(values)
    w = len(values)
    for a, b in gaps(unknown):
        cols = [c for c in range(a, b) if need[c]]
        if not cols:
            continue
        bounded = a > 0 and b < w
        n = b - a
        if bounded and n <= config.interpolate_max_hours:
            _interp(out, values, a, b, n, "short gap")
            continue
        # The typical curve covers the columns that need a value (the day's periods);
        # an unknown neighbour hour of another day only lengthens the gap.
        ta, tb = cols[0], cols[-1] + 1
        typ = typical[ta:tb] if typical is not None else None
        if typ is not None and not np.isnan(typ).any():
            method, inputs, est = TYPICAL, dict(typical_inputs or {}), typ
            if config.typical_scale_to_registers and registers is not None:
                found = registers(ta, tb)
                total = float(typ.sum())
                if found is not None and total > 0:
                    advance, reg_inputs = found
                    scale = advance / total
                    est = typ * scale
                    method = TYPICAL_REGISTERS
                    inputs |= reg_inputs | {"scale": round(scale, 9)}
            for k, c in enumerate(range(ta, tb)):
                if need[c]:
                    out[c] = Estimate(
                        float(est[k]),
                        method,
                        inputs | {"typical": round(float(typ[k]), 9), "gap_hours": n},
                    )
        elif bounded and config.fallback_interpolation:
            _interp(out, values, a, b, n, "no typical curve: fallback")
    return {c: e for c, e in out.items() if need[c]}


def _interp(out: dict[int, Estimate], values: np.ndarray, a: int, b: int, n: int, why: str) -> None:
    left, right = float(values[a - 1]), float(values[b])
    line = interpolate(left, right, n)
    for k, c in enumerate(range(a, b)):
        out[c] = Estimate(
            float(line[k]),
            INTERPOLATION,
            {"left": left, "right": right, "gap_hours": n, "why": why},
        )
