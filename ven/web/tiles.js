// The tiles: the BACnet points the BAS reads most, large, each saying why when it is in fault.
import {$, el, putChildren} from "./dom.js";
import {UNIT_TEXT, agoSpan, fmtNum, nowMs, toMs} from "./format.js";
import {gw, pointByName} from "./state.js";
import {communication, noThreshold, ownAddressLost} from "./status.js";

const TILE_POINTS = [
  ["meter-power", "Meter power"], ["input-power-meter", "Input power (BAS)"],
  ["fifteen-min-future-power", "Forecast 15 min"], ["one-hour-future-power", "Forecast 60 min"],
  ["power-rate-of-change", "Trend (kW/min)"], ["ADR-Event-Level", "Event level"],
  ["ADR-Event-Start-Minutes", "Next event in (min)"],
  ["high-load-conditions", "High load"], ["low-load-conditions", "Low load"],
  ["bas-shed-power", "BAS shedding"],
];
// a tile in fault says why in a few words (the full text is in "Needs attention")
function tileWhy(name) {
  const fc = gw.forecaster || {};
  if (name === "meter-power") {
    if (communication()) return "BACnet comms disabled";
    if (ownAddressLost()) return "BACnet address lost";
    return (gw.meter || {}).last_error || "meter read failed";
  }
  if (["fifteen-min-future-power", "one-hour-future-power", "power-rate-of-change"].includes(name)) {
    if (fc.input_stale === true) return "no power input";
    // the last forecast is there, not published: "no forecast yet" sent the operator to wait for one
    if (fc.cycle_error) return "forecast cycle failing";
    // the trend is a slope: it needs two minutes with readings in the last 15, which a forecast does not
    // (the first minutes after a start, a meter read less often than every 7 minutes)
    const forecast = pointByName("fifteen-min-future-power");
    if (name === "power-rate-of-change" && forecast && !(forecast.flags || {}).fault) return "too few recent readings";
    return "no forecast yet";
  }
  if (name === "high-load-conditions" || name === "low-load-conditions") {
    if (fc.input_stale === true) return "no power input";
    if (fc.cycle_error) return "forecast cycle failing";
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
    return {text: "written ", ms, old: nowMs() - ms > 1000 * (fc.input_stale_seconds || 300)};
  }
  if (name === "bas-shed-power") {
    const since = toMs((gw.forecaster || {}).shed_since);
    return since === null ? null : {text: "began ", ms: since, old: false};
  }
  if (name === "meter-power") {
    const m = gw.meter || {};
    if (!("last_value_at" in m)) return null;
    if (!m.last_value_at) return {text: "no reading since start", old: true};
    return {text: "read ", ms: toMs(m.last_value_at), old: m.fault === true};
  }
  return null;
}
export function renderTiles() {
  const tiles = [];
  for (const [name, label] of TILE_POINTS) {
    const p = pointByName(name);
    if (!p) continue;
    // shown while the BAS says it sheds: a zero tile the rest of the time would be noise to most sites
    if (name === "bas-shed-power" && !(gw.forecaster || {}).shed_kw) continue;
    const flags = p.flags || {};
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
    if (age) {
      // a live age (format.js tickAges): frozen text said "read 2 s ago" all through an outage of the gateway
      const line = el("div", {class: `age${age.old ? " old" : ""}`}, age.text);
      if (age.ms !== undefined && age.ms !== null) line.append(agoSpan(age.ms));
      tile.append(line);
    }
    tiles.push(tile);
  }
  putChildren($("tiles"), tiles);
}
