"""Tamper evidence at rest: seals and signatures, ``bems seal`` and ``bems verify``, on SQLite and InfluxDB 1.x.

Every alteration is made behind the application's back, the way an intruder with database access would: an SQL
UPDATE/DELETE on the SQLite file, a point written over (same series and time) or deleted in InfluxDB.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from analytics.service import seal_recent
from bems.cli import main
from bems.fleet import load_fleet
from bems.seal import load_seal_key
from bems.signing import Signer, generate_key
from bems.state import StateDB
from bems.store import open_store
from bems.wire import Reading, sign_readings
from tests.stages import write_fleet

B = "test-hq"
ELEC, WATER = f"{B}.main-elec", f"{B}.water"
DAY1 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DAYS = 3  # 1 and 2 January get sealed, 3 January stays unsealed
FIVE = dt.timedelta(minutes=5)
QUARTER = dt.timedelta(minutes=15)


@dataclass
class Setup:
    url: str
    kind: str
    db: str
    fleet: Path
    key_file: Path
    signer: Signer
    readings: dict[tuple[str, dt.datetime], Reading]
    influx_base: str | None = None

    def cli(self, command: str, *extra: str) -> list[str]:
        return [command, "--config", str(self.fleet), "--store", self.url, "--db", self.db,
                "--seal-key-file", str(self.key_file), *extra]

    def verify(self, capsys, *extra: str) -> tuple[int, str]:  # type: ignore[no-untyped-def]
        capsys.readouterr()
        code = main(self.cli("verify", "--building", B, "--from", "2026-01-01", "--to", "2026-01-04", *extra))
        return code, capsys.readouterr().out

    def seal(self, capsys, until: str = "2026-01-03") -> str:  # type: ignore[no-untyped-def]
        capsys.readouterr()
        assert main(self.cli("seal", "--until", until)) == 0
        return capsys.readouterr().out

    # --- tampering, behind the application's back -------------------------------------------------------
    def set_value(self, meter: str, ts: dt.datetime, field: str, value: float) -> None:
        ms = int(ts.timestamp() * 1000)
        if self.kind == "sqlite":
            with sqlite3.connect(self.url.split("sqlite:///", 1)[1]) as db:
                n = db.execute(f'UPDATE reading SET "{field}" = ? WHERE ts = ? AND meter_id = '
                               "(SELECT id FROM meter WHERE name = ?)", (value, ms, meter)).rowcount
            assert n == 1
        else:
            self._influx("/write", params={"db": "bems", "precision": "ms"},
                         content=f"reading,meter={meter},building={B} {field}={value!r} {ms}".encode())

    def delete(self, meter: str, ts: dt.datetime) -> None:
        ms = int(ts.timestamp() * 1000)
        if self.kind == "sqlite":
            with sqlite3.connect(self.url.split("sqlite:///", 1)[1]) as db:
                n = db.execute("DELETE FROM reading WHERE ts = ? AND meter_id = (SELECT id FROM meter WHERE name = ?)",
                               (ms, meter)).rowcount
            assert n == 1
        else:
            self._influx("/query", data={"db": "bems", "q": f"DELETE FROM reading WHERE meter = '{meter}' AND "
                                                            f"time >= {ms}ms AND time <= {ms}ms"})

    def _influx(self, path: str, **kw: object) -> None:
        resp = httpx.post(f"{self.influx_base}{path}", **kw)  # type: ignore[arg-type]
        assert resp.status_code < 300, resp.text

    def restore(self, meter: str, ts: dt.datetime, field: str | None = None) -> None:
        """Put the original back: a deleted reading is written again, an altered value set again."""
        original = self.readings[(meter, ts)]
        if field is not None:
            self.set_value(meter, ts, field, original.values[field])
            return
        with open_store(self.url) as store:
            store.write([original])


def _readings(signer: Signer | None, days: int = DAYS) -> dict[tuple[str, dt.datetime], Reading]:
    """Electricity every 5 minutes, water every 15, signed by the edge's key in batches when a signer is given."""
    rng = np.random.default_rng(3)
    out: dict[tuple[str, dt.datetime], Reading] = {}
    seq = 0
    energy, volume = 182_733.4, 512.25
    for i in range(days * 288):
        t = DAY1 + i * FIVE
        energy += float(rng.uniform(0, 3))
        rs = [Reading(meter=ELEC, building=B, edge="edge-test", ts=t, seq=seq,
                      values={"power_w": float(rng.uniform(1e3, 9e4)), "energy_kwh": energy})]
        if i % 3 == 0:
            volume += float(rng.uniform(0, 0.2))
            rs.append(Reading(meter=WATER, building=B, edge="edge-test", ts=t, seq=seq + 1,
                              values={"volume_m3": volume}))
        seq += 2
        for r in rs:
            out[(r.meter, r.ts)] = r
    if signer:
        out = {(r.meter, r.ts): r for r in sign_readings(list(out.values()), signer)}
    return out


