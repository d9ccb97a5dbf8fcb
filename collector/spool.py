"""The disk buffer: validated readings the store could not take yet, oldest first, bounded.

A batch is committed with fsync before its messages are acknowledged, so it is as durable as a store write; a
restarted collector with the same client id drains what its predecessor left. When the spool is full the
collector stops acknowledging and the broker keeps the rest in the session queue.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from bems.errors import StoreError
from bems.sqlite_file import open_wal
from bems.wire import Reading

SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    id INTEGER PRIMARY KEY AUTOINCREMENT, reading BLOB NOT NULL, flags INTEGER NOT NULL DEFAULT 0);
"""


class Spool:
    def __init__(self, path: str | Path, max_readings: int) -> None:
        self.path = Path(path)
        self.max_readings = max_readings
        self._lock = threading.Lock()
        try:
            self._db = open_wal(self.path, SCHEMA, synchronous="FULL")
            self._size = self._db.execute("SELECT count(*) FROM spool").fetchone()[0]
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the disk buffer {self.path}: {exc}", retryable=False) from exc

    def __len__(self) -> int:
        return self._size

    def room(self) -> int:
        return max(0, self.max_readings - self._size)

    def put(self, readings: Sequence[Reading], flags: Sequence[int]) -> None:
        rows = [(r.to_json(), int(f)) for r, f in zip(readings, flags, strict=True)]
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT INTO spool (reading, flags) VALUES (?, ?)", rows)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise StoreError(f"cannot write the disk buffer {self.path}: {exc}") from exc
            self._size += len(rows)

    def peek(self, n: int) -> tuple[int, list[Reading], list[int]]:
        """The oldest ``n`` readings and the id of the last one (for :meth:`remove_through`)."""
        with self._lock:
            rows = self._db.execute("SELECT id, reading, flags FROM spool ORDER BY id LIMIT ?", (n,)).fetchall()
        if not rows:
            return 0, [], []
        return rows[-1][0], [Reading.model_validate_json(r[1]) for r in rows], [r[2] for r in rows]

    def remove_through(self, last_id: int) -> None:
        with self._lock:
            removed = self._db.execute("DELETE FROM spool WHERE id <= ?", (last_id,)).rowcount
            self._size = max(0, self._size - removed)

    def close(self) -> None:
        with self._lock:
            self._db.close()
