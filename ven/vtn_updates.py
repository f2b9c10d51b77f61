"""One telemetry update to the VTN (oadrUpdateReport), mixed into VtnClient: sent, and what its answer means: taken,
refused (the reports offered again), or not answered while polls are (one WARNING, its end, the status's fault), and
the batch that fits the VTN's time-out. The delivery loop that sends them is ven/vtn_delivery.py."""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import datetime

from openleadr import objects, utils as outils

from .report_intervals import Interval
from .vtn_reports import BATCH, Standing
from .vtn_transport import fault_kind, iso_utc, response_code_of, utcnow

log = logging.getLogger("ven.vtn")

# updates in a row without an answer, while polls are answered, before the operator hears of it
UPDATE_FAILURES = 3


class VtnUpdates:
    """VtnClient's telemetry updates and their answers; the state is VtnClient's."""

    async def _send_report(self, intervals: list[Interval], rrid: str, since: datetime | None = None) -> bool:
        """One oadrUpdateReport of `intervals` under request `rrid`; True once the VTN took it. `since`: the end of the
        last interval the VTN took under it, where this report's period starts (see below)."""
        client = self._client
        self._update_failure = None
        if client is None or rrid is None:
            return False
        report_intervals = []
        for iv in intervals:
            payload = objects.ReportPayload(r_id=self._r_id, value=iv.value)
            if iv.samples:      # a one-shot's latest reading is one reading, not a mean missing some
                # counted at each send, from the file: a restart or a resend marks it the same
                iv = replace(iv, failed=self._telemetry.failed_reads(iv.start, iv.end))
            if iv.quality is not None:
                # openleadr's ReportPayload has no field for it; its oadrUpdateReport template renders it if set
                payload.data_quality = iv.quality
            report_intervals.append(objects.ReportInterval(dtstart=iv.start, duration=iv.duration,
                                                           report_payload=payload))
        # The report's dtstart is the last one's end: an interval missing between it and the report's intervals was not
        # measured (the meter silent, the gateway down; 2.0b's payload needs a value, and a no-value interval would read
        # as one), where one after every report's is not sent yet. With each report from its first interval, the two
        # read alike to a settlement ledger. (openleadr's template writes no report duration.)
        start = since if since is not None and since < intervals[0].start else intervals[0].start
        report = objects.Report(report_request_id=rrid, report_specifier_id=self._report_specifier_id,
                                report_name="TELEMETRY_USAGE", intervals=report_intervals,
                                dtstart=start, duration=intervals[-1].end - start)
        # openleadr's Report has no field for eiReportID and its template then sends it empty: each report
        # instance gets its own, so a VTN can tell them apart (a resent batch is a new instance)
        report.report_id = outils.generate_id()
        msg = client._create_message("oadrUpdateReport", ven_id=self.ven_id,
                                     request_id=outils.generate_id(), reports=[report])
        began, served, one_shot = time.monotonic(), rrid in self._served(), rrid in self._one_shots
        self._update_done.clear()
        self._sending = rrid
        try:
            rtype, payload = await client._perform_request("EiReport", msg)
        finally:
            self._update_done.set()
            self._sending = None
        self._update_took = time.monotonic() - began
        # a VTN failing it ("500 server busy" in its eiResponse) is no refusal (taken for one, the reports were offered
        # again at each update it failed, as if it had forgotten its request): the intervals wait, as for an HTTP 500
        self._update_failure = failed = client.failure(rtype)
        cancelled = served and rrid not in self._served()   # by the VTN, while the update was on the way
        if failed and cancelled:
            # the VTN cancelled the request while its update was on the way: the fault of its updates ended with it
            # (_no_updates_to_fail), and this failure would have held "HTTP 500" in the status for good
            log.debug("an update of cancelled request %s failed (%s)", rrid, self._update_failure)
            return False
        elif failed:
            self._update_failed(self._update_failure)
            return False
        elif self._updates_failing is not None:
            if self._updates_failing[2]:
                log.info("the VTN answers telemetry updates again, after %d failed", self._updates_failing[1])
                self._clear_error(self._updates_failing[3])
            self._updates_failing = None
        if rtype == "oadrUpdatedReport" and response_code_of(payload) == 200:
            if self._report_refused is not None:
                log.info("the VTN takes telemetry again after %d refused report(s)", self._report_refusals)
                self._clear_error(self._report_refused)
                self._report_refused, self._report_refusals, self._report_refused_since = None, 0, None
            self._reoffer_delay = 0.0
            if payload.get("cancel_report"):
                # 2.0b lets the VTN cancel reports in its answer to an update (openleadr's own report loop honours
                # it): the same as an oadrCancelReport on a poll, answered oadrCanceledReport. This update counts as
                # taken only after it: the request ends with it on its way (_landed), or the stream's place stayed
                # before it, and the VTN's next request of its granularity sent its intervals again
                self._sending = rrid
                try:
                    await self._cancel_report(payload["cancel_report"])
                finally:
                    self._sending = None
            return True
        if rtype == "oadrRequestReregistration":
            self._forgotten("the report")
        elif rtype is not None and cancelled:
            # a VTN refusing a request it no longer holds: no fault, nothing to offer again (the WARNING said both)
            log.debug("the VTN refused an update of cancelled request %s (%s)", rrid,
                      client.refused or f"{rtype} code {response_code_of(payload)}")
            return one_shot     # a one-shot is finished; a standing request's readings were not taken
        elif rtype is not None:
            # polls may go on fine meanwhile: this is the only place the operator hears of it
            self.last_error = (f"VTN refused the report: {client.refused}" if client.refused
                               else f"VTN answered the report with {rtype} code {response_code_of(payload)}")
            if rrid in self._one_shots:
                self._end_one_shot(rrid)     # its one chance: the VTN does not want it
                log.warning("%s; the one-shot report %s is given up", self.last_error, rrid)
                return True
            # once a spell, and again for another kind of refusal: a VTN that forgot its requests refuses each new
            # one by its own id (452 "reportRequestID ... unknown"), a text that differs every time
            if self._report_refused is None or fault_kind(self.last_error) != fault_kind(self._report_refused):
                log.warning("%s; the samples stay queued, the reports are offered again so the VTN can request "
                            "them anew (backoff up to %g s)", self.last_error, self._cfg.retry_max_seconds)
            if self._report_refused is None:
                self._report_refused_since = utcnow()
            self._report_refused = self.last_error
            self._report_refusals += 1
            self._offer_again(rrid)
        return False

    def _update_failed(self, why: str | None) -> None:
        """An oadrUpdateReport got no answer (an HTTP error, a time-out, an answer that is not OpenADR). A VTN
        that is down fails the polls too, and the outage is logged there; one that answers polls meanwhile has
        trouble with the reports alone, which nothing else would say: one WARNING once that is clear (a poll
        answered after the first failed update, and UPDATE_FAILURES in a row: a proxy failing one request in
        fifteen is not worth a line), one INFO when an update is answered again."""
        why = why or "an empty answer"
        now = utcnow()
        since, failures, said, _ = self._updates_failing or (now, 0, False, None)
        failures += 1
        # (an open VTN fault, failing polls now and then, is said by the outage's lines already)
        if (not said and failures >= UPDATE_FAILURES and self._outage is None and self.last_poll is not None
                and self.last_poll > since):
            # updates lost on the way (resets, time-outs) while the polls between got through are the link's, not
            # the VTN turning telemetry down: the line must not send the engineer to the utility
            if why.startswith("connection to the VTN "):
                whose = "telemetry updates are lost on the way to the VTN while its polls get through"
            elif why.endswith("did not answer in time"):
                whose = "telemetry updates time out while the VTN answers polls (a slow link or a slow VTN)"
            else:
                whose = "the VTN answers polls but not telemetry updates"
            log.warning("%s (%s): the samples stay queued and the updates are retried (backoff up to %g s)", whose,
                        why, self._cfg.retry_max_seconds)
            said = True
        self.last_error = why
        self._updates_failing = (since, failures, said, why)

    def _telemetry_fault(self) -> dict | None:
        """Telemetry the VTN does not take while it answers polls, from the log's WARNING to its INFO: the VTN looks
        connected meanwhile, so without this only the growing queue would tell the operator."""
        failing = self._updates_failing
        if failing is not None and failing[2]:
            since, failures, _, why = failing
            return {"kind": "unanswered", "since": iso_utc(since), "count": failures, "why": why}
        if self._report_refused is not None:
            since = self._report_refused_since
            return {"kind": "refused", "since": iso_utc(since) if since else None, "count": self._report_refusals,
                    "why": self._report_refused}
        return None

    def _no_updates_to_fail(self) -> None:
        """The VTN cancelled the last request served: no update goes now, so none fails. A fault of the updates the
        log said began ends here; its end line otherwise waited for the first update of a request to come, and the
        status and a stop line held the fault open meanwhile (the "no telemetry request" WARNING takes over)."""
        failing, self._updates_failing = self._updates_failing, None
        if failing is not None and failing[2]:
            log.info("telemetry updates no longer sent after %d failed: the VTN cancelled the report request they "
                     "were for", failing[1])
            self._clear_error(failing[3])
        if self._report_refused is not None:
            log.info("telemetry no longer sent after %d refused report(s): the VTN cancelled the report request "
                     "they were for", self._report_refusals)
            self._clear_error(self._report_refused)
            self._report_refused, self._report_refusals, self._report_refused_since = None, 0, None

    def _smaller_batch(self, req: Standing, sent: int) -> None:
        """An update of `sent` intervals the VTN did not answer in time (a VTN storing each interval as it reads
        them, a slow link), or refused as too large (HTTP 413 from a proxy): the same batch again would fail again,
        for good, with the VTN perhaps storing it each time. Halve it, down to 1; a new request starts at BATCH.
        An update lost in a black hole on the link looks the same: the batch grows back once updates are answered
        well within the time-out (_larger_batch)."""
        why = self._update_failure or ""
        if sent < 2 or not (why.endswith("did not answer in time") or why.startswith("HTTP 413")):
            return
        first = req.batch == BATCH
        req.batch = max(1, sent // 2)
        # polls failing too (a black hole on the link): the VTN fault's own line says it
        log.log(logging.WARNING if first and self.connected else logging.DEBUG,
                "the VTN did not take an update of %d TELEMETRY_USAGE interval(s) (%s): sending %d per update from "
                "now (request %s)", sent, why, req.batch, req.rrid)

    def _larger_batch(self, req: Standing, sent: int) -> None:
        """A full update answered in under a quarter of the time-out, after the batch was halved: doubled again, up
        to BATCH. A link that lost one update (a black hole) then carries whole batches again; a link or VTN too slow
        for the batch keeps it, as twice it would still fit the time-out only narrowly."""
        if req.batch < BATCH and sent >= req.batch and self._update_took < self._cfg.request_timeout_seconds / 4:
            req.batch = min(BATCH, req.batch * 2)
            log.debug("TELEMETRY_USAGE updates of %d interval(s) answered in %.1f s: %d per update from now (request "
                      "%s)", sent, self._update_took, req.batch, req.rrid)
