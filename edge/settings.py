"""Edge agent settings (environment ``BEMS_EDGE_...`` or command-line flags)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from bems.settings import BrokerSettings, StageSettings


class EdgeSettings(StageSettings):
    model_config = SettingsConfigDict(env_prefix="BEMS_EDGE_", env_nested_delimiter="__", extra="forbid")

    edge_id: str = Field(description="this edge's id in the fleet file")
    broker: BrokerSettings = BrokerSettings()
    poll_period_s: float | None = Field(None, gt=0, description="overrides the fleet's period")
    timeout_s: float = Field(2.0, gt=0, le=60)