def _fleet(path: Path, public_keys: list[str]) -> Path:
    return write_fleet(
        path, buildings=[{"id": B, "name": "Test HQ", "city": "Tehran", "floor_area_m2": 5000}],
        edges=[{"id": "edge-test", "building": B, "public_keys": public_keys}],
        meters=[{"id": ELEC, "building": B, "commodity": "electricity", "device": {"port": 1502, "device_id": 1,
                                                                                    "profile": "sdm630"}},
                {"id": WATER, "building": B, "commodity": "water", "device": {"port": 1502, "device_id": 2,
                                                                              "profile": "adam6050"}}])


@pytest.fixture(params=["sqlite", "influx"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    signer = generate_key(tmp_path / "edge.key")
    base = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'readings.db'}"
    else:
        server = request.getfixturevalue("influxd")
        url, base = server.url("bems"), f"http://127.0.0.1:{server.port}"
    readings = _readings(signer)
    with open_store(url) as store:
        store.write(list(readings.values()))
    key_file = tmp_path / "seal.key"
    assert main(["seal", "--keygen", str(key_file)]) == 0
    yield Setup(url, request.param, f"sqlite:///{tmp_path / 'state.db'}", _fleet(tmp_path / "fleet.yaml",
                [signer.public_key]), key_file, signer, readings, base)


def _counts(readings: dict[tuple[str, dt.datetime], Reading]) -> tuple[int, int]:
    total = len(readings)
    sealed = sum(1 for (_, t) in readings if t < DAY1 + dt.timedelta(days=2))
    return total, sealed


def test_signed_readings_sealed_then_altered_deleted_added(setup: Setup, capsys) -> None:  # type: ignore[no-untyped-def]
    out = setup.seal(capsys)
    assert "4 meter-days sealed" in out  # 2 meters x 1 and 2 January; 3 January has not ended 26 h before
    total, sealed = _counts(setup.readings)
    code, out = setup.verify(capsys)
    assert code == 0, out
    assert f"{total} points checked ({sealed} proven by seal, {total - sealed} by signature, 0 unproven)" in out
    assert "4 meter-days sealed, 2 unsealed" in out and "readings/s" in out
    code, out = setup.verify(capsys, "--full")
    assert code == 0 and f"({0} proven by seal, {total} by signature, 0 unproven)" in out

    # one value changed on a sealed day: the seal no longer matches, the signature names the reading
    t = DAY1 + dt.timedelta(days=1, hours=10)
    setup.set_value(ELEC, t, "power_w", 1234.5)
    code, out = setup.verify(capsys)
    assert code == 1
    assert "ALTERED first: test-hq.main-elec 2026-01-02T10:00:00Z" in out and "power_w=1234.5" in out
    assert "bad signature" in out
    setup.restore(ELEC, t, "power_w")
    assert setup.verify(capsys)[0] == 0

    # one reading deleted: its signature cannot say, the seal's count does, and the gap is named
    t = DAY1 + dt.timedelta(hours=6, minutes=15)
    setup.delete(WATER, t)
    code, out = setup.verify(capsys)
    assert code == 1
    assert "ALTERED first: test-hq.water 2026-01-01T06:15:00Z: missing point: 96 sealed, 95 stored" in out
    assert "gap between 2026-01-01T06:00:00Z and 2026-01-01T06:30:00Z" in out
    setup.restore(WATER, t)
    assert setup.verify(capsys)[0] == 0

    # the unsealed day: only signatures prove it, and they name the altered reading
    t = DAY1 + dt.timedelta(days=2, hours=23, minutes=55)
    setup.set_value(ELEC, t, "energy_kwh", 1.0)
    code, out = setup.verify(capsys)
    assert code == 1 and "ALTERED first: test-hq.main-elec 2026-01-03T23:55:00Z" in out and "energy_kwh=1.0" in out
    setup.restore(ELEC, t, "energy_kwh")

    # the seal row itself edited to match a deletion: its HMAC gives it away
    state = StateDB(setup.db)
    with state.session() as s:
        from bems.state import Seal

        seal = s.query(Seal).filter_by(meter=ELEC, day="2026-01-01").one()
        seal.count -= 1
    state.close()
    code, out = setup.verify(capsys)
    assert code == 1 and "test-hq.main-elec 2026-01-01T00:00:00Z: seal mismatch: the seal row of 2026-01-01" in out
    setup.seal(capsys)  # a seal that does not check is never rewritten from the store's content...
    assert setup.verify(capsys)[0] == 1


def test_late_readings_reseal_only_when_signed(setup: Setup, capsys) -> None:  # type: ignore[no-untyped-def]
    setup.seal(capsys)
    late = Reading(meter=ELEC, building=B, edge="edge-test", ts=DAY1 + dt.timedelta(hours=12, minutes=2, seconds=30),
                   seq=10_001, values={"power_w": 5000.0, "energy_kwh": 182_900.0}).signed(setup.signer)
    with open_store(setup.url) as store:
        store.write([late])
    code, out = setup.verify(capsys)
    assert code == 1
    assert "test-hq.main-elec 2026-01-01T12:02:30Z energy_kwh=182900.0, power_w=5000.0: extra point" in out
    out = setup.seal(capsys)
    assert "1 resealed" in out
    assert setup.verify(capsys)[0] == 0

    unsigned = late.model_copy(update={"ts": DAY1 + dt.timedelta(hours=13, minutes=2, seconds=30), "seq": 10_002,
                                       "kid": None, "sig": None})
    with open_store(setup.url) as store:
        store.write([unsigned])
    out = setup.seal(capsys)
    assert "0 resealed" in out and "held: test-hq.main-elec 2026-01-01: seal kept (289 sealed, 290 stored" in out
    code, out = setup.verify(capsys)
    assert code == 1 and "ALTERED first: test-hq.main-elec 2026-01-01T13:02:30Z" in out and "extra point" in out


@pytest.mark.parametrize("setup", ["sqlite"], indirect=True)
def test_a_reading_altered_before_its_day_is_sealed_is_not_sealed_in(setup: Setup, capsys) -> None:  # type: ignore[no-untyped-def]
    t = DAY1 + dt.timedelta(hours=3)
    setup.set_value(ELEC, t, "power_w", 7.0)
    out = setup.seal(capsys)
    assert "3 meter-days sealed" in out
    assert "held: test-hq.main-elec 2026-01-01: not sealed, 1 reading(s) fail their signature, the first at " \
           "2026-01-01T03:00:00Z" in out
    code, out = setup.verify(capsys)
    assert code == 1 and "ALTERED first: test-hq.main-elec 2026-01-01T03:00:00Z energy_kwh=" in out
    assert "power_w=7.0: bad signature" in out


def test_unsigned_fleet_is_proven_by_seals_only(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    url, db = f"sqlite:///{tmp_path / 'r.db'}", f"sqlite:///{tmp_path / 's.db'}"
    readings = _readings(None)
    with open_store(url) as store:
        store.write(list(readings.values()))
    key = tmp_path / "seal.key"
    assert main(["seal", "--keygen", str(key)]) == 0
    s = Setup(url, "sqlite", db, _fleet(tmp_path / "fleet.yaml", []), key, None, readings)  # type: ignore[arg-type]
    s.seal(capsys)
    code, out = s.verify(capsys)
    total, sealed = _counts(readings)
    assert code == 3  # 3 January is not sealed and carries no signatures
    assert f"{total} points carry no signature: only their day's seal can prove them; {total - sealed} of them" in out
    assert f"({sealed} proven by seal, 0 by signature, {total - sealed} unproven)" in out
    assert main(s.cli("seal", "--until", "2026-01-04")) == 0
    assert s.verify(capsys)[0] == 0
    s.set_value(WATER, DAY1 + dt.timedelta(days=1, hours=2), "volume_m3", 600.0)
    code, out = s.verify(capsys)
    assert code == 1
    assert "ALTERED first: test-hq.water 2026-01-02T00:00:00Z: seal mismatch: 96 sealed, 96 stored, but the " \
           "digest differs" in out and "cannot be named" in out


def test_seal_key_is_required_checked_and_never_shown(tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    fleet = _fleet(tmp_path / "fleet.yaml", [])
    args = ["seal", "--config", str(fleet), "--store", f"sqlite:///{tmp_path / 'r.db'}",
            "--db", f"sqlite:///{tmp_path / 's.db'}"]
    assert main(args) == 2
    assert "no seal key" in capsys.readouterr().err
    monkeypatch.setenv("BEMS_SEAL_KEY", "changeme")
    assert main(args) == 2
    assert "placeholder" in capsys.readouterr().err
    secret = "k" * 40
    monkeypatch.setenv("BEMS_SEAL_KEY", secret)
    assert main(args) == 0
    assert secret not in repr(load_seal_key(secret, None))
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err
    key = tmp_path / "seal.key"
    assert main(["seal", "--keygen", str(key)]) == 0
    assert key.stat().st_mode & 0o077 == 0
    assert main(["seal", "--keygen", str(key)]) == 2  # never overwritten


def test_analytics_seals_days_once_they_are_old_enough(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    url, db = f"sqlite:///{tmp_path / 'r.db'}", f"sqlite:///{tmp_path / 's.db'}"
    signer = generate_key(tmp_path / "edge.key")
    with open_store(url) as store:
        store.write(list(_readings(signer).values()))
        state = StateDB(db)
        fleet = load_fleet(_fleet(tmp_path / "fleet.yaml", [signer.public_key]))
        key = load_seal_key("s" * 40, None)
        assert key is not None
        third_ends = DAY1 + dt.timedelta(days=3)
        report = seal_recent(store, state, fleet, key, 26, now=third_ends + dt.timedelta(hours=25))
        assert report is not None and report.sealed == 4  # 3 January ended 25 h ago: not yet
        with caplog.at_level(logging.INFO, "bems.analytics"):
            report = seal_recent(store, state, fleet, key, 26, now=third_ends + dt.timedelta(hours=26))
        assert report is not None and (report.sealed, report.unchanged) == (2, 4)
        assert "sealed 2 meter-days" in caplog.text and "s" * 40 not in caplog.text
        state.close()
