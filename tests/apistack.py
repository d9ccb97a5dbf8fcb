"""A demo-like API stack for browser, schema and role tests: the demo fleet, weeks of simulated history in a
real SQLite store, alerts in the state database, a thread writing new readings every second (as the collector
would), and the API served by uvicorn on a free port."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import uvicorn

import bems
from api.app import create_app
from api.settings import ApiSettings
from bems.fleet import Fleet, load_fleet
from bems.services import free_port
from bems.state import StateDB
from bems.store import Store, open_store
from bems.wire import Reading
from simulators.faults import Fault
from simulators.history import backfill, floor_time, last_counters
from simulators.model import FleetModel, fleet_model

DEMO_FLEET = Path(bems.__file__).parent / "demo_fleet.yaml"
STEP = dt.timedelta(minutes=15)


class LiveWriter(threading.Thread):
    """Writes one reading per meter every ``period_s`` with the model's current rate, counters carried on."""

    def __init__(self, model: FleetModel, store: Store, counters: np.ndarray, period_s: float = 1.0) -> None:
        super().__init__(daemon=True, name="live-writer")
        self.model, self.store, self.counters, self.period_s = model, store, counters.copy(), period_s
        self.stop_event = threading.Event()
        self.seq = 0
        self.lock = threading.Lock()

    def write_now(self, override_kw: dict[str, float] | None = None) -> dt.datetime:
        """One reading per meter at the current second; returns its timestamp."""
        with self.lock:
            ts = dt.datetime.now(dt.UTC).replace(microsecond=0)
            rates = self.model.rates(np.array([np.datetime64(ts.replace(tzinfo=None), "s")]))[:, 0]
            readings = []
            for row, mm in enumerate(self.model.meters):
                rate = (override_kw or {}).get(mm.meter, float(rates[row]))
                self.counters[row] += rate * self.period_s / 3600.0
                self.seq += 1
                values = ({"power_w": rate * 1000.0, "energy_kwh": float(self.counters[row])}
                          if mm.commodity == "electricity" else {"volume_m3": float(self.counters[row])})
                readings.append(Reading(meter=mm.meter, building=mm.building, edge="live-test", ts=ts,
                                        seq=self.seq, values=values))
            self.store.write(readings)
            return ts

    def run(self) -> None:
        while not self.stop_event.wait(self.period_s):
            self.write_now()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)


@dataclass
class Stack:
    url: str
    fleet: Fleet
    store: Store
    state: StateDB
    tokens: dict[str, str]
    alerts: list[int]
    writer: LiveWriter | None
    server: uvicorn.Server
    thread: threading.Thread
    extra: dict[str, object] = field(default_factory=dict)

    def client(self, who: str | None = "admin") -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.stop()
        self.server.config.app.state.bems_stopping = True
        self.server.should_exit = True
        self.thread.join(15)
        self.store.close()
        self.state.close()


def make_alerts(state: StateDB, now: dt.datetime) -> list[int]:
    """Three after-hours alerts in two buildings, as analytics would record them."""
    ids = []
    for days_ago, meter, excess in ((2, "tehran-moi-hq.hvac-elec", 120.0), (5, "tehran-edu-office.main-elec", 80.0),
                                    (3, "tehran-moi-hq.water", 4.0)):
        start = now.replace(hour=15, minute=30, second=0, microsecond=0) - dt.timedelta(days=days_ago)
        commodity = "water" if meter.endswith("water") else "electricity"
        alert, _ = state.upsert_alert(building=meter.split(".")[0], meter=meter, commodity=commodity,
                                      type="after_hours", start=start, end=start + dt.timedelta(hours=5),
                                      excess=excess, unit="m3" if commodity == "water" else "kWh",
                                      severity="warning", message=f"after-hours use on {meter}")
        ids.append(alert.id)
    return ids


def start_stack(tmp: Path, history_days: float = 35, live: bool = True, cache_ttl_s: float = 30.0,
                faults: Sequence[Fault] = (), **api: object) -> Stack:
    """``faults`` shape the simulated history (a ``comm_loss`` leaves a gap); ``api`` are more ApiSettings
    (``cors_origins``, ``auth_fail_limit``, ...)."""
    fleet = load_fleet(DEMO_FLEET)
    store = open_store(f"sqlite:///{tmp}/readings.db")
    state = StateDB(f"sqlite:///{tmp}/state.db")
    model = fleet_model(fleet, seed=3)
    model.faults.extend(faults)
    now = dt.datetime.now(dt.UTC)
    history = backfill(model, store, floor_time(now - dt.timedelta(days=history_days), STEP), floor_time(now, STEP))
    tokens = {
        "admin": state.create_token("ops", "admin"),
        "fm": state.create_token("hq-manager", "facility_manager", ["tehran-moi-hq"]),
        "utility": state.create_token("water-utility", "utility", ["water"]),
        "utility_mashhad": state.create_token("mashhad-power", "utility", ["electricity"], regions=["Mashhad"]),
        "nobody": state.create_token("empty-scope", "facility_manager", []),
    }
    alerts = make_alerts(state, now)
    writer = LiveWriter(model, store, last_counters(history)) if live else None
    settings = ApiSettings.model_construct(fleet=DEMO_FLEET, cache_ttl_s=cache_ttl_s, stream_poll_s=0.5,
                                           max_streams=50, **api)
    app = create_app(settings, fleet=fleet, store=store, state=state)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=2, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True, name="uvicorn")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API did not start")
        time.sleep(0.05)
    if writer is not None:
        writer.start()
    return Stack(url=f"http://127.0.0.1:{port}", fleet=fleet, store=store, state=state, tokens=tokens,
                 alerts=alerts, writer=writer, server=server, thread=thread)
