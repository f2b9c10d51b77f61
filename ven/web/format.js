// Times and numbers as the operator reads them: times in the zone chosen on the page (zone.js; UTC, like the
// operator log, unless the building's zone is set), by the browser's own Intl with no zone data of ours.
import {el} from "./dom.js";

export const UNIT_TEXT = {kilowatts: "kW", minutes: "min", noUnits: ""};
export function clamp(v, lo, hi) { return Math.min(hi, Math.max(lo, v)); }
export function toMs(t) {
  if (t === null || t === undefined || t === "") return null;
  if (typeof t === "number") return t * 1000;
  const ms = Date.parse(t);
  return Number.isNaN(ms) ? null : ms;
}
export function pad(n) { return String(n).padStart(2, "0"); }
// the zone every time is shown in: "UTC" or an IANA name the browser knows
let zone = "UTC";
export function zoneName() { return zone; }
export function setZone(z) { zone = z; }
function resolved(z) {
  return new Intl.DateTimeFormat("en-US", {timeZone: z}).resolvedOptions().timeZone;
}
// z as the browser names it (europe/rome: Europe/Rome; Etc/UTC: UTC), or null for none it knows. A zone the browser
// knows by an older name (Asia/Kolkata as Asia/Calcutta, Asia/Kathmandu as Asia/Katmandu) keeps the name it was
// given, written as the time zone database writes names: the one in the site's configuration.
export function knownZone(z) {
  if (!z) return null;
  try {
    const name = resolved(z);
    if (/^(Etc\/)?(UTC|UCT|GMT|Universal|Zulu|Greenwich)$/.test(name)) return "UTC";
    const written = /^[A-Z][A-Za-z_]*(\/[A-Z][A-Za-z0-9_+-]*)+$/.test(z);
    return name.toLowerCase() !== z.toLowerCase() && written ? z : name;
  } catch (err) {
    return null;
  }
}
// whether two zones the browser knows are one (Asia/Kolkata and Asia/Calcutta)
export function sameZone(a, b) {
  try {
    return a === b || resolved(a) === resolved(b);
  } catch (err) {
    return false;
  }
}
const formats = new Map();
function format(z, short) {
  const key = `${z} ${short}`;
  if (!formats.has(key)) {
    // en-GB names Europe's zones (CET, CEST) where en-US says GMT+1
    formats.set(key, short ? new Intl.DateTimeFormat("en-GB", {timeZone: z, timeZoneName: "short"}) :
      new Intl.DateTimeFormat("en-US", {timeZone: z, hourCycle: "h23", year: "numeric", month: "numeric", day: "numeric",
                                        hour: "numeric", minute: "numeric", second: "numeric"}));
  }
  return formats.get(key);
}
// the wall clock at ms in the zone shown, as if it were a UTC time: its getUTC* read the zone's date and time
export function wallMs(ms) {
  if (zone === "UTC") return ms;
  const p = {};
  for (const {type, value} of format(zone, false).formatToParts(ms)) p[type] = Number(value);
  return Date.UTC(p.year, p.month - 1, p.day, p.hour, p.minute, p.second) + ((ms % 1000) + 1000) % 1000;
}
export function offsetMs(ms) { return wallMs(ms) - ms; }
// how a stamp ends: "Z" in UTC, else its offset then ("+02:00"), which also tells the hour an autumn clock
// change repeats from its first time
export function zoneSuffix(ms) {
  if (zone === "UTC") return "Z";
  const off = Math.round(offsetMs(ms) / 60000), a = Math.abs(off);
  return `${off < 0 ? "-" : "+"}${pad(Math.floor(a / 60))}:${pad(a % 60)}`;
}
// the zone's short name at ms: CEST, CET, GMT+5:30
export function zoneAbbr(ms) {
  const part = format(zone, true).formatToParts(ms).find((p) => p.type === "timeZoneName");
  return part ? part.value : zone;
}
export function fmtTime(ms, withDate) {
  if (ms === null) return "";
  const d = new Date(wallMs(ms));
  const hm = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
  return withDate ? `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${hm}` : hm;
}
// a time within hours of a change of the zone's offset carries the zone's name, as the axis's ticks do there: in
// Rome's autumn change an event of 00:58Z-01:05Z read "02:58 | 02:05", ending before it began ("02:05 CET")
const NEAR_CHANGE_MS = 6 * 3600 * 1000;
export function zoneNote(ms) {
  return ms === null || zone === "UTC" || offsetMs(ms - NEAR_CHANGE_MS) === offsetMs(ms + NEAR_CHANGE_MS) ? ""
    : ` ${zoneAbbr(ms)}`;
}
export function fmtWhen(ms, withDate) { return ms === null ? "" : `${fmtTime(ms, withDate)}${zoneNote(ms)}`; }
// The gateway's clock minus this browser's, as last measured (app.js): the gateway stamps every time it
// gives, so "5 s ago" and "is it past yet" are asked of its clock. A wall screen's PC 3 minutes ahead called a
// reading taken now "3 min ago", one behind called it "in 3 min".
let skewMs = 0;
export function setClockSkew(ms) { skewMs = Number.isFinite(ms) ? ms : 0; }
export function clockSkewMs() { return skewMs; }
// now, by the gateway's clock
export function nowMs() { return Date.now() + skewMs; }
export function fmtAgo(ms) {
  const s = Math.round((nowMs() - ms) / 1000);
  if (Math.abs(s) < 90) return s >= 0 ? `${s} s ago` : `in ${-s} s`;
  const m = Math.round(s / 60);
  if (Math.abs(m) < 90) return m >= 0 ? `${m} min ago` : `in ${-m} min`;
  // past two days, hours to a tenth read badly ("in 240.0 h"): days and hours, as the problems say them
  if (Math.abs(s) >= 48 * 3600) return s >= 0 ? `${fmtDuration(s)} ago` : `in ${fmtDuration(-s)}`;
  const h = (s / 3600).toFixed(1);
  return s >= 0 ? `${h} h ago` : `in ${-h} h`;
}
export function fmtNum(v, digits) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "boolean") return v ? "active" : "inactive";
  if (typeof v !== "number") return String(v);
  const d = digits === undefined ? (Math.abs(v) >= 100 ? 1 : 2) : digits;
  // a 5 kW site's trend of -0.003 kW/min read "-0.00"; a 50 MW site's 51248.2 kW is read more easily grouped
  const text = Math.abs(v) >= 10000 ? v.toLocaleString("en-US", {minimumFractionDigits: Number.isInteger(v) ? 0 : d,
                                                                  maximumFractionDigits: Number.isInteger(v) ? 0 : d})
    : Number.isInteger(v) ? String(v) : v.toFixed(d);
  return /^-0(\.0+)?$/.test(text) ? text.slice(1) : text;
}
const ISO_RE = /^\d{4}-\d\d-\d\dT\d\d:\d\d/;
// A relative age ("5 s ago") is drawn as a span that tickAges() rewrites every second from the
// timestamp it carries, so it keeps counting while the gateway is unreachable instead of freezing
// at the age it had on the last good answer.
export function agoSpan(ms) { return el("span", {class: "ago", "data-ms": String(ms)}, fmtAgo(ms)); }
export function tickAges() {
  for (const node of document.querySelectorAll(".ago[data-ms]")) node.textContent = fmtAgo(Number(node.dataset.ms));
}
export function fmtStamp(ms) { return `${fmtTime(ms, true)}:${pad(new Date(wallMs(ms)).getUTCSeconds())}`; }
// fill node with v; timestamps get their time in the zone shown and a live relative age
export function putValue(node, v) {
  const ms = typeof v === "string" && ISO_RE.test(v) ? toMs(v) : null;
  if (ms === null) {
    const text = fmtValue(v);
    node.textContent = text.length > 160 ? text.slice(0, 157) + "…" : text;
    return;
  }
  node.append(document.createTextNode(`${fmtStamp(ms)}${zoneSuffix(ms)} (`), agoSpan(ms), document.createTextNode(")"));
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
  return ms === null ? "never" : `${fmtStamp(ms)}${zoneSuffix(ms)} (${fmtAgo(ms)})`;
}
