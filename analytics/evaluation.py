"""Event-level scoring of detections against ground-truth labels (meter, type, start, end).

A label is found when a detected event of the type it should produce, on its meter, overlaps its window
(widened by ``tolerance`` buckets). A detected event is correct when it overlaps any label on its meter: a real
fault is behind it, even if it shows as another type too (a step also raises after-hours use). Precision,
recall and F1 are counted per fault type, on events, not on buckets.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from analytics.detectors import ANOMALY_TYPES, events

#: what each simulator fault should look like to the detectors (on the matrix it is evaluated on)
EXPECTED_TYPE = {
    "after_hours_waste": "after_hours", "holiday_waste": "holiday", "spike": "spike", "stuck": "flatline",
    "drift": "drift", "step": "step", "comm_loss": "gap", "modbus_exception": "gap", "crc_error": "gap",
    "rollover": "negative", "replacement": "negative", "word_swap": "implausible",
}


@dataclass(frozen=True)
class Label:
    meter: str
    type: str
    start: dt.datetime
    end: dt.datetime


@dataclass(frozen=True)
class Score:
    labels: int
    found: int
    detected: int
    correct: int

    @property
    def recall(self) -> float:
        return self.found / self.labels if self.labels else float("nan")

    @property
    def precision(self) -> float:
        return self.correct / self.detected if self.detected else float("nan")

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else 0.0


def _cols(times: np.ndarray, t: dt.datetime) -> int:
    return int(np.searchsorted(times, np.datetime64(t.astimezone(dt.UTC).replace(tzinfo=None), "s")))


def score_events(kind: np.ndarray, meters: Sequence[str], times: np.ndarray, labels: Iterable[Label],
                 tolerance: int = 1, typed: bool = True) -> dict[str, Score]:
    """Per fault type: how many labels were found and how many detected events were right.

    ``typed=False`` scores a detector that only says "anomalous" (the naive baselines): any event counts.
    """
    rows, s, e, k = events(kind if typed else np.where(kind >= 0, 0, -1).astype(np.int8))
    names = np.array(ANOMALY_TYPES)[k] if typed else np.full(k.shape, "any")
    index = {m: i for i, m in enumerate(meters)}
    t = np.asarray(times, dtype="datetime64[s]")
    by_type: dict[str, list[tuple[int, int, int]]] = {}
    for lab in labels:
        if lab.type in EXPECTED_TYPE and lab.meter in index:
            lo, hi = _cols(t, lab.start) - tolerance, _cols(t, lab.end) + tolerance
            by_type.setdefault(lab.type, []).append((index[lab.meter], lo, hi))
    out: dict[str, Score] = {}
    all_windows = [(r, lo, hi, ft) for ft, ws in by_type.items() for r, lo, hi in ws]
    for fault_type, windows in by_type.items():
        want = EXPECTED_TYPE[fault_type] if typed else "any"
        sel = names == want
        er, es, ee = rows[sel], s[sel], e[sel]
        found = sum(bool(np.any((er == r) & (es < hi) & (ee > lo))) for r, lo, hi in windows)
        # a detected event is no false alarm when a real fault is behind it, whatever that fault's type
        ok = np.zeros(er.size, dtype=bool)
        for r, lo, hi, _ft in all_windows:
            ok |= (er == r) & (es < hi) & (ee > lo)
        out[fault_type] = Score(labels=len(windows), found=found, detected=int(er.size), correct=int(ok.sum()))
    return out
