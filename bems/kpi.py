"""Key figures of a building over a period, vectorized over meters x hours.

Consumption comes from cumulative registers (hourly deltas, ``Store.read_consumption``); meters of one
commodity in a building are summed (the fleet has no sub-meter hierarchy). Definitions, so a reader can check
them by hand (tests/test_kpi.py does):

- after-hours share: consumption in buckets outside working time / all consumption (office calendar,
  ``OfficeCalendar.bucket_masks``); holiday share: the same for public holidays and closed days.
- baseline: for every hour, the median of the same hour of the week in the previous ``BASELINE_WEEKS`` weeks
  (``hour_of_week_baseline``). A simple placeholder that analytics can replace; ``vs_baseline_pct`` compares
  the hours that have both an actual value and a baseline.
- same period last year: shifted by 364 days (52 weeks, so weekdays line up), compared on hours present in both.
- EUI: electricity kWh + gas m3 x its kWh per m3 (``tariffs.yaml``), per m2 of floor area, for the period and
  annualized over the elapsed days.
- cost: electricity kWh per hour x the price of its time-of-use band (``bems.tariff``), in rial.
- peak demand: the largest 15-minute average demand (15-min kWh x 4), against the contracted kW.
- CO2: consumption x the emission factor of each commodity (``tariffs.yaml``).
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field

from bems.calendar import OfficeCalendar
from bems.fleet import Building, Meter
from bems.store import Store
from bems.store.base import bucket_axis
from bems.tariff import BANDS, Tariff, TariffBook

CUMULATIVE_FIELD = {"electricity": "energy_kwh", "gas": "volume_m3", "water": "volume_m3"}
HOUR = dt.timedelta(hours=1)
QUARTER = dt.timedelta(minutes=15)
HOURS_PER_WEEK = 168
BASELINE_WEEKS = 4
LAST_YEAR = dt.timedelta(days=364)
MAX_PERIOD = dt.timedelta(days=366)


# --- pure numpy pieces -------------------------------------------------------------------------------------
def hour_of_week_baseline(history: np.ndarray, weeks: int = BASELINE_WEEKS) -> np.ndarray:
    """``history[..., weeks*168 + T]`` hourly -> ``[..., T]``: median of the same hour 1..``weeks`` weeks back."""
    h = np.asarray(history, dtype=np.float64)
    n = h.shape[-1] - weeks * HOURS_PER_WEEK
    if n < 0:
        raise ValueError(f"history needs at least {weeks * HOURS_PER_WEEK} hours before the period")
    lagged = np.stack([h[..., (weeks - k) * HOURS_PER_WEEK:(weeks - k) * HOURS_PER_WEEK + n]
                       for k in range(1, weeks + 1)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN hours stay NaN
        return np.nanmedian(lagged, axis=0)


def masked_share(values: np.ndarray, mask: np.ndarray) -> float | None:
    """Share of the finite total that falls where ``mask`` is true; None without data."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    total = v[ok].sum()
    if not ok.any() or total <= 0:
        return None
    return float(v[ok & mask].sum() / total)


def paired_change(actual: np.ndarray, reference: np.ndarray) -> tuple[float | None, float | None, float]:
    """(actual total, reference total, coverage) over the hours where both are known; change in % by caller."""
    a, r = np.asarray(actual, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    both = np.isfinite(a) & np.isfinite(r)
    have = np.isfinite(a).sum()
    if not both.any():
        return None, None, 0.0
    return float(a[both].sum()), float(r[both].sum()), float(both.sum() / max(have, 1))


def pct_change(actual: float | None, reference: float | None) -> float | None:
    if actual is None or reference is None or reference <= 0:
        return None
    return (actual - reference) / reference * 100.0


def time_axis(start: dt.datetime, n: int, bucket: dt.timedelta = HOUR) -> np.ndarray:
    """``n`` bucket starts from ``start`` as UTC ``datetime64[s]``: the time axis of what ``read_hourly`` returns."""
    step = np.timedelta64(int(bucket.total_seconds()), "s")
    return np.datetime64(start.astimezone(dt.UTC).replace(tzinfo=None), "s") + np.arange(n) * step


def row_sum(matrix: np.ndarray) -> np.ndarray:
    """Sum over meters per column; NaN where no meter has data (not 0: missing is not zero use)."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape[0] == 0:
        return np.full(m.shape[1], np.nan)
    out = np.nansum(m, axis=0)
    out[~np.isfinite(m).any(axis=0)] = np.nan
    return out


def group_sum(matrix: np.ndarray, owner: np.ndarray, groups: int) -> np.ndarray:
    """``[M x T]`` -> ``[groups x T]`` summing rows by ``owner`` index; NaN where a group has no data."""
    m = np.asarray(matrix, dtype=np.float64)
    onehot = np.zeros((groups, m.shape[0]))
    onehot[np.asarray(owner, dtype=np.intp), np.arange(m.shape[0])] = 1.0
    finite = np.isfinite(m)
    out = onehot @ np.where(finite, m, 0.0)
    out[(onehot @ finite) == 0] = np.nan
    return out


def tou_cost(kwh: np.ndarray, band: np.ndarray, price: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(kWh per band, rial per band) in ``BANDS`` order."""
    k = np.asarray(kwh, dtype=np.float64)
    ok = np.isfinite(k)
    b = np.asarray(band, dtype=np.intp)[ok]
    energy = np.bincount(b, weights=k[ok], minlength=len(BANDS))
    cost = np.bincount(b, weights=(k * price)[ok], minlength=len(BANDS))
    return energy, cost


def hour_of_week_mean(values: np.ndarray, weekday: np.ndarray, hour: np.ndarray) -> np.ndarray:
    """Mean per (weekday, local hour), Saturday first as the Iranian week: ``[7 x 24]``, NaN where empty.

    ``weekday`` is Python's (Monday = 0).
    """
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    cell = ((np.asarray(weekday, dtype=np.intp) - 5) % 7) * 24 + np.asarray(hour, dtype=np.intp)
    total = np.bincount(cell[ok], weights=v[ok], minlength=168)
    count = np.bincount(cell[ok], minlength=168)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan).reshape(7, 24)


