"""Telemetry to the VTN, mixed into VtnClient: report requests served (oadrCreateReport, oadrCancelReport) and
the queued readings sent as intervals (oadrUpdateReport), each leaving the queue only once the VTN took it.
Separate from ven/vtn.py, whose session registers and polls; delivery runs as a task of its own."""
from __future__ import annotations

import asyncio
import copy
import logging
import itertools
import math
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, tzinfo

from openleadr import objects, utils as outils

from bacnet_api.settle import span

from .report_intervals import (DAY, EPOCH, Grid, Interval, bucket_start, complete_intervals, effective_granularity,
                               grid, report_period)
from .tasks import woken
from .vtn_transport import (INVALID_ID, _duration, _ei_response, _fault_kind, _iso, _length, _refusal,
                            _response_code, _utcnow, poll_period)

# one logger for the VEN side, wherever its code lives: tests and log filters select its lines by this name
log = logging.getLogger("ven.vtn")

BATCH = 100                     # intervals per oadrUpdateReport when catching up
MAX_PEEK = 20_000               # samples read at once to fill a batch (a few MB at most)
# Readings dated this much before the last interval reported mean the wall clock stepped back;
# closer ones are late readings of an interval already sent, and are dropped.
CLOCK_STEP = timedelta(seconds=60)
# Standing requests served at once (a VTN's settlement and real-time streams, say); each reads the queue
# apart, and a sample waits until the slowest took it. A request beyond this is refused (452).
MAX_STANDING = 4
# updates in a row without an answer, while polls are answered, before the operator hears of it
UPDATE_FAILURES = 3
# A VTN requests telemetry in its answer to the offer or on one of the next polls: registered this many polls (and
# openadr.request_wait_seconds) with the offer taken and no standing request, the operator hears of it
REQUEST_WAIT_POLLS = 3
ASKED_KEPT = 5          # what the VTN asked for instead, named in the warning: the latest few


@dataclass
class Unrequested:
    """Registered, the offer taken, and no standing TELEMETRY_USAGE request served: readings only pile up."""
    since: datetime
    began: float                    # the event loop's clock
    said: bool = False              # the WARNING is out: the status and the dashboard say it until a request
    asked: list[str] = field(default_factory=list)   # what the VTN asked for meanwhile instead (latest ASKED_KEPT)


@dataclass
class Standing:
    """One standing TELEMETRY_USAGE request being served, and where its delivery stands."""
    rrid: str
    granularity: timedelta
    back: timedelta                 # reportBackDuration: how often it wants updates
    # its reportInterval: the start of its first interval and its end (None: unbounded)
    window: tuple[datetime | None, datetime | None] = (None, None)
    origin: datetime = EPOCH                # its intervals' grid goes through this (report_origin)
    sent_until: datetime | None = None      # end of the last interval the VTN took under it
    # sent_until is at most that: a place 0.3.0 left (TelemetryQueue.places_current), where a stream it served alone
    # stood at its first update. Its next report is dated at its first interval: the intervals between were sent
    undated: bool = False
    next_report: datetime | None = None     # when its next update is due (on its grid)
    catch_up: bool = True                   # send every complete interval now (backlog, retry)
    final: bool = False                     # cancelled with reportToFollow: one last update, then it ends
    backlog: int = 0                        # intervals of a backlog sent so far (said once it is all sent)
    batch: int = BATCH                      # intervals per update: less once the VTN could not take BATCH in time
    ahead_said: bool = False                # readings stamped by a clock that was ahead: said once
    late_dropped: int = 0                   # readings dropped as late since the WARNING that said so (0: none)
    # readings before it went to the VTN in intervals of this granularity under a request that ended (cancelled,
    # then asked again): not sent twice
    start: datetime | None = None
    # the newest reading that had left the queue when it came: an interval of it holding that one lacks readings
    left: datetime | None = None
    # the start of the first interval this process sent under it: readings of a file that opened late (after this
    # start) in intervals before it were never sent, those in intervals from it were
    first_sent: datetime | None = None
    # a request of its granularity cancelled with reportToFollow, its last update still to go, or one ended with its
    # update on the way (_landed), when this one came: this one goes on after that update, as had it gone first
    follows: str | None = None


