"""The time-series store interface: every backend passes the same contract tests (tests/test_store_contract.py)."""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from bems.wire import Reading

Agg = Literal["mean", "min", "max", "sum", "first", "last", "count"]
AGGS: tuple[Agg, ...] = ("mean", "min", "max", "sum", "first", "last", "count")
QUALITY_CODE = {"good": 0, "uncertain": 1, "bad": 2}
QUALITY_NAME = {v: k for k, v in QUALITY_CODE.items()}
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def to_ms(t: dt.datetime) -> int:
    if t.tzinfo is None:
        raise ValueError("naive datetime: store times are UTC and must carry tzinfo")
    return (t - EPOCH) // dt.timedelta(milliseconds=1)


def from_ms(ms: int) -> dt.datetime:
    return EPOCH + dt.timedelta(milliseconds=ms)


@dataclass(frozen=True)
class WriteResult:
    written: int
    duplicates: int


@dataclass(frozen=True)
class Matrix:
    """A ``[meters x buckets]`` block of one field; NaN where a bucket holds no data."""

    meters: tuple[str, ...]
    times: np.ndarray  # datetime64[s], bucket starts (UTC)
    values: np.ndarray  # float64, shape (len(meters), len(times))
    field: str
    bucket: dt.timedelta

    def row(self, meter: str) -> np.ndarray:
        return self.values[self.meters.index(meter)]


@dataclass(frozen=True)
class Latest:
    meter: str
    ts: dt.datetime
    values: dict[str, float]
    quality: str


def bucket_axis(start: dt.datetime, end: dt.datetime, bucket: dt.timedelta) -> tuple[int, int, int]:
    """Return (start_ms, bucket_ms, number of buckets covering [start, end)).

    Buckets start at ``start``, not at the epoch: Tehran is UTC+03:30, so its local hours begin at :30 UTC and
    the caller, who knows the building's zone, decides the alignment.
    """
    bms = int(bucket.total_seconds() * 1000)
    if bms <= 0:
        raise ValueError("bucket must be positive")
    s = to_ms(start)
    e = to_ms(end)
    if e <= s:
        raise ValueError("end must be after start")
    return s, bms, -(-(e - s) // bms)


class Store(ABC):
    """Readings in, ``[meters x time]`` matrices out."""

    @abstractmethod
    def write(self, readings: Sequence[Reading]) -> WriteResult:
        """Store readings; the same (meter, timestamp) stored twice is kept once and counted as a duplicate."""

    @abstractmethod
    def read_matrix(self, meters: Sequence[str], field: str, start: dt.datetime, end: dt.datetime,
                    bucket: dt.timedelta, agg: Agg = "mean") -> Matrix:
        """Aggregate ``field`` per meter into buckets of ``bucket`` starting at ``start``."""

    @abstractmethod
    def latest(self, meters: Sequence[str]) -> dict[str, Latest]:
        """The newest reading of each meter that has one."""

    @abstractmethod
    def count(self, meter: str | None = None) -> int:
        """Number of stored readings (distinct meter + timestamp)."""

    @abstractmethod
    def sequences(self, meter: str) -> list[int]:
        """Sequence numbers stored for a meter, in time order (used to prove exactly-once delivery)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def write_columns(self, meters: Sequence[str], buildings: Sequence[str], times: np.ndarray,
                      columns: Mapping[str, np.ndarray], *, edge: str, valid: np.ndarray | None = None,
                      batch: int = 20_000) -> WriteResult:
        """Bulk write of a ``[meters x time]`` block (history, imports): one reading per meter and time with its
        non-NaN fields; ``times`` is ``datetime64`` ``[T]`` or ``[M, T]``; ``valid`` False drops a reading.

        This default builds readings meter by meter and calls :meth:`write` in batches; a backend may override
        it with a path that skips the reading objects. Sequence numbers are the time index.
        """
        names = list(columns)
        if not names or not len(meters):
            return WriteResult(0, 0)
        stack = np.stack([np.asarray(columns[n], dtype=np.float64) for n in names])  # [F, M, T]
        present = ~np.isnan(stack)
        keep = present.any(axis=0)
        if valid is not None:
            keep &= np.asarray(valid, dtype=bool)
        ms = np.broadcast_to(np.asarray(times).astype("datetime64[ms]").astype(np.int64), keep.shape)
        stamp = {int(v): from_ms(int(v)) for v in np.unique(ms[keep])}
        fields_set = set(Reading.model_fields)
        written = duplicates = 0
        pending: list[Reading] = []
        for row in range(len(meters)):
            cols = np.flatnonzero(keep[row])
            if not cols.size:
                continue
            used = present[:, row, cols]
            own = [i for i in range(len(names)) if used[i].any()]
            own_names = [names[i] for i in own]
            dense = bool(used[own].all())  # the usual case: every reading has the same fields
            vals = stack[own][:, row, cols].T.tolist()
            flags = None if dense else used[own].T.tolist()
            meter, building = meters[row], buildings[row]
            for k, (c, t) in enumerate(zip(cols.tolist(), ms[row, cols].tolist(), strict=True)):
                values = (dict(zip(own_names, vals[k], strict=True)) if flags is None else
                          {n: x for n, x, ok in zip(own_names, vals[k], flags[k], strict=True) if ok})
                pending.append(Reading.model_construct(_fields_set=fields_set, v=1, meter=meter, building=building,
                                                       edge=edge, ts=stamp[t], seq=c, values=values,
                                                       quality="good"))
            if len(pending) >= batch:
                res = self.write(pending)
                written, duplicates, pending = written + res.written, duplicates + res.duplicates, []
        if pending:
            res = self.write(pending)
            written, duplicates = written + res.written, duplicates + res.duplicates
        return WriteResult(written, duplicates)

    def read_consumption(self, meters: Sequence[str], field: str, start: dt.datetime, end: dt.datetime,
                         bucket: dt.timedelta) -> Matrix:
        """Consumption per bucket from a cumulative register: the rise of its last value from bucket to bucket.

        The bucket before ``start`` is read too, so the first bucket has a delta. A negative delta (reset or
        rollover) and a bucket after a gap give NaN rather than a made-up number.
        """
        s, bms, _ = bucket_axis(start, end, bucket)
        last = self.read_matrix(meters, field, from_ms(s - bms), end, bucket, "last")
        values = np.diff(last.values, axis=1)
        values[values < 0] = np.nan
        return Matrix(meters=last.meters, times=last.times[1:], values=values, field=field, bucket=bucket)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def empty_matrix(meters: Sequence[str], field: str, start_ms: int, bucket_ms: int, n: int) -> Matrix:
    times = (np.arange(n, dtype=np.int64) * bucket_ms + start_ms).astype("datetime64[ms]").astype("datetime64[s]")
    return Matrix(meters=tuple(meters), times=times, values=np.full((len(meters), n), np.nan),
                  field=field, bucket=dt.timedelta(milliseconds=bucket_ms))
