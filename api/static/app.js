// Dashboard: token login; portfolio, building, meter and alerts views (hash routes); live load over SSE.
// No inline script and no CDN (the page runs offline under a strict CSP); data goes into the DOM as text only.
"use strict";

(function () {
  const API = "api/v1";
  const TZ = "Asia/Tehran";
  const LIVE_WINDOW_S = 3 * 3600;
  const ALERTS_REFRESH_MS = 30000;
  const TOKEN_KEY = "bems.token";
  const LANG_KEY = "bems.lang";

  const STRINGS = {
    fa: {
      title: "پایش انرژی ساختمان‌های دولتی", skip: "پرش به محتوا",
      nav_portfolio: "ساختمان‌ها", nav_alerts: "هشدارها", nav_label: "بخش‌ها",
      login_title: "ورود با توکن", login_help: "توکن را مدیر سامانه با فرمان bems users create می‌سازد.",
      token: "توکن دسترسی", login: "ورود", logout: "خروج", building: "ساختمان",
      portfolio_title: "ساختمان‌ها، ۳۰ روز اخیر", sort_by: "مرتب‌سازی",
      col_rank: "رتبه", col_city: "شهر", col_eui: "شدت مصرف انرژی", col_eui_unit: "شدت مصرف (kWh/m²)",
      col_eui_year: "سالانه (kWh/m²)", col_after: "سهم خارج از ساعت اداری", col_open: "هشدارهای باز",
      live_title: "بار لحظه‌ای (کیلووات)", current_load: "بار فعلی", kw: "کیلووات", updated: "آخرین خوانش",
      profile_title: "امروز در برابر خط مبنا (کیلووات‌ساعت در ساعت)",
      baseline_note: "خط مبنا: میانه همان ساعتِ هفته در چهار هفته پیش.",
      heatmap_title: "مصرف برق بر حسب ساعتِ هفته (میانگین کیلووات‌ساعت)",
      split_title: "سهم حامل‌های انرژی", tou_title: "هزینه برق بر حسب بازه زمانی (ریال)",
      peak_title: "بیشینه دیماند در برابر قرارداد", meters_title: "کنتورها",
      col_meter: "کنتور", col_commodity: "حامل", col_status: "وضعیت", col_last: "آخرین خوانش",
      col_complete: "کامل بودن داده (۲۴ ساعت)", back: "بازگشت به ساختمان", field: "کمیت", range: "بازه",
      r_1d: "۲۴ ساعت", r_7d: "۷ روز", r_30d: "۳۰ روز", reset_zoom: "بازنشانی بزرگ‌نمایی",
      zoom_help: "برای بزرگ‌نمایی روی نمودار بکشید؛ نوارهای خاکستری یعنی بدون داده.",
      alerts: "هشدارها", status: "وضعیت", all: "همه",
      st_open: "باز", st_acknowledged: "تأییدشده", st_resolved: "رفع‌شده",
      col_building: "ساختمان", col_type: "نوع", col_start: "شروع", col_end: "پایان",
      col_excess: "مصرف مازاد", col_actions: "اقدام", ack: "تأیید", resolve: "رفع", comment: "یادداشت",
      comment_label: "یادداشت برای هشدار", send: "ثبت", no_alerts: "هشداری نیست", of_total: "از",
      export_csv: "خروجی CSV", export_xlsx: "خروجی Excel",
      c_electricity: "برق", c_gas: "گاز", c_water: "آب", c_weather: "دمای هوا",
      savings_title: "صرفه‌جویی ۷ روز اخیر در برابر خط مبنای تعدیل‌شده با آب‌وهوا (۴ هفته پیش از آن)", sv_commodity: "حامل",
      sv_actual: "مصرف", sv_expected: "مورد انتظار", sv_saved: "صرفه‌جویی", sv_rial: "ریال",
      sv_weather: "خط مبنا: ساعت هفته و دمای بیرون از ", sv_blind: "خط مبنا فقط بر پایه ساعت هفته (حسگر دما ندارد)",
      sv_g14: "مدل‌های منطبق با ASHRAE Guideline 14: ", sv_none: "هنوز داده کافی برای خط مبنا نیست (دست‌کم ۱۴ روز)",
      b_low: "کم‌باری", b_mid: "میان‌باری", b_peak: "اوج‌بار",
      m_online: "برخط", m_stale: "کهنه", m_offline: "قطع", m_never: "بدون داده",
      k_eui: "شدت مصرف انرژی", k_eui_unit: "kWh/m² (سالانه: ", k_after: "خارج از ساعت اداری",
      k_holiday: "تعطیلات", k_baseline: "نسبت به خط مبنا", k_last_year: "نسبت به سال گذشته",
      k_cost: "هزینه برق", k_rial: "ریال", k_co2: "دی‌اکسید کربن", k_kg: "کیلوگرم", k_peak: "بیشینه دیماند",
      peak_of: "از قرارداد", none: "–", no_contract: "قرارداد ثبت نشده",
      series_load: "بار (کیلووات)", time: "زمان", series_today: "امروز", series_baseline: "خط مبنا",
      live_on: "زنده", live_off: "قطع ارتباط زنده", gaps: "بازه‌های بدون داده: ",
      incomplete: "بازه‌های ناقص: ", quality: "کیفیت آخرین خوانش: ",
      q_good: "خوب", q_uncertain: "نامطمئن", q_bad: "بد",
      flagged: "بازه‌های دارای خوانش پرچم‌دار: ", legend_gap: "بدون داده (خط قطع می‌شود)",
      legend_flag: "خوانش پرچم‌دار", flags_title: "خوانش‌های پرچم‌دار در این بازه",
      flags_none: "هیچ خوانشی در این بازه پرچم نخورده است.", flags_more: "بازه‌های دیگر: ",
      f_rollover: "سرریز شمارنده", f_reset: "تعویض یا بازنشانی کنتور", f_negative_delta: "کاهش شمارنده",
      f_uncertain: "کیفیت نامطمئن", f_bad: "کیفیت بد", readings: "خوانش", reading_one: "خوانش",
      weekdays: ["شنبه", "یکشنبه", "دوشنبه", "سه‌شنبه", "چهارشنبه", "پنجشنبه", "جمعه"],
      err_token: "توکن نامعتبر است یا منقضی شده؛ دوباره وارد شوید.",
      err_forbidden: "این توکن به این بخش دسترسی ندارد.",
      err_network: "ارتباط با سرور برقرار نشد.", err_server: "خطای سرور: ",
      other_lang: "English", area: "زیربنا", m2: "متر مربع", type_after_hours: "مصرف خارج از ساعت اداری",
    },
    en: {
      title: "Government Buildings Energy Monitoring", skip: "Skip to content",
      nav_portfolio: "Buildings", nav_alerts: "Alerts", nav_label: "Sections",
      login_title: "Sign in with a token", login_help: "An administrator creates tokens with bems users create.",
      token: "Access token", login: "Sign in", logout: "Sign out", building: "Building",
      portfolio_title: "Buildings, last 30 days", sort_by: "Sort by",
      col_rank: "Rank", col_city: "City", col_eui: "Energy use intensity", col_eui_unit: "EUI (kWh/m²)",
      col_eui_year: "Annualized (kWh/m²)", col_after: "After-hours share", col_open: "Open alerts",
      live_title: "Live load (kW)", current_load: "Current load", kw: "kW", updated: "Last reading",
      profile_title: "Today against the baseline (kWh per hour)",
      baseline_note: "Baseline: median of the same hour of the week over the previous four weeks.",
      heatmap_title: "Electricity by hour of week (mean kWh)",
      split_title: "Commodity split", tou_title: "Electricity cost by time-of-use band (rial)",
      peak_title: "Peak demand against the contract", meters_title: "Meters",
      col_meter: "Meter", col_commodity: "Commodity", col_status: "Status", col_last: "Last reading",
      col_complete: "Completeness (24 h)", back: "Back to the building", field: "Field", range: "Range",
      r_1d: "24 hours", r_7d: "7 days", r_30d: "30 days", reset_zoom: "Reset zoom",
      zoom_help: "Drag across the chart to zoom; grey bands are gaps without data.",
      alerts: "Alerts", status: "Status", all: "All",
      st_open: "Open", st_acknowledged: "Acknowledged", st_resolved: "Resolved",
      col_building: "Building", col_type: "Type", col_start: "Start", col_end: "End",
      col_excess: "Excess", col_actions: "Actions", ack: "Ack", resolve: "Resolve", comment: "Comment",
      comment_label: "Comment on the alert", send: "Add", no_alerts: "No alerts", of_total: "of",
      export_csv: "Export CSV", export_xlsx: "Export Excel",
      c_electricity: "Electricity", c_gas: "Gas", c_water: "Water", c_weather: "Outdoor temperature",
      savings_title: "Last 7 days against the weather-normalized baseline of the 4 weeks before", sv_commodity: "Commodity",
      sv_actual: "Used", sv_expected: "Expected", sv_saved: "Saved", sv_rial: "Rial",
      sv_weather: "Baseline: hour of the week and outdoor temperature from ",
      sv_blind: "Baseline: hour of the week only (no temperature sensor)",
      sv_g14: "Models meeting ASHRAE Guideline 14: ", sv_none: "Not enough data for a baseline yet (14 days at least)",
      b_low: "Low", b_mid: "Mid", b_peak: "Peak",
      m_online: "online", m_stale: "stale", m_offline: "offline", m_never: "no data",
      k_eui: "Energy use intensity", k_eui_unit: "kWh/m² (annualized: ", k_after: "After hours",
      k_holiday: "Holidays", k_baseline: "Against baseline", k_last_year: "Against last year",
      k_cost: "Electricity cost", k_rial: "rial", k_co2: "CO₂", k_kg: "kg", k_peak: "Peak demand",
      peak_of: "of contract", none: "–", no_contract: "no contracted demand on file",
      series_load: "Load (kW)", time: "Time", series_today: "Today", series_baseline: "Baseline",
      live_on: "live", live_off: "live stream lost", gaps: "Buckets without data: ",
      incomplete: "Incomplete buckets: ", quality: "Quality of the latest reading: ",
      q_good: "good", q_uncertain: "uncertain", q_bad: "bad",
      flagged: "Buckets with flagged readings: ", legend_gap: "no data (the line breaks)",
      legend_flag: "flagged readings", flags_title: "Flagged readings in this range",
      flags_none: "No reading in this range is flagged.", flags_more: "More buckets: ",
      f_rollover: "counter rollover", f_reset: "meter replaced or reset", f_negative_delta: "counter went down",
      f_uncertain: "uncertain quality", f_bad: "bad quality", readings: "readings", reading_one: "reading",
      weekdays: ["Sat", "Sun", "Mon", "Tue", "Wed", "Thu", "Fri"],
      err_token: "The token is invalid or revoked; sign in again.",
      err_forbidden: "This token may not see that.",
      err_network: "Cannot reach the server.", err_server: "Server error: ",
      other_lang: "فارسی", area: "Floor area", m2: "m²", type_after_hours: "after-hours use",
    },
  };

  const $ = (id) => document.getElementById(id);
  const state = {
    lang: localStorage.getItem(LANG_KEY) === "en" ? "en" : "fa",
    buildings: [],
    view: null,          // {name, id}
    page: null,          // building page payload
    meters: [],          // meters of the open building
    live: { times: [], load: [], latest: {} },
    charts: {},
    stream: null,        // AbortController of the open SSE request
    timers: [],
    meterCounts: null,
  };

  class AuthError extends Error {}

  function t(key) { return STRINGS[state.lang][key] ?? key; }
  function numLocale() { return state.lang === "fa" ? "fa-IR" : "en-GB"; }
  function dateLocale() { return state.lang === "fa" ? "fa-IR-u-ca-persian" : "en-GB-u-ca-persian"; }

  function fmtDateTime(iso) {
    if (!iso) return "–";
    return new Intl.DateTimeFormat(dateLocale(), { timeZone: TZ, dateStyle: "medium", timeStyle: "short" })
      .format(new Date(iso));
  }
  function fmtClock(date, withDay) {
    const opts = { timeZone: TZ, hour: "2-digit", minute: "2-digit", hourCycle: "h23" };
    if (withDay) { opts.month = "short"; opts.day = "numeric"; }
    return new Intl.DateTimeFormat(dateLocale(), opts).format(date);
  }
  function fmtNumber(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    return new Intl.NumberFormat(numLocale(), { maximumFractionDigits: digits ?? 0 }).format(v);
  }
  function fmtPct(v, digits) {
    if (v === null || v === undefined) return "–";
    return new Intl.NumberFormat(numLocale(), { style: "percent", maximumFractionDigits: digits ?? 0 }).format(v);
  }
  function fmtSignedPct(v) {
    if (v === null || v === undefined) return "–";
    return new Intl.NumberFormat(numLocale(), { maximumFractionDigits: 1, signDisplay: "exceptZero" })
      .format(v) + (state.lang === "fa" ? "٪" : "%");
  }

  function say(text) {
    const el = $("message");
    el.textContent = text || "";
    el.hidden = !text;
  }

  function el(tag, text, attrs) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = text;
    Object.entries(attrs || {}).forEach(([k, v]) => {
      if (k === "class") e.className = v; else e.setAttribute(k, v);
    });
    return e;
  }

  // --- API ------------------------------------------------------------------------------------------------
  function authHeaders() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    return token ? { Authorization: "Bearer " + token } : {};
  }

  async function request(path, options) {
    let resp;
    try {
      resp = await fetch(API + path, Object.assign({ cache: "no-store" }, options || {},
        { headers: Object.assign({ Accept: "application/json" }, authHeaders(), (options || {}).headers) }));
    } catch (err) {
      throw new Error(t("err_network"));
    }
    if (resp.status === 401) throw new AuthError(t("err_token"));
    if (resp.status === 403) throw new Error(t("err_forbidden"));
    if (!resp.ok) {
      let detail = resp.statusText;
      try {
        const body = await resp.json();
        detail = typeof body.detail === "string" ? body.detail : body.detail.map((d) => d.msg).join("; ");
      } catch (err) { /* not JSON */ }
      throw new Error(t("err_server") + detail);
    }
    return resp;
  }
  async function api(path, options) { return (await request(path, options)).json(); }

  function fail(err) {
    if (err instanceof AuthError) signOut();
    say(err.message);
  }

  // --- language -------------------------------------------------------------------------------------------
  function showToday() {
    const now = new Date();
    const node = $("today");
    node.dateTime = now.toISOString().slice(0, 10);
    node.textContent = new Intl.DateTimeFormat(dateLocale(), { timeZone: TZ, dateStyle: "full" }).format(now);
  }

  function applyLanguage() {
    const root = document.documentElement;
    root.lang = state.lang;
    root.dir = state.lang === "fa" ? "rtl" : "ltr";
    document.title = t("title");
    document.querySelectorAll("[data-i18n]").forEach((node) => { node.textContent = t(node.dataset.i18n); });
    $("nav").setAttribute("aria-label", t("nav_label"));
    const toggle = $("lang-toggle");
    toggle.textContent = t("other_lang");
    toggle.lang = state.lang === "fa" ? "en" : "fa";
    showToday();
    fillBuildingFilter();
    if (!$("login").hidden) return;
    route();
  }

  // --- session --------------------------------------------------------------------------------------------
  function showLogin() {
    document.querySelectorAll(".view").forEach((v) => { v.hidden = true; });
    $("login").hidden = false;
    $("nav").hidden = true;
    $("logout").hidden = true;
    $("token").focus();
  }

  function stopLive() {
    if (state.stream) { state.stream.abort(); state.stream = null; }
  }

  function signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    state.timers.forEach(clearInterval);
    state.timers = [];
    stopLive();
    Object.values(state.charts).forEach((c) => c.destroy());
    state.charts = {};
    showLogin();
  }

  async function signIn() {
    state.buildings = await api("/buildings?limit=1000");
    $("login").hidden = true;
    $("nav").hidden = false;
    $("logout").hidden = false;
    say("");
    fillBuildingFilter();
    state.timers.push(setInterval(() => {
      if (!document.hidden && state.view && state.view.name === "alerts") refreshAlerts();
    }, ALERTS_REFRESH_MS));
    if (!location.hash || location.hash === "#") location.hash = "#/portfolio"; else route();
  }

  function buildingName(b) { return state.lang === "fa" && b.name_fa ? b.name_fa : b.name; }
  function buildingById(id) { return state.buildings.find((b) => b.id === id); }

  // --- routing --------------------------------------------------------------------------------------------
  function route() {
    if (!sessionStorage.getItem(TOKEN_KEY)) { showLogin(); return; }
    const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
    const name = ["portfolio", "building", "meter", "alerts"].includes(parts[0]) ? parts[0] : "portfolio";
    const id = parts[1] || null;
    const first = !state.view;
    const changed = first || state.view.name !== name || state.view.id !== id;
    state.view = { name, id };
    document.querySelectorAll(".view").forEach((v) => { v.hidden = v.id !== "view-" + name; });
    document.querySelectorAll("#nav a").forEach((a) => {
      const here = a.getAttribute("href") === "#/" + name;
      if (here) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    });
    if (name !== "building") stopLive();
    const show = { portfolio: showPortfolio, building: showBuilding, meter: showMeter, alerts: refreshAlerts }[name];
    Promise.resolve(show(id, changed)).catch(fail);
    if (changed && !first) $("main").focus({ preventScroll: true });  // screen readers start at the new view
  }

  // --- portfolio ------------------------------------------------------------------------------------------
  async function showPortfolio() {
    const body = await api("/portfolio?sort=" + encodeURIComponent($("portfolio-sort").value));
    const rows = body.items.map((r) => {
      const tr = el("tr");
      const link = el("a", state.lang === "fa" && r.name_fa ? r.name_fa : r.name,
                      { href: "#/building/" + encodeURIComponent(r.building) });
      const name = el("td");
      name.append(link);
      tr.append(el("td", fmtNumber(r.rank), { class: "num" }), name, el("td", r.city),
                el("td", fmtNumber(r.eui_kwh_m2, 1), { class: "num" }),
                el("td", fmtNumber(r.eui_kwh_m2_year, 0), { class: "num" }),
                el("td", fmtPct(r.after_hours_share), { class: "num" }),
                el("td", fmtNumber(r.open_alerts), { class: "num" + (r.open_alerts ? " warn" : "") }));
      return tr;
    });
    document.querySelector("#portfolio tbody").replaceChildren(...rows);
  }

  // --- building -------------------------------------------------------------------------------------------
  async function showBuilding(id, changed) {
    if (!id) { location.hash = "#/portfolio"; return; }
    const [page, meters] = await Promise.all([
      api("/buildings/" + encodeURIComponent(id) + "/dashboard"),
      api("/buildings/" + encodeURIComponent(id) + "/meters"),
    ]);
    if (!state.view || state.view.id !== id) return;
    state.page = page;
    state.meters = meters;
    const b = page.building;
    $("building-title").textContent = buildingName(b);
    $("building-meta").textContent = b.city + " · " + t("area") + " " + fmtNumber(b.floor_area_m2) + " " + t("m2");
    renderKpis(page.kpis);
    renderProfile(page.profile);
    renderHeatmap(page.heatmap);
    renderSplit(page.kpis);
    renderTou(page.kpis);
    renderPeak(page.kpis.peak);
    renderMeters(meters);
    api("/buildings/" + encodeURIComponent(id) + "/savings?days=7&baseline_weeks=4").then(renderSavings).catch(fail);
    if (changed || !state.stream) await startLive(id);
    else drawLive();
  }

  function kpiCard(label, value, sub) {
    const card = el("div", null, { class: "kpi" });
    card.append(el("span", label, { class: "kpi-label" }), el("strong", value, { class: "kpi-value" }));
    if (sub) card.append(el("span", sub, { class: "kpi-sub" }));
    return card;
  }

  function renderKpis(k) {
    const elec = k.commodities.find((c) => c.commodity === "electricity") || {};
    const cards = [
      kpiCard(t("k_eui"), fmtNumber(k.eui_kwh_m2, 1),
              t("k_eui_unit") + fmtNumber(k.eui_kwh_m2_year, 0) + ")"),
      kpiCard(t("k_after"), fmtPct(elec.after_hours_share), t("k_holiday") + ": " + fmtPct(elec.holiday_share, 1)),
      kpiCard(t("k_baseline"), fmtSignedPct(elec.vs_baseline_pct)),
      kpiCard(t("k_last_year"), fmtSignedPct(elec.vs_last_year_pct)),
      kpiCard(t("k_cost"), fmtNumber(k.cost_rial), t("k_rial")),
      kpiCard(t("k_co2"), fmtNumber(k.co2_kg), t("k_kg")),
    ];
    $("kpis").replaceChildren(...cards);
  }

  function renderSplit(k) {
    const rows = k.commodities.map((c) => {
      const tr = el("tr");
      tr.append(el("th", t("c_" + c.commodity), { scope: "row" }),
                el("td", fmtNumber(c.total, 0) + " " + c.unit, { class: "num" }),
                el("td", fmtPct(c.completeness) , { class: "num muted", title: t("col_complete") }));
      return tr;
    });
    document.querySelector("#split tbody").replaceChildren(...rows);
  }

  function renderTou(k) {
    const total = k.cost_rial || 0;
    const rows = k.cost_by_band.map((b) => {
      const tr = el("tr");
      const bar = el("span", null, { class: "bar-fill band-" + b.band });
      bar.style.inlineSize = (total ? (100 * b.rial / total) : 0).toFixed(1) + "%";
      const barCell = el("td", null, { class: "bar-cell" });
      barCell.append(bar);
      tr.append(el("th", t("b_" + b.band), { scope: "row" }), el("td", fmtNumber(b.kwh) + " kWh", { class: "num" }),
                el("td", fmtNumber(b.rial), { class: "num" }), barCell);
      return tr;
    });
    document.querySelector("#tou tbody").replaceChildren(...rows);
  }

  function renderSavings(s) {
    if (!state.view || state.view.id !== s.building) return;
    const rows = s.totals.map((c) => {
      const tr = el("tr");
      tr.append(el("th", t("c_" + c.commodity), { scope: "row" }),
                el("td", fmtNumber(c.actual, 0) + " " + c.unit, { class: "num" }),
                el("td", fmtNumber(c.expected, 0) + " " + c.unit, { class: "num" }),
                el("td", fmtNumber(c.saved, 0) + " " + c.unit + " (" + fmtSignedPct(c.saved_pct) + ")",
                   { class: "num " + (c.saved < 0 ? "worse" : "better") }),
                el("td", c.saved_rial === null ? "–" : fmtNumber(c.saved_rial, 0), { class: "num" }));
      return tr;
    });
    if (!rows.length) {
      const tr = el("tr");
      tr.append(el("td", t("sv_none"), { colspan: "5", class: "muted" }));
      rows.push(tr);
    }
    document.querySelector("#savings tbody").replaceChildren(...rows);
    const good = s.meters.filter((m) => m.meets_guideline14).length;
    $("savings-note").textContent = (s.temperature_meter ? t("sv_weather") + s.temperature_meter : t("sv_blind")) +
      " · " + t("sv_g14") + fmtNumber(good, 0) + "/" + fmtNumber(s.meters.length, 0);
  }

  function renderPeak(p) {
    const meter = $("peak-meter");
    meter.value = p.ratio || 0;
    const text = p.kw === null ? "–" :
      fmtNumber(p.kw, 0) + " " + t("kw") + (p.contracted_kw ? " · " + fmtPct(p.ratio) + " " + t("peak_of") + " " +
      fmtNumber(p.contracted_kw) + " " + t("kw") : " · " + t("no_contract")) + (p.at ? " · " + fmtDateTime(p.at) : "");
    $("peak-text").textContent = text;
    meter.setAttribute("aria-label", t("peak_title") + ": " + text);
  }

  function renderMeters(meters) {
    const rows = meters.map((m) => {
      const tr = el("tr");
      const link = el("a", m.id, { href: "#/meter/" + encodeURIComponent(m.id), dir: "ltr" });
      const cell = el("td");
      cell.append(link);
      tr.append(cell, el("td", t("c_" + m.commodity)), el("td", t("m_" + m.status), { class: "st-" + m.status }),
                el("td", fmtDateTime(m.last_reading)), el("td", fmtPct((m.completeness_pct ?? 0) / 100), { class: "num" }));
      return tr;
    });
    document.querySelector("#meters tbody").replaceChildren(...rows);
  }

  function renderHeatmap(h) {
    const table = $("heatmap");
    const values = h.mean_kwh.flat().filter((v) => v !== null);
    const max = values.length ? Math.max(...values) : 1;
    const head = el("tr");
    head.append(el("th", "", { scope: "col" }));
    for (let hour = 0; hour < 24; hour++) head.append(el("th", fmtNumber(hour), { scope: "col" }));
    const thead = el("thead");
    thead.append(head);
    const tbody = el("tbody");
    h.mean_kwh.forEach((row, d) => {
      const tr = el("tr");
      const day = t("weekdays")[d];
      tr.append(el("th", day, { scope: "row" }));
      row.forEach((v, hour) => {
        const label = day + " " + fmtNumber(hour) + ":00 — " + fmtNumber(v, 0) + " kWh";
        const td = el("td", null, { title: label, "aria-label": label, class: "hm" });
        const level = v === null ? 0 : v / max;
        td.style.backgroundColor = v === null ? "transparent" : "rgba(21, 101, 192, " + (0.08 + 0.92 * level).toFixed(2) + ")";
        tr.append(td);
      });
      tbody.append(tr);
    });
    table.replaceChildren(thead, tbody);
  }

  function chartWidth(box) { return Math.max(box.clientWidth, 280); }

  function axisTime(withDay) {
    return { values: (u, splits) => splits.map((s) => fmtClock(new Date(s * 1000), withDay)) };
  }
  function axisNumber() { return { size: 64, values: (u, splits) => splits.map((v) => fmtNumber(v, 0)) }; }

  function makeChart(key, box, series, data, extra) {
    if (state.charts[key]) state.charts[key].destroy();
    const opts = Object.assign({
      width: chartWidth(box), height: 260,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), TZ),
      legend: { show: true },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max((max || 0) * 1.1, 1)] } },
      series: [{ label: t("time") }, ...series],
      axes: [axisTime(false), axisNumber()],
    }, extra || {});
    state.charts[key] = new uPlot(opts, data, box);
    const points = data.slice(1).reduce((n, s) => n + s.filter((v) => v !== null && v !== undefined).length, 0);
    box.dataset.points = String(points);
    return state.charts[key];
  }

  function renderProfile(p) {
    const times = p.times.map((s) => Date.parse(s) / 1000);
    const box = $("profile-chart");
    box.setAttribute("aria-label", t("profile_title"));
    makeChart("profile", box, [
      { label: t("series_today"), stroke: "#1565c0", width: 2, spanGaps: false },
      { label: t("series_baseline"), stroke: "#6d4c41", width: 2, dash: [6, 4] },
    ], [times, p.today_kwh, p.baseline_kwh]);
  }

  // --- live load over SSE ---------------------------------------------------------------------------------
  function elecMeters() {
    return state.meters.filter((m) => m.commodity === "electricity" && m.fields.includes("power_w"));
  }

  async function seedLive(id) {
    const end = new Date();
    const start = new Date(end.getTime() - LIVE_WINDOW_S * 1000);
    const query = "/series?field=power_w&agg=mean&bucket=5m&start=" + start.toISOString() + "&end=" + end.toISOString();
    const series = await Promise.all(elecMeters().map((m) => api("/meters/" + encodeURIComponent(m.id) + query)));
    const live = { times: [], load: [], latest: {} };
    if (series.length) {
      live.times = series[0].times.map((s) => Date.parse(s) / 1000);
      live.load = live.times.map((_, i) => {
        let sum = 0; let any = false;
        series.forEach((s) => { if (s.values[i] !== null) { sum += s.values[i] / 1000; any = true; } });
        return any ? sum : null;
      });
    }
    if (state.view && state.view.id === id) state.live = live;
  }

  function drawLive() {
    const box = $("live-chart");
    box.setAttribute("aria-label", t("live_title"));
    makeChart("live", box, [{ label: t("series_load"), stroke: "#1565c0", width: 2,
                               fill: "rgba(21,101,192,0.12)", spanGaps: true }],
              [state.live.times, state.live.load], { legend: { show: false } });
  }

  function applyReading(ev) {
    if (!state.page || ev.building !== state.page.building.id || ev.commodity !== "electricity") return;
    if (ev.values.power_w === undefined) return;
    state.live.latest[ev.meter] = ev;
    const all = Object.values(state.live.latest);
    const kw = all.reduce((s, r) => s + r.values.power_w / 1000, 0);
    const newest = all.reduce((a, r) => (r.ts > a ? r.ts : a), "");
    const out = $("live-load");
    out.textContent = fmtNumber(kw, 1);
    out.dataset.ts = newest;
    out.dataset.kw = String(kw);
    $("live-updated").textContent = fmtDateTime(newest);
    const ts = Date.parse(ev.ts) / 1000;
    const last = state.live.times.length ? state.live.times[state.live.times.length - 1] : -Infinity;
    if (ts >= last + 1) {
      state.live.times.push(ts);
      state.live.load.push(kw);
    } else if (ts >= last - 1) {
      state.live.load[state.live.load.length - 1] = kw;
    }
    const cut = ts - LIVE_WINDOW_S;
    while (state.live.times.length && state.live.times[0] < cut) { state.live.times.shift(); state.live.load.shift(); }
    const chart = state.charts.live;
    if (chart) {
      chart.setData([state.live.times, state.live.load]);
      $("live-chart").dataset.points = String(state.live.load.filter((v) => v !== null).length);
    }
  }

  function streamBadge(on) {
    const badge = $("stream-state");
    badge.textContent = on ? t("live_on") : t("live_off");
    badge.className = "badge " + (on ? "ok" : "off");
  }

  async function startLive(id) {
    stopLive();
    await seedLive(id);
    drawLive();
    const ctrl = new AbortController();
    state.stream = ctrl;
    readStream(id, ctrl, 1000);
  }

  // EventSource cannot send an Authorization header, so the stream is read with fetch.
  async function readStream(id, ctrl, backoff) {
    try {
      const resp = await request("/stream?building=" + encodeURIComponent(id),
                                 { signal: ctrl.signal, headers: { Accept: "text/event-stream" } });
      streamBadge(true);
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          handleEvent(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
        }
        backoff = 1000;
      }
    } catch (err) {
      if (ctrl.signal.aborted) return;
      if (err instanceof AuthError) { fail(err); return; }
    }
    if (ctrl.signal.aborted || state.stream !== ctrl) return;
    streamBadge(false);
    setTimeout(() => { if (state.stream === ctrl) readStream(id, ctrl, Math.min(backoff * 2, 30000)); }, backoff);
  }

  function handleEvent(block) {
    let type = "message";
    const data = [];
    block.split("\n").forEach((line) => {
      if (line.startsWith("event:")) type = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
    });
    if (!data.length) return;
    const payload = JSON.parse(data.join("\n"));
    if (type === "reading") applyReading(payload);
  }

  // --- meter ----------------------------------------------------------------------------------------------
  async function showMeter(id, changed) {
    if (!id) { location.hash = "#/portfolio"; return; }
    const meter = await api("/meters/" + encodeURIComponent(id));
    $("meter-title").textContent = meter.id;
    $("meter-back").href = "#/building/" + encodeURIComponent(meter.building);
    const select = $("meter-field");
    if (changed || !select.options.length) {
      const preferred = meter.fields.includes("power_w") ? "power_w" : meter.fields[meter.fields.length - 1];
      select.replaceChildren(...meter.fields.map((f) => el("option", f, { value: f })));
      select.value = preferred;
    }
    const q = t("quality") + t("q_" + (meter.quality || "good"));
    $("meter-quality").textContent = t("m_" + meter.status) + " · " + t("updated") + ": " +
      fmtDateTime(meter.last_reading) + " · " + t("col_complete") + ": " + fmtPct((meter.completeness_pct ?? 0) / 100);
    $("meter-quality").dataset.quality = q;
    await drawMeter(meter);
  }

  const FLAG_COLOR = "#e65100";
  const MAX_FLAG_ITEMS = 30;

  async function drawMeter(meter) {
    const days = Number($("meter-range").value);
    const bucket = days <= 1 ? "15m" : days <= 7 ? "1h" : "3h";
    const field = $("meter-field").value;
    const end = new Date();
    const start = new Date(end.getTime() - days * 86400000);
    const s = await api("/meters/" + encodeURIComponent(meter.id) + "/series?counts=true&field=" +
                        encodeURIComponent(field) + "&bucket=" + bucket + "&start=" + start.toISOString() +
                        "&end=" + end.toISOString());
    const times = s.times.map((x) => Date.parse(x) / 1000);
    const filled = s.counts.filter((c) => c > 0).sort((a, b) => a - b);
    const typical = filled.length ? filled[Math.floor(filled.length / 2)] : 0;
    const gaps = s.counts.map((c) => c === 0);
    const partial = s.counts.filter((c) => c > 0 && c < typical / 2).length;
    const flagged = (s.flagged || s.counts.map(() => 0)).map((n) => n > 0);
    const box = $("meter-chart");
    box.setAttribute("aria-label", meter.id + " " + field);
    makeChart("meter", box, [{ label: field, stroke: "#1565c0", width: 2, spanGaps: false }], [times, s.values], {
      cursor: { drag: { x: true, y: false } },
      scales: { x: { time: true } },
      axes: [axisTime(days > 1), axisNumber()],
      hooks: {
        drawClear: [(u) => shadeGaps(u, times, gaps, s.bucket_s)],
        draw: [(u) => markFlags(u, times, s.values, flagged, s.bucket_s)],
      },
    });
    const nGaps = gaps.filter(Boolean).length;
    const nFlagged = flagged.filter(Boolean).length;
    $("meter-quality").textContent += " · " + t("gaps") + fmtNumber(nGaps) + " · " + t("incomplete") +
      fmtNumber(partial) + " · " + t("flagged") + fmtNumber(nFlagged);
    box.dataset.gaps = String(nGaps);
    box.dataset.flagged = String(nFlagged);
    $("legend-series").textContent = field;
    listFlags(s, flagged);
  }

  function shadeGaps(u, times, gaps, width) {
    const ctx = u.ctx;
    ctx.save();
    ctx.fillStyle = "rgba(120, 120, 120, 0.18)";
    gaps.forEach((g, i) => {
      if (!g) return;
      const x0 = u.valToPos(times[i], "x", true);
      const x1 = u.valToPos(times[i] + width, "x", true);
      ctx.fillRect(x0, u.bbox.top, Math.max(x1 - x0, 1), u.bbox.height);
    });
    ctx.restore();
  }

  // a triangle above each flagged bucket and a ring on its value, so a flag shows even where the line is flat
  function markFlags(u, times, values, flagged, width) {
    const ctx = u.ctx;
    const size = 6 * devicePixelRatio;
    ctx.save();
    ctx.fillStyle = FLAG_COLOR;
    ctx.strokeStyle = FLAG_COLOR;
    ctx.lineWidth = 2 * devicePixelRatio;
    flagged.forEach((f, i) => {
      if (!f) return;
      const x = u.valToPos(times[i] + width / 2, "x", true);
      if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) return;
      const top = u.bbox.top;
      ctx.beginPath();
      ctx.moveTo(x - size, top);
      ctx.lineTo(x + size, top);
      ctx.lineTo(x, top + size * 1.5);
      ctx.closePath();
      ctx.fill();
      if (values[i] !== null && values[i] !== undefined) {
        ctx.beginPath();
        ctx.arc(u.valToPos(times[i], "x", true), u.valToPos(values[i], "y", true), size * 0.8, 0, 2 * Math.PI);
        ctx.stroke();
      }
    });
    ctx.restore();
  }

  function listFlags(s, flagged) {
    const list = $("meter-flags");
    const flags = s.flags || [];
    const sep = state.lang === "fa" ? "، " : ", ";
    const items = [];
    flagged.forEach((f, i) => {
      if (!f) return;
      const names = (flags[i] || []).map((name) => t("f_" + name)).join(sep);
      const count = fmtNumber(s.flagged[i]) + " " + t(s.flagged[i] === 1 ? "reading_one" : "readings");
      items.push(el("li", fmtDateTime(s.times[i]) + " — " + names + " (" + count + ")",
                    { "data-bucket": s.times[i], "data-flags": (flags[i] || []).join(",") }));
    });
    const shown = items.slice(-MAX_FLAG_ITEMS);
    if (items.length > shown.length) shown.unshift(el("li", t("flags_more") + fmtNumber(items.length - shown.length)));
    list.replaceChildren(...(shown.length ? shown : [el("li", t("flags_none"), { class: "none" })]));
  }

  // --- alerts ---------------------------------------------------------------------------------------------
  function fillBuildingFilter() {
    const select = $("alert-building");
    const keep = select.value;
    select.replaceChildren(el("option", t("all"), { value: "" }),
      ...state.buildings.map((b) => el("option", buildingName(b), { value: b.id })));
    select.value = keep;
  }

  function alertQuery() {
    const params = new URLSearchParams();
    [["status", "alert-status"], ["building", "alert-building"], ["commodity", "alert-commodity"]].forEach(([k, id]) => {
      if ($(id).value) params.set(k, $(id).value);
    });
    return params;
  }

  async function refreshAlerts() {
    if (!state.view || state.view.name !== "alerts") return;
    try {
      const params = alertQuery();
      params.set("limit", "200");
      const page = await api("/alerts?" + params.toString());
      renderAlerts(page.items);
      $("alerts-count").textContent = fmtNumber(page.items.length) + " " + t("of_total") + " " + fmtNumber(page.total);
    } catch (err) {
      fail(err);
    }
  }

  function unitName(unit) {
    const fa = { kWh: "کیلووات‌ساعت", m3: "مترمکعب" };
    return state.lang === "fa" ? (fa[unit] || unit) : unit;
  }

  function actionButton(label, enabled, onClick, describedBy) {
    const b = el("button", label, { type: "button" });
    b.disabled = !enabled;
    if (describedBy) b.setAttribute("aria-describedby", describedBy);
    b.addEventListener("click", onClick);
    return b;
  }

  function renderAlerts(items) {
    const names = Object.fromEntries(state.buildings.map((b) => [b.id, buildingName(b)]));
    const rows = [];
    items.forEach((a) => {
      const tr = el("tr", null, { class: "st-" + a.status, "data-alert": String(a.id) });
      const rowId = "alert-" + a.id;
      tr.append(el("td", names[a.building] || a.building, { id: rowId }), el("td", a.meter, { dir: "ltr" }),
                el("td", STRINGS[state.lang]["type_" + a.type] ?? a.type), el("td", fmtDateTime(a.start)), el("td", fmtDateTime(a.end)),
                el("td", fmtNumber(a.excess, 1) + " " + unitName(a.unit), { class: "num" }),
                el("td", t("st_" + a.status), { class: "status" }));
      const actions = el("td", null, { class: "actions" });
      const notes = el("tr", null, { class: "notes", hidden: "" });
      actions.append(
        actionButton(t("ack"), a.status === "open", () => transition(a.id, "ack"), rowId),
        actionButton(t("resolve"), a.status !== "resolved", () => transition(a.id, "resolve"), rowId),
        actionButton(t("comment"), true, () => toggleComments(a.id, notes), rowId));
      tr.append(actions);
      rows.push(tr, notes);
    });
    document.querySelector("#alerts tbody").replaceChildren(...rows);
    $("no-alerts").hidden = items.length > 0;
  }

  async function toggleComments(id, row) {
    if (!row.hidden) { row.hidden = true; return; }
    const comments = await api("/alerts/" + id + "/comments");
    const cell = el("td", null, { colspan: "8" });
    const list = el("ul", null, { class: "comments" });
    comments.forEach((c) => list.append(el("li", c.author + " · " + fmtDateTime(c.created_at) + ": " + c.text)));
    const form = el("form", null, { class: "comment-form" });
    const inputId = "comment-" + id;
    const input = el("input", null, { id: inputId, type: "text", maxlength: "2000", required: "" });
    form.append(el("label", t("comment_label"), { for: inputId }), input, el("button", t("send"), { type: "submit" }));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      try {
        await api("/alerts/" + id + "/comments", { method: "POST", body: JSON.stringify({ text: input.value }),
                                                    headers: { "Content-Type": "application/json" } });
        row.hidden = true;
        await toggleComments(id, row);
      } catch (err) { fail(err); }
    });
    cell.append(list, form);
    row.replaceChildren(cell);
    row.hidden = false;
    input.focus();
  }

  async function transition(id, action) {
    try {
      await api("/alerts/" + encodeURIComponent(id) + "/" + action, { method: "POST" });
      await refreshAlerts();
    } catch (err) {
      fail(err);
    }
  }

  async function exportAlerts(format) {
    try {
      const params = alertQuery();
      params.set("format", format);
      const blob = await (await request("/exports/alerts?" + params.toString())).blob();
      const a = el("a", null, { href: URL.createObjectURL(blob), download: "alerts." + format });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    } catch (err) { fail(err); }
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
    window.addEventListener("hashchange", route);
    $("portfolio-sort").addEventListener("change", () => showPortfolio().catch(fail));
    ["alert-status", "alert-building", "alert-commodity"].forEach((id) => $(id).addEventListener("change", refreshAlerts));
    $("export-csv").addEventListener("click", () => exportAlerts("csv"));
    $("export-xlsx").addEventListener("click", () => exportAlerts("xlsx"));
    ["meter-field", "meter-range"].forEach((id) => $(id).addEventListener("change", () => route()));
    $("meter-reset").addEventListener("click", () => {
      const c = state.charts.meter;
      if (c) c.setScale("x", { min: c.data[0][0], max: c.data[0][c.data[0].length - 1] });
    });
    new ResizeObserver(() => {
      Object.entries(state.charts).forEach(([key, c]) => {
        const box = $(key + "-chart");
        if (box && box.clientWidth) c.setSize({ width: chartWidth(box), height: 260 });
      });
    }).observe($("main"));

    applyLanguage();
    if (sessionStorage.getItem(TOKEN_KEY)) signIn().catch(fail); else showLogin();
  }

  document.addEventListener("DOMContentLoaded", init);
})();
