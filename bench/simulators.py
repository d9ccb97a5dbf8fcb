"""Simulator benchmarks: 1,000 meters served by one process, and a week of history for 1,000 meters.

Serving: ``python -m simulators`` serves 1,000 meters (10 TCP ports x 100 device ids, SDM630, iEM3000, EM24,
pulse counters and temperature sensors) to an edge-like poller in this process (pymodbus async clients, one per
port, each meter's planned block reads once per period). Printed: reads/s served, meter polls/s against the
1/s required, and the simulator process's CPU and RSS; beside it, in the same run, a bare pymodbus server with
the same devices and no model (the reference).

History: one week at 15 minutes for 1,000 meters with faults (model, faults, register round trip, gaps, clock
drift), timed against one numpy pass of the same size (normal noise over [meters x steps] and a cumulative sum);
then the frame is written to a SQLite store with its labels (printed, not a goal).

    python bench/simulators.py [--meters 1000] [--seconds 10] [--period 1.0] [--skip-serving] [--skip-history]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from bems.fleet import Fleet, load_fleet
from bems.registers import plan_reads
from bems.services import free_port, wait_port
from bems.store import open_store
from simulators.faults import FAULT_TYPES, GAP_FAULTS, LOAD_FAULTS, Fault
from simulators.history import generate, write_frame, write_labels
from simulators.model import fleet_model
from tests.stages import StageProcess, write_fleet

PER_BUILDING = [("main-elec", "electricity", "sdm630", 600), ("hvac-elec", "electricity", "iem3000", 250),
                ("lighting-elec", "electricity", "em24", 90), ("annex-elec", "electricity", "sdm630", 120),
                ("plant-elec", "electricity", "iem3000", 180), ("it-elec", "electricity", "em24", 60),
                ("gas", "gas", "adam6050", None), ("water", "water", "adam6050", None),
                ("garden-water", "water", "adam6050", None), ("outdoor", "weather", "outdoor_temp", None)]
PER_PORT = 100


def bench_fleet(path: Path, meters: int) -> Path:
    buildings, rows = [], []
    ports = [free_port() for _ in range(-(-meters // PER_PORT))]
    for i in range(meters):
        b = i // len(PER_BUILDING)
        name, commodity, profile, kw = PER_BUILDING[i % len(PER_BUILDING)]
        if i % len(PER_BUILDING) == 0:
            buildings.append({"id": f"bld-{b:03d}", "name": f"Building {b}", "city": "Tehran",
                              "floor_area_m2": 4000 + 37 * b})
        rows.append({"id": f"bld-{b:03d}.{name}", "building": f"bld-{b:03d}", "commodity": commodity,
                     "device": {"port": ports[i // PER_PORT], "device_id": 1 + i % PER_PORT, "profile": profile},
                     **({"rated_kw": kw} if kw else {})})
    return write_fleet(path, buildings, rows, [{"id": f"edge-{b['id']}", "building": b["id"]} for b in buildings])


# ---- serving -----------------------------------------------------------------------------------------------

async def serve_bare(fleet_path: str) -> None:
    """The reference: the same devices and register spans on bare pymodbus simulators, no model, no faults."""
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    fleet = load_fleet(fleet_path)
    by_port: dict[int, list[SimDevice]] = {}
    for m in fleet.meters:
        data = [SimData(b.address, count=b.count, datatype=DataType.REGISTERS) for b in plan_reads(m.profile)]
        by_port.setdefault(m.device.port, []).append(SimDevice(id=m.device.device_id, simdata=data))
    for port, devices in by_port.items():
        await ModbusTcpServer(devices, address=("127.0.0.1", port)).serve_forever(background=True)
    await asyncio.Event().wait()


async def poll(fleet: Fleet, seconds: float, period: float, ports: list[int]) -> dict[str, float]:
    """One client per port, like an edge gateway: every period, each meter's planned blocks in turn."""
    by_port: dict[int, list] = {}
    for m in fleet.meters:
        if m.device.port in ports:
            by_port.setdefault(m.device.port, []).append((m.device.device_id, plan_reads(m.profile)))
    clients = {p: AsyncModbusTcpClient("127.0.0.1", port=p, timeout=2, retries=0) for p in by_port}
    for c in clients.values():
        await c.connect()
    reads = polls = errors = late = 0
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    async def line(port: int) -> None:
        nonlocal reads, polls, errors, late
        client, meters = clients[port], by_port[port]
        next_round = time.monotonic()
        while next_round < stop:
            for device_id, blocks in meters:
                t0 = time.monotonic()
                try:
                    for b in blocks:
                        call = client.read_input_registers if b.function == 4 else client.read_holding_registers
                        rr = await call(b.address, count=b.count, device_id=device_id)
                        if rr.isError():
                            raise ModbusException(str(rr))
                        reads += 1
                    polls += 1
                    latencies.append(time.monotonic() - t0)
                except ModbusException:
                    errors += 1
            next_round += period
            delay = next_round - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                late += 1

    t0 = time.monotonic()
    await asyncio.gather(*(line(p) for p in by_port))
    wall = time.monotonic() - t0
    for c in clients.values():
        c.close()
    return {"reads": reads, "polls": polls, "wall": wall, "errors": errors, "late_rounds": late,
            "latencies": latencies}


