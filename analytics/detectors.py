"""Detectors over a [meters x buckets] consumption matrix: no per-meter Python loop.

Every detector flags buckets and scores them (the statistic divided by its threshold, so a score >= 1 is an
anomaly). ``detect`` runs them all and gives every bucket one type, by priority. Parameters are documented in
:class:`DetectorParams`; each may be a scalar or an array of shape [meters] to tune a meter on its own.
The work is compiled (``analytics.kernel``): batches of 32 meters side by side, blocks of meters on every core,
so memory stays the input plus the outputs; ``analytics.reference`` states the same detectors in numpy, and the
tests hold the two to the same result.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace

import numpy as np

from analytics import kernel
from analytics.baseline import week_grid
from analytics.kernel import detect_rows
from analytics.networks import kernel_networks
from bems.calendar import CalendarMasks

# priority order: the first flagged type names the bucket
ANOMALY_TYPES = ("negative", "implausible", "gap", "flatline", "spike", "holiday", "after_hours", "step", "drift",
                 "peak")
BLOCK_CELLS = 2_000_000  # meters x buckets per block of the numpy reference: temporaries stay a few tens of MB
BLOCK_METERS = 2_000  # meters per block handed to one thread of the compiled kernel


@dataclass(frozen=True)
class DetectorParams:
    """Thresholds of every detector (defaults tuned on simulator history; see bench/detect_eval.py)."""

    #: spike: robust z-score against the hour-of-week baseline, for runs of at most ``spike_max_buckets``
    spike_z: float = 8.0
    spike_max_buckets: int = 2
    #: waste after hours (open days) / on closed days ("holiday": weekends and holidays): excess over the
    #: closed-hours level of that slot must exceed both
    #: ``waste_z`` robust sigmas and ``waste_rel`` x the meter's working-hours level
    waste_z: float = 4.0
    waste_rel: float = 0.15
    #: the building's target: closed-hours consumption above ``target_rel`` x working level is waste (None: off)
    target_rel: float | None = None
    #: flatline: zero consumption for at least this many buckets where the baseline expects some
    flatline_buckets: int = 4
    flatline_min_rel: float = 0.05
    #: gap: at least this many missing buckets in a row
    gap_buckets: int = 1
    #: step change: mean robust z over ``step_window`` buckets beyond ``step_z``
    step_window: int = 12
    step_z: float = 3.0
    #: drift: exponentially weighted mean of z (memory ~ 1/alpha buckets) beyond ``drift_z``
    drift_alpha: float = 0.01
    drift_z: float = 1.5
    #: z is clipped to +-this before the step and drift statistics (one spike is not a level change)
    sustained_clip: float = 5.0
    #: a step or drift lasts at least this many buckets
    sustained_min_buckets: int = 24
    #: implausible: above ``implausible_factor`` x the meter's working level, or above rated capacity x 1.5
    implausible_factor: float = 20.0
    #: weeks of history in the hour-of-week baseline
    max_weeks: int = 4


#: Per-commodity departures from the defaults. Heating gas follows the weather, which the hour-of-week baseline
#: does not know, so its level changes need wider bands; pulse counters at 0.01 m3 make small flows lumpy.
COMMODITY_PARAMS: dict[str, dict[str, float]] = {
    "gas": {"step_z": 6.0, "drift_z": 4.0, "spike_z": 12.0},
    "water": {"spike_z": 12.0},
}


def params_for(commodities: Sequence[str], base: DetectorParams | None = None) -> DetectorParams:
    """Per-meter parameters for a matrix whose rows have these commodities (arrays where they differ)."""
    base = base or DetectorParams()
    changes: dict[str, np.ndarray] = {}
    for name in {k for overrides in COMMODITY_PARAMS.values() for k in overrides}:
        default = getattr(base, name)
        values = np.array([COMMODITY_PARAMS.get(c, {}).get(name, default) for c in commodities], dtype=np.float32)
        if (values != default).any():
            changes[name] = values
    return replace(base, **changes)


def param_names() -> list[str]:
    return [f.name for f in fields(DetectorParams)]


def _col(value: float | np.ndarray, m: int) -> np.ndarray:
    """A parameter as a [M, 1] column, so a per-meter array and a scalar broadcast alike."""
    return np.broadcast_to(np.asarray(value, dtype=np.float32).reshape(-1, 1), (m, 1))


@dataclass
class Detection:
    kind: np.ndarray  # int8 [M, T], index into ANOMALY_TYPES or -1
    score: np.ndarray  # float32 [M, T], >= 1 where anomalous
    expected: np.ndarray | None  # float32 [M, T], what the meter should have used (NaN: unknown)
    excess: np.ndarray | None  # float32 [M, T], consumption above expected where flagged

    @property
    def is_anomaly(self) -> np.ndarray:
        return self.kind >= 0

    def type_names(self) -> np.ndarray:
        names = np.array(("", *ANOMALY_TYPES), dtype=object)
        return names[self.kind.astype(np.int64) + 1]


def detect(x: np.ndarray, *, masks: CalendarMasks, step_minutes: int, params: DetectorParams | None = None,
           rated_per_bucket: np.ndarray | None = None, contracted_kw: np.ndarray | None = None,
           with_expected: bool = True, cumulative: bool = True) -> Detection:
    """Run every detector on consumption ``x`` [M, T] (per bucket of ``step_minutes``) and type each bucket.

    ``masks`` are the building calendar's masks over T (``OfficeCalendar.bucket_masks``); ``rated_per_bucket``
    [M] is the most a meter can use in one bucket; ``contracted_kw`` [M] (NaN: none) enables the peak detector.
    Per-meter parameters may be arrays of shape [M]. ``cumulative=False`` reads ``x`` as an instantaneous
    quantity (mean power per bucket): a stuck register then repeats its value instead of reading 0.
    The work runs in the compiled per-meter kernel, blocks of meters spread over the CPU's cores.
    """
    p = params or DetectorParams()
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"detect needs a [meters, buckets] matrix, got shape {x.shape}")
    m, t = x.shape
    out = Detection(kind=np.empty((m, t), dtype=np.int8), score=np.empty((m, t), dtype=np.float32),
                    expected=np.empty((m, t), dtype=np.float32) if with_expected else None,
                    excess=np.empty((m, t), dtype=np.float32) if with_expected else None)
    if m == 0 or t == 0:
        return out
    layout = _layout(masks, step_minutes)
    fp, ip = _param_tables(p, m, rated_per_bucket, contracted_kw)
    no_output = np.empty((0, 0), dtype=np.float32)

    def run(lo: int, hi: int) -> None:
        detect_rows(x, lo, hi, *layout, fp, ip, p.target_rel is not None, contracted_kw is not None,
                    rated_per_bucket is not None, cumulative, np.float32(60.0 / step_minutes), out.kind, out.score,
                    no_output if out.expected is None else out.expected,
                    no_output if out.excess is None else out.excess, with_expected, kernel.LANES)

    block = max(1, min(BLOCK_METERS, -(-m // _threads())))
    spans = [(lo, min(m, lo + block)) for lo in range(0, m, block)]
    if len(spans) == 1:
        run(*spans[0])
    else:  # the kernel releases the GIL: blocks run side by side
        with ThreadPoolExecutor(max_workers=_threads()) as pool:
            for f in [pool.submit(run, lo, hi) for lo, hi in spans]:
                f.result()
    return out


def _threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _layout(masks: CalendarMasks, step_minutes: int) -> tuple:  # type: ignore[type-arg]
    """The calendar's shape as index arrays the kernel walks: hour-of-week cells and closed-hours groups."""
    working = np.ascontiguousarray(masks.working, dtype=np.bool_)
    open_day = np.ascontiguousarray(masks.open_day, dtype=np.bool_)
    open_cum = np.concatenate([[0], np.cumsum(working)]).astype(np.int64)
    grid = week_grid(masks.local_weekday, masks.minute, step_minutes)
    cell = (grid.week * grid.slots + grid.slot).astype(np.int64)  # a cell seen twice keeps its last column
    # a regular axis fills one stretch of the grid: the kernel then copies instead of scattering (-1: it is not)
    cell_first = int(cell[0]) if cell.size and np.array_equal(cell, cell[0] + np.arange(cell.size)) else -1
    per_day = 1440 // step_minutes
    col_kind = (open_day.astype(np.int64) * per_day + np.asarray(masks.minute, dtype=np.int64) // step_minutes)
    closed_cols = np.flatnonzero(~working)
    group_kind = np.unique(col_kind[closed_cols])
    members = [closed_cols[col_kind[closed_cols] == k] for k in group_kind]
    # the groups by size, largest first: each tier of one size is sorted by a network of its own size
    order = sorted(range(len(members)), key=lambda g: -members[g].size)
    group_kind, members = group_kind[order], [members[g] for g in order]
    sizes = np.array([c.size for c in members], dtype=np.int64)
    depth = int(sizes.max(initial=0))
    gidx = np.full((depth, group_kind.size), -1, dtype=np.int64)  # [sample, group] -> column, -1: none
    for g, cols in enumerate(members):
        gidx[:cols.size, g] = cols
    tier_at = np.flatnonzero(np.diff(sizes, prepend=-1))
    tiers = np.stack([tier_at, np.append(tier_at[1:], sizes.size), sizes[tier_at]], axis=1).astype(np.int64)
    work_cols = np.flatnonzero(working).astype(np.int64)
    # the kernel's sorting networks, one after the other (kernel.NET_*), each in full and pruned to the median:
    # the closed-hours groups' MADs, each tier of those groups
    net_a, net_b, net_at, net_skip = kernel_networks(tuple(int(n) for n in (group_kind.size, *sizes[tier_at])))
    # columns whose kind goes up by one from one to the next form a run (a day's slots): the kernel copies runs
    starts = np.flatnonzero(np.diff(col_kind, prepend=-2) != 1)
    kind_runs = np.stack([starts, np.diff(starts, append=col_kind.size), col_kind[starts]], axis=1).astype(np.int64)
    return (working, work_cols, open_day, open_cum, cell, cell_first, grid.slots, grid.weeks, kind_runs, col_kind,
            closed_cols.astype(np.int64), gidx, group_kind.astype(np.int64), tiers, 2 * per_day, net_a, net_b,
            net_at, net_skip)


def _param_tables(p: DetectorParams, m: int, rated: np.ndarray | None,
                  contracted: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Every parameter as one row per meter: scalars repeated, per-meter arrays as given."""
    def column(name: str, value: object, dtype: type) -> np.ndarray:
        arr = np.asarray(value, dtype=dtype)
        if arr.ndim and arr.shape != (m,):
            raise ValueError(f"{name} has shape {arr.shape}: give one number, or one per meter (shape ({m},))")
        return np.broadcast_to(arr, (m,))

    nan = np.float32(np.nan)
    alpha = np.asarray(p.drift_alpha, dtype=np.float64)
    floats = [("spike_z", kernel.F_SPIKE_Z, p.spike_z), ("waste_z", kernel.F_WASTE_Z, p.waste_z),
              ("waste_rel", kernel.F_WASTE_REL, p.waste_rel),
              ("target_rel", kernel.F_TARGET_REL, nan if p.target_rel is None else p.target_rel),
              ("flatline_min_rel", kernel.F_FLAT_MIN_REL, p.flatline_min_rel),
              ("step_z", kernel.F_STEP_Z, p.step_z), ("drift_alpha", kernel.F_DRIFT_ALPHA, p.drift_alpha),
              ("drift_alpha", kernel.F_DRIFT_KEEP, 1 - alpha), ("drift_z", kernel.F_DRIFT_Z, p.drift_z),
              ("sustained_clip", kernel.F_CLIP, p.sustained_clip),
              ("implausible_factor", kernel.F_IMPLAUSIBLE, p.implausible_factor),
              ("rated_per_bucket", kernel.F_RATED, nan if rated is None else rated),
              ("contracted_kw", kernel.F_CONTRACTED, nan if contracted is None else contracted)]
    fp = np.empty((m, kernel.N_FLOAT), dtype=np.float32)
    for name, col, value in floats:
        fp[:, col] = column(name, value, np.float32)
    ints = [("spike_max_buckets", kernel.I_SPIKE_MAX, p.spike_max_buckets),
            ("flatline_buckets", kernel.I_FLAT_BUCKETS, p.flatline_buckets),
            ("gap_buckets", kernel.I_GAP_BUCKETS, p.gap_buckets), ("step_window", kernel.I_STEP_WINDOW, p.step_window),
            ("sustained_min_buckets", kernel.I_MIN_SUSTAINED, p.sustained_min_buckets),
            ("max_weeks", kernel.I_MAX_WEEKS, p.max_weeks)]
    ip = np.empty((m, kernel.N_INT), dtype=np.int64)
    for name, col, value in ints:
        ip[:, col] = column(name, value, np.int64)
    return fp, ip


def events(kind: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Runs of one anomaly type per meter: (row, start, end exclusive, type index), vectorized."""
    k = np.asarray(kind)
    m, t = k.shape
    edge = np.ones((m, t + 1), dtype=bool)
    edge[:, 1:t] = k[:, 1:] != k[:, :-1]
    rows, cols = np.nonzero(edge[:, :t] & (k >= 0))
    # the end of each run is the next edge at or after start + 1 in the same row
    flat_edges = np.flatnonzero(edge.ravel())
    pos = np.searchsorted(flat_edges, rows * (t + 1) + cols, side="right")
    ends = flat_edges[pos] - rows * (t + 1)
    return rows, cols, ends, k[rows, cols]


def _block_params(p: DetectorParams, lo: int, hi: int, m: int) -> DetectorParams:
    changes = {f.name: np.asarray(getattr(p, f.name))[lo:hi] for f in fields(p)
               if np.ndim(getattr(p, f.name)) == 1 and np.shape(getattr(p, f.name))[0] == m}
    return DetectorParams(**{**p.__dict__, **changes}) if changes else p
