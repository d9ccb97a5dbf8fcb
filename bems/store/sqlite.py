"""SQLite backend: the embedded default, one file, WAL mode so readers never block the writer."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bems.errors import StoreError
from bems.store.base import (
    QUALITY_CODE,
    QUALITY_NAME,
    Agg,
    Drops,
    Latest,
    Matrix,
    Points,
    Store,
    StoreRejected,
    StoreUnavailable,
    WriteResult,
    bucket_axis,
    empty_matrix,
    from_ms,
    to_ms,
)
from bems.store.counters import flag_names
from bems.wire import Reading

SCHEMA = """
CREATE TABLE IF NOT EXISTS meter (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS field (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
-- one row per reading: the idempotency key is meter + timestamp
CREATE TABLE IF NOT EXISTS reading (
    meter_id INTEGER NOT NULL, ts INTEGER NOT NULL, edge TEXT NOT NULL, seq INTEGER NOT NULL,
    quality INTEGER NOT NULL, flags INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (meter_id, ts)) WITHOUT ROWID;
-- one row per value; (field, meter, ts) keeps a [meters x time] read of one field a range scan
CREATE TABLE IF NOT EXISTS value (
    field_id INTEGER NOT NULL, meter_id INTEGER NOT NULL, ts INTEGER NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (field_id, meter_id, ts)) WITHOUT ROWID;
-- the wrap value of each cumulative register (NULL: never wraps), for consumption across rollovers
CREATE TABLE IF NOT EXISTS counter (
    meter_id INTEGER NOT NULL, field_id INTEGER NOT NULL, wrap REAL, PRIMARY KEY (meter_id, field_id)) WITHOUT ROWID;
"""

_SQL_AGG = {"mean": "avg(value)", "min": "min(value)", "max": "max(value)", "sum": "sum(value)",
            "count": "count(value)", "first": "value, min(ts)", "last": "value, max(ts)"}


class SQLiteStore(Store):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store {self.path}: {exc}", retryable=False) from exc
        self._ids: dict[tuple[str, str], int] = {}

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    def _migrate(self) -> None:
        """Bring a store written by an older version up to this schema (additive columns only)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(reading)")}
        if "flags" not in columns:
            self._db.execute("ALTER TABLE reading ADD COLUMN flags INTEGER NOT NULL DEFAULT 0")

    def _id(self, table: str, name: str) -> int:
        key = (table, name)
        if key not in self._ids:
            self._db.execute(f"INSERT OR IGNORE INTO {table}(name) VALUES (?)", (name,))
            self._ids[key] = self._db.execute(f"SELECT id FROM {table} WHERE name=?", (name,)).fetchone()[0]
        return self._ids[key]

    def _known_ids(self, table: str, names: Sequence[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for name in names:
            if (table, name) in self._ids:
                out[name] = self._ids[(table, name)]
            elif row := self._db.execute(f"SELECT id FROM {table} WHERE name=?", (name,)).fetchone():
                self._ids[(table, name)] = out[name] = row[0]
        return out

    def write(self, readings: Sequence[Reading], flags: Sequence[int] | None = None) -> WriteResult:
        if not readings:
            return WriteResult(0, 0)
        flags = flags if flags is not None else [0] * len(readings)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                rows = [(self._id("meter", r.meter), to_ms(r.ts), r.edge, r.seq, QUALITY_CODE[r.quality], int(f))
                        for r, f in zip(readings, flags, strict=True)]
                before = self._db.total_changes
                self._db.executemany("INSERT OR IGNORE INTO reading VALUES (?,?,?,?,?,?)", rows)
                written = self._db.total_changes - before
                values = [(self._id("field", f), mid, ts, v)
                          for r, (mid, ts, *_rest) in zip(readings, rows, strict=True) for f, v in r.values.items()]
                self._db.executemany("INSERT OR IGNORE INTO value VALUES (?,?,?,?)", values)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):  # locked, disk full, I/O: may pass
                    raise StoreUnavailable(f"SQLite write to {self.path} failed: {exc}") from exc
                raise StoreRejected(f"SQLite write to {self.path} failed: {exc}") from exc
        return WriteResult(written=written, duplicates=len(readings) - written)

    def read_matrix(self, meters: Sequence[str], field: str, start: dt.datetime, end: dt.datetime,
                    bucket: dt.timedelta, agg: Agg = "mean") -> Matrix:
        if agg not in _SQL_AGG:
            raise ValueError(f"unknown aggregate {agg!r}; allowed: {', '.join(_SQL_AGG)}")
        s, bms, n = bucket_axis(start, end, bucket)
        out = empty_matrix(meters, field, s, bms, n)
        with self._lock:
            ids = self._known_ids("meter", meters)
            fid = self._known_ids("field", [field]).get(field)
            if fid is None or not ids:
                return out
            row_of = {mid: meters.index(name) for name, mid in ids.items()}
            marks = ",".join("?" * len(ids))
            sql = (f"SELECT meter_id, (ts - ?) / ? AS b, {_SQL_AGG[agg]} FROM value "
                   f"WHERE field_id = ? AND meter_id IN ({marks}) AND ts >= ? AND ts < ? GROUP BY meter_id, b")
            res = self._db.execute(sql, (s, bms, fid, *ids.values(), s, to_ms(end))).fetchall()
        if res:
            arr = np.array([r[:3] for r in res], dtype=np.float64)
            rows = np.array([row_of[int(m)] for m in arr[:, 0]], dtype=np.intp)
            out.values[rows, arr[:, 1].astype(np.intp)] = arr[:, 2]
        return out

    def latest(self, meters: Sequence[str]) -> dict[str, Latest]:
        out: dict[str, Latest] = {}
        with self._lock:
            ids = self._known_ids("meter", meters)
            for name, mid in ids.items():
                row = self._db.execute("SELECT ts, quality, flags FROM reading WHERE meter_id=? "
                                       "ORDER BY ts DESC LIMIT 1", (mid,)).fetchone()
                if row is None:
                    continue
                vals = self._db.execute(
                    "SELECT field.name, value FROM value JOIN field ON field.id = value.field_id "
                    "WHERE meter_id=? AND ts=?", (mid, row[0])).fetchall()
                out[name] = Latest(meter=name, ts=from_ms(row[0]), values=dict(vals), quality=QUALITY_NAME[row[1]],
                                   flags=flag_names(row[2]))
        return out

    def count(self, meter: str | None = None) -> int:
        with self._lock:
            if meter is None:
                return self._db.execute("SELECT count(*) FROM reading").fetchone()[0]
            mid = self._known_ids("meter", [meter]).get(meter)
            if mid is None:
                return 0
            return self._db.execute("SELECT count(*) FROM reading WHERE meter_id=?", (mid,)).fetchone()[0]

    def sequences(self, meter: str) -> list[int]:
        with self._lock:
            mid = self._known_ids("meter", [meter]).get(meter)
            if mid is None:
                return []
            return [r[0] for r in self._db.execute("SELECT seq FROM reading WHERE meter_id=? ORDER BY ts", (mid,))]

    def points(self, meter: str, field: str, start: dt.datetime, end: dt.datetime) -> Points:
        with self._lock:
            mid = self._known_ids("meter", [meter]).get(meter)
            fid = self._known_ids("field", [field]).get(field)
            rows = [] if mid is None or fid is None else self._db.execute(
                "SELECT v.ts, v.value, r.quality, r.flags, r.seq FROM value v "
                "JOIN reading r ON r.meter_id = v.meter_id AND r.ts = v.ts "
                "WHERE v.field_id = ? AND v.meter_id = ? AND v.ts >= ? AND v.ts < ? ORDER BY v.ts",
                (fid, mid, to_ms(start), to_ms(end))).fetchall()
        arr = np.array(rows, dtype=np.float64).reshape(-1, 5)
        return Points(times=arr[:, 0].astype(np.int64).astype("datetime64[ms]"), values=arr[:, 1],
                      quality=arr[:, 2].astype(np.int8), flags=arr[:, 3].astype(np.int64),
                      seq=np.array([r[4] for r in rows], dtype=np.int64))

    def counter_drops(self, meters: Sequence[str], field: str, start: dt.datetime, end: dt.datetime) -> Drops:
        with self._lock:
            ids = self._known_ids("meter", meters)
            fid = self._known_ids("field", [field]).get(field)
            if fid is None or not ids:
                return Drops.from_rows([])
            marks = ",".join("?" * len(ids))
            res = self._db.execute(
                "SELECT meter_id, ts, prev, value FROM (SELECT meter_id, ts, value, "
                "LAG(value) OVER (PARTITION BY meter_id ORDER BY ts) AS prev FROM value "
                f"WHERE field_id = ? AND meter_id IN ({marks}) AND ts >= ? AND ts < ?) WHERE value < prev",
                (fid, *ids.values(), to_ms(start), to_ms(end))).fetchall()
        row_of = {mid: meters.index(name) for name, mid in ids.items()}
        return Drops.from_rows([(row_of[m], ts, p, v) for m, ts, p, v in res])

    def register_counters(self, wraps: Mapping[tuple[str, str], float | None]) -> None:
        with self._lock:
            rows = [(self._id("meter", m), self._id("field", f), w) for (m, f), w in wraps.items()]
            self._db.executemany("INSERT OR REPLACE INTO counter VALUES (?,?,?)", rows)

    def counter_wraps(self, meters: Sequence[str], field: str) -> np.ndarray:
        out = np.full(len(meters), np.nan)
        with self._lock:
            ids = self._known_ids("meter", meters)
            fid = self._known_ids("field", [field]).get(field)
            if fid is None or not ids:
                return out
            marks = ",".join("?" * len(ids))
            rows = self._db.execute(f"SELECT meter_id, wrap FROM counter WHERE field_id = ? AND meter_id IN ({marks})"
                                    " AND wrap IS NOT NULL", (fid, *ids.values())).fetchall()
        row_of = {mid: meters.index(name) for name, mid in ids.items()}
        for mid, wrap in rows:
            out[row_of[mid]] = wrap
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()
