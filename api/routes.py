"""Routes under ``/api/v1``. Each one takes the caller's principal and asks it before reading anything."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status

from api.auth import CurrentPrincipal, Principal, building_for, forbidden, meter_for
from api.models import (
    AlertOut,
    AlertPage,
    BuildingLatest,
    BuildingOut,
    Health,
    LatestOut,
    MeterOut,
    SeriesOut,
)
from api.series import (
    check_budget,
    format_bucket,
    invalid,
    iso_times,
    json_values,
    parse_bucket,
    resolve_range,
)
from bems.fleet import Building, Fleet, Meter
from bems.state import AlertStatus, AlertTransitionError, StateDB
from bems.store import Agg, Store

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1")


def _fleet(request: Request) -> Fleet:
    return request.app.state.bems_fleet


def _store(request: Request) -> Store:
    return request.app.state.bems_store


def _state(request: Request) -> StateDB:
    return request.app.state.bems_state


FleetDep = Annotated[Fleet, Depends(_fleet)]
StoreDep = Annotated[Store, Depends(_store)]
StateDep = Annotated[StateDB, Depends(_state)]


def _building_out(b: Building, fleet: Fleet, who: Principal) -> BuildingOut:
    commodities = sorted({m.commodity for m in fleet.meters_of(building=b.id) if who.sees_meter(m)})
    return BuildingOut(**b.model_dump(), commodities=commodities)


def _meter_out(m: Meter) -> MeterOut:
    return MeterOut(id=m.id, building=m.building, commodity=m.commodity, name=m.name, rated_kw=m.rated_kw,
                    profile=m.device.profile, fields=[r.field for r in m.profile.registers])


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
def list_buildings(who: CurrentPrincipal, fleet: FleetDep) -> list[BuildingOut]:
    return [_building_out(b, fleet, who) for b in fleet.buildings if who.sees_building(b.id, fleet)]


@router.get("/buildings/{building_id}", response_model=BuildingOut, tags=["buildings"])
def get_building(building_id: str, who: CurrentPrincipal, fleet: FleetDep) -> BuildingOut:
    return _building_out(building_for(who, fleet, building_id), fleet, who)


@router.get("/buildings/{building_id}/meters", response_model=list[MeterOut], tags=["buildings"])
def building_meters(building_id: str, who: CurrentPrincipal, fleet: FleetDep) -> list[MeterOut]:
    building_for(who, fleet, building_id)
    return [_meter_out(m) for m in fleet.meters_of(building=building_id) if who.sees_meter(m)]


@router.get("/buildings/{building_id}/latest", response_model=BuildingLatest, tags=["buildings"])
def building_latest(building_id: str, who: CurrentPrincipal, fleet: FleetDep,
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


@router.get("/meters/{meter_id}", response_model=MeterOut, tags=["meters"])
def get_meter(meter_id: str, who: CurrentPrincipal, fleet: FleetDep) -> MeterOut:
    return _meter_out(meter_for(who, fleet, meter_id))


@router.get("/meters/{meter_id}/series", response_model=SeriesOut, tags=["meters"])
def meter_series(
    meter_id: str, who: CurrentPrincipal, fleet: FleetDep, store: StoreDep,
    field: Annotated[str, Query(description="field, unit in the name: power_w, energy_kwh")] = "power_w",
    start: Annotated[dt.datetime | None, Query(description="ISO 8601 with offset; default end - 24h")] = None,
    end: Annotated[dt.datetime | None, Query(description="ISO 8601 with offset; default now")] = None,
    bucket: Annotated[str, Query(description="bucket width: 30s, 15m, 1h, 1d")] = "1h",
    agg: Annotated[Agg, Query(description="aggregate per bucket (aggregate mode)")] = "mean",
    mode: Annotated[Literal["aggregate", "consumption"],
                    Query(description="consumption: per-bucket rise of a cumulative register")] = "aggregate",
) -> SeriesOut:
    """At most 5000 buckets per request, so one call cannot pin the store."""
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
    return SeriesOut(meter=meter_id, field=field, mode=mode, agg=agg if mode == "aggregate" else None,
                     bucket=format_bucket(width), bucket_s=int(width.total_seconds()), start=t0, end=t1,
                     times=iso_times(matrix), values=json_values(matrix.row(meter_id)))


@router.get("/alerts", response_model=AlertPage, tags=["alerts"])
def list_alerts(
    who: CurrentPrincipal, fleet: FleetDep, state: StateDep,
    building: Annotated[str | None, Query(description="only this building")] = None,
    status_: Annotated[AlertStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> AlertPage:
    """Largest excess first; a scoped token gets only its buildings' or commodities' alerts."""
    if building is not None:
        building_for(who, fleet, building)
    rows = state.alerts(building=building, status=status_, limit=limit, offset=offset, **who.alert_filter())
    return AlertPage(items=[AlertOut.model_validate(a, from_attributes=True) for a in rows],
                     limit=limit, offset=offset)


def _transition(alert_id: int, target: AlertStatus, who: Principal, fleet: Fleet, state: StateDB) -> AlertOut:
    alert = state.alert(alert_id)
    if alert is None:
        if who.role != "admin":
            raise forbidden(f"alert {alert_id}")  # a scoped token cannot probe which ids exist
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"unknown alert {alert_id}")
    meter = fleet.meter_by_id.get(alert.meter)
    visible = who.sees_meter(meter) if meter else who.sees_building(alert.building, fleet)
    if not visible:
        raise forbidden(f"alert {alert_id}")
    try:
        updated = state.set_alert_status(alert_id, target)
    except AlertTransitionError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    if updated is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"unknown alert {alert_id}")
    log.info("alert %s %s by %s", alert_id, target, who.name)
    return AlertOut.model_validate(updated, from_attributes=True)


@router.post("/alerts/{alert_id}/ack", response_model=AlertOut, tags=["alerts"])
def ack_alert(alert_id: int, who: CurrentPrincipal, fleet: FleetDep, state: StateDep) -> AlertOut:
    """Someone is looking at it; a resolved alert cannot be acknowledged again (409)."""
    return _transition(alert_id, "acknowledged", who, fleet, state)


@router.post("/alerts/{alert_id}/resolve", response_model=AlertOut, tags=["alerts"])
def resolve_alert(alert_id: int, who: CurrentPrincipal, fleet: FleetDep, state: StateDep) -> AlertOut:
    return _transition(alert_id, "resolved", who, fleet, state)
