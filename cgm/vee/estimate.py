"""Estimation methods (art. 38), for one series whose chosen values have holes.

In the Código's order: integration of active power from another source (SCADA) over the
hour; then the typical curve of the day type. The typical curve gives the *shape*; its
*level* is anchored on the measured hours either side of the gap (the ratio of measured to
typical at the nearest known hour on each side, interpolated across the gap; from one side
only it relaxes back to the curve by ``anchor_decay`` per hour), because on real load a
day's level moves with the weather while its shape repeats. When register snapshots
bracket the gap, the estimate, whatever its shape, is scaled so that it sums to the
register advance — for a gap of one hour that is the advance itself.

Linear interpolation is the fallback for a bounded gap without history, and first only for
gaps up to ``interpolate_max_hours`` (default 0: on real load the anchored curve beats it
even at one hour — benchmarks/README.md). Every estimate carries its method and inputs, so
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
TYPICAL_ANCHORED = "typical_curve_anchored"
TYPICAL_REGISTERS = "typical_curve_registers"
INTERPOLATION_REGISTERS = "linear_interpolation_registers"


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


def anchored(
    values: np.ndarray, typical: np.ndarray, a: int, b: int, decay: float
) -> tuple[np.ndarray, dict[str, Any]]:
    """The typical curve over columns [a, b) with its level anchored on the nearest known
    column either side: the measured/typical ratio there, linearly interpolated across
    the gap, or from one side only relaxing towards 1 by ``decay`` per hour."""
    n = b - a
    i = np.arange(1, n + 1, dtype=float)
    ratio = {}
    for side, col in (("left", a - 1), ("right", b)):
        if 0 <= col < len(values) and not np.isnan(values[col]):
            t = typical[col]
            if t > 0 and not np.isnan(t):
                ratio[side] = float(values[col] / t)
    left, right = ratio.get("left"), ratio.get("right")
    if left is not None and right is not None:
        q = left + (right - left) * i / (n + 1)
    elif left is not None:
        q = 1.0 + (left - 1.0) * decay**i
    elif right is not None:
        q = 1.0 + (right - 1.0) * decay ** (n + 1 - i)
    else:
        q = np.ones(n)
    return typical[a:b] * q, {f"anchor_{k}": round(v, 9) for k, v in ratio.items()}


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
    ``typical``: typical value per window column, the neighbour hours included (NaN
    where none).
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
        # The estimate covers the columns that need a value (the day's periods); an
        # unknown neighbour hour of another day only lengthens the gap.
        ta, tb = cols[0], cols[-1] + 1
        typ = typical[a:b] if typical is not None else None
        has_typ = typ is not None and not np.isnan(typ[ta - a : tb - a]).any()
        inputs: dict[str, Any] = {"gap_hours": n}
        if bounded and (n <= config.interpolate_max_hours or not has_typ):
            if not has_typ and not config.fallback_interpolation:
                continue
            left, right = float(values[a - 1]), float(values[b])
            curve = interpolate(left, right, n)
            method, scaled_method = INTERPOLATION, INTERPOLATION_REGISTERS
            inputs |= {"left": left, "right": right}
            if not has_typ:
                inputs["why"] = "no typical curve: fallback"
        elif has_typ:
            assert typical is not None and typ is not None
            inputs |= dict(typical_inputs or {})
            method, scaled_method = TYPICAL, TYPICAL_REGISTERS
            curve = typ.copy()
            if config.typical_anchor:
                curve, anchors = anchored(values, typical, a, b, config.anchor_decay)
                if anchors:
                    method = TYPICAL_ANCHORED
                    inputs |= anchors
        else:
            continue
        part = curve[ta - a : tb - a]
        if config.typical_scale_to_registers and registers is not None:
            found = registers(ta, tb)
            total = float(part.sum())
            if found is not None and total > 0:
                advance, reg_inputs = found
                scale = advance / total
                part = part * scale
                method = scaled_method
                inputs |= reg_inputs | {"scale": round(scale, 9)}
        for k, c in enumerate(range(ta, tb)):
            if need[c]:
                extra = {}
                if typ is not None and not np.isnan(typ[c - a]):
                    extra["typical"] = round(float(typ[c - a]), 9)
                out[c] = Estimate(float(part[k]), method, inputs | extra)
    return {c: e for c, e in out.items() if need[c]}
