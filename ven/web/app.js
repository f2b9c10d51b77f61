// Operator dashboard: polls /api/status and /api/history and draws them. No dependencies, no build
// step, nothing fetched from the internet (building networks often have none).
// Query parameters: ?hours=24 (history span), ?refresh=10 (seconds). Access token: open the page as
// /#token=<http.token> once (the fragment never reaches the server or its logs) or type it when asked.
"use strict";

const params = new URLSearchParams(location.search);
const HOURS = clamp(Number(params.get("hours")) || 24, 1, 840);
const REFRESH_S = clamp(Number(params.get("refresh")) || 10, 1, 3600);
const FETCH_TIMEOUT_MS = 8000;
const SVG_NS = "http://www.w3.org/2000/svg";
const MAX_BRIDGE_S = 15 * 60;
const TITLE = document.title;

const SERIES = [
  {key: "power_kw", label: "Power (1 min)", color: "var(--power)", width: 1.2},
  {key: "demand_kw", label: "Demand (15 min)", color: "var(--demand)", width: 2.4},
  {key: "forecast_15", label: "Forecast 15 min ahead", color: "var(--f15)", width: 1.8, dash: "6 4"},
  {key: "forecast_60", label: "Forecast 60 min ahead", color: "var(--f60)", width: 1.8, dash: "2 4"},
];
const FLAGS = [
  {key: "high_load", label: "high load", color: "var(--high)"},
  {key: "low_load", label: "low load", color: "var(--low)"},
];
const LEVEL_COLORS = {1: "var(--l1)", 2: "var(--l2)", 3: "var(--l3)"};
const TILE_POINTS = [
  ["meter-power", "Meter power"], ["input-power-meter", "Input power (BAS)"],
  ["fifteen-min-future-power", "Forecast 15 min"], ["one-hour-future-power", "Forecast 60 min"],
  ["power-rate-of-change", "Trend (kW/min)"], ["ADR-Event-Level", "Event level"],
  ["ADR-Event-Start-Minutes", "Next event in (min)"],
  ["high-load-conditions", "High load"], ["low-load-conditions", "Low load"],
];
const UNIT_TEXT = {kilowatts: "kW", minutes: "min", noUnits: ""};

// Test hooks and a summary of what was drawn, for the headless-browser test and for curious operators.
const dashboard = window.dashboard = {ready: false, draws: 0, failures: 0, series: {}, flags: {}, events: 0,
                                      minutes: 0, lastError: null, lastOk: null, stale: false,
                                      problems: []};
let hist = null;
let gw = null;

function clamp(v, lo, hi) { return Math.min(hi, Math.max(lo, v)); }
function $(id) { return document.getElementById(id); }
function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// ---- time and number formatting (UTC, like the operator log) ----
function toMs(t) {
  if (t === null || t === undefined || t === "") return null;
  if (typeof t === "number") return t * 1000;
  const ms = Date.parse(t);
  return Number.isNaN(ms) ? null : ms;
}
function pad(n) { return String(n).padStart(2, "0"); }
function fmtTime(ms, withDate) {
  if (ms === null) return "";
  const d = new Date(ms);
  const hm = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
  return withDate ? `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${hm}` : hm;
}
function fmtAgo(ms) {
  const s = Math.round((Date.now() - ms) / 1000);
  if (Math.abs(s) < 90) return s >= 0 ? `${s} s ago` : `in ${-s} s`;
  const m = Math.round(s / 60);
  if (Math.abs(m) < 90) return m >= 0 ? `${m} min ago` : `in ${-m} min`;
  const h = (s / 3600).toFixed(1);
  return s >= 0 ? `${h} h ago` : `in ${-h} h`;
}
function fmtNum(v, digits) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "boolean") return v ? "active" : "inactive";
  if (typeof v !== "number") return String(v);
  const d = digits === undefined ? (Math.abs(v) >= 100 ? 1 : 2) : digits;
  return Number.isInteger(v) ? String(v) : v.toFixed(d);
}
const ISO_RE = /^\d{4}-\d\d-\d\dT\d\d:\d\d/;
// A relative age ("5 s ago") is drawn as a span that tickAges() rewrites every second from the
// timestamp it carries, so it keeps counting while the gateway is unreachable instead of freezing
// at the age it had on the last good answer.
function agoSpan(ms) { return el("span", {class: "ago", "data-ms": String(ms)}, fmtAgo(ms)); }
function tickAges() {
  for (const node of document.querySelectorAll(".ago[data-ms]")) node.textContent = fmtAgo(Number(node.dataset.ms));
}
function fmtStamp(ms) { return `${fmtTime(ms, true)}:${pad(new Date(ms).getUTCSeconds())}`; }
// fill node with v; timestamps get their UTC time and a live relative age
function putValue(node, v) {
  const ms = typeof v === "string" && ISO_RE.test(v) ? toMs(v) : null;
  if (ms === null) {
    const text = fmtValue(v);
    node.textContent = text.length > 160 ? text.slice(0, 157) + "…" : text;
    return;
  }
  node.append(document.createTextNode(`${fmtStamp(ms)}Z (`), agoSpan(ms), document.createTextNode(")"));
}
function fmtValue(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v === "number") return fmtNum(v);
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}
function humanize(key) { return key.replace(/_/g, " "); }
function fmtDuration(s) {
  if (typeof s !== "number") return "";
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return d ? `${d} d ${h} h` : h ? `${h} h ${m} min` : `${m} min`;
}

// ---- fetching ----
function token() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    // a token pasted with a raw "%" (ab%zz) is not valid percent-encoding: use the text as typed
    // rather than throw, and drop the fragment either way so a bad one cannot stick in the address bar
    let t = m[1];
    try { t = decodeURIComponent(t); } catch (err) { /* keep the raw text */ }
    sessionStorage.setItem("edge-gateway-token", t);
    window.history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("edge-gateway-token") || "";
}
class HttpError extends Error {}
async function getJSON(path) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), FETCH_TIMEOUT_MS);
  const headers = {};
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  try {
    const resp = await fetch(path, {headers, signal: ctl.signal, cache: "no-store"});
    if (resp.status === 401) throw new HttpError("401");
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new Error(`${path}: HTTP ${resp.status} ${body.error || ""}`.trim());
    return body;
  } catch (err) {
    if (err.name === "AbortError") throw new Error(`${path}: no answer within ${FETCH_TIMEOUT_MS / 1000} s`);
    if (err instanceof TypeError) throw new Error(`${path}: gateway unreachable`);
    throw err;
  } finally {
    clearTimeout(timer);
  }
}
async function getHealth() {
  try {
    const resp = await fetch("/healthz", {cache: "no-store"});
    return {ok: resp.ok, text: (await resp.text()).trim()};
  } catch (err) {
    return {ok: false, text: "unreachable"};
  }
}

