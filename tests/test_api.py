"""The HTTP API and the dashboard's static files over HTTP, on a real SQLite store and state database."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import BaseRoute

import api
import bems
from api.app import SECURITY_HEADERS, STATIC_DIR, create_app, run
from api.ratelimit import FailedAuthLimiter
from api.series import MAX_BUCKETS
from api.settings import ApiSettings
from bems.fleet import Fleet, load_fleet
from bems.state import StateDB
from bems.store import Store, open_store
from bems.wire import Reading

FLEET_FILE = Path(bems.__file__).parent / "demo_fleet.yaml"
T0 = dt.datetime(2026, 11, 21, 0, 0, tzinfo=dt.UTC)
H = dt.timedelta(hours=1)
HQ, EDU = "tehran-moi-hq", "tehran-edu-office"
HQ_ELEC, EDU_ELEC, HQ_WATER = f"{HQ}.main-elec", f"{EDU}.main-elec", f"{HQ}.water"


@dataclass
class Env:
    client: TestClient
    store: Store
    state: StateDB
    fleet: Fleet
    tokens: dict[str, str]
    alerts: dict[str, int]

    def get(self, path: str, who: str = "admin", **params: object) -> httpx.Response:
        return self.client.get(path, params=params, headers=self.auth(who))

    def post(self, path: str, who: str = "admin") -> httpx.Response:
        return self.client.post(path, headers=self.auth(who))

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}


def reading(meter: str, ts: dt.datetime, seq: int, **values: float) -> Reading:
    return Reading(meter=meter, building=meter.split(".")[0], edge="edge-test", ts=ts, seq=seq, values=values)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    fleet = load_fleet(FLEET_FILE)
    store = open_store(f"sqlite:///{tmp_path}/readings.db")
    state = StateDB(f"sqlite:///{tmp_path}/state.db")
    tokens = {
        "admin": state.create_token("ops", "admin"),
        "fm": state.create_token("hq-manager", "facility_manager", [HQ]),
        "utility": state.create_token("water-utility", "utility", ["water"]),
        "nobody": state.create_token("empty-scope", "facility_manager", []),
    }
    alerts = {}
    for key, meter, commodity, excess, unit in (("hq", HQ_ELEC, "electricity", 40.0, "kWh"),
                                                ("edu", EDU_ELEC, "electricity", 30.0, "kWh"),
                                                ("water", HQ_WATER, "water", 5.0, "m3")):
        alert, _ = state.upsert_alert(building=meter.split(".")[0], meter=meter, commodity=commodity,
                                      type="after_hours", start=T0, end=T0 + 2 * H, excess=excess, unit=unit,
                                      severity="warning", message="")
        alerts[key] = alert.id
    with TestClient(create_app(fleet=fleet, store=store, state=state)) as client:
        yield Env(client, store, state, fleet, tokens, alerts)
    store.close()
    state.close()


def _walk(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, APIRoute]]:
    """(full path, route) for every APIRoute, also inside included routers (FastAPI >= 0.16x nests them)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path, route
        elif (sub := getattr(route, "original_router", None)) is not None:
            yield from _walk(sub.routes, prefix + getattr(route.include_context, "prefix", ""))


def _api_routes(env: Env) -> list[tuple[str, str]]:
    """Every (method, concrete path) under /api/v1 except health, path params filled with real ids."""
    ids = {"building_id": HQ, "meter_id": HQ_ELEC, "alert_id": str(env.alerts["hq"])}
    out = []
    for template, route in _walk(env.client.app.routes):
        if template == "/api/v1/health":
            continue
        params = re.findall(r"{(\w+)}", template)
        unknown = [p for p in params if p not in ids]
        assert not unknown, f"{template}: add a real id for {unknown} to this test"
        out += [(method, template.format(**ids)) for method in sorted(route.methods)]
    documented = sum(len(ops) for p, ops in env.client.get("/openapi.json").json()["paths"].items()
                     if p.startswith("/api/v1/") and p != "/api/v1/health")
    assert len(out) == documented, "the route walk missed routes the OpenAPI schema lists"
    return out


