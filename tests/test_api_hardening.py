"""API hardening over real HTTP: the failed-token lockout, CORS closed unless listed, security headers, the audit
log of every write action; and the stages refusing placeholder or missing secrets and keeping secrets out of
their logs (real processes, ``python -m api`` and ``python -m collector``)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.app import STATIC_DIR
from api.ratelimit import FailedAuthLimiter
from bems.services import Mosquitto, free_port
from bems.state import StateDB
from bems.tariff import default_tariffs
from tests.apistack import DEMO_FLEET, Stack, start_stack
from tests.stages import StageProcess, wait_for

HQ_ELEC = "tehran-moi-hq.main-elec"
ALLOWED = "https://energy.example.ir"
OTHER = "https://evil.example.com"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("harden"), history_days=1, live=False)
    yield s
    s.close()


@pytest.fixture(scope="module")
def cors_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("cors"), history_days=0.5, live=False, cors_origins=[ALLOWED])
    yield s
    s.close()


def client_from(stack: Stack, address: str, token: str | None) -> httpx.Client:
    """A client whose connections leave from ``address`` (any of 127.0.0.0/8), so the server sees another peer."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=stack.url, headers=headers, timeout=30,
                        transport=httpx.HTTPTransport(local_address=address))


# 1. failed-token lockout ------------------------------------------------------------------------------------
def test_invalid_tokens_lock_out_that_address_only(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    guesses = [f"bems_guess-{i:02d}-ffffffffffffffffffffffff" for i in range(10)]
    with client_from(stack, "127.0.0.2", None) as attacker:
        for guess in guesses:  # the limit (10 per minute by default) is reached, each still a plain 401
            r = attacker.get("/api/v1/buildings", headers={"Authorization": f"Bearer {guess}"})
            assert r.status_code == 401, r.text
        r = attacker.get("/api/v1/buildings", headers={"Authorization": "Bearer bems_one-more-guess"})
        assert r.status_code == 429, r.text
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        # locked out, even a valid token is refused before it is checked
        r = attacker.get("/api/v1/buildings", headers={"Authorization": f"Bearer {stack.tokens['admin']}"})
        assert r.status_code == 429
        assert attacker.get("/api/v1/health").status_code == 200  # no token, no lockout
    with client_from(stack, "127.0.0.3", stack.tokens["admin"]) as other:
        assert other.get("/api/v1/buildings").status_code == 200
        assert other.get("/api/v1/buildings", headers={"Authorization": "Bearer bems_typo"}).status_code == 401
    lockouts = [r.getMessage() for r in caplog.records if r.name == "api.ratelimit"]
    assert len(lockouts) == 1 and "127.0.0.2" in lockouts[0], lockouts
    assert not [g for g in [*guesses, "bems_one-more-guess", stack.tokens["admin"]] if g in caplog.text]


def test_lockout_window_slides() -> None:
    now = [1000.0]
    limiter = FailedAuthLimiter(3, 60, clock=lambda: now[0])
    for _ in range(3):
        assert limiter.retry_after("a") is None
        limiter.failed("a")
        now[0] += 10
    assert limiter.retry_after("a") == 30  # the first failure (t=1000) leaves the window at t=1060
    assert limiter.retry_after("b") is None
    now[0] = 1060.5
    assert limiter.retry_after("a") is None  # two failures left in the window
    limiter.failed("a")
    assert limiter.retry_after("a") == 10  # ceil(1010 + 60 - 1060.5): the oldest of the three in the window


def test_tracked_addresses_are_bounded() -> None:
    limiter = FailedAuthLimiter(1, 60, max_clients=100)
    for i in range(1000):
        limiter.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter._failures) == 100
    assert limiter.retry_after("10.0.3.231") is not None and limiter.retry_after("10.0.0.0") is None


# 2. CORS ----------------------------------------------------------------------------------------------------
def preflight(stack: Stack, origin: str) -> httpx.Response:
    return httpx.options(stack.url + "/api/v1/buildings", headers={
        "Origin": origin, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})


def test_cors_is_closed_by_default(stack: Stack) -> None:
    for origin in (ALLOWED, OTHER):
        r = preflight(stack, origin)
        assert not [h for h in r.headers if h.lower().startswith("access-control-")], dict(r.headers)
        with stack.client() as c:
            got = c.get("/api/v1/buildings", headers={"Origin": origin})
        assert got.status_code == 200 and "access-control-allow-origin" not in got.headers


