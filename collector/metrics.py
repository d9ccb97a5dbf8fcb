"""The collector's Prometheus counters (``--metrics-port``); tests and benchmarks read them too."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.received = Counter("bems_collector_received", "messages received", registry=r)
        self.stored = Counter("bems_collector_stored", "readings written to the store", registry=r)
        self.duplicates = Counter("bems_collector_duplicates",
                                  "readings already stored (recent-key cache, and the SQLite store's count)",
                                  registry=r)
        self.rejected = Counter("bems_collector_rejected", "payloads rejected", ["reason"], registry=r)
        self.flagged = Counter("bems_collector_flagged", "readings stored with a quality flag", ["flag"], registry=r)
        self.write_errors = Counter("bems_collector_write_errors", "failed store writes", ["kind"], registry=r)
        self.spooled = Counter("bems_collector_spooled", "readings buffered on disk while the store was down",
                               registry=r)
        self.unspooled = Counter("bems_collector_unspooled", "buffered readings later written to the store",
                                 registry=r)
        self.spool_depth = Gauge("bems_collector_spool_depth", "readings waiting in the disk buffer", registry=r)
        self.pending = Gauge("bems_collector_pending", "messages received and not yet acknowledged", registry=r)
        self.deadlettered = Counter("bems_collector_deadlettered", "messages and readings sent to dead-letter",
                                    registry=r)

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def total(self, name: str) -> float:
        """Sum of a labelled counter over its labels."""
        return sum(s.value for m in self.registry.collect() for s in m.samples if s.name == name)
