"""The time-series store interface: every backend passes the same contract tests (tests/test_store_contract.py)."""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from bems.errors import StoreError
from bems.store.counters import classify_drops, flag_names
from bems.wire import Reading

Agg = Literal["mean", "min", "max", "sum", "first", "last", "count"]
AGGS: tuple[Agg, ...] = ("mean", "min", "max", "sum", "first", "last", "count")
QUALITY_CODE = {"good": 0, "uncertain": 1, "bad": 2}
QUALITY_NAME = {v: k for k, v in QUALITY_CODE.items()}
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
DAY_MS = 86_400_000
ROLLUP_MS = 30 * 60 * 1000  # rollup period: whole UTC hours and Tehran's :30 hours are both made of it
_MS = dt.timedelta(milliseconds=1)


def to_ms(t: dt.datetime) -> int:
    if t.tzinfo is None:
        raise ValueError("naive datetime: store times are UTC and must carry tzinfo")
    return (t - EPOCH) // _MS


def from_ms(ms: int) -> dt.datetime:
    return EPOCH + dt.timedelta(milliseconds=ms)


class StoreUnavailable(StoreError):
    """The store is down, overloaded or throttling: keep the batch and retry, after ``retry_after`` s if given."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message, retryable=True)
        self.retry_after = retry_after


class StoreRejected(StoreError):
    """The store refused the batch itself (a 4xx): retrying cannot help; the message is the server's."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


