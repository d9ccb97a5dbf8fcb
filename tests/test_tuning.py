"""Detector tuning from a YAML file: validation names the bad entry, the most specific entry wins, and a tuned
threshold changes what a real detection pass over a store reports for that meter only."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from analytics.detectors import DetectorParams
from analytics.service import detect_pass
from analytics.tuning import load_tuning
from bems.errors import ConfigError
from bems.fleet import load_fleet
from bems.state import StateDB
from bems.store import open_store
from simulators.history import backfill
from simulators.model import AfterHoursWaste, fleet_model
from tests.test_simulators import mixed_fleet


def tuning_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tuning.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(("text", "expected"), [
    ("meters: {b.nope: {spike_z: 3}}", "meters: b.nope not in the fleet file"),
    ("buildings: {x: {spike_z: 3}}", "buildings: x not in the fleet file"),
    ("commodities: {steam: {spike_z: 3}}", "commodities: steam not in the fleet file"),
    ("meters: {b.gas: {max_weeks: 3}}", "max_weeks: unknown key"),
    ("defaults: {spike_z: -1}", "spike_z: Input should be greater than or equal to 0"),
    ("defaults: {colour: 3}", "colour: unknown key"),
])
def test_bad_tuning_is_refused_naming_the_entry(tmp_path: Path, text: str, expected: str) -> None:
    fleet = load_fleet(mixed_fleet(tmp_path / "fleet.yaml"))
    with pytest.raises(ConfigError) as err:
        load_tuning(tuning_file(tmp_path, text), fleet)
    assert expected in str(err.value) and "tuning.yaml" in str(err.value)


def test_most_specific_entry_wins(tmp_path: Path) -> None:
    fleet = load_fleet(mixed_fleet(tmp_path / "fleet.yaml"))
    tuning = load_tuning(tuning_file(tmp_path, (
        "defaults: {spike_z: 9, max_weeks: 3}\n"
        "commodities: {electricity: {spike_z: 10, target_rel: 0.3}}\n"
        "buildings: {b: {waste_rel: 0.2}}\n"
        "meters: {b.hvac-elec: {spike_z: 11, waste_rel: 0.5}}\n")), fleet)
    meters = [fleet.meter_by_id[i] for i in ("b.main-elec", "b.hvac-elec", "b.gas", "b.water")]
    p = tuning.params(meters)
    assert p.max_weeks == 3
    assert np.asarray(p.spike_z).tolist() == [10, 11, 12, 12]  # gas and water keep their built-in 12
    assert np.asarray(p.waste_rel).tolist() == pytest.approx([0.2, 0.5, 0.2, 0.2])
    assert np.isnan(np.asarray(p.target_rel)[2:]).all() and np.asarray(p.target_rel)[:2].tolist() == \
        pytest.approx([0.3, 0.3])
    step = DetectorParams().step_z  # untouched by the file: built-in default, gas's own built-in value
    assert np.asarray(p.step_z).tolist() == [step, step, 6.0, step]


def test_a_tuned_meter_stops_alerting_and_the_others_do_not(tmp_path: Path) -> None:
    fleet = load_fleet(mixed_fleet(tmp_path / "fleet.yaml"))
    end = dt.datetime(2025, 2, 12, 20, 30, tzinfo=dt.UTC)
    model = fleet_model(fleet, seed=5)
    waste = (end - dt.timedelta(days=3), end - dt.timedelta(days=1))
    model.faults += [AfterHoursWaste("b.hvac-elec", *waste), AfterHoursWaste("b.lighting-elec", *waste,
                                                                               load="lighting")]

    def after_hours(tuning_text: str | None) -> set[str]:
        state = StateDB(f"sqlite:///{tmp_path}/{len(list(tmp_path.iterdir()))}.db")
        tuning = load_tuning(tuning_file(tmp_path, tuning_text), fleet) if tuning_text else None
        detect_pass(store, state, fleet, end=end, lookback=dt.timedelta(days=28), tuning=tuning)
        return {a.meter for a in state.alerts(limit=500) if a.type == "after_hours"}

    with open_store(f"sqlite:///{tmp_path}/r.db") as store:
        backfill(model, store, end - dt.timedelta(days=28), end)
        plain = after_hours(None)
        assert {"b.hvac-elec", "b.lighting-elec"} <= plain
        tuned = after_hours("meters: {b.hvac-elec: {waste_rel: 50}}\n")
    assert "b.hvac-elec" not in tuned and "b.lighting-elec" in tuned
