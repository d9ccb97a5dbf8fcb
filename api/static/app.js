// Dashboard: token login, building selector, live electricity load chart, alert list.
// No inline script and no CDN (the page runs offline under a strict CSP); data goes into the DOM as text only.
"use strict";

(function () {
  const API = "api/v1";
  const TZ = "Asia/Tehran";
  const WINDOW_S = 6 * 3600;      // chart span
  const BUCKET = "5m";
  const CHART_REFRESH_MS = 5000;
  const ALERTS_REFRESH_MS = 30000;
  const TOKEN_KEY = "bems.token";
  const LANG_KEY = "bems.lang";

  const STRINGS = {
    fa: {
      title: "پایش انرژی ساختمان‌های دولتی",
      token: "توکن دسترسی", login: "ورود", logout: "خروج", building: "ساختمان",
      current_load: "بار فعلی", kw: "کیلووات",
      load_title: "بار الکتریکی ساختمان (کیلووات)، ۶ ساعت اخیر",
      updated: "آخرین به‌روزرسانی", alerts: "هشدارها", status: "وضعیت", all: "همه",
      st_open: "باز", st_acknowledged: "تأییدشده", st_resolved: "رفع‌شده",
      col_building: "ساختمان", col_meter: "کنتور", col_type: "نوع", col_start: "شروع", col_end: "پایان",
      col_excess: "مصرف مازاد", col_status: "وضعیت", col_actions: "اقدام",
      ack: "تأیید", resolve: "رفع", no_alerts: "هشداری نیست",
      series_load: "بار (کیلووات)",
      no_elec: "این ساختمان کنتور برق ندارد.",
      missing: "بدون داده در آخرین بازه: ",
      err_token: "توکن نامعتبر است یا منقضی شده؛ دوباره وارد شوید.",
      err_forbidden: "این توکن به این بخش دسترسی ندارد.",
      err_network: "ارتباط با سرور برقرار نشد.",
      err_server: "خطای سرور: ",
      other_lang: "English",
    },
    en: {
      title: "Government Buildings Energy Monitoring",
      token: "Access token", login: "Sign in", logout: "Sign out", building: "Building",
      current_load: "Current load", kw: "kW",
      load_title: "Building electricity load (kW), last 6 hours",
      updated: "Updated", alerts: "Alerts", status: "Status", all: "All",
      st_open: "Open", st_acknowledged: "Acknowledged", st_resolved: "Resolved",
      col_building: "Building", col_meter: "Meter", col_type: "Type", col_start: "Start", col_end: "End",
      col_excess: "Excess", col_status: "Status", col_actions: "Actions",
      ack: "Ack", resolve: "Resolve", no_alerts: "No alerts",
      series_load: "Load (kW)",
      no_elec: "This building has no electricity meters.",
      missing: "No data in the latest bucket: ",
      err_token: "The token is invalid or revoked; sign in again.",
      err_forbidden: "This token may not see that.",
      err_network: "Cannot reach the server.",
      err_server: "Server error: ",
      other_lang: "فارسی",
    },
  };

  const $ = (id) => document.getElementById(id);
  const state = {
    lang: localStorage.getItem(LANG_KEY) === "en" ? "en" : "fa",
    buildings: [],
    building: null,
    meters: [],          // electricity meters of the selected building that publish power_w
    chart: null,
    chartBusy: false,
    timers: [],
  };

  class AuthError extends Error {}

  function t(key) { return STRINGS[state.lang][key] || key; }

  function locale() { return state.lang === "fa" ? "fa-IR-u-ca-persian" : "en-GB"; }

  function fmtDateTime(iso) {
    if (!iso) return "–";
    return new Intl.DateTimeFormat(locale(), { timeZone: TZ, dateStyle: "medium", timeStyle: "short" })
      .format(new Date(iso));
  }

  function fmtClock(date) {
    return new Intl.DateTimeFormat(locale(), { timeZone: TZ, hour: "2-digit", minute: "2-digit",
                                               hourCycle: "h23" }).format(date);
  }

  function fmtNumber(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    return new Intl.NumberFormat(state.lang === "fa" ? "fa-IR" : "en-GB",
                                 { maximumFractionDigits: digits }).format(v);
  }

  function say(text) {
    const el = $("message");
    el.textContent = text || "";
    el.hidden = !text;
  }

  // --- API ------------------------------------------------------------------------------------------------
  async function api(path, options) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    let resp;
    try {
      resp = await fetch(API + path, Object.assign({ headers, cache: "no-store" }, options || {}));
    } catch (err) {
      throw new Error(t("err_network"));
    }
    if (resp.status === 401) throw new AuthError(t("err_token"));
    if (resp.status === 403) throw new Error(t("err_forbidden"));
    if (!resp.ok) {
      let detail = resp.statusText;
      try {
        const body = await resp.json();
        detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      } catch (err) { /* not JSON */ }
      throw new Error(t("err_server") + detail);
    }
    return resp.json();
  }

  function fail(err) {
    if (err instanceof AuthError) {
      signOut();
    }
    say(err.message);
  }

  // --- language -------------------------------------------------------------------------------------------
  function applyLanguage() {
    const root = document.documentElement;
    root.lang = state.lang;
    root.dir = state.lang === "fa" ? "rtl" : "ltr";
    document.title = t("title");
    document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
    const toggle = $("lang-toggle");
    toggle.textContent = t("other_lang");
    toggle.lang = state.lang === "fa" ? "en" : "fa";
    fillBuildingSelect();
    if (state.chart) { rebuildChart(); refreshChart(true); }
    refreshAlerts();
  }

  // --- session --------------------------------------------------------------------------------------------
  function showLogin() {
    $("login").hidden = false;
    $("dashboard").hidden = true;
    $("logout").hidden = true;
    $("token").focus();
  }

  function signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    state.timers.forEach(clearInterval);
    state.timers = [];
    if (state.chart) { state.chart.destroy(); state.chart = null; }
    showLogin();
  }

  async function signIn() {
    state.buildings = await api("/buildings");
    $("login").hidden = true;
    $("dashboard").hidden = false;
    $("logout").hidden = false;
    say("");
    fillBuildingSelect();
    await selectBuilding($("building").value);
    refreshAlerts();
    state.timers.push(setInterval(() => { if (!document.hidden) refreshChart(); }, CHART_REFRESH_MS));
    state.timers.push(setInterval(() => { if (!document.hidden) refreshAlerts(); }, ALERTS_REFRESH_MS));
  }

  // --- buildings ------------------------------------------------------------------------------------------
  function buildingName(b) {
    return state.lang === "fa" && b.name_fa ? b.name_fa : b.name;
  }

  function fillBuildingSelect() {
    const select = $("building");
    const keep = state.building || select.value;
    select.replaceChildren(...state.buildings.map((b) => {
      const opt = document.createElement("option");
      opt.value = b.id;
      opt.textContent = buildingName(b);
      return opt;
    }));
    if (keep && state.buildings.some((b) => b.id === keep)) select.value = keep;
  }

  async function selectBuilding(id) {
    state.building = id || null;
    state.meters = [];
    if (id) {
      const meters = await api("/buildings/" + encodeURIComponent(id) + "/meters");
      state.meters = meters.filter((m) => m.commodity === "electricity" && m.fields.includes("power_w"));
    }
    rebuildChart();
    await refreshChart(true);
  }

  // --- chart ----------------------------------------------------------------------------------------------
  function rebuildChart() {
    const box = $("chart");
    if (state.chart) { state.chart.destroy(); state.chart = null; }
    const opts = {
      width: Math.max(box.clientWidth, 300),
      height: 320,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), TZ),
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max((max || 0) * 1.1, 10)] } },
      series: [
        {},
        { label: t("series_load"), stroke: "#1565c0", width: 2, fill: "rgba(21,101,192,0.12)", spanGaps: false },
      ],
      axes: [
        { values: (u, splits) => splits.map((s) => fmtClock(new Date(s * 1000))) },
        { size: 60, values: (u, splits) => splits.map((v) => fmtNumber(v, 0)) },
      ],
    };
    state.chart = new uPlot(opts, [[], []], box);
  }

  // force: a new building was chosen, so do not wait for a refresh of the old one to finish.
  async function refreshChart(force) {
    if (!state.chart || (state.chartBusy && !force)) return;
    const note = $("chart-note");
    if (!state.meters.length) {
      state.chart.setData([[], []]);
      $("current-load").textContent = "–";
      note.textContent = state.building ? t("no_elec") : "";
      note.hidden = !state.building;
      return;
    }
    state.chartBusy = true;
    const chart = state.chart;
    try {
      const end = new Date();
      const start = new Date(end.getTime() - WINDOW_S * 1000);
      const query = "?field=power_w&agg=mean&bucket=" + BUCKET + "&start=" + start.toISOString() +
                    "&end=" + end.toISOString();
      const series = await Promise.all(state.meters.map(
        (m) => api("/meters/" + encodeURIComponent(m.id) + "/series" + query)));
      if (chart !== state.chart) return;  // the building or language changed meanwhile
      const { times, load, last, missing } = sumLoad(series);
      chart.setData([times, load]);
      $("current-load").textContent = fmtNumber(last, 1);
      note.textContent = missing.length ? t("missing") + missing.join(state.lang === "fa" ? "، " : ", ") : "";
      note.hidden = !missing.length;
      $("updated").textContent = fmtDateTime(new Date().toISOString());
      if ($("message").textContent === t("err_network")) say("");  // the server is back
    } catch (err) {
      fail(err);
    } finally {
      if (chart === state.chart) state.chartBusy = false;
    }
  }

  // Sum power_w over the meters, W -> kW. A bucket where no meter reported stays a gap. "Current" is the newest
  // bucket with data (the bucket just begun may be empty); meters missing from it are named, so a dip is not
  // mistaken for lower load.
  function sumLoad(series) {
    const times = series[0].times.map((iso) => Date.parse(iso) / 1000);
    const load = times.map((_, i) => {
      let sum = null;
      for (const s of series) {
        const v = s.values[i];
        if (v !== null && v !== undefined) sum = (sum || 0) + v;
      }
      return sum === null ? null : sum / 1000;
    });
    let lastIdx = load.length - 1;
    while (lastIdx >= 0 && load[lastIdx] === null) lastIdx -= 1;
    const idx = lastIdx >= 0 ? lastIdx : load.length - 1;
    const missing = idx < 0 ? [] : series.filter((s) => s.values[idx] === null).map((s) => s.meter);
    return { times, load, last: lastIdx >= 0 ? load[lastIdx] : null, missing };
  }

  // --- alerts ---------------------------------------------------------------------------------------------
  async function refreshAlerts() {
    if ($("dashboard").hidden) return;
    const status = $("alert-status").value;
    try {
      const page = await api("/alerts?limit=200" + (status ? "&status=" + encodeURIComponent(status) : ""));
      renderAlerts(page.items);
    } catch (err) {
      fail(err);
    }
  }

  function unitName(unit) {
    const fa = { kWh: "کیلووات‌ساعت", m3: "مترمکعب" };
    return state.lang === "fa" ? (fa[unit] || unit) : unit;
  }

  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  function actionButton(label, enabled, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.disabled = !enabled;
    b.addEventListener("click", onClick);
    return b;
  }

  function renderAlerts(items) {
    const names = Object.fromEntries(state.buildings.map((b) => [b.id, buildingName(b)]));
    const rows = items.map((a) => {
      const tr = document.createElement("tr");
      tr.className = "st-" + a.status;
      const meter = cell(a.meter, "ltr");
      meter.dir = "ltr";
      tr.append(cell(names[a.building] || a.building), meter, cell(a.type),
                cell(fmtDateTime(a.start)), cell(fmtDateTime(a.end)), cell(fmtNumber(a.excess, 1) + " " + unitName(a.unit), "num"),
                cell(t("st_" + a.status)));
      const actions = document.createElement("td");
      actions.append(
        actionButton(t("ack"), a.status === "open", () => transition(a.id, "ack")),
        actionButton(t("resolve"), a.status !== "resolved", () => transition(a.id, "resolve")));
      tr.append(actions);
      return tr;
    });
    document.querySelector("#alerts tbody").replaceChildren(...rows);
    $("no-alerts").hidden = items.length > 0;
  }

  async function transition(id, action) {
    try {
      await api("/alerts/" + encodeURIComponent(id) + "/" + action, { method: "POST" });
      await refreshAlerts();
    } catch (err) {
      fail(err);
    }
  }

  // --- wiring ---------------------------------------------------------------------------------------------
  function init() {
    $("login-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const token = $("token").value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("token").value = "";
      try { await signIn(); } catch (err) { fail(err); }
    });
    $("logout").addEventListener("click", () => { signOut(); say(""); });
    $("lang-toggle").addEventListener("click", () => {
      state.lang = state.lang === "fa" ? "en" : "fa";
      localStorage.setItem(LANG_KEY, state.lang);
      applyLanguage();
    });
    $("building").addEventListener("change", (ev) => { selectBuilding(ev.target.value).catch(fail); });
    $("alert-status").addEventListener("change", refreshAlerts);
    new ResizeObserver(() => {
      if (state.chart) state.chart.setSize({ width: Math.max($("chart").clientWidth, 300), height: 320 });
    }).observe($("chart"));

    applyLanguage();
    if (sessionStorage.getItem(TOKEN_KEY)) {
      signIn().catch(fail);
    } else {
      showLogin();
    }
  }

  document.addEventListener("DOMContentLoaded", init);
})();
