"""Routes under ``/api/v1``: buildings, meters, series and alerts.

Each one takes the caller's principal and asks it before reading anything. Lists are paged (``limit``,
``offset``); where the body is a plain list the total is in the ``X-Total-Count`` header.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response, status

from api.auth import CurrentPrincipal, Principal, building_for, forbidden, meter_for
from api.deps import FleetDep, PagingDep, StateDep, StoreDep, TariffsDep
from api.models import (
    AlertOut,
    AlertPage,
    BuildingLatest,
    BuildingOut,
    CommentIn,
    CommentOut,
    Health,
    LatestOut,
    MeterOut,
    SeriesOut,
)
from api.series import (
    check_budget,
    flag_buckets,
    format_bucket,
    invalid,
    iso_times,
    json_values,
    parse_bucket,
    resolve_range,
)
from bems.fleet import Building, Commodity, Fleet, Meter, MeterKind
from bems.kpi import cumulative_field
from bems.state import Alert, AlertStatus, AlertTransitionError, StateDB
from bems.store import Agg, Store
from bems.tariff import TariffBook

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1")
AlertId = Annotated[int, Path(ge=1, le=2**31 - 1, description="alert id", examples=[17])]
BuildingId = Annotated[str, Path(max_length=64, description="building id (slug)", examples=["tehran-moi-hq"])]
MeterId = Annotated[str, Path(max_length=130, description="meter id <building>.<meter>",
                              examples=["tehran-moi-hq.main-elec"])]
CALENDAR_NAME = "office_calendar"
STALE_AFTER = dt.timedelta(minutes=15)
COMPLETENESS_WINDOW = dt.timedelta(hours=24)
SLOT = dt.timedelta(minutes=15)


def building_out(b: Building, fleet: Fleet, who: Principal, tariffs: TariffBook) -> BuildingOut:
    commodities = sorted({m.commodity for m in fleet.meters_of(building=b.id) if who.sees_meter(m)})
    return BuildingOut(**b.model_dump(), commodities=commodities, tariff=tariffs.for_building(b.id).id,
                       calendar=CALENDAR_NAME)


def meter_outs(meters: list[Meter], fleet: Fleet, store: Store, now: dt.datetime | None = None) -> list[MeterOut]:
    """Meters with their status, last reading and completeness: one ``latest`` and one count read per field."""
    now = now or dt.datetime.now(dt.UTC)
    latest = store.latest([m.id for m in meters])
    start = now - COMPLETENESS_WINDOW
    complete: dict[str, float] = {}
    by_field: dict[str, list[str]] = {}
    for m in meters:
        by_field.setdefault(cumulative_field(m) or m.profile.registers[0].field, []).append(m.id)
    for field, ids in by_field.items():
        counts = store.read_matrix(ids, field, start, now, SLOT, "count")
        filled = (np.nan_to_num(counts.values) > 0).mean(axis=1) * 100.0
        complete.update(zip(ids, filled.tolist(), strict=True))
    out = []
    for m in meters:
        got = latest.get(m.id)
        poll = next((e.poll_period_s for e in fleet.edges if e.building == m.building), 5.0)
        if got is None:
            state = "never"
        else:
            age = now - got.ts
            state = ("online" if age <= dt.timedelta(seconds=max(3 * poll, 30)) else
                     "stale" if age <= STALE_AFTER else "offline")
        out.append(MeterOut(id=m.id, building=m.building, commodity=m.commodity, name=m.name,
                            rated_kw=m.rated_kw, profile=m.device.profile,
                            fields=[r.field for r in m.profile.registers], status=state,
                            last_reading=got.ts if got else None, quality=got.quality if got else None,
                            completeness_pct=round(complete[m.id], 2)))
    return out


@router.get("/health", response_model=Health, tags=["health"])
def health(response: Response, fleet: FleetDep, store: StoreDep, state: StateDep) -> Health:
    """No auth, so a load balancer can probe it; it says only whether the store and state answer."""
    store_ok = state_ok = True
    try:
        store.latest([m.id for m in fleet.meters[:1]])
    except Exception:
        log.exception("health: store unreachable")
        store_ok = False
    try:
        state.ping()
    except Exception:
        log.exception("health: state database unreachable")
        state_ok = False
    if not (store_ok and state_ok):
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(status="ok" if store_ok and state_ok else "degraded",
                  store="ok" if store_ok else "unreachable", state="ok" if state_ok else "unreachable")


@router.get("/buildings", response_model=list[BuildingOut], tags=["buildings"])
def list_buildings(who: CurrentPrincipal, fleet: FleetDep, tariffs: TariffsDep, page: PagingDep) -> list[BuildingOut]:
    """The buildings this token may see (total in ``X-Total-Count``)."""
    visible = [building_out(b, fleet, who, tariffs) for b in fleet.buildings if who.sees_building(b.id, fleet)]
    return page.apply(visible)


@router.get("/buildings/{building_id}", response_model=BuildingOut, tags=["buildings"])
def get_building(building_id: BuildingId, who: CurrentPrincipal, fleet: FleetDep, tariffs: TariffsDep) -> BuildingOut:
    return building_out(building_for(who, fleet, building_id), fleet, who, tariffs)


@router.get("/buildings/{building_id}/meters", response_model=list[MeterOut], tags=["buildings"])
def building_meters(building_id: BuildingId, who: CurrentPrincipal, fleet: FleetDep, store: StoreDep,
                    page: PagingDep) -> list[MeterOut]:
    building_for(who, fleet, building_id)
    visible = [m for m in fleet.meters_of(building=building_id) if who.sees_meter(m)]
    page.response.headers["X-Total-Count"] = str(len(visible))
    return meter_outs(visible[page.offset:page.offset + page.limit], fleet, store)


@router.get("/buildings/{building_id}/latest", response_model=BuildingLatest, tags=["buildings"])
def building_latest(building_id: BuildingId, who: CurrentPrincipal, fleet: FleetDep,
                    store: StoreDep) -> BuildingLatest:
    """One entry per visible meter; a meter that never reported has ``ts: null``."""
    building_for(who, fleet, building_id)
    meters = [m for m in fleet.meters_of(building=building_id) if who.sees_meter(m)]
    latest = store.latest([m.id for m in meters])
    out = []
    for m in meters:
        got = latest.get(m.id)
        out.append(LatestOut(meter=m.id, commodity=m.commodity, ts=got.ts if got else None,
                             values=got.values if got else {}, quality=got.quality if got else None))
    return BuildingLatest(building=building_id, meters=out)


@router.get("/meters", response_model=list[MeterOut], tags=["meters"])
def list_meters(who: CurrentPrincipal, fleet: FleetDep, store: StoreDep, page: PagingDep,
                building: Annotated[str | None, Query(max_length=64, description="only this building")] = None,
                commodity: Annotated[MeterKind | None, Query(description="only this commodity")] = None,
                ) -> list[MeterOut]:
    """Every meter this token may see, with status and completeness (total in ``X-Total-Count``)."""
    if building is not None:
        building_for(who, fleet, building)
    visible = [m for m in fleet.meters_of(building=building, commodity=commodity) if who.sees_meter(m)]
    page.response.headers["X-Total-Count"] = str(len(visible))
    return meter_outs(visible[page.offset:page.offset + page.limit], fleet, store)


@router.get("/meters/{meter_id}", response_model=MeterOut, tags=["meters"])
def get_meter(meter_id: MeterId, who: CurrentPrincipal, fleet: FleetDep, store: StoreDep) -> MeterOut:
    return meter_outs([meter_for(who, fleet, meter_id)], fleet, store)[0]


@router.get("/meters/{meter_id}/series", response_model=SeriesOut, tags=["meters"])
def meter_series(
    meter_id: MeterId, who: CurrentPrincipal, fleet: FleetDep, store: StoreDep,
    field: Annotated[str, Query(max_length=64, description="field, unit in the name: power_w, energy_kwh",
                                examples=["power_w"])] = "power_w",
    start: Annotated[dt.datetime | None, Query(description="ISO 8601 with offset; default end - 24h",
                                               examples=["2026-11-20T20:30:00Z"])] = None,
    end: Annotated[dt.datetime | None, Query(description="ISO 8601 with offset; default now",
                                             examples=["2026-11-21T20:30:00Z"])] = None,
    bucket: Annotated[str, Query(max_length=16, description="bucket width: 30s, 15m, 1h, 1d",
                                 examples=["1h"])] = "1h",
    agg: Annotated[Agg, Query(description="aggregate per bucket (aggregate mode)")] = "mean",
    mode: Annotated[Literal["aggregate", "consumption"],
                    Query(description="consumption: per-bucket rise of a cumulative register")] = "aggregate",
    counts: Annotated[bool, Query(description="also return readings per bucket (gaps) and flagged readings "
                                              "per bucket with their flags")] = False,
) -> SeriesOut:
    """At most 5000 buckets per request, so one call cannot pin the store (more gets a 422 naming the limit)."""
    meter = meter_for(who, fleet, meter_id)
    registers = {r.field: r for r in meter.profile.registers}
    if field not in registers:
        raise invalid("field", f"meter {meter_id!r} has no field {field!r}; allowed: {', '.join(registers)}")
    if mode == "consumption" and not registers[field].cumulative:
        cumulative = [f for f, r in registers.items() if r.cumulative]
        raise invalid("mode", f"consumption needs a cumulative field; {field!r} is not "
                              f"(cumulative: {', '.join(cumulative) or 'none'})")
    width = parse_bucket(bucket)
    t0, t1 = resolve_range(start, end)
    check_budget(t0, t1, width)
    if mode == "consumption":
        matrix = store.read_consumption([meter_id], field, t0, t1, width)
    else:
        matrix = store.read_matrix([meter_id], field, t0, t1, width, agg)
    n = flagged = flags = None
    if counts:
        c = store.read_matrix([meter_id], field, t0, t1, width, "count").row(meter_id)
        n = np.nan_to_num(c).astype(np.int64).tolist()
        with contextlib.suppress(NotImplementedError):  # a store without raw points has counts only
            flagged, flags = flag_buckets(store.points(meter_id, field, t0, t1), t0, width, len(n))
    return SeriesOut(meter=meter_id, field=field, mode=mode, agg=agg if mode == "aggregate" else None,
                     bucket=format_bucket(width), bucket_s=int(width.total_seconds()), start=t0, end=t1,
                     times=iso_times(matrix), values=json_values(matrix.row(meter_id)), counts=n,
                     flagged=flagged, flags=flags)


# alerts -----------------------------------------------------------------------------------------------------
class AlertFilters:
    """Alert query parameters shared by the list and the export."""

    def __init__(
        self,
        building: Annotated[str | None, Query(max_length=64, description="only this building")] = None,
        status_: Annotated[AlertStatus | None, Query(alias="status", description="open, acknowledged, resolved")]
        = None,
        meter: Annotated[str | None, Query(max_length=130, description="only this meter")] = None,
        commodity: Annotated[Commodity | None, Query(description="only this commodity")] = None,
        type_: Annotated[str | None, Query(alias="type", max_length=32, description="alert type, e.g. after_hours")]
        = None,
        severity: Annotated[str | None, Query(max_length=16, description="warning, critical, ...")] = None,
        since: Annotated[dt.datetime | None, Query(description="alerts still running after this time")] = None,
        until: Annotated[dt.datetime | None, Query(description="alerts that started before this time")] = None,
    ) -> None:
        for name, t in (("since", since), ("until", until)):
            if t is not None and t.tzinfo is None:
                raise invalid(name, f"{name} must carry a UTC offset, e.g. 2026-11-21T08:00:00Z")
        self.building, self.status, self.meter, self.commodity = building, status_, meter, commodity
        self.type, self.severity, self.since, self.until = type_, severity, since, until

    def query(self, who: Principal, fleet: Fleet) -> dict[str, object]:
        """Keyword arguments for ``StateDB.alerts``, confined to the principal's scope (403 outside it)."""
        if self.building is not None:
            building_for(who, fleet, self.building)
        if self.meter is not None:
            meter_for(who, fleet, self.meter)
        if self.commodity is not None and who.role == "utility" and self.commodity not in who.scope:
            raise forbidden(f"commodity {self.commodity!r}")
        return {"building": self.building, "status": self.status, "meter": self.meter, "commodity": self.commodity,
                "type": self.type, "severity": self.severity, "since": self.since, "until": self.until,
                **who.alert_filter()}


