"""What values a meter can give: a range per field, from its device profile and its rating.

A value outside its range is not a reading the meter gave (wrong word order, a decoding bug, a hostile client),
so the reading is refused with the range it broke, rather than stored and averaged into a baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

from bems.fleet import Meter
from bems.registers import RegisterSpec
from bems.store.counters import register_wrap

# generous physical ranges by unit suffix, for fields the rating says nothing about
UNIT_RANGES: dict[str, tuple[float, float]] = {
    "v": (0.0, 100_000.0),
    "hz": (40.0, 70.0),
    "pf": (-1.0, 1.0),
    "c": (-60.0, 200.0),
}
ANY_VALUE = 1e12  # beyond this nothing in a building is plausible
LOWEST_VOLTAGE_V = 100.0  # bounds current from power: I <= P / 100 V


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    why: str

    def check(self, value: float) -> bool:
        return self.low <= value <= self.high


def _type_range(spec: RegisterSpec) -> tuple[float, float]:
    if spec.type.startswith("float"):
        return -ANY_VALUE, ANY_VALUE
    bits = 16 * spec.words
    lo, hi = (0, (1 << bits) - 1) if spec.type.startswith("u") else (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    return sorted((lo * spec.scale, hi * spec.scale))  # type: ignore[return-value]


def field_range(spec: RegisterSpec, meter: Meter, power_factor: float) -> Range:
    unit = spec.field.rsplit("_", 1)[1]
    lo, hi = _type_range(spec)
    register = f"register {spec.field} ({spec.type} x {spec.scale:g}) of profile {meter.device.profile}"
    why = f"is outside what {register} holds"
    if spec.cumulative:
        wrap = register_wrap(spec)
        top = min(hi, wrap if wrap else ANY_VALUE)
        return Range(0.0, top, f"is outside [0, {top:g}], the range of cumulative {register}")
    rated_w = meter.rated_kw * 1000 if meter.rated_kw else None
    bound: float | None = None
    if rated_w is not None and unit in ("w", "var"):
        bound = power_factor * rated_w
    elif rated_w is not None and unit == "kw":
        bound = power_factor * rated_w / 1000
    elif rated_w is not None and unit == "a":
        bound = power_factor * rated_w / LOWEST_VOLTAGE_V
    if bound is not None:
        return Range(max(lo, -bound), min(hi, bound),
                     f"is beyond {power_factor:g}x the meter's rated {meter.rated_kw:g} kW")
    ulo, uhi = UNIT_RANGES.get(unit, (-ANY_VALUE, ANY_VALUE))
    if (ulo, uhi) != (-ANY_VALUE, ANY_VALUE):
        why = f"is outside the plausible range [{ulo:g}, {uhi:g}] {unit}"
    return Range(max(lo, ulo), min(hi, uhi), why)


def meter_ranges(meter: Meter, power_factor: float) -> dict[str, Range]:
    """Range of every field the meter's profile reads, by field name."""
    return {spec.field: field_range(spec, meter, power_factor) for spec in meter.profile.registers}
