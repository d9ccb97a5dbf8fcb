"""Poll the devices of one bus on their periods, one request at a time; back off dead devices.

Each device keeps its own schedule anchored to due times (no drift). A device that fails is retried after one
period, then two, four, ... up to ``backoff_max_s``, so a dead device on a shared RS-485 line costs its timeout
rarely, and devices on other connections never wait for it at all. The first failure logs at ERROR, repeats at
DEBUG, recovery at INFO.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from bems.fleet import Edge, Meter
from bems.registers import ReadBlock, plan_reads
from bems.wire import Quality, utcnow
from edge.decode import block_decoder
from edge.modbus import Bus, ReadError

log = logging.getLogger("bems.edge")


@dataclass(eq=False)
class DeviceState:
    """One meter as the edge sees it: how to read it, when next, and how it has been going."""

    meter: Meter
    blocks: list[ReadBlock]
    period: float
    timeout: float
    retries: int
    backoff_max: float
    next_due: float = 0.0
    failures: int = 0  # consecutive
    up: bool | None = None  # None until the first poll
    reads_ok: int = 0
    reads_failed: int = 0
    overruns: int = 0  # periods skipped because a poll ran past its next due time
    errors: Counter[str] = field(default_factory=Counter)  # failed requests by kind (timeout, crc, ...)
    decoders: list[Callable[[list[int]], dict[str, float]]] = field(default_factory=list)
    last_error: str | None = None
    last_ok: datetime | None = None

    def __post_init__(self) -> None:
        self.decoders = [block_decoder(b) for b in self.blocks]

    @classmethod
    def of(cls, meter: Meter, edge: Edge, period: float | None = None, timeout: float | None = None) -> DeviceState:
        d = meter.device
        return cls(meter=meter, blocks=plan_reads(meter.profile),
                   period=period or d.poll_period_s or edge.poll_period_s,
                   timeout=timeout or d.timeout_s or edge.timeout_s,
                   retries=d.retries if d.retries is not None else edge.retries,
                   backoff_max=edge.backoff_max_s)

    @property
    def id(self) -> str:
        return self.meter.id

    def describe(self) -> str:
        d = self.meter.device
        if d.serial_port is not None:
            return f"rtu {d.serial_port} {d.baudrate} {d.parity}{d.stopbits} id {d.device_id}"
        return f"tcp {d.host}:{d.port} id {d.device_id}"


Sink = Callable[[DeviceState, datetime, dict[str, float], Quality], None]


async def read_device(bus: Bus, dev: DeviceState) -> tuple[dict[str, float], Quality]:
    """Read every planned block (each with the device's retries) and decode; non-finite values are left out."""
    values: dict[str, float] = {}
    for block, decoder in zip(dev.blocks, dev.decoders, strict=True):
        for attempt in range(dev.retries + 1):
            try:
                regs = await bus.read(dev.meter.device.device_id, block.function, block.address, block.count,
                                      dev.timeout)
                break
            except ReadError as exc:
                dev.errors[exc.kind] += 1
                if attempt == dev.retries:
                    raise
        values.update(decoder(regs))
    finite = {k: v for k, v in values.items() if math.isfinite(v)}
    if not finite:
        dev.errors["invalid"] += 1
        raise ReadError("invalid", f"{dev.id}: every value read was NaN or infinite")
    return finite, "good" if len(finite) == len(values) else "uncertain"


class BusPoller:
    """Polls the devices behind one bus; separate buses run as separate tasks, concurrently."""

    def __init__(self, bus: Bus, devices: list[DeviceState], sink: Sink,
                 on_health: Callable[[DeviceState], None] = lambda d: None) -> None:
        self.bus, self.devices, self.sink, self.on_health = bus, devices, sink, on_health

    async def run(self, offsets: list[float]) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for dev, offset in zip(self.devices, offsets, strict=True):
            dev.next_due = now + offset
        task = asyncio.current_task()
        while True:
            if task is not None and task.cancelling():  # pymodbus' wait_for (3.11) can swallow a cancellation
                raise asyncio.CancelledError
            dev = min(self.devices, key=lambda d: d.next_due)
            delay = dev.next_due - loop.time()
            if delay > 0.001:  # finer than a timer tick (uvloop: 1 ms) only costs a tick; poll now instead
                await asyncio.sleep(delay)
            await self.poll(dev)

    async def poll(self, dev: DeviceState) -> None:
        loop = asyncio.get_running_loop()
        ts = utcnow()
        try:
            values, quality = await read_device(self.bus, dev)
        except ReadError as exc:
            self._failed(dev, exc, loop.time())
        else:
            self._ok(dev, loop.time())
            self.sink(dev, ts, values, quality)

    def _ok(self, dev: DeviceState, now: float) -> None:
        dev.reads_ok += 1
        dev.last_ok = utcnow()
        if dev.up is False:
            log.info("meter %s answers again after %d failed polls", dev.id, dev.failures)
        changed = dev.up is not True
        dev.up, dev.failures = True, 0
        dev.next_due += dev.period
        if dev.next_due <= now:  # the poll ran past its next slot: skip the missed slots, keep the phase
            missed = math.ceil((now - dev.next_due) / dev.period)
            dev.overruns += missed
            dev.next_due += missed * dev.period
        if changed:
            self.on_health(dev)

    def _failed(self, dev: DeviceState, exc: ReadError, now: float) -> None:
        dev.reads_failed += 1
        dev.failures += 1
        wait = min(dev.period * 2 ** (dev.failures - 1), max(dev.backoff_max, dev.period))
        if dev.up is not False:
            log.error("meter %s (%s): %s; retrying with backoff up to %g s", dev.id, dev.describe(), exc,
                      max(dev.backoff_max, dev.period))
        else:
            log.debug("meter %s still failing (%d polls): %s; next try in %g s", dev.id, dev.failures, exc, wait)
        changed = dev.up is not False or dev.last_error != str(exc)
        dev.up, dev.last_error = False, str(exc)
        dev.next_due = now + wait
        if changed:
            self.on_health(dev)
