"""Operations routes: Prometheus metrics, the audit log, the tariffs in force; request metrics middleware."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import AdminPrincipal, CurrentPrincipal
from api.deps import StateDep, TariffsDep
from api.models import AuditOut, AuditPage, TariffsOut

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


@router.get("/tariffs", response_model=TariffsOut, tags=["kpis"])
def tariffs(_who: CurrentPrincipal, book: TariffsDep) -> TariffsOut:
    """The time-of-use tariffs with their versions, and the emission and energy factors, as the KPIs use them."""
    data = book.model_dump(mode="json", by_alias=True)
    return TariffsOut(default=data["default"], assignments=data["assignments"], tariffs=data["tariffs"],
                      commodities=data["commodities"])
