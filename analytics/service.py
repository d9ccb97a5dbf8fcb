"""Detection passes on a timer: read consumption matrices, run the detectors, record alerts."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import httpx
import numpy as np

from analytics.alerts import Event, record
from analytics.delivery import Subscription, enqueue, load_subscriptions, publish_mqtt, send_due
from analytics.detectors import ANOMALY_TYPES, DetectorParams, detect, events, params_for
from analytics.matrix import HOUR, QUARTER, CommodityMatrix, consumption_matrix
from analytics.settings import AnalyticsSettings
from analytics.tuning import Tuning, load_tuning
from bems.calendar import OfficeCalendar, default_calendar
from bems.errors import BemsError
from bems.fleet import COMMODITIES, Fleet, Meter, load_fleet
from bems.mqtt import make_client
from bems.seal import RECHECK_DAYS, SealKey, SealReport, load_seal_key, seal_pass, seal_until
from bems.state import Alert, StateDB
from bems.store import Store, open_store
from bems.tariff import TariffBook, default_tariffs, load_tariffs

log = logging.getLogger("bems.analytics")
TEHRAN = "Asia/Tehran"
SEAL_EVERY_S = 3600.0  # sealing runs hourly; a day becomes sealable once a day


@dataclass(frozen=True)
class PassResult:
    events: int
    created: int
    new_alerts: list[Alert] = field(default_factory=list)


def detect_pass(store: Store, state: StateDB, fleet: Fleet, *, end: dt.datetime, lookback: dt.timedelta,
                params: DetectorParams | None = None, calendar: OfficeCalendar | None = None,
                tariffs: TariffBook | None = None, tuning: Tuning | None = None) -> PassResult:
    """One pass over every commodity; an event that continues from the last pass extends its alert.

    ``tuning`` (per meter, building, commodity) wins over ``params``.
    """
    calendar = calendar or default_calendar()
    tariffs = tariffs or default_tariffs()
    end = local_hour_floor(end, calendar.timezone)  # whole local hours only: the current one is not over
    start = end - lookback
    results: list[tuple[Alert, bool]] = []
    for commodity in COMMODITIES:
        cm = consumption_matrix(store, fleet, commodity, start, end, calendar)
        if cm is None:
            continue
        meters = [fleet.meter_by_id[m] for m in cm.consumption.meters]
        rated = np.array([m.rated_kw or np.nan for m in meters], dtype=np.float32)  # kWh in one hour
        tuned = tuning.params(meters) if tuning is not None else params_for([commodity] * len(meters), params)
        det = detect(cm.consumption.values, masks=cm.masks, step_minutes=60, params=tuned,
                     rated_per_bucket=rated if commodity == "electricity" else None)
        price = _prices(tariffs, fleet, meters, cm.consumption.times, commodity)
        results += _record_events(state, cm, meters, det.kind, det.excess, det.score, price)
    results += _peak_pass(store, state, fleet, start, end, calendar)
    new_alerts = [a for a, new in results if new]
    return PassResult(len(results), len(new_alerts), new_alerts)


def _record_events(state: StateDB, cm: CommodityMatrix, meters: list[Meter], kind: np.ndarray,
                   excess: np.ndarray | None, score: np.ndarray, price: np.ndarray | None,
                   limit_kw: np.ndarray | None = None) -> list[tuple[Alert, bool]]:
    """One alert per event (a run of one anomaly type on one meter); the loop is over events, not readings."""
    out = []
    rows, s_cols, e_cols, kinds = events(kind)
    times, bucket = cm.consumption.times, cm.consumption.bucket
    for row, s, e, k in zip(rows.tolist(), s_cols.tolist(), e_cols.tolist(), kinds.tolist(), strict=True):
        meter = meters[row]
        name = ANOMALY_TYPES[k]
        t0 = times[s].astype("datetime64[s]").item().replace(tzinfo=dt.UTC)
        t1 = t0 + bucket * (e - s)
        values = cm.consumption.values[row, s:e]
        used = float(np.nansum(values))
        extra = float(excess[row, s:e].sum()) if excess is not None else 0.0
        cost = float(np.nansum(excess[row, s:e] * price[row, s:e])) if price is not None and excess is not None \
            else None
        detail = (f"{np.nanmax(values) * (HOUR / bucket):.0f} kW at most against {meter.building}'s contracted "
                  f"{limit_kw[row]:.0f} kW" if limit_kw is not None else None)
        event = Event(building=meter.building, meter=meter.id, commodity=cm.commodity, type=name, start=t0, end=t1,
                      excess=round(extra, 3), unit=cm.unit, score=float(score[row, s:e].max()),
                      message=_message(name, meter.id, t0, t1, used, extra, cm.unit, detail),
                      cost_rial=None if cost is None else round(cost))
        out.append(record(state, event))
    return out


def _peak_pass(store: Store, state: StateDB, fleet: Fleet, start: dt.datetime, end: dt.datetime,
               calendar: OfficeCalendar) -> list[tuple[Alert, bool]]:
    """Demand against the contracted kW, as utilities bill it: the maximum over 15-minute intervals.

    The building's demand is its main meter's (by convention the meter whose id ends in ``.main-elec``).
    """
    mains = [m for m in fleet.meters_of(commodity="electricity")
             if m.id.endswith(".main-elec") and fleet.building_by_id[m.building].contracted_kw]
    if not mains:
        return []
    cm = consumption_matrix(store, fleet, "electricity", start, end, calendar, QUARTER, [m.id for m in mains])
    if cm is None:
        return []
    kw = cm.consumption.values * (HOUR / QUARTER)
    limit = np.array([fleet.building_by_id[m.building].contracted_kw for m in mains], dtype=np.float64)[:, None]
    with np.errstate(invalid="ignore"):
        over = kw > limit
    kind = np.where(over, ANOMALY_TYPES.index("peak"), -1).astype(np.int8)
    return _record_events(state, cm, mains, kind, None, np.where(over, kw / limit, 0), None, limit[:, 0])


def _prices(tariffs: TariffBook, fleet: Fleet, meters: list[Meter], times: np.ndarray,
            commodity: str) -> np.ndarray | None:
    """Rial per kWh of every meter and bucket (electricity only), from its building's time-of-use tariff."""
    if commodity != "electricity":
        return None
    by_building = {b: tariffs.for_building(b).classify(times, fleet.building_by_id[b].timezone,
                                                      np.timedelta64(3600, "s")).price
                   for b in {m.building for m in meters}}  # one classification per building, not per meter
    return np.stack([by_building[m.building] for m in meters])


