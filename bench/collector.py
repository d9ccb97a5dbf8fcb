"""Collector throughput, each figure beside its reference measured in the same run.

1. Broker -> store: N signed readings wait in the broker for a persistent session (QoS 1); then the collector
   connects and drains them into a SQLite store (validation, signature check, flags, dedupe, batched writes, acks
   after the write), against a bare paho subscriber (MQTT 5, same receive maximum, QoS 1, auto-ack) that only
   counts the same N messages.
   The two alternate for several rounds and the median ratio is the figure (the machine is shared).
2. Into InfluxDB 1.x: points/s through ``InfluxV1Store.write`` (Reading objects -> line protocol -> /write) in
   batches, against a raw loop POSTing the same points as prebuilt line protocol in the same batches.

Prints figures, ratios, peak RSS and one ``goal`` line per goal; exits 0 whether or not a goal is met.

    python bench/collector.py [--readings 30000] [--mqtt-rounds 5] [--points 300000] [--rounds 3] [--meters 200]
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bems.fleet import load_fleet
from bems.services import Influxd, Mosquitto, find_binary
from bems.store import open_store
from bems.store.influx import InfluxV1Store, lines_body
from bems.wire import READING_SUBSCRIPTION, Reading
from collector.service import Collector
from collector.settings import CollectorSettings
from tests.stages import edge_signer, write_fleet

RECEIVE_MAXIMUM = 20_000


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_fleet(tmp: Path, meters: int, buildings: int = 4) -> Path:
    per = meters // buildings
    bs = [{"id": f"bench-b{b}", "name": f"b{b}", "city": "Tehran", "floor_area_m2": 5000} for b in range(buildings)]
    es = [{"id": f"edge-b{b}", "building": f"bench-b{b}"} for b in range(buildings)]
    ms = [{"id": f"bench-b{b}.m{i}", "building": f"bench-b{b}", "commodity": "electricity", "rated_kw": 500,
           "device": {"port": 1502, "device_id": i + 1, "profile": "sdm630"}}
          for b in range(buildings) for i in range(per)]
    return write_fleet(tmp / "fleet.yaml", bs, ms, es)


def make_readings(fleet_path: Path, n: int) -> list[Reading]:
    """Full SDM630 readings (8 fields), round-robin over the meters, one per meter every 5 s."""
    meters = load_fleet(fleet_path).meters
    t0 = dt.datetime.now(dt.UTC) - dt.timedelta(hours=20)
    out = []
    for i in range(n):
        m = meters[i % len(meters)]
        k = i // len(meters)
        out.append(Reading(meter=m.id, building=m.building, edge=f"edge-{m.building.split('-')[1]}",
                           ts=t0 + dt.timedelta(seconds=5 * k), seq=i,
                           values={"voltage_l1_v": 229.5 + (i % 7) * 0.1, "current_l1_a": 40.0 + (i % 11),
                                   "power_l1_w": 9100.0 + i % 300, "power_w": 27500.0 + i % 900,
                                   "frequency_hz": 50.01, "energy_kwh": 182733.4 + 0.04 * k,
                                   "energy_export_kwh": 0.0, "energy_total_kwh": 182733.4 + 0.04 * k}))
    return out


def publish_all(port: int, messages: list[tuple[str, bytes]]) -> None:
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-pub")
    pub.max_inflight_messages_set(1000)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    infos = [pub.publish(t, p, qos=1) for t, p in messages]
    for info in infos:
        info.wait_for_publish(120)
    pub.loop_stop()
    pub.disconnect()


def v5_client(client_id: str, port: int, clean: bool, on_message=None) -> mqtt.Client:  # type: ignore[no-untyped-def]
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if on_message is not None:
        c.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0 if clean else 3600
    props.ReceiveMaximum = RECEIVE_MAXIMUM
    c.connect("127.0.0.1", port, clean_start=clean, properties=props)
    return c


def bare_drain(port: int, messages: list[tuple[str, bytes]]) -> float:
    """Messages/s a bare paho subscriber drains from its queued persistent session."""
    n = len(messages)
    done = threading.Event()
    count = 0

    def on_message(_c, _u, _m) -> None:  # type: ignore[no-untyped-def]
        nonlocal count
        count += 1
        if count == n:
            done.set()

    c = v5_client("bench-bare", port, clean=False)
    c.subscribe(READING_SUBSCRIPTION, qos=1)
    c.loop_start()
    time.sleep(0.5)
    c.loop_stop()
    c.disconnect()
    publish_all(port, messages)
    t0 = time.perf_counter()
    c = v5_client("bench-bare", port, clean=False, on_message=on_message)
    c.loop_start()
    done.wait(300)
    rate = count / (time.perf_counter() - t0)
    c.loop_stop()
    c.disconnect()
    v5_client("bench-bare", port, clean=True).disconnect()  # end the session so it queues nothing more
    return rate


def collector_drain(broker: Mosquitto, fleet_path: Path, store_url: str, data_dir: Path,
                    messages: list[tuple[str, bytes]]) -> tuple[float, float, float]:
    """Readings/s the collector drains from its queued session into the store, the stored count, and how much
    the process's resident memory grew while it did (MB)."""
    settings = CollectorSettings(fleet=fleet_path, broker={"url": broker.url}, allow_anonymous_broker=True,
                                 client_id="bench-collector", store=store_url, data_dir=data_dir,
                                 receive_maximum=RECEIVE_MAXIMUM)
    fleet = load_fleet(fleet_path)
    with open_store(store_url) as store:
        first = Collector(settings, fleet, store)
        first.start()
        first.watch.connected.wait(10)
        time.sleep(0.5)
        first.stop()
        publish_all(broker.port, messages)
        proc = psutil.Process()
        base_rss = peak_rss = proc.memory_info().rss
        collector = Collector(settings, fleet, store)
        t0 = time.perf_counter()
        collector.start()
        n = len(messages)
        while collector.metrics.value("bems_collector_stored_total") < n and time.perf_counter() - t0 < 300:
            time.sleep(0.005)
            peak_rss = max(peak_rss, proc.memory_info().rss)
        rate = collector.metrics.value("bems_collector_stored_total") / (time.perf_counter() - t0)
        collector.stop()
        v5_client("bench-collector", broker.port, clean=True).disconnect()  # end the session: it queues no more
        return rate, store.count(), (peak_rss - base_rss) / 2**20


