"""Detector pass speed: 100,000 meters x 672 hourly buckets (float32) against one np.sum pass and against a
straightforward per-meter loop (the same detectors in numpy, ``analytics.reference``, one meter at a time) on a
subsample, scaled. The loop's flags must equal the pass's on that subsample; the line ``agreement`` says so.

Each timing is the best of ``--repeat`` rounds that run all three in turn (the machine is shared); the kernel's
one-off compile (or load from numba's cache) is timed apart, on a small matrix, before the pass.

    python bench/analytics.py [--meters 100000] [--loop-sample 200] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from pathlib import Path

if not __package__:  # run as a script: import the project's packages, not bench/*.py of the same name
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np

from analytics.detectors import detect
from analytics.reference import reference_detect
from bems.calendar import default_calendar


def matrix(meters: int, buckets: int, masks, seed: int = 0) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Office-shaped hourly consumption with noise, a few gaps and some faults."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(5, 200, (meters, 1)).astype(np.float32)
    shape = np.where(masks.working, 1.0, 0.25).astype(np.float32)[None, :]
    x = level * shape * (1 + 0.05 * rng.standard_normal((meters, buckets), dtype=np.float32))
    x[rng.random((meters, buckets)) < 0.001] = np.nan
    x[:, -100:][rng.random((meters, 100)) < 0.0005] *= 8
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meters", type=int, default=100_000)
    ap.add_argument("--buckets", type=int, default=672)
    ap.add_argument("--loop-sample", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    times = np.datetime64("2026-10-03T20:30") + np.arange(args.buckets) * np.timedelta64(3600, "s")
    masks = default_calendar().bucket_masks(times, np.timedelta64(3600, "s"))
    x = matrix(args.meters, args.buckets, masks)
    mb = x.nbytes / 2**20

    t0 = time.perf_counter()
    detect(x[:8], masks=masks, step_minutes=60, with_expected=False)  # compile, or load the compiled kernel
    t_compile = time.perf_counter() - t0

    def loop(sample: np.ndarray) -> np.ndarray:  # the straightforward way: one meter at a time, in plain numpy
        return np.stack([reference_detect(row[None, :], masks=masks, step_minutes=60, with_expected=False).kind[0]
                         for row in sample])

    sample = x[: args.loop_sample]
    t_sum, t_detect, t_loop = float("inf"), float("inf"), float("inf")
    for _ in range(args.repeat):  # side by side, best of each: load from other work weighs on all three alike
        for _ in range(3):
            t0 = time.perf_counter()
            float(np.sum(x, dtype=np.float32))
            t_sum = min(t_sum, time.perf_counter() - t0)
        t0, c0 = time.perf_counter(), time.process_time()
        det = detect(x, masks=masks, step_minutes=60, with_expected=False)
        if time.perf_counter() - t0 < t_detect:
            t_detect, cpu_detect = time.perf_counter() - t0, time.process_time() - c0
        t0 = time.perf_counter()
        loop_kind = loop(sample)
        t_loop = min(t_loop, (time.perf_counter() - t0) * args.meters / args.loop_sample)
    agree = float((loop_kind == det.kind[: args.loop_sample]).mean())

    tracemalloc.start()
    detect(x, masks=masks, step_minutes=60, with_expected=False)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()

    flagged = float(det.is_anomaly.mean())
    print(f"matrix {args.meters} x {args.buckets} float32 = {mb:.0f} MiB; flagged {flagged:.4%} of buckets")
    print(f"np.sum pass            {t_sum * 1000:10.1f} ms")
    print(f"detector pass          {t_detect * 1000:10.1f} ms  ({args.meters / t_detect:,.0f} meters/s; "
          f"{cpu_detect:.2f} s of CPU on {len(os.sched_getaffinity(0))} cores)")
    print(f"per-meter loop, scaled {t_loop * 1000:10.1f} ms  (measured on {args.loop_sample} meters)")
    print(f"kernel compile/load    {t_compile * 1000:10.1f} ms  (once per process)")
    print(f"agreement loop vs pass {agree:10.2%}  of the sample's buckets typed alike")
    print(f"peak traced memory     {peak:10.1f} MiB  ({peak / mb:.2f}x the matrix)")
    print(f"goal detect_vs_np_sum {t_detect / t_sum:.1f} target <= 20")
    print(f"goal loop_vs_detect {t_loop / t_detect:.1f} target >= 100")
    print(f"goal peak_memory_vs_matrix {peak / mb:.2f} target < 4")


if __name__ == "__main__":
    main()
