"""Savings of a building's meters against a weather-normalized baseline (the TOWT model of ``analytics.towt``).

The method is avoided energy use as in IPMVP option C and CalTRACK's hourly method: fit each meter on a baseline
period (time of week + outdoor temperature), run the model on the reporting period's calendar and weather, and
compare with what the meter used. The fit is reported with its ASHRAE Guideline 14 statistics so a reader can
tell whether the baseline is good enough to claim savings from (hourly: CV(RMSE) <= 30 %).

Time of week follows the office calendar, not the civil week: a holiday or a decreed closure on a Sunday uses the
closed-day slots, so a new holiday in the reporting period is not "saved" energy.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from analytics.towt import design, fit
from bems.calendar import OfficeCalendar
from bems.fleet import TEMPERATURE_FIELD, Fleet, Meter
from bems.kpi import HOUR, cumulative_field, read_hourly, time_axis
from bems.store import Store
from bems.tariff import TariffBook

SLOTS = 7 * 24 + 24  # open-day hours of the week, then one closed-day hour set
MIN_BASELINE_HOURS = 24 * 14  # CalTRACK asks for a year; two weeks is the least that gives every slot samples


@dataclass(frozen=True)
class MeterSavings:
    meter: str
    commodity: str
    baseline_hours: int  # hours of the baseline period the model was fitted on
    cv_rmse: float | None  # fraction
    nmbe: float | None
    meets_guideline14: bool
    report_hours: int  # hours of the reporting period with an actual value (and a temperature, if used)
    actual: float
    expected: float | None  # the baseline model's consumption over the same hours; None: too little baseline
    saved: float | None  # expected - actual; negative is excess
    saved_rial: float | None  # electricity, through the building's time-of-use tariff hour by hour


@dataclass(frozen=True)
class SavingsReport:
    building: str
    method: str
    temperature_meter: str | None
    baseline: tuple[dt.datetime, dt.datetime]
    report: tuple[dt.datetime, dt.datetime]
    meters: list[MeterSavings]


def features(times: np.ndarray, temp: np.ndarray | None, calendar: OfficeCalendar) -> np.ndarray:
    """The TOWT design matrix: time-of-week slot of each hour (weekday x hour on open days, 168 + hour on closed
    days and holidays), then the temperature basis for working and for closed hours."""
    masks = calendar.bucket_masks(times, np.timedelta64(3600, "s"))
    hour = masks.local_hour.astype(np.int64)
    slot = np.where(masks.open_day & ~masks.holiday, masks.local_weekday.astype(np.int64) * 24 + hour, 7 * 24 + hour)
    return design(slot, None if temp is None else np.nan_to_num(temp), SLOTS,
                  occupied=None if temp is None else masks.working)


def temperature(store: Store, sensor: Meter | None, start: dt.datetime, end: dt.datetime) -> np.ndarray | None:
    if sensor is None:
        return None
    values = store.read_matrix([sensor.id], TEMPERATURE_FIELD, start, end, HOUR, "mean").values[0]
    return values if np.isfinite(values).any() else None


def measure(store: Store, fleet: Fleet, building: str, meters: list[Meter], baseline: tuple[dt.datetime, dt.datetime],
            report: tuple[dt.datetime, dt.datetime], calendar: OfficeCalendar, tariffs: TariffBook) -> SavingsReport:
    """Fit every metered meter of ``meters`` on ``baseline`` and measure it over ``report`` (UTC, whole hours)."""
    metered = [m for m in meters if cumulative_field(m)]
    sensor = fleet.weather_meter(building)
    y_base = read_hourly(store, metered, *baseline)
    y_rep = read_hourly(store, metered, *report)
    t_base, t_rep = time_axis(baseline[0], y_base.shape[1]), time_axis(report[0], y_rep.shape[1])
    temp_base = temperature(store, sensor, *baseline)
    temp_rep = temperature(store, sensor, *report) if temp_base is not None else None
    use_temp = temp_base is not None and temp_rep is not None
    if use_temp:
        x_base, x_rep = features(t_base, temp_base, calendar), features(t_rep, temp_rep, calendar)
        y_base = np.where(np.isfinite(temp_base), y_base, np.nan)  # an hour without weather cannot be modelled
        y_rep = np.where(np.isfinite(temp_rep), y_rep, np.nan)
        method = (f"time of week and outdoor temperature from {sensor.id}, separately for working and closed "
                  f"hours (TOWT), least squares per meter")
    else:
        x_base, x_rep = features(t_base, None, calendar), features(t_rep, None, calendar)
        method = ("time of week only: no outdoor temperature for this building (add a meter with commodity "
                  "'weather'), so savings are not weather-normalized")
    out: list[MeterSavings] = []
    if metered:
        model = fit(x_base, y_base)
        expected = model.predict(x_rep)
        seen_slots = np.abs(x_base[:, :SLOTS]).sum(axis=0) > 0
        modelled = seen_slots[np.argmax(x_rep[:, :SLOTS], axis=1)]  # a slot never seen in the baseline: no claim
        valid = np.isfinite(y_rep) & modelled[None, :]
        actual = np.where(valid, y_rep, 0.0).sum(axis=1)
        exp_total = np.where(valid, expected, 0.0).sum(axis=1)
        b = fleet.building_by_id[building]
        price = tariffs.for_building(building).classify(t_rep, b.timezone, np.timedelta64(3600, "s")).price
        rial = (np.where(valid, expected - y_rep, 0.0) * price[None, :]).sum(axis=1)
        fits = model.meets_guideline14(hourly=True)
        for i, m in enumerate(metered):
            enough = int(model.n[i]) >= MIN_BASELINE_HOURS  # else no model to claim savings from
            out.append(MeterSavings(
                meter=m.id, commodity=m.commodity, baseline_hours=int(model.n[i]),
                cv_rmse=_finite(model.cv_rmse[i]) if enough else None, nmbe=_finite(model.nmbe[i]) if enough else None,
                meets_guideline14=bool(fits[i]) and enough, report_hours=int(valid[i].sum()),
                actual=float(actual[i]), expected=float(exp_total[i]) if enough else None,
                saved=float(exp_total[i] - actual[i]) if enough else None,
                saved_rial=float(rial[i]) if enough and m.commodity == "electricity" else None))
    return SavingsReport(building=building, method=method, temperature_meter=sensor.id if use_temp else None,
                         baseline=baseline, report=report, meters=out)


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
