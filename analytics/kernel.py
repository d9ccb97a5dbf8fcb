"""The detector pass compiled (numba): every detector over batches of meters, no per-meter Python.

The numpy formulation (``analytics.reference``) makes ~150 passes over the whole matrix and its temporaries; here
a batch of ``LANES`` meters stays in the CPU caches while every detector reads it, about 4 ns of CPU per bucket
(bench/analytics.py). A batch is first held side by side, [buckets x meters] (``analytics.simd`` turns it), so
that each step along time is one vector operation across the meters: cleaning, the working level, the
hour-of-week baseline (median and MAD of each slot over the previous weeks: a branch-free sorting network of
four), z, the closed-hours levels, the running sum and EWMA of z (chains of dependent steps that no row-wise loop
can vectorize), and the candidates of every rare type. Medians of many values go down the columns of a
[values x meters] block: the working level and each week's pooled MAD by their bits (``simd.median_lanes``),
the closed-hours groups (a few to a few dozen values each) by sorting networks, each step a vector min/max
across the meters, pruned to the middle ranks (a median needs no full sort), in tiers of groups of one size.
Then each meter's row on its own: most meters have no candidate but missing readings, and their row is only
written (gaps, and the score of every bucket); the others get runs of flags, the detail of candidates, and one
type per bucket (a vector pass finds the candidates, only those take the detailed path).
Loops are written so LLVM vectorizes them: from index 0 over slices (numba guards an index it cannot prove
non-negative, and such a loop stays scalar), long loops down whole blocks where every meter does the same, and
the batch width given at run time (a loop of a known 32 steps is unrolled, and unrolled LLVM cannot prove the
rows apart and keeps them scalar).
The arithmetic is the reference's, step for step in float32 (float64 where it accumulates), so both give the same
flags; ``tests/test_detect_kernel.py`` holds them to it.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from numba import njit

from analytics.networks import BLOCK, SELECT_SLACK, SMALL_BLOCK
from analytics.simd import (
    LANES,
    any_waste,
    clean_lanes,
    copy_lanes_inf,
    finite_lanes,
    median_lanes,
    prefetch,
    sort_blocks8,
    sort_blocks16,
    sustained_lanes,
    transpose16,
)


def _forget_stale_cache() -> None:
    """Drop numba's on-disk cache of this module when ``analytics/simd.py`` or ``analytics/networks.py`` changed.

    numba keys that cache to this file alone, yet the kernel compiles their code and constants in: without this,
    an edit there would go on running the old machine code, silently.
    """
    here = Path(__file__).parent
    digest = hashlib.sha256(b"".join((here / name).read_bytes() for name in ("simd.py", "networks.py"))).hexdigest()
    stamp = here / "__pycache__" / "kernel.deps"
    try:
        if stamp.exists() and stamp.read_text() == digest:
            return
        for cached in stamp.parent.glob("kernel.*.nb[ic]"):
            cached.unlink()
        stamp.parent.mkdir(exist_ok=True)
        stamp.write_text(digest)
    except OSError:  # a read-only install: numba keeps its cache elsewhere, and the files do not change there
        pass


_forget_stale_cache()

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
# the sorting networks the kernel is given (one array of comparators, net_at[i] the first of each, the first
# net_skip[i] of them done by sorting blocks in registers; see analytics.networks): for the closed-hours kinds'
# MADs, the full network at i and at i + 1 the one pruned to the middle ranks of SELECT_SLACK fewer values or
# none fewer; then those of each tier of closed-hours groups
NET_KINDS, NET_TIERS = 0, 2


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
                    net_skip: np.ndarray, net: int, n_full: int, col0: int, width: int) -> None:
    """Put the middle ranks of the first count[c] values of columns col0..col0+width-1 in place (the rest +inf):
    by network ``net`` pruned to them when every column holds at least ``n_full - SELECT_SLACK`` values, else by
    the full one. The other rows then hold the column's other values, in no order."""
    least = n_full
    for c in count[col0:col0 + width]:
        least = min(least, c)
    which = net + 1 if least >= n_full - SELECT_SLACK else net
    first = net_at[which]
    skip = net_skip[which]
    vector = width - width % 16
    if skip > 0:  # the first stages in registers; columns past the last 16 through memory
        if n_full >= BLOCK:  # as networks.block_rows
            sort_blocks16(block, n_full // BLOCK, col0, vector)
        else:
            sort_blocks8(block, n_full // SMALL_BLOCK, col0, vector)
        _sort_columns(block, net_a, net_b, first, first + skip, col0 + vector, width - vector)
    _sort_columns(block, net_a, net_b, first + skip, net_at[which + 1], col0, width)


@njit(nogil=True, cache=True, error_model="numpy")
def _median_columns(block: np.ndarray, count: np.ndarray, net_a: np.ndarray, net_b: np.ndarray, net_at: np.ndarray,
                    net_skip: np.ndarray, net: int, n_full: int, width: int, out: np.ndarray) -> None:
    """out[c] = median of the first count[c] values of column c of ``block`` (the rest +inf: they sort last) as
    (lower middle + upper middle) / 2, NaN if none (see ``_select_columns``)."""
    _select_columns(block, count, net_a, net_b, net_at, net_skip, net, n_full, 0, width)
    for c in range(width):
        n = count[c]
        out[c] = (block[(n - 1) // 2, c] + block[n // 2, c]) * np.float32(0.5) if n > 0 else np.float32(np.nan)


@njit(nogil=True, cache=True, error_model="numpy")
def _median_mad_columns(block: np.ndarray, count: np.ndarray, med: np.ndarray, net_a: np.ndarray, net_b: np.ndarray,
                        net_at: np.ndarray, net_skip: np.ndarray, net: int, size: int, col0: int, width: int) -> None:
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
    _select_columns(block, count, net_a, net_b, net_at, net_skip, net, size, col0, width)
    for c in range(width):
        n = cnt[c]
        mid[c] = (block[(n - 1) // 2, col0 + c] + block[n // 2, col0 + c]) * np.float32(0.5) if n > 0 else nan
    for j in range(size):  # the selection leaves the values in no order: +inf marks the missing ones
        row = block[j, col0:col1]
        for c in range(width):
            v = row[c]
            row[c] = abs(v - mid[c]) if v < inf else inf
    _select_columns(block, count, net_a, net_b, net_at, net_skip, net, size, col0, width)


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
def _to_lanes(x: np.ndarray, r0: int, nb: int, xt: np.ndarray) -> None:
    """xt [t, LANES] = rows r0..r0+nb-1 of x [M, t] side by side; lanes past nb repeat row r0 (so they behave
    as a real meter would, and no network falls back to its full size for them)."""
    t = x.shape[1]
    full = t - t % 16 if nb == LANES else 0
    xf = x.reshape(-1)
    tf = xt.reshape(-1)
    for i in range(0, full, 16):
        for h in range(0, LANES, 16):
            transpose16(xf, (r0 + h) * t + i, t, tf, i * LANES + h, LANES)
    for i in range(full, t):
        row = xt[i]
        for lane in range(LANES):
            row[lane] = x[r0 + (lane if lane < nb else 0), i]


@njit(nogil=True, cache=True, error_model="numpy")
def _from_lanes(xt: np.ndarray, rows: np.ndarray) -> None:
    """rows [LANES, t] = xt [t, LANES] turned back."""
    t = xt.shape[0]
    full = t - t % 16
    tf = xt.reshape(-1)
    rf = rows.reshape(-1)
    for i in range(0, full, 16):
        for h in range(0, LANES, 16):
            transpose16(tf, i * LANES + h, LANES, rf, h * t + i, t)
    for lane in range(LANES):
        for i in range(full, t):
            rows[lane, i] = xt[i, lane]


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _sort3(a: np.float32, b: np.float32, c: np.float32) -> tuple[np.float32, np.float32, np.float32]:
    """Three values ascending: a sorting network of three comparators (selects, so loops around it vectorize)."""
    a, b = min(a, b), max(a, b)
    a, c = min(a, c), max(a, c)
    b, c = min(b, c), max(b, c)
    return a, b, c


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _sort4(a: np.float32, b: np.float32, c: np.float32,
           d: np.float32) -> tuple[np.float32, np.float32, np.float32, np.float32]:
    """Four values ascending: a sorting network of five comparators."""
    a, b = min(a, b), max(a, b)
    c, d = min(c, d), max(c, d)
    a, c = min(a, c), max(a, c)
    b, d = min(b, d), max(b, d)
    b, c = min(b, c), max(b, c)
    return a, b, c, d


@njit(nogil=True, cache=True, error_model="numpy")
def _median_mad_weeks(cube: np.ndarray, w: int, slots: int, k: int, med_out: np.ndarray, mad_out: np.ndarray) -> None:
    """Median and MAD, per slot and meter, of weeks w - k .. w - 1 (k <= 4) of ``cube`` [weeks x slots, LANES]
    (+inf: no value; NaN out if none), as (lower middle + upper middle) / 2 like ``_median``.

    One loop down the week's [slots x LANES] rows as one vector; each element a branch-free sorting network of
    four (a missing week sorts last; its deviation from a finite median is +inf again). For k < 4 the comparators
    that would meet a missing week are left out: the same values come out with a third to half the work.
    """
    inf = np.float32(np.inf)
    nan = np.float32(np.nan)
    half = np.float32(0.5)
    size = slots * cube.shape[1]
    ra = cube[(w - 1) * slots:w * slots].reshape(-1)
    rb = cube[max(w - 2, 0) * slots:max(w - 2, 0) * slots + slots].reshape(-1)
    rc = cube[max(w - 3, 0) * slots:max(w - 3, 0) * slots + slots].reshape(-1)
    rd = cube[max(w - 4, 0) * slots:max(w - 4, 0) * slots + slots].reshape(-1)
    mo = med_out.reshape(-1)
    ao = mad_out.reshape(-1)
    if k == 1:
        for e in range(size):
            a = ra[e]
            med = (a + a) * half
            d = abs(a - med)
            mo[e] = med if a < inf else nan
            ao[e] = (d + d) * half if a < inf else nan
    elif k == 2:
        for e in range(size):
            a = ra[e]
            b = rb[e]
            n = np.int32(a < inf) + np.int32(b < inf)
            a, b = min(a, b), max(a, b)
            med = (a + (b if n == 2 else a)) * half
            da = abs(a - med)
            db = abs(b - med)
            da, db = min(da, db), max(da, db)
            mo[e] = med if n > 0 else nan
            ao[e] = (da + (db if n == 2 else da)) * half if n > 0 else nan
    elif k == 3:
        for e in range(size):
            a = ra[e]
            b = rb[e]
            c = rc[e]
            n = np.int32(a < inf) + np.int32(b < inf) + np.int32(c < inf)
            a, b, c = _sort3(a, b, c)
            med = _mid(a, b, c, inf, n)
            da, db, dc = _sort3(abs(a - med), abs(b - med), abs(c - med))
            mo[e] = med
            ao[e] = _mid(da, db, dc, inf, n)
    else:
        for e in range(size):
            a = ra[e]
            b = rb[e]
            c = rc[e]
            d = rd[e]
            n = np.int32(a < inf) + np.int32(b < inf) + np.int32(c < inf) + np.int32(d < inf)
            a, b, c, d = _sort4(a, b, c, d)
            med = _mid(a, b, c, d, n)
            da, db, dc, dd = _sort4(abs(a - med), abs(b - med), abs(c - med), abs(d - med))
            mo[e] = med
            ao[e] = _mid(da, db, dc, dd, n)


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _first_reading(row: np.ndarray) -> int:
    """Index of the row's first reading (not NaN); its length if none."""
    for i in range(row.size):
        if not np.isnan(row[i]):
            return i
    return row.size


@njit(nogil=True, cache=True, error_model="numpy")
def _sustained_scalar(zt: np.ndarray, cst: np.ndarray, cnt: np.ndarray, levelt: np.ndarray, shortt: np.ndarray,
                      sust: np.ndarray, anyt: np.ndarray, par: np.ndarray, window: np.ndarray) -> None:
    """``simd.sustained_lanes`` one meter at a time, each with its own window (when the batch's differ)."""
    t = zt.shape[0]
    for lane in range(LANES):
        clip, alpha, keep, step_z, drift_z = par[0, lane], par[1, lane], par[2, lane], par[3, lane], par[4, lane]
        acc = 0.0
        n = np.int32(0)
        level = np.float32(0.0)
        cst[0, lane] = 0.0
        cnt[0, lane] = 0
        anyt[lane] = False
        for i in range(t):
            acc, n, level = _ewma_step(zt[i, lane], acc, n, level, clip, alpha, keep)
            cst[i + 1, lane] = acc
            cnt[i + 1, lane] = n
            levelt[i, lane] = level
            j = max(i + 1 - window[lane], 0)
            count = n - cnt[j, lane]
            short = np.float32((acc - cst[j, lane]) / np.float64(count)) if count > 0 else np.float32(0.0)
            shortt[i, lane] = short
            big = (abs(short) > step_z) | (abs(level) > drift_z)
            sust[i, lane] = big
            anyt[lane] |= big


@njit(nogil=True, cache=True, error_model="numpy")
def detect_rows(x: np.ndarray, lo: int, hi: int, working: np.ndarray, work_cols: np.ndarray, open_day: np.ndarray,
                open_cum: np.ndarray, cell: np.ndarray, cell_first: int, slots: int, weeks: int,
                kind_runs: np.ndarray, col_kind: np.ndarray, closed_cols: np.ndarray, gidx: np.ndarray,
                group_kind: np.ndarray, tiers: np.ndarray, n_kinds: int,
                net_a: np.ndarray, net_b: np.ndarray, net_at: np.ndarray, net_skip: np.ndarray, fp: np.ndarray,
                ip: np.ndarray, has_target: bool, has_peak: bool, has_rated: bool, cumulative: bool,
                kw_factor: np.float32, kind_out: np.ndarray, score_out: np.ndarray, expected_out: np.ndarray,
                excess_out: np.ndarray, with_expected: bool, lanes: int) -> None:
    """Every detector for meters lo..hi-1 of ``x`` [M, T]; writes kind/score (and expected/excess) rows.

    Meters go in batches of ``lanes`` (= ``LANES``, given at run time so the loops across a batch vectorize; see
    the module's docstring), first side by side ([buckets x meters] blocks, each step one vector operation across
    the batch): the working level, the hour-of-week baseline and z, the closed-hours levels (medians by sorting
    networks down the blocks' columns) and the running statistics of z. Then each meter's row on its own for what
    is rare (runs of flags, the detail of candidates) and its one type per bucket.
    """
    t = x.shape[1]
    n_cells = weeks * slots
    f32 = np.float32
    nan = f32(np.nan)
    inf = f32(np.inf)
    if lanes != LANES:
        raise ValueError("detect_rows works on batches of LANES meters")
    n_groups = group_kind.size
    depth = gidx.shape[0]
    gsize = np.empty(n_groups, np.int64)
    for q in range(tiers.shape[0]):
        for g in range(tiers[q, 0], tiers[q, 1]):
            gsize[g] = tiers[q, 2]
    n_work = work_cols.size
    n_past = max(weeks - 1, 1)  # weeks with a baseline (all but the first)
    # the batch side by side: [buckets (or cells, values), LANES]
    xt = np.empty((t, lanes), np.float32)
    cube = np.empty((n_cells, lanes), np.float32)
    cell_med = np.empty((n_cells, lanes), np.float32)
    cell_spread = np.empty((n_cells, lanes), np.float32)
    week_mad = np.empty((slots, lanes), np.float32)
    zt = np.empty((t, lanes), np.float32)
    cst = np.empty((t + 1, lanes), np.float64)
    cnt_t = np.empty((t + 1, lanes), np.int32)
    levelt = np.empty((t, lanes), np.float32)
    shortt = np.empty((t, lanes), np.float32)
    sust = np.empty((t, lanes), np.bool_)
    up_rows = np.empty((lanes, t), np.float32)
    par = np.empty((5, lanes), np.float32)
    tpar = np.empty((5, lanes), np.float32)  # spike_z, waste_z, waste_rel and target_rel x level, contracted
    news = np.empty(lanes, np.bool_)  # a meter with a missing reading
    odd = np.empty(lanes, np.bool_)  # a meter with any other candidate: bad, zero, spike, waste, peak
    window_l = np.empty(lanes, np.int64)
    k_l = np.empty(lanes, np.int64)
    done = np.empty(lanes, np.bool_)
    med_k = np.empty((slots, lanes), np.float32)
    mad_k = np.empty((slots, lanes), np.float32)
    limit_l = np.empty(lanes, np.float32)
    wl_l = np.empty(lanes, np.float32)
    any_sus = np.empty(lanes, np.bool_)
    # the batch's medians: scratch of the bitwise ones, the pooled MADs; the closed-hours groups' [values,
    # group x LANES] blocks and the count of values of each column
    pooled = np.empty((n_past, lanes), np.float32)
    mkeys = np.empty((5 * max(slots, n_work), lanes), np.int8)  # scratch of median_lanes
    slot_rows = np.arange(slots)
    block = np.empty((depth, n_groups * lanes), np.float32)
    cnt = np.empty(n_groups * lanes, np.int64)
    gmed = np.empty(n_groups * lanes, np.float32)
    kblock = np.empty((n_groups, lanes), np.float32)
    kcount = np.empty(lanes, np.int64)
    k_pooled = np.empty(lanes, np.float32)
    k_med_t = np.empty((n_kinds, lanes), np.float32)  # [kind, meter]: closed-hours level, MAD
    k_mad_t = np.empty((n_kinds, lanes), np.float32)
    k_limit_t = np.empty((n_kinds, lanes), np.float32)  # the excess over the level that is waste
    # one meter's rows
    clean = np.empty(t, np.float32)
    zero = np.empty(t, np.bool_)
    gap = np.empty(t, np.bool_)
    bad = np.empty(t, np.bool_)
    exp_c = np.empty(t, np.float32)
    lim_c = np.empty(t, np.float32)
    mask = np.empty(t, np.bool_)
    flat = np.empty(t, np.bool_)
    spike = np.empty(t, np.bool_)
    step_f = np.zeros(t, np.bool_)
    drift_f = np.zeros(t, np.bool_)
    k_med = np.empty(n_kinds, np.float32)  # one meter's, by kind
    k_lim = np.empty(n_kinds, np.float32)
    keys = np.empty(max(t, 8) + 8, np.float32)  # scratch of the selects
    srt = np.empty(keys.size, np.float32)
    hist = np.empty(256, np.int32)
    small = np.empty(max(16, ip[lo:hi, I_MAX_WEEKS].max() + 1), np.float32)

    for r0 in range(lo, hi, lanes):
        nb = min(lanes, hi - r0)
        for lane in range(nb):  # the batch's output rows on their way while it computes
            prefetch(kind_out[r0 + lane], 0, t, True)
            prefetch(score_out[r0 + lane], 0, t, True)
        _to_lanes(x, r0, nb, xt)
        # the meter's typical working-hours use: a median, so one wild reading cannot move it
        median_lanes(xt, work_cols, mkeys, wl_l)
        most = 0  # the longest memory of the batch, in weeks
        for lane in range(lanes):
            r = r0 + (lane if lane < nb else 0)
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
            most = max(most, ip[r, I_MAX_WEEKS])
            window_l[lane] = min(ip[r, I_STEP_WINDOW], t)
            par[0, lane] = fp[r, F_CLIP]
            par[1, lane] = fp[r, F_DRIFT_ALPHA]
            par[2, lane] = fp[r, F_DRIFT_KEEP]  # float32(1 - alpha), rounded once as the reference does
            par[3, lane] = fp[r, F_STEP_Z]
            par[4, lane] = fp[r, F_DRIFT_Z]
            tpar[0, lane] = fp[r, F_SPIKE_Z]
            tpar[1, lane] = fp[r, F_WASTE_Z]
            tpar[2, lane] = fp[r, F_WASTE_REL] * wl
            tpar[3, lane] = fp[r, F_TARGET_REL] * wl
            tpar[4, lane] = fp[r, F_CONTRACTED]
            news[lane] = False
            odd[lane] = False

        # the clean batch (NaN: no value or out of range), in place; on the [weeks x slots] grid +inf where no
        # value, so it sorts last
        for c in range(n_cells):
            row = cube[c]
            for lane in range(lanes):
                row[lane] = inf
        clean_lanes(xt, cell, cube, limit_l, news, odd)  # a cell seen twice keeps its last column

        # hour-of-week baseline: median and MAD of the same slot over the previous weeks; each week's MADs
        # pooled (their median, found by its bits for the whole batch). Week 1 has one week behind it: each MAD
        # is 0 (or NaN: no value), and so is their median.
        for s in range(slots):
            row = cell_med[s]
            for lane in range(lanes):
                row[lane] = nan
        for s in range(slots):  # week 0 has no weeks behind it
            row = cell_spread[s]
            for lane in range(lanes):
                row[lane] = nan
        for w in range(1, weeks):
            same = True
            for lane in range(lanes):
                k_l[lane] = min(w, ip[r0 + (lane if lane < nb else 0), I_MAX_WEEKS])
                same &= k_l[lane] == k_l[0]
            meds = cell_med[w * slots:(w + 1) * slots]
            mads = week_mad  # this week's; used up before the next
            if same:  # the usual case
                _median_mad_weeks(cube, w, slots, min(k_l[0], 4), meds, mads)
            else:  # meters that remember different numbers of weeks: each number in turn
                for lane in range(lanes):
                    done[lane] = False
                for first_lane in range(lanes):
                    k = k_l[first_lane]
                    if done[first_lane]:
                        continue
                    _median_mad_weeks(cube, w, slots, min(k, 4), med_k, mad_k)
                    for s in range(slots):
                        for lane in range(lanes):
                            mine = k_l[lane] == k
                            meds[s, lane] = med_k[s, lane] if mine else meds[s, lane]
                            mads[s, lane] = mad_k[s, lane] if mine else mads[s, lane]
                    for lane in range(lanes):
                        done[lane] |= k_l[lane] == k
            if most > 4 and w > 4:  # a longer memory: those meters' medians of k > 4 weeks one by one
                for lane in range(lanes):
                    k = k_l[lane]
                    if k <= 4:
                        continue
                    for s in range(slots):
                        n = 0
                        for w2 in range(w - k, w):
                            v = cube[w2 * slots + s, lane]
                            if v < np.inf:
                                small[n] = v
                                n += 1
                        med, mad = _median_mad(small, n, srt, keys, hist)
                        cell_med[w * slots + s, lane] = med
                        mads[s, lane] = mad
            pw = pooled[w - 1]
            if w == 1:
                for lane in range(lanes):
                    pw[lane] = nan
                for s in range(slots):
                    src = mads[s]
                    for lane in range(lanes):
                        pw[lane] = pw[lane] if np.isnan(src[lane]) else f32(0.0)
            else:
                median_lanes(mads, slot_rows, mkeys, pw)
            # the spread: the slot's MAD, at least the week's pooled MAD and a share of the level
            for s in range(slots):
                src = mads[s]
                med_row = meds[s]
                dst = cell_spread[w * slots + s]
                for lane in range(lanes):
                    dst[lane] = _fmax(_fmax(src[lane], pw[lane]), _fmax(f32(0.05) * abs(med_row[lane]), f32(1e-3)))
        # z of every bucket against its baseline (cell_med and cell_spread, looked up by cell again where the
        # few candidates need them)
        if cell_first >= 0:  # a regular axis: the buckets are one stretch of the grid, one vector down it
            size = t * lanes
            meds = cell_med.reshape(-1)[cell_first * lanes:cell_first * lanes + size]
            spreads = cell_spread.reshape(-1)[cell_first * lanes:cell_first * lanes + size]
            src = xt.reshape(-1)  # clean
            z_flat = zt.reshape(-1)
            for e in range(size):
                z_flat[e] = (src[e] - meds[e]) / (f32(1.4826) * spreads[e])
        else:
            for i in range(t):
                src = xt[i]  # clean
                meds = cell_med[cell[i]]
                spreads = cell_spread[cell[i]]
                z_row = zt[i]
                for lane in range(lanes):
                    z_row[lane] = (src[lane] - meds[lane]) / (f32(1.4826) * spreads[lane])
        # step and drift: the running sum, count and EWMA of the clipped z, the trailing window's mean, and
        # where either is beyond its threshold; chains of dependent steps, all meters of the batch in one
        uniform = True
        for lane in range(lanes):
            uniform &= window_l[lane] == window_l[0]
        if uniform:
            sustained_lanes(zt, cst, cnt_t, levelt, shortt, sust, any_sus, par, window_l[0])
        else:
            _sustained_scalar(zt, cst, cnt_t, levelt, shortt, sust, any_sus, par, window_l)
        # then z with NaN as 0 (and +-inf as the largest float), row by row, for the scores
        finite_lanes(zt, tpar[0], odd)  # and spike candidates
        _from_lanes(zt, up_rows)

        # closed-hours level per slot of the day, apart for open and closed days, over the whole window: the
        # median and MAD of every group of every meter by sorting networks down the block's columns, one per
        # tier of groups of one size (a group of 8 samples needs no network for 20)
        xt_flat = xt.reshape(-1)
        block_flat = block.reshape(-1)
        for g in range(n_groups):
            for j in range(gsize[g]):  # clean, +inf where missing
                copy_lanes_inf(xt_flat, gidx[j, g] * lanes, block_flat, j * block.shape[1] + g * lanes)
        for q in range(tiers.shape[0]):
            _median_mad_columns(block, cnt, gmed, net_a, net_b, net_at, net_skip, NET_TIERS + 2 * q, tiers[q, 2],
                                tiers[q, 0] * lanes, (tiers[q, 1] - tiers[q, 0]) * lanes)
        # each meter's closed-hours level and MAD per kind from its columns of the block; the MADs pooled
        for k in range(n_kinds):
            med_row = k_med_t[k]
            mad_row = k_mad_t[k]
            for lane in range(lanes):
                med_row[lane] = nan
                mad_row[lane] = nan
        for lane in range(lanes):
            kcount[lane] = 0
        for g in range(n_groups):  # a kind has one group at most, so the groups' MADs are the kinds'
            dst = kblock[g]
            med_row = k_med_t[group_kind[g]]
            mad_row = k_mad_t[group_kind[g]]
            for lane in range(lanes):
                c = g * lanes + lane
                n = cnt[c]
                mad = (block[(n - 1) // 2, c] + block[n // 2, c]) * f32(0.5) if n > 0 else nan
                med_row[lane] = gmed[c]
                mad_row[lane] = mad
                dst[lane] = inf if np.isnan(mad) else mad
                kcount[lane] += not np.isnan(mad)
        _median_columns(kblock, kcount, net_a, net_b, net_at, net_skip, NET_KINDS, n_groups, lanes, k_pooled)
        # waste and peak candidates of the whole batch, side by side: most meters have none, and then their rows
        # need no closed-hours levels and no candidate pass (below)
        waste_z_l, waste_rel_l, target_l = tpar[1], tpar[2], tpar[3]
        for k in range(n_kinds):  # each kind's waste threshold: the spread (its MAD, at least the pooled one)
            med_row = k_med_t[k]
            mad_row = k_mad_t[k]
            limit_row = k_limit_t[k]
            for lane in range(lanes):
                sig = f32(1.4826) * _fmax(_fmax(mad_row[lane], k_pooled[lane]), f32(0.02) * abs(med_row[lane]))
                limit_row[lane] = _fmax(waste_z_l[lane] * sig, waste_rel_l[lane])
        any_waste(xt, closed_cols, col_kind, k_med_t, k_limit_t, odd)
        if has_target:
            for i in closed_cols:
                src = xt[i]
                for lane in range(lanes):
                    odd[lane] |= src[lane] > target_l[lane]
        if has_peak:
            contracted_l = tpar[4]
            for i in range(t):
                src = xt[i]
                for lane in range(lanes):
                    odd[lane] |= src[lane] * kw_factor > contracted_l[lane]

        for lane in range(nb):
            r = r0 + lane
            row = x[r]
            if r + lanes < hi:  # the next batch's row on its way from DRAM while this one computes
                prefetch(x[r + lanes], 0, t, False)
            kind_row = kind_out[r]
            score_row = score_out[r]
            up = up_rows[lane]
            if not (odd[lane] or any_sus[lane] or with_expected or not cumulative):
                # no candidate but missing readings, if any: nothing to type but gaps
                spike_z = tpar[0, lane]
                first = _first_reading(row) if news[lane] else t  # missing before it is not a gap
                runs = news[lane] and ip[r, I_GAP_BUCKETS] > 1  # else every missing reading is a gap
                if runs:
                    for i in range(t):
                        mask[i] = np.isnan(row[i]) & (i >= first)
                    _keep_runs(mask, ip[r, I_GAP_BUCKETS], -1, gap)
                for i in range(t):
                    g = gap[i] if runs else np.isnan(row[i]) & (i >= first)
                    kind_row[i] = GAP if g else -1
                    score_row[i] = f32(1.0) if g else min(abs(up[i]) / spike_z, f32(0.999))
                continue
            wl = wl_l[lane]
            limit = limit_l[lane]
            spike_z = fp[r, F_SPIKE_Z]
            # one pass: the clean row, the gap and flatline candidates
            first = _first_reading(row)  # missing before it is not a gap
            for i in range(t):  # no branch on the data: vector steps
                v = row[i]
                out_of_range = (v < 0) | (v > limit)
                bad[i] = out_of_range
                cv = nan if out_of_range else v
                clean[i] = cv
                mask[i] = np.isnan(v) & (i >= first)
                zero[i] = abs(cv) < f32(1e-9)  # a cumulative register's zero use (NaN: not zero)
            if not cumulative:  # an instantaneous value repeated exactly
                zero[0] = False
                for i in range(1, t):
                    zero[i] = clean[i] == clean[i - 1]
            _keep_runs(mask, ip[r, I_GAP_BUCKETS], -1, gap)
            for k in range(n_kinds):
                k_med[k] = k_med_t[k, lane]
                k_lim[k] = k_limit_t[k, lane]
            # each column's closed-hours level and waste threshold: runs of consecutive columns of consecutive
            # kinds, copied
            for q in range(kind_runs.shape[0]):
                start, length, kind0 = kind_runs[q, 0], kind_runs[q, 1], kind_runs[q, 2]
                e_run, l_run = exp_c[start:start + length], lim_c[start:start + length]
                med_run, lim_run = k_med[kind0:kind0 + length], k_lim[kind0:kind0 + length]
                for j in range(length):
                    e_run[j] = med_run[j]
                    l_run[j] = lim_run[j]

            # flatline: zero (or a repeated instantaneous value) for a while where consumption was expected
            any_flat = _keep_runs(zero, ip[r, I_FLAT_BUCKETS], -1, flat)
            flat_min = fp[r, F_FLAT_MIN_REL] * wl
            for i in range(t if any_flat else 0):
                if flat[i]:
                    e = cell_med[cell[i], lane] if working[i] else exp_c[i]
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
                    sg = f32(1.4826) * cell_spread[cell[i], lane]
                    contrast = (clean[i] - _median(small, n, keys, hist)) / sg
                    mask[i] = _nan_to_num(contrast) > half
            _keep_runs(mask, 1, ip[r, I_SPIKE_MAX], spike)

            # step and drift: runs of the sustained mask that last, reach into working hours, and are not a gap,
            # flatline or spike seen from afar
            window = window_l[lane]
            step_z = fp[r, F_STEP_Z]
            drift_z = fp[r, F_DRIFT_Z]
            for i in range(t):
                step_f[i] = False
                drift_f[i] = False
            i = 0 if any_sus[lane] else t  # no run to walk
            min_len = ip[r, I_MIN_SUSTAINED]
            while i < t:
                if not sust[i, lane]:
                    i += 1
                    continue
                s = i
                while i < t and sust[i, lane]:
                    i += 1
                e = i
                others = 0
                for j in range(s, e):
                    others += gap[j] | flat[j] | spike[j] | bad[j]
                overlap = others / max(e - s, 1)
                if e - s >= min_len and overlap < 0.3 and open_cum[e] > open_cum[s]:
                    onset = min(s + window - 1, t - 1)
                    if abs(shortt[onset, lane]) > step_z:
                        for j in range(max(s - window + 1, 0), e):
                            step_f[j] = True
                    else:
                        for j in range(s, e):
                            drift_f[j] = True

            # waste after hours / on closed days, peak demand, then one type per bucket by priority. Few buckets
            # are flagged: a vector pass writes the unflagged outcome and marks the candidates of any type, then
            # only those walk the priority chain.
            target = fp[r, F_TARGET_REL] * wl
            contracted = fp[r, F_CONTRACTED]
            first_hit = t  # the candidates' span: the walk below covers only it
            last_hit = -1
            for i in range(t):
                cv = clean[i]
                waste = (cv - exp_c[i] > lim_c[i]) | (has_target & (cv > target))
                cand = (bad[i] | gap[i] | flat[i] | spike[i] | step_f[i] | drift_f[i] | (waste & ~working[i])
                        | (has_peak & (cv * kw_factor > contracted)))
                mask[i] = cand
                first_hit = min(first_hit, i if cand else t)
                last_hit = max(last_hit, i if cand else -1)
                kind_row[i] = -1
                score_row[i] = min(abs(up[i]) / spike_z, f32(0.999))
            if with_expected:
                for i in range(t):
                    e = cell_med[cell[i], lane]
                    expected_out[r, i] = exp_c[i] if not working[i] else (wl if np.isnan(e) else e)
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
                    threshold = lim_c[i]
                    waste = excess > threshold or (has_target and cv > target)
                    if waste:
                        k = AFTER_HOURS if open_day[i] else HOLIDAY
                        ratio = excess / threshold
                        sc = f32(1.0) if np.isnan(ratio) else _nan_to_num(ratio)
                if k < 0:
                    if step_f[i]:
                        k = STEP
                        sc = abs(shortt[i, lane]) / step_z
                    elif drift_f[i]:
                        k = DRIFT
                        sc = abs(levelt[i, lane]) / drift_z
                    elif has_peak and cv * kw_factor > contracted:
                        k = PEAK
                        sc = cv * kw_factor / contracted
                if k >= 0:
                    kind_row[i] = k
                    score_row[i] = sc if sc >= f32(1.0) or np.isnan(sc) else f32(1.0)
                    if with_expected:
                        excess_out[r, i] = max(_nan_to_num(cv - expected_out[r, i]), f32(0.0))
