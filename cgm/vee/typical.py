"""Typical curves: the hourly profile of the same day type over recent weeks.

Built from settled history (primary units), leaving out days that were estimated in any
hour or are incomplete — an estimate must not feed the next estimate, or one failure would
echo for weeks.

The default statistic is a recency-weighted mean (weight ``decay**k`` for the k-th most
recent usable day): on real load the level drifts with the season and the weather, and
the most recent days say most about today (benchmarks/README.md, estimation accuracy).
"""

from __future__ import annotations

import warnings

import numpy as np

STATISTICS = ("weighted", "median", "mean")


def typical_curves(
    history: np.ndarray,
    usable_days: np.ndarray,
    statistic: str = "weighted",
    max_days: int | None = None,
    decay: float = 0.9,
    core: slice = slice(None),
) -> tuple[np.ndarray, np.ndarray]:
    """Per-series typical curve.

    ``history``: (S, D, H) settled values, days most recent first (NaN where absent);
    ``usable_days``: (S, D); ``core``: the columns a day must have complete to be used
    (the other columns, e.g. the neighbour hours of a window, may be missing). Each series
    uses its ``max_days`` most recent complete, usable days, so a failure does not shrink
    the history, it reaches further back.
    Returns ((S, H) curve, NaN where a series has no usable day; (S, D) days used).
    """
    s, d, h = history.shape
    if d == 0:
        return np.full((s, h), np.nan), np.zeros((s, 0), dtype=bool)
    ok = usable_days & ~np.isnan(history[:, :, core]).any(axis=2)
    rank = np.cumsum(ok, axis=1)
    if max_days is not None:
        ok &= rank <= max_days
    masked = np.where(ok[:, :, None], history, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: no history
        if statistic == "mean":
            curve = np.nanmean(masked, axis=1)
        elif statistic == "median":
            curve = np.nanmedian(masked, axis=1)
        elif statistic == "weighted":
            w = np.where(ok, decay ** (rank - 1.0), 0.0)[:, :, None] * ~np.isnan(masked)
            curve = np.nansum(masked * w, axis=1) / w.sum(axis=1)
        else:
            raise ValueError(f"typical statistic must be one of {STATISTICS}")
    return curve, ok
