"""Every fault type, on the wire (what a Modbus client reads from a live simulator, injected through the
control API) and in history (the generated frame written to a store), each with its ground-truth label row.

Each faulty meter has a twin with the same parameters and no fault; noise is off, and the simulator runs on a
clock the test sets, so the difference between the two is the fault and nothing else.
"""

from __future__ import annotations

import datetime as dt
import json
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import serial
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusException

from bems.registers import decode_block, load_profile, plan_reads
from bems.services import free_port
from bems.store import open_store
from simulators.faults import FAULT_TYPES, read_labels
from simulators.harness import ManualClock, ServerThread
from simulators.history import backfill
from simulators.model import FleetModel, MeterModel
from simulators.pty import PtyPair
from simulators.scenario import FaultSpec, fault_from_spec
from simulators.server import MeterServer, Placement
from tests.conftest import need

MONDAY_1130_TEHRAN = dt.datetime(2025, 1, 20, 8, 0, tzinfo=dt.UTC)
ELEC = dict(building="t", commodity="electricity", profile="sdm630", peak=300.0, base_fraction=0.2,
            lighting_share=0.2, equipment_share=0.35, fan_share=0.08, cooling_per_deg=0.025, start_counter=50_000.0)
WATER = dict(building="t", commodity="water", profile="adam6050", peak=6.0, base_fraction=0.1, start_counter=3_000.0)
WATER_FAULTS = ("rollover", "replacement")


def meter_of(fault_type: str) -> str:
    return "t." + fault_type.replace("_", "-")


def twin_of(fault_type: str) -> str:
    return "t.ref-water" if fault_type in WATER_FAULTS else "t.ref"


def twin_model() -> FleetModel:
    elec, water = MeterModel(meter="t.ref", **ELEC), MeterModel(meter="t.ref-water", **WATER)  # type: ignore[arg-type]
    meters = [elec, water] + [replace(water if t in WATER_FAULTS else elec, meter=meter_of(t)) for t in FAULT_TYPES]
    return FleetModel(meters=meters, seed=1, noise=0.0)


class Live:
    """A running simulator with its control API, a settable clock and a label file."""

    def __init__(self, st: ServerThread, clock: ManualClock, labels: Path, port: int) -> None:
        self.st, self.clock, self.labels, self.port = st, clock, labels, port
        self.ids = {m: sm.device_id for m, sm in st.server.meters.items()}

    def at(self, when: dt.datetime) -> None:
        self.clock.set(when)
        self.st.tick()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.st.tick()

    def inject(self, fault_type: str, hours: float = 1.0, **params: Any) -> dict[str, Any]:
        assert self.st.control is not None
        body = {"type": fault_type, "meter": meter_of(fault_type), "duration_s": hours * 3600, **params}
        resp = httpx.post(f"{self.st.control.url}/faults", json=body, timeout=10)
        assert resp.status_code == 201, resp.text
        return resp.json()["fault"]

    def client(self, timeout: float = 2.0) -> ModbusTcpClient:
        c = ModbusTcpClient("127.0.0.1", port=self.port, timeout=timeout, retries=0)
        assert c.connect()
        return c

    def read(self, meter: str, client: ModbusTcpClient | None = None) -> dict[str, float]:
        c = client or self.client()
        try:
            profile = load_profile(self.st.server.meters[meter].profile.name)
            values: dict[str, float] = {}
            for block in plan_reads(profile):
                call = c.read_input_registers if block.function == 4 else c.read_holding_registers
                rr = call(block.address, count=block.count, device_id=self.ids[meter])
                assert not rr.isError(), rr
                values.update(decode_block(block, rr.registers))
            return values
        finally:
            if client is None:
                c.close()

    def raw(self, meter: str, function: int, address: int, count: int) -> list[int]:
        c = self.client()
        try:
            call = c.read_input_registers if function == 4 else c.read_holding_registers
            rr = call(address, count=count, device_id=self.ids[meter])
            assert not rr.isError(), rr
            return list(rr.registers)
        finally:
            c.close()


def assert_labelled(labels: Path, fault: dict[str, Any]) -> None:
    rows = {(r["meter"], r["type"], r["start"], r["end"]) for r in read_labels(labels)}
    assert (fault["meter"], fault["type"], fault["start"], fault["end"]) in rows


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    model = twin_model()
    port = free_port()
    placements = {m.meter: Placement(i + 1, port=port) for i, m in enumerate(model.meters)}
    clock = ManualClock(MONDAY_1130_TEHRAN)
    labels = tmp_path_factory.mktemp("faults") / "labels.csv"
    with ServerThread(MeterServer(model, placements, clock=clock, tick_s=0.05, labels=labels), control=True) as st:
        yield Live(st, clock, labels, port)