let failingSince = null;
async function refresh() {
  try {
    const [s, h, health] = await Promise.all([getJSON("/api/status"), getJSON(`/api/history?hours=${HOURS}`),
                                              getHealth()]);
    gw = normalizeStatus(s); hist = h;
    const back = failingSince !== null;
    failingSince = null;
    dashboard.lastError = null;
    dashboard.lastOk = Date.now();
    dashboard.stale = false;
    document.body.classList.remove("stale");
    $("banner").hidden = true;
    $("token-form").hidden = true;
    document.title = TITLE;
    const found = renderHeader(health);
    renderTiles();
    renderPoints();
    renderEvents();
    renderSections();
    drawChart();
    $("updated").textContent = `updated ${fmtStamp(Date.now())} UTC · every ${REFRESH_S} s`;
    announce(back ? "Gateway answering again." : "", problemChanges(found));
  } catch (err) {
    const first = failingSince === null;
    failingSince = failingSince || Date.now();
    dashboard.failures++;
    const since = `since ${fmtStamp(failingSince)} UTC`;
    if (err instanceof HttpError) {
      // no token yet, or the token was changed on the gateway while this page was open
      $("token-form").hidden = false;
      dashboard.lastError = "token required";
      const text = dashboard.lastOk ? `The gateway refused the access token (${since}); it may have been changed. ` +
                                      "Enter the current one below." : null;
      showStale(token() ? "token refused" : "token required", text, first);
      return;
    }
    dashboard.lastError = err.message;
    showStale(/unreachable/.test(err.message) ? "gateway unreachable" : "gateway not answering",
              `${err.message} (${since}).`, first);
  }
}
// What a screen reader says (#announce): each change once. The problem list itself is not a live
// region: it is rebuilt on every refresh and its ages tick, so it would be read out every few seconds.
let heard = null;  // problem key -> its words, as last announced
function announce(...parts) {
  const text = parts.filter(Boolean).join(" ");
  if (text) $("announce").textContent = text;
}
function problemChanges(found) {
  const now = new Map(found.map((p) => [p.key, p.what]));
  const before = heard || new Map();
  heard = now;
  const added = [...now].filter(([k]) => !before.has(k)).map(([, what]) => what);
  const gone = [...before].filter(([k]) => !now.has(k)).map(([, what]) => what);
  return [added.length ? `Needs attention: ${added.join("; ")}.` : "", gone.length ? `Cleared: ${gone.join("; ")}.` : ""]
    .filter(Boolean).join(" ");
}
// The last answer stays on screen (better than a blank page) but must not look current: the pills
// it produced turn grey behind a red one saying why, the data is dimmed, ages keep counting.
function showStale(why, bannerText, first) {
  dashboard.stale = true;
  // a tab in the background says it too
  document.title = `${why} · ${TITLE}`;
  if (first) {
    announce(`${why[0].toUpperCase()}${why.slice(1)} since ${fmtStamp(failingSince)} UTC.`,
             dashboard.lastOk ? `The figures shown are from ${fmtStamp(dashboard.lastOk)} UTC.` : "");
  }
  const banner = $("banner");
  if (bannerText) {
    const from = dashboard.lastOk ? ` Showing data from ${fmtStamp(dashboard.lastOk)} UTC.` : "";
    banner.textContent = bannerText + from;
    banner.hidden = false;
  } else {
    banner.hidden = true;
  }
  if (dashboard.lastOk) document.body.classList.add("stale");
  const pills = $("pills");
  for (const p of pills.querySelectorAll(".pill.why")) p.remove();
  for (const p of pills.querySelectorAll(".pill")) {
    if (!p.classList.contains("old")) p.title = `as of ${fmtStamp(dashboard.lastOk)} UTC (no longer confirmed)`;
    p.className = "pill old";
  }
  pills.prepend(el("span", {class: "pill bad why"}, why));
  const updated = $("updated");
  updated.replaceChildren();
  if (dashboard.lastOk) {
    updated.append(document.createTextNode(`last update ${fmtStamp(dashboard.lastOk)} UTC (`), agoSpan(dashboard.lastOk),
                   document.createTextNode(`) · retrying every ${REFRESH_S} s`));
  } else {
    updated.textContent = `no answer yet · retrying every ${REFRESH_S} s`;
  }
}

// ---- the status body: accept points as a list or as a map keyed by name, "flags" or "status_flags",
// event levels given directly or found in their SIMPLE signal intervals ("payload" or "value") ----
function intervalValue(iv) { return iv.payload !== undefined ? iv.payload : iv.value; }
function eventLevel(e) {
  if (typeof e.level === "number") return e.level;
  const steps = levelSteps(e);
  const current = steps.find((st) => st.current);
  return current ? current.level : steps.length ? Math.max(...steps.map((st) => st.level)) : null;
}
function normalizeStatus(s) {
  const points = Array.isArray(s.points) ? s.points :
    Object.entries(s.points || {}).map(([name, p]) => Object.assign({name}, p));
  for (const p of points) p.status_flags = p.status_flags || p.flags || {};
  for (const e of s.events || []) e.level = eventLevel(e);
  return Object.assign({}, s, {points});
}

