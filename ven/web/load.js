// The load thresholds across the plot and the high/low load flags they raise, in lanes under the time axis.
import {svg} from "./dom.js";
import {fmtNum} from "./format.js";
import {FLAGS} from "./series.js";

export const LANE = 16;
const LINE_PX = 13;        // a label's line of text
const EVENT_ROW_PX = 16;   // the top of the plot, where the events' labels are

// the threshold lines, to go under the series, and their labels, over them: in the right margin, or on a
// phone (inside, no margin) at the plot's left where they cover the oldest minutes rather than now and the
// forecasts ahead; {g, labels}
export function drawThresholds(hist, {y, left, width, top, inside}) {
  const g = svg("g", {class: "thresholds"}), labels = svg("g", {class: "thresholds"});
  const lines = [];
  for (const [k, label, color] of [["high_threshold_kw", "high", "var(--high)"], ["low_threshold_kw", "low", "var(--low)"]]) {
    const v = hist[k];
    if (typeof v !== "number") continue;
    g.append(svg("line", {x1: left, x2: left + width, y1: y(v), y2: y(v), stroke: color, "stroke-width": 1.2,
                          "stroke-dasharray": "8 4", class: "threshold", "data-threshold": k}));
    // whole kW, but a small site's (5.16 and 1.73 kW read "5" and "2", the base load drawn under the "2")
    lines.push({at: y(v), words: `${label} ${fmtNum(v, Math.abs(v) < 10 ? 1 : 0)} kW`, color});
  }
  if (inside) {
    // above its line, unless in the events' label row or on the other label: then under it
    let above = -Infinity;
    for (const l of lines) {
      const base = l.at - 4;
      l.base = base - LINE_PX < top + EVENT_ROW_PX || base - LINE_PX < above ? l.at + LINE_PX - 1 : base;
      above = l.base;
    }
  } else {
    // beside its line, the two pushed apart when their lines are closer than a line of text
    for (const l of lines) l.base = l.at + 4;
    if (lines.length === 2 && lines[1].base - lines[0].base < LINE_PX) {
      const mid = (lines[0].base + lines[1].base) / 2;
      lines[0].base = mid - LINE_PX / 2; lines[1].base = mid + LINE_PX / 2;
    }
  }
  for (const l of lines) {
    const at = inside ? {x: left + 4, y: l.base} : {x: left + width + 4, y: l.base};
    labels.append(svg("text", Object.assign(at, {fill: l.color, style: `fill:${l.color}`, class: "threshold-label"}), l.words));
  }
  return {g, labels};
}
// the flag lanes: each run of minutes flagged is a bar; {g, runs: {key: {runs, minutes}}}
export function drawFlagLanes(hist, {x, left, width, top}) {
  const g = svg("g", {class: "flags"});
  const minutes = hist.minutes;
  const runs = {};
  FLAGS.forEach((f, lane) => {
    const laneTop = top + lane * LANE;
    g.append(svg("rect", {x: left, y: laneTop, width, height: LANE - 4, fill: "var(--lane)"}));
    g.append(svg("text", {x: left - 6, y: laneTop + LANE - 6, "text-anchor": "end"}, f.label));
    const values = hist[f.key] || [];
    let count = 0, minutesOn = 0;
    for (let i = 0; i < minutes.length; i++) {
      if (values[i] !== true && values[i] !== 1) continue;
      let j = i;
      while (j + 1 < minutes.length && (values[j + 1] === true || values[j + 1] === 1)) j++;
      g.append(svg("rect", {x: x(minutes[i] * 1000), y: laneTop, width: Math.max(1, x(minutes[j] * 1000 + 60000) - x(minutes[i] * 1000)),
                            height: LANE - 4, fill: f.color, class: "flag-run", "data-flag": f.key}));
      count++; minutesOn += j - i + 1;
      i = j;
    }
    runs[f.key] = {runs: count, minutes: minutesOn};
  });
  return {g, runs};
}
