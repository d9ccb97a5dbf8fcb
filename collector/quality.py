"""Quality flags for cumulative registers, set as readings arrive.

The collector remembers the last value of each (meter, cumulative field) and classifies every drop with the
same function the stores use for consumption (bems.store.counters). The flags record what happened; they are
best effort (a restart reloads the last values from the store, a peer in a ``$share`` group sees other readings
of the same meter), while consumption is always recomputed from the raw values when read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from bems.errors import StoreError
from bems.fleet import Fleet
from bems.store.base import Latest, to_ms
from bems.store.counters import FLAG_NEGATIVE_DELTA, FLAG_RESET, classify_drops, register_wrap
from bems.wire import Reading

DOUBTFUL = FLAG_RESET | FLAG_NEGATIVE_DELTA  # readings so flagged are stored as "uncertain"


class CounterTracker:
    def __init__(self, fleet: Fleet, seed: Callable[[list[str]], Mapping[str, Latest]] | None = None) -> None:
        self.wraps: dict[str, dict[str, float | None]] = {}
        for m in fleet.meters:
            counters = {s.field: register_wrap(s) for s in m.profile.registers if s.cumulative}
            if counters:
                self.wraps[m.id] = counters
        self._last: dict[tuple[str, str], tuple[int, float]] = {}
        self._seed = seed
        self._seeded: set[str] = set()

    def registry(self) -> dict[tuple[str, str], float | None]:
        """(meter, field) -> wrap value, for Store.register_counters."""
        return {(m, f): w for m, fields in self.wraps.items() for f, w in fields.items()}

    def _load(self, meters: Iterable[str]) -> None:
        todo = sorted(set(meters) - self._seeded)
        if not todo or self._seed is None:
            return
        self._seeded.update(todo)
        try:
            latest = self._seed(todo)
        except StoreError:
            return  # the store is down: the first reading of these meters goes unflagged
        for meter, last in latest.items():
            for f in self.wraps.get(meter, {}):
                if f in last.values:
                    self._last[(meter, f)] = (to_ms(last.ts), last.values[f])

    def flags(self, readings: Sequence[Reading]) -> list[int]:
        """Flag bits per reading; readings older than the last one seen of their meter are not judged."""
        self._load(r.meter for r in readings if r.meter in self.wraps)
        at: list[int] = []
        prev: list[float] = []
        cur: list[float] = []
        wrap: list[float] = []
        for i, r in enumerate(readings):
            counters = self.wraps.get(r.meter)
            if not counters:
                continue
            ts = to_ms(r.ts)
            for f, w in counters.items():
                v = r.values.get(f)
                if v is None:
                    continue
                key = (r.meter, f)
                last = self._last.get(key)
                if last is not None and ts <= last[0]:
                    continue
                if last is not None:
                    at.append(i)
                    prev.append(last[1])
                    cur.append(v)
                    wrap.append(np.nan if w is None else w)
                self._last[key] = (ts, v)
        out = np.zeros(len(readings), dtype=np.int64)
        if at:
            _, bits = classify_drops(np.array(prev), np.array(cur), np.array(wrap))
            np.bitwise_or.at(out, np.array(at, dtype=np.intp), bits)
        return out.tolist()