def alert_out(a: Alert) -> AlertOut:
    return AlertOut.model_validate(a, from_attributes=True)


@router.get("/alerts", response_model=AlertPage, tags=["alerts"])
def list_alerts(
    who: CurrentPrincipal, fleet: FleetDep, state: StateDep, filters: Annotated[AlertFilters, Depends()],
    limit: Annotated[int, Query(ge=1, le=500, description="page size, at most 500")] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> AlertPage:
    """Largest excess first; a scoped token gets only its buildings' or commodities' alerts."""
    query = filters.query(who, fleet)
    rows = state.alerts(limit=limit, offset=offset, **query)
    return AlertPage(items=[alert_out(a) for a in rows], limit=limit, offset=offset,
                     total=state.count_alerts(**query))


def _visible_alert(alert_id: int, who: Principal, fleet: Fleet, state: StateDB) -> Alert:
    alert = state.alert(alert_id)
    if alert is None:
        if who.role != "admin":
            raise forbidden(f"alert {alert_id}")  # a scoped token cannot probe which ids exist
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"unknown alert {alert_id}")
    meter = fleet.meter_by_id.get(alert.meter)
    visible = who.sees_meter(meter) if meter else who.sees_building(alert.building, fleet)
    if not visible:
        raise forbidden(f"alert {alert_id}")
    return alert


