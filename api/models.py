"""Response models: they make the OpenAPI schema complete and keep every time UTC with a ``Z``."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from bems.kpi import BuildingKpis


def _as_utc(t: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes (UTC by convention); PostgreSQL may hand back a session offset."""
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


UtcDatetime = Annotated[dt.datetime, AfterValidator(_as_utc)]


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    store: Literal["ok", "unreachable"]
    state: Literal["ok", "unreachable"]


class BuildingOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "tehran-moi-hq", "name": "Ministry of Interior HQ", "name_fa": "ستاد وزارت کشور", "city": "Tehran",
        "floor_area_m2": 24000, "timezone": "Asia/Tehran", "contracted_kw": 900,
        "commodities": ["electricity", "water"], "tariff": "ir-gov-tou", "calendar": "office_calendar"}]})

    id: str
    name: str
    name_fa: str | None
    city: str
    floor_area_m2: float
    timezone: str
    contracted_kw: float | None
    commodities: list[str] = Field(description="commodities metered in this building (visible to the caller)")
    tariff: str = Field("", description="id of the time-of-use tariff applied (GET /api/v1/tariffs)")
    calendar: str = Field("", description="the office calendar that decides working hours")


class MeterOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "tehran-moi-hq.main-elec", "building": "tehran-moi-hq", "commodity": "electricity", "name": None,
        "rated_kw": 900, "profile": "sdm630", "fields": ["power_w", "energy_kwh"], "status": "online",
        "last_reading": "2026-11-21T08:00:02Z", "completeness_pct": 99.0}]})

    id: str
    building: str
    commodity: str
    name: str | None
    rated_kw: float | None
    profile: str
    fields: list[str] = Field(description="field names this meter's profile publishes, units in the name")
    status: Literal["online", "stale", "offline", "never"] = Field(
        "never", description="online: reported within 3 poll periods (30 s at least); stale: within 15 min; "
                             "offline: longer ago; never: no reading stored")
    last_reading: UtcDatetime | None = Field(None, description="time of the newest stored reading")
    quality: Literal["good", "uncertain", "bad"] | None = Field(None, description="quality flag of that reading")
    completeness_pct: float | None = Field(
        None, description="share of the 15-minute slots of the last 24 h holding at least one reading, in %")


class LatestOut(BaseModel):
    meter: str
    commodity: str
    ts: UtcDatetime | None = Field(description="time of the newest reading; null if the meter never reported")
    values: dict[str, float]
    quality: str | None


class BuildingLatest(BaseModel):
    building: str
    meters: list[LatestOut] = Field(description="one entry per meter the caller may see")


class SeriesOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "meter": "tehran-moi-hq.main-elec", "field": "power_w", "mode": "aggregate", "agg": "mean", "bucket": "1h",
        "bucket_s": 3600, "start": "2026-11-21T00:00:00Z", "end": "2026-11-21T02:00:00Z",
        "times": ["2026-11-21T00:00:00Z", "2026-11-21T01:00:00Z"], "values": [41250.0, None], "counts": [240, 0],
        "flagged": [1, 0], "flags": [["negative_delta"], []]}]})

    meter: str
    field: str = Field(description="canonical field name; the unit is in the name (power_w, energy_kwh)")
    mode: Literal["aggregate", "consumption"]
    agg: str | None = Field(description="aggregate per bucket; null in consumption mode (delta per bucket)")
    bucket: str
    bucket_s: int
    start: UtcDatetime
    end: UtcDatetime
    times: list[str] = Field(description="bucket starts, ISO 8601 UTC")
    values: list[float | None] = Field(description="one value per bucket; null where a bucket has no data")
    counts: list[int] | None = Field(None, description="readings per bucket (with counts=true): 0 is a gap")
    flagged: list[int] | None = Field(None, description="readings per bucket with a quality flag or a quality "
                                                        "other than good (with counts=true)")
    flags: list[list[str]] | None = Field(None, description="per bucket, the flags of its flagged readings "
                                                            "(with counts=true): rollover, reset, negative_delta "
                                                            "(cumulative registers), uncertain, bad (quality)")


class AlertOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": 17, "building": "tehran-moi-hq", "meter": "tehran-moi-hq.hvac-elec", "commodity": "electricity",
        "type": "after_hours", "severity": "warning", "status": "open", "start": "2026-11-20T15:30:00Z",
        "end": "2026-11-20T20:30:00Z", "excess": 412.5, "unit": "kWh",
        "message": "after-hours use 2.1x the usual closed-hours level", "created_at": "2026-11-20T21:00:00Z",
        "updated_at": "2026-11-20T21:00:00Z", "cost_rial": 1856250.0}]})

    id: int
    building: str
    meter: str
    commodity: str
    type: str
    severity: str
    status: Literal["open", "acknowledged", "resolved"]
    start: UtcDatetime
    end: UtcDatetime
    excess: float = Field(description="energy or volume above the baseline over the period, in ``unit``")
    unit: str = Field(description="kWh for electricity, m3 for water and gas")
    message: str
    created_at: UtcDatetime
    updated_at: UtcDatetime
    cost_rial: float | None = Field(None, description="the excess electricity priced by its time-of-use band")


