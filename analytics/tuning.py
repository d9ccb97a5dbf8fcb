"""Detector tuning per meter, building and commodity, from a YAML file the operator keeps (``--tuning``).

The most specific entry wins: meter, then building, then commodity, then the built-in per-commodity values
(``COMMODITY_PARAMS``), then ``defaults``, then the built-in ``DetectorParams``. Thresholds become per-meter
arrays, so tuning costs the vectorized pass nothing; window lengths (integers) shape the whole matrix and may
only be set under ``defaults``.

    defaults: {spike_z: 9}
    commodities: {gas: {step_z: 7}}
    buildings: {tehran-edu-office: {target_rel: 0.2}}      # closed-hours use above 20 % of working level is waste
    meters: {tehran-moi-hq.hvac-elec: {waste_rel: 0.3}}
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, create_model

from analytics.detectors import DetectorParams, params_for
from bems.errors import ConfigError
from bems.fleet import Fleet, Meter
from bems.validation import load_yaml, parse_model

#: thresholds that may differ from meter to meter (each used as a [M, 1] column by the detectors)
PER_METER = ("spike_z", "waste_z", "waste_rel", "target_rel", "flatline_min_rel", "step_z", "drift_z",
             "implausible_factor")

_Thresholds = create_model(  # type: ignore[call-overload]
    "Thresholds", __config__=ConfigDict(extra="forbid", frozen=True),
    **{name: (float | None, Field(None, ge=0)) for name in PER_METER})
_Defaults = create_model(  # type: ignore[call-overload]
    "Defaults", __config__=ConfigDict(extra="forbid", frozen=True),
    **{f.name: (float | None if f.name in PER_METER else int | None,
                Field(None, ge=0 if f.name in PER_METER else 1)) for f in fields(DetectorParams)})


class Tuning(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    defaults: _Defaults = Field(default_factory=_Defaults)  # type: ignore[valid-type]
    commodities: dict[str, _Thresholds] = {}  # type: ignore[valid-type]
    buildings: dict[str, _Thresholds] = {}  # type: ignore[valid-type]
    meters: dict[str, _Thresholds] = {}  # type: ignore[valid-type]

    def check(self, fleet: Fleet, source: str) -> Tuning:
        """Every name must be in the fleet: a typo would silently tune nothing."""
        for kind, names, known in (("meters", self.meters, fleet.meter_by_id), ("buildings", self.buildings,
                                   fleet.building_by_id), ("commodities", self.commodities,
                                                           {"electricity", "gas", "water"})):
            unknown = sorted(set(names) - set(known))
            if unknown:
                raise ConfigError(f"{source}: {kind}: {', '.join(unknown)} not in the fleet file; check the ids")
        return self

    def params(self, meters: list[Meter]) -> DetectorParams:
        """Parameters for a matrix whose rows are ``meters``; a threshold that differs becomes an array."""
        set_defaults = {k: v for k, v in self.defaults.model_dump().items() if v is not None}
        base = params_for([m.commodity for m in meters], replace(DetectorParams(), **set_defaults))
        changes: dict[str, np.ndarray] = {}
        layers = [*self.meters.values(), *self.buildings.values(), *self.commodities.values()]
        for name in PER_METER:
            if all(getattr(layer, name) is None for layer in layers):
                continue
            default = getattr(base, name)
            column = np.broadcast_to(np.asarray(np.nan if default is None else default, dtype=np.float32),
                                     (len(meters),)).copy()
            touched = False
            for i, m in enumerate(meters):
                for layer in (self.meters.get(m.id), self.buildings.get(m.building), self.commodities.get(m.commodity)):
                    value = getattr(layer, name) if layer is not None else None
                    if value is not None:
                        column[i], touched = value, True
                        break
            if touched:
                changes[name] = column
        return replace(base, **changes)


def load_tuning(path: str | Path, fleet: Fleet) -> Tuning:
    return parse_model(Tuning, load_yaml(Path(path)), str(path)).check(fleet, str(path))
