"""Acceptance 1: the dashboard in a real browser (Debian's chromium driven by Playwright) against a running stack.

Login, building page with charts, a live update over SSE within 3 s of a new reading in the store, an alert
acknowledged, the language switch (direction and Solar Hijri date), phone width, offline (no request leaves
the server), no CSP violation. Screenshots go to ``test-artifacts/`` (gitignored).
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.quality import CounterTracker
from simulators.faults import Fault
from tests.apistack import Stack, start_stack
from tests.conftest import need

pytest.importorskip("playwright")
from playwright.sync_api import Browser, Page, sync_playwright

from bems.wire import Reading

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
HQ = "tehran-moi-hq"
PERSIAN_YEAR = re.compile("۱۴[۰-۹]{2}")
LATIN_YEAR = re.compile(r"\b14\d\d\b")

pytestmark = pytest.mark.slow


WATER = f"{HQ}.water"
NOW = dt.datetime.now(dt.UTC)
SILENT = (NOW - dt.timedelta(hours=10), NOW - dt.timedelta(hours=8))  # the water meter's link is down: a gap


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("dashboard"), faults=[Fault.make("comm_loss", WATER, *SILENT)])
    yield s
    s.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    need("chromium", "chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=shutil.which("chromium") or CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser, stack: Stack) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="fa-IR")
    pg = context.new_page()
    pg.bems_requests = []  # type: ignore[attr-defined]
    pg.bems_console = []  # type: ignore[attr-defined]
    pg.on("request", lambda r: pg.bems_requests.append(r.url))  # type: ignore[attr-defined]
    pg.on("console", lambda m: pg.bems_console.append(m.text))  # type: ignore[attr-defined]
    pg.on("pageerror", lambda e: pg.bems_console.append(f"page error: {e}"))  # type: ignore[attr-defined]
    yield pg
    context.close()


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def points(page: Page, chart: str) -> int:
    return int(page.eval_on_selector(f"#{chart}", "e => e.dataset.points"))


def wait_points(page: Page, chart: str) -> None:
    page.wait_for_function(f"() => Number(document.getElementById('{chart}').dataset.points) > 0", timeout=20_000)


def login(page: Page, stack: Stack, who: str = "admin") -> None:
    page.goto(stack.url + "/")
    page.wait_for_selector("#login-form")
    page.fill("#token", stack.tokens[who])
    page.keyboard.press("Enter")
    page.wait_for_selector("#portfolio tbody tr", timeout=20_000)


def test_login_building_live_update_ack_and_language(page: Page, stack: Stack) -> None:
    page.goto(stack.url + "/")
    assert page.eval_on_selector("html", "e => [e.dir, e.lang]") == ["rtl", "fa"]
    page.fill("#token", "bems_not-a-token")
    page.keyboard.press("Enter")
    page.wait_for_selector("#message:not([hidden])")
    assert "توکن" in page.inner_text("#message")

    login(page, stack)
    ranked = page.locator("#portfolio tbody tr")
    assert ranked.count() == 3
    shot(page, "01-portfolio-fa")

    # building page: charts with data points
    page.click(f"#portfolio a[href='#/building/{HQ}']")
    for chart in ("live-chart", "profile-chart"):
        wait_points(page, chart)
    assert points(page, "profile-chart") >= 24
    assert page.locator("#live-chart canvas").count() == 1
    assert page.locator("#heatmap td.hm").count() == 7 * 24
    assert page.locator("#tou tbody tr").count() == 3
    assert page.locator("#meters tbody tr").count() == 5  # with the outdoor temperature sensor
    # savings of the last week against the weather-normalized baseline of the four before
    page.wait_for_function("() => document.querySelectorAll('#savings tbody tr th').length >= 2", timeout=20_000)
    assert "tehran-moi-hq.outdoor" in page.inner_text("#savings-note")
    kpi_text = page.inner_text("#kpis")
    assert re.search("[۰-۹]", kpi_text), "numbers are in Persian digits"
    page.wait_for_selector("#stream-state.ok")
    shot(page, "02-building-fa")

    # SSE: a new reading written to the store reaches the page within 3 s
    assert stack.writer is not None
    stack.writer.stop()
    time.sleep(1.2)  # let the last background write drain through the stream
    overrides = {f"{HQ}.main-elec": 777.0, f"{HQ}.hvac-elec": 111.0, f"{HQ}.lighting-elec": 22.0}
    written_at = time.monotonic()
    ts = stack.writer.write_now(overrides)
    iso = ts.strftime("%Y-%m-%dT%H:%M:%SZ")
    page.wait_for_function(f"() => document.getElementById('live-load').dataset.ts === '{iso}'", timeout=3_000)
    arrived = time.monotonic() - written_at
    assert arrived < 3.0
    assert float(page.eval_on_selector("#live-load", "e => e.dataset.kw")) == pytest.approx(910.0)
    assert page.inner_text("#live-load") == "۹۱۰"
    shot(page, "03-building-live-update")

    # alerts inbox: acknowledge one
    page.click("#nav a[href='#/alerts']")
    page.wait_for_selector("#alerts tbody tr[data-alert]")
    page.select_option("#alert-status", "")
    target = stack.alerts[0]
    row = page.locator(f"#alerts tr[data-alert='{target}']")
    row.wait_for()
    assert "st-open" in (row.get_attribute("class") or "")
    row.locator("button").first.click()
    page.wait_for_selector(f"#alerts tr[data-alert='{target}'].st-acknowledged")
    assert stack.state.alert(target).status == "acknowledged"
    assert any(e.action == "alert.acknowledged" and e.target == f"alert:{target}" and e.actor == "ops"
               for e in stack.state.audit_log())
    shot(page, "04-alerts-acknowledged")

    # language: Persian shows a Solar Hijri year in Persian digits; English flips to ltr and keeps the year 14xx
    assert PERSIAN_YEAR.search(page.inner_text("#today")), page.inner_text("#today")
    page.click("#lang-toggle")
    page.wait_for_function("() => document.documentElement.dir === 'ltr'")
    assert page.eval_on_selector("html", "e => e.lang") == "en"
    today = page.inner_text("#today")
    assert LATIN_YEAR.search(today), today
    assert page.inner_text("#alerts-title") == "Alerts"
    shot(page, "05-alerts-en")
    page.click("#lang-toggle")
    page.wait_for_function("() => document.documentElement.dir === 'rtl'")

    offsite = [u for u in page.bems_requests if not u.startswith(stack.url) and not u.startswith("data:")]  # type: ignore[attr-defined]
    assert offsite == [], "the dashboard must work offline"
    assert not [m for m in page.bems_console if "Content Security Policy" in m or "page error" in m]  # type: ignore[attr-defined]


def test_meter_page_phone_width_and_keyboard(page: Page, stack: Stack) -> None:
    login(page, stack, "fm")
    assert page.locator("#portfolio tbody tr").count() == 1  # a facility manager sees its building only
    page.click("#lang-toggle")
    page.goto(stack.url + f"/#/meter/{HQ}.main-elec")
    wait_points(page, "meter-chart")
    assert int(page.eval_on_selector("#meter-chart", "e => e.dataset.gaps")) >= 0
    assert "Completeness" in page.inner_text("#meter-quality")
    shot(page, "06-meter-en")

    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(stack.url + f"/#/building/{HQ}")
    wait_points(page, "profile-chart")
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"the page scrolls sideways by {overflow}px at phone width"
    shot(page, "07-building-phone-en")

    # keyboard: the first Tab reaches the skip link, and every form control has a label
    page.goto(stack.url + "/#/alerts")
    page.reload()
    page.wait_for_selector("#alerts tbody tr[data-alert]")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.className") == "skip"
    unlabeled = page.evaluate("""() => [...document.querySelectorAll('select, input')]
        .filter(e => !e.labels || e.labels.length === 0).map(e => e.id)""")
    assert unlabeled == []


def flag_a_counter_drop(stack: Stack, at: dt.datetime) -> dt.datetime:
    """Two readings of the water counter between history points, the second lower: flagged by the collector's
    own counter tracker and stored with its flags, as the collector would. Returns the flagged reading's time."""
    before = stack.store.points(WATER, "volume_m3", at - dt.timedelta(minutes=30), at)
    last = float(before.values[-1])
    readings = [Reading(meter=WATER, building=HQ, edge="edge-test", ts=at + dt.timedelta(minutes=m), seq=900 + m,
                        values={"volume_m3": v}) for m, v in ((0, last + 0.01), (1, last - 1.0))]
    flags = CounterTracker(stack.fleet).flags(readings)
    assert flags[0] == 0 and flags[1] != 0, flags
    stack.store.write(readings, flags)
    return readings[1].ts


