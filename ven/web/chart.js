// The chart: power, demand and forecasts over ?hours, event intervals shaded by level, the load
// flags in lanes under it, a readout of one minute (by mouse, or by keyboard: chart_keys.js), and the
// same figures in words for a screen reader. Past now, when something lies ahead (ahead.js): the latest
// forecasts and the event intervals about to start.
import {aheadOf, aheadReadout, aheadSummary, drawAhead} from "./ahead.js";
import {KEYS_HINT, keepReadout, nearest} from "./chart_keys.js";
import {points} from "./columns.js";
import {$, el, svg} from "./dom.js";
import {clamp, fmtNum, fmtTime, toMs} from "./format.js";
import {dashboard, gw, hist, histHours, hours, spanLabel} from "./state.js";

const MAX_BRIDGE_S = 15 * 60;
const X_TICK_CLEAR = 16;   // px from the y axis inside which an x tick has no label
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
// the span drawn: the history's, or before its first answer the one asked for
const span = () => spanLabel(histHours === null ? hours : histHours);
// the forecast series of a horizon, to name and colour what lies ahead like the line it will join
const forecastSeries = (horizon) =>
  SERIES[((hist && hist.horizons_minutes) || [15, 60]).indexOf(horizon) === 1 ? 3 : 2];
const title = (ahead) =>
  `Power and demand, last ${span()}${ahead.minutesAhead ? `, and the next ${ahead.minutesAhead} min` : ""}`;

