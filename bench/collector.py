"""Collector throughput, each figure beside its reference measured in the same run.

1. Broker -> store: the collector as a user runs it (``python -m collector --workers N``, N the recommended count
   for the machine: one process per CPU in a ``$share`` group) takes N signed readings from the broker into a
   SQLite store (validation, signature check, flags, dedupe, batched writes, acks after the write), against ONE
   bare paho subscriber process (MQTT 5, same receive maximum, QoS 1, auto-ack) that only counts the same
   messages, on the same broker. Each is its own process, connected and subscribed, then stopped (SIGSTOP) while
   the messages are published, and timed from SIGCONT to the last message counted (bare) or stored (collector).
   ``--workers 1`` is measured beside it. They alternate for several rounds and the median ratio is the figure
   (the machine is shared).
2. Into InfluxDB 1.x: points/s through ``InfluxV1Store.write`` (Reading objects -> line protocol -> /write) in
   batches, against a raw loop POSTing the same points as prebuilt line protocol in the same batches.

Prints figures, ratios, peak RSS and one ``goal`` line per goal; exits 0 whether or not a goal is met.

    python bench/collector.py [--readings 30000] [--mqtt-rounds 5] [--points 300000] [--rounds 3] [--meters 200]
                               [--workers N]
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
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
from bems.store.influx import InfluxV1Store, lines_body
from bems.wire import READING_SUBSCRIPTION, Reading
from bench.feed import make_fleet, make_readings, publish_all, signed_messages
from collector.workers import recommended_workers
from tests.stages import edge_signer

ROOT = Path(__file__).resolve().parents[1]
RECEIVE_MAXIMUM = 20_000


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def v5_client(client_id: str, port: int, clean: bool, on_message=None) -> mqtt.Client:  # type: ignore[no-untyped-def]
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if on_message is not None:
        c.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0 if clean else 3600
    props.ReceiveMaximum = RECEIVE_MAXIMUM
    c.connect("127.0.0.1", port, clean_start=clean, properties=props)
    return c


def paused(procs: list[psutil.Process]) -> contextlib.AbstractContextManager[None]:
    """SIGSTOP the subscriber processes for the duration: they stay connected, the broker queues for them."""

    @contextlib.contextmanager
    def cm() -> Iterator[None]:
        for p in procs:
            p.suspend()
        try:
            yield
        finally:
            for p in procs:
                if p.is_running():
                    p.resume()
    return cm()


def bare_subscriber(port: int, n: int) -> None:
    """The reference, run as its own process (``--bare-subscriber``): paho, MQTT 5, QoS 1, auto-ack, counting.
    Prints ``ready`` once subscribed, then the wall-clock time at which the n-th message arrived."""
    done = threading.Event()
    count = 0
    cpu0 = 0.0

    def on_message(_c, _u, _m) -> None:  # type: ignore[no-untyped-def]
        nonlocal count
        count += 1
        if count == n:
            print(f"done {time.time():.6f} {time.process_time() - cpu0:.6f}", flush=True)
            done.set()

    c = v5_client("bench-bare", port, clean=True, on_message=on_message)
    c.subscribe(READING_SUBSCRIPTION, qos=1)
    c.loop_start()
    time.sleep(0.5)
    cpu0 = time.process_time()
    print("ready", flush=True)
    done.wait(600)
    c.loop_stop()
    c.disconnect()


def bare_drain(port: int, messages: list[tuple[str, bytes]]) -> tuple[float, float]:
    """Messages/s a bare paho subscriber process takes from the broker, counted from the moment it may run, and its
    CPU time per message (µs)."""
    proc = subprocess.Popen([sys.executable, __file__, "--bare-subscriber", str(port), str(len(messages))],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with paused([psutil.Process(proc.pid)]):
            publish_all(port, messages)
            t0 = time.time()
        line = proc.stdout.readline().split()
        return len(messages) / (float(line[1]) - t0), float(line[2]) / len(messages) * 1e6
    finally:
        proc.wait(30)


def stored(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute("SELECT count(*) FROM reading").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def collector_drain(broker: Mosquitto, fleet_path: Path, db: Path, data_dir: Path, workers: int,
                    messages: list[tuple[str, bytes]]) -> tuple[float, int, float, float]:
    """Readings/s ``python -m collector --workers N`` takes from the broker into SQLite, counted from the moment its
    processes may run until every reading is in the store; the stored count; the workers' peak RSS (MB, summed);
    their CPU time per reading (µs, summed)."""
    log = data_dir / "collector.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "collector", "--config", str(fleet_path), "--broker", broker.url,
                                 "--store", f"sqlite:///{db}", "--data-dir", str(data_dir), "--client-id",
                                 "bench-collector", "--receive-maximum", str(RECEIVE_MAXIMUM), "--workers",
                                 str(workers), "--allow-anonymous-broker", "--log-level", "INFO"],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while log.read_text().count("connected to the broker") < workers:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the collector did not start:\n{log.read_text()}")
            time.sleep(0.05)
        top = psutil.Process(proc.pid)
        procs = [top] if workers == 1 else [p for p in top.children() if "spawn_main" in " ".join(p.cmdline())]
        n = len(messages)
        peak = 0
        with paused(procs):
            publish_all(broker.port, messages)
            cpu0 = sum(sum(p.cpu_times()[:2]) for p in procs)
            t0 = time.time()
        count = 0
        while count < n and time.time() - t0 < 300:
            time.sleep(0.005)
            count = stored(db)
            peak = max(peak, sum(p.memory_info().rss for p in procs))
        rate = count / (time.time() - t0)
        cpu = (sum(sum(p.cpu_times()[:2]) for p in procs) - cpu0) / n * 1e6
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    ids = ["bench-collector"] if workers == 1 else [f"bench-collector-{i}" for i in range(1, workers + 1)]
    for client_id in ids:  # end the sessions: they queue nothing more
        v5_client(client_id, broker.port, clean=True).disconnect()
    return rate, stored(db), peak / 2**20, cpu


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
    ap.add_argument("--workers", type=int, default=recommended_workers(),
                    help="collector processes (default: the recommended count for this machine, one per CPU)")
    ap.add_argument("--bare-subscriber", nargs=2, type=int, metavar=("PORT", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare_subscriber:
        bare_subscriber(*args.bare_subscriber)
        return
    tmp = Path(tempfile.mkdtemp(prefix="bems-bench-collector-"))
    fleet_path = make_fleet(tmp, args.meters)
    signers = {e.id: edge_signer(fleet_path, e.id) for e in load_fleet(fleet_path).edges}
    messages = signed_messages(make_readings(fleet_path, args.readings), signers)
    size = sum(len(p) for _, p in messages) / len(messages)

    broker = Mosquitto(tmp / "broker")
    broker.start()
    print(f"broker -> store: {len(messages)} QoS 1 messages of {size:.0f} bytes, {args.meters} meters, "
          f"{args.mqtt_rounds} alternating rounds on {recommended_workers()} CPUs. Each subscriber is its own process, "
          "connected and subscribed, stopped (SIGSTOP) while the messages are published, then timed from SIGCONT "
          "until the last message is counted (bare) or stored (collector).")
    print(f"  compared: `python -m collector --workers {args.workers}` ({args.workers} process(es) in a $share group: "
          "validation, flags, dedupe, batched SQLite writes, PUBACK after the write) against ONE bare paho subscriber "
          "process (MQTT 5, same receive maximum, QoS 1, auto-ack) that only counts; `--workers 1` is shown beside")
    ratios, rates, singles, bares, rss, cpus = [], [], [], [], [], []
    try:
        for i in range(args.mqtt_rounds):
            bare, bare_cpu = bare_drain(broker.port, messages)
            ingest, count, peak, cpu = collector_drain(broker, fleet_path, tmp / f"readings-{i}.db",
                                                       tmp / f"collector-{i}", args.workers, messages)
            single, count1, _, cpu1 = (ingest, count, peak, cpu) if args.workers == 1 else collector_drain(
                broker, fleet_path, tmp / f"readings-{i}-single.db", tmp / f"collector-{i}-single", 1, messages)
            ratios.append(ingest / bare)
            rates.append(ingest)
            singles.append(single)
            bares.append(bare)
            rss.append(peak)
            cpus.append((bare_cpu, cpu, cpu1))
            print(f"  round {i + 1}: bare paho {bare:7.0f} msg/s   collector x{args.workers} {ingest:7.0f} readings/s "
                  f"(stored {count})   ratio {ingest / bare:4.2f}   collector x1 {single:7.0f} (stored {count1}) "
                  f"ratio {single / bare:4.2f}")
    finally:
        broker.stop()
    ratio_ingest = float(np.median(ratios))
    print(f"  median bare paho subscriber        {np.median(bares):10.0f} msg/s")
    print(f"  median collector x{args.workers} -> SQLite      {np.median(rates):10.0f} readings/s")
    print(f"  median collector x1 -> SQLite      {np.median(singles):10.0f} readings/s "
          f"(ratio {np.median(singles) / np.median(bares):.2f})")
    print(f"  median ratio collector/bare        {ratio_ingest:10.2f}")
    bare_cpu, cpu, cpu1 = np.median(np.array(cpus), axis=0)
    print(f"  median CPU per message: bare paho {bare_cpu:.0f} µs, collector x{args.workers} {cpu:.0f} µs (all its "
          f"processes), collector x1 {cpu1:.0f} µs")
    print(f"  peak RSS of the collector x{args.workers} processes while draining: {max(rss):.0f} MB (summed)")

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
    print(f"peak RSS of the benchmark process    {peak_rss_mb():10.0f} MB")
    print(f"goal ingest_vs_raw_paho {ratio_ingest:.2f} target >= 0.8")
    if ratio_influx is not None:
        print(f"goal influx_write_vs_raw_post {ratio_influx:.2f} target >= 0.6")


if __name__ == "__main__":
    main()
