"""Helpers for the edge tests: a checking subscriber, fleets of many meters, an edge process with its metrics."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt

from bems.services import free_port
from tests.stages import StageProcess, signing_key, wait_for, write_fleet

BUILDING = {"id": "test-hq", "name": "Test HQ", "city": "Tehran", "floor_area_m2": 5000}


class Subscriber:
    """QoS 1 subscriber with a persistent session: the broker keeps what arrives while it is away (and across a
    broker restart, with persistence on). Records every reading as it arrives, duplicates included."""

    def __init__(self, port: int, topic: str, client_id: str, **tls: Any) -> None:
        self.lock = threading.Lock()
        self.readings: list[dict[str, Any]] = []
        self.status: dict[str, Any] = {}
        self.connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        if tls.get("username"):
            self.client.username_pw_set(tls["username"], tls.get("password"))
        if tls.get("ca_file"):
            self.client.tls_set(ca_certs=tls["ca_file"])
        self.client.reconnect_delay_set(0.2, 1)
        self.client.on_message = self._on_message
        topics = [(topic, 1), ("bems/v1/+/edge/+/status", 1)]
        self.client.on_connect = lambda c, *_: (c.subscribe(topics), self.connected.set())
        self.client.on_disconnect = lambda *_: self.connected.clear()
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()
        wait_for(self.connected.is_set, 10, "the test subscriber to connect")
        time.sleep(0.2)  # the SUBACK

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        payload = json.loads(msg.payload)
        with self.lock:
            if msg.topic.endswith("/status"):
                self.status[msg.topic] = payload
            else:
                self.readings.append(payload)

    def all(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.readings)

    def seqs(self) -> list[int]:
        with self.lock:
            return [r["seq"] for r in self.readings]

    def by_meter(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = defaultdict(list)
        with self.lock:
            for r in self.readings:
                out[r["meter"]].append(r)
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def meters_fleet(path: Path, n: int, per_port: int = 10, period: float = 1.0, profile: str = "sdm630",
                 edge_extra: dict[str, Any] | None = None, **device: Any) -> tuple[Path, list[int]]:
    """``n`` meters of one building, ``per_port`` behind each simulator port (an RS-485 gateway or a meter)."""
    ports: list[int] = []
    while len(ports) < (n + per_port - 1) // per_port:  # free_port may hand out a port twice
        if (port := free_port()) not in ports:
            ports.append(port)
    meters = [{"id": f"test-hq.m{i:03d}", "building": "test-hq", "commodity": "electricity", "rated_kw": 100,
               "device": {"port": ports[i // per_port], "device_id": i % per_port + 1, "profile": profile, **device}}
              for i in range(n)]
    edge = {"id": "edge-test", "building": "test-hq", "poll_period_s": period, **(edge_extra or {})}
    return write_fleet(path, [BUILDING], meters, [edge]), ports


class Edge:
    """``python -m edge`` for the test fleet, with its metrics endpoint on a free port."""

    def __init__(self, tmp: Path, fleet: Path, broker_url: str, *args: str, name: str = "edge",
                 env: dict[str, str] | None = None, edge_id: str = "edge-test") -> None:
        self.metrics_port = free_port()
        tmp.mkdir(parents=True, exist_ok=True)
        self.state_dir = tmp / "state"
        self.queue = self.state_dir / edge_id / "queue.db"
        self.proc = StageProcess("edge", ["--config", str(fleet), "--edge-id", edge_id, "--broker", broker_url,
                                          "--state-dir", str(self.state_dir), "--signing-key",
                                          str(signing_key(fleet, edge_id)), "--metrics-port",
                                          str(self.metrics_port), "--status-interval-s", "1", *args],
                                 tmp / f"{name}.log", env=env)

    def metrics(self) -> dict[str, float]:
        """Sample name with labels -> value, e.g. ``bems_edge_read_errors_total{kind="crc",meter="x"}``."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).text
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                out[key] = float(value)
        return out

    def wait_metrics(self, timeout: float = 15) -> dict[str, float]:
        def get() -> dict[str, float] | None:
            if self.proc.proc.poll() is not None:
                raise AssertionError(f"edge exited with {self.proc.proc.returncode}:\n{self.proc.output()}")
            try:
                return self.metrics()
            except httpx.HTTPError:
                return None
        return wait_for(get, timeout, "the edge's metrics endpoint")

    def first_seq(self) -> int:
        """The first sequence number of this run, from the start-up log line."""
        m = wait_for(lambda: re.search(r"last seq (\d+)", self.proc.output()), 10, "the edge's start-up line")
        return int(m.group(1)) + 1


def queued(queue: Path) -> list[tuple[int, str]]:
    """(seq, ts) of the readings still in an edge's queue file."""
    db = sqlite3.connect(queue)
    try:
        return [(seq, json.loads(p)["ts"]) for seq, p in db.execute("SELECT seq, payload FROM outbox ORDER BY seq")]
    finally:
        db.close()


def last_seq(queue: Path) -> int:
    db = sqlite3.connect(queue)
    try:
        return db.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()[0]
    finally:
        db.close()


def ts(reading: dict[str, Any]) -> float:
    return datetime.fromisoformat(reading["ts"].replace("Z", "+00:00")).timestamp()


def assert_exactly_once(readings: list[dict[str, Any]], remaining: list[int], first: int, last: int,
                        max_resent: int) -> int:
    """Every sequence number first..last arrived or still waits in the queue (never both), first copies in sequence
    order. QoS 1 is at least once: a reading the broker took just before it stopped, without its PUBACK reaching the
    edge, comes again. Such a copy must be the same reading resent, at or below the highest sequence number seen, so
    a consumer that keeps the highest seq per edge (or a store keyed by meter and time) keeps each reading once.
    Returns the number of resent copies."""
    seen: dict[int, dict[str, Any]] = {}
    highest, resent, out_of_order = first - 1, 0, []
    for r in readings:  # arrival order
        seq = r["seq"]
        if seq in seen:
            assert r == seen[seq], f"seq {seq} arrived twice with different content: {seen[seq]} / {r}"
            assert seq <= highest
            resent += 1
            continue
        seen[seq] = r
        if seq < highest:
            out_of_order.append(seq)
        highest = max(highest, seq)
    assert not out_of_order, f"{len(out_of_order)} readings arrived after a later one, e.g. {out_of_order[:10]}"
    assert resent <= max_resent, f"{resent} readings arrived twice (at most {max_resent} may be in flight)"
    both = set(seen) & set(remaining)
    assert not both, f"{len(both)} readings arrived and are still queued, e.g. {sorted(both)[:10]}"
    missing = sorted(set(range(first, last + 1)) - set(seen) - set(remaining))
    assert not missing, f"{len(missing)} of {last - first + 1} sequence numbers never arrived, e.g. {missing[:10]}"
    stray = sorted(set(seen) - set(range(first, last + 1)))
    assert not stray, f"sequence numbers outside {first}..{last}: {stray[:10]}"
    return resent
