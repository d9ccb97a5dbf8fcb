"""The edge's counters: plain integers on the hot path, exposed as Prometheus metrics (own registry) at scrape time
and summarised in the retained status topic."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from edge.poller import DeviceState


@dataclass
class Totals:
    published: int = 0  # acknowledged by the broker
    replayed: int = 0  # of those, sent after waiting in the queue through an outage or a restart
    dropped: int = 0  # removed unsent because the queue reached its disk cap
    refused: int = 0  # refused by the broker (MQTT 5 reason code) or by the edge's own topic check
    invalid: int = 0  # readings that could not be rendered
    queue_depth: int = 0
    broker_connected: bool = False


class EdgeCollector(Collector):
    def __init__(self, devices: Iterable[DeviceState], totals: Totals) -> None:
        self.devices, self.totals = list(devices), totals

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        t = self.totals
        reads = CounterMetricFamily("bems_edge_reads", "Polls of a meter by result", labels=["meter", "result"])
        errors = CounterMetricFamily("bems_edge_read_errors", "Failed Modbus requests by kind (timeout, crc, "
                                     "exception, connection, invalid)", labels=["meter", "kind"])
        up = GaugeMetricFamily("bems_edge_device_up", "1 if the meter answered its last poll", labels=["meter"])
        overruns = CounterMetricFamily("bems_edge_poll_overruns", "Poll periods skipped because a poll took too "
                                       "long", labels=["meter"])
        for d in self.devices:
            reads.add_metric([d.id, "ok"], d.reads_ok)
            reads.add_metric([d.id, "failed"], d.reads_failed)
            for kind, n in d.errors.items():
                errors.add_metric([d.id, kind], n)
            up.add_metric([d.id], 1.0 if d.up else 0.0)
            overruns.add_metric([d.id], d.overruns)
        yield from (reads, errors, up, overruns)
        yield GaugeMetricFamily("bems_edge_queue_depth", "Readings stored and not yet acknowledged by the broker",
                                value=t.queue_depth)
        yield CounterMetricFamily("bems_edge_published", "Readings acknowledged by the broker", value=t.published)
        yield CounterMetricFamily("bems_edge_replayed", "Readings acknowledged after waiting in the queue through a "
                                  "broker outage or an edge restart", value=t.replayed)
        yield CounterMetricFamily("bems_edge_dropped", "Readings dropped unsent because the queue reached its disk "
                                  "cap (oldest first)", value=t.dropped)
        yield CounterMetricFamily("bems_edge_refused", "Readings refused by the broker or by the edge's topic check",
                                  value=t.refused)
        yield GaugeMetricFamily("bems_edge_broker_connected", "1 while connected to the broker",
                                value=1.0 if t.broker_connected else 0.0)


def summary(devices: Iterable[DeviceState], totals: Totals) -> dict[str, object]:
    """The counters and each device's health, for the retained status message."""
    devs = list(devices)
    return {
        "devices": {d.id: {"up": d.up, "last_error": None if d.up else d.last_error} for d in devs},
        "counters": {"reads_ok": sum(d.reads_ok for d in devs), "reads_failed": sum(d.reads_failed for d in devs),
                     "published": totals.published, "replayed": totals.replayed, "dropped": totals.dropped,
                     "refused": totals.refused, "queue_depth": totals.queue_depth},
    }


class MetricsServer:
    """``/metrics`` on host:port (0 = any free port) from the edge's own registry."""

    def __init__(self, collector: Collector, host: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.server, self.thread = start_http_server(port, addr=host, registry=self.registry)
        self.port: int = self.server.server_port

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