def _message(kind: str, meter: str, t0: dt.datetime, t1: dt.datetime, used: float, excess: float, unit: str,
             detail: str | None = None) -> str:
    period = f"from {_local(t0)} to {_local(t1)} (Tehran)"
    what = {
        "after_hours": f"{used:.1f} {unit} used after hours, {excess:.1f} {unit} above its usual closed-hours level",
        "holiday": f"{used:.1f} {unit} used on a holiday, {excess:.1f} {unit} above its usual closed-hours level",
        "spike": f"a spike of {used:.1f} {unit}",
        "step": f"consumption stepped to a new level, {excess:.1f} {unit} above its baseline",
        "drift": f"consumption drifted above its baseline by {excess:.1f} {unit}",
        "flatline": "the register did not move although consumption was expected (stuck register?)",
        "gap": "no readings arrived (meter, edge or network down?)",
        "negative": "the cumulative register went backwards (meter replaced or reset?)",
        "implausible": f"an implausible {used:.1f} {unit} (word order or scaling wrong?)",
        "peak": f"15-minute demand above the contracted kW: {detail}",
    }[kind]
    return f"{meter}: {what} {period}"


def local_hour_floor(t: dt.datetime, tz: str) -> dt.datetime:
    """The start of ``t``'s local hour, in UTC (Tehran's hours start at :30 UTC)."""
    return t.astimezone(ZoneInfo(tz)).replace(minute=0, second=0, microsecond=0).astimezone(dt.UTC)


