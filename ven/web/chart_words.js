// The chart in words. Its label, which a screen reader says on each focus, is the few things an operator
// looks at the chart for: the span, the latest kW and the peak, the forecasts, the events now and next, the
// load flags. Each minute's figures are the readout's (mouse or keys, chart_keys.js), and how to step through
// them the label's description.
import {aheadReadout, eventWords} from "./ahead.js";
import {fmtNum, fmtWhen, toMs, zoneName} from "./format.js";
import {FLAGS, SERIES, forecastSeries} from "./series.js";
import {hist, histHours, hours, spanLabel} from "./state.js";

// the span drawn: the history's, or before its first answer the one asked for
export const span = () => spanLabel(histHours === null ? hours : histHours);
export const title = (ahead) =>
  `Power and demand, last ${span()}${ahead.minutesAhead ? `, and the next ${ahead.minutesAhead} min` : ""}`;

function lastOf(values) {
  for (let i = values.length - 1; i >= 0; i--) if (typeof values[i] === "number") return i;
  return -1;
}
export function chartLabel(ahead, nowMs) {
  const minutes = hist.minutes;
  // times of a span longer than a day need their date
  const at = (i) => fmtWhen(minutes[i] * 1000, minutes[minutes.length - 1] - minutes[0] >= 86400);
  const power = hist.power_kw || [], demand = hist.demand_kw || [];
  const p = lastOf(power), d = lastOf(demand);
  const now = [];
  if (p >= 0) now.push(`At ${at(p)}: power ${fmtNum(power[p])} kW`);
  if (d >= 0) now.push(`${p >= 0 ? "" : `At ${at(d)}: `}demand ${fmtNum(demand[d])} kW${p >= 0 && d !== p ? ` at ${at(d)}` : ""}`);
  let peak = -1;
  demand.forEach((v, i) => { if (typeof v === "number" && (peak < 0 || v > demand[peak])) peak = i; });
  if (peak >= 0) now.push(`demand peak ${fmtNum(demand[peak])} kW at ${at(peak)}`);
  const sentences = [`${title(ahead)}, times in ${zoneName()}`];
  if (now.length) sentences.push(now.join(", "));
  if (ahead.forecasts.length) {
    sentences.push(`The latest forecast ${ahead.forecasts.map((f) => `${fmtNum(f.kw)} kW for ${fmtWhen(f.minute * 1000)}`).join(" and ")}` +
                   `, issued ${fmtWhen(ahead.issuedAt * 1000)}`);
  }
  const events = (hist.events || []).filter((e) => toMs(e.start) !== null && toMs(e.start) <= nowMs &&
                                                   (toMs(e.end) === null || toMs(e.end) > nowMs))
    .map((e) => `level ${Math.round(e.level || 0)} event ${toMs(e.end) === null ? "open-ended" : `until ${fmtWhen(toMs(e.end))}`}` +
                (e.opt === "optOut" ? " (opted out)" : ""));
  const next = ahead.upcoming.map(eventWords);
  sentences.push(events.length || next.length ? events.concat(next).join("; ") : "no event now");
  const last = minutes.length - 1;
  const flags = FLAGS.filter((f) => [true, 1].includes((hist[f.key] || [])[last])).map((f) => `${f.label} now`);
  const limits = [["high_threshold_kw", "high"], ["low_threshold_kw", "low"]].filter(([k]) => typeof hist[k] === "number")
    .map(([k, name]) => `${name} ${fmtNum(hist[k], 0)} kW`);
  sentences.push((flags.length ? flags.join(", ") : "no load flag now") + (limits.length ? ` (thresholds ${limits.join(", ")})` : ""));
  sentences.push("The arrows read it minute by minute");
  return sentences.map((s) => s[0].toUpperCase() + s.slice(1)).join(". ") + ".";
}
// the readout's words for minute i (past the history's minutes: a minute ahead, ahead.minutes), the same
// from the mouse and from the keyboard
export function readoutText(i, ahead) {
  const n = hist.minutes.length;
  if (i >= n) return aheadReadout(ahead, ahead.minutes[i - n], (h) => forecastSeries(h).label);
  const lines = [`${fmtWhen(hist.minutes[i] * 1000, true)} ${zoneName()}`];
  for (const s of SERIES) lines.push(`${s.label}: ${fmtNum((hist[s.key] || [])[i])} kW`);
  const flags = FLAGS.filter((f) => (hist[f.key] || [])[i] === true).map((f) => f.label);
  if (flags.length) lines.push(`flags: ${flags.join(", ")}`);
  return lines.join("\n");
}
