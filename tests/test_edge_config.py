"""Edge configuration is checked before anything starts (errors name the key and the fix), and the reading queue
keeps its promises on its own: sequence numbers never go back, the disk cap drops the oldest and counts them."""

from __future__ import annotations

import asyncio
import json
import math
import random
import sqlite3
import time
from pathlib import Path

import pytest

from bems.fleet import load_fleet
from bems.registers import available_profiles, decode_block, load_profile, plan_reads
from bems.signing import SignatureRejected, generate_key
from bems.wire import decode_reading, utcnow
from edge.__main__ import main, setup
from edge.agent import EdgeAgent
from edge.decode import block_decoder
from edge.outbox import Outbox
from tests.edge_support import BUILDING
from tests.stages import edge_signer, signing_key, write_fleet

EDGE = {"id": "edge-test", "building": "test-hq", "poll_period_s": 1}


def meter(**device: object) -> dict[str, object]:
    return {"id": "test-hq.main", "building": "test-hq", "commodity": "electricity",
            "device": {"port": 1502, "device_id": 1, "profile": "sdm630", **device}}


def run_edge(tmp_path: Path, fleet: Path, *extra: str, capsys: pytest.CaptureFixture[str]) -> str:
    code = main(["--config", str(fleet), "--edge-id", "edge-test", "--broker", "mqtt://127.0.0.1:1",
                 "--state-dir", str(tmp_path / "state"), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert not (tmp_path / "state").exists(), "nothing starts before the configuration is valid"
    return err


SITE_PROFILE = """
name: acme-x1
vendor: Acme
model: X1
address_base: 0
max_registers_per_read: 60
defaults: {function: 3, type: float32, word_order: big, byte_order: big, scale: 1.0}
registers:
  - {field: power_w, address: 0, unit: W}
  - {field: energy_kwh, address: %d, unit: kWh, cumulative: true}
"""


@pytest.mark.parametrize(("case", "expected"), [
    ({"profile": "sdm999"}, ["meters[0](id=test-hq.main).device.profile", "unknown profile 'sdm999'", "sdm630"]),
    ({"baud": 9600}, ["meters[0](id=test-hq.main).device.baud", "unknown key"]),
    ({"serial_port": "/dev/ttyUSB0"}, ["meters[0](id=test-hq.main).device",
                                       "give either serial_port (Modbus RTU) or host/port", "remove port"]),
    ({"parity": "E"}, ["device", "parity only apply to Modbus RTU"]),
    ({"timeout_s": -1}, ["device.timeout_s", "greater than 0"]),
    ({"profile": "site/acme.yaml"}, ["device.profile", "acme.yaml", "energy_kwh", "overlaps 'power_w'"]),
])
def test_bad_fleet_fails_at_start_naming_the_key(case: dict[str, object], expected: list[str], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "acme.yaml").write_text(SITE_PROFILE % 1)  # float32 at 0 covers 0..1: 1 overlaps
    fleet = write_fleet(tmp_path / "fleet.yaml", [BUILDING], [meter(**case)], [EDGE])
    err = run_edge(tmp_path, fleet, capsys=capsys)
    for text in expected:
        assert text in err, err


def test_two_meters_with_one_device_id_on_one_bus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    second = {**meter(), "id": "test-hq.other"}
    fleet = write_fleet(tmp_path / "fleet.yaml", [BUILDING], [meter(), second], [EDGE])
    err = run_edge(tmp_path, fleet, capsys=capsys)
    assert "meter 'test-hq.other': device id 1 on 127.0.0.1:1502 is already used by meter 'test-hq.main'" in err


def test_bad_settings_fail_at_start(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = write_fleet(tmp_path / "fleet.yaml", [BUILDING], [meter()], [EDGE])
    assert "edge 'edge-nope' is not in the fleet file" in run_edge(tmp_path, fleet, "--edge-id", "edge-nope",
                                                                   capsys=capsys)
    assert "broker.url" in run_edge(tmp_path, fleet, "--broker", "http://127.0.0.1:1883", capsys=capsys)
    monkeypatch.setenv("BEMS_EDGE_BROKER__CA_FILE", str(tmp_path / "missing-ca.pem"))
    err = run_edge(tmp_path, fleet, "--broker", "mqtts://127.0.0.1:8883", capsys=capsys)
    assert "broker.ca_file: file" in err and "missing-ca.pem does not exist" in err
    monkeypatch.delenv("BEMS_EDGE_BROKER__CA_FILE")
    assert "mqtt_version" in run_edge(tmp_path, fleet, "--mqtt-version", "4", capsys=capsys)
    (tmp_path / "blocked").write_text("a file where the state directory should be")
    code = main(["--config", str(fleet), "--edge-id", "edge-test", "--broker", "mqtt://127.0.0.1:1",
                 "--state-dir", str(tmp_path / "blocked"), "--signing-key", str(signing_key(fleet, "edge-test"))])
    assert code == 2
    assert "state_dir: cannot open the reading queue" in capsys.readouterr().err


def test_rtu_and_site_profile_fleet_is_valid(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "acme.yaml").write_text(SITE_PROFILE % 2)
    rtu = {"id": "test-hq.rtu", "building": "test-hq", "commodity": "electricity",
           "device": {"serial_port": "/dev/ttyUSB0", "baudrate": 19200, "parity": "E", "device_id": 1,
                      "profile": "site/acme.yaml", "poll_period_s": 5, "retries": 0}}
    fleet = load_fleet(write_fleet(tmp_path / "fleet.yaml", [BUILDING], [meter(), rtu], [EDGE]))
    m = fleet.meter_by_id["test-hq.rtu"]
    assert m.device.transport == "rtu" and m.device.bus == "rtu:/dev/ttyUSB0"
    assert [r.field for r in m.profile.registers] == ["power_w", "energy_kwh"]
    assert fleet.meter_by_id["test-hq.main"].device.bus == "tcp:127.0.0.1:1502"


# -- the queue on its own ---------------------------------------------------------------------------------------

def render(items: range):  # type: ignore[no-untyped-def]
    """The queue's renderer for readings ``items``: the k-th carries the sequence number ``first + k``."""
    return lambda first: [(f"bems/v1/test-hq/m{i % 3}/reading",
                           json.dumps({"seq": first + k, "i": i, "pad": "x" * 200}).encode())
                          for k, i in enumerate(items)]


def test_queue_sequence_never_goes_back(tmp_path: Path) -> None:
    path = tmp_path / "q" / "queue.db"
    before = time.time_ns() // 1000
    q = Outbox(path, 10_000_000)
    assert q.last_seq >= before, "a new queue starts its sequence at the clock"
    res = q.cycle(render(range(5)), [], [], 0, 10)
    seqs = [r[0] for r in res.rows]
    assert seqs == list(range(seqs[0], seqs[0] + 5))
    assert [json.loads(r[2])["seq"] for r in res.rows] == seqs, "the payload carries the row's sequence number"
    q.cycle(None, seqs, [], 0, 0)  # all acknowledged: the queue is empty
    q.close()
    q = Outbox(path, 10_000_000)
    assert q.depth == 0 and q.last_seq == seqs[-1]
    res = q.cycle(render(range(9, 10)), [], [], 0, 10)
    assert [r[0] for r in res.rows] == [seqs[-1] + 1]


def test_queue_over_its_cap_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    q = Outbox(tmp_path / "queue.db", 200_000)
    first = q.last_seq + 1
    dropped = 0
    for batch in range(20):
        dropped += q.cycle(render(range(batch * 100, batch * 100 + 100)), [], [], 0, 0).dropped
    assert dropped > 0
    assert q.used_bytes() <= 200_000 * 1.1
    rows = q.fetch(0, 10_000)
    assert len(rows) == q.depth == 2000 - dropped
    assert rows[0][0] == first + dropped, "the oldest were dropped"
    assert [r[0] for r in rows] == list(range(first + dropped, first + 2000))
    assert q.counter("dropped") == dropped


def test_refused_readings_are_set_aside(tmp_path: Path) -> None:
    q = Outbox(tmp_path / "queue.db", 10_000_000)
    rows = q.cycle(render(range(3)), [], [], 0, 10).rows
    res = q.cycle(None, [rows[0][0]], [(rows[1][0], "broker: Not authorized")], 0, 10)
    assert (res.deleted, res.refused, res.depth) == (1, 1, 1)
    assert [r[0] for r in res.rows] == [rows[2][0]]
    db = sqlite3.connect(tmp_path / "queue.db")
    assert db.execute("SELECT seq, reason FROM refused").fetchall() == [(rows[1][0], "broker: Not authorized")]
    assert q.counter("refused") == 1


def test_fast_block_decoder_matches_the_profiles() -> None:
    rng = random.Random(5)
    for name in available_profiles():
        for block in plan_reads(load_profile(name)):
            for _ in range(200):
                regs = [rng.randrange(65536) for _ in range(block.count)]
                want, got = decode_block(block, regs), block_decoder(block)(regs)
                assert want.keys() == got.keys()
                assert all(want[k] == got[k] or (math.isnan(want[k]) and math.isnan(got[k])) for k in want)


def test_readings_wait_in_memory_while_the_queue_cannot_be_written(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = write_fleet(tmp_path / "fleet.yaml", [BUILDING], [meter()], [EDGE])
    agent = EdgeAgent(setup(["--config", str(fleet), "--edge-id", "edge-test", "--state-dir", str(tmp_path),
                             "--signing-key", str(signing_key(fleet, "edge-test"))]), load_fleet(fleet))
    real, calls = agent.outbox.cycle, []

    def disk_full_twice(*args):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) <= 2:
            raise sqlite3.OperationalError("database or disk is full")
        return real(*args)

    monkeypatch.setattr(agent.outbox, "cycle", disk_full_twice)

    async def poll_three_times() -> list[tuple[int, str, bytes]]:
        agent._loop = asyncio.get_running_loop()
        for i in range(3):
            agent.sink(agent.devices[0], utcnow(), {"power_w": float(i)}, "good")
            await agent._cycle()
        return agent.outbox.fetch(0, 10)

    try:
        rows = asyncio.run(poll_three_times())
    finally:
        agent.pool.shutdown()
        agent.outbox.close()
    assert [json.loads(r[2])["values"]["power_w"] for r in rows] == [0.0, 1.0, 2.0], "none lost, in order"
    assert [r[0] for r in rows] == list(range(rows[0][0], rows[0][0] + 3))


def test_a_missing_signing_key_fails_at_start_naming_the_setting_and_the_fix(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    fleet = write_fleet(tmp_path / "fleet.yaml", [BUILDING], [meter()], [EDGE])
    err = run_edge(tmp_path, fleet, capsys=capsys)  # --state-dir elsewhere: no key at <state-dir>/edge-test/
    assert "signing_key (--signing-key, BEMS_EDGE_SIGNING_KEY)" in err
    assert f"bems edge keygen --out {tmp_path / 'state' / 'edge-test' / 'signing.key'}" in err


def test_a_key_the_fleet_does_not_register_for_the_edge_refuses_to_start(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    fleet = write_fleet(tmp_path / "fleet.yaml", [BUILDING], [meter()], [EDGE])
    registered = edge_signer(fleet).kid
    other = generate_key(tmp_path / "other.key")
    err = run_edge(tmp_path, fleet, "--signing-key", str(tmp_path / "other.key"), capsys=capsys)
    assert other.kid in err and registered in err, err
    assert other.public_key in err, "the message gives the line to add to the fleet file"


def test_readings_stored_together_are_signed_together_with_the_edges_key(tmp_path: Path) -> None:
    fleet_path = write_fleet(tmp_path / "fleet.yaml", [BUILDING], [meter()], [EDGE])
    fleet = load_fleet(fleet_path)
    agent = EdgeAgent(setup(["--config", str(fleet_path), "--edge-id", "edge-test"]), fleet)

    async def poll_twice() -> list[tuple[int, str, bytes]]:
        agent._loop = asyncio.get_running_loop()
        for i in range(2):
            agent.sink(agent.devices[0], utcnow(), {"power_w": 1000.5 + i, "energy_kwh": 0.1 * i}, "uncertain")
        await agent._cycle()
        return agent.outbox.fetch(0, 10)

    try:
        rows = asyncio.run(poll_twice())
    finally:
        agent.pool.shutdown()
        agent.outbox.close()
    assert len(rows) == 2
    ring = fleet.keyring()
    batch = [decode_reading(payload, topic) for _, topic, payload in rows]
    assert batch[0].sig == batch[1].sig and [r.proof[:4] for r in batch] == ["0/2/", "1/2/"]  # type: ignore[index]
    for seq, topic, payload in rows:
        r = decode_reading(payload, topic)
        assert (r.seq, r.kid) == (seq, edge_signer(fleet_path).kid)
        ring.verify(r.kid, r.sig, proof=r.proof, building=r.building, meter=r.meter, edge=r.edge, ts_ms=r.ts_ms,
                    seq=r.seq, values=r.values)
        with pytest.raises(SignatureRejected) as exc:
            ring.verify(r.kid, r.sig, proof=r.proof, building=r.building, meter=r.meter, edge=r.edge,
                        ts_ms=r.ts_ms, seq=r.seq, values={**r.values, "power_w": r.values["power_w"] + 1})
        assert exc.value.kind == "bad_signature"
