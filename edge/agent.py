"""The edge agent: poll this edge's meters, store every reading in the queue, publish from the queue.

    pollers (one task per bus) --sink--> pending --queue worker--> SQLite queue --send--> paho (QoS 1)
                                                        ^                                   |
                                                        +------ acknowledged: delete -------+

The queue worker is the only user of the queue; its SQLite work runs on one worker thread, so a slow disk never
stalls the polling loop. Readings wait in memory for at most ``LINGER_S`` before they are stored, and nothing is
published before it is stored. The readings stored together are signed together, with the edge's Ed25519 key
(one signature per batch of ``BATCH_MAX``, each reading with its proof: ``bems.signing``): a queued reading keeps
the signature it was stored with, so it still verifies after a restart with a new key (while the fleet file lists
the old public key too).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from bems.errors import ConfigError
from bems.fleet import Fleet, load_fleet
from bems.signing import Signer, key_id, load_signing_key, parse_public_key
from bems.wire import Quality, Reading, sign_readings
from edge.metrics import EdgeCollector, MetricsServer, Totals, summary
from edge.modbus import Bus, make_bus
from edge.outbox import Outbox
from edge.poller import BusPoller, DeviceState
from edge.publisher import Publisher
from edge.settings import EdgeSettings

log = logging.getLogger("bems.edge")

LINGER_S = 0.05  # gather readings and acknowledgements for this long: one transaction, one fsync per batch
LINGER_BACKLOG_S = 0.002  # the same while a backlog drains through a small broker window (mosquitto's default: 20)
DRAIN_S = 2.0  # on a clean stop, wait this long for the broker to acknowledge what is in flight
Taken = tuple[str, datetime, dict[str, float], Quality]  # a reading as polled: meter, time, values, quality
MAX_PENDING = 100_000  # readings held in memory while the queue cannot be written


def plan_devices(settings: EdgeSettings, fleet: Fleet) -> tuple[list[DeviceState], dict[str, list[DeviceState]]]:
    """This edge's devices with their effective period/timeout/retries, grouped by bus (connection)."""
    edge = fleet.edge(settings.edge_id)
    meters = fleet.meters_of_edge(settings.edge_id)
    if not meters:
        raise ConfigError(f"edge {settings.edge_id!r} has no meters in {settings.fleet}; give meters "
                          f"'edge: {settings.edge_id}' or 'building: {edge.building}'")
    devices = [DeviceState.of(m, edge, settings.poll_period_s, settings.timeout_s) for m in meters]
    buses: dict[str, list[DeviceState]] = defaultdict(list)
    for d in devices:
        buses[d.meter.device.bus].append(d)
    return devices, dict(buses)


def load_signer(settings: EdgeSettings, fleet: Fleet) -> Signer:
    """The edge's signing key, refused when the fleet file registers other keys for this edge: every reading it
    signed would be refused by the collector, so it had better not start."""
    path = settings.signing_key_path()
    try:
        signer = load_signing_key(path)
    except ConfigError as exc:
        raise ConfigError(f"signing_key (--signing-key, BEMS_EDGE_SIGNING_KEY): {exc}") from None
    registered = {key_id(parse_public_key(k)): k for k in fleet.edge(settings.edge_id).public_keys}
    if registered and signer.kid not in registered:
        raise ConfigError(
            f"signing_key {path} is key {signer.kid}, but {settings.fleet} registers only key(s) "
            f"{', '.join(registered)} for edge {settings.edge_id!r}: the collector would refuse every reading. "
            f"Add its public key under the edge's public_keys (keep the old one until the queue is empty):\n"
            f"      - \"{signer.public_key}\"  # kid {signer.kid}\nor start with the registered key's file")
    if not registered:
        log.warning("%s registers no public key for edge %s: a collector that requires signatures refuses its "
                    "readings; add under the edge: public_keys: [\"%s\"]  # kid %s", settings.fleet,
                    settings.edge_id, signer.public_key, signer.kid)
    return signer


def make_buses(groups: dict[str, list[DeviceState]]) -> dict[str, Bus]:
    return {key: make_bus(devs[0].meter.device, max(d.timeout for d in devs)) for key, devs in groups.items()}


