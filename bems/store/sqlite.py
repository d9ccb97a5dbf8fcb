"""SQLite backend: the embedded default, one file, WAL mode so readers never block the writer.

One row per reading, one REAL column per field (added the first time a field is written): a reading is one
B-tree insert, not one per value, and the primary key (meter, time) makes a ``[meters x time]`` read one range
scan per meter. Raw rows older than the retention are folded into 30-minute rollups (count, sum, min, max,
first, last, and the counter corrections of bems.store.counters) before they are deleted.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bems.errors import StoreError
from bems.sqlite_file import open_wal
from bems.store.base import (
    DAY_MS,
    QUALITY_CODE,
    QUALITY_NAME,
    ROLLUP_MS,
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
    rollup_usable,
    to_ms,
)
from bems.store.counters import classify_drops, flag_names
from bems.wire import FIELD, Reading

SCHEMA = """
CREATE TABLE IF NOT EXISTS meter (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
-- one row per reading: the idempotency key is meter + timestamp; field columns are added as fields appear
CREATE TABLE IF NOT EXISTS reading (
    meter_id INTEGER NOT NULL, ts INTEGER NOT NULL, edge TEXT NOT NULL, seq INTEGER NOT NULL,
    quality INTEGER NOT NULL, flags INTEGER NOT NULL DEFAULT 0, kid TEXT, sig TEXT, proof TEXT,
    PRIMARY KEY (meter_id, ts)) WITHOUT ROWID;
-- the wrap value of each cumulative register (NULL: never wraps), for consumption across rollovers
CREATE TABLE IF NOT EXISTS counter (
    meter_id INTEGER NOT NULL, field TEXT NOT NULL, wrap REAL, PRIMARY KEY (meter_id, field)) WITHOUT ROWID;
-- 30-minute aggregates of raw readings, kept after the raw rows are deleted
CREATE TABLE IF NOT EXISTS rollup (
    meter_id INTEGER NOT NULL, field TEXT NOT NULL, period INTEGER NOT NULL, n INTEGER NOT NULL,
    sum REAL, min REAL, max REAL, first REAL, last REAL, corr REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (meter_id, field, period)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""
_BASE_COLUMNS = ("meter_id", "ts", "edge", "seq", "quality", "flags", "kid", "sig", "proof")
_FIELD = re.compile(FIELD)
_SQL_AGG = {"mean": "avg({c})", "min": "min({c})", "max": "max({c})", "sum": "sum({c})", "count": "count({c})",
            "first": "{c}, min(ts)", "last": "{c}, max(ts)"}
_ROLLUP_AGG = {"mean": "sum(sum) / sum(n)", "min": "min(min)", "max": "max(max)", "sum": "sum(sum)",
               "count": "sum(n)", "first": "first, min(period)", "last": "last, max(period)"}


def _col(field: str) -> str:
    if not _FIELD.match(field):
        raise ValueError(f"field name {field!r} is not a canonical field (lower_snake with a unit suffix)")
    return f'"{field}"'


class _MeterIds(dict):
    """meter name -> id, created on first use (a plain dict lookup on the write path)."""

    def __init__(self, store: SQLiteStore) -> None:
        super().__init__()
        self._store = store

    def __missing__(self, name: str) -> int:
        db = self._store._db
        db.execute("INSERT OR IGNORE INTO meter(name) VALUES (?)", (name,))
        self[name] = db.execute("SELECT id FROM meter WHERE name=?", (name,)).fetchone()[0]
        return self[name]


class SQLiteStore(Store):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._db = open_wal(self.path, SCHEMA, synchronous="NORMAL")
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open SQLite store {self.path}: {exc}", retryable=False) from exc
        self._meter_ids = _MeterIds(self)
        self._columns: set[str] = set()
        self._load_columns()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    # ------------------------------------------------------------------ schema

    def _load_columns(self) -> None:
        self._columns = {r[1] for r in self._db.execute("PRAGMA table_info(reading)")} - set(_BASE_COLUMNS)

    def _has_column(self, field: str) -> bool:
        if field not in self._columns:
            self._load_columns()  # another process may have added it
        return field in self._columns

    def _add_columns(self, fields: set[str]) -> None:
        for field in sorted(fields - self._columns):
            try:
                self._db.execute(f"ALTER TABLE reading ADD COLUMN {_col(field)} REAL")
            except sqlite3.OperationalError as exc:  # added meanwhile by another writer
                if "duplicate column" not in str(exc):
                    raise
            self._columns.add(field)

    def _migrate(self) -> None:
        """Bring a store written by an older version up to this schema, keeping its data."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(reading)")}
        if "flags" not in columns:
            self._db.execute("ALTER TABLE reading ADD COLUMN flags INTEGER NOT NULL DEFAULT 0")
        for name in ("kid", "sig", "proof"):  # the edge's key id, batch signature and proof, for bems verify
            if name not in columns:
                self._db.execute(f"ALTER TABLE reading ADD COLUMN {name} TEXT")
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "value" in tables and "field" in tables:  # one row per value: fold into one column per field
            self._db.execute("BEGIN IMMEDIATE")
            for fid, name in self._db.execute("SELECT id, name FROM field").fetchall():
                if name not in columns:
                    self._db.execute(f"ALTER TABLE reading ADD COLUMN {_col(name)} REAL")
                self._db.execute(f"UPDATE reading SET {_col(name)} = v.value FROM value v WHERE v.field_id = ? "
                                 "AND v.meter_id = reading.meter_id AND v.ts = reading.ts", (fid,))
            self._db.execute("DROP TABLE value")
            self._db.execute("DROP TABLE field")
            self._db.execute("COMMIT")

    def _known_ids(self, names: Sequence[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for name in names:
            if name in self._meter_ids:
                out[name] = self._meter_ids[name]
            elif row := self._db.execute("SELECT id FROM meter WHERE name=?", (name,)).fetchone():
                self._meter_ids[name] = out[name] = row[0]
        return out

    # ------------------------------------------------------------------ writes

    def write(self, readings: Sequence[Reading], flags: Sequence[int] | None = None) -> WriteResult:
        if not readings:
            return WriteResult(0, 0)
        flags = flags if flags is not None else [0] * len(readings)
        groups: dict[tuple[str, ...], list[tuple]] = {}
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                mids = self._meter_ids
                for r, f in zip(readings, flags, strict=True):
                    row = (mids[r.meter], to_ms(r.ts), r.edge, r.seq, QUALITY_CODE[r.quality], f, r.kid, r.sig, r.proof,
                           *r.values.values())
                    groups.setdefault(tuple(r.values), []).append(row)
                before = self._db.total_changes
                for fields, rows in groups.items():
                    if not self._columns.issuperset(fields):
                        self._add_columns(set(fields))
                    names = ",".join(_col(f) for f in fields)
                    marks = ",".join("?" * (len(_BASE_COLUMNS) + len(fields)))
                    self._db.executemany(f"INSERT OR IGNORE INTO reading ({','.join(_BASE_COLUMNS)},{names}) "
                                         f"VALUES ({marks})", rows)
                written = self._db.total_changes - before
                self._db.execute("COMMIT")
            except (sqlite3.Error, ValueError) as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):  # locked, disk full, I/O: may pass
                    raise StoreUnavailable(f"SQLite write to {self.path} failed: {exc}") from exc
                raise StoreRejected(f"SQLite write to {self.path} failed: {exc}") from exc
        return WriteResult(written=written, duplicates=len(readings) - written)

    def register_counters(self, wraps: Mapping[tuple[str, str], float | None]) -> None:
        with self._lock:
            rows = [(self._meter_ids[m], f, w) for (m, f), w in wraps.items()]
            self._db.executemany("INSERT OR REPLACE INTO counter VALUES (?,?,?)", rows)

    # ------------------------------------------------------------------ reads

    def read_matrix(self, meters: Sequence[str], field: str, start: dt.datetime, end: dt.datetime,
                    bucket: dt.timedelta, agg: Agg = "mean") -> Matrix:
        if agg not in _SQL_AGG:
            raise ValueError(f"unknown aggregate {agg!r}; allowed: {', '.join(_SQL_AGG)}")
        s, bms, n = bucket_axis(start, end, bucket)
        out = empty_matrix(meters, field, s, bms, n)
        c = _col(field)
        with self._lock:
            ids = self._known_ids(meters)
            if not ids:
                return out
            row_of = {mid: meters.index(name) for name, mid in ids.items()}
            marks = ",".join("?" * len(ids))
            horizon = self._raw_horizon()
            if self._has_column(field):
                sql = (f"SELECT meter_id, (ts - ?) / ? AS b, {_SQL_AGG[agg].format(c=c)} FROM reading "
                       f"WHERE meter_id IN ({marks}) AND ts >= ? AND ts < ? AND {c} IS NOT NULL GROUP BY meter_id, b")
                self._fill(out, row_of, self._db.execute(sql, (s, bms, *ids.values(), s, to_ms(end))).fetchall())
            if rollup_usable(s, bms, horizon):
                assert horizon is not None
                rolled = empty_matrix(meters, field, s, bms, n)
                sql = (f"SELECT meter_id, (period - ?) / ? AS b, {_ROLLUP_AGG[agg]} FROM rollup "
                       f"WHERE field = ? AND meter_id IN ({marks}) AND period >= ? AND period < ? GROUP BY meter_id, b")
                self._fill(rolled, row_of, self._db.execute(sql, (s, bms, field, *ids.values(), s,
                                                                  min(to_ms(end), horizon))).fetchall())
                merge_rollup(out, rolled, s, bms, horizon)
        return out

    @staticmethod
    def _fill(out: Matrix, row_of: dict[int, int], res: list[tuple]) -> None:
        if res:
            arr = np.array([r[:3] for r in res], dtype=np.float64)
            rows = np.array([row_of[int(m)] for m in arr[:, 0]], dtype=np.intp)
            out.values[rows, arr[:, 1].astype(np.intp)] = arr[:, 2]

    def latest(self, meters: Sequence[str]) -> dict[str, Latest]:
        out: dict[str, Latest] = {}
        with self._lock:
            ids = self._known_ids(meters)
            for name, mid in ids.items():
                cur = self._db.execute("SELECT * FROM reading WHERE meter_id=? ORDER BY ts DESC LIMIT 1", (mid,))
                row = cur.fetchone()
                if row is None:
                    continue
                rec = dict(zip([d[0] for d in cur.description], row, strict=True))
                values = {k: v for k, v in rec.items() if k not in _BASE_COLUMNS and v is not None}
                out[name] = Latest(meter=name, ts=from_ms(rec["ts"]), values=values,
                                   quality=QUALITY_NAME[rec["quality"]], flags=flag_names(rec["flags"]))
        return out

    def count(self, meter: str | None = None) -> int:
        with self._lock:
            if meter is None:
                return self._db.execute("SELECT count(*) FROM reading").fetchone()[0]
            mid = self._known_ids([meter]).get(meter)
            if mid is None:
                return 0
            return self._db.execute("SELECT count(*) FROM reading WHERE meter_id=?", (mid,)).fetchone()[0]

    def sequences(self, meter: str) -> list[int]:
        with self._lock:
            mid = self._known_ids([meter]).get(meter)
            if mid is None:
                return []
            return [r[0] for r in self._db.execute("SELECT seq FROM reading WHERE meter_id=? ORDER BY ts", (mid,))]

    def points(self, meter: str, field: str, start: dt.datetime, end: dt.datetime) -> Points:
        c = _col(field)
        with self._lock:
            mid = self._known_ids([meter]).get(meter)
            rows = [] if mid is None or not self._has_column(field) else self._db.execute(
                f"SELECT ts, {c}, quality, flags, seq FROM reading WHERE meter_id = ? AND ts >= ? AND ts < ? "
                f"AND {c} IS NOT NULL ORDER BY ts", (mid, to_ms(start), to_ms(end))).fetchall()
        arr = np.array(rows, dtype=np.float64).reshape(-1, 5)
        return Points(times=arr[:, 0].astype(np.int64).astype("datetime64[ms]"), values=arr[:, 1],
                      quality=arr[:, 2].astype(np.int8), flags=arr[:, 3].astype(np.int64),
                      seq=np.array([r[4] for r in rows], dtype=np.int64))

    def signed_points(self, meter: str, start: dt.datetime, end: dt.datetime) -> SignedPoints:
        with self._lock:
            mid = self._known_ids([meter]).get(meter)
            self._load_columns()
            fields = sorted(self._columns)
            cols = "".join(f", {_col(f)}" for f in fields)
            rows = [] if mid is None else self._db.execute(
                f"SELECT ts, seq, edge, kid, sig, proof{cols} FROM reading WHERE meter_id = ? AND ts >= ? AND ts < ? "
                "ORDER BY ts", (mid, to_ms(start), to_ms(end))).fetchall()
        return SignedPoints(ts_ms=np.array([r[0] for r in rows], dtype=np.int64),
                            seq=np.array([r[1] for r in rows], dtype=np.int64), edge=[r[2] for r in rows],
                            values=[{f: v for f, v in zip(fields, r[6:], strict=True) if v is not None}
                                    for r in rows],
                            kid=[r[3] for r in rows], sig=[r[4] for r in rows], proof=[r[5] for r in rows])

    def day_counts(self, meters: Sequence[str], start: dt.datetime, end: dt.datetime) -> dict[str, dict[int, int]]:
        with self._lock:
            ids = self._known_ids(meters)
            if not ids:
                return {}
            marks = ",".join("?" * len(ids))
            rows = self._db.execute(f"SELECT meter_id, ts / {DAY_MS} AS d, count(*) FROM reading WHERE meter_id IN "
                                    f"({marks}) AND ts >= ? AND ts < ? GROUP BY meter_id, d",
                                    (*ids.values(), to_ms(start), to_ms(end))).fetchall()
        name_of = {mid: name for name, mid in ids.items()}
        out: dict[str, dict[int, int]] = {}
        for mid, day, n in rows:
            out.setdefault(name_of[mid], {})[int(day) * DAY_MS] = int(n)
        return out

    def counter_drops(self, meters: Sequence[str], field: str, start: dt.datetime, end: dt.datetime) -> Drops:
        c = _col(field)
        with self._lock:
            ids = self._known_ids(meters)
            if not ids or not self._has_column(field):
                return Drops.from_rows([])
            marks = ",".join("?" * len(ids))
            res = self._db.execute(
                f"SELECT meter_id, ts, prev, v FROM (SELECT meter_id, ts, {c} AS v, "
                f"LAG({c}) OVER (PARTITION BY meter_id ORDER BY ts) AS prev FROM reading "
                f"WHERE meter_id IN ({marks}) AND ts >= ? AND ts < ? AND {c} IS NOT NULL) WHERE v < prev",
                (*ids.values(), to_ms(start), to_ms(end))).fetchall()
        row_of = {mid: meters.index(name) for name, mid in ids.items()}
        return Drops.from_rows([(row_of[m], ts, p, v) for m, ts, p, v in res])

    def counter_wraps(self, meters: Sequence[str], field: str) -> np.ndarray:
        out = np.full(len(meters), np.nan)
        with self._lock:
            ids = self._known_ids(meters)
            if not ids:
                return out
            marks = ",".join("?" * len(ids))
            rows = self._db.execute(f"SELECT meter_id, wrap FROM counter WHERE field = ? AND meter_id IN ({marks})"
                                    " AND wrap IS NOT NULL", (field, *ids.values())).fetchall()
        row_of = {mid: meters.index(name) for name, mid in ids.items()}
        for mid, wrap in rows:
            out[row_of[mid]] = wrap
        return out

    def rollup_corrections(self, meters: Sequence[str], field: str, start: dt.datetime, end: dt.datetime,
                           bucket: dt.timedelta) -> np.ndarray:
        s, bms, n = bucket_axis(start, end, bucket)
        out = np.full((len(meters), n), np.nan)
        with self._lock:
            horizon = self._raw_horizon()
            k = covered_buckets(s, bms, n, horizon)
            ids = self._known_ids(meters)
            if not k or not ids:
                return out
            out[:, :k] = 0.0
            marks = ",".join("?" * len(ids))
            rows = self._db.execute(f"SELECT meter_id, (period - ?) / ?, sum(corr) FROM rollup WHERE field = ? AND "
                                    f"meter_id IN ({marks}) AND period >= ? AND period < ? AND corr != 0 "
                                    "GROUP BY 1, 2", (s, bms, field, *ids.values(), s, s + k * bms)).fetchall()
        row_of = {mid: meters.index(name) for name, mid in ids.items()}
        for mid, b, corr in rows:
            out[row_of[mid], int(b)] += corr
        return out

    # ------------------------------------------------------------------ retention

    def _raw_horizon(self) -> int | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'raw_kept_from'").fetchone()
        return int(row[0]) if row else None

    def enforce_retention(self, raw: dt.timedelta, now: dt.datetime | None = None) -> int:
        """Fold raw readings older than ``raw`` into 30-minute rollups, then delete them; rows deleted.

        The cut is on a rollup boundary, so a rolled-up period is never partly raw; readers use the rollups for
        buckets before the cut (see read_matrix).
        """
        now = now or dt.datetime.now(dt.UTC)
        cut = (to_ms(now - raw) // ROLLUP_MS) * ROLLUP_MS
        with self._lock:
            done = self._raw_horizon() or -(2**62)
            first = self._db.execute("SELECT min(ts) FROM reading").fetchone()[0]
            if first is None or first >= cut:
                return 0
            lo = max(done, (first // ROLLUP_MS) * ROLLUP_MS)
            self._load_columns()
            meters = [r[0] for r in self._db.execute("SELECT id FROM meter")]
            counters = dict(((m, f), w) for m, f, w in self._db.execute("SELECT meter_id, field, wrap FROM counter"))
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for field in sorted(self._columns):
                    c = _col(field)
                    self._db.execute(
                        "INSERT OR REPLACE INTO rollup (meter_id, field, period, n, sum, min, max, first, last) "
                        "SELECT meter_id, ?, p, count(v), sum(v), min(v), max(v), first_v, last_v FROM ("
                        f"SELECT meter_id, p, v, first_value(v) OVER w AS first_v, last_value(v) OVER w AS last_v "
                        f"FROM (SELECT meter_id, (ts / {ROLLUP_MS}) * {ROLLUP_MS} AS p, ts, {c} AS v FROM reading "
                        f"WHERE ts >= ? AND ts < ? AND {c} IS NOT NULL) WINDOW w AS (PARTITION BY meter_id, p "
                        "ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)) GROUP BY meter_id, p",
                        (field, lo, cut))
                    self._rollup_corrections(field, c, meters, counters, lo, cut)
                deleted = self._db.execute("DELETE FROM reading WHERE ts < ?", (cut,)).rowcount
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('raw_kept_from', ?)", (cut,))
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise StoreUnavailable(f"SQLite retention on {self.path} failed: {exc}") from exc
        return deleted

    def _rollup_corrections(self, field: str, c: str, meters: list[int], counters: dict, lo: int, hi: int) -> None:
        """Record, per period, how much the counter drops in it add to the plain rise of its last value."""
        rows = self._db.execute(
            f"SELECT meter_id, ts, prev, v FROM (SELECT meter_id, ts, {c} AS v, LAG({c}) OVER "
            f"(PARTITION BY meter_id ORDER BY ts) AS prev FROM reading WHERE ts >= ? AND ts < ? AND {c} IS NOT NULL) "
            "WHERE v < prev", (lo - ROLLUP_MS, hi)).fetchall()
        rows = [r for r in rows if r[1] >= lo]
        if not rows:
            return
        arr = np.array(rows, dtype=np.float64)
        wraps = np.array([counters.get((int(m), field)) or np.nan for m in arr[:, 0]], dtype=np.float64)
        delta, _ = classify_drops(arr[:, 2], arr[:, 3], wraps)
        corr = delta - (arr[:, 3] - arr[:, 2])
        self._db.executemany(f"UPDATE rollup SET corr = corr + ? WHERE meter_id = ? AND field = ? AND period = "
                             f"(? / {ROLLUP_MS}) * {ROLLUP_MS}",
                             [(float(x), int(m), field, int(ts)) for x, m, ts in zip(corr, arr[:, 0], arr[:, 1],
                                                                                     strict=True)])

    def close(self) -> None:
        with self._lock:
            self._db.close()