def influx_rates(server: Influxd, readings: list[Reading], batch: int, rounds: int) -> tuple[float, float]:
    """(store points/s, raw POST points/s): the best of ``rounds`` alternating runs of each."""
    raw_db, store_db = "bench_raw", "bench_store"
    base = f"http://127.0.0.1:{server.port}"
    http = httpx.Client(base_url=base, timeout=60)
    http.post("/query", data={"q": f'CREATE DATABASE "{raw_db}"'})
    bodies = [lines_body(readings[i:i + batch]) for i in range(0, len(readings), batch)]
    store = InfluxV1Store(server.url(store_db))
    best_raw = best_store = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        for body in bodies:
            r = http.post("/write", params={"db": raw_db, "precision": "ms"}, content=body)
            r.raise_for_status()
        best_raw = max(best_raw, len(readings) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for i in range(0, len(readings), batch):
            store.write(readings[i:i + batch])
        best_store = max(best_store, len(readings) / (time.perf_counter() - t0))
    assert store.count() == len(readings)
    store.close()
    http.close()
    return best_store, best_raw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readings", type=int, default=30_000, help="messages queued for each MQTT drain")
    ap.add_argument("--points", type=int, default=300_000, help="points written to InfluxDB per run")
    ap.add_argument("--meters", type=int, default=200)
    ap.add_argument("--batch", type=int, default=5000, help="points per InfluxDB write")
    ap.add_argument("--rounds", type=int, default=3, help="InfluxDB rounds (best of)")
    ap.add_argument("--mqtt-rounds", type=int, default=5, help="alternating bare/collector rounds (median)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bems-bench-collector-"))
    fleet_path = make_fleet(tmp, args.meters)
    signers = {e.id: edge_signer(fleet_path, e.id) for e in load_fleet(fleet_path).edges}
    messages = [(r.topic, r.signed(signers[r.edge]).to_json()) for r in make_readings(fleet_path, args.readings)]
    size = sum(len(p) for _, p in messages) / len(messages)

    broker = Mosquitto(tmp / "broker")
    broker.start()
    print(f"broker -> store: {len(messages)} queued QoS 1 messages of {size:.0f} bytes, {args.meters} meters, "
          f"{args.mqtt_rounds} alternating rounds")
    ratios, rates, bares, growth = [], [], [], []
    try:
        for i in range(args.mqtt_rounds):
            bare = bare_drain(broker.port, messages)
            ingest, stored, grew = collector_drain(broker, fleet_path, f"sqlite:///{tmp}/readings-{i}.db",
                                                   tmp / f"collector-{i}", messages)
            ratios.append(ingest / bare)
            rates.append(ingest)
            bares.append(bare)
            growth.append(grew)
            print(f"  round {i + 1}: bare paho subscriber {bare:8.0f} msg/s   collector -> SQLite {ingest:8.0f} "
                  f"readings/s (stored {stored})   ratio {ingest / bare:5.2f}")
    finally:
        broker.stop()
    ratio_ingest = float(np.median(ratios))
    print(f"  median bare paho subscriber        {np.median(bares):10.0f} msg/s")
    print(f"  median collector -> SQLite         {np.median(rates):10.0f} readings/s")
    print(f"  median ratio collector/bare        {ratio_ingest:10.2f}")
    print(f"  RSS growth while the collector drained: max {max(growth):.0f} MB; process peak RSS so far "
          f"{peak_rss_mb():.0f} MB (the benchmark holds the messages too)")

    ratio_influx = None
    if find_binary("influxd"):
        server = Influxd(tmp / "influxd")
        server.start()
        try:
            pts = make_readings(fleet_path, args.points)
            store_rate, raw_rate = influx_rates(server, pts, args.batch, args.rounds)
        finally:
            server.stop()
        ratio_influx = store_rate / raw_rate
        print(f"into InfluxDB 1.x: {len(pts)} points (8 fields each), batches of {args.batch}, best of {args.rounds}")
        print(f"  raw line-protocol POST loop        {raw_rate:10.0f} points/s")
        print(f"  InfluxV1Store.write                {store_rate:10.0f} points/s")
        print(f"  ratio store/raw                    {ratio_influx:10.2f}")
    else:
        print("into InfluxDB: skipped, influxd not installed (apt-get install influxdb)")
    print(f"peak RSS                             {peak_rss_mb():10.0f} MB")
    print(f"goal ingest_vs_raw_paho {ratio_ingest:.2f} target >= 0.8")
    if ratio_influx is not None:
        print(f"goal influx_write_vs_raw_post {ratio_influx:.2f} target >= 0.6")


if __name__ == "__main__":
    main()
