"""The collector's acceptance, with real mosquitto, real InfluxDB 1.x and the collector as its own process:

1. SIGKILLed mid-stream and restarted: every sequence number published is stored exactly once.
2. InfluxDB stopped for 30 s under load, then started: nothing lost, nothing doubled; the counters say how much
   was buffered on disk.
3. The InfluxDB v2 write path against a real HTTP server (a proxy to InfluxDB 1.x that can answer 429 with
   Retry-After, 500 and 400): retries and the dead-letter are judged on what was finally stored.
4. Two collectors in a ``$share`` group split the stream and together store everything once.
5. A pulse counter rolling over at 2^32 and a replaced electricity meter: right consumption, flags stored.
6. 10,000 malformed or hostile payloads: no crash, each dead-lettered with its reason, the good ones stored.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import paho.mqtt.client as mqtt
import psutil
import pytest

from bems.errors import StoreError
from bems.services import Influxd, Mosquitto, free_port
from bems.store import Store, open_store
from bems.wire import Reading
from collector.deadletter import DeadLetters
from tests.stages import StageProcess, edge_signer, small_fleet, wait_for

ELEC, WATER = "test-hq.main-elec", "test-hq.water"
WRAP = 2**32 * 0.01  # the ADAM-6050 pulse counter: uint32 pulses of 0.01 m3


# ---------------------------------------------------------------- helpers


def stream(n: int, first_seq: int = 0, t0: dt.datetime | None = None) -> list[Reading]:
    """Readings alternating between the two meters, each with its own sequence number and timestamp."""
    t0 = t0 or dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    out = []
    for i in range(n):
        seq = first_seq + i
        ts = t0 + dt.timedelta(milliseconds=100 * seq)
        if i % 2:
            out.append(Reading(meter=WATER, building="test-hq", edge="edge-test", ts=ts, seq=seq,
                               values={"volume_m3": round(100 + 0.01 * seq, 2)}))
        else:
            out.append(Reading(meter=ELEC, building="test-hq", edge="edge-test", ts=ts, seq=seq,
                               values={"power_w": 1000.0 + seq % 500, "energy_kwh": 1000 + 0.001 * seq}))
    return out


class Publisher:
    """A paho QoS 1 publisher; ``send`` paces messages and ``wait`` blocks until the broker has them all."""

    def __init__(self, port: int, client_id: str = "test-pub") -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.max_inflight_messages_set(1000)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.infos: list[mqtt.MQTTMessageInfo] = []

    def send(self, messages: list[tuple[str, bytes]], rate: float | None = None,
             stop: threading.Event | None = None) -> None:
        t0 = time.monotonic()
        for i, (topic, payload) in enumerate(messages):
            if stop is not None and stop.is_set():
                return
            self.infos.append(self.client.publish(topic, payload, qos=1))
            if rate and i % 20 == 0:
                time.sleep(max(0.0, t0 + i / rate - time.monotonic()))

    def wait(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for info in self.infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        assert all(info.is_published() for info in self.infos), "the broker did not take every message"

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def readings_messages(readings: list[Reading], fleet: Path) -> list[tuple[str, bytes]]:
    """The payloads as the fleet's edge sends them: signed with its key."""
    signer = edge_signer(fleet)
    return [(r.topic, r.signed(signer).to_json()) for r in readings]


def start_collector(tmp_path: Path, fleet: Path, broker: str, store_url: str, client_id: str, *,
                    log: str | None = None, metrics_port: int | None = None, extra: tuple[str, ...] = (),
                    env: dict[str, str] | None = None) -> StageProcess:
    args = ["--config", str(fleet), "--broker", broker, "--store", store_url, "--client-id", client_id,
            "--data-dir", str(tmp_path / "collector-data"), "--batch-interval-s", "0.1", *extra]
    if metrics_port is not None:
        args += ["--metrics-port", str(metrics_port)]
    proc = StageProcess("collector", args, tmp_path / (log or f"{client_id}.log"), env=env)
    wait_for(lambda: "connected to the broker" in proc.output() or proc.proc.poll() is not None, 20,
             f"collector {client_id} to connect")
    assert proc.proc.poll() is None, proc.output()
    return proc


