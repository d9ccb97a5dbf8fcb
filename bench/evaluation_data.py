"""Labelled simulator history for judging the detectors: a synthetic fleet, every fault type, known windows.

Shared by ``bench/detect_eval.py`` and ``tests/test_detect_eval.py`` (which runs a smaller fleet on another seed).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import yaml

from analytics.evaluation import Label
from bems.calendar import CalendarMasks, default_calendar
from bems.fleet import load_fleet
from simulators.faults import Fault
from simulators.history import generate
from simulators.model import fleet_model

TEHRAN = ZoneInfo("Asia/Tehran")
STEP = dt.timedelta(minutes=15)
ROLES = (("main-elec", "electricity", "sdm630"), ("hvac-elec", "electricity", "sdm630"),
         ("lighting-elec", "electricity", "sdm630"), ("water", "water", "adam6050"), ("gas", "gas", "adam6050"))


@dataclass
class Dataset:
    meters: list[str]
    commodity: list[str]
    times: np.ndarray
    consumption: np.ndarray  # [M, T] per 15 min, from the cumulative register, NaN where lost
    demand: np.ndarray  # [M, T] power_w of electricity meters (NaN for others)
    masks: CalendarMasks
    labels: list[Label]


def write_fleet(path: Path, buildings: int) -> Path:
    data: dict[str, list] = {"buildings": [], "edges": [], "meters": []}
    for b in range(buildings):
        bid = f"eval-b{b:03d}"
        data["buildings"].append({"id": bid, "name": bid, "city": "Tehran", "floor_area_m2": 4000 + 200 * b})
        for i, (role, commodity, profile) in enumerate(ROLES):
            data["meters"].append({"id": f"{bid}.{role}", "building": bid, "commodity": commodity,
                                   "rated_kw": 150 if commodity == "electricity" else None,
                                   "device": {"port": 15020 + b, "device_id": i + 1, "profile": profile}})
    for m in data["meters"]:
        if m["rated_kw"] is None:
            del m["rated_kw"]
    path.write_text(yaml.safe_dump(data))
    return path


def _local(day: dt.date, hour: float) -> dt.datetime:
    return (dt.datetime(day.year, day.month, day.day, tzinfo=TEHRAN) + dt.timedelta(hours=hour)).astimezone(dt.UTC)


def schedule(meters: list[str], commodity: list[str], start: dt.datetime, weeks: int, per_type: int,
             rng: np.random.Generator) -> list[Fault]:
    """``per_type`` faults of every type on distinct meters, in the weeks after a two-week warm-up."""
    cal = default_calendar()
    days = [(start + dt.timedelta(days=d)).astimezone(TEHRAN).date() for d in range(14, 7 * weeks - 1)]
    noon = np.array([np.datetime64(_local(d, 10).replace(tzinfo=None), "s") for d in days])
    open_days = [d for d, is_open in zip(days, cal.masks(noon).open_day, strict=True) if is_open]
    closed_days = [d for d in days if d not in open_days]
    elec = [i for i, c in enumerate(commodity) if c == "electricity"]
    pulse = [i for i, c in enumerate(commodity) if c != "electricity"]
    free = set(range(len(meters)))

    def pick(pool: list[int]) -> str:
        choices = [i for i in pool if i in free]
        i = int(rng.choice(choices))
        free.discard(i)
        return meters[i]

    faults: list[Fault] = []
    for _ in range(per_type):
        d = open_days[int(rng.integers(len(open_days) - 7))]
        c = closed_days[int(rng.integers(len(closed_days)))]
        h = float(rng.integers(9, 12))
        faults += [
            Fault.make("after_hours_waste", pick(elec), _local(d, 19), _local(d, 23), fraction=0.5),
            Fault.make("holiday_waste", pick(elec), _local(c, 6), _local(c, 14), fraction=0.5),
            Fault.make("spike", pick(elec), _local(d, h), _local(d, h) + STEP, factor=6.0),
            Fault.make("stuck", pick(elec + pulse), _local(d, 8), _local(d, 14)),
            Fault.make("drift", pick(elec), _local(d, 0), _local(d, 0) + dt.timedelta(days=7), fraction=0.5),
            Fault.make("step", pick(elec), _local(d, 0), _local(d, 0) + dt.timedelta(days=6), factor=1.5),
            Fault.make("comm_loss", pick(elec + pulse), _local(d, h), _local(d, h + 2)),
            Fault.make("modbus_exception", pick(elec + pulse), _local(d, h), _local(d, h + 2)),
            Fault.make("crc_error", pick(elec + pulse), _local(d, h), _local(d, h + 2)),
            Fault.make("rollover", pick(pulse), _local(d, h), _local(d, h + 24), headroom=1.0),
            Fault.make("replacement", pick(elec + pulse), _local(d, h), _local(d, h + 1), initial=3.0),
            Fault.make("word_swap", pick(elec), _local(d, h), _local(d, h + 3)),
        ]
    return faults


def dataset(tmp: Path, buildings: int, weeks: int, per_type: int, seed: int) -> Dataset:
    fleet = load_fleet(write_fleet(tmp / "eval-fleet.yaml", buildings))
    model = fleet_model(fleet, seed=seed)
    start = dt.datetime(2026, 10, 3, 20, 30, tzinfo=dt.UTC)  # Saturday 00:00 in Tehran
    meters = [m.id for m in fleet.meters]
    commodity = [m.commodity for m in fleet.meters]
    faults = schedule(meters, commodity, start, weeks, per_type, np.random.default_rng(seed))
    model.faults.extend(faults)
    frame = generate(model, start, start + dt.timedelta(weeks=weeks), STEP)
    is_elec = np.array([c == "electricity" for c in commodity])[:, None]
    counter = np.where(is_elec, frame.columns["energy_kwh"], frame.columns["volume_m3"])
    counter = np.where(frame.valid, counter, np.nan)
    consumption = np.diff(counter, axis=1, prepend=np.nan).astype(np.float32)
    demand = np.where(is_elec & frame.valid, frame.columns["power_w"], np.nan).astype(np.float32)
    masks = default_calendar().bucket_masks(frame.times, np.timedelta64(int(STEP.total_seconds()), "s"))
    labels = [Label(f.meter, f.type, f.start, f.end) for f in faults]
    return Dataset(meters, commodity, frame.times, consumption, demand, masks, labels)
