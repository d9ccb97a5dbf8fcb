"""Load model of a government building, vectorized over meters x time.

Electricity is the sum of a base load (servers, security, fridges), lighting and office equipment that follow
occupancy, and HVAC: fans in office hours plus cooling above the 25 C setpoint, started half an hour before
opening. Gas is heating below the 18 C setpoint (started before opening, off an hour before closing, as the
directive asks), frost protection at night, and hot water and kitchen use that follow occupancy. Water follows
occupancy. Occupancy ramps up around opening and down after closing on the office calendar's open days (decreed
hours as data, IR public holidays). Outdoor temperature has a yearly and a daily cycle plus a day-to-day
weather swing. Noise is multiplicative.

Every term is a function of the instant alone (no state, no convolution), so the live server, which asks for
one instant per tick, and the history generator, which asks for weeks at once, compute the same numbers.
Same seed, same output.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np

from bems.calendar import CalendarMasks, OfficeCalendar, default_calendar
from bems.fleet import Fleet, Meter
from bems.registers import load_profile
from simulators.faults import Fault, apply_rate_faults

COOLING_SETPOINT_C = 25.0  # directive: cooling not below 25 C
HEATING_SETPOINT_C = 18.0  # directive: heating not above 18 C
FROST_PROTECTION_C = 5.0  # after hours the boiler only keeps the pipes from freezing
KINDS = ("electricity", "gas", "water", "temperature")


@dataclass(frozen=True)
class MeterModel:
    """Parameters of one simulated meter, derived from the fleet and a seed.

    ``peak`` is kW for electricity and m3/h for water and gas; the other loads are fractions of it.
    """

    meter: str
    building: str
    commodity: str
    profile: str
    peak: float
    base_fraction: float
    cooling_per_deg: float = 0.0  # fraction of peak per degree above the cooling setpoint
    heating_per_deg: float = 0.0  # fraction of peak per degree below the heating setpoint (gas)
    start_counter: float = 0.0  # initial reading of the cumulative register (kWh or m3)
    lighting_share: float = 0.0
    equipment_share: float = 0.0
    fan_share: float = 0.0
    kind: str = ""  # electricity | gas | water | temperature; defaults to the commodity
    sensor_offset_c: float = 0.0  # a temperature sensor's mounting bias (sun, wall)

    @property
    def role(self) -> str:
        return self.kind or self.commodity


@dataclass
class FleetModel:
    meters: list[MeterModel]
    calendar: OfficeCalendar = field(default_factory=default_calendar)
    seed: int = 0
    faults: list[Fault] = field(default_factory=list)
    noise: float = 0.03  # relative standard deviation of the multiplicative noise; 0 for exact tests
    mean_temp_c: float = 17.0  # Tehran-like climate
    yearly_swing_c: float = 14.0
    daily_swing_c: float = 6.0
    weather_swing_c: float = 3.0

    def __post_init__(self) -> None:
        self._params: dict[str, np.ndarray] | None = None

    @property
    def ids(self) -> list[str]:
        return [m.meter for m in self.meters]

    def row(self, meter: str) -> int:
        return self.ids.index(meter)

    def params(self) -> dict[str, np.ndarray]:
        """Per-meter parameters as ``[M, 1]`` columns, built once."""
        if self._params is None or len(next(iter(self._params.values()))) != len(self.meters):
            names = ("peak", "base_fraction", "cooling_per_deg", "heating_per_deg", "lighting_share",
                     "equipment_share", "fan_share", "sensor_offset_c", "start_counter")
            p = {n: np.array([getattr(m, n) for m in self.meters], dtype=np.float64)[:, None] for n in names}
            role = np.array([m.role for m in self.meters])[:, None]
            p.update({k: (role == k) for k in KINDS})
            self._params = p
        return self._params

    def outdoor_temperature(self, times: np.ndarray) -> np.ndarray:
        """Outdoor temperature (C): yearly cycle (coldest mid-January), daily cycle (warmest 15:00 local) and a
        day-to-day weather swing drawn from the seed and the date, so live and history agree."""
        secs = np.asarray(times, dtype="datetime64[s]").astype(np.int64).astype(np.float64)
        day_of_year = (secs / 86400.0) % 365.25
        hour_utc = (secs / 3600.0) % 24
        yearly = self.mean_temp_c - self.yearly_swing_c * np.cos(2 * np.pi * (day_of_year - 15) / 365.25)
        daily = self.daily_swing_c * np.cos(2 * np.pi * (hour_utc + 3.5 - 15) / 24)
        day = secs / 86400.0
        d0 = np.floor(day)
        w0, w1 = _hash_noise(d0, self.seed), _hash_noise(d0 + 1, self.seed)
        weather = self.weather_swing_c * (w0 + (w1 - w0) * (day - d0))  # smooth from one day to the next
        return yearly + daily + weather

    def rates(self, times: np.ndarray, rng: np.random.Generator | None = None,
              masks: CalendarMasks | None = None, temp: np.ndarray | None = None) -> np.ndarray:
        """Instantaneous rate per meter and time: kW, m3/h, or C for temperature sensors. Shape ``[M, T]``."""
        t = np.asarray(times, dtype="datetime64[s]")
        masks = masks or self.calendar.masks(t)
        temp = self.outdoor_temperature(t) if temp is None else temp
        p = self.params()
        occ = occupancy(masks)[None, :]
        light = occ * (0.75 + 0.25 * _darkness(masks)[None, :])
        cool_sched = hvac_schedule(masks, stop_before_close=0)[None, :]
        heat_sched = hvac_schedule(masks, stop_before_close=60)[None, :]
        cooling = np.clip(temp - COOLING_SETPOINT_C, 0, None)[None, :]
        heating = np.clip(HEATING_SETPOINT_C - temp, 0, None)[None, :]

        elec = (p["base_fraction"] + p["lighting_share"] * light + p["equipment_share"] * occ
                + (p["fan_share"] + p["cooling_per_deg"] * cooling) * cool_sched)
        frost = np.clip(FROST_PROTECTION_C - temp, 0, None)[None, :]
        gas = (p["base_fraction"] + p["heating_per_deg"] * (heating * heat_sched + 0.1 * frost)
               + 0.08 * occ)
        water = p["base_fraction"] * 0.3 + (1 - p["base_fraction"]) * occ * 0.8
        frac = np.where(p["electricity"], elec, np.where(p["gas"], gas, water))
        if rng is not None and self.noise > 0:
            frac = frac * (1 + self.noise * rng.standard_normal(frac.shape))
        rate = p["peak"] * np.clip(frac, 0, 1.3)
        sensor = temp[None, :] + p["sensor_offset_c"]
        if rng is not None and self.noise > 0:
            sensor = sensor + 0.1 * rng.standard_normal(sensor.shape)
        rate = np.where(p["temperature"], sensor, rate)
        if self.faults:
            apply_rate_faults(rate, t, masks, self.faults, self.row_index(), p["peak"][:, 0])
        return rate

    def row_index(self) -> dict[str, int]:
        return {m.meter: i for i, m in enumerate(self.meters)}

    def history(self, start: dt.datetime, end: dt.datetime, step: dt.timedelta) -> History:
        """Rates and cumulative counters on a regular grid: one vectorized pass over meters x time."""
        times = time_grid(start, end, step)
        rng = np.random.default_rng(self.seed)
        rate = self.rates(times, rng)
        hours = step.total_seconds() / 3600.0
        counter = self.params()["start_counter"] + np.cumsum(rate * hours, axis=1)
        return History(meters=self.ids, times=times, rate=rate, counter=counter)


    def device_fields(self, rate: np.ndarray, counter: np.ndarray, rng: np.random.Generator | None = None,
                      only: Collection[str] | None = None) -> dict[str, np.ndarray]:
        """What each meter's registers hold, field by field (``[M, T]``, NaN where the meter has no such value).

        Electrical detail (voltage, current, power factor, frequency) is plausible around the modelled power:
        a three-phase load split evenly, 230 V phases, power factor about 0.93.
        """
        p = self.params()
        elec, flow, sensor = p["electricity"], p["gas"] | p["water"], p["temperature"]
        jitter = (self.noise / 0.03) if rng is not None else 0.0

        def noise(sd: float) -> np.ndarray | float:
            return sd * jitter * rng.standard_normal(rate.shape) if rng is not None and jitter else 0.0

        watts = rate * 1000.0
        volts = 230.0 + noise(1.5)
        pf = np.clip(0.93 + noise(0.01), 0.5, 1.0)
        makers = {
            "power_w": lambda: watts, "power_l1_w": lambda: watts / 3,
            "energy_kwh": lambda: counter, "energy_total_kwh": lambda: counter,
            "energy_export_kwh": lambda: np.zeros_like(rate),
            "voltage_l1_v": lambda: np.broadcast_to(volts, rate.shape),
            "current_l1_a": lambda: watts / 3 / volts / pf,
            "power_factor_pf": lambda: np.broadcast_to(pf, rate.shape),
            "frequency_hz": lambda: np.broadcast_to(50.0 + noise(0.02), rate.shape),
        }
        out: dict[str, np.ndarray] = {}
        for name, make in makers.items():
            if only is None or name in only:
                out[name] = np.where(elec, make(), np.nan)
        if only is None or "volume_m3" in only:
            out["volume_m3"] = np.where(flow, counter, np.nan)
        if only is None or "temperature_c" in only:
            out["temperature_c"] = np.where(sensor, rate, np.nan)
        return out


@dataclass(frozen=True)
class History:
    meters: list[str]
    times: np.ndarray
    rate: np.ndarray  # [M, T]
    counter: np.ndarray  # [M, T], value at the end of each step


def time_grid(start: dt.datetime, end: dt.datetime, step: dt.timedelta) -> np.ndarray:
    t0 = np.datetime64(start.astimezone(dt.UTC).replace(tzinfo=None), "s")
    n = int((end - start) / step)
    return t0 + np.arange(n) * np.timedelta64(int(step.total_seconds()), "s")


def occupancy(m: CalendarMasks) -> np.ndarray:
    """People arrive from half an hour before opening to half an hour after, and leave likewise around closing."""
    minute, opens, closes = _minutes(m)
    arrive = np.clip((minute - (opens - 30)) / 60.0, 0, 1)
    leave = np.clip((closes + 30 - minute) / 60.0, 0, 1)
    return np.where(m.open_day, np.minimum(arrive, leave), 0.0)


def hvac_schedule(m: CalendarMasks, stop_before_close: int) -> np.ndarray:
    """HVAC ramps up over the half hour before opening and stops ``stop_before_close`` minutes before closing."""
    minute, opens, closes = _minutes(m)
    on = np.clip((minute - (opens - 30)) / 30.0, 0, 1) * (minute < closes - stop_before_close)
    return np.where(m.open_day, on, 0.0)


def _darkness(m: CalendarMasks) -> np.ndarray:
    minute, _, _ = _minutes(m)
    return ((minute < 7 * 60) | (minute >= 17 * 60)).astype(np.float64)


def _minutes(m: CalendarMasks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if m.minute is None or m.open_minute is None or m.close_minute is None:
        raise ValueError("the load model needs OfficeCalendar.masks (with minutes)")
    return m.minute.astype(np.float64), m.open_minute.astype(np.float64), m.close_minute.astype(np.float64)


def _hash_noise(x: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic noise in [-1, 1] from a number (a day index) and the seed, vectorized."""
    v = np.sin(x * 12.9898 + (seed % 10_007) * 78.233) * 43758.5453
    return 2.0 * (v - np.floor(v)) - 1.0


