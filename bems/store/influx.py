"""InfluxDB backends: line protocol in, InfluxQL ``/query`` out (1.x answers it natively, 2.x through its DBRP
mapping, 3.x natively).

- ``influx://host:port/db`` (:class:`InfluxV1Store`): writes to the 1.x ``/write`` endpoint.
- ``influx2://host:port/bucket?org=ORG`` (:class:`InfluxV2Store`): writes through ``influxdb-client``'s v2 write
  API (InfluxDB 2.x, 3.x, Cloud); the token comes from the caller or ``INFLUXDB_V2_TOKEN``, never from the URL.

Points are keyed by measurement + tags (meter) + time, so writing the same reading twice overwrites it: writes
are idempotent by design. InfluxDB cannot tell which points already existed, so ``WriteResult.duplicates`` is 0
here; the collector counts duplicates with its bounded cache of recently written keys.

Failures are sorted for the caller: unreachable, 429 and 5xx raise StoreUnavailable (with the server's
Retry-After), any other 4xx raises StoreRejected with the server's message.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np

from bems.errors import ConfigError, StoreError
from bems.store.base import (
    QUALITY_CODE,
    QUALITY_NAME,
    Agg,
    Drops,
    Latest,
    Matrix,
    Points,
    SignedPoints,
    Store,
    StoreRejected,
    StoreUnavailable,
    WriteResult,
    bucket_axis,
    covered_buckets,
    empty_matrix,
    from_ms,
    merge_rollup,
    retry_after_seconds,
    rollup_usable,
    to_ms,
)
from bems.store.counters import classify_drops, flag_names
from bems.wire import Reading

log = logging.getLogger("bems.store")

MEASUREMENT = "reading"
COUNTER_MEASUREMENT = "counter"
LONG_RP = "bems_long"  # 1.x: where the counter registry and the 30-minute aggregates live
ROLLUP_MEASUREMENT = "reading_30m"
ROLLUP_CQ = "bems_rollup"
CORRECTION_MEASUREMENT = "counter_corr"
META_MEASUREMENT = "bems_meta"
_ROLLUP_AGG = {"mean": 'sum("sum_{f}") / sum("count_{f}")', "min": 'min("min_{f}")', "max": 'max("max_{f}")',
               "sum": 'sum("sum_{f}")', "count": 'sum("count_{f}")', "first": 'first("first_{f}")',
               "last": 'last("last_{f}")'}
_DURATION = re.compile(r"(\d+)([hms])")
_SAFE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_INFLUX_AGG = {"mean": "mean", "min": "min", "max": "max", "sum": "sum", "count": "count",
               "first": "first", "last": "last"}
_NOT_VALUES = ("seq", "edge", "building", "meter", "quality", "flags", "kid", "sig", "proof")


def _string_field(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def line_protocol(r: Reading, flags: int = 0) -> str:
    """One reading as one line; meter, building and edge ids are slugs (the wire model enforces it), so the
    tags need no escaping and the edge string field only quoting."""
    fields = ",".join([f"{k}={v!r}" for k, v in r.values.items()])
    signed = f",kid={_string_field(r.kid)},sig={_string_field(r.sig)}" if r.kid and r.sig else ""
    if signed and r.proof:
        signed += f",proof={_string_field(r.proof)}"
    return (f"{MEASUREMENT},meter={r.meter},building={r.building} {fields},seq={r.seq}i,"
            f"quality={QUALITY_CODE[r.quality]}i,flags={flags}i,edge={_string_field(r.edge)}{signed} {to_ms(r.ts)}")


def lines_body(readings: Sequence[Reading], flags: Sequence[int] | None = None) -> bytes:
    if flags is None:
        return "\n".join([line_protocol(r) for r in readings]).encode()
    return "\n".join([line_protocol(r, f) for r, f in zip(readings, flags, strict=True)]).encode()


def _regex_of(names: Sequence[str]) -> str:
    for n in names:
        if not _SAFE.match(n):
            raise ValueError(f"unsafe identifier {n!r}")
    return "/^(" + "|".join(re.escape(n).replace("/", r"\/") for n in names) + ")$/"


def _safe_field(field: str) -> str:
    if not _SAFE.match(field):
        raise ValueError(f"unsafe field name {field!r}")
    return field


def _duration_ms(text: str) -> int:
    """InfluxDB's ``168h0m0s`` in ms (0 means infinite)."""
    unit = {"h": 3_600_000, "m": 60_000, "s": 1000}
    return sum(int(n) * unit[u] for n, u in _DURATION.findall(text))


