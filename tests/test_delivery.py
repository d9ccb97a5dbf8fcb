"""Alerts reach utilities: signed webhooks that are retried and never dropped silently, and MQTT alert topics."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import paho.mqtt.client as mqtt
import pytest

from analytics.alerts import Event, record
from analytics.delivery import MAX_ATTEMPTS, Subscription, enqueue, send_due, verify
from bems.fleet import load_fleet
from bems.state import Delivery, StateDB
from simulators.faults import Fault
from simulators.history import backfill
from simulators.model import fleet_model
from tests.stages import StageProcess, small_fleet, wait_for

SECRET = "s3cret-for-webhook-tests-only"
TEHRAN = ZoneInfo("Asia/Tehran")


class Receiver:
    """A real HTTP server that fails the first ``fail`` requests with 500 and records every request."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.requests: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((dict(self.headers), body))
                code = 500 if len(outer.requests) <= outer.fail else 204
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateDB]:
    db = StateDB(f"sqlite:///{tmp_path}/state.db")
    yield db
    db.close()


def _alert(state: StateDB):  # type: ignore[no-untyped-def]
    t0 = dt.datetime(2026, 11, 23, 15, 30, tzinfo=dt.UTC)
    alert, _ = record(state, Event(building="test-hq", meter="test-hq.main-elec", commodity="electricity",
                                   type="after_hours", start=t0, end=t0 + dt.timedelta(hours=4), excess=120.0,
                                   unit="kWh", score=3.0, message="m", cost_rial=90000.0))
    return alert


def test_webhook_signed_retried_then_delivered(state: StateDB, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BEMS_TEST_HOOK_SECRET", SECRET)
    fleet = load_fleet(small_fleet(tmp_path / "fleet.yaml"))
    receiver = Receiver(fail=2)
    subs = [Subscription(name="tavanir", commodities=("electricity",), webhook=receiver.url,
                         secret_env="BEMS_TEST_HOOK_SECRET"),
            Subscription(name="water-co", commodities=("water",), webhook=receiver.url,
                         secret_env="BEMS_TEST_HOOK_SECRET")]
    alert = _alert(state)
    try:
        assert enqueue(state, alert, subs, fleet) == 1  # the water company is not interested
        now = dt.datetime.now(dt.UTC)
        with httpx.Client() as http:
            assert send_due(state, subs, http, now) == (0, 0)
            assert send_due(state, subs, http, now + dt.timedelta(seconds=1)) == (0, 0)  # not due yet
            assert send_due(state, subs, http, now + dt.timedelta(seconds=11)) == (0, 0)
            assert send_due(state, subs, http, now + dt.timedelta(seconds=50)) == (1, 0)
    finally:
        receiver.close()
    assert len(receiver.requests) == 3
    headers, body = receiver.requests[-1]
    assert verify(SECRET.encode(), headers["X-Bems-Timestamp"], body, headers["X-Bems-Signature"])
    assert not verify(b"another-secret-xxxxxx", headers["X-Bems-Timestamp"], body, headers["X-Bems-Signature"])
    payload = json.loads(body)
    assert (payload["id"], payload["meter"], payload["type"]) == (alert.id, "test-hq.main-elec", "after_hours")
    with state.session() as s:
        [d] = s.query(Delivery).all()
        assert (d.status, d.attempts, d.last_error) == ("delivered", 3, None)


def test_webhook_that_never_answers_is_kept_as_failed(state: StateDB, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BEMS_TEST_HOOK_SECRET", SECRET)
    fleet = load_fleet(small_fleet(tmp_path / "fleet.yaml"))
    receiver = Receiver(fail=10**6)
    subs = [Subscription(name="tavanir", commodities=("electricity",), webhook=receiver.url,
                         secret_env="BEMS_TEST_HOOK_SECRET")]
    enqueue(state, _alert(state), subs, fleet)
    now = dt.datetime.now(dt.UTC)
    outcomes = []
    try:
        with httpx.Client() as http:
            for i in range(MAX_ATTEMPTS):
                outcomes.append(send_due(state, subs, http, now + dt.timedelta(hours=2 * i)))
    finally:
        receiver.close()
    assert outcomes[-1] == (0, 1) and len(receiver.requests) == MAX_ATTEMPTS
    with state.session() as s:
        [d] = s.query(Delivery).all()
        assert d.status == "failed" and d.attempts == MAX_ATTEMPTS and "HTTP 500" in d.last_error


def test_subscription_needs_its_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BEMS_NO_SUCH_SECRET", raising=False)
    sub = Subscription(name="x", commodities=("gas",), webhook="http://127.0.0.1:9/", secret_env="BEMS_NO_SUCH_SECRET")
    with pytest.raises(Exception, match="set BEMS_NO_SUCH_SECRET"):
        sub.secret()


def test_analytics_stage_publishes_and_posts_new_alerts(mosquitto, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The stage end to end: waste in the history -> alert -> MQTT alert topic and a signed webhook."""
    fleet_path = small_fleet(tmp_path / "fleet.yaml")
    fleet = load_fleet(fleet_path)
    store_url, db_url = f"sqlite:///{tmp_path}/r.db", f"sqlite:///{tmp_path}/s.db"
    end = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    model = fleet_model(fleet, seed=5)
    day = (end - dt.timedelta(days=7)).astimezone(TEHRAN).date()
    day -= dt.timedelta(days=day.weekday())  # a Monday, 20:00 Tehran: hours after closing
    start = dt.datetime(day.year, day.month, day.day, 20, tzinfo=TEHRAN).astimezone(dt.UTC)
    model.faults.append(Fault.make("after_hours_waste", "test-hq.main-elec", start, start + dt.timedelta(hours=3),
                                   fraction=0.6))
    from bems.store import open_store

    with open_store(store_url) as store:
        backfill(model, store, end - dt.timedelta(days=21), end)
    received: list[mqtt.MQTTMessage] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="utility-sub")
    sub.on_message = lambda _c, _u, msg: received.append(msg)
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe("bems/v1/alerts/electricity/#", qos=1)
    sub.loop_start()
    receiver = Receiver(fail=0)
    subs_file = tmp_path / "subscriptions.yaml"
    subs_file.write_text(f"subscriptions:\n  - {{name: tavanir, commodities: [electricity], webhook: '{receiver.url}',"
                         " secret_env: BEMS_TEST_HOOK_SECRET}\n")
    try:
        stage = StageProcess("analytics", ["--config", str(fleet_path), "--store", store_url, "--db", db_url,
                                           "--once", "--broker", mosquitto.url, "--subscriptions", str(subs_file)],
                             tmp_path / "analytics.log", env={"BEMS_TEST_HOOK_SECRET": SECRET})
        assert stage.proc.wait(90) == 0, stage.output()
        wait_for(lambda: received, 10, "the alert on the MQTT alert topic")
    finally:
        sub.loop_stop()
        sub.disconnect()
        receiver.close()
    msg = received[0]
    assert msg.topic == "bems/v1/alerts/electricity/test-hq"
    assert json.loads(msg.payload)["meter"] == "test-hq.main-elec"
    assert [json.loads(b)["type"] for _, b in receiver.requests] == ["after_hours"], receiver.requests
    headers, body = receiver.requests[0]
    assert verify(SECRET.encode(), headers["X-Bems-Timestamp"], body, headers["X-Bems-Signature"])
    assert SECRET not in stage.output()
