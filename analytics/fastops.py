"""Fast NaN-aware building blocks for the detectors (numpy only, no Python loop over meters).

``np.nanmedian`` and ``np.nanpercentile`` fall back to per-row Python work when NaN is present, which made a
detector pass over 100,000 meters take minutes; these replacements keep every step a handful of array passes.
"""

from __future__ import annotations

import numpy as np

try:  # scipy comes with the test tools, not with the service: used only where it is there
    from scipy.signal import lfilter as _lfilter
except ImportError:  # pragma: no cover
    _lfilter = None


def nanmedian_rows(a: np.ndarray) -> np.ndarray:
    """Median of each row of a 2-D array ignoring NaN (NaN for an all-NaN row).

    ``np.nanmedian`` falls back to per-row Python work when NaN is present; one sort of all rows (NaN sorts
    last) and picking the middle of each row's valid values is a few array passes.
    """
    a = np.asarray(a, dtype=np.float32)
    r, n = a.shape
    if n == 0:
        return np.full(r, np.nan, dtype=np.float32)
    srt = np.sort(a, axis=1)
    valid = n - np.count_nonzero(np.isnan(a), axis=1)
    lo = np.maximum((valid - 1) // 2, 0)[:, None]
    hi = np.minimum(valid // 2, n - 1)[:, None]
    med = (np.take_along_axis(srt, lo, 1) + np.take_along_axis(srt, hi, 1))[:, 0] * np.float32(0.5)
    med[valid == 0] = np.nan
    return med


_NETWORKS = {1: (), 2: ((0, 1),), 3: ((0, 1), (1, 2), (0, 1)), 4: ((0, 1), (2, 3), (0, 2), (1, 3), (1, 2)),
             5: ((0, 1), (3, 4), (2, 4), (2, 3), (0, 3), (0, 2), (1, 4), (1, 3), (1, 2))}


def median_of(arrays: list[np.ndarray]) -> np.ndarray:
    """Element-wise median of a few same-shape arrays (the weeks of a baseline) ignoring NaN.

    A sorting network of element-wise min/max: ``np.sort`` on millions of 4-element rows costs a call per row.
    """
    k = len(arrays)
    if k not in _NETWORKS:
        stacked = np.stack(arrays, axis=-1)
        with np.errstate(invalid="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                return np.nanmedian(stacked, axis=-1).astype(np.float32)
    nan = [np.isnan(a) for a in arrays]
    any_nan = any(isn.any() for isn in nan)
    v = [np.where(isn, np.float32(np.inf), a) if any_nan else a for a, isn in zip(arrays, nan, strict=True)]
    for i, j in _NETWORKS[k]:
        v[i], v[j] = np.minimum(v[i], v[j]), np.maximum(v[i], v[j])
    if not any_nan:
        return ((v[(k - 1) // 2] + v[k // 2]) * np.float32(0.5)).astype(np.float32)
    n = k - np.sum(nan, axis=0)
    # median of the n finite values, which come first: (v[(n-1)//2] + v[n//2]) / 2
    med = np.full(n.shape, np.nan, dtype=np.float32)
    for count in range(1, k + 1):
        sel = n == count
        if sel.any():
            np.copyto(med, (v[(count - 1) // 2] + v[count // 2]) * np.float32(0.5), where=sel)
    return med


def centered_median5(x: np.ndarray) -> np.ndarray:
    """Median of each value and its two neighbours on either side along time (NaN ignored, edges shortened)."""
    pad = np.full((x.shape[0], x.shape[1] + 4), np.nan, dtype=np.float32)
    pad[:, 2:-2] = x
    return median_of([pad[:, i:i + x.shape[1]] for i in range(5)])


def runs(flags: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Consecutive True runs in each row: (row, start column, end column exclusive)."""
    f = np.asarray(flags, dtype=bool)
    padded = np.zeros((f.shape[0], f.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = f
    d = np.diff(padded, axis=1)
    srow, scol = np.nonzero(d == 1)
    _, ecol = np.nonzero(d == -1)
    return srow, scol, ecol


def paint(shape: tuple[int, int], rows: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Boolean map that is True on [start, end) of each run."""
    out = np.zeros(shape, dtype=bool)
    if rows.size == 0:
        return out
    d = np.zeros((shape[0], shape[1] + 1), dtype=np.int16)
    np.add.at(d, (rows, starts), 1)
    np.add.at(d, (rows, ends), -1)
    return np.cumsum(d, axis=1, dtype=np.int16)[:, :-1] > 0


def keep_runs(mask: np.ndarray, min_len: np.ndarray | int = 1, max_len: np.ndarray | int | None = None) -> np.ndarray:
    """The True runs of ``mask`` whose length is within [min_len, max_len] (per-row limits allowed)."""
    if not mask.any():
        return np.zeros(mask.shape, dtype=bool)
    rows, s, e = runs(mask)
    length = e - s
    ok = length >= np.broadcast_to(np.asarray(min_len), (mask.shape[0],))[rows]
    if max_len is not None:
        ok &= length <= np.broadcast_to(np.asarray(max_len), (mask.shape[0],))[rows]
    return paint(mask.shape, rows[ok], s[ok], e[ok])


def rolling_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` buckets ignoring NaN (NaN where the window holds no value)."""
    valid = ~np.isnan(x)
    cs = np.zeros((x.shape[0], x.shape[1] + 1), dtype=np.float64)
    np.cumsum(np.where(valid, x, 0), axis=1, out=cs[:, 1:])
    cn = np.zeros((x.shape[0], x.shape[1] + 1), dtype=np.int32)
    np.cumsum(valid, axis=1, out=cn[:, 1:])
    w = min(window, x.shape[1])
    total = np.empty(x.shape, dtype=np.float64)
    count = np.empty(x.shape, dtype=np.int32)
    total[:, :w] = cs[:, 1:w + 1]
    count[:, :w] = cn[:, 1:w + 1]
    total[:, w:] = cs[:, w + 1:] - cs[:, 1:-w]
    count[:, w:] = cn[:, w + 1:] - cn[:, 1:-w]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan).astype(np.float32)


def ewma(x: np.ndarray, alpha: float) -> np.ndarray:
    """Exponentially weighted mean along time, NaN = no news: one vector step per bucket over all meters."""
    if x.shape[0] <= 8 and _lfilter is not None:
        return np.stack([_ewma_row(r, alpha) for r in x]) if x.shape[0] else np.empty(x.shape, np.float32)
    xt = np.ascontiguousarray(x.T)
    out = np.empty_like(xt, dtype=np.float32)
    level = np.zeros(xt.shape[1], dtype=np.float32)
    a, b = np.float32(alpha), np.float32(1 - alpha)
    nan = np.isnan(xt)
    filled = np.where(nan, 0, xt).astype(np.float32)
    keep = np.where(nan, np.float32(1), b).astype(np.float32)
    gain = np.where(nan, np.float32(0), a).astype(np.float32)
    for t in range(xt.shape[0]):  # a loop over time, each step over all meters (contiguous)
        level *= keep[t]
        level += gain[t] * filled[t]
        out[t] = level
    return out.T


def _ewma_row(row: np.ndarray, alpha: float) -> np.ndarray:
    """``ewma`` of one meter: a linear filter over its readings, the level held across NaN (same float32 steps)."""
    row = np.asarray(row, dtype=np.float32)
    valid = ~np.isnan(row)
    a, b = np.float32(alpha), np.float32(1 - alpha)
    level = _lfilter(np.array([a]), np.array([np.float32(1), -b]), row[valid]).astype(np.float32)
    last = np.cumsum(valid) - 1  # the latest reading at or before each bucket, -1 before the first
    return np.where(last >= 0, level[np.maximum(last, 0)] if level.size else np.float32(0), np.float32(0))
