"""What signed readings cost at ingest, measured through the real collector on one broker in one run.

1. Signed vs unsigned ingest: N readings wait in mosquitto for the collector's persistent session (QoS 1); the
   collector connects and drains them into a SQLite store. Once as signed readings with ``signatures: required``
   (every signature verified, the replay rule applied), once as the same readings unsigned with
   ``signatures: off``. The two alternate for several rounds (the machine is shared) and the median ratio is the
   figure.
2. Verify throughput: measured by ``bench/verify_throughput.py`` (``measure(quick) -> list[str]``) when present.

Prints figures and ``goal`` lines; exits 0 whether or not a goal is met.

    python bench/integrity.py [--readings 20000] [--rounds 3] [--meters 200] [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

if not __package__:  # run as a script: import the project's packages, not bench/*.py of the same name
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bems.fleet import load_fleet
from bems.services import Mosquitto
from bems.store import open_store
from bench.feed import make_fleet, make_readings, publish_all, signed_messages
from collector.service import Collector
from collector.settings import CollectorSettings
from tests.stages import edge_signer

RECEIVE_MAXIMUM = 20_000


def end_session(port: int, client_id: str) -> None:
    """Connect clean with no expiry: the broker forgets the session, so it queues nothing more for it."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    c.connect("127.0.0.1", port, clean_start=True, properties=props)
    c.disconnect()


def drain(broker: Mosquitto, fleet_path: Path, tmp: Path, name: str, messages: list[tuple[str, bytes]],
          signatures: str) -> tuple[float, int, float, float]:
    """(readings/s from the collector's start until all are stored, readings stored, dead-lettered, CPU time of
    this process per reading in µs: every collector thread, less sensitive than the rate to a busy machine)."""
    client_id = f"bench-integrity-{name}"
    settings = CollectorSettings(fleet=fleet_path, broker={"url": broker.url}, client_id=client_id,
                                 store=f"sqlite:///{tmp}/readings-{name}.db", data_dir=tmp / f"data-{name}",
                                 receive_maximum=RECEIVE_MAXIMUM, signatures=signatures, allow_anonymous_broker=True)
    fleet = load_fleet(fleet_path)
    with open_store(settings.store) as store:
        first = Collector(settings, fleet, store)  # subscribe once, so the broker queues for this session
        first.start()
        first.watch.connected.wait(10)
        time.sleep(0.5)
        first.stop()
        publish_all(broker.port, messages, "bench-integrity-pub")
        collector = Collector(settings, fleet, store)
        n = len(messages)
        t0, cpu0 = time.perf_counter(), time.process_time()
        collector.start()
        done = lambda: collector.metrics.value("bems_collector_stored_total") + collector.metrics.value(  # noqa: E731
            "bems_collector_deadlettered_total")
        while done() < n and time.perf_counter() - t0 < 300:
            time.sleep(0.005)
        rate = collector.metrics.value("bems_collector_stored_total") / (time.perf_counter() - t0)
        cpu_us = (time.process_time() - cpu0) / n * 1e6
        dead = collector.metrics.value("bems_collector_deadlettered_total")
        collector.stop()
        end_session(broker.port, client_id)
        return rate, store.count(), dead, cpu_us


def verify_throughput(quick: bool) -> list[str]:
    """Part 2, kept in its own file: ``bench/verify_throughput.py`` with ``measure(quick) -> list[str]``."""
    path = Path(__file__).with_name("verify_throughput.py")
    if not path.exists():
        return [f"verify throughput: {path.name} is missing, not measured"]
    spec = importlib.util.spec_from_file_location("bench_verify_throughput", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return list(module.measure(quick))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readings", type=int, default=20_000, help="messages queued for each drain")
    ap.add_argument("--rounds", type=int, default=3, help="alternating unsigned/signed rounds (median)")
    ap.add_argument("--meters", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="fewer readings and rounds")
    args = ap.parse_args()
    if args.quick:
        args.readings, args.rounds = min(args.readings, 6000), 1
    tmp = Path(tempfile.mkdtemp(prefix="bems-bench-integrity-"))
    fleet_path = make_fleet(tmp, args.meters)
    readings = make_readings(fleet_path, args.readings, first_seq=1_000_000)
    signers = {e.id: edge_signer(fleet_path, e.id) for e in load_fleet(fleet_path).edges}
    t0 = time.perf_counter()
    signed = signed_messages(readings, signers)
    sign_us = (time.perf_counter() - t0) / len(readings) * 1e6
    unsigned = [(r.topic, r.to_json()) for r in readings]
    size_s = sum(len(p) for _, p in signed) / len(signed)
    size_u = sum(len(p) for _, p in unsigned) / len(unsigned)
    print(f"signed vs unsigned ingest: {len(readings)} queued QoS 1 messages per drain ({size_u:.0f} bytes unsigned, "
          f"{size_s:.0f} signed), {args.meters} meters, {args.rounds} alternating rounds, "
          f"{os.cpu_count()} cores")
    print(f"  signing on the edge (model, canonical bytes, Ed25519, JSON): {sign_us:.0f} µs per reading")
    broker = Mosquitto(tmp / "broker")
    broker.start()
    ratios, on_rates, off_rates, on_cpu, off_cpu = [], [], [], [], []
    try:
        for i in range(args.rounds):
            off, off_stored, off_dead, off_us = drain(broker, fleet_path, tmp, f"off-{i}", unsigned, "off")
            on, on_stored, on_dead, on_us = drain(broker, fleet_path, tmp, f"on-{i}", signed, "required")
            ratios.append(on / off)
            on_rates.append(on)
            off_rates.append(off)
            on_cpu.append(on_us)
            off_cpu.append(off_us)
            print(f"  round {i + 1}: unsigned (signatures off) {off:7.0f} readings/s, {off_us:4.0f} µs CPU each "
                  f"(stored {off_stored}, dead {off_dead:.0f})   signed (required) {on:7.0f} readings/s, "
                  f"{on_us:4.0f} µs CPU each (stored {on_stored}, dead {on_dead:.0f})   ratio {on / off:5.2f}")
    finally:
        broker.stop()
    ratio = float(np.median(ratios))
    print(f"  median unsigned ingest             {np.median(off_rates):10.0f} readings/s "
          f"({np.median(off_cpu):.0f} µs collector CPU per reading)")
    print(f"  median signed + verified ingest    {np.median(on_rates):10.0f} readings/s "
          f"({np.median(on_cpu):.0f} µs collector CPU per reading)")
    print(f"  median ratio signed/unsigned       {ratio:10.2f}")
    print(f"  load average during the run        {os.getloadavg()[0]:10.2f} ({os.cpu_count()} cores; other work "
          "on the machine lowers the ratio: verification needs a free core)")
    for line in verify_throughput(args.quick):  # part 2: bench/verify_throughput.py
        print(line)
    print(f"goal signed_vs_unsigned_ingest {ratio:.2f} target >= 0.7")


if __name__ == "__main__":
    main()
