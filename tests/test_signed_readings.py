"""Signed readings end to end, with real mosquitto, the collector as its own process and a SQLite store.

1. Forged (wrong key, unknown key), replayed (seq far below the edge's high-water), another building's reading
   signed by an edge of this one, another edge's name, and unsigned readings, interleaved with good ones: each is
   refused (not stored), dead-lettered with its reason, and raises one security alert per meter and kind (stored
   in the relational state and published on bems/v1/alerts/security/<building>); every good reading is stored.
2. Key rotation: an edge restarted with a new key still holds readings signed with the old one in its queue; with
   both keys in the fleet file every reading reaches the store.
3. The replay rule on its own: the high-water survives a restart, a late copy within the window passes.
4. ``bems edge keygen``, and the collector's settings (signatures required unless ``off`` is said).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import sqlite3
import stat
import threading
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from pydantic import ValidationError
from sqlalchemy import select

from bems.cli import main as bems_main
from bems.fleet import load_fleet
from bems.services import Mosquitto, free_port
from bems.signing import generate_key, load_signing_key
from bems.state import Alert, StateDB
from bems.store import open_store
from bems.wire import Reading, sign_readings
from collector.deadletter import DeadLetters
from collector.security import HighWater, Screen
from collector.settings import CollectorSettings
from tests.conftest import need
from tests.edge_support import Edge, queued
from tests.stages import StageProcess, ThreadedSimulator, edge_signer, wait_for, write_fleet

ELEC, WATER, OTHER = "test-hq.main-elec", "test-hq.water", "other-hq.main-elec"


def two_buildings(path: Path, port: int = 1502, poll_period_s: float = 1.0) -> Path:
    dev = {"port": port, "profile": "sdm630"}
    return write_fleet(
        path,
        buildings=[{"id": "test-hq", "name": "Test HQ", "city": "Tehran", "floor_area_m2": 5000},
                   {"id": "other-hq", "name": "Other HQ", "city": "Mashhad", "floor_area_m2": 3000}],
        edges=[{"id": "edge-test", "building": "test-hq", "poll_period_s": poll_period_s},
               {"id": "edge-other", "building": "other-hq"}],
        meters=[{"id": ELEC, "building": "test-hq", "commodity": "electricity", "rated_kw": 200,
                 "device": {**dev, "device_id": 1}},
                {"id": WATER, "building": "test-hq", "commodity": "water",
                 "device": {"port": port, "device_id": 2, "profile": "adam6050"}},
                {"id": OTHER, "building": "other-hq", "commodity": "electricity", "rated_kw": 200,
                 "device": {**dev, "device_id": 3}}])


def reading(meter: str, seq: int, ts: dt.datetime, edge: str = "edge-test") -> Reading:
    values = {"volume_m3": 100 + 0.01 * seq % 1000} if meter == WATER else {"power_w": 1000.0 + seq % 500,
                                                                            "energy_kwh": 1000 + 0.001 * seq}
    return Reading(meter=meter, building=meter.split(".")[0], edge=edge, ts=ts, seq=seq, values=values)


def start_collector(tmp_path: Path, fleet: Path, broker: str, *extra: str) -> StageProcess:
    proc = StageProcess("collector", ["--config", str(fleet), "--broker", broker, "--store",
                                      f"sqlite:///{tmp_path}/readings.db", "--client-id", "c-signed", "--data-dir",
                                      str(tmp_path / "collector-data"), "--state-url",
                                      f"sqlite:///{tmp_path}/state.db", "--batch-interval-s", "0.1", *extra],
                        tmp_path / "collector.log")
    wait_for(lambda: "connected to the broker" in proc.output() or proc.proc.poll() is not None, 20,
             "the collector to connect")
    assert proc.proc.poll() is None, proc.output()
    return proc


class AlertListener:
    def __init__(self, port: int) -> None:
        self.got: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="security-desk")
        self.client.on_message = lambda _c, _u, m: self._add(m.topic, json.loads(m.payload))
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_connect = lambda c, *_: c.subscribe("bems/v1/alerts/security/#", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(10), "the alert listener did not subscribe"

    def _add(self, topic: str, payload: dict) -> None:
        with self.lock:
            self.got.append((topic, payload))

    def messages(self) -> list[tuple[str, dict]]:
        with self.lock:
            return list(self.got)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_forged_replayed_misdirected_and_unsigned_readings_are_refused_and_alerted(mosquitto: Mosquitto,
                                                                                  tmp_path: Path) -> None:
    fleet = two_buildings(tmp_path / "fleet.yaml")
    edge_key = edge_signer(fleet, "edge-test")
    attacker = generate_key(tmp_path / "attacker.key")
    t0 = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    base = 5_000_000  # the edge's sequence, far above the captured message's

    def at(i: int) -> dt.datetime:
        return t0 + dt.timedelta(milliseconds=100 * i)

    good = sign_readings([reading(ELEC if i % 2 else WATER, base + i, at(i)) for i in range(400)], edge_key)
    # a reading passed off as part of a batch the edge really signed: that batch's signature and another's proof
    forged = good[3].model_copy(update={"seq": base + 10_001, "ts": at(10_001),
                                        "values": {**good[3].values, "power_w": 1.0}})
    captured = reading(ELEC, 7, at(10_002)).signed(edge_key)  # taken off the wire long ago, never delivered
    bad = {
        "security:bad_signature": forged,
        "security:unknown_key": reading(ELEC, base + 10_003, at(10_003)).signed(attacker),
        "security:replay": captured,
        "security:wrong_building": reading(OTHER, base + 10_004, at(10_004)).signed(edge_key),
        "security:wrong_edge": reading(ELEC, base + 10_005, at(10_005), edge="edge-other").signed(edge_key),
        "security:unsigned": reading(WATER, base + 10_006, at(10_006)),
    }
    unsigned_again = reading(WATER, base + 10_007, at(10_007))
    messages = [(r.topic, r.to_json()) for r in good[:200]]
    for i, r in enumerate([*bad.values(), unsigned_again]):  # each after some good ones: the high-water is up
        messages.insert(20 + 25 * i, (r.topic, r.to_json()))
    messages += [(r.topic, r.to_json()) for r in good[200:]]

    listener = AlertListener(mosquitto.port)
    collector = start_collector(tmp_path, fleet, mosquitto.url)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="signed-pub")
    pub.max_inflight_messages_set(100)
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    letters = DeadLetters(tmp_path / "collector-data" / "deadletter.db")
    try:
        infos = [pub.publish(t, p, qos=1) for t, p in messages]
        for info in infos:
            info.wait_for_publish(10)
        with open_store(f"sqlite:///{tmp_path}/readings.db") as store:
            wait_for(lambda: store.count() >= len(good), 20, "every good reading")
            wait_for(lambda: letters.count() >= len(bad) + 1, 10, "the refused readings in dead-letter")
            assert store.sequences(ELEC) == [r.seq for r in good if r.meter == ELEC]
            assert store.sequences(WATER) == [r.seq for r in good if r.meter == WATER]
            assert store.sequences(OTHER) == []
            assert store.count() == len(good)
        entries = letters.list(limit=100)
        assert Counter(e.reason for e in entries) == Counter([*bad, "security:unsigned"])
        assert {(e.reason, e.sha256) for e in entries} == {
            *((reason, hashlib.sha256(r.to_json()).hexdigest()) for reason, r in bad.items()),
            ("security:unsigned", hashlib.sha256(unsigned_again.to_json()).hexdigest())}
        by_reason = {e.reason: e for e in entries}
        assert "more than 100000 below the highest seq" in by_reason["security:replay"].detail
        assert "may not send readings for building 'other-hq'" in by_reason["security:wrong_building"].detail

        state = StateDB(f"sqlite:///{tmp_path}/state.db")
        try:
            def alerts() -> list[Alert]:
                with state.session() as s:
                    return list(s.scalars(select(Alert).where(Alert.type.like("security_%"))))
            found = wait_for(lambda: (a := alerts()) and len(a) >= len(bad) and a, 10, "the security alerts")
        finally:
            state.close()
        got = {(a.type, a.building, a.meter): a for a in found}
        assert set(got) == {("security_bad_signature", "test-hq", ELEC), ("security_unknown_key", "test-hq", ELEC),
                            ("security_replay", "test-hq", ELEC), ("security_wrong_building", "other-hq", OTHER),
                            ("security_wrong_edge", "test-hq", ELEC), ("security_unsigned", "test-hq", WATER)}
        assert all(a.status == "open" and a.severity == "critical" for a in found)
        assert got[("security_unsigned", "test-hq", WATER)].excess == 2, "two refusals, one alert"
        assert got[("security_wrong_building", "other-hq", OTHER)].commodity == "electricity"
        published = wait_for(lambda: len(m := listener.messages()) >= len(bad) and m, 10, "alerts on MQTT")
        assert {(t, p["type"]) for t, p in published} == {
            (f"bems/v1/alerts/security/{a.building}", a.type) for a in found}
    finally:
        letters.close()
        pub.loop_stop()
        pub.disconnect()
        listener.close()
        code = collector.stop()
    assert code == 0, collector.output()
    assert "security:bad_signature" in collector.output()


def test_an_edge_restarted_with_a_new_key_delivers_its_old_signed_queue(tmp_path: Path) -> None:
    need("mosquitto", "mosquitto")
    fleet = two_buildings(tmp_path / "fleet.yaml", port=free_port(), poll_period_s=0.2)
    old_kid = edge_signer(fleet).kid
    broker = Mosquitto(tmp_path / "mosquitto")  # not started yet: the edge queues what it reads
    with ThreadedSimulator(fleet):
        edge = Edge(tmp_path / "edge", fleet, broker.url, name="edge-old-key")
        try:
            wait_for(lambda: edge.queue.exists() and len(queued(edge.queue)) >= 20, 20, "readings queued")
        finally:
            assert edge.proc.stop() == 0, edge.proc.output()
        old = [json.loads(p) for (p,) in sqlite3.connect(edge.queue).execute("SELECT payload FROM outbox")]
        assert old and {r["kid"] for r in old} == {old_kid}

        new_key = tmp_path / "edge" / "new.key"
        assert bems_main(["edge", "keygen", "--out", str(new_key), "--edge-id", "edge-test"]) == 0
        new = load_signing_key(new_key)
        doc = yaml.safe_load(fleet.read_text())
        doc["edges"][0]["public_keys"].append(new.public_key)  # rotation: both keys while the queue drains
        fleet.write_text(yaml.safe_dump(doc))
        assert [len(e.public_keys) for e in load_fleet(fleet).edges] == [2, 1]

        broker.start()
        collector = start_collector(tmp_path, fleet, broker.url)
        edge = Edge(tmp_path / "edge", fleet, broker.url, "--signing-key", str(new_key), name="edge-new-key")
        try:
            first_new = edge.first_seq()
            with open_store(f"sqlite:///{tmp_path}/readings.db") as store:
                def stored() -> set[int]:
                    return set(store.sequences(ELEC) + store.sequences(WATER))
                wait_for(lambda: {r["seq"] for r in old} <= stored(), 20, "every reading signed with the old key")
                wait_for(lambda: len([s for s in stored() if s >= first_new]) >= 10, 20,
                         "readings signed with the new key")
            assert f"signing with key {new.kid}" in edge.proc.output()
        finally:
            codes = [edge.proc.stop(), collector.stop()]
            broker.stop()
    assert codes == [0, 0], collector.output()
    letters = DeadLetters(tmp_path / "collector-data" / "deadletter.db")
    try:
        assert letters.count() == 0, letters.counts()
    finally:
        letters.close()


def test_the_high_water_survives_a_restart_and_a_late_copy_within_the_window_passes(tmp_path: Path) -> None:
    fleet_path = two_buildings(tmp_path / "fleet.yaml")
    fleet, key = load_fleet(fleet_path), edge_signer(fleet_path)
    t0 = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    rs = [reading(ELEC, s, t0 + dt.timedelta(seconds=s % 10_000)).signed(key) for s in range(1_000_000, 1_000_300)]

    def screen() -> Screen:
        return Screen(fleet, HighWater(tmp_path / "replay.db", "c1"), window=1000)

    first = screen()
    try:
        assert first.screen(rs) == []  # 300 readings: verified on two threads
    finally:
        first.close()
    again = screen()
    try:
        late = [rs[0], reading(ELEC, 999_300, t0).signed(key)]  # a redelivered copy; one just inside the window
        assert again.screen(late) == []
        refused = again.screen([reading(ELEC, 999_298, t0).signed(key), rs[-1]])
        assert [(r.index, r.kind) for r in refused] == [(0, "security:replay")]
    finally:
        again.close()
    other = Screen(fleet, HighWater(tmp_path / "replay.db", "c2"), window=1000)  # a $share peer
    try:
        assert other.screen([reading(ELEC, 5, t0).signed(key)]) == [], "each collector has its own high-water"
    finally:
        other.close()


def test_keygen_writes_a_private_key_and_prints_only_the_public_half(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "keys" / "edge.key"
    assert bems_main(["edge", "keygen", "--out", str(out), "--edge-id", "edge-test"]) == 0
    printed = capsys.readouterr().out
    signer = load_signing_key(out)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert signer.public_key in printed and signer.kid in printed
    assert f'- "{signer.public_key}"  # kid {signer.kid}' in printed
    assert "PRIVATE" not in printed and out.read_text().splitlines()[1] not in printed
    assert bems_main(["edge", "keygen", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert load_signing_key(out).kid == signer.kid, "an existing key is never replaced without --force"
    assert bems_main(["edge", "keygen", "--out", str(out), "--force"]) == 0
    assert load_signing_key(out).kid != signer.kid


def test_collector_settings_require_signatures_by_default_and_refuse_unsafe_values(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    settings = CollectorSettings(fleet=fleet, data_dir=tmp_path / "d", allow_anonymous_broker=True)
    assert settings.signatures == "required"
    assert settings.resolved_state_url() == f"sqlite:///{(tmp_path / 'd' / 'state.db').resolve()}"
    for bad, words in (({"signatures": "maybe"}, ["signatures", "'required'", "'off'"]),
                       ({"replay_window": 100, "receive_maximum": 5000, "batch_size": 100},
                        ["replay_window (100)", "receive_maximum (5000)"]),
                       ({"state_url": "postgresql+psycopg://bems:changeme@db/bems"}, ["state_url", "placeholder"])):
        with pytest.raises(ValidationError) as exc:
            CollectorSettings(fleet=fleet, allow_anonymous_broker=True, **bad)  # type: ignore[arg-type]
        assert all(w in str(exc.value) for w in words), str(exc.value)
    assert CollectorSettings(fleet=fleet, signatures="off", allow_anonymous_broker=True).signatures == "off"
