"""A detection pass over a store: peak demand judged on 15-minute intervals, waste priced at its TOU band."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import yaml

from analytics.service import detect_pass
from bems.fleet import load_fleet
from bems.state import StateDB
from bems.store import open_store
from simulators.history import backfill
from simulators.model import fleet_model
from tests.stages import small_fleet


def test_peak_demand_against_contracted_kw_on_15_minute_intervals(tmp_path: Path) -> None:
    path = small_fleet(tmp_path / "fleet.yaml")
    data = yaml.safe_load(path.read_text())
    end = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    fleet_plain = load_fleet(path)
    with open_store(f"sqlite:///{tmp_path}/r.db") as store:
        frame = backfill(fleet_model(fleet_plain, seed=2), store, end - dt.timedelta(days=14), end)
        peak_kw = float(frame.columns["power_w"][0].max()) / 1000
        # a contract just under the highest 15-minute demand of the main meter: only the top intervals exceed it
        data["buildings"][0]["contracted_kw"] = round(peak_kw * 0.97, 1)
        path.write_text(yaml.safe_dump(data))
        fleet = load_fleet(path)
        state = StateDB(f"sqlite:///{tmp_path}/s.db")
        detect_pass(store, state, fleet, end=end, lookback=dt.timedelta(days=14))
    peaks = [a for a in state.alerts(limit=500) if a.type == "peak"]
    assert peaks, "no peak alert although demand exceeded the contract"
    assert all(a.meter == "test-hq.main-elec" for a in peaks)
    assert all((a.end - a.start) % dt.timedelta(minutes=15) == dt.timedelta(0) for a in peaks)
    assert all(f"contracted {data['buildings'][0]['contracted_kw']:.0f} kW" in a.message for a in peaks)
    # the loose contract gives none
    data["buildings"][0]["contracted_kw"] = round(peak_kw * 1.5, 1)
    path.write_text(yaml.safe_dump(data))
    state2 = StateDB(f"sqlite:///{tmp_path}/s2.db")
    with open_store(f"sqlite:///{tmp_path}/r.db") as store:
        detect_pass(store, state2, load_fleet(path), end=end, lookback=dt.timedelta(days=14))
    assert [a for a in state2.alerts(limit=500) if a.type == "peak"] == []
