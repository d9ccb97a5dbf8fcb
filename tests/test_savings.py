"""Savings against the weather-normalized baseline, on simulator history written to a real SQLite store.

The simulator's loads follow the outdoor temperature (cooling and heating) and the office calendar; the baseline is
fitted on autumn weeks and run on early winter, so a model without the weather is measurably wrong and one with
it is not. Waste injected in the reporting period must come out as excess of the size the simulator added.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from analytics.savings import SavingsReport, measure
from api.app import create_app
from bems.calendar import default_calendar
from bems.fleet import load_fleet
from bems.state import StateDB
from bems.store import open_store
from bems.tariff import default_tariffs
from simulators.history import backfill
from simulators.model import AfterHoursWaste, fleet_model
from tests.test_simulators import mixed_fleet

BASELINE = (dt.datetime(2025, 10, 11, 20, 30, tzinfo=dt.UTC), dt.datetime(2025, 12, 13, 20, 30, tzinfo=dt.UTC))
REPORT = (BASELINE[1], dt.datetime(2026, 1, 10, 20, 30, tzinfo=dt.UTC))
WASTE = (dt.datetime(2025, 12, 27, 20, 30, tzinfo=dt.UTC), dt.datetime(2026, 1, 3, 20, 30, tzinfo=dt.UTC))
METERED = ("b.main-elec", "b.hvac-elec", "b.lighting-elec", "b.gas", "b.water")


def history(tmp_path: Path, name: str, *, waste: bool, weather: bool = True) -> tuple[SavingsReport, float]:
    """Savings report of a simulated building, and the main meter's reporting-period consumption from the store."""
    fleet_path = mixed_fleet(tmp_path / f"{name}.yaml")
    fleet = load_fleet(fleet_path)
    model = fleet_model(fleet, seed=7)
    if waste:
        model.faults.append(AfterHoursWaste("b.main-elec", *WASTE, fraction=0.4))
    with open_store(f"sqlite:///{tmp_path}/{name}.db") as store:
        backfill(model, store, BASELINE[0], REPORT[1])
        if not weather:  # the same data, but the fleet no longer says which meter is the thermometer
            fleet = fleet.model_copy(update={"meters": tuple(m for m in fleet.meters if m.commodity != "weather")})
        report = measure(store, fleet, "b", list(fleet.meters), BASELINE, REPORT, default_calendar(),
                         default_tariffs())
        used = store.read_consumption(["b.main-elec"], "energy_kwh", *REPORT, REPORT[1] - REPORT[0])
    return report, float(used.values[0, 0])


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> tuple[SavingsReport, float]:
    return history(tmp_path_factory.mktemp("plain"), "plain", waste=False)


def row(report: SavingsReport, meter: str):  # type: ignore[no-untyped-def]
    return next(m for m in report.meters if m.meter == meter)


def test_every_metered_meter_is_fitted_with_guideline14_statistics(plain: tuple[SavingsReport, float]) -> None:
    report, _ = plain
    assert report.temperature_meter == "b.outdoor"
    assert sorted(m.meter for m in report.meters) == sorted(METERED)
    for m in report.meters:
        assert m.baseline_hours > 24 * 60 and m.cv_rmse is not None, m
        assert abs(m.nmbe) < 0.005, m  # least squares with a time-of-week intercept: no bias on its own data
        if m.commodity == "gas":  # heating starts before opening and stops before closing: the working-hours
            assert m.cv_rmse < 0.5, m  # split of TOWT only approximates it
        else:
            assert m.meets_guideline14 and m.cv_rmse < 0.1, m


def test_no_change_gives_no_savings_and_weather_matters(tmp_path: Path, plain: tuple[SavingsReport, float]) -> None:
    report, used = plain
    main = row(report, "b.main-elec")
    assert main.actual == pytest.approx(used, rel=0.01)  # summed over the same hours the store holds
    assert abs(main.saved) < 0.03 * main.expected, main
    blind, _ = history(tmp_path, "blind", waste=False, weather=False)
    assert "no outdoor temperature" in blind.method and blind.temperature_meter is None
    # heating follows the colder winter weather: only the weather-normalized gas baseline expects it
    err_weather, err_blind = abs(row(report, "b.gas").saved), abs(row(blind, "b.gas").saved)
    assert err_weather < 0.25 * err_blind, (err_weather, err_blind)


def test_waste_comes_out_as_excess_of_its_size(tmp_path: Path, plain: tuple[SavingsReport, float]) -> None:
    base_report, base_used = plain
    report, used = history(tmp_path, "waste", waste=True)
    added = used - base_used  # what the simulator's fault added on the meter, read back from the stores
    assert added > 500
    main, before = row(report, "b.main-elec"), row(base_report, "b.main-elec")
    assert -main.saved == pytest.approx(added, abs=0.03 * before.expected + 0.05 * added)
    assert main.saved_rial is not None and main.saved_rial < 0
    assert row(report, "b.gas").saved == pytest.approx(row(base_report, "b.gas").saved)


def test_savings_route(tmp_path: Path) -> None:
    fleet_path = mixed_fleet(tmp_path / "fleet.yaml")
    fleet = load_fleet(fleet_path)
    store, state = open_store(f"sqlite:///{tmp_path}/api.db"), StateDB(f"sqlite:///{tmp_path}/state.db")
    backfill(fleet_model(fleet, seed=3), store, BASELINE[0], REPORT[1])
    auth = {"Authorization": "Bearer " + state.create_token("admin", "admin")}
    with TestClient(create_app(fleet=fleet, store=store, state=state)) as client:
        got = client.get("/api/v1/buildings/b/savings", headers=auth,
                         params={"start": REPORT[0].isoformat(), "end": REPORT[1].isoformat(), "baseline_weeks": 8})
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["temperature_meter"] == "b.outdoor"
        assert {t["commodity"] for t in body["totals"]} == {"electricity", "gas", "water"}
        elec = next(t for t in body["totals"] if t["commodity"] == "electricity")
        assert abs(elec["saved_pct"]) < 3 and elec["saved_rial"] is not None
        too_long = client.get("/api/v1/buildings/b/savings", headers=auth,
                              params={"baseline_weeks": 100})
        assert too_long.status_code == 422 and "baseline_weeks" in too_long.text
