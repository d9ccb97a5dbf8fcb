"""Fault types, their parameters, and how each one changes what a client reads, live and in history.

One implementation serves both paths: the live server calls these functions with one instant per tick, the
history generator with weeks at once (vectorized over time; a loop over faults, never over readings).

Kinds of fault and where they act:

- load (``after_hours_waste``, ``holiday_waste``, ``drift``, ``step``): the building really uses more energy,
  so the rate changes and the cumulative register integrates it;
- value (``spike``, ``stuck``, ``replacement``): the meter reports something else than the load;
- register (``rollover``, ``word_swap``): the encoding on the wire goes wrong; history stores what a client
  decoding with the profile would read;
- wire (``comm_loss``, ``modbus_exception``, ``crc_error``, ``slow_device``): the exchange fails or lags; in
  history the first three leave a gap (the edge had nothing to publish), ``slow_device`` is a label only;
- edge (``clock_drift``): the edge's clock is wrong, not the meter. No vendor map here has a clock the edge reads,
  and an invented register would put a non-vendor address into real maps, so the simulator does not put it on
  the Modbus wire. History shifts the stored timestamps as a drifting edge would; live serving records the label
  and exposes the offset through :func:`clock_offset` and the control API (``GET /clock?meter=``) as the hook an
  edge under test takes its clock from.
"""

from __future__ import annotations

import csv
import datetime as dt
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bems.registers import RegisterSpec, decode_array, encode_array

if TYPE_CHECKING:
    from bems.calendar import CalendarMasks

FaultType = Literal["after_hours_waste", "holiday_waste", "spike", "stuck", "drift", "step", "comm_loss",
                    "modbus_exception", "crc_error", "rollover", "replacement", "word_swap", "clock_drift",
                    "slow_device"]
FAULT_TYPES: tuple[str, ...] = get_args(FaultType)
LOAD_FAULTS = frozenset({"after_hours_waste", "holiday_waste", "drift", "step"})
VALUE_FAULTS = frozenset({"spike", "stuck", "replacement"})
REGISTER_FAULTS = frozenset({"rollover", "word_swap"})
GAP_FAULTS = frozenset({"comm_loss", "modbus_exception", "crc_error"})
PERSISTENT_FAULTS = frozenset({"rollover", "replacement"})  # a counter does not go back after the event
LABEL_COLUMNS = ("meter", "type", "start", "end", "params")
EXCEPTION_CODES = {"illegal_function": 1, "illegal_address": 2, "illegal_value": 3, "device_failure": 4,
                   "acknowledge": 5, "device_busy": 6, "gateway_path_unavailable": 10, "gateway_no_response": 11}


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WasteParams(_Params):
    fraction: float = Field(0.5, gt=0, le=2, description="extra load as a fraction of the meter's peak")
    load: Literal["hvac", "lighting"] = "hvac"


class HolidayWasteParams(_Params):
    fraction: float = Field(0.6, gt=0, le=2, description="load left running in the decreed hours of a closed day")


class SpikeParams(_Params):
    factor: float = Field(5.0, gt=0, description="the reading is multiplied by this")
    field: str | None = Field(None, description="default: power_w, volume_m3 or temperature_c")


class StuckParams(_Params):
    field: str | None = Field(None, description="default: every register of the device")


class DriftParams(_Params):
    fraction: float = Field(0.3, gt=-1, le=5, description="extra load reached at the end, relative to normal")


class StepParams(_Params):
    factor: float = Field(1.4, gt=0, le=10)


class NoParams(_Params):
    pass


class ExceptionParams(_Params):
    code: Literal["illegal_function", "illegal_address", "illegal_value", "device_failure", "acknowledge",
                  "device_busy", "gateway_path_unavailable", "gateway_no_response"] = "device_busy"


class RolloverParams(_Params):
    headroom: float = Field(1.0, gt=0, description="counter units left before the wrap when the fault starts")


class ReplacementParams(_Params):
    initial: float = Field(0.0, ge=0, description="reading of the new meter at installation")


class ClockDriftParams(_Params):
    seconds_per_hour: float = Field(2.0, ge=-600, le=600, description="edge clock error gained per hour")


class SlowParams(_Params):
    delay_s: float = Field(0.5, gt=0, le=30)


PARAMS: dict[str, type[_Params]] = {
    "after_hours_waste": WasteParams, "holiday_waste": HolidayWasteParams, "spike": SpikeParams,
    "stuck": StuckParams, "drift": DriftParams, "step": StepParams, "comm_loss": NoParams,
    "modbus_exception": ExceptionParams, "crc_error": NoParams, "rollover": RolloverParams,
    "replacement": ReplacementParams, "word_swap": NoParams, "clock_drift": ClockDriftParams,
    "slow_device": SlowParams,
}
_ids = itertools.count(1)


