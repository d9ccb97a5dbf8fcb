"""Time-series stores. ``open_store(url)`` picks the backend from the URL scheme."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from bems.errors import ConfigError
from bems.store.base import AGGS, Agg, Latest, Matrix, Store, WriteResult

__all__ = ["AGGS", "Agg", "Latest", "Matrix", "Store", "WriteResult", "open_store"]

SCHEMES = ("sqlite:///<path>", "influx://host:port/<database>", "influx+https://host:port/<database>")


def open_store(url: str) -> Store:
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from bems.store.sqlite import SQLiteStore

        path = url.split("sqlite://", 1)[1]
        if not path.startswith("/"):
            raise ConfigError(f"store URL {url!r}: use sqlite:///relative/path or sqlite:////absolute/path")
        return SQLiteStore(Path(path[1:]))
    if scheme in ("influx", "influx+http", "influx+https"):
        from bems.store.influx import InfluxV1Store

        return InfluxV1Store(url)
    raise ConfigError(f"store URL {url!r}: unknown scheme {scheme!r}; allowed: {', '.join(SCHEMES)}")
