"""Device profiles: each vendor's encoding decodes a known value from hand-computed register words, the
vectorized codec agrees with the scalar one, and bad or unknown profiles fail naming file, key and allowed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bems.errors import ConfigError
from bems.fleet import load_fleet
from bems.registers import (
    available_profiles,
    decode,
    decode_array,
    decode_block,
    encode,
    encode_array,
    load_profile,
    load_profile_file,
    plan_reads,
)


def test_sdm630_total_energy_float32_big_endian() -> None:
    spec = load_profile("sdm630").register("energy_total_kwh")
    # 12345.5 kWh = IEEE-754 0x4640E600: high word first, FC04, 0-based address 0x0156
    assert (spec.function, spec.address) == (4, 0x0156)
    assert decode([0x4640, 0xE600], spec) == 12345.5


def test_schneider_iem3000_one_based_holding_registers_kw_and_int64_wh() -> None:
    profile = load_profile("iem3000")
    power, energy = profile.register("power_w"), profile.register("energy_kwh")
    # documentation numbers 3060 and 3204 are wire addresses 3059 and 3203, read with FC03
    assert (power.function, power.address, energy.function, energy.address) == (3, 3059, 3, 3203)
    # 12.5 kW as float32 is 0x41480000; the canonical field is in W
    assert decode([0x4148, 0x0000], power) == 12500.0
    # 123 456 789 Wh = 0x00000000075BCD15 as INT64, high word first -> 123 456.789 kWh
    assert decode([0x0000, 0x0000, 0x075B, 0xCD15], energy) == pytest.approx(123456.789)
    # a negative INT64 (two's complement) stays negative
    assert decode([0xFFFF, 0xFFFF, 0xFFFF, 0xFC18], energy) == pytest.approx(-1.0)


def test_carlo_gavazzi_em24_int32_low_word_first_scaled() -> None:
    profile = load_profile("em24")
    # 230.4 V x10 = 2304 = 0x00000900: the LOW word comes first
    assert decode([0x0900, 0x0000], profile.register("voltage_l1_v")) == pytest.approx(230.4)
    # 12.345 A x1000 = 12345 = 0x3039
    assert decode([0x3039, 0x0000], profile.register("current_l1_a")) == pytest.approx(12.345)
    # -1234.5 W x10 = -12345 = 0xFFFFCFC7 (exporting)
    assert decode([0xCFC7, 0xFFFF], profile.register("power_w")) == pytest.approx(-1234.5)
    # 123 456.7 kWh x10 = 1 234 567 = 0x0012D687
    energy = profile.register("energy_kwh")
    assert decode([0xD687, 0x0012], energy) == pytest.approx(123456.7)
    assert (energy.function, energy.address) == (4, 0x003E)
    # frequency: one 16-bit register, Hz x10
    assert decode([0x01F4], profile.register("frequency_hz")) == pytest.approx(50.0)


def test_adam6050_pulse_counter_wraps_at_32_bits() -> None:
    spec = load_profile("adam6050").register("volume_m3")
    # R40001 = 0xFFFF (low), R40002 = 0xFFFF (high): 4 294 967 295 pulses of 0.01 m3, the last before zero
    assert decode([0xFFFF, 0xFFFF], spec) == pytest.approx(42949672.95)
    assert spec.counter_modulus == 2**32


def test_outdoor_temperature_signed_tenths() -> None:
    spec = load_profile("outdoor_temp").register("temperature_c")
    assert (spec.function, spec.address) == (4, 1)
    assert decode([0xFF83], spec) == pytest.approx(-12.5)  # -125 as int16
    assert decode([0x00FA], spec) == pytest.approx(25.0)


@pytest.mark.parametrize("name", available_profiles())
def test_vectorized_codec_matches_scalar(name: str) -> None:
    rng = np.random.default_rng(7)
    for spec in load_profile(name).registers:
        values = np.round(rng.uniform(0 if spec.type.startswith("u") else -500, 50_000, 40), 1)
        if spec.type in ("int16", "uint16"):
            values = np.round(rng.uniform(-20 if spec.type == "int16" else 0, 60, 40), 1)
        words = encode_array(values, spec)
        for v, w in zip(values, words, strict=True):
            assert list(w) == encode(float(v), spec), (name, spec.field, v)
        assert np.array_equal(decode_array(words, spec), [decode(list(w), spec) for w in words.tolist()])


@pytest.mark.parametrize("name", available_profiles())
def test_read_plan_covers_every_field_within_device_limit(name: str) -> None:
    profile = load_profile(name)
    blocks = plan_reads(profile)
    assert sorted(f.field for b in blocks for f in b.fields) == sorted(r.field for r in profile.registers)
    assert all(b.count <= profile.max_registers_per_read for b in blocks)
    # decoding a block reads each field at its own offset
    for b in blocks:
        regs = [0] * b.count
        for spec in b.fields:
            regs[spec.address - b.address: spec.address - b.address + spec.words] = encode(1.0, spec)
        assert decode_block(b, regs) == {spec.field: pytest.approx(1.0) for spec in b.fields}


def test_bad_profile_file_names_file_key_and_allowed(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nvendor: x\nmodel: y\naddress_base: 0\nmax_registers_per_read: 10\n"
                    "registers:\n  - {field: power_w, address: 0, function: 4, type: float16, word_order: big,"
                    " byte_order: big, scale: 1, unit: W}\n")
    with pytest.raises(ConfigError) as err:
        load_profile_file(path)
    text = str(err.value)
    assert str(path) in text and "registers[0].type" in text and "'float32'" in text and "'int64'" in text


def test_unknown_profile_in_fleet_names_file_key_and_allowed(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("buildings: [{id: a, name: A, city: T, floor_area_m2: 1}]\n"
                    "meters: [{id: a.m, building: a, commodity: electricity, device: {profile: sdm640}}]\n")
    with pytest.raises(ConfigError) as err:
        load_fleet(path)
    text = str(err.value)
    assert str(path) in text and "meters[0](id=a.m).device.profile" in text
    assert "unknown profile 'sdm640'; allowed: " + ", ".join(available_profiles()) in text
    with pytest.raises(ConfigError, match="allowed: adam6050, em24, iem3000, outdoor_temp, sdm630"):
        load_profile("sdm640")