// ---- header, tiles, tables ----
function pointByName(name) {
  return ((gw && gw.points) || []).find((p) => p.name === name);
}
function renderHeader(health) {
  const pills = $("pills");
  pills.replaceChildren();
  const add = (text, cls, title) => pills.append(el("span", {class: `pill ${cls}`, title: title || ""}, text));
  const found = findProblems(health);
  renderProblems(found);
  const bad = found.filter((p) => p.level === "bad" && p.key !== "health").length;
  // /healthz stays 200 while the process works (a restart would not bring a VTN, a meter or a BAS back, and
  // would lose what an unwritable storage.path keeps in memory), but green "healthy" beside red pills misleads
  if (!health.ok) add(`unhealthy: ${health.text}`, "bad", health.text);
  else if (bad) add(`running, ${bad} problem${bad > 1 ? "s" : ""}`, "warn", `/healthz: ${health.text} (the process is up; see "Needs attention")`);
  else add("healthy", "ok", health.text);
  const vtn = gw.vtn || {};
  if ("connected" in vtn || "registered" in vtn) {
    const up = vtn.connected !== false && vtn.registered !== false;
    const never = neverRegistered(vtn);
    add(up ? (flaky(vtn) ? "VTN intermittent" : "VTN connected") : (never ? "VTN not registered" : "VTN disconnected"),
        up ? (flaky(vtn) ? "warn" : "ok") : "bad", vtn.last_error || "");
  }
  const level = pointByName("ADR-Event-Level");
  if (level && typeof level.value === "number") {
    add(level.value > 0 ? `event level ${level.value}` : "no event", level.value > 0 ? "warn" : "");
  }
  const comm = communication();
  if (comm) add("BACnet comms disabled", "bad", `${comm.mode} by ${comm.by || "?"}`);
  const meter = gw.meter || {};
  if (meter.fault) add("meter fault", "bad", meter.last_error || "");
  else if ((meter.fault_window || {}).intermittent === true) add("meter intermittent", "warn", meter.fault_window.last_failure || "");
  if (vtn.opt_answer_error) add("opt answer refused", "bad", vtn.opt_answer_error);
  const fc = gw.forecaster || {};
  if (fc.input_stale === true) add("no forecaster input", "bad", "forecasts and load flags read fault");
  else if (noThreshold()) add("no load threshold yet", "warn", "high-load and low-load read fault (cannot tell)");
  // an unwritable storage.path loses events, telemetry or forecast history on a restart: say so up top
  const storage = gw.storage || {};
  if (storage.ok === false) {
    const why = Object.entries(storage.errors || {}).map(([part, e]) => `${part}: ${e}`).join("; ");
    add("storage not writable", "bad", `${storage.path || "storage.path"}: ${why}`);
  }
  const parts = [];
  if (gw.version) parts.push(`version ${gw.version}`);
  if (typeof gw.uptime_seconds === "number") parts.push(`up ${fmtDuration(gw.uptime_seconds)}`);
  parts.push(`chart: last ${HOURS} h, times in UTC`);
  $("footer").textContent = parts.join(" · ");
  return found;
}
// ---- what is wrong and what to do: one line per problem the status shows, in words ----
function communication() {
  const c = (gw.device || {}).communication;
  return c && typeof c === "object" && c.mode && c.mode !== "enable" ? c : null;
}
// an intermittent VTN fault still open (ven/vtn_outage.py): connected at this moment, failing again now and then
function flaky(vtn) {
  const f = vtn.fault;
  return vtn.connected === true && !!f && f.intermittent === true && !f.ended;
}
function fmtSpan(s) { return typeof s === "number" && s < 120 ? `${Math.round(s)} s` : fmtDuration(s); }
// a gateway that never registered (refused, wrong vtn_url) is not one that lost its VTN
function neverRegistered(vtn) { return vtn.registered === false || ("registration_id" in vtn && !vtn.registration_id); }
function lastForecast() { return (gw.forecaster || {}).last_forecast || null; }
function noThreshold() {
  // the load flags have no threshold (a new install's first day, a flat history): they read fault
  const lf = lastForecast(), fc = gw.forecaster || {};
  if (!lf || fc.input_stale === true) return false;
  return lf.high_threshold_kw === null || lf.low_threshold_kw === null;
}
function stampText(v) {
  const ms = typeof v === "number" ? v * 1000 : toMs(v);
  return ms === null ? "never" : `${fmtStamp(ms)}Z (${fmtAgo(ms)})`;
}
function findProblems(health) {
  const out = [];
  const add = (key, level, what, detail, todo) => out.push({key, level, what, detail, todo});
  if (!health.ok) add("health", "bad", "Gateway unhealthy", health.text, "see the gateway's log");
  if (gw.clock_suspect === true) {
    add("clock", "bad", "Wall clock not set", `the gateway's clock reads ${gw.now || "a date before this version"}; meter readings are not reported to the VTN`,
        "set the host's time (NTP)");
  }
  const comm = communication();
  if (comm) {
    const until = comm.until ? `until ${stampText(comm.until)}` : "until a DeviceCommunicationControl enable";
    add("communication", "bad", "BACnet communication disabled",
        `${comm.mode} by ${comm.by || "a BACnet client"} since ${stampText(comm.since)}, ${until}: the meter is not read and the BAS gets no COV notifications (points are still answered)`,
        "send DeviceCommunicationControl enable from that tool, or wait for the time-out; a restart also ends it");
  }
  const vtn = gw.vtn || {};
  const queued = ((vtn.telemetry || {}).pending) ?? ((gw.telemetry || {}).queue_depth);
  if (vtn.connected === false || vtn.registered === false) {
    const err = vtn.last_error || "";
    const never = neverRegistered(vtn);
    const refused = /\b(HTTP [45]\d\d|refused|[45]\d\d )/.test(err) && !/unreachable|timed? ?out/i.test(err);
    const wait = typeof queued === "number" && queued > 0 ? `; ${queued} telemetry interval(s) wait in the queue` : "; telemetry waits in the queue";
    add("vtn", "bad", refused ? (never ? "VTN refuses registration" : "VTN refuses the gateway") :
                               (never ? "VTN not registered" : "VTN unreachable"),
        err || "no answer from the VTN",
        (refused ? "check openadr.vtn_url (the VTN's OpenADR 2.0b endpoint), openadr.ven_name and the enrolment with the utility"
                 : "check that the VTN is up and reachable from the gateway (network, proxy, TLS)") + wait);
  }
  if (flaky(vtn)) {
    // connected now, so the item above is gone most of the time: the fault the log holds open is said here
    const f = vtn.fault;
    const losses = f.context_losses ? `, ${f.context_losses} time(s) it asked to register again` : "";
    add("vtn-intermittent", "warn", "VTN intermittent",
        `since ${stampText(f.since)}: ${f.polls_failed} of ${f.polls} polls failed${losses}; not connected ${fmtSpan(f.not_connected_seconds)} in all. Events and telemetry go on while it answers`,
        `check the proxy or load balancer in front of the VTN (HTTP 502/503, reset connections, time-outs) and that every VTN behind it knows this VEN; this clears by itself once the VTN answers steadily for ${fmtSpan(f.settle_seconds)}`);
  }
  if (vtn.opt_answer_error) {
    add("opt", "bad", "VTN refused an opt answer", vtn.opt_answer_error,
        "the VTN does not know whether the site takes part: tell the utility; the answer is not sent again");
  }
  if (vtn.report_offer_error) add("report", "bad", "VTN refused the telemetry report offer", vtn.report_offer_error, "check the enrolment with the utility");
  const meter = gw.meter || {};
  if (meter.fault === true) {
    const err = meter.last_error || "";
    const todo = comm ? "caused by the communication disable above" :
      /not a power unit|units/.test(err) ? "point meter.object at the meter's power (kW or W) object, or correct the meter's units" :
      /no response|timed? ?out|router|unreachable|no route/i.test(err) ? "check the meter and its router are powered and wired, and meter.address / meter.router" :
      "see the meter's last error";
    add("meter", "bad", "Meter fault", err || "the last meter read failed", todo);
  }
  // reads lost now and then, answering between them: meter.fault is mostly off, and the log said the fault once
  const fw = meter.fault_window;
  if (meter.fault !== true && fw && typeof fw === "object" && fw.intermittent === true) {
    add("meter-intermittent", "warn", "Meter answering intermittently",
        `${fw.failed_reads} of ${fw.reads} reads failed since ${stampText(fw.since)}, the last ${stampText(fw.last_failed_at)}: ` +
        `${fw.last_failure || "the read failed"}; the readings in between are used`,
        "if it lasts, check the meter's wiring and its router (a busy MS/TP trunk or router loses requests), or raise meter.timeout_seconds if reads time out");
  }
  const storage = gw.storage || {};
  if (storage.ok === false) {
    const why = [...new Set(Object.values(storage.errors || {}))].join("; ");
    const where = storage.path && !why.includes(storage.path) ? `${storage.path}: ` : "";
    add("storage", "bad", "storage.path not writable", `${where}${why || "cannot be written"}`,
        "events, queued telemetry and forecast history are kept in memory only and a restart now loses them: make the file's directory writable (permissions, read-only mount, full disk); the gateway tries again by itself");
  }
  const fc = gw.forecaster || {};
  if (fc.input_stale === true) {
    const src = fc.source || "auto";
    const bas = fc.last_input_at ? `the BAS last wrote input-power-meter ${stampText(fc.last_input_at)}` :
      "the BAS has not written input-power-meter since the gateway started";
    const mtr = fc.last_meter_at ? `the last meter reading was ${stampText(fc.last_meter_at)}` : "no meter reading since the gateway started";
    const detail = src === "bacnet_input" ? bas : src === "meter" ? mtr : `${bas}; ${mtr}`;
    const todo = src === "bacnet_input" ? "check the BAS program that writes input-power-meter (or set forecaster.source = \"auto\" to fall back to the meter)" :
      src === "meter" ? "get the meter answering again (see Meter)" : "get the BAS writing input-power-meter or the meter answering again";
    add("forecaster-input", "bad", "Forecaster has no power input",
        `${detail}: forecasts, trend and load flags read fault (the BAS must treat them as unknown)`, todo);
  } else if (noThreshold()) {
    const minutes = typeof fc.history_minutes === "number" ? ` (${fmtDuration(fc.history_minutes * 60)} so far)` : "";
    add("threshold", "warn", "Load flags have no threshold yet",
        `high-load and low-load read fault, meaning "cannot tell": percentile thresholds need a day of history${minutes} that is not flat`,
        "wait for a day of history, or set forecaster.high_load_kw and low_load_kw for fixed thresholds");
  }
  if (fc.fit_ok === false) add("fit", "warn", "Forecaster fit failing", "the learned model is not refitted; the last model or persistence serves", "see the gateway's log");
  // settings, not faults: each stays until the config is changed, so it is said here, not only in the start-up log
  (Array.isArray(gw.config_warnings) ? gw.config_warnings : []).forEach((w, i) =>
    add(`config-${i}`, "warn", "Configuration warning", String(w),
        "change the setting in the gateway's config file (edge-gateway check-config lists these) and restart the gateway"));
  return out;
}
function renderProblems(found) {
  const host = $("problems");
  const list = host.querySelector("ul");
  list.replaceChildren();
  for (const p of found) {
    const li = el("li", {class: `sev-${p.level}`, "data-problem": p.key, "data-level": p.level});
    li.append(el("span", {class: "what"}, p.what), document.createTextNode(": "), el("span", {class: "detail"}, p.detail));
    if (p.todo) li.append(document.createTextNode(" — "), el("span", {class: "todo"}, p.todo));
    list.append(li);
  }
  host.hidden = !found.length;
  host.classList.toggle("only-warn", found.length > 0 && found.every((p) => p.level !== "bad"));
  dashboard.problems = found.map((p) => p.key);
}
// a tile in fault says why in a few words (the full text is in "Needs attention")
function tileWhy(name) {
  const fc = gw.forecaster || {};
  if (name === "meter-power") {
    if (communication()) return "BACnet comms disabled";
    return (gw.meter || {}).last_error || "meter read failed";
  }
  if (["fifteen-min-future-power", "one-hour-future-power", "power-rate-of-change"].includes(name)) {
    return fc.input_stale === true ? "no power input" : "no forecast yet";
  }
  if (name === "high-load-conditions" || name === "low-load-conditions") {
    if (fc.input_stale === true) return "no power input";
    if (noThreshold()) return "no threshold yet";
    return "cannot tell";
  }
  return "";
}
// how old the value on a power tile is: a BAS that stopped writing leaves its last kW on the point
function tileAge(name) {
  if (name === "input-power-meter") {
    const fc = gw.forecaster || {};
    if (!("last_input_at" in fc)) return null;
    if (!fc.last_input_at) return {text: "not written since start", old: true};
    const ms = toMs(fc.last_input_at);
    return {text: `written ${fmtAgo(ms)}`, old: Date.now() - ms > 1000 * (fc.input_stale_seconds || 300)};
  }
  if (name === "meter-power") {
    const m = gw.meter || {};
    if (!("last_value_at" in m)) return null;
    if (!m.last_value_at) return {text: "no reading since start", old: true};
    return {text: `read ${fmtAgo(toMs(m.last_value_at))}`, old: m.fault === true};
  }
  return null;
}
function renderTiles() {
  const tiles = $("tiles");
  tiles.replaceChildren();
  for (const [name, label] of TILE_POINTS) {
    const p = pointByName(name);
    if (!p) continue;
    const flags = p.status_flags || {};
    const fault = flags.fault || flags.in_alarm;
    const on = typeof p.value === "boolean" ? p.value : false;
    const tile = el("div", {class: `tile${fault ? " is-fault" : ""}${on ? " on" : ""}`, "data-point": name});
    tile.append(el("div", {class: "label"}, label));
    // the start-minutes point is -1 when no event is pending: "-1 min" would read as "a minute ago"
    const none = name === "ADR-Event-Start-Minutes" && typeof p.value === "number" && p.value < 0;
    const value = el("div", {class: "value"}, fault ? "fault" : none ? "none" :
                     (typeof p.value === "boolean" ? (p.value ? "ON" : "off") : fmtNum(p.value)));
    const unit = UNIT_TEXT[p.units] !== undefined ? UNIT_TEXT[p.units] : (p.units || "");
    if (unit && !fault && !none) value.append(el("span", {class: "unit"}, unit));
    tile.append(value);
    if (fault) {
      const why = tileWhy(name);
      if (why) tile.append(el("div", {class: "why", title: why}, why));
    }
    const age = tileAge(name);
    if (age) tile.append(el("div", {class: `age${age.old ? " old" : ""}`}, age.text));
    tiles.append(tile);
  }
}
function flagBadges(flags) {
  const frag = document.createDocumentFragment();
  const set = Object.entries(flags || {}).filter(([, v]) => v);
  if (!set.length) frag.append(el("span", {class: "flag normal"}, "normal"));
  for (const [k] of set) frag.append(el("span", {class: `flag ${k}`}, humanize(k)));
  return frag;
}
// a binary point in the words a BAS graphic shows (its inactiveText / activeText), not "active"
function stateText(p) {
  if (typeof p.value === "boolean" && Array.isArray(p.texts) && p.texts.length === 2) return p.texts[p.value ? 1 : 0];
  return fmtNum(p.value);
}
function renderPoints() {
  const body = $("points").tBodies[0];
  body.replaceChildren();
  for (const p of gw.points || []) {
    const tr = el("tr", {"data-point": p.name, title: p.description || ""});
    tr.append(el("td", {}, p.name), el("td", {class: "muted minor"}, p.object || ""),
              el("td", {class: "num"}, stateText(p)),
              el("td", {}, UNIT_TEXT[p.units] !== undefined ? UNIT_TEXT[p.units] : (p.units || "")));
    const flags = el("td");
    flags.append(flagBadges(p.status_flags));
    tr.append(flags);
    body.append(tr);
  }
}
function levelBadge(level) {
  const span = el("span", {class: `level l${level}`}, level === null || level === undefined ? "—" : fmtNum(level));
  return span;
}
function intervalEnd(iv, openEnded) {
  const start = toMs(iv.start);
  if (iv.end) return toMs(iv.end);
  if (openEnded && iv.duration_seconds === null) return Infinity;  // holds until the VTN cancels it
  return start !== null && typeof iv.duration_seconds === "number" ? start + iv.duration_seconds * 1000 : null;
}
// The level steps of an event, in order, from its SIMPLE signal (an event can go 1 -> 2 -> 3 over
// its intervals; one number would hide that). Other signals (prices, ...) are not levels.
function levelSteps(e) {
  const sigs = e.signals || [];
  let chosen = sigs.filter((s) => String(s.name || "").toUpperCase() === "SIMPLE");
  if (!chosen.length) chosen = sigs.filter((s) => String(s.type || "").toLowerCase() === "level");
  // unnamed, untyped signals (a hand-made status): take what there is; a price is never a level
  if (!chosen.length) chosen = sigs.filter((s) => !s.name && !s.type);
  const now = Date.now();
  const steps = [];
  for (const s of chosen) {
    for (const iv of s.intervals || []) {
      const v = intervalValue(iv);
      if (typeof v !== "number") continue;
      const start = toMs(iv.start), end = intervalEnd(iv, e.open_ended);
      steps.push({level: v, start, current: start !== null && end !== null && start <= now && now < end});
    }
  }
  steps.sort((a, b) => (a.start === null ? 0 : a.start) - (b.start === null ? 0 : b.start));
  return steps;
}
function levelCell(e) {
  const td = el("td", {class: "num levels"});
  const steps = levelSteps(e);
  if (steps.length <= 1) {
    td.append(levelBadge(steps.length ? steps[0].level : e.level));
    return td;
  }
  steps.forEach((st, i) => {
    if (i) td.append(el("span", {class: "arrow"}, " → "));
    const badge = levelBadge(st.level);
    // while the event runs, the interval in force now is outlined
    if (st.current && e.status !== "cancelled") { badge.classList.add("current"); badge.title = "in force now"; }
    td.append(badge);
  });
  return td;
}
function signalSummary(signals) {
  return (signals || []).map((s) => {
    const values = (s.intervals || []).map((i) => fmtNum(intervalValue(i)));
    return `${s.name || "signal"}${s.type ? "/" + s.type : ""}: ${values.join(" → ")}`;
  }).join("; ");
}
function renderEvents() {
  const body = $("events").tBodies[0];
  body.replaceChildren();
  const events = gw.events || [];
  if (!events.length) {
    body.append(el("tr", {}, null));
    body.rows[0].append(el("td", {colspan: 7, class: "muted"}, "no pending, active or recent events"));
  }
  for (const e of events) {
    const tr = el("tr", {class: e.status || "", "data-event": e.event_id || ""});
    const level = levelCell(e);
    const opt = el("td", {}, e.opt || "");
    if (e.opt === "optOut") opt.classList.add("bad");
    let phase = e.status === "far" || e.status === "near" ? `pending (${e.status})` : (e.status || "");
    // overlapping events: the one of highest priority sets ADR-Event-Level
    if (e.status === "active" && e.sets_level === false && e.opt !== "optOut") phase = "active (overridden)";
    const id = e.priority ? `${e.event_id || ""} (priority ${e.priority})` : (e.event_id || "");
    const end = e.status === "cancelled" && e.cancelled_at ? `cancelled ${fmtTime(toMs(e.cancelled_at), true)}`
      : e.open_ended && !e.end ? "until cancelled" : fmtTime(toMs(e.end), true);
    tr.append(el("td", {}, id), el("td", {}, phase), level,
              el("td", {}, fmtTime(toMs(e.start), true)), el("td", {}, end),
              opt, el("td", {class: "muted minor"}, signalSummary(e.signals)));
    body.append(tr);
  }
}
const SECTIONS = [["vtn", "VTN"], ["telemetry", "Telemetry"], ["meter", "Meter"], ["forecaster", "Forecaster"],
                  ["schedule", "Demand response"], ["storage", "Storage"], ["device", "BACnet device"]];
