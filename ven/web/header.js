// The pills (the gateway's state at a glance), the problem list under them and the footer.
import {$, el} from "./dom.js";
import {fmtDuration, zoneName} from "./format.js";
import {findProblems, renderProblems} from "./problems.js";
import {gw, histHours, pointByName, spanLabel} from "./state.js";
import {communication, flaky, learningText, neverRegistered, noThreshold} from "./status.js";

let title = "Edge Gateway";
// the tab's name: which gateway this is
export function pageTitle() { return title; }
// which gateway this is: on a campus every tab and header said "Edge Gateway"
function renderSite() {
  const dev = gw.device || {};
  const who = [(gw.vtn || {}).ven_name, dev.name && dev.name !== "EdgeGateway" ? dev.name : null,
               typeof dev.device_id === "number" ? `device ${dev.device_id}` : null].filter(Boolean).join(" · ");
  $("site").textContent = who;
  title = who ? `${who} · Edge Gateway` : "Edge Gateway";
  document.title = title;
}
export function renderHeader(health) {
  renderSite();
  const pills = $("pills");
  pills.replaceChildren();
  const add = (text, cls, title) => pills.append(el("span", {class: `pill ${cls}`, title: title || ""}, text));
  const found = findProblems(health);
  renderProblems(found);
  const bad = found.filter((p) => p.level === "bad" && p.key !== "health").length;
  // /healthz stays 200 while the process works (a restart would not bring a VTN, a meter or a BAS back, and
  // would lose what an unwritable storage.path keeps in memory), but green "healthy" beside red pills misleads
  if (!health.ok) add(`unhealthy: ${health.text}`, "bad", health.text);
  else if (bad) add(`running, ${bad} problem${bad > 1 ? "s" : ""}`, "warn", `/healthz: ${health.text} (the process is up; see "Needs attention")`);
  else add("healthy", "ok", health.text);
  const vtn = gw.vtn || {};
  if ("connected" in vtn) {
    const up = vtn.connected !== false;
    const never = neverRegistered(vtn);
    if (!up && vtn.connecting === true) add("VTN connecting", "", "registering with the VTN; nothing has failed yet");
    else add(up ? (flaky(vtn) ? "VTN intermittent" : "VTN connected") : (never ? "VTN not registered" : "VTN disconnected"),
             up ? (flaky(vtn) ? "warn" : "ok") : "bad", vtn.last_error || "");
  }
  const level = pointByName("ADR-Event-Level");
  if (level && typeof level.value === "number") {
    add(level.value > 0 ? `event level ${level.value}` : "no event", level.value > 0 ? "warn" : "");
  }
  const comm = communication();
  if (comm) add("BACnet comms disabled", "bad", `${comm.mode} by ${comm.by || "?"}`);
  const meter = gw.meter || {};
  if (meter.fault) add("meter fault", "bad", meter.last_error || "");
  else if ((meter.fault_window || {}).intermittent === true) add("meter intermittent", "warn", meter.fault_window.last_failure || "");
  if (vtn.opt_answer_error) add("opt answer refused", "bad", vtn.opt_answer_error);
  const fc = gw.forecaster || {};
  if (fc.input_stale === true) add("no forecaster input", "bad", "forecasts and load flags read fault");
  else if (noThreshold()) add("no load threshold yet", "warn", "high-load and low-load read fault (cannot tell)");
  // expected on a new install, not a problem: neutral, and not in "Needs attention"; its sentence (940 px, three
  // lines on a phone) is the title and on the Forecaster card
  const learning = learningText();
  if (learning) add("forecaster learning", "learning", learning);
  // an unwritable storage.path loses events, telemetry or forecast history on a restart: say so up top
  const storage = gw.storage || {};
  if (storage.ok === false) {
    const why = Object.entries(storage.errors || {}).map(([part, e]) => `${part}: ${e}`).join("; ");
    add("storage not writable", "bad", `${storage.path || "storage.path"}: ${why}`);
  }
  const parts = [];
  if (gw.version) parts.push(`version ${gw.version}`);
  if (typeof gw.uptime_seconds === "number") parts.push(`up ${fmtDuration(gw.uptime_seconds)}`);
  parts.push(`chart: last ${spanLabel(histHours)}, times in ${zoneName()}`);
  $("footer").textContent = parts.join(" · ");
  return found;
}