def _local(t: dt.datetime) -> str:
    return t.astimezone(ZoneInfo(TEHRAN)).strftime("%Y-%m-%d %H:%M")


async def run(settings: AnalyticsSettings) -> None:
    fleet = load_fleet(settings.fleet)
    tuning = load_tuning(settings.tuning, fleet) if settings.tuning else None
    tariffs = load_tariffs(settings.tariffs) if settings.tariffs else default_tariffs()
    subscriptions = load_subscriptions(settings.subscriptions) if settings.subscriptions else []
    store = open_store(settings.store)
    state = StateDB(settings.db)
    mqtt = None
    if settings.broker is not None:
        mqtt = make_client(settings.broker, "bems-analytics", clean_session=True)
        mqtt.connect_async(settings.broker.host, settings.broker.port, keepalive=settings.broker.keepalive_s)
        mqtt.loop_start()
    seal_key = load_seal_key(settings.seal_key, settings.seal_key_file)
    if seal_key is None:
        log.warning("no seal key (BEMS_ANALYTICS_SEAL_KEY_FILE): days are not sealed, bems verify can prove signed "
                    "readings only")
    sealed_at = -SEAL_EVERY_S
    http = httpx.Client()
    sender = asyncio.create_task(_deliver_forever(state, subscriptions, http, settings.delivery_interval_s))
    try:
        while True:
            res = await asyncio.to_thread(detect_pass, store, state, fleet, end=dt.datetime.now(dt.UTC),
                                          lookback=dt.timedelta(days=settings.lookback_days), tariffs=tariffs,
                                          tuning=tuning)
            queued = 0
            for alert in res.new_alerts:
                if mqtt is not None:
                    publish_mqtt(mqtt, alert)
                queued += enqueue(state, alert, subscriptions, fleet)
            log.info("detection pass: %d events, %d new alerts, %d webhook deliveries queued", res.events,
                     res.created, queued)
            if seal_key is not None and (settings.once or time.monotonic() - sealed_at >= SEAL_EVERY_S):
                sealed_at = time.monotonic()
                await asyncio.to_thread(seal_recent, store, state, fleet, seal_key, settings.seal_after_hours)
            if settings.once:
                await asyncio.to_thread(send_due, state, subscriptions, http)
                return
            await asyncio.sleep(settings.interval_s)
    finally:
        sender.cancel()
        if mqtt is not None:
            mqtt.loop_stop()
            mqtt.disconnect()
        http.close()
        store.close()
        state.close()


def seal_recent(store: Store, state: StateDB, fleet: Fleet, key: SealKey, after_hours: float,
                now: dt.datetime | None = None) -> SealReport | None:
    """The one periodic sealing pass (bems.seal): days of the last RECHECK_DAYS that ended ``after_hours`` ago."""
    until = seal_until(now or dt.datetime.now(dt.UTC), after_hours)
    try:
        report = seal_pass(store, state, fleet, key, until=until, since=until - dt.timedelta(days=RECHECK_DAYS))
    except BemsError as exc:
        log.warning("sealing pass failed (%s); next try in %.0f s", exc, SEAL_EVERY_S)
        return None
    if report.sealed or report.resealed:
        log.info("sealed %d meter-days, resealed %d (late readings)", report.sealed, report.resealed)
    for line in report.held:
        log.warning("seal: %s", line)
    return report


async def _deliver_forever(state: StateDB, subscriptions: list[Subscription], http: httpx.Client,
                           interval_s: float) -> None:
    while subscriptions:
        delivered, failed = await asyncio.to_thread(send_due, state, subscriptions, http)
        if delivered or failed:
            log.info("webhooks: %d delivered, %d failed for good", delivered, failed)
        await asyncio.sleep(interval_s)
