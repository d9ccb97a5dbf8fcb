"""The collector's parts one at a time: validation, counter flags, duplicate keys, backoff, the writer's
store / disk buffer / dead-letter decisions, and the ``bems deadletter`` command."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from bems.cli import main as bems_main
from bems.fleet import load_fleet
from bems.store import StoreRejected, StoreUnavailable, WriteResult, open_store
from bems.store.counters import FLAG_NEGATIVE_DELTA, FLAG_RESET, FLAG_ROLLOVER, classify_drops
from bems.store.sqlite import SQLiteStore
from bems.wire import Reading
from collector.deadletter import DeadLetters, Letter
from collector.metrics import Metrics
from collector.quality import CounterTracker
from collector.settings import CollectorSettings
from collector.spool import Spool
from collector.validate import Rejected, Validator
from collector.workers import worker_settings
from collector.writer import Backoff, BatchWriter, RecentKeys
from tests.stages import small_fleet

NOW = dt.datetime(2026, 11, 25, 10, 0, tzinfo=dt.UTC)
WRAP = 2**32 * 0.01


def elec(seq: int, ts: dt.datetime = NOW, **values: float) -> Reading:
    return Reading(meter="test-hq.main-elec", building="test-hq", edge="edge-test", ts=ts, seq=seq,
                   values=values or {"power_w": 1000.0})


def water(seq: int, ts: dt.datetime, volume: float) -> Reading:
    return Reading(meter="test-hq.water", building="test-hq", edge="edge-test", ts=ts, seq=seq,
                   values={"volume_m3": volume})


@pytest.fixture
def fleet(tmp_path: Path):  # type: ignore[no-untyped-def]
    return load_fleet(small_fleet(tmp_path / "fleet.yaml"))


def kind_of(validator: Validator, topic: str, payload: bytes) -> str:
    with pytest.raises(Rejected) as info:
        validator.check(topic, payload, NOW)
    return info.value.kind


def test_validator_sorts_refusals_into_kinds(fleet) -> None:  # type: ignore[no-untyped-def]
    v = Validator(fleet, future_tolerance_s=60, power_limit_factor=3.0, max_age_s=30 * 86400)
    good = elec(1)
    topic = good.topic
    assert v.check(topic, good.to_json(), NOW) == good
    doc = json.loads(good.to_json())
    cases = {
        "json": [b"{not json", b"", b"[" * 5000],
        "schema": [b"null", json.dumps({**doc, "seq": "1"}).encode(), json.dumps({**doc, "extra": 1}).encode(),
                   json.dumps({**doc, "values": {"power_w": True}}).encode(), good.to_json().replace(b"1000.0", b"NaN"),
                   json.dumps({**doc, "seq": 2**70}).encode()],
        "too_large": [b"{" + b" " * 20_000 + b"}"],
        "implausible": [elec(2, power_w=600_001.0).to_json(), elec(2, voltage_l1_v=-1.0).to_json(),
                        elec(2, frequency_hz=0.0).to_json(), elec(2, energy_kwh=2e12).to_json()],
        "field": [elec(2, volume_m3=1.0).to_json()],
        "future": [elec(2, ts=NOW + dt.timedelta(minutes=2)).to_json()],
        "too_old": [elec(2, ts=dt.datetime(1999, 1, 1, tzinfo=dt.UTC)).to_json(),
                    elec(2, ts=NOW - dt.timedelta(days=31)).to_json()],
    }
    for kind, payloads in cases.items():
        for payload in payloads:
            assert kind_of(v, topic, payload) == kind, payload[:80]
    assert kind_of(v, "bems/v1/test-hq/water/reading", good.to_json()) == "topic"
    assert kind_of(v, "bems/v1/test-hq/main-elec/status", good.to_json()) == "topic"
    ghost = good.model_copy(update={"meter": "test-hq.ghost"})
    assert kind_of(v, ghost.topic, ghost.to_json()) == "unknown_meter"
    stranger = Reading(meter="elsewhere.m", building="elsewhere", edge="e", ts=NOW, seq=1, values={"power_w": 1.0})
    assert kind_of(v, stranger.topic, stranger.to_json()) == "unknown_building"
    # 3x the rated 200 kW is the limit, in both directions (export)
    assert v.check(topic, elec(3, power_w=-599_000.0).to_json(), NOW).values["power_w"] == -599_000.0
    with pytest.raises(Rejected, match=r"power_w=600001 is beyond 3x the meter's rated 200 kW"):
        v.check(topic, elec(2, power_w=600_001.0).to_json(), NOW)
    # a pulse counter cannot hold 2^32 pulses of 0.01 m3
    w = water(1, NOW, WRAP)
    with pytest.raises(Rejected, match="cumulative register volume_m3"):
        v.check(w.topic, w.to_json(), NOW)


def test_classify_drops() -> None:
    prev = np.array([100.0, WRAP - 1.0, 182733.5, 505.0, 10.0])
    cur = np.array([101.0, 0.5, 1.0, 400.0, 10.0])
    wrap = np.array([np.nan, WRAP, np.nan, np.nan, np.nan])
    delta, flags = classify_drops(prev, cur, wrap)
    np.testing.assert_allclose(delta, [1.0, 1.5, 1.0, 0.0, 0.0], atol=1e-6)
    assert flags.tolist() == [0, FLAG_ROLLOVER, FLAG_RESET, FLAG_NEGATIVE_DELTA, 0]
    # far from the top of its range, a drop of a wrapping counter is not a rollover
    _, flags = classify_drops(np.array([5000.0]), np.array([10.0]), np.array([WRAP]))
    assert flags.tolist() == [FLAG_RESET]


def test_counter_tracker_flags_in_arrival_order_and_seeds_from_the_store(fleet, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = SQLiteStore(tmp_path / "r.db")
    t = [NOW + i * dt.timedelta(minutes=5) for i in range(6)]
    store.write([water(0, t[0], WRAP - 0.3)])
    tracker = CounterTracker(fleet, seed=store.latest)
    assert tracker.registry()[("test-hq.water", "volume_m3")] == pytest.approx(WRAP)
    assert tracker.registry()[("test-hq.main-elec", "energy_kwh")] is None
    batch = [water(1, t[1], 0.2), elec(2, t[1], energy_kwh=5000.0), elec(3, t[2], energy_kwh=3.0),
             water(4, t[0], 7.0), elec(5, t[3], energy_kwh=2.0), elec(6, t[4], energy_kwh=2.5)]
    flags = tracker.flags(batch)
    # rollover against the value loaded from the store; a swap; an old (replayed) reading is not judged;
    # 3.0 -> 2.0 is a negative delta (not near zero); then a normal rise
    assert flags == [FLAG_ROLLOVER, 0, FLAG_RESET, 0, FLAG_NEGATIVE_DELTA, 0]


def test_recent_keys_count_duplicates_within_a_bound() -> None:
    keys = RecentKeys(3)
    batch = [elec(i, NOW + dt.timedelta(seconds=i)) for i in range(4)]
    fresh, flags, k, dups = keys.split([*batch, batch[0]], [0, 0, 0, 0, 1])
    assert (len(fresh), dups, flags) == (4, 1, [0, 0, 0, 0])
    keys.add(k)
    assert len(keys) == 3  # the oldest key fell out
    fresh, _, _, dups = keys.split(batch, [0] * 4)
    assert [r.seq for r in fresh] == [0] and dups == 3


def test_backoff_honours_retry_after_and_grows() -> None:
    now = [0.0]
    b = Backoff(initial_s=0.5, max_s=4.0, clock=lambda: now[0])
    assert b.ready
    assert b.failed(retry_after=7.0) == 7.0 and not b.ready
    now[0] = 7.0
    assert b.ready
    waits = [b.failed() for _ in range(5)]
    assert 0.8 <= waits[0] <= 1.2  # the delay doubled after the first failure
    assert max(waits) <= 4.0 * 1.2
    b.ok()
    assert b.ready and b.delay == 0.5


class FlakyStore(SQLiteStore):
    """A real SQLite store whose writes can be made to fail, to unit-test the writer's decisions."""

    fail: BaseException | None = None

    def write(self, readings: Sequence[Reading], flags: Sequence[int] | None = None) -> WriteResult:
        if self.fail is not None:
            raise self.fail
        return super().write(readings, flags)


