"""Telemetry to the VTN, mixed into VtnClient: report requests served (oadrCreateReport, oadrCancelReport) and
the queued readings sent as intervals (oadrUpdateReport), each leaving the queue only once the VTN took it.
Separate from ven/vtn.py, whose session registers and polls; delivery runs as a task of its own."""
from __future__ import annotations

import asyncio
import logging
import math
from datetime import datetime, timedelta

from openleadr import objects, utils as outils

from .report_intervals import (Interval, bucket_start, complete_intervals, effective_granularity, next_boundary,
                               report_period)
from .vtn_transport import INVALID_ID, _duration, _ei_response, _iso, _response_code, _utcnow

# one logger for the VEN side, wherever its code lives: tests and log filters select its lines by this name
log = logging.getLogger("ven.vtn")

BATCH = 100                     # intervals per oadrUpdateReport when catching up
MAX_PEEK = 20_000               # samples read at once to fill a batch (a few MB at most)
# Readings dated this much before the last interval reported mean the wall clock stepped back;
# closer ones are late readings of an interval already sent, and are dropped.
CLOCK_STEP = timedelta(seconds=60)


class VtnReports:
    """VtnClient's telemetry: the requests it serves and their delivery; the state is VtnClient's."""

    # -- telemetry ---------------------------------------------------------------------------

    async def _deliver(self) -> None:
        """Supervise delivery: an unexpected error in one pass must not end telemetry for good."""
        while True:
            try:
                await self._deliver_loop()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug, not a VTN fault (those are handled inside): say so loudly
                log.exception("telemetry delivery failed unexpectedly; restarting it")
                await asyncio.sleep(self._cfg.retry_max_seconds)

    async def _deliver_loop(self) -> None:
        backoff = self._cfg.retry_min_seconds
        while True:
            failed = False
            if self._opts_dirty.is_set() and self._live:
                self._opts_dirty.clear()
                await self._send_opts()
            if self._live and self._one_shots and self._telemetry.newest() is not None:
                failed = not await self._send_one_shots()
            if self._live and self._report_request_id and not failed:
                now = _utcnow()
                if self._catch_up or now >= self._next_report:
                    if await self._send_complete(now):
                        self._catch_up = False
                        self._next_report = self._next_update(now)
                        end = self._window[1]
                        if self._final_report is not None and self._final_report == self._report_request_id:
                            log.info("last TELEMETRY_USAGE update sent for the cancelled request %s; readings "
                                     "queue until the VTN asks again", self._final_report)
                            self._stop_serving(self._final_report)
                        elif end is not None and now >= end:
                            log.info("TELEMETRY_USAGE request %s ended: its reportInterval ended at %s; readings "
                                     "queue until the VTN asks again", self._report_request_id, _iso(end))
                            self._stop_serving(self._report_request_id)
                    else:
                        self._catch_up = True        # once the backoff has passed, whatever is complete by then
                        failed = True
            if failed:
                timeout = backoff
                backoff = min(backoff * 2, self._cfg.retry_max_seconds)
            else:
                backoff = self._cfg.retry_min_seconds
                timeout = (max(0.0, (self._next_report - _utcnow()).total_seconds())
                           if self._live and self._report_request_id else None)
            if self._backlog and not self._catch_up and self._report_request_id:
                log.info("queued telemetry delivered: %d interval(s) with their original times", self._backlog)
                self._backlog = 0
            try:
                async with asyncio.timeout(timeout):
                    await self._wake_delivery.wait()
            except TimeoutError:
                pass
            self._wake_delivery.clear()

    def _drop_before(self, first: datetime) -> None:
        """The VTN asked for reporting from `first`: readings before it are no interval of this request. All of
        them at once, in one line (a week queued at 10 s is 60,000 readings)."""
        dropped, limit = 0, BATCH       # the head, before every batch sent; beyond it once some are early
        while early := [s for s in self._telemetry.peek(limit) if s.ts < first]:
            self._telemetry.ack(early, delivered=False)
            dropped, limit = dropped + len(early), MAX_PEEK
        if dropped:
            log.info("%d reading(s) taken before %s, where the reportInterval of request %s starts, are not "
                     "reported", dropped, _iso(first), self._report_request_id)

    def _next_update(self, now: datetime) -> datetime:
        """When the next update is due: on the reportBackDuration grid, not before the request's
        reportInterval has a whole interval, and at its end at the latest."""
        first, end = self._window
        due = next_boundary(max(now, first) if first is not None else now,
                            report_period(self._granularity, self._report_back))
        return min(due, end) if end is not None and end > now else due

    def _complete(self, now: datetime) -> tuple[list[Interval], list]:
        """The complete intervals at the head of the queue (at most BATCH), and samples of periods
        already reported. A read that fills up may end inside an interval: that one waits for a read
        reaching past it (unless it is the only one, then the read is widened)."""
        per_interval = max(1, math.ceil(self._granularity / timedelta(seconds=self._cfg.telemetry_seconds)))
        limit = BATCH * per_interval + 1
        while True:
            samples = self._telemetry.peek(limit)
            intervals, late = complete_intervals(samples, self._granularity, now, self._sent_until)
            if len(samples) < limit or not intervals:
                return intervals[:BATCH], late
            whole = intervals[:-1]
            if len(whole) >= BATCH or (whole and limit >= MAX_PEEK):
                return whole[:BATCH], late
            if not whole:
                limit *= 2       # one interval holds more than was read: read until it is whole
                continue
            # The meter is read more often than openadr.telemetry_seconds: more samples per interval
            # than guessed. Read enough for a full batch (a week's backlog in 100s, not 10s, of messages).
            limit = min(MAX_PEEK, max(limit * 2, math.ceil(limit * (BATCH + 1) / len(whole))))

    async def _send_complete(self, now: datetime) -> bool:
        """Every complete interval not yet sent, oldest first, BATCH per oadrUpdateReport; each sample
        leaves the queue only once the VTN took the update that carried its interval."""
        first, end = self._window
        if end is not None:
            now = min(now, end)         # intervals reaching past the reportInterval are not this request's
        while self._live and self._report_request_id:
            if first is not None:
                self._drop_before(first)
            intervals, late = self._complete(now)
            if late and min(x.ts for x in late) < self._sent_until - max(self._granularity, CLOCK_STEP):
                # Far older than the last interval sent: not a late reading but a wall clock stepped back
                # (NTP). Dropping would lose every reading until the clock is past the old time again;
                # sent, their intervals overlap the ones stamped by the clock that was ahead.
                log.warning("telemetry samples dated up to %s before the last interval reported: the clock "
                            "stepped back; intervals are reported again from %s", self._sent_until - min(
                                x.ts for x in late), _iso(min(x.ts for x in late)))
                self._sent_until = None
                continue
            if late:
                log.warning("%d telemetry sample(s) dated before %s, the end of the last interval reported "
                            "(the clock stepped back?): dropped, as their interval cannot be sent twice",
                            len(late), _iso(self._sent_until))
                self._telemetry.ack(late, delivered=False)
            if not intervals:
                return True
            if not await self._send_report(intervals, self._report_request_id):
                return False
            self._telemetry.ack([s for iv in intervals for s in iv.samples])
            self._sent_until = intervals[-1].end
            # one line per interval is a healthy gateway's whole log: only a backlog is news, said when
            # its first batch goes and when it is all delivered, not once per batch
            log.log(logging.INFO if len(intervals) > 1 and not (self._catch_up and self._backlog) else logging.DEBUG,
                    "TELEMETRY_USAGE: %d interval(s) of %s from %s to %s sent (request %s)", len(intervals),
                     _duration(self._granularity), _iso(intervals[0].start), _iso(intervals[-1].end),
                     self._report_request_id)
            if self._catch_up and (len(intervals) > 1 or self._backlog):
                self._backlog += len(intervals)
        return False

    async def _send_one_shots(self) -> bool:
        """A one-shot request (granularity and reportBackDuration 0) gets the latest reading, once.
        The reading stays queued: it belongs to the standing request's interval too."""
        sample = self._telemetry.newest()
        step = timedelta(seconds=self._cfg.telemetry_seconds)
        interval = Interval(bucket_start(sample.ts, step), step, sample.kw, ())
        for rrid in list(self._one_shots):
            if not await self._send_report([interval], rrid):
                return False
            if rrid not in self._one_shots:
                continue                # refused: given up (logged)
            self._end_one_shot(rrid)
            log.info("one-shot report %s sent: %.2f kW read at %s; the request is finished",
                     rrid, sample.kw, _iso(sample.ts))
        return True

    def _offer_again(self, rrid: str) -> None:
        """The VTN refuses updates under this request (452: it forgot the request, e.g. restarted with
        the registrations but not the report requests). Polls go on, so nothing else would ever let it
        request telemetry again: the reports are offered anew, and the backlog goes to its new request."""
        if rrid != self._report_request_id:
            return
        self._stop_serving(rrid)
        self._reports_offered = False
        self._next_offer = asyncio.get_running_loop().time() + self._reoffer_delay
        self._reoffer_delay = min(max(self._reoffer_delay * 2, self._cfg.retry_min_seconds),
                                  self._cfg.retry_max_seconds)

    async def _cancel_report(self, payload: dict) -> None:
        """oadrCancelReport: the request is no longer served, and oadrCanceledReport says so. With
        reportToFollow the standing request first gets one last update (the intervals complete by then);
        readings after it wait in the queue for the VTN's next request. A request the gateway does not
        serve is answered 452, so the VTN learns its bookkeeping and ours differ. One message may name
        several requests (the schema allows any number): each is cancelled, the 452 names those not served."""
        rrids = payload.get("report_request_id")
        rrids = rrids if isinstance(rrids, list) else [rrids]
        follow = bool(payload.get("report_to_follow"))
        unknown = []
        for rrid in rrids:
            if rrid is not None and rrid == self._report_request_id:
                if follow:
                    self._final_report, self._catch_up = rrid, True
                    self._wake_delivery.set()
                    log.warning("the VTN cancelled the telemetry report (request %s): one last update, then "
                                "readings queue until it asks again", rrid)
                else:
                    self._stop_serving(rrid)
                    log.warning("the VTN cancelled the telemetry report (request %s); readings queue until it "
                                "asks again", rrid)
            elif rrid in self._one_shots:
                self._end_one_shot(rrid)
                log.info("the VTN cancelled the one-shot report %s before it was sent", rrid)
            else:
                unknown.append(str(rrid))
        refusal = None
        if unknown:
            serving = ", ".join(self._served()) or "none"
            log.warning("VTN cancelled report request %s, which the gateway does not serve (serving: %s): "
                        "answered %d", ", ".join(unknown), serving, INVALID_ID)
            refusal = f"reportRequestID {', '.join(unknown)} is not served by this VEN"
        # still pending: what is served, and the cancelled request until its last update is sent
        await self._answer_report_message("oadrCanceledReport", _ei_response(payload.get("request_id"), refusal))

    def _served(self) -> list[str]:
        """The report requests being served: the standing one and the one-shots not yet sent."""
        return [r for r in [self._report_request_id, *self._one_shots] if r]

    async def _answer_report_message(self, message_type: str, response: dict) -> None:
        """oadrCreatedReport / oadrCanceledReport: the answer, and the requests still pending."""
        client = self._client
        msg = client._create_message(message_type, response=response, ven_id=self.ven_id,
                                     pending_reports=[{"report_request_id": r} for r in self._served()])
        await client._perform_request("EiReport", msg)

    def _end_one_shot(self, rrid: str) -> None:
        self._one_shots.remove(rrid)
        self._forget_request(rrid)

    def _stop_serving(self, rrid: str) -> None:
        self._report_request_id = self._final_report = None
        self._window = (None, None)
        self._forget_request(rrid)

    def _forget_request(self, rrid: str) -> None:
        if self._client is not None:
            self._client.report_requests[:] = [r for r in self._client.report_requests
                                               if r["report_request_id"] != rrid]

    async def _create_report(self, payload: dict) -> None:
        """oadrCreateReport: serve what was offered, refuse (452) what was not, answer oadrCreatedReport.
        One standing request is served at a time: a newer one replaces it (logged)."""
        client = self._client
        sampling = timedelta(seconds=self._cfg.telemetry_seconds)
        refused: list[str] = []
        for rr in payload.get("report_requests") or []:
            rrid = rr["report_request_id"]
            spec = rr.get("report_specifier") or {}
            sid = spec.get("report_specifier_id")
            r_ids = [p.get("r_id") for p in spec.get("specifier_payloads") or []]
            if sid != self._report_specifier_id:
                refused.append(f"{rrid}: report {sid!r} was never offered (offered: {self._report_specifier_id!r})")
                continue
            unknown = [r for r in r_ids if r != self._r_id]
            if unknown or not r_ids:
                refused.append(f"{rrid}: rID {', '.join(map(repr, unknown)) or '(none)'} not in report {sid!r} "
                               f"(offered: {self._r_id!r})")
                continue
            asked = spec.get("granularity")
            back = spec.get("report_back_duration") or timedelta(0)
            self._forget_request(rrid)
            client.report_requests.append({"report_request_id": rrid, "report_specifier_id": sid,
                                           "report_back_duration": back, "r_ids": r_ids, "granularity": asked,
                                           "job": None})
            if asked == timedelta(0) and back == timedelta(0):
                self._one_shots.append(rrid)
                log.info("VTN asked for one TELEMETRY_USAGE report (request %s): the latest reading is sent once",
                         rrid)
                continue
            granularity = effective_granularity(asked or None, sampling)
            if asked and asked < sampling:
                log.warning("VTN request %s asks for intervals of %s, finer than the meter is sampled (%s, "
                            "openadr.telemetry_seconds): intervals of %s are sent instead",
                            rrid, _duration(asked), _duration(sampling), _duration(granularity))
            self._adopt(rrid, granularity, back, _report_window(spec, granularity))
        if refused:
            log.warning("VTN requested telemetry the gateway never offered, refused with %d: %s",
                        INVALID_ID, "; ".join(refused))
        request_id = payload.get("request_id") or (payload.get("response") or {}).get("request_id")
        await self._answer_report_message("oadrCreatedReport",
                                          _ei_response(request_id, "; ".join(refused) if refused else None))
        self._wake_delivery.set()

    def _adopt(self, rrid: str, granularity: timedelta, back: timedelta,
               window: tuple[datetime | None, datetime | None] = (None, None)) -> None:
        old = self._report_request_id
        how = (f"intervals of {_duration(granularity)} (mean of the readings in each), "
               + (f"sent every {_duration(back)}" if back > granularity else "each sent as it completes")
               + (f", from {_iso(window[0])}" if window[0] is not None else "")
               + (f" until {_iso(window[1])}" if window[1] is not None else ""))
        if old and old != rrid:
            # openleadr keeps the old one listed, so an oadrCancelReport for it is still answered
            log.info("VTN report request %s replaces %s (one telemetry request is served at a time): %s",
                     rrid, old, how)
        elif old != rrid or (granularity, back, window) != (self._granularity, self._report_back, self._window):
            # each of an outage's registrations gets a request anew (a fresh reportRequestID): only another one is news
            log.log(logging.DEBUG if self._outage is not None and (granularity, back, window) == self._request_said
                    else logging.INFO, "VTN requested telemetry (request %s): %s", rrid, how)
        self._request_said = (granularity, back, window)
        self._report_request_id, self._granularity, self._report_back = rrid, granularity, back
        self._window = window
        self._final_report = None
        self._next_report = self._next_update(_utcnow())
        self._catch_up = True        # what is complete already (queued while nothing was requested) goes now

    async def _send_report(self, intervals: list[Interval], rrid: str) -> bool:
        client = self._client
        if client is None or rrid is None:
            return False
        report_intervals = [objects.ReportInterval(dtstart=iv.start, duration=iv.duration,
                                                   report_payload=objects.ReportPayload(r_id=self._r_id,
                                                                                        value=iv.value))
                            for iv in intervals]
        report = objects.Report(report_request_id=rrid, report_specifier_id=self._report_specifier_id,
                                report_name="TELEMETRY_USAGE", intervals=report_intervals,
                                dtstart=intervals[0].start, duration=intervals[-1].end - intervals[0].start)
        # openleadr's Report has no field for eiReportID and its template then sends it empty: each report
        # instance gets its own, so a VTN can tell them apart (a resent batch is a new instance)
        report.report_id = outils.generate_id()
        msg = client._create_message("oadrUpdateReport", ven_id=self.ven_id,
                                     request_id=outils.generate_id(), reports=[report])
        rtype, payload = await client._perform_request("EiReport", msg)
        if rtype == "oadrUpdatedReport" and _response_code(payload) == 200:
            if self._report_refused is not None:
                log.info("the VTN takes telemetry again after %d refused report(s)", self._report_refusals)
                self._clear_error(self._report_refused)
                self._report_refused, self._report_refusals = None, 0
            self._reoffer_delay = 0.0
            return True
        if rtype == "oadrRequestReregistration":
            self._forgotten("the report")
        elif rtype is not None:
            # polls may go on fine meanwhile: this is the only place the operator hears of it
            self.last_error = (f"VTN refused the report: {client.refused}" if client.refused
                               else f"VTN answered the report with {rtype} code {_response_code(payload)}")
            if rrid in self._one_shots:
                self._end_one_shot(rrid)     # its one chance: the VTN does not want it
                log.warning("%s; the one-shot report %s is given up", self.last_error, rrid)
                return True
            if self.last_error != self._report_refused:
                log.warning("%s; the samples stay queued, the reports are offered again so the VTN can request "
                            "them anew (backoff up to %g s)", self.last_error, self._cfg.retry_max_seconds)
            self._report_refused = self.last_error
            self._report_refusals += 1
            self._offer_again(rrid)
        else:
            self.last_error = client.last_error
        return False


def _report_window(spec: dict, granularity: timedelta) -> tuple[datetime | None, datetime | None]:
    """A request's reportInterval ("the overall period of reporting") as the intervals on the clock grid
    that overlap it: the start of the first, the end of the last (a VTN writing its request's time as
    dtstart gets the interval in progress, not the next one). A duration of 0 (or none) reports until
    cancelled, and from the queue's head: a VTN back from an outage that asks from now would otherwise
    have the readings queued meanwhile dropped, which the gateway keeps for it."""
    period = spec.get("report_interval") or {}
    start, length = period.get("dtstart"), period.get("duration")
    if not isinstance(start, datetime) or not isinstance(length, timedelta) or length <= timedelta(0):
        return None, None
    try:
        end = start + length
        return bucket_start(start, granularity), end if bucket_start(end, granularity) == end else next_boundary(
            end, granularity)
    except OverflowError:   # past the year 9999: "until further notice" written as a duration (P9999Y)
        return None, None
