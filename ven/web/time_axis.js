// The chart's time axis. Past now it goes on by the longest horizon (ahead.js); at that hour's share of a
// long span (a day on a phone, a week anywhere) it would be a few pixels, the forecasts on top of each other
// at the plot's edge: the hour ahead then gets a width of its own, shaded and labelled "+60 min", and the
// past the rest.
import {svg} from "./dom.js";
import {fmtTime} from "./format.js";

const X_TICK_CLEAR = 16;   // px from the y axis inside which an x tick has no label
const AHEAD_MIN_PX = 56;   // room for the two forecasts, "now" and the label
const AHEAD_MIN_SHARE = 0.1;
const STEPS_MIN = [10, 15, 30, 60, 120, 180, 240, 360, 720, 1440, 2880, 5760, 10080];

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
// grid lines and labels on round UTC times into g (in the page: its labels are measured), sub-hour steps so a
// 1-2 h window (?hours=1) gets several; a widened hour ahead has its own label, which the times give way to
export function drawTimeAxis(g, scale, {t0, tEnd, t1, left, width, top, height, minutesAhead}) {
  const {x, split, widened} = scale;
  const end = widened ? tEnd : t1;
  const spanMin = (end - t0) / 60000, px = (widened ? split : left + width) - left;
  const stepMin = STEPS_MIN.find((s) => spanMin / s <= Math.max(4, px / 90)) || 10080;
  const stepMs = stepMin * 60000;
  const y = top + height + 14;
  const taken = [];
  const clear = (text) => {
    const b = text.getBBox();
    if (taken.some((o) => b.x < o.x + o.width + 4 && o.x < b.x + b.width + 4)) { text.remove(); return; }
    taken.push(b);
  };
  if (widened) {
    g.append(svg("rect", {x: split, y: top, width: left + width - split, height, class: "ahead-band"}));
    const label = svg("text", {x: (split + left + width) / 2, y, "text-anchor": "middle", class: "x-tick ahead-tick"},
                      `+${minutesAhead} min`);
    g.append(label);
    clear(label);
  }
  for (let t = Math.ceil(t0 / stepMs) * stepMs; t <= end; t += stepMs) {
    g.append(svg("line", {x1: x(t), x2: x(t), y1: top, y2: top + height, class: "grid-line"}));
    const d = new Date(t);
    const midnight = d.getUTCHours() === 0 && d.getUTCMinutes() === 0;
    const label = midnight || stepMin >= 1440 ? `${d.getUTCMonth() + 1}/${d.getUTCDate()}` : fmtTime(t);
    // a label centred this close to the y axis runs into its lowest value ("50" over "03:30"): its grid line says it
    if (x(t) - left < X_TICK_CLEAR) continue;
    const text = svg("text", {x: x(t), y, "text-anchor": "middle", class: "x-tick"}, label);
    g.append(text);
    clear(text);
  }
}
