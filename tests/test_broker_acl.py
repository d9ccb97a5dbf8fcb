"""``bems broker config`` against a real mosquitto started with the generated configuration.

Every test client is configured the way a stage configures itself: its settings come from the generated
``clients/<name>.env`` and its paho client from ``bems.mqtt.make_client``. mosquitto answers a denied MQTT 3.1.1
publish with a normal PUBACK and drops it, so refusals are proven with a subscriber that would otherwise get the
message and a fence: a later message that must arrive after it (same publisher, in order), or a PUBACK the
subscriber waits for on its own connection, which the broker writes after anything it queued to that client
before.
"""

from __future__ import annotations

import base64
import getpass
import os
import secrets
import signal
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from pydantic import SecretStr

from analytics.settings import AnalyticsSettings
from bems.broker import MAX_PACKET_BYTES, BrokerOptions, BrokerReport, generate, mosquitto_hash, read_env
from bems.certs import ensure_generated
from bems.cli import main
from bems.errors import ConfigError
from bems.mqtt import make_client
from bems.services import ManagedProcess, find_binary, free_port, wait_port
from bems.settings import BrokerSettings
from bems.store import open_store
from collector.settings import CollectorSettings
from edge.settings import EdgeSettings
from tests.conftest import need
from tests.stages import StageProcess, ThreadedSimulator, small_fleet, wait_for, write_fleet

pytestmark = pytest.mark.services

ONE_ELEC = "bems/v1/b-one/elec/reading"
ONE_GAS = "bems/v1/b-one/gas/reading"
TWO_ELEC = "bems/v1/b-two/elec/reading"
ONE_STATUS = "bems/v1/b-one/edge/edge-one/status"
TWO_STATUS = "bems/v1/b-two/edge/edge-two/status"
READINGS = "bems/v1/+/+/reading"
UTILITIES = ["tavanir=electricity", "gasco=gas,water", "soc=security"]


def fleet_file(path: Path, with_two: bool = True) -> Path:
    dev = {"host": "127.0.0.1", "port": 1502, "device_id": 1, "profile": "sdm630"}
    buildings = [{"id": "b-one", "name": "One", "city": "Tehran", "floor_area_m2": 1000}]
    edges = [{"id": "edge-one", "building": "b-one"}]
    meters = [{"id": "b-one.elec", "building": "b-one", "commodity": "electricity", "device": dev},
              {"id": "b-one.gas", "building": "b-one", "commodity": "gas", "device": {**dev, "device_id": 2}}]
    if with_two:
        buildings.append({"id": "b-two", "name": "Two", "city": "Mashhad", "floor_area_m2": 800})
        edges.append({"id": "edge-two", "building": "b-two"})
        meters.append({"id": "b-two.elec", "building": "b-two", "commodity": "electricity", "device": dev})
    return write_fleet(path, buildings, meters, edges)


