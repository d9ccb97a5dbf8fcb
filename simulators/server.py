"""Modbus meter servers: many meters per line (one device id each) on many TCP ports and RTU pseudo-terminals.

A *line* is what one pymodbus server answers on: a TCP port (a meter or an RS-485 gateway) or a serial port
(for tests, one end of a socat pseudo-terminal pair). Devices on a line share a bus lock, as on RS-485: one
slow device holds up the others. The model's rates are integrated into the cumulative registers on a tick;
each read encodes the device's current values in the vendor's encoding. Faults act where they act in the
field: load faults in the model, value faults on the values, rollover and word swap on the encoding, exceptions
and delays in the request handler, lost responses and CRC errors on the bytes (pymodbus ``trace_packet``).
Tests and the control API can pin a field to a value (``set_override``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from bems.errors import ConfigError
from bems.registers import DeviceProfile, RegisterSpec, encode, encode_raw, load_profile, plan_reads
from simulators.faults import (
    EXCEPTION_CODES,
    Fault,
    apply_value_faults,
    clock_offset,
    rolled_raw,
    rollover_offset,
    write_labels,
)
from simulators.model import FleetModel

log = logging.getLogger("bems.simulators")
_FLOAT32_MAX = 3.4028234e38


@dataclass(frozen=True)
class Placement:
    """Where a simulated meter answers: a TCP host and port, or a serial port (RTU), and its device id."""

    device_id: int
    host: str = "127.0.0.1"
    port: int = 0
    serial: str | None = None
    baudrate: int = 19200

    @property
    def line(self) -> tuple[str, str, int]:
        return ("rtu", self.serial, self.baudrate) if self.serial else ("tcp", self.host, self.port)

    def describe(self) -> str:
        return f"RTU {self.serial} at {self.baudrate} baud" if self.serial else f"TCP {self.host}:{self.port}"


@dataclass
class SimMeter:
    """Live state of one simulated meter."""

    meter: str
    device_id: int
    profile: DeviceProfile
    row: int  # row in the fleet model
    placement: Placement
    values: dict[str, float] = field(default_factory=dict)
    overrides: dict[str, float] = field(default_factory=dict)

    def simdata(self) -> list[SimData]:
        """Only the profile's read blocks exist; elsewhere the device answers 'illegal address' like the real one."""
        return [SimData(b.address, count=b.count, datatype=DataType.REGISTERS) for b in plan_reads(self.profile)]


@dataclass
class Line:
    kind: str  # tcp | rtu
    where: tuple[str, str, int]
    meters: dict[int, SimMeter] = field(default_factory=dict)
    bus: asyncio.Lock | None = None
    server: ModbusTcpServer | ModbusSerialServer | None = None


