"""bems.signing on its own: libsodium's signatures are OpenSSL's, a reading verifies after its trip through JSON,
and each way of being wrong is refused with its own kind."""

from __future__ import annotations

import base64
import datetime as dt
import random
from pathlib import Path

import pytest

from bems.signing import KeyRing, SignatureRejected, generate_key, load_signing_key
from bems.wire import Reading, decode_reading


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
    ring.verify(r.kid, r.sig, building=r.building, meter=r.meter, edge=r.edge, ts_ms=r.ts_ms, seq=r.seq,
                values=r.values)


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
    # the quality word is not signed: the collector may lower it
    verify(ring, back.model_copy(update={"quality": "uncertain"}))
