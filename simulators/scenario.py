"""Fault scenarios (YAML) and the ground-truth label file the analytics evaluation reads."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from bems.errors import ConfigError
from bems.validation import load_yaml, parse_model
from simulators.model import AfterHoursWaste


class FaultSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["after_hours_waste"]
    meter: str
    start: AwareDatetime
    end: AwareDatetime
    fraction: float = Field(0.5, gt=0, le=2)

    @model_validator(mode="after")
    def _order(self) -> FaultSpec:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")

    faults: list[FaultSpec] = []


def load_scenario(path: Path, known_meters: set[str]) -> list[AfterHoursWaste]:
    scenario = parse_model(Scenario, load_yaml(path), str(path))
    for i, f in enumerate(scenario.faults):
        if f.meter not in known_meters:
            raise ConfigError(f"{path}: faults[{i}].meter: unknown meter {f.meter!r}; "
                              f"allowed: {', '.join(sorted(known_meters))}")
    return [AfterHoursWaste(f.meter, f.start, f.end, f.fraction) for f in scenario.faults]


def write_labels(path: Path, faults: list[AfterHoursWaste]) -> None:
    """Append one row per injected fault: meter, type, start, end (UTC ISO 8601)."""
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="") as fh:
        w = csv.writer(fh)
        if new:
            w.writerow(["meter", "type", "start", "end"])
        for f in faults:
            w.writerow([f.meter, f.kind, f.start.astimezone(dt.UTC).isoformat(), f.end.astimezone(dt.UTC).isoformat()])