class Probe:
    """A connected paho client that records what it receives and can wait for its own PUBACKs and SUBACKs."""

    def __init__(self, broker: BrokerSettings, name: str, client_id: str | None = None) -> None:
        self.broker, self.name = broker, name
        self.client = make_client(broker, client_id or name)
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.connack = threading.Event()
        self.gone = threading.Event()
        self.reason: mqtt.ReasonCode | None = None
        self.suback: dict[int, threading.Event] = {}
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_a: self.gone.set()
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda _c, _u, mid, _codes, _p: self.suback.setdefault(mid, threading.Event()).set()

    def _on_connect(self, _c, _u, _flags, reason_code, _p) -> None:  # type: ignore[no-untyped-def]
        self.reason = reason_code
        self.connack.set()

    def _on_message(self, _c, _u, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload))

    def start(self) -> Probe:
        """Connect and run the network loop without paho's automatic reconnection: a refused probe stays refused
        and a probe pushed out by another connection of its user does not come back and push that one out."""
        self.client.connect(self.broker.host, self.broker.port, keepalive=30)
        self.thread = threading.Thread(target=self._loop, name=f"probe-{self.name}", daemon=True)
        self.thread.start()
        return self

    def _loop(self) -> None:
        while self.client.loop(0.05) == mqtt.MQTT_ERR_SUCCESS:
            pass
        self.gone.set()

    def connected(self) -> bool:
        """Wait for the broker's answer: True if it accepted the credential, False if it refused or hung up."""
        for _ in range(100):
            if self.connack.wait(0.05) or self.gone.is_set():
                break
        return self.connack.is_set() and self.reason is not None and not self.reason.is_failure

    def subscribe(self, topic: str) -> None:
        _, mid = self.client.subscribe(topic, qos=1)
        assert self.suback.setdefault(mid, threading.Event()).wait(5), f"{self.name}: no SUBACK for {topic}"

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """QoS 1 and wait for the PUBACK: the broker has then handled it (delivered, or dropped if denied)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(5)
        assert info.is_published(), f"{self.name}: no PUBACK for {topic}"

    def fence(self) -> None:
        """Anything the broker queued to this client before now has been received when this returns."""
        self.publish(f"bems/v1/fence/{self.name}", b"fence")

    def payloads(self) -> list[bytes]:
        with self.lock:
            return [p for _, p in self.messages]

    def got(self, payload: bytes) -> bool:
        return payload in self.payloads()

    def stop(self) -> None:
        self.client.disconnect()
        self.thread.join(2)


@dataclass
class Broker:
    report: BrokerReport
    fleet: Path
    out: Path
    process: ManagedProcess
    probes: list[Probe]

    def settings(self, name: str) -> BrokerSettings:
        """The broker settings the named client's stage reads from its generated environment file."""
        env_file = self.out / "clients" / f"{name}.env"
        if name.startswith("edge-"):
            return EdgeSettings(_env_file=env_file, fleet=self.fleet).broker  # type: ignore[call-arg]
        if name.startswith("collector"):
            return CollectorSettings(_env_file=env_file, fleet=self.fleet).broker  # type: ignore[call-arg]
        if name == "analytics":
            broker = AnalyticsSettings(_env_file=env_file, fleet=self.fleet).broker  # type: ignore[call-arg]
            assert broker is not None
            return broker
        env = read_env(env_file)
        return BrokerSettings(url=env["MQTT_URL"], username=env["MQTT_USERNAME"], password=env["MQTT_PASSWORD"],
                              ca_file=env["MQTT_CA_FILE"])

    def probe(self, name: str, settings: BrokerSettings | None = None) -> Probe:
        p = Probe(settings or self.settings(name), name).start()
        self.probes.append(p)
        return p

    def connect(self, name: str) -> Probe:
        p = self.probe(name)
        assert p.connected(), f"{name} was refused: {p.reason}; {self.process.tail()}"
        return p


def start_broker(out: Path) -> ManagedProcess:
    conf = out / "mosquitto.conf"
    port = int(next(line.split()[1] for line in conf.read_text().splitlines() if line.startswith("listener ")))
    proc = ManagedProcess([find_binary("mosquitto") or "mosquitto", "-c", str(conf)], out, "mosquitto")
    proc.start()
    try:
        wait_port(port, 10)
    except Exception:
        proc.stop()
        raise AssertionError(f"mosquitto did not start with the generated config: {proc.tail()}") from None
    return proc


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    need("mosquitto", "mosquitto")
    root = tmp_path_factory.mktemp("broker")
    fleet = fleet_file(root / "fleet.yaml")
    out = root / "conf"
    # the test's temporary directory is private to this user, so mosquitto must not drop to another one
    report = generate(BrokerOptions(fleet=fleet, out=out, port=free_port(), collectors=["collector-a", "collector-b"],
                                    utilities=UTILITIES, run_as=getpass.getuser()))
    b = Broker(report, fleet, out, start_broker(out), [])
    yield b
    b.process.stop()


