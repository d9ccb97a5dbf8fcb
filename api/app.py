"""The FastAPI app: JSON routes under /api/v1 and the dashboard's static files at /.

``create_app`` takes the fleet, store and state so tests hand in their own; what it opens itself it closes
at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import exports, insights, ops, routes, stream
from api.cache import PayloadCache
from api.ops import ApiMetrics, MetricsMiddleware
from api.ratelimit import FailedAuthLimiter
from api.settings import ApiSettings
from bems.calendar import OfficeCalendar, default_calendar, load_calendar
from bems.errors import ConfigError, StoreError
from bems.fleet import Fleet, load_fleet
from bems.state import StateDB
from bems.store import Store, open_store
from bems.tariff import TariffBook, default_tariffs, load_tariffs

log = logging.getLogger(__name__)
API_DESCRIPTION = """Energy monitoring for government buildings.

Send `Authorization: Bearer <token>` (tokens come from `bems users create`). Roles: `admin` sees everything;
`facility_manager` the buildings in its scope; `utility` the commodities in its scope, optionally only in its
regions (cities). Outside its scope a token gets 403; without a valid token 401.

Lists take `limit` and `offset`; ranges are bounded (a series at most 5000 buckets, a KPI period at most 366
days) and a request past a limit gets a 422 whose `detail[0].loc` names the parameter and whose `msg` names the
limit. Times are UTC ISO 8601 with an offset.
"""
STATIC_DIR = Path(__file__).parent / "static"
# scripts only from our own files (no inline script, no eval), nothing from another origin, never framed
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
CORS_HEADERS = ["Authorization", "Content-Type", "Last-Event-ID"]


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response (dashboard, docs, API, errors) that does not set its own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in SECURITY_HEADERS.items():
                    headers.setdefault(key, value)
            await send(message)

        await self.app(scope, receive, with_headers)


class DashboardFiles(StaticFiles):
    """Static files revalidated on each load so an upgrade shows at once."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.setdefault("Cache-Control", "no-cache")
        return response


async def _store_error(_request: Request, exc: Exception) -> JSONResponse:
    log.error("store error: %s", exc)
    return JSONResponse({"detail": "the time-series store is unavailable; retry later"}, status_code=503,
                        headers={"Retry-After": "5"})


async def _server_error(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse({"detail": "internal error; it has been logged"}, status_code=500)


async def _api_not_found(request: Request) -> JSONResponse:
    """Unknown paths under /api answer JSON like the routes do (the dashboard's files would answer text)."""
    return JSONResponse({"detail": f"no route {request.method} {request.url.path}; see /docs"}, status_code=404)


def _docs(_request: Request) -> Response:
    return FileResponse(STATIC_DIR / "docs.html", media_type="text/html")


def create_app(settings: ApiSettings | None = None, fleet: Fleet | None = None, store: Store | None = None,
               state: StateDB | None = None, tariffs: TariffBook | None = None,
               calendar: OfficeCalendar | None = None) -> FastAPI:
    """``settings`` also tunes the cache and streams when fleet, store and state are handed in."""
    if settings is None and (fleet is None or store is None or state is None):
        raise ValueError("create_app needs settings, or all of fleet, store and state")
    config = settings or ApiSettings.model_construct(fleet=Path("(given)"))
    owned: list[Store | StateDB] = []
    try:
        if fleet is None:
            fleet = load_fleet(settings.fleet)  # type: ignore[union-attr]
        if store is None:
            store = open_store(settings.store)  # type: ignore[union-attr]
            owned.append(store)
        if state is None:
            state = StateDB(settings.db)  # type: ignore[union-attr]
            owned.append(state)
        tariffs = tariffs or (load_tariffs(config.tariffs) if config.tariffs else default_tariffs())
        calendar = calendar or (load_calendar(config.calendar) if config.calendar else default_calendar())
    except BaseException:
        for resource in owned:
            resource.close()
        raise

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        for resource in owned:
            resource.close()

    app = FastAPI(title="bems API", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=API_DESCRIPTION)
    app.state.bems_fleet, app.state.bems_store, app.state.bems_state = fleet, store, state
    app.state.bems_settings, app.state.bems_tariffs, app.state.bems_calendar = config, tariffs, calendar
    app.state.bems_cache = PayloadCache(config.cache_ttl_s)
    app.state.bems_streams = stream.StreamSlots(config.max_streams)
    app.state.bems_metrics = ApiMetrics()
    app.state.bems_stopping = False
    app.state.bems_tariff_override = None  # (recheck at, book in force, latest override row), see api.deps
    app.add_exception_handler(StoreError, _store_error)
    app.add_exception_handler(Exception, _server_error)
    app.state.bems_auth_limiter = FailedAuthLimiter(config.auth_fail_limit, config.auth_fail_window_s)
    app.add_middleware(MetricsMiddleware, metrics=app.state.bems_metrics)
    if config.cors_origins:  # closed unless listed: no Access-Control-* header at all by default
        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_credentials=False,
                           allow_methods=["GET", "POST", "PUT", "DELETE"], allow_headers=CORS_HEADERS,
                           expose_headers=["X-Total-Count", "Retry-After"], max_age=600)
    app.add_middleware(SecurityHeaders)
    for module in (routes, insights, stream, exports, ops):
        app.include_router(module.router)
    app.add_route("/docs", _docs, include_in_schema=False)
    app.add_route("/api/{rest:path}", _api_not_found, methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                  include_in_schema=False)
    app.mount("/", DashboardFiles(directory=STATIC_DIR, html=True), name="dashboard")
    return app


class _Server(uvicorn.Server):
    """Leaves SIGINT/SIGTERM to bems.stage, which cancels ``run``; uvicorn would otherwise take them over."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def listen(host: str, port: int) -> socket.socket:
    """Bind here rather than in uvicorn, which answers a busy port with sys.exit instead of an error."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
                          f"choose another --host/--port") from exc


async def run(settings: ApiSettings) -> None:
    """Serve until cancelled; on cancel, stop accepting, finish in-flight requests (5 s at most), close."""
    sock = listen(settings.host, settings.port)
    try:
        app = create_app(settings)
    except BaseException:
        sock.close()
        raise
    config = uvicorn.Config(app, log_level="warning", log_config=None, timeout_graceful_shutdown=5,
                            lifespan="on")
    server = _Server(config)
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    log.info("API on http://%s:%d/ (OpenAPI at /docs)", settings.host, sock.getsockname()[1])
    try:
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        app.state.bems_stopping = True  # live streams end at their next poll instead of holding the shutdown
        server.should_exit = True
        await serving
        raise
    finally:
        sock.close()
