// Event intervals shaded by level under the series (opted out: hatched; upcoming: outlined in dots), each
// wide enough labelled with its level.
import {svg} from "./dom.js";
import {clamp, fmtWhen, toMs, zoneName} from "./format.js";
import {LEVEL_COLORS} from "./series.js";

// the hatches an opted-out span is filled with, in its level's colour: the level was sent, the building did
// not follow
export function hatches(defs) {
  for (const l of [0, 1, 2, 3]) {
    const hatch = svg("pattern", {id: `opt-out-${l}`, width: 8, height: 8, patternUnits: "userSpaceOnUse",
                                  patternTransform: "rotate(45)"});
    hatch.append(svg("rect", {x: 0, y: 0, width: 3, height: 8, fill: LEVEL_COLORS[l]}));
    defs.append(hatch);
  }
}
// events: the history's and the upcoming ones; labelXs: px where a label already is at the top (now's);
// {g, past: how many of the history's were drawn, upcoming: how many upcoming}
export function drawEvents(events, {x, t0, t1, top, height, labelXs}) {
  const g = svg("g", {"clip-path": "url(#plot-clip)", class: "events"});
  let past = 0, upcoming = 0;
  for (const e of events) {
    const s = toMs(e.start), end = toMs(e.end) === null ? t1 : toMs(e.end);
    if (s === null || end < t0 || s > t1) continue;
    const x0 = x(Math.max(s, t0)), x1 = x(Math.min(end, t1));
    const level = clamp(Math.round(e.level || 0), 0, 3);
    const out = e.opt === "optOut";
    const r = svg("rect", {x: x0, y: top, width: Math.max(2, x1 - x0), height,
                           fill: out ? `url(#opt-out-${level})` : LEVEL_COLORS[level],
                           "fill-opacity": out ? 0.45 : 0.28,
                           class: `event${out ? " opted-out" : ""}${e.upcoming ? " upcoming" : ""}`,
                           "data-level": level, "data-event": e.event_id || "", "data-opt": e.opt || ""});
    r.append(svg("title", {}, `${e.upcoming ? "upcoming " : ""}event ${e.event_id || ""} level ${level}: ${fmtWhen(s, true)}–${toMs(e.end) === null ? "open" : fmtWhen(end, true)} ${zoneName()}${out ? " (opted out)" : ""}`));
    g.append(r);
    if (x1 - x0 > 24) {
      // overlapping events (a modification, a second program) stack their labels instead of overprinting
      const row = labelXs.filter((lx) => Math.abs(lx - x0) < 60).length;
      labelXs.push(x0);
      g.append(svg("text", {x: x0 + 4, y: top + 12 + row * 13, class: "event-label"}, `L${level}${out ? " opt-out" : ""}`));
    }
    if (e.upcoming) upcoming++; else past++;
  }
  return {g, past, upcoming};
}