class EdgeAgent:
    def __init__(self, settings: EdgeSettings, fleet: Fleet) -> None:
        self.settings = settings
        self.building = fleet.edge(settings.edge_id).building
        self.devices, self.groups = plan_devices(settings, fleet)
        self.signer = load_signer(settings, fleet)
        self.outbox = Outbox(settings.queue_path(), int(settings.queue_max_mb * 1e6))
        self.totals = Totals(queue_depth=self.outbox.depth)
        self.pending: list[Taken] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._status_now = asyncio.Event()
        self.publisher = Publisher(settings.broker, settings.edge_id, self.building, window=settings.inflight,
                                   mqtt_version=settings.mqtt_version, wake=self._wake.set)
        self.publisher.last_seq = self.outbox.last_seq
        self.publisher.status_extra = lambda: summary(self.devices, self.totals)
        self.publisher.on_online = self._status_now.set
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-queue")
        self.metrics: MetricsServer | None = None
        self._refused_here: list[tuple[int, str]] = []  # refused by the edge's own topic check, to set aside
        self._refusals_logged: set[str] = set()
        self._queue_error: str | None = None
        self._backlog = False  # readings stored and not yet sent: send as fast as the broker acknowledges
        self._stored_at = 0.0

    # -- wiring -------------------------------------------------------------------------------------------------
    def sink(self, dev: DeviceState, ts: datetime, values: dict[str, float], quality: Quality) -> None:
        """Called by the pollers: the reading gets its sequence number and its signature when it is stored."""
        self.pending.append((dev.id, ts, values, quality))
        self._wake.set()

    def _render(self, taken: Sequence[Taken]) -> Callable[[int], list[tuple[str, bytes]]]:
        """The queue's renderer for these readings: numbered from the queue's next sequence number, signed together.
        A reading the wire model refuses is counted and skipped, never costing the others their place."""
        building, edge = self.building, self.settings.edge_id

        def render(first: int) -> list[tuple[str, bytes]]:
            readings: list[Reading] = []
            for meter, ts, values, quality in taken:
                try:
                    readings.append(Reading(meter=meter, building=building, edge=edge, ts=ts,
                                            seq=first + len(readings), values=values, quality=quality))
                except ValueError:
                    log.exception("a reading of %s could not be rendered; skipped", meter)
                    self.totals.invalid += 1
            return [(r.topic, r.to_json()) for r in sign_readings(readings, self.signer)]

        return render

    # -- tasks --------------------------------------------------------------------------------------------------
    async def _queue_worker(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            # with a backlog the broker's acknowledgements pace the sending: a short pause is enough to batch them
            await asyncio.sleep(LINGER_BACKLOG_S if self._backlog else LINGER_S)
            await self._cycle()

    async def _cycle(self) -> int:
        """One pass: store new readings, delete acknowledged ones, send the next ones. Returns how many were sent."""
        assert self._loop is not None
        now = self._loop.time()
        if not self._backlog or now - self._stored_at >= LINGER_S:  # a backlog's quick cycles only send and delete
            pending, self.pending, self._stored_at = self.pending, [], now
        else:
            pending = []
        acked, refused, replayed = self.publisher.take_acks()
        refused += self._refused_here
        self._refused_here = []
        generation, cursor, room = self.publisher.position()
        # shielded: a stop must not cancel a cycle that holds readings taken out of ``pending``
        try:
            res = await asyncio.shield(self._loop.run_in_executor(
                self.pool, self.outbox.cycle, self._render(pending) if pending else None, acked, refused, cursor, room))
        except sqlite3.Error as exc:  # disk full, file damaged: keep polling, keep the readings, try again
            self._queue_failed(exc, pending, acked, refused)
            return 0
        if self._queue_error is not None:
            log.info("the reading queue %s works again", self.outbox.path)
            self._queue_error = None
        self.publisher.last_seq = res.last_seq
        self.publisher.forget(acked)
        sent, self._refused_here = self.publisher.send(res.rows, generation)
        t = self.totals
        t.published += len(acked)
        t.replayed += replayed
        t.dropped += res.dropped
        t.queue_depth = res.depth
        t.broker_connected = self.publisher.connected
        if refused:
            t.refused += res.refused
            reason = refused[0][1]
            level = logging.DEBUG if reason in self._refusals_logged else logging.ERROR
            self._refusals_logged.add(reason)
            log.log(level, "%d readings refused (%s); set aside in the 'refused' table of %s, %d refused so far",
                    res.refused, reason, self.outbox.path, t.refused)
            self._status_now.set()
        if self._refused_here:
            self._wake.set()
        self._backlog = self.publisher.connected and res.last_seq > self.publisher.cursor  # stored, not yet sent
        return sent

    def _queue_failed(self, exc: sqlite3.Error, pending: list[Taken],
                      acked: list[int], refused: list[tuple[int, str]]) -> None:
        level = logging.DEBUG if self._queue_error == str(exc) else logging.ERROR
        self._queue_error = str(exc)
        self.pending = pending + self.pending
        over = len(self.pending) - MAX_PENDING
        if over > 0:  # memory is no place for an unbounded backlog: drop the oldest, counted
            del self.pending[:over]
            self.totals.dropped += over
        self.publisher.requeue(acked, refused)
        log.log(level, "cannot write the reading queue %s (%s); %d readings wait in memory, %d dropped so far",
                self.outbox.path, exc, len(self.pending), self.totals.dropped)
        self._loop.call_later(1.0, self._wake.set)  # type: ignore[union-attr]

    async def _status_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._status_now.wait(), self.settings.status_interval_s)
            self._status_now.clear()
            self.totals.broker_connected = self.publisher.connected
            self.publisher.status("online")
            await asyncio.sleep(1.0)  # at most one status a second however often health changes

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        s = self.settings
        if s.metrics_port is not None:
            self.metrics = MetricsServer(EdgeCollector(self.devices, self.totals), s.metrics_host, s.metrics_port)
            log.info("metrics on http://%s:%d/metrics", s.metrics_host, self.metrics.port)
        buses = make_buses(self.groups)
        log.info("edge %s polls %d meters on %d connections; queue %s holds %d readings (last seq %d); signing "
                 "with key %s", s.edge_id, len(self.devices), len(buses), self.outbox.path, self.outbox.depth,
                 self.outbox.last_seq, self.signer.kid)
        publishing = asyncio.create_task(self.publisher.run())
        publishing.add_done_callback(_report_crash)
        on_health = lambda _d: self._status_now.set()  # noqa: E731
        pollers = [BusPoller(buses[k], devs, self.sink, on_health) for k, devs in self.groups.items()]
        # spread first polls over each period so a thousand meters do not all fire in the same millisecond
        order = {id(d): i for i, d in enumerate(self.devices)}
        n = len(self.devices)
        tasks = [asyncio.create_task(p.run([d.period * order[id(d)] / n for d in p.devices])) for p in pollers]
        tasks += [asyncio.create_task(self._queue_worker()), asyncio.create_task(self._status_loop())]
        gc.freeze()  # the fleet, profiles and devices live as long as the process: keep them out of every GC pass
        try:
            await asyncio.gather(*tasks)
        finally:
            pending = set(tasks)
            while pending:  # cancel again until done: a cancellation can be lost inside pymodbus (3.11 wait_for)
                for t in pending:
                    t.cancel()
                _, pending = await asyncio.wait(pending, timeout=0.5)
            await self._shutdown(buses, publishing)

    async def _shutdown(self, buses: dict[str, Bus], publishing: asyncio.Task[None]) -> None:
        for b in buses.values():
            b.close()
        try:
            await self._cycle()  # store what was polled last
            deadline = time.monotonic() + DRAIN_S
            while self.publisher.connected and self.publisher.inflight and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                await self._cycle()
        finally:
            await self.publisher.stop()
            publishing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publishing
            await self._loop.run_in_executor(self.pool, self.outbox.close)  # type: ignore[union-attr]
            self.pool.shutdown()
            if self.metrics is not None:
                self.metrics.close()
            log.info("edge %s stopped; %d readings wait in the queue", self.settings.edge_id, self.totals.queue_depth)


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.critical("the MQTT publisher stopped: %r; readings wait in the queue until the edge restarts",
                     task.exception())


async def run(settings: EdgeSettings) -> None:
    await EdgeAgent(settings, load_fleet(settings.fleet)).run()