@pytest.fixture
def broker(running: Broker) -> Iterator[Broker]:
    """The module's broker; each test's clients are closed after it (a client id is a username, and a client
    left behind would reconnect and push out the next test's client of the same name)."""
    yield running
    for p in running.probes:
        p.stop()
    running.probes.clear()


def nonce(label: str) -> bytes:
    return f"{label}-{secrets.token_hex(4)}".encode()


# --- who may connect -------------------------------------------------------------------------------------------

def test_each_credential_from_its_env_file_connects_over_tls(broker: Broker) -> None:
    for c in broker.report.clients:
        settings = broker.settings(c.username)
        assert settings.tls and settings.ca_file and settings.username == c.username
        broker.connect(c.username)


def test_anonymous_client_is_refused(broker: Broker) -> None:
    s = broker.settings("edge-one").model_copy(update={"username": None, "password": None})
    p = broker.probe("anonymous", s)
    assert not p.connected()
    assert p.reason is not None and p.reason.is_failure, p.reason


def test_wrong_password_is_refused_and_the_right_one_accepted(broker: Broker) -> None:
    good = broker.settings("edge-one")
    other = broker.settings("edge-two").password  # a real password, of another credential
    for bad in (other, SecretStr(secrets.token_urlsafe(32))):
        p = broker.probe("wrong-password", good.model_copy(update={"password": bad}))
        assert not p.connected()
        assert p.reason is not None and p.reason.is_failure
    assert broker.connect("edge-one")


def test_plain_tcp_without_tls_is_refused(broker: Broker) -> None:
    s = broker.settings("edge-one")
    plain = s.model_copy(update={"url": s.url.replace("mqtts://", "mqtt://")})
    assert not plain.tls
    p = broker.probe("plain-tcp", plain)
    assert not p.connected()
    assert p.gone.wait(5), "the broker did not hang up on a client speaking MQTT without TLS"


def test_client_refuses_a_broker_its_ca_did_not_sign(broker: Broker, tmp_path: Path) -> None:
    other_ca = ensure_generated(tmp_path / "other-ca", ["127.0.0.1", "localhost"]).ca
    s = broker.settings("edge-one").model_copy(update={"ca_file": other_ca})
    client = make_client(s, "probe-wrong-ca")
    with pytest.raises(ssl.SSLCertVerificationError):
        client.connect(s.host, s.port)


def test_another_credential_cannot_take_over_a_client_id(broker: Broker) -> None:
    """use_username_as_clientid: a utility claiming the collector's client id gets its own session."""
    collector = broker.connect("collector-a")
    collector.subscribe(READINGS)
    collector_id = CollectorSettings(_env_file=broker.out / "clients" / "collector-a.env",  # type: ignore[call-arg]
                                     fleet=broker.fleet).client_id
    impostor = Probe(broker.settings("utility-tavanir"), "impostor", client_id=collector_id)
    broker.probes.append(impostor.start())
    assert impostor.connected()
    edge = broker.connect("edge-one")
    mark = nonce("after-impostor")
    edge.publish(ONE_ELEC, mark)
    wait_for(lambda: collector.got(mark), 5, "the reading at the collector after the impostor connected")
    assert not collector.gone.is_set()
    impostor.fence()
    assert not impostor.got(mark)


# --- edges ---------------------------------------------------------------------------------------------------

def test_edge_writes_its_own_meters_and_status_and_collector_receives(broker: Broker) -> None:
    collector = broker.connect("collector-a")
    collector.subscribe(READINGS)
    collector.subscribe("bems/v1/+/edge/+/status")
    edge = broker.connect("edge-one")
    r1, r2, st = nonce("elec"), nonce("gas"), nonce("status")
    edge.publish(ONE_ELEC, r1)
    edge.publish(ONE_GAS, r2)
    edge.publish(ONE_STATUS, st, retain=True)
    wait_for(lambda: all(collector.got(x) for x in (r1, r2, st)), 5, "the edge's readings and status")
    assert (ONE_ELEC, r1) in collector.messages and (ONE_STATUS, st) in collector.messages