# --- response shapes ---------------------------------------------------------------------------------------
class CommodityKpi(BaseModel):
    commodity: str
    unit: str = Field(description="kWh for electricity, m3 for gas and water")
    meters: int
    total: float | None = Field(description="consumption over the period")
    after_hours_share: float | None = Field(description="0..1, consumption outside working time / total")
    holiday_share: float | None = Field(description="0..1, consumption on public holidays and closed days / total")
    baseline_total: float | None = Field(description="baseline over the hours with actual data")
    vs_baseline_pct: float | None = Field(description="(actual - baseline) / baseline x 100")
    last_year_total: float | None
    vs_last_year_pct: float | None = Field(description="against the same hours 364 days earlier")
    completeness: float = Field(description="0..1, share of meter-hours elapsed in the period that have data")
    co2_kg: float | None


class BandCost(BaseModel):
    band: str = Field(description="low, mid or peak")
    kwh: float
    rial: float


class PeakDemand(BaseModel):
    kw: float | None = Field(description="largest 15-minute average electricity demand of the building")
    at: dt.datetime | None = Field(description="start of that 15-minute interval, UTC")
    contracted_kw: float | None
    ratio: float | None = Field(description="kw / contracted_kw; above 1 is an overrun")


class BuildingKpis(BaseModel):
    building: str
    start: dt.datetime
    end: dt.datetime
    elapsed_days: float
    floor_area_m2: float
    tariff: str
    commodities: list[CommodityKpi]
    eui_kwh_m2: float | None = Field(description="electricity + gas (as kWh) per m2 over the period")
    eui_kwh_m2_year: float | None = Field(description="the same, annualized over the elapsed days")
    cost_rial: float | None = Field(description="electricity cost by time-of-use band, summed")
    cost_by_band: list[BandCost]
    peak: PeakDemand
    co2_kg: float | None
    baseline_method: str = Field(description="how the baseline was computed")


# --- reading the store -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildingData:
    """What the KPIs need from the store, read in a few matrix calls."""

    building: Building
    meters: tuple[Meter, ...]  # visible meters with a cumulative field, in row order
    times: np.ndarray  # datetime64[s] hourly starts of the period [T]
    hourly: np.ndarray  # [M x (BASELINE_WEEKS*168 + T)] consumption, the weeks before the period first
    last_year: np.ndarray  # [M x T]
    quarter_times: np.ndarray  # [Q]
    quarter_kwh: np.ndarray  # [Q], electricity of the building per 15 minutes
    now: dt.datetime

    @property
    def period(self) -> np.ndarray:
        return self.hourly[:, BASELINE_WEEKS * HOURS_PER_WEEK:]

    def rows(self, commodity: str) -> np.ndarray:
        return np.array([m.commodity == commodity for m in self.meters], dtype=bool)


def cumulative_field(meter: Meter) -> str | None:
    field = CUMULATIVE_FIELD.get(meter.commodity)
    cumulative = field is not None and any(r.field == field and r.cumulative for r in meter.profile.registers)
    return field if cumulative else None


def read_hourly(store: Store, meters: Sequence[Meter], start: dt.datetime, end: dt.datetime,
                bucket: dt.timedelta = HOUR) -> np.ndarray:
    """``[M x T]`` consumption of each meter's cumulative field, one store call per field."""
    by_field: dict[str, list[int]] = {}
    for i, m in enumerate(meters):
        by_field.setdefault(cumulative_field(m) or "", []).append(i)
    n = bucket_axis(start, end, bucket)[2]
    out = np.full((len(meters), n), np.nan)
    for field, rows in by_field.items():
        if not field:
            continue
        matrix = store.read_consumption([meters[i].id for i in rows], field, start, end, bucket)
        out[rows] = matrix.values
    return out


