"""The edge agent: poll every meter of this edge on its period and publish each reading (QoS 1)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import paho.mqtt.client as mqtt

from bems.fleet import Fleet, load_fleet
from bems.mqtt import ConnectionWatch, make_client
from bems.wire import Reading, status_topic, utcnow
from edge.poller import Gateway, MeterReader, ReadError
from edge.settings import EdgeSettings

log = logging.getLogger("bems.edge")


class Publisher:
    """Publishes readings and the retained online/offline status (with the broker holding an offline will)."""

    def __init__(self, settings: EdgeSettings, building: str) -> None:
        self.topic_status = status_topic(building, settings.edge_id)
        offline = json.dumps({"state": "offline", "edge": settings.edge_id}).encode()
        self.client = make_client(settings.broker, f"bems-edge-{settings.edge_id}", clean_session=False,
                                  will=(self.topic_status, offline))
        self.watch = ConnectionWatch(self.client, f"edge {settings.edge_id}",
                                     on_connected=lambda _c: self.status("online"))
        self.client.max_queued_messages_set(100_000)
        self.client.max_inflight_messages_set(1000)
        self.settings = settings

    def start(self) -> None:
        self.client.connect_async(self.settings.broker.host, self.settings.broker.port,
                                  keepalive=self.settings.broker.keepalive_s)
        self.client.loop_start()

    def status(self, state: str, **extra: object) -> None:
        payload = {"state": state, "edge": self.settings.edge_id, "ts": utcnow().isoformat(), **extra}
        self.client.publish(self.topic_status, json.dumps(payload).encode(), qos=1, retain=True)

    def publish(self, reading: Reading) -> None:
        info = self.client.publish(reading.topic, reading.to_json(), qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            log.error("publish of %s seq %d failed: %s", reading.meter, reading.seq, mqtt.error_string(info.rc))

    def stop(self) -> None:
        self.status("offline")
        time.sleep(0.1)
        self.client.disconnect()
        self.client.loop_stop()


class EdgeAgent:
    def __init__(self, settings: EdgeSettings, fleet: Fleet) -> None:
        self.settings = settings
        edge = fleet.edge(settings.edge_id)
        self.building = edge.building
        self.period = settings.poll_period_s or edge.poll_period_s
        self.meters = fleet.meters_of_edge(settings.edge_id)
        gateways: dict[tuple[str, int], Gateway] = {}
        self.readers = []
        for m in self.meters:
            key = (m.device.host, m.device.port)
            if key not in gateways:
                gateways[key] = Gateway(m.device.host, m.device.port, settings.timeout_s)
            self.readers.append(MeterReader(m, gateways[key]))
        self.gateways = list(gateways.values())
        self.publisher = Publisher(settings, self.building)
        self.seq = time.time_ns() // 1000  # microseconds: increases across restarts while the clock does
        self.failing: set[str] = set()

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    async def poll_meter(self, reader: MeterReader) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            ts = utcnow()
            try:
                values = await reader.read()
            except (ReadError, TimeoutError, ConnectionError) as exc:
                level = logging.DEBUG if reader.meter.id in self.failing else logging.ERROR
                log.log(level, "meter %s: %s", reader.meter.id, exc)
                self.failing.add(reader.meter.id)
            else:
                if reader.meter.id in self.failing:
                    log.info("meter %s answers again", reader.meter.id)
                    self.failing.discard(reader.meter.id)
                self.publisher.publish(Reading(meter=reader.meter.id, building=self.building,
                                               edge=self.settings.edge_id, ts=ts, seq=self.next_seq(),
                                               values=values))
            next_at += self.period
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def run(self) -> None:
        self.publisher.start()
        log.info("edge %s polls %d meters every %.1f s", self.settings.edge_id, len(self.readers), self.period)
        tasks = [asyncio.create_task(self.poll_meter(r)) for r in self.readers]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            for g in self.gateways:
                g.close()
            self.publisher.stop()


async def run(settings: EdgeSettings) -> None:
    await EdgeAgent(settings, load_fleet(settings.fleet)).run()
