"""Readings and publishing shared by the broker benchmarks (bench/collector.py, bench/integrity.py)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import paho.mqtt.client as mqtt

from bems.fleet import load_fleet
from bems.signing import Signer
from bems.wire import Reading, sign_readings
from tests.stages import write_fleet


def make_fleet(tmp: Path, meters: int, buildings: int = 4) -> Path:
    """``meters`` SDM630 meters spread over ``buildings`` buildings with one edge each."""
    per = meters // buildings
    bs = [{"id": f"bench-b{b}", "name": f"b{b}", "city": "Tehran", "floor_area_m2": 5000} for b in range(buildings)]
    es = [{"id": f"edge-b{b}", "building": f"bench-b{b}"} for b in range(buildings)]
    ms = [{"id": f"bench-b{b}.m{i}", "building": f"bench-b{b}", "commodity": "electricity", "rated_kw": 500,
           "device": {"port": 1502, "device_id": i + 1, "profile": "sdm630"}}
          for b in range(buildings) for i in range(per)]
    return write_fleet(tmp / "fleet.yaml", bs, ms, es)


def make_readings(fleet_path: Path, n: int, first_seq: int = 0) -> list[Reading]:
    """Full SDM630 readings (8 fields), round-robin over the meters, one per meter every 5 s, each edge's
    sequence increasing from ``first_seq``."""
    meters = load_fleet(fleet_path).meters
    t0 = dt.datetime.now(dt.UTC) - dt.timedelta(hours=20)
    out = []
    for i in range(n):
        m, k = meters[i % len(meters)], i // len(meters)
        out.append(Reading(meter=m.id, building=m.building, edge=f"edge-{m.building.split('-')[1]}",
                           ts=t0 + dt.timedelta(seconds=5 * k), seq=first_seq + i,
                           values={"voltage_l1_v": 229.5 + (i % 7) * 0.1, "current_l1_a": 40.0 + (i % 11),
                                   "power_l1_w": 9100.0 + i % 300, "power_w": 27500.0 + i % 900,
                                   "frequency_hz": 50.01, "energy_kwh": 182733.4 + 0.04 * k,
                                   "energy_export_kwh": 0.0, "energy_total_kwh": 182733.4 + 0.04 * k}))
    return out


def signed_messages(readings: list[Reading], signers: dict[str, Signer]) -> list[tuple[str, bytes]]:
    """(topic, payload) in the readings' order, each edge's readings signed as its queue signs them: in sequence
    order, ``BATCH_MAX`` under one signature."""
    by_edge: dict[str, list[int]] = {}
    for i, r in enumerate(readings):
        by_edge.setdefault(r.edge, []).append(i)
    out: list[Reading] = list(readings)
    for edge, idx in by_edge.items():
        for i, r in zip(idx, sign_readings([readings[i] for i in idx], signers[edge]), strict=True):
            out[i] = r
    return [(r.topic, r.to_json()) for r in out]


def publish_all(port: int, messages: list[tuple[str, bytes]], client_id: str = "bench-pub") -> None:
    """QoS 1, waiting for every PUBACK."""
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    pub.max_inflight_messages_set(1000)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    infos = [pub.publish(t, p, qos=1) for t, p in messages]
    for info in infos:
        info.wait_for_publish(120)
    pub.loop_stop()
    pub.disconnect()
