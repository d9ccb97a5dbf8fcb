"""The working calendar of government buildings, vectorized over a time axis.

Simulators use it to shape load; analytics uses the same masks to tell working hours from after hours.
"""

from __future__ import annotations

import datetime as dt
from functools import cache
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

import holidays
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bems.validation import load_yaml, parse_model

DEFAULT_CALENDAR = Path(__file__).with_name("office_calendar.yaml")
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class CalendarVersion(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    start: dt.date
    workdays: tuple[Weekday, ...] = Field(min_length=1)
    open: str
    close: str
    reason: str = ""

    @field_validator("open", "close")
    @classmethod
    def _time_of_day(cls, value: str) -> str:
        dt.time.fromisoformat(value)  # raises ValueError naming the bad text
        return value

    @property
    def open_minute(self) -> int:
        t = dt.time.fromisoformat(self.open)
        return t.hour * 60 + t.minute

    @property
    def close_minute(self) -> int:
        t = dt.time.fromisoformat(self.close)
        return t.hour * 60 + t.minute


class CalendarOverride(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    date: dt.date
    closed: bool = True
    reason: str = Field(min_length=1)


class OfficeCalendar(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    timezone: str = "Asia/Tehran"
    versions: tuple[CalendarVersion, ...] = Field(min_length=1)
    overrides: tuple[CalendarOverride, ...] = ()
    public_holidays: bool = True

    def version_on(self, day: dt.date) -> CalendarVersion:
        current = self.versions[0]
        for v in sorted(self.versions, key=lambda v: v.start):
            if v.start <= day:
                current = v
        return current

    def holiday_names(self, years: range) -> dict[dt.date, str]:
        names: dict[dt.date, str] = {}
        if self.public_holidays:
            names.update(_ir_holidays(years.start, years.stop))
        return names

    def masks(self, times: np.ndarray) -> CalendarMasks:
        """Boolean masks over a UTC ``datetime64`` axis: working hours, holidays (incl. closed days), local hour."""
        t = np.asarray(times, dtype="datetime64[s]")
        local = t + _utc_offsets(t, self.timezone)
        days = local.astype("datetime64[D]")
        minute = ((local - days).astype("timedelta64[m]")).astype(np.int64)
        udays, inv = np.unique(days, return_inverse=True)
        pydays = [d.item() for d in udays]
        years = range(min(pydays).year, max(pydays).year + 1) if pydays else range(0)
        holiday = self.holiday_names(years)
        overrides = {o.date: o for o in self.overrides}
        n = len(udays)
        day_open = np.zeros(n, dtype=bool)
        day_holiday = np.zeros(n, dtype=bool)
        opens = np.zeros(n, dtype=np.int64)
        closes = np.zeros(n, dtype=np.int64)
        for i, d in enumerate(pydays):  # one step per calendar day, not per reading
            v = self.version_on(d)
            o = overrides.get(d)
            is_holiday = d in holiday or (o is not None and o.closed)
            day_holiday[i] = is_holiday
            day_open[i] = (_WEEKDAYS[d.weekday()] in v.workdays and not is_holiday) or (o is not None and not o.closed)
            opens[i], closes[i] = v.open_minute, v.close_minute
        in_hours = (minute >= opens[inv]) & (minute < closes[inv])
        return CalendarMasks(working=day_open[inv] & in_hours, holiday=day_holiday[inv], open_day=day_open[inv],
                             local_hour=(minute // 60).astype(np.int8),
                             local_weekday=((days.astype(np.int64) + 3) % 7).astype(np.int8),
                             minute=minute, open_minute=opens[inv], close_minute=closes[inv])


    def bucket_masks(self, starts: np.ndarray, bucket: np.timedelta64 | int) -> CalendarMasks:
        """Masks for buckets: a bucket is working time if any part of it is (start, middle or last second).

        Why: an hourly bucket from 07:30 to 08:30 holds the opening; calling it after hours would flag the
        morning start-up of every building as waste.
        """
        t = np.asarray(starts, dtype="datetime64[s]")
        width = np.timedelta64(bucket, "s") if isinstance(bucket, int) else bucket.astype("timedelta64[s]")
        first, mid, last = (self.masks(t + off) for off in (np.timedelta64(0, "s"), width // 2,
                                                            width - np.timedelta64(1, "s")))
        return first.model_copy(update={"working": first.working | mid.working | last.working})


class CalendarMasks(BaseModel):
    """Masks aligned with a time axis; ``after_hours`` is everything that is not working time."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    working: np.ndarray
    holiday: np.ndarray
    open_day: np.ndarray
    local_hour: np.ndarray
    local_weekday: np.ndarray  # Monday = 0, as Python's date.weekday()
    minute: np.ndarray  # local minute of the day
    open_minute: np.ndarray | None = None  # the decreed opening of the version in force that day
    close_minute: np.ndarray | None = None

    @property
    def after_hours(self) -> np.ndarray:
        return ~self.working

    @property
    def in_hours(self) -> np.ndarray:
        """Within the decreed hours of the day, open or not (a holiday at 10:00 is in hours, not working)."""
        if self.minute is None or self.open_minute is None or self.close_minute is None:
            raise ValueError("these masks were built without minutes; use OfficeCalendar.masks")
        return (self.minute >= self.open_minute) & (self.minute < self.close_minute)


def _utc_offsets(t: np.ndarray, tz: str) -> np.ndarray:
    """UTC offset of every instant, computed once per distinct UTC hour (the zone changes only on the hour)."""
    if t.size == 0:
        return np.zeros(0, dtype="timedelta64[s]")
    zone = ZoneInfo(tz)
    hours, inv = np.unique(t.astype("datetime64[h]"), return_inverse=True)
    offs = np.array([int(dt.datetime.fromtimestamp(int(h.astype("datetime64[s]").astype(np.int64)), zone)
                         .utcoffset().total_seconds()) for h in hours], dtype=np.int64)
    return offs[inv].astype("timedelta64[s]")


@cache
def _ir_holidays(first_year: int, stop_year: int) -> dict[dt.date, str]:
    """IR public holidays, built once per span of years (the live simulator asks every tick)."""
    return dict(holidays.country_holidays("IR", years=list(range(first_year, stop_year))))


@cache
def default_calendar() -> OfficeCalendar:
    return load_calendar(DEFAULT_CALENDAR)


def load_calendar(path: Path) -> OfficeCalendar:
    return parse_model(OfficeCalendar, load_yaml(path), str(path))