# ---- on the wire -------------------------------------------------------------------------------------------

def test_after_hours_waste_on_the_wire(live: Live) -> None:
    live.at(dt.datetime(2025, 1, 20, 18, 30, tzinfo=dt.UTC))  # Monday 22:00 in Tehran
    fault = live.inject("after_hours_waste", hours=20, fraction=0.5, load="lighting")
    extra = live.read("t.after-hours-waste")["power_w"] - live.read("t.ref")["power_w"]
    assert extra == pytest.approx(0.5 * 300_000, rel=1e-4)
    live.advance(14 * 3600)  # Tuesday 12:00: office hours, the waste does not show
    assert live.read("t.after-hours-waste")["power_w"] == pytest.approx(live.read("t.ref")["power_w"], rel=1e-6)
    assert_labelled(live.labels, fault)


def test_holiday_waste_on_the_wire(live: Live) -> None:
    live.at(dt.datetime(2025, 1, 24, 6, 30, tzinfo=dt.UTC))  # Friday 10:00 in Tehran
    fault = live.inject("holiday_waste", fraction=0.6)
    extra = live.read("t.holiday-waste")["power_w"] - live.read("t.ref")["power_w"]
    assert extra == pytest.approx(0.6 * 300_000, rel=1e-4)
    assert_labelled(live.labels, fault)


def test_spike_on_the_wire(live: Live) -> None:
    live.at(MONDAY_1130_TEHRAN)
    fault = live.inject("spike", factor=5)
    assert live.read("t.spike")["power_w"] == pytest.approx(5 * live.read("t.ref")["power_w"], rel=1e-6)
    assert_labelled(live.labels, fault)


def test_stuck_register_on_the_wire(live: Live) -> None:
    live.at(MONDAY_1130_TEHRAN)
    before = live.read("t.stuck")
    fault = live.inject("stuck", hours=5)
    live.advance(3 * 3600)  # 14:30: the building has closed, the counter has moved
    ref = live.read("t.ref")
    assert ref["power_w"] < 0.7 * before["power_w"] and ref["energy_kwh"] > before["energy_kwh"] + 100
    assert live.read("t.stuck") == before
    assert_labelled(live.labels, fault)


def test_slow_drift_on_the_wire(live: Live) -> None:
    live.at(MONDAY_1130_TEHRAN)
    fault = live.inject("drift", hours=10, fraction=0.5)
    live.advance(5 * 3600)  # half way: +25 %
    assert live.read("t.drift")["power_w"] == pytest.approx(1.25 * live.read("t.ref")["power_w"], rel=1e-5)
    assert_labelled(live.labels, fault)


def test_step_change_on_the_wire(live: Live) -> None:
    live.at(MONDAY_1130_TEHRAN)
    fault = live.inject("step", factor=1.4)
    assert live.read("t.step")["power_w"] == pytest.approx(1.4 * live.read("t.ref")["power_w"], rel=1e-6)
    assert_labelled(live.labels, fault)


def test_communication_loss_on_the_wire(live: Live) -> None:
    live.at(MONDAY_1130_TEHRAN)
    fault = live.inject("comm_loss")
    client = live.client(timeout=0.4)
    try:
        t0 = time.monotonic()
        with pytest.raises(ModbusException, match="No response"):
            client.read_input_registers(0x34, count=2, device_id=live.ids["t.comm-loss"])
        assert time.monotonic() - t0 >= 0.35  # a timeout, not a refusal
        assert live.read("t.ref", client)["power_w"] > 0  # the line still answers for the others
    finally:
        client.close()
    assert_labelled(live.labels, fault)


def test_modbus_exception_on_the_wire(live: Live) -> None:
    live.at(MONDAY_1130_TEHRAN)
    fault = live.inject("modbus_exception", code="device_busy")
    client = live.client()
    try:
        rr = client.read_input_registers(0x34, count=2, device_id=live.ids["t.modbus-exception"])
    finally:
        client.close()
    assert rr.isError() and rr.exception_code == 6
    assert_labelled(live.labels, fault)


