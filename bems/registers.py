"""Device profiles: register maps as data, shared by the edge (to decode) and the simulators (to encode).

A profile file lives in ``bems/profiles/<name>.yaml``. Addresses are written as the vendor documents them;
``address_base`` (0 or 1, or 40001 for "4xxxx" numbering) turns them into wire addresses.
"""

from __future__ import annotations

import itertools
import struct
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bems.errors import ConfigError
from bems.validation import load_yaml, parse_model

PROFILE_DIR = Path(__file__).parent / "profiles"

DataType = Literal["uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64"]
_STRUCT = {"uint16": "H", "int16": "h", "uint32": "I", "int32": "i", "uint64": "Q", "int64": "q",
           "float32": "f", "float64": "d"}
WORDS = {"uint16": 1, "int16": 1, "uint32": 2, "int32": 2, "uint64": 4, "int64": 4, "float32": 2, "float64": 4}


class RegisterSpec(BaseModel):
    """One value in a device's register map."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str = Field(pattern=r"^[a-z][a-z0-9_]*_(w|kw|kwh|wh|v|a|hz|m3|l|c|pf|var|kvarh|count)$")
    address: int = Field(ge=0)
    function: Literal[3, 4]
    type: DataType
    word_order: Literal["big", "little"]
    byte_order: Literal["big", "little"]
    scale: float
    unit: str
    cumulative: bool = False
    wire_field: str | None = None
    wire_unit: str | None = Field(None, description="unit of the raw register when it differs (kW, Wh, pulses)")

    @property
    def words(self) -> int:
        return WORDS[self.type]

    @property
    def is_integer(self) -> bool:
        return self.type not in ("float32", "float64")

    @property
    def counter_modulus(self) -> int:
        """Where an integer counter wraps to zero: after the largest value the register holds.

        A signed register counts in its non-negative half; meters restart at zero rather than go negative.
        """
        bits = 16 * self.words
        return 1 << (bits - 1) if self.type.startswith("int") else 1 << bits


class DeviceProfile(BaseModel):
    """A meter model's register map, validated field against field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    vendor: str
    model: str
    address_base: int = Field(ge=0)
    max_registers_per_read: int = Field(ge=1, le=125)
    max_read_gap: int = Field(default=0, ge=0, description="unmapped registers a block read may span")
    registers: tuple[RegisterSpec, ...]

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, data: dict) -> dict:
        if isinstance(data, dict) and isinstance(data.get("defaults"), dict):
            defaults = data.pop("defaults")
            regs = data.get("registers")
            if isinstance(regs, list):
                data["registers"] = [{**defaults, **r} if isinstance(r, dict) else r for r in regs]
        if isinstance(data, dict) and isinstance(data.get("registers"), list):
            base = data.get("address_base", 0)
            data["registers"] = [
                {**r, "address": r["address"] - base} if isinstance(r, dict) and isinstance(
                    r.get("address"), int) and isinstance(base, int) else r
                for r in data["registers"]
            ]
        return data

    @field_validator("registers")
    @classmethod
    def _no_overlap(cls, regs: tuple[RegisterSpec, ...]) -> tuple[RegisterSpec, ...]:
        seen: dict[str, RegisterSpec] = {}
        spans: list[tuple[int, int, int, str]] = []
        for r in regs:
            if r.field in seen:
                raise ValueError(f"field {r.field!r} is mapped twice")
            seen[r.field] = r
            spans.append((r.function, r.address, r.address + r.words, r.field))
        spans.sort()
        for a, b in itertools.pairwise(spans):
            if a[0] == b[0] and b[1] < a[2]:
                raise ValueError(f"register of {b[3]!r} (address {b[1]}) overlaps {a[3]!r} "
                                 f"(addresses {a[1]}..{a[2] - 1})")
        return regs

    def register(self, field: str) -> RegisterSpec:
        for r in self.registers:
            if r.field == field:
                return r
        raise KeyError(f"profile {self.name} has no field {field!r}")


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


