"""The live stream, exports, comments, audit, metrics, paging and the ``bems users`` command over real HTTP."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openpyxl import load_workbook

from bems.state import StateDB
from bems.wire import Reading
from tests.apistack import Stack, start_stack

HQ, MASHHAD = "tehran-moi-hq", "mashhad-gov-office"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("live"), history_days=9, live=False)
    yield s
    s.close()


class EventReader(threading.Thread):
    """Reads an SSE response in the background and queues (event, data) pairs."""

    def __init__(self, stack: Stack, who: str, params: dict[str, str] | None = None) -> None:
        super().__init__(daemon=True)
        self.client = stack.client(who)
        self.params = params or {}
        self.events: queue.Queue[tuple[str, dict]] = queue.Queue()
        self.ready = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            self._read()
        except httpx.HTTPError:
            if not self.stop.is_set():
                raise

    def _read(self) -> None:
        with self.client.stream("GET", "/api/v1/stream", params=self.params, timeout=None) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            event = None
            for line in r.iter_lines():
                if self.stop.is_set():
                    return
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event:
                    self.events.put((event, json.loads(line[5:])))
                    if event == "hello":
                        self.ready.set()

    def next(self, kind: str, timeout: float, where=lambda d: True) -> dict:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                event, data = self.events.get(timeout=left)
            except queue.Empty:
                break
            if event == kind and where(data):
                return data
        raise AssertionError(f"no {kind} event within {timeout} s")

    def drain(self) -> list[tuple[str, dict]]:
        out = []
        while not self.events.empty():
            out.append(self.events.get())
        return out

    def close(self) -> None:
        self.stop.set()
        self.client.close()  # the reader thread ends at its next read


def test_stream_pushes_new_readings_and_alert_changes_within_scope(stack: Stack) -> None:
    fm, utility = EventReader(stack, "fm"), EventReader(stack, "utility_mashhad")
    for r in (fm, utility):
        r.start()
        assert r.ready.wait(10)
    try:
        first = fm.next("reading", 5)  # the latest value of every visible meter comes first
        assert first["building"] == HQ
        time.sleep(1.0)
        fm.drain()
        utility.drain()
        ts = dt.datetime.now(dt.UTC).replace(microsecond=0)
        stack.store.write([
            Reading(meter=f"{HQ}.main-elec", building=HQ, edge="t", ts=ts, seq=1, values={"power_w": 123456.0}),
            Reading(meter=f"{MASHHAD}.main-elec", building=MASHHAD, edge="t", ts=ts, seq=1,
                    values={"power_w": 654321.0})])
        written = time.monotonic()
        got = fm.next("reading", 3, lambda d: d["meter"] == f"{HQ}.main-elec")
        assert time.monotonic() - written < 3
        assert got["values"] == {"power_w": 123456.0} and got["ts"] == ts.strftime("%Y-%m-%dT%H:%M:%SZ")
        seen = utility.next("reading", 3, lambda d: d["meter"] == f"{MASHHAD}.main-elec")
        assert seen["values"]["power_w"] == 654321.0
        time.sleep(1.0)
        assert all(d["building"] == HQ for e, d in fm.drain() if e == "reading")
        assert all(d["meter"] == f"{MASHHAD}.main-elec" for e, d in utility.drain() if e == "reading")

        aid = stack.alerts[0]  # on tehran-moi-hq.hvac-elec
        with stack.client("fm") as c:
            assert c.post(f"/api/v1/alerts/{aid}/comments", json={"text": "closing the valve"}).status_code == 201
        alert = fm.next("alert", 3, lambda d: d["id"] == aid)
        assert alert["building"] == HQ
        assert not [d for e, d in utility.drain() if e == "alert"]
    finally:
        fm.close()
        utility.close()


def test_stream_limit_gives_503(stack: Stack) -> None:
    slots = stack.server.config.app.state.bems_streams
    saved, slots.limit = slots.limit, 0  # full whatever else is open (a stream of another test may be closing)
    try:
        with stack.client("admin") as c:
            r = c.get("/api/v1/stream")
        assert r.status_code == 503 and r.headers["Retry-After"] == "10"
        assert "limit" in r.json()["detail"]
    finally:
        slots.limit = saved


def test_series_exports_match_the_json_series(stack: Stack) -> None:
    meters = f"{HQ}.main-elec,{HQ}.hvac-elec"
    params = {"field": "energy_kwh", "mode": "consumption", "bucket": "6h", "start": "2026-01-01T00:00:00Z"}
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    params = {**params, "start": (now - dt.timedelta(days=2)).isoformat(), "end": now.isoformat()}
    with stack.client("fm") as c:
        r = c.get("/api/v1/exports/series", params={**params, "meters": meters, "format": "csv"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        assert 'filename="series-energy_kwh.csv"' in r.headers["content-disposition"]
        rows = list(csv.reader(io.StringIO(r.text)))
        x = c.get("/api/v1/exports/series", params={**params, "meters": meters, "format": "xlsx"})
        sheet = load_workbook(io.BytesIO(x.content)).active
        xrows = [[c.value for c in row] for row in sheet.iter_rows()]
        series = c.get(f"/api/v1/meters/{HQ}.hvac-elec/series", params=params).json()
        forbidden = c.get("/api/v1/exports/series", params={**params, "meters": f"{meters},{MASHHAD}.water"})
        too_many = c.get("/api/v1/exports/series", params={**params, "meters": ",".join([f"{HQ}.water"] * 51)})
    assert rows[0] == ["time", f"{HQ}.main-elec", f"{HQ}.hvac-elec"]
    assert [r[0] for r in rows[1:]] == series["times"]
    assert [float(r[2]) if r[2] else None for r in rows[1:]] == pytest.approx(series["values"])
    assert [r[2] for r in xrows[1:]] == pytest.approx(series["values"])
    assert sum(v is not None for v in series["values"]) >= 6
    assert forbidden.status_code == 403
    assert too_many.status_code == 422 and "at most 50" in too_many.json()["detail"][0]["msg"]


def test_alert_export_respects_scope_and_quotes_formulas(stack: Stack) -> None:
    start = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
    stack.state.upsert_alert(building=HQ, meter=f"{HQ}.water", commodity="water", type="leak", start=start,
                             end=start + dt.timedelta(hours=5), excess=2.0, unit="m3", severity="warning",
                             message="=HYPERLINK(\"x\")")
    with stack.client("utility") as c:
        r = c.get("/api/v1/exports/alerts", params={"format": "csv", "limit": 100})
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert rows and {row["commodity"] for row in rows} == {"water"}
    assert any(row["message"] == "'=HYPERLINK(\"x\")" for row in rows)


def test_comments_transitions_and_audit(stack: Stack) -> None:
    aid = stack.alerts[1]  # tehran-edu-office.main-elec
    with stack.client("admin") as c:
        assert c.post(f"/api/v1/alerts/{aid}/comments", json={"text": ""}).status_code == 422
        bad = c.post(f"/api/v1/alerts/{aid}/comments", json={"text": "x", "extra": 1})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "extra"
        assert c.post(f"/api/v1/alerts/{aid}/comments", json={"text": "meter checked"}).status_code == 201
        assert c.post(f"/api/v1/alerts/{aid}/ack").json()["status"] == "acknowledged"
        comments = c.get(f"/api/v1/alerts/{aid}/comments").json()
        audit = c.get("/api/v1/audit", params={"limit": 50}).json()
        only_acks = c.get("/api/v1/audit", params={"action": "alert.acknowledged"}).json()
        filtered = c.get("/api/v1/alerts", params={"status": "acknowledged", "building": "tehran-edu-office"}).json()
    assert [(x["author"], x["text"]) for x in comments] == [("ops", "meter checked")]
    actions = [(e["actor"], e["action"], e["target"]) for e in audit["items"]]
    assert ("ops", "alert.comment", f"alert:{aid}") in actions
    assert ("ops", "alert.acknowledged", f"alert:{aid}") in actions
    assert ("cli", "token.create", "hq-manager") in actions
    assert {e["action"] for e in only_acks["items"]} == {"alert.acknowledged"} and only_acks["total"] >= 1
    assert [a["id"] for a in filtered["items"]] == [aid] and filtered["total"] == 1


def test_paging_headers_and_limits(stack: Stack) -> None:
    with stack.client("admin") as c:
        r = c.get("/api/v1/meters", params={"limit": 3, "offset": 2})
        assert r.headers["X-Total-Count"] == "12" and len(r.json()) == 3
        assert [m["id"] for m in r.json()] == [m.id for m in stack.fleet.meters[2:5]]
        assert c.get("/api/v1/buildings", params={"limit": 1}).headers["X-Total-Count"] == "3"
        err = c.get("/api/v1/buildings", params={"limit": 5000})
        assert err.status_code == 422 and err.json()["detail"][0]["loc"] == ["query", "limit"]
        ten_years = c.get(f"/api/v1/meters/{HQ}.main-elec/series",
                          params={"start": "2016-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z", "bucket": "1s"})
        assert ten_years.status_code == 422
        assert ten_years.json()["detail"][0]["loc"] == ["query", "bucket"]
        assert "at most 5000 buckets" in ten_years.json()["detail"][0]["msg"]
        assert c.get("/api/v1/buildings/tehran-moi-hq/dashboard", params={"days": 93}).status_code == 422
        meter = c.get(f"/api/v1/meters/{HQ}.main-elec").json()
    assert meter["status"] in ("offline", "stale", "online") and meter["completeness_pct"] > 90
    assert meter["quality"] == "good"


def test_metrics_count_requests_by_route_template(stack: Stack) -> None:
    with stack.client("admin") as c:
        c.get(f"/api/v1/buildings/{HQ}")
        body = c.get("/api/v1/metrics").text
    assert 'bems_api_requests_total{method="GET",route="/api/v1/buildings/{building_id}",status="200"}' in body
    assert HQ not in body  # ids never become label values
    assert "bems_api_open_streams" in body


def test_bems_users_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bems.cli import main

    db = f"sqlite:///{tmp_path}/state.db"

    def bems(*args: str) -> subprocess.CompletedProcess[str]:
        code = main(["users", *args, "--db", db])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    made = bems("create", "--name", "gas-co", "--role", "utility", "--scope", "gas", "--regions", "Tehran")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    assert token.startswith("bems_")
    assert bems("create", "--name", "gas-co", "--role", "admin").returncode == 2
    wrong = bems("create", "--name", "x", "--role", "utility", "--scope", "tehran-moi-hq")
    assert wrong.returncode == 2 and "commodities" in wrong.stderr
    listed = bems("list").stdout
    assert "gas-co\tutility\tgas\tactive" in listed and "regions Tehran" in listed and token not in listed
    state = StateDB(db)
    try:
        assert state.check_token(token).regions == "Tehran"  # type: ignore[union-attr]
        assert bems("revoke", "--name", "gas-co").returncode == 0
        assert state.check_token(token) is None
        assert bems("revoke", "--name", "gas-co").returncode == 2
        assert [e.action for e in state.audit_log()] == ["token.revoke", "token.create"]
    finally:
        state.close()


def test_docs_are_served_from_vendored_files(stack: Stack) -> None:
    page = httpx.get(stack.url + "/docs")
    assert page.status_code == 200 and "https://" not in page.text and "http://" not in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    for path in ("/vendor/swagger-ui/swagger-ui-bundle.js", "/vendor/swagger-ui/swagger-ui.css", "/docs.js",
                 "/vendor/vazirmatn/Vazirmatn-Regular.woff2"):
        assert httpx.get(stack.url + path).status_code == 200, path
    assert httpx.get(stack.url + "/redoc").status_code == 404


def test_admin_can_override_the_tariffs_and_reset_them(stack: Stack) -> None:
    with stack.client("admin") as admin, stack.client("fm") as fm:
        before = admin.get(f"/api/v1/buildings/{HQ}/kpis").json()
        book = admin.get("/api/v1/tariffs").json()
        assert book["source"] == "file"
        doc = {k: book[k] for k in ("default", "assignments", "tariffs", "commodities")}
        for version in doc["tariffs"][0]["versions"]:
            version["prices_rial_per_kwh"] = {band: 2 * p for band, p in version["prices_rial_per_kwh"].items()}
        assert fm.put("/api/v1/tariffs", json=doc).status_code == 403
        bad = {**doc, "assignments": {"no-such-building": doc["default"]}}
        r = admin.put("/api/v1/tariffs", json=bad)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "assignments"]
        r = admin.put("/api/v1/tariffs", json=doc)
        assert r.status_code == 200 and r.json()["source"] == "override" and r.json()["changed_by"] == "ops"
        after = admin.get(f"/api/v1/buildings/{HQ}/kpis").json()
        assert fm.get("/api/v1/tariffs").json()["source"] == "override"
        assert admin.delete("/api/v1/tariffs").json()["source"] == "file"
        reset = admin.get(f"/api/v1/buildings/{HQ}/kpis").json()
        actions = [e["action"] for e in admin.get("/api/v1/audit", params={"limit": 5}).json()["items"]]
    assert after["cost_rial"] == pytest.approx(2 * before["cost_rial"])
    assert reset["cost_rial"] == pytest.approx(before["cost_rial"])
    assert actions[:2] == ["tariffs.reset", "tariffs.update"]
