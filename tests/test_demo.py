"""Acceptance 5: `bems demo` installs into a fresh venv, answers on its URL and stops cleanly on SIGINT."""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from bems.services import free_port
from tests.conftest import need

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                          str(ROOT)], capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    return venv


@pytest.mark.slow
def test_demo_runs_from_fresh_venv_and_stops_cleanly(fresh_venv: Path, tmp_path: Path) -> None:
    need("mosquitto", "mosquitto")
    data = tmp_path / "demo"
    port = free_port()
    proc = subprocess.Popen([str(fresh_venv / "bin/bems"), "demo", "--data-dir", str(data), "--port", str(port),
                             "--mqtt-port", str(free_port()), "--modbus-port", str(free_port()),
                             "--history-days", "7", "--analytics-interval", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    out: list[str] = []
    token = None
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and token is None:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line and proc.poll() is not None:
                break
            out.append(line)
            if m := re.search(r"demo token\s+(\S+)", line):
                token = m.group(1)
        assert token, "".join(out)
        base = f"http://127.0.0.1:{port}"
        assert "<html" in httpx.get(base + "/").text
        headers = {"Authorization": f"Bearer {token}"}
        buildings = httpx.get(base + "/api/v1/buildings", headers=headers).json()
        assert len(buildings["items"] if isinstance(buildings, dict) else buildings) == 3
        alerts = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not alerts:
            body = httpx.get(base + "/api/v1/alerts", headers=headers).json()
            alerts = body["items"] if isinstance(body, dict) else body
            time.sleep(1)
        assert alerts, "the backfilled after-hours waste gave no alert"
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 6  # broker, simulators, collector, 3 edges, analytics, api
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, _ = proc.communicate()
    assert proc.returncode == 0, "".join(out) + rest
    time.sleep(0.5)
    leftovers = [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert leftovers == [], leftovers
    for db in ("readings.db", "state.db"):
        with sqlite3.connect(data / db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with sqlite3.connect(data / "readings.db") as conn:
        assert conn.execute("SELECT count(*) FROM reading WHERE edge != 'history'").fetchone()[0] > 0