class AlertPage(BaseModel):
    items: list[AlertOut]
    limit: int
    offset: int
    total: int = Field(0, description="alerts matching the filters, all pages")


class CommentIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"text": "HVAC left on; fixed"}]})

    text: str = Field(min_length=1, max_length=2000, description="the comment, plain text")


class CommentOut(BaseModel):
    id: int
    alert_id: int
    author: str
    text: str
    created_at: UtcDatetime


class AuditOut(BaseModel):
    id: int
    at: UtcDatetime
    actor: str
    action: str = Field(description="alert.acknowledged, alert.resolved, alert.comment, token.create, ...")
    target: str
    detail: str


class AuditPage(BaseModel):
    items: list[AuditOut]
    limit: int
    offset: int
    total: int


class PortfolioRow(BaseModel):
    rank: int
    building: str
    name: str
    name_fa: str | None
    city: str
    floor_area_m2: float
    electricity_kwh: float | None
    energy_kwh: float | None = Field(description="electricity + gas as kWh")
    eui_kwh_m2: float | None
    eui_kwh_m2_year: float | None
    after_hours_share: float | None = Field(description="electricity after hours / electricity total, 0..1")
    open_alerts: int


class Portfolio(BaseModel):
    start: UtcDatetime
    end: UtcDatetime
    sort: str
    items: list[PortfolioRow]


class ProfileOut(BaseModel):
    date: str = Field(description="the local date (YYYY-MM-DD, Gregorian) of the profile")
    times: list[str] = Field(description="hour starts, ISO 8601 UTC")
    today_kwh: list[float | None] = Field(description="electricity per hour today (= average kW)")
    baseline_kwh: list[float | None]


class HeatmapOut(BaseModel):
    weekdays: list[str] = Field(description="row labels, Saturday first")
    mean_kwh: list[list[float | None]] = Field(description="[7 x 24] mean electricity per local hour of week")


class MeterSeries(BaseModel):
    meter: str
    commodity: str
    unit: str
    values: list[float | None]


class BuildingPage(BaseModel):
    """Everything the dashboard's building page draws, in one response (live load comes over the stream)."""

    building: BuildingOut
    generated_at: UtcDatetime
    start: UtcDatetime
    end: UtcDatetime
    times: list[str] = Field(description="hour starts of the period, ISO 8601 UTC")
    meters: list[MeterSeries] = Field(description="hourly consumption of every visible meter")
    electricity_kwh: list[float | None] = Field(description="the building's electricity per hour")
    kpis: BuildingKpis
    profile: ProfileOut
    heatmap: HeatmapOut


class TariffsOut(BaseModel):
    default: str
    assignments: dict[str, str]
    tariffs: list[dict[str, Any]] = Field(description="tariffs with their versions, seasons and bands")
    commodities: dict[str, dict[str, Any]] = Field(description="units, kg CO2 and kWh per unit")
    source: Literal["file", "override"] = Field("file", description="the tariff file, or an admin's override")
    changed_at: UtcDatetime | None = Field(None, description="when an admin last changed or reset the tariffs")
    changed_by: str | None = None


class MeterSavingsOut(BaseModel):
    meter: str
    commodity: str
    unit: str
    baseline_hours: int = Field(description="hours of the baseline period the model was fitted on")
    cv_rmse_pct: float | None = Field(description="ASHRAE Guideline 14 CV(RMSE) of the fit, %")
    nmbe_pct: float | None = Field(description="ASHRAE Guideline 14 NMBE of the fit, %")
    meets_guideline14: bool = Field(description="hourly model: CV(RMSE) <= 30 % on at least 14 days of data")
    report_hours: int
    actual: float = Field(description="consumption over the modelled hours of the reporting period")
    expected: float | None = Field(description="what the baseline model expects over the same hours and weather; "
                                               "null when the baseline period holds under 14 days of data")
    saved: float | None = Field(description="expected - actual; negative is excess")
    saved_rial: float | None = Field(description="electricity: the hourly savings through the time-of-use tariff")


class CommoditySavingsOut(BaseModel):
    """Sums over the meters of the commodity that have a baseline model."""

    commodity: str
    unit: str
    meters: int
    actual: float
    expected: float
    saved: float
    saved_pct: float | None
    saved_rial: float | None


class SavingsOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "building": "tehran-moi-hq", "method": "time of week and outdoor temperature from tehran-moi-hq.outdoor "
        "(TOWT), least squares per meter", "temperature_meter": "tehran-moi-hq.outdoor",
        "baseline_start": "2026-08-01T20:30:00Z", "baseline_end": "2026-10-24T20:30:00Z",
        "report_start": "2026-10-24T20:30:00Z", "report_end": "2026-11-23T20:30:00Z", "meters": [], "totals": [{
            "commodity": "electricity", "unit": "kWh", "meters": 3, "actual": 61230.0, "expected": 66410.5,
            "saved": 5180.5, "saved_pct": 7.8, "saved_rial": 1036100.0}]}]})

    building: str
    method: str = Field(description="how the baseline was built, and whether it is weather-normalized")
    temperature_meter: str | None
    baseline_start: UtcDatetime
    baseline_end: UtcDatetime
    report_start: UtcDatetime
    report_end: UtcDatetime
    meters: list[MeterSavingsOut]
    totals: list[CommoditySavingsOut]
