"""Open a local SQLite file the way every bems component needs it: autocommit, shared across threads, WAL."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal


def open_wal(path: Path, schema: str, *, synchronous: Literal["NORMAL", "FULL"],
             timeout: float = 30.0) -> sqlite3.Connection:
    """Create the parent directory and the schema; WAL so readers never block the writer.

    Raises ``OSError`` or ``sqlite3.Error``: the caller names the file's role and the fix.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=timeout)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.executescript(schema)
    return db