def load_building(store: Store, building: Building, meters: Sequence[Meter], start: dt.datetime,
                  end: dt.datetime, now: dt.datetime | None = None) -> BuildingData:
    metered = tuple(m for m in meters if cumulative_field(m))
    lookback = BASELINE_WEEKS * HOURS_PER_WEEK * HOUR
    hourly = read_hourly(store, metered, start - lookback, end)
    last_year = read_hourly(store, metered, start - LAST_YEAR, end - LAST_YEAR)
    elec = [m for m in metered if m.commodity == "electricity"]
    quarter = row_sum(read_hourly(store, elec, start, end, QUARTER))
    n = hourly.shape[1] - BASELINE_WEEKS * HOURS_PER_WEEK
    return BuildingData(building=building, meters=metered, times=time_axis(start, n), hourly=hourly,
                        last_year=last_year[:, :n], quarter_times=time_axis(start, quarter.size, QUARTER),
                        quarter_kwh=quarter, now=now or dt.datetime.now(dt.UTC))


# --- the figures ---------------------------------------------------------------------------------------------
def building_kpis(data: BuildingData, calendar: OfficeCalendar, book: TariffBook, start: dt.datetime,
                  end: dt.datetime) -> BuildingKpis:
    b = data.building
    tariff: Tariff = book.for_building(b.id)
    masks = calendar.bucket_masks(data.times, np.timedelta64(3600, "s")) if data.times.size else None
    period = data.period
    baseline = hour_of_week_baseline(data.hourly)
    elapsed_end = min(end, max(data.now, start))
    elapsed_hours = max(int(np.ceil((elapsed_end - start) / HOUR)), 0)
    elapsed_days = (elapsed_end - start) / dt.timedelta(days=1)
    commodities: list[CommodityKpi] = []
    energy_kwh = 0.0
    have_energy = False
    co2_total = 0.0
    elec_hourly = np.full(period.shape[1], np.nan)
    for commodity in ("electricity", "gas", "water"):
        rows = data.rows(commodity)
        if not rows.any():
            continue
        factors = book.commodities[commodity]
        actual = row_sum(period[rows])
        if commodity == "electricity":
            elec_hourly = actual
        ok = np.isfinite(actual)
        total = float(actual[ok].sum()) if ok.any() else None
        after = masked_share(actual, masks.after_hours) if masks is not None else None
        holiday = masked_share(actual, masks.holiday) if masks is not None else None
        a_tot, base_tot, _ = paired_change(actual, row_sum(baseline[rows]))
        a_ly, ly_tot, _ = paired_change(actual, row_sum(data.last_year[rows]))
        known = np.isfinite(period[rows][:, :elapsed_hours]).sum()
        completeness = float(known / (rows.sum() * elapsed_hours)) if elapsed_hours else 0.0
        co2 = total * factors.kg_co2_per_unit if total is not None else None
        if total is not None:
            energy_kwh += total * factors.kwh_per_unit
            have_energy = have_energy or factors.kwh_per_unit > 0
            co2_total += co2 or 0.0
        commodities.append(CommodityKpi(
            commodity=commodity, unit=factors.unit, meters=int(rows.sum()), total=total,
            after_hours_share=after, holiday_share=holiday, baseline_total=base_tot,
            vs_baseline_pct=pct_change(a_tot, base_tot), last_year_total=ly_tot,
            vs_last_year_pct=pct_change(a_ly, ly_tot), completeness=min(completeness, 1.0), co2_kg=co2))
    labels = tariff.classify(data.times, b.timezone, np.timedelta64(3600, "s"))
    band_kwh, band_rial = tou_cost(elec_hourly, labels.band, labels.price)
    has_elec = bool(np.isfinite(elec_hourly).any())
    peak = _peak(data, b)
    eui = energy_kwh / b.floor_area_m2 if have_energy else None
    return BuildingKpis(
        building=b.id, start=start, end=end, elapsed_days=round(elapsed_days, 4), floor_area_m2=b.floor_area_m2,
        tariff=tariff.id, commodities=commodities, eui_kwh_m2=eui,
        eui_kwh_m2_year=eui * 365.0 / elapsed_days if eui is not None and elapsed_days > 0 else None,
        cost_rial=float(band_rial.sum()) if has_elec else None,
        cost_by_band=[BandCost(band=name, kwh=float(band_kwh[i]), rial=float(band_rial[i]))
                      for i, name in enumerate(BANDS)] if has_elec else [],
        peak=peak, co2_kg=co2_total if any(c.total is not None for c in commodities) else None,
        baseline_method=f"median of the same hour of the week over the previous {BASELINE_WEEKS} weeks")


def _peak(data: BuildingData, b: Building) -> PeakDemand:
    q = data.quarter_kwh
    if not np.isfinite(q).any():
        return PeakDemand(kw=None, at=None, contracted_kw=b.contracted_kw, ratio=None)
    i = int(np.nanargmax(q))
    kw = float(q[i] * 4.0)
    at = data.quarter_times[i].astype("datetime64[s]").item().replace(tzinfo=dt.UTC)
    return PeakDemand(kw=kw, at=at, contracted_kw=b.contracted_kw,
                      ratio=kw / b.contracted_kw if b.contracted_kw else None)
