"""Validation of incoming readings against the wire contract, the fleet and what each meter can measure.

Every refusal is a :class:`Rejected` with a ``kind`` (a short, stable class for metrics and the dead-letter
store) and a message that names the thing and the fix.
"""

from __future__ import annotations

import datetime as dt

from pydantic import ValidationError

from bems.errors import PayloadError
from bems.fleet import Fleet
from bems.wire import Reading, decode_reading, parse_reading_topic, reading_topic
from collector.plausibility import Range, meter_ranges

KINDS = {
    "too_large": "payload above the wire limit",
    "json": "not JSON (or nested too deep)",
    "schema": "JSON that is not a reading (types, names, ranges of the wire model)",
    "topic": "topic is not a reading topic or names another meter than the payload",
    "unknown_building": "building not in the fleet file",
    "unknown_meter": "meter not in the fleet file",
    "field": "field the meter's profile does not read",
    "implausible": "value outside what the meter can give (profile, rating)",
    "future": "timestamp ahead of the collector's clock beyond the tolerance",
    "too_old": "timestamp before the clock could be right, or older than the raw retention",
    "store_rejected": "the store refused the batch (4xx); the detail is its message",
}
EARLIEST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)  # an edge clock before this was never set


class Rejected(PayloadError):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _decode_kind(exc: PayloadError) -> str:
    cause = exc.__cause__
    if isinstance(cause, ValidationError):
        return "json" if cause.errors()[0]["type"] == "json_invalid" else "schema"
    return "too_large" if "exceeds" in str(exc) else "schema"


class Validator:
    def __init__(self, fleet: Fleet, future_tolerance_s: float, power_limit_factor: float = 3.0,
                 max_age_s: float | None = None) -> None:
        self.fleet = fleet
        self.tolerance = dt.timedelta(seconds=future_tolerance_s)
        self.max_age = dt.timedelta(seconds=max_age_s) if max_age_s else None
        self.ranges: dict[str, dict[str, Range]] = {m.id: meter_ranges(m, power_limit_factor) for m in fleet.meters}
        self._bounds = {m: {f: (r.low, r.high) for f, r in rs.items()} for m, rs in self.ranges.items()}
        self._topic = {m.id: reading_topic(m.building, m.id) for m in fleet.meters}

    def time_window(self, now: dt.datetime | None = None) -> tuple[dt.datetime, dt.datetime]:
        """The timestamps accepted at ``now``; a batch computes it once."""
        now = now or dt.datetime.now(dt.UTC)
        oldest = max(EARLIEST, now - self.max_age) if self.max_age is not None else EARLIEST
        return oldest, now + self.tolerance

    def check(self, topic: str, payload: bytes, now: dt.datetime | None = None,
              window: tuple[dt.datetime, dt.datetime] | None = None) -> Reading:
        """Return the reading or raise Rejected whose message is the reason kept in the dead-letter store."""
        try:
            reading = decode_reading(payload)
        except PayloadError as exc:
            raise Rejected(_decode_kind(exc), str(exc)) from exc
        if self._topic.get(reading.meter) != topic:
            self._explain_topic(topic, reading)
        oldest, newest = window or self.time_window(now)
        if not oldest <= reading.ts <= newest:
            self._explain_time(reading, oldest, newest)
        bounds = self._bounds[reading.meter]
        for name, value in reading.values.items():
            b = bounds.get(name)
            if b is None:
                raise Rejected("field", f"meter {reading.meter!r} does not measure {name!r}; its profile reads "
                                        f"{', '.join(bounds)} (wrong profile in the fleet file?)")
            if not b[0] <= value <= b[1]:
                why = self.ranges[reading.meter][name].why
                raise Rejected("implausible", f"{reading.meter} {name}={value:g} {why}")
        return reading

    def _explain_topic(self, topic: str, reading: Reading) -> None:
        """The topic is not the fleet's topic of this meter: say why."""
        try:
            building, meter = parse_reading_topic(topic)
        except PayloadError as exc:
            raise Rejected("topic", str(exc)) from exc
        if (building, meter) != (reading.building, reading.meter):
            raise Rejected("topic", f"topic {topic[:200]!r} does not match payload meter {reading.meter!r}")
        if reading.building not in self.fleet.building_by_id:
            raise Rejected("unknown_building", f"unknown building {reading.building!r}: add it to the fleet file")
        raise Rejected("unknown_meter", f"unknown meter {reading.meter!r}: add it to the fleet file")

    def _explain_time(self, reading: Reading, oldest: dt.datetime, newest: dt.datetime) -> None:
        if reading.ts > newest:
            raise Rejected("future", f"timestamp {reading.ts.isoformat()} is more than "
                                     f"{self.tolerance.total_seconds():.0f} s in the future (edge clock drift?)")
        if reading.ts < EARLIEST:
            raise Rejected("too_old", f"timestamp {reading.ts.isoformat()} is before {EARLIEST:%Y}: "
                                      "the edge's clock is not set (enable NTP on the edge)")
        raise Rejected("too_old", f"timestamp {reading.ts.isoformat()} is older than the raw retention of "
                                  f"{self.max_age.total_seconds() / 86400 if self.max_age else 0:g} days "
                                  f"(oldest accepted {oldest.isoformat()})")
