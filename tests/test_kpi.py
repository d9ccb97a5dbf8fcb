"""Acceptance 4: KPIs against figures computed by hand on a small fixture written to a real SQLite store.

The fixture day is Saturday 2026-11-21 (30 Aban 1405, autumn/winter tariff season: low 21-05, mid 05-17,
peak 17-21 local; office hours 08:00-14:00). Electricity per local hour: 50 kWh in 08..13, 30 kWh in 16, 40 kWh in
17, 10 kWh otherwise (530 kWh). Gas: 2 m3 every hour (48 m3). Hand figures are in the comments beside each check.
"""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from api.app import create_app
from bems.calendar import OfficeCalendar
from bems.errors import ConfigError
from bems.fleet import Fleet
from bems.kpi import building_kpis as compute_kpis
from bems.kpi import group_sum, hour_of_week_baseline, hour_of_week_mean, load_building, masked_share, row_sum
from bems.state import StateDB
from bems.store import Store, open_store
from bems.tariff import BANDS, TariffBook, load_tariffs
from bems.wire import Reading

TEHRAN = ZoneInfo("Asia/Tehran")
DAY = dt.date(2026, 11, 21)
B = "kpi-hq"
ELEC, GAS = f"{B}.main-elec", f"{B}.gas"
HOURLY = np.array([50.0 if 8 <= h < 14 else 30.0 if h == 16 else 40.0 if h == 17 else 10.0 for h in range(24)])
WINTER_BANDS = [{"band": "low", "from": "21:00", "to": "05:00"}, {"band": "mid", "from": "05:00", "to": "17:00"},
                {"band": "peak", "from": "17:00", "to": "21:00"}]
SUMMER_BANDS = [{"band": "low", "from": "23:00", "to": "07:00"}, {"band": "mid", "from": "07:00", "to": "19:00"},
                {"band": "peak", "from": "19:00", "to": "23:00"}]


def tariff_doc(prices: dict[str, float]) -> dict:
    return copy.deepcopy({"default": "test-tou",
            "tariffs": [{"id": "test-tou", "name": "test", "versions": [{
                "start": "2020-01-01", "prices_rial_per_kwh": prices,
                "seasons": [{"name": "warm", "months": [1, 2, 3, 4, 5, 6], "bands": SUMMER_BANDS},
                            {"name": "cold", "months": [7, 8, 9, 10, 11, 12], "bands": WINTER_BANDS}]}]}],
            "commodities": {"electricity": {"unit": "kWh", "kg_co2_per_unit": 0.5, "kwh_per_unit": 1.0},
                            "gas": {"unit": "m3", "kg_co2_per_unit": 2.0, "kwh_per_unit": 10.0},
                            "water": {"unit": "m3", "kg_co2_per_unit": 0.0, "kwh_per_unit": 0.0}}})


@pytest.fixture
def book(tmp_path: Path) -> TariffBook:
    path = tmp_path / "tariffs.yaml"
    path.write_text(yaml.safe_dump(tariff_doc({"low": 100, "mid": 200, "peak": 400})), encoding="utf-8")
    return load_tariffs(path)


CALENDAR = OfficeCalendar.model_validate({"timezone": "Asia/Tehran", "versions": [
    {"start": "2020-01-01", "workdays": ["sat", "sun", "mon", "tue", "wed"], "open": "08:00", "close": "14:00"}]})
FLEET = Fleet.model_validate({
    "buildings": [{"id": B, "name": "KPI HQ", "city": "Tehran", "floor_area_m2": 1000, "contracted_kw": 100}],
    "meters": [{"id": ELEC, "building": B, "commodity": "electricity", "device": {"profile": "sdm630"}},
               {"id": GAS, "building": B, "commodity": "gas", "device": {"device_id": 2, "profile": "adam6050"}}]})


def local_midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), TEHRAN).astimezone(dt.UTC)


def day_readings(meter: str, day: dt.date, quarters: np.ndarray, field: str, start_counter: float) -> list[Reading]:
    """A cumulative register read 1 s before each quarter-hour ends, plus the day's opening value."""
    t0 = local_midnight(day)
    counter = start_counter + np.concatenate([[0.0], np.cumsum(quarters)])
    times = [t0 - dt.timedelta(seconds=1)] + [t0 + (k + 1) * dt.timedelta(minutes=15) - dt.timedelta(seconds=1)
                                              for k in range(len(quarters))]
    return [Reading(meter=meter, building=B, edge="fixture", ts=t, seq=i, values={field: float(c)})
            for i, (t, c) in enumerate(zip(times, counter, strict=True))]


