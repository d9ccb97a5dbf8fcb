"""Make validated readings durable: in the store, else in the disk buffer; dead-letter what the store refuses.

``submit`` answers whether a batch is durable (so its messages may be acknowledged). Failures are sorted as
the Telegraf InfluxDB output does: unreachable, 429 and 5xx are retried with exponential backoff that honours
Retry-After (meanwhile batches go to the disk buffer); any other refusal sends the batch to the dead-letter
store with the server's message.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Literal

from bems.errors import StoreError
from bems.store import Store, StoreUnavailable
from bems.store.base import to_ms
from bems.store.counters import FLAG_NAMES
from bems.wire import Reading
from collector.deadletter import DeadLetters, Letter
from collector.metrics import Metrics
from collector.spool import Spool

log = logging.getLogger("bems.collector")

Key = tuple[str, int]


class RecentKeys:
    """The (meter, time) keys of the last ``size`` readings made durable, to count (and skip) duplicates.

    Bounded: a reading delivered again after ``size`` newer ones is written again (InfluxDB overwrites it,
    SQLite ignores and counts it), so nothing is lost, only the count is.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._set: set[Key] = set()
        self._order: deque[Key] = deque()

    def __len__(self) -> int:
        return len(self._set)

    def split(self, readings: Sequence[Reading], flags: Sequence[int], ts_ms: Sequence[int] | None = None
              ) -> tuple[list[Reading], list[int], list[Key], int]:
        """(fresh readings, their flags, their keys, number of duplicates), duplicates within the batch too."""
        fresh: list[Reading] = []
        fresh_flags: list[int] = []
        keys: list[Key] = []
        seen: set[Key] = set()
        ts_ms = ts_ms if ts_ms is not None else [to_ms(r.ts) for r in readings]
        for r, f, ts in zip(readings, flags, ts_ms, strict=True):
            key = (sys.intern(r.meter), ts)
            if key in self._set or key in seen:
                continue
            seen.add(key)
            fresh.append(r)
            fresh_flags.append(f)
            keys.append(key)
        return fresh, fresh_flags, keys, len(readings) - len(fresh)

    def add(self, keys: Sequence[Key]) -> None:
        if self.size <= 0:
            return
        self._set.update(keys)
        self._order.extend(keys)
        while len(self._order) > self.size:
            self._set.discard(self._order.popleft())


class Backoff:
    """Exponential backoff with jitter; a server's Retry-After wins over the computed delay."""

    def __init__(self, initial_s: float = 0.5, max_s: float = 30.0, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.initial, self.max, self.clock = initial_s, max_s, clock
        self.delay = initial_s
        self.until = 0.0
        self.failures = 0

    @property
    def ready(self) -> bool:
        return self.clock() >= self.until

    @property
    def remaining(self) -> float:
        return max(0.0, self.until - self.clock())

    def failed(self, retry_after: float | None = None) -> float:
        wait = min(retry_after, self.max * 10) if retry_after is not None else self.delay * random.uniform(0.8, 1.2)
        self.delay = min(self.delay * 2, self.max)
        self.until = self.clock() + wait
        self.failures += 1
        return wait

    def ok(self) -> None:
        self.delay = self.initial
        self.until = 0.0
        self.failures = 0


class BatchWriter:
    def __init__(self, store: Store, deadletters: DeadLetters, metrics: Metrics, *, spool: Spool | None = None,
                 recent: RecentKeys | None = None, backoff: Backoff | None = None, drain_batch: int = 2000) -> None:
        self.store = store
        self.deadletters = deadletters
        self.metrics = metrics
        self.spool = spool
        self.recent = recent or RecentKeys(0)
        self.backoff = backoff or Backoff()
        self.drain_batch = drain_batch
        self._outage_started: float | None = None
        self._outage_spooled = 0
        metrics.spool_depth.set(len(spool) if spool else 0)

    def submit(self, readings: Sequence[Reading], flags: Sequence[int], ts_ms: Sequence[int] | None = None) -> bool:
        """Make the batch durable; False means nothing was done and the caller must keep it and retry later."""
        fresh, fresh_flags, keys, dups = self.recent.split(readings, flags, ts_ms)
        self.metrics.duplicates.inc(dups)
        if not fresh:
            return True
        if self.backoff.ready:
            outcome = self._write(fresh, fresh_flags)
            if outcome == "stored":
                self.recent.add(keys)
                self._count_flags(fresh_flags)
            if outcome != "failed":
                return True
        if self.spool is not None and self.spool.room() >= len(fresh):
            try:
                self.spool.put(fresh, fresh_flags)
            except StoreError as exc:
                log.error("%s; holding %d readings unacknowledged", exc, len(fresh))
                return False
            self.recent.add(keys)
            self._count_flags(fresh_flags)
            self.metrics.spooled.inc(len(fresh))
            self._outage_spooled += len(fresh)
            self.metrics.spool_depth.set(len(self.spool))
            return True
        return False

    def drain(self) -> int:
        """Move one chunk from the disk buffer to the store when the store is expected back; readings moved."""
        if self.spool is None or not len(self.spool) or not self.backoff.ready:
            return 0
        last_id, readings, flags = self.spool.peek(self.drain_batch)
        if self._write(readings, flags) == "failed":
            return 0
        self.spool.remove_through(last_id)
        self.metrics.unspooled.inc(len(readings))
        self.metrics.spool_depth.set(len(self.spool))
        if not len(self.spool):
            log.warning("disk buffer drained: %d readings buffered during the store outage are now stored",
                        self._outage_spooled)
            self._outage_spooled = 0
        return len(readings)

    def _write(self, readings: Sequence[Reading], flags: Sequence[int]) -> Literal["stored", "rejected", "failed"]:
        """Stored; rejected by the store (and so dead-lettered); or failed, to be retried after the backoff."""
        try:
            result = self.store.write(readings, flags)
        except StoreError as exc:
            if exc.retryable:
                wait = self.backoff.failed(getattr(exc, "retry_after", None) if isinstance(exc, StoreUnavailable)
                                           else None)
                self.metrics.write_errors.labels("unavailable").inc()
                if self._outage_started is None:
                    self._outage_started = time.monotonic()
                    log.error("store write of %d readings failed (%s); buffering on disk, retry in %.1f s",
                              len(readings), exc, wait)
                else:
                    log.debug("store still failing (%s); retry in %.1f s", exc, wait)
                return "failed"
            self.metrics.write_errors.labels("rejected").inc()
            log.error("the store refused a batch of %d readings; sent to dead-letter: %s", len(readings), exc)
            self.deadletters.add([Letter(r.topic, r.to_json(), "store_rejected", str(exc)) for r in readings])
            self.metrics.deadlettered.inc(len(readings))
            return "rejected"
        if self._outage_started is not None:
            log.warning("store is back after %.1f s", time.monotonic() - self._outage_started)
            self._outage_started = None
        self.backoff.ok()
        self.metrics.stored.inc(result.written)
        self.metrics.duplicates.inc(result.duplicates)
        return "stored"

    def _count_flags(self, flags: Sequence[int]) -> None:
        for bits in flags:
            if bits:
                for bit, name in FLAG_NAMES.items():
                    if bits & bit:
                        self.metrics.flagged.labels(name).inc()
