"""A small time-to-live cache of serialized payloads, computed once per key however many ask at once.

Why: the dashboard's building page and the portfolio are hourly reports that many people open at the same
time (every morning); their live parts come over the stream. Fifty concurrent requests for the same page
cost one computation, and the bytes are served as they are.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

import anyio


class PayloadCache:
    def __init__(self, ttl_s: float, max_entries: int = 256) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._data: OrderedDict[Hashable, tuple[float, bytes]] = OrderedDict()
        self._inflight: dict[Hashable, asyncio.Task[bytes]] = {}
        self.hits = self.misses = 0

    async def get(self, key: Hashable, compute: Callable[[], bytes]) -> bytes:
        """The cached bytes for ``key``, or ``compute()`` run once in a worker thread for all who wait."""
        now = time.monotonic()
        entry = self._data.get(key)
        if entry is not None and entry[0] > now:
            self.hits += 1
            return entry[1]
        task = self._inflight.get(key)
        if task is None:
            self.misses += 1
            task = asyncio.ensure_future(self._compute(key, compute))
            self._inflight[key] = task
        # shield: a client that goes away does not cancel the computation the others wait for
        return await asyncio.shield(task)

    async def _compute(self, key: Hashable, compute: Callable[[], bytes]) -> bytes:
        try:
            value = await anyio.to_thread.run_sync(compute)
            if self.ttl_s > 0:
                self._data[key] = (time.monotonic() + self.ttl_s, value)
                self._data.move_to_end(key)
                while len(self._data) > self.max_entries:
                    self._data.popitem(last=False)
            return value
        finally:
            self._inflight.pop(key, None)

    def clear(self) -> None:
        self._data.clear()
