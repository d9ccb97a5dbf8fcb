"""Signed readings: each edge signs its readings with its own Ed25519 key; anyone with the fleet file verifies.

Ed25519 rather than HMAC: the collector, the API and an auditor hold only public keys, so none of them can forge
a reading, and a stored reading stays verifiable years later by whoever has the fleet file. The signed bytes are
rebuilt from what the store keeps (building, meter, edge, time in ms, sequence number, values), so a reading is
verified on arrival and again at rest (``bems verify``). The edge's quality word is not signed: the collector may
lower it (a counter rollover makes a reading "uncertain") without breaking the signature.

One signature per batch, not per reading. An edge signs the readings it queues together (up to ``BATCH_MAX``) as
the leaves of a Merkle tree (RFC 9162, section 2.1: SHA-256, leaves and nodes hashed with different prefixes)
and signs the tree's root and size once; each reading travels and is stored with its inclusion proof (its index,
the batch size and the sibling hashes on its way to the root, five for a full batch). A reading stays verifiable on
its own, by any collector of a ``$share`` group and years later, but the costly Ed25519 check (~40 us here) is
made once per batch and verifier: ``KeyRing`` remembers the roots it has verified, so the other readings of the
batch cost their few hashes. A reading signed alone has no proof: it is a batch of one. A batch's readings are
numbered (``seq``) before they are signed, so a replayed batch is caught like a replayed reading.

Keys are made and stored (PKCS#8 PEM) with ``cryptography``; signing and verifying go through libsodium (PyNaCl,
from the same PyCA maintainers), which here verifies in about half and signs in about 60% of OpenSSL's time.
Ed25519 is deterministic, so both libraries give the same signature. The tree hashing is RFC 9162's few lines,
written here: no maintained Python library of the field offers it apart from a whole transparency log.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nacl.bindings import crypto_sign, crypto_sign_open, crypto_sign_seed_keypair
from nacl.exceptions import CryptoError

from bems.certs import write_private
from bems.errors import BemsError, ConfigError

DOMAIN = "bems-reading-v1"
BATCH_DOMAIN = b"bems-batch-v1"
BATCH_MAX = 32  # readings under one signature: 5 proof hashes each; the collector verifies once per 32
ROOT_CACHE = 4096  # verified batch roots a key ring remembers
PROOF_PATTERN = r"^[0-9]{1,5}/[0-9]{1,5}/[A-Za-z0-9+/]*={0,2}$"
KID_PATTERN = r"^[A-Za-z0-9_-]{16}$"
SIG_PATTERN = r"^[A-Za-z0-9+/]{86}==$"
PUBLIC_KEY_PATTERN = r"^[A-Za-z0-9+/]{43}=$"


class SignatureRejected(BemsError):
    """A reading that must not be stored; ``kind`` is the dead-letter reason (unsigned, unknown_key, ...)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def canonical(building: str, meter: str, edge: str, ts_ms: int, seq: int, values: Mapping[str, float]) -> bytes:
    """The signed bytes: one field per line, values by name with the shortest exact float text.

    ``+ 0.0`` turns -0.0 into 0.0: SQLite keeps a whole REAL as an integer and so gives -0.0 back as 0.0; the
    sign of a zero reading means nothing, and a signature must survive the store.
    """
    lines = [DOMAIN, building, meter, edge, str(int(ts_ms)), str(int(seq))]
    lines += [f"{name}={float(values[name]) + 0.0!r}" for name in sorted(values)]
    return "\n".join(lines).encode()


def _leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def batch_message(root: bytes, size: int) -> bytes:
    """What the edge's key signs for a batch: its tree's root and its size."""
    return b"%s\n%d\n%s" % (BATCH_DOMAIN, size, root)