def test_edge_cannot_write_another_building_another_edge_or_an_unknown_meter(broker: Broker) -> None:
    collector = broker.connect("collector-b")
    collector.subscribe(READINGS)
    collector.subscribe("bems/v1/+/edge/+/status")
    edge = broker.connect("edge-one")
    forged = {TWO_ELEC: nonce("other-building"), TWO_STATUS: nonce("other-edge-status"),
              "bems/v1/b-one/edge/edge-two/status": nonce("fake-edge"),
              "bems/v1/b-one/not-a-meter/reading": nonce("unknown-meter")}
    for topic, payload in forged.items():
        edge.publish(topic, payload, retain=topic.endswith("status"))
    fence = nonce("own")
    edge.publish(ONE_ELEC, fence)  # same publisher, after the forged ones: they would have arrived before it
    wait_for(lambda: collector.got(fence), 5, "the edge's own reading")
    assert not [p for p in forged.values() if collector.got(p)], collector.messages
    # the real owner can write there: the refusal above is about who, not about the topic
    two = broker.connect("edge-two")
    own = nonce("two-own")
    two.publish(TWO_ELEC, own)
    wait_for(lambda: collector.got(own), 5, "edge-two's reading on its own topic")


def test_edge_reads_nothing(broker: Broker) -> None:
    spy = broker.connect("edge-one")
    for topic in ("#", "bems/v1/#", READINGS, "$share/collectors/" + READINGS, "bems/v1/alerts/#"):
        spy.subscribe(topic)  # mosquitto 2.0 grants the SUBSCRIBE; the ACL filters each delivery
    collector = broker.connect("collector-a")
    collector.subscribe(READINGS)
    two = broker.connect("edge-two")
    analytics = broker.connect("analytics")
    r, st, al = nonce("two-reading"), nonce("two-status"), nonce("alert")
    two.publish(TWO_ELEC, r)
    two.publish(TWO_STATUS, st, retain=True)
    analytics.publish("bems/v1/alerts/electricity/b-two", al)
    wait_for(lambda: collector.got(r), 5, "edge-two's reading at the collector (the control)")
    spy.fence()
    assert spy.payloads() == [], spy.messages


def test_oversized_message_is_refused(broker: Broker) -> None:
    """max_packet_size: one stolen credential cannot push megabytes through the broker (a reading is < 16 KiB)."""
    collector = broker.connect("collector-a")
    collector.subscribe(READINGS)
    edge = broker.connect("edge-one")
    big = b"x" * (MAX_PACKET_BYTES + 1)
    edge.client.publish(ONE_ELEC, big, qos=1)
    assert edge.gone.wait(5), "the broker kept a client that sent an oversized packet"
    ok = nonce("normal-size")
    broker.connect("edge-one").publish(ONE_ELEC, ok)
    wait_for(lambda: collector.got(ok), 5, "the normal reading after the oversized one")
    assert big not in collector.payloads()


# --- collectors ----------------------------------------------------------------------------------------------

def test_collectors_share_readings_through_a_shared_subscription(broker: Broker) -> None:
    group = f"$share/collectors-{secrets.token_hex(3)}/{READINGS}"
    a, b = broker.connect("collector-a"), broker.connect("collector-b")
    a.subscribe(group)
    b.subscribe(group)
    one, two = broker.connect("edge-one"), broker.connect("edge-two")
    sent = [nonce(f"shared-{i}") for i in range(6)]
    for i, payload in enumerate(sent):
        (one if i % 2 else two).publish(ONE_ELEC if i % 2 else TWO_ELEC, payload)
    wait_for(lambda: sum(a.got(x) + b.got(x) for x in sent) == len(sent), 5, "every reading at one group member")
    a.fence()
    b.fence()
    got_a, got_b = [x for x in sent if a.got(x)], [x for x in sent if b.got(x)]
    assert sorted(got_a + got_b) == sorted(sent), "each reading goes to exactly one member"
    assert got_a and got_b, "both members take a share"


