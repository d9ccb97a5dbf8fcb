"""One contract, every backend: what analytics and the API rely on from a store."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bems.signing import KeyRing, Signer, key_id
from bems.store import Store, open_store
from bems.wire import Reading, sign_readings

T0 = dt.datetime(2026, 11, 21, 0, 0, tzinfo=dt.UTC)  # a Saturday
H = dt.timedelta(hours=1)


@pytest.fixture(params=["sqlite", "influx"])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[Store]:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        s = open_store(f"sqlite:///{tmp_path}/store.db")
    else:
        server = request.getfixturevalue("influxd")
        s = open_store(server.url("contract"))
    yield s
    s.close()


def reading(meter: str, ts: dt.datetime, seq: int, **values: float) -> Reading:
    return Reading(meter=meter, building=meter.split(".")[0], edge="edge-a", ts=ts, seq=seq,
                   values=values, quality="good")


def test_write_is_idempotent_and_counted(store: Store) -> None:
    rs = [reading("b1.m1", T0 + i * dt.timedelta(minutes=15), i, power_w=100.0 + i) for i in range(8)]
    first = store.write(rs)
    store.write(rs[2:5])
    assert first.written == 8
    assert store.count() == 8
    assert store.count("b1.m1") == 8
    assert store.sequences("b1.m1") == list(range(8))


def test_read_matrix_buckets_and_gaps(store: Store) -> None:
    # m1: four readings per hour for hours 0 and 2 (hour 1 is a gap); m2: only hour 1
    rs = [reading("b1.m1", T0 + h * H + q * dt.timedelta(minutes=15), h * 4 + q, power_w=float(h * 10 + q))
          for h in (0, 2) for q in range(4)]
    rs += [reading("b1.m2", T0 + H + dt.timedelta(minutes=5), 100, power_w=7.5)]
    store.write(rs)
    m = store.read_matrix(["b1.m1", "b1.m2", "b1.none"], "power_w", T0, T0 + 3 * H, H, "mean")
    assert m.values.shape == (3, 3)
    assert list(m.times) == [np.datetime64("2026-11-21T00:00:00"), np.datetime64("2026-11-21T01:00:00"),
                             np.datetime64("2026-11-21T02:00:00")]
    np.testing.assert_allclose(m.values[0], [1.5, np.nan, 21.5])
    np.testing.assert_allclose(m.values[1], [np.nan, 7.5, np.nan])
    assert np.isnan(m.values[2]).all()
    mx = store.read_matrix(["b1.m1"], "power_w", T0, T0 + 3 * H, H, "max")
    np.testing.assert_allclose(mx.values[0], [3, np.nan, 23])
    last = store.read_matrix(["b1.m1"], "power_w", T0, T0 + 3 * H, H, "last")
    np.testing.assert_allclose(last.values[0], [3, np.nan, 23])
    first = store.read_matrix(["b1.m1"], "power_w", T0, T0 + 3 * H, H, "first")
    np.testing.assert_allclose(first.values[0], [0, np.nan, 20])


def test_consumption_from_cumulative_register(store: Store) -> None:
    # energy rises 2 kWh per 15 min: 8 kWh per hour
    rs = [reading("b1.m1", T0 + i * dt.timedelta(minutes=15), i, energy_kwh=1000.0 + 2 * i) for i in range(17)]
    store.write(rs)
    c = store.read_consumption(["b1.m1"], "energy_kwh", T0 + H, T0 + 4 * H, H)
    np.testing.assert_allclose(c.values[0], [8.0, 8.0, 8.0])
    assert c.times[0] == np.datetime64("2026-11-21T01:00:00")


def test_latest_per_meter(store: Store) -> None:
    store.write([reading("b1.m1", T0, 1, power_w=1.0, energy_kwh=5.0),
                 reading("b1.m1", T0 + H, 2, power_w=2.0, energy_kwh=6.0),
                 reading("b2.m1", T0, 3, volume_m3=9.25)])
    latest = store.latest(["b1.m1", "b2.m1", "b3.x"])
    assert set(latest) == {"b1.m1", "b2.m1"}
    assert latest["b1.m1"].ts == T0 + H
    assert latest["b1.m1"].values == {"power_w": 2.0, "energy_kwh": 6.0}
    assert latest["b2.m1"].values == {"volume_m3": 9.25}


PULSE_WRAP = 2**32 * 0.01  # an ADAM-6050 uint32 pulse counter of 0.01 m3


def test_consumption_across_rollover_and_meter_swap(store: Store) -> None:
    # water: +0.5 m3 per 15 min from 3 m3 below the wrap, so the counter wraps in the second hour;
    # electricity: +2 kWh per 15 min, the meter is replaced after 1h30 and the new one counts from zero
    step = dt.timedelta(minutes=15)
    water = [((2**32 - 300 + 50 * i) % 2**32) / 100 for i in range(17)]
    elec = [182733.5 + 2 * i if i <= 6 else 2.0 * (i - 6) for i in range(17)]
    store.register_counters({("b1.water", "volume_m3"): PULSE_WRAP, ("b1.elec", "energy_kwh"): None})
    store.write([reading("b1.water", T0 + i * step, i, volume_m3=v) for i, v in enumerate(water)]
                + [reading("b1.elec", T0 + i * step, 100 + i, energy_kwh=v) for i, v in enumerate(elec)])
    c = store.read_consumption(["b1.water", "b1.elec"], "volume_m3", T0 + H, T0 + 4 * H, H)
    np.testing.assert_allclose(c.values[0], [2.0, 2.0, 2.0], atol=1e-6)
    assert np.isnan(c.values[1]).all()
    e = store.read_consumption(["b1.elec"], "energy_kwh", T0 + H, T0 + 4 * H, H)
    np.testing.assert_allclose(e.values[0], [8.0, 8.0, 8.0])
    np.testing.assert_allclose(store.counter_wraps(["b1.elec", "b1.water"], "volume_m3"), [np.nan, PULSE_WRAP])


def test_negative_delta_is_never_negative_consumption(store: Store) -> None:
    values = [500.0, 502.0, 501.0, 503.0, 505.0, 400.0, 402.0, 404.0, 406.0]  # a glitch, then a drop to 400
    store.write([reading("b1.m1", T0 + i * dt.timedelta(minutes=20), i, energy_kwh=v) for i, v in enumerate(values)])
    c = store.read_consumption(["b1.m1"], "energy_kwh", T0 + H, T0 + 3 * H, H)
    # hour 1 (01:00, 01:20, 01:40): 501 -> 503 -> 505 (+4), 505 -> 400 counts 0; hour 2: 400 -> 406 (+6)
    np.testing.assert_allclose(c.values[0], [4.0, 6.0])
    assert store.points("b1.m1", "energy_kwh", T0, T0 + 3 * H).values.size == len(values)


def test_flags_are_stored_with_the_raw_value(store: Store) -> None:
    rs = [reading("b1.m1", T0 + i * H, i, energy_kwh=v) for i, v in enumerate([10.0, 20.0, 0.5])]
    store.write(rs, flags=[0, 0, 2])
    pts = store.points("b1.m1", "energy_kwh", T0, T0 + 3 * H)
    assert list(pts.values) == [10.0, 20.0, 0.5]
    assert list(pts.seq) == [0, 1, 2]
    assert pts.flag_names() == [(), (), ("reset",)]
    assert pts.times[2] == np.datetime64("2026-11-21T02:00:00.000")
    assert store.latest(["b1.m1"])["b1.m1"].flags == ("reset",)
    assert store.points("b1.none", "energy_kwh", T0, T0 + H).values.size == 0


# awkward floats: no short decimal form, beyond 2**53, tiny, huge, a whole number, a negative zero
AWKWARD = [0.1 + 0.2, 123456789.12345679, 2.0**53 + 2, 1e-300, 1.7976931348623157e308, 5.0, -0.0, -1234.5678e-9]


def test_signed_points_give_back_every_field_exactly_and_verify(store: Store) -> None:
    signer = Signer(Ed25519PrivateKey.generate(), "")
    signer = Signer(signer.key, key_id(signer.key.public_key()))
    ring = KeyRing([("edge-a", "b1", signer.public_key)])
    rs = sign_readings([reading("b1.m1", T0 + i * dt.timedelta(minutes=1, milliseconds=7), 40 + i, power_w=v,
                                energy_kwh=1000.0 + i / 3) for i, v in enumerate(AWKWARD)], signer)  # one batch
    rs.append(reading("b1.m1", T0 + 20 * H, 99, volume_m3=2.5))  # unsigned, other fields, also in the range
    rs.append(reading("b1.m1", T0 + 30 * H, 100, power_w=1.0).signed(signer))  # after the range
    rs.append(reading("b1.m2", T0 + H, 7, power_w=3.0).signed(signer))  # another meter
    store.write(list(reversed(rs)))
    got = store.signed_points("b1.m1", T0, T0 + 24 * H)
    want = rs[:-2]
    assert len(got) == len(want)
    assert got.ts_ms.tolist() == [r.ts_ms for r in want]
    assert got.seq.tolist() == [r.seq for r in want]
    assert got.edge == ["edge-a"] * len(want)
    assert got.kid == [r.kid for r in want] and got.sig == [r.sig for r in want]
    assert got.proof == [r.proof for r in want] and got.proof[0] and len(set(got.proof)) == len(want)
    assert got.kid[-1] is None and got.sig[-1] is None
    for r, values in zip(want, got.values, strict=True):
        assert {k: repr(v + 0.0) for k, v in values.items()} == {k: repr(v + 0.0) for k, v in r.values.items()}
    for i in range(len(want) - 1):  # the signatures made before the write check against what came back
        ring.verify(got.kid[i], got.sig[i], proof=got.proof[i], building="b1", meter="b1.m1", edge=got.edge[i],
                    ts_ms=int(got.ts_ms[i]), seq=int(got.seq[i]), values=got.values[i])
    assert len(store.signed_points("b1.none", T0, T0 + H)) == 0
    day = 86_400_000
    t0 = int(T0.timestamp() * 1000)
    assert store.day_counts(["b1.m1", "b1.m2", "b1.none"], T0 - 24 * H, T0 + 48 * H) == {
        "b1.m1": {t0: len(want), t0 + day: 1}, "b1.m2": {t0: 1}}


def test_sqlite_store_of_an_older_version_gains_the_signature_and_proof_columns(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(f"""
        CREATE TABLE meter (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
        CREATE TABLE reading (meter_id INTEGER NOT NULL, ts INTEGER NOT NULL, edge TEXT NOT NULL,
            seq INTEGER NOT NULL, quality INTEGER NOT NULL, flags INTEGER NOT NULL DEFAULT 0, "power_w" REAL,
            PRIMARY KEY (meter_id, ts)) WITHOUT ROWID;
        INSERT INTO meter VALUES (1, 'b1.m1');
        INSERT INTO reading VALUES (1, {int(T0.timestamp() * 1000)}, 'edge-a', 1, 0, 0, 12.5);""")
    db.close()
    signer = Signer(Ed25519PrivateKey.generate(), "kid-of-the-tests")
    with open_store(f"sqlite:///{path}") as store:
        store.write(sign_readings([reading("b1.m1", T0 + H * k, k, power_w=13.5) for k in (1, 2)], signer))
        got = store.signed_points("b1.m1", T0 - 24 * H, T0 + 24 * H)
        assert got.values == [{"power_w": 12.5}, {"power_w": 13.5}, {"power_w": 13.5}]
        assert got.kid == [None, "kid-of-the-tests", "kid-of-the-tests"] and got.sig[0] is None and got.sig[1]
        assert got.proof[0] is None and got.proof[1].startswith("0/2/")  # type: ignore[union-attr]
        assert store.latest(["b1.m1"])["b1.m1"].values == {"power_w": 13.5}