def check_params(fault_type: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a fault's parameters; the error names the bad key and the allowed ones."""
    if fault_type not in PARAMS:
        raise ValueError(f"unknown fault type {fault_type!r}; allowed: {', '.join(FAULT_TYPES)}")
    model = PARAMS[fault_type]
    allowed = ", ".join(model.model_fields) or "(none)"
    try:
        return model.model_validate(dict(params)).model_dump()
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            key = ".".join(str(x) for x in e["loc"])
            msg = "unknown parameter" if e["type"] == "extra_forbidden" else e["msg"]
            problems.append(f"{key}: {msg}")
        raise ValueError(f"{fault_type}: {'; '.join(problems)} (parameters of {fault_type}: {allowed})") from None


@dataclass(frozen=True, eq=False)
class Fault:
    """One injected fault: what, on which meter, when, with which parameters (defaults filled in)."""

    type: str
    meter: str
    start: dt.datetime
    end: dt.datetime
    params: dict[str, Any] = field(default_factory=dict)
    id: int = field(default_factory=lambda: next(_ids))

    @classmethod
    def make(cls, fault_type: str, meter: str, start: dt.datetime, end: dt.datetime, **params: Any) -> Fault:
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("fault start and end must carry a time zone")
        if end <= start:
            raise ValueError(f"{fault_type} on {meter}: end {end.isoformat()} is not after start {start.isoformat()}")
        return cls(fault_type, meter, start.astimezone(dt.UTC), end.astimezone(dt.UTC),
                   check_params(fault_type, params))

    @property
    def kind(self) -> str:  # the label's type column (older name)
        return self.type

    @property
    def persistent(self) -> bool:
        return self.type in PERSISTENT_FAULTS

    def window(self, times: np.ndarray) -> np.ndarray:
        """Where the fault acts on a UTC ``datetime64`` axis."""
        t = np.asarray(times, dtype="datetime64[s]")
        lo = np.datetime64(self.start.replace(tzinfo=None), "s")
        if self.persistent:
            return t >= lo
        return (t >= lo) & (t < np.datetime64(self.end.replace(tzinfo=None), "s"))

    def active(self, unix_s: float) -> bool:
        s = self.start.timestamp()
        return unix_s >= s and (self.persistent or unix_s < self.end.timestamp())

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "meter": self.meter, "start": self.start.isoformat(),
                "end": self.end.isoformat(), "params": self.params}


def primary_field(kind: str) -> str:
    return {"electricity": "power_w", "temperature": "temperature_c"}.get(kind, "volume_m3")


# ---- load faults: change the rate, before integration ------------------------------------------------------

def apply_rate_faults(rate: np.ndarray, times: np.ndarray, masks: CalendarMasks, faults: Iterable[Fault],
                      rows: Mapping[str, int], peak: np.ndarray) -> None:
    """Add the load faults to ``rate`` ``[M, T]`` in place."""
    t = np.asarray(times, dtype="datetime64[s]")
    for f in faults:
        r = rows.get(f.meter)
        if f.type not in LOAD_FAULTS or r is None:
            continue
        win = f.window(t)
        if not win.any():
            continue
        if f.type == "after_hours_waste":
            rate[r, win & masks.after_hours] += f.params["fraction"] * peak[r]
        elif f.type == "holiday_waste":
            rate[r, win & ~masks.open_day & masks.in_hours] += f.params["fraction"] * peak[r]
        elif f.type == "drift":
            span = (f.end - f.start).total_seconds()
            since = (t[win] - np.datetime64(f.start.replace(tzinfo=None), "s")).astype(np.float64)
            rate[r, win] *= 1 + f.params["fraction"] * np.clip(since / span, 0, 1)
        elif f.type == "step":
            rate[r, win] *= f.params["factor"]


# ---- value faults: what the meter reports ------------------------------------------------------------------

def apply_value_faults(values: dict[str, np.ndarray], times: np.ndarray, faults: Iterable[Fault],
                       rows: Mapping[str, int], fields_of: Mapping[str, Sequence[RegisterSpec]],
                       kinds: Mapping[str, str], anchors: dict[int, dict[str, float]]) -> None:
    """Apply spike, stuck and replacement to ``values`` (field -> ``[M, T]``) in place.

    ``anchors`` keeps, per fault, the values at the first instant the fault was seen (the frozen value, the
    old meter's last reading); the live server passes the same dict every tick, history a fresh one.
    """
    for f in sorted(faults, key=lambda f: f.start):
        r = rows.get(f.meter)
        if f.type not in VALUE_FAULTS or r is None:
            continue
        win = f.window(times)
        if not win.any():
            continue
        specs = [s for s in fields_of[f.meter] if s.field in values]
        if f.type == "spike":
            targets = [f.params["field"] or primary_field(kinds[f.meter])]
        elif f.type == "stuck":
            targets = [f.params["field"]] if f.params["field"] else [s.field for s in specs]
        else:
            targets = [s.field for s in specs if s.cumulative]
        targets = [name for name in targets if name in values]
        first = int(np.argmax(win))
        anchor = anchors.setdefault(f.id, {name: float(values[name][r, first]) for name in targets})
        for name in targets:
            row = values[name][r]
            if f.type == "spike":
                row[win] *= f.params["factor"]
            elif f.type == "stuck":
                row[win] = anchor[name]
            else:
                row[win] = row[win] - anchor[name] + f.params["initial"]