def merkle_tree(data: Sequence[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The RFC 9162 tree hash of ``data`` and each leaf's inclusion path (sibling hashes, bottom up).

    Built level by level, pairing from the left and carrying an odd last node up unchanged: the same tree as the
    RFC's recursive split at the largest power of two below the size (tests/test_signing.py holds them equal).
    """
    if not data:
        raise ValueError("a batch needs at least one reading")
    level = [_leaf(d) for d in data]
    paths: list[list[bytes]] = [[] for _ in data]
    pos = list(range(len(data)))  # each leaf's ancestor in the current level
    while len(level) > 1:
        for leaf, p in enumerate(pos):
            if p ^ 1 < len(level):
                paths[leaf].append(level[p ^ 1])
        level = [_node(level[k], level[k + 1]) if k + 1 < len(level) else level[k] for k in range(0, len(level), 2)]
        pos = [p >> 1 for p in pos]
    return level[0], paths


def root_from_proof(data: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes:
    """The root a leaf and its inclusion path lead to (RFC 9162, 2.1.3.2); ValueError if the path cannot fit."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} outside a batch of {size}")
    fn, sn, r = index, size - 1, _leaf(data)
    for p in path:
        if sn == 0:
            raise ValueError("inclusion path longer than the batch's tree")
        if fn & 1 or fn == sn:
            r = _node(p, r)
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("inclusion path shorter than the batch's tree")
    return r


def format_proof(index: int, size: int, path: Sequence[bytes]) -> str:
    """``index/size/base64(sibling hashes)``: one string, as the wire and both stores carry it."""
    return f"{index}/{size}/{base64.b64encode(b''.join(path)).decode()}"


def parse_proof(proof: str | None) -> tuple[int, int, list[bytes]]:
    """(index, size, path) of a proof string; no proof is a batch of one."""
    if proof is None:
        return 0, 1, []
    index, size, hashes = proof.split("/", 2)
    raw = base64.b64decode(hashes)
    if len(raw) % 32:
        raise ValueError("inclusion path is not a whole number of SHA-256 hashes")
    return int(index), int(size), [raw[k:k + 32] for k in range(0, len(raw), 32)]


def _opens(raw_key: bytes, sig: str, message: bytes) -> bool:
    """Whether ``sig`` is the key's Ed25519 signature of ``message``."""
    try:
        crypto_sign_open(base64.b64decode(sig) + message, raw_key)
    except (CryptoError, ValueError):
        return False
    return True


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short fingerprint of a public key, carried in every signed payload so the verifier picks the key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.urlsafe_b64encode(hashlib.sha256(raw).digest())[:16].decode()


def public_key_text(public_key: Ed25519PublicKey) -> str:
    """The form the fleet file registers: the 32 raw bytes in base64."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def parse_public_key(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise ValueError(f"not an Ed25519 public key (32 bytes in base64, as `bems edge keygen` prints): {exc}") \
            from None


@dataclass(frozen=True)
class Signer:
    """An edge's private key; ``sign`` returns the base64 signature of a reading's canonical bytes."""

    key: Ed25519PrivateKey
    kid: str
    _sodium_key: bytes = field(init=False, repr=False)  # libsodium's form: signs in about 60% of OpenSSL's time

    def __post_init__(self) -> None:
        seed = self.key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                      serialization.NoEncryption())
        object.__setattr__(self, "_sodium_key", crypto_sign_seed_keypair(seed)[1])

    def sign(self, data: bytes) -> str:
        """Ed25519 is deterministic: the same signature OpenSSL would give (tests/test_signing.py)."""
        return base64.b64encode(crypto_sign(data, self._sodium_key)[:64]).decode()

    def sign_batch(self, data: Sequence[bytes]) -> tuple[str, list[str | None]]:
        """One signature over the Merkle root of ``data`` (readings' canonical bytes) and each one's proof."""
        root, paths = merkle_tree(data)
        n = len(data)
        proofs = [format_proof(i, n, path) if n > 1 else None for i, path in enumerate(paths)]
        return self.sign(batch_message(root, n)), proofs

    @property
    def public_key(self) -> str:
        return public_key_text(self.key.public_key())


def generate_key(path: str | Path, *, force: bool = False) -> Signer:
    """Write a new private key (PKCS#8 PEM, mode 0600); refuses to overwrite one unless ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists; keep it, or pass --force to replace it (readings signed with "
                          f"the old key still verify while its public key stays in the fleet file)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    write_private(path, pem)
    return Signer(key, key_id(key.public_key()))


def load_signing_key(path: str | Path) -> Signer:
    path = Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"signing key {path}: {exc.strerror}; create it with `bems edge keygen --out {path}`") \
            from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"signing key {path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"signing key {path}: not an Ed25519 key; create one with `bems edge keygen`")
    return Signer(key, key_id(key.public_key()))


@dataclass(frozen=True)
class RegisteredKey:
    edge: str
    building: str
    key: Ed25519PublicKey
    raw: bytes  # the 32 bytes libsodium verifies with


class KeyRing:
    """The fleet's public keys by key id; an edge may have several while a key is being rotated."""

    def __init__(self, keys: Iterable[tuple[str, str, str]]) -> None:
        """``keys``: (edge id, building id, public key text) triples."""
        self._by_kid: dict[str, RegisteredKey] = {}
        for edge, building, text in keys:
            public = parse_public_key(text)
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            self._by_kid[key_id(public)] = RegisteredKey(edge, building, public, raw)
        # a batch's root checked once stands for all its readings (the answer depends on nothing else)
        self._root_ok = functools.lru_cache(maxsize=ROOT_CACHE)(self._verify_root)

    @staticmethod
    def _verify_root(raw_key: bytes, sig: str, size: int, root: bytes) -> bool:
        return _opens(raw_key, sig, batch_message(root, size))

    def __len__(self) -> int:
        return len(self._by_kid)

    def verify(self, kid: str | None, sig: str | None, *, proof: str | None = None, building: str, meter: str,
               edge: str, ts_ms: int, seq: int, values: Mapping[str, float]) -> RegisteredKey:
        """Return the key that signed this reading's batch, or raise SignatureRejected naming why not."""
        if not kid or not sig:
            raise SignatureRejected("unsigned", f"reading of {meter} from edge {edge!r} carries no signature")
        registered = self._by_kid.get(kid)
        if registered is None:
            raise SignatureRejected("unknown_key", f"reading of {meter} is signed with key {kid!r}, which no edge "
                                                   f"in the fleet file registers")
        if registered.edge != edge:
            raise SignatureRejected("wrong_edge", f"reading of {meter} claims edge {edge!r} but is signed with "
                                                  f"the key of edge {registered.edge!r}")
        if registered.building != building:
            raise SignatureRejected("wrong_building", f"edge {edge!r} serves building {registered.building!r} and "
                                                      f"may not send readings for building {building!r}")
        try:
            data = canonical(building, meter, edge, ts_ms, seq, values)
            index, size, path = parse_proof(proof)
            root = root_from_proof(data, index, size, path)
        except ValueError as exc:
            raise SignatureRejected("bad_signature", f"reading of {meter} from edge {edge!r} seq {seq}: its batch "
                                                     f"proof {proof!r} is malformed ({exc})") from None
        # a reading stored before edges signed in batches has its signature over its canonical bytes themselves
        # (their own domain, ``bems-reading-v1``, so neither form can pass for the other)
        if not self._root_ok(registered.raw, sig, size, root) and not (proof is None
                                                                       and _opens(registered.raw, sig, data)):
            raise SignatureRejected("bad_signature", f"reading of {meter} from edge {edge!r} seq {seq}: signature "
                                                     f"does not match key {kid!r}")
        return registered
