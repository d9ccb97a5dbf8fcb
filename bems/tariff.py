"""Time-of-use electricity tariffs and emission factors as versioned data (``bems/tariffs.yaml``).

A decree changes prices from a date, and the seasons follow the Solar Hijri year, so a tariff is a list of
versions, each with seasons (Solar Hijri months) and bands (local hours). ``classify`` labels a whole UTC time
axis at once: one Python step per distinct local day, numpy for the rest.
"""

from __future__ import annotations

import datetime as dt
from functools import cache
from pathlib import Path
from typing import Literal

import jdatetime
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bems.calendar import _utc_offsets
from bems.errors import ConfigError
from bems.validation import load_yaml, parse_model

DEFAULT_TARIFFS = Path(__file__).with_name("tariffs.yaml")
Band = Literal["low", "mid", "peak"]
BANDS: tuple[Band, ...] = ("low", "mid", "peak")
_MINUTES_PER_DAY = 24 * 60


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _minute(text: str) -> int:
    if text == "24:00":
        return _MINUTES_PER_DAY
    t = dt.time.fromisoformat(text)
    return t.hour * 60 + t.minute


class BandWindow(_Strict):
    band: Band
    start: str = Field(alias="from", description="local time HH:MM")
    end: str = Field(alias="to", description="local time HH:MM; before `from` means past midnight")

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        _minute(value)  # raises ValueError naming the text
        return value


class Season(_Strict):
    name: str
    months: tuple[int, ...] = Field(min_length=1, description="Solar Hijri months, 1 = Farvardin")
    bands: tuple[BandWindow, ...] = Field(min_length=1)

    @field_validator("months")
    @classmethod
    def _months(cls, months: tuple[int, ...]) -> tuple[int, ...]:
        if bad := [m for m in months if not 1 <= m <= 12]:
            raise ValueError(f"Solar Hijri months run 1..12, not {bad}")
        return months

    @model_validator(mode="after")
    def _covers_the_day(self) -> Season:
        self.minute_bands()
        return self

    def minute_bands(self) -> np.ndarray:
        """Band index (into BANDS) for every minute of the local day; raises if the day is not covered once."""
        out = np.full(_MINUTES_PER_DAY, -1, dtype=np.int8)
        for w in self.bands:
            s, e = _minute(w.start), _minute(w.end)
            span = np.arange(s, e) if s < e else np.concatenate([np.arange(s, _MINUTES_PER_DAY), np.arange(0, e)])
            if (out[span] >= 0).any():
                raise ValueError(f"season {self.name!r}: band {w.band} {w.start}-{w.end} overlaps another band")
            out[span] = BANDS.index(w.band)
        if (out < 0).any():
            first = int(np.argmax(out < 0))
            raise ValueError(f"season {self.name!r}: no band covers {first // 60:02d}:{first % 60:02d}")
        return out


class TariffVersion(_Strict):
    start: dt.date
    reason: str = ""
    prices_rial_per_kwh: dict[Band, float]
    seasons: tuple[Season, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _complete(self) -> TariffVersion:
        if missing := [b for b in BANDS if b not in self.prices_rial_per_kwh]:
            raise ValueError(f"prices_rial_per_kwh lacks {', '.join(missing)}")
        months = [m for s in self.seasons for m in s.months]
        if sorted(months) != list(range(1, 13)):
            raise ValueError(f"seasons must cover the months 1..12 once each, got {sorted(months)}")
        return self


class Tariff(_Strict):
    id: str
    name: str
    name_fa: str | None = None
    currency: Literal["IRR"] = "IRR"
    versions: tuple[TariffVersion, ...] = Field(min_length=1)

    def version_index(self, day: dt.date) -> int:
        order = sorted(range(len(self.versions)), key=lambda i: self.versions[i].start)
        current = order[0]
        for i in order:
            if self.versions[i].start <= day:
                current = i
        return current

    def classify(self, times: np.ndarray, timezone: str, width: np.timedelta64 | None = None) -> TouLabels:
        """Band and price of each interval starting at ``times`` (UTC), judged at its middle.

        Why the middle: an hourly bucket 18:30-19:30 local straddles a 19:00 edge; the middle puts it in one
        band deterministically. Buckets aligned to local hours (the API's default) never straddle an edge.
        """
        t = np.asarray(times, dtype="datetime64[s]")
        if width is not None:
            t = t + (np.timedelta64(width, "s") // 2)
        if t.size == 0:
            return TouLabels(np.zeros(0, np.int8), np.zeros(0), np.zeros(0, np.int16))
        local = t + _utc_offsets(t, timezone)
        days = local.astype("datetime64[D]")
        minute = (local - days).astype("timedelta64[m]").astype(np.int64)
        udays, inv = np.unique(days, return_inverse=True)
        tables = {}  # (version, season) -> minute table
        day_table = np.zeros((len(udays), _MINUTES_PER_DAY), dtype=np.int8)
        day_prices = np.zeros((len(udays), len(BANDS)))
        day_version = np.zeros(len(udays), dtype=np.int16)
        for i, d in enumerate(udays):  # one step per local day
            day = d.item()
            vi = self.version_index(day)
            v = self.versions[vi]
            month = jdatetime.date.fromgregorian(date=day).month
            si = next(k for k, s in enumerate(v.seasons) if month in s.months)
            if (vi, si) not in tables:
                tables[(vi, si)] = v.seasons[si].minute_bands()
            day_table[i] = tables[(vi, si)]
            day_prices[i] = [v.prices_rial_per_kwh[b] for b in BANDS]
            day_version[i] = vi
        band = day_table[inv, minute]
        price = day_prices[inv, band]
        return TouLabels(band=band, price=price, version=day_version[inv])


class TouLabels(BaseModel):
    """Per interval: band index into ``BANDS``, price in rial/kWh, tariff version index."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    band: np.ndarray
    price: np.ndarray
    version: np.ndarray


class CommodityFactors(_Strict):
    unit: str
    kg_co2_per_unit: float = Field(ge=0)
    kwh_per_unit: float = Field(ge=0, description="energy content, for energy use intensity")


class TariffBook(_Strict):
    default: str
    tariffs: tuple[Tariff, ...] = Field(min_length=1)
    assignments: dict[str, str] = Field(default_factory=dict, description="building id -> tariff id")
    commodities: dict[str, CommodityFactors]

    @model_validator(mode="after")
    def _references(self) -> TariffBook:
        ids = {t.id for t in self.tariffs}
        for building, tid in {"default": self.default, **self.assignments}.items():
            if tid not in ids:
                raise ValueError(f"{building}: unknown tariff {tid!r}; known: {', '.join(sorted(ids))}")
        if missing := [c for c in ("electricity", "gas", "water") if c not in self.commodities]:
            raise ValueError(f"commodities lacks {', '.join(missing)}")
        return self

    def tariff(self, tariff_id: str) -> Tariff:
        for t in self.tariffs:
            if t.id == tariff_id:
                return t
        raise ConfigError(f"unknown tariff {tariff_id!r}; known: {', '.join(t.id for t in self.tariffs)}")

    def for_building(self, building_id: str) -> Tariff:
        return self.tariff(self.assignments.get(building_id, self.default))


@cache
def default_tariffs() -> TariffBook:
    return load_tariffs(DEFAULT_TARIFFS)


def load_tariffs(path: Path) -> TariffBook:
    return parse_model(TariffBook, load_yaml(path), str(path))
