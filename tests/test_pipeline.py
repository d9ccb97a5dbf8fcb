"""Acceptance 1 and 2 of the walking skeleton: a reading travels simulator -> edge -> broker -> collector ->
store -> API, on both store backends; and injected after-hours waste becomes an alert the API returns."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from bems.fleet import load_fleet
from bems.services import free_port, wait_port
from bems.state import StateDB
from bems.store import open_store
from simulators.history import backfill
from simulators.model import AfterHoursWaste, fleet_model
from tests.stages import StageProcess, ThreadedSimulator, small_fleet, wait_for

TEHRAN = ZoneInfo("Asia/Tehran")


def start_api(tmp_path: Path, fleet: Path, store_url: str, db_url: str) -> tuple[StageProcess, str]:
    port = free_port()
    api = StageProcess("api", ["--config", str(fleet), "--store", store_url, "--db", db_url, "--port", str(port)],
                       tmp_path / "api.log")
    wait_port(port, 20)
    return api, f"http://127.0.0.1:{port}/api/v1"


@pytest.mark.parametrize("backend", ["sqlite", "influx"])
def test_value_set_in_simulator_reaches_api(backend: str, mosquitto, tmp_path: Path,  # type: ignore[no-untyped-def]
                                            request: pytest.FixtureRequest) -> None:
    store_url = (f"sqlite:///{tmp_path}/readings.db" if backend == "sqlite"
                 else request.getfixturevalue("influxd").url("e2e"))
    db_url = f"sqlite:///{tmp_path}/state.db"
    fleet = small_fleet(tmp_path / "fleet.yaml", poll_period_s=0.5)
    state = StateDB(db_url)
    token = state.create_token("e2e", "admin")
    headers = {"Authorization": f"Bearer {token}"}
    procs: list[StageProcess] = []
    with ThreadedSimulator(fleet) as sim:
        try:
            procs.append(StageProcess("collector", ["--config", str(fleet), "--broker", mosquitto.url,
                                                    "--store", store_url, "--batch-interval-s", "0.1"],
                                      tmp_path / "collector.log"))
            procs.append(StageProcess("edge", ["--config", str(fleet), "--edge-id", "edge-test",
                                               "--broker", mosquitto.url], tmp_path / "edge.log"))
            api, base = start_api(tmp_path, fleet, store_url, db_url)
            procs.append(api)
            latest = f"{base}/buildings/test-hq/latest"
            wait_for(lambda: httpx.get(latest, headers=headers).json().get("meters"), 30, "first readings in the API")

            sim.server.set_override("test-hq.main-elec", "power_w", 12345.5)
            sim.server.set_override("test-hq.water", "volume_m3", 4321.09)
            t0 = time.monotonic()

            def arrived() -> dict | None:
                meters = {m["meter"]: m for m in httpx.get(latest, headers=headers).json()["meters"]}
                elec, water = meters.get("test-hq.main-elec"), meters.get("test-hq.water")
                ok = (elec and elec["values"].get("power_w") == 12345.5
                      and water and water["values"].get("volume_m3") == pytest.approx(4321.09))
                return meters if ok else None

            meters = wait_for(arrived, 5, "the pinned values to reach the API")
            elapsed = time.monotonic() - t0
            with open_store(store_url) as store:
                wait_for(lambda: len(store.sequences("test-hq.main-elec")) >= 3, 10, "three stored readings")
        finally:
            codes = [p.stop() for p in reversed(procs)]
    assert elapsed < 5
    assert codes == [0] * len(procs)
    assert set(meters["test-hq.main-elec"]["values"]) >= {"power_w", "energy_kwh", "voltage_l1_v"}
    with open_store(store_url) as store:
        seqs = store.sequences("test-hq.main-elec")
    assert len(seqs) >= 3 and seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # every stored reading is the edge's own: its signature checks at rest
    env = {**os.environ, "BEMS_STORE": store_url, "BEMS_DB": db_url, "BEMS_FLEET": str(fleet)}
    day = dt.datetime.now(dt.UTC).date()
    got = subprocess.run([sys.executable, "-m", "bems.cli", "verify", "--building", "test-hq", "--full",
                          "--from", str(day - dt.timedelta(days=1)), "--to", str(day + dt.timedelta(days=1))],
                         env=env, capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stdout + got.stderr
    print(got.stdout)


def test_after_hours_waste_becomes_an_alert(tmp_path: Path) -> None:
    fleet_path = small_fleet(tmp_path / "fleet.yaml")
    fleet = load_fleet(fleet_path)
    store_url, db_url = f"sqlite:///{tmp_path}/readings.db", f"sqlite:///{tmp_path}/state.db"
    end = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    # a Monday evening two weeks in: 20:00-23:00 Tehran (the building closes at 14:00)
    day = (end - dt.timedelta(days=7)).astimezone(TEHRAN).date()
    day -= dt.timedelta(days=(day.weekday() - 0) % 7)
    w_start = dt.datetime(day.year, day.month, day.day, 20, tzinfo=TEHRAN).astimezone(dt.UTC)
    w_end = w_start + dt.timedelta(hours=3)
    model = fleet_model(fleet, seed=3)
    model.faults.append(AfterHoursWaste("test-hq.main-elec", w_start, w_end, fraction=0.6))
    with open_store(store_url) as store:
        backfill(model, store, end - dt.timedelta(days=21), end)
    analytics = StageProcess("analytics", ["--config", str(fleet_path), "--store", store_url, "--db", db_url,
                                           "--once"], tmp_path / "analytics.log")
    assert analytics.proc.wait(60) == 0, analytics.output()
    state = StateDB(db_url)
    token = state.create_token("fm", "facility_manager", ["test-hq"])
    api, base = start_api(tmp_path, fleet_path, store_url, db_url)
    try:
        alerts = httpx.get(f"{base}/alerts", headers={"Authorization": f"Bearer {token}"}).json()
    finally:
        api.stop()
    items = alerts["items"] if isinstance(alerts, dict) else alerts
    assert len(items) == 1, items
    a = items[0]
    assert (a["building"], a["meter"], a["type"]) == ("test-hq", "test-hq.main-elec", "after_hours")
    assert dt.datetime.fromisoformat(a["start"].replace("Z", "+00:00")) == w_start
    assert dt.datetime.fromisoformat(a["end"].replace("Z", "+00:00")) == w_end
    assert a["excess"] > 0 and a["unit"] == "kWh"
