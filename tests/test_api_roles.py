"""Acceptance 2: every route, walked with every role over HTTP, answers 401, 403 or 200 as it should.

Who may see what is written out here by hand from the demo fleet, not asked of the code under test. A route
missing from ``ROUTES`` fails the walk, so a new route cannot skip it.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bems.tariff import default_tariffs
from tests.apistack import Stack, start_stack

HQ, EDU, MASHHAD = "tehran-moi-hq", "tehran-edu-office", "mashhad-gov-office"
METERS = [f"{HQ}.main-elec", f"{HQ}.water", f"{EDU}.gas", f"{MASHHAD}.main-elec", f"{MASHHAD}.water"]
BUILDINGS = [HQ, EDU, MASHHAD]
# what each role sees, by hand (the demo fleet: HQ has electricity + water, EDU electricity + gas, MASHHAD
# electricity + water; MASHHAD is the only building in Mashhad)
SEES_METER = {
    "admin": set(METERS),
    "fm": {f"{HQ}.main-elec", f"{HQ}.water"},
    "utility": {f"{HQ}.water", f"{MASHHAD}.water"},
    "utility_mashhad": {f"{MASHHAD}.main-elec"},
    "nobody": set(),
}
SEES_BUILDING = {"admin": set(BUILDINGS), "fm": {HQ}, "utility": {HQ, MASHHAD}, "utility_mashhad": {MASHHAD},
                 "nobody": set()}
ROLES = list(SEES_METER)

# route template -> (kind of the thing it touches, query parameters, JSON body)
# kind: "any" (every token), "admin" (admin only), "building", "meter", "alert"
ROUTES: dict[tuple[str, str], tuple[str, dict[str, str], dict[str, str] | str | None]] = {
    ("GET", "/api/v1/buildings"): ("any", {}, None),
    ("GET", "/api/v1/buildings/{building_id}"): ("building", {}, None),
    ("GET", "/api/v1/buildings/{building_id}/meters"): ("building", {}, None),
    ("GET", "/api/v1/buildings/{building_id}/latest"): ("building", {}, None),
    ("GET", "/api/v1/buildings/{building_id}/kpis"): ("building", {}, None),
    ("GET", "/api/v1/buildings/{building_id}/savings"): ("building", {}, None),
    ("GET", "/api/v1/buildings/{building_id}/dashboard"): ("building", {"days": "7"}, None),
    ("GET", "/api/v1/meters"): ("any", {}, None),
    ("GET", "/api/v1/meters/{meter_id}"): ("meter", {}, None),
    ("GET", "/api/v1/meters/{meter_id}/series"): ("meter", {"field": "{field}", "bucket": "1h"}, None),
    ("GET", "/api/v1/alerts"): ("any", {}, None),
    ("GET", "/api/v1/alerts/{alert_id}"): ("alert", {}, None),
    ("POST", "/api/v1/alerts/{alert_id}/ack"): ("alert", {}, None),
    ("POST", "/api/v1/alerts/{alert_id}/resolve"): ("alert", {}, None),
    ("GET", "/api/v1/alerts/{alert_id}/comments"): ("alert", {}, None),
    ("POST", "/api/v1/alerts/{alert_id}/comments"): ("alert", {}, {"text": "checked on site"}),
    ("GET", "/api/v1/portfolio"): ("any", {}, None),
    ("GET", "/api/v1/stream"): ("any", {}, None),
    ("GET", "/api/v1/exports/series"): ("meter", {"meters": "{meter_id}", "field": "{field}"}, None),
    ("GET", "/api/v1/exports/alerts"): ("any", {"format": "xlsx"}, None),
    ("GET", "/api/v1/metrics"): ("admin", {}, None),
    ("GET", "/api/v1/audit"): ("admin", {}, None),
    ("GET", "/api/v1/tariffs"): ("any", {}, None),
    ("PUT", "/api/v1/tariffs"): ("admin", {}, "tariffs"),
    ("DELETE", "/api/v1/tariffs"): ("admin", {}, None),
}
# routes that also take a building or meter filter: walked once more per target with it
FILTERED = {("GET", "/api/v1/alerts"): "building", ("GET", "/api/v1/stream"): "building",
            ("GET", "/api/v1/meters"): "building", ("GET", "/api/v1/exports/alerts"): "building"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # the walk sends a wrong token to every route: far past the failed-token lockout, which has its own test
    s = start_stack(tmp_path_factory.mktemp("roles"), history_days=3, live=False, auth_fail_limit=100_000)
    yield s
    s.close()


def field_of(meter: str) -> str:
    return "volume_m3" if meter.endswith(("water", "gas")) else "energy_kwh"


def fresh_alert(stack: Stack, meter: str, n: int) -> int:
    """A new open alert on ``meter`` for each call, so ack/resolve by one role do not change another's answer."""
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(hours=n)
    commodity = "water" if meter.endswith("water") else "gas" if meter.endswith("gas") else "electricity"
    alert, _ = stack.state.upsert_alert(building=meter.split(".")[0], meter=meter, commodity=commodity,
                                        type="after_hours", start=start, end=start + dt.timedelta(hours=1),
                                        excess=1.0, unit="kWh", severity="warning", message="")
    return alert.id


