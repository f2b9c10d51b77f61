"""TELEMETRY_STATUS to the VTN, mixed into VtnClient: the site's status (whether the gateway controls its load,
whether the site opted out, the ADR-Event-Level it applies) for the VTN's status requests, sampled at each
granularity boundary on the UTC grid and sent as oadrUpdateReport (ven/oadr_xml.py writes its
oadrPayloadResourceStatus). Status is "now": nothing is queued in SQLite. What a request has not yet sent waits in
memory, at most MAX_HELD samples, and a new registration ends every request (the VTN requests anew)."""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from openleadr import enums as oenums, objects, utils as outils

from .report_intervals import report_window, bucket_start, effective_granularity, next_boundary, report_period
from .tasks import woken
from .vtn_transport import wire_duration, iso_utc, refusal_of, response_code_of, utcnow
from .vtn_updates import UPDATE_FAILURES

log = logging.getLogger("ven.vtn")

STATUS_REPORT = "TELEMETRY_STATUS"
STATUS_R_ID = "status"
LEVEL_MAX = 3.0     # SIMPLE's levels, 0 (normal) to 3: ADR-Event-Level's range
# Samples a request keeps while the VTN does not take them (an hour at 10 s): status is worth less the older it
# is, and a long outage must not grow the process. The oldest go first.
MAX_HELD = 360
MAX_STATUS = 4      # standing status requests served at once; one more is refused (452)
MAX_SAMPLING = timedelta(hours=1)   # the coarsest granularity offered, as the usage report's
BATCH = 100         # samples per oadrUpdateReport


@dataclass(frozen=True)
class ResourceStatus:
    """One sample, as oadrPayloadResourceStatus carries it (oadrLoadControlState's oadrLevelOffset: the level)."""
    online: bool            # the site's load is under the gateway's control
    manual_override: bool   # the site opted out (ADR-Opt-Out)
    level: float            # the ADR-Event-Level the site applies
    level_min: float = 0.0
    level_max: float = LEVEL_MAX
    level_normal: float = 0.0


@dataclass
class StatusRequest:
    """One standing TELEMETRY_STATUS request being served."""
    rrid: str
    granularity: timedelta
    back: timedelta
    next_sample: datetime                   # the next boundary to sample at
    next_send: datetime                     # when its next update is due (every reportBackDuration)
    held: deque = field(default_factory=lambda: deque(maxlen=MAX_HELD))   # (boundary, ResourceStatus) not yet sent
    retry: bool = False                     # its last update got no answer: tried again after the backoff
    # cancelled with reportToFollow, or its reportInterval over: what it holds goes, then it ends
    final: bool = False
    # cancelled with reportToFollow when nothing was held and its boundary had gone already: the next sample is the
    # last update (the oadrCanceledReport listed it pending, and the VTN waits for it)
    last_sample_follows: bool = False
    until: datetime | None = None           # its reportInterval's end: the last boundary sampled is before it
    ended: str = "cancelled by the VTN"     # why it is final, for the line that ends it
    dropped: int = 0                        # samples dropped unsent in this spell (said once, at the first)
    sent_until: datetime | None = None      # the newest sample the VTN took


