// The chart's legend. On a phone (compact) each item keeps its swatch and the words that name it, without
// the explanations the swatch shows, and the event levels share one item: a few lines above the chart
// instead of eight.
import {$, el} from "./dom.js";
import {fmtWhen} from "./format.js";
import {LEVEL_COLORS, SERIES, forecastSeries} from "./series.js";

function item(swatches, words, attrs) {
  const span = el("span", attrs);
  span.append(...swatches, document.createTextNode(words));
  return span;
}
export function legend(ahead, compact) {
  const host = $("legend");
  host.classList.toggle("compact", compact);
  const items = SERIES.map((s) => item([el("i", {class: s.dash ? "dash" : "", style: `border-top-color:${s.color}`})],
                                       compact && s.short ? s.short : s.label));
  if (ahead.forecasts.length) {
    const dots = ahead.forecasts.map((f) => el("i", {class: "dot", style: `background:${forecastSeries(f.horizon).color}`}));
    const issued = fmtWhen(ahead.issuedAt * 1000);
    items.push(item(dots, compact ? `Forecasts issued ${issued}` : `Latest forecasts (issued ${issued})`,
                    {"data-legend": "ahead"}));
  }
  items.push(item([el("i", {class: "dash", style: "border-top-color:var(--high)"})], "Thresholds"));
  if (compact) {
    const levels = el("span", {"data-legend": "levels"});
    levels.append(document.createTextNode("Event level"));
    for (const l of [1, 2, 3]) levels.append(item([el("i", {class: "box", style: `background:${LEVEL_COLORS[l]}`})], String(l)));
    items.push(levels);
  } else {
    for (const l of [1, 2, 3]) items.push(item([el("i", {class: "box", style: `background:${LEVEL_COLORS[l]}`})], `Event level ${l}`));
  }
  items.push(item([el("i", {class: "box hatched"})], compact ? "Opted out" : "Opted out (hatched)", {"data-legend": "opted-out"}));
  if (ahead.upcoming.length) {
    items.push(item([el("i", {class: "box upcoming"})], compact ? "Upcoming event" : "Upcoming event (dotted outline)",
                    {"data-legend": "upcoming"}));
  }
  host.replaceChildren(...items);
}
