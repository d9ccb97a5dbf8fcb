"""The simulators: load model on the office calendar, history into a store with labels, Modbus serving (mbpoll,
many ports and device ids, RTU over a socat pseudo-terminal pair), the control API and `bems sim inject`,
and clear errors for bad scenario files."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from pymodbus.client import ModbusSerialClient, ModbusTcpClient

from bems import cli
from bems.calendar import CalendarOverride, CalendarVersion, OfficeCalendar
from bems.errors import ConfigError
from bems.fleet import Fleet, load_fleet
from bems.registers import decode_block, load_profile, plan_reads
from bems.services import free_port
from bems.store import open_store
from simulators.__main__ import main as simulators_main
from simulators.faults import FAULT_TYPES, read_labels
from simulators.harness import ManualClock, ServerThread
from simulators.history import backfill, generate
from simulators.model import FleetModel, fleet_model
from simulators.pty import PtyPair
from simulators.scenario import load_scenario
from simulators.server import MeterServer, Placement
from tests.conftest import need
from tests.stages import StageProcess, wait_for, write_fleet

TEHRAN = ZoneInfo("Asia/Tehran")
MIXED = [("main-elec", "electricity", "sdm630", 400), ("hvac-elec", "electricity", "iem3000", 200),
         ("lighting-elec", "electricity", "em24", 80), ("gas", "gas", "adam6050", None),
         ("water", "water", "adam6050", None), ("outdoor", "weather", "outdoor_temp", None)]


def mixed_fleet(path: Path, ports: list[int] | None = None, per_port: int | None = None) -> Path:
    """One building with one meter of each kind; ``ports`` spreads them over TCP ports."""
    ports = ports or [free_port()]
    per_port = per_port or len(MIXED)
    meters = []
    for i, (name, commodity, profile, kw) in enumerate(MIXED):
        device = {"port": ports[i // per_port], "device_id": 1 + i % per_port, "profile": profile}
        meters.append({"id": f"b.{name}", "building": "b", "commodity": commodity, "device": device,
                       **({"rated_kw": kw} if kw else {})})
    return write_fleet(path, [{"id": "b", "name": "B", "city": "Tehran", "floor_area_m2": 8000}], meters,
                       [{"id": "edge-b", "building": "b"}])


def local(day: str, hh: int, mm: int = 0) -> np.datetime64:
    t = dt.datetime.fromisoformat(day).replace(hour=hh, minute=mm, tzinfo=TEHRAN).astimezone(dt.UTC)
    return np.datetime64(t.replace(tzinfo=None), "s")


def rate_at(model: FleetModel, meter: str, day: str, hh: int, mm: int = 0) -> float:
    return float(model.rates(np.array([local(day, hh, mm)]))[model.row(meter), 0])


@pytest.fixture
def model(tmp_path: Path) -> FleetModel:
    m = fleet_model(load_fleet(mixed_fleet(tmp_path / "fleet.yaml")), seed=5)
    m.noise = 0.0
    return m


# ---- load model --------------------------------------------------------------------------------------------

def test_same_seed_same_output_and_seed_matters(tmp_path: Path) -> None:
    fleet = load_fleet(mixed_fleet(tmp_path / "fleet.yaml"))
    start, end = dt.datetime(2025, 1, 18, tzinfo=dt.UTC), dt.datetime(2025, 1, 20, tzinfo=dt.UTC)
    a, b, c = (generate(fleet_model(fleet, seed=s), start, end) for s in (3, 3, 4))
    for name in a.columns:
        assert np.array_equal(a.columns[name], b.columns[name], equal_nan=True)
    assert not np.allclose(a.history.rate, c.history.rate)


def test_office_hours_weekend_and_holidays(model: FleetModel) -> None:
    for meter in ("b.main-elec", "b.lighting-elec", "b.water"):
        working, night = rate_at(model, meter, "2025-01-20", 11), rate_at(model, meter, "2025-01-20", 3)
        assert working > 2 * night, meter
        for closed in ("2025-01-16", "2025-01-17", "2025-02-10"):  # Thursday, Friday, Revolution Day (Mon)
            assert rate_at(model, meter, closed, 11) < 1.2 * night, (meter, closed)


def test_seasonal_decreed_hours_shape_the_day(model: FleetModel) -> None:
    # summer decree 06:00-13:00, winter 08:00-14:00 (bems/office_calendar.yaml)
    assert rate_at(model, "b.main-elec", "2025-07-14", 7) > 1.5 * rate_at(model, "b.main-elec", "2025-01-20", 7)
    assert rate_at(model, "b.main-elec", "2025-01-20", 13, 30) > 1.5 * rate_at(model, "b.main-elec", "2025-07-14",
                                                                              14, 30)


def test_hvac_follows_outdoor_temperature(model: FleetModel) -> None:
    assert rate_at(model, "b.outdoor", "2025-07-14", 15) > 30 > 10 > rate_at(model, "b.outdoor", "2025-01-20", 7)
    assert rate_at(model, "b.hvac-elec", "2025-07-14", 11) > 2 * rate_at(model, "b.hvac-elec", "2025-01-20", 11)
    assert rate_at(model, "b.gas", "2025-01-20", 9) > 3 * rate_at(model, "b.gas", "2025-07-14", 9)
    # the directive: heating off about an hour before closing (14:00 in winter)
    assert rate_at(model, "b.gas", "2025-01-20", 13, 30) < 0.6 * rate_at(model, "b.gas", "2025-01-20", 12)


def test_calendar_override_closes_a_working_day(model: FleetModel) -> None:
    model.calendar = OfficeCalendar(
        versions=(CalendarVersion(start=dt.date(2024, 1, 1), workdays=("sat", "sun", "mon", "tue", "wed"),
                                  open="08:00", close="14:00"),),
        overrides=(CalendarOverride(date=dt.date(2025, 1, 21), reason="air pollution closure"),))
    open_day, closed = rate_at(model, "b.main-elec", "2025-01-20", 11), rate_at(model, "b.main-elec",
                                                                                "2025-01-21", 11)
    assert closed < 0.5 * open_day


# ---- history -----------------------------------------------------------------------------------------------

def test_backfill_writes_store_with_gaps_and_labels(tmp_path: Path) -> None:
    fleet_path = mixed_fleet(tmp_path / "fleet.yaml")
    model = fleet_model(load_fleet(fleet_path), seed=1)
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text("faults:\n"
                        "  - {type: comm_loss, meter: b.main-elec, start: 2025-01-19T06:00:00Z,"
                        " end: 2025-01-19T08:00:00Z}\n"
                        "  - {type: spike, meter: b.water, start: 2025-01-19T09:00:00Z,"
                        " end: 2025-01-19T09:15:00Z, factor: 10}\n")
    model.faults.extend(load_scenario(scenario, model))
    labels = tmp_path / "labels.csv"
    start, end = dt.datetime(2025, 1, 18, tzinfo=dt.UTC), dt.datetime(2025, 1, 20, tzinfo=dt.UTC)
    with open_store(f"sqlite:///{tmp_path}/r.db") as store:
        frame = backfill(model, store, start, end, labels=labels)
        assert store.count() == frame.count == 6 * 192 - 8
        hourly = store.read_matrix(["b.main-elec", "b.water", "b.outdoor"], "power_w", start, end,
                                   dt.timedelta(hours=1), "count")
        assert hourly.row("b.main-elec")[30:32].tolist() == [0, 0] or np.isnan(hourly.row("b.main-elec")[30:32]).all()
        assert hourly.row("b.main-elec")[29] == 4 and hourly.row("b.main-elec")[32] == 4
        temps = store.read_matrix(["b.outdoor"], "temperature_c", start, end, dt.timedelta(hours=1), "mean")
        assert np.nanmax(temps.values) < 25 and np.nanmin(temps.values) > -15
    rows = read_labels(labels)
    assert [(r["meter"], r["type"], r["start"], r["end"]) for r in rows] == [
        ("b.main-elec", "comm_loss", "2025-01-19T06:00:00+00:00", "2025-01-19T08:00:00+00:00"),
        ("b.water", "spike", "2025-01-19T09:00:00+00:00", "2025-01-19T09:15:00+00:00")]
    assert json.loads(rows[1]["params"]) == {"factor": 10.0, "field": None}


def test_bems_sim_history_writes_a_store_and_labels(tmp_path: Path) -> None:
    fleet = mixed_fleet(tmp_path / "fleet.yaml")
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text("faults:\n  - {type: stuck, meter: b.gas, start: 2025-01-19T06:00:00Z,"
                        " end: 2025-01-19T09:00:00Z}\n")
    store_url, labels = f"sqlite:///{tmp_path}/h.db", tmp_path / "labels.csv"
    assert cli.main(["sim", "history", "--config", str(fleet), "--store", store_url, "--days", "1", "--end",
                     "2025-01-20T00:00:00Z", "--scenario", str(scenario), "--labels", str(labels)]) == 0
    with open_store(store_url) as store:
        assert store.count() == len(MIXED) * 96
        gas = store.read_matrix(["b.gas"], "volume_m3", dt.datetime(2025, 1, 19, 6, tzinfo=dt.UTC),
                                dt.datetime(2025, 1, 19, 9, tzinfo=dt.UTC), dt.timedelta(minutes=15), "last")
    assert np.unique(gas.values).size == 1  # stuck for three hours
    assert [r["type"] for r in read_labels(labels)] == ["stuck"]


# ---- serving -----------------------------------------------------------------------------------------------

def serve(fleet: Fleet, model: FleetModel, clock: ManualClock, **kw: object) -> MeterServer:
    placements = {m.id: Placement(m.device.device_id, host=m.device.host, port=m.device.port)
                  for m in fleet.meters}
    return MeterServer(model, placements, clock=clock, tick_s=0.05, **kw)  # type: ignore[arg-type]


def expected(model: FleetModel, clock: ManualClock) -> dict[str, dict[str, float]]:
    """The modelled values at the clock's instant, computed from the model (not read from the server)."""
    t = np.array([np.datetime64(int(clock.now), "s")])
    rate = model.rates(t)
    fields = model.device_fields(rate, model.params()["start_counter"])
    return {m: {f: float(v[i, 0]) for f, v in fields.items() if not np.isnan(v[i, 0])}
            for i, m in enumerate(model.ids)}


