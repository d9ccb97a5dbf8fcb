"""Cumulative registers: what a drop in a counter means, and how much was really consumed across it.

A cumulative register (energy, a pulse counter) only rises. When a reading is lower than the one before, one of
three things happened, told apart by the values alone:

- **rollover**: an integer register passed its width and restarted at zero (a uint32 pulse counter of 0.01 m³
  wraps at 2³² × 0.01 = 42,949,672.96 m³). The previous value sat in the top ``ROLLOVER_WINDOW`` of the range
  and the wrapped step ``cur + wrap - prev`` is small; that step is the consumption.
- **reset**: the meter was replaced (or its register cleared) and counts again from zero: the new value is at
  most ``RESET_FRACTION`` of the old one. The new meter's value is the consumption of the step (it counted from
  zero); what the old meter measured after its last reading is unknowable and is not invented.
- **negative delta**: any other drop (a glitch, a misread). The step counts as zero; the series resumes from
  the lower value.

The collector applies :func:`classify_drops` to flag readings as they arrive; the stores apply the same function
when they compute consumption, from the raw values in time order. So consumption is right whatever order the
readings arrived in and however many collectors shared the stream, and the flags are a record for people.
"""

from __future__ import annotations

import numpy as np

from bems.registers import RegisterSpec

FLAG_ROLLOVER = 1
FLAG_RESET = 2
FLAG_NEGATIVE_DELTA = 4
FLAG_NAMES = {FLAG_ROLLOVER: "rollover", FLAG_RESET: "reset", FLAG_NEGATIVE_DELTA: "negative_delta"}

ROLLOVER_WINDOW = 0.01  # a wrapped step may be at most 1% of the register's range
RESET_FRACTION = 0.01  # a counter that falls to at most 1% of its last value restarted from zero


def flag_names(flags: int) -> tuple[str, ...]:
    return tuple(name for bit, name in FLAG_NAMES.items() if flags & bit)


def register_wrap(spec: RegisterSpec) -> float | None:
    """The value at which an integer register restarts from zero (2^bits x scale); None for floats."""
    if spec.type.startswith("float"):
        return None
    return float(1 << (16 * spec.words)) * spec.scale


def classify_drops(prev: np.ndarray, cur: np.ndarray, wrap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per step from ``prev`` to ``cur``: the consumption (never negative) and its flag bits.

    ``wrap`` is the register's wrap value per step, NaN where the register does not wrap (floats, unknown).
    """
    prev = np.asarray(prev, dtype=np.float64)
    cur = np.asarray(cur, dtype=np.float64)
    wrap = np.broadcast_to(np.asarray(wrap, dtype=np.float64), prev.shape)
    step = cur - prev
    drop = step < 0
    with np.errstate(invalid="ignore"):
        wrapped = cur + wrap - prev
        rollover = drop & (wrapped >= 0) & (wrapped <= ROLLOVER_WINDOW * wrap)
    reset = drop & ~rollover & (cur >= 0) & (cur <= RESET_FRACTION * prev)
    negative = drop & ~rollover & ~reset
    delta = np.where(rollover, wrapped, np.where(reset, cur, np.where(negative, 0.0, step)))
    flags = (rollover * FLAG_ROLLOVER) | (reset * FLAG_RESET) | (negative * FLAG_NEGATIVE_DELTA)
    return delta, flags.astype(np.int64)