def test_counter_rollover_at_the_register_width_on_the_wire(live: Live) -> None:
    live.at(MONDAY_1130_TEHRAN)
    ref0 = live.read("t.ref-water")["volume_m3"]
    fault = live.inject("rollover", hours=2, headroom=0.05)
    # 5 pulses of 0.01 m3 below 2**32, low word first: R40001 = 0xFFFB, R40002 = 0xFFFF
    assert live.raw("t.rollover", 3, 0, 2) == [0xFFFB, 0xFFFF]
    live.advance(3600)
    used = live.read("t.ref-water")["volume_m3"] - ref0
    assert used > 1.0
    assert live.read("t.rollover")["volume_m3"] == pytest.approx(used - 0.05, abs=0.011)  # wrapped through zero
    assert_labelled(live.labels, fault)


def test_meter_replacement_restarts_the_counter_on_the_wire(live: Live) -> None:
    live.at(MONDAY_1130_TEHRAN)
    ref0 = live.read("t.ref-water")["volume_m3"]
    fault = live.inject("replacement", initial=0.0)
    assert ref0 > 1000 and live.read("t.replacement")["volume_m3"] == 0.0
    live.advance(3600)
    used = live.read("t.ref-water")["volume_m3"] - ref0
    assert live.read("t.replacement")["volume_m3"] == pytest.approx(used, abs=0.011)
    assert_labelled(live.labels, fault)


def test_word_order_swap_on_the_wire(live: Live) -> None:
    live.at(MONDAY_1130_TEHRAN)
    fault = live.inject("word_swap")
    ref, swapped = live.raw("t.ref", 4, 0x34, 2), live.raw("t.word-swap", 4, 0x34, 2)
    assert swapped == ref[::-1] and swapped != ref
    assert live.read("t.word-swap")["power_w"] != pytest.approx(live.read("t.ref")["power_w"], rel=0.01)
    assert_labelled(live.labels, fault)


def test_clock_drift_hook_and_label(live: Live) -> None:
    """Clock drift belongs to the edge: the Modbus values stay right, the hook reports the edge's offset."""
    live.at(MONDAY_1130_TEHRAN)
    fault = live.inject("clock_drift", hours=4, seconds_per_hour=90)
    live.advance(2 * 3600)
    assert live.st.control is not None
    hook = httpx.get(f"{live.st.control.url}/clock", params={"meter": "t.clock-drift"}, timeout=5).json()
    assert hook["offset_s"] == pytest.approx(180.0)
    assert live.read("t.clock-drift")["power_w"] == pytest.approx(live.read("t.ref")["power_w"], rel=1e-6)
    assert_labelled(live.labels, fault)


def test_slow_device_holds_up_its_line(live: Live) -> None:
    live.at(MONDAY_1130_TEHRAN)
    fault = live.inject("slow_device", delay_s=0.6)
    slow_client, other_client = live.client(timeout=3), live.client(timeout=3)
    took: dict[str, float] = {}

    def timed(name: str, client: ModbusTcpClient, meter: str) -> None:
        t0 = time.monotonic()
        rr = client.read_input_registers(0x34, count=2, device_id=live.ids[meter])
        assert not rr.isError()
        took[name] = time.monotonic() - t0

    try:
        slow = threading.Thread(target=timed, args=("slow", slow_client, "t.slow-device"))
        slow.start()
        time.sleep(0.15)
        timed("other", other_client, "t.ref")  # same line, other device: waits for the bus
        slow.join(5)
        timed("alone", other_client, "t.ref")
    finally:
        slow_client.close()
        other_client.close()
    assert took["slow"] >= 0.55 and took["other"] >= 0.3 and took["alone"] < 0.3
    assert_labelled(live.labels, fault)


def crc16(frame: bytes) -> bytes:
    """Modbus RTU CRC (polynomial 0xA001, initial 0xFFFF), low byte first."""
    crc = 0xFFFF
    for byte in frame:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return struct.pack("<H", crc)


