"""``bems verify`` throughput: readings/s on the seal path and on the full-signature path (SQLite store).

The target workload is a month of 1,000 meters at 1-minute resolution (43.2M readings). Generating and signing
that takes far longer than a benchmark should, so a proportional slice is
measured: a whole month of a few meters, same days and resolution, signed readings written in batches through
the store. Verify works meter-day by meter-day, so its rate does not depend on the number of meters; the month
is estimated from the measured rate, and both are printed, labelled.

Prints figures only: verify throughput has no target (``bench/integrity.py`` prints the ingest goal).

    python bench/verify_throughput.py [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: import the project's packages, not bench/*.py of the same name
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import datetime as dt
import tempfile
import time

import numpy as np

from bems.fleet import load_fleet
from bems.seal import load_seal_key, seal_pass
from bems.signing import generate_key
from bems.state import StateDB
from bems.store import open_store
from bems.verify import verify_building
from bems.wire import Reading, sign_readings
from tests.stages import write_fleet

MONTH_METERS, DAYS, PER_DAY = 1000, 30, 1440
MONTH_POINTS = MONTH_METERS * DAYS * PER_DAY
START = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
B = "bench-hq"


def _fleet(tmp: Path, meters: int, public_key: str) -> Path:
    return write_fleet(tmp / "fleet.yaml",
                       [{"id": B, "name": "Bench HQ", "city": "Tehran", "floor_area_m2": 5000}],
                       [{"id": f"{B}.m{i}", "building": B, "commodity": "electricity",
                         "device": {"port": 1502, "device_id": i + 1, "profile": "sdm630"}} for i in range(meters)],
                       [{"id": "edge-bench", "building": B, "public_keys": [public_key]}])


def _generate(store_url: str, meters: int, signer, batch: int = 20_000) -> int:  # type: ignore[no-untyped-def]
    """Signed readings of ``meters`` meters for DAYS days, written in batches; returns how many. Each minute's
    readings of all meters are signed together, as the edge's queue signs one poll round."""
    rng = np.random.default_rng(1)
    minutes = DAYS * PER_DAY
    power = rng.uniform(1e3, 9e4, (meters, minutes)).tolist()
    energy = np.cumsum(rng.uniform(0, 2, (meters, minutes)), axis=1).tolist()
    n = 0
    with open_store(store_url) as store:
        pending: list[Reading] = []
        for k in range(minutes):
            t = START + dt.timedelta(minutes=k)
            pending += sign_readings([
                Reading.model_construct(v=1, meter=f"{B}.m{m}", building=B, edge="edge-bench", ts=t,
                                        seq=k * meters + m, values={"power_w": power[m][k],
                                                                    "energy_kwh": energy[m][k]},
                                        quality="good", kid=None, sig=None, proof=None)
                for m in range(meters)], signer)
            if len(pending) >= batch:
                n += store.write(pending).written
                pending = []
        if pending:
            n += store.write(pending).written
    return n


def measure(quick: bool) -> list[str]:
    meters = 2 if quick else 12
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp_dir:
        tmp = Path(tmp_dir)
        signer = generate_key(tmp / "edge.key")
        fleet = load_fleet(_fleet(tmp, meters, signer.public_key))
        url, db = f"sqlite:///{tmp / 'readings.db'}", f"sqlite:///{tmp / 'state.db'}"
        t = time.perf_counter()
        points = _generate(url, meters, signer)
        gen_s = time.perf_counter() - t
        key = load_seal_key("bench-" + "k" * 40, None)
        assert key is not None
        end = START + dt.timedelta(days=DAYS)
        with open_store(url) as store:
            state = StateDB(db)
            t = time.perf_counter()
            report = seal_pass(store, state, fleet, key, until=end, since=START)
            seal_s = time.perf_counter() - t
            assert report.sealed == meters * DAYS and not report.held, report
            by_seal = verify_building(store, state, fleet, B, START, end, key=key)
            full = verify_building(store, state, fleet, B, START, end, key=key, full=True)
            state.close()
        assert by_seal.exit_code == 0 and by_seal.by_seal == points, by_seal.lines()
        assert full.exit_code == 0 and full.by_signature == points, full.lines()
    lines.append(f"slice measured: {meters} meters x {DAYS} days x 1-minute = {points:,} signed readings "
                 f"(generated, signed and written in {gen_s:.1f} s)")
    lines.append(f"sealing (signatures checked, then digest): {points / seal_s:,.0f} readings/s")
    for name, r in (("seal path", by_seal), ("full-signature path", full)):
        month_min = MONTH_POINTS / r.rate / 60
        lines.append(f"verify {name}: measured {r.rate:,.0f} readings/s on the slice; estimated for a month of "
                     f"{MONTH_METERS:,} meters ({MONTH_POINTS / 1e6:.1f}M readings): {month_min:,.0f} min")
    return lines


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller slice (2 meters instead of 12)")
    for line in measure(parser.parse_args().quick):
        print(line)