@router.get("/alerts/{alert_id}", response_model=AlertOut, tags=["alerts"])
def get_alert(alert_id: AlertId, who: CurrentPrincipal, fleet: FleetDep, state: StateDep) -> AlertOut:
    return alert_out(_visible_alert(alert_id, who, fleet, state))


def _transition(alert_id: int, target: AlertStatus, who: Principal, fleet: Fleet, state: StateDB) -> AlertOut:
    _visible_alert(alert_id, who, fleet, state)
    try:
        updated = state.set_alert_status(alert_id, target, actor=who.name)
    except AlertTransitionError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    if updated is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"unknown alert {alert_id}")
    log.info("alert %s %s by %s", alert_id, target, who.name)
    return alert_out(updated)


@router.post("/alerts/{alert_id}/ack", response_model=AlertOut, tags=["alerts"])
def ack_alert(alert_id: AlertId, who: CurrentPrincipal, fleet: FleetDep, state: StateDep) -> AlertOut:
    """Someone is looking at it; a resolved alert cannot be acknowledged again (409). Audited."""
    return _transition(alert_id, "acknowledged", who, fleet, state)


@router.post("/alerts/{alert_id}/resolve", response_model=AlertOut, tags=["alerts"])
def resolve_alert(alert_id: AlertId, who: CurrentPrincipal, fleet: FleetDep, state: StateDep) -> AlertOut:
    """Final: a resolved alert stays resolved. Audited."""
    return _transition(alert_id, "resolved", who, fleet, state)


@router.get("/alerts/{alert_id}/comments", response_model=list[CommentOut], tags=["alerts"])
def list_comments(alert_id: AlertId, who: CurrentPrincipal, fleet: FleetDep, state: StateDep,
                  page: PagingDep) -> list[CommentOut]:
    """Oldest first."""
    _visible_alert(alert_id, who, fleet, state)
    rows = state.comments(alert_id, limit=page.limit, offset=page.offset)
    return [CommentOut.model_validate(c, from_attributes=True) for c in rows]


@router.post("/alerts/{alert_id}/comments", response_model=CommentOut, status_code=201, tags=["alerts"])
def add_comment(alert_id: AlertId, body: CommentIn, who: CurrentPrincipal, fleet: FleetDep,
                state: StateDep) -> CommentOut:
    """Anyone who may see the alert may comment; the comment is audited and the token's name is the author."""
    _visible_alert(alert_id, who, fleet, state)
    comment = state.add_comment(alert_id, who.name, body.text)
    if comment is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"unknown alert {alert_id}")
    return CommentOut.model_validate(comment, from_attributes=True)
