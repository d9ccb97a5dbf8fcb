"""The collector: subscribe to every building's readings, validate, write batches, ack after the write.

Messages are acknowledged (manual PUBACK) only once their batch is stored, so a crash between receipt and
write leaves them with the broker, which delivers them again to the same client id.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from bems.errors import PayloadError, StoreError
from bems.fleet import Fleet, load_fleet
from bems.mqtt import ConnectionWatch, make_client
from bems.store import Store, open_store
from bems.wire import READING_SUBSCRIPTION, Reading
from collector.settings import CollectorSettings
from collector.validate import Validator

log = logging.getLogger("bems.collector")


@dataclass(frozen=True)
class Incoming:
    mid: int
    qos: int
    topic: str
    payload: bytes


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.received = Counter("bems_collector_received", "messages received", registry=self.registry)
        self.stored = Counter("bems_collector_stored", "readings stored", registry=self.registry)
        self.duplicates = Counter("bems_collector_duplicates", "readings already stored", registry=self.registry)
        self.rejected = Counter("bems_collector_rejected", "payloads rejected", ["reason"], registry=self.registry)
        self.write_errors = Counter("bems_collector_write_errors", "failed batch writes", registry=self.registry)
        self.pending = Gauge("bems_collector_pending", "messages waiting for a write", registry=self.registry)

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


def _reason_class(reason: str) -> str:
    for key in ("unknown meter", "future", "topic", "JSON", "exceeds"):
        if key in reason:
            return key.replace(" ", "_").lower()
    return "schema"


class Collector:
    def __init__(self, settings: CollectorSettings, fleet: Fleet, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.validator = Validator(fleet, settings.future_tolerance_s)
        self.metrics = Metrics()
        self.inbox: queue.Queue[Incoming] = queue.Queue()
        self.client = make_client(settings.broker, settings.client_id, clean_session=False, manual_ack=True)
        self.watch = ConnectionWatch(self.client, f"collector {settings.client_id}",
                                     on_connected=lambda c: c.subscribe(self.subscription, qos=1))
        self.client.on_message = self._on_message
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name="collector-writer", daemon=True)

    @property
    def subscription(self) -> str:
        group = self.settings.shared_group
        return f"$share/{group}/{READING_SUBSCRIPTION}" if group else READING_SUBSCRIPTION

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self.metrics.received.inc()
        self.inbox.put(Incoming(msg.mid, msg.qos, msg.topic, msg.payload))

    def start(self) -> None:
        self._writer.start()
        self.client.connect_async(self.settings.broker.host, self.settings.broker.port,
                                  keepalive=self.settings.broker.keepalive_s)
        self.client.loop_start()
        log.info("collector %s subscribes to %s and writes to %r", self.settings.client_id, self.subscription,
                 self.store)

    def stop(self) -> None:
        self._stop.set()
        self._writer.join(timeout=10)
        self.client.disconnect()
        self.client.loop_stop()

    def _take_batch(self) -> list[Incoming]:
        batch: list[Incoming] = []
        deadline = time.monotonic() + self.settings.batch_interval_s
        while len(batch) < self.settings.batch_size:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                break
            try:
                batch.append(self.inbox.get(timeout=timeout))
            except queue.Empty:
                break
        return batch

    def _write_loop(self) -> None:
        pending: list[tuple[Incoming, Reading]] = []
        while not self._stop.is_set() or pending:
            for item in self._take_batch():
                try:
                    pending.append((item, self.validator.check(item.topic, item.payload)))
                except PayloadError as exc:
                    self.metrics.rejected.labels(_reason_class(str(exc))).inc()
                    log.warning("rejected payload on %s: %s", item.topic[:200], exc)
                    self._ack(item)
            self.metrics.pending.set(len(pending))
            if not pending:
                continue
            try:
                result = self.store.write([r for _, r in pending])
            except StoreError as exc:
                self.metrics.write_errors.inc()
                log.error("store write of %d readings failed (kept, retrying): %s", len(pending), exc)
                if self._stop.wait(1.0):
                    break
                continue
            self.metrics.stored.inc(result.written)
            self.metrics.duplicates.inc(result.duplicates)
            for item, _ in pending:
                self._ack(item)
            pending = []

    def _ack(self, item: Incoming) -> None:
        if item.qos > 0:
            self.client.ack(item.mid, item.qos)


async def run(settings: CollectorSettings) -> None:
    fleet = load_fleet(settings.fleet)
    store = open_store(settings.store)
    collector = Collector(settings, fleet, store)
    if settings.metrics_port is not None:
        start_http_server(settings.metrics_port, addr="127.0.0.1", registry=collector.metrics.registry)
    collector.start()
    try:
        await asyncio.Event().wait()
    finally:
        await asyncio.to_thread(collector.stop)
        store.close()
