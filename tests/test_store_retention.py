"""Retention: raw readings older than N days give way to 30-minute rollups, and reads of the old range give the
same answers as before (means, extremes, firsts and lasts, counts, consumption across a rollover and a swap)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import numpy as np
import pytest

from bems.store import Store, open_store
from bems.store.base import to_ms
from bems.store.influx import InfluxV1Store
from bems.wire import Reading

NOW = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
START = NOW - dt.timedelta(days=3)
STEP = dt.timedelta(minutes=10)
H = dt.timedelta(hours=1)
WRAP = 2**32 * 0.01
TEHRAN_DAY = dt.timedelta(hours=20, minutes=30)  # Tehran midnight is 20:30 UTC


@pytest.fixture(params=["sqlite", "influx"])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[Store]:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        s = open_store(f"sqlite:///{tmp_path}/store.db")
    else:
        s = open_store(request.getfixturevalue("influxd").url("retention"))
    yield s
    s.close()


def history() -> list[Reading]:
    rng = np.random.default_rng(7)
    n = int((NOW - START) / STEP)
    power = 20_000 + 5_000 * np.sin(np.arange(n) / 20) + rng.normal(0, 300, n)
    energy = np.cumsum(power / 6 / 1000) + 50_000.0
    energy[200:] -= energy[199] - 0.5  # the meter is replaced at step 200 and counts from 0.5
    pulses = (2**32 - 3000 + np.cumsum(rng.integers(5, 50, n))) % 2**32  # wraps early on
    out = []
    for i in range(n):
        ts = START + i * STEP
        out.append(Reading(meter="b1.elec", building="b1", edge="e", ts=ts, seq=i,
                           values={"power_w": round(float(power[i]), 3), "energy_kwh": round(float(energy[i]), 4)}))
        out.append(Reading(meter="b1.water", building="b1", edge="e", ts=ts, seq=10**6 + i,
                           values={"volume_m3": int(pulses[i]) / 100}))
    return out


def snapshot(store: Store, end: dt.datetime) -> dict[str, np.ndarray]:
    meters = ["b1.elec", "b1.water"]
    out = {f"power {agg}": store.read_matrix(meters, "power_w", START, end, H, agg).values
           for agg in ("mean", "min", "max", "sum", "count", "first", "last")}
    day0 = START.replace(hour=0, minute=0) + TEHRAN_DAY
    out["power daily mean (Tehran days)"] = store.read_matrix(meters, "power_w", day0, day0 + dt.timedelta(days=1),
                                                              dt.timedelta(days=1), "mean").values
    out["energy hourly"] = store.read_consumption(meters, "energy_kwh", START + H, end, H).values
    out["water hourly"] = store.read_consumption(meters, "volume_m3", START + H, end, H).values
    return out


def test_retention_keeps_old_answers_from_rollups(store: Store) -> None:
    store.register_counters({("b1.water", "volume_m3"): WRAP, ("b1.elec", "energy_kwh"): None})
    readings = history()
    store.write(readings)
    old_end = NOW - dt.timedelta(days=1, hours=2)  # wholly before the cut on every backend
    before = snapshot(store, old_end)
    assert np.isfinite(before["water hourly"][1]).sum() > 40  # the old range has real consumption in it
    assert np.nanmin(before["energy hourly"][0]) > 0  # across the swap, too
    deleted = store.enforce_retention(dt.timedelta(days=1), now=NOW)
    if isinstance(store, InfluxV1Store):  # InfluxDB drops expired shards on its own schedule: do it now
        store.query(f"DELETE FROM reading WHERE time < {to_ms(NOW - dt.timedelta(days=1))}ms")
        assert store.count() == sum(r.ts >= NOW - dt.timedelta(days=1) for r in readings)
    after = snapshot(store, old_end)
    for name, values in before.items():
        np.testing.assert_allclose(after[name], values, rtol=1e-9, atol=1e-6, err_msg=name)
    if deleted:  # SQLite deletes at once; InfluxDB drops expired shards on its own schedule
        cut = NOW - dt.timedelta(days=1)
        assert store.count() == sum(r.ts >= cut for r in readings)
        assert store.points("b1.elec", "power_w", START, cut).values.size == 0
        fresh = store.read_matrix(["b1.elec"], "power_w", cut, NOW, H, "count").values
        assert np.nansum(fresh) == sum(r.ts >= cut and r.meter == "b1.elec" for r in readings)
    assert store.enforce_retention(dt.timedelta(days=1), now=NOW) == 0  # nothing more to do
