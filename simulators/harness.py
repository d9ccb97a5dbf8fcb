"""Run a :class:`MeterServer` on its own event loop in a thread, on a clock a test or a demo can set.

Why a settable clock: office hours, holidays and fault windows depend on the time of day, and a test that must
show after-hours waste on the wire cannot wait for the evening.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections.abc import Callable
from typing import Any

from simulators.control import ControlAPI
from simulators.server import MeterServer


class ManualClock:
    """A clock that stands still until set or advanced (seconds since the epoch, like ``time.time``)."""

    def __init__(self, start: dt.datetime | float) -> None:
        self.now = start.timestamp() if isinstance(start, dt.datetime) else float(start)

    def __call__(self) -> float:
        return self.now

    def set(self, when: dt.datetime | float) -> None:
        self.now = when.timestamp() if isinstance(when, dt.datetime) else float(when)

    def advance(self, seconds: float) -> None:
        self.now += seconds

    @property
    def datetime(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.now, dt.UTC)


class ServerThread:
    """``with ServerThread(server, control=True) as st:`` serves until the block ends."""

    def __init__(self, server: MeterServer, control: bool = False) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sim-loop", daemon=True)
        self.control: ControlAPI | None = None
        self._want_control = control

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the server's loop and return its result (the server is not thread-safe)."""
        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def tick(self) -> None:
        self.call(self.server.tick)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        if self._want_control:
            self.control = ControlAPI(self.server, self.loop).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.control is not None:
            self.control.stop()
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.02)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
