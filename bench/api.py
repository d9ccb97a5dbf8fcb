"""Building-page latency under load, beside a bare FastAPI endpoint of the same size on the same server.

One uvicorn process serves both: ``GET /api/v1/buildings/{id}/dashboard`` (a month of hourly data for 20 meters
plus KPIs, with bearer-token auth) and ``GET /bench/bare``, a plain FastAPI route returning a constant dict of the
same size (no auth). 50 httpx async clients hit each in alternating rounds; p50/p95/p99 are printed, then the goal.
The page is computed once per building, scope and period and reused for ``cache_ttl_s`` (api/cache.py); its
cold computation time is printed too.

    python bench/api.py [--clients 50] [--requests 1500] [--meters 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUILDING = "bench-hq"


def write_fixture(data: Path, meters: int) -> str:
    """A fleet of one building with ``meters`` electricity meters and 60 days of 15-minute history."""
    import yaml

    from bems.fleet import load_fleet
    from bems.state import StateDB
    from bems.store import open_store
    from simulators.history import backfill, floor_time
    from simulators.model import fleet_model

    fleet_file = data / "fleet.yaml"
    fleet_file.write_text(yaml.safe_dump({
        "buildings": [{"id": BUILDING, "name": "Bench HQ", "city": "Tehran", "floor_area_m2": 20000,
                       "contracted_kw": 3000}],
        "meters": [{"id": f"{BUILDING}.m{i:02d}", "building": BUILDING, "commodity": "electricity",
                    "rated_kw": 150, "device": {"profile": "sdm630"}} for i in range(meters)]}))
    fleet = load_fleet(fleet_file)
    now = dt.datetime.now(dt.UTC)
    step = dt.timedelta(minutes=15)
    with open_store(f"sqlite:///{data}/readings.db") as store:
        backfill(fleet_model(fleet), store, floor_time(now - dt.timedelta(days=60), step), floor_time(now, step))
    state = StateDB(f"sqlite:///{data}/state.db")
    token = state.create_token("bench", "admin")
    state.close()
    return token


def serve(data: Path, port: int) -> None:
    """The server process: the real app plus the bare endpoint, one uvicorn worker, default settings."""
    import uvicorn

    from api.app import create_app
    from api.settings import ApiSettings

    settings = ApiSettings(fleet=data / "fleet.yaml", store=f"sqlite:///{data}/readings.db",
                           db=f"sqlite:///{data}/state.db", port=port)
    app = create_app(settings)
    constant = json.loads((data / "page.json").read_text())

    @app.get("/bench/bare", include_in_schema=False)
    def bare() -> dict:  # type: ignore[type-arg]
        return constant

    # the dashboard's static mount catches every unmatched path; put the bare route before it
    app.router.routes.insert(0, app.router.routes.pop())
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def cold_page_ms(data: Path, n: int = 5) -> tuple[float, int]:
    """Median time to compute the building page without the cache, and its size."""
    from api.auth import Principal
    from api.insights import local_days, page_payload
    from bems.calendar import default_calendar
    from bems.fleet import load_fleet
    from bems.store import open_store
    from bems.tariff import default_tariffs

    fleet = load_fleet(data / "fleet.yaml")
    b = fleet.building_by_id[BUILDING]
    who = Principal("bench", "admin", frozenset())
    t0, t1 = local_days(30, b.timezone)
    times = []
    with open_store(f"sqlite:///{data}/readings.db") as store:
        for _ in range(n):
            start = time.perf_counter()
            body = page_payload(b, fleet, who, store, default_calendar(), default_tariffs(), t0, t1)
            times.append(time.perf_counter() - start)
    (data / "page.json").write_bytes(body)
    return statistics.median(times) * 1000, len(body)


async def hammer(url: str, headers: dict[str, str], clients: int, requests: int) -> tuple[np.ndarray, float, int]:
    latencies: list[float] = []
    sizes: list[int] = []
    left = requests
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=120) as client:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                t0 = time.perf_counter()
                r = await client.get(url)
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    raise RuntimeError(f"{url}: {r.status_code} {r.text[:200]}")
                sizes.append(len(r.content))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
    return np.array(latencies) * 1000, wall, int(np.median(sizes))


def pct(a: np.ndarray) -> tuple[float, float, float]:
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return float(p50), float(p95), float(p99)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--requests", type=int, default=1500, help="requests per endpoint per round")
    p.add_argument("--meters", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(Path(args.serve), args.port)
        return 0

    from bems.services import free_port, wait_port

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        t0 = time.perf_counter()
        token = write_fixture(data, args.meters)
        print(f"fixture: 1 building, {args.meters} meters, 60 days of 15-min readings "
              f"({time.perf_counter() - t0:.1f} s to write)")
        cold_ms, size = cold_page_ms(data)
        print(f"building page computed without cache: median {cold_ms:.0f} ms, {size / 1024:.0f} KiB "
              f"(30 days x 24 h x {args.meters} meters + KPIs)")
        port = free_port()
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(data), "--port", str(port)],
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            wait_port(port, 60)
            base = f"http://127.0.0.1:{port}"
            page_url = f"{base}/api/v1/buildings/{BUILDING}/dashboard"
            auth = {"Authorization": f"Bearer {token}"}
            asyncio.run(hammer(page_url, auth, 5, 20))  # warm up both
            asyncio.run(hammer(f"{base}/bench/bare", {}, 5, 20))
            page_all, bare_all = [], []
            walls = {"page": 0.0, "bare": 0.0}
            for _ in range(args.rounds):
                lat, wall, page_size = asyncio.run(hammer(f"{base}/bench/bare", {}, args.clients, args.requests))
                bare_all.append(lat)
                walls["bare"] += wall
                bare_size = page_size
                lat, wall, page_size = asyncio.run(hammer(page_url, auth, args.clients, args.requests))
                page_all.append(lat)
                walls["page"] += wall
        finally:
            server.terminate()
            server.wait(15)
    page, bare = np.concatenate(page_all), np.concatenate(bare_all)
    n = args.rounds * args.requests
    print(f"\n{args.clients} concurrent clients, {n} requests per endpoint in {args.rounds} alternating rounds")
    print(f"{'endpoint':<16}{'bytes':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'req/s':>9}")
    for name, lat, size in (("building page", page, page_size), ("bare constant", bare, bare_size)):
        p50, p95, p99 = pct(lat)
        rate = n / walls["page" if name == "building page" else "bare"]
        print(f"{name:<16}{size:>9}{p50:>9.1f}{p95:>9.1f}{p99:>9.1f}{rate:>9.0f}")
    ratios = [a / b for a, b in zip(pct(page), pct(bare), strict=True)]
    print(f"ratio page/bare: p50 {ratios[0]:.2f}  p95 {ratios[1]:.2f}  p99 {ratios[2]:.2f}")
    print(f"goal building_page_p99_vs_bare {ratios[2]:.2f} target <= 3")
    return 0


if __name__ == "__main__":
    sys.exit(main())
