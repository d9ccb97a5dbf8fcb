"""Acceptance 3: a malformed payload is rejected with a logged reason and counted; the next good one is stored."""

from __future__ import annotations

import datetime as dt

import httpx
import paho.mqtt.client as mqtt

from bems.services import free_port
from bems.store import open_store
from bems.wire import Reading
from tests.stages import StageProcess, edge_signer, small_fleet, wait_for


def _rejected(metrics_port: int) -> dict[str, float]:
    try:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=1).text
    except httpx.HTTPError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("bems_collector_rejected_total{"):
            reason = line.split('reason="')[1].split('"')[0]
            out[reason] = float(line.rsplit(" ", 1)[1])
    return out


def test_bad_payloads_rejected_counted_and_good_one_stored(mosquitto, tmp_path) -> None:  # type: ignore[no-untyped-def]
    fleet = small_fleet(tmp_path / "fleet.yaml")
    store_url = f"sqlite:///{tmp_path}/r.db"
    metrics = free_port()
    collector = StageProcess("collector", ["--config", str(fleet), "--broker", mosquitto.url, "--store", store_url,
                                           "--metrics-port", str(metrics), "--client-id", "c-test"],
                             tmp_path / "collector.log")
    try:
        wait_for(lambda: "connected to the broker" in collector.output(), 15, "collector to connect")
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-pub")
        pub.connect("127.0.0.1", mosquitto.port)
        pub.loop_start()
        good = Reading(meter="test-hq.main-elec", building="test-hq", edge="edge-test",
                       ts=dt.datetime.now(dt.UTC), seq=7, values={"power_w": 1500.0}).signed(edge_signer(fleet))
        bad = [
            ("bems/v1/test-hq/main-elec/reading", b"{not json"),
            ("bems/v1/test-hq/main-elec/reading", good.to_json().replace(b'"seq":7', b'"seq":"seven"')),
            ("bems/v1/test-hq/ghost/reading",
             good.model_copy(update={"meter": "test-hq.ghost"}).to_json()),
        ]
        for topic, payload in bad:
            pub.publish(topic, payload, qos=1).wait_for_publish(5)
        pub.publish(good.topic, good.to_json(), qos=1).wait_for_publish(5)
        pub.loop_stop()
        pub.disconnect()
        with open_store(store_url) as store:
            wait_for(lambda: store.count() == 1, 10, "the good reading to be stored")
            assert store.sequences("test-hq.main-elec") == [7]
        counts = wait_for(lambda: (c := _rejected(metrics)) and sum(c.values()) >= 3 and c, 5, "rejection counts")
        assert counts == {"json": 1.0, "schema": 1.0, "unknown_meter": 1.0}
    finally:
        assert collector.stop() == 0
    log = collector.output()
    assert "Invalid JSON" in log
    assert "seq: Input should be a valid integer" in log
    assert "unknown meter 'test-hq.ghost'" in log
