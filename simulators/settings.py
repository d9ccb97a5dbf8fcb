"""Simulator settings (environment ``BEMS_SIM_...`` or flags)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from bems.settings import StageSettings


class SimulatorSettings(StageSettings):
    model_config = SettingsConfigDict(env_prefix="BEMS_SIM_", env_nested_delimiter="__", extra="forbid")

    seed: int = 0
    backfill_days: float = Field(0, ge=0, le=400, description="write this many days of history first")
    store: str | None = Field(None, description="store URL for the backfill")
    scenario: Path | None = Field(None, description="fault scenario file (YAML)")
    labels: Path | None = Field(None, description="append injected faults to this CSV label file")
    control_port: int | None = Field(None, ge=0, le=65535,
                                     description="serve the fault-injection API on 127.0.0.1:PORT (0: any free port)")
