"""Settings shared by the stages: each stage has one pydantic-settings class, validated at start."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "secret", "password", "admin", "demo"}
INFLUX_V2_SCHEMES = ("influx2", "influx2+http", "influx2+https")
INFLUX_TOKEN_ENV = "INFLUXDB_V2_TOKEN"  # influxdb-client's own variable, read by bems.store when no token is given


def is_placeholder(secret: str) -> bool:
    return secret.strip().lower() in PLACEHOLDER_SECRETS


def url_password(url: str) -> str | None:
    """The password in ``scheme://user:password@host/...``, or None (also for text that is not a URL)."""
    if "://" not in url:
        return None
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return None if password is None else unquote(password)


def _secret_fields(model: BaseModel, env: str) -> Iterator[tuple[str, str, bool]]:
    """(environment variable, secret text, whether it came from a URL) for every secret a model holds."""
    for name in type(model).model_fields:
        value = getattr(model, name, None)
        var = f"{env}{name.upper()}"
        if isinstance(value, SecretStr):
            yield var, value.get_secret_value(), False
        elif isinstance(value, str) and (password := url_password(value)) is not None:
            yield var, password, True
        elif isinstance(value, BaseModel):
            yield from _secret_fields(value, var + "__")


def secret_values(settings: BaseSettings) -> list[str]:
    """Every secret text in ``settings`` (passwords in URLs, tokens), longest first, for log redaction."""
    env = settings.model_config.get("env_prefix", "")
    found = {text for _, text, _ in _secret_fields(settings, env) if text and not is_placeholder(text)}
    if token := os.environ.get(INFLUX_TOKEN_ENV):
        found.add(token)
    return sorted(found, key=len, reverse=True)


def influx_token_problem(store_url: str, token: SecretStr | None, setting: str) -> str | None:
    """Why an InfluxDB 2.x store cannot be opened with this token (None: it can, or the store is not 2.x)."""
    if urlsplit(store_url).scheme not in INFLUX_V2_SCHEMES:
        return None
    text = token.get_secret_value() if token is not None else os.environ.get(INFLUX_TOKEN_ENV)
    if text is None:
        return (f"the store {store_url.split('?')[0]} is InfluxDB 2.x and no API token is set; "
                f"set {setting} (or {INFLUX_TOKEN_ENV})")
    if is_placeholder(text):
        return f"the InfluxDB token in {setting if token is not None else INFLUX_TOKEN_ENV} is a placeholder; " \
               f"set a real token"
    return None


class BrokerSettings(BaseModel):
    """Where the MQTT broker is and how to log in; the password never appears in logs or reprs."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field("mqtt://127.0.0.1:1883", description="mqtt://host:port or mqtts://host:port (TLS)")
    username: str | None = None
    password: SecretStr | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = Field(30, ge=5, le=3600)

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"broker url {url!r} must look like mqtt://host:1883 or mqtts://host:8883")
        return url

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    def credentials_problem(self, env: str, anonymous_setting: str) -> str | None:
        """Why this broker login is unfit for production (None: a username with a password, or a client
        certificate); ``env`` is the settings' prefix for the broker, e.g. ``BEMS_COLLECTOR_BROKER__``."""
        if self.cert_file is not None:
            return None
        if self.username is None:
            return (f"no broker credentials: set {env}USERNAME and {env}PASSWORD (or a client certificate in "
                    f"{env}CERT_FILE); for a broker that allows anonymous clients (tests, a demo) set "
                    f"{anonymous_setting}=true")
        if self.password is None:
            return f"the broker username {self.username!r} has no password: set {env}PASSWORD"
        return None


class StageSettings(BaseSettings):
    """Common to every stage: the fleet file and the log level. Environment: ``BEMS_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="BEMS_", env_nested_delimiter="__", extra="forbid")

    fleet: Path = Field(description="the fleet file (YAML)")
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _no_placeholder_secrets(self) -> StageSettings:
        """Refuse ``changeme`` and friends in every secret and URL password, naming the environment variable."""
        env = self.model_config.get("env_prefix", "")
        for var, text, in_url in _secret_fields(self, env):
            if is_placeholder(text):
                what = f"the password in {var.removeprefix(env).lower().replace('__', '.')} ({var})" if in_url \
                    else var
                raise ValueError(f"{what} is a placeholder; set a real secret")
        return self
