"""Modbus TCP meter servers: many meters per port (one device id each), registers from the shared profiles.

The model's rates are integrated into the cumulative registers on a tick; each read encodes the device's
current values into its registers in the vendor's encoding. Tests and the control API can pin a field to a
value (``set_override``) to prove that a number travels unchanged to the dashboard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from bems.registers import DeviceProfile, encode, load_profile
from simulators.model import FleetModel

log = logging.getLogger("bems.simulators")


@dataclass
class SimMeter:
    """Live state of one simulated meter."""

    meter: str
    device_id: int
    profile: DeviceProfile
    row: int  # row in the fleet model
    values: dict[str, float] = field(default_factory=dict)
    overrides: dict[str, float] = field(default_factory=dict)

    def register_span(self) -> int:
        return max(r.address + r.words for r in self.profile.registers)


def _electric_values(kw: float, counter: float, rng: np.random.Generator) -> dict[str, float]:
    volts = 230.0 + float(rng.normal(0, 1.5))
    watts = kw * 1000.0
    return {"voltage_l1_v": volts, "current_l1_a": watts / 3 / volts / 0.95, "power_l1_w": watts / 3,
            "power_w": watts, "frequency_hz": 50.0 + float(rng.normal(0, 0.02)), "energy_kwh": counter,
            "energy_export_kwh": 0.0, "energy_total_kwh": counter}


class MeterServer:
    """All simulated meters of a fleet model, served on one or more TCP ports."""

    def __init__(self, model: FleetModel, placements: dict[str, tuple[str, int, int]],
                 counters: np.ndarray | None = None, tick_s: float = 0.5) -> None:
        """``placements`` maps meter id -> (host, port, device id)."""
        self.model = model
        self.tick_s = tick_s
        self.counters = (np.array([m.start_counter for m in model.meters], dtype=np.float64)
                         if counters is None else counters.astype(np.float64).copy())
        self.rates = np.zeros(len(model.meters))
        self._rng = np.random.default_rng(model.seed + 1)
        self.meters: dict[str, SimMeter] = {}
        self._by_port: dict[tuple[str, int], list[SimMeter]] = defaultdict(list)
        for row, mm in enumerate(model.meters):
            if mm.meter not in placements:
                continue
            host, port, device_id = placements[mm.meter]
            sm = SimMeter(mm.meter, device_id, load_profile(mm.profile), row)
            self.meters[mm.meter] = sm
            self._by_port[(host, port)].append(sm)
        self._servers: list[ModbusTcpServer] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._last_tick = time.time()
        self.reads = 0

    def set_override(self, meter: str, field: str, value: float) -> None:
        self.meters[meter].profile.register(field)  # KeyError names a field the profile lacks
        self.meters[meter].overrides[field] = value

    def clear_override(self, meter: str, field: str | None = None) -> None:
        sm = self.meters[meter]
        if field is None:
            sm.overrides.clear()
        else:
            sm.overrides.pop(field, None)

    def tick(self, now: float | None = None) -> None:
        """Advance the model to ``now``: rates at this instant, counters integrated since the last tick."""
        now = time.time() if now is None else now
        hours = max(now - self._last_tick, 0.0) / 3600.0
        self._last_tick = now
        t = np.array([np.datetime64(int(now), "s")])
        self.rates = self.model.rates(t, self._rng)[:, 0]
        self.counters += self.rates * hours
        for sm in self.meters.values():
            mm = self.model.meters[sm.row]
            rate, counter = float(self.rates[sm.row]), float(self.counters[sm.row])
            if mm.commodity == "electricity":
                sm.values = _electric_values(rate, counter, self._rng)
            else:
                sm.values = {"volume_m3": counter}

    async def _action(self, sm: SimMeter, function_code: int, start_address: int, address: int, count: int,
                      current_registers: list[int], set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        if set_values is not None:
            return ExcCodes.ILLEGAL_FUNCTION  # meters are read-only here
        self.reads += 1
        values = {**sm.values, **sm.overrides}
        for spec in sm.profile.registers:
            if spec.address + spec.words <= address or spec.address >= address + count:
                continue
            if spec.field in values:
                regs = encode(values[spec.field], spec)
                off = spec.address - start_address
                current_registers[off:off + spec.words] = regs
        return None

    @staticmethod
    async def _unknown_device(*_args: object) -> ExcCodes:
        return ExcCodes.GATEWAY_NO_RESPONSE

    async def start(self) -> None:
        self.tick()
        for (host, port), meters in self._by_port.items():
            devices = [SimDevice(id=0, simdata=[SimData(0, count=2, datatype=DataType.REGISTERS)],
                                 action=self._unknown_device)]
            devices += [SimDevice(id=sm.device_id,
                                  simdata=[SimData(0, count=sm.register_span(), datatype=DataType.REGISTERS)],
                                  action=partial(self._action, sm)) for sm in meters]
            server = ModbusTcpServer(devices, address=(host, port))
            await server.serve_forever(background=True)
            self._servers.append(server)
            log.info("simulating %d meters on %s:%d", len(meters), host, port)
        self._tasks.append(asyncio.create_task(self._ticker()))

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            self.tick()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for server in self._servers:
            await server.shutdown()
        self._servers.clear()
        self._tasks.clear()
