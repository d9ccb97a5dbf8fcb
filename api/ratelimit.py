"""Failed-token lockout: a client address that sends too many invalid tokens in a window gets 429 for a while.

In-process and per app: with several workers or instances each counts on its own, so the effective limit is
the per-worker limit times the number of workers (a shared limiter in the load balancer or a reverse proxy is
the place for a fleet-wide one). Behind a reverse proxy every client has the proxy's address unless uvicorn's
``--forwarded-allow-ips`` lets it read ``X-Forwarded-For``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

log = logging.getLogger(__name__)
MAX_CLIENTS = 10_000  # addresses tracked at once; the least recently failing is forgotten first


class FailedAuthLimiter:
    """Sliding window of failure times per client address; ``limit`` failures within ``window_s`` lock it out
    until the oldest of them leaves the window. Successful checks neither count nor reset."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = MAX_CLIENTS) -> None:
        self.limit, self.window_s, self.clock, self.max_clients = limit, window_s, clock, max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float] | None:
        times = self._failures.get(client)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        return times

    def retry_after(self, client: str) -> int | None:
        """Whole seconds until ``client`` may try again, or None if it is not locked out."""
        with self._lock:
            now = self.clock()
            times = self._recent(client, now)
            if times is None or len(times) < self.limit:
                return None
            return max(1, math.ceil(times[-self.limit] + self.window_s - now))

    def failed(self, client: str) -> None:
        """Count one invalid token from ``client``; the failure that reaches the limit is logged (never the token)."""
        with self._lock:
            now = self.clock()
            times = self._recent(client, now) or deque()
            times.append(now)
            while len(times) > self.limit:
                times.popleft()
            self._failures[client] = times
            self._failures.move_to_end(client)
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)
            if len(times) == self.limit:
                log.warning("client %s sent %d invalid tokens within %g s; locked out for up to %g s",
                            client, self.limit, self.window_s, self.window_s)
