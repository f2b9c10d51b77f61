// What is wrong and what to do: one line per problem the status shows, in words; and what a screen
// reader hears of them (#announce).
import {$, el} from "./dom.js";
import {fmtDuration, fmtSpan, fmtStamp, fmtWhen, knownZone, stampText, toMs, zoneName, zoneSuffix} from "./format.js";
import {dashboard, gw} from "./state.js";
import {certWarning, communication, flaky, neverRegistered, noThreshold, ownAddressLost, recentRefusal} from "./status.js";

// an HTTP 5xx is the server failing (the VTN, or a proxy or load balancer in front of it), not a refusal of this VEN
// a stamp of the gateway's in the zone shown, as every other time on the page (the raw UTC string was the odd one out)
const shown = (v, otherwise) => { const ms = toMs(v); return ms === null ? (v || otherwise) : `${fmtStamp(ms)}${zoneSuffix(ms)}`; };
const serverError = (text) => /\bHTTP 5\d\d\b/.test(text) && !/refused/.test(text);

// The gateway warns of an unsynchronized clock from its second look, 5 minutes into a run, so as not to at boot
// while a time service sets the clock. A restart is not a fix: a warning this page showed stays while the new run's
// first look still finds the clock unsynchronized (it said "Cleared", and the warning came back 5 minutes later).
let clockWarned = false;
const FIRST_LOOKS_S = 600;