// nested objects become "parent.child" rows so every value stays readable
function flatten(obj, prefix, out) {
  for (const [k, v] of Object.entries(obj)) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, key, out); else out.push([key, v]);
  }
  return out;
}
function renderSections() {
  const host = $("sections");
  host.replaceChildren();
  for (const [key, title] of SECTIONS) {
    const data = gw[key];
    if (!data || typeof data !== "object") continue;
    const card = el("section", {class: "card", "data-section": key});
    card.append(el("h2", {}, title));
    const dl = el("dl", {class: "kv"});
    for (const [k, v] of flatten(data, "", [])) {
      // flag problems, not measurements: "last_error" text or a "fault" that is on, not "validation_error_kw";
      // storage's per-part reasons ("errors.events") and any "ok"/"storage_ok" that is false
      const text = typeof v === "string" && v !== "";
      const bad = (/(^|[._])(last_)?error$/.test(k) && text) || (/(^|\.)errors\./.test(k) && text) ||
                  (/fault$/.test(k) && v === true) || (/(^|[._])ok$/.test(k) && v === false) ||
                  ((k === "connected" || k === "registered") && v === false) ||
                  (k === "input_stale" && v === true) || (k === "communication.mode" && typeof v === "string" && v !== "enable");
      // epoch-second timestamps ("issued_at", "history_first") read as times
      const epoch = /(_at|_first|_last|_time)$/.test(k) && typeof v === "number" && v > 1e9 && v < 1e10;
      const dd = el("dd", {class: bad ? "bad" : ""});
      putValue(dd, epoch ? new Date(v * 1000).toISOString() : v);
      dl.append(el("dt", {}, humanize(k)), dd);
    }
    card.append(dl);
    host.append(card);
  }
}