def test_writer_buffers_on_disk_then_drains_and_dead_letters_refusals(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "r.db")
    metrics = Metrics()
    letters = DeadLetters(tmp_path / "dl.db")
    spool = Spool(tmp_path / "spool.db", max_readings=5)
    now = [0.0]
    writer = BatchWriter(store, letters, metrics, spool=spool, recent=RecentKeys(100),
                         backoff=Backoff(clock=lambda: now[0]), drain_batch=2)
    rs = [elec(i, NOW + dt.timedelta(seconds=i)) for i in range(12)]
    assert writer.submit(rs[:2], [0, 0])
    store.fail = StoreUnavailable("down", retry_after=5)
    assert writer.submit(rs[2:5], [0, 0, 0])  # the write fails: buffered on disk
    assert writer.submit(rs[5:7], [0, 0])  # backing off: straight to disk
    assert not writer.submit(rs[7:8], [0])  # the buffer is full: nothing done, caller keeps it
    assert (len(spool), metrics.value("bems_collector_spooled_total")) == (5, 5)
    assert writer.drain() == 0  # still backing off
    store.fail = None
    now[0] = 5.0
    assert writer.drain() == 2 and writer.drain() == 2 and writer.drain() == 1 and writer.drain() == 0
    assert writer.submit(rs[7:8], [0])
    store.fail = StoreRejected("InfluxDB /write answered 400: partial write: field type conflict")
    assert writer.submit(rs[8:10], [0, 0])  # refused: dead-lettered, so settled
    store.fail = None
    assert writer.submit([*rs[:3], rs[10]], [0] * 4)  # three duplicates: counted, not rewritten
    assert store.sequences("test-hq.main-elec") == [*range(8), 10]
    assert metrics.value("bems_collector_duplicates_total") == 3
    assert metrics.value("bems_collector_unspooled_total") == 5
    refused = letters.list(reason="store_rejected")
    assert sorted(json.loads(e.payload)["seq"] for e in refused) == [8, 9]
    assert "field type conflict" in refused[0].detail
    spool.close()
    assert len(Spool(tmp_path / "spool.db", 5)) == 0


