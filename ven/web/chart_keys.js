// The chart's readout from the keyboard, for an operator without a mouse or with a screen reader: the
// chart takes focus, the arrow keys step through it, and each step is said once (#chart-said, polite).
import {$} from "./dom.js";

export const KEYS_HINT = "Left and Right arrows read it a minute at a time, Shift+arrow or Page Down and Page Up " +
  "an hour, Home and End the first and last minute (past now: the forecasts ahead), Escape hides the readout.";
const HOUR_S = 3600;
const root = $("chart-svg");
// the chart label's description (aria-describedby): said after the label, once the reader pauses on it
$("chart-keys").textContent = KEYS_HINT;
// the minute read out, by its time: the refresh every few seconds shifts the indices under it
let at = null;
// the last draw's {minutes, now: the index of now's minute (after it: the forecasts ahead), show(i) -> its
// words, hide()}; null when it drew no data
let readout = null;

export function nearest(minutes, t) {
  let lo = 0, hi = minutes.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (minutes[mid] < t) lo = mid + 1; else hi = mid;
  }
  return lo > 0 && t - minutes[lo - 1] < minutes[lo] - t ? lo - 1 : lo;
}
// after each draw, and when the mouse leaves: the keyboard's minute again, or the nearest one the
// data still has; nothing is said, the operator did not move
export function keepReadout(next) {
  readout = next;
  if (!readout) return;
  if (at === null) { readout.hide(); return; }
  const i = nearest(readout.minutes, at);
  at = readout.minutes[i];
  readout.show(i);
}
function target(key, shift, i, minutes) {
  const last = minutes.length - 1;
  const hour = (sign) => nearest(minutes, minutes[i] + sign * HOUR_S);
  switch (key) {
    case "ArrowLeft": return shift ? hour(-1) : Math.max(0, i - 1);
    case "ArrowRight": return shift ? hour(1) : Math.min(last, i + 1);
    // as a slider's: Page Up raises the value, here the time
    case "PageDown": return hour(-1);
    case "PageUp": return hour(1);
    case "Home": return 0;
    case "End": return last;
  }
  return null;
}
root.addEventListener("keydown", (ev) => {
  if (ev.key === "Escape") {
    at = null;
    if (readout) readout.hide();
    return;
  }
  if (!readout || ev.altKey || ev.ctrlKey || ev.metaKey) return;
  const {minutes} = readout;
  let j = target(ev.key, ev.shiftKey, at === null ? 0 : nearest(minutes, at), minutes);
  if (j === null) return;
  // nothing read out yet (after Escape, or focused by a click): any key but Home and End starts at now
  if (at === null && ev.key !== "Home" && ev.key !== "End") j = readout.now;
  ev.preventDefault();   // the arrows and Page keys would scroll the page
  at = minutes[j];
  $("chart-said").textContent = readout.show(j);
});
// Tab shows where the keys start (now's minute) without saying it: the focus already reads the
// chart's label, and a click's focus leaves the readout to the mouse
root.addEventListener("focus", () => {
  if (!readout || at !== null || !root.matches(":focus-visible")) return;
  at = readout.minutes[readout.now];
  keepReadout(readout);
});
root.addEventListener("blur", () => {
  at = null;
  if (readout) readout.hide();
});