def read_meter(client: ModbusTcpClient | ModbusSerialClient, profile: str, device_id: int) -> dict[str, float]:
    values: dict[str, float] = {}
    for block in plan_reads(load_profile(profile)):
        call = client.read_input_registers if block.function == 4 else client.read_holding_registers
        rr = call(block.address, count=block.count, device_id=device_id)
        assert not rr.isError(), rr
        values.update(decode_block(block, rr.registers))
    return values


def test_mbpoll_reads_the_modelled_sdm630_power(tmp_path: Path) -> None:
    need("mbpoll", "mbpoll")
    fleet = load_fleet(mixed_fleet(tmp_path / "fleet.yaml"))
    model = fleet_model(fleet, seed=2)
    model.noise = 0.0
    clock = ManualClock(dt.datetime(2025, 1, 20, 8, 0, tzinfo=dt.UTC))  # Monday 11:30 in Tehran
    port = fleet.meter_by_id["b.main-elec"].device.port
    with ServerThread(serve(fleet, model, clock)):
        # SDM630 total system power: input register 0x0034, i.e. mbpoll's 1-based reference 53
        cmd = ["mbpoll", "-1", "-a", "1", "-t", "3:float", "-B", "-r", "53", "-c", "1", "-o", "2",
               "127.0.0.1", "-p", str(port)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    print(" ".join(cmd), "\n", out.stdout)
    assert out.returncode == 0, out.stderr
    shown = float(re.search(r"^\[53\]:\s+(\S+)", out.stdout, re.M).group(1))  # type: ignore[union-attr]
    want = expected(model, clock)["b.main-elec"]["power_w"]
    assert want > 10_000 and shown == pytest.approx(want, rel=1e-5)


def test_many_ports_and_device_ids_in_one_process(tmp_path: Path) -> None:
    ports = [free_port(), free_port(), free_port()]
    fleet = load_fleet(mixed_fleet(tmp_path / "fleet.yaml", ports=ports, per_port=2))
    model = fleet_model(fleet, seed=4)
    model.noise = 0.0
    clock = ManualClock(dt.datetime(2025, 7, 14, 7, 0, tzinfo=dt.UTC))
    want = expected(model, clock)
    with ServerThread(serve(fleet, model, clock)):
        clients = {p: ModbusTcpClient("127.0.0.1", port=p, timeout=2, retries=0) for p in ports}
        try:
            for c in clients.values():
                assert c.connect()
            for m in fleet.meters:
                got = read_meter(clients[m.device.port], m.device.profile, m.device.device_id)
                assert set(got) == {r.field for r in load_profile(m.device.profile).registers}
                for name, value in got.items():
                    assert value == pytest.approx(want[m.id][name], rel=1e-4, abs=0.06), (m.id, name)
            c = clients[ports[0]]
            assert c.read_input_registers(0, count=2, device_id=77).exception_code == 11  # unknown id
            assert c.read_holding_registers(0, count=2, device_id=1).exception_code == 1  # SDM630 is FC04 only
            assert c.read_input_registers(200, count=2, device_id=1).exception_code == 2  # outside the map
            assert read_meter(c, "sdm630", 1)  # still serving after the exceptions
        finally:
            for c in clients.values():
                c.close()


def test_modbus_rtu_over_socat_pty_pair(tmp_path: Path) -> None:
    need("socat", "socat")
    fleet = load_fleet(mixed_fleet(tmp_path / "fleet.yaml"))
    model = fleet_model(fleet, seed=6)
    model.noise = 0.0
    clock = ManualClock(dt.datetime(2025, 1, 20, 8, 0, tzinfo=dt.UTC))
    want = expected(model, clock)
    with PtyPair() as line:
        placements = {"b.main-elec": Placement(1, serial=line.server_end, baudrate=38400),
                      "b.lighting-elec": Placement(2, serial=line.server_end, baudrate=38400)}
        with ServerThread(MeterServer(model, placements, clock=clock)):
            client = ModbusSerialClient(line.client_end, baudrate=38400, timeout=1, retries=0)
            try:
                assert client.connect()
                sdm = read_meter(client, "sdm630", 1)
                em24 = read_meter(client, "em24", 2)
                unknown = client.read_input_registers(0, count=2, device_id=9)
            finally:
                client.close()
    assert sdm["power_w"] == pytest.approx(want["b.main-elec"]["power_w"], rel=1e-6)
    assert em24["energy_kwh"] == pytest.approx(want["b.lighting-elec"]["energy_kwh"], abs=0.05)
    assert unknown.isError() and unknown.exception_code == 11


def test_control_api_and_bems_sim_inject(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = load_fleet(mixed_fleet(tmp_path / "fleet.yaml"))
    model = fleet_model(fleet, seed=2)
    model.noise = 0.0
    clock = ManualClock(dt.datetime(2025, 1, 20, 8, 0, tzinfo=dt.UTC))
    labels = tmp_path / "labels.csv"
    port = fleet.meters[0].device.port
    with ServerThread(serve(fleet, model, clock, labels=labels), control=True) as st:
        assert st.control is not None
        url = st.control.url
        client = ModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
        assert client.connect()
        before = read_meter(client, "sdm630", 1)["power_w"]
        code = cli.main(["sim", "inject", "--control", url, "--type", "spike", "--meter", "b.main-elec",
                         "--duration", "120", "--param", "factor=3"])
        fault = json.loads(capsys.readouterr().out)
        after = read_meter(client, "sdm630", 1)["power_w"]
        bad_param = cli.main(["sim", "inject", "--control", url, "--type", "spike", "--meter", "b.main-elec",
                              "--param", "factr=3"])
        bad_meter = cli.main(["sim", "inject", "--control", url, "--type", "stuck", "--meter", "b.nope"])
        errors = capsys.readouterr().err
        client.close()
    assert code == 0 and fault["type"] == "spike" and fault["params"]["factor"] == 3
    assert after == pytest.approx(3 * before, rel=1e-6)
    assert bad_param == 2 and "factr: unknown parameter" in errors and "parameters of spike: factor, field" in errors
    assert bad_meter == 2 and "unknown meter 'b.nope'; allowed: b.gas, b.hvac-elec" in errors
    assert [(r["meter"], r["type"], r["start"], r["end"]) for r in read_labels(labels)] == [
        ("b.main-elec", "spike", "2025-01-20T08:00:00+00:00", "2025-01-20T08:02:00+00:00")]


def test_simulator_process_serves_with_scenario_and_control_port(tmp_path: Path) -> None:
    fleet_path = mixed_fleet(tmp_path / "fleet.yaml")
    fleet = load_fleet(fleet_path)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(f"faults:\n  - {{type: modbus_exception, meter: b.water, start: '{now.isoformat()}',"
                        f" end: '{(now + dt.timedelta(hours=1)).isoformat()}', code: illegal_value}}\n")
    labels = tmp_path / "labels.csv"
    proc = StageProcess("simulators", ["--config", str(fleet_path), "--scenario", str(scenario), "--labels",
                                       str(labels), "--control-port", "0"], tmp_path / "sim.log")
    try:
        url = wait_for(lambda: re.search(r"control API (http://\S+)", proc.output()), 20, "the control API").group(1)
        client = ModbusTcpClient("127.0.0.1", port=fleet.meters[0].device.port, timeout=2, retries=0)
        assert wait_for(client.connect, 10, "the Modbus port")
        water = fleet.meter_by_id["b.water"].device.device_id
        assert client.read_holding_registers(0, count=2, device_id=water).exception_code == 3
        assert read_meter(client, "sdm630", 1)["power_w"] > 0
        client.close()
        assert cli.main(["sim", "inject", "--control", url, "--type", "comm_loss", "--meter", "b.gas"]) == 0
    finally:
        assert proc.stop() == 0, proc.output()
    assert [r["type"] for r in read_labels(labels)] == ["modbus_exception", "comm_loss"]


# ---- bad input ---------------------------------------------------------------------------------------------

BAD_SCENARIOS = [
    ("faults:\n  - {type: meltdown, meter: b.gas, start: 2025-01-01T00:00:00Z, end: 2025-01-02T00:00:00Z}",
     ["faults[0].type", "'after_hours_waste'", "'slow_device'"]),
    ("fault:\n  - {type: spike, meter: b.gas, start: 2025-01-01T00:00:00Z, end: 2025-01-02T00:00:00Z}",
     ["fault: unknown key"]),
    ("faults:\n  - {type: spike, meter: b.gas, start: 2025-01-01T00:00:00Z, end: 2025-01-02T00:00:00Z, facter: 2}",
     ["faults[0]", "facter: unknown parameter", "parameters of spike: factor, field"]),
    ("faults:\n  - {type: step, meter: b.gas, start: 2025-01-01T00:00:00Z, end: 2025-01-02T00:00:00Z, factor: -1}",
     ["faults[0]", "factor: Input should be greater than 0"]),
    ("faults:\n  - {type: stuck, meter: b.gaz, start: 2025-01-01T00:00:00Z, end: 2025-01-02T00:00:00Z}",
     ["faults[0].meter: unknown meter 'b.gaz'; allowed: b.gas, b.hvac-elec"]),
    ("faults:\n  - {type: rollover, meter: b.main-elec, start: 2025-01-01T00:00:00Z, end: 2025-01-02T00:00:00Z}",
     ["faults[0].type: rollover needs an integer counter", "sdm630", "allowed profiles: adam6050, em24, iem3000"]),
    ("faults:\n  - {type: spike, meter: b.gas, start: 2025-01-01T00:00:00Z, end: 2025-01-02T00:00:00Z,"
     " field: power_w}", ["faults[0].field: profile adam6050 of b.gas has no field 'power_w'; allowed: volume_m3"]),
    ("faults:\n  - {type: spike, meter: b.gas, start: 2025-01-02T00:00:00Z, end: 2025-01-01T00:00:00Z}",
     ["faults[0]", "end must be after start"]),
    ("faults:\n  - {type: spike, meter: b.gas, start: 2025-01-02T00:00:00, end: 2025-01-03T00:00:00Z}",
     ["faults[0].start", "timezone"]),
    ("faults:\n  - {type: step, meter: b.outdoor, start: 2025-01-01T00:00:00Z, end: 2025-01-02T00:00:00Z}",
     ["faults[0].type: step changes a building's consumption", "allowed for it: spike, stuck"]),
]


@pytest.mark.parametrize(("text", "needles"), BAD_SCENARIOS)
def test_bad_scenario_names_file_key_and_allowed(model: FleetModel, tmp_path: Path, text: str,
                                                 needles: list[str]) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_scenario(path, model)
    assert str(path) in str(err.value)
    for needle in needles:
        assert needle in str(err.value)


def test_scenario_errors_stop_the_simulator_with_the_message(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    fleet = mixed_fleet(tmp_path / "fleet.yaml")
    path = tmp_path / "scenario.yaml"
    path.write_text("faults:\n  - {type: crc_error, meter: b.gas, start: 2025-01-01T00:00:00Z,"
                    " end: 2025-01-02T00:00:00Z}\n")
    assert simulators_main(["--config", str(fleet), "--scenario", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: faults[0].type: crc_error needs a meter served over Modbus RTU" in err
    assert "use comm_loss or modbus_exception" in err


def test_every_fault_type_is_documented_with_parameters() -> None:
    from simulators.faults import PARAMS

    assert set(PARAMS) == set(FAULT_TYPES) and len(FAULT_TYPES) == 14