@cache
def load_profile(name: str) -> DeviceProfile:
    """A built-in profile by name, or a site's own profile file by its path (ending in .yaml)."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PROFILE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown device profile {name!r}; allowed: {', '.join(available_profiles())} "
                          "or an existing profile file (.yaml)")
    return load_profile_file(path)


def load_profile_file(path: Path) -> DeviceProfile:
    """Parse one profile file; errors name the file, the key and what is allowed."""
    return parse_model(DeviceProfile, load_yaml(path), str(path))


def _to_bytes(regs: list[int], spec: RegisterSpec) -> bytes:
    words = list(regs) if spec.word_order == "big" else list(reversed(regs))
    fmt = ">" if spec.byte_order == "big" else "<"
    return b"".join(struct.pack(f"{fmt}H", w & 0xFFFF) for w in words)


def decode(regs: list[int], spec: RegisterSpec) -> float:
    """Decode one value from its registers (in wire order) and apply the scale."""
    if len(regs) != spec.words:
        raise ValueError(f"{spec.field}: expected {spec.words} registers, got {len(regs)}")
    raw = struct.unpack(">" + _STRUCT[spec.type], _to_bytes(regs, spec))[0]
    return float(raw) * spec.scale


def encode(value: float, spec: RegisterSpec) -> list[int]:
    """Encode an engineering value into registers in wire order (the inverse of :func:`decode`)."""
    raw: float | int = value / spec.scale
    code = _STRUCT[spec.type]
    if code not in "fd":
        bits = 16 * spec.words
        raw = round(raw)
        raw = raw % (1 << bits) if code.isupper() else ((raw + (1 << (bits - 1))) % (1 << bits)) - (1 << (bits - 1))
    data = struct.pack(">" + code, raw)
    fmt = ">" if spec.byte_order == "big" else "<"
    words = [struct.unpack(f"{fmt}H", data[i:i + 2])[0] for i in range(0, len(data), 2)]
    return words if spec.word_order == "big" else list(reversed(words))


_NP_TYPE = {"uint16": ">u2", "int16": ">i2", "uint32": ">u4", "int32": ">i4", "uint64": ">u8", "int64": ">i8",
            "float32": ">f4", "float64": ">f8"}


def raw_array(values: np.ndarray, spec: RegisterSpec) -> np.ndarray:
    """Engineering values -> the register's raw numbers (rounded and wrapped for integers), vectorized.

    NaN becomes 0 for integer registers (the caller keeps its own mask of missing values).
    """
    x = np.asarray(values, dtype=np.float64) / spec.scale
    if not spec.is_integer:
        return x.astype(_NP_TYPE[spec.type][1:])
    x = np.rint(np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0))
    if spec.type == "uint64":
        return np.where(x < 0, x + 2.0**64, x).astype(np.uint64)
    return x.astype(np.int64).astype(_NP_TYPE[spec.type][1:])  # C casts wrap modulo the register width


def words_of_raw(raw: np.ndarray, spec: RegisterSpec) -> np.ndarray:
    """Raw numbers -> register words in wire order, shape ``[N, words]`` (the vectorized :func:`encode`)."""
    big = np.ascontiguousarray(np.asarray(raw).astype(_NP_TYPE[spec.type]).reshape(-1))
    words = big.view(">u2").reshape(-1, spec.words).astype(np.uint16)
    if spec.byte_order == "little":
        words = (words << 8) | (words >> 8)
    return words if spec.word_order == "big" else words[:, ::-1]


def raw_of_words(words: np.ndarray, spec: RegisterSpec) -> np.ndarray:
    """Register words in wire order, shape ``[N, words]`` -> raw numbers in the register's type."""
    w = np.asarray(words, dtype=np.uint16).reshape(-1, spec.words)
    if spec.word_order == "little":
        w = w[:, ::-1]
    if spec.byte_order == "little":
        w = (w << 8) | (w >> 8)
    return np.ascontiguousarray(w).astype(">u2").reshape(-1).view(_NP_TYPE[spec.type])


def encode_array(values: np.ndarray, spec: RegisterSpec) -> np.ndarray:
    return words_of_raw(raw_array(values, spec), spec)


def decode_array(words: np.ndarray, spec: RegisterSpec) -> np.ndarray:
    """The vectorized :func:`decode`: what a client reads from these words, in engineering units."""
    return raw_of_words(words, spec).astype(np.float64) * spec.scale


def quantize(values: np.ndarray, spec: RegisterSpec) -> np.ndarray:
    """Values as a client reads them back through the register (resolution, float32 rounding); NaN kept."""
    v = np.asarray(values, dtype=np.float64)
    out = raw_array(v, spec).astype(np.float64) * spec.scale
    return np.where(np.isnan(v), np.nan, out)


def encode_raw(raw: int, spec: RegisterSpec) -> list[int]:
    """An integer register's raw count -> words in wire order, wrapped at the register width (no scale)."""
    nbytes = 2 * spec.words
    data = (raw % (1 << 8 * nbytes)).to_bytes(nbytes, "big")
    fmt = ">" if spec.byte_order == "big" else "<"
    words = [struct.unpack(f"{fmt}H", data[i:i + 2])[0] for i in range(0, nbytes, 2)]
    return words if spec.word_order == "big" else words[::-1]


class ReadBlock(BaseModel):
    """One Modbus request: a function code, a start address and a count, covering some fields."""

    function: int
    address: int
    count: int
    fields: tuple[RegisterSpec, ...]


def plan_reads(profile: DeviceProfile) -> list[ReadBlock]:
    """Merge a profile's registers into the fewest requests the device allows (max count, readable gaps)."""
    max_gap = profile.max_read_gap
    blocks: list[ReadBlock] = []
    for fn in sorted({r.function for r in profile.registers}):
        regs = sorted((r for r in profile.registers if r.function == fn), key=lambda r: r.address)
        cur: list[RegisterSpec] = []
        for r in regs:
            if cur:
                start = cur[0].address
                end = max(c.address + c.words for c in cur)
                if r.address - end <= max_gap and r.address + r.words - start <= profile.max_registers_per_read:
                    cur.append(r)
                    continue
                blocks.append(_block(fn, cur))
            cur = [r]
        if cur:
            blocks.append(_block(fn, cur))
    return blocks


def _block(fn: int, regs: list[RegisterSpec]) -> ReadBlock:
    start = regs[0].address
    end = max(r.address + r.words for r in regs)
    return ReadBlock(function=fn, address=start, count=end - start, fields=tuple(regs))


def decode_block(block: ReadBlock, regs: list[int]) -> dict[str, float]:
    return {r.field: decode(regs[r.address - block.address: r.address - block.address + r.words], r)
            for r in block.fields}


def check_profile_name(name: str) -> str:
    if name not in available_profiles():
        raise ValueError(f"unknown profile {name!r}; allowed: {', '.join(available_profiles())}")
    return name
