"""Time-series stores. ``open_store(url)`` picks the backend from the URL scheme."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from bems.errors import ConfigError
from bems.store.base import (
    AGGS,
    Agg,
    Latest,
    Matrix,
    Points,
    SignedPoints,
    Store,
    StoreRejected,
    StoreUnavailable,
    WriteResult,
)

__all__ = ["AGGS", "Agg", "Latest", "Matrix", "Points", "SignedPoints", "Store", "StoreRejected", "StoreUnavailable",
           "WriteResult", "open_store"]

SCHEMES = ("sqlite:///<path>", "influx://host:port/<database>", "influx+https://host:port/<database>",
           "influx2://host:port/<bucket>?org=<org>", "influx2+https://host:port/<bucket>?org=<org>")


def open_store(url: str, *, token: str | None = None) -> Store:
    """The store at ``url``; ``token`` is the InfluxDB 2.x API token (else ``INFLUXDB_V2_TOKEN``)."""
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
    if scheme in ("influx2", "influx2+http", "influx2+https"):
        from bems.store.influx import InfluxV2Store

        return InfluxV2Store(url, token=token)
    raise ConfigError(f"store URL {url!r}: unknown scheme {scheme!r}; allowed: {', '.join(SCHEMES)}")