def metrics(port: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text.splitlines():
        if line.startswith("bems_collector_"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def stored_seqs(store: Store) -> list[int]:
    return sorted(store.sequences(ELEC) + store.sequences(WATER))


def count_or_zero(store: Store) -> int:
    try:
        return store.count()
    except StoreError:  # the database may be down or not yet created
        return 0


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    return small_fleet(tmp_path / "fleet.yaml")


# ---------------------------------------------------------------- 1. kill -9


@pytest.mark.parametrize("backend", ["sqlite", "influx"])
def test_sigkill_mid_stream_then_restart_stores_every_sequence_once(backend: str, mosquitto: Mosquitto, fleet: Path,
                                                                   tmp_path: Path,
                                                                   request: pytest.FixtureRequest) -> None:
    store_url = (f"sqlite:///{tmp_path}/readings.db" if backend == "sqlite"
                 else request.getfixturevalue("influxd").url("killtest"))
    n = 6000
    readings = stream(n)
    collector = start_collector(tmp_path, fleet, mosquitto.url, store_url, "c-kill")
    pub = Publisher(mosquitto.port)
    sender = threading.Thread(target=pub.send, args=(readings_messages(readings, fleet), 1500))
    sender.start()
    with open_store(store_url) as store:
        try:
            wait_for(lambda: count_or_zero(store) > 800, 20, "the collector to store a first part")
            collector.kill()
            at_kill = store.count()
            time.sleep(0.5)
            collector = start_collector(tmp_path, fleet, mosquitto.url, store_url, "c-kill", log="c-kill-2.log")
            sender.join(30)
            pub.wait()
            wait_for(lambda: store.count() >= n, 40, f"all {n} readings after the restart")
            time.sleep(0.5)  # anything doubled would show now
            assert 0 < at_kill < n, "the kill did not land mid-stream"
            assert store.count() == n
            assert stored_seqs(store) == list(range(n))
        finally:
            pub.close()
            assert collector.stop() == 0, collector.output()


# ---------------------------------------------------------------- 2. InfluxDB outage


@pytest.mark.slow
def test_influxdb_down_30s_under_load_loses_and_doubles_nothing(mosquitto: Mosquitto, influxd: Influxd,
                                                                fleet: Path, tmp_path: Path) -> None:
    store_url = influxd.url("outage")
    port = free_port()
    collector = start_collector(tmp_path, fleet, mosquitto.url, store_url, "c-outage", metrics_port=port)
    rate, seconds = 250, 40
    readings = stream(rate * seconds)
    pub = Publisher(mosquitto.port)
    sender = threading.Thread(target=pub.send, args=(readings_messages(readings, fleet), rate))
    revived: Influxd | None = None
    sender.start()
    try:
        with open_store(store_url) as store:
            wait_for(lambda: store.count() > 300, 20, "readings before the outage")
        influxd.stop()
        down_at = time.monotonic()
        wait_for(lambda: metrics(port).get("bems_collector_spooled_total", 0) > 0, 15, "buffering on disk")
        time.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
        during = metrics(port)
        revived = Influxd(influxd.workdir, port=influxd.port)
        revived.start()
        sender.join(60)
        pub.wait()
        with open_store(store_url) as store:
            wait_for(lambda: store.count() >= len(readings), 60, "every reading after the outage")
            time.sleep(0.5)
            assert store.count() == len(readings)
            assert stored_seqs(store) == list(range(len(readings)))
        after = wait_for(lambda: (m := metrics(port))["bems_collector_spool_depth"] == 0 and m, 10, "drained")
        # 30 s at 250 readings/s went to disk, and all of it came back out
        assert during["bems_collector_spooled_total"] >= 0.8 * 30 * rate
        assert after["bems_collector_unspooled_total"] == after["bems_collector_spooled_total"]
        assert after["bems_collector_stored_total"] + after["bems_collector_duplicates_total"] >= len(readings)
        assert after['bems_collector_write_errors_total{kind="unavailable"}'] >= 2
        assert "disk buffer drained" in collector.output()
    finally:
        pub.close()
        code = collector.stop()
        if revived is not None:
            revived.stop()
    assert code == 0


# ---------------------------------------------------------------- 3. the v2 write path


class V2Proxy:
    """An InfluxDB 2.x stand-in: ``/api/v2/write`` (token checked) forwarded to InfluxDB 1.x ``/write``,
    ``/query`` forwarded as is; ``plan`` holds the answers to give the next writes of readings instead of
    forwarding, and bodies containing ``poison`` are refused with a 400 like InfluxDB's."""

    def __init__(self, upstream: str, bucket: str, token: str) -> None:
        self.upstream, self.bucket, self.token = upstream, bucket, token
        self.plan: list[tuple[int, dict[str, str]]] = []
        self.poison: bytes | None = None
        self.writes: list[tuple[float, int]] = []  # (time, status) of every write of readings
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Authorization") != f"Token {proxy.token}":
                    return self._answer(401, b'{"code":"unauthorized","message":"unauthorized access"}')
                path, _, query = self.path.partition("?")
                if path == "/query":
                    resp = httpx.post(f"{proxy.upstream}/query?{query}", content=body,
                                      headers={"Content-Type": self.headers.get("Content-Type", "")})
                    return self._answer(resp.status_code, resp.content, {"Content-Type": "application/json"})
                if path != "/api/v2/write" or f"bucket={proxy.bucket}" not in query:
                    return self._answer(404, b'{"code":"not found","message":"path not found"}')
                readings = body.startswith(b"reading,")
                status, headers = proxy.plan.pop(0) if proxy.plan and readings else (0, {})
                if status == 0 and proxy.poison is not None and proxy.poison in body:
                    status = 400
                if status:
                    proxy.writes.append((time.monotonic(), status))
                    message = {429: "too many requests", 500: "internal error",
                               400: 'partial write: field type conflict: input field "power_w" on measurement '
                                    '"reading" is type string, already exists as type float dropped=1'}[status]
                    return self._answer(status, json.dumps({"code": "x", "message": message}).encode(),
                                        {"Content-Type": "application/json", **headers})
                resp = httpx.post(f"{proxy.upstream}/write", params={"db": proxy.bucket, "precision": "ms"},
                                  content=body)
                if readings:
                    proxy.writes.append((time.monotonic(), resp.status_code))
                return self._answer(resp.status_code, resp.content)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def v2proxy(influxd: Influxd) -> Iterator[V2Proxy]:
    httpx.post(f"http://127.0.0.1:{influxd.port}/query", data={"q": 'CREATE DATABASE "v2bucket"'})
    proxy = V2Proxy(f"http://127.0.0.1:{influxd.port}", "v2bucket", "s3cret-T0ken-for-tests")
    yield proxy
    proxy.close()


def test_v2_write_path_retries_429_and_500_and_dead_letters_a_400(mosquitto: Mosquitto, v2proxy: V2Proxy,
                                                                  influxd: Influxd, fleet: Path,
                                                                  tmp_path: Path) -> None:
    url = f"influx2://127.0.0.1:{v2proxy.port}/v2bucket?org=moi"
    v2proxy.plan = [(429, {"Retry-After": "2"}), (500, {})]
    collector = start_collector(tmp_path, fleet, mosquitto.url, url, "c-v2", extra=("--retry-max-s", "1"),
                                env={"BEMS_COLLECTOR_INFLUX_TOKEN": v2proxy.token})
    pub = Publisher(mosquitto.port)
    first, poison, last = stream(200), stream(1, first_seq=1000), stream(200, first_seq=2000)
    v2proxy.poison = b"seq=1000i"
    letters = DeadLetters(tmp_path / "collector-data" / "deadletter.db")
    try:
        with open_store(url, token=v2proxy.token) as store:
            pub.send(readings_messages(first, fleet))
            wait_for(lambda: store.count() >= 200, 20, "the first readings through 429 and 500")
            pub.send(readings_messages(poison, fleet))
            wait_for(lambda: letters.count("store_rejected") >= 1, 10, "the refused batch in dead-letter")
            pub.send(readings_messages(last, fleet))
            pub.wait()
            wait_for(lambda: store.count() >= 400, 20, "the readings after the refusal")
            time.sleep(0.3)
            assert stored_seqs(store) == [*range(200), *range(2000, 2200)]
            assert store.counter_wraps([WATER], "volume_m3")[0] == pytest.approx(WRAP)  # the registry got there
        statuses = [s for _, s in v2proxy.writes]
        assert statuses[:2] == [429, 500] and 204 in statuses and 400 in statuses
        (t429, _), (t500, _), (t_next, _) = v2proxy.writes[:3]
        assert t500 - t429 >= 1.9, "Retry-After: 2 was not honoured"
        assert t_next - t500 >= 0.3, "no backoff after the 500"
        (entry,) = letters.list(reason="store_rejected")
        assert json.loads(entry.payload)["seq"] == 1000
        assert "answered 400" in entry.detail and "field type conflict" in entry.detail
    finally:
        letters.close()
        pub.close()
        code = collector.stop()
    assert code == 0
    assert v2proxy.token not in collector.output()


# ---------------------------------------------------------------- 4. $share


def test_two_collectors_in_a_share_group_split_the_stream_and_store_it_once(mosquitto: Mosquitto, influxd: Influxd,
                                                                           fleet: Path, tmp_path: Path) -> None:
    store_url = influxd.url("shared")
    ports = [free_port(), free_port()]
    collectors = [start_collector(tmp_path, fleet, mosquitto.url, store_url, f"c-share-{i}", metrics_port=p,
                                  extra=("--shared-group", "collectors")) for i, p in enumerate(ports)]
    n = 4000
    pub = Publisher(mosquitto.port)
    try:
        pub.send(readings_messages(stream(n), fleet), rate=2000)
        pub.wait()
        with open_store(store_url) as store:
            wait_for(lambda: store.count() >= n, 30, "the whole stream")
            time.sleep(0.3)
            assert store.count() == n
            assert stored_seqs(store) == list(range(n))
        stored = [metrics(p)["bems_collector_stored_total"] for p in ports]
        received = [metrics(p)["bems_collector_received_total"] for p in ports]
        assert all(s > 0.25 * n for s in stored), stored
        assert sum(stored) == n and sum(received) == n
    finally:
        pub.close()
        codes = [c.stop() for c in collectors]
    assert codes == [0, 0]


def free_port_pair() -> int:
    """A port p with p + 1 free too (the second worker's metrics port)."""
    for _ in range(50):
        p = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 1))
            except OSError:
                continue
        return p
    raise AssertionError("no two consecutive free ports")


