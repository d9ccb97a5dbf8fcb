"""The edge against a locked-down mosquitto: TLS with a CA made by the test, password or client-certificate login,
and an ACL that confines each edge login to its building. A publish outside the ACL is refused by the broker
(MQTT 5 PUBACK reason code 0x87) and reported by the edge, not retried forever and not silently lost."""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bems.services import Mosquitto, find_binary, free_port
from tests.conftest import need
from tests.edge_support import Edge, Subscriber, queued
from tests.stages import ThreadedSimulator, wait_for, write_fleet


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None = None,
          issuer_key: ec.EllipticCurvePrivateKey | None = None, ca: bool = False) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                      content_commitment=False, key_encipherment=False,
                                                      data_encipherment=False, key_agreement=False,
                                                      encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def make_pki(d: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate whose CN is the login ``edge-c``."""
    d.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("bems test CA", ca_key, ca=True)
    for name, cert, key in (("ca", ca, ca_key),
                            *((n, _cert(cn, k, ca.subject, ca_key), k) for n, cn, k in (
                                ("server", "127.0.0.1", ec.generate_private_key(ec.SECP256R1())),
                                ("client", "edge-c", ec.generate_private_key(ec.SECP256R1())))),):
        files[f"{name}_crt"] = d / f"{name}.crt"
        files[f"{name}_crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{name}_key"] = d / f"{name}.key"
        files[f"{name}_key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    return files


BUILDINGS = [{"id": "test-hq", "name": "Test HQ", "city": "Tehran", "floor_area_m2": 5000},
             {"id": "other-hq", "name": "Other HQ", "city": "Mashhad", "floor_area_m2": 3000}]


@pytest.fixture
def secure_broker(tmp_path: Path):  # type: ignore[no-untyped-def]
    need("mosquitto", "mosquitto")
    need("mosquitto_passwd", "mosquitto")
    pki = make_pki(tmp_path / "pki")
    pw = tmp_path / "passwd"
    passwd = find_binary("mosquitto_passwd") or "mosquitto_passwd"
    subprocess.run([passwd, "-c", "-b", str(pw), "edge-a", "edge-a-secret"], check=True, capture_output=True)
    subprocess.run([passwd, "-b", str(pw), "reader", "reader-secret"], check=True, capture_output=True)
    acl = tmp_path / "acl"
    acl.write_text("user edge-a\ntopic write bems/v1/test-hq/#\n\nuser edge-c\ntopic write bems/v1/test-hq/#\n\n"
                   "user reader\ntopic read bems/v1/#\n")
    cert_port = free_port()
    tls = f"cafile {pki['ca_crt']}\ncertfile {pki['server_crt']}\nkeyfile {pki['server_key']}\n"
    broker = Mosquitto(tmp_path / "mosquitto", anonymous=False, extra=(
        tls + f"password_file {pw}\nacl_file {acl}\n"
        f"listener {cert_port} 127.0.0.1\n" + tls + "require_certificate true\nuse_identity_as_username true\n"))
    broker.start()
    yield broker, cert_port, pki
    broker.stop()


def test_tls_login_acl_and_refused_publish(secure_broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    broker, cert_port, pki = secure_broker
    port = free_port()
    meters = [{"id": "test-hq.water", "building": "test-hq", "commodity": "water", "edge": "edge-test",
               "device": {"port": port, "device_id": 1, "profile": "adam6050"}},
              {"id": "test-hq.gas", "building": "test-hq", "commodity": "gas", "edge": "edge-cert",
               "device": {"port": port, "device_id": 2, "profile": "adam6050"}},
              {"id": "other-hq.water", "building": "other-hq", "commodity": "water",
               "device": {"port": port, "device_id": 3, "profile": "adam6050"}}]
    edges = [{"id": "edge-test", "building": "test-hq", "poll_period_s": 0.3},
             {"id": "edge-cert", "building": "test-hq", "poll_period_s": 0.3},
             {"id": "edge-other", "building": "other-hq", "poll_period_s": 0.3}]
    fleet = write_fleet(tmp_path / "fleet.yaml", BUILDINGS, meters, edges)
    url = f"mqtts://127.0.0.1:{broker.port}"
    login = {"BEMS_EDGE_BROKER__USERNAME": "edge-a", "BEMS_EDGE_BROKER__PASSWORD": "edge-a-secret",
             "BEMS_EDGE_BROKER__CA_FILE": str(pki["ca_crt"])}
    with ThreadedSimulator(fleet):
        sub = Subscriber(broker.port, "bems/v1/+/+/reading", "acl-checker", username="reader",
                         password="reader-secret", ca_file=str(pki["ca_crt"]))
        wrong = Edge(tmp_path / "d", fleet, url, name="edge-wrong-password", edge_id="edge-other", env={
            **login, "BEMS_EDGE_BROKER__PASSWORD": "not-the-password"})
        try:
            wait_for(lambda: "Not authorized" in wrong.proc.output(), 20, "the wrong password to be reported")
        finally:
            codes = [wrong.proc.stop()]
        allowed = Edge(tmp_path / "a", fleet, url, env=login, name="edge-allowed")
        # the same login used by the edge of another building: the ACL does not let it publish there
        denied = Edge(tmp_path / "b", fleet, url, env=login, name="edge-denied", edge_id="edge-other")
        by_cert = Edge(tmp_path / "c", fleet, f"mqtts://127.0.0.1:{cert_port}", name="edge-cert", edge_id="edge-cert",
                       env={"BEMS_EDGE_BROKER__CA_FILE": str(pki["ca_crt"]),
                            "BEMS_EDGE_BROKER__CERT_FILE": str(pki["client_crt"]),
                            "BEMS_EDGE_BROKER__KEY_FILE": str(pki["client_key"])})
        try:
            wait_for(lambda: denied.wait_metrics()["bems_edge_refused_total"] >= 3, 20,
                     "the broker to refuse the other building's readings")
            wait_for(lambda: len(sub.by_meter().get("test-hq.water", [])) >= 10, 20, "readings over TLS")
            wait_for(lambda: len(sub.by_meter().get("test-hq.gas", [])) >= 5, 20, "readings of the certificate login")
            time.sleep(1)
            m_denied, m_allowed, m_cert = denied.metrics(), allowed.metrics(), by_cert.metrics()
        finally:
            codes += [e.proc.stop() for e in (allowed, denied, by_cert)]
            sub.close()
    assert codes == [0, 0, 0, 0], denied.proc.output()
    by_meter = sub.by_meter()
    assert "other-hq.water" not in by_meter, "the broker let a reading through outside the ACL"
    assert {r["edge"] for r in by_meter["test-hq.water"]} == {"edge-test"}
    assert {r["edge"] for r in by_meter["test-hq.gas"]} == {"edge-cert"}
    assert m_allowed["bems_edge_published_total"] >= 10 and m_allowed["bems_edge_refused_total"] == 0
    assert m_cert["bems_edge_published_total"] >= 5 and m_cert["bems_edge_refused_total"] == 0, "client certificate"
    assert m_denied["bems_edge_published_total"] == 0
    out = denied.proc.output()
    assert "ERROR bems.edge" in out and "refused" in out and "Not authorized" in out
    assert out.count("readings refused") == 1, "reported at ERROR once, then at DEBUG"
    assert not queued(denied.queue), "refused readings are set aside, not retried forever"
    assert "edge-a-secret" not in out + allowed.proc.output(), "secrets never logged"