class MeterServer:
    """All simulated meters of a fleet model, served on TCP ports and serial lines."""

    def __init__(self, model: FleetModel, placements: Mapping[str, Placement | tuple[str, int, int]],
                 counters: np.ndarray | None = None, tick_s: float = 0.5, clock: Callable[[], float] = time.time,
                 labels: Path | None = None, anchors: dict[int, dict[str, float]] | None = None) -> None:
        """``placements`` maps meter id -> :class:`Placement` (or a ``(host, port, device id)`` tuple for TCP)."""
        self.model = model
        self.tick_s = tick_s
        self.clock = clock
        self.labels = labels
        self.counters = (model.params()["start_counter"][:, 0].copy() if counters is None
                         else counters.astype(np.float64).copy())
        self.rates = np.zeros(len(model.meters))
        self._rng = np.random.default_rng(model.seed + 1)
        self._anchors: dict[int, dict[str, float]] = anchors if anchors is not None else {}
        self.meters: dict[str, SimMeter] = {}
        self.lines: dict[tuple[str, str, int], Line] = {}
        rows = model.row_index()
        for meter, where in placements.items():
            if meter not in rows:
                raise ConfigError(f"placement for unknown meter {meter!r}; simulated meters: "
                                  f"{', '.join(model.ids[:20])}")
            pl = where if isinstance(where, Placement) else Placement(where[2], host=where[0], port=where[1])
            line = self.lines.setdefault(pl.line, Line(pl.line[0], pl.line))
            if pl.device_id in line.meters:
                raise ConfigError(f"{meter} and {line.meters[pl.device_id].meter} share device id {pl.device_id} "
                                  f"on {pl.describe()}; give each meter on a line its own id")
            mm = model.meters[rows[meter]]
            sm = SimMeter(meter, pl.device_id, load_profile(mm.profile), rows[meter], pl)
            self.meters[meter] = sm
            line.meters[pl.device_id] = sm
        self._specs = {m.meter: load_profile(m.profile).registers for m in model.meters}
        self._kinds = {m.meter: m.role for m in model.meters}
        self._by_meter: dict[str, list[Fault]] = defaultdict(list)
        self._index_faults()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_tick = self.clock()
        self.reads = 0

    # ---- faults ----------------------------------------------------------------------------------------

    @property
    def faults(self) -> list[Fault]:
        return self.model.faults

    def _index_faults(self) -> None:
        self._by_meter = defaultdict(list)
        for f in self.model.faults:
            self._by_meter[f.meter].append(f)

    def check_fault(self, fault: Fault) -> None:
        """Refuse what cannot happen on this meter's line, naming what would."""
        sm = self.meters.get(fault.meter)
        if fault.type == "crc_error" and (sm is None or sm.placement.serial is None):
            where = sm.placement.describe() if sm else "not served here"
            raise ConfigError(f"crc_error needs a meter served over Modbus RTU; {fault.meter} is {where} "
                              f"(Modbus TCP has no CRC); use comm_loss or modbus_exception there")

    def inject(self, fault: Fault) -> Fault:
        """Schedule a fault now (run-time injection) and append it to the label file."""
        self.check_fault(fault)
        self.model.faults.append(fault)
        self._index_faults()
        if self.labels is not None:
            write_labels(self.labels, [fault])
        log.info("injected %s on %s from %s to %s", fault.type, fault.meter, fault.start.isoformat(),
                 fault.end.isoformat())
        self.tick()
        return fault

    def active_faults(self, meter: str, now: float | None = None) -> list[Fault]:
        faults = self._by_meter.get(meter)
        if not faults:
            return []
        now = self.clock() if now is None else now
        return [f for f in faults if f.active(now)]

    def clock_offset(self, meter: str, now: float | None = None) -> float:
        return clock_offset(self._by_meter.get(meter, []), meter, self.clock() if now is None else now)

    # ---- values ----------------------------------------------------------------------------------------

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
        now = self.clock() if now is None else now
        hours = max(now - self._last_tick, 0.0) / 3600.0
        self._last_tick = now
        t = np.array([np.datetime64(int(now), "s")])
        self.rates = self.model.rates(t, self._rng)[:, 0]
        self.counters += np.where(self.model.params()["temperature"][:, 0], 0.0, self.rates * hours)
        values = self.model.device_fields(self.rates[:, None], self.counters[:, None], self._rng)
        apply_value_faults(values, t, self.model.faults, self.model.row_index(), self._specs, self._kinds,
                           self._anchors)
        columns = {name: col[:, 0].tolist() for name, col in values.items()}
        for sm in self.meters.values():
            sm.values = {spec.field: columns[spec.field][sm.row] for spec in sm.profile.registers
                         if spec.field in columns and not math.isnan(columns[spec.field][sm.row])}
            for f in self.active_faults(sm.meter, now):
                if f.type == "rollover":
                    anchor = self._anchors.setdefault(f.id, {})
                    for spec in sm.profile.registers:
                        if spec.cumulative and spec.is_integer and spec.field in sm.values:
                            anchor.setdefault(spec.field, rollover_offset(sm.values[spec.field], spec,
                                                                          f.params["headroom"]))

    def words(self, sm: SimMeter, spec: RegisterSpec, value: float, faults: list[Fault]) -> list[int] | None:
        """One value in the vendor's encoding, with the register faults that are active."""
        rolled = next((f for f in faults if f.type == "rollover"), None)
        if rolled is not None and spec.cumulative and spec.is_integer:
            offset = int(self._anchors.get(rolled.id, {}).get(spec.field, 0))
            regs = encode_raw(int(rolled_raw(np.array([value]), spec, offset)[0]), spec)
        else:
            if not spec.is_integer and abs(value) > _FLOAT32_MAX and spec.type == "float32":
                value = math.copysign(_FLOAT32_MAX, value)
            try:
                regs = encode(value, spec)
            except (OverflowError, ValueError):
                return None
        if spec.words > 1 and any(f.type == "word_swap" for f in faults):
            regs = regs[::-1]
        return regs

    # ---- Modbus ----------------------------------------------------------------------------------------

    async def _action(self, sm: SimMeter, line: Line, function_code: int, start_address: int, address: int,
                      count: int, current_registers: list[int],
                      set_values: list[int] | list[bool] | None) -> ExcCodes | None:
        if set_values is not None:
            return ExcCodes.ILLEGAL_FUNCTION  # meters are read-only here
        if not any(r.function == function_code for r in sm.profile.registers):
            return ExcCodes.ILLEGAL_FUNCTION  # an SDM630 answers FC04 only, an iEM FC03 only
        faults = self.active_faults(sm.meter)
        for f in faults:
            if f.type == "modbus_exception":
                return ExcCodes(EXCEPTION_CODES[f.params["code"]])
        delay = max((f.params["delay_s"] for f in faults if f.type == "slow_device"), default=0.0)
        assert line.bus is not None
        async with line.bus:  # one request at a time on a line, as on RS-485
            if delay:
                await asyncio.sleep(delay)
            self.reads += 1
            values = {**sm.values, **sm.overrides}
            for spec in sm.profile.registers:
                if (spec.function != function_code or spec.address + spec.words <= address
                        or spec.address >= address + count or spec.field not in values):
                    continue
                regs = self.words(sm, spec, values[spec.field], faults)
                if regs is not None:
                    off = spec.address - start_address
                    current_registers[off:off + spec.words] = regs
        return None

    def _trace_packet(self, line: Line, sending: bool, data: bytes) -> bytes:
        """Outgoing bytes: a lost response (communication loss) or a broken CRC (RTU)."""
        if not sending or len(data) < 3:
            return data
        device_id = data[6] if line.kind == "tcp" and len(data) > 6 else data[0]
        sm = line.meters.get(device_id)
        if sm is None:
            return data
        for f in self.active_faults(sm.meter):
            if f.type == "comm_loss":
                return b""
            if f.type == "crc_error" and line.kind == "rtu":
                return data[:-2] + bytes([data[-2] ^ 0xFF, data[-1] ^ 0x55])
        return data

    @staticmethod
    async def _unknown_device(*_args: object) -> ExcCodes:
        return ExcCodes.GATEWAY_NO_RESPONSE

    async def start(self) -> None:
        self.tick()
        for line in self.lines.values():
            line.bus = asyncio.Lock()
            devices = []
            if 0 not in line.meters:  # catch-all: an unknown device id gets an exception, not a traceback
                devices.append(SimDevice(id=0, simdata=[SimData(0, count=2, datatype=DataType.REGISTERS)],
                                         action=self._unknown_device))
            devices += [SimDevice(id=sm.device_id, simdata=sm.simdata(), action=partial(self._action, sm, line))
                        for sm in line.meters.values()]
            trace = partial(self._trace_packet, line)
            if line.kind == "tcp":
                server: ModbusTcpServer | ModbusSerialServer = ModbusTcpServer(
                    devices, address=(line.where[1], line.where[2]), trace_packet=trace)
            else:
                server = ModbusSerialServer(devices, port=line.where[1], baudrate=line.where[2], trace_packet=trace)
            await server.serve_forever(background=True)
            line.server = server
            log.info("simulating %d meters on %s", len(line.meters),
                     next(iter(line.meters.values())).placement.describe())
        self._tasks.append(asyncio.create_task(self._ticker()))

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                self.tick()
            except Exception:  # a model error must not silence every meter
                log.exception("simulator tick failed")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for line in self.lines.values():
            if line.server is not None:
                await line.server.shutdown()
                line.server = None
        self._tasks.clear()