def quarters_of(hourly: np.ndarray) -> np.ndarray:
    q = np.repeat(hourly / 4.0, 4)
    q[10 * 4:10 * 4 + 4] = [5.0, 5.0, 30.0, 10.0]  # 10:00-11:00 local: 50 kWh with a 30 kWh quarter at 10:30
    return q


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = open_store(f"sqlite:///{tmp_path}/readings.db")
    readings = day_readings(ELEC, DAY, quarters_of(HOURLY), "energy_kwh", 1000.0)
    readings += day_readings(GAS, DAY, np.full(96, 0.5), "volume_m3", 50.0)
    for weeks, scale in ((1, 0.8), (2, 1.0), (3, 1.2), (4, 1.4)):  # baseline: median of x0.8..x1.4 = x1.1
        readings += day_readings(ELEC, DAY - dt.timedelta(weeks=weeks), np.repeat(HOURLY * scale / 4, 4),
                                 "energy_kwh", 500.0 - 100 * weeks)
    readings += day_readings(ELEC, DAY - dt.timedelta(days=364), np.repeat(HOURLY * 2 / 4, 4), "energy_kwh", 10.0)
    s.write(readings)
    yield s
    s.close()


def fixture_kpis(store: Store, book: TariffBook):  # type: ignore[no-untyped-def]
    start, end = local_midnight(DAY), local_midnight(DAY + dt.timedelta(days=1))
    data = load_building(store, FLEET.buildings[0], FLEET.meters, start, end, now=end + dt.timedelta(days=1))
    return compute_kpis(data, CALENDAR, book, start, end)


def test_kpis_match_the_hand_computed_figures(store: Store, book: TariffBook) -> None:
    k = fixture_kpis(store, book)
    elec = next(c for c in k.commodities if c.commodity == "electricity")
    gas = next(c for c in k.commodities if c.commodity == "gas")
    assert elec.total == pytest.approx(530.0)
    assert elec.after_hours_share == pytest.approx(230.0 / 530.0)  # all but the six 50 kWh office hours
    assert elec.holiday_share == 0.0
    assert elec.baseline_total == pytest.approx(1.1 * 530.0)
    assert elec.vs_baseline_pct == pytest.approx((530.0 - 583.0) / 583.0 * 100)
    assert elec.last_year_total == pytest.approx(1060.0)
    assert elec.vs_last_year_pct == pytest.approx(-50.0)
    assert elec.completeness == 1.0
    assert gas.total == pytest.approx(48.0) and gas.vs_baseline_pct is None
    # EUI: (530 kWh + 48 m3 x 10 kWh/m3) / 1000 m2
    assert k.eui_kwh_m2 == pytest.approx(1.01)
    assert k.eui_kwh_m2_year == pytest.approx(1.01 * 365)
    # TOU: low 21-05 = 8 h x 10 = 80 kWh; mid 05-17 = 30 + 300 + 20 + 30 (16:00) = 380 kWh; peak 17-21 = 40 + 30
    band = {c.band: c for c in k.cost_by_band}
    assert [c.band for c in k.cost_by_band] == list(BANDS)
    assert (band["low"].kwh, band["mid"].kwh, band["peak"].kwh) == pytest.approx((80.0, 380.0, 70.0))
    assert (band["low"].rial, band["mid"].rial, band["peak"].rial) == pytest.approx((8000.0, 76000.0, 28000.0))
    assert k.cost_rial == pytest.approx(112_000.0)
    # peak: the 30 kWh quarter at 10:30 local (07:00 UTC) = 120 kW against 100 kW contracted
    assert k.peak.kw == pytest.approx(120.0)
    assert k.peak.at == dt.datetime(2026, 11, 21, 7, 0, tzinfo=dt.UTC)
    assert k.peak.ratio == pytest.approx(1.2)
    assert k.co2_kg == pytest.approx(530 * 0.5 + 48 * 2.0)


def test_tou_cost_across_the_band_edge(book: TariffBook) -> None:
    """16:00-17:00 local is mid, 17:00-18:00 peak (autumn); in summer the edge moves to 19:00."""
    tariff = book.for_building(B)
    hour = np.timedelta64(3600, "s")
    autumn = np.array([np.datetime64("2026-11-21T12:30"), np.datetime64("2026-11-21T13:30")], dtype="datetime64[s]")
    labels = tariff.classify(autumn, "Asia/Tehran", hour)
    assert [BANDS[i] for i in labels.band] == ["mid", "peak"]
    assert labels.price.tolist() == [200.0, 400.0]
    summer = autumn - np.timedelta64(150, "D")  # 2026-06-24: the 18:00 local hour is still mid
    assert [BANDS[i] for i in tariff.classify(summer + 2 * hour, "Asia/Tehran", hour).band] == ["mid", "peak"]


