"""The detectors against labelled simulator history, on a seed the thresholds were not tuned on (7 and 8 were).

Floors sit a little below what bench/detect_eval.py reaches, so a regression in any detector fails here.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from bench.detect_eval import ours, three_sigma
from bench.evaluation_data import dataset


def test_every_fault_type_found_precisely_and_better_than_three_sigma(tmp_path: Path) -> None:
    d = dataset(tmp_path, buildings=30, weeks=5, per_type=8, seed=21)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mine, naive = ours(d), three_sigma(d)
    assert len(mine) == 12
    for fault_type, score in mine.items():
        assert score.recall >= 0.9, (fault_type, score)
        assert score.precision >= 0.8, (fault_type, score)
        assert score.f1 > naive[fault_type].f1, (fault_type, score, naive[fault_type])
