"""Collector settings (environment ``BEMS_COLLECTOR_...`` or command-line flags)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from bems.settings import BrokerSettings, StageSettings


class CollectorSettings(StageSettings):
    model_config = SettingsConfigDict(env_prefix="BEMS_COLLECTOR_", env_nested_delimiter="__", extra="forbid")

    store: str = Field("sqlite:///bems-data/readings.db", description="store URL: sqlite:///path or influx://host:port/db")
    broker: BrokerSettings = BrokerSettings()
    client_id: str = Field("bems-collector-1", description="stable id: the broker keeps this session's queue")
    shared_group: str | None = Field(None, description="join $share/<group>/ to split the stream with peers")
    batch_size: int = Field(2000, ge=1, le=100_000)
    batch_interval_s: float = Field(0.5, gt=0, le=60)
    future_tolerance_s: float = Field(300.0, ge=0, description="refuse readings further in the future")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="serve Prometheus metrics here")
