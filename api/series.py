"""Query parsing for the series route: bucket text, time range and the bucket budget per request.

Errors are 422s shaped like FastAPI's own (``loc`` names the query parameter), so a client handles one format.
"""

from __future__ import annotations

import datetime as dt
import math
import re

import numpy as np
from fastapi import HTTPException

from bems.store import Matrix
from bems.store.base import QUALITY_CODE, Points, bucket_axis, to_ms
from bems.store.counters import FLAG_NAMES

MAX_BUCKETS = 5000
DEFAULT_SPAN = dt.timedelta(hours=24)
EARLIEST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
MAX_BUCKET = dt.timedelta(days=366)
_BUCKET = re.compile(r"^([1-9][0-9]{0,5})([smhd])$")
_UNIT = {"s": dt.timedelta(seconds=1), "m": dt.timedelta(minutes=1), "h": dt.timedelta(hours=1),
         "d": dt.timedelta(days=1)}


def invalid(param: str, msg: str) -> HTTPException:
    return HTTPException(422,
                         detail=[{"loc": ["query", param], "msg": msg, "type": "value_error"}])


def parse_bucket(text: str) -> dt.timedelta:
    m = _BUCKET.match(text.strip())
    if not m:
        raise invalid("bucket", f"bucket {text!r} is not a duration like 15m, 1h or 1d (units: s, m, h, d)")
    bucket = int(m.group(1)) * _UNIT[m.group(2)]
    if bucket > MAX_BUCKET:
        raise invalid("bucket", f"bucket {text!r} is longer than {MAX_BUCKET.days} days")
    return bucket


def check_time(name: str, t: dt.datetime | None) -> None:
    """Times without an offset are refused rather than guessed (UTC or Tehran?); so are years outside 2000-2099."""
    if t is None:
        return
    if t.tzinfo is None or t.utcoffset() is None:
        raise invalid(name, f"{name} must carry a UTC offset, e.g. 2026-11-21T08:00:00Z")
    if not EARLIEST <= t < LATEST:
        raise invalid(name, f"{name} must lie in 2000..2099 (UTC)")


def resolve_range(start: dt.datetime | None, end: dt.datetime | None, now: dt.datetime | None = None,
                  span: dt.timedelta = DEFAULT_SPAN) -> tuple[dt.datetime, dt.datetime]:
    """Default to the last ``span`` (24 h) up to now."""
    check_time("start", start)
    check_time("end", end)
    end = (end or now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    start = (start or end - span).astimezone(dt.UTC)
    if end <= start:
        raise invalid("end", "end must be after start")
    return start, end


def check_budget(start: dt.datetime, end: dt.datetime, bucket: dt.timedelta) -> None:
    _, _, n = bucket_axis(start, end, bucket)
    if n > MAX_BUCKETS:
        raise invalid("bucket", f"{start.isoformat()} .. {end.isoformat()} gives {n} buckets; at most "
                                f"{MAX_BUCKETS} buckets per request: widen the bucket or narrow the range")


def format_bucket(bucket: dt.timedelta) -> str:
    seconds = int(bucket.total_seconds())
    for suffix, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{suffix}"
    return f"{seconds}s"


def iso_times(matrix: Matrix) -> list[str]:
    return [t + "Z" for t in np.datetime_as_string(matrix.times, unit="s").tolist()]


def json_values(row: np.ndarray) -> list[float | None]:
    """JSON has no NaN: a bucket without data becomes null."""
    return [None if math.isnan(v) else v for v in row.tolist()]


def flag_buckets(points: Points, start: dt.datetime, bucket: dt.timedelta, n: int) -> tuple[list[int], list[list[str]]]:
    """Per bucket: how many readings carry a flag (or a quality other than good), and which flags (sorted).

    Vectorized: one ``bincount`` per flag bit and quality code, whatever the number of readings.
    """
    bms = int(bucket.total_seconds() * 1000)
    idx = (points.times.astype("datetime64[ms]").astype(np.int64) - to_ms(start)) // bms
    inside = (idx >= 0) & (idx < n)
    idx, flags, quality = idx[inside], points.flags[inside], points.quality[inside]
    flagged = np.bincount(idx[(flags != 0) | (quality != QUALITY_CODE["good"])], minlength=n)
    marks = [(name, flags & bit != 0) for bit, name in FLAG_NAMES.items()]
    marks += [(name, quality == code) for name, code in QUALITY_CODE.items() if name != "good"]
    names: list[list[str]] = [[] for _ in range(n)]
    for name, hit in marks:
        for i in np.flatnonzero(np.bincount(idx[hit], minlength=n)).tolist():
            names[i].append(name)
    return flagged.tolist(), [sorted(x) for x in names]