def _http_failure(what: str, status: int, message: str, retry_after: str | None) -> StoreError:
    if status == 429 or status >= 500 or status == 0:
        return StoreUnavailable(f"{what} answered {status}: {message[:300]}",
                                retry_after=retry_after_seconds(retry_after))
    return StoreRejected(f"{what} answered {status}: {message[:500]}")


class _InfluxQLStore(Store):
    """Reads (InfluxQL over HTTP) shared by the 1.x and 2.x backends; subclasses say how to write."""

    database: str
    base: str
    _http: httpx.Client

    def _post(self, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = self._http.post(path, **kw)
        except httpx.HTTPError as exc:
            raise StoreUnavailable(f"InfluxDB at {self.base} unreachable: {exc}; is it running?") from exc
        if resp.status_code >= 300:
            raise _http_failure(f"InfluxDB {path}", resp.status_code, resp.text.strip(),
                                resp.headers.get("Retry-After"))
        return resp

    def query(self, q: str) -> list[dict]:
        resp = self._post("/query", data={"q": q, "db": self.database, "epoch": "ms"})
        results = resp.json().get("results", [])
        for res in results:
            if "error" in res:
                raise StoreError(f"InfluxQL error: {res['error']}", retryable=False)
        return [s for res in results for s in res.get("series", [])]

    def read_matrix(self, meters: Sequence[str], field: str, start: dt.datetime, end: dt.datetime,
                    bucket: dt.timedelta, agg: Agg = "mean") -> Matrix:
        if agg not in _INFLUX_AGG:
            raise ValueError(f"unknown aggregate {agg!r}; allowed: {', '.join(_INFLUX_AGG)}")
        _safe_field(field)
        s, bms, n = bucket_axis(start, end, bucket)
        out = empty_matrix(meters, field, s, bms, n)
        if not meters:
            return out
        q = (f'SELECT {_INFLUX_AGG[agg]}("{field}") FROM {MEASUREMENT} WHERE meter =~ {_regex_of(meters)} '
             f"AND time >= {s}ms AND time < {to_ms(end)}ms GROUP BY time({bms}ms, {s % bms}ms), meter fill(none)")
        self._fill(out, self.query(q), meters, s, bms)
        horizon = self._raw_horizon()
        if rollup_usable(s, bms, horizon):
            assert horizon is not None
            rolled = empty_matrix(meters, field, s, bms, n)
            expr = _ROLLUP_AGG[agg].format(f=field)
            q = (f"SELECT {expr} FROM {self._rollup_source()} WHERE meter =~ {_regex_of(meters)} AND time >= {s}ms "
                 f"AND time < {min(to_ms(end), horizon)}ms GROUP BY time({bms}ms, {s % bms}ms), meter fill(none)")
            self._fill(rolled, self.query(q), meters, s, bms)
            merge_rollup(out, rolled, s, bms, horizon)
        return out

    @staticmethod
    def _fill(out: Matrix, found: list[dict], meters: Sequence[str], s: int, bms: int) -> None:
        index = {m: i for i, m in enumerate(meters)}
        n = out.values.shape[1]
        for series in found:
            row = index.get(series.get("tags", {}).get("meter", ""))
            if row is None or not series.get("values"):
                continue
            arr = np.array([(t, np.nan if v is None else v) for t, v in series["values"]], dtype=np.float64)
            cols = ((arr[:, 0].astype(np.int64) - s) // bms).astype(np.intp)
            ok = (cols >= 0) & (cols < n)
            out.values[row, cols[ok]] = arr[ok, 1]

    def _rollup_source(self, measurement: str = ROLLUP_MEASUREMENT) -> str:
        return measurement

    def _raw_horizon(self) -> int | None:
        """Before this time (ms) raw points may be gone (InfluxDB drops whole shards), so rollups are read."""
        return None

    def latest(self, meters: Sequence[str]) -> dict[str, Latest]:
        if not meters:
            return {}
        q = (f"SELECT * FROM {MEASUREMENT} WHERE meter =~ {_regex_of(meters)} "
             "GROUP BY meter ORDER BY time DESC LIMIT 1")
        out: dict[str, Latest] = {}
        for series in self.query(q):
            meter = series["tags"]["meter"]
            row = dict(zip(series["columns"], series["values"][0], strict=True))
            ts = from_ms(int(row.pop("time")))
            quality = QUALITY_NAME.get(int(row.get("quality") or 0), "good")
            values = {k: float(v) for k, v in row.items()
                      if k not in _NOT_VALUES and v is not None and isinstance(v, int | float)}
            out[meter] = Latest(meter=meter, ts=ts, values=values, quality=quality,
                                flags=flag_names(int(row.get("flags") or 0)))
        return out

    def count(self, meter: str | None = None) -> int:
        where = f" WHERE meter =~ {_regex_of([meter])}" if meter else ""
        series = self.query(f"SELECT count(seq) FROM {MEASUREMENT}{where}")
        return int(series[0]["values"][0][1]) if series else 0

    def sequences(self, meter: str) -> list[int]:
        series = self.query(f"SELECT seq FROM {MEASUREMENT} WHERE meter =~ {_regex_of([meter])}")
        return [int(v[1]) for s in series for v in s["values"]]

    def points(self, meter: str, field: str, start: dt.datetime, end: dt.datetime) -> Points:
        _safe_field(field)
        series = self.query(f'SELECT "{field}", quality, flags, seq FROM {MEASUREMENT} '
                            f"WHERE meter =~ {_regex_of([meter])} AND time >= {to_ms(start)}ms "
                            f"AND time < {to_ms(end)}ms")
        rows = [v for s in series for v in s["values"] if v[1] is not None]
        return Points(times=np.array([r[0] for r in rows], dtype=np.int64).astype("datetime64[ms]"),
                      values=np.array([r[1] for r in rows], dtype=np.float64),
                      quality=np.array([r[2] or 0 for r in rows], dtype=np.int8),
                      flags=np.array([r[3] or 0 for r in rows], dtype=np.int64),
                      seq=np.array([r[4] or 0 for r in rows], dtype=np.int64))

    def signed_points(self, meter: str, start: dt.datetime, end: dt.datetime) -> SignedPoints:
        """One query; every field of the measurement comes back as a column (None where a point lacks it)."""
        series = self.query(f"SELECT * FROM {MEASUREMENT} WHERE meter =~ {_regex_of([meter])} "
                            f"AND time >= {to_ms(start)}ms AND time < {to_ms(end)}ms")
        ts: list[int] = []
        seq: list[int] = []
        edge: list[str] = []
        values: list[dict[str, float]] = []
        kid: list[str | None] = []
        sig: list[str | None] = []
        proof: list[str | None] = []
        for s in series:
            cols = s["columns"]
            at = {c: i for i, c in enumerate(cols)}
            own = [(c, i) for i, c in enumerate(cols) if c != "time" and c not in _NOT_VALUES]
            for row in s["values"]:
                ts.append(int(row[at["time"]]))
                seq.append(int(row[at["seq"]] or 0))
                edge.append(row[at["edge"]] or "")
                kid.append(row[at["kid"]] if "kid" in at else None)
                sig.append(row[at["sig"]] if "sig" in at else None)
                proof.append(row[at["proof"]] if "proof" in at else None)
                values.append({c: float(row[i]) for c, i in own if isinstance(row[i], int | float)})
        order = np.argsort(np.array(ts, dtype=np.int64), kind="stable")
        pick = order.tolist()
        return SignedPoints(ts_ms=np.array(ts, dtype=np.int64)[order], seq=np.array(seq, dtype=np.int64)[order],
                            edge=[edge[i] for i in pick], values=[values[i] for i in pick],
                            kid=[kid[i] for i in pick], sig=[sig[i] for i in pick],
                            proof=[proof[i] for i in pick])

    def day_counts(self, meters: Sequence[str], start: dt.datetime, end: dt.datetime) -> dict[str, dict[int, int]]:
        if not meters:
            return {}
        series = self.query(f"SELECT count(seq) FROM {MEASUREMENT} WHERE meter =~ {_regex_of(meters)} "
                            f"AND time >= {to_ms(start)}ms AND time < {to_ms(end)}ms "
                            "GROUP BY time(1d), meter fill(none)")
        return {s["tags"]["meter"]: {int(t): int(n) for t, n in s["values"] if n} for s in series}

    def counter_drops(self, meters: Sequence[str], field: str, start: dt.datetime, end: dt.datetime) -> Drops:
        """``difference()`` in a subquery finds the drops server side; a second query fetches their values."""
        _safe_field(field)
        if not meters:
            return Drops.from_rows([])
        where = f"meter =~ {_regex_of(meters)} AND time >= {to_ms(start)}ms AND time < {to_ms(end)}ms"
        found = self.query(f'SELECT d FROM (SELECT difference("{field}") AS d FROM {MEASUREMENT} WHERE {where} '
                           "GROUP BY meter) WHERE d < 0 GROUP BY meter")
        diffs = {(s["tags"]["meter"], int(t)): float(d) for s in found for t, d in s["values"]}
        if not diffs:
            return Drops.from_rows([])
        index = {m: i for i, m in enumerate(meters)}
        rows: list[tuple[int, int, float, float]] = []
        keys = sorted(diffs)
        for i in range(0, len(keys), 100):  # InfluxQL has no OR over times: one statement per drop, 100 a request
            statements = ";".join(f'SELECT "{field}" FROM {MEASUREMENT} WHERE meter = \'{m}\' AND time = {t}ms '
                                  "GROUP BY meter" for m, t in keys[i:i + 100])
            for s in self.query(statements):
                meter = s["tags"]["meter"]
                for t, v in s["values"]:
                    d = diffs.get((meter, int(t)))
                    if d is not None and v is not None:
                        rows.append((index[meter], int(t), float(v) - d, float(v)))
        return Drops.from_rows(rows)

    def _counter_source(self) -> str:
        return COUNTER_MEASUREMENT

    def register_counters(self, wraps: Mapping[tuple[str, str], float | None]) -> None:
        now = int(time.time() * 1000)
        lines = [f"{COUNTER_MEASUREMENT},meter={m},register={f} wrap={float(w or 0.0)!r} {now}"  # 0: never wraps
                 for (m, f), w in wraps.items() if _SAFE.match(m) and _SAFE.match(f)]
        if lines:
            self._write_body("\n".join(lines).encode(), rp=self._counter_rp())

    def _counter_rp(self) -> str | None:
        return None

    def counter_wraps(self, meters: Sequence[str], field: str) -> np.ndarray:
        out = np.full(len(meters), np.nan)
        if not meters:
            return out
        _safe_field(field)
        index = {m: i for i, m in enumerate(meters)}
        for s in self.query(f"SELECT last(wrap) FROM {self._counter_source()} WHERE register = '{field}' "
                            f"AND meter =~ {_regex_of(meters)} GROUP BY meter"):
            row = index.get(s["tags"]["meter"])
            if row is not None and s["values"] and s["values"][0][1]:
                out[row] = float(s["values"][0][1])
        return out

    def counter_registry(self) -> dict[str, list[str]]:
        """Cumulative field -> the meters that have it, as recorded by register_counters."""
        out: dict[str, list[str]] = {}
        for s in self.query(f"SELECT last(wrap) FROM {self._counter_source()} GROUP BY meter, register"):
            out.setdefault(s["tags"]["register"], []).append(s["tags"]["meter"])
        return out

    def rollup_corrections(self, meters: Sequence[str], field: str, start: dt.datetime, end: dt.datetime,
                           bucket: dt.timedelta) -> np.ndarray:
        s, bms, n = bucket_axis(start, end, bucket)
        out = np.full((len(meters), n), np.nan)
        k = covered_buckets(s, bms, n, self._raw_horizon())
        if not k or not meters:
            return out
        _safe_field(field)
        found = empty_matrix(meters, field, s, bms, n)
        self._fill(found, self.query(
            f"SELECT sum(corr) FROM {self._rollup_source(CORRECTION_MEASUREMENT)} WHERE register = '{field}' AND "
            f"meter =~ {_regex_of(meters)} AND time >= {s}ms AND time < {s + k * bms}ms "
            f"GROUP BY time({bms}ms, {s % bms}ms), meter fill(none)"), meters, s, bms)
        out[:, :k] = np.nan_to_num(found.values[:, :k])
        return out

    def write(self, readings: Sequence[Reading], flags: Sequence[int] | None = None) -> WriteResult:
        if not readings:
            return WriteResult(0, 0)
        self._write_body(lines_body(readings, flags))
        return WriteResult(written=len(readings), duplicates=0)

    def write_lines(self, body: bytes) -> None:
        """Write line protocol as is (benchmarks compare this with :meth:`write`)."""
        self._write_body(body)

    def _write_body(self, body: bytes, rp: str | None = None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._http.close()


class InfluxV1Store(_InfluxQLStore):
    """``influx://host:port/database`` (or ``influx+https://``); credentials from the URL or arguments."""

    def __init__(self, url: str, *, username: str | None = None, password: str | None = None,
                 timeout: float = 10.0, client: httpx.Client | None = None) -> None:
        parts = urlsplit(url)
        scheme = "https" if parts.scheme.endswith("+https") else "http"
        self.database = parts.path.strip("/") or "bems"
        if not _SAFE.match(self.database):
            raise StoreError(f"InfluxDB database name {self.database!r} in {url!r} is not a plain identifier",
                             retryable=False)
        self.base = f"{scheme}://{parts.hostname}:{parts.port or 8086}"
        auth = (username or parts.username, password or parts.password)
        self._http = client or httpx.Client(base_url=self.base, timeout=timeout,
                                            auth=auth if auth[0] else None)
        self._ensured = False
        self._horizon_checked = -1e9
        self._horizon_span: int | None = None
        try:
            self._ensure_database()
        except StoreUnavailable as exc:  # a collector starts anyway and buffers until the database is back
            log.warning("%s; creating database %r at the first write", exc, self.database)

    def __repr__(self) -> str:  # never show credentials
        return f"InfluxV1Store({self.base!r}, database={self.database!r})"

    def _ensure_database(self) -> None:
        self._post("/query", data={"q": f'CREATE DATABASE "{self.database}"'})
        self._post("/query", data={"q": f'CREATE RETENTION POLICY "{LONG_RP}" ON "{self.database}" '
                                        "DURATION INF REPLICATION 1"})
        self._ensured = True

    def _counter_rp(self) -> str | None:
        return LONG_RP

    def _counter_source(self) -> str:
        return f'"{LONG_RP}".{COUNTER_MEASUREMENT}'

    def _rollup_source(self, measurement: str = ROLLUP_MEASUREMENT) -> str:
        return f'"{LONG_RP}".{measurement}'

    def _default_rp(self) -> tuple[str, int, int]:
        """(name, duration ms, shard group duration ms) of the database's default retention policy."""
        for s in self.query("SHOW RETENTION POLICIES"):
            for row in s.get("values", []):
                rec = dict(zip(s["columns"], row, strict=True))
                if rec.get("default"):
                    return rec["name"], _duration_ms(rec["duration"]), _duration_ms(rec["shardGroupDuration"])
        return "autogen", 0, 0

    def _raw_horizon(self) -> int | None:
        now = time.monotonic()
        if now >= self._horizon_checked + 60:
            _, duration, shard = self._default_rp()
            self._horizon_span = duration - shard if duration else None
            self._horizon_checked = now
        return None if self._horizon_span is None else int(time.time() * 1000) - self._horizon_span

    def enforce_retention(self, raw: dt.timedelta, now: dt.datetime | None = None) -> int:
        """The default retention policy keeps ``raw`` (whole hours, at least 1); a continuous query folds raw
        points into 30-minute aggregates in ``bems_long`` (kept forever), late points included for 2 h.

        The first time, what is already stored is rolled up too. InfluxDB itself deletes expired shards.
        """
        hours = max(1, math.ceil(raw.total_seconds() / 3600))
        shard = "1h" if hours <= 48 else ("1d" if hours <= 24 * 180 else "7d")
        name, duration, _ = self._default_rp()
        if duration != hours * 3_600_000:
            self.query(f'ALTER RETENTION POLICY "{name}" ON "{self.database}" DURATION {hours}h '
                       f"SHARD DURATION {shard} DEFAULT")
            log.info("InfluxDB %s: raw readings kept %d h (retention policy %s)", self.database, hours, name)
        existing = {row[0] for s in self.query("SHOW CONTINUOUS QUERIES") if s.get("name") == self.database
                    for row in s.get("values", [])}
        if ROLLUP_CQ not in existing:
            self.query(f'CREATE CONTINUOUS QUERY "{ROLLUP_CQ}" ON "{self.database}" RESAMPLE EVERY 30m FOR 2h '
                       f"BEGIN {self._rollup_select()} GROUP BY time(30m), meter END")
            self.rollup(dt.datetime(2000, 1, 1, tzinfo=dt.UTC), now or dt.datetime.now(dt.UTC))
        self._horizon_checked = -1e9
        self._record_corrections(to_ms(now or dt.datetime.now(dt.UTC)) - 3_600_000)
        return 0

    def _record_corrections(self, until_ms: int) -> None:
        """What counter drops add to consumption, kept beside the rollups: InfluxQL cannot classify a drop, and
        once the raw points expire the drops are gone. Incremental from the last mark to ``until_ms``."""
        marks = self.query(f"SELECT last(corr_until) FROM {self._rollup_source(META_MEASUREMENT)}")
        since = int(marks[0]["values"][0][1]) if marks else 0
        if since >= until_ms:
            return
        lines: list[str] = []
        overlap = 6 * 3_600_000  # difference() needs the point before; look back a little
        for field, meters in self.counter_registry().items():
            drops = self.counter_drops(meters, field, from_ms(max(0, since - overlap)), from_ms(until_ms))
            keep = drops.ts_ms >= since
            if not keep.any():
                continue
            wraps = self.counter_wraps(meters, field)[drops.rows[keep]]
            delta, _ = classify_drops(drops.prev[keep], drops.cur[keep], wraps)
            corr = delta - (drops.cur[keep] - drops.prev[keep])
            lines += [f"{CORRECTION_MEASUREMENT},meter={meters[r]},register={field} corr={float(c)!r} {t}"
                      for r, t, c in zip(drops.rows[keep], drops.ts_ms[keep], corr, strict=True)]
        lines.append(f"{META_MEASUREMENT} corr_until={until_ms}i 0")
        self._write_body("\n".join(lines).encode(), rp=LONG_RP)

    def _rollup_select(self) -> str:
        return (f'SELECT count(*), sum(*), min(*), max(*), first(*), last(*) INTO "{self.database}"."{LONG_RP}".'
                f'"{ROLLUP_MEASUREMENT}" FROM "{self.database}".."{MEASUREMENT}"')

    def rollup(self, start: dt.datetime, end: dt.datetime) -> None:
        """Fold [start, end) into the 30-minute aggregates now (after a backfill the query did not see)."""
        first = self.query(f"SELECT first(seq) FROM {MEASUREMENT} WHERE time >= {to_ms(start)}ms")
        if not first:
            return
        lo = max(to_ms(start), int(first[0]["values"][0][0]))
        lo -= lo % (30 * 60_000)
        week = 7 * 24 * 3_600_000
        for t in range(lo, to_ms(end), week):
            self.query(f"{self._rollup_select()} WHERE time >= {t}ms AND time < {min(t + week, to_ms(end))}ms "
                       "GROUP BY time(30m), meter")

    def _write_body(self, body: bytes, rp: str | None = None) -> None:
        if not self._ensured:
            self._ensure_database()
        params = {"db": self.database, "precision": "ms"}
        if rp:
            params["rp"] = rp
        self._post("/write", params=params, content=body)


class InfluxV2Store(_InfluxQLStore):
    """``influx2://host:port/bucket?org=ORG`` (or ``influx2+https://``): InfluxDB 2.x, 3.x and Cloud.

    Writes go through ``influxdb-client``'s synchronous write API (the collector does its own batching and
    retries); reads use InfluxQL ``/query?db=<bucket>``, which needs a DBRP mapping on 2.x
    (``influx v1 dbrp create --db <bucket> --rp autogen --bucket-id <id> --default``).
    """

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 10.0) -> None:
        try:
            from influxdb_client import InfluxDBClient
            from influxdb_client.client.write_api import SYNCHRONOUS
        except ImportError as exc:  # pragma: no cover - the dependency is optional
            raise ConfigError("store URL influx2://... needs influxdb-client: pip install 'bems[influx]'") from exc
        parts = urlsplit(url)
        scheme = "https" if parts.scheme.endswith("+https") else "http"
        self.database = self.bucket = parts.path.strip("/")
        if not self.bucket or not _SAFE.match(self.bucket):
            raise ConfigError(f"store URL {url!r}: give the bucket as the path, e.g. influx2://host:8086/bems?org=moi")
        org = parse_qs(parts.query).get("org", [os.environ.get("INFLUXDB_V2_ORG", "")])[0]
        if not org:
            raise ConfigError(f"store URL {url!r}: name the organisation, e.g. ?org=moi (or set INFLUXDB_V2_ORG)")
        self.org = org
        token = token or os.environ.get("INFLUXDB_V2_TOKEN")
        if not token:
            raise ConfigError("InfluxDB 2.x needs an API token: set BEMS_COLLECTOR_INFLUX_TOKEN (collector) or "
                              "INFLUXDB_V2_TOKEN")
        self.base = f"{scheme}://{parts.hostname}:{parts.port or 8086}"
        self._client = InfluxDBClient(url=self.base, token=token, org=org, timeout=int(timeout * 1000))
        self._writer = self._client.write_api(write_options=SYNCHRONOUS)
        self._http = httpx.Client(base_url=self.base, timeout=timeout, headers={"Authorization": f"Token {token}"})

    def __repr__(self) -> str:  # never show the token
        return f"InfluxV2Store({self.base!r}, org={self.org!r}, bucket={self.bucket!r})"

    def enforce_retention(self, raw: dt.timedelta, now: dt.datetime | None = None) -> int:
        """On 2.x/3.x retention belongs to the bucket and downsampling to a task (docs/collector.md): say so once."""
        if not getattr(self, "_retention_noted", False):
            log.info("InfluxDB 2.x/3.x: raw retention is bucket %r's own setting and the 30-minute rollup a task; "
                     "see docs/collector.md", self.bucket)
            self._retention_noted = True
        return 0

    def _write_body(self, body: bytes, rp: str | None = None) -> None:
        from influxdb_client.client.exceptions import InfluxDBError
        from influxdb_client.domain.write_precision import WritePrecision
        from urllib3.exceptions import HTTPError as Urllib3Error

        try:
            self._writer.write(bucket=self.bucket, org=self.org, record=body, write_precision=WritePrecision.MS)
        except InfluxDBError as exc:
            status = getattr(exc, "status", None) or (exc.response.status if exc.response is not None else 0)
            raise _http_failure("InfluxDB /api/v2/write", int(status or 0), str(exc.message),
                                exc.retry_after) from exc
        except (Urllib3Error, OSError) as exc:
            raise StoreUnavailable(f"InfluxDB at {self.base} unreachable: {exc}; is it running?") from exc

    def close(self) -> None:
        super().close()
        self._client.close()
