"""The fleet file: the single registry of buildings, edges and meters (YAML, validated at load)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bems.errors import ConfigError
from bems.registers import DeviceProfile, available_profiles, load_profile
from bems.signing import KeyRing, parse_public_key
from bems.validation import load_yaml, parse_model
from bems.wire import METER_ID, SLUG

Commodity = Literal["electricity", "gas", "water"]
COMMODITIES: tuple[Commodity, ...] = ("electricity", "gas", "water")
MeterKind = Literal["electricity", "gas", "water", "weather"]  # weather: an outdoor temperature sensor
TEMPERATURE_FIELD = "temperature_c"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Building(_Strict):
    id: str = Field(pattern=SLUG)
    name: str = Field(min_length=1)
    name_fa: str | None = None
    city: str = Field(min_length=1)
    floor_area_m2: float = Field(gt=0)
    timezone: str = "Asia/Tehran"
    contracted_kw: float | None = Field(default=None, gt=0)
    weather_meter: str | None = Field(default=None, pattern=METER_ID, description=(
        "the outdoor temperature sensor for this building's baselines (any building's); default: the building's "
        "own weather meter, if it has one"))

    @field_validator("timezone")
    @classmethod
    def _tz(cls, tz: str) -> str:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {tz!r}; use an IANA name such as 'Asia/Tehran'") from exc
        return tz


Parity = Literal["N", "E", "O"]
_RTU_KEYS = ("baudrate", "parity", "stopbits")


class Device(_Strict):
    """How the edge reaches a meter: Modbus TCP (``host``, ``port``) or Modbus RTU on a serial line (``serial_port``).

    Devices that share a host:port (an RS-485 gateway) or a serial port (one bus) are polled one after another;
    separate connections are polled concurrently. ``timeout_s``, ``retries`` and ``poll_period_s`` override the
    edge's values for this device.
    """

    host: str = "127.0.0.1"
    port: int = Field(502, ge=1, le=65535)
    serial_port: str | None = Field(default=None, min_length=1, description="e.g. /dev/ttyUSB0 (Modbus RTU)")
    baudrate: int = Field(9600, ge=300, le=921600)
    parity: Parity = "N"
    stopbits: Literal[1, 2] = 1
    device_id: int = Field(1, ge=0, le=247)
    profile: str = Field(description="a built-in profile name, or a profile file (.yaml) relative to the fleet file")
    poll_period_s: float | None = Field(default=None, gt=0, le=3600)
    timeout_s: float | None = Field(default=None, gt=0, le=60)
    retries: int | None = Field(default=None, ge=0, le=10)

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, name: str) -> str:
        if is_profile_file(name):
            try:
                load_profile(name)
            except ConfigError as exc:  # one line per problem of the profile file, under this key
                raise ValueError(str(exc).replace(": invalid configuration\n  ", ": ").replace("\n  ", "; ")) from None
            return name
        allowed = available_profiles()
        if name not in allowed:
            raise ValueError(f"unknown profile {name!r}; allowed: {', '.join(allowed)} (or a profile file .yaml)")
        return name

    @model_validator(mode="after")
    def _one_transport(self) -> Device:
        if self.serial_port is not None:
            both = [k for k in ("host", "port") if k in self.model_fields_set]
            if both:
                raise ValueError(f"give either serial_port (Modbus RTU) or host/port (Modbus TCP), not both "
                                 f"(remove {', '.join(both)})")
            if self.device_id == 0:
                raise ValueError("device_id 0 is the RTU broadcast address; use 1..247")
        else:
            stray = [k for k in _RTU_KEYS if k in self.model_fields_set]
            if stray:
                raise ValueError(f"{', '.join(stray)} only apply to Modbus RTU; add serial_port or remove them")
        return self

    @property
    def transport(self) -> Literal["tcp", "rtu"]:
        return "rtu" if self.serial_port is not None else "tcp"

    @property
    def bus(self) -> str:
        """Devices with the same bus share one connection and are polled one after another."""
        return f"rtu:{self.serial_port}" if self.serial_port is not None else f"tcp:{self.host}:{self.port}"


def is_profile_file(name: str) -> bool:
    return name.endswith((".yaml", ".yml"))


class Meter(_Strict):
    id: str = Field(pattern=METER_ID, description="<building>.<meter>")
    building: str = Field(pattern=SLUG)
    commodity: MeterKind = Field(description="what it meters; 'weather' for an outdoor temperature sensor, which "
                                             "weather-normalizes the baselines of its building's meters")
    name: str | None = None
    edge: str | None = Field(default=None, description="defaults to the building's only edge")
    device: Device
    rated_kw: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _id_prefix(self) -> Meter:
        if not self.id.startswith(self.building + "."):
            raise ValueError(f"meter id {self.id!r} must start with its building id {self.building!r} + '.'")
        if self.commodity == "weather" and all(r.field != TEMPERATURE_FIELD for r in self.profile.registers):
            raise ValueError(f"meter {self.id!r} is a weather sensor but profile {self.device.profile!r} maps no "
                             f"{TEMPERATURE_FIELD} register; use outdoor_temp or a profile that does")
        return self

    @property
    def profile(self) -> DeviceProfile:
        return load_profile(self.device.profile)


class Edge(_Strict):
    id: str = Field(pattern=SLUG)
    building: str = Field(pattern=SLUG)
    poll_period_s: float = Field(5.0, gt=0, le=3600)
    timeout_s: float = Field(2.0, gt=0, le=60, description="per request; a device may override it")
    retries: int = Field(1, ge=0, le=10, description="extra tries of a failed request within one poll")
    backoff_max_s: float = Field(60.0, gt=0, le=3600, description="cap of the wait before retrying a dead device")
    public_keys: tuple[str, ...] = Field(
        (), description="the edge's Ed25519 public keys (base64, from `bems edge keygen`); two while rotating")

    @field_validator("public_keys")
    @classmethod
    def _keys(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        for text in keys:
            parse_public_key(text)
        return keys


class Fleet(_Strict):
    buildings: tuple[Building, ...] = Field(min_length=1)
    edges: tuple[Edge, ...] = ()
    meters: tuple[Meter, ...] = ()

    @model_validator(mode="after")
    def _references(self) -> Fleet:
        for kind, items in (("buildings", self.buildings), ("edges", self.edges), ("meters", self.meters)):
            ids = [i.id for i in items]
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise ValueError(f"{kind}: duplicate id(s) {', '.join(dupes)}")
        buildings = {b.id for b in self.buildings}
        edges = {e.id: e for e in self.edges}
        for e in self.edges:
            if e.building not in buildings:
                raise ValueError(f"edge {e.id!r}: unknown building {e.building!r}; "
                                 f"known: {', '.join(sorted(buildings))}")
        for m in self.meters:
            if m.building not in buildings:
                raise ValueError(f"meter {m.id!r}: unknown building {m.building!r}; "
                                 f"known: {', '.join(sorted(buildings))}")
            if m.edge is not None:
                if m.edge not in edges:
                    raise ValueError(f"meter {m.id!r}: unknown edge {m.edge!r}; known: {', '.join(sorted(edges))}")
                if edges[m.edge].building != m.building:
                    raise ValueError(f"meter {m.id!r}: edge {m.edge!r} serves building {edges[m.edge].building!r}, "
                                     f"not {m.building!r}")
        kinds = {m.id: m.commodity for m in self.meters}
        for b in self.buildings:
            if b.weather_meter is not None and kinds.get(b.weather_meter) != "weather":
                raise ValueError(f"building {b.id!r}: weather_meter {b.weather_meter!r} is not a meter with "
                                 f"commodity 'weather' in this fleet")
        buses: dict[tuple[str, str], Meter] = {}
        addresses: dict[tuple[str, str, int], str] = {}
        for m in self.meters:
            d, box = m.device, m.edge or m.building  # buses are local to the edge box that polls them
            first = buses.setdefault((box, d.bus), m)
            if d.serial_port is not None and (first.device.baudrate, first.device.parity, first.device.stopbits) != (
                    d.baudrate, d.parity, d.stopbits):
                raise ValueError(f"meter {m.id!r}: serial line {d.serial_port} is {first.device.baudrate} baud "
                                 f"parity {first.device.parity} stop bits {first.device.stopbits} for meter "
                                 f"{first.id!r}; every device on one bus must use the same settings")
            other = addresses.setdefault((box, d.bus, d.device_id), m.id)
            if other != m.id:
                raise ValueError(f"meter {m.id!r}: device id {d.device_id} on {d.bus.split(':', 1)[1]} is already "
                                 f"used by meter {other!r}")
        return self

    @cached_property
    def building_by_id(self) -> dict[str, Building]:
        return {b.id: b for b in self.buildings}

    @cached_property
    def meter_by_id(self) -> dict[str, Meter]:
        return {m.id: m for m in self.meters}

    def keyring(self) -> KeyRing:
        return KeyRing((e.id, e.building, k) for e in self.edges for k in e.public_keys)

    def edge(self, edge_id: str) -> Edge:
        for e in self.edges:
            if e.id == edge_id:
                return e
        raise ConfigError(f"edge {edge_id!r} is not in the fleet file; known edges: "
                          f"{', '.join(e.id for e in self.edges) or '(none)'}")

    def meters_of_edge(self, edge_id: str) -> list[Meter]:
        edge = self.edge(edge_id)
        own = [e for e in self.edges if e.building == edge.building]
        return [m for m in self.meters
                if m.edge == edge_id or (m.edge is None and m.building == edge.building and len(own) == 1)]

    def weather_meter(self, building: str) -> Meter | None:
        """The temperature sensor that normalizes ``building``'s baselines, if any."""
        chosen = self.building_by_id[building].weather_meter
        if chosen is not None:
            return self.meter_by_id[chosen]
        own = self.meters_of(building=building, commodity="weather")
        return own[0] if own else None

    def meters_of(self, building: str | None = None, commodity: str | None = None) -> list[Meter]:
        return [m for m in self.meters
                if (building is None or m.building == building) and (commodity is None or m.commodity == commodity)]


def load_fleet(path: str | Path) -> Fleet:
    """Load and validate a fleet file; profile files named in it are taken relative to the fleet file."""
    path = Path(path)
    data = load_yaml(path)
    meters = data.get("meters") if isinstance(data, dict) else None
    for meter in meters if isinstance(meters, list) else []:
        device = meter.get("device") if isinstance(meter, dict) else None
        profile = device.get("profile") if isinstance(device, dict) else None
        if isinstance(profile, str) and is_profile_file(profile) and not Path(profile).is_absolute():
            device["profile"] = str((path.parent / profile).resolve())
    return parse_model(Fleet, data, str(path))
