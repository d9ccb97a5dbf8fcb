"""Run a stage alone: ``python -m <stage> --config fleet.yaml ...``.

``setup(argv) -> settings`` is apart from ``async run(settings)`` so tests start a stage with an argv list.
Flags are derived from the stage's settings class; secrets come only from the environment or files.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from pydantic import SecretStr, ValidationError

from bems.errors import BemsError, ConfigError
from bems.settings import StageSettings, secret_values
from bems.validation import format_validation_error

S = TypeVar("S", bound=StageSettings)
_SCALARS = (str, int, float, bool)


def _flag_type(annotation: Any) -> type | None:
    for t in (*getattr(annotation, "__args__", ()), annotation):
        if t in _SCALARS:
            return t
        if getattr(t, "__name__", "") in ("Path", "PosixPath"):
            return str
    return None


def setup(settings_cls: type[S], argv: Sequence[str] | None, prog: str, description: str) -> S:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    prefix = settings_cls.model_config.get("env_prefix", "")
    parser.add_argument("--config", dest="fleet", help=f"fleet file (YAML); env {prefix}FLEET")
    if "broker" in settings_cls.model_fields:
        parser.add_argument("--broker", dest="broker_url", help="MQTT broker URL, e.g. mqtt://127.0.0.1:1883")
        parser.add_argument("--broker-username", dest="broker_username",
                            help=f"the password only from {prefix}BROKER__PASSWORD")
    for name, info in settings_cls.model_fields.items():
        if name in ("fleet", "broker"):
            continue
        ftype = _flag_type(info.annotation)
        if ftype is None or info.annotation is SecretStr:
            continue
        flag = "--" + name.replace("_", "-")
        if ftype is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                                help=info.description)
        else:
            parser.add_argument(flag, dest=name, type=ftype, help=info.description)
    args = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    broker = {k.removeprefix("broker_"): args.pop(k) for k in ("broker_url", "broker_username") if k in args}
    if broker:
        args["broker"] = broker
    try:
        return settings_cls(**args)
    except ValidationError as exc:
        flag = {"fleet": "config"}
        hints = [f"  {e['loc'][0]}: set it with --{flag.get(str(e['loc'][0]), str(e['loc'][0])).replace('_', '-')}"
                 f" or {prefix}{str(e['loc'][0]).upper()}" for e in exc.errors() if e["type"] == "missing"]
        raise ConfigError("\n".join([format_validation_error(f"{prog} settings", exc, args), *hints])) from exc




class RedactSecrets(logging.Filter):
    """Replaces the settings' secrets in every record that reaches the handlers: a library logging a URL or a
    header at DEBUG cannot print a password or token, whatever module wrote the line."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def _clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = self._clean(message), None
        if record.exc_text:
            record.exc_text = self._clean(record.exc_text)
        return True


def configure_logging(level: str, secrets: Sequence[str] = ()) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if secrets:
        redact = RedactSecrets(secrets)
        for handler in logging.getLogger().handlers:
            handler.addFilter(redact)
    for noisy in ("pymodbus", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING if level.upper() != "DEBUG" else logging.INFO)


def main(settings_cls: type[S], run: Callable[[S], Awaitable[None]], argv: Sequence[str] | None,
         prog: str, description: str) -> int:
    """Parse, validate, run until SIGINT/SIGTERM; a configuration error exits 2 with its message."""
    try:
        settings = setup(settings_cls, argv, prog, description)
    except BemsError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, secret_values(settings))
    try:
        asyncio.run(_until_signal(run(settings)))
    except BemsError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    return 0


async def _until_signal(coro: Awaitable[None]) -> None:
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