# (a) ----------------------------------------------------------------------------------------------
def test_every_route_but_health_needs_a_valid_token(env: Env) -> None:
    routes = _api_routes(env)
    assert len(routes) >= 9
    # one wrong token per route is more than the lockout allows (tests/test_api_hardening.py covers that)
    env.client.app.state.bems_auth_limiter = FailedAuthLimiter(len(routes) * 3, 60)
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer bems_wrong"},
                        {"Authorization": f"Basic {env.tokens['admin']}"}):
            r = env.client.request(method, path, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.headers["WWW-Authenticate"] == "Bearer"
            assert isinstance(r.json()["detail"], str)
    assert env.state.alerts(status="open", limit=10).__len__() == 3  # the POSTs above changed nothing


def test_revoked_token_is_refused(env: Env) -> None:
    assert env.get("/api/v1/buildings").status_code == 200
    env.state.revoke_token("ops")
    assert env.get("/api/v1/buildings").status_code == 401


def test_health_needs_no_token_and_reports_the_store(env: Env, tmp_path: Path) -> None:
    r = env.client.get("/api/v1/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "store": "ok", "state": "ok"}
    broken = open_store(f"sqlite:///{tmp_path}/broken.db")
    broken.close()
    with TestClient(create_app(fleet=env.fleet, store=broken, state=env.state)) as client:
        r = client.get("/api/v1/health")
    assert r.status_code == 503
    assert r.json() == {"status": "degraded", "store": "unreachable", "state": "ok"}


# (b) ----------------------------------------------------------------------------------------------
def test_facility_manager_sees_only_its_building(env: Env) -> None:
    assert [b["id"] for b in env.get("/api/v1/buildings", "fm").json()] == [HQ]
    assert env.get(f"/api/v1/buildings/{HQ}", "fm").status_code == 200
    for path in (f"/api/v1/buildings/{EDU}", f"/api/v1/buildings/{EDU}/meters",
                 f"/api/v1/buildings/{EDU}/latest", f"/api/v1/meters/{EDU_ELEC}",
                 f"/api/v1/meters/{EDU_ELEC}/series",
                 "/api/v1/buildings/no-such-building", "/api/v1/meters/no-such.meter"):
        r = env.get(path, "fm")
        assert r.status_code == 403, (path, r.text)
    alerts = env.get("/api/v1/alerts", "fm").json()["items"]
    assert {a["building"] for a in alerts} == {HQ}
    assert len(alerts) == 2
    assert env.get("/api/v1/alerts", "fm", building=EDU).status_code == 403
    assert env.post(f"/api/v1/alerts/{env.alerts['edu']}/ack", "fm").status_code == 403
    assert env.post("/api/v1/alerts/999999/ack", "fm").status_code == 403
    assert env.get("/api/v1/alerts", "admin", building=EDU).json()["items"][0]["status"] == "open"


def test_utility_sees_only_its_commodity(env: Env) -> None:
    buildings = env.get("/api/v1/buildings", "utility").json()
    assert {b["id"] for b in buildings} == {HQ, "mashhad-gov-office"}
    assert all(b["commodities"] == ["water"] for b in buildings)
    assert [m["id"] for m in env.get(f"/api/v1/buildings/{HQ}/meters", "utility").json()] == [HQ_WATER]
    assert env.get(f"/api/v1/meters/{HQ_ELEC}", "utility").status_code == 403
    assert env.get(f"/api/v1/buildings/{EDU}", "utility").status_code == 403  # metered for gas only
    assert [a["meter"] for a in env.get("/api/v1/alerts", "utility").json()["items"]] == [HQ_WATER]
    assert env.post(f"/api/v1/alerts/{env.alerts['hq']}/resolve", "utility").status_code == 403


def test_empty_scope_sees_nothing_and_admin_gets_404_for_unknown_ids(env: Env) -> None:
    assert env.get("/api/v1/buildings", "nobody").json() == []
    assert env.get("/api/v1/alerts", "nobody").json()["items"] == []
    assert env.get("/api/v1/buildings/no-such-building").status_code == 404
    assert env.get("/api/v1/meters/no-such.meter").status_code == 404
    assert env.post("/api/v1/alerts/999999/ack").status_code == 404


# (c) ----------------------------------------------------------------------------------------------
def test_series_returns_the_written_values_bucketed(env: Env) -> None:
    hour0 = [41000.0, 43000.0, 45500.0, 39000.0, 40250.0, 44000.0]  # every 10 min
    hour2 = [12000.0, 12500.0]
    rs = [reading(HQ_ELEC, T0 + i * dt.timedelta(minutes=10), i, power_w=v) for i, v in enumerate(hour0)]
    rs += [reading(HQ_ELEC, T0 + 2 * H + i * dt.timedelta(minutes=30), 10 + i, power_w=v)
           for i, v in enumerate(hour2)]
    env.store.write(rs)
    r = env.get(f"/api/v1/meters/{HQ_ELEC}/series", field="power_w", start="2026-11-21T00:00:00Z",
                end="2026-11-21T03:00:00Z", bucket="1h", agg="mean")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["field"] == "power_w"
    assert (body["meter"], body["mode"], body["agg"], body["bucket"], body["bucket_s"]) == \
        (HQ_ELEC, "aggregate", "mean", "1h", 3600)
    assert body["start"] == "2026-11-21T00:00:00Z" and body["end"] == "2026-11-21T03:00:00Z"
    assert body["times"] == ["2026-11-21T00:00:00Z", "2026-11-21T01:00:00Z", "2026-11-21T02:00:00Z"]
    assert body["values"][0] == pytest.approx(sum(hour0) / len(hour0))
    assert body["values"][1] is None
    assert body["values"][2] == pytest.approx(12250.0)
    mx = env.get(f"/api/v1/meters/{HQ_ELEC}/series", start="2026-11-21T00:00:00Z", end="2026-11-21T01:00:00Z",
                 bucket="30m", agg="max").json()
    assert mx["values"] == [45500.0, 44000.0]


def test_series_consumption_mode_uses_register_deltas(env: Env) -> None:
    env.store.write([reading(HQ_ELEC, T0 + i * dt.timedelta(minutes=15), i, energy_kwh=1000.0 + 2.5 * i)
                     for i in range(13)])
    body = env.get(f"/api/v1/meters/{HQ_ELEC}/series", field="energy_kwh", mode="consumption", bucket="1h",
                   start=(T0 + H).isoformat(), end=(T0 + 3 * H).isoformat()).json()
    assert (body["field"], body["mode"], body["agg"]) == ("energy_kwh", "consumption", None)
    assert body["values"] == [pytest.approx(10.0), pytest.approx(10.0)]


def test_series_counts_show_flagged_readings_and_gaps_per_bucket(env: Env) -> None:
    """Flags as the collector sets them (its counter tracker), a reading the edge marked uncertain, a silent hour."""
    from collector.quality import CounterTracker

    m = dt.timedelta(minutes=10)
    volumes = [500.0, 500.4, 500.9, 497.0, 497.5, 498.1]  # hour 0: the counter drops once (a misread)
    rs = [reading(HQ_WATER, T0 + i * m, i, volume_m3=v) for i, v in enumerate(volumes)]
    rs += [reading(HQ_WATER, T0 + 2 * H + i * m, 10 + i, volume_m3=499.0 + i) for i in range(3)]  # hour 1: none
    rs[-1] = rs[-1].model_copy(update={"quality": "uncertain"})
    flags = CounterTracker(env.fleet).flags(rs)
    env.store.write(rs, flags)
    body = env.get(f"/api/v1/meters/{HQ_WATER}/series", field="volume_m3", start=T0.isoformat(),
                   end=(T0 + 3 * H).isoformat(), bucket="1h", counts="true").json()
    assert body["counts"] == [6, 0, 3]
    assert body["flagged"] == [1, 0, 1]
    assert body["flags"] == [["negative_delta"], [], ["uncertain"]]
    plain = env.get(f"/api/v1/meters/{HQ_WATER}/series", field="volume_m3", start=T0.isoformat(),
                    end=(T0 + 3 * H).isoformat(), bucket="1h").json()
    assert plain["counts"] is None and plain["flagged"] is None and plain["flags"] is None


def test_series_defaults_to_the_last_24_hours(env: Env) -> None:
    now = dt.datetime.now(dt.UTC)
    env.store.write([reading(HQ_ELEC, now - dt.timedelta(minutes=5), 1, power_w=5000.0)])
    body = env.get(f"/api/v1/meters/{HQ_ELEC}/series").json()
    assert 24 <= len(body["times"]) <= 25 and len(body["values"]) == len(body["times"])
    end = dt.datetime.fromisoformat(body["end"])
    assert abs((end - now).total_seconds()) < 60
    assert end - dt.datetime.fromisoformat(body["start"]) == dt.timedelta(hours=24)
    assert 5000.0 in body["values"]


def test_latest_of_a_building(env: Env) -> None:
    env.store.write([reading(HQ_ELEC, T0, 1, power_w=1.0, energy_kwh=7.5),
                     reading(HQ_ELEC, T0 + H, 2, power_w=2.0)])
    body = env.get(f"/api/v1/buildings/{HQ}/latest").json()
    assert body["building"] == HQ
    latest = {x["meter"]: x for x in body["meters"]}
    assert set(latest) == {m.id for m in env.fleet.meters_of(building=HQ)}
    assert latest[HQ_ELEC]["ts"] == "2026-11-21T01:00:00Z"
    assert latest[HQ_ELEC]["values"] == {"power_w": 2.0}
    assert latest[HQ_WATER]["ts"] is None


# (d) ----------------------------------------------------------------------------------------------
def _error(r: httpx.Response) -> tuple[list[str], str]:
    assert r.status_code == 422, r.text
    first = r.json()["detail"][0]
    return first["loc"], first["msg"]


def test_series_refuses_more_buckets_than_the_limit(env: Env) -> None:
    loc, msg = _error(env.get(f"/api/v1/meters/{HQ_ELEC}/series", start="2026-10-01T00:00:00Z",
                              end="2026-11-01T00:00:00Z", bucket="1m"))
    assert loc == ["query", "bucket"]
    assert str(MAX_BUCKETS) in msg and "44640" in msg


@pytest.mark.parametrize(("params", "param"), [
    ({"bucket": "abc"}, "bucket"),
    ({"bucket": "0m"}, "bucket"),
    ({"bucket": "1w"}, "bucket"),
    ({"agg": "median"}, "agg"),
    ({"mode": "integrate"}, "mode"),
    ({"start": "yesterday"}, "start"),
    ({"start": "2026-11-21T00:00:00"}, "start"),
    ({"start": "2026-11-21T02:00:00Z", "end": "2026-11-21T01:00:00Z"}, "end"),
    ({"field": "power_kw"}, "field"),
    ({"field": "power_w", "mode": "consumption"}, "mode"),
])
def test_series_validation_names_the_parameter(env: Env, params: dict[str, str], param: str) -> None:
    loc, msg = _error(env.get(f"/api/v1/meters/{HQ_ELEC}/series", **params))
    assert loc[-1] == param, msg


def test_alert_limit_is_capped(env: Env) -> None:
    assert _error(env.get("/api/v1/alerts", limit=501))[0][-1] == "limit"
    assert _error(env.get("/api/v1/alerts", status="bogus"))[0][-1] == "status"
    page = env.get("/api/v1/alerts", limit=1, offset=1).json()
    assert (page["limit"], page["offset"], [a["id"] for a in page["items"]]) == (1, 1, [env.alerts["edu"]])


# (e) ----------------------------------------------------------------------------------------------
def test_ack_then_resolve(env: Env) -> None:
    aid = env.alerts["hq"]
    r = env.post(f"/api/v1/alerts/{aid}/ack", "fm")
    assert r.status_code == 200 and r.json()["status"] == "acknowledged"
    assert r.json()["start"] == "2026-11-21T00:00:00Z"
    assert [a["id"] for a in env.get("/api/v1/alerts", status="acknowledged").json()["items"]] == [aid]
    assert env.post(f"/api/v1/alerts/{aid}/resolve", "fm").json()["status"] == "resolved"
    assert env.post(f"/api/v1/alerts/{aid}/ack", "fm").status_code == 409
    assert env.state.alerts(status="resolved")[0].id == aid


# (f) ----------------------------------------------------------------------------------------------
def test_dashboard_is_served_with_security_headers(env: Env) -> None:
    r = env.client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    for name, value in SECURITY_HEADERS.items():
        assert r.headers[name] == value
    assert r.headers["Content-Security-Policy"].startswith("default-src 'self'; script-src 'self';")
    assert '<html lang="fa" dir="rtl">' in r.text
    scripts = re.findall(r"<script\b[^>]*>", r.text)
    assert scripts and all(re.search(r'\bsrc="[^"]+"', s) for s in scripts), "no inline scripts"
    assert "http://" not in r.text and "https://" not in r.text, "no CDN"
    vendored = (("/vendor/uplot/uPlot.iife.min.js", "javascript"), ("/vendor/uplot/uPlot.min.css", "css"))
    for path, kind in (*vendored, ("/app.js", "javascript"), ("/app.css", "css")):
        r = env.client.get(path)
        assert r.status_code == 200 and kind in r.headers["content-type"], path
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "uPlot" in env.client.get("/vendor/uplot/uPlot.iife.min.js").text


def test_static_files_live_in_the_package(env: Env) -> None:
    assert Path(api.__file__).parent / "static" == STATIC_DIR
    for name in ("index.html", "app.js", "app.css", "vendor/uplot/uPlot.iife.min.js", "vendor/uplot/LICENSE"):
        assert (STATIC_DIR / name).is_file(), name


def test_openapi_documents_every_route(env: Env) -> None:
    spec = env.client.get("/openapi.json").json()
    for method, path in _api_routes(env):
        template = re.sub(r"/(tehran-moi-hq(\.main-elec)?|\d+)(?=/|$)", "/{}", path)
        assert any(re.sub(r"{\w+}", "{}", p) == template and method.lower() in ops
                   for p, ops in spec["paths"].items()), (method, path)
    assert "SeriesOut" in spec["components"]["schemas"]
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert env.client.get("/docs").status_code == 200


# serving ------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(tmp_path: Path, port: int) -> ApiSettings:
    return ApiSettings(fleet=FLEET_FILE, store=f"sqlite:///{tmp_path}/r.db", db=f"sqlite:///{tmp_path}/s.db",
                       port=port)


def test_run_serves_and_stops_cleanly_when_cancelled(tmp_path: Path) -> None:
    port = _free_port()

    async def scenario() -> None:
        task = asyncio.create_task(run(_settings(tmp_path, port)))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(100):
                try:
                    r = await client.get("/api/v1/health")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            assert r.json()["status"] == "ok"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
    with socket.create_server(("127.0.0.1", port)):
        pass  # the port is free again


def _argv(tmp_path: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "api", "--config", str(FLEET_FILE), "--store", f"sqlite:///{tmp_path}/r.db",
            "--db", f"sqlite:///{tmp_path}/s.db", "--port", str(port)]


def test_busy_port_is_a_config_error(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        r = subprocess.run(_argv(tmp_path, port), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr


def test_python_m_api_exits_zero_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen(_argv(tmp_path, port), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/api/v1/health").json()["status"] == "ok"
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "api did not start"
                time.sleep(0.1)
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/buildings").status_code == 401
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_matrix_rows_are_json_safe() -> None:
    from api.series import json_values

    assert json_values(np.array([1.5, np.nan, 2.0])) == [1.5, None, 2.0]
