"""API settings (environment ``BEMS_API_...`` or command-line flags).

Database URLs with a password belong in the environment (``BEMS_API_DB``), not on the command line.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from bems.settings import StageSettings


class ApiSettings(StageSettings):
    model_config = SettingsConfigDict(env_prefix="BEMS_API_", env_nested_delimiter="__", extra="forbid")

    store: str = Field("sqlite:///bems-data/readings.db",
                       description="store URL: sqlite:///path or influx://host:port/db")
    db: str = Field("sqlite:///bems-data/state.db",
                    description="SQLAlchemy URL of the relational state (alerts, tokens)")
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=1, le=65535, description="TCP port to listen on")
