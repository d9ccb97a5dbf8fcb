"""Write weeks of simulated history straight into a store (for the demo, benchmarks and evaluation)."""

from __future__ import annotations

import datetime as dt

import numpy as np

from bems.store import Store
from bems.wire import Reading
from simulators.model import FleetModel, History

HISTORY_EDGE = "history"


def readings_of(model: FleetModel, history: History) -> list[Reading]:
    out = []
    for row, mm in enumerate(model.meters):
        elec = mm.commodity == "electricity"
        ts_list = history.times.astype("datetime64[ms]").astype(dt.datetime)
        rate, counter = history.rate[row], history.counter[row]
        building = mm.building
        for i, ts in enumerate(ts_list):
            values = ({"power_w": float(rate[i]) * 1000.0, "energy_kwh": float(counter[i])} if elec
                      else {"volume_m3": float(counter[i])})
            out.append(Reading.model_construct(v=1, meter=mm.meter, building=building, edge=HISTORY_EDGE,
                                               ts=ts.replace(tzinfo=dt.UTC), seq=i, values=values,
                                               quality="good"))
    return out


def backfill(model: FleetModel, store: Store, start: dt.datetime, end: dt.datetime,
             step: dt.timedelta = dt.timedelta(minutes=15), batch: int = 20_000) -> History:
    """Generate [start, end) on a regular grid and write it; returns the history (counters end where live starts)."""
    history = model.history(start, end, step)
    readings = readings_of(model, history)
    for i in range(0, len(readings), batch):
        store.write(readings[i:i + batch])
    return history


def floor_time(t: dt.datetime, step: dt.timedelta) -> dt.datetime:
    secs = int(step.total_seconds())
    return dt.datetime.fromtimestamp(int(t.timestamp()) // secs * secs, dt.UTC)


def last_counters(history: History) -> np.ndarray:
    return history.counter[:, -1].copy()