def retry_after_seconds(value: str | None) -> float | None:
    """Parse an HTTP Retry-After header given in seconds (the HTTP-date form is rare for APIs and ignored)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


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
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Points:
    """Raw readings of one field of one meter in time order (no aggregation)."""

    times: np.ndarray  # datetime64[ms] (UTC)
    values: np.ndarray  # float64
    quality: np.ndarray  # int8 codes of QUALITY_CODE
    flags: np.ndarray  # int64 bits of bems.store.counters
    seq: np.ndarray  # int64

    def flag_names(self) -> list[tuple[str, ...]]:
        return [flag_names(int(f)) for f in self.flags]


@dataclass(frozen=True)
class SignedPoints:
    """Stored readings of one meter in time order, with all that rebuilds their signed bytes (bems.signing):
    every field of each point, its edge, sequence number, and the key id, batch signature and proof it came with."""

    ts_ms: np.ndarray  # int64
    seq: np.ndarray  # int64
    edge: list[str]
    values: list[dict[str, float]]
    kid: list[str | None]
    sig: list[str | None]
    proof: list[str | None]

    def __len__(self) -> int:
        return len(self.edge)


@dataclass(frozen=True)
class Drops:
    """Readings of a cumulative field lower than the reading before them: row of the meter, time, both values."""

    rows: np.ndarray  # intp, index into the requested meters
    ts_ms: np.ndarray  # int64
    prev: np.ndarray  # float64
    cur: np.ndarray  # float64

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[int, int, float, float]]) -> Drops:
        arr = np.array(rows, dtype=np.float64).reshape(-1, 4)
        return cls(rows=arr[:, 0].astype(np.intp), ts_ms=arr[:, 1].astype(np.int64), prev=arr[:, 2], cur=arr[:, 3])


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
    def write(self, readings: Sequence[Reading], flags: Sequence[int] | None = None) -> WriteResult:
        """Store readings; the same (meter, timestamp) stored twice is kept once and counted as a duplicate.

        ``flags`` (bits of bems.store.counters, one per reading) are the collector's quality flags. Raises
        StoreUnavailable (retry later) or StoreRejected (the batch itself is refused).
        """

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

    def points(self, meter: str, field: str, start: dt.datetime, end: dt.datetime) -> Points:
        """Raw readings of ``field`` in [start, end) with their quality and flags."""
        raise NotImplementedError(f"{type(self).__name__} does not read raw points")

    def signed_points(self, meter: str, start: dt.datetime, end: dt.datetime) -> SignedPoints:
        """Every stored reading of ``meter`` in [start, end), time order, as bems.verify checks it."""
        raise NotImplementedError(f"{type(self).__name__} does not read signed points")

    def day_counts(self, meters: Sequence[str], start: dt.datetime, end: dt.datetime) -> dict[str, dict[int, int]]:
        """Readings per meter and UTC day in [start, end): meter -> {day start in ms: count}, days with data only."""
        raise NotImplementedError(f"{type(self).__name__} does not count readings by day")

    def counter_drops(self, meters: Sequence[str], field: str, start: dt.datetime, end: dt.datetime) -> Drops:
        """Readings in [start, end) lower than the reading of the same meter before them (also in the range)."""
        raise NotImplementedError(f"{type(self).__name__} does not find counter drops")

    def register_counters(self, wraps: Mapping[tuple[str, str], float | None]) -> None:  # noqa: B027
        """Record, per (meter, field) of a cumulative register, the value at which it wraps (None: never)."""

    def counter_wraps(self, meters: Sequence[str], field: str) -> np.ndarray:
        """Wrap value per meter for ``field`` as recorded by :meth:`register_counters`; NaN where unknown."""
        return np.full(len(meters), np.nan)

    def rollup_corrections(self, meters: Sequence[str], field: str, start: dt.datetime, end: dt.datetime,
                           bucket: dt.timedelta) -> np.ndarray:
        """Counter corrections per bucket recorded when raw readings were rolled up, for the buckets that
        read_matrix takes from the rollups; NaN for the buckets read from raw readings."""
        _, _, n = bucket_axis(start, end, bucket)
        return np.full((len(meters), n), np.nan)

    def enforce_retention(self, raw: dt.timedelta, now: dt.datetime | None = None) -> int:
        """Keep raw readings for ``raw``, aggregates for good; the number of raw rows deleted (if known)."""
        return 0

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
        """Consumption per bucket from a cumulative register: the rise of its last value from bucket to bucket,
        corrected where the register dropped (rollover, meter replaced, glitch; see bems.store.counters).

        The bucket before ``start`` is read too, so the first bucket has a delta. A bucket with no reading, the
        bucket after it, and a drop the store cannot classify (its raw readings are gone) give NaN rather than
        a made-up number.
        """
        s, bms, _ = bucket_axis(start, end, bucket)
        lo = from_ms(s - bms)
        last = self.read_matrix(meters, field, lo, end, bucket, "last")
        values = np.diff(last.values, axis=1)
        rolled = self.rollup_corrections(meters, field, lo, end, bucket)[:, 1:]
        covered = ~np.isnan(rolled)  # buckets whose raw readings are (or may be) gone
        values[covered] += rolled[covered]
        drops = self.counter_drops(meters, field, lo, end)
        if drops.rows.size:
            wraps = self.counter_wraps(meters, field)
            delta, _ = classify_drops(drops.prev, drops.cur, wraps[drops.rows])
            correction = delta - (drops.cur - drops.prev)
            col = (drops.ts_ms - (s - bms)) // bms - 1  # a drop in bucket j corrects the step into bucket j
            ok = (col >= 0) & (col < values.shape[1])
            ok[ok] = ~covered[drops.rows[ok], col[ok]]
            np.add.at(values, (drops.rows[ok], col[ok]), correction[ok])
        values[values < 0] = np.nan  # a drop the store could not explain: unknown, not negative
        return Matrix(meters=last.meters, times=last.times[1:], values=values, field=field, bucket=bucket)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def merge_rollup(out: Matrix, rolled: Matrix, start_ms: int, bucket_ms: int, horizon_ms: int) -> None:
    """Take the buckets wholly before ``horizon_ms`` (where raw readings are gone) from the rollups."""
    k = min(out.values.shape[1], (horizon_ms - start_ms) // bucket_ms)
    if k <= 0:
        return
    have = ~np.isnan(rolled.values[:, :k])
    out.values[:, :k][have] = rolled.values[:, :k][have]


def covered_buckets(start_ms: int, bucket_ms: int, n: int, horizon_ms: int | None) -> int:
    """How many leading buckets read_matrix takes from the rollups (0 when it cannot)."""
    if not rollup_usable(start_ms, bucket_ms, horizon_ms):
        return 0
    assert horizon_ms is not None
    return max(0, min(n, (horizon_ms - start_ms) // bucket_ms))


def rollup_usable(start_ms: int, bucket_ms: int, horizon_ms: int | None) -> bool:
    return (horizon_ms is not None and start_ms + bucket_ms <= horizon_ms and bucket_ms % ROLLUP_MS == 0
            and start_ms % ROLLUP_MS == 0)


def empty_matrix(meters: Sequence[str], field: str, start_ms: int, bucket_ms: int, n: int) -> Matrix:
    times = (np.arange(n, dtype=np.int64) * bucket_ms + start_ms).astype("datetime64[ms]").astype("datetime64[s]")
    return Matrix(meters=tuple(meters), times=times, values=np.full((len(meters), n), np.nan),
                  field=field, bucket=dt.timedelta(milliseconds=bucket_ms))