def test_cors_allows_listed_origins_only(cors_stack: Stack) -> None:
    r = preflight(cors_stack, ALLOWED)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ALLOWED
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in r.headers  # bearer tokens, never cookies
    with cors_stack.client() as c:
        got = c.get("/api/v1/buildings", headers={"Origin": ALLOWED})
        assert got.headers["access-control-allow-origin"] == ALLOWED
        assert "x-total-count" in got.headers["access-control-expose-headers"].lower()
        other = c.get("/api/v1/buildings", headers={"Origin": OTHER})
        assert "access-control-allow-origin" not in other.headers
    refused = preflight(cors_stack, OTHER)
    assert refused.headers.get("access-control-allow-origin") != OTHER
    assert "access-control-allow-origin" not in refused.headers


def test_cors_origins_must_be_plain_origins(tmp_path: Path) -> None:
    from api.settings import ApiSettings

    for bad in ("*", "energy.example.ir", "https://energy.example.ir/app"):
        with pytest.raises(ValueError, match="cors origin"):
            ApiSettings(fleet=DEMO_FLEET, cors_origins=[bad])
    assert ApiSettings(fleet=DEMO_FLEET, cors_origins=[ALLOWED + "/"]).cors_origins == [ALLOWED]


# 3. security headers ----------------------------------------------------------------------------------------
def csp_directives(value: str) -> dict[str, list[str]]:
    out = {}
    for part in value.split(";"):
        words = part.split()
        if words:
            out[words[0]] = words[1:]
    return out


@pytest.mark.parametrize("path,who", [("/", None), ("/app.js", None), ("/vendor/uplot/uPlot.min.css", None),
                                      ("/docs", None), ("/api/v1/buildings", "admin"),
                                      ("/api/v1/buildings", None), ("/api/v1/nothing-here", None)])
def test_security_headers_on_every_kind_of_response(stack: Stack, path: str, who: str | None) -> None:
    with stack.client(who) as c:
        r = c.get(path)
    assert r.status_code in (200, 401, 404), r.status_code
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert r.headers["X-Frame-Options"] == "DENY"
    csp = csp_directives(r.headers["Content-Security-Policy"])
    assert csp["default-src"] == ["'self'"] and csp["script-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"] and csp["object-src"] == ["'none'"]
    sources = [s for values in csp.values() for s in values]
    assert not [s for s in sources if "://" in s or s in ("*", "https:", "http:")], "no external origins"
    assert "'unsafe-eval'" not in sources and "'unsafe-inline'" not in csp["script-src"]


def test_static_html_has_no_inline_script_or_handlers() -> None:
    pages = sorted(STATIC_DIR.rglob("*.html"))
    assert STATIC_DIR / "index.html" in pages and STATIC_DIR / "docs.html" in pages
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"<script\b([^>]*)>(.*?)</script\s*>", text, flags=re.S | re.I):
            assert re.search(r"\bsrc\s*=", m.group(1)) and not m.group(2).strip(), f"{page}: inline script"
        handlers = re.findall(r"<[^>]*\s(on[a-z]+)\s*=", text, flags=re.I)
        assert not handlers, f"{page}: inline event handlers {handlers}"
        assert not re.search(r"\b(href|src)\s*=\s*[\"']\s*javascript:", text, flags=re.I), page
    for script in STATIC_DIR.glob("*.js"):
        code = script.read_text(encoding="utf-8")
        assert not re.search(r"\beval\(|new Function\(|\.on[a-z]+\s*=\s*[\"']", code), script


