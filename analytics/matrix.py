"""Consumption matrices [meters x hours] from the store, with the office calendar's masks."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from bems.calendar import CalendarMasks, OfficeCalendar
from bems.fleet import Fleet
from bems.store import Matrix, Store

CUMULATIVE_FIELD = {"electricity": "energy_kwh", "water": "volume_m3", "gas": "volume_m3"}
UNIT = {"electricity": "kWh", "water": "m3", "gas": "m3"}
HOUR = dt.timedelta(hours=1)
QUARTER = dt.timedelta(minutes=15)


@dataclass(frozen=True)
class CommodityMatrix:
    commodity: str
    consumption: Matrix
    masks: CalendarMasks

    @property
    def unit(self) -> str:
        return UNIT[self.commodity]


def consumption_matrix(store: Store, fleet: Fleet, commodity: str, start: dt.datetime, end: dt.datetime,
                       calendar: OfficeCalendar, bucket: dt.timedelta = HOUR,
                       meters: list[str] | None = None) -> CommodityMatrix | None:
    meters = meters if meters is not None else [m.id for m in fleet.meters_of(commodity=commodity)]
    if not meters:
        return None
    field = CUMULATIVE_FIELD[commodity]
    last = store.read_matrix(meters, field, start - bucket, end, bucket, "last")
    # deltas of the register's last value per bucket; negative ones stay for the detector to name
    matrix = Matrix(meters=last.meters, times=last.times[1:], values=np.diff(last.values, axis=1), field=field,
                    bucket=bucket)
    return CommodityMatrix(commodity, matrix,
                           calendar.bucket_masks(matrix.times, np.timedelta64(bucket).astype("timedelta64[s]")))
