"""The one place where meter (secondary) values become primary energy.

Meters measure behind current and voltage transformers; the CGM stores what they read and
converts only when settling: ``primary = secondary × CT ratio × VT ratio × adjustment
factor``. The adjustment factor is the frontier's (e.g. losses to the commercial boundary
when the meter is not at it); it is 1 when the meter sits on the boundary.
"""

from __future__ import annotations

import numpy as np


def primary_factor(ct_ratio: float, vt_ratio: float, adjustment_factor: float = 1.0) -> float:
    """Multiplier from secondary kWh/kvarh to primary kWh/kvarh."""
    for name, value in (
        ("ct_ratio", ct_ratio),
        ("vt_ratio", vt_ratio),
        ("adjustment_factor", adjustment_factor),
    ):
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
    return ct_ratio * vt_ratio * adjustment_factor


def to_primary(
    secondary: float | np.ndarray, ct_ratio: float, vt_ratio: float, adjustment_factor: float = 1.0
) -> float | np.ndarray:
    return secondary * primary_factor(ct_ratio, vt_ratio, adjustment_factor)