# ---- register faults: the encoding on the wire -------------------------------------------------------------

def rollover_offset(anchor_value: float, spec: RegisterSpec, headroom: float) -> int:
    """Raw offset that puts the register ``headroom`` counter units below its wrap at the anchor instant."""
    anchor_raw = round(anchor_value / spec.scale)
    return (spec.counter_modulus - round(headroom / spec.scale) - anchor_raw) % (1 << 64)


def rolled_raw(values: np.ndarray, spec: RegisterSpec, offset: int) -> np.ndarray:
    """The raw register counts of a rolled-over counter: ``(raw + offset) mod width`` (uint64 arithmetic)."""
    raw = np.rint(np.asarray(values, dtype=np.float64) / spec.scale).astype(np.int64).astype(np.uint64)
    return (raw + np.uint64(offset)) & np.uint64(spec.counter_modulus - 1)


def swapped(values: np.ndarray, spec: RegisterSpec) -> np.ndarray:
    """What a client decodes when the device sends the words of a value in the wrong order."""
    return decode_array(encode_array(values, spec)[:, ::-1], spec)


def rollover_specs(specs: Sequence[RegisterSpec]) -> list[RegisterSpec]:
    return [s for s in specs if s.cumulative and s.is_integer]


def apply_register_faults(values: dict[str, np.ndarray], times: np.ndarray, faults: Iterable[Fault],
                          rows: Mapping[str, int], fields_of: Mapping[str, Sequence[RegisterSpec]],
                          anchors: dict[int, dict[str, float]]) -> None:
    """History side of rollover and word swap: replace values by what a client reading the wire decodes."""
    for f in faults:
        r = rows.get(f.meter)
        if f.type not in REGISTER_FAULTS or r is None:
            continue
        win = f.window(times)
        if not win.any():
            continue
        first = int(np.argmax(win))
        for spec in fields_of[f.meter]:
            if spec.field not in values:
                continue
            row = values[spec.field][r]
            if f.type == "word_swap" and spec.words > 1:
                row[win] = swapped(row[win], spec)
            elif f.type == "rollover" and spec.cumulative and spec.is_integer:
                anchor = anchors.setdefault(f.id, {})
                offset = int(anchor.setdefault(spec.field, rollover_offset(row[first], spec, f.params["headroom"])))
                row[win] = rolled_raw(row[win], spec, offset).astype(np.float64) * spec.scale


# ---- wire and edge faults ----------------------------------------------------------------------------------

def gap_mask(shape: tuple[int, int], times: np.ndarray, faults: Iterable[Fault], rows: Mapping[str, int]) -> np.ndarray:
    """``[M, T]`` True where a reading exists: communication loss, exceptions and CRC errors leave gaps."""
    valid = np.ones(shape, dtype=bool)
    for f in faults:
        r = rows.get(f.meter)
        if f.type in GAP_FAULTS and r is not None:
            valid[r, f.window(times)] = False
    return valid


def clock_offsets(shape: tuple[int, int], times: np.ndarray, faults: Iterable[Fault],
                  rows: Mapping[str, int]) -> np.ndarray | None:
    """``[M, T]`` seconds the edge's clock is ahead, or None when no clock drift is injected."""
    out: np.ndarray | None = None
    t = np.asarray(times, dtype="datetime64[s]")
    for f in faults:
        r = rows.get(f.meter)
        if f.type != "clock_drift" or r is None:
            continue
        win = f.window(t)
        if out is None:
            out = np.zeros(shape, dtype=np.float64)
        since = (t[win] - np.datetime64(f.start.replace(tzinfo=None), "s")).astype(np.float64)
        out[r, win] += f.params["seconds_per_hour"] * since / 3600.0
    return out


def clock_offset(faults: Iterable[Fault], meter: str, unix_s: float) -> float:
    """Seconds the edge clock of ``meter`` is ahead at ``unix_s``: the hook for an edge under test."""
    return sum(f.params["seconds_per_hour"] * (unix_s - f.start.timestamp()) / 3600.0
               for f in faults if f.type == "clock_drift" and f.meter == meter and f.active(unix_s))


# ---- ground-truth labels -----------------------------------------------------------------------------------

def write_labels(path: Path, faults: Iterable[Fault]) -> int:
    """Append one row per fault: meter, type, start, end (UTC ISO 8601) and the parameters as JSON."""
    rows = [[f.meter, f.type, f.start.isoformat(), f.end.isoformat(),
             json.dumps(f.params, sort_keys=True, separators=(",", ":"))] for f in faults]
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        if new:
            w.writerow(LABEL_COLUMNS)
        w.writerows(rows)
    return len(rows)


def read_labels(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
