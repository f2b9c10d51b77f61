// The chart: power, demand and forecasts over ?hours, event intervals shaded by level (event_shading.js),
// the thresholds and the load flags in lanes under it (load.js), a readout of one minute (by mouse, or by
// keyboard: chart_keys.js), and the same figures in words for a screen reader (chart_words.js). Past now,
// when something lies ahead (ahead.js): the latest forecasts and the event intervals about to start.
import {MARKER_REACH, aheadOf, drawAhead} from "./ahead.js";
import {keepReadout} from "./chart_keys.js";
import {chartLabel, span, title} from "./chart_words.js";
import {wireReadout} from "./chart_readout.js";
import {points} from "./columns.js";
import {$, svg} from "./dom.js";
import {drawEvents, hatches} from "./event_shading.js";
import {clamp, fmtNum, zoneName} from "./format.js";
import {legend} from "./legend.js";
import {LANE, drawFlagLanes, drawThresholds} from "./load.js";
import {FLAGS, SERIES, forecastSeries, nameSeries} from "./series.js";
import {dashboard, gw, hist} from "./state.js";
import {axisEnd, drawTimeAxis, timeScale} from "./time_axis.js";

const MAX_BRIDGE_S = 15 * 60;

function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const f = raw / mag;
  return mag * (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10);
}
// the kW axis: round steps over every value drawn, the thresholds and the forecasts ahead
function kwRange(ahead) {
  let lo = Infinity, hi = -Infinity;
  for (const s of SERIES) for (const v of hist[s.key] || []) if (typeof v === "number") { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  for (const f of ahead.forecasts) { lo = Math.min(lo, f.kw); hi = Math.max(hi, f.kw); }
  for (const k of ["high_threshold_kw", "low_threshold_kw"]) {
    const v = hist[k];
    if (typeof v === "number") { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  }
  if (lo === Infinity) { lo = 0; hi = 1; }
  if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
  const step = niceStep(hi - lo, 6);
  return {step, lo: Math.floor((lo - (hi - lo) * 0.04) / step) * step, hi: Math.ceil((hi + (hi - lo) * 0.04) / step) * step};
}
// the series' paths; {g, counts: the values of each}
function drawSeries(minutes, {x, y, pw}) {
  const g = svg("g", {"clip-path": "url(#plot-clip)"});
  const counts = {};
  // each value is the minute's average: plot it at the middle of its minute
  const px = (i) => x(minutes[i] * 1000 + 30000);
  // more minutes than twice the pixel columns (a week, or a day on a phone): drawn by column (columns.js)
  const column = minutes.length > 2 * pw ? (i) => Math.floor(px(i)) : (i) => i;
  for (const s of SERIES) {
    const values = hist[s.key] || [];
    // a line bridges gaps up to 15 minutes (history back-filled at 15-minute resolution, a missed
    // read); a longer gap (an outage) is a visible break
    const drawn = points(minutes, values, column, MAX_BRIDGE_S);
    const d = drawn.at.map((i, k) => `${drawn.move[k] ? "M" : "L"}${px(i).toFixed(1)},${y(values[i]).toFixed(1)}`).join("");
    const n = values.reduce((count, v) => count + (typeof v === "number"), 0);
    counts[s.key] = n;
    const path = svg("path", {d: d || "M0,0", class: "series", stroke: s.color, "stroke-width": s.width,
                              "data-series": s.key, "data-points": n, "data-drawn": drawn.at.length});
    if (s.dash) path.setAttribute("stroke-dasharray", s.dash);
    g.append(path);
  }
  return {g, counts};
}
// what the chart was last drawn from (the history's answer, the zone, whether storage.path can be written): the page
// draws it again when one of them changed (drawChartIfChanged), when the window's size or the zone chosen changes
let drawnFrom = null;
const inputs = () => ({hist, zone: zoneName(), noStore: !!(gw && gw.storage && gw.storage.ok === false)});
// the now line's place as drawn: {x, tEnd}, or null when none is drawn (nothing lies ahead)
let nowLine = null;
export function drawChartIfChanged() {
  const now = inputs();
  if (drawnFrom && Object.keys(now).every((k) => now[k] === drawnFrom[k])) return false;
  drawChart();
  return true;
}
// Between draws (the history unchanged but for its "now"), the now line goes on through the minute in progress
// by the gateway's clock (nowS: epoch s), where a draw would put it
export function followNow(nowS) {
  if (!hist || typeof hist.now !== "number" || !(nowS > hist.now)) return;
  hist.now = nowS;
  if (!nowLine) return;
  const x = nowLine.x(clamp(nowS * 1000, nowLine.tEnd - 60000, nowLine.tEnd));
  for (const line of $("chart-svg").querySelectorAll(".now-line")) { line.setAttribute("x1", x); line.setAttribute("x2", x); }
  for (const label of $("chart-svg").querySelectorAll(".now-label")) label.setAttribute("x", x + 3);
}
export function drawChart() {
  // kept only once a draw completes: a draw that threw is tried again at the next refresh, not skipped as unchanged
  const from = inputs();
  nowLine = null;
  nameSeries();
  const ahead = aheadOf(hist);
  const root = $("chart-svg");
  const W = Math.max(240, root.clientWidth || 900);
  const H = root.clientHeight || 420;
  // on a phone the 96 px right margin for threshold labels would leave the plot half the width:
  // those labels go inside the plot there instead; the left one holds the flag lanes' "high load" everywhere
  const narrow = W < 600;
  legend(ahead, narrow);
  root.setAttribute("viewBox", `0 0 ${W} ${H}`);
  root.replaceChildren();
  const minutes = (hist && hist.minutes) || [];
  const m = {l: 60, r: narrow ? 8 : 96, t: 18, b: 34 + FLAGS.length * LANE + 8};
  const pw = W - m.l - m.r, ph = H - m.t - m.b;
  $("chart-title").textContent = title(ahead);
  dashboard.minutes = minutes.length;
  dashboard.series = {}; dashboard.flags = {}; dashboard.events = 0; dashboard.upcoming = 0; dashboard.ahead = 0;
  // minutes but not one reading or forecast (a meter faulted since start): axes scaled to nothing
  // would be a blank plot with a made-up kW range, so say it in words
  const anyData = !!hist && SERIES.some((s) => (hist[s.key] || []).some((v) => typeof v === "number"));
  if (!minutes.length || !anyData) {
    const noStore = gw && gw.storage && gw.storage.ok === false;
    const empty = noStore ? "no history to draw: the chart is drawn from storage.path, which cannot be written (see Needs attention)" :
      minutes.length ? `no data yet: no meter readings or forecasts in the last ${span()}` : "no history yet";
    root.append(svg("text", {x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty"}, empty));
    root.setAttribute("aria-label", `Power and demand, last ${span()}: ${empty}`);
    $("tooltip").hidden = true;
    keepReadout(null);
    dashboard.ready = true; dashboard.draws++;
    drawnFrom = from;
    return;
  }
  // the history ends with the minute in progress; the axis goes on past it by the longest horizon
  // when something lies ahead
  const tEnd = Math.max(minutes[minutes.length - 1] * 1000 + 60000, minutes[0] * 1000 + 60000);
  const t0 = minutes[0] * 1000;
  const lastMark = ahead.minutes.length ? ahead.minutes[ahead.minutes.length - 1] * 1000 + 30000 : null;
  const t1 = axisEnd(t0, tEnd, tEnd + ahead.minutesAhead * 60000, lastMark, pw, MARKER_REACH);
  const nowMs = typeof hist.now === "number" ? clamp(hist.now * 1000, tEnd - 60000, tEnd) : tEnd;
  const {lo, hi, step: yStep} = kwRange(ahead);
  const scale = timeScale(t0, tEnd, t1, m.l, pw);
  const x = scale.x;
  const y = (v) => m.t + (hi - v) / (hi - lo) * ph;

  const defs = svg("defs");
  const clip = svg("clipPath", {id: "plot-clip"});
  clip.append(svg("rect", {x: m.l, y: m.t, width: pw, height: ph}));
  defs.append(clip);
  hatches(defs);
  // the axes in the page at once: the time axis measures its labels
  const gAxes = svg("g", {class: "axes"});
  root.append(defs, gAxes);
  for (let v = lo; v <= hi + yStep / 2; v += yStep) {
    gAxes.append(svg("line", {x1: m.l, x2: m.l + pw, y1: y(v), y2: y(v), class: "grid-line"}));
    gAxes.append(svg("text", {x: m.l - 6, y: y(v) + 4, "text-anchor": "end"}, fmtNum(v, yStep < 1 ? 1 : 0)));
  }
  gAxes.append(svg("text", {x: 12, y: m.t + ph / 2, class: "axis-label", "text-anchor": "middle",
                            transform: `rotate(-90 12 ${m.t + ph / 2})`}, "kW"));
  drawTimeAxis(gAxes, scale, {t0, tEnd, t1, left: m.l, width: pw, top: m.t, height: ph, minutesAhead: ahead.minutesAhead});
  gAxes.append(svg("text", {x: m.l + pw / 2, y: H - 4, class: "axis-label", "text-anchor": "middle"}, `time (${zoneName()})`));
  gAxes.append(svg("line", {x1: m.l, x2: m.l + pw, y1: m.t + ph, y2: m.t + ph, class: "axis"}));
  gAxes.append(svg("line", {x1: m.l, x2: m.l, y1: m.t, y2: m.t + ph, class: "axis"}));

  // the "now" label (ahead.js) takes the first row where it is: an event starting about now goes under it
  const events = drawEvents((hist.events || []).concat(ahead.upcoming),
                            {x, t0, t1, top: m.t, height: ph, labelXs: ahead.minutesAhead ? [x(nowMs)] : []});
  root.append(events.g);
  const thresholds = drawThresholds(hist, {y, left: m.l, width: pw, top: m.t, inside: narrow});
  root.append(thresholds.g);
  const series = drawSeries(minutes, {x, y, pw});
  root.append(series.g);
  if (ahead.minutesAhead) {
    // the dashed lines start from now's demand: the latest of the last 15 minutes, else none
    const demand = hist.demand_kw || [];
    let last = minutes.length - 1;
    while (last >= 0 && typeof demand[last] !== "number" && minutes.length - last <= 15) last--;
    const demandNow = last >= 0 && typeof demand[last] === "number" ?
      [minutes[last] * 1000 + 30000, demand[last]] : null;
    root.append(drawAhead(ahead, {x, y, top: m.t, height: ph, nowMs, demandNow, at: forecastSeries}));
    nowLine = {x, tEnd};
  }
  root.append(thresholds.labels);
  const flags = drawFlagLanes(hist, {x, left: m.l, width: pw, top: m.t + ph + 22});
  root.append(flags.g);

  wireReadout(root, {W, ahead, x, time: scale.time, t0, tEnd, top: m.t, left: m.l, width: pw, height: ph});
  root.setAttribute("aria-label", chartLabel(ahead, nowMs));
  dashboard.series = series.counts;
  dashboard.flags = flags.runs;
  dashboard.events = events.past;
  dashboard.upcoming = events.upcoming;
  dashboard.ahead = ahead.forecasts.length;
  dashboard.axisEnd = t1 / 1000;
  dashboard.draws++;
  dashboard.ready = true;
  drawnFrom = from;
}
