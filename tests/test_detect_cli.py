"""`bems detect` on a CSV export: every row scored, injected anomalies found, bad rows named or skipped."""

from __future__ import annotations

import csv
import datetime as dt
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bems.fleet import load_fleet
from simulators.model import fleet_model

ROOT = Path(__file__).resolve().parents[1]


def export(tmp_path: Path, seed: int) -> tuple[Path, dict[str, int], int]:
    """Four weeks of hourly consumption of the demo fleet, with a spike and a flatline written in."""
    fleet = load_fleet(ROOT / "bems/demo_fleet.yaml")
    model = fleet_model(fleet, seed=seed, meters=[m for m in fleet.meters if m.commodity != "weather"])
    start = dt.datetime(2026, 10, 3, 20, 30, tzinfo=dt.UTC)  # Saturday 00:00 Tehran
    h = model.history(start, start + dt.timedelta(days=28), dt.timedelta(hours=1))
    x = np.diff(h.counter, axis=1, prepend=(h.counter[:, :1] - h.rate[:, :1]))
    rng = np.random.default_rng(seed)
    spike_at = int(rng.integers(24 * 15, 24 * 27))
    x[0, spike_at] *= 6
    x[1, 24 * 20 + 9:24 * 20 + 17] = 0.0  # eight hours of a stuck register in working time
    path = tmp_path / "readings.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["series_id", "timestamp", "value"])
        for r, sid in enumerate(h.meters):
            for c, t in enumerate(h.times):
                w.writerow([sid, f"{np.datetime_as_string(t, unit='s')}Z", f"{x[r, c]:.4f}"])
    return path, {"spike": spike_at, "flatline": 24 * 20 + 9}, len(h.meters) * h.times.size


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bems.cli", "detect", *args], capture_output=True, text=True,
                          timeout=120)


def test_detect_csv_scores_every_row_and_finds_injected(tmp_path: Path) -> None:
    path, at, n = export(tmp_path, seed=11)
    out = tmp_path / "flags.csv"
    res = run_cli("--input", str(path), "--output", str(out))
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == n
    assert list(rows[0]) == ["series_id", "timestamp", "score", "is_anomaly", "type"]
    by_series: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_series.setdefault(r["series_id"], []).append(r)
    first, second = list(by_series)[:2]
    assert by_series[first][at["spike"]]["type"] == "spike"
    assert by_series[first][at["spike"]]["is_anomaly"] == "true"
    assert float(by_series[first][at["spike"]]["score"]) >= 1
    assert all(r["type"] == "flatline" for r in by_series[second][at["flatline"]:at["flatline"] + 8])
    flagged = sum(r["is_anomaly"] == "true" for r in rows)
    assert flagged < 0.02 * n, f"{flagged} of {n} rows flagged: too noisy"


def test_bad_line_is_named_or_skipped(tmp_path: Path) -> None:
    path, _, n = export(tmp_path, seed=12)
    lines = path.read_text().splitlines()
    lines.insert(5, "tehran-moi-hq.main-elec,2026-10-05 nonsense,1.0")
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "flags.csv"
    res = run_cli("--input", str(path), "--output", str(out))
    assert res.returncode == 2
    assert "line 6" in res.stderr and "not ISO 8601" in res.stderr and "--skip-bad" in res.stderr
    res = run_cli("--input", str(path), "--output", str(out), "--skip-bad")
    assert res.returncode == 0, res.stderr
    assert "1 skipped" in res.stdout
    assert sum(1 for _ in out.open()) - 1 == n


def test_irregular_interval_is_named(tmp_path: Path) -> None:
    path = tmp_path / "irregular.csv"
    path.write_text("series_id,timestamp,value\n" + "".join(
        f"s1,2026-11-01T{h:02d}:{'17' if h == 5 else '00'}:00+03:30,1.0\n" for h in range(10)))
    res = run_cli("--input", str(path), "--output", str(tmp_path / "o.csv"))
    assert res.returncode == 2
    assert "line 7" in res.stderr and "irregular" in res.stderr


@pytest.mark.parametrize("header", ["id,time,value", ""])
def test_wrong_header(tmp_path: Path, header: str) -> None:
    path = tmp_path / "h.csv"
    path.write_text(header + "\n" if header else "")
    res = run_cli("--input", str(path), "--output", str(tmp_path / "o.csv"))
    assert res.returncode == 2 and "line 1: expected the header series_id,timestamp,value" in res.stderr
