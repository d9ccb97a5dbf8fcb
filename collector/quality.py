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
        self._fields = {m: tuple(c) for m, c in self.wraps.items()}
        self._wrap = {m: [np.nan if w is None else w for w in c.values()] for m, c in self.wraps.items()}
        # per meter: [time of the last reading, last value of each cumulative field (None: not seen)]
        self._last: dict[str, list] = {}
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
            if meter in self._fields and meter not in self._last:
                self._last[meter] = [to_ms(last.ts), *(last.values.get(f) for f in self._fields[meter])]

    def flags(self, readings: Sequence[Reading], ts_ms: Sequence[int] | None = None) -> list[int]:
        """Flag bits per reading; readings older than the last one seen of their meter are not judged.

        Only drops are classified (with numpy, for the whole batch); a rising counter costs a comparison.
        """
        fields_of, last_of = self._fields, self._last
        unseen = {r.meter for r in readings if r.meter in fields_of and r.meter not in last_of}
        if unseen:
            self._load(unseen)
        ts_ms = ts_ms if ts_ms is not None else [to_ms(r.ts) for r in readings]
        drops: list[tuple[int, float, float, float]] = []
        for i, (r, ts) in enumerate(zip(readings, ts_ms, strict=True)):
            fields = fields_of.get(r.meter)
            if fields is None:
                continue
            state = last_of.get(r.meter)
            if state is None:
                last_of[r.meter] = [ts, *(r.values.get(f) for f in fields)]
                continue
            if ts <= state[0]:
                continue
            state[0] = ts
            values = r.values
            for j, f in enumerate(fields, 1):
                v = values.get(f)
                if v is None:
                    continue
                prev = state[j]
                if prev is not None and v < prev:
                    drops.append((i, prev, v, self._wrap[r.meter][j - 1]))
                state[j] = v
        out = [0] * len(readings)
        if drops:
            arr = np.array(drops, dtype=np.float64)
            _, bits = classify_drops(arr[:, 1], arr[:, 2], arr[:, 3])
            for (i, *_rest), b in zip(drops, bits.tolist(), strict=True):
                out[i] |= b
        return out
