"""Fault scenarios (YAML files, or one fault at a time from the control API), checked against the fleet.

A scenario file::

    faults:
      - {type: spike, meter: tehran-moi-hq.main-elec, start: 2025-01-04T10:00:00Z, end: 2025-01-04T10:15:00Z,
         factor: 8}
      - {type: rollover, meter: tehran-moi-hq.water, start: 2025-01-05T00:00:00Z, end: 2025-01-06T00:00:00Z}

Parameters sit next to ``type`` (see ``simulators.faults.PARAMS`` for each type's parameters and defaults).
Every error names the file, the key and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, model_validator

from bems.errors import ConfigError
from bems.registers import load_profile
from bems.validation import load_yaml, parse_model
from simulators.faults import (
    FAULT_TYPES,
    LOAD_FAULTS,
    Fault,
    FaultType,
    check_params,
    write_labels,
)
from simulators.model import FleetModel, MeterModel

__all__ = ["FaultSpec", "Scenario", "fault_from_spec", "load_scenario", "write_labels"]


class FaultSpec(BaseModel):
    """One fault as written in a scenario file or posted to the control API."""

    model_config = ConfigDict(extra="allow")

    type: FaultType
    meter: str
    start: AwareDatetime
    end: AwareDatetime

    @model_validator(mode="after")
    def _check(self) -> FaultSpec:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        check_params(self.type, self.model_extra or {})
        return self

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")

    faults: list[FaultSpec] = []


def _allowed(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def fault_from_spec(spec: FaultSpec, model: FleetModel | Mapping[str, MeterModel], where: str) -> Fault:
    """Check a fault against the simulated meters and build it; ``where`` prefixes errors (file and key)."""
    meters = {m.meter: m for m in model.meters} if isinstance(model, FleetModel) else dict(model)
    mm = meters.get(spec.meter)
    if mm is None:
        raise ConfigError(f"{where}.meter: unknown meter {spec.meter!r}; allowed: {_allowed(sorted(meters))}")
    profile = load_profile(mm.profile)
    fields = [r.field for r in profile.registers]
    if spec.type in LOAD_FAULTS and mm.role == "temperature":
        allowed = [t for t in FAULT_TYPES if t not in LOAD_FAULTS]
        raise ConfigError(f"{where}.type: {spec.type} changes a building's consumption, and {spec.meter} is a "
                          f"temperature sensor; allowed for it: {', '.join(allowed)}")
    if spec.type == "rollover" and not any(r.cumulative and r.is_integer for r in profile.registers):
        raise ConfigError(f"{where}.type: rollover needs an integer counter register, and {spec.meter} uses "
                          f"profile {profile.name} whose counters are floating point; allowed profiles: "
                          f"{', '.join(_integer_counter_profiles())}")
    field = spec.params.get("field")
    if field is not None and field not in fields:
        raise ConfigError(f"{where}.field: profile {profile.name} of {spec.meter} has no field {field!r}; "
                          f"allowed: {', '.join(fields)}")
    try:
        return Fault.make(spec.type, spec.meter, spec.start, spec.end, **spec.params)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _integer_counter_profiles() -> list[str]:
    from bems.registers import available_profiles

    return [n for n in available_profiles()
            if any(r.cumulative and r.is_integer for r in load_profile(n).registers)]


def load_scenario(path: Path, model: FleetModel) -> list[Fault]:
    scenario = parse_model(Scenario, load_yaml(path), str(path))
    return [fault_from_spec(f, model, f"{path}: faults[{i}]") for i, f in enumerate(scenario.faults)]


def parse_fault(data: Any, model: FleetModel, source: str) -> Fault:
    """One fault from a mapping (the control API's JSON body)."""
    spec = parse_model(FaultSpec, data, source)
    return fault_from_spec(spec, model, f"{source}: fault")