def test_crc_errors_on_rtu(tmp_path: Path) -> None:
    need("socat", "socat")
    model = twin_model()
    clock = ManualClock(MONDAY_1130_TEHRAN)
    labels = tmp_path / "labels.csv"
    with PtyPair() as line:
        placements = {"t.ref": Placement(1, serial=line.server_end, baudrate=19200),
                      "t.crc-error": Placement(2, serial=line.server_end, baudrate=19200)}
        with ServerThread(MeterServer(model, placements, clock=clock, labels=labels), control=True) as st:
            assert st.control is not None
            resp = httpx.post(f"{st.control.url}/faults", json={"type": "crc_error", "meter": "t.crc-error",
                                                                 "duration_s": 600}, timeout=10)
            assert resp.status_code == 201, resp.text
            answers = {}
            with serial.Serial(line.client_end, 19200, timeout=1) as port:
                for device_id in (1, 2):
                    request = bytes([device_id, 0x04, 0x00, 0x34, 0x00, 0x02])
                    port.write(request + crc16(request))
                    answers[device_id] = port.read(9)  # id, fc, byte count, 4 data bytes, CRC
    for device_id, frame in answers.items():
        assert len(frame) == 9 and frame[:3] == bytes([device_id, 0x04, 4]), frame
    assert answers[1][-2:] == crc16(answers[1][:-2])  # the twin: a good frame
    assert answers[2][-2:] != crc16(answers[2][:-2])  # the faulty device: a broken CRC
    assert answers[2][3:7] == answers[1][3:7]  # same reading underneath
    assert_labelled(labels, resp.json()["fault"])


def test_crc_error_refused_on_tcp(live: Live) -> None:
    assert live.st.control is not None
    resp = httpx.post(f"{live.st.control.url}/faults", json={"type": "crc_error", "meter": "t.crc-error",
                                                             "duration_s": 60}, timeout=10)
    assert resp.status_code == 400 and "needs a meter served over Modbus RTU" in resp.json()["error"]


# ---- in history --------------------------------------------------------------------------------------------

HISTORY_START = dt.datetime(2025, 1, 18, 0, 0, tzinfo=dt.UTC)  # a week from Saturday
WINDOW = (dt.datetime(2025, 1, 19, 4, 0, tzinfo=dt.UTC), dt.datetime(2025, 1, 21, 4, 0, tzinfo=dt.UTC))
PARAMS: dict[str, dict[str, Any]] = {"spike": {"factor": 5}, "step": {"factor": 1.4}, "drift": {"fraction": 0.5},
                                     "rollover": {"headroom": 0.05}, "clock_drift": {"seconds_per_hour": 30},
                                     "after_hours_waste": {"fraction": 0.5}, "holiday_waste": {"fraction": 0.6}}


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    model = twin_model()
    for t in FAULT_TYPES:
        start, end = WINDOW
        if t == "holiday_waste":  # Thursday 23 and Friday 24 January
            start, end = dt.datetime(2025, 1, 22, 20, 30, tzinfo=dt.UTC), dt.datetime(2025, 1, 24, 20, 30,
                                                                                       tzinfo=dt.UTC)
        spec = FaultSpec.model_validate({"type": t, "meter": meter_of(t), "start": start, "end": end,
                                         **PARAMS.get(t, {})})
        model.faults.append(fault_from_spec(spec, model, "test"))
    tmp = tmp_path_factory.mktemp("history")
    labels = tmp / "labels.csv"
    with open_store(f"sqlite:///{tmp}/h.db") as store:
        frame = backfill(model, store, HISTORY_START, HISTORY_START + dt.timedelta(days=7), labels=labels)
        stored = {m: store.count(m) for m in model.ids}
    return {"frame": frame, "labels": labels, "stored": stored, "model": model}


