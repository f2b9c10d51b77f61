// The status body (ven/http_api.py's docstring has its shape): its points, a map keyed by name, as a list in
// table order; and what it says about the gateway, for the pills, the problem list and the tiles.
import {fmtDuration, fmtWhen, nowMs, toMs, zoneName} from "./format.js";
import {gw} from "./state.js";

export function normalizeStatus(s) {
  const points = Object.entries(s.points || {}).map(([name, p]) => Object.assign({name}, p));
  return Object.assign({}, s, {points});
}
function intervalEnd(iv, openEnded) {
  const start = toMs(iv.start);
  if (openEnded && iv.duration_seconds === null) return Infinity;  // holds until the VTN cancels it
  return start !== null && typeof iv.duration_seconds === "number" ? start + iv.duration_seconds * 1000 : null;
}
// The level steps of an event, in order, from its SIMPLE signal (an event can go 1 -> 2 -> 3 over
// its intervals; one number would hide that). Other signals (prices, ...) are not levels.
export function levelSteps(e) {
  const sigs = e.signals || [];
  let chosen = sigs.filter((s) => String(s.name || "").toUpperCase() === "SIMPLE");
  if (!chosen.length) chosen = sigs.filter((s) => String(s.type || "").toLowerCase() === "level");
  const now = nowMs();
  const steps = [];
  for (const s of chosen) {
    for (const iv of s.intervals || []) {
      const v = iv.payload;
      if (typeof v !== "number") continue;
      const start = toMs(iv.start), end = intervalEnd(iv, e.open_ended);
      steps.push({level: v, start, current: start !== null && end !== null && start <= now && now < end});
    }
  }
  steps.sort((a, b) => (a.start === null ? 0 : a.start) - (b.start === null ? 0 : b.start));
  return steps;
}
export function communication() {
  const c = (gw.device || {}).communication;
  return c && typeof c === "object" && c.mode && c.mode !== "enable" ? c : null;
}
// what of bacnet.address the machine lacks (its IP, its mask's broadcast address, the link): the BAS reaches nothing
export function ownAddressLost() {
  const a = (gw.device || {}).address_problem;
  return a && typeof a === "object" && a.problem ? a : null;
}
// openadr.cert while the log warns of it (ven/cert_expiry.py): within its warn_days of its not_after, or past it
export function certWarning() {
  const c = (gw.vtn || {}).client_cert;
  const warned = c && typeof c === "object" && (c.warning === "expiring" || c.warning === "expired");
  return warned && toMs(c.not_after) !== null ? c : null;
}
// an intermittent VTN fault still open (ven/vtn_outage.py): connected at this moment, failing again now and then
export function flaky(vtn) {
  const f = vtn.fault;
  return vtn.connected === true && !!f && f.intermittent === true && !f.ended;
}
// a gateway that never registered (refused, wrong vtn_url) is not one that lost its VTN
export function neverRegistered(vtn) { return "registration_id" in vtn && !vtn.registration_id; }
function lastForecast() { return (gw.forecaster || {}).last_forecast || null; }
export function noThreshold() {
  // the load flags have no threshold (a new install's first day, a flat history): they read fault
  const lf = lastForecast(), fc = gw.forecaster || {};
  if (!lf || fc.input_stale === true) return false;
  return lf.high_threshold_kw === null || lf.low_threshold_kw === null;
}
// a write bacnet.write_from refused lately, by the gateway's clock: a BAS left off the list loses every
// write until someone looks, while a stray device that tried once is history after a quarter of an hour
const REFUSED_RECENTLY_MS = 15 * 60 * 1000;
export function recentRefusal() {
  const d = gw.device || {}, last = d.last_write_refused;
  if (!last || typeof last !== "object") return null;
  const at = toMs(last.at), now = toMs(gw.now) ?? Date.now();
  return at !== null && now - at < REFUSED_RECENTLY_MS ? Object.assign({count: d.writes_refused}, last) : null;
}
// no model fitted yet (a new install's first two days): persistence serves, as expected. In words, with
// when the first model comes; null once one exists
export function learningText() {
  const fc = gw.forecaster || {}, l = fc.learning;
  if (!l || typeof l !== "object" || typeof l.needs_minutes !== "number") return null;
  const need = l.needs_minutes % 1440 === 0 ? `${l.needs_minutes / 1440} day${l.needs_minutes === 1440 ? "" : "s"}`
    : fmtDuration(l.needs_minutes * 60);
  const first = toMs(l.first_fit_after), now = toMs(gw.now) ?? Date.now();
  if (first === null) return `forecaster learning: the first model once ${need} of history are in; persistence serves until then`;
  if (first <= now) {
    return fc.fitting === true ? "forecaster learning: fitting the first model now; persistence serves until it is in"
      : `forecaster learning: first model due now (${need} of history in); persistence serves until then`;
  }
  return `forecaster learning: first model about ${fmtWhen(first, true)} ${zoneName()} (${need} of history needed, ` +
    `${fmtDuration(l.have_minutes * 60)} so far); persistence serves until then`;
}
