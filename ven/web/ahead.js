// What lies past now on the chart: the latest forecasts (the values the BAS reads on the forecast points)
// and the event intervals that start within the longest horizon, from /api/history's "ahead" and
// "upcoming" (ven/history.py). The history's arrays end at now; this part is a few points and needs no
// reduction by column.
import {svg} from "./dom.js";
import {fmtNum, fmtWhen, toMs, zoneName} from "./format.js";

const MARKER_R = 4.5, MARKER_STROKE = 1.5;
// how far a forecast's marker reaches right of its middle (px): the time axis leaves that much room past the last
export const MARKER_REACH = MARKER_R + MARKER_STROKE / 2;

// {forecasts, upcoming, minutes: the forecasts' minutes (epoch s, ascending), minutesAhead: how far past
// now the time axis goes (0: nothing ahead, the axis ends at now)}
export function aheadOf(hist) {
  const forecasts = ((hist && hist.ahead && hist.ahead.forecasts) || [])
    .filter((f) => typeof f.kw === "number" && typeof f.minute === "number");
  const upcoming = ((hist && hist.upcoming) || []).filter((e) => toMs(e.start) !== null);
  const hz = (hist && hist.horizons_minutes) || [15, 60];
  const minutes = [...new Set(forecasts.map((f) => f.minute))].sort((a, b) => a - b);
  const issuedAt = hist && hist.ahead ? hist.ahead.issued_at : null;
  return {forecasts, upcoming, minutes, issuedAt,
          minutesAhead: forecasts.length || upcoming.length ? Math.max(...hz) : 0};
}
// "forecast for 14:18, issued 14:03: 97.2 kW", as the readout and the summary say it
export function forecastWords(f, issuedAt) {
  return `forecast for ${fmtWhen(f.minute * 1000)}, issued ${fmtWhen(issuedAt * 1000)}: ${fmtNum(f.kw)} kW`;
}
export function eventWords(e) {
  return `an event of level ${Math.round(e.level || 0)} starts at ${fmtWhen(toMs(e.start))}` +
    (e.opt === "optOut" ? " (opted out)" : "");
}
// the readout's lines past now for minute t (epoch s): the forecasts for it and the upcoming events in force
export function aheadReadout(ahead, t, label) {
  const lines = [`${fmtWhen(t * 1000, true)} ${zoneName()} (ahead)`];
  for (const f of ahead.forecasts) if (f.minute === t) lines.push(`${label(f.horizon)}: ${forecastWords(f, ahead.issuedAt)}`);
  for (const e of ahead.upcoming) {
    const s = toMs(e.start), end = toMs(e.end);
    if (s < (t + 60) * 1000 && (end === null || end > t * 1000)) lines.push(eventWords(e));
  }
  return lines.join("\n");
}
// the now line, and each forecast as a marker joined to now's demand by a dashed line in its series' style;
// at(horizon) -> the series ({color, dash}), x(ms), y(kW), demandNow: [ms, kW] of the latest demand or null
export function drawAhead(ahead, {x, y, top, height, nowMs, demandNow, at}) {
  const g = svg("g", {class: "ahead"});
  g.append(svg("line", {x1: x(nowMs), x2: x(nowMs), y1: top, y2: top + height, class: "now-line",
                        stroke: "var(--ink)", "stroke-width": 1, "stroke-dasharray": "3 3"}));
  g.append(svg("text", {x: x(nowMs) + 3, y: top + 10, class: "now-label"}, "now"));
  for (const f of ahead.forecasts) {
    const s = at(f.horizon);
    const cx = x(f.minute * 1000 + 30000), cy = y(f.kw);
    if (demandNow) {
      g.append(svg("path", {d: `M${x(demandNow[0]).toFixed(1)},${y(demandNow[1]).toFixed(1)}L${cx.toFixed(1)},${cy.toFixed(1)}`,
                            class: "series", stroke: s.color, "stroke-width": 1.2, "stroke-dasharray": s.dash || "",
                            "data-ahead": f.horizon}));
    }
    const dot = svg("circle", {cx, cy, r: MARKER_R, fill: s.color, stroke: "var(--card)", "stroke-width": MARKER_STROKE,
                               class: "ahead-forecast", "data-horizon": f.horizon, "data-kw": f.kw, "data-minute": f.minute});
    dot.append(svg("title", {}, `${s.label}: ${forecastWords(f, ahead.issuedAt)}`));
    g.append(dot);
  }
  return g;
}
