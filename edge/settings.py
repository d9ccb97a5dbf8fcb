"""Edge agent settings (environment ``BEMS_EDGE_...`` or command-line flags), checked before anything starts."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from bems.settings import BrokerSettings, StageSettings


class EdgeSettings(StageSettings):
    model_config = SettingsConfigDict(env_prefix="BEMS_EDGE_", env_nested_delimiter="__", extra="forbid")

    edge_id: str = Field(description="this edge's id in the fleet file")
    broker: BrokerSettings = BrokerSettings()
    poll_period_s: float | None = Field(None, gt=0, le=3600, description="overrides the fleet's period")
    timeout_s: float | None = Field(None, gt=0, le=60, description="overrides the fleet's Modbus timeout")
    state_dir: Path | None = Field(None, description="the reading queue is <state-dir>/<edge-id>/queue.db; "
                                                     "default: edge-state beside the fleet file")
    queue_max_mb: float = Field(256.0, gt=0, description="disk cap of the queue; past it the oldest readings are "
                                                         "dropped and counted")
    inflight: int = Field(500, ge=1, le=20000, description="readings sent to the broker and not yet acknowledged")
    mqtt_version: str = Field("5", pattern=r"^(5|3\.1\.1)$",
                              description="5 (refused publishes are reported) or 3.1.1")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="serve Prometheus metrics on this port")
    metrics_host: str = Field("127.0.0.1", description="address of the metrics endpoint")
    status_interval_s: float = Field(30.0, gt=0, description="how often the retained status carries the counters")
    check: bool = Field(False, description="validate the config, read every device once, print a table and exit")
    signing_key: Path | None = Field(None, description="this edge's Ed25519 private key (from `bems edge keygen`); "
                                                       "default: <state-dir>/<edge-id>/signing.key")

    @model_validator(mode="after")
    def _broker_files(self) -> EdgeSettings:
        b = self.broker
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(b, key)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"broker.{key}: file {path} does not exist")
        if (b.ca_file or b.cert_file or b.key_file) and not b.tls:
            raise ValueError(f"broker.url: TLS files are set but {b.url} is not mqtts://; use mqtts://host:8883")
        if b.key_file and not b.cert_file:
            raise ValueError("broker.key_file: a client key needs its certificate in broker.cert_file")
        if b.password is not None and not b.username:
            raise ValueError("broker.username: a password is set without a username")
        return self

    def queue_path(self) -> Path:
        return self._state_base() / self.edge_id / "queue.db"

    def signing_key_path(self) -> Path:
        return self.signing_key or self._state_base() / self.edge_id / "signing.key"

    def _state_base(self) -> Path:
        return self.state_dir or Path(self.fleet).resolve().parent / "edge-state"