def _unit_hash(seed: int, text: str) -> float:
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def meter_kind(meter: Meter) -> str:
    """What a meter measures: its commodity, or ``temperature`` when its profile maps a temperature register."""
    fields = {r.field for r in load_profile(meter.device.profile).registers}
    return "temperature" if "temperature_c" in fields else meter.commodity


def meter_model(m: Meter, fleet: Fleet, seed: int) -> MeterModel:
    """Stable parameters for one meter; the end use (HVAC, lighting, main) is read from the meter id."""
    u = _unit_hash(seed, m.id)
    kind = meter_kind(m)
    common = {"meter": m.id, "building": m.building, "commodity": m.commodity, "profile": m.device.profile,
              "kind": kind}
    if kind == "temperature":
        return MeterModel(**common, peak=1.0, base_fraction=0.0, sensor_offset_c=round(1.5 * (u - 0.5), 2))
    if kind == "electricity":
        peak = (m.rated_kw or 100.0) * (0.55 + 0.2 * u)
        start = 10_000 + 90_000 * u
        name = m.id.split(".", 1)[-1]
        if "hvac" in name:
            return MeterModel(**common, peak=peak, base_fraction=0.04 + 0.03 * u, cooling_per_deg=0.07,
                              fan_share=0.2, equipment_share=0.05, start_counter=start)
        if "light" in name:
            return MeterModel(**common, peak=peak, base_fraction=0.08 + 0.04 * u, lighting_share=0.85,
                              start_counter=start)
        return MeterModel(**common, peak=peak, base_fraction=0.18 + 0.1 * u, lighting_share=0.2,
                          equipment_share=0.35, fan_share=0.08, cooling_per_deg=0.025, start_counter=start)
    area = fleet.building_by_id[m.building].floor_area_m2
    if kind == "gas":
        return MeterModel(**common, peak=area / 1000 * 4.0 * (0.8 + 0.4 * u), base_fraction=0.015 + 0.01 * u,
                          heating_per_deg=0.06, start_counter=1_000 + 9_000 * u)
    return MeterModel(**common, peak=area / 1000 * 0.35 * (0.8 + 0.4 * u), base_fraction=0.1 + 0.05 * u,
                      start_counter=1_000 + 9_000 * u)


def fleet_model(fleet: Fleet, seed: int = 0, meters: list[Meter] | None = None) -> FleetModel:
    """Derive stable per-meter parameters from the fleet: same fleet and seed, same buildings."""
    chosen = meters if meters is not None else list(fleet.meters)
    return FleetModel(meters=[meter_model(m, fleet, seed) for m in chosen], seed=seed)


def AfterHoursWaste(meter: str, start: dt.datetime, end: dt.datetime, fraction: float = 0.5,
                    load: str = "hvac") -> Fault:
    """HVAC or lighting left on outside office hours: ``fraction`` of the meter's peak, after hours only."""
    return Fault.make("after_hours_waste", meter, start, end, fraction=fraction, load=load)
