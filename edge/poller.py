"""Read one meter: the profile's planned block reads over Modbus TCP, decoded into canonical fields."""

from __future__ import annotations

import asyncio
import logging

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from bems.errors import BemsError
from bems.fleet import Meter
from bems.registers import decode_block, plan_reads

log = logging.getLogger("bems.edge")


class ReadError(BemsError):
    """A meter could not be read (timeout, Modbus exception, connection refused)."""


class Gateway:
    """One TCP connection to a host:port, shared by the meters behind it (an RS-485 gateway or a meter)."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port = host, port
        self.client = AsyncModbusTcpClient(host, port=port, timeout=timeout, retries=0, reconnect_delay=0)
        self.lock = asyncio.Lock()

    async def read(self, function: int, address: int, count: int, device_id: int) -> list[int]:
        async with self.lock:
            if not self.client.connected and not await self.client.connect():
                raise ReadError(f"cannot connect to {self.host}:{self.port}")
            try:
                call = self.client.read_input_registers if function == 4 else self.client.read_holding_registers
                rr = await call(address, count=count, device_id=device_id)
            except ModbusException as exc:
                raise ReadError(f"{self.host}:{self.port} device {device_id}: {exc}") from exc
            if rr.isError():
                raise ReadError(f"{self.host}:{self.port} device {device_id} answered exception "
                                f"{getattr(rr, 'exception_code', '?')} at address {address}")
            return list(rr.registers)

    def close(self) -> None:
        self.client.close()


class MeterReader:
    def __init__(self, meter: Meter, gateway: Gateway) -> None:
        self.meter = meter
        self.gateway = gateway
        self.blocks = plan_reads(meter.profile)

    async def read(self) -> dict[str, float]:
        values: dict[str, float] = {}
        for block in self.blocks:
            regs = await self.gateway.read(block.function, block.address, block.count, self.meter.device.device_id)
            values.update(decode_block(block, regs))
        return values