# 4. audit log -----------------------------------------------------------------------------------------------
def test_every_write_action_is_audited_with_its_actor(stack: Stack, tmp_path: Path) -> None:
    before = {e.id for e in stack.state.audit_log(limit=10_000)}
    alert = stack.alerts[0]  # on tehran-moi-hq: the facility manager may work on it
    leaked = stack.tokens["admin"]
    with stack.client("fm") as fm, stack.client("admin") as admin:
        assert fm.post(f"/api/v1/alerts/{alert}/ack").status_code == 200
        assert fm.post(f"/api/v1/alerts/{alert}/comments",
                       json={"text": f"valve closed; my token was {leaked}"}).status_code == 201
        assert admin.post(f"/api/v1/alerts/{alert}/resolve").status_code == 200
        book = default_tariffs().model_dump(mode="json", by_alias=True)
        assert admin.put("/api/v1/tariffs", json=book).status_code == 200
        assert admin.delete("/api/v1/tariffs").status_code == 200
    db = stack.state.engine.url.render_as_string(hide_password=False)
    cli = [str(Path(sys.executable).with_name("bems")), "users"]  # the installed command, as an operator runs it
    made = subprocess.run([*cli, "create", "--name", "audit-probe", "--role", "admin", "--db", db],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    new_token = made.stdout.strip().splitlines()[-1]
    assert new_token.startswith("bems_")
    revoked = subprocess.run([*cli, "revoke", "--name", "audit-probe", "--db", db],
                             capture_output=True, text=True, timeout=60)
    assert revoked.returncode == 0, revoked.stderr

    entries = [e for e in stack.state.audit_log(limit=10_000) if e.id not in before]
    got = {(e.action, e.actor, e.target) for e in entries}
    target = f"alert:{alert}"
    for expected in (("alert.acknowledged", "hq-manager", target), ("alert.comment", "hq-manager", target),
                     ("alert.resolved", "ops", target), ("tariffs.update", "ops", "tariffs"),
                     ("tariffs.reset", "ops", "tariffs")):
        assert expected in got, (expected, got)
    cli_entries = {e.action: e.actor for e in entries if e.target == "audit-probe"}
    assert set(cli_entries) == {"token.create", "token.revoke"}, got
    assert all(actor.startswith("cli") for actor in cli_entries.values())
    assert all(e.at is not None for e in entries)
    tokens = [*stack.tokens.values(), new_token]
    for e in stack.state.audit_log(limit=10_000):
        row = " ".join((e.actor, e.action, e.target, e.detail))
        assert not [t for t in tokens if t in row], f"a token reached the audit log: {e.action}"
    with stack.client("admin") as admin:  # the API shows the same entries, newest first
        items = admin.get("/api/v1/audit", params={"limit": 10}).json()["items"]
    assert items[0]["action"] == "token.revoke" and items[0]["actor"].startswith("cli")


# 5. placeholder or missing secrets --------------------------------------------------------------------------
def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEMS_") and k != "INFLUXDB_V2_TOKEN"}
    return {**env, **extra}


def start(module: str, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, "--config", str(DEMO_FLEET), *args],
                          capture_output=True, text=True, timeout=60, env=env, cwd=cwd)


