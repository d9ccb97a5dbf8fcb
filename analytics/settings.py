"""Analytics settings (environment ``BEMS_ANALYTICS_...`` or flags)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from bems.settings import BrokerSettings, StageSettings


class AnalyticsSettings(StageSettings):
    model_config = SettingsConfigDict(env_prefix="BEMS_ANALYTICS_", env_nested_delimiter="__", extra="forbid")

    store: str = Field("sqlite:///bems-data/readings.db", description="store URL")
    db: str = Field("sqlite:///bems-data/state.db", description="relational state (alerts) URL")
    interval_s: float = Field(300, gt=0, description="seconds between detection passes")
    lookback_days: float = Field(28, gt=1, le=366, description="history the baselines are computed on")
    once: bool = Field(False, description="run one pass and exit")
    broker: BrokerSettings | None = Field(None, description="publish new alerts on bems/v1/alerts/... here")
    subscriptions: Path | None = Field(None, description="utilities' webhook subscriptions (YAML)")
    tariffs: Path | None = Field(None, description="tariff book (YAML); default: the one shipped with bems")
    tuning: Path | None = Field(None, description="detector thresholds per meter, building, commodity (YAML; "
                                                  "analytics/tuning.py)")
    delivery_interval_s: float = Field(5, gt=0, description="seconds between webhook delivery rounds")
    seal_key: SecretStr | None = Field(None, description="server seal key (environment only; bems.seal)")
    seal_key_file: Path | None = Field(None, description="file with the server seal key; none: days are not sealed")
    seal_after_hours: float = Field(26, gt=0, description="seal each UTC day this long after it ended")
