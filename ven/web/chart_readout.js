// The chart's readout of one minute: the mouse's minute under the pointer, the keyboard's (chart_keys.js) at
// its cursor, in a box beside it.
import {keepReadout, nearest} from "./chart_keys.js";
import {readoutText} from "./chart_words.js";
import {$, svg} from "./dom.js";
import {clamp} from "./format.js";
import {hist} from "./state.js";

// W: the drawing's width; x(ms) and time(px): the time axis both ways; t0, tEnd: the history's first and
// last ms; left, top, width, height: the plot
export function wireReadout(root, {W, ahead, x, time, t0, tEnd, top, left, width, height}) {
  const minutes = hist.minutes;
  const cursor = svg("line", {y1: top, y2: top + height, stroke: "var(--ink)", "stroke-width": 0.8, visibility: "hidden"});
  const overlay = svg("rect", {x: left, y: top, width, height, fill: "transparent"});
  root.append(cursor, overlay);
  const tip = $("tooltip");
  // px: the cursor in the drawing's units; at, down: the pointer in the chart box's CSS pixels
  function show(i, px, at, down) {
    cursor.setAttribute("x1", px); cursor.setAttribute("x2", px); cursor.setAttribute("visibility", "visible");
    const text = readoutText(i, ahead);
    tip.textContent = text;
    // a line wider than a phone's chart (a forecast ahead's) wraps inside it: measured from the left edge,
    // where it has the chart's whole width
    tip.style.whiteSpace = "pre-wrap";
    tip.style.left = "0px";
    tip.hidden = false;
    // beside the cursor, on its left near the right edge rather than over it
    const box = root.getBoundingClientRect(), tipWidth = tip.offsetWidth;
    tip.style.left = `${Math.max(0, at + 14 + tipWidth + 4 > box.width ? at - 14 - tipWidth : at + 14)}px`;
    tip.style.top = `${down + 10}px`;
    return text;
  }
  function hide() { tip.hidden = true; cursor.setAttribute("visibility", "hidden"); }
  // the readout's minutes: the history's, then those of the forecasts ahead
  const times = minutes.concat(ahead.minutes);
  const readout = {
    minutes: times, hide, now: minutes.length - 1,
    // the middle of the minute, where its value is plotted
    show: (i) => {
      const px = x(times[i] * 1000 + 30000), css = root.getBoundingClientRect().width / W;
      return show(i, px, px * css, top * css);
    },
  };
  overlay.addEventListener("mousemove", (ev) => {
    const box = root.getBoundingClientRect();
    const px = (ev.clientX - box.left) * W / box.width;
    const t = time(px);
    // past now the nearest forecast (a minute half-way to it still reads now's)
    const i = t >= tEnd && ahead.minutes.length ? nearest(times, t / 1000 - 30) :
      clamp(Math.floor((t - t0) / 60000), 0, minutes.length - 1);
    show(i, px, ev.clientX - box.left, ev.clientY - box.top);
  });
  // back to the keyboard's minute if it has one
  overlay.addEventListener("mouseleave", () => keepReadout(readout));
  keepReadout(readout);
}