def poller_process(fleet_path: str, ports: list[int], seconds: float, period: float,
                   out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """An edge-like poller in its own process: the client side must not be what limits the server."""
    fleet = load_fleet(fleet_path)
    asyncio.run(poll(fleet, 2.0, period, ports))  # warm up: connections, first ticks
    out.put(asyncio.run(poll(fleet, seconds, period, ports)))


def measure(proc: StageProcess, fleet_path: Path, ports: list[int], seconds: float, period: float,
            pollers: int) -> dict[str, float]:
    ps = psutil.Process(proc.proc.pid)
    queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    shares = [ports[i::pollers] for i in range(pollers)]
    procs = [multiprocessing.Process(target=poller_process, args=(str(fleet_path), share, seconds, period, queue))
             for share in shares if share]
    for p in procs:
        p.start()
    time.sleep(2.0 + 0.3)  # the pollers' warm-up
    cpu0, t0 = ps.cpu_times(), time.monotonic()
    parts = [queue.get(timeout=seconds + 60) for _ in procs]
    cpu1, wall = ps.cpu_times(), time.monotonic() - t0
    for p in procs:
        p.join(10)
    span = max(part["wall"] for part in parts)
    latencies = [x for part in parts for x in part["latencies"]]
    return {"reads_s": sum(p["reads"] for p in parts) / span, "polls_s": sum(p["polls"] for p in parts) / span,
            "errors": sum(p["errors"] for p in parts), "late_rounds": sum(p["late_rounds"] for p in parts),
            "p95_ms": float(np.percentile(latencies, 95) * 1000) if latencies else float("nan"),
            "cpu_pct": 100 * ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / wall,
            "rss_mb": ps.memory_info().rss / 2**20}


def bench_serving(tmp: Path, meters: int, seconds: float, period: float, pollers: int) -> None:
    fleet_path = bench_fleet(tmp / "fleet.yaml", meters)
    fleet = load_fleet(fleet_path)
    ports = sorted({m.device.port for m in fleet.meters})
    results = {}
    for name, module, args in (("bare pymodbus", None, ["--bare-server", str(fleet_path)]),
                               ("bems simulator", "simulators", ["--config", str(fleet_path)])):
        if module is None:
            proc = StageProcess("bench.simulators", args, tmp / "bare.log")
        else:
            proc = StageProcess(module, args, tmp / "sim.log")
        try:
            for p in ports:
                wait_port(p, 60)
            results[name] = measure(proc, fleet_path, ports, seconds, period, pollers)
        finally:
            proc.stop()
    blocks = sum(len(plan_reads(m.profile)) for m in fleet.meters)
    print(f"serving: {meters} meters on {len(ports)} ports x {PER_PORT} device ids, poll period {period} s, "
          f"{blocks} block reads per round, {pollers} poller processes, {seconds:g} s measured")
    print(f"{'':16}{'reads/s':>10}{'polls/s':>10}{'p95 ms':>9}{'errors':>8}{'late':>6}{'CPU %':>8}{'RSS MB':>8}")
    for name, r in results.items():
        print(f"{name:16}{r['reads_s']:10.0f}{r['polls_s']:10.0f}{r['p95_ms']:9.1f}{r['errors']:8.0f}"
              f"{r['late_rounds']:6.0f}{r['cpu_pct']:8.1f}{r['rss_mb']:8.1f}")
    sim, bare = results["bems simulator"], results["bare pymodbus"]
    print(f"ratio simulator/bare reads/s {sim['reads_s'] / bare['reads_s']:.2f}, CPU per read "
          f"{(sim['cpu_pct'] / sim['reads_s']) / (bare['cpu_pct'] / bare['reads_s']):.2f}x bare")
    print(f"goal sim_meters_polled_per_s_vs_required {sim['polls_s'] / (meters / period):.2f} target >= 0.95")


# ---- history -----------------------------------------------------------------------------------------------

def bench_history(tmp: Path, meters: int) -> None:
    fleet = load_fleet(bench_fleet(tmp / "hfleet.yaml", meters))
    model = fleet_model(fleet, seed=1)
    end = dt.datetime(2025, 2, 1, tzinfo=dt.UTC)
    start = end - dt.timedelta(days=7)
    rng = np.random.default_rng(0)
    kinds = {m.meter: m.role for m in model.meters}
    for i, fault_type in enumerate(np.resize(np.array(FAULT_TYPES), meters // 10)):
        candidates = [m for m in model.ids if fault_type not in LOAD_FAULTS or kinds[m] != "temperature"]
        if fault_type == "rollover":
            candidates = [m for m in candidates if m.endswith("water") or m.endswith(".gas")]
        meter = candidates[(i * 7919) % len(candidates)]
        s = start + dt.timedelta(hours=float(rng.uniform(0, 150)))
        model.faults.append(Fault.make(str(fault_type), meter, s, s + dt.timedelta(hours=float(rng.uniform(1, 18)))))
    steps = int((end - start) / dt.timedelta(minutes=15))
    peak = model.params()["peak"]

    def numpy_pass() -> np.ndarray:
        r = np.random.default_rng(1)
        return np.cumsum(peak * (1 + 0.03 * r.standard_normal((meters, steps))), axis=1)

    numpy_pass()
    generate(model, start, end)  # warm caches (profiles, holidays)
    ref = statistics.median(_timed(numpy_pass) for _ in range(5))
    gen = statistics.median(_timed(lambda: generate(model, start, end)) for _ in range(5))
    frame = generate(model, start, end)
    labels = tmp / "labels.csv"
    with open_store(f"sqlite:///{tmp}/history.db") as store:
        t0 = time.perf_counter()
        result = write_frame(store, frame)
        write_s = time.perf_counter() - t0
    n_labels = write_labels(labels, frame.faults)
    gaps = sum(1 for f in frame.faults if f.type in GAP_FAULTS)
    print(f"history: {meters} meters x {steps} steps (a week at 15 min), {len(frame.faults)} faults "
          f"({gaps} leaving gaps)")
    print(f"one numpy pass [meters x steps]     {ref * 1000:8.1f} ms")
    print(f"generate (model+faults+registers)   {gen * 1000:8.1f} ms  ({meters * steps / gen:,.0f} readings/s)")
    print(f"write to SQLite store               {write_s * 1000:8.1f} ms  ({result.written:,} readings, "
          f"{result.written / write_s:,.0f} readings/s)")
    print(f"labels                              {n_labels} rows in {labels.name}")
    print(f"goal history_week_1000_meters_vs_numpy_pass {gen / ref:.2f} target <= 10")


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--meters", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--period", type=float, default=1.0)
    p.add_argument("--pollers", type=int, default=2, help="edge-like poller processes")
    p.add_argument("--skip-serving", action="store_true")
    p.add_argument("--skip-history", action="store_true")
    p.add_argument("--bare-server", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.bare_server:
        asyncio.run(serve_bare(args.bare_server))
        return 0
    with tempfile.TemporaryDirectory() as d:
        if not args.skip_history:
            bench_history(Path(d), args.meters)
        if not args.skip_serving:
            bench_serving(Path(d), args.meters, args.seconds, args.period, args.pollers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
