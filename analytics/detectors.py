"""Vectorized detectors over a [meters x time] consumption matrix: no per-meter Python loop."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AfterHoursResult:
    flags: np.ndarray  # bool [M, T]: after-hours buckets above the threshold
    excess: np.ndarray  # float [M, T]: consumption above the meter's usual closed-hours level (0 where unflagged)
    working_median: np.ndarray  # float [M]
    closed_median: np.ndarray  # float [M]


def after_hours_excess(consumption: np.ndarray, working: np.ndarray, ratio: float = 0.6,
                       min_working_samples: int = 8) -> AfterHoursResult:
    """Flag after-hours buckets whose consumption exceeds ``ratio`` x the meter's own working-hours median.

    Why the meter's own median: buildings differ by an order of magnitude, so a fixed threshold is wrong for
    all but one of them; a meter with fewer than ``min_working_samples`` working buckets is not judged.
    """
    c = np.asarray(consumption, dtype=np.float64)
    w = np.asarray(working, dtype=bool)
    with np.errstate(all="ignore"):
        working_vals = np.where(w[None, :], c, np.nan)
        closed_vals = np.where(~w[None, :], c, np.nan)
        n_working = np.sum(~np.isnan(working_vals), axis=1)
        working_median = _nanmedian_rows(working_vals)
        closed_median = _nanmedian_rows(closed_vals)
        threshold = ratio * working_median
        flags = (~w[None, :]) & (c > threshold[:, None]) & (n_working >= min_working_samples)[:, None]
        flags &= working_median[:, None] > 0
        excess = np.where(flags, c - np.nan_to_num(closed_median)[:, None], 0.0)
    return AfterHoursResult(flags, np.clip(excess, 0, None), working_median, closed_median)


def _nanmedian_rows(x: np.ndarray) -> np.ndarray:
    out = np.full(x.shape[0], np.nan)
    has = ~np.all(np.isnan(x), axis=1)
    if has.any():
        out[has] = np.nanmedian(x[has], axis=1)
    return out


def runs(flags: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Consecutive True runs in each row: (row, start column, end column exclusive), vectorized."""
    f = np.asarray(flags, dtype=bool)
    padded = np.zeros((f.shape[0], f.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = f
    d = np.diff(padded, axis=1)
    srow, scol = np.nonzero(d == 1)
    _, ecol = np.nonzero(d == -1)
    return srow, scol, ecol