def test_collector_publishes_security_alerts_only(broker: Broker) -> None:
    """A collector may publish a security alert (a reading it refused), read by the security desk alone; it may not
    publish readings, status or commodity alerts, and no one else may publish security alerts."""
    observer = broker.connect("collector-a")
    observer.subscribe(READINGS)
    observer.subscribe("bems/v1/+/edge/+/status")
    utility, soc = broker.connect("utility-tavanir"), broker.connect("utility-soc")
    for u in (utility, soc):
        u.subscribe("bems/v1/alerts/#")
    rogue = broker.connect("collector-b")
    forged = {ONE_ELEC: nonce("col-reading"), ONE_STATUS: nonce("col-status"),
              "bems/v1/alerts/electricity/b-one": nonce("col-alert")}
    for topic, payload in forged.items():
        rogue.publish(topic, payload)  # PUBACK: the broker handled (dropped) each before the fences below
    edge, analytics = broker.connect("edge-one"), broker.connect("analytics")
    for name, client in (("edge", edge), ("analytics", analytics)):
        forged[f"bems/v1/alerts/security/b-one#{name}"] = payload = nonce(f"{name}-security-alert")
        client.publish("bems/v1/alerts/security/b-one", payload)
    security = nonce("security-alert")
    rogue.publish("bems/v1/alerts/security/b-one", security)
    r, al = nonce("edge-after"), nonce("alert-after")
    edge.publish(ONE_ELEC, r)
    analytics.publish("bems/v1/alerts/electricity/b-one", al)
    later = nonce("security-alert-later")  # routed after al: when soc has it, al would have come first
    rogue.publish("bems/v1/alerts/security/b-one", later)
    wait_for(lambda: observer.got(r) and utility.got(al) and soc.got(security) and soc.got(later), 5,
             "the legitimate reading, alert and security alerts")
    assert not [p for p in forged.values() if observer.got(p) or utility.got(p) or soc.got(p)]
    assert not utility.got(security) and not soc.got(al), "each reads only its own alerts"


# --- analytics and utilities ---------------------------------------------------------------------------------

def test_utilities_read_only_their_commodities_alerts(broker: Broker) -> None:
    tavanir, gasco = broker.connect("utility-tavanir"), broker.connect("utility-gasco")
    for u in (tavanir, gasco):
        u.subscribe("#")
        u.subscribe("bems/v1/alerts/#")
    analytics = broker.connect("analytics")
    gas, water, elec = nonce("gas-alert"), nonce("water-alert"), nonce("elec-alert")
    analytics.publish("bems/v1/alerts/gas/b-one", gas)
    analytics.publish("bems/v1/alerts/water/b-one", water)
    analytics.publish("bems/v1/alerts/electricity/b-one", elec)  # last: the fence for tavanir
    wait_for(lambda: tavanir.got(elec), 5, "the electricity alert at tavanir")
    wait_for(lambda: gasco.got(gas) and gasco.got(water), 5, "the gas and water alerts at gasco")
    assert not tavanir.got(gas) and not tavanir.got(water)
    gasco.fence()
    assert not gasco.got(elec)
    # nor readings: a utility sees alerts, never the raw stream
    edge = broker.connect("edge-one")
    r = nonce("reading-for-utility")
    edge.publish(ONE_ELEC, r)
    collector = broker.connect("collector-a")
    collector.subscribe(READINGS)
    r2 = nonce("reading-2")
    edge.publish(ONE_ELEC, r2)
    wait_for(lambda: collector.got(r2), 5, "the reading at the collector (the control)")
    tavanir.fence()
    gasco.fence()
    assert not (tavanir.got(r) or tavanir.got(r2) or gasco.got(r) or gasco.got(r2))


