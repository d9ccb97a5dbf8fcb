"""Backups (issue 9): online backup while the collector writes, wipe, restore into a fresh place, compare.

Real servers: mosquitto and a collector process for the SQLite store, influxd for InfluxDB 1.x, the local
PostgreSQL for the relational state. Every comparison is between what the stores hold before the wipe and what
they hold after the restore, read through the same APIs the stages use.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
import sqlalchemy

from bems.cli import main
from bems.services import Influxd, free_port
from bems.signing import Signer
from bems.state import StateDB
from bems.store import Store, open_store
from bems.wire import Reading
from tests.conftest import REQUIRE, need
from tests.stages import StageProcess, edge_signer, small_fleet, wait_for

PG_URL = os.environ.get("BEMS_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
ELEC, WATER = "test-hq.main-elec", "test-hq.water"
HISTORY_START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
LIVE_START = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
FIELDS = {ELEC: ("power_w", "energy_kwh"), WATER: ("volume_m3",)}


def _history(store: Store, minutes: int, seed: int = 1) -> None:
    """Two meters at 1-minute resolution, random values, one water reading in ten missing."""
    rng = np.random.default_rng(seed)
    times = np.datetime64(HISTORY_START.replace(tzinfo=None), "ms") + np.arange(minutes) * np.timedelta64(60, "s")
    power = rng.uniform(1e3, 9e4, (2, minutes))
    power[1] = np.nan
    energy = np.cumsum(rng.uniform(0, 2, (2, minutes)), axis=1)
    energy[1] = np.nan
    volume = np.full((2, minutes), np.nan)
    volume[1] = np.cumsum(rng.uniform(0, 0.1, minutes))
    valid = np.ones((2, minutes), bool)
    valid[1, ::10] = False
    store.write_columns([ELEC, WATER], ["test-hq", "test-hq"], times,
                        {"power_w": power, "energy_kwh": energy, "volume_m3": volume}, edge="edge-test", valid=valid)


def _snapshot(store: Store, minutes: int, live: int) -> dict[str, object]:
    """Everything a reader of the store can see: counts, sequences, every value of every field."""
    out: dict[str, object] = {"count": store.count()}
    for meter, fields in FIELDS.items():
        out[f"count {meter}"] = store.count(meter)
        out[f"seq {meter}"] = store.sequences(meter)
        for f in fields:
            hist = store.read_matrix([meter], f, HISTORY_START, HISTORY_START + dt.timedelta(minutes=minutes),
                                     dt.timedelta(minutes=1), "last")
            out[f"history {meter} {f}"] = hist.values
            if live:
                cur = store.read_matrix([meter], f, LIVE_START, LIVE_START + dt.timedelta(seconds=live),
                                        dt.timedelta(seconds=1), "last")
                out[f"live {meter} {f}"] = cur.values
    return out


def _assert_same(before: dict[str, object], after: dict[str, object]) -> None:
    assert before.keys() == after.keys()
    for key, value in before.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(after[key], value, err_msg=key)
        else:
            assert after[key] == value, key


def _rows(url: str) -> dict[str, list[tuple]]:
    """Every row of every table, schema-agnostic (reflected), in a stable order."""
    engine = sqlalchemy.create_engine(url)
    try:
        meta = sqlalchemy.MetaData()
        meta.reflect(engine)
        with engine.connect() as c:
            return {name: sorted(tuple(map(str, r)) for r in c.execute(sqlalchemy.select(t)))
                    for name, t in meta.tables.items()}
    finally:
        engine.dispose()


def _fill_state(db: StateDB) -> dict[str, str]:
    """Tokens (one revoked), alerts in each status, comments: the state an operator cannot afford to lose."""
    tokens = {"admin-1": db.create_token("admin-1", "admin"),
              "fm-1": db.create_token("fm-1", "facility_manager", ["test-hq"]),
              "util-1": db.create_token("util-1", "utility", ["gas"], ["Tehran"])}
    db.revoke_token("util-1")
    for i in range(5):
        start = HISTORY_START + dt.timedelta(days=i, hours=19)
        alert, _ = db.upsert_alert(building="test-hq", meter=ELEC, commodity="electricity", type="after_hours",
                                   start=start, end=start + dt.timedelta(hours=2), excess=10.5 * (i + 1),
                                   unit="kWh", severity="warning", message=f"after-hours use night {i}")
        db.add_comment(alert.id, "fm-1", f"checked, night {i}")
        if i % 2:
            db.set_alert_status(alert.id, "acknowledged", actor="fm-1")
    return tokens


def _state_view(db: StateDB, tokens: dict[str, str]) -> dict[str, object]:
    alerts = db.alerts(limit=1000)
    return {
        "token_ok": {name: (t := db.check_token(tok)) is not None and (t.role, t.scope)
                     for name, tok in tokens.items()},
        "tokens": [(t.name, t.role, t.scope, t.token_sha256, t.revoked_at is not None) for t in db.list_tokens()],
        "alerts": sorted((a.id, a.meter, a.start, a.end, a.excess, a.status, a.message) for a in alerts),
        "comments": sorted((c.alert_id, c.author, c.text) for a in alerts for c in db.comments(a.id)),
        "audit": [(e.actor, e.action, e.target) for e in db.audit_log(limit=1000)],
    }


def _wipe(*paths: Path) -> None:
    for p in paths:
        for f in (p, Path(f"{p}-wal"), Path(f"{p}-shm")):
            f.unlink(missing_ok=True)


def seal_days(store_url: str, state_url: str, fleet: Path, key_file: Path) -> None:
    """Seal every day of the store (bems.seal) before the backup, with a seal key kept apart from it."""
    if not key_file.exists():
        assert main(["seal", "--keygen", str(key_file)]) == 0
    assert main(["seal", "--config", str(fleet), "--store", store_url, "--db", state_url,
                 "--seal-key-file", str(key_file)]) == 0


def run_bems_verify(capsys, store_url: str, state_url: str, fleet: Path, key_file: Path,  # type: ignore[no-untyped-def]
                    start: dt.datetime, end: dt.datetime, count: int) -> None:
    """``bems verify`` on the restored store and state: every reading there, and as many as before the wipe, is
    proven by the seals made before the backup (the readings of these tests carry no signatures)."""
    capsys.readouterr()
    code = main(["verify", "--config", str(fleet), "--store", store_url, "--db", state_url, "--seal-key-file",
                 str(key_file), "--building", "test-hq", "--from", start.isoformat(), "--to", end.isoformat()])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f" {count} points checked ({count} proven by seal, 0 by signature, 0 unproven)" in out, out


class _Publisher(threading.Thread):
    """Publishes live readings of the electricity meter at a steady pace, in order, QoS 1."""

    def __init__(self, port: int, total: int, first_seq: int, signer: Signer) -> None:
        super().__init__(daemon=True)
        self.port, self.total, self.first_seq, self.signer = port, total, first_seq, signer
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bk-pub-{uuid.uuid4().hex[:6]}")
            client.connect("127.0.0.1", self.port)
            client.loop_start()
            for i in range(self.total):
                r = Reading(meter=ELEC, building="test-hq", edge="edge-test", ts=LIVE_START + dt.timedelta(seconds=i),
                            seq=self.first_seq + i, values={"power_w": 1000.0 + i * 0.25, "energy_kwh": i / 8}
                            ).signed(self.signer)
                info = client.publish(r.topic, r.to_json(), qos=1)
                if i % 100 == 99:
                    info.wait_for_publish(5)
                    time.sleep(0.05)  # about 2,000 readings/s: the collector writes many batches meanwhile
                self.sent = i + 1
            info.wait_for_publish(5)
            client.loop_stop()
            client.disconnect()
        except BaseException as exc:  # reported by the test
            self.error = exc


@pytest.mark.services
def test_sqlite_online_backup_while_collector_writes_then_wipe_and_restore(mosquitto, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    minutes, live = 20_000, 6_000
    data = tmp_path / "data"
    store_path, state_path = data / "readings.db", data / "state.db"
    store_url, state_url = f"sqlite:///{store_path}", f"sqlite:///{state_path}"
    with open_store(store_url) as store:
        _history(store, minutes)
        history_count = store.count()
    db = StateDB(state_url)
    tokens = _fill_state(db)
    db.close()

    fleet = small_fleet(tmp_path / "fleet.yaml")
    collector = StageProcess("collector", ["--config", str(fleet), "--broker", mosquitto.url, "--store", store_url,
                                           "--client-id", "c-backup"], tmp_path / "collector.log")
    publisher = _Publisher(mosquitto.port, live, first_seq=minutes, signer=edge_signer(fleet))
    try:
        wait_for(lambda: "connected to the broker" in collector.output(), 15, "collector to connect")
        publisher.start()
        with open_store(store_url) as store:
            wait_for(lambda: store.count() >= history_count + 1000, 20, "the collector to store live readings")
            before = store.count()
            assert main(["backup", "--store", store_url, "--db", state_url, "--out", str(tmp_path / "online")]) == 0
            after = store.count()
            # the collector keeps writing after the backup: it was never locked out
            wait_for(lambda: store.count() >= after + 1000, 20, "more live readings after the backup")
        publisher.join(30)
        assert publisher.error is None and publisher.sent == live
        with open_store(store_url) as store:
            wait_for(lambda: store.count() == history_count + live, 20, "every live reading to be stored")
    finally:
        assert collector.stop() == 0
    assert "failed" not in collector.output()

    online = json.loads((tmp_path / "online" / "manifest.json").read_text())
    in_backup = online["components"]["readings"]["tables"]["reading"]
    assert before <= in_backup <= after, (before, in_backup, after)
    assert history_count < in_backup < history_count + live  # taken mid-stream: part of the live readings in it

    # a quiescent backup through the CLI, then the originals are wiped
    with open_store(store_url) as store:
        reference = _snapshot(store, minutes, live)
    db = StateDB(state_url)
    state_reference = _state_view(db, tokens)
    db.close()
    seal_key = tmp_path / "keys" / "seal.key"  # kept apart from the data and the backup
    seal_days(store_url, state_url, fleet, seal_key)
    state_rows = _rows(state_url)
    assert main(["backup", "--store", store_url, "--db", state_url, "--out", str(tmp_path / "full")]) == 0
    _wipe(store_path, state_path)
    assert not store_path.exists() and not state_path.exists()

    # restore into a fresh directory: every reading, alert, comment, token and audit entry is back
    fresh = tmp_path / "fresh"
    new_store, new_state = f"sqlite:///{fresh / 'readings.db'}", f"sqlite:///{fresh / 'state.db'}"
    assert main(["restore", "--from", str(tmp_path / "full"), "--store", new_store, "--db", new_state]) == 0
    with open_store(new_store) as store:
        _assert_same(reference, _snapshot(store, minutes, live))
    db = StateDB(new_state)
    assert _state_view(db, tokens) == state_reference
    db.close()
    assert _rows(new_state) == state_rows
    run_bems_verify(capsys, new_store, new_state, fleet, seal_key, HISTORY_START,
                    LIVE_START + dt.timedelta(seconds=live), reference["count"])  # type: ignore[arg-type]

    # the online backup is one consistent snapshot: the history, then an unbroken prefix of the live readings,
    # each with all its values, equal to what the store held
    online_dir = tmp_path / "fresh-online"
    assert main(["restore", "--from", str(tmp_path / "online"), "--store", f"sqlite:///{online_dir / 'r.db'}"]) == 0
    with open_store(f"sqlite:///{online_dir / 'r.db'}") as store:
        got = _snapshot(store, minutes, live)
    k = in_backup - history_count
    assert got["count"] == in_backup
    assert got[f"seq {ELEC}"] == reference[f"seq {ELEC}"][: minutes + k]  # type: ignore[index]
    assert got[f"seq {WATER}"] == reference[f"seq {WATER}"]
    for f in FIELDS[ELEC]:
        live_vals = got[f"live {ELEC} {f}"]
        np.testing.assert_array_equal(live_vals[:, :k], reference[f"live {ELEC} {f}"][:, :k])  # type: ignore[index]
        assert np.isnan(live_vals[:, k:]).all()
        np.testing.assert_array_equal(got[f"history {ELEC} {f}"], reference[f"history {ELEC} {f}"])


@pytest.mark.services
def test_restore_refuses_tampered_files_and_non_empty_targets(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    store_url = f"sqlite:///{tmp_path / 'src' / 'readings.db'}"
    state_url = f"sqlite:///{tmp_path / 'src' / 'state.db'}"
    with open_store(store_url) as store:
        _history(store, 500)
    db = StateDB(state_url)
    _fill_state(db)
    db.close()
    bk = tmp_path / "bk"
    capsys.readouterr()
    assert main(["backup", "--store", store_url, "--db", state_url, "--out", str(bk)]) == 0
    printed = capsys.readouterr().out.split("manifest SHA-256 ")[1].split(":")[0]
    assert printed == hashlib.sha256((bk / "manifest.json").read_bytes()).hexdigest()
    manifest = json.loads((bk / "manifest.json").read_text())
    for part in manifest["components"].values():
        for f in part["files"]:
            assert hashlib.sha256((bk / f["path"]).read_bytes()).hexdigest() == f["sha256"]
            assert (bk / f["path"]).stat().st_mode & 0o077 == 0  # owner only
    assert main(["restore", "--from", str(bk), "--check"]) == 0

    # a backup into a directory that already holds files is refused
    capsys.readouterr()
    assert main(["backup", "--store", store_url, "--out", str(bk)]) == 2
    assert "is not an empty directory" in capsys.readouterr().err

    # a target that is not empty is kept unless --force
    target = tmp_path / "target.db"
    with open_store(f"sqlite:///{target}") as store:
        _history(store, 10, seed=7)
    assert main(["restore", "--from", str(bk), "--store", f"sqlite:///{target}"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    with open_store(f"sqlite:///{target}") as store:
        assert store.count() == 19  # 10 electricity + 9 water (one in ten dropped): untouched
    assert main(["restore", "--from", str(bk), "--store", f"sqlite:///{target}", "--force"]) == 0
    with open_store(f"sqlite:///{target}") as store, open_store(store_url) as original:
        _assert_same(_snapshot(original, 500, 0), _snapshot(store, 500, 0))

    # one flipped byte in the state copy: the whole restore is refused, naming the file, and nothing is written
    state_file = bk / "state.db"
    raw = bytearray(state_file.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    state_file.write_bytes(bytes(raw))
    fresh = tmp_path / "fresh"
    assert main(["restore", "--from", str(bk), "--store", f"sqlite:///{fresh / 'r.db'}",
                 "--db", f"sqlite:///{fresh / 's.db'}"]) == 2
    err = capsys.readouterr().err
    assert "state.db" in err and "does not match the SHA-256" in err
    assert not (fresh / "r.db").exists() and not (fresh / "s.db").exists()
    assert main(["restore", "--from", str(bk), "--check"]) == 2

    # whoever rewrites the manifest to match passes the file check, but not the manifest hash kept apart
    manifest["components"]["state"]["files"][0]["sha256"] = hashlib.sha256(state_file.read_bytes()).hexdigest()
    (bk / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["restore", "--from", str(bk), "--check"]) == 0
    assert main(["restore", "--from", str(bk), "--check", "--manifest-sha256", printed]) == 2
    assert "does not match the SHA-256 given with --manifest-sha256" in capsys.readouterr().err

    # a manifest pointing outside the backup directory is refused
    manifest["components"]["state"]["files"][0]["path"] = "../src/state.db"
    (bk / "manifest.json").write_text(json.dumps(manifest))
    assert main(["restore", "--from", str(bk), "--check"]) == 2
    assert "outside the backup directory" in capsys.readouterr().err

    # a backup without its manifest (unfinished) is refused
    (bk / "manifest.json").unlink()
    assert main(["restore", "--from", str(bk), "--store", f"sqlite:///{fresh / 'r.db'}"]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_errors_name_the_thing_and_the_fix(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["backup", "--store", "mysql://x/y", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "unknown scheme 'mysql'" in err and "sqlite:///<path>" in err and "influx://" in err
    assert main(["backup", "--db", "mongodb://u:pw@h/d", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "postgresql+psycopg://" in err and "pw" not in err  # the password is not echoed
    assert main(["backup", "--out", str(tmp_path / "a")]) == 2
    assert "give --store" in capsys.readouterr().err
    assert main(["backup", "--store", f"sqlite:///{tmp_path / 'nope.db'}", "--out", str(tmp_path / "b")]) == 2
    assert "does not exist; check --store" in capsys.readouterr().err
    assert not (tmp_path / "nope.db").exists()  # the backup never creates its source
    port = free_port()
    assert main(["backup", "--store", f"influx://127.0.0.1:{port}/bems", "--out", str(tmp_path / "c")]) == 2
    assert f"InfluxDB at http://127.0.0.1:{port} unreachable" in capsys.readouterr().err


@pytest.mark.services
@pytest.mark.slow
def test_influxdb_portable_backup_wipe_restore(influxd: Influxd, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    need("influxd", "influxdb")
    minutes = 3000
    url = influxd.url("bems")
    with open_store(url) as store:
        _history(store, minutes)
        reference = _snapshot(store, minutes, 0)
    assert reference["count"] > 0
    fleet, seal_key = small_fleet(tmp_path / "fleet.yaml"), tmp_path / "keys" / "seal.key"
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    seal_days(url, state_url, fleet, seal_key)

    # the RPC address is checked before influxd backup runs
    assert main(["backup", "--store", url, "--influx-rpc", f"127.0.0.1:{free_port()}",
                 "--out", str(tmp_path / "x")]) == 2
    assert "influxd RPC address" in capsys.readouterr().err

    bk = tmp_path / "bk"
    assert main(["backup", "--store", url, "--db", state_url, "--influx-rpc", influxd.rpc_address,
                 "--out", str(bk)]) == 0
    manifest = json.loads((bk / "manifest.json").read_text())
    assert manifest["components"]["readings"]["points_after_backup"] == {"reading": reference["count"]}

    # the server and its data directory are gone; a fresh one (new ports, empty) takes the backup
    influxd.stop()
    shutil.rmtree(influxd.workdir / "data")
    fresh = Influxd(tmp_path / "influxd-fresh")
    fresh.start()
    try:
        new_url = fresh.url("bems")
        new_state = f"sqlite:///{tmp_path / 'fresh-state.db'}"
        assert main(["restore", "--from", str(bk), "--store", new_url, "--db", new_state,
                     "--influx-rpc", fresh.rpc_address]) == 0
        with open_store(new_url) as store:
            _assert_same(reference, _snapshot(store, minutes, 0))
        run_bems_verify(capsys, new_url, new_state, fleet, seal_key, HISTORY_START,
                        HISTORY_START + dt.timedelta(minutes=minutes), reference["count"])  # type: ignore[arg-type]
        capsys.readouterr()
        assert main(["restore", "--from", str(bk), "--store", new_url, "--influx-rpc", fresh.rpc_address]) == 2
        assert "already has a database 'bems'" in capsys.readouterr().err
        # a tampered shard file is refused before influxd sees it
        shard = next(p for p in (bk / "influx").iterdir() if p.name.endswith(".tar.gz"))
        shard.write_bytes(shard.read_bytes() + b"\0")
        assert main(["restore", "--from", str(bk), "--store", fresh.url("other"),
                     "--influx-rpc", fresh.rpc_address]) == 2
        assert shard.name in capsys.readouterr().err
    finally:
        fresh.stop()


@pytest.fixture
def pg_databases() -> object:
    """Two empty databases of their own (source, target) on the local PostgreSQL, dropped afterwards."""
    need("pg_dump", "postgresql-client")
    need("pg_restore", "postgresql-client")
    admin = sqlalchemy.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    names = [f"bems_bk_{uuid.uuid4().hex[:8]}", f"bems_rs_{uuid.uuid4().hex[:8]}"]
    try:
        with admin.connect() as c:
            for n in names:
                c.execute(sqlalchemy.text(f'CREATE DATABASE "{n}"'))
    except sqlalchemy.exc.OperationalError as exc:
        admin.dispose()
        if REQUIRE:
            pytest.fail(f"PostgreSQL at {PG_URL} unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    base = sqlalchemy.engine.make_url(PG_URL)
    yield [base.set(database=n) for n in names]
    with admin.connect() as c:
        for n in names:
            c.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)'))
    admin.dispose()


@pytest.mark.services
def test_postgresql_state_dump_wipe_restore(pg_databases, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    source, target = pg_databases
    # a password in the URL (ignored by trust auth here) must reach pg_dump without landing in the manifest
    source_url = source.set(password="s3cret-in-url").render_as_string(hide_password=False)
    target_url = target.render_as_string(hide_password=False)
    db = StateDB(source_url)
    tokens = _fill_state(db)
    reference = _state_view(db, tokens)
    db.close()
    rows = _rows(source_url)

    bk = tmp_path / "bk"
    assert main(["backup", "--db", source_url, "--out", str(bk)]) == 0
    text = (bk / "manifest.json").read_text()
    assert "s3cret-in-url" not in text and "s3cret-in-url" not in capsys.readouterr().out
    assert json.loads(text)["components"]["state"]["tables"]["public.alert"] == 5

    admin = sqlalchemy.create_engine(PG_URL, isolation_level="AUTOCOMMIT")  # wipe the source database
    with admin.connect() as c:
        c.execute(sqlalchemy.text(f'DROP DATABASE "{source.database}" WITH (FORCE)'))
    admin.dispose()

    assert main(["restore", "--from", str(bk), "--db", target_url]) == 0
    db = StateDB(target_url)
    assert _state_view(db, tokens) == reference
    # ids continue after the restored ones (sequences came back too)
    alert, created = db.upsert_alert(building="test-hq", meter=WATER, commodity="water", type="leak",
                                     start=LIVE_START, end=LIVE_START, excess=1, unit="m3", severity="warning",
                                     message="x")
    assert created and alert.id > max(a[0] for a in reference["alerts"])  # type: ignore[union-attr]
    db.close()
    restored_rows = _rows(target_url)
    restored_rows["alert"] = [r for r in restored_rows["alert"] if r[0] != str(alert.id)]
    assert restored_rows == rows

    capsys.readouterr()
    assert main(["restore", "--from", str(bk), "--db", target_url]) == 2
    assert "already has" in capsys.readouterr().err
    assert main(["restore", "--from", str(bk), "--db", target_url, "--force"]) == 0
    assert _rows(target_url) == rows
