"""``bems detect``: run the detectors on a long CSV export, without the pipeline.

Input columns ``series_id,timestamp,value`` (ISO 8601 timestamps with an offset or ``Z``; value = consumption per
interval, any regular interval). Output: ``series_id,timestamp,score,is_anomaly,type`` for every input row, in
input order. A bad or irregular row is an error naming its line, or, with ``skip_bad``, skipped and counted.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from analytics.detectors import DetectorParams, detect
from bems.calendar import OfficeCalendar, default_calendar
from bems.errors import BemsError

HEADER = ["series_id", "timestamp", "value"]


class InputError(BemsError):
    """The CSV cannot be used as it is; the message names the line."""


@dataclass
class Report:
    rows: int = 0
    skipped: int = 0
    anomalies: int = 0
    series: int = 0
    skipped_lines: list[str] = field(default_factory=list)


@dataclass
class _Series:
    lines: list[int] = field(default_factory=list)
    times: list[int] = field(default_factory=list)  # epoch seconds
    values: list[float] = field(default_factory=list)


def _parse_time(text: str) -> int:
    t = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if t.tzinfo is None:
        raise ValueError("timestamp has no UTC offset (add Z or +03:30)")
    return int(t.timestamp())


def read_rows(path: Path, skip_bad: bool, report: Report) -> tuple[dict[str, _Series], list[tuple[str, int]]]:
    """Parse the CSV; returns the series and, in input order, (series id, index in that series) per kept row."""
    series: dict[str, _Series] = defaultdict(_Series)
    order: list[tuple[str, int]] = []

    def bad(line: int, why: str) -> None:
        if not skip_bad:
            raise InputError(f"{path}: line {line}: {why} (fix it, or pass --skip-bad to skip such rows)")
        report.skipped += 1
        if len(report.skipped_lines) < 20:
            report.skipped_lines.append(f"line {line}: {why}")

    try:
        fh = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from exc
    with fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != HEADER:
            raise InputError(f"{path}: line 1: expected the header {','.join(HEADER)}, got {header!r}")
        for line, row in enumerate(reader, start=2):
            report.rows += 1
            if len(row) != 3:
                bad(line, f"expected 3 columns, got {len(row)}")
                continue
            sid, ts, val = row
            if not sid.strip():
                bad(line, "empty series_id")
                continue
            try:
                t = _parse_time(ts)
            except ValueError as exc:
                bad(line, f"timestamp {ts!r} is not ISO 8601 with an offset: {exc}")
                continue
            try:
                v = float(val)
            except ValueError:
                bad(line, f"value {val!r} is not a number")
                continue
            if not math.isfinite(v):
                bad(line, f"value {val!r} is not finite")
                continue
            s = series[sid.strip()]
            order.append((sid.strip(), len(s.times)))
            s.lines.append(line)
            s.times.append(t)
            s.values.append(v)
    return series, order


def _grid(sid: str, s: _Series, path: Path, skip_bad: bool, report: Report) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Sort one series and place it on its regular grid: (start, step, column of each row, keep mask)."""
    times = np.array(s.times, dtype=np.int64)
    order = np.argsort(times, kind="stable")
    st = times[order]
    diffs = np.diff(st)
    positive = diffs[diffs > 0]
    if positive.size == 0:
        raise InputError(f"{path}: series {sid!r} has fewer than two distinct timestamps; cannot infer its interval")
    step = int(np.median(positive))
    keep = np.ones(times.size, dtype=bool)
    off = (st - st[0]) % step
    dup = np.concatenate([[False], diffs == 0])
    problems = (off != 0) | dup
    if problems.any():
        for i in np.flatnonzero(problems):
            line = s.lines[order[i]]
            why = (f"timestamp repeats in series {sid!r}" if dup[i] else
                   f"timestamp is off the {step} s grid of series {sid!r} (irregular interval)")
            if not skip_bad:
                raise InputError(f"{path}: line {line}: {why} (fix it, or pass --skip-bad to skip such rows)")
            report.skipped += 1
            keep[order[i]] = False
    cols = np.empty(times.size, dtype=np.int64)
    cols[order] = (st - st[0]) // step
    return int(st[0]), step, cols, keep


def run(input_path: Path, output_path: Path, *, skip_bad: bool = False, params: DetectorParams | None = None,
        calendar: OfficeCalendar | None = None) -> Report:
    calendar = calendar or default_calendar()
    report = Report()
    series, order = read_rows(input_path, skip_bad, report)
    report.series = len(series)
    results: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    groups: dict[tuple[int, int], list[tuple[str, int, np.ndarray, np.ndarray]]] = defaultdict(list)
    for sid, s in series.items():
        start, step, cols, keep = _grid(sid, s, input_path, skip_bad, report)
        groups[(step, start % step)].append((sid, start, cols, keep))
    for (step, _phase), members in groups.items():  # one matrix per interval and phase, all its series at once
        t0 = min(m[1] for m in members)
        t_end = max(m[1] + int(m[2].max()) * step for m in members)
        n = (t_end - t0) // step + 1
        x = np.full((len(members), n), np.nan, dtype=np.float32)
        index = []
        for r, (sid, start, cols, keep) in enumerate(members):
            shift = (start - t0) // step
            c = cols + shift
            x[r, c[keep]] = np.asarray(series[sid].values, dtype=np.float32)[keep]
            index.append(c)
        times = (t0 + np.arange(n, dtype=np.int64) * step).astype("datetime64[s]")
        masks = calendar.bucket_masks(times, np.timedelta64(step, "s"))
        det = detect(x, masks=masks, step_minutes=max(1, step // 60), params=params, with_expected=False)
        names = det.type_names()
        for r, (sid, _start, _cols, keep) in enumerate(members):
            c = index[r]
            results[sid] = (det.score[r, c], det.kind[r, c] >= 0, names[r, c], keep)
    with output_path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["series_id", "timestamp", "score", "is_anomaly", "type"])
        for sid, i in order:
            score, flag, names, keep = results[sid]
            if not keep[i]:
                continue
            ts = dt.datetime.fromtimestamp(series[sid].times[i], dt.UTC).isoformat().replace("+00:00", "Z")
            report.anomalies += bool(flag[i])
            w.writerow([sid, ts, f"{float(score[i]):.3f}", "true" if flag[i] else "false", names[i]])
    return report
