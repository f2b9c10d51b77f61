// Operator dashboard: polls /api/status, /api/history and /api/log and draws them. No dependencies, no build
// step, nothing fetched from the internet (building networks often have none).
// Query parameters: ?hours=24 (history span, also chosen on the page: span.js), ?tz=Europe/Rome (the zone of
// its times, also chosen on the page: zone.js), ?log=warning (the recent log's lines: log.js), ?refresh=10 (seconds).
// Access token: see api.js. This module fetches and refreshes; the others draw (header.js, tiles.js,
// tables.js, chart.js, log.js); download.js saves the chart's hours as CSV.
import {HttpError, apiGet, fetchWithin, token} from "./api.js";
import {drawChart, drawChartIfChanged, followNow} from "./chart.js";
import {$, el} from "./dom.js";
import {followSpan, setupDownload} from "./download.js";
import {agoSpan, clockSkewMs, fmtDuration, fmtStamp, nowMs, setClockSkew, tickAges, toMs, zoneName} from "./format.js";
import {pageTitle, renderHeader} from "./header.js";
import {refreshLog, setupLog} from "./log.js";
import {announce, problemChanges} from "./problems.js";
import {REFRESH_S, dashboard, hist, histHours, hours, setAnswer} from "./state.js";
import {setupSpan} from "./span.js";
import {normalizeStatus} from "./status.js";
import {renderEvents, renderPoints, renderSections} from "./tables.js";
import {renderTiles} from "./tiles.js";
import {followBuilding, setupZone} from "./zone.js";

const FETCH_TIMEOUT_MS = 8000;
// a minute is the history's resolution: a span over a day (35 days are 2.4 MB, half a second of the
// gateway's work each) is asked for again at most once a minute; the status keeps its own refresh
const LONG_SPAN_H = 24;
const LONG_SPAN_EVERY_S = 60;
const SKEW_ROUND_TRIP_MS = 3000;

async function getAnswer(path, read, headers) {
  try {
    return await apiGet(path, FETCH_TIMEOUT_MS, read, headers);
  } catch (err) {
    if (err instanceof HttpError && err.status === 401) throw err;  // no token, or not this one: asked for
    throw new Error(`${path}: ${err.message}`);
  }
}
const getJSON = (path) => getAnswer(path, (resp) => resp.json().catch(() => ({})));
// The history of `asked` hours as {body, tag: its ETag}. Asked with the ETag of the one held when it is of those
// hours: the gateway answers 304 while nothing in it but its "now" changed, and the one held stays, not
// fetched, parsed nor drawn again (a refresh every second redrew a day's chart each time, a core's work)
let histTag = null;
function getHistory(asked) {
  const tag = hist && histHours === asked ? histTag : null;
  return getAnswer(`api/history?hours=${asked}`, async (resp) => {
    if (resp.status === 304) return {body: hist, tag};
    const body = await resp.json().catch(() => null);
    return {body: body || {}, tag: body ? resp.headers.get("ETag") : null};
  }, tag ? {"If-None-Match": tag} : {});
}
async function getHealth() {
  // bounded as the API's requests are: a /healthz held open (a proxy routing it elsewhere) held every refresh,
  // and the page went on showing its last answer as current, neither updated nor marked stale
  try {
    return await fetchWithin("healthz", FETCH_TIMEOUT_MS, async (resp) => ({ok: resp.ok, text: (await resp.text()).trim()}));
  } catch (err) {
    // unreachable (a gateway stopping between the status and this): the refresh fails, as the status's would.
    // Read as unhealthy, a screen reader heard "Gateway unhealthy", which the gateway never said, then "unreachable"
    if (!/^no answer/.test(err.message)) throw new Error(`healthz: ${err.message}`);
    return {ok: false, text: err.message};
  }
}

