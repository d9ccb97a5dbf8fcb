"""Server-Sent Events: new readings and alert changes for the buildings a token may see.

Readings reach the store from the collector; each stream polls ``Store.latest`` for its meters about once a
second (``stream_poll_s``) in a worker thread and pushes what changed, so the API never talks to the broker.
Send the token as ``Authorization: Bearer`` (the dashboard reads the stream with ``fetch``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from api.auth import CurrentPrincipal, Principal, building_for
from api.deps import FleetDep, SettingsDep, StateDep, StoreDep
from api.routes import alert_out
from bems.fleet import Fleet, Meter
from bems.state import StateDB
from bems.store import Latest, Store

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1")
HEARTBEAT_S = 15.0
EXAMPLE = ('event: reading\ndata: {"meter": "tehran-moi-hq.main-elec", "building": "tehran-moi-hq", '
           '"commodity": "electricity", "ts": "2026-11-21T08:00:02Z", "values": {"power_w": 412000.0}, '
           '"quality": "good"}\n\n')


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n"


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def reading_event(m: Meter, got: Latest) -> str:
    return sse("reading", {"meter": m.id, "building": m.building, "commodity": m.commodity, "ts": _iso(got.ts),
                           "values": got.values, "quality": got.quality})


class StreamSlots:
    """Counts open streams so a flood of them gets 503 instead of exhausting worker threads."""

    def __init__(self, limit: int) -> None:
        self.limit, self.open = limit, 0

    def take(self) -> None:
        if self.open >= self.limit:
            raise HTTPException(503, detail=f"too many live streams (limit {self.limit}); retry later",
                                headers={"Retry-After": "10"})
        self.open += 1

    def give(self) -> None:
        self.open -= 1


async def events(request: Request, who: Principal, meters: list[Meter], store: Store, state: StateDB,
                 fleet: Fleet, poll_s: float, slots: StreamSlots) -> AsyncIterator[str]:
    seen: dict[str, dt.datetime] = {}
    alert_scope = who.alert_filter()
    buildings = sorted({m.building for m in meters})
    since = dt.datetime.now(dt.UTC)
    quiet = 0.0
    try:
        yield "retry: 3000\n\n" + sse("hello", {"buildings": buildings, "meters": [m.id for m in meters],
                                                "poll_s": poll_s})
        while not getattr(request.app.state, "bems_stopping", False):
            latest = await anyio.to_thread.run_sync(store.latest, [m.id for m in meters])
            out = []
            for m in meters:
                got = latest.get(m.id)
                if got is not None and seen.get(m.id) != got.ts:
                    seen[m.id] = got.ts
                    out.append(reading_event(m, got))
            changed = await anyio.to_thread.run_sync(
                lambda s=since: state.alerts(updated_since=s, order="updated", limit=200, **alert_scope))
            for a in changed:
                if a.building in buildings or not buildings:
                    out.append(sse("alert", json.loads(alert_out(a).model_dump_json())))
                since = max(since, a.updated_at)
            quiet = 0.0 if out else quiet + poll_s
            if quiet >= HEARTBEAT_S:
                out.append(": keep-alive\n\n")
                quiet = 0.0
            if out:
                yield "".join(out)
            await asyncio.sleep(poll_s)
    finally:
        slots.give()


@router.get("/stream", tags=["live"], response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {"example": EXAMPLE}},
                             "description": "an endless text/event-stream: `hello` once, then `reading` "
                                            "(latest values of a meter) and `alert` (created or changed)"},
                       503: {"description": "too many open streams"}})
async def stream(request: Request, who: CurrentPrincipal, fleet: FleetDep, store: StoreDep, state: StateDep,
                 settings: SettingsDep,
                 building: Annotated[str | None, Query(max_length=64, description="only this building")] = None,
                 ) -> StreamingResponse:
    """Live readings and alerts of the visible buildings (or one). The first events carry the latest value of
    every meter; afterwards only changes. Heartbeat comments every 15 s keep proxies from closing it."""
    if building is not None:
        building_for(who, fleet, building)
    meters = [m for m in fleet.meters if who.sees_meter(m) and (building is None or m.building == building)]
    slots: StreamSlots = request.app.state.bems_streams
    slots.take()
    return StreamingResponse(events(request, who, meters, store, state, fleet, settings.stream_poll_s, slots),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