def orange_pixels(page: Page, chart: str) -> int:
    return page.evaluate(f"""() => {{
        const c = document.querySelector('#{chart} canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) {{
            if (d[i] > 200 && d[i + 1] > 60 && d[i + 1] < 110 && d[i + 2] < 40 && d[i + 3] > 200) n++;
        }}
        return n;
    }}""")


def test_meter_page_marks_flagged_readings_and_gaps(page: Page, stack: Stack) -> None:
    flagged_at = flag_a_counter_drop(stack, (NOW - dt.timedelta(hours=5)).replace(second=0, microsecond=0))
    login(page, stack)
    page.goto(stack.url + f"/#/meter/{WATER}")
    wait_points(page, "meter-chart")
    chart = page.locator("#meter-chart")
    assert int(chart.get_attribute("data-flagged") or 0) == 1
    assert int(chart.get_attribute("data-gaps") or 0) >= 7  # two silent hours in 15-minute buckets
    item = page.locator("#meter-flags li[data-flags]")
    assert item.count() == 1
    assert item.get_attribute("data-flags") == "negative_delta"
    bucket = dt.datetime.fromisoformat((item.get_attribute("data-bucket") or "").replace("Z", "+00:00"))
    assert bucket <= flagged_at < bucket + dt.timedelta(minutes=15)
    assert "کاهش شمارنده" in item.inner_text() and PERSIAN_YEAR.search(item.inner_text())
    assert "خوانش پرچم‌دار" in page.inner_text("#meter-legend") and "بدون داده" in page.inner_text("#meter-legend")
    assert orange_pixels(page, "meter-chart") > 20, "the flag mark is drawn on the chart"
    shot(page, "08-meter-flags-fa")

    page.click("#lang-toggle")
    page.wait_for_function("() => document.documentElement.dir === 'ltr'")
    page.wait_for_function("() => document.querySelector('#meter-flags li[data-flags]')?.textContent"
                           ".includes('counter went down')", timeout=20_000)
    legend = page.inner_text("#meter-legend")
    assert "flagged readings" in legend and "no data" in legend
    assert "Buckets with flagged readings: 1" in page.inner_text("#meter-quality")
    shot(page, "09-meter-flags-en")
    assert not [m for m in page.bems_console if "Content Security Policy" in m or "page error" in m]  # type: ignore[attr-defined]