let failingSince = null;
let staleWhy = null;            // what the page last said is wrong ("gateway unreachable", "token refused")
let tokenSubmitted = false;     // a token typed in since the last answer
let typedRefusedAt = null;      // when the gateway refused the token typed in last
let historyAskedAt = 0;
const slowChart = () => hours > LONG_SPAN_H && REFRESH_S < LONG_SPAN_EVERY_S;
// One refresh at a time: a gateway that holds its answers (stopped, swapping, its disk stalled) had each tick
// start another, 8 in flight at ?refresh=1 (24 requests) until the first timed out, all landing on it as it came
// back. A tick while one runs is skipped; a change on the page (span, zone, token) is asked for once it ends.
let running = false, wanted = false;
async function refresh(changed = false) {
  if (running) {
    wanted = wanted || changed;
    return;
  }
  running = true;
  try {
    await refreshOnce();
  } finally {
    running = false;
  }
  if (wanted) {
    wanted = false;
    refresh();
  }
}
async function refreshOnce() {
  const asked = hours, askedAt = Date.now(), sentToken = token();
  // (a second's slack: the timer's minute may come a little early)
  const again = histHours !== asked || !slowChart() || askedAt - historyAskedAt > (LONG_SPAN_EVERY_S - 1) * 1000;
  try {
    let answeredAt = null;
    const status = getJSON("api/status").then((body) => { answeredAt = Date.now(); return body; });
    const [s, h, health] = await Promise.all([status, again ? getHistory(asked) : {body: hist, tag: histTag},
                                              getHealth()]);
    // the span was changed on the way: the answer for the new one is asked for already
    if (asked !== hours) return;
    if (upgraded(`${s.version} ${s.page}`)) return;
    // the gateway's "now" is in whole seconds, made after the question left: this bound never makes a reading
    // just taken read "in 1 s", and it is off by a second and the answer's way at most. An answer that took long
    // (the laptop slept on the way) would bound nothing: the last measure stands
    const gwNow = toMs(s.now);
    if (gwNow === null) setClockSkew(0);
    else if (answeredAt - askedAt < SKEW_ROUND_TRIP_MS) setClockSkew(gwNow + 1000 - askedAt);
    setAnswer(normalizeStatus(s), h.body, asked);
    histTag = h.tag;
    followBuilding(s.timezone);
    if (again) historyAskedAt = askedAt;
    const back = failingSince !== null;
    failingSince = null;
    staleWhy = null;
    tokenSubmitted = false;
    typedRefusedAt = null;
    dashboard.lastError = null;
    dashboard.lastOk = nowMs();
    dashboard.refreshes++;
    dashboard.stale = false;
    document.body.classList.remove("stale");
    $("banner").hidden = true;
    $("token-form").hidden = true;
    const found = renderHeader(health);     // the tab's title back too
    renderTiles();
    renderPoints();
    renderEvents();
    renderSections();
    // drawn again only when what it shows changed (a new minute, a reading in the minute in progress, an event, a
    // forecast, the span, the zone): a 35-day redraw is a visible stall, a day's at every refresh a core's work.
    // Meanwhile its now line follows the gateway's clock through the minute in progress
    if (!drawChartIfChanged() && gwNow !== null) followNow(gwNow / 1000);
    refreshLog();
    const chartEvery = slowChart() ? `, the chart every ${LONG_SPAN_EVERY_S} s` : "";
    $("updated").textContent = `updated ${fmtStamp(nowMs())} ${zoneName()} · every ${REFRESH_S} s${chartEvery}` +
      clockNote();
    announce(back ? "Gateway answering again." : "", problemChanges(found));
  } catch (err) {
    const first = failingSince === null;
    failingSince = failingSince || nowMs();
    dashboard.failures++;
    const since = `since ${fmtStamp(failingSince)} ${zoneName()}`;
    if (err instanceof HttpError) {
      // no token yet, or the token was changed on the gateway while this page was open
      $("token-form").hidden = false;
      dashboard.lastError = "token required";
      // a token just typed and refused is said so, seen and heard: the banner was the same word for word
      // a refresh already on its way when the token was typed was refused the one before: the next one tries it
      const typed = tokenSubmitted && sentToken === token();
      if (typed) {
        tokenSubmitted = false;
        typedRefusedAt = nowMs();
      }
      const text = typedRefusedAt !== null
        ? `The token entered at ${fmtStamp(typedRefusedAt)} ${zoneName()} was refused. Enter the current one below.`
        : !dashboard.lastOk ? null
        : token() ? `The gateway refused the access token (${since}); it may have been changed. ` +
                    "Enter the current one below."
        : `The gateway now asks for an access token (${since}). Enter it below.`;
      showStale(token() ? "token refused" : "token required", text, first || typed);
      return;
    }
    dashboard.lastError = err.message;
    // the request's path ("api/status: ...", "api/history?hours=24: ...") is no news on a wall display
    showStale(/unreachable/.test(err.message) ? "gateway unreachable" : "gateway not answering",
              `${err.message.replace(/^api\/\S+: /, "")} (${since}).`, first);
  }
}
// A gateway upgraded while the page was open (a wall screen's, for weeks) answers this page's old scripts, which
// do not know what the new version says (a new problem, a new field), while the footer names the new version:
// when its version or its page's files ("page": an install from a newer commit keeps the version) change, load
// the page again, at most once in 10 minutes (two gateways of two versions behind one address must not
// reload it at every answer). Span, zone and log choice are in the address, the token in the tab's session.
const RELOAD_EVERY_MS = 10 * 60 * 1000;
let pageVersion = null;
function upgraded(version) {
  if (typeof version !== "string" || !version) return false;
  if (pageVersion === null) pageVersion = version;
  if (version === pageVersion) return false;
  const last = Number(sessionStorage.getItem("edge-gateway-reloaded-at")) || 0;
  if (Date.now() - last < RELOAD_EVERY_MS && Date.now() >= last) return false;
  sessionStorage.setItem("edge-gateway-reloaded-at", String(Date.now()));
  location.reload();
  return true;
}
// every time on the page is by the gateway's clock (format.js nowMs): when this browser's is well off, say so
function clockNote() {
  const off = Math.round(clockSkewMs() / 1000);
  if (Math.abs(off) < 30) return "";
  return ` · this browser's clock is ${fmtDuration(Math.round(Math.abs(off) / 60) * 60)} ${off > 0 ? "behind" : "ahead of"} the gateway's: times here are by the gateway's`;
}
// The last answer stays on screen (better than a blank page) but must not look current: the pills
// it produced turn grey ("was healthy") behind a red one saying why, the cards are marked, ages keep counting.
function showStale(why, bannerText, sayAgain) {
  dashboard.stale = true;
  // a tab in the background says it too
  document.title = `${why} · ${pageTitle()}`;
  // said at an outage's start, and when what is wrong changes: a gateway restarted with a new token is unreachable
  // first, then asks for the token, which a screen reader was never told
  if (sayAgain || why !== staleWhy) {
    const since = why === staleWhy ? "" : ` since ${fmtStamp(failingSince)} ${zoneName()}`;
    announce(`${why[0].toUpperCase()}${why.slice(1)}${since}.`,
             bannerText && why.startsWith("token") ? bannerText
             : dashboard.lastOk ? `The figures shown are from ${fmtStamp(dashboard.lastOk)} ${zoneName()}.` : "");
  }
  staleWhy = why;
  const banner = $("banner");
  if (bannerText) {
    const from = dashboard.lastOk ? ` Showing data from ${fmtStamp(dashboard.lastOk)} ${zoneName()}.` : "";
    banner.textContent = bannerText + from;
    banner.hidden = false;
  } else {
    banner.hidden = true;
  }
  if (dashboard.lastOk) document.body.classList.add("stale");
  const pills = $("pills");
  for (const p of pills.querySelectorAll(".pill.why")) p.remove();
  for (const p of pills.querySelectorAll(".pill")) {
    if (!p.classList.contains("old")) {
      p.title = `as of ${fmtStamp(dashboard.lastOk)} ${zoneName()} (no longer confirmed)`;
      // in words, not only greyed: a screen reader read the header as "healthy, VTN connected" while unreachable
      p.textContent = `was ${p.textContent}`;
    }
    p.className = "pill old";
  }
  pills.prepend(el("span", {class: "pill bad why"}, why));
  const updated = $("updated");
  updated.replaceChildren();
  if (dashboard.lastOk) {
    updated.append(document.createTextNode(`last update ${fmtStamp(dashboard.lastOk)} ${zoneName()} (`), agoSpan(dashboard.lastOk),
                   document.createTextNode(`) · retrying every ${REFRESH_S} s`));
  } else {
    updated.textContent = `no answer yet · retrying every ${REFRESH_S} s`;
  }
}

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("edge-gateway-token", $("token-input").value.trim());
  tokenSubmitted = true;
  refresh(true);
});
setupDownload();
setupLog();
setupSpan(() => { followSpan(); refresh(true); });
// the chart at once from the answer held (a long span's is not asked for again within its minute), the rest
// with the next answer
setupZone(() => { if (hist) drawChart(); refresh(true); });
setInterval(tickAges, 1000);
let resizeTimer = null;
window.addEventListener("resize", () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(drawChart, 150); });
refresh();
setInterval(() => refresh(), REFRESH_S * 1000);
// a tab the browser hides runs its timers once a minute at most (Chrome, after 5 minutes hidden), so an operator
// coming back to it read a page up to a minute old as current until the next tick: ask at once instead. Hidden,
// it goes on refreshing at the browser's pace: its title tells a tab strip when the gateway stops answering.
document.addEventListener("visibilitychange", () => { if (document.visibilityState === "visible") refresh(); });
