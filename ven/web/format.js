// Times and numbers as the operator reads them (UTC, like the operator log).
import {el} from "./dom.js";

export const UNIT_TEXT = {kilowatts: "kW", minutes: "min", noUnits: ""};
export function clamp(v, lo, hi) { return Math.min(hi, Math.max(lo, v)); }
export function toMs(t) {
  if (t === null || t === undefined || t === "") return null;
  if (typeof t === "number") return t * 1000;
  const ms = Date.parse(t);
  return Number.isNaN(ms) ? null : ms;
}
function pad(n) { return String(n).padStart(2, "0"); }
export function fmtTime(ms, withDate) {
  if (ms === null) return "";
  const d = new Date(ms);
  const hm = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
  return withDate ? `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${hm}` : hm;
}
export function fmtAgo(ms) {
  const s = Math.round((Date.now() - ms) / 1000);
  if (Math.abs(s) < 90) return s >= 0 ? `${s} s ago` : `in ${-s} s`;
  const m = Math.round(s / 60);
  if (Math.abs(m) < 90) return m >= 0 ? `${m} min ago` : `in ${-m} min`;
  const h = (s / 3600).toFixed(1);
  return s >= 0 ? `${h} h ago` : `in ${-h} h`;
}
export function fmtNum(v, digits) {
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
export function agoSpan(ms) { return el("span", {class: "ago", "data-ms": String(ms)}, fmtAgo(ms)); }
export function tickAges() {
  for (const node of document.querySelectorAll(".ago[data-ms]")) node.textContent = fmtAgo(Number(node.dataset.ms));
}
export function fmtStamp(ms) { return `${fmtTime(ms, true)}:${pad(new Date(ms).getUTCSeconds())}`; }
// fill node with v; timestamps get their UTC time and a live relative age
export function putValue(node, v) {
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
export function humanize(key) { return key.replace(/_/g, " "); }
export function fmtDuration(s) {
  if (typeof s !== "number") return "";
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return d ? `${d} d ${h} h` : h ? `${h} h ${m} min` : `${m} min`;
}
export function fmtSpan(s) { return typeof s === "number" && s < 120 ? `${Math.round(s)} s` : fmtDuration(s); }
export function stampText(v) {
  const ms = typeof v === "number" ? v * 1000 : toMs(v);
  return ms === null ? "never" : `${fmtStamp(ms)}Z (${fmtAgo(ms)})`;
}
