"""InfluxDB backend: line protocol to the 1.x ``/write`` endpoint, InfluxQL ``/query`` for reads.

Points are keyed by measurement + tags (meter) + time, so writing the same reading twice overwrites it:
writes are idempotent by design. InfluxDB cannot tell us which points already existed, so duplicates are
not counted here (the collector counts them from sequence numbers).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

import httpx
import numpy as np

from bems.errors import StoreError
from bems.store.base import (
    QUALITY_CODE,
    QUALITY_NAME,
    Agg,
    Latest,
    Matrix,
    Store,
    WriteResult,
    bucket_axis,
    empty_matrix,
    from_ms,
    to_ms,
)
from bems.wire import Reading

MEASUREMENT = "reading"
_SAFE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_INFLUX_AGG = {"mean": "mean", "min": "min", "max": "max", "sum": "sum", "count": "count",
               "first": "first", "last": "last"}


def _tag(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _string_field(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def line_protocol(r: Reading) -> str:
    fields = ",".join(f"{k}={v!r}" for k, v in r.values.items())
    return (f"{MEASUREMENT},meter={_tag(r.meter)},building={_tag(r.building)} {fields},"
            f"seq={r.seq}i,quality={QUALITY_CODE[r.quality]}i,edge={_string_field(r.edge)} {to_ms(r.ts)}")


def _regex_of(names: Sequence[str]) -> str:
    for n in names:
        if not _SAFE.match(n):
            raise ValueError(f"unsafe identifier {n!r}")
    return "/^(" + "|".join(re.escape(n).replace("/", r"\/") for n in names) + ")$/"


class InfluxV1Store(Store):
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
        self._ensure_database()

    def __repr__(self) -> str:  # never show credentials
        return f"InfluxV1Store({self.base!r}, database={self.database!r})"

    def _post(self, path: str, **kw) -> httpx.Response:  # type: ignore[no-untyped-def]
        try:
            resp = self._http.post(path, **kw)
        except httpx.HTTPError as exc:
            raise StoreError(f"InfluxDB at {self.base} unreachable: {exc}; is influxd running?") from exc
        if resp.status_code >= 300:
            retryable = resp.status_code >= 500 or resp.status_code == 429
            raise StoreError(f"InfluxDB {path} answered {resp.status_code}: {resp.text.strip()[:300]}",
                             retryable=retryable)
        return resp

    def _ensure_database(self) -> None:
        self._post("/query", data={"q": f'CREATE DATABASE "{self.database}"'})

    def query(self, q: str) -> list[dict]:
        resp = self._post("/query", data={"q": q, "db": self.database, "epoch": "ms"})
        results = resp.json().get("results", [])
        for res in results:
            if "error" in res:
                raise StoreError(f"InfluxQL error: {res['error']}", retryable=False)
        return [s for res in results for s in res.get("series", [])]

    def write(self, readings: Sequence[Reading]) -> WriteResult:
        if not readings:
            return WriteResult(0, 0)
        body = "\n".join(line_protocol(r) for r in readings).encode()
        self._post("/write", params={"db": self.database, "precision": "ms"}, content=body)
        return WriteResult(written=len(readings), duplicates=0)

    def read_matrix(self, meters: Sequence[str], field: str, start: dt.datetime, end: dt.datetime,
                    bucket: dt.timedelta, agg: Agg = "mean") -> Matrix:
        if agg not in _INFLUX_AGG:
            raise ValueError(f"unknown aggregate {agg!r}; allowed: {', '.join(_INFLUX_AGG)}")
        if not _SAFE.match(field):
            raise ValueError(f"unsafe field name {field!r}")
        s, bms, n = bucket_axis(start, end, bucket)
        out = empty_matrix(meters, field, s, bms, n)
        if not meters:
            return out
        q = (f'SELECT {_INFLUX_AGG[agg]}("{field}") FROM {MEASUREMENT} WHERE meter =~ {_regex_of(meters)} '
             f"AND time >= {s}ms AND time < {to_ms(end)}ms GROUP BY time({bms}ms, {s % bms}ms), meter fill(none)")
        index = {m: i for i, m in enumerate(meters)}
        for series in self.query(q):
            row = index.get(series.get("tags", {}).get("meter", ""))
            if row is None or not series.get("values"):
                continue
            arr = np.array([(t, np.nan if v is None else v) for t, v in series["values"]], dtype=np.float64)
            cols = ((arr[:, 0].astype(np.int64) - s) // bms).astype(np.intp)
            ok = (cols >= 0) & (cols < n)
            out.values[row, cols[ok]] = arr[ok, 1]
        return out

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
            quality = QUALITY_NAME.get(int(row.pop("quality", 0) or 0), "good")
            values = {k: float(v) for k, v in row.items()
                      if k not in ("seq", "edge", "building", "meter") and isinstance(v, int | float)}
            out[meter] = Latest(meter=meter, ts=ts, values=values, quality=quality)
        return out

    def count(self, meter: str | None = None) -> int:
        where = f" WHERE meter =~ {_regex_of([meter])}" if meter else ""
        series = self.query(f"SELECT count(seq) FROM {MEASUREMENT}{where}")
        return int(series[0]["values"][0][1]) if series else 0

    def sequences(self, meter: str) -> list[int]:
        series = self.query(f"SELECT seq FROM {MEASUREMENT} WHERE meter =~ {_regex_of([meter])}")
        return [int(v[1]) for s in series for v in s["values"]]

    def close(self) -> None:
        self._http.close()
