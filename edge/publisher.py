"""MQTT side of the edge: sends queued readings in sequence order (QoS 1) and the retained status with its will.

The queue (``edge.outbox``), not paho, remembers what is still to send. On every (re)connection paho's own copies
of unacknowledged messages are dropped and sending restarts from the oldest reading in the queue, so order per
meter holds across outages and restarts, and a reading never lives only in paho's memory. At most ``window``
readings are unacknowledged at a time. With MQTT 5 a broker that refuses a publish (not authorized, quota) says so
in the PUBACK; the reading is then set aside and reported, never retried forever.

Threads: paho calls back from its network thread; ``send``/``take_acks`` run on the agent's event loop. A lock
keeps a reconnection from interleaving with a send; ``on_publish`` only appends to a deque (paho holds its own
lock while calling it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections import deque
from collections.abc import Callable

import paho.mqtt.client as mqtt

from bems.mqtt import ConnectionWatch, make_client
from bems.settings import BrokerSettings
from bems.wire import TOPIC_ROOT, status_topic, utcnow
from edge.outbox import Row

log = logging.getLogger("bems.edge")


class Publisher:
    def __init__(self, broker: BrokerSettings, edge_id: str, building: str, *, window: int = 500,
                 mqtt_version: str = "5", wake: Callable[[], None] = lambda: None) -> None:
        self.broker, self.edge_id, self.building = broker, edge_id, building
        self.prefix = f"{TOPIC_ROOT}/{building}/"
        self.topic_status = status_topic(building, edge_id)
        self.window = self.limit = window
        self.v5 = mqtt_version == "5"
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
        self._wake = wake
        self._lock = threading.Lock()
        self._acks: deque[tuple[int, mqtt.ReasonCode | None]] = deque()
        self.connected = False
        self.generation = 0
        self.inflight: dict[int, int] = {}  # mid -> seq
        self.cursor = 0  # highest seq handed to paho on this connection
        self.replay_upto = 0  # readings up to this seq were queued before this connection: their sending is replay
        self.last_seq = 0  # kept current by the agent
        self.done: set[int] = set()  # acknowledged, not yet deleted from the queue
        self._early: list[int] = []  # acknowledged on a previous connection, waiting for take_acks
        self._early_refused: list[tuple[int, str]] = []
        self._early_replayed = 0
        self.refused_status = 0
        self.status_extra: Callable[[], dict[str, object]] = dict
        self.on_online: Callable[[], None] = lambda: self.status("online")  # the agent sends its full status

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> None:
        kwargs = {"clean_start": True} if self.v5 else {}
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=self.broker.keepalive_s, **kwargs)
        self.client.loop_start()

    def stop(self) -> None:
        if self.connected:
            info = self.client.publish(self.topic_status, self._status_payload("offline"), qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(2)
        self.client.disconnect()
        self.client.loop_stop()

    # -- paho callbacks (network thread) ----------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags,
                    reason_code: mqtt.ReasonCode, properties: mqtt.Properties | None) -> None:
        self._watch_connect(client, userdata, flags, reason_code, properties)
        if reason_code.is_failure:
            return
        with self._lock:
            acked, refused, replayed = self._drain()  # acknowledgements of the old connection still count
            self._early.extend(acked)
            self._early_refused.extend(refused)
            self._early_replayed += replayed
            client.drop_out_messages()  # resend from the queue instead, in order
            self.inflight.clear()
            self.cursor = 0
            self.replay_upto = self.last_seq
            self.generation += 1
            receive_max = getattr(properties, "ReceiveMaximum", None) if properties is not None else None
            self.limit = min(self.window, receive_max) if receive_max else self.window
            self.connected = True
        self.on_online()
        self._wake()

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: mqtt.DisconnectFlags,
                       reason_code: mqtt.ReasonCode, properties: mqtt.Properties | None) -> None:
        self.connected = False
        self._watch_disconnect(client, userdata, flags, reason_code, properties)

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, reason_code: mqtt.ReasonCode | None,
                    properties: mqtt.Properties | None) -> None:
        self._acks.append((mid, reason_code))
        self._wake()

    # -- event loop side --------------------------------------------------------------------------------------
    def _drain(self) -> tuple[list[int], list[tuple[int, str]], int]:
        acked: list[int] = []
        refused: list[tuple[int, str]] = []
        replayed = 0
        while self._acks:
            mid, rc = self._acks.popleft()
            seq = self.inflight.pop(mid, None)
            if seq is None:
                if rc is not None and rc.is_failure:
                    self.refused_status += 1
                    log.log(logging.ERROR if self.refused_status == 1 else logging.DEBUG,
                            "broker refused the status publish on %s: %s; check this edge's ACL", self.topic_status, rc)
                continue
            if rc is not None and rc.is_failure:
                refused.append((seq, f"broker: {rc}"))
            else:
                acked.append(seq)
                replayed += seq <= self.replay_upto
        self.done.update(acked)
        return acked, refused, replayed

    def take_acks(self) -> tuple[list[int], list[tuple[int, str]], int]:
        """Sequence numbers the broker acknowledged, those it refused (with the reason), and how many were replays."""
        with self._lock:
            acked, refused, replayed = self._drain()
            acked = self._early + acked
            refused = self._early_refused + refused
            replayed += self._early_replayed
            self._early, self._early_refused, self._early_replayed = [], [], 0
        return acked, refused, replayed

    def forget(self, seqs: list[int]) -> None:
        """The queue deleted these rows; no need to remember them as done any more."""
        self.done.difference_update(seqs)

    def position(self) -> tuple[int, int, int]:
        """(generation, cursor, room): where the next fetch from the queue starts and how many rows may go."""
        with self._lock:
            room = max(self.limit - len(self.inflight), 0) if self.connected else 0
            return self.generation, self.cursor, room

    def send(self, rows: list[Row], generation: int) -> tuple[int, list[tuple[int, str]]]:
        """Publish rows fetched at ``generation``; returns (count sent, rows refused here as outside this building)."""
        sent = 0
        refused: list[tuple[int, str]] = []
        with self._lock:
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
                if info.rc == mqtt.MQTT_ERR_NO_CONN:
                    self.cursor = seq - 1
                    break
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
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