function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const f = raw / mag;
  return mag * (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10);
}
function legend(ahead) {
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
  if (ahead.forecasts.length) {
    const item = el("span", {"data-legend": "ahead"});
    for (const f of ahead.forecasts) {
      item.append(el("i", {class: "dot", style: `background:${forecastSeries(f.horizon).color}`}));
    }
    item.append(document.createTextNode(`Latest forecasts (issued ${fmtTime(ahead.issuedAt * 1000)})`));
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
  if (ahead.upcoming.length) {
    const next = el("span", {"data-legend": "upcoming"});
    next.append(el("i", {class: "box upcoming"}), document.createTextNode("Upcoming event (dotted outline)"));
    host.append(next);
  }
}
// the chart in words, for a screen reader: the figures an operator reads off the drawing
function chartSummary(minutes, eventCount, flagRuns, ahead) {
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
  parts.push(...aheadSummary(ahead, (h) => forecastSeries(h).label));
  return `${title(ahead)}, times in UTC. ${parts.join("; ")}. ${KEYS_HINT}`;
}
// the readout's words for minute i (past the history's minutes: a minute ahead, ahead.minutes), the same
// from the mouse and from the keyboard
function readoutText(i, ahead) {
  const n = hist.minutes.length;
  if (i >= n) return aheadReadout(ahead, ahead.minutes[i - n], (h) => forecastSeries(h).label);
  const lines = [`${fmtTime(hist.minutes[i] * 1000, true)} UTC`];
  for (const s of SERIES) lines.push(`${s.label}: ${fmtNum((hist[s.key] || [])[i])} kW`);
  const flags = FLAGS.filter((f) => (hist[f.key] || [])[i] === true).map((f) => f.label);
  if (flags.length) lines.push(`flags: ${flags.join(", ")}`);
  return lines.join("\n");
}
export function drawChart() {
  const ahead = aheadOf(hist);
  legend(ahead);
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
    return;
  }
  // the history ends with the minute in progress; the axis goes on past it by the longest horizon
  // when something lies ahead
  const tEnd = Math.max(minutes[minutes.length - 1] * 1000 + 60000, minutes[0] * 1000 + 60000);
  const t0 = minutes[0] * 1000, t1 = tEnd + ahead.minutesAhead * 60000;
  const nowMs = typeof hist.now === "number" ? clamp(hist.now * 1000, tEnd - 60000, tEnd) : tEnd;
  let lo = Infinity, hi = -Infinity;
  for (const s of SERIES) for (const v of hist[s.key] || []) if (typeof v === "number") { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  for (const f of ahead.forecasts) { lo = Math.min(lo, f.kw); hi = Math.max(hi, f.kw); }
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
    // a label centred this close to the y axis runs into its lowest value ("50" over "03:30"): its grid line says it
    if (x(t) - m.l < X_TICK_CLEAR) continue;
    gAxes.append(svg("text", {x: x(t), y: m.t + ph + 14, "text-anchor": "middle", class: "x-tick"}, label));
  }
  gAxes.append(svg("text", {x: m.l + pw / 2, y: H - 4, class: "axis-label", "text-anchor": "middle"}, "time (UTC)"));
  gAxes.append(svg("line", {x1: m.l, x2: m.l + pw, y1: m.t + ph, y2: m.t + ph, class: "axis"}));
  gAxes.append(svg("line", {x1: m.l, x2: m.l, y1: m.t, y2: m.t + ph, class: "axis"}));

  // event intervals, shaded by level, under the series
  const gEvents = svg("g", {"clip-path": "url(#plot-clip)", class: "events"});
  let eventCount = 0, upcomingCount = 0;
  // the "now" label (ahead.js) takes the first row where it is: an event starting about now goes under it
  const labelXs = ahead.minutesAhead ? [x(nowMs)] : [];
  for (const e of (hist.events || []).concat(ahead.upcoming)) {
    const s = toMs(e.start), end = toMs(e.end) === null ? t1 : toMs(e.end);
    if (s === null || end < t0 || s > t1) continue;
    const x0 = x(Math.max(s, t0)), x1 = x(Math.min(end, t1));
    const level = clamp(Math.round(e.level || 0), 0, 3);
    const out = e.opt === "optOut";
    const r = svg("rect", {x: x0, y: m.t, width: Math.max(2, x1 - x0), height: ph,
                           fill: out ? `url(#opt-out-${level})` : LEVEL_COLORS[level] || "#ccc",
                           "fill-opacity": out ? 0.45 : 0.28,
                           class: `event${out ? " opted-out" : ""}${e.upcoming ? " upcoming" : ""}`,
                           "data-level": level, "data-event": e.event_id || "", "data-opt": e.opt || ""});
    r.append(svg("title", {}, `${e.upcoming ? "upcoming " : ""}event ${e.event_id || ""} level ${level}: ${fmtTime(s, true)}–${toMs(e.end) === null ? "open" : fmtTime(end, true)} UTC${e.opt === "optOut" ? " (opted out)" : ""}`));
    gEvents.append(r);
    if (x1 - x0 > 24) {
      // overlapping events (a modification, a second program) stack their labels instead of overprinting
      const row = labelXs.filter((lx) => Math.abs(lx - x0) < 60).length;
      labelXs.push(x0);
      gEvents.append(svg("text", {x: x0 + 4, y: m.t + 12 + row * 13, class: "event-label"}, `L${level}${e.opt === "optOut" ? " opt-out" : ""}`));
    }
    if (e.upcoming) upcomingCount++; else eventCount++;
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
    gSeries.append(path);
  }
  root.append(gSeries);
  if (ahead.minutesAhead) {
    // the dashed lines start from now's demand: the latest of the last 15 minutes, else none
    const demand = hist.demand_kw || [];
    let last = minutes.length - 1;
    while (last >= 0 && typeof demand[last] !== "number" && minutes.length - last <= 15) last--;
    const demandNow = last >= 0 && typeof demand[last] === "number" ?
      [minutes[last] * 1000 + 30000, demand[last]] : null;
    root.append(drawAhead(ahead, {x, y, top: m.t, height: ph, nowMs, demandNow, at: forecastSeries}));
  }

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

  // the readout: the mouse's minute under the pointer, the keyboard's (chart_keys.js) at its cursor
  const cursor = svg("line", {y1: m.t, y2: m.t + ph, stroke: "#1c2430", "stroke-width": 0.8, visibility: "hidden"});
  const overlay = svg("rect", {x: m.l, y: m.t, width: pw, height: ph, fill: "transparent"});
  root.append(cursor, overlay);
  const tip = $("tooltip");
  // px: the cursor in the drawing's units; left, top: the pointer in the chart box's CSS pixels
  function show(i, px, left, top) {
    cursor.setAttribute("x1", px); cursor.setAttribute("x2", px); cursor.setAttribute("visibility", "visible");
    const text = readoutText(i, ahead);
    tip.textContent = text;
    // a line wider than a phone's chart (a forecast ahead's) wraps inside it: measured from the left edge,
    // where it has the chart's whole width
    tip.style.whiteSpace = "pre-wrap";
    tip.style.left = "0px";
    tip.hidden = false;
    // beside the cursor, on its left near the right edge rather than over it
    const box = root.getBoundingClientRect(), width = tip.offsetWidth;
    tip.style.left = `${Math.max(0, left + 14 + width + 4 > box.width ? left - 14 - width : left + 14)}px`;
    tip.style.top = `${top + 10}px`;
    return text;
  }
  function hide() { tip.hidden = true; cursor.setAttribute("visibility", "hidden"); }
  // the readout's minutes: the history's, then those of the forecasts ahead
  const times = minutes.concat(ahead.minutes);
  const readout = {
    minutes: times, hide, now: minutes.length - 1,
    // the middle of the minute, where its value is plotted
    show: (i) => {
      const px = x(times[i] * 1000 + 30000), scale = root.getBoundingClientRect().width / W;
      return show(i, px, px * scale, m.t * scale);
    },
  };
  overlay.addEventListener("mousemove", (ev) => {
    const box = root.getBoundingClientRect();
    const px = (ev.clientX - box.left) * W / box.width;
    const t = t0 + (px - m.l) / pw * (t1 - t0);
    // past now the nearest forecast (a minute half-way to it still reads now's)
    const i = t >= tEnd && ahead.minutes.length ? nearest(times, t / 1000 - 30) :
      clamp(Math.floor((t - t0) / 60000), 0, minutes.length - 1);
    show(i, px, ev.clientX - box.left, ev.clientY - box.top);
  });
  // back to the keyboard's minute if it has one
  overlay.addEventListener("mouseleave", () => keepReadout(readout));
  keepReadout(readout);

  root.setAttribute("aria-label", chartSummary(minutes, eventCount, flagRuns, ahead));
  dashboard.series = counts;
  dashboard.flags = flagRuns;
  dashboard.events = eventCount;
  dashboard.upcoming = upcomingCount;
  dashboard.ahead = ahead.forecasts.length;
  dashboard.draws++;
  dashboard.ready = true;
}
