"""The compiled detector pass against its numpy formulation: same type, score, expected use and excess in every
bucket, on labelled simulator history (every fault type, quarter hours, per-commodity parameters) and on a
synthetic fleet with the optional detectors (rated capacity, contracted demand, a waste target) switched on.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numba
import numpy as np
import pytest

from analytics import kernel, simd
from analytics.detectors import DetectorParams, _layout, detect, params_for
from analytics.networks import network
from analytics.reference import reference_detect
from bems.calendar import default_calendar
from bench.analytics import matrix
from bench.evaluation_data import STEP, dataset


def assert_same(a, b) -> None:  # type: ignore[no-untyped-def]
    assert (a.kind >= 0).any()
    np.testing.assert_array_equal(a.kind, b.kind)
    np.testing.assert_allclose(a.score, b.score, rtol=1e-6, atol=0)
    for got, want in ((a.expected, b.expected), (a.excess, b.excess)):
        if want is None or got is None:  # types and scores alone
            assert got is None or want is not None
        else:
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def detect_both_ways(**kwargs):  # type: ignore[no-untyped-def]
    """The pass with expected use and excess, and the lean one without (which types most meters on a shorter
    path): the same types and scores."""
    full = detect(**kwargs)
    assert_same(detect(**kwargs, with_expected=False), full)
    return full


def test_kernel_types_every_bucket_as_the_numpy_reference_on_labelled_history(tmp_path: Path) -> None:
    d = dataset(tmp_path, buildings=12, weeks=5, per_type=4, seed=3)
    step = int(STEP.total_seconds() // 60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for kwargs in ({"x": d.consumption, "params": params_for(d.commodity)},
                       {"x": d.demand, "cumulative": False}):
            got = detect_both_ways(masks=d.masks, step_minutes=step, **kwargs)
            want = reference_detect(masks=d.masks, step_minutes=step, **kwargs)
            assert_same(got, want)
            assert len(set(got.kind.ravel().tolist())) >= 4  # several detectors fired, not only one


def test_kernel_matches_the_reference_with_every_optional_detector_and_per_meter_parameters() -> None:
    times = np.datetime64("2026-10-03T20:30") + np.arange(900) * np.timedelta64(3600, "s")
    masks = default_calendar().bucket_masks(times, np.timedelta64(3600, "s"))
    x = matrix(300, times.size, masks, seed=5)
    rng = np.random.default_rng(5)
    x[:40, 300:330] = 0  # stuck registers
    x[40:80, 500:] *= 1.6  # a step up
    x[80:90, 100:110] = np.nan  # communication lost
    x[90:95, 50] = -3  # a rollover
    x[95:100, 70] *= 60  # a word swap
    spike_z = np.where(rng.random(300) < 0.5, 8.0, 12.0).astype(np.float32)
    share = rng.random(300)
    params = DetectorParams(spike_z=spike_z, target_rel=0.3, max_weeks=5)  # type: ignore[arg-type]
    contracted = np.select([share < 0.4, share < 0.5], [150, 0], np.nan)  # 0 kW: the peak score divides by 0
    kwargs = {"x": x, "masks": masks, "step_minutes": 60, "params": params,
              "rated_per_bucket": np.full(300, 400.0), "contracted_kw": contracted}
    got = detect_both_ways(**kwargs)
    with np.errstate(divide="ignore"):
        want = reference_detect(**kwargs)
    assert_same(got, want)
    assert {"step", "flatline", "gap", "negative", "implausible", "peak"} <= set(got.type_names().ravel().tolist())


def test_kernel_matches_the_reference_on_a_time_axis_with_a_hole() -> None:
    """Buckets missing from the axis: the row is no longer one stretch of the week grid, the kernel scatters it."""
    times = np.datetime64("2026-10-03T20:30") + np.arange(900) * np.timedelta64(3600, "s")
    times = np.concatenate([times[:300], times[337:]])
    masks = default_calendar().bucket_masks(times, np.timedelta64(3600, "s"))
    assert _layout(masks, 60)[5] == -1  # the scattering path
    x = matrix(150, times.size, masks, seed=2)
    x[:20, 400:430] = 0  # stuck
    x[20:40, 500:] *= 1.7  # a step up
    x[40:45, 50] = -1  # a rollover
    x[45:50, 600:602] = np.nan  # a gap of two buckets
    x[50:55, :40] = np.nan  # meters that start late: no gap before their first reading
    x[55:60, 410:415] = 0  # stuck for a few hours only: a flatline and nothing else
    night = np.flatnonzero(~masks.working[600:700])[:6] + 600
    x[60:65, night] *= 2  # lights left on for a night: waste, and (with spikes out of reach) nothing else
    for kwargs in ({}, {"cumulative": False}, {"params": DetectorParams(max_weeks=6)},
                   {"params": DetectorParams(gap_buckets=2)}, {"params": DetectorParams(spike_z=40.0)}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            assert_same(detect_both_ways(x=x, masks=masks, step_minutes=60, **kwargs),  # type: ignore[arg-type]
                        reference_detect(x, masks=masks, step_minutes=60, **kwargs))  # type: ignore[arg-type]


@pytest.mark.parametrize("near_full", [False, True])
@pytest.mark.parametrize("case", ["uniform", "ties", "infinite", "signed_zeros"])
def test_network_column_medians_are_the_sorted_middles(case: str, near_full: bool) -> None:
    """The batch's medians: each column's first count values (+inf below them) through one sorting network, the
    full one, or (every column missing at most SELECT_SLACK values) the one pruned to the middle ranks."""
    rng = np.random.default_rng(len(case))
    for rows in (1, 2, 8, 20, 48, 120, 168):
        width = 40
        count = rng.integers(max(rows - kernel.SELECT_SLACK, 0) if near_full else 0, rows + 1, width)
        count[0] = rows
        block = np.full((rows, width), np.inf, dtype=np.float32)
        for c in range(width):
            v = rng.random(count[c]).astype(np.float32)
            if case == "ties":
                v = np.round(v * 3).astype(np.float32)
            elif case == "infinite" and count[c]:
                v[0] = np.inf
            elif case == "signed_zeros":
                v = np.where(v < 0.5, np.float32(-0.0), np.float32(0.0))
            block[:count[c], c] = v
        values = block.copy()
        (full, full_skip), (pruned, pruned_skip) = network(rows, False), network(rows, True)
        net = np.array(full + pruned, dtype=np.int64).reshape(-1, 2)
        net_at = np.array([0, len(full), len(full) + len(pruned)], dtype=np.int64)
        out = np.empty(width, dtype=np.float32)
        kernel._median_columns(block, count, np.ascontiguousarray(net[:, 0]), np.ascontiguousarray(net[:, 1]),
                               net_at, np.array([full_skip, pruned_skip]), 0, rows, width, out)
        for c in range(width):
            n = count[c]
            s = np.sort(values[:n, c])
            want = (s[(n - 1) // 2] + s[n // 2]) * np.float32(0.5) if n else np.float32(np.nan)
            # by value: np.sort leaves -0.0 and 0.0 in either order, so a zero median's sign is no one's to keep
            assert out[c] == want or (np.isnan(out[c]) and np.isnan(want)), (case, rows, c, out[c], want)


@numba.njit
def _median_lanes(block, rows, keys, out):  # type: ignore[no-untyped-def]
    simd.median_lanes(block, rows, keys, out)


@pytest.mark.parametrize("case", ["uniform", "ties", "missing", "negative", "infinite", "signed_zeros", "subnormal",
                                  "huge_span", "one_value"])
def test_bitwise_column_medians_are_the_middles_of_the_non_negative_values(case: str) -> None:
    """``simd.median_lanes``: per column of the chosen rows, the median of the values >= 0 (NaN and negatives
    no value, +inf a value), found by its bits; 672 rows are the quarter hours of a week, 40,000 more than an
    int16 count holds."""
    rng = np.random.default_rng(len(case))
    for size in (1, 2, 3, 20, 119, 120, 168, 337, 672, *((40_000,) if case in ("uniform", "ties") else ())):
        block = rng.random((size + 7, 32)).astype(np.float32)
        if case == "ties":
            block = np.round(block * 3)
        elif case == "missing":
            block[rng.random(block.shape) < rng.random(32)] = np.nan  # columns from full to empty
            block[:, 0] = np.nan
        elif case == "negative":
            block -= np.float32(0.5)
        elif case == "infinite":
            block[rng.random(block.shape) < 0.4] = np.inf
        elif case == "signed_zeros":
            block = np.where(block < 0.5, np.float32(-0.0), np.float32(0.0))
        elif case == "subnormal":
            block *= np.float32(1e-40)
        elif case == "huge_span":
            block = np.where(block < 0.5, np.float32(3e38), np.float32(1e-30))
        elif case == "one_value":
            block[:] = np.float32(2.5)
        rows = np.sort(rng.choice(block.shape[0], size, replace=False)).astype(np.int64)
        out = np.empty(32, np.float32)
        _median_lanes(block, rows, np.empty((5 * size, 32), np.int8), out)
        for c in range(32):
            v = block[rows, c]
            s = np.sort(v[v >= 0])
            n = s.size
            with np.errstate(over="ignore"):
                want = (s[(n - 1) // 2] + s[n // 2]) * np.float32(0.5) if n else np.float32(np.nan)
            # by value: np.sort leaves -0.0 and 0.0 in either order, so a zero median's sign is no one's to keep
            assert out[c] == want or (np.isnan(out[c]) and np.isnan(want)), (case, size, c, out[c], want)


def test_a_per_meter_parameter_of_the_wrong_length_is_named() -> None:
    times = np.datetime64("2026-10-03T20:30") + np.arange(200) * np.timedelta64(3600, "s")
    masks = default_calendar().bucket_masks(times, np.timedelta64(3600, "s"))
    x = matrix(10, times.size, masks)
    with pytest.raises(ValueError, match="spike_z"):
        detect(x, masks=masks, step_minutes=60, params=DetectorParams(spike_z=np.ones(3)))  # type: ignore[arg-type]


@pytest.mark.parametrize("case", ["uniform", "ties", "huge_span", "infinite", "subnormal"])
def test_kernel_median_is_the_sorted_middle(case: str) -> None:
    rng = np.random.default_rng(len(case))
    work, hist = np.empty(1000, np.float32), np.empty(256, np.int32)
    for n in (1, 2, 7, 40, 41, 168, 337, 600):
        v = rng.random(n).astype(np.float32)
        if case == "ties":
            v = np.round(v * 3).astype(np.float32)
        elif case == "huge_span":
            v[: n // 2], v[n // 2:] = np.float32(3e38), np.float32(-3e38)
        elif case == "infinite":
            v[0] = np.inf
        elif case == "subnormal":
            v = (v * np.float32(1e-40)).astype(np.float32)
        s = np.sort(v)
        with np.errstate(over="ignore"):
            want = (s[(n - 1) // 2] + s[n // 2]) * np.float32(0.5)
        assert kernel._median(v.copy(), n, work, hist) == want, (case, n)


def test_meters_of_one_batch_with_their_own_memory_and_window_type_as_when_alone() -> None:
    """Per-meter weeks of memory and step windows: a batch mixing them takes the kernel's slower paths (each
    number of weeks in turn, the running statistics meter by meter); each meter must come out as it does in a
    batch of its own kind, which takes the vector paths."""
    times = np.datetime64("2026-10-03T20:30") + np.arange(1100) * np.timedelta64(3600, "s")
    masks = default_calendar().bucket_masks(times, np.timedelta64(3600, "s"))
    m = 90
    x = matrix(m, times.size, masks, seed=9)
    x[:30, 700:] *= 1.5  # a step up
    x[30:40, 400:420] = 0  # stuck
    rng = np.random.default_rng(9)
    weeks = rng.choice([1, 2, 3, 4, 6], m)
    window = rng.choice([6, 12, 30], m)
    mixed = detect(x, masks=masks, step_minutes=60, with_expected=True,
                   params=DetectorParams(max_weeks=weeks, step_window=window))  # type: ignore[arg-type]
    for w in np.unique(weeks):
        for s in np.unique(window):
            rows = np.flatnonzero((weeks == w) & (window == s))
            if rows.size == 0:
                continue
            alone = detect(x[rows], masks=masks, step_minutes=60, with_expected=True,
                           params=DetectorParams(max_weeks=int(w), step_window=int(s)))
            np.testing.assert_array_equal(mixed.kind[rows], alone.kind)
            np.testing.assert_array_equal(mixed.score[rows], alone.score)
            np.testing.assert_array_equal(mixed.expected[rows], alone.expected)  # type: ignore[index]
    assert (mixed.type_names() == "step").any()


@pytest.mark.parametrize(("meters", "buckets"), [(32, 672), (7, 672), (32, 50), (19, 3)])
def test_a_batch_turned_side_by_side_and_back_is_the_matrix(meters: int, buckets: int) -> None:
    """The 16 x 16 register transposes (and the element copies of a partial batch or a short tail)."""
    rng = np.random.default_rng(meters * buckets)
    x = rng.standard_normal((meters + 5, buckets)).astype(np.float32)
    xt = np.empty((buckets, simd.LANES), np.float32)
    kernel._to_lanes(x, 5, meters, xt)
    np.testing.assert_array_equal(xt[:, :meters], x[5:].T)
    np.testing.assert_array_equal(xt[:, meters:], np.repeat(x[5:6].T, simd.LANES - meters, axis=1))
    back = np.empty((simd.LANES, buckets), np.float32)
    kernel._from_lanes(xt, back)
    np.testing.assert_array_equal(back, xt.T)


@numba.njit
def _sustained_lanes(*args):  # type: ignore[no-untyped-def]  # an intrinsic is called from compiled code only
    simd.sustained_lanes(*args)


@pytest.mark.parametrize("window", [0, 1, 12, 499, 500])
def test_running_statistics_of_32_meters_in_vector_registers_equal_the_loop(window: int) -> None:
    """``simd.sustained_lanes`` against ``kernel._sustained_scalar`` (the same steps, meter by meter): the EWMA of the
    clipped z, its trailing mean (from a ring of running sums in one, whole running sums in the other) and the
    sustained mask, bit for bit, with NaN (no news), infinite z, per-meter parameters and several windows."""
    rng = np.random.default_rng(4)
    t, lanes = 500, simd.LANES
    z = (rng.standard_normal((t, lanes)) * 3).astype(np.float32)
    z[rng.random((t, lanes)) < 0.05] = np.nan
    z[rng.random((t, lanes)) < 0.01] = np.inf
    z[:40, 3] = np.nan  # a meter silent at first
    z[200:, 7] += 2.5  # a level change
    alpha = rng.uniform(0.005, 0.2, lanes).astype(np.float32)
    par = np.stack([rng.uniform(2, 6, lanes), alpha, (1 - alpha.astype(np.float64)).astype(np.float32),
                    rng.uniform(1, 4, lanes), rng.uniform(0.5, 2, lanes)]).astype(np.float32)
    outs = []
    for vector in (True, False):
        out = (np.empty((t + 1, lanes)), np.empty((t + 1, lanes), np.int32), np.empty((t, lanes), np.float32),
               np.empty((t, lanes), np.float32), np.empty((t, lanes), np.bool_), np.empty(lanes, np.bool_))
        if vector:
            _sustained_lanes(z, *out, par, window)
        else:
            kernel._sustained_scalar(z, *out, par, np.full(lanes, window, np.int64))
        outs.append(out)
    for got, want in zip(outs[0][2:], outs[1][2:], strict=True):  # the running sum and count are scratch
        np.testing.assert_array_equal(got, want)
    assert outs[0][4][:, 7].any() and not outs[0][4].all()
    assert window == 0 or outs[0][3].any()
    np.testing.assert_array_equal(outs[0][5], outs[0][4].any(axis=0))


@pytest.mark.parametrize("pruned", [False, True])
def test_networks_with_their_first_stages_reordered_still_sort_or_select(pruned: bool) -> None:
    """``analytics.networks.network``: the comparators inside full blocks of 16 (or 8) rows moved first (the kernel
    sorts those blocks in registers instead) still sort every column, or put its middle ranks in place when up to
    SELECT_SLACK values are missing; and so does a full sort of each block followed by the rest."""
    from analytics.networks import SELECT_SLACK, block_rows
    rng = np.random.default_rng(int(pruned))
    for n in [*range(1, 40), 120, 168]:
        net, skip = network(n, pruned)
        rows = block_rows(n)
        assert all(a // rows == b // rows and b < rows * (n // rows) for a, b in net[:skip])
        cols = rng.integers(0, 5, (n, 64)).astype(np.float32)  # many ties
        missing = rng.integers(0, min(SELECT_SLACK, n - 1) + 1 if pruned else 1, 64)  # the pruned: >= 1 value
        for c in range(64):
            cols[n - missing[c]:, c] = np.inf
        want = np.sort(cols, axis=0)
        for first_blocks_sorted in (False, True):
            got = cols.copy()
            if first_blocks_sorted:
                for q in range(n // rows if rows else 0):
                    got[q * rows:(q + 1) * rows] = np.sort(got[q * rows:(q + 1) * rows], axis=0)
            for a, b in net[skip if first_blocks_sorted else 0:]:
                got[a], got[b] = np.minimum(got[a], got[b]), np.maximum(got[a], got[b])
            if not pruned:
                np.testing.assert_array_equal(got, want)
            else:
                for c in range(64):
                    k = n - missing[c]
                    assert got[(k - 1) // 2, c] == want[(k - 1) // 2, c] and got[k // 2, c] == want[k // 2, c]


def test_the_compiled_kernel_is_forgotten_when_the_code_it_compiles_in_changes(tmp_path: Path) -> None:
    """numba keys its cache to kernel.py alone; an edit of simd.py or networks.py must drop it, or the old machine
    code would go on running."""
    import shutil
    import subprocess
    import sys
    src = Path(kernel.__file__).parent
    pkg = tmp_path / "analytics"
    shutil.copytree(src, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    cache = pkg / "__pycache__"
    cache.mkdir()
    stale = cache / "kernel.detect_rows-1.py311.nbi"

    def import_kernel() -> None:
        subprocess.run([sys.executable, "-c", "import analytics.kernel"], cwd=tmp_path, check=True,
                       env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{src.parent}"})

    stale.write_text("compiled before")
    import_kernel()  # no record of what it was compiled from: dropped
    assert not stale.exists()
    stale.write_text("compiled now")
    import_kernel()  # nothing changed: kept
    assert stale.read_text() == "compiled now"
    (pkg / "networks.py").write_text((pkg / "networks.py").read_text().replace("BLOCK = 16", "BLOCK = 8"))
    import_kernel()
    assert not stale.exists()
