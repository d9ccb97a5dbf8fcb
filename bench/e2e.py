"""End-to-end throughput and latency: simulated meters -> edge -> mosquitto -> collector -> SQLite store.

Prints readings/s stored and the p50/p95 latency from the read (the reading's timestamp) to the moment its batch
was written, beside the raw rate of a bare paho QoS 1 publisher -> subscriber on the same broker in the same run.

    python bench/e2e.py [--meters 200] [--buildings 4] [--period 0.25] [--seconds 20]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bems.fleet import load_fleet
from bems.services import Mosquitto, free_port, wait_port
from bems.store.sqlite import SQLiteStore
from collector.service import Collector
from collector.settings import CollectorSettings
from tests.stages import StageProcess, write_fleet


class TimedStore(SQLiteStore):
    """Notes, for every reading written, how long after its read the write completed."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.latencies: list[float] = []
        self.stored_at: list[tuple[float, int]] = []

    def write(self, readings, flags=None):  # type: ignore[no-untyped-def]
        result = super().write(readings, flags)
        now = dt.datetime.now(dt.UTC)
        self.latencies.extend((now - r.ts).total_seconds() for r in readings)
        self.stored_at.append((time.monotonic(), result.written))
        return result


def raw_paho_rate(port: int, n: int, payload: bytes) -> float:
    got = threading.Event()
    count = 0

    def on_message(_c, _u, _m) -> None:  # type: ignore[no-untyped-def]
        nonlocal count
        count += 1
        if count == n:
            got.set()

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="raw-sub")
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.subscribe("raw/#", qos=1)
    sub.loop_start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="raw-pub")
    pub.max_inflight_messages_set(1000)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    time.sleep(0.5)
    t0 = time.perf_counter()
    for i in range(n):
        pub.publish(f"raw/{i % 50}", payload, qos=1)
    got.wait(120)
    rate = count / (time.perf_counter() - t0)
    for c in (pub, sub):
        c.loop_stop()
        c.disconnect()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meters", type=int, default=200)
    ap.add_argument("--buildings", type=int, default=4)
    ap.add_argument("--period", type=float, default=0.25, help="poll period of every meter, seconds")
    ap.add_argument("--seconds", type=float, default=20)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bems-bench-e2e-"))
    broker = Mosquitto(tmp / "broker")
    broker.start()
    per = args.meters // args.buildings
    buildings, edges, meters, ports = [], [], [], []
    for b in range(args.buildings):
        bid, port = f"bench-b{b}", free_port()
        ports.append(port)
        buildings.append({"id": bid, "name": bid, "city": "Tehran", "floor_area_m2": 5000})
        edges.append({"id": f"edge-b{b}", "building": bid, "poll_period_s": args.period})
        meters += [{"id": f"{bid}.m{i}", "building": bid, "commodity": "electricity", "rated_kw": 100,
                    "device": {"port": port, "device_id": i + 1, "profile": "sdm630"}} for i in range(per)]
    fleet_path = write_fleet(tmp / "fleet.yaml", buildings, meters, edges)
    procs = [StageProcess("simulators", ["--config", str(fleet_path)], tmp / "sim.log")]
    for p in ports:
        wait_port(p, 30)
    store = TimedStore(tmp / "readings.db")
    collector = Collector(CollectorSettings(fleet=fleet_path, broker={"url": broker.url}, client_id="bench",
                                            allow_anonymous_broker=True, data_dir=tmp / "collector-data"),
                          load_fleet(fleet_path), store)
    collector.start()
    collector.watch.connected.wait(10)
    procs += [StageProcess("edge", ["--config", str(fleet_path), "--edge-id", e["id"], "--broker", broker.url],
                           tmp / f"{e['id']}.log") for e in edges]
    warmup = 5.0
    time.sleep(warmup + args.seconds)
    t_end = time.monotonic()
    for p in procs[1:]:
        p.stop()
    time.sleep(1)
    collector.stop()
    procs[0].stop()
    window = [(t, n) for t, n in store.stored_at if t_end - args.seconds <= t <= t_end]
    stored_rate = sum(n for _, n in window) / args.seconds
    lat = np.array(store.latencies[len(store.latencies) // 4:]) * 1000
    offered = args.meters / args.period
    payload = next(iter(store.latest([meters[0]["id"]]).values()))
    sample = len(str(payload.values)) + 150
    raw = raw_paho_rate(broker.port, 20_000, b"x" * sample)
    broker.stop()
    print(f"meters {args.meters} in {args.buildings} buildings, poll period {args.period} s, "
          f"offered {offered:.0f} readings/s, window {args.seconds:.0f} s")
    print(f"stored readings/s        {stored_rate:10.0f}")
    print(f"latency read->stored p50 {np.percentile(lat, 50):10.1f} ms")
    print(f"latency read->stored p95 {np.percentile(lat, 95):10.1f} ms")
    print(f"raw paho QoS1 msg/s      {raw:10.0f}  (payload {sample} bytes, same broker)")
    print(f"ratio stored/offered     {stored_rate / offered:10.2f}")
    print(f"ratio stored/raw paho    {stored_rate / raw:10.2f}")
    rejected = collector.metrics.value("bems_collector_rejected_total")
    print(f"rejected                 {rejected:10.0f}")


if __name__ == "__main__":
    main()
