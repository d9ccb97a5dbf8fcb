"""Detection passes on a timer: read consumption matrices, run the detectors, record alerts."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import numpy as np

from analytics.detectors import after_hours_excess, runs
from analytics.matrix import HOUR, consumption_matrix
from analytics.settings import AnalyticsSettings
from bems.calendar import OfficeCalendar, default_calendar
from bems.fleet import COMMODITIES, Fleet, load_fleet
from bems.state import StateDB
from bems.store import Store, open_store

log = logging.getLogger("bems.analytics")
TEHRAN = "Asia/Tehran"


@dataclass(frozen=True)
class PassResult:
    events: int
    created: int


def detect_pass(store: Store, state: StateDB, fleet: Fleet, *, end: dt.datetime, lookback: dt.timedelta,
                ratio: float, calendar: OfficeCalendar | None = None) -> PassResult:
    """One pass over every commodity; an event that continues from the last pass extends its alert."""
    calendar = calendar or default_calendar()
    end = local_hour_floor(end, calendar.timezone)  # whole local hours only: the current one is not over
    start = end - lookback
    events = created = 0
    for commodity in COMMODITIES:
        cm = consumption_matrix(store, fleet, commodity, start, end, calendar)
        if cm is None:
            continue
        res = after_hours_excess(cm.consumption.values, cm.masks.working, ratio)
        rows, s_cols, e_cols = runs(res.flags)
        times = cm.consumption.times
        for row, s, e in zip(rows.tolist(), s_cols.tolist(), e_cols.tolist(), strict=True):
            meter = fleet.meter_by_id[cm.consumption.meters[row]]
            excess = float(res.excess[row, s:e].sum())
            t0 = times[s].astype("datetime64[s]").item().replace(tzinfo=dt.UTC)
            t1 = t0 + HOUR * (e - s)
            used = float(np.nansum(cm.consumption.values[row, s:e]))
            message = (f"{meter.id}: {used:.1f} {cm.unit} used after hours from {_local(t0)} to {_local(t1)} "
                       f"(Tehran), {excess:.1f} {cm.unit} above its usual closed-hours level; working-hours "
                       f"median {res.working_median[row]:.1f} {cm.unit}/h")
            _, new = state.upsert_alert(building=meter.building, meter=meter.id, commodity=commodity,
                                        type="after_hours", start=t0, end=t1, excess=round(excess, 3),
                                        unit=cm.unit, severity="critical" if e - s >= 6 else "warning",
                                        message=message)
            events += 1
            created += new
    return PassResult(events, created)


def local_hour_floor(t: dt.datetime, tz: str) -> dt.datetime:
    """The start of ``t``'s local hour, in UTC (Tehran's hours start at :30 UTC)."""
    return t.astimezone(ZoneInfo(tz)).replace(minute=0, second=0, microsecond=0).astimezone(dt.UTC)


def _local(t: dt.datetime) -> str:
    return t.astimezone(ZoneInfo(TEHRAN)).strftime("%Y-%m-%d %H:%M")


async def run(settings: AnalyticsSettings) -> None:
    fleet = load_fleet(settings.fleet)
    store = open_store(settings.store)
    state = StateDB(settings.db)
    try:
        while True:
            res = await asyncio.to_thread(detect_pass, store, state, fleet, end=dt.datetime.now(dt.UTC),
                                          lookback=dt.timedelta(days=settings.lookback_days),
                                          ratio=settings.after_hours_ratio)
            log.info("detection pass: %d after-hours events, %d new alerts", res.events, res.created)
            if settings.once:
                return
            await asyncio.sleep(settings.interval_s)
    finally:
        store.close()
        state.close()