def worker_processes(collector: StageProcess) -> list[psutil.Process]:
    """The collector's worker processes (not multiprocessing's resource tracker)."""
    return [p for p in psutil.Process(collector.proc.pid).children() if "spawn_main" in " ".join(p.cmdline())]


def test_workers_split_the_stream_survive_a_killed_worker_and_store_it_once(mosquitto: Mosquitto, fleet: Path,
                                                                             tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path}/workers.db"
    port = free_port_pair()
    collector = start_collector(tmp_path, fleet, mosquitto.url, store_url, "c-workers", metrics_port=port,
                                extra=("--workers", "2"))
    wait_for(lambda: collector.output().count("connected to the broker") >= 2, 20, "both workers to connect")
    workers = worker_processes(collector)
    assert len(workers) == 2
    n = 4000
    messages = readings_messages(stream(n), fleet)
    pub = Publisher(mosquitto.port)
    try:
        pub.send(messages[:n // 2], rate=2000)
        os.kill(workers[0].pid, signal.SIGKILL)  # mid-stream: its unacknowledged share comes again to its successor
        pub.send(messages[n // 2:], rate=2000)
        pub.wait()
        wait_for(lambda: "starting it again" in collector.output(), 20, "the killed worker to be restarted")
        with open_store(store_url) as store:
            wait_for(lambda: count_or_zero(store) >= n, 60, "the whole stream")
            time.sleep(0.3)
            assert store.count() == n
            assert stored_seqs(store) == list(range(n))
        received = [metrics(p)["bems_collector_received_total"] for p in (port, port + 1)]
        assert all(r > 0.1 * n for r in received), received  # both processes took part after the restart
        alive = worker_processes(collector)
        assert len(alive) == 2 and workers[0].pid not in {w.pid for w in alive}
    finally:
        pub.close()
        code = collector.stop()
    assert code == 0, collector.output()
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in alive), "workers left running"


# ---------------------------------------------------------------- 5. rollover and meter swap


@pytest.mark.parametrize("backend", ["sqlite", "influx"])
def test_rollover_and_meter_swap_give_right_consumption_and_flags(backend: str, mosquitto: Mosquitto, fleet: Path,
                                                                  tmp_path: Path,
                                                                  request: pytest.FixtureRequest) -> None:
    store_url = (f"sqlite:///{tmp_path}/readings.db" if backend == "sqlite"
                 else request.getfixturevalue("influxd").url("rollover"))
    t0 = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=6)
    step = dt.timedelta(minutes=15)
    # the pulse counter gains 0.5 m3 per 15 min from 3 m3 below its wrap; the meter is replaced after
    # 2h15 and the new one counts 2 kWh per 15 min from zero, like the old one
    water = [((2**32 - 300 + 50 * i) % 2**32) / 100 for i in range(21)]
    elec = [182733.5 + 2 * i if i <= 9 else 2.0 * (i - 9) for i in range(21)]
    readings = [Reading(meter=WATER, building="test-hq", edge="edge-test", ts=t0 + i * step, seq=i,
                        values={"volume_m3": v}) for i, v in enumerate(water)]
    readings += [Reading(meter=ELEC, building="test-hq", edge="edge-test", ts=t0 + i * step, seq=100 + i,
                         values={"energy_kwh": v, "power_w": 8000.0}) for i, v in enumerate(elec)]
    port = free_port()
    collector = start_collector(tmp_path, fleet, mosquitto.url, store_url, "c-roll", metrics_port=port)
    pub = Publisher(mosquitto.port)
    try:
        pub.send(readings_messages(readings, fleet))
        pub.wait()
        with open_store(store_url) as store:
            wait_for(lambda: store.count() >= len(readings), 20, "the readings")
            h = dt.timedelta(hours=1)
            wc = store.read_consumption([WATER], "volume_m3", t0 + h, t0 + 5 * h, h)
            np.testing.assert_allclose(wc.values[0], [2.0, 2.0, 2.0, 2.0], atol=1e-6)
            ec = store.read_consumption([ELEC], "energy_kwh", t0 + h, t0 + 5 * h, h)
            np.testing.assert_allclose(ec.values[0], [8.0, 8.0, 8.0, 8.0])
            wp = store.points(WATER, "volume_m3", t0, t0 + 6 * h)
            ep = store.points(ELEC, "energy_kwh", t0, t0 + 6 * h)
        wrapped = int(np.argmax(np.diff(wp.values) < 0)) + 1
        assert wp.flag_names()[wrapped] == ("rollover",)
        assert sum(map(bool, wp.flags)) == 1 and wp.quality[wrapped] == 0  # a rollover is normal: still good
        assert ep.flag_names()[10] == ("reset",) and ep.quality[10] == 1  # a swap: uncertain
        assert sum(map(bool, ep.flags)) == 1
        m = metrics(port)
        assert m['bems_collector_flagged_total{flag="rollover"}'] == 1
        assert m['bems_collector_flagged_total{flag="reset"}'] == 1
    finally:
        pub.close()
        assert collector.stop() == 0


# ---------------------------------------------------------------- 6. fuzz


def hostile_payloads(rng: random.Random, good: Reading, n: int) -> list[tuple[str, bytes, str]]:
    """(topic, payload, the reason class the collector must give) for n hostile messages."""
    doc = json.loads(good.to_json())
    topic = good.topic
    ts = good.ts

    def with_(**kw: object) -> bytes:
        return json.dumps({**doc, **kw}).encode()

    def elec(**values: float) -> bytes:
        return with_(values=values)

    makers = [
        lambda: (topic, b"\xff" + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200))), "json"),
        lambda: (topic, good.to_json()[: rng.randrange(1, len(good.to_json()) - 1)], "json"),
        lambda: (topic, b"", "json"),
        lambda: (topic, b"{" * rng.randrange(300, 16_000), "json"),
        lambda: (topic, b'{"v": 1, "meter": "\xff\xfe"}', "json"),
        lambda: (topic, rng.choice([b"null", b"42", b'"text"', b"[]", b"true", b"{}"]), "schema"),
        lambda: (topic, with_(seq=str(rng.randrange(10**6))), "schema"),
        lambda: (topic, with_(seq=rng.choice([2**63, 2**70, -1, 1.5])), "schema"),
        lambda: (topic, with_(values=[1, 2, 3]), "schema"),
        lambda: (topic, elec(power_w=True), "schema"),  # type: ignore[arg-type]
        lambda: (topic, with_(values={"power_w": "12"}), "schema"),
        lambda: (topic, with_(ts=int(ts.timestamp())), "schema"),
        lambda: (topic, with_(ts="2026-11-25T10:00:00"), "schema"),  # no UTC offset
        lambda: (topic, with_(v=2), "schema"),
        lambda: (topic, with_(extra=rng.random()), "schema"),
        lambda: (topic, with_(values={}), "schema"),
        lambda: (topic, with_(values={f"x{i}_w": 1.0 for i in range(100)}), "schema"),
        lambda: (topic, good.to_json().replace(b'"power_w":1000.0', rng.choice([b'"power_w":NaN',
                 b'"power_w":Infinity', b'"power_w":-Infinity', b'"power_w":1e400'])), "schema"),
        lambda: (topic, with_(meter=12345), "schema"),
        lambda: (topic, with_(quality="excellent"), "schema"),
        lambda: (topic, elec(power_w=rng.choice([1e300, -1e300, 3.1e6, 6.5e5])), "implausible"),
        lambda: (topic, elec(energy_kwh=rng.choice([1e15, -5.0])), "implausible"),
        lambda: (topic, elec(voltage_l1_v=rng.choice([-230.0, 1e9])), "implausible"),
        lambda: (topic, elec(frequency_hz=rng.choice([0.0, 500.0])), "implausible"),
        lambda: (topic, elec(volume_m3=1.0), "field"),
        lambda: ("bems/v1/test-hq/water/reading", good.to_json(), "topic"),
        lambda: (f"bems/v1/test-hq/{rng.choice(['ghost', 'x', 'main-elec-2'])}/reading", good.to_json(), "topic"),
        lambda: ("bems/v1/test-hq/ghost/reading", with_(meter="test-hq.ghost"), "unknown_meter"),
        lambda: ("bems/v1/nowhere/main-elec/reading", with_(meter="nowhere.main-elec", building="nowhere"),
                 "unknown_building"),
        lambda: (topic, with_(ts=(ts + dt.timedelta(days=rng.randrange(1, 900))).isoformat()), "future"),
        lambda: (topic, with_(ts="1970-01-01T00:00:00Z"), "too_old"),
        lambda: (topic, b'{"v": 1, "pad": "' + b"x" * rng.randrange(17_000, 200_000) + b'"}', "too_large"),
    ]
    return [rng.choice(makers)() for _ in range(n)]


