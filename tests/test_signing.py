"""bems.signing on its own: libsodium's signatures are OpenSSL's, a reading verifies after its trip through JSON,
each way of being wrong is refused with its own kind, and batch proofs follow RFC 9162's tree."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import random
from pathlib import Path

import pytest

from bems.signing import (
    KeyRing,
    SignatureRejected,
    format_proof,
    generate_key,
    load_signing_key,
    merkle_tree,
    parse_proof,
    root_from_proof,
)
from bems.wire import Reading, decode_reading, sign_readings


def test_signatures_are_openssls_and_verify_with_openssl(tmp_path: Path) -> None:
    signer = generate_key(tmp_path / "k")
    rng = random.Random(7)
    for n in (0, 1, 64, 300):
        data = bytes(rng.randrange(256) for _ in range(n))
        sig = signer.sign(data)
        assert base64.b64decode(sig) == signer.key.sign(data)
        signer.key.public_key().verify(base64.b64decode(sig), data)
    assert load_signing_key(tmp_path / "k").sign(b"x") == signer.sign(b"x")


def reading(**kw: object) -> Reading:
    base = {"meter": "b1.m", "building": "b1", "edge": "e1", "seq": 2**53 + 1,
            "ts": dt.datetime(2026, 11, 25, 8, 30, 0, 123456, tzinfo=dt.UTC),
            "values": {"power_w": 0.1 + 0.2, "energy_kwh": 182733.40000000002, "power_factor_pf": -1e-7,
                       "tiny_w": 5e-324}}
    return Reading(**{**base, **kw})  # type: ignore[arg-type]


def verify(ring: KeyRing, r: Reading) -> None:
    ring.verify(r.kid, r.sig, proof=r.proof, building=r.building, meter=r.meter, edge=r.edge, ts_ms=r.ts_ms,
                seq=r.seq, values=r.values)


def test_a_signed_reading_verifies_after_json_and_each_wrong_one_says_why(tmp_path: Path) -> None:
    e1, e2, stranger = (generate_key(tmp_path / n) for n in ("e1", "e2", "x"))
    ring = KeyRing([("e1", "b1", e1.public_key), ("e2", "b2", e2.public_key)])
    signed = reading().signed(e1)
    back = decode_reading(signed.to_json())
    verify(ring, back)  # floats, a microsecond timestamp and a seq above 2^53 survive the trip
    cases = {
        "unsigned": reading(),
        "unknown_key": reading().signed(stranger),
        "wrong_edge": reading(edge="e2").signed(e1),
        "wrong_building": reading(meter="b2.m", building="b2").signed(e1),
        "bad_signature": back.model_copy(update={"values": {**back.values, "power_w": 0.3}}),
    }
    cases["bad_signature_seq"] = back.model_copy(update={"seq": back.seq + 1})
    cases["bad_signature_time"] = back.model_copy(update={"ts": back.ts + dt.timedelta(milliseconds=1)})
    cases["bad_signature_forged"] = back.model_copy(update={"sig": stranger.sign(back.signed_bytes())})
    for name, r in cases.items():
        with pytest.raises(SignatureRejected) as exc:
            verify(ring, r)
        assert exc.value.kind == name.split("_seq")[0].split("_time")[0].split("_forged")[0], name
    # a reading signed alone before edges signed in batches (the signature over its canonical bytes) still verifies
    verify(ring, back.model_copy(update={"sig": e1.sign(back.signed_bytes()), "proof": None}))
    # the quality word is not signed: the collector may lower it
    verify(ring, back.model_copy(update={"quality": "uncertain"}))


def _mth(data: list[bytes]) -> bytes:
    """RFC 9162's definition word for word: split at the largest power of two smaller than n."""
    if len(data) == 1:
        return hashlib.sha256(b"\x00" + data[0]).digest()
    k = 1 << ((len(data) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + _mth(data[:k]) + _mth(data[k:])).digest()


def _leads_to(data: bytes, index: int, size: int, path: list[bytes]) -> bytes | None:
    try:
        return root_from_proof(data, index, size, path)
    except ValueError:  # a path that cannot fit this place
        return None


def test_merkle_tree_is_rfc9162s() -> None:
    # published RFC 6962/9162 vectors (one leaf "L123456"; two leaves "N123", "N456")
    assert merkle_tree([b"L123456"])[0].hex() == "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    assert merkle_tree([b"N123", b"N456"])[0].hex() == \
        "dc9a0536ff2e196d5a628a5bf377ab247bbddf83342be39699461c1e766e6646"
    rng = random.Random(3)
    for n in range(1, 70):
        data = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))) for _ in range(n)]
        root, paths = merkle_tree(data)
        assert root == _mth(data), n
        for i, path in enumerate(paths):
            assert len(path) <= max(1, (n - 1).bit_length())
            assert root_from_proof(data[i], i, n, path) == root, (n, i)
            assert parse_proof(format_proof(i, n, path)) == (i, n, path)
            if n > 1:  # the leaf's place matters, and so does each sibling
                assert _leads_to(data[i], (i + 1) % n, n, path) != root or data[i] == data[(i + 1) % n]
                bent = list(path)
                bent[rng.randrange(len(bent))] = bytes(32)
                assert _leads_to(data[i], i, n, bent) != root
        if n > 2:
            with pytest.raises(ValueError):
                root_from_proof(data[0], 0, n, paths[0][:-1])
            with pytest.raises(ValueError):
                root_from_proof(data[0], 0, n, [*paths[0], bytes(32)])


def test_a_batch_is_verified_reading_by_reading_and_no_reading_moves_between_batches(tmp_path: Path) -> None:
    e1 = generate_key(tmp_path / "e1")
    ring = KeyRing([("e1", "b1", e1.public_key)])
    first = sign_readings([reading(seq=s, values={"power_w": float(s)}) for s in range(40)], e1)
    second = sign_readings([reading(seq=s, values={"power_w": -float(s)}) for s in range(100, 140)], e1)
    assert len({r.sig for r in first}) == 2 and first[31].sig != first[32].sig  # batches of BATCH_MAX
    assert first[0].proof.startswith("0/32/") and first[39].proof.startswith("7/8/")  # type: ignore[union-attr]
    for r in first + second:
        verify(ring, decode_reading(r.to_json()))
    wrong = {
        "another batch's signature": first[3].model_copy(update={"sig": second[3].sig}),
        "another reading's proof": first[3].model_copy(update={"proof": first[4].proof}),
        "no proof": first[3].model_copy(update={"proof": None}),
        "another size": first[3].model_copy(update={"proof": first[3].proof.replace("/32/", "/33/")}),  # type: ignore[union-attr]
        "a value changed": first[3].model_copy(update={"values": {"power_w": 3.5}}),
        "a torn proof": first[3].model_copy(update={"proof": first[3].proof[:-8]}),  # type: ignore[index]
    }
    for name, r in wrong.items():  # each after its batch's root was verified and remembered
        with pytest.raises(SignatureRejected) as exc:
            verify(ring, r)
        assert exc.value.kind == "bad_signature", name
