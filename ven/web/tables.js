// The tables: every BACnet point, the OpenADR events, and each status section as key/value rows.
import {$, el, putChildren} from "./dom.js";
import {UNIT_TEXT, fmtNum, fmtSpan, fmtWhen, humanize, putValue, toMs, zoneName} from "./format.js";
import {gw} from "./state.js";
import {learningText, levelSteps} from "./status.js";

function flagBadges(flags) {
  const frag = document.createDocumentFragment();
  const set = Object.entries(flags || {}).filter(([, v]) => v);
  if (!set.length) frag.append(el("span", {class: "flag normal"}, "normal"));
  for (const [k] of set) frag.append(el("span", {class: `flag ${k}`}, humanize(k)));
  return frag;
}
// a binary point in the words a BAS graphic shows (its inactiveText / activeText), not "active"
function stateText(p) {
  if (typeof p.value === "boolean" && Array.isArray(p.texts) && p.texts.length === 2) return p.texts[p.value ? 1 : 0];
  return fmtNum(p.value);
}
export function renderPoints() {
  const rows = [];
  for (const p of gw.points || []) {
    const tr = el("tr", {"data-point": p.name, title: p.description || ""});
    tr.append(el("td", {}, p.name), el("td", {class: "muted minor"}, p.object || ""),
              el("td", {class: "num"}, stateText(p)),
              el("td", {}, UNIT_TEXT[p.units] !== undefined ? UNIT_TEXT[p.units] : (p.units || "")));
    const flags = el("td");
    flags.append(flagBadges(p.flags));
    tr.append(flags);
    rows.push(tr);
  }
  putChildren($("points").tBodies[0], rows);
}
function levelBadge(level) {
  const span = el("span", {class: `level l${level}`}, level === null || level === undefined ? "—" : fmtNum(level));
  return span;
}
function levelCell(e) {
  const td = el("td", {class: "num levels"});
  const steps = levelSteps(e);
  if (steps.length <= 1) {
    td.append(levelBadge(steps.length ? steps[0].level : null));   // no SIMPLE signal: no level
    return td;
  }
  steps.forEach((st, i) => {
    if (i) td.append(el("span", {class: "arrow"}, " → "));
    const badge = levelBadge(st.level);
    td.append(badge);
    // while the event runs, the interval in force now is outlined and says so in words: an outline and a title
    // alone were lost on a screen reader and at a glance from across the room
    if (st.current && (e.status !== "cancelled" || e.drives_points === true)) {
      badge.classList.add("current");
      badge.title = "in force now";
      td.append(el("span", {class: "now-mark"}, " now"));
    }
  });
  return td;
}
function signalSummary(signals) {
  return (signals || []).map((s) => {
    const values = (s.intervals || []).map((i) => fmtNum(i.payload));
    return `${s.name || "signal"}${s.type ? "/" + s.type : ""}: ${values.join(" → ")}`;
  }).join("; ");
}
export function renderEvents() {
  for (const th of $("events").querySelectorAll("th[data-zone]")) {
    const text = `${th.dataset.zone} (${zoneName()})`;
    if (th.textContent !== text) th.textContent = text;
  }
  const rows = [];
  const events = gw.events || [];
  if (!events.length) {
    rows.push(el("tr", {}, null));
    rows[0].append(el("td", {colspan: 7, class: "muted"}, "no pending, active or recent events"));
  }
  for (const e of events) {
    const tr = el("tr", {class: e.status || "", "data-event": e.event_id || ""});
    const level = levelCell(e);
    // an event with no SIMPLE signal (a price, LOAD_DISPATCH), or one for other VENs or of a programme the site is
    // not enrolled in, is answered optOut as a matter of course. Not the BAS's or the operator's doing, so not red
    const signals = e.signals || [];
    const why = e.for_this_ven === false ? "not this site's"
      : signals.length > 0 && !signals.some((s) => String(s.name || "").toUpperCase() === "SIMPLE") ? "no SIMPLE signal"
      : "";
    const opt = el("td", {}, e.opt === "optOut" && why ? `optOut (${why})` : e.opt || "");
    if (e.opt === "optOut") opt.classList.add(why ? "muted" : "bad");
    const pending = e.status === "far" || e.status === "near";
    const notes = pending ? [e.status] : [];
    // a test event never moves the points (2.0b): "overridden" read as a shed another event had taken over
    if (e.test_event) notes.push("test event");
    // overlapping events: the one of highest priority sets ADR-Event-Level; with none setting it (this one between
    // SIMPLE intervals, a price signal running on) nothing is overridden
    else if (e.status === "active" && e.sets_level === false && e.opt !== "optOut" && (gw.schedule || {}).level_event_id) {
      notes.push("overridden");
    }
    // cancelled while it runs, with a startafter: its level holds until a random time within it (2.0b rule 65)
    else if (e.status === "cancelled" && e.drives_points === true) notes.push("winding down");
    const phase = `${pending ? "pending" : e.status || ""}${notes.length ? ` (${notes.join(", ")})` : ""}`;
    const id = e.priority ? `${e.event_id || ""} (priority ${e.priority})` : (e.event_id || "");
    const end = e.status === "cancelled" && e.cancelled_at ? `cancelled ${fmtWhen(toMs(e.cancelled_at), true)}`
      : e.open_ended && !e.end ? "until cancelled" : fmtWhen(toMs(e.end), true);
    const idCell = el("td", {}, id);
    // the utility's word on the event (vtnComment): why the building is asked to shed
    if (e.vtn_comment) idCell.append(el("div", {class: "muted minor"}, e.vtn_comment));
    tr.append(idCell, el("td", {}, phase), level,
              el("td", {}, fmtWhen(toMs(e.start), true)), el("td", {}, end),
              opt, el("td", {class: "muted minor"}, signalSummary(e.signals)));
    rows.push(tr);
  }
  putChildren($("events").tBodies[0], rows);
}
const SECTIONS = [["vtn", "VTN"], ["meter", "Meter"], ["forecaster", "Forecaster"],
                  ["schedule", "Demand response"], ["storage", "Storage"], ["device", "BACnet device"]];