def test_fuzz_10000_hostile_payloads_are_dead_lettered_and_good_ones_stored(mosquitto: Mosquitto, fleet: Path,
                                                                            tmp_path: Path) -> None:
    rng = random.Random(20261125)
    good = [r.signed(edge_signer(fleet)) for r in stream(1000)]
    template = next(r for r in good if r.meter == ELEC)
    bad = hostile_payloads(rng, template, 10_000)
    messages: list[tuple[str, bytes]] = [(t, p) for t, p, _ in bad]
    for i, r in enumerate(good):  # interleave the good ones
        messages.insert(rng.randrange(len(messages) + 1) if i else 0, (r.topic, r.to_json()))
    store_url = f"sqlite:///{tmp_path}/readings.db"
    port = free_port()
    collector = start_collector(tmp_path, fleet, mosquitto.url, store_url, "c-fuzz", metrics_port=port)
    pub = Publisher(mosquitto.port)
    letters = DeadLetters(tmp_path / "collector-data" / "deadletter.db")
    try:
        pub.send(messages)
        pub.wait()
        wait_for(lambda: letters.count() >= len(bad), 60, "every hostile payload in dead-letter")
        with open_store(store_url) as store:
            wait_for(lambda: store.count() >= len(good), 20, "every good reading")
            time.sleep(0.3)
            assert store.count() == len(good)
            assert stored_seqs(store) == list(range(len(good)))
        assert collector.proc.poll() is None, "the collector died"
        entries = letters.list(limit=100_000)
        assert len(entries) == len(bad)
        assert all(e.detail for e in entries)
        got = Counter((e.topic, e.sha256, e.reason) for e in entries)
        want = Counter((t, hashlib.sha256(p).hexdigest(), kind) for t, p, kind in bad)
        assert got == want, (got - want).most_common(5)
        m = metrics(port)
        assert sum(v for k, v in m.items() if k.startswith("bems_collector_rejected_total")) == len(bad)
    finally:
        letters.close()
        pub.close()
        code = collector.stop()
    assert code == 0