def _rows(h: dict[str, Any], fault_type: str, field: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    frame = h["frame"]
    a, b = frame.meters.index(meter_of(fault_type)), frame.meters.index(twin_of(fault_type))
    fault = next(f for f in frame.faults if f.type == fault_type)
    return frame.columns[field][a], frame.columns[field][b], fault.window(frame.times)


@pytest.mark.parametrize("fault_type", FAULT_TYPES)
def test_fault_in_history_and_labels(history: dict[str, Any], fault_type: str) -> None:
    frame, model = history["frame"], history["model"]
    fault = next(f for f in frame.faults if f.type == fault_type)
    field = "volume_m3" if fault_type in WATER_FAULTS else "power_w"
    a, b, win = _rows(history, fault_type, field)
    row = frame.meters.index(meter_of(fault_type))
    masks = model.calendar.masks(frame.times)
    assert win.sum() > 8
    if fault_type not in ("rollover", "replacement"):  # the counter ones persist after the window
        assert np.allclose(a[~win], b[~win], rtol=1e-6, equal_nan=True), "the fault leaked outside its window"
    if fault_type == "after_hours_waste":
        after = win & masks.after_hours
        assert np.allclose(a[after] - b[after], 0.5 * 300_000, rtol=1e-4)
        assert np.allclose(a[win & masks.working], b[win & masks.working], rtol=1e-6)
    elif fault_type == "holiday_waste":
        closed = win & ~masks.open_day & masks.in_hours
        assert closed.sum() >= 8 and np.allclose(a[closed] - b[closed], 0.6 * 300_000, rtol=1e-4)
    elif fault_type == "spike":
        assert np.allclose(a[win], 5 * b[win], rtol=1e-6)
    elif fault_type == "stuck":
        energy_a, energy_b, _ = _rows(history, fault_type, "energy_kwh")
        assert np.unique(a[win]).size == 1 and np.unique(energy_a[win]).size == 1
        assert np.unique(b[win]).size > 3 and np.unique(energy_b[win]).size > 10
    elif fault_type == "drift":
        ratio = a[win] / b[win]
        assert ratio[0] == pytest.approx(1.0, abs=0.01) and ratio[-1] == pytest.approx(1.5, abs=0.01)
        assert np.all(np.diff(ratio) > -1e-6)
    elif fault_type == "step":
        assert np.allclose(a[win], 1.4 * b[win], rtol=1e-6)
    elif fault_type in ("comm_loss", "modbus_exception", "crc_error"):
        assert not frame.valid[row, win].any() and frame.valid[row, ~win].all()
        assert history["stored"][meter_of(fault_type)] == frame.times.size - win.sum()
    elif fault_type == "slow_device":
        assert np.allclose(a, b, rtol=1e-6) and frame.valid[row].all()  # a label, no value effect
    elif fault_type == "rollover":
        first = int(np.argmax(win))
        assert a[first] == pytest.approx((2**32 - 5) * 0.01, abs=1e-6)
        assert np.nanmin(a[win]) < 100 and np.sum(np.diff(a[win]) < 0) == 1  # wraps once, to near zero
    elif fault_type == "replacement":
        first = int(np.argmax(win))
        assert a[first] == 0.0 and np.allclose(a[win] - (b[win] - b[first]), 0, atol=0.011)
    elif fault_type == "word_swap":
        def swap(x: np.ndarray) -> np.ndarray:  # float32 with its two 16-bit words exchanged
            bits = x.astype(">f4").view(">u4")
            return ((bits << 16) | (bits >> 16)).astype(">u4").view(">f4").astype(np.float64)
        assert np.array_equal(a[win], swap(b[win]))
    elif fault_type == "clock_drift":
        ts = frame.timestamps
        offset = (ts[row] - frame.times.astype("datetime64[ms]")).astype(np.float64) / 1000
        since = (frame.times[win] - frame.times[win][0]).astype(np.float64)
        assert np.allclose(offset[win], 30 * since / 3600, atol=0.001) and not offset[~win].any()
    rows = {(r["meter"], r["type"], r["start"], r["end"]) for r in read_labels(history["labels"])}
    assert (fault.meter, fault_type, fault.start.isoformat(), fault.end.isoformat()) in rows
    params = next(json.loads(r["params"]) for r in read_labels(history["labels"]) if r["type"] == fault_type)
    assert params == fault.params


@pytest.mark.parametrize(("profile", "words_at_top"), [
    ("adam6050", [0xFFFB, 0xFFFF]),  # uint32 pulses, low word first: 2**32 - 5
    ("em24", [0xFFFB, 0x7FFF]),  # signed INT32 kWh x10 counts in its positive half, low word first: 2**31 - 5
    ("iem3000", [0x7FFF, 0xFFFF, 0xFFFF, 0xFEC7]),  # signed INT64 Wh, high word first: 2**63 - 313
])
def test_rollover_puts_each_counter_encoding_at_its_width(profile: str, words_at_top: list[int]) -> None:
    headroom = 0.313 if profile == "iem3000" else (0.5 if profile == "em24" else 0.05)
    commodity = "water" if profile == "adam6050" else "electricity"
    model = FleetModel(meters=[MeterModel(meter="t.m", building="t", commodity=commodity, profile=profile,
                                          peak=50.0, base_fraction=0.3, start_counter=1234.0)], noise=0.0)
    clock = ManualClock(MONDAY_1130_TEHRAN)
    server = MeterServer(model, {"t.m": Placement(1, port=1)}, clock=clock)
    spec = next(r for r in load_profile(profile).registers if r.cumulative)
    start = clock.datetime
    server.inject(fault_from_spec(FaultSpec.model_validate(
        {"type": "rollover", "meter": "t.m", "start": start, "end": start + dt.timedelta(hours=1),
         "headroom": headroom}), model, "test"))
    sm = server.meters["t.m"]
    assert server.words(sm, spec, sm.values[spec.field], server.active_faults("t.m")) == words_at_top
