"""The detector pass as whole-matrix numpy operations: the reference the compiled kernel is held to.

``analytics.detectors.detect`` runs the compiled per-meter kernel (``analytics.kernel``); this formulation states
the same detectors as array expressions, easier to read and to change first. Tests compare the two flag for flag,
and the benchmark's per-meter loop runs this one meter at a time.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from analytics.baseline import closed_hours_profile, trailing_how_baseline, week_grid
from analytics.detectors import ANOMALY_TYPES, BLOCK_CELLS, Detection, DetectorParams, _block_params, _col
from analytics.fastops import centered_median5, keep_runs, nanmedian_rows, paint, rolling_mean, runs
from analytics.fastops import ewma as _ewma
from bems.calendar import CalendarMasks


def reference_detect(x: np.ndarray, *, masks: CalendarMasks, step_minutes: int,
                     params: DetectorParams | None = None, rated_per_bucket: np.ndarray | None = None,
                     contracted_kw: np.ndarray | None = None, with_expected: bool = True,
                     cumulative: bool = True) -> Detection:
    """``analytics.detectors.detect`` in numpy: every detector on consumption ``x`` [M, T], one type per bucket.

    ``masks`` are the building calendar's masks over T (``OfficeCalendar.bucket_masks``); ``rated_per_bucket``
    [M] is the most a meter can use in one bucket; ``contracted_kw`` [M] (NaN: none) enables the peak detector.
    Per-meter parameters given as arrays are split with the meters. ``cumulative=False`` reads ``x`` as an
    instantaneous quantity (mean power per bucket): a stuck register then repeats its value instead of reading 0.
    """
    p = params or DetectorParams()
    x = np.asarray(x, dtype=np.float32)
    m, t = x.shape
    grid = week_grid(masks.local_weekday, masks.minute, step_minutes)
    out = Detection(kind=np.empty((m, t), dtype=np.int8), score=np.empty((m, t), dtype=np.float32),
                    expected=np.empty((m, t), dtype=np.float32) if with_expected else None,
                    excess=np.empty((m, t), dtype=np.float32) if with_expected else None)
    block = max(1, BLOCK_CELLS // max(t, 1))
    for lo in range(0, m, block):  # blocks of meters: bounded memory, every step inside vectorized
        hi = min(m, lo + block)
        sub = _block_params(p, lo, hi, m)
        rated = None if rated_per_bucket is None else np.asarray(rated_per_bucket)[lo:hi]
        contracted = None if contracted_kw is None else np.asarray(contracted_kw)[lo:hi]
        _detect_block(x[lo:hi], masks, grid, step_minutes, sub, rated, contracted, out, lo, cumulative)
    return out


def _detect_block(x: np.ndarray, masks: CalendarMasks, grid, step_minutes: int, p: DetectorParams,  # type: ignore[no-untyped-def]
                  rated: np.ndarray | None, contracted: np.ndarray | None, out: Detection, lo: int,
                  cumulative: bool) -> None:
    m, t = x.shape
    working = np.asarray(masks.working, dtype=bool)
    closed = ~working
    flags: dict[str, np.ndarray] = {}
    # score of each type, computed only where that type is flagged (index arrays in, values out)
    scores: dict[str, Callable[[tuple[np.ndarray, np.ndarray]], np.ndarray]] = {}
    one = lambda i: np.ones(i[0].size, dtype=np.float32)  # noqa: E731
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        missing = np.isnan(x)
        # the meter's typical working-hours use: a median, so one wild reading cannot move it
        working_level = nanmedian_rows(np.where(x[:, working] >= 0, x[:, working], np.nan))[:, None]
        working_level = np.nan_to_num(working_level, nan=0.0)
        flags["negative"] = x < 0
        limit = _col(p.implausible_factor, m) * np.maximum(working_level, 1e-6)
        if rated is not None:
            limit = np.fmin(limit, np.float32(1.5) * np.asarray(rated, dtype=np.float32).reshape(-1, 1))
        flags["implausible"] = x > limit
        bad = flags["negative"] | flags["implausible"]
        clean = np.where(bad, np.float32(np.nan), x) if bad.any() else x
        scores["negative"] = lambda i: 1 + np.abs(x[i])
        scores["implausible"] = lambda i: x[i] / limit[i[0], 0]

        seen = np.logical_or.accumulate(~missing, axis=1)  # before a meter's first reading is not a gap
        flags["gap"] = keep_runs(missing & seen, p.gap_buckets)
        scores["gap"] = one

        base = trailing_how_baseline(clean, grid, max_weeks=p.max_weeks)
        z = (clean - base.expected) / base.sigma
        exp_closed, sigma_closed = closed_hours_profile(clean, closed, masks.open_day,
                                                        masks.minute // step_minutes, 1440 // step_minutes)
        if cumulative:
            zero = np.abs(clean) < 1e-9  # NaN compares False
        else:  # an instantaneous value that repeats exactly, reading after reading
            zero = np.zeros_like(missing)
            zero[:, 1:] = clean[:, 1:] == clean[:, :-1]
        flat = keep_runs(zero, p.flatline_buckets)
        fi = np.nonzero(flat)
        if fi[0].size:  # keep only the zeros where consumption was expected
            exp_at = np.where(closed[fi[1]], exp_closed[fi], base.expected[fi])
            exp_at = np.where(np.isnan(exp_at), working_level[fi[0], 0], exp_at)
            keep = exp_at > _col(p.flatline_min_rel, m)[fi[0], 0] * working_level[fi[0], 0]
            flat[fi[0][~keep], fi[1][~keep]] = False
        flags["flatline"] = flat
        scores["flatline"] = one

        up = np.nan_to_num(z, nan=0.0)
        spike_z = _col(p.spike_z, m)
        spike_hi = up > spike_z
        si = np.nonzero(spike_hi)
        if si[0].size:  # a spike stands out from its own neighbours too, which a weather-driven rise does not
            local = centered_median5(clean[si[0][:, None], np.clip(si[1][:, None] + np.arange(-2, 3), 0, t - 1)])
            contrast = (clean[si] - local[:, 2]) / base.sigma[si]
            drop = ~(np.nan_to_num(contrast) > spike_z[si[0], 0] / 2)
            spike_hi[si[0][drop], si[1][drop]] = False
        flags["spike"] = keep_runs(spike_hi, 1, p.spike_max_buckets)
        scores["spike"] = lambda i: up[i] / spike_z[i[0], 0]

        excess_closed = clean - exp_closed
        threshold = np.fmax(_col(p.waste_z, m) * sigma_closed, _col(p.waste_rel, m) * working_level)
        waste = closed[None, :] & (excess_closed > threshold)
        if p.target_rel is not None:
            waste |= closed[None, :] & (clean > _col(p.target_rel, m) * working_level)
        hol = ~np.asarray(masks.open_day, dtype=bool)[None, :]  # weekends and holidays: a closed day
        flags["holiday"] = waste & hol
        flags["after_hours"] = waste & ~hol
        scores["holiday"] = scores["after_hours"] = lambda i: np.nan_to_num(excess_closed[i] / threshold[i], nan=1)

        zc = np.clip(z, -p.sustained_clip, p.sustained_clip)
        short = rolling_mean(zc, p.step_window)
        level = _ewma(zc, p.drift_alpha)
        short0 = np.nan_to_num(short)
        sustained = (np.abs(short0) > _col(p.step_z, m)) | (np.abs(level) > _col(p.drift_z, m))
        rows, s, e = runs(sustained)
        if rows.size:
            # a level change lasts, reaches into working hours (else it is after-hours waste), and is not a
            # gap, flatline or spike seen from afar
            data = np.zeros((m, t + 1), dtype=np.int32)
            np.cumsum(flags["gap"] | flags["flatline"] | flags["spike"] | bad, axis=1, out=data[:, 1:])
            open_cum = np.concatenate([[0], np.cumsum(working)])
            overlap = (data[rows, e] - data[rows, s]) / np.maximum(e - s, 1)
            keep = (e - s >= p.sustained_min_buckets) & (overlap < 0.3) & (open_cum[e] > open_cum[s])
            rows, s, e = rows[keep], s[keep], e[keep]
        # a step jumps: the window mean right after the onset is already beyond step_z; a drift creeps
        onset = np.minimum(s + p.step_window - 1, t - 1)
        is_step = np.abs(short0[rows, onset]) > _col(p.step_z, m)[rows, 0]
        start_back = np.maximum(s - p.step_window + 1, 0)  # the trailing window lags the true start
        flags["step"] = paint((m, t), rows[is_step], start_back[is_step], e[is_step])
        flags["drift"] = paint((m, t), rows[~is_step], s[~is_step], e[~is_step])
        scores["step"] = lambda i: np.abs(short0[i]) / _col(p.step_z, m)[i[0], 0]
        scores["drift"] = lambda i: np.abs(level[i]) / _col(p.drift_z, m)[i[0], 0]

        if contracted is not None:
            kw = clean * np.float32(60.0 / step_minutes)
            limit_kw = np.asarray(contracted, dtype=np.float32).reshape(-1, 1)
            flags["peak"] = kw > limit_kw
            scores["peak"] = lambda i: kw[i] / limit_kw[i[0], 0]

    kind = out.kind[lo:lo + m]
    score = out.score[lo:lo + m]
    kind.fill(-1)
    np.clip(np.abs(up) / _col(p.spike_z, m), 0, 0.999, out=score)  # below 1: how close to a spike
    for k, name in reversed(list(enumerate(ANOMALY_TYPES))):  # ten steps; the highest priority is written last
        f = flags.get(name)
        if f is None:
            continue
        idx = np.nonzero(f)
        if idx[0].size:
            kind[idx] = k
            score[idx] = np.maximum(scores[name](idx), 1.0)
    if out.expected is not None and out.excess is not None:
        expected = np.where(closed[None, :], exp_closed,
                            np.where(np.isnan(base.expected), working_level, base.expected))
        out.expected[lo:lo + m] = expected
        out.excess[lo:lo + m] = np.where(kind >= 0, np.clip(np.nan_to_num(clean - expected), 0, None), 0)
