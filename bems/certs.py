"""TLS material for the broker: a private CA and a server certificate, or checks on certificates brought along.

The generated CA is for a pilot or a test bench; a production broker should carry a certificate from the
organisation's CA (``bems broker config --cafile --certfile --keyfile``), checked here before it is used.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bems.errors import ConfigError

CA_DAYS = 3650
SERVER_DAYS = 825
RENEW_BEFORE_DAYS = 30


@dataclass(frozen=True)
class TlsFiles:
    """What the broker listener and its clients need; ``ca`` is None when the server certificate chains to a
    CA the clients already trust (their system store)."""

    ca: Path | None
    cert: Path
    key: Path


def write_private(path: Path, data: bytes | str) -> None:
    """Write a file only its owner can read (0600), replacing any older one in one step: a broker reloading
    on SIGHUP never reads half a file, and a file that had wider rights does not keep them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, raw)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def cert_names(cert: x509.Certificate) -> set[str]:
    """DNS names and IP addresses of a certificate's subjectAltName (what TLS clients check the host against)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return set(san.get_values_for_type(x509.DNSName)) | {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_cert(path: Path, flag: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot read it ({exc.strerror})") from exc
    except ValueError as exc:
        raise ConfigError(f"{flag} {path}: not a PEM certificate ({exc})") from exc


def _load_key(path: Path, flag: str):  # type: ignore[no-untyped-def]
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot read it ({exc.strerror})") from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{flag} {path}: not an unencrypted PEM private key (mosquitto cannot prompt for a "
                          f"passphrase): {exc}") from exc


def _public_der(key) -> bytes:  # type: ignore[no-untyped-def]
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _make_ca(tls_dir: Path, common_name: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    write_private(tls_dir / "ca.key", _key_pem(key))
    (tls_dir / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _issue_server(tls_dir: Path, names: list[str]) -> None:
    ca_cert = _load_cert(tls_dir / "ca.crt", "CA certificate")
    ca_key = _load_key(tls_dir / "ca.key", "CA key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(_san(names), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    write_private(tls_dir / "server.key", _key_pem(key))
    (tls_dir / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _server_still_good(tls_dir: Path, names: list[str]) -> bool:
    """Keep the existing server certificate when it names every host, is not about to expire and chains to
    the CA in the same directory: re-running the generator must not churn certificates for nothing."""
    crt, key = tls_dir / "server.crt", tls_dir / "server.key"
    if not (crt.exists() and key.exists()):
        return False
    cert = _load_cert(crt, "server certificate")
    ca = _load_cert(tls_dir / "ca.crt", "CA certificate")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return (set(names) <= cert_names(cert)
            and cert.not_valid_after_utc - _now() > dt.timedelta(days=RENEW_BEFORE_DAYS)
            and _public_der(_load_key(key, "server key").public_key()) == _public_der(cert.public_key()))


def ensure_generated(tls_dir: Path, names: list[str], ca_name: str = "bems broker CA") -> TlsFiles:
    """A private CA (created once, kept on later runs so clients keep trusting it) and a server certificate
    for ``names`` (DNS names or IP addresses), re-issued only when the names changed or it nears expiry."""
    tls_dir.mkdir(parents=True, exist_ok=True)
    if not ((tls_dir / "ca.crt").exists() and (tls_dir / "ca.key").exists()):
        _make_ca(tls_dir, ca_name)
    if not _server_still_good(tls_dir, names):
        _issue_server(tls_dir, names)
    return TlsFiles(ca=tls_dir / "ca.crt", cert=tls_dir / "server.crt", key=tls_dir / "server.key")


def check_given(cafile: Path | None, certfile: Path, keyfile: Path, host: str) -> TlsFiles:
    """Certificates from the organisation's CA: the key must match the certificate, the certificate must name
    the host clients connect to and be valid now, and chain to ``cafile`` when one is given."""
    cert = _load_cert(certfile, "--certfile")
    key = _load_key(keyfile, "--keyfile")
    if _public_der(key.public_key()) != _public_der(cert.public_key()):
        raise ConfigError(f"--keyfile {keyfile} is not the private key of --certfile {certfile}")
    now = _now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ConfigError(f"--certfile {certfile} is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} to "
                          f"{cert.not_valid_after_utc:%Y-%m-%d})")
    names = cert_names(cert)
    if host not in names:
        carried = ", ".join(sorted(names)) or "none"
        raise ConfigError(f"--certfile {certfile} does not name {host!r} (it names: {carried}); pass --hostname "
                          "with a name the certificate carries, the one clients connect to")
    if cafile is not None and not _chains_to(cert, _load_all_certs(certfile, "--certfile")[1:],
                                             _load_all_certs(cafile, "--cafile")):
        raise ConfigError(f"--certfile {certfile} does not chain to a certificate in --cafile {cafile}; give the CA "
                          "that issued it (intermediates go after the server certificate in --certfile)")
    return TlsFiles(ca=cafile.resolve() if cafile else None, cert=certfile.resolve(), key=keyfile.resolve())


def _load_all_certs(path: Path, flag: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot read it ({exc.strerror})") from exc
    except ValueError as exc:
        raise ConfigError(f"{flag} {path}: not PEM certificates ({exc})") from exc


def _chains_to(leaf: x509.Certificate, intermediates: list[x509.Certificate],
               anchors: list[x509.Certificate]) -> bool:
    """Signature walk from the leaf through the intermediates to one of the anchors (at most 5 links)."""
    current = leaf
    for _ in range(5):
        if any(_issued_by(current, ca) for ca in anchors):
            return True
        parent = next((c for c in intermediates if c != current and _issued_by(current, c)), None)
        if parent is None:
            return False
        current = parent
    return False


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
