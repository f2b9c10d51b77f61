// The page's settings (its query parameters), the gateway's last answer, and window.dashboard.
import {clamp} from "./format.js";

const params = new URLSearchParams(location.search);
// the chart's span as chosen on the page (span.js), first from ?hours=
export let hours = clamp(Number(params.get("hours")) || 24, 1, 840);
export const SPANS = [{hours: 1, label: "1 h"}, {hours: 6, label: "6 h"}, {hours: 24, label: "24 h"},
                      {hours: 168, label: "7 days"}, {hours: 840, label: "35 days"}];
export function spanLabel(h) {
  const span = SPANS.find((s) => s.hours === h);
  return span ? span.label : `${h} h`;
}
export const REFRESH_S = clamp(Number(params.get("refresh")) || 10, 1, 3600);
// Test hooks and a summary of what was drawn, for the headless-browser test and for curious operators: draws are
// the chart's, refreshes the answers taken (the chart is drawn again only when what it shows changed)
export const dashboard = window.dashboard = {ready: false, draws: 0, refreshes: 0, failures: 0, series: {}, flags: {},
                                      events: 0, minutes: 0, lastError: null, lastOk: null, stale: false,
                                      problems: []};
export let hist = null;
export let gw = null;
// the span `hist` covers: the chosen one once its answer has come
export let histHours = null;
// only this module may assign them: the others read them through their (read-only) imports
export function setAnswer(status, history, historyHours) { gw = status; hist = history; histHours = historyHours; }
export function setHours(h) { hours = h; }
export function pointByName(name) {
  return ((gw && gw.points) || []).find((p) => p.name === name);
}
