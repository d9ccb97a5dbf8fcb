"""Helpers to run the stages for tests: real processes (``python -m <stage>``) and an in-thread simulator."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bems.fleet import load_fleet
from bems.services import free_port
from bems.signing import Signer, generate_key, load_signing_key
from simulators.model import FleetModel, fleet_model
from simulators.server import MeterServer

# the test brokers (tests/conftest.py) allow anonymous clients; production collectors must log in
TEST_ENV = {"BEMS_COLLECTOR_ALLOW_ANONYMOUS_BROKER": "true"}


class StageProcess:
    """``python -m <module> args`` with its output in a log file; stop() sends SIGTERM like a supervisor."""

    def __init__(self, module: str, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._fh = log.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=self._fh,
                                     stderr=subprocess.STDOUT, env={**os.environ, **TEST_ENV, **(env or {})})

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"{self.proc.args} ignored SIGTERM for {timeout} s:\n{self.output()}") from None
        self._fh.close()
        return self.proc.returncode

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._fh.close()


class ThreadedSimulator:
    """A MeterServer on its own event loop in a thread, so a test can pin register values while it runs."""

    def __init__(self, fleet_path: Path, seed: int = 0, model: FleetModel | None = None) -> None:
        fleet = load_fleet(fleet_path)
        self.model = model or fleet_model(fleet, seed)
        self.server = MeterServer(self.model, {m.id: (m.device.host, m.device.port, m.device.device_id)
                                               for m in fleet.meters}, tick_s=0.2)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ThreadedSimulator:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def write_fleet(path: Path, buildings: list[dict[str, Any]], meters: list[dict[str, Any]],
                edges: list[dict[str, Any]]) -> Path:
    """The fleet file; every edge that lists no public key gets a signing key (see ``signing_key``) registered."""
    edges = [e if "public_keys" in e else {**e, "public_keys": [edge_signer(path, e["id"]).public_key]}
             for e in edges]
    path.write_text(yaml.safe_dump({"buildings": buildings, "edges": edges, "meters": meters}), encoding="utf-8")
    return path


def signing_key(fleet: Path, edge_id: str) -> Path:
    """Where ``write_fleet`` keeps an edge's key: the edge's default without --state-dir or --signing-key."""
    return fleet.parent / "edge-state" / edge_id / "signing.key"


def edge_signer(fleet: Path, edge_id: str = "edge-test") -> Signer:
    """The edge's signer (made on first use), for tests that publish readings as that edge."""
    path = signing_key(fleet, edge_id)
    return load_signing_key(path) if path.exists() else generate_key(path)


def small_fleet(path: Path, poll_period_s: float = 0.5, modbus_port: int | None = None) -> Path:
    """One building, an SDM630 and a pulse-counter water meter behind one Modbus TCP port."""
    port = modbus_port or free_port()
    return write_fleet(
        path,
        buildings=[{"id": "test-hq", "name": "Test HQ", "city": "Tehran", "floor_area_m2": 5000}],
        edges=[{"id": "edge-test", "building": "test-hq", "poll_period_s": poll_period_s}],
        meters=[{"id": "test-hq.main-elec", "building": "test-hq", "commodity": "electricity", "rated_kw": 200,
                 "device": {"port": port, "device_id": 1, "profile": "sdm630"}},
                {"id": "test-hq.water", "building": "test-hq", "commodity": "water",
                 "device": {"port": port, "device_id": 2, "profile": "adam6050"}}])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
