"""Run the simulators of a fleet: optional history backfill, then live Modbus servers."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from bems.errors import ConfigError
from bems.fleet import load_fleet
from bems.store import open_store
from simulators.history import backfill, floor_time, last_counters
from simulators.model import fleet_model
from simulators.scenario import load_scenario, write_labels
from simulators.server import MeterServer
from simulators.settings import SimulatorSettings

log = logging.getLogger("bems.simulators")
STEP = dt.timedelta(minutes=15)


async def run(settings: SimulatorSettings) -> None:
    fleet = load_fleet(settings.fleet)
    model = fleet_model(fleet, settings.seed)
    if settings.scenario is not None:
        model.faults.extend(load_scenario(settings.scenario, set(model.ids)))
    counters = None
    if settings.backfill_days:
        if settings.store is None:
            raise ConfigError("--backfill-days needs --store (the store URL to write history into)")
        end = floor_time(dt.datetime.now(dt.UTC), STEP)
        start = end - dt.timedelta(days=settings.backfill_days)
        with open_store(settings.store) as store:
            history = await asyncio.to_thread(backfill, model, store, start, end, STEP)
        counters = last_counters(history)
        log.info("backfilled %d meters x %d steps from %s", len(model.ids), history.times.size, start.isoformat())
    if settings.labels is not None and model.faults:
        write_labels(settings.labels, model.faults)
    placements = {m.id: (m.device.host, m.device.port, m.device.device_id) for m in fleet.meters}
    server = MeterServer(model, placements, counters=counters)
    await server.start()
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
