// "Recent log": the gateway's last log lines (/api/log), newest first, in the zone the page shows. The operator
// with a dashboard and no shell learns from it what happened while nobody looked (the meter silent from 03:10,
// its end at 03:50), which "Needs attention" cannot say once it is over. "Show" chooses every line or the
// warnings and errors, and stays in the address (?log=warning) as the span does.
import {apiGet} from "./api.js";
import {$, el} from "./dom.js";
import {fmtStamp, toMs, zoneName, zoneNote} from "./format.js";

const FETCH_TIMEOUT_MS = 8000;
const LEVELS = {info: "everything", warning: "warnings and errors"};
let level = new URLSearchParams(location.search).get("log") === "warning" ? "warning" : "info";
let shown = null;     // what is drawn: the answer's level, zone, total and count, so an unchanged one is not redrawn

// the zone here, not beside the title: a name as long as America/Argentina/Buenos_Aires coming with the first
// answer would wrap the title's line on a phone and move the page below
function dayRow(day) { return el("li", {class: "log-day"}, `${day} (${zoneName()})`); }

function lineRow(line) {
  const ms = toMs(line.at);
  const stamp = ms === null ? String(line.at || "") : fmtStamp(ms);
  const lvl = String(line.level || "");
  const li = el("li", {class: `log-line ${lvl.toLowerCase()}`});
  // the hover says the time as the log line says it, in UTC: the one to look for in journalctl
  li.append(el("time", {datetime: line.at || "", title: `${line.at || ""} in the gateway's log (UTC)`},
               stamp.slice(11) + zoneNote(ms)),     // the hour a clock change repeats: which pass of it
            el("span", {class: "log-level"}, lvl),
            el("span", {class: "log-message"}, line.message || ""));
  return {li, day: stamp.slice(0, 10)};
}

function endRow(body) {
  if (!body.capacity) return el("li", {class: "log-end muted"}, "this gateway keeps no log lines to show");
  const n = (body.lines || []).length, kept = Math.min(body.total, body.capacity), older = body.total - kept;
  const plural = (k, word) => `${k} ${word}${k === 1 ? "" : "s"}`;
  const what = level === "info" ? plural(kept, "line")
    : `${n === 0 ? "no warnings or errors" : n === 1 ? "1 warning or error" : `${n} warnings and errors`} ` +
      `among ${plural(kept, "line")}`;
  const since = older ? `; ${older} older since the gateway started are in its own log only`
    : ", all since the gateway started";
  return el("li", {class: "log-end muted"}, what + since);
}

function draw(body) {
  const key = `${level} ${zoneName()} ${body.total} ${(body.lines || []).length} ${body.capacity}`;
  if (key === shown) return;
  shown = key;
  const box = $("log"), list = $("log-lines");
  // new lines come at the top: one reading further down keeps the lines it reads where they were
  const top = box.scrollTop, height = box.scrollHeight;
  const rows = [];
  let day = null;
  for (const line of body.lines || []) {
    const row = lineRow(line);
    if (row.day !== day) rows.push(dayRow(row.day));
    day = row.day;
    rows.push(row.li);
  }
  rows.push(endRow(body));
  list.replaceChildren(...rows);
  if (top > 0) box.scrollTop = top + box.scrollHeight - height;
}

// after each good answer of the gateway; a failure here is the card's alone, the rest of the page stands
let asking = 0;
export async function refreshLog() {
  const asked = level, mine = ++asking;
  try {
    const body = await apiGet(`api/log?level=${asked}`, FETCH_TIMEOUT_MS, (resp) => resp.json());
    // a later question (the next refresh, another "Show") has the newer answer
    if (mine === asking) draw(body);
  } catch (err) {
    if (mine !== asking) return;
    shown = null;
    $("log-lines").replaceChildren(el("li", {class: "log-end bad"}, `the log could not be read: ${err.message}`));
  }
}

export function setupLog() {
  const select = $("log-level");
  select.replaceChildren(...Object.entries(LEVELS).map(([value, words]) => el("option", {value}, words)));
  select.value = level;
  select.addEventListener("change", () => {
    level = select.value;
    // replaced, not pushed, as ?hours= (span.js)
    const url = new URL(location.href);
    if (level === "info") url.searchParams.delete("log"); else url.searchParams.set("log", level);
    window.history.replaceState(window.history.state, "", url);
    $("log").scrollTop = 0;
    refreshLog();
  });
}
