"""paho-mqtt clients configured from BrokerSettings (TLS, credentials, last will), shared by every stage."""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt

from bems.settings import BrokerSettings

log = logging.getLogger("bems.mqtt")


def make_client(broker: BrokerSettings, client_id: str, *, clean_session: bool = True,
                manual_ack: bool = False, will: tuple[str, bytes] | None = None,
                protocol: int = mqtt.MQTTv311) -> mqtt.Client:
    """A configured, not yet connected client (MQTT 3.1.1; with MQTT 5 the session is set at connect time:
    ``clean_start`` and the session expiry are connect arguments, so ``clean_session`` is ignored)."""
    session = {"clean_session": clean_session} if protocol != mqtt.MQTTv5 else {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                         manual_ack=manual_ack, **session)
    if broker.username:
        client.username_pw_set(broker.username,
                               broker.password.get_secret_value() if broker.password else None)
    if broker.tls:
        client.tls_set(ca_certs=str(broker.ca_file) if broker.ca_file else None,
                       certfile=str(broker.cert_file) if broker.cert_file else None,
                       keyfile=str(broker.key_file) if broker.key_file else None,
                       tls_version=ssl.PROTOCOL_TLS_CLIENT)
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    return client


class ConnectionWatch:
    """Tracks the connection state of a client so a stage can wait for it and report why it failed."""

    def __init__(self, client: mqtt.Client, name: str,
                 on_connected: Callable[[mqtt.Client], None] | None = None) -> None:
        self.connected = threading.Event()
        self.last_error: str | None = None
        self._name = name
        self._on_connected = on_connected
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            self.last_error = f"broker refused {self._name}: {reason_code}"
            log.error("%s; check the broker credentials and ACL", self.last_error)
            return
        self.last_error = None
        self.connected.set()
        log.info("%s connected to the broker", self._name)
        if self._on_connected is not None:
            self._on_connected(client)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if self.connected.is_set() and reason_code.is_failure:
            log.warning("%s lost the broker (%s); reconnecting", self._name, reason_code)
        elif self.connected.is_set():
            log.info("%s disconnected from the broker", self._name)
        self.connected.clear()