// ---- chart ----
function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const f = raw / mag;
  return mag * (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10);
}
function legend() {
  const host = $("legend");
  host.replaceChildren();
  const hz = (hist && hist.horizons_minutes) || [15, 60];
  SERIES[2].label = `Forecast ${hz[0]} min ahead`;
  SERIES[3].label = `Forecast ${hz[1]} min ahead`;
  for (const s of SERIES) {
    const item = el("span");
    const sw = el("i", {class: s.dash ? "dash" : "", style: `border-top-color:${s.color}`});
    item.append(sw, document.createTextNode(s.label));
    host.append(item);
  }
  const th = el("span");
  th.append(el("i", {class: "dash", style: "border-top-color:var(--high)"}), document.createTextNode("Thresholds"));
  host.append(th);
  for (const l of [1, 2, 3]) {
    const item = el("span");
    item.append(el("i", {class: "box", style: `background:${LEVEL_COLORS[l]}`}), document.createTextNode(`Event level ${l}`));
    host.append(item);
  }
  const out = el("span", {"data-legend": "opted-out"});
  out.append(el("i", {class: "box hatched"}), document.createTextNode("Opted out (hatched)"));
  host.append(out);
}
// the chart in words, for a screen reader: the figures an operator reads off the drawing
function chartSummary(minutes, eventCount, flagRuns) {
  const at = (i) => fmtTime(minutes[i] * 1000, true);
  const parts = [];
  for (const s of SERIES) {
    const v = hist[s.key] || [];
    let last = -1, lo = -1, hi = -1;
    v.forEach((x, i) => {
      if (typeof x !== "number") return;
      last = i;
      if (lo < 0 || x < v[lo]) lo = i;
      if (hi < 0 || x > v[hi]) hi = i;
    });
    if (last >= 0) {
      parts.push(`${s.label}: ${fmtNum(v[last])} kW at ${at(last)}, lowest ${fmtNum(v[lo])} kW at ${at(lo)}, ` +
                 `highest ${fmtNum(v[hi])} kW at ${at(hi)}`);
    }
  }
  for (const [k, label] of [["high_threshold_kw", "high-load threshold"], ["low_threshold_kw", "low-load threshold"]]) {
    if (typeof hist[k] === "number") parts.push(`${label} ${fmtNum(hist[k], 0)} kW`);
  }
  for (const f of FLAGS) parts.push(`${f.label} for ${flagRuns[f.key].minutes} min`);
  parts.push(`${eventCount} event interval${eventCount === 1 ? "" : "s"} shaded`);
  return `Power and demand, last ${HOURS} h, times in UTC. ${parts.join("; ")}.`;
}
function drawChart() {
  legend();
  const root = $("chart-svg");
  const W = Math.max(240, root.clientWidth || 900);
  const H = root.clientHeight || 420;
  root.setAttribute("viewBox", `0 0 ${W} ${H}`);
  root.replaceChildren();
  const minutes = (hist && hist.minutes) || [];
  const LANE = 16;
  // on a phone the 96 px right margin for threshold labels would leave the plot half the width:
  // those labels go inside the plot there instead; the left one holds the flag lanes' "high load" everywhere
  const narrow = W < 600;
  const m = {l: 60, r: narrow ? 8 : 96, t: 18, b: 34 + FLAGS.length * LANE + 8};
  const pw = W - m.l - m.r, ph = H - m.t - m.b;
  $("chart-title").textContent = `Power and demand, last ${HOURS} h`;
  dashboard.minutes = minutes.length;
  dashboard.series = {}; dashboard.flags = {}; dashboard.events = 0;
  // minutes but not one reading or forecast (a meter faulted since start): axes scaled to nothing
  // would be a blank plot with a made-up kW range, so say it in words
  const anyData = !!hist && SERIES.some((s) => (hist[s.key] || []).some((v) => typeof v === "number"));
  if (!minutes.length || !anyData) {
    const noStore = gw && gw.storage && gw.storage.ok === false;
    const empty = noStore ? "no history to draw: the chart is drawn from storage.path, which cannot be written (see Needs attention)" :
      minutes.length ? `no data yet: no meter readings or forecasts in the last ${HOURS} h` : "no history yet";
    root.append(svg("text", {x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty"}, empty));
    root.setAttribute("aria-label", `Power and demand, last ${HOURS} h: ${empty}`);
    dashboard.ready = true; dashboard.draws++;
    return;
  }
  const t0 = minutes[0] * 1000, t1 = Math.max(minutes[minutes.length - 1] * 1000 + 60000, t0 + 60000);
  let lo = Infinity, hi = -Infinity;
  for (const s of SERIES) for (const v of hist[s.key] || []) if (typeof v === "number") { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  for (const k of ["high_threshold_kw", "low_threshold_kw"]) {
    const v = hist[k];
    if (typeof v === "number") { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  }
  if (lo === Infinity) { lo = 0; hi = 1; }
  if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
  const yStep = niceStep(hi - lo, 6);
  lo = Math.floor((lo - (hi - lo) * 0.04) / yStep) * yStep;
  hi = Math.ceil((hi + (hi - lo) * 0.04) / yStep) * yStep;
  const x = (ms) => m.l + (ms - t0) / (t1 - t0) * pw;
  const y = (v) => m.t + (hi - v) / (hi - lo) * ph;

  const defs = svg("defs");
  const clip = svg("clipPath", {id: "plot-clip"});
  clip.append(svg("rect", {x: m.l, y: m.t, width: pw, height: ph}));
  defs.append(clip);
  // an opted-out span is hatched in its level's colour: the level was sent, the building did not follow
  for (const l of [0, 1, 2, 3]) {
    const hatch = svg("pattern", {id: `opt-out-${l}`, width: 8, height: 8, patternUnits: "userSpaceOnUse",
                                  patternTransform: "rotate(45)"});
    hatch.append(svg("rect", {x: 0, y: 0, width: 3, height: 8, fill: LEVEL_COLORS[l] || "#ccc"}));
    defs.append(hatch);
  }
  root.append(defs);

  // grid and y axis
  const gAxes = svg("g", {class: "axes"});
  for (let v = lo; v <= hi + yStep / 2; v += yStep) {
    gAxes.append(svg("line", {x1: m.l, x2: m.l + pw, y1: y(v), y2: y(v), class: "grid-line"}));
    gAxes.append(svg("text", {x: m.l - 6, y: y(v) + 4, "text-anchor": "end"}, fmtNum(v, yStep < 1 ? 1 : 0)));
  }
  gAxes.append(svg("text", {x: 12, y: m.t + ph / 2, class: "axis-label", "text-anchor": "middle",
                            transform: `rotate(-90 12 ${m.t + ph / 2})`}, "kW"));
  // x axis: ticks on round UTC times; sub-hour steps so a 1-2 h window (?hours=1) gets several labels
  const spanMin = (t1 - t0) / 60000;
  const STEPS_MIN = [10, 15, 30, 60, 120, 180, 240, 360, 720, 1440, 2880, 5760, 10080];
  const stepMin = STEPS_MIN.find((s) => spanMin / s <= Math.max(4, pw / 90)) || 10080;
  const stepMs = stepMin * 60000;
  for (let t = Math.ceil(t0 / stepMs) * stepMs; t <= t1; t += stepMs) {
    gAxes.append(svg("line", {x1: x(t), x2: x(t), y1: m.t, y2: m.t + ph, class: "grid-line"}));
    const d = new Date(t);
    const midnight = d.getUTCHours() === 0 && d.getUTCMinutes() === 0;
    const label = midnight || stepMin >= 1440 ? `${d.getUTCMonth() + 1}/${d.getUTCDate()}` : fmtTime(t);
    gAxes.append(svg("text", {x: x(t), y: m.t + ph + 14, "text-anchor": "middle", class: "x-tick"}, label));
  }
  gAxes.append(svg("text", {x: m.l + pw / 2, y: H - 4, class: "axis-label", "text-anchor": "middle"}, "time (UTC)"));
  gAxes.append(svg("line", {x1: m.l, x2: m.l + pw, y1: m.t + ph, y2: m.t + ph, class: "axis"}));
  gAxes.append(svg("line", {x1: m.l, x2: m.l, y1: m.t, y2: m.t + ph, class: "axis"}));

  // event intervals, shaded by level, under the series
  const gEvents = svg("g", {"clip-path": "url(#plot-clip)", class: "events"});
  let eventCount = 0;
  const labelXs = [];
  for (const e of hist.events || []) {
    const s = toMs(e.start), end = toMs(e.end) === null ? t1 : toMs(e.end);
    if (s === null || end < t0 || s > t1) continue;
    const x0 = x(Math.max(s, t0)), x1 = x(Math.min(end, t1));
    const level = clamp(Math.round(e.level || 0), 0, 3);
    const out = e.opt === "optOut";
    const r = svg("rect", {x: x0, y: m.t, width: Math.max(2, x1 - x0), height: ph,
                           fill: out ? `url(#opt-out-${level})` : LEVEL_COLORS[level] || "#ccc",
                           "fill-opacity": out ? 0.45 : 0.28, class: out ? "event opted-out" : "event",
                           "data-level": level, "data-event": e.event_id || "", "data-opt": e.opt || ""});
    r.append(svg("title", {}, `event ${e.event_id || ""} level ${level}: ${fmtTime(s, true)}–${toMs(e.end) === null ? "open" : fmtTime(end, true)} UTC${e.opt === "optOut" ? " (opted out)" : ""}`));
    gEvents.append(r);
    if (x1 - x0 > 24) {
      // overlapping events (a modification, a second program) stack their labels instead of overprinting
      const row = labelXs.filter((lx) => Math.abs(lx - x0) < 60).length;
      labelXs.push(x0);
      gEvents.append(svg("text", {x: x0 + 4, y: m.t + 12 + row * 13, class: "event-label"}, `L${level}${e.opt === "optOut" ? " opt-out" : ""}`));
    }
    eventCount++;
  }
  root.append(gAxes, gEvents);

  // thresholds
  const gTh = svg("g", {class: "thresholds"});
  for (const [k, label, color] of [["high_threshold_kw", "high", "var(--high)"], ["low_threshold_kw", "low", "var(--low)"]]) {
    const v = hist[k];
    if (typeof v !== "number") continue;
    gTh.append(svg("line", {x1: m.l, x2: m.l + pw, y1: y(v), y2: y(v), stroke: color, "stroke-width": 1.2,
                            "stroke-dasharray": "8 4", class: "threshold", "data-threshold": k}));
    const at = narrow ? {x: m.l + pw - 2, y: y(v) - 3, "text-anchor": "end"} : {x: m.l + pw + 4, y: y(v) + 4};
    gTh.append(svg("text", Object.assign(at, {fill: color, style: `fill:${color}`}), `${label} ${fmtNum(v, 0)} kW`));
  }
  root.append(gTh);

  // series
  const gSeries = svg("g", {"clip-path": "url(#plot-clip)"});
  const counts = {};
  for (const s of SERIES) {
    const values = hist[s.key] || [];
    // a line bridges gaps up to 15 minutes (history back-filled at 15-minute resolution, a missed
    // read); a longer gap (an outage) is a visible break
    let d = "", n = 0, pen = false, lastI = -Infinity;
    for (let i = 0; i < minutes.length; i++) {
      const v = values[i];
      if (typeof v !== "number") continue;
      pen = pen && minutes[i] - minutes[lastI] <= MAX_BRIDGE_S;
      lastI = i;
      // each value is the minute's average: plot it at the middle of its minute
      d += `${pen ? "L" : "M"}${x(minutes[i] * 1000 + 30000).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true; n++;
    }
    counts[s.key] = n;
    const path = svg("path", {d: d || "M0,0", class: "series", stroke: s.color, "stroke-width": s.width,
                              "data-series": s.key, "data-points": n});
    if (s.dash) path.setAttribute("stroke-dasharray", s.dash);
    gSeries.append(path);
  }
  root.append(gSeries);

  // high/low flag lanes under the time axis
  const gFlags = svg("g", {class: "flags"});
  const flagRuns = {};
  FLAGS.forEach((f, lane) => {
    const top = m.t + ph + 22 + lane * LANE;
    gFlags.append(svg("rect", {x: m.l, y: top, width: pw, height: LANE - 4, fill: "#f1f3f6"}));
    gFlags.append(svg("text", {x: m.l - 6, y: top + LANE - 6, "text-anchor": "end"}, f.label));
    const values = hist[f.key] || [];
    let runs = 0, minutesOn = 0;
    for (let i = 0; i < minutes.length; i++) {
      if (values[i] !== true && values[i] !== 1) continue;
      let j = i;
      while (j + 1 < minutes.length && (values[j + 1] === true || values[j + 1] === 1)) j++;
      gFlags.append(svg("rect", {x: x(minutes[i] * 1000), y: top, width: Math.max(1, x(minutes[j] * 1000 + 60000) - x(minutes[i] * 1000)),
                                 height: LANE - 4, fill: f.color, class: "flag-run", "data-flag": f.key}));
      runs++; minutesOn += j - i + 1;
      i = j;
    }
    flagRuns[f.key] = {runs, minutes: minutesOn};
  });
  root.append(gFlags);

  // hover readout
  const cursor = svg("line", {y1: m.t, y2: m.t + ph, stroke: "#1c2430", "stroke-width": 0.8, visibility: "hidden"});
  const overlay = svg("rect", {x: m.l, y: m.t, width: pw, height: ph, fill: "transparent"});
  root.append(cursor, overlay);
  const tip = $("tooltip");
  overlay.addEventListener("mousemove", (ev) => {
    const box = root.getBoundingClientRect();
    const px = (ev.clientX - box.left) * W / box.width;
    const t = t0 + (px - m.l) / pw * (t1 - t0);
    const i = clamp(Math.floor((t - t0) / 60000), 0, minutes.length - 1);
    cursor.setAttribute("x1", px); cursor.setAttribute("x2", px); cursor.setAttribute("visibility", "visible");
    const lines = [`${fmtTime(minutes[i] * 1000, true)} UTC`];
    for (const s of SERIES) lines.push(`${s.label}: ${fmtNum((hist[s.key] || [])[i])} kW`);
    const flags = FLAGS.filter((f) => (hist[f.key] || [])[i] === true).map((f) => f.label);
    if (flags.length) lines.push(`flags: ${flags.join(", ")}`);
    tip.textContent = lines.join("\n");
    tip.style.whiteSpace = "pre";
    tip.hidden = false;
    const left = (ev.clientX - box.left) + 14;
    tip.style.left = `${Math.max(0, Math.min(left, box.width - tip.offsetWidth - 4))}px`;
    tip.style.top = `${ev.clientY - box.top + 10}px`;
  });
  overlay.addEventListener("mouseleave", () => { tip.hidden = true; cursor.setAttribute("visibility", "hidden"); });

  root.setAttribute("aria-label", chartSummary(minutes, eventCount, flagRuns));
  dashboard.series = counts;
  dashboard.flags = flagRuns;
  dashboard.events = eventCount;
  dashboard.draws++;
  dashboard.ready = true;
}

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("edge-gateway-token", $("token-input").value.trim());
  refresh();
});
setInterval(tickAges, 1000);
let resizeTimer = null;
window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(drawChart, 150); });
refresh();
setInterval(refresh, REFRESH_S * 1000);
