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
from fastapi.responses import JSONResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from api.routes import router
from api.settings import ApiSettings
from bems.errors import ConfigError, StoreError
from bems.fleet import Fleet, load_fleet
from bems.state import StateDB
from bems.store import Store, open_store

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class DashboardFiles(StaticFiles):
    """Static files with the security headers; revalidated on each load so an upgrade shows at once."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        response.headers.setdefault("Cache-Control", "no-cache")
        return response


async def _store_error(_request: Request, exc: Exception) -> JSONResponse:
    log.error("store error: %s", exc)
    return JSONResponse({"detail": "the time-series store is unavailable; retry later"}, status_code=503,
                        headers={"Retry-After": "5"})


def create_app(settings: ApiSettings | None = None, fleet: Fleet | None = None, store: Store | None = None,
               state: StateDB | None = None) -> FastAPI:
    if settings is None and (fleet is None or store is None or state is None):
        raise ValueError("create_app needs settings, or all of fleet, store and state")
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
    except BaseException:
        for resource in owned:
            resource.close()
        raise

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        for resource in owned:
            resource.close()

    app = FastAPI(title="bems API", version="1", lifespan=lifespan,
                  description="Energy monitoring for government buildings. "
                              "Send `Authorization: Bearer <token>`.")
    app.state.bems_fleet, app.state.bems_store, app.state.bems_state = fleet, store, state
    app.add_exception_handler(StoreError, _store_error)
    app.include_router(router)
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
        server.should_exit = True
        await serving
        raise
    finally:
        sock.close()