export function findProblems(health) {
  const out = [];
  const add = (key, level, what, detail, todo) => out.push({key, level, what, detail, todo});
  if (!health.ok) add("health", "bad", "Gateway unhealthy", health.text, "see the gateway's log");
  if (gw.clock_suspect === true) {
    add("clock", "bad", "Wall clock not set", `the gateway's clock reads ${shown(gw.now, "a date before this version")}; meter readings are not reported to the VTN`,
        "set the host's time (NTP)");
  }
  if (gw.clock_behind_last_read && gw.clock_suspect !== true) {
    add("clock", "bad", "Wall clock behind the last run",
        `the gateway's clock reads ${shown(gw.now, "a time")}, before the meter's last read of the run before (${shown(gw.clock_behind_last_read)}), as after a power cut on a box without a battery clock; meter readings are not reported to the VTN until it is past that`,
        "let NTP set the host's time; this clears by itself once the clock is past that read");
  }
  // as the log says it: after two looks, so not in the seconds a time daemon takes to set the clock at boot
  clockWarned = gw.clock_warning === true || (clockWarned && gw.clock_synchronized === false &&
                                              typeof gw.uptime_seconds === "number" && gw.uptime_seconds < FIRST_LOOKS_S);
  if (clockWarned && gw.clock_suspect !== true) {
    add("clock-sync", "warn", "Clock not synchronized",
        "the kernel says no time service (NTP) keeps the gateway's clock: it drifts by seconds a day, and the VTN's events start and telemetry is stamped by it",
        "enable chrony or systemd-timesyncd (on the host, for a container) and let it reach its NTP servers (UDP 123); this clears within 5 minutes of the clock being synchronized");
  }
  const cert = certWarning();
  if (cert) {
    const certEnds = toMs(cert.not_after);
    const date = `${fmtWhen(certEnds, true)} ${zoneName()}`, which = `openadr.cert ${cert.file || ""} (${cert.subject || "no subject"})`;
    const swap = "put the new certificate and its key in place of the files: the gateway reads them at its next registration, no restart needed, and this clears within 5 minutes";
    if (cert.warning === "expired") {
      add("vtn-cert", "bad", "VEN certificate expired",
          `${which} expired on ${date}: the VTN refuses the gateway, no demand-response events arrive and telemetry waits in the queue`,
          `renew openadr.cert with the utility now; ${swap}`);
    } else {
      const left = Math.max(0, (certEnds - (toMs(gw.now) ?? Date.now())) / 1000);
      add("vtn-cert", "warn", "VEN certificate expires soon",
          `${which} expires on ${date}, in ${fmtDuration(left)}; after that the VTN refuses the gateway and no demand-response events arrive`,
          `renew openadr.cert before ${date}: ask the utility for a new certificate, ${swap}, and give the VTN operator its fingerprint (the log names it)`);
    }
  }
  const comm = communication();
  if (comm) {
    const until = comm.until ? `until ${stampText(comm.until)}` : "until a DeviceCommunicationControl enable";
    add("communication", "bad", "BACnet communication disabled",
        `${comm.mode} by ${comm.by || "a BACnet client"} since ${stampText(comm.since)}, ${until}: the meter is not read and the BAS gets no COV notifications (points are still answered)`,
        "send DeviceCommunicationControl enable with bacnet.dcc_password from that tool, or wait for the time-out; a restart also ends it");
  }
  // the device answers nobody: the BAS reads no point, the meter is not read (its fault follows and would be the
  // only item, sending the technician to the meter)
  const own = ownAddressLost();
  if (own) {
    add("own-address", "bad", "BACnet address lost",
        `${own.problem}${own.since ? ` since ${stampText(own.since)}` : ""}: the BAS reaches no point of the gateway and the meter is not read`,
        own.kind === "link" ? "check the interface's cable and switch port; the device serves again by itself once the link is up" :
        own.kind === "mask" ? "make bacnet.address's /prefix the interface's mask (ip addr shows it) and restart the gateway" :
        "give the machine bacnet.address's IP again (a static address or a DHCP reservation) or correct bacnet.address; the device serves again by itself once the address is back");
  }
  const moved = (gw.storage || {}).moved_aside;
  if (moved && typeof moved === "object") {
    add("storage-moved", "warn", "Storage file begun anew",
        `at ${stampText(moved.at)} storage.path held the state of another VEN (${moved.changed || "another ven_name or VTN host"})` +
        `${moved.held ? `: ${moved.held}` : ""}; it was moved to ${moved.to || "a file beside it"}, and nothing of it is sent to the VTN, run or forecast from`,
        "nothing to do if the box moved to this site or was imaged from another; if not (the VEN renamed, the VTN on another host), docs/operations.md \"The storage file\" says how to put it back. This clears at the next restart");
  }
  const twins = (gw.device || {}).twins;
  if (Array.isArray(twins) && twins.length) {
    const who = twins.map((t) => `${t.address || "another address"} (heard ${stampText(t.last_heard)})`).join(", ");
    add("twin", "bad", "Another device has this device id",
        `${who} answers as device ${(gw.device || {}).device_id ?? ""} too: the BAS binds one or the other, and reads and writes may go to the wrong box`,
        "give each gateway its own bacnet.device_id (a configuration copied to a second box?) and restart the one changed; this clears at the next restart");
  }
  const bbmd = (gw.device || {}).foreign_device;
  if (bbmd && typeof bbmd === "object" && bbmd.fault === true) {
    add("bbmd", "bad", "BBMD registration failing",
        `BBMD ${bbmd.bbmd || "bacnet.bbmd_address"}: ${bbmd.why_not || "not registered"}; a BAS on another IP subnet cannot find or reach the gateway through it`,
        "check bacnet.bbmd_address, that the BBMD is up and reachable from this box (UDP), and that it takes foreign devices (a free entry in its table); the gateway asks again, up to every minute, and this clears once the BBMD takes it");
  }
  const refusal = recentRefusal();
  if (refusal) {
    const count = typeof refusal.count === "number" ? `${refusal.count} refused since the gateway started; ` : "";
    add("writes-refused", "warn", "BACnet writes refused",
        `${count}the last ${stampText(refusal.at)} from ${refusal.by || "a BACnet client"}: ${refusal.what || "a write"}` +
        (refusal.why ? ` (${refusal.why})` : ""),
        !refusal.why || refusal.why === "not in bacnet.write_from"
          ? "if that is the BAS, add its address to bacnet.write_from and restart the gateway (its writes are lost until then); otherwise find the device that writes"
          : "correct the BAS program that writes it (the README's point table gives each point's access and units); the write changed nothing");
  }
  const vtn = gw.vtn || {};
  const queued = (vtn.telemetry || {}).pending;
  // connecting: the start's first registration under way, nothing failed yet (the pill says so)
  if (vtn.connected === false && vtn.connecting !== true) {
    const err = vtn.last_error || "";
    const never = neverRegistered(vtn);
    const failing = serverError(err);
    const refused = !failing && /\b(HTTP 4\d\d|refused|[45]\d\d )/.test(err) && !/unreachable|timed? ?out/i.test(err);
    const wait = typeof queued === "number" && queued > 0 ? `; ${queued} telemetry interval(s) wait in the queue` : "; telemetry waits in the queue";
    add("vtn", "bad", refused ? (never ? "VTN refuses registration" : "VTN refuses the gateway") :
                      failing ? "VTN server failing" : (never ? "VTN not registered" : "VTN unreachable"),
        err || "no answer from the VTN",
        (refused ? "check openadr.vtn_url (the VTN's OpenADR 2.0b endpoint), openadr.ven_name and the enrolment with the utility"
         : failing ? "the VTN (or a proxy or load balancer in front of it) answers with a server error: tell the utility; the gateway keeps trying"
         : "check that the VTN is up and reachable from the gateway (network, proxy, TLS)") + wait);
  }
  // polls answered, telemetry not taken: the VTN pill stays "connected" and only the queue grows, so it is said
  // here from the log's warning to its end (unreachable, the item above says the queue waits already)
  const tf = vtn.telemetry_fault;
  if (vtn.connected !== false && tf && typeof tf === "object") {
    const waiting = typeof queued === "number" ? `; ${queued} reading(s) wait in the queue` : "";
    const refused = tf.kind === "refused";
    add("telemetry", "bad", refused ? "VTN refuses the telemetry" : "Telemetry not delivered",
        `since ${stampText(tf.since)} the VTN answers polls but ${refused ? `refused ${tf.count} report(s)` :
          `answered none of ${tf.count} telemetry update(s)`}: ${tf.why || "no reason given"}${waiting}`,
        (refused ? "tell the utility what the VTN says; the gateway offers the reports again" :
                   "tell the utility (its report service, or a proxy in front of it, fails the updates); the gateway retries") +
        " and sends the queued readings once the VTN takes them (the queue keeps openadr.queue_max_days, then drops the oldest)");
  }
  // registered, the report offered and taken, and never requested: nothing goes out and the queue only grows, while
  // the VTN reads "connected"; from the log's warning until the VTN requests it
  const tu = vtn.telemetry_unrequested;
  if (vtn.connected !== false && tu && typeof tu === "object") {
    const waiting = typeof queued === "number" ? `; ${queued} reading(s) wait in the queue` : "";
    const asked = Array.isArray(tu.asked) && tu.asked.length ? ` (it asked only for ${tu.asked.join("; ")})` : "";
    add("telemetry-unrequested", "warn", "VTN has not requested telemetry",
        `no request since ${stampText(tu.since)}: the VTN took the offer of the meter's TELEMETRY_USAGE report ` +
        `(report ${tu.report_specifier_id || "?"}, rID ${tu.r_id || "?"}) but has not requested it${asked}, so no ` +
        `telemetry goes to the utility${waiting}`,
        "ask the utility to have its VTN request the report, or set openadr.telemetry = false if its program takes no telemetry; the queue keeps " +
        "openadr.queue_max_days, then drops the oldest; this clears once the VTN requests it");
  }
  if (flaky(vtn)) {
    // connected now, so the item above is gone most of the time: the fault the log holds open is said here
    const f = vtn.fault;
    const losses = f.context_losses ? `, ${f.context_losses} time(s) it asked to register again` : "";
    add("vtn-intermittent", "warn", "VTN intermittent",
        `since ${stampText(f.since)}: ${f.polls_failed} of ${f.polls} polls failed${losses}; not connected ${fmtSpan(f.not_connected_seconds)} in all. Events and telemetry go on while it answers`,
        `check the proxy or load balancer in front of the VTN (HTTP 502/503, reset connections, time-outs) and that every VTN behind it knows this VEN; this clears by itself once the VTN answers steadily for ${fmtSpan(f.settle_seconds)}`);
  }
  // polls answered, the site's answers not taken: the utility counts the site as it last heard it
  const ot = vtn.opt_answers_not_taken;
  if (vtn.connected !== false && ot && typeof ot === "object") {
    add("opt-not-taken", "bad", "VTN has not taken the site's answers",
        `since ${stampText(ot.since)} the VTN answers polls but has not taken the answer(s) to ${ot.count} event(s): ${ot.why || "no answer"}; it counts the site as it last heard it`,
        "tell the utility (its VTN, or a proxy in front of it, fails oadrCreatedEvent or oadrCreateOpt); the gateway sends them again at each poll");
  }
  if (vtn.opt_answer_error) {
    add("opt", "bad", "VTN refused an opt answer", vtn.opt_answer_error,
        "the VTN does not know whether the site takes part: tell the utility; the answer is not sent again");
  }
  if (vtn.report_offer_error) {
    const failed = serverError(vtn.report_offer_error);
    add("report", "bad", failed ? "VTN failed the telemetry report offer" : "VTN refused the telemetry report offer",
        vtn.report_offer_error,
        failed ? "the VTN (or a proxy in front of it) answers with a server error: tell the utility; the gateway offers again"
               : "check the enrolment with the utility");
  }
  const tq = vtn.telemetry || {};
  if (tq.dropping === true) {
    add("telemetry-dropping", "bad", "Telemetry readings dropped",
        `the queue holds openadr.queue_max_days of readings the VTN has not taken, and drops the oldest (${tq.dropped ?? "some"} so far): those never reach the utility`,
        "get the VTN to take telemetry (see the VTN items); this clears once it has taken half the backlog");
  }
  const meter = gw.meter || {};
  if (meter.fault === true) {
    const err = meter.last_error || "";
    const todo = comm ? "caused by the communication disable above" : own ? "caused by the BACnet address lost above" :
      /not a power unit|units/.test(err) ? "point meter.object at the meter's power (kW or W) object, or correct the meter's units" :
      /no response|timed? ?out|router|unreachable|no route/i.test(err) ? "check the meter and its router are powered and wired, and meter.address / meter.router" :
      "see the meter's last error";
    add("meter", "bad", "Meter fault", err || "the last meter read failed", todo);
  }
  // reads lost now and then, answering between them: meter.fault is mostly off, and the log said the fault once
  const fw = meter.fault_window;
  if (meter.fault !== true && fw && typeof fw === "object" && fw.intermittent === true) {
    add("meter-intermittent", "warn", "Meter answering intermittently",
        `${fw.failed_reads} of ${fw.reads} reads failed since ${stampText(fw.since)}, the last ${stampText(fw.last_failed_at)}: ` +
        `${fw.last_failure || "the read failed"}; the readings in between are used`,
        "if it lasts, check the meter's wiring and its router (a busy MS/TP trunk or router loses requests), or raise meter.timeout_seconds if reads time out");
  }
  const storage = gw.storage || {};
  if (storage.ok === false) {
    // the parts' errors once each: the forecaster's is the others' cause without the path ("...: attempt to write a
    // readonly database" and "attempt to write a readonly database"), and read twice in one sentence
    const errors = [...new Set(Object.values(storage.errors || {}))];
    const why = errors.filter((e) => !errors.some((o) => o !== e && o.includes(e))).join("; ");
    const where = storage.path && !why.includes(storage.path) ? `${storage.path}: ` : "";
    // what to do follows the reason the status gives: a full disk was told to make the directory writable
    const todo = /No space left|disk is full|no inodes/i.test(why) ?
      "free space on its file system (df -h and df -i on its directory)" :
      /File too large/.test(why) ? "raise the process's file-size limit (ulimit -f, systemd's LimitFSIZE=)" :
      "make the file's directory writable (permissions, read-only mount, full disk)";
    add("storage", "bad", "storage.path not writable", `${where}${why || "cannot be written"}`,
        `events, queued telemetry and forecast history are kept in memory only and a restart now loses them: ${todo}; the gateway tries again by itself`);
  }
  const fc = gw.forecaster || {};
  if (fc.input_stale === true) {
    const src = fc.source || "auto";
    const bas = fc.last_input_at ? `the BAS last wrote input-power-meter ${stampText(fc.last_input_at)}` :
      "the BAS has not written input-power-meter since the gateway started";
    const mtr = fc.last_meter_at ? `the last meter reading was ${stampText(fc.last_meter_at)}` : "no meter reading since the gateway started";
    const detail = src === "bacnet_input" ? bas : src === "meter" ? mtr : `${bas}; ${mtr}`;
    const todo = src === "bacnet_input" ? "check the BAS program that writes input-power-meter (or set forecaster.source = \"auto\" to fall back to the meter)" :
      src === "meter" ? "get the meter answering again (see Meter)" : "get the BAS writing input-power-meter or the meter answering again";
    add("forecaster-input", "bad", "Forecaster has no power input",
        `${detail}: forecasts, trend and load flags read fault (the BAS must treat them as unknown)`, todo);
  } else if (noThreshold()) {
    const minutes = typeof fc.history_minutes === "number" ? ` (${fmtDuration(fc.history_minutes * 60)} so far)` : "";
    add("threshold", "warn", "Load flags have no threshold yet",
        `high-load and low-load read fault, meaning "cannot tell": percentile thresholds need a day of history${minutes} that is not flat`,
        "wait for a day of history, or set forecaster.high_load_kw and low_load_kw for fixed thresholds");
  }
  if (typeof fc.input_still_since === "number") {
    add("input-still", "warn", "Power input not moving",
        `the ${fc.active_source === "meter" ? "meter has read" : "BAS has written input-power-meter with"} one exact value since ${stampText(fc.input_still_since)}, over twice as long as the load has held still in the days the thresholds read: the forecaster learns it as the building's load`,
        "check the BAS point or the sensor behind it (a frozen trend, a dead CT); this clears at the next value that differs");
  }
  if (fc.shed_kw > 0 && typeof fc.shed_since === "number") {
    // the alert's 12 h (examples/prometheus-alerts.yml): a BAS's own sheds last hours, a command never relinquished
    // raises every sample the forecaster learns from
    const held = (toMs(gw.now) ?? Date.now()) - fc.shed_since * 1000;
    if (held > 12 * 3600 * 1000) {
      add("shed-held", "warn", "BAS shed held for over 12 hours",
          `bas-shed-power has been ${fc.shed_kw} kW since ${stampText(fc.shed_since)}: the forecaster adds it to every power sample meanwhile`,
          "check that the BAS program relinquishes bas-shed-power (or writes 0) when its shed ends");
    }
  }
  if (fc.fit_ok === false) {
    // past while the retry runs
    const retry = typeof fc.fit_retry_at === "number" ? fc.fit_retry_at * 1000 : null, now = toMs(gw.now) ?? Date.now();
    const next = retry === null ? "" : retry <= now ? "; trying again now" :
      `; next try about ${fmtWhen(retry, retry - now > 20 * 3600 * 1000)} ${zoneName()}`;
    add("fit", "warn", "Forecaster fit failing", `the learned model is not refitted; the last model or persistence serves${next}`,
        "see the gateway's log");
  }
  // a job the gateway repeats failing on an exception nobody expected (the log has its traceback, once)
  // or short of memory, threads or files: a limit of the box, not a bug
  const bugs = (Array.isArray(gw.bugs) ? gw.bugs : []).map(String);
  const traceback = "the log has its traceback (an ERROR \"... failed (a bug in the gateway)\"): report it with that traceback; a restart may clear it";
  // the forecast cycle's, by its error in the status (forecaster.cycle_error, as the tiles read it), not by the
  // wording of the job's name: its item says what the BAS reads meanwhile
  const cycleError = fc.cycle_error ? String(fc.cycle_error) : null;
  const ending = cycleError === null ? [] : bugs.flatMap((b, i) => (b.endsWith(`(${cycleError})`) ? [i] : []));
  // a box short of files, memory or threads fails several jobs with one error text: the note went on the first
  // (the meter read's); among several, the cycle's line is the one its job's name begins
  const cycleAt = ending.length === 1 ? ending[0] : (ending.find((i) => bugs[i].startsWith("forecast cycle ")) ?? -1);
  const held = ": the forecast, trend and load-flag points read fault to the BAS until it works again";
  bugs.forEach((b, i) => /failing, short of /.test(b)
    ? add(`bug-${i}`, "bad", "Gateway short of a resource", i === cycleAt ? b + held : b,
          "give the gateway more of it: its unit's LimitAS, LimitNOFILE, LimitNPROC or TasksMax, or a box with more RAM (README \"Running against a real building\")")
    : add(`bug-${i}`, "bad", "Gateway bug", i === cycleAt ? b + held : b, traceback));
  // its bug line not found among them (worded otherwise, or not listed): said all the same
  if (cycleError !== null && cycleAt < 0) {
    add("cycle", "bad", "Gateway bug", `forecast cycle failing (${cycleError})${held}`, traceback);
  }
  // /healthz names what the gateway cannot do: one this page has no item for must not read "healthy" beside it
  const degraded = health.ok ? /\(degraded: (.*)\)$/.exec(String(health.text || "").trim()) : null;
  if (degraded && !out.some((p) => p.level === "bad")) {
    add("degraded", "bad", "Gateway degraded", degraded[1], "see the gateway's log and /api/status");
  }
  // an old browser's zone data lacks a newer zone: its times would read as the building's when they are not
  if (gw.timezone && !knownZone(gw.timezone)) {
    add("zone", "warn", "Building's zone unknown to this browser",
        `the building's zone ${gw.timezone} (forecaster.timezone) is unknown to this browser: times are in ${zoneName()}`);
  }
  // settings, not faults: each stays until the config is changed, so it is said here, not only in the start-up log
  (Array.isArray(gw.config_warnings) ? gw.config_warnings : []).forEach((w, i) =>
    add(`config-${i}`, "warn", "Configuration warning", String(w),
        "change the setting in the gateway's config file (edge-gateway check-config lists these) and restart the gateway"));
  // the faults first: the pill counts them, and on a phone the warnings put them under the fold
  return out.filter((p) => p.level === "bad").concat(out.filter((p) => p.level !== "bad"));
}
export function renderProblems(found) {
  const host = $("problems");
  const list = host.querySelector("ul");
  list.replaceChildren();
  for (const p of found) {
    const li = el("li", {class: `sev-${p.level}`, "data-problem": p.key, "data-level": p.level});
    li.append(el("span", {class: "what"}, p.what), document.createTextNode(": "), el("span", {class: "detail"}, p.detail));
    if (p.todo) li.append(document.createTextNode(" — "), el("span", {class: "todo"}, p.todo));
    list.append(li);
  }
  host.hidden = !found.length;
  host.classList.toggle("only-warn", found.length > 0 && found.every((p) => p.level !== "bad"));
  // the pill counts the faults only: beside it, three items under a heading without counts read as three problems
  const bad = found.filter((p) => p.level === "bad").length, warn = found.length - bad;
  const counts = [bad && `${bad} problem${bad > 1 ? "s" : ""}`, warn && `${warn} warning${warn > 1 ? "s" : ""}`];
  host.querySelector("h2").textContent = bad && warn ? `Needs attention: ${counts.join(", ")}` : "Needs attention";
  dashboard.problems = found.map((p) => p.key);
}
// What a screen reader says (#announce): each change once. The problem list itself is not a live
// region: it is rebuilt on every refresh and its ages tick, so it would be read out every few seconds.
let heard = null;  // problem key -> its words, as last announced
export function announce(...parts) {
  const text = parts.filter(Boolean).join(" ");
  if (text) $("announce").textContent = text;
}
export function problemChanges(found) {
  const now = new Map(found.map((p) => [p.key, p.what]));
  const before = heard || new Map();
  heard = now;
  const added = [...now].filter(([k]) => !before.has(k)).map(([, what]) => what);
  const gone = [...before].filter(([k]) => !now.has(k)).map(([, what]) => what);
  return [added.length ? `Needs attention: ${added.join("; ")}.` : "", gone.length ? `Cleared: ${gone.join("; ")}.` : ""]
    .filter(Boolean).join(" ");
}