class VtnReports:
    """VtnClient's telemetry: the requests it serves and their delivery; the state is VtnClient's."""

    # the building's zone (forecaster.timezone): whole-day intervals from one of its midnights are its days
    _zone: tzinfo | None = None

    # -- telemetry ---------------------------------------------------------------------------

    async def _deliver(self) -> None:
        await self._supervised(self._deliver_loop, self._delivery_bug)

    async def _supervised(self, loop, bug) -> None:
        """Run a delivery loop for good: an unexpected error in one pass must not end telemetry or status."""
        while True:
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # a bug, not a VTN fault (those are handled inside): said once
                bug.failed(err)
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
            for req in list(self._requests.values()):
                if failed or not self._live:
                    break
                if self._requests.get(req.rrid) is not req:
                    continue            # ended while another request's update was sent
                now = _utcnow()
                if req.catch_up or now >= self._due(req, now):
                    if await self._send_complete(req, now):
                        req.catch_up = False
                        req.next_report = self._next_update(req, now)
                        end = req.window[1]
                        if req.final:
                            log.info("last TELEMETRY_USAGE update sent for the cancelled request %s; %s", req.rrid,
                                     self._then(req.rrid, "readings queue until the VTN asks again"))
                            self._stop_serving(req.rrid)
                        elif end is not None and now >= end:
                            log.info("TELEMETRY_USAGE request %s ended: its reportInterval ended at %s; %s", req.rrid,
                                     _iso(end), self._then(req.rrid, "readings queue until the VTN asks again"))
                            self._stop_serving(req.rrid)
                    else:
                        req.catch_up = True        # once the backoff has passed, whatever is complete by then
                        failed = True
            self._retry_at_poll = failed
            if failed:
                timeout = backoff
                backoff = min(backoff * 2, self._cfg.retry_max_seconds)
            else:
                backoff = self._cfg.retry_min_seconds
                now = _utcnow()
                timeout = (max(0.0, (min(self._due(r, now) for r in self._requests.values()) - now).total_seconds())
                           if self._live and self._requests else None)
            for req in self._requests.values():
                if req.backlog and not req.catch_up:
                    log.info("queued telemetry delivered: %d interval(s) with their original times", req.backlog)
                    req.backlog = 0
            self._delivery_bug.worked()     # a pass to its end
            await woken(self._wake_delivery, timeout)

    def _due(self, req: Standing, now: datetime) -> datetime:
        """req.next_report, brought back to the grid of `now` when the wall clock stepped back (NTP putting a
        fast box right) since it was set, even while its update was on the way: waiting for the time the clock
        ahead named stopped telemetry for as long as the step."""
        req.next_report = min(req.next_report, self._next_update(req, now))
        return req.next_report

    def _take_before(self, req: Standing, first: datetime) -> int:
        """Readings before `first` are no interval of this request: taken from its reads unsent, all at once (a week
        queued at 10 s is 60,000 readings); how many. Another request served may still report them: they leave the
        queue once it took them too."""
        dropped, limit = 0, BATCH       # the head, before every batch sent; beyond it once some are early
        while early := [s for s in self._telemetry.peek(limit, req.rrid) if s.ts < first]:
            self._telemetry.ack(early, delivered=False, reader=req.rrid)
            dropped, limit = dropped + len(early), MAX_PEEK
        return dropped

    def _drop_before(self, req: Standing, first: datetime) -> None:
        """The VTN asked for reporting from `first`: readings before it are not reported, in one line."""
        if dropped := self._take_before(req, first):
            log.info("%d reading(s) taken before %s, where the reportInterval of request %s starts, are not "
                     "reported%s", dropped, _iso(first), req.rrid,
                     "" if len(self._requests) < 2 else " under it (the other requests served still report them)")

    def _grid(self, req: Standing, step: timedelta | None = None) -> Grid:
        """The grid of req's intervals (or of `step` from its origin): the building's days for whole days from one
        of its midnights (report_intervals.grid)."""
        return grid(step or req.granularity, req.origin, self._zone)

    def _next_update(self, req: Standing, now: datetime) -> datetime:
        """When the next update is due: on the reportBackDuration grid, not before the request's
        reportInterval has a whole interval, and at its end at the latest."""
        first, end = req.window
        due = self._grid(req, report_period(req.granularity, req.back)).next(max(now, first) if first is not None
                                                                             else now)
        return min(due, end) if end is not None and end > now else due

    def _complete(self, req: Standing, now: datetime) -> tuple[list[Interval], list]:
        """The complete intervals at the head of the queue (at most BATCH), and samples of periods
        already reported. A read that fills up may end inside an interval: that one waits for a read
        reaching past it (unless it is the only one, then the read is widened)."""
        per_interval = max(1, math.ceil(req.granularity / timedelta(seconds=self._cfg.telemetry_seconds)))
        batch = req.batch
        limit = batch * per_interval + 1
        while True:
            samples = self._telemetry.peek(limit, req.rrid)
            intervals, late = complete_intervals(samples, req.granularity, now, req.sent_until, req.origin,
                                                 self._zone)
            if len(samples) < limit or not intervals:
                return intervals[:batch], late
            whole = intervals[:-1]
            if len(whole) >= batch or (whole and limit >= MAX_PEEK):
                return whole[:batch], late
            if not whole:
                limit *= 2       # one interval holds more than was read: read until it is whole
                continue
            # The meter is read more often than openadr.telemetry_seconds: more samples per interval
            # than guessed. Read enough for a full batch (a week's backlog in 100s, not 10s, of messages).
            limit = min(MAX_PEEK, max(limit * 2, math.ceil(limit * (batch + 1) / len(whole))))

    def _ahead(self, req: Standing, now: datetime) -> list[Interval]:
        """Intervals (at most req.batch) of the samples at the head of the queue dated after the interval under way
        and CLOCK_STEP: taken before the wall clock stepped back (NTP putting a box right that ran ahead while
        the VTN was away). Waiting for their time, they held up every reading behind them, as long as the step."""
        after = max(self._grid(req).next(now), now + CLOCK_STEP)
        if req.sent_until is not None:
            after = max(after, req.sent_until)    # before it: late, or reported already (_send_complete)
        limit = 1   # the head alone first: at each update, as it is almost always, not ahead
        while True:
            samples = self._telemetry.peek(limit, req.rrid)
            run = list(itertools.takewhile(lambda s: s.ts >= after, samples))
            if not run:
                return []
            intervals, _ = complete_intervals(run, req.granularity, datetime.max.replace(tzinfo=UTC), origin=req.origin,
                                              zone=self._zone)
            if len(run) < len(samples) or len(samples) < limit or limit >= MAX_PEEK:
                return intervals[:req.batch]
            if len(intervals) > req.batch:
                return intervals[:req.batch]
            if len(intervals) > 1:
                return intervals[:-1]   # the last one's other samples are beyond the read: it goes whole, next
            limit = min(MAX_PEEK, max(limit * 2, req.batch + 1))

    async def _send_complete(self, req: Standing, now: datetime) -> bool:
        """Every complete interval of this request not yet sent, oldest first, BATCH per oadrUpdateReport;
        each sample leaves the queue only once the VTN took the update that carried its interval, under
        every request served."""
        first, end = req.window
        if end is not None:
            now = min(now, end)         # intervals reaching past the reportInterval are not this request's
        while self._live and self._requests.get(req.rrid) is req:
            if first is not None:
                self._drop_before(req, first)
            if req.start is not None and (skipped := self._take_before(req, req.start)):
                log.debug("%d reading(s) before %s went to the VTN in intervals of %s under an earlier request: not "
                          "sent again under request %s", skipped, _iso(req.start), _duration(req.granularity), req.rrid)
            ahead = self._ahead(req, now)
            if ahead:
                if not req.ahead_said:
                    req.ahead_said = True
                    log.warning("telemetry samples dated up to %s ahead of the clock (it stepped back before they "
                                "were reported): their intervals are reported now, with the times they carry, then "
                                "the ones after the step", span((ahead[-1].end - now).total_seconds()))
                if not await self._send_report(ahead, req.rrid):
                    self._smaller_batch(req, len(ahead))
                    self._landed(req, None)
                    return False
                taken = [s for iv in ahead for s in iv.samples]
                self._telemetry.ack(taken, reader=req.rrid)
                self._landed(req, None, taken)  # dated ahead: no place for a request after it to go on from
                req.sent_until = None   # the intervals after the step are dated before these
                continue
            req.ahead_said = False
            if due := self._telemetry.ahead_due(req.rrid, now + CLOCK_STEP):
                # their times have come: bucketed, each would be averaged with the reading really taken then, a
                # value two clocks apart in one interval, unmarked (helper ledger41). Those times have their own.
                log.warning("%d telemetry sample(s) dated by a wall clock that was ahead (up to %s) left out of "
                            "request %s's intervals: the readings taken at those times are in them",
                            len(due), _iso(max(x.ts for x in due)), req.rrid)
                self._telemetry.ack(due, delivered=False, reader=req.rrid, lost=True)
                continue
            intervals, late = self._complete(req, now)
            if late and self._backlog_found_late(req, late):
                continue
            if late and min(x.ts for x in late) < req.sent_until - max(req.granularity, CLOCK_STEP):
                # Far older than the last interval sent: not a late reading but a wall clock stepped back
                # (NTP). Dropping would lose every reading until the clock is past the old time again;
                # sent, their intervals overlap the ones stamped by the clock that was ahead.
                log.warning("telemetry samples dated up to %s before the last interval reported: the clock "
                            "stepped back; intervals are reported again from %s", req.sent_until - min(
                                x.ts for x in late), _iso(min(x.ts for x in late)))
                req.sent_until = None
                continue
            if late:
                # one WARNING for a spell of them (a clock put back 45 s was 21 at a 2 s cadence), one line at its end
                log.log(logging.DEBUG if req.late_dropped else logging.WARNING,
                        "%d telemetry sample(s) dated before %s, the end of the last interval reported (the clock "
                        "stepped back?): dropped, as their interval cannot be sent twice; more are said at their end",
                        len(late), _iso(req.sent_until))
                req.late_dropped += len(late)
                self._telemetry.ack(late, delivered=False, reader=req.rrid, lost=True)
            elif req.late_dropped and intervals:
                log.info("telemetry samples no longer dated before the last interval reported: %d dropped in all "
                         "(request %s)", req.late_dropped, req.rrid)
                req.late_dropped = 0
            if not intervals:
                return True
            left = req.left
            if left is not None:
                # a request added after other requests' intervals took readings of its first one: the rest of them is
                # all there is, and the VTN must not take their mean for the whole interval's
                intervals = [replace(iv, cut=iv.start <= left) for iv in intervals]
            # from the reportInterval's start at the earliest: readings before it were not asked for
            since = req.sent_until if first is None or req.sent_until is None else max(req.sent_until, first)
            since = None if req.undated else since
            if not await self._send_report(intervals, req.rrid, since):
                self._smaller_batch(req, len(intervals))
                self._landed(req, None)
                return False
            self._telemetry.set_place(req.granularity, intervals[-1].end)
            taken = [s for iv in intervals for s in iv.samples]
            self._telemetry.ack(taken, reader=req.rrid)
            self._landed(req, intervals[-1].end, taken)
            req.sent_until = intervals[-1].end
            req.undated = False
            self._undated.discard(req.granularity)
            req.first_sent = req.first_sent or intervals[0].start
            self._larger_batch(req, len(intervals))
            req.start = req.left = None     # its first intervals are out: sent_until governs from here
            if cut := [iv for iv in intervals if iv.cut]:
                log.info("TELEMETRY_USAGE interval %s + %s of request %s lacks the readings up to %s, which had left "
                         "the queue when the request came: sent as the mean of the %d still queued, marked %s",
                         _iso(cut[0].start), _length(cut[0].duration), req.rrid, _iso(left), len(cut[0].samples),
                         cut[0].quality)
            # one line per update is a healthy gateway's whole log: only a backlog is news, said when its first
            # batch goes and when it is all delivered, not once per batch. An update of the intervals one
            # reportBackDuration holds (15-minute intervals sent hourly: four) is no backlog.
            routine = max(1, int(req.back / req.granularity)) if req.back and req.granularity else 1
            # one more than routine is a link slower than the interval (a round trip of 12 s at 10 s intervals): no news
            news = len(intervals) > routine + 1 and not (req.catch_up and req.backlog)
            log.log(logging.INFO if news else logging.DEBUG,
                    "TELEMETRY_USAGE: %d interval(s) of %s from %s to %s sent (request %s)", len(intervals),
                     _duration(req.granularity), _iso(intervals[0].start), _iso(intervals[-1].end), req.rrid)
            if req.catch_up and (len(intervals) > routine + 1 or req.backlog):
                req.backlog += len(intervals)
        return False

    def _landed(self, req: Standing, end: datetime | None, taken: list | None = None) -> None:
        """An update under `req` is back: taken, up to `end`, or not (None). If the request ended while it was on the
        way (the VTN cancelled it, or parked it: a new registration, the report list asked for again), its stream
        stands at `end` now, as had the update landed first; a request of its granularity the VTN asked for meanwhile
        goes on from there. It went on from before, and sent the update's intervals to the VTN again. `taken`: the
        update's readings, taken from the followers' reads: a place covers none dated ahead of the clock."""
        if self._landing is not req:
            return
        self._landing = None
        # a place after now was dated by a clock that stepped back while the update was on its way: no place among
        # this clock's readings (as in _adopt); from it, a follower took an hour's readings as reported already
        now = _utcnow()
        end = end if end is not None and end <= now else None
        if end is not None and ((reported := self._reported.get(req.granularity)) is None or reported < end):
            self._reported[req.granularity] = end
        place = end if end is not None else req.sent_until
        place = place if place is not None and place <= now else None
        for after in self._requests.values():
            if after.follows == req.rrid:
                after.follows = None
                if place is not None and after.first_sent is None:
                    after.sent_until = after.start = place
                if taken:
                    self._telemetry.ack(taken, delivered=False, reader=after.rrid)

    def _backlog_found_late(self, req: Standing, late: list) -> bool:
        """Readings queued in storage.path before this start, which the file gave only once it opened, after this
        process had sent newer intervals (a full or read-only disk at the start). Never sent: their intervals go
        now, after the newer ones, each dated as before. Those in intervals sent since the start (the one the
        restart fell in) cannot be sent twice: dropped and counted. True if `late` were those: look again."""
        found = self._telemetry.found_late_until
        if found is None or min(x.ts for x in late) > found or req.first_sent is None:
            return False
        sent = [x for x in late if self._grid(req).start(x.ts) >= req.first_sent]
        if sent:
            log.warning("%d telemetry reading(s) queued in storage.path before this start fall in intervals reported "
                        "since (from %s): dropped, as an interval cannot be sent twice", len(sent),
                        _iso(req.first_sent))
            self._telemetry.ack(sent, delivered=False, reader=req.rrid, lost=True)
        if len(sent) < len(late):
            req.sent_until = None   # the intervals before the start's: sent next, then the ones after it go on
        return True

    def _larger_batch(self, req: Standing, sent: int) -> None:
        """A full update answered in under a quarter of the time-out, after the batch was halved: doubled again, up
        to BATCH. A link that lost one update (a black hole) then carries whole batches again; a link or VTN too slow
        for the batch keeps it, as twice it would still fit the time-out only narrowly."""
        if req.batch < BATCH and sent >= req.batch and self._update_took < self._cfg.request_timeout_seconds / 4:
            req.batch = min(BATCH, req.batch * 2)
            log.debug("TELEMETRY_USAGE updates of %d interval(s) answered in %.1f s: %d per update from now (request "
                      "%s)", sent, self._update_took, req.batch, req.rrid)

    def _update_failed(self, why: str | None) -> None:
        """An oadrUpdateReport got no answer (an HTTP error, a time-out, an answer that is not OpenADR). A VTN
        that is down fails the polls too, and the outage is logged there; one that answers polls meanwhile has
        trouble with the reports alone, which nothing else would say: one WARNING once that is clear (a poll
        answered after the first failed update, and UPDATE_FAILURES in a row: a proxy failing one request in
        fifteen is not worth a line), one INFO when an update is answered again."""
        why = why or "an empty answer"
        now = _utcnow()
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
            return {"kind": "unanswered", "since": _iso(since), "count": failures, "why": why}
        if self._report_refused is not None:
            since = self._report_refused_since
            return {"kind": "refused", "since": _iso(since) if since else None, "count": self._report_refusals,
                    "why": self._report_refused}
        return None

    def _watch_requests(self) -> None:
        """After each answered poll: registered with the offer taken and no standing request served, for
        openadr.request_wait_seconds and REQUEST_WAIT_POLLS polls, is one WARNING; a request ends it (_adopt).
        Not connected, or the offer refused, are faults of their own, said by their own lines: the wait starts
        over after them, unless the warning is out already (it stays until a request comes)."""
        self._release_parked()
        u = self._unrequested
        if self._requests:
            return
        if not (self._live and self.connected and self._reports_offered and self._client is not None):
            if u is not None and not u.said:
                self._unrequested = None
            return
        now = asyncio.get_running_loop().time()
        if u is None:
            self._unrequested = Unrequested(_utcnow(), now)
            return
        if u.said or now - u.began < self._request_wait():
            return
        u.said = True
        instead = f" (the VTN asked only for {'; '.join(u.asked)})" if u.asked else ""
        log.warning("no telemetry request from the VTN for %s while registered: the TELEMETRY_USAGE report offered "
                    "(report %s, rID %s) is not requested%s; readings wait in storage.path (%d now), kept for "
                    "openadr.queue_max_days (%s), then the oldest are dropped: ask the utility to have its VTN request "
                    "the report", span(now - u.began), self._report_specifier_id, self._r_id, instead,
                    self._telemetry.pending, span(self._telemetry.max_age.total_seconds()))

    def _request_wait(self) -> float:
        # as the session polls: at least every second
        poll = poll_period(self._client) if self._client is not None else 1.0
        return max(self._cfg.request_wait_seconds, REQUEST_WAIT_POLLS * poll)

    def _asked_instead(self, what: list[str]) -> None:
        """The VTN asked for something other than a standing TELEMETRY_USAGE request (a one-shot report, a report
        never offered): named in the warning if no standing request comes."""
        if not what or self._requests:
            return
        if self._unrequested is None:
            self._unrequested = Unrequested(_utcnow(), asyncio.get_running_loop().time())
        self._unrequested.asked = (self._unrequested.asked + what)[-ASKED_KEPT:]

    def _unrequested_status(self) -> dict | None:
        """From the warning to the request that ends it, as `status()["telemetry_unrequested"]`."""
        u = self._unrequested
        if u is None or not u.said:
            return None
        return {"since": _iso(u.since), "wait_seconds": self._cfg.request_wait_seconds, "asked": list(u.asked),
                "report_specifier_id": self._report_specifier_id, "r_id": self._r_id}

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

    async def _send_one_shots(self) -> bool:
        """A one-shot request (granularity and reportBackDuration 0) gets the latest reading, once.
        The reading stays queued: it belongs to the standing requests' intervals too."""
        sample = self._telemetry.newest()
        step = timedelta(seconds=self._cfg.telemetry_seconds)
        interval = Interval(bucket_start(sample.ts, step), step, sample.kw, ())
        for rrid in list(self._one_shots):
            if not await self._send_report([interval], rrid):
                return False
            if rrid not in self._one_shots:
                continue                # refused: given up, or cancelled on its way (logged)
            self._end_one_shot(rrid)
            log.info("one-shot report %s sent: %.2f kW read at %s; the request is finished",
                     rrid, sample.kw, _iso(sample.ts))
        return True

    def _offer_again(self, rrid: str) -> None:
        """The VTN refuses updates under this request (452: it forgot the request, e.g. restarted with
        the registrations but not the report requests). Polls go on, so nothing else would ever let it
        request telemetry again: the reports are offered anew, and the backlog goes to its new request."""
        if rrid not in self._requests:
            return
        self._stop_serving(rrid)
        self._reports_offered = False
        self._next_offer = asyncio.get_running_loop().time() + self._reoffer_delay
        self._reoffer_delay = min(max(self._reoffer_delay * 2, self._cfg.retry_min_seconds),
                                  self._cfg.retry_max_seconds)

    async def _cancel_report(self, payload: dict) -> None:
        """oadrCancelReport: the request is no longer served, and oadrCanceledReport says so. With
        reportToFollow the standing request first gets one last update (the intervals complete by then);
        readings after it wait in the queue for the VTN's next request (other standing requests go on). A
        request the gateway does not serve is answered 452, so the VTN learns its bookkeeping and ours differ.
        One message may name several requests (the schema allows any number): each is cancelled, the 452
        names those not served."""
        rrids = payload.get("report_request_id")
        rrids = rrids if isinstance(rrids, list) else [rrids]
        follow = bool(payload.get("report_to_follow"))
        unknown = []
        for rrid in rrids:
            # INFO: the VTN's own choice, often followed at once by a new request (another granularity). Left
            # without one, the "no telemetry request" WARNING comes after openadr.request_wait_seconds
            # (_watch_requests), with its end line when a request comes: the fault's one start and one end.
            if rrid is not None and rrid in self._requests:
                if follow:
                    req = self._requests[rrid]
                    req.final, req.catch_up = True, True
                    self._wake_delivery.set()
                    log.info("the VTN cancelled the telemetry report (request %s): one last update, then %s",
                             rrid, self._then(rrid, "readings queue until it asks again"))
                else:
                    log.info("the VTN cancelled the telemetry report (request %s); %s", rrid,
                             self._then(rrid, "readings queue until it asks again"))
                    self._stop_serving(rrid)
                    if not self._requests:
                        self._no_updates_to_fail()
            elif rrid in self._one_shots:
                self._end_one_shot(rrid)
                log.info("the VTN cancelled the one-shot report %s %s", rrid,
                         "while it was on its way: it is not sent again" if rrid == self._sending
                         else "before it was sent")
            elif not self._cancel_status(rrid, follow):
                unknown.append(str(rrid))
        refusal = None
        if unknown:
            serving = ", ".join(self._served()) or "none"
            log.warning("VTN cancelled report request %s, which the gateway does not serve (serving: %s): "
                        "answered %d", ", ".join(unknown), serving, INVALID_ID)
            refusal = f"reportRequestID {', '.join(unknown)} is not served by this VEN"
        # still pending: what is served, and the cancelled request until its last update is sent
        await self._answer_report_message("oadrCanceledReport", _ei_response(payload.get("request_id"), refusal))

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

    def _then(self, rrid: str, alone: str) -> str:
        """What follows the end of request `rrid`: `alone` when no other standing request is served."""
        others = [r for r in self._requests if r != rrid]
        return f"request {', '.join(others)} still served" if others else alone

    def _served(self) -> list[str]:
        """The report requests being served: the standing ones and the one-shots not yet sent, usage and status."""
        return [*self._requests, *self._one_shots, *self._status_served()]

    @property
    def _report_request_id(self) -> str | None:
        """The standing request adopted last (status() names it; None: none is served)."""
        return next(reversed(self._requests), None)

    @property
    def _granularity(self) -> timedelta:
        rrid = self._report_request_id
        return self._requests[rrid].granularity if rrid else timedelta(seconds=self._cfg.telemetry_seconds)

    def _requests_status(self) -> list[dict]:
        return [{"report_request_id": r.rrid, "granularity_seconds": r.granularity.total_seconds(),
                 "report_back_seconds": r.back.total_seconds(),
                 "sent_until": r.sent_until.isoformat() if r.sent_until else None}
                for r in self._requests.values()]

    async def _answer_report_message(self, message_type: str, response: dict) -> None:
        """oadrCreatedReport / oadrCanceledReport: the answer, and the requests still pending."""
        client = self._client
        msg = client._create_message(message_type, response=response, ven_id=self.ven_id,
                                     pending_reports=[{"report_request_id": r} for r in self._served()])
        _, answer = await client._perform_request("EiReport", msg)
        if refusal := _refusal(answer):
            # the VTN may not count the requests as taken: said, as nothing else would show it (helper conformance40)
            log.warning("the VTN refused the gateway's %s (%s): it may not count the report requests as taken; "
                        "the updates for them are sent all the same", message_type, refusal)

    def _end_one_shot(self, rrid: str) -> None:
        self._one_shots.remove(rrid)
        self._forget_request(rrid)

    def _stop_serving(self, rrid: str, park: bool = False) -> None:
        """The request ends; the others served go on. What it took and they did not stays for them; with
        none left, every reading it did not take waits for the VTN's next request. `park`: its place in the
        queue is held for a request of its granularity (_end_requests)."""
        req = self._requests.pop(rrid, None)
        if req is not None:
            if landing := rrid == self._sending:
                self._landing = req     # its update on its way: where the stream stands once it is back (_landed)
            if req.sent_until is not None:
                self._reported[req.granularity] = req.sent_until
            for after in self._requests.values():
                # one following it (cancelled with reportToFollow, then outright) goes on once that update is back:
                # from here, it sent that update's intervals again
                if after.follows == rrid and not landing:
                    after.follows = None
                    if after.first_sent is None and req.sent_until is not None:
                        after.sent_until = after.start = req.sent_until
            held = f"parked {_duration(req.granularity)}"
            if park and req.granularity not in self._parked:
                self._telemetry.rename_reader(rrid, held)
                self._parked[req.granularity] = held
            else:
                self._telemetry.drop_reader(rrid)
                if not any(r.granularity == req.granularity for r in self._requests.values()):
                    self._telemetry.set_place(req.granularity, None)    # a restart holds nothing for it
        self._forget_request(rrid)

    def _park_stored_streams(self) -> None:
        """At start, the streams the last run served, as a new registration parks them: each held for the VTN's
        request of its granularity from the end of the last interval the VTN took. Else a stream ahead of another
        sent its intervals since the other's place again, and the one asked for first took the other's readings."""
        for seconds, until in sorted(self._telemetry.places.items()):
            granularity = timedelta(seconds=seconds)
            held = f"parked {_duration(granularity)}"
            self._telemetry.park_reader(held, until)
            self._parked[granularity], self._reported[granularity] = held, until
            if not self._telemetry.places_current:
                self._undated.add(granularity)

    def _end_requests(self) -> None:
        """A new registration: the VTN requests anew. Each request's place in the queue is held for the VTN's
        request of its granularity, for openadr.request_wait_seconds: a stream ahead of another went on from
        the one behind and sent its last intervals again (some with another value, from fewer readings), and the
        one behind lost the readings the one asked for first had taken."""
        for rrid in list(self._requests):
            self._stop_serving(rrid, park=True)
        if self._parked:
            self._parked_since = asyncio.get_running_loop().time()

    def _release_parked(self) -> None:
        """The VTN did not ask again for the streams it had before its registration: their readings stop waiting."""
        if not self._parked or asyncio.get_running_loop().time() - self._parked_since < self._request_wait():
            return
        gone, self._parked = self._parked, {}
        for granularity, held in gone.items():
            self._telemetry.drop_reader(held)
            self._telemetry.set_place(granularity, None)
        log.info("TELEMETRY_USAGE of %s not requested again since the VTN registration: the readings held for it "
                 "leave the queue once the requests served took them", ", ".join(map(_duration, gone)))

    def _forget_request(self, rrid: str) -> None:
        if self._client is not None:
            self._client.report_requests[:] = [r for r in self._client.report_requests
                                               if r["report_request_id"] != rrid]

    async def _create_report(self, payload: dict, in_place: bool = False) -> None:
        """oadrCreateReport: serve what was offered, refuse (452) what was not, answer oadrCreatedReport.
        Standing requests are served side by side (each its own intervals, MAX_STANDING at most; one
        beyond is refused 452); one with the reportRequestID of one served replaces it. `in_place`: the requests
        came in the answer to the report list offered again (METADATA), and take over the streams served."""
        client = self._client
        sampling = timedelta(seconds=self._cfg.telemetry_seconds)
        refused: list[str] = []
        over: list[str] = []
        instead: list[str] = []     # asked for, and no standing request of the report offered
        metadata: list[str] = []    # requests for the report list (2.0b: the VEN registers its reports again)
        status_refused: list[str] = []  # TELEMETRY_STATUS requests refused (offered, but not servable as asked)
        requests = payload.get("report_requests") or []
        adopted: set[str] = set()   # this message's: one does not take over another's stream
        for rr in requests:
            rrid = rr["report_request_id"]
            spec = rr.get("report_specifier") or {}
            sid = spec.get("report_specifier_id")
            r_ids = [p.get("r_id") for p in spec.get("specifier_payloads") or []]
            if sid == "METADATA":
                metadata.append(rrid)
                instead.append(f"the report list (request {rrid})")
                continue
            if not self._cfg.telemetry:
                refused.append(f"{rrid}: report {sid!r} (openadr.telemetry is false: none is offered)")
                continue
            if sid == self._status_specifier_id:     # TELEMETRY_STATUS: served by ven/vtn_status.py
                if refusal := self._take_status_request(rrid, spec, r_ids):
                    status_refused.append(refusal)
                else:
                    instead.append(f"TELEMETRY_STATUS (request {rrid})")
                continue
            if sid != self._report_specifier_id:
                refused.append(f"{rrid}: report {sid!r} was never offered (offered: {self._report_specifier_id!r}, "
                               f"{self._status_specifier_id!r})")
                continue
            unknown = [r for r in r_ids if r != self._r_id]
            if unknown or not r_ids:
                refused.append(f"{rrid}: rID {', '.join(map(repr, unknown)) or '(none)'} not in report {sid!r} "
                               f"(offered: {self._r_id!r})")
                continue
            asked = spec.get("granularity")
            back = spec.get("report_back_duration") or timedelta(0)
            one_shot = asked == timedelta(0) and back == timedelta(0)
            if not one_shot and rrid not in self._requests and len(self._requests) >= MAX_STANDING:
                over.append(rrid)
                continue
            self._forget_request(rrid)
            client.report_requests.append({"report_request_id": rrid, "report_specifier_id": sid,
                                           "report_back_duration": back, "r_ids": r_ids, "granularity": asked,
                                           "job": None})
            if one_shot:
                instead.append(f"one-shot report {rrid}")
                self._one_shots.append(rrid)
                log.info("VTN asked for one TELEMETRY_USAGE report (request %s): the latest reading is sent once",
                         rrid)
                continue
            granularity = effective_granularity(asked or None, sampling)
            if asked and asked < sampling:
                log.warning("VTN request %s asks for intervals of %s, finer than the meter is sampled (%s, "
                            "openadr.telemetry_seconds): intervals of %s are sent instead",
                            rrid, _duration(asked), _duration(sampling), _duration(granularity))
            # readings wait in the queue for their update, and the queue drops those older than it holds: updates
            # further apart than that would lose the oldest intervals of each. Half the queue leaves the other half
            # for a VTN out of reach at an update.
            longest = max(granularity, _whole_seconds(self._telemetry.max_age / 2))
            if report_period(granularity, back) > longest:
                log.warning("VTN request %s asks for updates every %s, longer than the gateway keeps readings "
                            "(openadr.queue_max_days, %s): updates are sent every %s instead", rrid, _duration(back),
                            _duration(self._telemetry.max_age), _duration(longest))
                back = longest
            origin = report_origin(spec)
            replaced = None
            if in_place and rrid not in self._requests:
                # asked with the report list offered again: the VTN requests anew (openleadr's replaces its requests
                # so). The stream of that granularity went on beside it, and the VTN got each interval twice: this
                # one takes it over from its place in the queue, as a request after a new registration does
                replaced = next((r.rrid for r in self._requests.values()
                                 if r.granularity == granularity and not r.final and r.rrid not in adopted), None)
                if replaced is not None:
                    self._stop_serving(replaced, park=True)
            window = _report_window(spec, granularity, origin, self._zone)
            self._adopt(rrid, granularity, back, window, origin, replaced)
            adopted.add(rrid)
        taken = len(requests) - len(refused) - len(over) - len(status_refused)
        self._asked_instead(instead + [f"request {r} (refused)" for r in refused])
        if refused and not self._cfg.telemetry:
            # the site set it off and the utility's VTN wants telemetry: one of the two is mistaken
            log.warning("VTN requested telemetry, and openadr.telemetry is false: refused with %d (%s); set "
                        "openadr.telemetry = true if the utility's programme takes telemetry", INVALID_ID,
                        "; ".join(refused))
        elif refused:
            log.warning("VTN requested telemetry the gateway never offered, refused with %d: %s",
                        INVALID_ID, "; ".join(refused))
        if status_refused:
            log.warning("VTN TELEMETRY_STATUS request refused with %d: %s", INVALID_ID, "; ".join(status_refused))
            refused += status_refused
        if over:
            log.warning("VTN report request %s refused with %d: %d standing telemetry requests are served already "
                        "(%s), the most served at once", ", ".join(over), INVALID_ID, MAX_STANDING,
                        ", ".join(self._requests))
            refused.append(f"{', '.join(over)}: {MAX_STANDING} standing requests are served already, the most "
                           "this VEN serves at once")
        request_id = payload.get("request_id") or (payload.get("response") or {}).get("request_id")
        response = _ei_response(request_id, "; ".join(refused) if refused else None)
        if refused and taken:
            # some taken: a 452 for the message said it failed, and a VTN took the updates that followed for
            # requests it thought refused (helper conformance40 W5). The pending list names those taken
            response = dict(response, response_code=200)
        await self._answer_report_message("oadrCreatedReport", response)
        for rrid in metadata:
            await self._register_reports_again(client, rrid)
        self._wake_delivery.set()

    async def _register_reports_again(self, client, rrid: str) -> None:
        """oadrRegisterReport in answer to the VTN's METADATA request `rrid` (a VTN that lost the VEN's report
        list asks for it so): each report carries that reportRequestID. It was refused 452 as never offered."""
        reports = []
        for report in client.reports:
            report = copy.copy(report)
            report.report_request_id, report.created_date_time = rrid, _utcnow()
            reports.append(report)
        msg = client._create_message("oadrRegisterReport", request_id=outils.generate_id(), ven_id=self.ven_id,
                                     reports=reports, report_request_id=rrid)
        rtype, answer = await client._perform_request("EiReport", msg)
        why = client.last_error or (client.refused and f"refused: {client.refused}")
        if rtype is None or why:
            # the session offers them again, with backoff, as after any refused offer (helper rev40)
            log.warning("the report list the VTN asked for (METADATA request %s) did not get through (%s): it is "
                        "offered again", rrid, why or "no answer")
            self._reports_offered, self.report_offer_error = False, why or "no answer to the report list"
            return
        log.info("VTN asked for the report list again (METADATA request %s): offered %s", rrid,
                 ", ".join(r.report_name for r in reports) or "none (openadr.telemetry is false)")
        # what it requests now; not the report list once more, each answer asking for the next
        requests = [r for r in answer.get("report_requests") or []
                    if (r.get("report_specifier") or {}).get("report_specifier_id") != "METADATA"]
        if requests:
            await self._create_report(dict(answer, report_requests=requests), in_place=True)

    def _adopt(self, rrid: str, granularity: timedelta, back: timedelta,
               window: tuple[datetime | None, datetime | None] = (None, None), origin: datetime = EPOCH,
               replaced: str | None = None) -> None:
        on_grid = origin == bucket_start(origin, granularity)   # the UTC grid of its granularity
        days = grid(granularity, origin, self._zone).zone   # set: the building's calendar days, 23 or 25 h at a change
        how = (f"intervals of {_duration(granularity)} (mean of the readings in each), "
               + ("" if on_grid and days is None else f"on the grid of its reportInterval's start {_iso(origin)}"
                  + (f" in days of {days}" if days is not None else "") + ", ")
               + (f"sent every {_duration(back)}" if back > granularity else "each sent as it completes")
               + (f", from {_iso(window[0])}" if window[0] is not None else "")
               + (f" until {_iso(window[1])}" if window[1] is not None else ""))
        req, others = self._requests.get(rrid), [r for r in self._requests if r != rrid]
        # the VTN's new request in place of one it cancelled with reportToFollow, that one's last update not yet out
        ending = next((r.rrid for r in self._requests.values() if r.final and r.granularity == granularity
                       and r.rrid != rrid), None) if req is None else None
        # one of its granularity ended with its update on the way: this one goes on after that update (_landed)
        landing = self._landing.rrid if self._landing is not None and self._landing.granularity == granularity else None
        u, self._unrequested = self._unrequested, None
        if u is not None and u.said:
            # the end of the warning's fault: whatever else this request's line would be
            log.info("VTN requested telemetry (request %s) after %s without a telemetry request: %s; the %d "
                     "reading(s) waiting go to it%s", rrid, span(asyncio.get_running_loop().time() - u.began), how,
                     self._telemetry.pending, "" if window[0] is None else " (those of its reportInterval)")
        elif replaced is not None:
            log.info("VTN requested telemetry (request %s) in place of %s, the reports offered again (METADATA): %s, "
                     "from the end of %s's last interval", rrid, replaced, how, replaced)
        elif ending is not None:
            log.info("VTN requested telemetry (request %s) in place of %s, cancelled: %s, after %s's last update",
                     rrid, ending, how, ending)
        elif req is None and others:
            # a settlement stream beside a real-time one, say: each gets its own intervals from the same readings
            log.info("VTN requested telemetry (request %s) beside %s: %s", rrid, ", ".join(others), how)
        elif req is None or (granularity, back, window, origin) != (req.granularity, req.back, req.window, req.origin):
            # each of an outage's registrations gets a request anew (a fresh reportRequestID), and so does each offer
            # made again while the VTN refuses the updates: only another one is news
            repeated = (self._outage is not None or self._report_refused is not None) and (
                granularity, back, window) == self._request_said
            log.log(logging.DEBUG if repeated else logging.INFO, "VTN requested telemetry (request %s): %s", rrid, how)
        if req is None:
            # A stream the VTN had before goes on after its last interval: after a new registration from its place in
            # the queue, held for it; after a cancel, past what it reported. Another, from the oldest reading queued.
            parked, reported = self._parked.pop(granularity, None), self._reported.get(granularity)
            left, now = self._telemetry.left_until, _utcnow()
            # times after now were dated by a clock that stepped back since: no place among this clock's readings
            reported, left = (t if t is not None and t <= now else None for t in (reported, left))
            req = self._requests[rrid] = Standing(rrid, granularity, back, sent_until=reported, left=left,
                                                  follows=ending or landing, undated=granularity in self._undated)
            if parked is not None:
                self._telemetry.rename_reader(parked, rrid)
                self._telemetry.leave_taken()   # what the last run sent and had yet to delete
            else:
                req.start = reported
                self._telemetry.add_reader(rrid)
        self._request_said = (granularity, back, window)
        req.granularity, req.back, req.window, req.origin, req.final = granularity, back, window, origin, False
        req.next_report = self._next_update(req, _utcnow())
        req.catch_up = True        # what is complete already (queued while nothing was requested) goes now

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
        self._update_failure = None if rtype is not None else client.last_error
        cancelled = served and rrid not in self._served()   # by the VTN, while the update was on the way
        if rtype is None and cancelled:
            # the VTN cancelled the request while its update was on the way: the fault of its updates ended with it
            # (_no_updates_to_fail), and this failure would have held "HTTP 500" in the status for good
            log.debug("an update of cancelled request %s failed (%s)", rrid, client.last_error)
        elif rtype is None:
            self._update_failed(client.last_error)
        elif self._updates_failing is not None:
            if self._updates_failing[2]:
                log.info("the VTN answers telemetry updates again, after %d failed", self._updates_failing[1])
                self._clear_error(self._updates_failing[3])
            self._updates_failing = None
        if rtype == "oadrUpdatedReport" and _response_code(payload) == 200:
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
                      client.refused or f"{rtype} code {_response_code(payload)}")
            return one_shot     # a one-shot is finished; a standing request's readings were not taken
        elif rtype is not None:
            # polls may go on fine meanwhile: this is the only place the operator hears of it
            self.last_error = (f"VTN refused the report: {client.refused}" if client.refused
                               else f"VTN answered the report with {rtype} code {_response_code(payload)}")
            if rrid in self._one_shots:
                self._end_one_shot(rrid)     # its one chance: the VTN does not want it
                log.warning("%s; the one-shot report %s is given up", self.last_error, rrid)
                return True
            # once a spell, and again for another kind of refusal: a VTN that forgot its requests refuses each new
            # one by its own id (452 "reportRequestID ... unknown"), a text that differs every time
            if self._report_refused is None or _fault_kind(self.last_error) != _fault_kind(self._report_refused):
                log.warning("%s; the samples stay queued, the reports are offered again so the VTN can request "
                            "them anew (backoff up to %g s)", self.last_error, self._cfg.retry_max_seconds)
            if self._report_refused is None:
                self._report_refused_since = _utcnow()
            self._report_refused = self.last_error
            self._report_refusals += 1
            self._offer_again(rrid)
        return False


