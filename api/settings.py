"""API settings (environment ``BEMS_API_...`` or command-line flags).

Database URLs with a password belong in the environment (``BEMS_API_DB``), not on the command line. A URL
whose password is a placeholder (``changeme``, ``secret``, ...) is refused at start, naming the setting, and so is
an InfluxDB 2.x store without a real ``INFLUXDB_V2_TOKEN``.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from bems.settings import INFLUX_TOKEN_ENV, StageSettings, influx_token_problem


class ApiSettings(StageSettings):
    model_config = SettingsConfigDict(env_prefix="BEMS_API_", env_nested_delimiter="__", extra="forbid")

    store: str = Field("sqlite:///bems-data/readings.db",
                       description="store URL: sqlite:///path or influx://host:port/db")
    db: str = Field("sqlite:///bems-data/state.db",
                    description="SQLAlchemy URL of the relational state (alerts, tokens)")
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=1, le=65535, description="TCP port to listen on")
    tariffs: Path | None = Field(None, description="tariff and emission-factor file (default: bems/tariffs.yaml)")
    calendar: Path | None = Field(None, description="office calendar file (default: bems/office_calendar.yaml)")
    cache_ttl_s: float = Field(30.0, ge=0, le=3600,
                               description="seconds a building page, portfolio or KPI payload is reused")
    stream_poll_s: float = Field(1.0, ge=0.1, le=60, description="seconds between store polls of a live stream")
    max_streams: int = Field(200, ge=1, le=100_000, description="live streams served at once (more get 503)")

    auth_fail_limit: int = Field(10, ge=1, le=10_000,
                                 description="failed token checks from one client address before it gets 429")
    auth_fail_window_s: float = Field(60.0, gt=0, le=86_400,
                                      description="seconds over which failed token checks are counted")
    cors_origins: list[str] = Field([], description="origins allowed to call the API from a browser (CORS), e.g. "
                                                    '["https://energy.example.ir"]; empty: no CORS headers at all')

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
                raise ValueError(f"cors origin {origin!r} must be scheme://host[:port] like https://energy.example.ir"
                                 " (no wildcard, no path)")
        return [o.rstrip("/") for o in origins]

    @model_validator(mode="after")
    def _influx_token(self) -> ApiSettings:
        if problem := influx_token_problem(self.store, None, INFLUX_TOKEN_ENV):
            raise ValueError(problem)
        return self
