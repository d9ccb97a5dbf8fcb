"""Turn detector events into alerts: one alert per meter and type while it lasts, without flapping.

An event that overlaps (or comes within ``flap_gap`` of) an alert of the same meter and type extends that alert
instead of opening a new one; an alert a person resolved stays resolved unless the anomaly goes on past it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select

from bems.state import Alert, StateDB

WASTE_TYPES = {"after_hours", "holiday", "step", "drift", "spike", "peak"}
DATA_TYPES = {"gap", "flatline", "negative", "implausible"}


@dataclass(frozen=True)
class Event:
    building: str
    meter: str
    commodity: str
    type: str
    start: dt.datetime
    end: dt.datetime
    excess: float
    unit: str
    score: float
    message: str
    cost_rial: float | None = None


def severity(event: Event, hours: float) -> str:
    if event.type in DATA_TYPES:
        return "warning" if hours < 24 else "critical"
    return "critical" if hours >= 6 or event.score >= 3 else "warning"


def record(state: StateDB, event: Event, flap_gap: dt.timedelta = dt.timedelta(hours=2)) -> tuple[Alert, bool]:
    """Store the event as an alert; returns (alert, created)."""
    now = dt.datetime.now(dt.UTC)
    hours = (event.end - event.start).total_seconds() / 3600
    with state.session() as s:
        q = (select(Alert).where(Alert.meter == event.meter, Alert.type == event.type,
                                 Alert.start <= event.end + flap_gap, Alert.end >= event.start - flap_gap)
             .order_by(Alert.start))
        near = list(s.scalars(q))
        live = [a for a in near if a.status != "resolved"]
        resolved_until = max((a.end for a in near if a.status == "resolved"), default=None)
        if live:
            alert = live[0]
            alert.start = min(alert.start, event.start)
            alert.end = max(alert.end, event.end)
            alert.excess = max(alert.excess, event.excess)
            if event.cost_rial is not None:
                alert.cost_rial = max(alert.cost_rial or 0.0, event.cost_rial)
            alert.message, alert.updated_at = event.message, now
            alert.severity = severity(event, (alert.end - alert.start).total_seconds() / 3600)
            return alert, False
        if resolved_until is not None and event.end <= resolved_until + flap_gap:
            return next(a for a in near if a.end == resolved_until), False  # already handled by a person
        start = max(event.start, resolved_until) if resolved_until else event.start
        alert = Alert(building=event.building, meter=event.meter, commodity=event.commodity, type=event.type,
                      severity=severity(event, hours), status="open", start=start, end=event.end,
                      excess=event.excess, unit=event.unit, message=event.message, created_at=now, updated_at=now,
                      cost_rial=event.cost_rial)
        s.add(alert)
        return alert, True