def call(client: httpx.Client, method: str, path: str, params: dict[str, str], body: object) -> int:
    if path.endswith("/stream"):
        with client.stream(method, path, params=params) as r:
            if r.status_code == 200:
                first = next(r.iter_lines())
                assert first.startswith("retry:"), first
            return r.status_code
    return client.request(method, path, params=params, json=body).status_code


def cases(stack: Stack) -> Iterator[tuple[str, str, str, dict[str, str], dict | None, str | None, str]]:
    """(method, template, path, params, body, target, kind) for every route and target."""
    n = itertools.count()
    for (method, template), (kind, params, body) in ROUTES.items():
        targets: list[str | None] = {"building": BUILDINGS, "meter": METERS, "alert": METERS}.get(kind, [None])
        for target in targets:
            ids = {"building_id": target or "", "meter_id": target or "", "field": field_of(target or "")}
            if kind == "alert":
                ids["alert_id"] = str(fresh_alert(stack, target or "", next(n)))
            path = template.format(**ids)
            if body == "tariffs":  # the shipped book, sent back unchanged
                body = default_tariffs().model_dump(mode="json", by_alias=True)
            yield method, template, path, {k: v.format(**ids) for k, v in params.items()}, body, target, kind
        if (method, template) in FILTERED:
            for b in BUILDINGS:
                yield method, template, template, {**params, "building": b}, body, b, "building"


def expected(role: str, kind: str, target: str | None, method: str, template: str) -> int:
    ok = 201 if method == "POST" and template.endswith("/comments") else 200
    if kind == "any":
        return ok
    if kind == "admin":
        return ok if role == "admin" else 403
    if kind == "building":
        return ok if target in SEES_BUILDING[role] else 403
    return ok if target in SEES_METER[role] else 403  # meter, and alerts by their meter


def test_every_route_with_every_role(stack: Stack) -> None:
    spec = httpx.get(stack.url + "/openapi.json").json()
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops if p != "/api/v1/health"}
    assert documented == set(ROUTES), "add the new route to ROUTES with who may call it"
    clients = {role: stack.client(role) for role in ROLES}
    clients["anonymous"] = stack.client(None)
    clients["bad-token"] = httpx.Client(base_url=stack.url, headers={"Authorization": "Bearer bems_nope"})
    walked, wrong = 0, []
    try:
        for method, template, path, params, body, target, kind in cases(stack):
            for who, client in clients.items():
                want = 401 if who in ("anonymous", "bad-token") else expected(who, kind, target, method, template)
                got = call(client, method, path, params, body)
                walked += 1
                if got != want:
                    wrong.append(f"{who:16} {method} {path} {params}: {got}, expected {want}")
    finally:
        for c in clients.values():
            c.close()
    print(f"role walk: {walked} requests over {len(ROUTES)} routes and {len(clients)} callers")
    assert wrong == [], "\n".join(wrong)
    assert walked > 300


def test_health_is_open_and_says_little(stack: Stack) -> None:
    r = httpx.get(stack.url + "/api/v1/health")
    assert r.status_code == 200 and set(r.json()) == {"status", "store", "state"}


def test_scoped_lists_hold_only_what_the_role_sees(stack: Stack) -> None:
    for role in ROLES:
        with stack.client(role) as c:
            meters = {m["id"] for m in c.get("/api/v1/meters", params={"limit": 1000}).json()}
            want = {m.id for m in stack.fleet.meters if m.id in SEES_METER[role]
                    or (role == "admin") or (role == "fm" and m.building == HQ)
                    or (role == "utility" and m.commodity == "water")
                    or (role == "utility_mashhad" and m.building == MASHHAD and m.commodity == "electricity")}
            assert meters == want, role
            buildings = {b["id"] for b in c.get("/api/v1/buildings").json()}
            assert buildings == SEES_BUILDING[role], role
            portfolio = {r["building"] for r in c.get("/api/v1/portfolio").json()["items"]}
            assert portfolio == SEES_BUILDING[role], role
            alerts = c.get("/api/v1/alerts", params={"limit": 500}).json()["items"]
            assert all(a["meter"] in want for a in alerts), role


def test_placeholder_password_in_a_database_url_is_refused(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.apistack import DEMO_FLEET

    r = subprocess.run([sys.executable, "-m", "api", "--config", str(DEMO_FLEET), "--store",
                        f"sqlite:///{tmp_path}/r.db"], capture_output=True, text=True, timeout=60,
                       env={"BEMS_API_DB": "postgresql+psycopg://bems:changeme@127.0.0.1/bems", "PATH": ""})
    assert r.returncode == 2
    assert "BEMS_API_DB" in r.stderr and "placeholder" in r.stderr
    assert "changeme" not in r.stderr.replace("BEMS_API_DB", "")
