"""The edge's durable queue of readings (SQLite, WAL): every reading is stored here before it is sent, and leaves
only when the broker acknowledged it.

The row id is the reading's sequence number (AUTOINCREMENT: never reused, not even after the queue emptied), so
the per-edge sequence survives restarts. A fresh queue starts its sequence at the clock in microseconds, so an
edge whose state was lost still continues above what it sent before. A transaction that stores readings is synced
to disk (``synchronous=FULL``): an appended reading survives a crash or a power cut; one that only deletes sent
readings is not (a power cut may then cost a duplicate, never a loss). The queue is used from one thread only.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bems.errors import ConfigError
from bems.sqlite_file import open_wal

log = logging.getLogger("bems.edge")

Row = tuple[int, str, bytes]  # seq, topic, payload

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS refused (seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL,
                                    reason TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass
class CycleResult:
    """What one queue cycle did: stored, deleted, dropped over the cap, set aside, and the next rows to send."""

    stored: int = 0
    deleted: int = 0
    dropped: int = 0
    refused: int = 0
    rows: list[Row] = field(default_factory=list)
    depth: int = 0
    last_seq: int = 0


class Outbox:
    def __init__(self, path: Path, max_bytes: int) -> None:
        try:
            self.db = open_wal(path, _SCHEMA, synchronous="FULL", timeout=5.0)
            self._sync = "FULL"
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"state_dir: cannot open the reading queue {path} ({exc}); "
                              "choose a writable directory with --state-dir") from exc
        self.path = path
        self.max_bytes = max_bytes
        self.page_size = self.db.execute("PRAGMA page_size").fetchone()[0]
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
        if row is None:  # a new queue: start the sequence at the clock (see the module docstring)
            self.db.execute("INSERT INTO sqlite_sequence(name, seq) VALUES ('outbox', ?)", (time.time_ns() // 1000,))
            row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
        self.last_seq: int = row[0]
        self.depth: int = self.db.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def counter(self, name: str) -> int:
        row = self.db.execute("SELECT value FROM counters WHERE name=?", (name,)).fetchone()
        return row[0] if row else 0

    def used_bytes(self) -> int:
        pages = self.db.execute("PRAGMA page_count").fetchone()[0] - self.db.execute(
            "PRAGMA freelist_count").fetchone()[0]
        return pages * self.page_size

    def append(self, render: Callable[[int], Sequence[tuple[str, bytes]]]) -> int:
        """Store readings, rendered from the first free sequence number, in one transaction. Returns the count."""
        return self.cycle(render, (), (), 0, 0).stored

    def fetch(self, after: int, limit: int) -> list[Row]:
        if limit <= 0:
            return []
        return self.db.execute("SELECT seq, topic, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                               (after, limit)).fetchall()

    def cycle(self, render: Callable[[int], Sequence[tuple[str, bytes]]] | None, acked: Sequence[int],
              refused: Sequence[tuple[int, str]], after: int, room: int) -> CycleResult:
        """One pass of the queue worker, one transaction (one fsync): forget what the broker acknowledged, set aside
        what it refused, store new readings, keep the disk cap; then fetch the next rows to send.

        ``render(first)`` gives the new readings as (topic, payload), the k-th numbered ``first + k``: the
        readings are numbered before they are signed, and signed together."""
        res = CycleResult()
        first = self.last_seq + 1
        rows: list[Row] = [(first + k, topic, payload) for k, (topic, payload) in enumerate(render(first))] \
            if render is not None else []
        if acked or refused or rows:
            # new readings must be on disk before they are sent; a lost delete only means a reading is sent twice
            sync = "FULL" if rows else "NORMAL"
            if sync != self._sync:
                self.db.execute(f"PRAGMA synchronous={sync}")
                self._sync = sync
            self.db.execute("BEGIN IMMEDIATE")
            try:
                if acked:
                    res.deleted = self.db.executemany("DELETE FROM outbox WHERE seq=?",
                                                      [(s,) for s in acked]).rowcount
                if refused:
                    res.refused = self._refuse(refused)
                if rows:
                    self.db.executemany("INSERT INTO outbox(seq, topic, payload) VALUES (?, ?, ?)", rows)
                    res.stored = len(rows)
                self.depth += res.stored - res.deleted - res.refused
                if rows and self.used_bytes() > self.max_bytes:
                    res.dropped = self._drop_oldest()
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                self.depth = self.db.execute("SELECT count(*) FROM outbox").fetchone()[0]
                raise
            if rows:
                self.last_seq = rows[-1][0]
        res.rows = self.fetch(after, room)
        res.depth, res.last_seq = self.depth, self.last_seq
        return res

    def _refuse(self, refused: Sequence[tuple[int, str]]) -> int:
        """Move readings the broker refused to the ``refused`` table: kept for an operator, no longer sent."""
        now = time.time()
        self.db.executemany("INSERT OR REPLACE INTO refused(seq, topic, payload, reason, at) "
                            "SELECT seq, topic, payload, ?, ? FROM outbox WHERE seq=?",
                            [(reason, now, seq) for seq, reason in refused])
        n = self.db.executemany("DELETE FROM outbox WHERE seq=?", [(seq,) for seq, _ in refused]).rowcount
        self._add("refused", n)
        return n

    def _drop_oldest(self) -> int:
        """Past the disk cap, drop the oldest readings (down to 90% of the cap) and count them, loudly."""
        used = self.used_bytes()
        per_row = max(used / max(self.depth, 1), 1.0)
        n = min(self.depth, int((used - 0.9 * self.max_bytes) / per_row) + 1)
        span = self.db.execute("SELECT min(seq), max(seq) FROM (SELECT seq FROM outbox ORDER BY seq LIMIT ?)",
                               (n,)).fetchone()
        dropped = self.db.execute("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)",
                                  (n,)).rowcount
        self._add("dropped", dropped)
        self.depth -= dropped
        log.warning("reading queue %s is over its cap of %.2f MB: dropped the %d oldest readings (seq %s..%s)",
                    self.path, self.max_bytes / 1e6, dropped, span[0], span[1])
        return dropped

    def close(self) -> None:
        self.db.close()

    def _add(self, name: str, n: int) -> None:
        if n:
            self.db.execute("INSERT INTO counters(name, value) VALUES (?, ?) "
                            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (name, n))
