"""Typical curves: the hourly profile of the same day type over recent weeks.

Built from settled history (primary units), leaving out days that were estimated in any
hour or are incomplete — an estimate must not feed the next estimate, or one failure would
echo for weeks.
"""

from __future__ import annotations

import warnings

import numpy as np


def typical_curves(
    history: np.ndarray,
    usable_days: np.ndarray,
    statistic: str = "median",
    max_days: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-series typical curve.

    ``history``: (S, D, 24) settled values, days most recent first (NaN where absent);
    ``usable_days``: (S, D). Each series uses its ``max_days`` most recent complete,
    usable days, so a failure does not shrink the history, it reaches further back.
    Returns ((S, 24) curve, NaN where a series has no usable day; (S, D) days used).
    """
    s, d, h = history.shape
    if d == 0:
        return np.full((s, h), np.nan), np.zeros((s, 0), dtype=bool)
    ok = usable_days & ~np.isnan(history).any(axis=2)
    if max_days is not None:
        ok &= np.cumsum(ok, axis=1) <= max_days
    masked = np.where(ok[:, :, None], history, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: no history
        if statistic == "mean":
            curve = np.nanmean(masked, axis=1)
        else:
            curve = np.nanmedian(masked, axis=1)
    return curve, ok
