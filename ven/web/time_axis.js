// The chart's time axis. Past now it goes on by the longest horizon (ahead.js); at that hour's share of a
// long span (a day on a phone, a week anywhere) it would be a few pixels, the forecasts on top of each other
// at the plot's edge: the hour ahead then gets a width of its own, shaded and labelled "+60 min", and the
// past the rest.
import {svg} from "./dom.js";
import {offsetMs, pad, zoneAbbr} from "./format.js";

const X_TICK_CLEAR = 16;   // px from the y axis inside which an x tick has no label
const AHEAD_MIN_PX = 56;   // room for the two forecasts, "now" and the label
const AHEAD_MIN_SHARE = 0.1;
const STEPS_MIN = [10, 15, 30, 60, 120, 180, 240, 360, 720, 1440, 2880, 5760, 10080];
const DAY_MS = 86400000;

// t0..tEnd (ms) the past, tEnd..t1 what lies ahead, drawn from left over width px: {x(ms), time(px) its inverse,
// split: the px of tEnd, widened: the hour ahead drawn wider than its share}
export function timeScale(t0, tEnd, t1, left, width) {
  const share = (t1 - tEnd) / (t1 - t0) * width;
  const room = t1 > tEnd ? Math.min(width / 3, Math.max(AHEAD_MIN_PX, AHEAD_MIN_SHARE * width)) : 0;
  const widened = share < room;
  const split = left + (widened ? width - room : (tEnd - t0) / (t1 - t0) * width);
  if (!widened) {
    return {x: (ms) => left + (ms - t0) / (t1 - t0) * width, time: (px) => t0 + (px - left) / width * (t1 - t0),
            split, widened};
  }
  const right = left + width;
  return {
    x: (ms) => ms <= tEnd ? left + (ms - t0) / (tEnd - t0) * (split - left) : split + (ms - tEnd) / (t1 - tEnd) * (right - split),
    time: (px) => px <= split ? t0 + (px - left) / (split - left) * (tEnd - t0) : tEnd + (px - split) / (right - split) * (t1 - tEnd),
    split, widened,
  };
}
// the time axis' end (ms): t1, or a little past it where a marker at lastMs (the last forecast's middle, 30 s
// before t1) would hang past the plot's right edge: far enough that it reaches px short of it, on its minute still
export function axisEnd(t0, tEnd, t1, lastMs, width, px) {
  const {x, split, widened} = timeScale(t0, tEnd, t1, 0, width);
  if (lastMs === null || width - x(lastMs) >= px) return t1;
  // x(lastMs) is at px from the right when (t - lastMs) / (t - from) = px / the width from's part of the axis has:
  // the hour ahead's own (still so at the later end: its width depends on the plot's alone), or the whole's
  const from = widened ? tEnd : t0, k = px / (widened ? width - split : width);
  return Math.max(t1, (lastMs - k * from) / (1 - k));
}
// [{from, to, off}]: the stretches of a to b (ms) over which the zone shown keeps its UTC offset off (ms). A
// zone changes it at most a few times a year: a look a day finds each change in 35 days, a bisection its minute.
function offsetSpans(a, b) {
  const spans = [];
  let from = a, off = offsetMs(a);
  for (let t = a; t < b;) {
    const next = Math.min(b, t + DAY_MS), then = offsetMs(next);
    if (then !== off) {
      let lo = t, hi = next;
      while (hi - lo > 60000) {
        // whole minutes past lo, at least one: the axis' end b is off the minute (ahead.js' room for a marker), and
        // from a lo 1-2 minutes before it a half rounded down is lo itself, for ever
        const mid = lo + Math.ceil((hi - lo) / 120000) * 60000;
        if (offsetMs(mid) === off) lo = mid; else hi = mid;
      }
      spans.push({from, to: hi, off});
      from = hi; off = then;
    }
    t = next;
  }
  spans.push({from, to: b + 1, off});
  return spans;
}
// the ticks from t0 to end: each time the zone's wall clock reads a round step (03:00, 06:00; a day: its
// midnight), labelled with it. Where the clock went forward the hour it skipped has none; the hour an autumn
// change repeats has its ticks twice, each named by its zone (02:00 CEST, 02:00 CET)
// a day as "5 Dec": every other date on the page is ISO, and "12/5" read as the 12th of May in Rome
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
export function timeTicks(t0, end, stepMin) {
  const stepMs = stepMin * 60000, ticks = [];
  for (const {from, to, off} of offsetSpans(t0, end)) {
    for (let t = Math.ceil((from + off) / stepMs) * stepMs - off; t < to && t <= end; t += stepMs) {
      const wall = new Date(t + off);
      const midnight = (t + off) % DAY_MS === 0;
      ticks.push({t, label: midnight || stepMin >= 1440 ? `${wall.getUTCDate()} ${MONTHS[wall.getUTCMonth()]}`
        : `${pad(wall.getUTCHours())}:${pad(wall.getUTCMinutes())}`});
    }
  }
  const seen = new Map();
  for (const k of ticks) seen.set(k.label, (seen.get(k.label) || 0) + 1);
  for (const k of ticks) if (seen.get(k.label) > 1) k.label += ` ${zoneAbbr(k.t)}`;
  return ticks;
}
// grid lines and labels on round times of the zone shown into g (in the page: its labels are measured),
// sub-hour steps so a 1-2 h window (?hours=1) gets several; a widened hour ahead has its own label, which the
// times give way to
export function drawTimeAxis(g, scale, {t0, tEnd, t1, left, width, top, height, minutesAhead}) {
  const {x, split, widened} = scale;
  const end = widened ? tEnd : t1;
  const spanMin = (end - t0) / 60000, px = (widened ? split : left + width) - left;
  const stepMin = STEPS_MIN.find((s) => spanMin / s <= Math.max(4, px / 90)) || 10080;
  const y = top + height + 14;
  const taken = [];
  // a label centred on a tick at the plot's right end runs out of the drawing on a phone (no right margin there);
  // one named by its zone on the day a clock changes ("04:00 CET") is twice as wide, and near the y axis runs
  // into its lowest kW (those end 6 px left of it)
  const right = g.ownerSVGElement.viewBox.baseVal.width;
  const clear = (text) => {
    const b = text.getBBox();
    if (b.x + b.width > right || b.x < left - 6 + 4 || taken.some((o) => b.x < o.x + o.width + 4 && o.x < b.x + b.width + 4)) {
      text.remove();
      return;
    }
    taken.push(b);
  };
  if (widened) {
    g.append(svg("rect", {x: split, y: top, width: left + width - split, height, class: "ahead-band"}));
    const label = svg("text", {x: (split + left + width) / 2, y, "text-anchor": "middle", class: "x-tick ahead-tick"},
                      `+${minutesAhead} min`);
    g.append(label);
    clear(label);
  }
  for (const {t, label} of timeTicks(t0, end, stepMin)) {
    g.append(svg("line", {x1: x(t), x2: x(t), y1: top, y2: top + height, class: "grid-line"}));
    // a label centred this close to the y axis runs into its lowest value ("50" over "03:30"): its grid line says it
    if (x(t) - left < X_TICK_CLEAR) continue;
    const text = svg("text", {x: x(t), y, "text-anchor": "middle", class: "x-tick"}, label);
    g.append(text);
    clear(text);
  }
}