def test_only_analytics_writes_alerts(broker: Broker) -> None:
    tavanir = broker.connect("utility-tavanir")
    tavanir.subscribe("bems/v1/alerts/electricity/#")
    forgers = {name: nonce(f"forged-by-{name}") for name in ("edge-one", "utility-gasco", "collector-a")}
    for name, payload in forgers.items():
        broker.connect(name).publish("bems/v1/alerts/electricity/b-one", payload)
    own = nonce("forged-by-tavanir")  # a reader writing where it reads: delivered before its PUBACK if allowed
    tavanir.publish("bems/v1/alerts/electricity/b-one", own)
    forgers["utility-tavanir"] = own
    analytics = broker.connect("analytics")
    real = nonce("real-alert")
    analytics.publish("bems/v1/alerts/electricity/b-one", real)
    bad_topic = nonce("analytics-reading")
    analytics.publish(ONE_ELEC, bad_topic)  # analytics writes alerts, not readings
    wait_for(lambda: tavanir.got(real), 5, "the analytics alert")
    assert not [p for p in forgers.values() if tavanir.got(p)]
    collector = broker.connect("collector-b")
    collector.subscribe(READINGS)
    mark = nonce("mark")
    edge = broker.connect("edge-two")
    analytics.publish(ONE_ELEC, bad_topic)
    edge.publish(TWO_ELEC, mark)
    wait_for(lambda: collector.got(mark), 5, "the edge reading (the control)")
    assert not collector.got(bad_topic)


def test_stages_run_from_their_env_files_through_the_locked_down_broker(tmp_path: Path) -> None:
    """The real edge and collector, configured only by their generated env files (no --broker flag), move
    simulated readings into the store through the TLS broker, and mosquitto logs each under its username."""
    need("mosquitto", "mosquitto")
    fleet = small_fleet(tmp_path / "fleet.yaml", poll_period_s=0.2)
    out = tmp_path / "conf"
    generate(BrokerOptions(fleet=fleet, out=out, port=free_port(), run_as=getpass.getuser()))
    broker = start_broker(out)
    store_url = f"sqlite:///{tmp_path}/readings.db"
    procs: list[StageProcess] = []
    try:
        with ThreadedSimulator(fleet):
            procs.append(StageProcess("collector", ["--config", str(fleet), "--store", store_url,
                                                    "--batch-interval-s", "0.1"], tmp_path / "collector.log",
                                      env=read_env(out / "clients" / "collector.env")))
            procs.append(StageProcess("edge", ["--config", str(fleet)], tmp_path / "edge.log",
                                      env=read_env(out / "clients" / "edge-test.env")))
            with open_store(store_url) as store:
                wait_for(lambda: store.sequences("test-hq.main-elec") and store.sequences("test-hq.water"), 30,
                         "both meters' readings stored through the locked-down broker")
    finally:
        codes = [p.stop() for p in procs]
        broker.stop()
    assert codes == [0, 0], [p.output()[-2000:] for p in procs]
    log = broker.log.read_text()
    assert "as edge-test (" in log and "as collector (" in log, log[-2000:]
    passwords = [read_env(out / "clients" / f"{n}.env")[f"BEMS_{s}_BROKER__PASSWORD"]
                 for n, s in (("collector", "COLLECTOR"), ("edge-test", "EDGE"))]
    assert not [pw for pw in passwords for p in procs if pw in p.output()], "a password reached a stage's log"


# --- the generated files and the command ---------------------------------------------------------------------

def test_password_hash_is_mosquittos_own_format(tmp_path: Path) -> None:
    need("mosquitto_passwd", "mosquitto")
    pwfile = tmp_path / "passwd"
    subprocess.run([find_binary("mosquitto_passwd") or "", "-c", "-b", str(pwfile), "u", "correct horse"],
                   check=True, capture_output=True)
    theirs = pwfile.read_text().strip().split(":", 1)[1]
    _, seven, iterations, salt, _digest = theirs.split("$")
    assert seven == "7"
    assert mosquitto_hash("correct horse", base64.b64decode(salt), int(iterations)) == theirs
    assert mosquitto_hash("correct horsE", base64.b64decode(salt), int(iterations)) != theirs


