"""MQTT side of the edge: sends queued readings in sequence order (QoS 1) and the retained status with its will.

The queue (``edge.outbox``), not paho, remembers what is still to send. On every (re)connection paho's own copies
of unacknowledged messages are dropped and sending restarts from the oldest reading in the queue, so order per
meter holds across outages and restarts, and a reading never lives only in paho's memory. At most ``window``
readings are unacknowledged at a time. With MQTT 5 a broker that refuses a publish (not authorized, quota) says so
in the PUBACK; the reading is then set aside and reported, never retried forever.

paho runs on the agent's event loop (its socket registered with ``add_reader``/``add_writer``, keepalive from a
small task), not in a thread of its own: every callback and every send happens on one thread, so no lock is needed
and no wake-up pipe is written per message. Only the blocking TCP/TLS connect runs on a worker thread, while nothing
else touches the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt

from bems.mqtt import ConnectionWatch, make_client
from bems.settings import BrokerSettings
from bems.wire import TOPIC_ROOT, status_topic, utcnow
from edge.outbox import Row

log = logging.getLogger("bems.edge")


class Publisher:
    def __init__(self, broker: BrokerSettings, edge_id: str, building: str, *, window: int = 500,
                 mqtt_version: str = "5", wake: Callable[[], None] = lambda: None,
                 reconnect_max_s: float = 10.0) -> None:
        self.broker, self.edge_id, self.building = broker, edge_id, building
        self.prefix = f"{TOPIC_ROOT}/{building}/"
        self.topic_status = status_topic(building, edge_id)
        self.window = self.limit = window
        self.v5 = mqtt_version == "5"
        self.reconnect_max_s = reconnect_max_s
        offline = json.dumps({"state": "offline", "edge": edge_id}).encode()
        self.client = make_client(broker, f"bems-edge-{edge_id}", clean_session=True, will=(self.topic_status, offline),
                                  protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311)
        self.client.max_inflight_messages_set(window + 16)  # never let paho hold back a message we count as sent
        self.client.max_queued_messages_set(0)
        self.watch = ConnectionWatch(self.client, f"edge {edge_id}")
        self._watch_connect, self._watch_disconnect = self.client.on_connect, self.client.on_disconnect
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_socket_open = self._on_socket_open
        self.client.on_socket_close = self._on_socket_close
        self.client.on_socket_register_write = self._on_register_write
        self.client.on_socket_unregister_write = self._on_unregister_write
        self._wake = wake
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed: asyncio.Future[None] | None = None
        self._stopping = False
        self._had_session = False
        self._loop_thread = 0
        self._acked: list[int] = []
        self._refused: list[tuple[int, str]] = []
        self._replayed = 0
        self.connected = False
        self.generation = 0
        self.inflight: dict[int, int] = {}  # mid -> seq
        self.cursor = 0  # highest seq handed to paho on this connection
        self.replay_upto = 0  # readings up to this seq were queued before this connection: their sending is replay
        self.last_seq = 0  # kept current by the agent
        self.done: set[int] = set()  # acknowledged, not yet deleted from the queue
        self.refused_status = 0
        self.status_extra: Callable[[], dict[str, object]] = dict
        self.on_online: Callable[[], None] = lambda: None  # the agent sends its full status

    # -- connection (a task on the agent's loop) ------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, and reconnect with backoff whenever the connection ends, until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        delay, first = 1.0, True
        while not self._stopping:
            self._closed = self._loop.create_future()
            try:
                await self._loop.run_in_executor(None, self._connect, first)
            except Exception as exc:  # refused, unreachable, TLS handshake failed: keep trying, the queue waits
                self._closed = None
                self.watch.last_error = f"cannot reach the broker at {self.broker.url}: {exc}"
                log.log(logging.ERROR if first or delay == 1.0 else logging.DEBUG, "edge %s %s; retrying",
                        self.edge_id, self.watch.last_error)
            else:
                first = False
                misc = asyncio.create_task(self._misc())
                try:
                    await self._closed
                finally:
                    misc.cancel()
                if self._had_session:  # it was up: try again soon, the next outage starts its backoff anew
                    self._had_session, delay = False, 1.0
                    log.log(logging.DEBUG if self._stopping else logging.WARNING,
                            "edge %s lost the broker; readings wait in the queue", self.edge_id)
            if self._stopping:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.reconnect_max_s)

    def _connect(self, first: bool) -> None:
        """Blocking TCP (and TLS) connect, then CONNECT is queued; runs on a worker thread."""
        if first:
            kwargs = {"clean_start": True} if self.v5 else {}
            self.client.connect(self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s, **kwargs)
        else:
            self.client.reconnect()

    async def _misc(self) -> None:
        while self.client.loop_misc() == mqtt.MQTT_ERR_SUCCESS:  # keepalive pings, broker silence
            await asyncio.sleep(1.0)

    def _on_socket_open(self, client: mqtt.Client, userdata: object, sock: mqtt.SocketLike) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._loop.add_reader, sock, self._readable)

    def _readable(self) -> None:
        sock = self.client.socket()
        while True:
            self.client.loop_read(100)
            if sock is None or not getattr(sock, "pending", lambda: 0)() or self.client.socket() is not sock:
                break  # TLS may hold whole records already read from the socket: drain them too

    def _on_register_write(self, client: mqtt.Client, userdata: object, sock: mqtt.SocketLike) -> None:
        self._on_loop(self._loop.add_writer, sock, self.client.loop_write)  # type: ignore[union-attr]

    def _on_unregister_write(self, client: mqtt.Client, userdata: object, sock: mqtt.SocketLike) -> None:
        self._on_loop(self._loop.remove_writer, sock)  # type: ignore[union-attr]

    def _on_socket_close(self, client: mqtt.Client, userdata: object, sock: mqtt.SocketLike) -> None:
        self.connected = False
        self._on_loop(self._closed_socket, sock)

    def _closed_socket(self, sock: mqtt.SocketLike) -> None:
        assert self._loop is not None
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    def _on_loop(self, fn: Callable[..., object], *args: object) -> None:
        """Run now if on the event loop's thread, else hand it over (paho may call from the connect thread)."""
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    async def stop(self) -> None:
        self._stopping = True
        if self.connected:
            info = self.client.publish(self.topic_status, self._status_payload("offline"), qos=1, retain=True)
            deadline = time.monotonic() + 2
            while not info.is_published() and self.connected and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            self.client.disconnect()
            if self._closed is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._closed), 2)

    # -- paho callbacks (on the event loop) -----------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags,
                    reason_code: mqtt.ReasonCode, properties: mqtt.Properties | None) -> None:
        self._watch_connect(client, userdata, flags, reason_code, properties)
        if reason_code.is_failure:
            return
        client.drop_out_messages()  # resend from the queue instead, in order
        self.inflight.clear()
        self.cursor = 0
        self.replay_upto = self.last_seq
        self.generation += 1
        receive_max = getattr(properties, "ReceiveMaximum", None) if properties is not None else None
        self.limit = min(self.window, receive_max) if receive_max else self.window
        if self.limit < self.window:
            log.info("broker allows %d unacknowledged publishes (MQTT 5 Receive Maximum); sending at most that many",
                     self.limit)
        self.connected = self._had_session = True
        self.on_online()
        self._wake()

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: mqtt.DisconnectFlags,
                       reason_code: mqtt.ReasonCode, properties: mqtt.Properties | None) -> None:
        self.connected = False
        self._watch_disconnect(client, userdata, flags, reason_code, properties)

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, reason_code: mqtt.ReasonCode | None,
                    properties: mqtt.Properties | None) -> None:
        seq = self.inflight.pop(mid, None)
        failed = reason_code is not None and reason_code.is_failure
        if seq is None:
            if failed:
                self.refused_status += 1
                log.log(logging.ERROR if self.refused_status == 1 else logging.DEBUG,
                        "broker refused the status publish on %s: %s; check this edge's ACL", self.topic_status,
                        reason_code)
            return
        if failed:
            self._refused.append((seq, f"broker: {reason_code}"))
        else:
            self._acked.append(seq)
            self.done.add(seq)
            self._replayed += seq <= self.replay_upto
        self._wake()

    # -- the agent's side -----------------------------------------------------------------------------------------
    def take_acks(self) -> tuple[list[int], list[tuple[int, str]], int]:
        """Sequence numbers the broker acknowledged, those it refused (with the reason), and how many were replays."""
        out = self._acked, self._refused, self._replayed
        self._acked, self._refused, self._replayed = [], [], 0
        return out

    def requeue(self, acked: list[int], refused: list[tuple[int, str]]) -> None:
        """Give back what take_acks returned when the queue could not record it; the next cycle tries again."""
        self._acked[:0] = acked
        self._refused[:0] = refused

    def forget(self, seqs: list[int]) -> None:
        """The queue deleted these rows; no need to remember them as done any more."""
        self.done.difference_update(seqs)

    def position(self) -> tuple[int, int, int]:
        """(generation, cursor, room): where the next fetch from the queue starts and how many rows may go."""
        room = max(self.limit - len(self.inflight), 0) if self.connected else 0
        return self.generation, self.cursor, room

    def send(self, rows: list[Row], generation: int) -> tuple[int, list[tuple[int, str]]]:
        """Publish rows fetched at ``generation``; returns (count sent, rows refused here as outside this building)."""
        sent = 0
        refused: list[tuple[int, str]] = []
        if generation != self.generation:
            return 0, refused  # a reconnection reset the cursor; these rows come again from the queue
        for seq, topic, payload in rows:
            if not self.connected or len(self.inflight) >= self.limit:
                break
            self.cursor = seq
            if seq in self.done:
                continue
            if not topic.startswith(self.prefix):
                refused.append((seq, f"edge: topic {topic} is outside building {self.building}"))
                log.error("refusing to publish on %s: this edge may only publish under %s", topic, self.prefix)
                continue
            info = self.client.publish(topic, payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                if info.rc != mqtt.MQTT_ERR_NO_CONN:
                    log.error("publish of seq %d on %s failed: %s", seq, topic, mqtt.error_string(info.rc))
                self.cursor = seq - 1
                break
            self.inflight[info.mid] = seq
            sent += 1
        return sent, refused

    # -- status ---------------------------------------------------------------------------------------------
    def _status_payload(self, state: str) -> bytes:
        payload = {"state": state, "edge": self.edge_id, "building": self.building, "ts": utcnow().isoformat()}
        if state == "online":
            payload.update(self.status_extra())
        return json.dumps(payload, separators=(",", ":")).encode()

    def status(self, state: str = "online") -> None:
        """Publish the retained status now (only while connected; the will covers the rest)."""
        if self.connected:
            self.client.publish(self.topic_status, self._status_payload(state), qos=1, retain=True)
