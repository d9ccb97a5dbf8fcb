"""Robust hour-of-week baselines, computed for every meter at once on a [meters x weeks x slots] cube.

The baseline of a week comes only from the weeks before it (a trailing median), as it would in production: a
fault that lasts for days then stands out against the weeks that preceded it instead of pulling its own
baseline toward itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analytics.fastops import median_of, nanmedian_rows

MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class WeekGrid:
    """Where each column of a regular time axis falls in a [weeks x slots] grid of local time."""

    slot: np.ndarray  # int [T]: slot of the week (local), 0 = Saturday 00:00
    week: np.ndarray  # int [T]
    slots: int
    weeks: int


def week_grid(local_weekday: np.ndarray, minute_of_day: np.ndarray, step_minutes: int) -> WeekGrid:
    """Saturday is the first day of the Iranian week; slots count ``step_minutes`` from Saturday 00:00 local."""
    per_day = 1440 // step_minutes
    day_of_week = (np.asarray(local_weekday, dtype=np.int64) - 5) % 7  # Monday=0 -> Saturday=0
    slot = day_of_week * per_day + np.asarray(minute_of_day, dtype=np.int64) // step_minutes
    # a new week starts wherever the slot number falls back
    week = np.concatenate([[0], np.cumsum(np.diff(slot) < 0)]) if slot.size else slot
    return WeekGrid(slot=slot, week=week, slots=7 * per_day, weeks=int(week[-1]) + 1 if slot.size else 0)


def _flat_index(grid: WeekGrid) -> np.ndarray | slice:
    """Columns of the flattened [weeks x slots] grid; a plain slice when the axis is regular (the usual case)."""
    g = grid.week * grid.slots + grid.slot
    if g.size and np.array_equal(g, np.arange(g[0], g[0] + g.size)):
        return slice(int(g[0]), int(g[0]) + g.size)
    return g


def to_cube(x: np.ndarray, grid: WeekGrid) -> np.ndarray:
    cube = np.full((x.shape[0], grid.weeks * grid.slots), np.nan, dtype=np.float32)
    cube[:, _flat_index(grid)] = x
    return cube.reshape(x.shape[0], grid.weeks, grid.slots)


def from_cube(cube: np.ndarray, grid: WeekGrid) -> np.ndarray:
    flat = cube.reshape(cube.shape[0], -1)
    idx = _flat_index(grid)
    return flat[:, idx] if isinstance(idx, slice) else np.take(flat, idx, axis=1)


@dataclass(frozen=True)
class Baseline:
    """Expected value and robust spread at every [meter, time] of the input, NaN where there is no history."""

    expected: np.ndarray  # [M, T]
    sigma: np.ndarray  # [M, T]


def trailing_how_baseline(x: np.ndarray, grid: WeekGrid, max_weeks: int = 4, rel_floor: float = 0.05,
                          abs_floor: float = 1e-3) -> Baseline:
    """Median and MAD per meter and slot over up to ``max_weeks`` previous weeks.

    The spread is pooled so a slot whose few samples agree does not get zero spread: it is at least the
    meter's median MAD over all slots, ``rel_floor`` of the expected value, and ``abs_floor``.
    """
    cube = to_cube(x, grid)  # [M, W, S]
    m, w, s = cube.shape
    expected = np.full((m, w, s), np.nan, dtype=np.float32)
    spread = np.full((m, w, s), np.nan, dtype=np.float32)
    for week in range(1, w):  # a loop over weeks (a handful), each step vectorized over meters x slots
        past = [cube[:, j] for j in range(max(0, week - max_weeks), week)]
        med = median_of(past)
        mad = median_of([np.abs(v - med) for v in past])
        pooled = nanmedian_rows(mad)[:, None]
        expected[:, week] = med
        spread[:, week] = np.fmax(np.fmax(mad, pooled), np.fmax(rel_floor * np.abs(med), abs_floor))
    return Baseline(expected=from_cube(expected, grid), sigma=MAD_TO_SIGMA * from_cube(spread, grid))


def closed_hours_profile(x: np.ndarray, closed: np.ndarray, open_day: np.ndarray,
                         slot_of_day: np.ndarray, slots_per_day: int) -> tuple[np.ndarray, np.ndarray]:
    """Expected closed-hours consumption and its robust sigma at every [meter, time] (NaN where never closed).

    The level is the median over the lookback of the same slot of the day, apart for open days (evenings and
    early mornings of working days: equipment winding down, heating starting) and closed days (weekends,
    holidays). This is the meter's own closed-hours baseline that waste is measured against.
    """
    m = x.shape[0]
    kind = np.asarray(open_day, dtype=np.int64) * slots_per_day + np.asarray(slot_of_day, dtype=np.int64)
    med = np.full((m, 2 * slots_per_day), np.nan, dtype=np.float32)
    mad = np.full((m, 2 * slots_per_day), np.nan, dtype=np.float32)
    kinds = np.unique(kind[closed])
    # gather each kind's columns into one [meters x kinds x occurrences] block: two partitions in all
    cols = [np.flatnonzero(closed & (kind == k)) for k in kinds]
    width = max((c.size for c in cols), default=0)
    if width:
        idx = np.full((kinds.size, width), x.shape[1], dtype=np.int64)
        for i, c in enumerate(cols):
            idx[i, :c.size] = c
        padded = np.concatenate([x, np.full((m, 1), np.nan, dtype=np.float32)], axis=1)
        block = padded[:, idx].reshape(m * kinds.size, width)  # one gather
        k_med = nanmedian_rows(block)
        k_mad = nanmedian_rows(np.abs(block - k_med[:, None]))
        med[:, kinds] = k_med.reshape(m, kinds.size)
        mad[:, kinds] = k_mad.reshape(m, kinds.size)
    pooled = nanmedian_rows(mad)[:, None]
    sigma = MAD_TO_SIGMA * np.fmax(np.fmax(mad, pooled), 0.02 * np.abs(med))
    return np.take(med, kind, axis=1), np.take(sigma, kind, axis=1)
