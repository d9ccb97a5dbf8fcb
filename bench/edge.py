"""Edge throughput and footprint.

1. Register reads/s through the edge (poll, decode, queue in SQLite, publish QoS 1, broker PUBACK, delete) against
   raw pymodbus reading the same registers over the same number of connections, same simulator, same run; raw and
   edge alternate for a few rounds and the median ratio is the figure (the machine is shared).
2. 1,000 meters at a 1 s period: the edge process's CPU (percent of one core) and memory (RSS).

For (1) the simulator runs as its own process (``python -m simulators``, pymodbus). For (2) pymodbus' server cannot
answer 2,000 requests/s on this machine beside the edge, so a minimal Modbus TCP responder (MBAP, functions 3 and 4,
a fixed SDM630 register image) serves the meters from its own process; only the edge process is measured. The edge
runs as ``python -m edge``, mosquitto is the broker. Prints figures, then one ``goal`` line per goal of the issue.

    python bench/edge.py [--meters 40] [--connections 4] [--seconds 5] [--rounds 3] [--fleet-meters 1000]
                         [--fleet-seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
from pymodbus.client import AsyncModbusTcpClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bems.fleet import load_fleet
from bems.registers import encode, load_profile, plan_reads
from bems.services import Mosquitto, free_port, wait_port
from edge.__main__ import use_uvloop
from tests.stages import StageProcess, signing_key, write_fleet

BUILDING = {"id": "bench-hq", "name": "Bench HQ", "city": "Tehran", "floor_area_m2": 10000}


def _image() -> bytes:
    """SDM630 registers with plausible values, as a byte string indexed by register address."""
    profile = load_profile("sdm630")
    regs = [0] * (max(r.address + r.words for r in profile.registers) + 1)
    for i, spec in enumerate(profile.registers):
        regs[spec.address:spec.address + spec.words] = encode(230.0 + i, spec)
    return struct.pack(f">{len(regs)}H", *regs)


class Responder(asyncio.Protocol):
    """Answers Modbus TCP read requests (functions 3 and 4) from the image, for any device id."""

    image = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport, self.buf = transport, b""  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 7:
            tid, _, length, unit = struct.unpack(">HHHB", self.buf[:7])
            if len(self.buf) < 6 + length:
                return
            frame, self.buf = self.buf[:6 + length], self.buf[6 + length:]
            fc, address, count = struct.unpack(">BHH", frame[7:12])
            body = self.image[2 * address:2 * (address + count)].ljust(2 * count, b"\0")
            pdu = struct.pack(">BB", fc, 2 * count) + body
            self.transport.write(struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu)  # type: ignore[attr-defined]


def responder(ports: list[int]) -> None:
    async def serve() -> None:
        Responder.image = _image()
        loop = asyncio.get_running_loop()
        servers = [await loop.create_server(Responder, "127.0.0.1", p) for p in ports]
        await asyncio.gather(*(s.serve_forever() for s in servers))
    asyncio.run(serve())


def make_fleet(path: Path, meters: int, connections: int, period: float) -> tuple[Path, list[int]]:
    ports: list[int] = []
    while len(ports) < connections:  # free_port may hand out a port twice
        if (port := free_port()) not in ports:
            ports.append(port)
    per = (meters + connections - 1) // connections
    rows = [{"id": f"bench-hq.m{i:04d}", "building": "bench-hq", "commodity": "electricity", "rated_kw": 100,
             "device": {"port": ports[i // per], "device_id": i % per + 1, "profile": "sdm630"}}
            for i in range(meters)]
    edge = {"id": "edge-bench", "building": "bench-hq", "poll_period_s": period, "timeout_s": 5}
    return write_fleet(path, [BUILDING], rows, [edge]), ports


def metrics(port: int) -> dict[str, float]:
    out = {}
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def total(m: dict[str, float], prefix: str, contains: str = "") -> float:
    return sum(v for k, v in m.items() if k.startswith(prefix) and contains in k)


async def raw_pymodbus(fleet_path: Path, seconds: float) -> tuple[float, float]:
    """Register reads/s and requests/s of bare pymodbus clients, one per connection, each reading its devices'
    planned blocks back to back (what the edge asks for, minus decoding, queueing and publishing)."""
    fleet = load_fleet(fleet_path)
    by_port: dict[int, list[tuple[int, list]]] = {}
    for m in fleet.meters:
        by_port.setdefault(m.device.port, []).append((m.device.device_id, plan_reads(m.profile)))
    regs = requests = 0
    deadline = time.monotonic() + seconds

    async def worker(port: int, devices: list[tuple[int, list]]) -> None:
        nonlocal regs, requests
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=5, retries=0)
        await client.connect()
        try:
            while time.monotonic() < deadline:
                for device_id, blocks in devices:
                    for b in blocks:
                        call = client.read_input_registers if b.function == 4 else client.read_holding_registers
                        rr = await call(b.address, count=b.count, device_id=device_id)
                        regs += len(rr.registers)
                        requests += 1
        finally:
            client.close()

    t0 = time.monotonic()
    await asyncio.gather(*(worker(p, d) for p, d in by_port.items()))
    elapsed = time.monotonic() - t0
    return regs / elapsed, requests / elapsed


def start_edge(tmp: Path, fleet: Path, broker: Mosquitto, name: str, *args: str) -> tuple[StageProcess, int]:
    port = free_port()
    edge = StageProcess("edge", ["--config", str(fleet), "--edge-id", "edge-bench", "--broker", broker.url,
                                 "--state-dir", str(tmp / f"state-{name}"), "--metrics-port", str(port),
                                 "--signing-key", str(signing_key(fleet, "edge-bench")),
                                 "--log-level", "WARNING", *args], tmp / f"{name}.log")
    wait_port(port, 20)
    return edge, port


def throughput(tmp: Path, broker: Mosquitto, meters: int, connections: int, seconds: float, rounds: int) -> float:
    """Median over ``rounds`` of (registers/s through the edge) / (registers/s of raw pymodbus measured just before),
    alternating so a change in the machine's load hits both sides of a ratio alike."""
    fleet, ports = make_fleet(tmp / "fleet-throughput.yaml", meters, connections, period=1.0)
    per_reading = sum(b.count for b in plan_reads(load_fleet(fleet).meters[0].profile))
    sim = StageProcess("simulators", ["--config", str(fleet)], tmp / "sim-throughput.log")
    print(f"throughput: {meters} SDM630 meters on {connections} connections, {rounds} alternating rounds of raw "
          f"pymodbus then the edge, {seconds:g} s each")
    ratios = []
    try:
        for p in ports:
            wait_port(p, 30)
        use_uvloop()  # the same event loop as the edge's
        for i in range(rounds):
            raw_regs, raw_req = asyncio.run(raw_pymodbus(fleet, seconds))
            edge, mport = start_edge(tmp, fleet, broker, f"edge-throughput-{i}", "--poll-period-s", "0.000001")
            try:
                time.sleep(3)  # warm up: connections open, first batches stored and acknowledged
                m0, t0 = metrics(mport), time.monotonic()
                cpu0 = psutil.Process(edge.proc.pid).cpu_times()
                time.sleep(seconds)
                m1, t1 = metrics(mport), time.monotonic()
                cpu1 = psutil.Process(edge.proc.pid).cpu_times()
            finally:
                edge.stop()
            dt = t1 - t0
            polls = (total(m1, "bems_edge_reads_total", 'result="ok"')
                     - total(m0, "bems_edge_reads_total", 'result="ok"'))
            acked = m1["bems_edge_published_total"] - m0["bems_edge_published_total"]
            edge_regs = acked * per_reading / dt
            cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / dt * 100
            ratios.append(edge_regs / raw_regs)
            print(f"  round {i + 1}: raw pymodbus {raw_regs:9,.0f} registers/s ({raw_req:,.0f} requests/s)   "
                  f"through edge {edge_regs:9,.0f} registers/s ({polls / dt:,.0f} polls/s, {acked / dt:,.0f} "
                  f"readings/s acknowledged by the broker, queue depth at the end {m1['bems_edge_queue_depth']:.0f}, "
                  f"edge CPU {cpu:.0f}% of one core)   ratio {ratios[-1]:.2f}")
    finally:
        sim.stop()
    ratio = float(statistics.median(ratios))
    print(f"  median ratio    {ratio:.2f}")
    return ratio


