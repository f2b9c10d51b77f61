// The page's settings (its query parameters), the gateway's last answer, and window.dashboard.
import {clamp} from "./format.js";

const params = new URLSearchParams(location.search);
export const HOURS = clamp(Number(params.get("hours")) || 24, 1, 840);
export const REFRESH_S = clamp(Number(params.get("refresh")) || 10, 1, 3600);
// Test hooks and a summary of what was drawn, for the headless-browser test and for curious operators.
export const dashboard = window.dashboard = {ready: false, draws: 0, failures: 0, series: {}, flags: {}, events: 0,
                                      minutes: 0, lastError: null, lastOk: null, stale: false,
                                      problems: []};
export let hist = null;
export let gw = null;
// only this module may assign them: the others read them through their (read-only) imports
export function setAnswer(status, history) { gw = status; hist = history; }
export function pointByName(name) {
  return ((gw && gw.points) || []).find((p) => p.name === name);
}
