"""Modbus connections of the edge: one per TCP host:port or serial line, requests one at a time.

Every request has its own timeout (the device's), enforced here rather than by pymodbus so devices on one bus can
differ. After a timeout the connection is reset, so a late answer can never be taken for the next request's
(RTU frames carry no transaction id). On RTU a response whose CRC is wrong is recognised as soon as it is complete
(pymodbus would only discard it and wait for the timeout), counted as a CRC error, and the request retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Literal

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.framer import FramerRTU, FramerType

from bems.errors import BemsError
from bems.fleet import Device

log = logging.getLogger("bems.edge")

ErrorKind = Literal["timeout", "crc", "exception", "connection", "invalid"]


class ReadError(BemsError):
    """A Modbus request failed; ``kind`` sorts it for the counters (timeout, crc, exception, connection, invalid)."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind


class Bus:
    """One Modbus connection shared by the devices behind it (a TCP meter or gateway, or an RS-485 line)."""

    name: str
    client: AsyncModbusTcpClient | AsyncModbusSerialClient

    def __init__(self) -> None:
        self.lock = asyncio.Lock()

    async def read(self, device_id: int, function: int, address: int, count: int, timeout: float) -> list[int]:
        async with self.lock:
            if not self.client.connected:
                await self._connect(timeout)
            call = self.client.read_input_registers if function == 4 else self.client.read_holding_registers
            rr = await self._request(call(address, count=count, device_id=device_id), timeout, device_id, address)
            if rr.isError():
                raise ReadError("exception", f"{self.name} device {device_id} answered exception "
                                             f"{getattr(rr, 'exception_code', '?')} at address {address}")
            regs = list(rr.registers)
            if len(regs) != count:
                self.reset()
                raise ReadError("invalid", f"{self.name} device {device_id}: asked for {count} registers at "
                                           f"{address}, got {len(regs)}")
            return regs

    async def _connect(self, timeout: float) -> None:
        try:
            ok = await asyncio.wait_for(self.client.connect(), timeout)
        except (TimeoutError, OSError, ModbusException) as exc:
            self.reset()
            raise ReadError("connection", f"cannot connect to {self.name}: {exc or type(exc).__name__}") from exc
        if not ok:
            self.reset()
            raise ReadError("connection", f"cannot connect to {self.name}")

    async def _request(self, call: object, timeout: float, device_id: int, address: int):  # type: ignore[no-untyped-def]
        try:
            async with asyncio.timeout(timeout):  # cheaper than wait_for: no extra task per request
                return await call  # type: ignore[misc]
        except TimeoutError:
            self.reset()
            raise ReadError("timeout", f"{self.name} device {device_id}: no answer within {timeout:g} s "
                                       f"(address {address})") from None
        except ConnectionException as exc:
            self.reset()
            raise ReadError("connection", f"{self.name} device {device_id}: {exc}") from exc
        except ModbusException as exc:
            self.reset()
            raise ReadError("invalid", f"{self.name} device {device_id}: {exc}") from exc

    def reset(self) -> None:
        self.client.close()

    def close(self) -> None:
        self.client.close()


class TcpBus(Bus):
    def __init__(self, host: str, port: int, timeout: float) -> None:
        super().__init__()
        self.name = f"{host}:{port}"
        # pymodbus' own timeout is a backstop only: ours (per device) fires first
        self.client = AsyncModbusTcpClient(host, port=port, timeout=2 * timeout + 1, retries=0, reconnect_delay=0)


class RtuBus(Bus):
    def __init__(self, port: str, baudrate: int, parity: str, stopbits: int, timeout: float) -> None:
        super().__init__()
        self.name = port
        self.client = AsyncModbusSerialClient(port, framer=FramerType.RTU, baudrate=baudrate, parity=parity,
                                              stopbits=stopbits, timeout=2 * timeout + 1, retries=0,
                                              reconnect_delay=0, trace_packet=self._trace)
        self._bad_crc: asyncio.Future[None] | None = None

    def _trace(self, sending: bool, data: bytes) -> bytes:
        """Sees every frame: on receive, ``data`` is what has arrived since the last complete frame."""
        if not sending and self._bad_crc is not None and not self._bad_crc.done() and len(data) >= 5:
            size = 5 if data[1] & 0x80 else 5 + data[2]
            if len(data) >= size and FramerRTU.compute_CRC(data[:size - 2]) != int.from_bytes(data[size - 2:size],
                                                                                               "big"):
                self._bad_crc.set_result(None)
        return data

    async def _request(self, call: object, timeout: float, device_id: int, address: int):  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        self._bad_crc = loop.create_future()
        task = asyncio.ensure_future(super()._request(call, timeout, device_id, address))
        try:
            await asyncio.wait({task, self._bad_crc}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            bad, self._bad_crc = self._bad_crc, None
        if task.done():
            bad.cancel()
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ReadError):
            await task
        raise ReadError("crc", f"{self.name} device {device_id}: response failed its CRC check (address {address})")


def make_bus(device: Device, timeout: float) -> Bus:
    if device.serial_port is not None:
        return RtuBus(device.serial_port, device.baudrate, device.parity, device.stopbits, timeout)
    return TcpBus(device.host, device.port, timeout)
