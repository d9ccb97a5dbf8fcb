"""Store-and-forward acceptance: a broker outage and an edge killed with SIGKILL lose no reading and duplicate none.

Real mosquitto (persistence on, so the test subscriber's session survives the broker's restart), real pymodbus
simulators, the edge as its own process.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bems.services import Mosquitto
from tests.edge_support import Edge, Subscriber, assert_exactly_once, last_seq, meters_fleet, queued, ts
from tests.stages import ThreadedSimulator, wait_for

TOPIC = "bems/v1/test-hq/+/reading"


def restart(broker: Mosquitto, extra: str = "") -> Mosquitto:
    again = Mosquitto(broker.workdir, port=broker.port, extra=extra)
    again.start()
    return again


@pytest.mark.slow
def test_broker_outage_of_30s_loses_and_duplicates_nothing(mosquitto: Mosquitto, tmp_path: Path) -> None:
    fleet, _ = meters_fleet(tmp_path / "fleet.yaml", 50, per_port=10, period=1.0)
    broker = mosquitto
    with ThreadedSimulator(fleet):
        sub = Subscriber(broker.port, TOPIC, "outage-checker")
        edge = Edge(tmp_path, fleet, broker.url)
        try:
            first = edge.first_seq()
            wait_for(lambda: len(sub.seqs()) >= 150, 20, "live readings before the outage")
            broker.stop()
            down_at = time.time()
            time.sleep(30)
            during = edge.metrics()
            broker = restart(broker)
            up_at = time.time()
            wait_for(lambda: edge.metrics()["bems_edge_queue_depth"] < 60, 40, "the queue to drain after the outage")
            time.sleep(3)  # live readings after the outage
            final = edge.metrics()
        finally:
            code = edge.proc.stop()
            received = sub.all()
            sub.close()
            if broker is not mosquitto:
                broker.stop()
        after = edge.proc.output()
    assert code == 0, after
    assert during["bems_edge_queue_depth"] >= 50 * 25, during  # the readings of the outage waited in the queue
    assert during["bems_edge_broker_connected"] == 0
    remaining = [s for s, _ in queued(edge.queue)]
    resent = assert_exactly_once(received, remaining, first, last_seq(edge.queue), max_resent=50)
    print(f"outage: {len(received)} readings received, {len(set(r['seq'] for r in received))} distinct, "
          f"{resent} resent copies; {during['bems_edge_queue_depth']:.0f} queued during the outage, "
          f"{final['bems_edge_replayed_total']:.0f} replayed, {len(remaining)} left in the queue at the stop")
    readings = {r["seq"]: r for r in received}
    in_outage = [r for r in readings.values() if down_at + 1 < ts(r) < up_at - 1]
    assert len(in_outage) >= 50 * 25, "readings taken during the outage arrive with their original timestamps"
    for meter, rs in sub.by_meter().items():  # arrival order is reading order, per meter
        seqs = [r["seq"] for r in rs]
        assert seqs == sorted(seqs), f"{meter} arrived out of order"
        assert [ts(r) for r in rs] == sorted(ts(r) for r in rs)
    assert final["bems_edge_dropped_total"] == 0
    assert final["bems_edge_replayed_total"] >= len(in_outage)


@pytest.mark.slow
def test_edge_killed_with_readings_queued_loses_nothing(mosquitto: Mosquitto, tmp_path: Path) -> None:
    fleet, _ = meters_fleet(tmp_path / "fleet.yaml", 20, per_port=10, period=0.5)
    broker = mosquitto
    with ThreadedSimulator(fleet):
        sub = Subscriber(broker.port, TOPIC, "kill-checker")
        edge = Edge(tmp_path, fleet, broker.url, name="edge-1")
        try:
            first = edge.first_seq()
            wait_for(lambda: len(sub.seqs()) >= 40, 20, "live readings")
            broker.stop()
            wait_for(lambda: edge.metrics()["bems_edge_queue_depth"] >= 100, 20, "readings to queue up")
            edge.proc.kill()
            killed_at = time.time()
            waiting = queued(edge.queue)
            assert len(waiting) >= 100
            broker = restart(broker)
            again = Edge(tmp_path, fleet, broker.url, name="edge-2")
            assert again.first_seq() > waiting[-1][0]  # the sequence continues after the queued readings
            wait_for(lambda: set(s for s, _ in waiting) <= set(sub.seqs()), 30, "the queued readings to arrive")
            replayed = again.metrics()["bems_edge_replayed_total"]
            time.sleep(1)
        finally:
            code = again.proc.stop() if "again" in locals() else None
            received = sub.all()
            sub.close()
            if broker is not mosquitto:
                broker.stop()
    assert code == 0, again.proc.output()
    assert replayed >= len(waiting)
    resent = assert_exactly_once(received, [s for s, _ in queued(edge.queue)], first, last_seq(edge.queue),
                                 max_resent=20)
    print(f"kill: {len(waiting)} readings queued at the kill, {resent} resent copies")
    by_seq = {r["seq"]: r for r in received}
    assert all(ts(by_seq[s]) < killed_at for s, _ in waiting), "replayed readings keep their original timestamps"
    assert [by_seq[s]["ts"] for s, _ in waiting] == [t for _, t in waiting]


@pytest.mark.slow
def test_backlog_drains_through_a_small_broker_window(tmp_path: Path) -> None:
    """mosquitto's default lets a client have 20 publishes unacknowledged (MQTT 5 Receive Maximum): a backlog must
    still drain much faster than readings come in."""
    fleet, _ = meters_fleet(tmp_path / "fleet.yaml", 40, per_port=20, period=0.1, profile="adam6050")
    window = "max_inflight_messages 20\n"
    broker = Mosquitto(tmp_path / "mosquitto", extra=window)
    broker.start()
    with ThreadedSimulator(fleet):
        edge = Edge(tmp_path, fleet, broker.url)
        try:
            edge.wait_metrics()
            time.sleep(1)
            broker.stop()
            wait_for(lambda: edge.metrics()["bems_edge_queue_depth"] >= 1500, 20, "a backlog of 1,500 readings")
            broker = restart(broker, window)
            t0 = time.monotonic()
            wait_for(lambda: edge.metrics()["bems_edge_queue_depth"] < 100, 20, "the backlog to drain")
            drained = time.monotonic() - t0
            m = edge.metrics()
        finally:
            edge.proc.stop()
            broker.stop()
    assert edge.proc.output().count("broker allows 20 unacknowledged publishes") == 2, "before and after"
    print(f"backlog drained {drained:.1f} s after the broker came back (readings come at 400/s); "
          f"{m['bems_edge_replayed_total']:.0f} replayed")
    assert m["bems_edge_dropped_total"] == 0
