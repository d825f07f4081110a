"""Typical curves: the hourly profile of the same day type over recent weeks.

Built from settled history (primary units), leaving out days that were estimated in any
hour or are incomplete — an estimate must not feed the next estimate, or one failure would
echo for weeks.
"""

from __future__ import annotations

import warnings

import numpy as np


def typical_curves(
    history: np.ndarray, usable_days: np.ndarray, statistic: str = "median"
) -> tuple[np.ndarray, np.ndarray]:
    """Per-series typical curve.

    ``history``: (S, D, 24) settled values (NaN where absent); ``usable_days``: (S, D).
    Returns ((S, 24) curve, NaN where a series has no usable day; (S,) days used).
    """
    s, d, h = history.shape
    if d == 0:
        return np.full((s, h), np.nan), np.zeros(s, dtype=np.int32)
    ok = usable_days & ~np.isnan(history).any(axis=2)
    masked = np.where(ok[:, :, None], history, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: no history
        if statistic == "mean":
            curve = np.nanmean(masked, axis=1)
        else:
            curve = np.nanmedian(masked, axis=1)
    return curve, ok.sum(axis=1).astype(np.int32)
