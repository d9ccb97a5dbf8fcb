"""The simulator's control API: inject faults at run time, read the clock-drift hook. Loopback only.

    POST /faults   {"type": "spike", "meter": "b.m", "duration_s": 60, "factor": 8}   -> 201 {"fault": {...}}
                   (``start`` defaults to now on the simulator's clock; give ``end`` or ``duration_s``)
    GET  /faults   -> {"faults": [{..., "active": true}]}
    GET  /clock?meter=b.m -> {"meter": "b.m", "offset_s": 12.5, "now": ...}  (edge clock drift hook)

It has no authentication, so it refuses to listen anywhere but on the loopback interface. Each injected fault
is appended to the label file by the server. ``bems sim inject`` is its command-line client.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from bems.errors import BemsError, ConfigError
from simulators.scenario import parse_fault
from simulators.server import MeterServer

log = logging.getLogger("bems.simulators")
LOOPBACK = ("127.0.0.1", "::1", "localhost")
MAX_BODY = 64 * 1024


class ControlAPI:
    """A small HTTP server in a thread; requests are carried out on the simulator's event loop."""

    def __init__(self, server: MeterServer, loop: asyncio.AbstractEventLoop, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        if host not in LOOPBACK:
            raise ConfigError(f"control API host {host!r}: it has no authentication and listens on loopback "
                              f"only; allowed: {', '.join(LOOPBACK)}")
        self.sim = server
        self.loop = loop
        self.httpd = ThreadingHTTPServer((host, port), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="sim-control", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ControlAPI:
        self.thread.start()
        log.info("simulator control API on %s", self.url)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def _on_loop(self, fn: Any, *args: Any) -> Any:
        async def call() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(10)

    def inject(self, body: dict[str, Any]) -> dict[str, Any]:
        body = dict(body)
        now = dt.datetime.fromtimestamp(self.sim.clock(), dt.UTC)
        body.setdefault("start", now.isoformat())
        duration = body.pop("duration_s", None)
        if duration is not None and "end" not in body:
            try:
                start = dt.datetime.fromisoformat(str(body["start"]))
                body["end"] = (start + dt.timedelta(seconds=float(duration))).isoformat()
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"control API: fault.duration_s / start: {exc}") from exc
        fault = parse_fault(body, self.sim.model, "control API")
        return self._on_loop(self.sim.inject, fault).describe()

    def faults(self) -> list[dict[str, Any]]:
        now = self.sim.clock()
        return [{**f.describe(), "active": f.active(now)} for f in list(self.sim.faults)]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                log.debug("control API: " + format, *args)

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path == "/faults":
                    self._send(200, {"faults": api.faults()})
                elif url.path == "/clock":
                    meter = parse_qs(url.query).get("meter", [""])[0]
                    if meter not in api.sim.meters:
                        self._send(404, {"error": f"unknown meter {meter!r}; pass ?meter=<id> of a served meter"})
                        return
                    self._send(200, {"meter": meter, "offset_s": api.sim.clock_offset(meter),
                                     "now": api.sim.clock()})
                else:
                    self._send(404, {"error": f"no route {url.path}; routes: GET /faults, POST /faults, GET /clock"})

            def do_POST(self) -> None:
                if urlsplit(self.path).path != "/faults":
                    self._send(404, {"error": "no route; POST /faults"})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                if length <= 0 or length > MAX_BODY:
                    self._send(400, {"error": f"send a JSON body of 1..{MAX_BODY} bytes"})
                    return
                try:
                    body = json.loads(self.rfile.read(length))
                    if not isinstance(body, dict):
                        raise ConfigError("control API: the body must be a JSON object describing one fault")
                    self._send(201, {"fault": api.inject(body)})
                except json.JSONDecodeError as exc:
                    self._send(400, {"error": f"control API: body is not JSON: {exc}"})
                except BemsError as exc:
                    self._send(400, {"error": str(exc)})

        return Handler
