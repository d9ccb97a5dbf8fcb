"""Response models: they make the OpenAPI schema complete and keep every time UTC with a ``Z``."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field


def _as_utc(t: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes (UTC by convention); PostgreSQL may hand back a session offset."""
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


UtcDatetime = Annotated[dt.datetime, AfterValidator(_as_utc)]


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    store: Literal["ok", "unreachable"]
    state: Literal["ok", "unreachable"]


class BuildingOut(BaseModel):
    id: str
    name: str
    name_fa: str | None
    city: str
    floor_area_m2: float
    timezone: str
    contracted_kw: float | None
    commodities: list[str] = Field(description="commodities metered in this building (visible to the caller)")


class MeterOut(BaseModel):
    id: str
    building: str
    commodity: str
    name: str | None
    rated_kw: float | None
    profile: str
    fields: list[str] = Field(description="field names this meter's profile publishes, units in the name")


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


class AlertOut(BaseModel):
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


class AlertPage(BaseModel):
    items: list[AlertOut]
    limit: int
    offset: int