def footprint(tmp: Path, broker: Mosquitto, meters: int, seconds: float) -> tuple[float, float]:
    connections = max(meters // 10, 1)
    fleet, ports = make_fleet(tmp / "fleet-1000.yaml", meters, connections, period=1.0)
    sim = multiprocessing.Process(target=responder, args=(ports,), daemon=True)
    sim.start()
    try:
        for p in ports:
            wait_port(p, 60)
        edge, mport = start_edge(tmp, fleet, broker, "edge-1000")
        try:
            proc = psutil.Process(edge.proc.pid)
            time.sleep(10)  # warm up: every meter polled a few times
            m0, t0, cpu0 = metrics(mport), time.monotonic(), proc.cpu_times()
            rss = 0
            deadline = t0 + seconds
            while time.monotonic() < deadline:
                rss = max(rss, proc.memory_info().rss)
                time.sleep(0.5)
            m1, t1, cpu1 = metrics(mport), time.monotonic(), proc.cpu_times()
        finally:
            edge.stop()
    finally:
        sim.terminate()
        sim.join(5)
    dt = t1 - t0
    cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / dt * 100
    polls = total(m1, "bems_edge_reads_total", 'result="ok"') - total(m0, "bems_edge_reads_total", 'result="ok"')
    failed = total(m1, "bems_edge_reads_total", 'result="failed"') - total(m0, "bems_edge_reads_total",
                                                                           'result="failed"')
    acked = m1["bems_edge_published_total"] - m0["bems_edge_published_total"]
    overruns = total(m1, "bems_edge_poll_overruns_total") - total(m0, "bems_edge_poll_overruns_total")
    print(f"footprint: {meters} meters at 1 s on {connections} connections, measured over {dt:.0f} s")
    print(f"  polls/s {polls / dt:,.0f} (failed {failed:.0f}, skipped periods {overruns:.0f}), readings acknowledged/s "
          f"{acked / dt:,.0f}, queue depth {m1['bems_edge_queue_depth']:.0f}")
    print(f"  edge CPU {cpu:.1f}% of one core, peak RSS {rss / 1e6:.0f} MB")
    return cpu, rss / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meters", type=int, default=40)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5, help="length of each raw and each edge measurement")
    ap.add_argument("--rounds", type=int, default=3, help="alternating raw/edge rounds (median ratio)")
    ap.add_argument("--fleet-meters", type=int, default=1000)
    ap.add_argument("--fleet-seconds", type=float, default=30)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-edge-"))
    broker = Mosquitto(tmp / "mosquitto")
    broker.start()
    try:
        ratio = throughput(tmp, broker, args.meters, args.connections, args.seconds, args.rounds)
        cpu, rss = footprint(tmp, broker, args.fleet_meters, args.fleet_seconds)
    finally:
        broker.stop()
    print(f"goal edge_vs_raw_pymodbus {ratio:.2f} target >= 0.7")
    print(f"goal edge_cpu_percent_1000_meters {cpu:.1f} target <= 50")
    print(f"goal edge_rss_mb_1000_meters {rss:.0f} target <= 150")
    return 0


if __name__ == "__main__":
    sys.exit(main())
