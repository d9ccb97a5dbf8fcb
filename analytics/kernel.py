"""The detector pass compiled per meter (numba): every detector in one sweep over a meter's row.

The numpy formulation (``analytics.reference``) makes ~150 passes over the whole matrix and its temporaries; here
each meter's row stays in the CPU cache while every detector reads it, about 11 ns of CPU per bucket
(bench/analytics.py). Where the data rarely branches the loops carry no branch (flags are rare: a vector pass
finds the candidates, then only those take the detailed path), so numba's loops vectorize. Two kinds of work
do not vectorize along one row: medians of many values, and the EWMA and running sums of z, chains of dependent
steps. So meters go in batches: the medians of the whole batch are found by one sorting network down the
columns of a [values x meters] block (each step a vector min/max across the meters; pruned to the middle
ranks, as a median needs no full sort; closed-hours groups in tiers of one size, each with a network of its
size), and the chains of four meters run side by side. Medians of a few values (the weeks of an hour-of-week
cell) are a branch-free sorting network along the row. Loops walk arrays from index 0 (slices, not offsets):
numba guards an index it cannot prove non-negative per element, and such a loop does not vectorize.
The arithmetic is the reference's, step for step in float32 (float64 where it accumulates), so both give the same
flags; ``tests/test_detect_kernel.py`` holds them to it.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# columns of the float parameter table, one row per meter
F_SPIKE_Z, F_WASTE_Z, F_WASTE_REL, F_TARGET_REL, F_FLAT_MIN_REL, F_STEP_Z, F_DRIFT_ALPHA, F_DRIFT_KEEP, F_DRIFT_Z, \
    F_CLIP, F_IMPLAUSIBLE, F_RATED, F_CONTRACTED = range(13)
N_FLOAT = 13
# columns of the integer parameter table
I_SPIKE_MAX, I_FLAT_BUCKETS, I_GAP_BUCKETS, I_STEP_WINDOW, I_MIN_SUSTAINED, I_MAX_WEEKS = range(6)
N_INT = 6

# type indices, in ANOMALY_TYPES order (priority: lower index wins)
NEGATIVE, IMPLAUSIBLE, GAP, FLATLINE, SPIKE, HOLIDAY, AFTER_HOURS, STEP, DRIFT, PEAK = range(10)

_F32_MAX = np.float32(np.finfo(np.float32).max)
_BUCKETS = 128  # of each round of a bucket select
_LANES = 32  # meters per batch: two vectors of float32 across a network's rows (measured: 32 beats 16)
# the sorting networks the kernel is given (one array of comparators, net_at[i] the first of each): for each of
# these, the full network at i and at i + 1 the one pruned to the middle ranks of SELECT_SLACK fewer values or none
# fewer (a median needs no full sort: ~18% fewer comparators); then those of each tier of closed-hours groups
NET_WORKING, NET_SLOTS, NET_KINDS, NET_TIERS = range(0, 8, 2)
SELECT_SLACK = 8


@njit(nogil=True, cache=True, error_model="numpy")
def _median_rank(buf: np.ndarray, n: int) -> np.float32:
    """Median of buf[:n] by counting each value's rank: n^2 compares, but no branch to mispredict."""
    klo = (n - 1) // 2
    khi = n // 2
    lo = np.float32(0.0)
    hi = np.float32(0.0)
    for i in range(n):
        v = buf[i]
        rank = 0
        for j in range(i):  # ties: the earlier value ranks first
            rank += buf[j] <= v
        for j in range(i + 1, n):
            rank += buf[j] < v
        lo = v if rank == klo else lo
        hi = v if rank == khi else hi
    return (lo + hi) * np.float32(0.5)


@njit(nogil=True, cache=True, error_model="numpy")
def _kth(buf: np.ndarray, n: int, k: int, work: np.ndarray, hist: np.ndarray) -> np.float32:
    """The k-th smallest of buf[:n] (finite values; buf is left as it is): bucket select.

    Each round spreads the values over 128 equal buckets between their min and max (a monotone map, so the
    bucket order is the value order), keeps the one bucket holding the k-th, and ends by counting ranks.
    """
    src = buf
    m = n
    while True:
        if m <= 24:
            out = src[0]
            for i in range(m):
                v = src[i]
                rank = 0
                for q in range(i):
                    rank += src[q] <= v
                for q in range(i + 1, m):
                    rank += src[q] < v
                out = v if rank == k else out
            return out
        lo = src[0]
        hi = src[0]
        for i in range(1, m):
            lo = min(lo, src[i])
            hi = max(hi, src[i])
        if lo == hi:
            return lo
        scale = np.float32(_BUCKETS - 1) / (hi - lo)  # float32 is enough: any monotone map will do
        if not (np.isfinite(scale) and scale > 0):  # an infinite or vanishing span: no equal buckets to make
            return np.sort(src[:m])[k]
        for b in range(_BUCKETS):  # loops, not slice assignments: numba's are ~30x slower on short rows
            hist[b] = 0
        for i in range(m):
            hist[min(int((src[i] - lo) * scale), _BUCKETS - 1)] += 1
        acc = 0
        b = 0
        while acc + hist[b] <= k:
            acc += hist[b]
            b += 1
        k -= acc
        j = 0
        for i in range(m):  # keep the values of bucket b
            v = src[i]
            work[j] = v
            j += min(int((v - lo) * scale), _BUCKETS - 1) == b
        m = j
        src = work


