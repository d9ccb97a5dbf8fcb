"""KPIs, the portfolio ranking and the building page payload (``bems.kpi`` does the arithmetic).

These are hourly reports, computed once per key and period and reused for ``cache_ttl_s`` (``api.cache``);
live values come over ``/api/v1/stream``.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

import numpy as np
from fastapi import APIRouter, Query, Response

from analytics.savings import SavingsReport, measure
from api.auth import CurrentPrincipal, Principal, building_for
from api.deps import CacheDep, CalendarDep, FleetDep, StateDep, StoreDep, TariffsDep
from api.models import (
    BuildingPage,
    CommoditySavingsOut,
    HeatmapOut,
    MeterSavingsOut,
    MeterSeries,
    Portfolio,
    PortfolioRow,
    ProfileOut,
    SavingsOut,
)
from api.routes import BuildingId, building_out
from api.series import check_time, invalid, json_values
from bems.calendar import OfficeCalendar, _utc_offsets
from bems.fleet import Building, Fleet
from bems.kpi import (
    MAX_PERIOD,
    BuildingKpis,
    building_kpis,
    cumulative_field,
    group_sum,
    hour_of_week_baseline,
    hour_of_week_mean,
    load_building,
    read_hourly,
    row_sum,
    time_axis,
)
from bems.state import StateDB
from bems.store import Store
from bems.tariff import TariffBook

router = APIRouter(prefix="/api/v1")
WEEKDAYS = ["sat", "sun", "mon", "tue", "wed", "thu", "fri"]
MAX_PAGE_DAYS = 92
JSON = "application/json"


def local_days(days: int, timezone: str, now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
    """[local midnight ``days - 1`` days ago, local midnight tomorrow) in UTC: whole local days, today included."""
    zone = ZoneInfo(timezone)
    today = (now or dt.datetime.now(dt.UTC)).astimezone(zone).date()
    start = dt.datetime.combine(today - dt.timedelta(days=days - 1), dt.time(), zone)
    end = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), zone)
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


def period(start: dt.datetime | None, end: dt.datetime | None, timezone: str,
           days: int = 30) -> tuple[dt.datetime, dt.datetime]:
    """The requested period, or the last ``days`` whole local days; at most ``MAX_PERIOD``."""
    check_time("start", start)
    check_time("end", end)
    default_start, default_end = local_days(days, timezone)
    t1 = end.astimezone(dt.UTC) if end else default_end
    t0 = start.astimezone(dt.UTC) if start else min(default_start, t1 - dt.timedelta(days=days))
    if t1 <= t0:
        raise invalid("end", "end must be after start")
    if t1 - t0 > MAX_PERIOD:
        raise invalid("end", f"the period {t0.isoformat()} .. {t1.isoformat()} is longer than the limit of "
                             f"{MAX_PERIOD.days} days; narrow it")
    return t0, t1


Start = Annotated[dt.datetime | None, Query(description="period start, ISO 8601 with offset; default: local "
                                                        "midnight 29 days ago", examples=["2026-10-22T20:30:00Z"])]
End = Annotated[dt.datetime | None, Query(description="period end (exclusive); default: local midnight tomorrow",
                                          examples=["2026-11-21T20:30:00Z"])]


def _visible(who: Principal, fleet: Fleet, building: str) -> list:  # type: ignore[type-arg]
    return [m for m in fleet.meters_of(building=building) if who.sees_meter(m)]


@router.get("/buildings/{building_id}/kpis", response_model=BuildingKpis, tags=["kpis"])
async def get_kpis(building_id: BuildingId, who: CurrentPrincipal, fleet: FleetDep, store: StoreDep,
                   calendar: CalendarDep, tariffs: TariffsDep, cache: CacheDep, start: Start = None,
                   end: End = None) -> Response:
    """Energy by commodity, after-hours and holiday shares, against the baseline and last year, EUI, cost by
    time-of-use band in rial, peak 15-minute demand against the contracted kW, CO2. Period: at most 366 days."""
    b = building_for(who, fleet, building_id)
    t0, t1 = period(start, end, b.timezone)
    meters = _visible(who, fleet, b.id)

    def compute() -> bytes:
        data = load_building(store, b, meters, t0, t1)
        return building_kpis(data, calendar, tariffs, t0, t1).model_dump_json().encode()

    return Response(await cache.get(("kpis", b.id, t0, t1, who.key), compute), media_type=JSON)


def page_payload(b: Building, fleet: Fleet, who: Principal, store: Store, calendar: OfficeCalendar,
                 tariffs: TariffBook, start: dt.datetime, end: dt.datetime) -> bytes:
    meters = _visible(who, fleet, b.id)
    data = load_building(store, b, meters, start, end)
    kpis = building_kpis(data, calendar, tariffs, start, end)
    times = [t + "Z" for t in np.datetime_as_string(data.times, unit="s").tolist()]
    elec_rows = data.rows("electricity")
    elec = row_sum(data.period[elec_rows])
    baseline = row_sum(hour_of_week_baseline(data.hourly[elec_rows]))
    local = data.times + _utc_offsets(data.times, b.timezone)
    local_day = local.astype("datetime64[D]")
    today = np.datetime64(data.now.astimezone(ZoneInfo(b.timezone)).date(), "D")
    idx = np.flatnonzero(local_day == today)
    masks = calendar.masks(data.times) if data.times.size else None
    heat = (hour_of_week_mean(elec, masks.local_weekday, masks.local_hour) if masks is not None
            else np.full((7, 24), np.nan))
    page = BuildingPage(
        building=building_out(b, fleet, who, tariffs), generated_at=data.now, start=start, end=end, times=times,
        meters=[MeterSeries(meter=m.id, commodity=m.commodity, unit=tariffs.commodities[m.commodity].unit,
                            values=json_values(data.period[i])) for i, m in enumerate(data.meters)],
        electricity_kwh=json_values(elec), kpis=kpis,
        profile=ProfileOut(date=str(today), times=[times[i] for i in idx], today_kwh=json_values(elec[idx]),
                           baseline_kwh=json_values(baseline[idx])),
        heatmap=HeatmapOut(weekdays=WEEKDAYS, mean_kwh=[json_values(row) for row in heat]))
    return page.model_dump_json().encode()


@router.get("/buildings/{building_id}/savings", response_model=SavingsOut, tags=["kpis"])
async def get_savings(building_id: BuildingId, who: CurrentPrincipal, fleet: FleetDep, store: StoreDep,
                      calendar: CalendarDep, tariffs: TariffsDep, cache: CacheDep, start: Start = None,
                      end: End = None,
                      days: Annotated[int, Query(ge=1, le=366, description=(
                          "without start: the reporting period is the last `days` whole local days"))] = 30,
                      baseline_weeks: Annotated[int, Query(ge=2, le=52, description=(
                          "length of the baseline period, in weeks just before the reporting period"))] = 12,
                      ) -> Response:
    """Savings (or excess) of every visible meter in the reporting period against its weather-normalized baseline
    (time of week + outdoor temperature, fitted on the ``baseline_weeks`` before), with the Guideline 14
    statistics of each fit and the electricity savings in rial through the time-of-use tariff."""
    b = building_for(who, fleet, building_id)
    t0, t1 = period(start, end, b.timezone, days)
    base = (t0 - dt.timedelta(weeks=baseline_weeks), t0)
    meters = _visible(who, fleet, b.id)

    def compute() -> bytes:
        report = measure(store, fleet, b.id, meters, base, (t0, t1), calendar, tariffs)
        return savings_out(report, tariffs).model_dump_json().encode()

    return Response(await cache.get(("savings", b.id, t0, t1, baseline_weeks, who.key), compute), media_type=JSON)


def savings_out(report: SavingsReport, tariffs: TariffBook) -> SavingsOut:
    def pct(x: float | None) -> float | None:
        return None if x is None else round(100 * x, 2)

    totals = []
    for commodity in sorted({m.commodity for m in report.meters}):
        rows = [m for m in report.meters if m.commodity == commodity and m.expected is not None]
        if not rows:
            continue  # no meter of this commodity has enough baseline to claim anything
        actual, expected = sum(m.actual for m in rows), sum(m.expected or 0.0 for m in rows)
        rial = [m.saved_rial for m in rows if m.saved_rial is not None]
        totals.append(CommoditySavingsOut(
            commodity=commodity, unit=tariffs.commodities[commodity].unit, meters=len(rows), actual=actual,
            expected=expected, saved=expected - actual,
            saved_pct=round(100 * (expected - actual) / expected, 2) if expected else None,
            saved_rial=sum(rial) if rial else None))
    return SavingsOut(
        building=report.building, method=report.method, temperature_meter=report.temperature_meter,
        baseline_start=report.baseline[0], baseline_end=report.baseline[1], report_start=report.report[0],
        report_end=report.report[1], totals=totals,
        meters=[MeterSavingsOut(meter=m.meter, commodity=m.commodity, unit=tariffs.commodities[m.commodity].unit,
                                baseline_hours=m.baseline_hours, cv_rmse_pct=pct(m.cv_rmse), nmbe_pct=pct(m.nmbe),
                                meets_guideline14=m.meets_guideline14, report_hours=m.report_hours, actual=m.actual,
                                expected=m.expected, saved=m.saved, saved_rial=m.saved_rial)
                for m in report.meters])


@router.get("/buildings/{building_id}/dashboard", response_model=BuildingPage, tags=["kpis"])
async def building_page(
    building_id: BuildingId, who: CurrentPrincipal, fleet: FleetDep, store: StoreDep, calendar: CalendarDep,
    tariffs: TariffsDep, cache: CacheDep,
    days: Annotated[int, Query(ge=1, le=MAX_PAGE_DAYS, description="whole local days up to today")] = 30,
) -> Response:
    """The building page in one payload: hourly consumption of every visible meter, KPIs, today against the
    baseline, the hour-of-week heatmap. Computed once per building, scope and period for ``cache_ttl_s``."""
    b = building_for(who, fleet, building_id)
    t0, t1 = local_days(days, b.timezone)

    def compute() -> bytes:
        return page_payload(b, fleet, who, store, calendar, tariffs, t0, t1)

    return Response(await cache.get(("page", b.id, t0, t1, who.key), compute), media_type=JSON)


def portfolio_payload(fleet: Fleet, who: Principal, store: Store, state: StateDB, calendar: OfficeCalendar,
                      tariffs: TariffBook, start: dt.datetime, end: dt.datetime, sort: str) -> bytes:
    buildings = [b for b in fleet.buildings if who.sees_building(b.id, fleet)]
    index = {b.id: i for i, b in enumerate(buildings)}
    meters = [m for m in fleet.meters if m.building in index and who.sees_meter(m) and cumulative_field(m)]
    hourly = read_hourly(store, meters, start, end)
    owner = np.array([index[m.building] for m in meters], dtype=np.intp)
    kinds = np.array([m.commodity for m in meters])
    nb = len(buildings)

    def per_building(commodity: str) -> np.ndarray:
        rows = kinds == commodity
        return group_sum(hourly[rows], owner[rows], nb) if rows.any() else np.full((nb, hourly.shape[1]), np.nan)

    elec, gas = per_building("electricity"), per_building("gas")
    times = time_axis(start, hourly.shape[1])
    after = calendar.bucket_masks(times, np.timedelta64(3600, "s")).after_hours if times.size else np.zeros(0, bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        e_total = np.nansum(elec, axis=1)
        e_has = np.isfinite(elec).any(axis=1)
        g_total = np.nansum(gas, axis=1)
        g_has = np.isfinite(gas).any(axis=1)
        after_share = np.where(e_has & (e_total > 0), np.nansum(np.where(after, elec, 0.0), axis=1) / e_total,
                               np.nan)
    factors = tariffs.commodities
    energy = e_total * factors["electricity"].kwh_per_unit + g_total * factors["gas"].kwh_per_unit
    has_energy = e_has | g_has
    area = np.array([b.floor_area_m2 for b in buildings])
    eui = np.where(has_energy, energy / area, np.nan)
    elapsed = max((min(end, dt.datetime.now(dt.UTC)) - start) / dt.timedelta(days=1), 1e-9)
    open_alerts = state.open_alert_counts(**{k: v for k, v in who.alert_filter().items()})

    def num(x: float) -> float | None:
        return None if not np.isfinite(x) else float(x)

    rows = [PortfolioRow(rank=0, building=b.id, name=b.name, name_fa=b.name_fa, city=b.city,
                         floor_area_m2=b.floor_area_m2, electricity_kwh=num(e_total[i]) if e_has[i] else None,
                         energy_kwh=num(energy[i]) if has_energy[i] else None, eui_kwh_m2=num(eui[i]),
                         eui_kwh_m2_year=num(eui[i] * 365.0 / elapsed), after_hours_share=num(after_share[i]),
                         open_alerts=open_alerts.get(b.id, 0)) for i, b in enumerate(buildings)]
    key = {"eui": lambda r: r.eui_kwh_m2, "after_hours": lambda r: r.after_hours_share,
           "open_alerts": lambda r: r.open_alerts}[sort]
    rows.sort(key=lambda r: (key(r) is None, -(key(r) or 0.0), r.building))
    for rank, r in enumerate(rows, 1):
        r.rank = rank
    return Portfolio(start=start, end=end, sort=sort, items=rows).model_dump_json().encode()


@router.get("/portfolio", response_model=Portfolio, tags=["kpis"])
async def portfolio(
    who: CurrentPrincipal, fleet: FleetDep, store: StoreDep, state: StateDep, calendar: CalendarDep,
    tariffs: TariffsDep, cache: CacheDep, start: Start = None, end: End = None,
    sort: Annotated[Literal["eui", "after_hours", "open_alerts"], Query(description="ranking, largest first")]
    = "eui",
) -> Response:
    """The visible buildings ranked by energy use intensity, after-hours share or open alerts (at most 366 days)."""
    tz = fleet.buildings[0].timezone
    t0, t1 = period(start, end, tz)

    def compute() -> bytes:
        return portfolio_payload(fleet, who, store, state, calendar, tariffs, t0, t1, sort)

    return Response(await cache.get(("portfolio", t0, t1, sort, who.key), compute), media_type=JSON)
