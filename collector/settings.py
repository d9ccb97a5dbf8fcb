"""Collector settings (environment ``BEMS_COLLECTOR_...`` or command-line flags)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from bems.settings import BrokerSettings, StageSettings, influx_token_problem

WEEK_S = 7 * 24 * 3600
DEFAULT_GROUP = "bems-collectors"  # the $share group of --workers when no --shared-group is given


class CollectorSettings(StageSettings):
    model_config = SettingsConfigDict(env_prefix="BEMS_COLLECTOR_", env_nested_delimiter="__", extra="forbid")

    store: str = Field("sqlite:///bems-data/readings.db",
                       description="store URL: sqlite:///path, influx://host:port/db (1.x) or "
                                   "influx2://host:port/bucket?org=ORG (2.x/3.x/Cloud)")
    influx_token: SecretStr | None = Field(None, description="InfluxDB 2.x API token (environment only)")
    broker: BrokerSettings = BrokerSettings()
    client_id: str = Field("bems-collector-1", description="stable id: the broker keeps this session's queue")
    shared_group: str | None = Field(None, description="join $share/<group>/ to split the stream with peers")
    workers: int = Field(1, ge=1, le=64,
                         description="collector processes started by this command, client ids <client-id>-1..N, "
                                     f"in the $share group (default {DEFAULT_GROUP}); about one per CPU core; "
                                     "keep it fixed once chosen (each keeps a broker session)")
    session_expiry_s: int = Field(WEEK_S, ge=0, le=2**32 - 1,
                                  description="how long the broker keeps this collector's queue while it is away")
    receive_maximum: int = Field(20_000, ge=1, le=65_535,
                                 description="unacknowledged messages the broker may send at once (MQTT 5)")
    max_packet_bytes: int = Field(1 << 20, ge=1024, description="the broker drops larger messages for us (MQTT 5)")
    batch_size: int = Field(2000, ge=1, le=100_000)
    batch_interval_s: float = Field(0.5, gt=0, le=60)
    future_tolerance_s: float = Field(300.0, ge=0, description="refuse readings further in the future")
    power_limit_factor: float = Field(3.0, gt=1, description="power beyond this many times rated_kw is implausible")
    data_dir: Path | None = Field(None, description="dead-letter store and disk buffer; default: next to a SQLite "
                                                    "store, else ./bems-data")
    spool_max_readings: int = Field(1_000_000, ge=0,
                                    description="readings buffered on disk while the store is down (0: none)")
    dedupe_window: int = Field(100_000, ge=0, description="recent (meter, time) keys kept to count duplicates")
    retry_max_s: float = Field(30.0, gt=0, description="longest wait between store retries")
    deadletter_max_rows: int = Field(1_000_000, ge=1000, description="oldest dead letters are pruned beyond this")
    raw_retention_days: float | None = Field(400, gt=0, description="raw readings older than this are rolled up "
                                                                     "into 30-minute aggregates (kept) and deleted")
    maintenance_interval_s: float = Field(600.0, gt=0, description="period of rollups and retention")
    maintenance: bool = Field(True, description="run rollups and retention in this process (with --workers, only "
                                                "the first worker does)")
    metrics_port: int | None = Field(None, ge=0, le=65535, description="serve Prometheus metrics here")
    allow_anonymous_broker: bool = Field(False, description="connect without broker credentials (tests, demo)")
    signatures: str = Field("required",
                            description="required: store only readings signed by a key the fleet file registers "
                                        "for their edge and building; off: no check (say so explicitly)")
    replay_window: int = Field(100_000, ge=1, description="a signed reading whose seq is this far below the highest "
                                                          "seq seen from its edge is refused as a replay")
    state_url: str | None = Field(None, description="relational state (security alerts); default: "
                                                    "sqlite:///<data-dir>/state.db, as the API's default")

    @model_validator(mode="after")
    def _secrets_present(self) -> CollectorSettings:
        problem = influx_token_problem(self.store, self.influx_token, "BEMS_COLLECTOR_INFLUX_TOKEN")
        if problem is None and not self.allow_anonymous_broker:
            problem = self.broker.credentials_problem("BEMS_COLLECTOR_BROKER__",
                                                      "BEMS_COLLECTOR_ALLOW_ANONYMOUS_BROKER")
        if problem:
            raise ValueError(problem)
        return self

    @field_validator("signatures")
    @classmethod
    def _signatures(cls, value: str) -> str:
        if value not in ("required", "off"):
            raise ValueError(f"{value!r} is not a policy: use 'required' (store only readings signed by their edge, "
                             "the default) or 'off' (no check)")
        return value

    @model_validator(mode="after")
    def _window_holds_a_batch(self) -> CollectorSettings:
        if self.receive_maximum < self.batch_size:
            raise ValueError(f"receive_maximum ({self.receive_maximum}) must be at least batch_size "
                             f"({self.batch_size}): acknowledgements wait for a whole batch")
        if self.replay_window < self.receive_maximum:
            raise ValueError(f"replay_window ({self.replay_window}) must be at least receive_maximum "
                             f"({self.receive_maximum}): a batch delivered again after a restart must not count as "
                             "a replay")
        return self

    def resolved_state_url(self) -> str:
        return self.state_url or f"sqlite:///{self.resolved_data_dir().resolve() / 'state.db'}"

    def resolved_data_dir(self) -> Path:
        if self.data_dir is not None:
            return self.data_dir
        if self.store.startswith("sqlite:///"):
            return Path(self.store.split("sqlite://", 1)[1][1:]).parent
        return Path("bems-data")