def _whole_seconds(d: timedelta) -> timedelta:
    """Durations go on the wire in whole seconds: a period of 3.5 days is said and kept as P3DT12H, not less."""
    return timedelta(seconds=max(1, int(d.total_seconds())))


QUARTER_HOUR = timedelta(minutes=15)
NOW_SLACK = timedelta(minutes=2)     # a dtstart this close to the request's arrival is "now", not a clock time


def report_origin(spec: dict, now: datetime | None = None) -> datetime:
    """Where a request's interval grid is laid from: its reportInterval's start when that is on a quarter-hour and
    more than NOW_SLACK from `now`, else the UTC epoch (the UTC clock grid of its granularity).

    A VTN asking for hourly or daily intervals from a local midnight or hour wants them on its local clock: in
    Kolkata (+05:30) or Kathmandu (+05:45) the UTC hours straddle two of its billing hours, and a day from UTC
    midnight is two of its days. Every zone's local quarter-hours are UTC quarter-hours, so a start on one is a
    clock time the VTN chose; a start at any other time, or the time of the request itself (a VTN writing when it
    asked, rounded to the minute), gets the UTC grid, as intervals that divide 15 minutes always do."""
    start = ((spec.get("report_interval") or {}).get("dtstart"))
    now = _utcnow() if now is None else now
    if isinstance(start, datetime) and start.tzinfo is not None and bucket_start(start, QUARTER_HOUR) == start \
            and abs(start - now) > NOW_SLACK:
        return start
    return EPOCH


def _report_window(spec: dict, granularity: timedelta, origin: datetime = EPOCH,
                   zone: tzinfo | None = None) -> tuple[datetime | None, datetime | None]:
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
        on = grid(granularity, origin, zone)
        # whole days of a grid of local days are as many local days too (RFC 5545's nominal days): P30D from 1 March
        # ends at a midnight, not an hour into 31 March's day (one more interval) once summer time began
        end = (start + length if on.zone is None or length % DAY
               else (start.astimezone(on.zone) + length).astimezone(UTC))
        return on.start(start), end if on.start(end) == end else on.next(end)
    except OverflowError:   # past the year 9999: "until further notice" written as a duration (P9999Y)
        return None, None
