"""The collector: subscribe to every building's readings, validate, write batches, ack after the write.

MQTT 5 with a persistent session (clean start off, a session expiry) so the broker queues what arrives while
the collector is away, and a Receive Maximum so the broker may have a whole batch in flight unacknowledged
(mosquitto's default window for MQTT 3.1.1 clients is 20 messages). A message is acknowledged (manual PUBACK)
only once its reading is durable: in the store, in the disk buffer, or, when refused, in the dead-letter store.
A crash before that leaves the message with the broker, which delivers it again to the same client id; the
store's (meter, time) key makes the second write harmless. With ``signatures: required`` (the default) every
reading must also carry a valid signature of its edge and stay within the replay window (collector/security.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import logging
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import start_http_server

from bems.errors import StoreError
from bems.fleet import Fleet, load_fleet
from bems.mqtt import ConnectionWatch, make_client
from bems.store import Store, open_store
from bems.store.base import to_ms
from bems.wire import READING_SUBSCRIPTION, Reading
from collector.deadletter import DeadLetterError, DeadLetters, Letter
from collector.metrics import Metrics
from collector.quality import DOUBTFUL, CounterTracker
from collector.security import HighWater, Screen, SecurityAlerts
from collector.settings import CollectorSettings
from collector.spool import Spool
from collector.validate import Rejected, Validator
from collector.writer import Backoff, BatchWriter, RecentKeys

log = logging.getLogger("bems.collector")
STOP_GRACE_S = 5.0  # on SIGTERM, keep writing what already arrived for this long
BURST_GAP_S = 0.02  # no message for this long after some arrived: the burst is over, write the batch


class Incoming(NamedTuple):  # made in paho's network thread for every message: a tuple is cheapest
    mid: int
    qos: int
    topic: str
    payload: bytes
    session: int  # which connection delivered it: a packet id is only valid on its own connection


@dataclass
class Batch:
    items: list[Incoming]
    readings: list[Reading]
    flags: list[int]
    ts_ms: list[int]


class Collector:
    def __init__(self, settings: CollectorSettings, fleet: Fleet, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.metrics = Metrics()
        data_dir = settings.resolved_data_dir()
        self.deadletters = DeadLetters(data_dir / "deadletter.db", collector=settings.client_id,
                                       max_rows=settings.deadletter_max_rows)
        safe_id = re.sub(r"[^A-Za-z0-9_.-]", "_", settings.client_id)
        self.spool = Spool(data_dir / f"spool-{safe_id}.db", settings.spool_max_readings) \
            if settings.spool_max_readings else None
        max_age = settings.raw_retention_days * 86400 if settings.raw_retention_days else None
        self.validator = Validator(fleet, settings.future_tolerance_s, settings.power_limit_factor, max_age)
        self.tracker = CounterTracker(fleet, seed=store.latest)
        self.writer = BatchWriter(store, self.deadletters, self.metrics, spool=self.spool,
                                  recent=RecentKeys(settings.dedupe_window),
                                  backoff=Backoff(max_s=settings.retry_max_s), drain_batch=settings.batch_size)
        self.inbox: queue.SimpleQueue[Incoming] = queue.SimpleQueue()
        self.client = make_client(settings.broker, settings.client_id, manual_ack=True, protocol=mqtt.MQTTv5)
        self.watch = ConnectionWatch(self.client, f"collector {settings.client_id}", on_connected=self._on_connected)
        self.client.on_message = self._on_message
        self.security = self._security(settings, fleet, data_dir)
        self._session = 0
        self._held = 0
        self._rejections_logged: dict[str, int] = {}
        self._counters_registered = False
        self._next_registration = 0.0
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name="collector-writer", daemon=True)
        self._maintainer = threading.Thread(target=self._maintenance_loop, name="collector-maintenance", daemon=True)

    def _security(self, settings: CollectorSettings, fleet: Fleet, data_dir: Path) -> Screen | None:
        """Signature and replay checks, unless ``signatures: off`` was chosen explicitly."""
        if settings.signatures == "off":
            log.warning("signatures: off: readings are stored without checking who made them")
            return None
        alerts = SecurityAlerts(settings.resolved_state_url(), fleet,
                                lambda topic, payload: self.client.publish(topic, payload, qos=1))
        return Screen(fleet, HighWater(data_dir / "replay.db", settings.client_id), settings.replay_window, alerts)

    @property
    def subscription(self) -> str:
        group = self.settings.shared_group
        return f"$share/{group}/{READING_SUBSCRIPTION}" if group else READING_SUBSCRIPTION

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.settings.session_expiry_s
        props.ReceiveMaximum = self.settings.receive_maximum
        props.MaximumPacketSize = self.settings.max_packet_bytes
        return props

    def _on_connected(self, client: mqtt.Client) -> None:
        self._session += 1
        client.subscribe(self.subscription, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self.inbox.put(Incoming(msg.mid, msg.qos, msg.topic, msg.payload, self._session))  # counted by the writer

    def start(self) -> None:
        self._register_counters()
        self._writer.start()
        if self.settings.raw_retention_days and self.settings.maintenance:
            self._maintainer.start()
        self.client.connect_async(self.settings.broker.host, self.settings.broker.port,
                                  keepalive=self.settings.broker.keepalive_s, clean_start=False,
                                  properties=self._connect_properties())
        self.client.loop_start()
        log.info("collector %s subscribes to %s and writes to %r (disk buffer: %s)", self.settings.client_id,
                 self.subscription, self.store, self.spool.path if self.spool is not None else "off")

    def stop(self) -> None:
        self._stop.set()
        self._writer.join(timeout=STOP_GRACE_S + 10)
        if self._maintainer.is_alive():
            self._maintainer.join(timeout=30)
        if self.security is not None:
            self.security.close()  # records (and publishes) the last security alerts
        self.client.disconnect()
        self.client.loop_stop()
        if self.spool is not None:
            self.spool.close()
        self.deadletters.close()

    def _register_counters(self) -> None:
        if self._counters_registered or time.monotonic() < self._next_registration:
            return
        self._next_registration = time.monotonic() + 30
        try:
            self.store.register_counters(self.tracker.registry())
            self._counters_registered = True
        except StoreError as exc:
            if exc.retryable:  # the readings' writes wait too, as long as the server asked
                self.writer.backoff.failed(getattr(exc, "retry_after", None))
            log.warning("cannot record the counter registry yet (%s); will retry", exc)

    def _take_batch(self) -> list[Incoming]:
        """Up to batch_size messages, waiting at most batch_interval_s for them, and no longer than BURST_GAP_S
        once the stream pauses: the end of a burst (or of a backlog) is written now, not at the deadline."""
        batch: list[Incoming] = []
        size = self.settings.batch_size
        deadline = time.monotonic() + self.settings.batch_interval_s
        get, get_nowait = self.inbox.get, self.inbox.get_nowait
        while len(batch) < size:
            try:
                batch.append(get_nowait())
                continue
            except queue.Empty:
                pass
            timeout = deadline - time.monotonic()
            if batch:
                timeout = min(timeout, BURST_GAP_S)
            if timeout <= 0:
                break
            try:
                batch.append(get(timeout=timeout))
            except queue.Empty:
                break
        return batch

    def _triage(self, items: list[Incoming]) -> Batch:
        """Validate: refused messages are dead-lettered and acknowledged here; the rest become readings."""
        self.metrics.received.inc(len(items))
        good: list[Incoming] = []
        readings: list[Reading] = []
        letters: list[Letter] = []
        refused: list[Incoming] = []
        window = self.validator.time_window()
        check = self.validator.check
        for item in items:
            try:
                readings.append(check(item.topic, item.payload, window=window))
                good.append(item)
            except Rejected as exc:
                letters.append(Letter(item.topic, item.payload, exc.kind, str(exc)))
                refused.append(item)
                self._log_rejection(item.topic, exc)
        if self.security is not None and readings:  # signatures and replays: collector/security.py
            refusals = self.security.screen(readings)
            for r in refusals:
                letters.append(Letter(good[r.index].topic, good[r.index].payload, r.kind, r.message))
                refused.append(good[r.index])
                self._log_rejection(good[r.index].topic, Rejected(r.kind, r.message))
            for r in reversed(refusals):
                del good[r.index], readings[r.index]
        if letters:
            try:
                self.deadletters.add(letters)
            except DeadLetterError as exc:
                log.error("%s; the refused messages stay unacknowledged", exc)
            else:
                self.metrics.deadlettered.inc(len(letters))
                self._ack(refused)
        ts_ms = [to_ms(r.ts) for r in readings]
        flags = self.tracker.flags(readings, ts_ms)
        for i, bits in enumerate(flags):
            if bits & DOUBTFUL and readings[i].quality == "good":
                readings[i] = readings[i].model_copy(update={"quality": "uncertain"})
        return Batch(good, readings, flags, ts_ms)

    def _log_rejection(self, topic: str, exc: Rejected) -> None:
        self.metrics.rejected.labels(exc.kind).inc()
        n = self._rejections_logged[exc.kind] = self._rejections_logged.get(exc.kind, 0) + 1
        if n == 1 or n % 1000 == 0:
            log.warning("rejected payload on %s (%s, %d so far; see `bems deadletter list`): %s",
                        topic[:200], exc.kind, n, exc)
        else:
            log.debug("rejected payload on %s (%s): %s", topic[:200], exc.kind, exc)

    def _write_loop(self) -> None:
        held: Batch | None = None
        stop_by: float | None = None
        while True:
            if self._stop.is_set() and stop_by is None:
                stop_by = time.monotonic() + STOP_GRACE_S
            if held is None:
                if stop_by is not None and (self.inbox.empty() or time.monotonic() > stop_by):
                    break
                items = self._take_batch()
                held = self._triage(items) if items else None
            if held is not None:
                if self.writer.submit(held.readings, held.flags, held.ts_ms):
                    self._ack(held.items)
                    held = None
                elif stop_by is not None:
                    break  # store down and disk buffer full: the broker keeps these for our next session
                else:
                    self._stop.wait(min(max(self.writer.backoff.remaining, 0.05), 1.0))
            self._held = len(held.items) if held else 0
            self.metrics.pending.set(self.inbox.qsize() + self._held)
            self.writer.drain()
            if not self._counters_registered and self.writer.backoff.ready:
                self._register_counters()  # at most every 30 s until it succeeds

    def _maintenance_loop(self) -> None:
        """Raw readings older than the retention are rolled up and deleted (SQLite), or the InfluxDB retention
        policy and continuous query are kept in place; first at start, then every maintenance interval."""
        keep = dt.timedelta(days=self.settings.raw_retention_days or 0)
        while True:
            try:
                deleted = self.store.enforce_retention(keep)
                if deleted:
                    log.info("retention: %d raw readings older than %s rolled up and deleted", deleted, keep)
            except StoreError as exc:
                log.warning("retention task failed (%s); next try in %.0f s", exc,
                            self.settings.maintenance_interval_s)
            if self._stop.wait(self.settings.maintenance_interval_s):
                return

    def _ack(self, items: list[Incoming]) -> None:
        session = self._session
        for item in items:
            if item.qos > 0 and item.session == session:
                self.client.ack(item.mid, item.qos)


async def run(settings: CollectorSettings) -> None:
    fleet = load_fleet(settings.fleet)
    token = settings.influx_token.get_secret_value() if settings.influx_token else None
    store = open_store(settings.store, token=token)
    collector = Collector(settings, fleet, store)
    if settings.metrics_port is not None:
        start_http_server(settings.metrics_port, addr="127.0.0.1", registry=collector.metrics.registry)
    gc.freeze()  # the fleet, validator tables and modules live as long as the process: keep them out of GC passes
    collector.start()
    try:
        await asyncio.Event().wait()
    finally:
        await asyncio.to_thread(collector.stop)
        store.close()
