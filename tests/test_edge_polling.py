"""Polling acceptance: a dead and a slow device do not disturb the others' period; Modbus RTU over a pseudo-terminal
pair with CRC errors injected by the server; ``--check`` prints what each device answered."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

from bems.registers import encode, load_profile
from bems.services import Mosquitto, find_binary
from simulators.server import MeterServer, SimMeter
from tests.conftest import need
from tests.edge_support import BUILDING, Edge, Subscriber, meters_fleet, ts
from tests.stages import ThreadedSimulator, wait_for, write_fleet

TOPIC = "bems/v1/test-hq/+/reading"


class SlowServer(MeterServer):
    """A MeterServer where some meters answer late or never (until the test ends)."""

    def __init__(self, *args, delays: dict[str, float], **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.delays = delays
        self.release: asyncio.Event | None = None

    async def _action(self, sm: SimMeter, *args):  # type: ignore[no-untyped-def]
        delay = self.delays.get(sm.meter)
        if delay is not None:
            if self.release is None:
                self.release = asyncio.Event()
            await asyncio.wait({asyncio.ensure_future(self.release.wait())}, timeout=delay)
        return await super()._action(sm, *args)

    async def stop(self) -> None:
        if self.release is not None:
            self.release.set()
        await super().stop()


def test_dead_and_slow_devices_do_not_disturb_the_others(mosquitto: Mosquitto, tmp_path: Path) -> None:
    fleet, _ = meters_fleet(tmp_path / "fleet.yaml", 20, per_port=1, period=1.0, profile="adam6050")
    dead, slow = "test-hq.m018", "test-hq.m019"
    sim = ThreadedSimulator(fleet)
    sim.server = SlowServer(sim.model, _placements(fleet), tick_s=0.2, delays={dead: 3600.0, slow: 0.9})
    with sim:
        sub = Subscriber(mosquitto.port, TOPIC, "jitter-checker")
        edge = Edge(tmp_path, fleet, mosquitto.url)
        try:
            edge.wait_metrics()
            time.sleep(2)  # settle: first polls are spread over the first period
            t0 = time.time()
            time.sleep(12)
            t1 = time.time()
            metrics = edge.metrics()
            status = dict(sub.status)
        finally:
            code = edge.proc.stop()
            sub.close()
    assert code == 0, edge.proc.output()
    by_meter = sub.by_meter()
    intervals = []
    for meter, rs in by_meter.items():
        stamps = [ts(r) for r in rs if t0 <= ts(r) <= t1]
        if meter in (dead, slow):
            continue
        assert len(stamps) >= 10, f"{meter}: {len(stamps)} readings in 12 s"
        intervals.extend(np.diff(stamps))
    intervals_a = np.array(intervals)
    assert len({m for m in by_meter if m not in (dead, slow)}) == 18
    worst = float(np.max(np.abs(intervals_a - 1.0)))
    print(f"18 meters, {intervals_a.size} intervals: mean {intervals_a.mean():.4f} s, "
          f"worst deviation {worst * 1000:.1f} ms")
    assert worst <= 0.1, f"a period deviated by {worst * 1000:.0f} ms (> 10%)"
    assert dead not in by_meter
    slow_stamps = [ts(r) for r in by_meter[slow] if t0 <= ts(r) <= t1]
    assert len(slow_stamps) >= 8, "the slow device still answers, about once a period"
    assert metrics[f'bems_edge_device_up{{meter="{dead}"}}'] == 0
    assert metrics[f'bems_edge_read_errors_total{{kind="timeout",meter="{dead}"}}'] >= 1
    assert metrics[f'bems_edge_reads_total{{meter="{dead}",result="failed"}}'] <= 5, "the dead device is backed off"
    device = status["bems/v1/test-hq/edge/edge-test/status"]["devices"][dead]
    assert device["up"] is False and "no answer" in device["last_error"]
    out = edge.proc.output()
    assert len(re.findall(rf"ERROR bems.edge: meter {re.escape(dead)}", out)) == 1, "first failure at ERROR, once"


def _placements(fleet: Path) -> dict[str, tuple[str, int, int]]:
    from bems.fleet import load_fleet

    return {m.id: (m.device.host, m.device.port, m.device.device_id) for m in load_fleet(fleet).meters}


# -- Modbus RTU over socat ------------------------------------------------------------------------------------------

@pytest.fixture
def pty_pair() -> Iterator[tuple[str, str]]:
    need("socat", "socat")
    proc = subprocess.Popen([find_binary("socat") or "socat", "-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"],
                            stderr=subprocess.PIPE, text=True)
    ptys: list[str] = []
    deadline = time.monotonic() + 10
    while len(ptys) < 2 and time.monotonic() < deadline:
        m = re.search(r"PTY is (\S+)", proc.stderr.readline())  # type: ignore[union-attr]
        if m:
            ptys.append(m.group(1))
    assert len(ptys) == 2, "socat did not open a pseudo-terminal pair"
    yield ptys[0], ptys[1]
    proc.terminate()
    proc.wait(5)


PINNED = {1: ("sdm630", {"power_w": 12345.5, "energy_kwh": 777.25, "voltage_l1_v": 231.0}),
          2: ("adam6050", {"volume_m3": 42.5})}


class RtuLine:
    """An RS-485 line on a pseudo-terminal: pymodbus' serial server with one SimDevice per meter, in a thread;
    every ``corrupt_every``-th response leaves with a broken CRC."""

    def __init__(self, port: str, corrupt_every: int) -> None:
        self.port, self.corrupt_every = port, corrupt_every
        self.responses = self.corrupted = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            return data
        self.responses += 1
        if self.responses % self.corrupt_every == 0:
            self.corrupted += 1
            return data[:-2] + bytes([data[-2] ^ 0x5A, data[-1]])
        return data

    async def _start(self) -> None:
        devices = [SimDevice(id=0, simdata=[SimData(0, count=2, datatype=DataType.REGISTERS)])]
        for device_id, (profile_name, values) in PINNED.items():
            profile = load_profile(profile_name)
            span = max(r.address + r.words for r in profile.registers)

            async def action(fc, start, address, count, regs, set_values, profile=profile, values=values):  # type: ignore[no-untyped-def]
                for spec in profile.registers:
                    if spec.field in values:
                        regs[spec.address - start:spec.address - start + spec.words] = encode(values[spec.field], spec)

            devices.append(SimDevice(id=device_id, simdata=[SimData(0, count=span, datatype=DataType.REGISTERS)],
                                     action=action))
        self.server = ModbusSerialServer(devices, framer=FramerType.RTU, port=self.port, baudrate=19200,
                                         trace_packet=self._trace)
        await self.server.serve_forever(background=True)

    def __enter__(self) -> RtuLine:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def rtu_fleet(path: Path, serial: str) -> Path:
    meters = [{"id": f"test-hq.rtu{i}", "building": "test-hq", "commodity": "electricity" if i == 1 else "water",
               "device": {"serial_port": serial, "baudrate": 19200, "device_id": i, "profile": profile,
                          "timeout_s": 0.5}}
              for i, (profile, _) in PINNED.items()]
    edges = [{"id": "edge-test", "building": "test-hq", "poll_period_s": 0.3, "retries": 2}]
    return write_fleet(path, [BUILDING], meters, edges)


def test_rtu_over_pty_counts_crc_errors_and_keeps_reading(mosquitto: Mosquitto, tmp_path: Path,
                                                          pty_pair: tuple[str, str]) -> None:
    server_end, edge_end = pty_pair
    fleet = rtu_fleet(tmp_path / "fleet.yaml", edge_end)
    with RtuLine(server_end, corrupt_every=4) as line:
        sub = Subscriber(mosquitto.port, TOPIC, "rtu-checker")
        edge = Edge(tmp_path, fleet, mosquitto.url)
        try:
            wait_for(lambda: len(sub.by_meter().get("test-hq.rtu1", [])) >= 15
                     and len(sub.by_meter().get("test-hq.rtu2", [])) >= 15, 30, "RTU readings")
            metrics = edge.metrics()
            alive = edge.proc.proc.poll() is None
        finally:
            code = edge.proc.stop()
            sub.close()
        corrupted = line.corrupted
    assert alive and code == 0, edge.proc.output()
    crc = sum(v for k, v in metrics.items() if k.startswith("bems_edge_read_errors_total") and 'kind="crc"' in k)
    assert corrupted >= 5
    assert crc >= 5, metrics
    assert crc <= corrupted
    for meter, rs in sub.by_meter().items():
        device_id = int(meter[-1])
        for r in rs:
            for field, value in PINNED[device_id][1].items():
                assert r["values"][field] == pytest.approx(value, rel=1e-6), (meter, r)
    timeouts = sum(v for k, v in metrics.items() if 'kind="timeout"' in k)
    print(f"RTU: {corrupted} responses corrupted, {crc:.0f} CRC errors counted, {timeouts:.0f} timeouts, "
          f"{len(sub.all())} readings")


def test_check_prints_what_each_device_answered(tmp_path: Path) -> None:
    fleet, ports = meters_fleet(tmp_path / "fleet.yaml", 2, per_port=2, period=1.0, profile="adam6050")
    data = fleet.read_text().replace("device_id: 2", "device_id: 9")  # no simulated meter answers as id 9
    fleet.write_text(data)
    sim = ThreadedSimulator(fleet)
    sim.server = MeterServer(sim.model, {"test-hq.m000": ("127.0.0.1", ports[0], 1)}, tick_s=0.2)
    sim.server.set_override("test-hq.m000", "volume_m3", 1234.5)
    with sim:
        out = subprocess.run([sys.executable, "-m", "edge", "--check", "--config", str(fleet), "--edge-id",
                              "edge-test", "--timeout-s", "0.5"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "1 of 2 devices answered" in out.stdout
    lines = {line.split()[1]: line for line in out.stdout.splitlines() if "test-hq.m00" in line}
    assert "ok" in lines["test-hq.m000"] and "volume_m3=1234.5" in lines["test-hq.m000"]
    assert "failed" in lines["test-hq.m001"]
    assert (tmp_path / "edge-state" / "edge-test").exists(), "the edge's key is there (tests.stages.write_fleet)"
    assert not list((tmp_path / "edge-state").rglob("queue.db*")), "--check touches no queue"
    assert f"signing key {tmp_path / 'edge-state' / 'edge-test' / 'signing.key'}: key id " in out.stdout
