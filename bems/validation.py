"""Turn pydantic validation errors into messages that name the file, the key and what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from bems.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def key_path(loc: tuple[Any, ...], data: Any) -> str:
    """Render a pydantic location as ``meters[2](id=x).device.profile`` so a human finds the entry."""
    out = ""
    node = data
    for item in loc:
        if isinstance(item, int):
            entry = node[item] if isinstance(node, list) and item < len(node) else None
            ident = entry.get("id") if isinstance(entry, dict) else None
            out += f"[{item}]" + (f"(id={ident})" if ident else "")
            node = entry
        else:
            out += ("." if out else "") + str(item)
            node = node.get(item) if isinstance(node, dict) else None
    return out or "(top level)"


def format_validation_error(source: str, err: ValidationError, data: Any) -> str:
    lines = [f"{source}: invalid configuration"]
    errors = err.errors()
    failed_items = {tuple(e["loc"][:-1]) for e in errors if len(e["loc"]) > 1}
    for e in errors:
        if e["type"] == "too_short" and tuple(e["loc"]) in {k[:len(e["loc"])] for k in failed_items}:
            continue  # a list counted short only because its items failed; those errors say why
        msg = "unknown key (remove it or check its spelling)" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {key_path(tuple(e['loc']), data)}: {msg}")
    return "\n".join(lines)


def load_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read file ({exc.strerror}); pass an existing file") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc


def parse_model(model: type[M], data: Any, source: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc, data)) from exc
