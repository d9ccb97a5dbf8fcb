"""Load model of a government building, vectorized over meters x time.

Power follows the office calendar (Saturday-Wednesday, decreed hours, IR holidays): a base load at night, an
occupancy ramp around opening and closing, cooling tied to the outdoor temperature, lighting, and noise.
Water and gas are flows (m3/h) that reach Modbus through pulse counters. Same seed, same output.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field

import numpy as np

from bems.calendar import OfficeCalendar, default_calendar
from bems.fleet import Fleet, Meter


@dataclass(frozen=True)
class MeterModel:
    """Parameters of one simulated meter, derived from the fleet and a seed."""

    meter: str
    building: str
    commodity: str
    profile: str
    peak: float  # kW for electricity, m3/h for water and gas
    base_fraction: float
    cooling_per_deg: float  # fraction of peak per degree above 24 C
    heating_per_deg: float  # fraction of peak per degree below 16 C (gas)
    start_counter: float  # initial reading of the cumulative register (kWh or m3)


@dataclass(frozen=True)
class AfterHoursWaste:
    """Extra load left on outside office hours (HVAC or lighting), as a fraction of the meter's peak."""

    meter: str
    start: dt.datetime
    end: dt.datetime
    fraction: float = 0.5
    kind: str = "after_hours_waste"


@dataclass
class FleetModel:
    meters: list[MeterModel]
    calendar: OfficeCalendar = field(default_factory=default_calendar)
    seed: int = 0
    faults: list[AfterHoursWaste] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [m.meter for m in self.meters]

    def outdoor_temperature(self, times: np.ndarray) -> np.ndarray:
        """Tehran-like outdoor temperature (C): a yearly and a daily cycle."""
        secs = np.asarray(times, dtype="datetime64[s]").astype(np.int64).astype(np.float64)
        day_of_year = (secs / 86400.0) % 365.25
        hour_utc = (secs / 3600.0) % 24
        yearly = 17.0 - 14.0 * np.cos(2 * np.pi * (day_of_year - 15) / 365.25)
        daily = 6.0 * np.cos(2 * np.pi * (hour_utc + 3.5 - 15) / 24)  # warmest at 15:00 local
        return yearly + daily

    def rates(self, times: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Instantaneous rate per meter and time: kW (electricity) or m3/h (water, gas). Shape [M, T]."""
        t = np.asarray(times, dtype="datetime64[s]")
        masks = self.calendar.masks(t)
        occ = _occupancy(masks.working, t)
        temp = self.outdoor_temperature(t)
        p = {name: np.array([getattr(m, name) for m in self.meters], dtype=np.float64)[:, None]
             for name in ("peak", "base_fraction", "cooling_per_deg", "heating_per_deg")}
        commodity = np.array([m.commodity for m in self.meters])[:, None]
        cooling = np.clip(temp - 24.0, 0, None)[None, :] * p["cooling_per_deg"] * occ[None, :]
        heating = np.clip(16.0 - temp, 0, None)[None, :] * p["heating_per_deg"] * (0.3 + 0.7 * occ[None, :])
        active = (1 - p["base_fraction"]) * occ[None, :]
        frac = p["base_fraction"] + active * 0.8 + np.where(commodity == "gas", heating, cooling)
        frac = np.where(commodity == "water", p["base_fraction"] * 0.2 + active, frac)
        if rng is not None:
            frac = frac * (1 + 0.03 * rng.standard_normal(frac.shape))
        rate = p["peak"] * np.clip(frac, 0, 1.2)
        for f in self.faults:
            row = self.ids.index(f.meter)
            lo, hi = np.datetime64(f.start.replace(tzinfo=None), "s"), np.datetime64(f.end.replace(tzinfo=None), "s")
            window = (t >= lo) & (t < hi) & masks.after_hours
            rate[row, window] += f.fraction * self.meters[row].peak
        return rate

    def history(self, start: dt.datetime, end: dt.datetime, step: dt.timedelta) -> History:
        """Rates and cumulative counters on a regular grid: one vectorized pass over meters x time."""
        t0 = np.datetime64(start.astimezone(dt.UTC).replace(tzinfo=None), "s")
        n = int((end - start) / step)
        times = t0 + np.arange(n) * np.timedelta64(int(step.total_seconds()), "s")
        rng = np.random.default_rng(self.seed)
        rate = self.rates(times, rng)
        hours = step.total_seconds() / 3600.0
        start_counter = np.array([m.start_counter for m in self.meters])[:, None]
        counter = start_counter + np.cumsum(rate * hours, axis=1)
        return History(meters=self.ids, times=times, rate=rate, counter=counter)


@dataclass(frozen=True)
class History:
    meters: list[str]
    times: np.ndarray
    rate: np.ndarray  # [M, T]
    counter: np.ndarray  # [M, T], value at the end of each step


def _occupancy(working: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Soften the working mask into a ramp: people arrive and leave over about half an hour."""
    if working.size < 2:
        return working.astype(np.float64)
    step_s = max(int((times[1] - times[0]).astype("timedelta64[s]").astype(np.int64)), 1)
    width = max(1, int(1800 // step_s))
    if width == 1:
        return working.astype(np.float64)
    kernel = np.ones(width) / width
    return np.convolve(working.astype(np.float64), kernel, mode="same")


def _unit_hash(seed: int, text: str) -> float:
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def fleet_model(fleet: Fleet, seed: int = 0, meters: list[Meter] | None = None) -> FleetModel:
    """Derive stable per-meter parameters from the fleet: same fleet and seed, same buildings."""
    models = []
    for m in meters if meters is not None else list(fleet.meters):
        u = _unit_hash(seed, m.id)
        if m.commodity == "electricity":
            peak = m.rated_kw or 100.0
            models.append(MeterModel(m.id, m.building, m.commodity, m.device.profile, peak * (0.55 + 0.2 * u),
                                     0.18 + 0.1 * u, 0.025, 0.0, 10_000 + 90_000 * u))
        else:
            area = fleet.building_by_id[m.building].floor_area_m2
            peak = area / 1000 * (0.35 if m.commodity == "water" else 4.0)
            models.append(MeterModel(m.id, m.building, m.commodity, m.device.profile, peak * (0.8 + 0.4 * u),
                                     0.1 + 0.05 * u, 0.0, 0.05 if m.commodity == "gas" else 0.0,
                                     1_000 + 9_000 * u))
    return FleetModel(meters=models, seed=seed)
