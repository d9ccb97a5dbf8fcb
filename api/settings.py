"""API settings (environment ``BEMS_API_...`` or command-line flags).

Database URLs with a password belong in the environment (``BEMS_API_DB``), not on the command line. A URL
whose password is a placeholder (``changeme``, ``secret``, ...) is refused at start, naming the setting.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from bems.settings import PLACEHOLDER_SECRETS, StageSettings


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

    @model_validator(mode="after")
    def _no_placeholder_passwords(self) -> ApiSettings:
        for name in ("store", "db"):
            password = urlsplit(getattr(self, name)).password
            if password is not None and unquote(password).lower() in PLACEHOLDER_SECRETS:
                raise ValueError(f"the password in {name} (BEMS_API_{name.upper()}) is a placeholder; "
                                 f"set a real secret")
        return self
