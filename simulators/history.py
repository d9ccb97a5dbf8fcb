"""Weeks of simulated history, generated column-wise and written straight into a store, with the labels.

The values are what an edge would have stored: the load model, the faults (the same code as live serving), and
the round trip through each meter's registers (resolution, float32 rounding, rollover, word swap). Wire faults
that lose the reading (timeouts, exceptions, CRC errors) leave gaps; clock drift shifts the timestamps.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bems.registers import RegisterSpec, load_profile, quantize
from bems.store import Store
from bems.store.base import WriteResult
from simulators.faults import (
    Fault,
    apply_register_faults,
    apply_value_faults,
    clock_offsets,
    gap_mask,
    write_labels,
)
from simulators.model import FleetModel, History

HISTORY_EDGE = "history"
STEP = dt.timedelta(minutes=15)
STORED_FIELDS = {"electricity": ("power_w", "energy_kwh"), "gas": ("volume_m3",), "water": ("volume_m3",),
                 "temperature": ("temperature_c",)}


@dataclass(frozen=True)
class Frame:
    """A ``[meters x time]`` block of readings: one column per field, NaN where a meter has no such field."""

    meters: list[str]
    buildings: list[str]
    times: np.ndarray  # datetime64[s], the grid
    columns: dict[str, np.ndarray]  # field -> float64 [M, T]
    valid: np.ndarray  # bool [M, T]: False where the reading was lost
    clock_offset_s: np.ndarray | None  # float [M, T]: edge clock error, None without clock drift
    history: History
    faults: list[Fault]
    anchors: dict[int, dict[str, float]]

    @property
    def timestamps(self) -> np.ndarray:
        """Reading timestamps as the edge stamped them: ``[T]``, or ``[M, T]`` under clock drift."""
        t = self.times.astype("datetime64[ms]")
        if self.clock_offset_s is None:
            return t
        return t[None, :] + np.rint(self.clock_offset_s * 1000).astype("timedelta64[ms]")

    @property
    def count(self) -> int:
        present = np.zeros(self.valid.shape, dtype=bool)
        for col in self.columns.values():
            present |= ~np.isnan(col)
        return int((present & self.valid).sum())


def specs_by_meter(model: FleetModel) -> dict[str, tuple[RegisterSpec, ...]]:
    return {m.meter: load_profile(m.profile).registers for m in model.meters}


def faults_in(faults: list[Fault], start: dt.datetime, end: dt.datetime) -> list[Fault]:
    return [f for f in faults if f.start < end and (f.persistent or f.end > start)]


def generate(model: FleetModel, start: dt.datetime, end: dt.datetime, step: dt.timedelta = STEP) -> Frame:
    """One vectorized pass: model, faults, register round trip, gaps and clock drift."""
    history = model.history(start, end, step)
    times = history.times
    p = model.params()
    rows = model.row_index()
    n_m, n_t = history.rate.shape
    wanted = {name for kind, names in STORED_FIELDS.items() if p[kind].any() for name in names}
    columns = model.device_fields(history.rate, history.counter, only=wanted)
    faults = faults_in(model.faults, start, end)
    specs = specs_by_meter(model)
    kinds = {m.meter: m.role for m in model.meters}
    anchors: dict[int, dict[str, float]] = {}
    apply_value_faults(columns, times, faults, rows, specs, kinds, anchors)
    _through_registers(model, columns)
    apply_register_faults(columns, times, faults, rows, specs, anchors)
    valid = gap_mask((n_m, n_t), times, faults, rows)
    offsets = clock_offsets((n_m, n_t), times, faults, rows)
    return Frame(meters=model.ids, buildings=[m.building for m in model.meters], times=times, columns=columns,
                 valid=valid, clock_offset_s=offsets, history=history, faults=faults, anchors=anchors)


def _through_registers(model: FleetModel, columns: dict[str, np.ndarray]) -> None:
    """Round-trip each column through the meters' registers, one profile at a time (vectorized per group)."""
    groups: dict[str, list[int]] = {}
    for i, m in enumerate(model.meters):
        groups.setdefault(m.profile, []).append(i)
    for name, rows in groups.items():
        profile = load_profile(name)
        idx = np.array(rows)
        mapped = {r.field: r for r in profile.registers}
        for field, col in columns.items():
            spec = mapped.get(field)
            col[idx] = np.nan if spec is None else quantize(col[idx], spec)


def backfill(model: FleetModel, store: Store, start: dt.datetime, end: dt.datetime, step: dt.timedelta = STEP,
             labels: Path | None = None) -> Frame:
    """Generate [start, end) on a regular grid, write it, append the faults in range to ``labels``."""
    frame = generate(model, start, end, step)
    write_frame(store, frame)
    if labels is not None and frame.faults:
        write_labels(labels, frame.faults)
    return frame


def write_frame(store: Store, frame: Frame) -> WriteResult:
    return store.write_columns(frame.meters, frame.buildings, frame.timestamps, frame.columns,
                               edge=HISTORY_EDGE, valid=frame.valid)


def floor_time(t: dt.datetime, step: dt.timedelta) -> dt.datetime:
    secs = int(step.total_seconds())
    return dt.datetime.fromtimestamp(int(t.timestamp()) // secs * secs, dt.UTC)


def last_counters(frame: Frame | History) -> np.ndarray:
    history = frame.history if isinstance(frame, Frame) else frame
    return history.counter[:, -1].copy()