class VtnStatus:
    """VtnClient's TELEMETRY_STATUS: its offer, the requests it serves and their delivery; the state is VtnClient's."""

    def _add_status_report(self, client) -> None:
        """The report description the 2.0b profile has TELEMETRY_STATUS offered with (its certification tool fails
        an oadrRegisterReport without one): reportType x-resourceStatus, readingType x-notApplicable, no itemBase,
        the usage report's resource."""
        c = self._cfg
        sampling = timedelta(seconds=c.telemetry_seconds)
        rate = objects.SamplingRate(min_period=sampling, max_period=max(sampling, MAX_SAMPLING), on_change=False)
        client.add_report(callback=lambda: [], resource_id=c.report_resource_id, report_name=STATUS_REPORT,
                          report_type=oenums.REPORT_TYPE.X_RESOURCE_STATUS,
                          reading_type=oenums.READING_TYPE.X_NOT_APPLICABLE, sampling_rate=rate,
                          report_specifier_id=self._status_specifier_id, r_id=STATUS_R_ID,
                          report_duration=timedelta(days=c.queue_max_days))

    def _status_now(self) -> ResourceStatus:
        return ResourceStatus(online=bool(self._online()), manual_override=self._schedule.opted_out,
                              level=float(self._schedule.state().level))

    # -- requests ----------------------------------------------------------------------------

    def _take_status_request(self, rrid: str, spec: dict, r_ids: list) -> str | None:
        """An oadrCreateReport's request for the status report: served, or why not (its 452's text)."""
        sid = self._status_specifier_id
        if not r_ids or any(r != STATUS_R_ID for r in r_ids):
            unknown = [r for r in r_ids if r != STATUS_R_ID]
            return (f"{rrid}: rID {', '.join(map(repr, unknown)) or '(none)'} not in report {sid!r} "
                    f"(offered: {STATUS_R_ID!r})")
        asked = spec.get("granularity")
        back = spec.get("report_back_duration") or timedelta(0)
        if asked == timedelta(0) and back == timedelta(0):
            self._status_one_shots.append(rrid)
            log.info("VTN asked for one %s report (request %s): the site's status now is sent once", STATUS_REPORT,
                     rrid)
            self._status_wake.set()
            return None
        if rrid not in self._status_requests and len(self._status_requests) >= MAX_STATUS:
            return f"{rrid}: {MAX_STATUS} standing {STATUS_REPORT} requests are served already"
        sampling = timedelta(seconds=self._cfg.telemetry_seconds)
        granularity = effective_granularity(asked or None, sampling)
        now = utcnow()
        # its reportInterval: sampled from its start (the next boundary, if that is past) to its end (helper verify40)
        first, until = report_window(spec, granularity)
        if until is not None and until <= now:
            return f"{rrid}: its reportInterval ended at {iso_utc(until)}"
        start = max(next_boundary(now, granularity), first or now)
        if back > MAX_HELD * granularity:
            # more samples than a request keeps would be dropped before every update, the VTN taking them all (helper
            # rev40)
            log.warning("VTN request %s asks for %s updates every %s, more samples than the %d a request keeps: "
                        "updates are sent every %s instead", rrid, STATUS_REPORT, wire_duration(back), MAX_HELD,
                        wire_duration(MAX_HELD * granularity))
            back = MAX_HELD * granularity
        period = report_period(granularity, back)
        self._status_requests.pop(rrid, None)   # the same reportRequestID again: its new terms, from now
        self._status_requests[rrid] = StatusRequest(
            rrid, granularity, back, next_sample=start,
            # the first update at the first period boundary from the first sample on: the sample itself, when each
            # goes as it is taken (it waited a granularity, and went with the next, helper rev40)
            next_send=start if bucket_start(start, period) == start else next_boundary(start, period), until=until)
        # each of an outage's registrations gets a request anew (a fresh reportRequestID), as for TELEMETRY_USAGE: only
        # another one is news, not the one the VTN had before it
        terms = (granularity, back, first, until)
        repeated = self._outage is not None and terms == self._status_said
        self._status_said = terms
        log.log(logging.DEBUG if repeated else logging.INFO,
                "VTN requested %s (request %s): the site's status at each %s on the UTC clock, %s%s%s",
                STATUS_REPORT, rrid, wire_duration(granularity),
                f"sent every {wire_duration(back)}" if back > granularity else "each sent as it is taken",
                f", from {iso_utc(start)}" if first is not None and start > next_boundary(now, granularity) else "",
                f" until {iso_utc(until)}" if until is not None else "")
        self._status_wake.set()
        return None

    def _cancel_status(self, rrid: str, follow: bool) -> bool:
        """oadrCancelReport naming `rrid`: True if it is a status request served (it ends)."""
        if rrid in self._status_one_shots:
            self._status_one_shots.remove(rrid)
            log.info("the VTN cancelled the one-shot %s report %s before it was sent", STATUS_REPORT, rrid)
            return True
        req = self._status_requests.get(rrid)
        if req is None:
            return False
        if follow:
            at = bucket_start(utcnow(), req.granularity)
            if req.held or req.sent_until is None or req.sent_until < at:
                if not req.held:
                    # the report the VTN waits for: the status now, dated at the boundary it is in
                    req.held.append((at, self._status_now()))
                req.final = True
            else:
                # that boundary went already (sent twice, helper verify40): the next one's sample is the last update;
                # the request ended with none, and the VTN waited for the report it was told would follow
                req.last_sample_follows = True
            self._status_wake.set()
            log.info("the VTN cancelled the %s report (request %s): one last update, then it ends", STATUS_REPORT,
                     rrid)
        else:
            del self._status_requests[rrid]
            log.info("the VTN cancelled the %s report (request %s)", STATUS_REPORT, rrid)
        return True

    def _end_status_requests(self) -> None:
        """A new registration: the VTN requests anew, and what was held is no longer "now"."""
        if self._status_requests:
            held = sum(len(r.held) for r in self._status_requests.values())
            # at every registration, the first attempt of a VTN outage's too, whose WARNING says it all: a status
            # sample is the site's state at its time, for the VTN only then, and one held for a VTN away is no loss
            log.log(logging.INFO if held and self._outage is None else logging.DEBUG,
                    "%s request(s) %s end with the new registration (the VTN requests status anew)%s", STATUS_REPORT,
                    ", ".join(self._status_requests), f"; {held} sample(s) not sent are dropped" if held else "")
        self._status_requests.clear()
        self._status_one_shots.clear()
        if self._status_failing is not None and self._status_failing[2]:    # the end of its WARNING's fault
            log.info("%s updates without an answer are no longer tried: their requests ended", STATUS_REPORT)
        self._status_failing = None

    def _status_served(self) -> list[str]:
        return [*self._status_requests, *self._status_one_shots]

    def _status_requests_status(self) -> list[dict]:
        return [{"report_request_id": r.rrid, "granularity_seconds": r.granularity.total_seconds(),
                 "report_back_seconds": r.back.total_seconds(), "held": len(r.held),
                 "sent_until": r.sent_until.isoformat() if r.sent_until else None}
                for r in self._status_requests.values()]

    # -- delivery ----------------------------------------------------------------------------

    async def _deliver_status(self) -> None:
        await self._supervised(self._status_loop, self._status_bug)

    async def _status_loop(self) -> None:
        backoff = self._cfg.retry_min_seconds
        while True:
            now = utcnow()
            for req in self._status_requests.values():
                self._sample(req, now)
            failed = False
            if self._live and self._client is not None:
                failed = not await self._send_status_one_shots(now)
                for req in list(self._status_requests.values()):
                    if failed or not self._live:
                        break
                    failed = not await self._serve_status(req, now)
            backoff = min(backoff * 2, self._cfg.retry_max_seconds) if failed else self._cfg.retry_min_seconds
            self._status_bug.worked()
            # the next sample of a request still sampling; a final one waits for its retry (it looped at once, 2,462
            # updates in 2 s against a VTN answering 500, helper rev40)
            due = [r.next_sample for r in self._status_requests.values() if not r.final]
            timeout = backoff if failed else None
            if due:
                wait = max(0.0, (min(due) - utcnow()).total_seconds())
                timeout = wait if timeout is None else min(timeout, wait)
            await woken(self._status_wake, timeout)

    async def _serve_status(self, req: StatusRequest, now: datetime) -> bool:
        """What is due of one request: False when an update got no answer (tried again after a backoff)."""
        if self._status_requests.get(req.rrid) is not req:
            return True     # ended while another update was sent
        if req.final and not req.held:
            self._end_status(req, f"{STATUS_REPORT} request {req.rrid} ended: {req.ended}")
            return True
        if not req.held or not (req.final or req.retry or now >= req.next_send):
            return True
        outcome = await self._send_held(req)
        req.retry = outcome is None
        if outcome is None:
            return False
        req.next_send = next_boundary(now, report_period(req.granularity, req.back))
        if req.final and outcome:
            self._end_status(req, f"{STATUS_REPORT} request {req.rrid} ended, its last update sent: {req.ended}")
        return True

    def _end_status(self, req: StatusRequest, line: str) -> None:
        if self._status_requests.get(req.rrid) is req:  # by identity: a new request may reuse the id meanwhile
            del self._status_requests[req.rrid]
            log.info("%s", line)

    def _status_unanswered(self, why: str) -> None:
        """A status update got no answer. A VTN that is down fails the polls too, and the outage says so; one that
        answers polls meanwhile leaves the samples piling up unsaid until they are dropped, days later at PT1H: one
        WARNING once that is clear, as for the usage updates (helper rev40), one INFO when one is answered again."""
        now = utcnow()
        since, failures, said, _ = self._status_failing or (now, 0, False, why)
        failures += 1
        if (not said and failures >= UPDATE_FAILURES and self._outage is None and self.last_poll is not None
                and self.last_poll > since):
            log.warning("the VTN answers polls but not %s updates (%s): the samples are kept, %d a request at most, "
                        "and the updates retried (backoff up to %g s)", STATUS_REPORT, why, MAX_HELD,
                        self._cfg.retry_max_seconds)
            said = True
        self._status_failing = (since, failures, said, why)

    def _status_answered(self) -> None:
        """A status update got an answer: the end of _status_unanswered's fault, if it was said."""
        if self._status_failing is not None:
            since, failures, said, _ = self._status_failing
            if said:
                log.info("the VTN answers %s updates again after %d without an answer since %s", STATUS_REPORT,
                         failures, iso_utc(since))
            self._status_failing = None

    def _status_fault(self) -> dict | None:
        """The fault _status_unanswered's WARNING began, while open (for the stop line)."""
        if self._status_failing is None or not self._status_failing[2]:
            return None
        since, failures, _, why = self._status_failing
        return {"since": iso_utc(since), "count": failures, "why": why,
                "held": sum(len(r.held) for r in self._status_requests.values())}

    def _sample(self, req: StatusRequest, now: datetime) -> None:
        """The status at the latest boundary reached: one a late wake (a busy loop, a suspended machine) skipped is
        not sampled, as the status then is not known now."""
        if req.final or now < req.next_sample:
            return
        at = bucket_start(now, req.granularity)
        if req.until is not None and at >= req.until:
            req.final, req.ended = True, f"its reportInterval ended at {iso_utc(req.until)}"
            return
        if len(req.held) == req.held.maxlen:
            if not req.dropped:
                log.warning("%s samples of request %s wait for the VTN (%d, the most kept): the oldest are dropped "
                            "until it takes them", STATUS_REPORT, req.rrid, MAX_HELD)
            req.dropped += 1
        req.held.append((at, self._status_now()))
        req.next_sample = at + req.granularity
        req.final = req.final or req.last_sample_follows

    async def _send_status_one_shots(self, now: datetime) -> bool:
        step = timedelta(seconds=self._cfg.telemetry_seconds)
        for rrid in list(self._status_one_shots):
            at = bucket_start(now, step)
            answered = await self._send_status(rrid, [(at, self._status_now())], step)
            if answered is None:
                return False
            if rrid in self._status_one_shots:
                self._status_one_shots.remove(rrid)
                if answered:
                    log.info("one-shot %s report %s sent; the request is finished", STATUS_REPORT, rrid)
        return True

    async def _send_held(self, req: StatusRequest) -> bool | None:
        """What the request holds, in batches: True taken, False refused (the request ended), None no answer."""
        while req.held and self._status_requests.get(req.rrid) is req:
            batch = list(req.held)[:BATCH]
            answered = await self._send_status(req, batch, req.granularity)
            if answered is None:
                return None
            for _ in batch:
                req.held.popleft()
            if not answered:
                return False
            req.sent_until = batch[-1][0]
            if req.dropped:     # the end of the WARNING's fault
                log.info("the VTN takes the %s updates of request %s again: %d sample(s) were dropped meanwhile",
                         STATUS_REPORT, req.rrid, req.dropped)
                req.dropped = 0
        return True

    async def _send_status(self, req: StatusRequest | str, samples: list, granularity: timedelta) -> bool | None:
        """One oadrUpdateReport of `samples` for a standing request (or a one-shot's id): True taken, False refused
        (the request ends), None no answer (the samples are kept)."""
        rrid = req if isinstance(req, str) else req.rrid
        client = self._client
        intervals = []
        for at, status in samples:
            payload = objects.ReportPayload(r_id=STATUS_R_ID, value=status.level)
            payload.status = status     # ven/oadr_xml.py writes it as oadrPayloadResourceStatus
            intervals.append(objects.ReportInterval(dtstart=at, duration=granularity, report_payload=payload))
        report = objects.Report(report_request_id=rrid, report_specifier_id=self._status_specifier_id,
                                report_name=STATUS_REPORT, intervals=intervals, dtstart=samples[0][0],
                                duration=samples[-1][0] + granularity - samples[0][0])
        report.report_id = outils.generate_id()     # as the usage report's: each instance its own
        msg = client._create_message("oadrUpdateReport", ven_id=self.ven_id, request_id=outils.generate_id(),
                                     reports=[report])
        rtype, payload = await client._perform_request("EiReport", msg)
        if failure := client.failure(rtype):
            # a VTN failing it ("500 server busy" in its eiResponse) is no refusal: taken for one, the request ended,
            # and the reports offered again made a new one each time, ended by the next failure with one more WARNING
            self._status_unanswered(failure)
            return None
        self._status_answered()
        if rtype == "oadrRequestReregistration":
            self._forgotten(f"the {STATUS_REPORT} report")
            return None
        if rtype == "oadrUpdatedReport" and response_code_of(payload) == 200:
            if payload.get("cancel_report"):    # 2.0b lets the VTN cancel reports here too
                await self._cancel_report(payload["cancel_report"])
            return True
        why = refusal_of(payload) or f"{rtype} code {response_code_of(payload)}"
        if isinstance(req, str):
            if rrid in self._status_one_shots:
                self._status_one_shots.remove(rrid)
        elif self._status_requests.get(rrid) is req:     # by identity, as in _end_status
            del self._status_requests[rrid]
        # the VTN does not know the request (a restart that lost its requests): serving it on would be refused at
        # every sample. The usage report's refusals offer the reports again, and a VTN can request status anew
        log.warning("the VTN refused the %s update of request %s (%s): the request is no longer served", STATUS_REPORT,
                    rrid, why)
        return False
