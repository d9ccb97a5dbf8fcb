"""Unit tests of the shared contracts: payload schema file in sync, fleet errors, profiles, calendar masks."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest

from bems.calendar import default_calendar
from bems.errors import ConfigError, PayloadError
from bems.fleet import load_fleet
from bems.registers import decode, encode, load_profile, plan_reads
from bems.wire import Reading, decode_reading, reading_json_schema

ROOT = Path(__file__).resolve().parents[1]


def test_checked_in_schema_matches_model() -> None:
    assert json.loads((ROOT / "docs/reading.schema.json").read_text()) == reading_json_schema()


def test_demo_fleet_loads() -> None:
    fleet = load_fleet(ROOT / "bems/demo_fleet.yaml")
    assert len(fleet.buildings) == 3 and len(fleet.meters) == 12
    assert {m.commodity for m in fleet.meters} == {"electricity", "water", "gas", "weather"}
    assert {b.id: fleet.weather_meter(b.id).id for b in fleet.buildings} == {
        "tehran-moi-hq": "tehran-moi-hq.outdoor", "tehran-edu-office": "tehran-moi-hq.outdoor",
        "mashhad-gov-office": "mashhad-gov-office.outdoor"}


def test_weather_meter_needs_a_temperature_register(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("buildings: [{id: a, name: A, city: T, floor_area_m2: 1, weather_meter: a.main}]\n"
                    "meters: [{id: a.main, building: a, commodity: electricity, device: {profile: sdm630}},\n"
                    "         {id: a.t, building: a, commodity: weather, device: {profile: sdm630, device_id: 2}}]\n")
    with pytest.raises(ConfigError) as err:
        load_fleet(path)
    assert "meter 'a.t' is a weather sensor but profile 'sdm630' maps no temperature_c register" in str(err.value)
    path.write_text("buildings: [{id: a, name: A, city: T, floor_area_m2: 1, weather_meter: a.main}]\n"
                    "meters: [{id: a.main, building: a, commodity: electricity, device: {profile: sdm630}}]\n")
    with pytest.raises(ConfigError, match=r"weather_meter 'a\.main' is not a meter with commodity 'weather'"):
        load_fleet(path)


@pytest.mark.parametrize(("text", "expected"), [
    ("buildings: [{id: a, name: A, city: T, floor_area_m2: 1, colour: red}]",
     "buildings[0](id=a).colour: unknown key"),
    ("buildings: [{id: a, name: A, city: T, floor_area_m2: 1}]\n"
     "meters: [{id: a.m, building: a, commodity: steam, device: {profile: sdm630}}]",
     "meters[0](id=a.m).commodity: Input should be 'electricity', 'gas', 'water' or 'weather'"),
    ("buildings: [{id: a, name: A, city: T, floor_area_m2: 1}]\n"
     "meters: [{id: a.m, building: a, commodity: water, device: {profile: nope}}]",
     "unknown profile 'nope'; allowed: adam6050, em24, iem3000, outdoor_temp, sdm630"),
    ("buildings: [{id: a, name: A, city: T, floor_area_m2: 1}]\n"
     "meters: [{id: b.m, building: b, commodity: water, device: {profile: adam6050}}]",
     "meter 'b.m': unknown building 'b'; known: a"),
    ("buildings: [{id: a, name: A, city: T, floor_area_m2: 1, timezone: Mars/Olympus}]",
     "unknown time zone 'Mars/Olympus'"),
])
def test_fleet_errors_name_file_key_and_allowed(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_fleet(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_sdm630_float32_big_endian_known_value() -> None:
    spec = load_profile("sdm630").register("power_w")
    # 1234.5 as IEEE-754 float32 is 0x449A5000: high word first on the SDM630
    assert encode(1234.5, spec) == [0x449A, 0x5000]
    assert decode([0x449A, 0x5000], spec) == 1234.5
    assert spec.function == 4 and spec.address == 0x0034


def test_pulse_counter_low_word_first_and_documented_numbering() -> None:
    spec = load_profile("adam6050").register("volume_m3")
    assert spec.address == 0  # R40001 on the wire is address 0
    # count = R40002 * 65536 + R40001 = 2 * 65536 + 5 = 131077 pulses of 0.01 m3
    assert decode([5, 2], spec) == pytest.approx(1310.77)


def test_read_plan_merges_within_device_limit() -> None:
    profile = load_profile("sdm630")
    blocks = plan_reads(profile)
    assert all(b.count <= profile.max_registers_per_read for b in blocks)
    assert sum(len(b.fields) for b in blocks) == len(profile.registers)
    assert len(blocks) == 2


def test_payload_rejections_say_why() -> None:
    good = Reading(meter="b.m", building="b", edge="e", ts=dt.datetime.now(dt.UTC), seq=1, values={"power_w": 1.0})
    with pytest.raises(PayloadError, match="does not match"):
        decode_reading(good.to_json(), "bems/v1/b/other/reading")
    with pytest.raises(PayloadError, match="finite"):
        decode_reading(good.to_json().replace(b"1.0", b"NaN"))
    with pytest.raises(PayloadError, match="exceeds"):
        decode_reading(b"{" + b" " * 20000 + b"}")


def test_calendar_week_and_holiday() -> None:
    cal = default_calendar()
    # Saturday 2026-11-21 .. Friday 2026-11-27 at 10:00 Tehran (06:30 UTC)
    t = np.array([np.datetime64("2026-11-21T06:30") + np.timedelta64(d, "D") for d in range(7)])
    m = cal.masks(t)
    assert m.working.tolist() == [True, True, True, True, True, False, False]
    # Nowruz: 1 Farvardin 1405 = 2026-03-21, a Saturday, is a holiday
    h = cal.masks(np.array([np.datetime64("2026-03-21T06:30")]))
    assert h.holiday[0] and not h.working[0]
