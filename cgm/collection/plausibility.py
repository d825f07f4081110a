"""The most energy a meter can honestly report for one hour, from the registry.

A value above it is not a measurement of this frontier (a cumulative register taken for an
interval, a wrong scaler, a meter on the wrong frontier), so it is refused for that meter
with the reason before validation ever sees it. Two bounds, the tighter one applies:

* the frontier's registered capacity (``installed_capacity_mva``): in one hour the primary
  side carries at most that many MVAh, hence at most that many MWh or Mvarh per channel;
* the meter's current rating: ``max_current_a`` in the meter's params (secondary amperes,
  e.g. 10 for a 5(10) A meter), or twice ``rated_current_a``; with the secondary line
  voltage ``nominal_voltage_v`` (default 120 V behind voltage transformers, the 1 kV ceiling
  of voltage level 1 without them), the apparent energy of one hour is
  √3 · U · I_max · 1 h on the secondary side.

Both carry a margin (:data:`MARGIN`) for overload and measurement tolerance. A meter with
neither bound registered is not checked: there is nothing to check it against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cgm.energy import primary_factor

MARGIN = 1.2
VT_SECONDARY_V = 120.0  # line-to-line secondary of voltage transformers in Colombia
LV_CEILING_V = 1000.0  # voltage level 1 is below 1 kV
CURRENT_RANGE = 2.0  # max current over rated current when only the rating is registered


@dataclass(frozen=True)
class HourlyLimit:
    kwh: float  # secondary kWh (or kvarh) in one hour
    basis: str  # what it comes from, for the refusal reason


def _number(params: Any, key: str) -> float | None:
    value = params.get(key) if params else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        return None
    return float(value)


def hourly_limit(
    *,
    ct_ratio: float,
    vt_ratio: float,
    adjustment_factor: float,
    params: Any,
    installed_capacity_mva: float | None,
) -> HourlyLimit | None:
    """The tighter of the registered bounds, in the meter's secondary units per hour."""
    found: list[HourlyLimit] = []
    if installed_capacity_mva:
        factor = primary_factor(ct_ratio, vt_ratio, adjustment_factor)
        found.append(
            HourlyLimit(
                installed_capacity_mva * 1000.0 * MARGIN / factor,
                f"the registered capacity of {installed_capacity_mva:g} MVA "
                f"(CT {ct_ratio:g}, VT {vt_ratio:g})",
            )
        )
    max_current = _number(params, "max_current_a")
    if max_current is None and (rated := _number(params, "rated_current_a")) is not None:
        max_current = rated * CURRENT_RANGE
    if max_current is not None:
        volts = _number(params, "nominal_voltage_v") or (
            VT_SECONDARY_V if vt_ratio > 1 else LV_CEILING_V
        )
        found.append(
            HourlyLimit(
                math.sqrt(3) * volts * max_current / 1000.0 * MARGIN,
                f"the meter's {max_current:g} A at {volts:g} V (secondary)",
            )
        )
    return min(found, key=lambda lim: lim.kwh) if found else None
