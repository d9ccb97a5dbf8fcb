"""The dead-letter store: every refused message with its reason, in a SQLite file beside the collector.

Inspect it with ``bems deadletter list|count|show``. A row is committed (fsync) before the message is
acknowledged, so a refusal is never lost; a crash between the two can record the same message twice.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bems.errors import BemsError
from bems.sqlite_file import open_wal

KEEP_PAYLOAD_BYTES = 16_384  # an oversized payload keeps its head, its size and its digest
KEEP_TOPIC_CHARS = 1024
KEEP_DETAIL_CHARS = 2000

SCHEMA = """
CREATE TABLE IF NOT EXISTS deadletter (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at TEXT NOT NULL,
    collector TEXT NOT NULL,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    payload BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS deadletter_reason ON deadletter (reason, id);
"""


class DeadLetterError(BemsError):
    """The dead-letter store cannot be opened or written."""


@dataclass(frozen=True)
class Letter:
    topic: str
    payload: bytes
    reason: str
    detail: str


@dataclass(frozen=True)
class Entry:
    id: int
    received_at: str
    collector: str
    topic: str
    reason: str
    detail: str
    size: int
    sha256: str
    payload: bytes


class DeadLetters:
    def __init__(self, path: str | Path, collector: str = "", max_rows: int = 1_000_000,
                 create: bool = True) -> None:
        self.path = Path(path)
        self.collector = collector
        self.max_rows = max_rows
        if not create and not self.path.is_file():
            raise DeadLetterError(f"no dead-letter store at {self.path}; pass --path (the collector's data "
                                  "directory holds deadletter.db)")
        self._lock = threading.Lock()
        try:
            self._db = open_wal(self.path, SCHEMA, synchronous="FULL")
        except (OSError, sqlite3.Error) as exc:
            raise DeadLetterError(f"cannot open the dead-letter store {self.path}: {exc}") from exc
        self._rows = self.count()

    def add(self, letters: Sequence[Letter]) -> None:
        """Record letters in one transaction; returns once they are on disk."""
        if not letters:
            return
        now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        rows = [(now, self.collector, lt.topic[:KEEP_TOPIC_CHARS], lt.reason, lt.detail[:KEEP_DETAIL_CHARS],
                 len(lt.payload), hashlib.sha256(lt.payload).hexdigest(), lt.payload[:KEEP_PAYLOAD_BYTES])
                for lt in letters]
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT INTO deadletter (received_at, collector, topic, reason, detail, size, "
                                     "sha256, payload) VALUES (?,?,?,?,?,?,?,?)", rows)
                self._rows += len(rows)
                if self._rows > self.max_rows:
                    self._db.execute("DELETE FROM deadletter WHERE id <= (SELECT max(id) FROM deadletter) - ?",
                                     (self.max_rows,))
                    self._rows = self.max_rows
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise DeadLetterError(f"cannot write the dead-letter store {self.path}: {exc}") from exc

    def count(self, reason: str | None = None) -> int:
        with self._lock:
            if reason is None:
                return self._db.execute("SELECT count(*) FROM deadletter").fetchone()[0]
            return self._db.execute("SELECT count(*) FROM deadletter WHERE reason = ?", (reason,)).fetchone()[0]

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT reason, count(*) FROM deadletter GROUP BY reason ORDER BY reason"))

    def list(self, reason: str | None = None, limit: int = 20, before: int | None = None) -> list[Entry]:
        """Newest first."""
        where = "id < ? AND reason = ?" if reason else "id < ?"
        sql = f"SELECT * FROM deadletter WHERE {where} ORDER BY id DESC LIMIT ?"
        args: tuple = (before or 2**62, *((reason,) if reason else ()), limit)
        with self._lock:
            return [Entry(*row) for row in self._db.execute(sql, args)]

    def get(self, entry_id: int) -> Entry | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM deadletter WHERE id = ?", (entry_id,)).fetchone()
        return Entry(*row) if row else None

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _payload_text(entry: Entry) -> str:
    try:
        text = entry.payload.decode("utf-8")
        if text.isprintable() or all(c.isprintable() or c in "\n\r\t" for c in text):
            return text
    except UnicodeDecodeError:
        pass
    return entry.payload[:1024].hex(" ") + (" ..." if len(entry.payload) > 1024 else "")


def render(action: str, path: str | Path, *, reason: str | None = None, limit: int = 20,
           entry_id: int | None = None) -> str:
    """Text for ``bems deadletter list|count|show``."""
    store = DeadLetters(path, create=False)
    try:
        if action == "count":
            if reason:
                return str(store.count(reason))
            counts = store.counts()
            return "\n".join([f"total\t{sum(counts.values())}", *(f"{k}\t{v}" for k, v in counts.items())])
        if action == "list":
            rows = [f"{e.id}\t{e.received_at}\t{e.reason}\t{e.topic[:120]}\t{e.detail[:160]}"
                    for e in store.list(reason, limit)]
            return "\n".join(["id\treceived_at\treason\ttopic\tdetail", *rows]) if rows else "no dead letters"
        if entry_id is None:
            raise DeadLetterError("deadletter show needs the entry id, e.g. `bems deadletter show 42`")
        entry = store.get(entry_id)
        if entry is None:
            raise DeadLetterError(f"no dead letter with id {entry_id} in {path}; `bems deadletter list` shows ids")
        kept = "" if entry.size <= len(entry.payload) else f" (first {len(entry.payload)} kept)"
        return "\n".join([f"id: {entry.id}", f"received_at: {entry.received_at}", f"collector: {entry.collector}",
                          f"topic: {entry.topic}", f"reason: {entry.reason}", f"detail: {entry.detail}",
                          f"size: {entry.size} bytes{kept}", f"sha256: {entry.sha256}", "payload:",
                          _payload_text(entry)])
    finally:
        store.close()
