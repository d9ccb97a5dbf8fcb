"""Run the simulators of a fleet: optional history backfill, then live Modbus servers and the control API."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from bems.errors import ConfigError
from bems.fleet import load_fleet
from bems.store import open_store
from simulators.control import ControlAPI
from simulators.faults import write_labels
from simulators.history import STEP, backfill, floor_time, last_counters
from simulators.model import fleet_model
from simulators.scenario import load_scenario
from simulators.server import MeterServer, Placement
from simulators.settings import SimulatorSettings

log = logging.getLogger("bems.simulators")


async def run(settings: SimulatorSettings) -> None:
    fleet = load_fleet(settings.fleet)
    model = fleet_model(fleet, settings.seed)
    if settings.scenario is not None:
        model.faults.extend(load_scenario(settings.scenario, model))
    placements = {m.id: Placement(m.device.device_id, host=m.device.host, port=m.device.port)
                  for m in fleet.meters}
    counters = anchors = None
    if settings.backfill_days:
        if settings.store is None:
            raise ConfigError("--backfill-days needs --store (the store URL to write history into)")
        end = floor_time(dt.datetime.now(dt.UTC), STEP)
        start = end - dt.timedelta(days=settings.backfill_days)
        with open_store(settings.store) as store:
            frame = await asyncio.to_thread(backfill, model, store, start, end, STEP)
        counters, anchors = last_counters(frame), frame.anchors
        log.info("backfilled %d meters x %d steps from %s", len(model.ids), frame.times.size, start.isoformat())
    server = MeterServer(model, placements, counters=counters, labels=settings.labels, anchors=anchors)
    for i, fault in enumerate(model.faults):
        try:
            server.check_fault(fault)
        except ConfigError as exc:
            raise ConfigError(f"{settings.scenario}: faults[{i}].type: {exc}") from exc
    if settings.labels is not None and model.faults:
        write_labels(settings.labels, model.faults)
    await server.start()
    control = None
    if settings.control_port is not None:
        control = ControlAPI(server, asyncio.get_running_loop(), port=settings.control_port).start()
        print(f"control API {control.url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        if control is not None:
            control.stop()
        await server.stop()