INFLUX2 = "influx2://127.0.0.1:9/bems?org=gov"
CASES = {
    "api-db-password": ("api", [], {"BEMS_API_DB": "postgresql+psycopg://bems:changeme@127.0.0.1/bems"},
                        "BEMS_API_DB"),
    "api-store-password": ("api", [], {"BEMS_API_STORE": "influx://bems:secret@127.0.0.1:8086/bems"},
                           "BEMS_API_STORE"),
    "api-influx2-no-token": ("api", ["--store", INFLUX2], {}, "INFLUXDB_V2_TOKEN"),
    "api-influx2-placeholder": ("api", ["--store", INFLUX2], {"INFLUXDB_V2_TOKEN": "changeme"}, "INFLUXDB_V2_TOKEN"),
    "collector-broker-url": ("collector", ["--broker", "mqtt://bems:password@127.0.0.1:1883"], {},
                             "BEMS_COLLECTOR_BROKER__URL"),
    "collector-broker-password": ("collector", ["--broker-username", "bems"],
                                  {"BEMS_COLLECTOR_BROKER__PASSWORD": "changeme"}, "BEMS_COLLECTOR_BROKER__PASSWORD"),
    "collector-broker-no-password": ("collector", ["--broker-username", "bems"], {},
                                     "BEMS_COLLECTOR_BROKER__PASSWORD"),
    "collector-anonymous": ("collector", [], {}, "BEMS_COLLECTOR_ALLOW_ANONYMOUS_BROKER"),
    "collector-influx2-no-token": ("collector", ["--store", INFLUX2, "--allow-anonymous-broker"], {},
                                   "BEMS_COLLECTOR_INFLUX_TOKEN"),
    "collector-influx2-placeholder": ("collector", ["--store", INFLUX2, "--allow-anonymous-broker"],
                                      {"BEMS_COLLECTOR_INFLUX_TOKEN": "secret"}, "BEMS_COLLECTOR_INFLUX_TOKEN"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_stage_refuses_placeholder_or_missing_secret(case: str, tmp_path: Path) -> None:
    module, args, env, setting = CASES[case]
    r = start(module, args, clean_env(**env), tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert setting in r.stderr, r.stderr
    assert not (tmp_path / "bems-data").exists(), "refused before opening anything"


def test_real_secrets_or_the_explicit_opt_out_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    from collector.__main__ import setup

    monkeypatch.delenv("BEMS_COLLECTOR_ALLOW_ANONYMOUS_BROKER", raising=False)
    s = setup(["--config", str(DEMO_FLEET), "--allow-anonymous-broker"])
    assert s.allow_anonymous_broker and s.broker.username is None
    monkeypatch.setenv("BEMS_COLLECTOR_BROKER__PASSWORD", "a-real-Secret-7")
    monkeypatch.setenv("BEMS_COLLECTOR_INFLUX_TOKEN", "a-real-token-7")
    s = setup(["--config", str(DEMO_FLEET), "--broker-username", "bems", "--store", INFLUX2])
    assert not s.allow_anonymous_broker and s.broker.password is not None


# 6. secrets never logged ------------------------------------------------------------------------------------
def test_secrets_stay_out_of_debug_logs(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "mosquitto")  # anonymous: it accepts and ignores the credentials
    try:
        broker.start()
    except FileNotFoundError:
        pytest.skip("mosquitto not installed")
    password, influx_token = "pw-Zq81-known-broker-secret", "tok-Zq81-known-influx-secret"
    store_db = f"sqlite:///{tmp_path}/state.db"
    state = StateDB(store_db)
    api_token = state.create_token("log-probe", "admin")
    state.close()
    port = free_port()
    api = StageProcess("api", ["--config", str(DEMO_FLEET), "--store", f"sqlite:///{tmp_path}/readings.db",
                               "--db", store_db, "--port", str(port), "--log-level", "DEBUG"], tmp_path / "api.log")
    collector = StageProcess(
        "collector", ["--config", str(DEMO_FLEET), "--broker", broker.url, "--broker-username", "bems-collector",
                      "--store", f"influx2://127.0.0.1:{free_port()}/bems?org=gov", "--log-level", "DEBUG",
                      "--data-dir", str(tmp_path / "collector")], tmp_path / "collector.log",
        env={"BEMS_COLLECTOR_BROKER__PASSWORD": password, "BEMS_COLLECTOR_INFLUX_TOKEN": influx_token,
             "BEMS_COLLECTOR_ALLOW_ANONYMOUS_BROKER": "false"})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(url), 30, "the API to answer")
        for token, status in ((api_token, 200), ("bems_Zq81-wrong", 401)):
            r = httpx.get(url + "/api/v1/buildings", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == status
        wait_for(lambda: "subscribes to" in collector.output(), 30, "the collector to start")
        wait_for(lambda: "DEBUG" in collector.output() and "DEBUG" in api.output(), 10, "debug lines")
    finally:
        assert api.stop() == 0
        collector.stop()
        broker.stop()
    logs = api.output() + collector.output()
    for secret in (password, influx_token, api_token, "bems_Zq81-wrong"):
        assert secret not in logs, f"{secret[:6]}... reached a log"
    assert "Zq81" not in logs


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/api/v1/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_stage_logging_masks_every_secret_of_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a library logs (a URL with its password, a header, a traceback), the handlers mask it."""
    from bems.settings import secret_values
    from bems.stage import RedactSecrets
    from collector.settings import CollectorSettings

    monkeypatch.setenv("BEMS_COLLECTOR_BROKER__PASSWORD", "pw-in-env-4417")
    monkeypatch.setenv("BEMS_COLLECTOR_INFLUX_TOKEN", "tok-in-env-4417")
    settings = CollectorSettings(fleet=DEMO_FLEET, broker={"url": "mqtt://127.0.0.1:1883", "username": "c"},
                                 store="influx://bems:url-pw-4417@127.0.0.1:8086/bems")
    assert set(secret_values(settings)) == {"pw-in-env-4417", "tok-in-env-4417", "url-pw-4417"}
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(handler.format(record))  # type: ignore[method-assign]
    handler.addFilter(RedactSecrets(secret_values(settings)))
    logger = logging.getLogger("test.redact")
    logger.addHandler(handler)
    try:
        logger.warning("connecting to %s with %s", settings.store, "tok-in-env-4417")
        try:
            raise ConnectionError("login pw-in-env-4417 refused")
        except ConnectionError:
            logger.exception("broker")
    finally:
        logger.removeHandler(handler)
    text = "\n".join(records)
    assert "influx://bems:***@127.0.0.1:8086/bems" in text and "ConnectionError: login *** refused" in text
    assert "4417" not in text.replace("***", "")
