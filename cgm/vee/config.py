"""VEE settings: every rule and estimation method is a knob here, with the default the
Código's duties suggest. One frozen object, passed explicitly, so a run is reproducible."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any

from pydantic import TypeAdapter

ALL_RULES = (
    "missing",  # completeness: 24 periods per local day
    "duplicate",  # two readings for one interval
    "off_grid",  # a reading not on the hour
    "negative",
    "meter_status",  # the meter itself marked the value invalid / critical / clock invalid
    "spike_day",  # against the day's other intervals
    "spike_history",  # against the typical curve of the same day type
    "zero_run",
    "frozen",
    "capacity",  # above what the installed capacity allows in an hour
    "register_mismatch",  # interval sum against the register advance
    "clock_correction",  # interval touched by a large clock correction
    "partial",  # the hour's sub-hourly entries did not cover it (Quality.PARTIAL)
    "register_rollover",  # a cumulative register wrapped inside the hour
    "backup_divergence",  # principal against backup beyond the accuracy tolerance
)

# Rules whose failure makes a value unusable: the next source (backup, then estimate) takes
# over. The others only flag the settled value (SUSPECT + reason) and keep it, because they
# say "look at this", not "this is wrong": a divergence does not say which meter is right,
# a clock correction does not say how much energy moved.
DEFAULT_REJECT = frozenset(
    {
        "missing",
        "duplicate",
        "off_grid",
        "negative",
        "meter_status",
        "spike_day",
        "spike_history",
        "zero_run",
        "frozen",
        "capacity",
        "partial",
    }
)


@dataclass(frozen=True)
class VeeConfig:
    """All VEE knobs. Energies are primary kWh/kvarh per hour."""

    disabled: frozenset[str] = frozenset()
    reject: frozenset[str] = DEFAULT_REJECT

    # spikes: value > factor × reference and value − reference > min_kwh
    spike_day_factor: float = 3.0  # reference: median of the day's positive values
    spike_history_factor: float = 3.0  # reference: typical curve at that hour
    spike_min_kwh: float = 1.0
    zero_run_hours: int = 6  # only where the typical curve is positive over the run
    frozen_run_hours: int = 4  # identical non-zero values
    # ...of at least this many secondary kWh: below, repeats are the meter's resolution
    # (0.001 kWh: 100 steps), not a stuck register.
    frozen_min_secondary: float = 0.1
    capacity_margin: float = 1.2  # × installed MVA × 1 h
    register_tolerance_pct: float = 0.5
    register_tolerance_kwh: float = 0.01  # secondary units (meter resolution)
    register_skew: timedelta = timedelta(minutes=5)  # snapshot within this of a boundary
    # principal vs backup: tolerance = factor × (error bound of each meter summed), where a
    # meter's error bound is its class + its CT class + its VT class (%), where known.
    divergence_factor: float = 1.0
    divergence_default_class: float = 2.0  # when a class is not registered
    divergence_floor_kwh: float = 0.01

    # estimation, in the Código's order (art. 38): SCADA integration, then the typical
    # curve (its level anchored on the measured hours either side of the gap), scaled to
    # the register advance when snapshots bracket the gap. Defaults chosen on real load
    # (benchmarks/README.md, "Estimation accuracy").
    scada: bool = True
    scada_max_sample_gap: timedelta = timedelta(minutes=15)
    interpolate_max_hours: int = 0  # > 0: linear interpolation first for gaps up to this
    typical_weeks: int = 4
    typical_max_days: int = 8
    typical_statistic: str = "weighted"  # recency-weighted mean; or "median", "mean"
    typical_decay: float = 0.9  # weight of the k-th most recent usable day: decay**k
    typical_anchor: bool = True  # level from the measured neighbours of the gap
    anchor_decay: float = 0.97  # per hour, back to the curve, when anchored on one side only
    typical_scale_to_registers: bool = True  # any estimate, any gap length
    fallback_interpolation: bool = True  # no history: interpolate bounded gaps

    prolonged_estimation: timedelta = timedelta(days=7)
    actor: str = "vee"

    def __post_init__(self) -> None:
        unknown = (self.disabled | self.reject) - set(ALL_RULES)
        if unknown:
            raise ValueError(f"unknown VEE rule(s): {sorted(unknown)}")
        if self.typical_statistic not in ("weighted", "median", "mean"):
            raise ValueError("typical_statistic must be 'weighted', 'median' or 'mean'")
        if not (0 < self.typical_decay <= 1 and 0 <= self.anchor_decay <= 1):
            raise ValueError("typical_decay in (0, 1] and anchor_decay in [0, 1]")
        if self.interpolate_max_hours < 0 or self.typical_weeks < 1:
            raise ValueError("interpolate_max_hours >= 0 and typical_weeks >= 1")

    def on(self, rule: str) -> bool:
        return rule not in self.disabled


def vee_config(overrides: Mapping[str, Any]) -> VeeConfig:
    """A VeeConfig from the operator's ``[vee]`` settings; a clear error for a bad key."""
    known = {f.name for f in fields(VeeConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown [vee] setting(s): {', '.join(unknown)}")
    return TypeAdapter(VeeConfig).validate_python(dict(overrides))