def test_command_keeps_secrets_off_stdout_and_files_private(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet, out = fleet_file(tmp_path / "fleet.yaml"), tmp_path / "conf"
    argv = ["broker", "config", "--config", str(fleet), "--out", str(out), "--port", "18883",
            "--utility", UTILITIES[0], "--run-as", getpass.getuser()]
    assert main(argv) == 0
    printed = capsys.readouterr()
    envs = sorted((out / "clients").glob("*.env"))
    assert [e.stem for e in envs] == sorted(["edge-one", "edge-two", "collector", "analytics", "utility-tavanir"])
    passwords = [v for e in envs for k, v in read_env(e).items() if k.endswith("PASSWORD")]
    assert len(set(passwords)) == len(envs) and all(len(p) >= 40 for p in passwords)
    shared = printed.out + printed.err + (out / "mosquitto.conf").read_text() + (out / "acl").read_text()
    shared += (out / "passwd").read_text()
    assert not [p for p in passwords if p in shared]
    for private in [*envs, out / "passwd", out / "acl", out / "tls" / "ca.key", out / "tls" / "server.key"]:
        assert private.stat().st_mode & 0o777 == 0o600, private
    assert (out / "clients").stat().st_mode & 0o777 == 0o700
    assert "utility: utility-tavanir" in printed.out


def test_rerun_keeps_ca_and_passwords_rotate_renews_one_and_removed_edges_lose_theirs(tmp_path: Path) -> None:
    fleet, out = fleet_file(tmp_path / "fleet.yaml"), tmp_path / "conf"
    opts = BrokerOptions(fleet=fleet, out=out, port=18883, run_as=getpass.getuser())
    generate(opts)

    def snapshot() -> dict[str, bytes]:
        files = [*(out / "clients").glob("*.env"), out / "tls" / "ca.crt", out / "tls" / "server.crt"]
        return {f.name: f.read_bytes() for f in files}

    first = snapshot()
    again = generate(opts)
    assert snapshot() == first and not again.new
    opts.rotate = ["edge-two"]
    rotated = generate(opts)
    assert rotated.new == ["edge-two"]
    now = snapshot()
    assert [k for k in first if first[k] != now[k]] == ["edge-two.env"]
    opts.rotate, opts.fleet = [], fleet_file(tmp_path / "fleet-one.yaml", with_two=False)
    shrunk = generate(opts)
    assert shrunk.removed == ["edge-two"] and not (out / "clients" / "edge-two.env").exists()
    assert "user edge-two" not in (out / "acl").read_text()
    opts.hostnames = ["broker.example.org"]
    generate(opts)
    assert (out / "tls" / "ca.crt").read_bytes() == first["ca.crt"]
    assert (out / "tls" / "server.crt").read_bytes() != first["server.crt"], "new name, new server certificate"


def test_rotation_reaches_a_running_broker_on_sighup(tmp_path: Path) -> None:
    need("mosquitto", "mosquitto")
    fleet, out = fleet_file(tmp_path / "fleet.yaml"), tmp_path / "conf"
    opts = BrokerOptions(fleet=fleet, out=out, port=free_port(), run_as=getpass.getuser())
    generate(opts)
    proc = start_broker(out)
    b = Broker(generate(opts), fleet, out, proc, [])
    try:
        old = b.settings("edge-one")
        session, bystander = b.connect("edge-one"), b.connect("edge-two")
        opts.rotate = ["edge-one"]
        generate(opts)
        assert proc.proc is not None
        os.kill(proc.proc.pid, signal.SIGHUP)
        new = b.settings("edge-one")
        assert new.password != old.password
        wait_for(lambda: not b.probe("old", old).connected(), 5, "the old password to be refused")
        assert session.gone.wait(5), "the session opened with the rotated password was left connected"
        assert b.connect("edge-one")
        bystander.fence()
        assert not bystander.gone.is_set(), "a client whose password did not change was disconnected"
    finally:
        for p in b.probes:
            p.stop()
        proc.stop()


@pytest.mark.parametrize(("extra", "message"), [
    (["--utility", "tavanir=steam"], "--utility 'tavanir=steam': unknown commodity 'steam'; allowed: electricity,"),
    (["--utility", "tavanir"], "--utility 'tavanir': expected NAME=commodity"),
    (["--utility", "a=gas", "--utility", "a=water"], "--utility 'a' is given twice"),
    (["--utility", "Bad Name=gas"], "name 'Bad Name' must be lowercase"),
    (["--collector", "edge-one"], "credential name 'edge-one' is used twice (edge in"),
    (["--collector", "c", "--collector", "c"], "credential name 'c' is used twice (--collector and --collector)"),
    (["--certfile", "x.pem"], "--certfile and --keyfile go together"),
    (["--listen", "0.0.0.0"], "--listen 0.0.0.0 needs --hostname"),
    (["--port", "70000"], "--port 70000 must be between 1 and 65535"),
    (["--rotate", "nobody"], "--rotate 'nobody': no such credential"),
])
def test_bad_flags_are_refused_naming_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               extra: list[str], message: str) -> None:
    fleet, out = fleet_file(tmp_path / "fleet.yaml"), tmp_path / "conf"
    argv = ["broker", "config", "--config", str(fleet), "--out", str(out), "--run-as", getpass.getuser(), *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists(), "nothing is written when a flag is wrong"


def test_building_named_alerts_is_refused(tmp_path: Path) -> None:
    dev = {"host": "127.0.0.1", "port": 1502, "device_id": 1, "profile": "sdm630"}
    fleet = write_fleet(tmp_path / "fleet.yaml", [{"id": "alerts", "name": "A", "city": "Tehran", "floor_area_m2": 1}],
                        [{"id": "alerts.electricity", "building": "alerts", "commodity": "electricity", "device": dev}],
                        [{"id": "edge-a", "building": "alerts"}])
    with pytest.raises(ConfigError, match="building id 'alerts' is reserved"):
        generate(BrokerOptions(fleet=fleet, out=tmp_path / "conf", run_as=getpass.getuser()))


def test_organisation_certificates_are_checked_and_used(tmp_path: Path) -> None:
    """Certificates brought along (here from another CA standing in for the organisation's) are checked: the key
    must match, the certificate must name the host, and the configuration points at them, generating none."""
    org = ensure_generated(tmp_path / "org", ["broker.example.org"])
    wrong_key = ensure_generated(tmp_path / "other", ["broker.example.org"]).key
    fleet, out = fleet_file(tmp_path / "fleet.yaml"), tmp_path / "conf"
    base = BrokerOptions(fleet=fleet, out=out, run_as=getpass.getuser(), hostnames=["broker.example.org"],
                         cafile=org.ca, certfile=org.cert, keyfile=org.key)
    with pytest.raises(ConfigError, match="is not the private key of --certfile"):
        generate(BrokerOptions(**{**base.__dict__, "keyfile": wrong_key}))
    with pytest.raises(ConfigError, match=r"does not name 'mqtt\.example\.org'"):
        generate(BrokerOptions(**{**base.__dict__, "hostnames": ["mqtt.example.org"]}))
    with pytest.raises(ConfigError, match="does not chain to a certificate in --cafile"):
        generate(BrokerOptions(**{**base.__dict__, "cafile": tmp_path / "other" / "ca.crt"}))
    report = generate(base)
    conf = (out / "mosquitto.conf").read_text()
    assert f"certfile {org.cert}" in conf and f"keyfile {org.key}" in conf and not (out / "tls").exists()
    assert report.url.startswith("mqtts://broker.example.org:")
    assert read_env(out / "clients" / "edge-one.env")["BEMS_EDGE_BROKER__CA_FILE"] == str(org.ca)
