"""Operations routes: Prometheus metrics, the audit log, the tariffs in force; request metrics middleware."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import AdminPrincipal, CurrentPrincipal
from api.deps import FleetDep, StateDep, TariffsDep, _tariffs
from api.models import AuditOut, AuditPage, TariffsOut
from bems.tariff import TariffBook

router = APIRouter(prefix="/api/v1")


class ApiMetrics:
    """One registry per app, so several apps in one process (tests) do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("bems_api_requests_total", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("bems_api_request_seconds", "time to the response headers, by route",
                                 ["route"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.streams = Gauge("bems_api_open_streams", "live event streams open", registry=self.registry)
        self.cache_hits = Gauge("bems_api_cache_hits", "payload cache hits since start", registry=self.registry)
        self.cache_misses = Gauge("bems_api_cache_misses", "payload cache misses since start",
                                  registry=self.registry)


class MetricsMiddleware:
    """Counts requests by route template (never by raw path, which would put ids into label values)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")
                name = getattr(route, "path", None) or ("static" if not scope["path"].startswith("/api/") else
                                                        "unmatched")
                self.metrics.requests.labels(scope["method"], name, str(message["status"])).inc()
                self.metrics.latency.labels(name).observe(time.perf_counter() - t0)
            await send(message)

        await self.app(scope, receive, timed)


@router.get("/metrics", tags=["operations"], response_class=Response,
            responses={200: {"content": {"text/plain": {"example": "bems_api_open_streams 3.0\n"}},
                             "description": "Prometheus text exposition"}})
def metrics(request: Request, _who: AdminPrincipal) -> Response:
    """Prometheus metrics (admin token: give the scraper one with `bearer_token`)."""
    m: ApiMetrics = request.app.state.bems_metrics
    m.streams.set(request.app.state.bems_streams.open)
    m.cache_hits.set(request.app.state.bems_cache.hits)
    m.cache_misses.set(request.app.state.bems_cache.misses)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/audit", response_model=AuditPage, tags=["operations"])
def audit_log(_who: AdminPrincipal, state: StateDep,
              action: Annotated[str | None, Query(max_length=32, description="e.g. alert.acknowledged")] = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 100,
              offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> AuditPage:
    """Every write action, newest first (admin only)."""
    rows = state.audit_log(limit=limit, offset=offset, action=action)
    return AuditPage(items=[AuditOut.model_validate(r, from_attributes=True) for r in rows], limit=limit,
                     offset=offset, total=state.count_audit(action))


def _tariffs_out(request: Request, book: TariffBook) -> TariffsOut:
    data = book.model_dump(mode="json", by_alias=True)
    row = request.app.state.bems_tariff_override[2]
    override = row is not None and row.document is not None
    return TariffsOut(default=data["default"], assignments=data["assignments"], tariffs=data["tariffs"],
                      commodities=data["commodities"], source="override" if override else "file",
                      changed_at=row.created_at if row else None, changed_by=row.actor if row else None)


@router.get("/tariffs", response_model=TariffsOut, tags=["kpis"])
def get_tariffs(request: Request, _who: CurrentPrincipal, book: TariffsDep) -> TariffsOut:
    """The time-of-use tariffs with their versions, and the emission and energy factors, as the KPIs use them."""
    return _tariffs_out(request, book)


def _changed(request: Request) -> None:
    request.app.state.bems_tariff_override = None
    request.app.state.bems_cache.clear()


@router.put("/tariffs", response_model=TariffsOut, tags=["kpis"])
def put_tariffs(request: Request, body: TariffBook, who: AdminPrincipal, state: StateDep,
                fleet: FleetDep) -> TariffsOut:
    """Replace the tariff book (admin; audited) until ``DELETE``: a decree changed prices, hours or factors.

    Validated like the file: every season's bands cover the day once, seasons cover the 12 months, known ids."""
    if unknown := sorted(b for b in body.assignments if b not in fleet.building_by_id):
        raise invalid_body("assignments", f"unknown building(s) {', '.join(unknown)}")
    state.set_tariff_override(body.model_dump_json(by_alias=True), who.name)
    _changed(request)
    return _tariffs_out(request, _tariffs(request))


@router.delete("/tariffs", response_model=TariffsOut, tags=["kpis"])
def reset_tariffs(request: Request, who: AdminPrincipal, state: StateDep) -> TariffsOut:
    """Go back to the tariff file (admin; audited)."""
    state.set_tariff_override(None, who.name)
    _changed(request)
    return _tariffs_out(request, _tariffs(request))


def invalid_body(field: str, msg: str) -> HTTPException:
    return HTTPException(422, detail=[{"loc": ["body", field], "msg": msg, "type": "value_error"}])