def test_spool_survives_reopening(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", 100)
    spool.put([elec(1), elec(2, NOW + dt.timedelta(seconds=1))], [0, FLAG_RESET])
    spool.close()
    again = Spool(tmp_path / "s.db", 100)
    last, readings, flags = again.peek(10)
    assert [r.seq for r in readings] == [1, 2] and flags == [0, FLAG_RESET] and len(again) == 2
    again.remove_through(last)
    assert len(again) == 0 and again.peek(10) == (0, [], [])


def test_deadletter_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "deadletter.db"
    store = DeadLetters(path, collector="c1")
    store.add([Letter("bems/v1/a/b/reading", b"{not json", "json", "Invalid JSON: key must be a string"),
               Letter("bems/v1/a/c/reading", b"\xff\x00" * 20_000, "too_large", "payload of 40000 bytes exceeds"),
               Letter("bems/v1/a/b/reading", b"{}", "schema", "v: Field required")])
    store.close()
    assert bems_main(["deadletter", "count", "--path", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == ["total\t3", "json\t1", "schema\t1", "too_large\t1"]
    assert bems_main(["deadletter", "list", "--path", str(path), "--reason", "json"]) == 0
    out = capsys.readouterr().out
    assert "Invalid JSON: key must be a string" in out and "too_large" not in out
    assert bems_main(["deadletter", "show", "2", "--path", str(path)]) == 0
    out = capsys.readouterr().out
    assert "size: 40000 bytes (first 16384 kept)" in out and "ff 00 ff 00" in out
    assert bems_main(["deadletter", "show", "99", "--path", str(path)]) == 2
    assert "no dead letter with id 99" in capsys.readouterr().err
    assert bems_main(["deadletter", "count", "--path", str(tmp_path / "none.db")]) == 2
    assert "pass --path" in capsys.readouterr().err


def test_sqlite_store_from_an_older_schema_gains_flags(tmp_path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(tmp_path / "old.db")
    db.executescript("CREATE TABLE reading (meter_id INTEGER NOT NULL, ts INTEGER NOT NULL, edge TEXT NOT NULL, "
                     "seq INTEGER NOT NULL, quality INTEGER NOT NULL, PRIMARY KEY (meter_id, ts)) WITHOUT ROWID;")
    db.close()
    with open_store(f"sqlite:///{tmp_path}/old.db") as store:
        store.write([elec(1)], flags=[FLAG_RESET])
        assert store.latest(["test-hq.main-elec"])["test-hq.main-elec"].flags == ("reset",)


def test_workers_get_stable_ids_one_group_own_ports_and_one_maintainer(tmp_path: Path) -> None:
    base = CollectorSettings(fleet=small_fleet(tmp_path / "fleet.yaml"), client_id="coll-a", workers=3,
                             metrics_port=9300, batch_size=500, allow_anonymous_broker=True)
    ws = [worker_settings(base, i) for i in (1, 2, 3)]
    assert [w.client_id for w in ws] == ["coll-a-1", "coll-a-2", "coll-a-3"]
    assert {w.shared_group for w in ws} == {"bems-collectors"}
    assert [w.metrics_port for w in ws] == [9300, 9301, 9302]
    assert [w.maintenance for w in ws] == [True, False, False]
    assert all(w.workers == 1 and w.batch_size == 500 for w in ws)
    named = base.model_copy(update={"shared_group": "ingest", "metrics_port": None, "maintenance": False})
    w1 = worker_settings(named, 1)
    assert (w1.shared_group, w1.metrics_port, w1.maintenance) == ("ingest", None, False)