@njit(nogil=True, cache=True, error_model="numpy")
def _median(buf: np.ndarray, n: int, work: np.ndarray, hist: np.ndarray) -> np.float32:
    """Median of buf[:n] (no NaN in it; NaN if n == 0), as (lower middle + upper middle) / 2 in float32."""
    if n == 0:
        return np.float32(np.nan)
    if n <= 40:
        return _median_rank(buf, n)
    lower = _kth(buf, n, (n - 1) // 2, work, hist)
    if n % 2 == 1:
        return (lower + lower) * np.float32(0.5)
    # the upper middle: the lower one again if it repeats, else the smallest value above it
    at_most = 0
    above = np.float32(np.inf)
    for i in range(n):
        v = buf[i]
        at_most += v <= lower
        above = min(above, v if v > lower else np.float32(np.inf))
    upper = lower if at_most > n // 2 else above
    return (lower + upper) * np.float32(0.5)


@njit(nogil=True, cache=True, error_model="numpy")
def _median_mad(buf: np.ndarray, n: int, srt: np.ndarray, keys: np.ndarray,
                hist: np.ndarray) -> tuple[np.float32, np.float32]:
    """Median of buf[:n] and the median of the absolute deviations from it, each as ``_median`` gives it.

    A few dozen values: sort them once by counting ranks, then walk out from the middle, where the deviations
    come in increasing order, to the middle deviation.
    """
    inf = np.float32(np.inf)
    if n == 0:
        return np.float32(np.nan), np.float32(np.nan)
    if n > 40:
        med = _median(buf, n, keys, hist)
        for i in range(n):
            buf[i] = abs(buf[i] - med)
        return med, _median(buf, n, keys, hist)
    for i in range(n):  # rank sort: the earlier of equal values first
        v = buf[i]
        rank = 0
        if n <= 12:  # one loop over all: fewer, fuller vector steps for short rows
            for j in range(n):
                w = buf[j]
                rank += (w < v) | ((w == v) & (j < i))
        else:
            for j in range(i):
                rank += buf[j] <= v
            for j in range(i + 1, n):
                rank += buf[j] < v
        srt[rank] = v
    klo = (n - 1) // 2
    khi = n // 2
    med = (srt[klo] + srt[khi]) * np.float32(0.5)
    left = klo  # srt[:klo + 1] <= med <= srt[klo + 1:]
    right = klo + 1
    lo = np.float32(0.0)
    hi = np.float32(0.0)
    for step in range(khi + 1):
        dl = abs(srt[left] - med) if left >= 0 else inf
        dr = abs(srt[right] - med) if right < n else inf
        take_left = dl <= dr
        d = dl if take_left else dr
        left -= take_left
        right += not take_left
        lo = d if step == klo else lo
        hi = d if step == khi else hi
    return med, (lo + hi) * np.float32(0.5)


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _nan_to_num(v: np.float32) -> np.float32:
    """np.nan_to_num of one float32: NaN -> 0, +-inf -> +-max; selects, so the loops around it vectorize."""
    w = np.float32(0.0) if np.isnan(v) else v
    w = _F32_MAX if w > _F32_MAX else w
    return -_F32_MAX if w < -_F32_MAX else w


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _fmax(a: np.float32, b: np.float32) -> np.float32:
    """np.fmax of two float32 (NaN only if both are): a compare that NaN fails, then one select."""
    return a if (a >= b) | np.isnan(b) else b


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _mid(a: np.float32, b: np.float32, c: np.float32, d: np.float32, n: int) -> np.float32:
    """Median of the n finite values among sorted a <= b <= c <= d (the rest are +inf), NaN if n == 0.

    Selects, not branches: the slot loop around it then runs as vector steps.
    """
    lower = b if n >= 3 else a  # sorted[(n - 1) // 2]
    upper = c if n == 4 else (b if n >= 2 else a)  # sorted[n // 2]
    med = (lower + upper) * np.float32(0.5)
    return med if n > 0 else np.float32(np.nan)


@njit(nogil=True, cache=True, error_model="numpy")
def _median_mad4(cube: np.ndarray, first: int, k: int, slots: int, med_out: np.ndarray, mad_out: np.ndarray) -> None:
    """Median and MAD, per slot, of the k <= 4 weeks of ``cube`` from offset ``first`` (+inf: no value).

    A missing week is +inf, so it sorts last and its deviation from a finite median is +inf again; with no
    value at all the median is NaN and so is the MAD.
    """
    inf = np.float32(np.inf)
    wa = cube[first:first + slots]
    wb = cube[first + slots:first + 2 * slots] if k > 1 else cube[first:first]
    wc = cube[first + 2 * slots:first + 3 * slots] if k > 2 else cube[first:first]
    wd = cube[first + 3 * slots:first + 4 * slots] if k > 3 else cube[first:first]
    for s in range(slots):
        a = wa[s]
        b = wb[s] if k > 1 else inf
        c = wc[s] if k > 2 else inf
        d = wd[s] if k > 3 else inf
        n = np.int32(a < inf) + np.int32(b < inf) + np.int32(c < inf) + np.int32(d < inf)
        a, b = min(a, b), max(a, b)
        c, d = min(c, d), max(c, d)
        a, c = min(a, c), max(a, c)
        b, d = min(b, d), max(b, d)
        b, c = min(b, c), max(b, c)
        med = _mid(a, b, c, d, n)
        da = abs(a - med)
        db = abs(b - med)
        dc = abs(c - med)
        dd = abs(d - med)
        da, db = min(da, db), max(da, db)
        dc, dd = min(dc, dd), max(dc, dd)
        da, dc = min(da, dc), max(da, dc)
        db, dd = min(db, dd), max(db, dd)
        db, dc = min(db, dc), max(db, dc)
        med_out[s] = med
        mad_out[s] = _mid(da, db, dc, dd, n)


@njit(nogil=True, cache=True, error_model="numpy")
def _sort_columns(block: np.ndarray, net_a: np.ndarray, net_b: np.ndarray, first: int, end: int, col0: int,
                  width: int) -> None:
    """Sort columns col0..col0+width-1 of ``block`` ascending with the comparators first..end-1 of a sorting
    network (net_a[c] < net_b[c]): each one a vector min/max along two rows.

    The rows are sliced and walked from 0: an index numba cannot prove non-negative gets a wraparound select
    per element, and the loop no longer vectorizes (measured: 4x slower).
    """
    for c in range(first, end):
        top = block[net_a[c], col0:col0 + width]
        bottom = block[net_b[c], col0:col0 + width]
        for g in range(width):
            a = top[g]
            b = bottom[g]
            top[g] = a if a < b else b
            bottom[g] = b if a < b else a


@njit(nogil=True, cache=True, error_model="numpy")
def _select_columns(block: np.ndarray, count: np.ndarray, net_a: np.ndarray, net_b: np.ndarray, net_at: np.ndarray,
                    net: int, n_full: int, col0: int, width: int) -> None:
    """Put the middle ranks of the first count[c] values of columns col0..col0+width-1 in place (the rest +inf):
    by network ``net`` pruned to them when every column holds at least ``n_full - SELECT_SLACK`` values, else by
    the full one. The other rows then hold the column's other values, in no order."""
    least = n_full
    for c in count[col0:col0 + width]:
        least = min(least, c)
    which = net + 1 if least >= n_full - SELECT_SLACK else net
    _sort_columns(block, net_a, net_b, net_at[which], net_at[which + 1], col0, width)


@njit(nogil=True, cache=True, error_model="numpy")
def _median_columns(block: np.ndarray, count: np.ndarray, net_a: np.ndarray, net_b: np.ndarray, net_at: np.ndarray,
                    net: int, n_full: int, width: int, out: np.ndarray) -> None:
    """out[c] = median of the first count[c] values of column c of ``block`` (the rest +inf: they sort last) as
    (lower middle + upper middle) / 2, NaN if none (see ``_select_columns``)."""
    _select_columns(block, count, net_a, net_b, net_at, net, n_full, 0, width)
    for c in range(width):
        n = count[c]
        out[c] = (block[(n - 1) // 2, c] + block[n // 2, c]) * np.float32(0.5) if n > 0 else np.float32(np.nan)


@njit(nogil=True, cache=True, error_model="numpy")
def _median_mad_columns(block: np.ndarray, count: np.ndarray, med: np.ndarray, net_a: np.ndarray, net_b: np.ndarray,
                        net_at: np.ndarray, net: int, size: int, col0: int, width: int) -> None:
    """Median (to med[c]) and MAD (left in the block's middle rows) of the values of columns col0..col0+width-1
    of the first ``size`` rows of ``block`` (+inf: none; count[c] is set to the number of the others)."""
    inf = np.float32(np.inf)
    nan = np.float32(np.nan)
    col1 = col0 + width
    cnt = count[col0:col1]  # slices walked from 0: the loops vectorize (see _sort_columns)
    mid = med[col0:col1]
    for c in range(width):
        cnt[c] = 0
    for j in range(size):
        row = block[j, col0:col1]
        for c in range(width):
            cnt[c] += row[c] < inf
    _select_columns(block, count, net_a, net_b, net_at, net, size, col0, width)
    for c in range(width):
        n = cnt[c]
        mid[c] = (block[(n - 1) // 2, col0 + c] + block[n // 2, col0 + c]) * np.float32(0.5) if n > 0 else nan
    for j in range(size):  # the selection leaves the values in no order: +inf marks the missing ones
        row = block[j, col0:col1]
        for c in range(width):
            v = row[c]
            row[c] = abs(v - mid[c]) if v < inf else inf
    _select_columns(block, count, net_a, net_b, net_at, net, size, col0, width)


@njit(nogil=True, cache=True, error_model="numpy")
def _keep_runs(mask: np.ndarray, lo: int, hi: int, out: np.ndarray) -> bool:
    """out = the True runs of ``mask`` whose length is within [lo, hi] (hi < 0: no upper limit); False if
    ``mask`` has none, so the caller can skip its own pass over ``out``.

    Flags are rare: one vector pass finds none, and then there are no runs to walk.
    """
    t = mask.size
    hits = False
    for i in range(t):
        hits |= mask[i]
    if not hits or (lo <= 1 and hi < 0):  # nothing, or every run is kept
        for i in range(t):
            out[i] = mask[i]
        return hits
    i = 0
    while i < t:
        if not mask[i]:
            out[i] = False
            i += 1
            continue
        j = i
        while j < t and mask[j]:
            j += 1
        ok = (j - i) >= lo and (hi < 0 or (j - i) <= hi)
        for k in range(i, j):
            out[k] = ok
        i = j
    return True


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _ewma_step(z: np.float32, acc: np.float64, valid: int, level: np.float32, clip: np.float32, alpha: np.float32,
               keep: np.float32) -> tuple[np.float64, int, np.float32]:
    """One bucket of the running sum, count and EWMA of the clipped z (NaN: no news, nothing moves)."""
    if np.isnan(z):
        return acc, valid, level
    z = min(max(z, -clip), clip)
    level = level * keep
    return acc + np.float64(z), valid + 1, level + alpha * z


@njit(nogil=True, cache=True, error_model="numpy")
def _running_sums4(zc: np.ndarray, cs: np.ndarray, cn: np.ndarray, level_out: np.ndarray, fp: np.ndarray, r0: int,
                   q: int, k: int) -> None:
    """Running sums and EWMAs of rows q..q+k-1 (k <= 4) of ``zc``, meters r0+q.. of ``fp``: four chains in one
    loop, so each one's wait on its last step overlaps the others' (a lane past k repeats the last row)."""
    t = zc.shape[1]
    rows = (q, q + min(1, k - 1), q + min(2, k - 1), q + min(3, k - 1))
    clip = (fp[r0 + rows[0], F_CLIP], fp[r0 + rows[1], F_CLIP], fp[r0 + rows[2], F_CLIP], fp[r0 + rows[3], F_CLIP])
    alpha = (fp[r0 + rows[0], F_DRIFT_ALPHA], fp[r0 + rows[1], F_DRIFT_ALPHA], fp[r0 + rows[2], F_DRIFT_ALPHA],
             fp[r0 + rows[3], F_DRIFT_ALPHA])
    # float32(1 - alpha), rounded once as the reference does
    keep = (fp[r0 + rows[0], F_DRIFT_KEEP], fp[r0 + rows[1], F_DRIFT_KEEP], fp[r0 + rows[2], F_DRIFT_KEEP],
            fp[r0 + rows[3], F_DRIFT_KEEP])
    z0, z1, z2, z3 = zc[rows[0]], zc[rows[1]], zc[rows[2]], zc[rows[3]]
    a0 = a1 = a2 = a3 = 0.0
    n0 = n1 = n2 = n3 = 0
    f = np.float32(0.0)
    l0 = l1 = l2 = l3 = f
    for j in range(4):
        cs[rows[j], 0] = 0.0
        cn[rows[j], 0] = 0
    for i in range(t):
        a0, n0, l0 = _ewma_step(z0[i], a0, n0, l0, clip[0], alpha[0], keep[0])
        a1, n1, l1 = _ewma_step(z1[i], a1, n1, l1, clip[1], alpha[1], keep[1])
        a2, n2, l2 = _ewma_step(z2[i], a2, n2, l2, clip[2], alpha[2], keep[2])
        a3, n3, l3 = _ewma_step(z3[i], a3, n3, l3, clip[3], alpha[3], keep[3])
        cs[rows[3], i + 1] = a3
        cn[rows[3], i + 1] = n3
        level_out[rows[3], i] = l3
        cs[rows[2], i + 1] = a2
        cn[rows[2], i + 1] = n2
        level_out[rows[2], i] = l2
        cs[rows[1], i + 1] = a1
        cn[rows[1], i + 1] = n1
        level_out[rows[1], i] = l1
        cs[rows[0], i + 1] = a0
        cn[rows[0], i + 1] = n0
        level_out[rows[0], i] = l0


@njit(nogil=True, cache=True, error_model="numpy")
def detect_rows(x: np.ndarray, lo: int, hi: int, working: np.ndarray, work_cols: np.ndarray, open_day: np.ndarray,
                open_cum: np.ndarray, cell: np.ndarray, cell_first: int, slots: int, weeks: int,
                kind_runs: np.ndarray, gidx: np.ndarray, group_kind: np.ndarray, tiers: np.ndarray, n_kinds: int,
                net_a: np.ndarray, net_b: np.ndarray, net_at: np.ndarray, fp: np.ndarray, ip: np.ndarray,
                has_target: bool, has_peak: bool, has_rated: bool, cumulative: bool, kw_factor: np.float32,
                kind_out: np.ndarray, score_out: np.ndarray, expected_out: np.ndarray, excess_out: np.ndarray,
                with_expected: bool) -> None:
    """Every detector for meters lo..hi-1 of ``x`` [M, T]; writes kind/score (and expected/excess) rows.

    Meters go in batches of ``_LANES``. Each meter's row is walked on its own, in phases; between them the
    batch is handled at once where one meter alone would be slow: the medians of many values (the working
    level, the pooled spreads, the closed-hours groups) by one sorting network down the columns of a
    [values x meters] block, each step a vector min/max across the meters; and the running sums and EWMA of
    z, chains of dependent steps, four meters side by side.
    """
    t = x.shape[1]
    n_cells = weeks * slots
    f32 = np.float32
    nan = f32(np.nan)
    inf = f32(np.inf)
    lanes = _LANES
    n_groups = group_kind.size
    depth = gidx.shape[0]
    # each group's samples, and its column in the block for lane 0 and from one lane to the next: a tier's
    # columns side by side, meter by meter (one meter's groups of a tier adjacent, as it fills them)
    gsize = np.empty(n_groups, np.int64)
    gcol = np.empty(n_groups, np.int64)
    gstride = np.empty(n_groups, np.int64)
    for q in range(tiers.shape[0]):
        for g in range(tiers[q, 0], tiers[q, 1]):
            gsize[g] = tiers[q, 2]
            gcol[g] = tiers[q, 0] * lanes + g - tiers[q, 0]
            gstride[g] = tiers[q, 1] - tiers[q, 0]
    n_work = work_cols.size
    n_past = max(weeks - 1, 1)  # weeks with a baseline (all but the first)
    # kept from phase to phase, one row per meter of the batch
    clean_l = np.empty((lanes, t), np.float32)
    exp_b_l = np.empty((lanes, t), np.float32)
    sig_b_l = np.empty((lanes, t), np.float32)
    up_l = np.empty((lanes, t), np.float32)
    zero_l = np.empty((lanes, t), np.bool_)
    gap_l = np.empty((lanes, t), np.bool_)
    bad_l = np.empty((lanes, t), np.bool_)
    cell_med_l = np.empty((lanes, n_cells), np.float32)
    week_mad_l = np.empty((lanes, n_past, slots), np.float32)
    k_med_l = np.empty((lanes, n_kinds), np.float32)
    k_mad_l = np.empty((lanes, n_kinds), np.float32)
    wl_l = np.empty(lanes, np.float32)
    limit_l = np.empty(lanes, np.float32)
    # the batch's medians: [values, meter (x week or group)] blocks, the count of values of each column
    wblock = np.empty((n_work, lanes), np.float32)
    wcount = np.empty(lanes, np.int64)
    n_blk = max(weeks - 2, 1)  # of these, the weeks pooled by the network (all but week 1)
    pblock = np.empty((slots, lanes * n_blk), np.float32)
    pcount = np.empty(lanes * n_blk, np.int64)
    pblock_med = np.empty(lanes * n_blk, np.float32)
    pooled_l = np.empty(lanes * n_past, np.float32)
    kblock = np.empty((n_groups, lanes), np.float32)
    kcount = np.empty(lanes, np.int64)
    k_pooled_l = np.empty(lanes, np.float32)
    block = np.empty((depth, n_groups * lanes), np.float32)
    cnt = np.empty(lanes * n_groups, np.int64)
    gmed = np.empty(lanes * n_groups, np.float32)
    # z, its running sum and count, its EWMA
    zc_l = np.empty((lanes, t), np.float32)
    cs_l = np.empty((lanes, t + 1), np.float64)
    cn_l = np.empty((lanes, t + 1), np.int64)
    level_l = np.empty((lanes, t), np.float32)
    # one meter's scratch
    exp_c = np.empty(t, np.float32)
    sig_c = np.empty(t, np.float32)
    short0 = np.empty(t, np.float32)
    mask = np.empty(t, np.bool_)
    flat = np.empty(t, np.bool_)
    spike = np.empty(t, np.bool_)
    sustained = np.empty(t, np.bool_)
    step_f = np.zeros(t, np.bool_)
    drift_f = np.zeros(t, np.bool_)
    cell_spread = np.empty(n_cells, np.float32)
    k_sig = np.empty(n_kinds, np.float32)
    cube = np.empty(n_cells, np.float32)
    keys = np.empty(max(t, 8) + 8, np.float32)  # scratch of the selects
    srt = np.empty(keys.size, np.float32)
    hist = np.empty(256, np.int32)
    small = np.empty(max(16, ip[lo:hi, I_MAX_WEEKS].max() + 1), np.float32)

    for r0 in range(lo, hi, lanes):
        nb = min(lanes, hi - r0)
        # the meter's typical working-hours use: a median, so one wild reading cannot move it
        for lane in range(nb):
            row = x[r0 + lane]
            n = 0
            for j in range(n_work):
                v = row[work_cols[j]]
                keep = v >= 0  # NaN fails too
                wblock[j, lane] = v if keep else inf
                n += keep
            wcount[lane] = n
        _median_columns(wblock, wcount, net_a, net_b, net_at, NET_WORKING, n_work, nb, wl_l)

        for lane in range(nb):
            r = r0 + lane
            row = x[r]
            clean = clean_l[lane]
            zero = zero_l[lane]
            gap = gap_l[lane]
            bad = bad_l[lane]
            cell_med = cell_med_l[lane]
            wl = wl_l[lane]
            if np.isnan(wl):
                wl = f32(0.0)
                wl_l[lane] = wl
            limit = fp[r, F_IMPLAUSIBLE] * max(wl, f32(1e-6))
            if has_rated:
                rated = f32(1.5) * fp[r, F_RATED]
                if not np.isnan(rated) and rated < limit:
                    limit = rated
            limit_l[lane] = limit
            # one pass: the clean row, the gap and flatline candidates, the row on the [weeks x slots] grid (+inf
            # where no value, so it sorts last)
            for i in range(n_cells):
                cube[i] = inf
            first = t  # the meter's first reading: missing before it is not a gap
            for i in range(t):
                if not np.isnan(row[i]):
                    first = i
                    break
            for i in range(t):  # no branch on the data: vector steps
                v = row[i]
                out_of_range = (v < 0) | (v > limit)
                bad[i] = out_of_range
                cv = nan if out_of_range else v
                clean[i] = cv
                mask[i] = np.isnan(v) & (i >= first)
            if cumulative:  # zero, or an instantaneous value repeated exactly
                for i in range(t):
                    zero[i] = abs(clean[i]) < f32(1e-9)
            else:
                zero[0] = False
                for i in range(1, t):
                    zero[i] = clean[i] == clean[i - 1]
            if cell_first >= 0:  # a regular axis: the row is one stretch of the grid (a slice: see _sort_columns)
                stretch = cube[cell_first:cell_first + t]
                for i in range(t):
                    cv = clean[i]
                    stretch[i] = inf if np.isnan(cv) else cv
            else:
                for i in range(t):
                    if not np.isnan(clean[i]):
                        cube[cell[i]] = clean[i]
            _keep_runs(mask, ip[r, I_GAP_BUCKETS], -1, gap)

            # hour-of-week baseline: median and MAD of the same slot over the previous weeks; each week's MADs
            # go to the batch's block, to be pooled (their median) all at once. Week 1 has one week behind it:
            # each MAD is 0 (or NaN: no value), so their median is 0 without a network.
            max_weeks = ip[r, I_MAX_WEEKS]
            for s in range(slots):
                cell_med[s] = nan
            for w in range(1, weeks):
                k = min(w, max_weeks)
                week_mad = week_mad_l[lane, w - 1]
                if k <= 4:  # the usual case: a branch-free sorting network over four weeks (missing ones +inf)
                    _median_mad4(cube, (w - k) * slots, k, slots, cell_med[w * slots:(w + 1) * slots], week_mad)
                else:
                    for s in range(slots):
                        n = 0
                        for w2 in range(w - k, w):
                            v = cube[w2 * slots + s]
                            if v < np.inf:
                                small[n] = v
                                n += 1
                        med, mad = _median_mad(small, n, srt, keys, hist)
                        cell_med[w * slots + s] = med
                        week_mad[s] = mad
                if w == 1:
                    n = 0
                    for s in range(slots):
                        n += not np.isnan(week_mad[s])
                    pooled_l[lane * n_past] = f32(0.0) if n > 0 else nan
                    continue
                col = lane * n_blk + w - 2
                n = 0
                for s in range(slots):
                    mad = week_mad[s]
                    pblock[s, col] = inf if np.isnan(mad) else mad
                    n += not np.isnan(mad)
                pcount[col] = n
        if weeks > 2:
            _median_columns(pblock, pcount, net_a, net_b, net_at, NET_SLOTS, slots, nb * n_blk, pblock_med)
            for lane in range(nb):
                for w in range(2, weeks):
                    pooled_l[lane * n_past + w - 1] = pblock_med[lane * n_blk + w - 2]

        for lane in range(nb):
            clean = clean_l[lane]
            exp_b = exp_b_l[lane]
            sig_b = sig_b_l[lane]
            up = up_l[lane]
            cell_med = cell_med_l[lane]
            # the spread: the slot's MAD, at least the week's pooled MAD and a share of the level
            for s in range(slots):
                cell_spread[s] = nan
            for w in range(1, weeks):
                week_mad = week_mad_l[lane, w - 1]
                pooled = pooled_l[lane * n_past + w - 1]
                meds = cell_med[w * slots:(w + 1) * slots]
                spreads = cell_spread[w * slots:(w + 1) * slots]
                for s in range(slots):
                    spreads[s] = _fmax(_fmax(week_mad[s], pooled), _fmax(f32(0.05) * abs(meds[s]), f32(1e-3)))
            if cell_first >= 0:
                med_run, spread_run = cell_med[cell_first:cell_first + t], cell_spread[cell_first:cell_first + t]
                for i in range(t):
                    exp_b[i] = med_run[i]
                    sig_b[i] = spread_run[i]
            else:
                for i in range(t):
                    exp_b[i] = cell_med[cell[i]]
                    sig_b[i] = cell_spread[cell[i]]
            for i in range(t):
                sg = f32(1.4826) * sig_b[i]
                sig_b[i] = sg
                z = (clean[i] - exp_b[i]) / sg
                zc_l[lane, i] = z
                up[i] = _nan_to_num(z)
            # closed-hours samples of this meter: its column of each group of the batch's [samples x groups x
            # meters] block (+inf where no value)
            for g in range(n_groups):
                c = gcol[g] + lane * gstride[g]
                for j in range(gsize[g]):
                    v = clean[gidx[j, g]]
                    block[j, c] = inf if np.isnan(v) else v

        # closed-hours level per slot of the day, apart for open and closed days, over the whole window: the
        # median and MAD of every group of every meter by sorting networks down the block's columns, one per
        # tier of groups of one size (a group of 8 samples needs no network for 20)
        for q in range(tiers.shape[0]):
            c0 = tiers[q, 0] * lanes
            _median_mad_columns(block, cnt, gmed, net_a, net_b, net_at, NET_TIERS + 2 * q, tiers[q, 2], c0,
                                nb * (tiers[q, 1] - tiers[q, 0]))

        # step and drift: the running sum and count of the clipped z (the trailing window's mean comes from
        # them) and its EWMA. Each step waits on the last: four meters side by side keep the core busy.
        for q in range(0, nb, 4):
            _running_sums4(zc_l, cs_l, cn_l, level_l, fp, r0, q, min(4, nb - q))

        # each meter's closed-hours level and MAD per kind from its columns of the block; the MADs pooled
        for lane in range(nb):
            k_med = k_med_l[lane]
            k_mad = k_mad_l[lane]
            for k in range(n_kinds):
                k_med[k] = nan
                k_mad[k] = nan
            n_mad = 0
            for g in range(n_groups):  # a kind has one group at most, so the groups' MADs are the kinds'
                c = gcol[g] + lane * gstride[g]
                n = cnt[c]
                mad = (block[(n - 1) // 2, c] + block[n // 2, c]) * f32(0.5) if n > 0 else nan
                k_med[group_kind[g]] = gmed[c]
                k_mad[group_kind[g]] = mad
                kblock[g, lane] = inf if np.isnan(mad) else mad
                n_mad += not np.isnan(mad)
            kcount[lane] = n_mad
        _median_columns(kblock, kcount, net_a, net_b, net_at, NET_KINDS, n_groups, nb, k_pooled_l)

        for lane in range(nb):
            r = r0 + lane
            row = x[r]
            clean = clean_l[lane]
            exp_b = exp_b_l[lane]
            sig_b = sig_b_l[lane]
            up = up_l[lane]
            zero = zero_l[lane]
            gap = gap_l[lane]
            bad = bad_l[lane]
            wl = wl_l[lane]
            limit = limit_l[lane]
            k_med = k_med_l[lane]
            k_mad = k_mad_l[lane]
            pooled = k_pooled_l[lane]
            spike_z = fp[r, F_SPIKE_Z]
            for k in range(n_kinds):
                k_sig[k] = f32(1.4826) * _fmax(_fmax(k_mad[k], pooled), f32(0.02) * abs(k_med[k]))
            # each column's closed-hours kind: runs of consecutive columns of consecutive kinds, copied
            for q in range(kind_runs.shape[0]):
                start, length, kind0 = kind_runs[q, 0], kind_runs[q, 1], kind_runs[q, 2]
                e_run, s_run = exp_c[start:start + length], sig_c[start:start + length]
                med_run, sig_run = k_med[kind0:kind0 + length], k_sig[kind0:kind0 + length]
                for j in range(length):
                    e_run[j] = med_run[j]
                    s_run[j] = sig_run[j]

            # flatline: zero (or a repeated instantaneous value) for a while where consumption was expected
            any_flat = _keep_runs(zero, ip[r, I_FLAT_BUCKETS], -1, flat)
            flat_min = fp[r, F_FLAT_MIN_REL] * wl
            for i in range(t if any_flat else 0):
                if flat[i]:
                    e = exp_b[i] if working[i] else exp_c[i]
                    if np.isnan(e):
                        e = wl
                    flat[i] = e > flat_min

            # spike: far above the baseline and above its own neighbours, for a short run
            half = spike_z / f32(2)
            hits = 0
            for i in range(t):  # a vector pass for the candidates, then the few get their neighbours' median
                mask[i] = up[i] > spike_z
                hits += mask[i]
            for i in range(t if hits else 0):
                if mask[i]:
                    n = 0
                    for j in range(i - 2, i + 3):
                        v = clean[min(max(j, 0), t - 1)]
                        if not np.isnan(v):
                            small[n] = v
                            n += 1
                    contrast = (clean[i] - _median(small, n, keys, hist)) / sig_b[i]
                    mask[i] = _nan_to_num(contrast) > half
            _keep_runs(mask, 1, ip[r, I_SPIKE_MAX], spike)

            # step and drift: this meter's column of the running sums
            cs = cs_l[lane]
            cn = cn_l[lane]
            level_a = level_l[lane]
            window = min(ip[r, I_STEP_WINDOW], t)
            step_z = fp[r, F_STEP_Z]
            drift_z = fp[r, F_DRIFT_Z]
            # the trailing window's mean: no chain, vector steps (the first ``window`` buckets see a shorter window)
            for i in range(window):
                count = cn[i + 1]
                short0[i] = f32(cs[i + 1] / count) if count > 0 else f32(0.0)
            # (over slices, with the count made float64 first: so numba's loop vectorizes, the division too)
            cs_hi, cs_lo, cn_hi, cn_lo = cs[window + 1:], cs[1:t + 1 - window], cn[window + 1:], cn[1:t + 1 - window]
            tail = short0[window:]
            for i in range(t - window):
                count = cn_hi[i] - cn_lo[i]
                sh = (cs_hi[i] - cs_lo[i]) / np.float64(count)
                tail[i] = f32(sh) if count > 0 else f32(0.0)
            any_sustained = False
            for i in range(t):
                sus = (abs(short0[i]) > step_z) | (abs(level_a[i]) > drift_z)
                sustained[i] = sus
                any_sustained |= sus
                step_f[i] = False
                drift_f[i] = False
            i = 0 if any_sustained else t  # no run to walk
            min_len = ip[r, I_MIN_SUSTAINED]
            while i < t:
                if not sustained[i]:
                    i += 1
                    continue
                s = i
                while i < t and sustained[i]:
                    i += 1
                e = i
                # a level change lasts, reaches into working hours, and is not a gap, flatline or spike seen from afar
                others = 0
                for j in range(s, e):
                    others += gap[j] | flat[j] | spike[j] | bad[j]
                overlap = others / max(e - s, 1)
                if e - s >= min_len and overlap < 0.3 and open_cum[e] > open_cum[s]:
                    onset = min(s + window - 1, t - 1)
                    if abs(short0[onset]) > step_z:
                        for j in range(max(s - window + 1, 0), e):
                            step_f[j] = True
                    else:
                        for j in range(s, e):
                            drift_f[j] = True

            # waste after hours / on closed days, peak demand, then one type per bucket by priority. Few buckets
            # are flagged: a vector pass writes the unflagged outcome and marks the candidates of any type, then
            # only those walk the priority chain.
            waste_z = fp[r, F_WASTE_Z]
            waste_rel = fp[r, F_WASTE_REL] * wl
            target = fp[r, F_TARGET_REL] * wl
            contracted = fp[r, F_CONTRACTED]
            kind_row = kind_out[r]
            score_row = score_out[r]
            first_hit = t  # the candidates' span: the walk below covers only it
            last_hit = -1
            for i in range(t):
                cv = clean[i]
                waste = (cv - exp_c[i] > _fmax(waste_z * sig_c[i], waste_rel)) | (has_target & (cv > target))
                cand = (bad[i] | gap[i] | flat[i] | spike[i] | step_f[i] | drift_f[i] | (waste & ~working[i])
                        | (has_peak & (cv * kw_factor > contracted)))
                mask[i] = cand
                first_hit = min(first_hit, i if cand else t)
                last_hit = max(last_hit, i if cand else -1)
                kind_row[i] = -1
                score_row[i] = min(abs(up[i]) / spike_z, f32(0.999))
            if with_expected:
                for i in range(t):
                    expected_out[r, i] = exp_c[i] if not working[i] else (wl if np.isnan(exp_b[i]) else exp_b[i])
                    excess_out[r, i] = f32(0.0)
            for i in range(first_hit, last_hit + 1):
                if not mask[i]:
                    continue
                v = row[i]
                cv = clean[i]
                k = -1
                sc = f32(0.0)
                if v < 0:
                    k = NEGATIVE
                    sc = f32(1.0) + abs(v)
                elif v > limit:
                    k = IMPLAUSIBLE
                    sc = v / limit
                elif gap[i]:
                    k = GAP
                    sc = f32(1.0)
                elif flat[i]:
                    k = FLATLINE
                    sc = f32(1.0)
                elif spike[i]:
                    k = SPIKE
                    sc = up[i] / spike_z
                if k < 0 and not working[i]:
                    excess = cv - exp_c[i]
                    threshold = _fmax(waste_z * sig_c[i], waste_rel)
                    waste = excess > threshold or (has_target and cv > target)
                    if waste:
                        k = AFTER_HOURS if open_day[i] else HOLIDAY
                        ratio = excess / threshold
                        sc = f32(1.0) if np.isnan(ratio) else _nan_to_num(ratio)
                if k < 0:
                    if step_f[i]:
                        k = STEP
                        sc = abs(short0[i]) / step_z
                    elif drift_f[i]:
                        k = DRIFT
                        sc = abs(level_a[i]) / drift_z
                    elif has_peak and cv * kw_factor > contracted:
                        k = PEAK
                        sc = cv * kw_factor / contracted
                if k >= 0:
                    kind_row[i] = k
                    score_row[i] = sc if sc >= f32(1.0) or np.isnan(sc) else f32(1.0)
                    if with_expected:
                        excess_out[r, i] = max(_nan_to_num(cv - expected_out[r, i]), f32(0.0))