def test_prices_follow_the_version_in_force(tmp_path: Path) -> None:
    doc = tariff_doc({"low": 1, "mid": 2, "peak": 4})
    later = dict(doc["tariffs"][0]["versions"][0], start="2026-11-21", prices_rial_per_kwh={"low": 10, "mid": 20,
                                                                                            "peak": 40})
    doc["tariffs"][0]["versions"].append(later)
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    tariff = load_tariffs(path).for_building("any")
    noon = np.array(["2026-11-20T08:30", "2026-11-21T08:30"], dtype="datetime64[s]")  # 12:00 local, both mid
    assert tariff.classify(noon, "Asia/Tehran").price.tolist() == [2.0, 20.0]


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["tariffs"][0]["versions"][0]["seasons"][1]["bands"].pop(), "no band covers 17:00"),
    (lambda d: d["tariffs"][0]["versions"][0]["seasons"][1]["bands"][0].update({"to": "06:00"}), "overlaps"),
    (lambda d: d["tariffs"][0]["versions"][0]["seasons"][0].update({"months": [1, 2, 3]}), "cover the months"),
    (lambda d: d.update({"default": "nope"}), "unknown tariff 'nope'"),
    (lambda d: d["tariffs"][0]["versions"][0]["prices_rial_per_kwh"].pop("peak"), "lacks peak"),
])
def test_bad_tariff_files_name_the_problem(tmp_path: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    doc = tariff_doc({"low": 1, "mid": 2, "peak": 4})
    change(doc)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_tariffs(path)


def test_the_shipped_tariff_file_loads() -> None:
    from bems.tariff import default_tariffs

    book = default_tariffs()
    assert book.for_building("tehran-moi-hq").id == book.default
    assert set(book.commodities) == {"electricity", "gas", "water"}


def test_numpy_pieces_by_hand() -> None:
    week = 168
    history = np.full((1, 4 * week + 2), np.nan)
    history[0, [0, week, 2 * week, 3 * week]] = [1.0, 9.0, 3.0, 5.0]  # the same hour four weeks running
    history[0, 4 * week:] = [7.0, 7.0]
    assert hour_of_week_baseline(history).tolist()[0][0] == pytest.approx(4.0)  # median(1, 9, 3, 5)
    assert np.isnan(hour_of_week_baseline(history)[0, 1])
    m = np.array([[1.0, np.nan, 2.0], [3.0, np.nan, np.nan], [5.0, 6.0, np.nan]])
    g = group_sum(m, np.array([0, 0, 1]), 2)
    assert g[0, 0] == 4.0 and np.isnan(g[0, 1]) and g[0, 2] == 2.0 and g[1].tolist()[:2] == [5.0, 6.0]
    assert row_sum(m).tolist() == [9.0, 6.0, 2.0]
    assert np.isnan(row_sum(np.array([[np.nan], [np.nan]]))[0])
    assert masked_share(np.array([1.0, 3.0, np.nan]), np.array([True, False, True])) == pytest.approx(0.25)
    assert masked_share(np.array([np.nan]), np.array([True])) is None
    hm = hour_of_week_mean(np.array([2.0, 4.0, 6.0]), np.array([5, 5, 4]), np.array([9, 9, 23]))
    assert hm[0, 9] == 3.0 and hm[6, 23] == 6.0 and np.isnan(hm[1, 0])  # Saturday row first, Friday last


def test_kpis_route_serves_the_same_figures_and_refuses_long_periods(store: Store, book: TariffBook,
                                                                     tmp_path: Path) -> None:
    state = StateDB(f"sqlite:///{tmp_path}/state.db")
    token = state.create_token("ops", "admin")
    app = create_app(fleet=FLEET, store=store, state=state, tariffs=book, calendar=CALENDAR)
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(app) as client:
        start, end = local_midnight(DAY), local_midnight(DAY + dt.timedelta(days=1))
        r = client.get(f"/api/v1/buildings/{B}/kpis", headers=headers,
                       params={"start": start.isoformat(), "end": end.isoformat()})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["cost_rial"] == pytest.approx(112_000.0)
        assert body["eui_kwh_m2"] == pytest.approx(1.01)
        assert body["commodities"][0]["after_hours_share"] == pytest.approx(230.0 / 530.0)
        r = client.get(f"/api/v1/buildings/{B}/kpis", headers=headers,
                       params={"start": "2016-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"})
        assert r.status_code == 422
        detail = r.json()["detail"][0]
        assert detail["loc"] == ["query", "end"] and "366 days" in detail["msg"]
        r = client.get("/api/v1/portfolio", headers=headers,
                       params={"start": start.isoformat(), "end": end.isoformat()})
        row = r.json()["items"][0]
        assert row["eui_kwh_m2"] == pytest.approx(1.01)
        assert row["after_hours_share"] == pytest.approx(230.0 / 530.0)
    state.close()
