"""Validation of incoming readings against the wire contract and the fleet."""

from __future__ import annotations

import datetime as dt

from bems.errors import PayloadError
from bems.fleet import Fleet
from bems.wire import Reading, decode_reading


class Validator:
    def __init__(self, fleet: Fleet, future_tolerance_s: float) -> None:
        self.fleet = fleet
        self.tolerance = dt.timedelta(seconds=future_tolerance_s)

    def check(self, topic: str, payload: bytes, now: dt.datetime | None = None) -> Reading:
        """Return the reading or raise PayloadError whose message is the reason for the dead-letter log."""
        reading = decode_reading(payload, topic)
        meter = self.fleet.meter_by_id.get(reading.meter)
        if meter is None:
            raise PayloadError(f"unknown meter {reading.meter!r}: add it to the fleet file")
        now = now or dt.datetime.now(dt.UTC)
        if reading.ts > now + self.tolerance:
            raise PayloadError(f"timestamp {reading.ts.isoformat()} is more than "
                               f"{self.tolerance.total_seconds():.0f} s in the future (edge clock drift?)")
        return reading
