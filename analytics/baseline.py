"""Robust hour-of-week baselines, computed for every meter at once on a [meters x weeks x slots] cube.

The baseline of a week comes only from the weeks before it (a trailing median), as it would in production: a
fault that lasts for days then stands out against the weeks that preceded it instead of pulling its own
baseline toward itself.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from analytics.fastops import nanmedian_rows, nanmedian_small

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


def to_cube(x: np.ndarray, grid: WeekGrid) -> np.ndarray:
    cube = np.full((x.shape[0], grid.weeks, grid.slots), np.nan, dtype=np.float32)
    cube[:, grid.week, grid.slot] = x
    return cube


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
    cube = to_cube(x, grid).transpose(0, 2, 1)  # [M, S, W]: the weeks of a slot side by side
    m, s, w = cube.shape
    expected = np.full((m, s, w), np.nan, dtype=np.float32)
    spread = np.full((m, s, w), np.nan, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices are expected: no history yet
        for week in range(1, w):  # a loop over weeks (a handful), each step vectorized over meters x slots
            past = cube[:, :, max(0, week - max_weeks):week]
            med = nanmedian_small(past)
            mad = nanmedian_small(np.abs(past - med[:, :, None]))
            pooled = nanmedian_rows(mad)[:, None]
            expected[:, :, week] = med
            spread[:, :, week] = np.fmax(np.fmax(mad, pooled), np.fmax(rel_floor * np.abs(med), abs_floor))
    return Baseline(expected=expected[:, grid.slot, grid.week],
                    sigma=MAD_TO_SIGMA * spread[:, grid.slot, grid.week])


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
    for k in np.unique(kind[closed]):  # at most 2 x slots per day steps, each over all meters
        v = x[:, closed & (kind == k)]
        med[:, k] = nanmedian_rows(v)
        mad[:, k] = nanmedian_rows(np.abs(v - med[:, k:k + 1]))
    pooled = nanmedian_rows(mad)[:, None]
    sigma = MAD_TO_SIGMA * np.fmax(np.fmax(mad, pooled), 0.02 * np.abs(med))
    return med[:, kind], sigma[:, kind]