// nested objects become "parent.child" rows so every value stays readable
function flatten(obj, prefix, out) {
  for (const [k, v] of Object.entries(obj)) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, key, out); else out.push([key, v]);
  }
  return out;
}
// device.cov_subscriptions.subscribers: a row for each, in words, where the array read as 160 characters of JSON
function covSubscribers(list) {
  if (!list.length) return [["cov_subscriptions.subscribers", "none"]];
  return list.map((s) => {
    const left = s.shortest_remaining_seconds;
    const objects = typeof s.objects === "number" ? `${s.objects} object${s.objects === 1 ? "" : "s"}` : "objects unknown";
    return ["cov_subscriptions.subscriber", `${s.address || "unknown address"}: ${objects}, shortest remaining ` +
            `lifetime ${left === null || left === undefined ? "indefinite" : fmtSpan(left)}`];
  });
}
function sectionRows(key, data) {
  const rows = flatten(data, "", []);
  if (key !== "device") return rows;
  return rows.flatMap(([k, v]) => k === "cov_subscriptions.subscribers" && Array.isArray(v) ? covSubscribers(v) : [[k, v]]);
}
export function renderSections() {
  const cards = [];
  for (const [key, title] of SECTIONS) {
    const data = gw[key];
    if (!data || typeof data !== "object") continue;
    const card = el("section", {class: "card", "data-section": key});
    card.append(el("h2", {}, title));
    // a new install: when the first model comes, in words (the header's pill only names it)
    if (key === "forecaster" && learningText()) card.append(el("p", {class: "note"}, learningText()));
    const dl = el("dl", {class: "kv"});
    for (const [k, v] of sectionRows(key, data)) {
      // flag problems, not measurements: "last_error" text or a "fault" that is on, not "validation_error_kw";
      // storage's per-part reasons ("errors.events") and any "ok"/"storage_ok" that is false
      const text = typeof v === "string" && v !== "";
      const bad = (/(^|[._])(last_)?error$/.test(k) && text) || (/(^|\.)errors\./.test(k) && text) ||
                  (/fault$/.test(k) && v === true) || (/(^|[._])ok$/.test(k) && v === false) ||
                  (k === "connected" && v === false && data.connecting !== true) ||   // the start's first registration
                  (k === "input_stale" && v === true) || (k === "communication.mode" && typeof v === "string" && v !== "enable");
      // epoch-second timestamps ("issued_at", "history_first", "trained_until", "shed_since") read as times
      const epoch = /(_at|_after|_first|_last|_time|_since|_until)$/.test(k) && typeof v === "number" && v > 1e9 &&
                    v < 1e10;
      const dd = el("dd", {class: bad ? "bad" : ""});
      // an identifier (device_id) as it is typed, not grouped as a quantity: "500,001"
      const id = /_id$/.test(k) && typeof v === "number";
      putValue(dd, epoch ? new Date(v * 1000).toISOString() : id ? String(v) : v);
      dl.append(el("dt", {}, humanize(k)), dd);
    }
    card.append(dl);
    cards.push(card);
  }
  putChildren($("sections"), cards);
}
