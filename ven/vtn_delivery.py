"""Telemetry delivery, mixed into VtnClient: each standing request's complete intervals, read from the queue when
its update is due (a backlog at once, BATCH per update), oldest first, and the one-shots' latest reading. A task of
its own; the requests are ven/vtn_reports.py's, one update and its answer ven/vtn_updates.py's."""
from __future__ import annotations

import asyncio
import itertools
import logging
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from bacnet_api.settle import span

from .report_intervals import Grid, Interval, bucket_start, complete_intervals, grid, report_period
from .tasks import woken
from .vtn_reports import BATCH, Standing
from .vtn_transport import wire_duration, iso_utc, interval_length, utcnow

log = logging.getLogger("ven.vtn")

MAX_PEEK = 20_000               # samples read at once to fill a batch (a few MB at most)
# Readings dated this much before the last interval reported mean the wall clock stepped back;
# closer ones are late readings of an interval already sent, and are dropped.
CLOCK_STEP = timedelta(seconds=60)


class VtnDelivery:
    """VtnClient's telemetry delivery; the state is VtnClient's."""

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
                now = utcnow()
                if req.catch_up or now >= self._due(req, now):
                    final = req.final
                    if await self._send_complete(req, now):
                        # cancelled with reportToFollow while this update, made before, was on its way: the
                        # intervals complete since go in one more, the last (they missed it, and the request ended)
                        req.catch_up = req.final and not final
                        req.next_report = self._next_update(req, now)
                        end = req.window[1]
                        if final:
                            log.info("last TELEMETRY_USAGE update sent for the cancelled request %s; %s", req.rrid,
                                     self._then(req.rrid, "readings queue until the VTN asks again"))
                            self._stop_serving(req.rrid)
                        elif end is not None and now >= end:
                            log.info("TELEMETRY_USAGE request %s ended: its reportInterval ended at %s; %s", req.rrid,
                                     iso_utc(end), self._then(req.rrid, "readings queue until the VTN asks again"))
                            self._stop_serving(req.rrid)
                    else:
                        req.catch_up = True        # once the backoff has passed, whatever is complete by then
                        failed = True
                        if req.backlog_first is not None:
                            # its first batch went, the next did not (the VTN away again, a stop next): said now,
                            # not after the outage's lines as if sent then, nor never
                            log.info(*req.backlog_first)
                            req.backlog_first = None
            self._retry_at_poll = failed
            if failed:
                timeout = backoff
                backoff = min(backoff * 2, self._cfg.retry_max_seconds)
            else:
                backoff = self._cfg.retry_min_seconds
                now = utcnow()
                timeout = (max(0.0, (min(self._due(r, now) for r in self._requests.values()) - now).total_seconds())
                           if self._live and self._requests else None)
            for req in self._requests.values():
                if req.backlog and not req.catch_up:
                    # the VTN fault still open (answering, not yet steadily) and back since it answered: its end line
                    # says what went, once, not each answered stretch of a VTN that flaps (the first is news)
                    folded = (o := self._outage) is not None and o.relapses > 0
                    if o is not None:
                        o.delivered += req.backlog
                        o.folded = o.folded or folded
                        o.delivered_span = (min(o.delivered_span[0], req.backlog_span[0]) if o.delivered_span
                                            else req.backlog_span[0], req.backlog_span[1])
                    log.log(logging.DEBUG if folded else logging.INFO,
                            "queued telemetry delivered: %d interval(s) of %s from %s to %s with their original "
                            "times (request %s)", req.backlog, wire_duration(req.granularity),
                            iso_utc(req.backlog_span[0]), iso_utc(req.backlog_span[1]), req.rrid)
                    req.backlog, req.backlog_span, req.backlog_first = 0, None, None
            self._delivery_bug.worked()     # a pass to its end
            await woken(self._wake_delivery, timeout)

    def _backlog_at_stop(self) -> None:
        """A stop in the middle of a backlog (an update of it on its way, not landed within the stop's wait): the
        first batch's line, held back for a second batch, and the whole backlog's line, said once it is all sent,
        were never said, and nothing told the operator whether any of the backlog had reached the VTN."""
        for req in self._requests.values():
            if not req.backlog:
                continue
            # one line: the first batch's alone, if it was the only one, has this range
            log.info("queued telemetry: %d interval(s) of %s from %s to %s sent before the stop (request %s); the "
                     "rest of the backlog is sent after the next start", req.backlog, wire_duration(req.granularity),
                     iso_utc(req.backlog_span[0]), iso_utc(req.backlog_span[1]), req.rrid)
            req.backlog, req.backlog_span, req.backlog_first = 0, None, None

    def _due(self, req: Standing, now: datetime) -> datetime:
        """req.next_report, brought back to the grid of `now` when the wall clock stepped back (NTP putting a
        fast box right) since it was set, even while its update was on the way: waiting for the time the clock
        ahead named stopped telemetry for as long as the step."""
        req.next_report = min(req.next_report, self._next_update(req, now))
        return req.next_report

    def _next_update(self, req: Standing, now: datetime) -> datetime:
        """When the next update is due: on the reportBackDuration grid, not before the request's
        reportInterval has a whole interval, and at its end at the latest."""
        first, end = req.window
        due = self._grid(req, report_period(req.granularity, req.back)).next(max(now, first) if first is not None
                                                                             else now)
        return min(due, end) if end is not None and end > now else due

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
                     "reported%s", dropped, iso_utc(first), req.rrid,
                     "" if len(self._requests) < 2 else " under it (the other requests served still report them)")

    def _grid(self, req: Standing, step: timedelta | None = None) -> Grid:
        """The grid of req's intervals (or of `step` from its origin): the building's days for whole days from one
        of its midnights (report_intervals.grid)."""
        return grid(step or req.granularity, req.origin, self._zone)

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
                          "sent again under request %s", skipped, iso_utc(req.start), wire_duration(req.granularity),
                          req.rrid)
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
                            len(due), iso_utc(max(x.ts for x in due)), req.rrid)
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
                                x.ts for x in late), iso_utc(min(x.ts for x in late)))
                req.sent_until = None
                continue
            if late:
                # one WARNING for a spell of them (a clock put back 45 s was 21 at a 2 s cadence), one line at its end
                log.log(logging.DEBUG if req.late_dropped else logging.WARNING,
                        "%d telemetry sample(s) dated before %s, the end of the last interval reported (the clock "
                        "stepped back?): dropped, as their interval cannot be sent twice; more are said at their end",
                        len(late), iso_utc(req.sent_until))
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
                         iso_utc(cut[0].start), interval_length(cut[0].duration), req.rrid, iso_utc(left),
                         len(cut[0].samples), cut[0].quality)
            # one line per update is a healthy gateway's whole log: only a backlog is news, said when its first
            # batch goes and when it is all delivered, not once per batch. An update of the intervals one
            # reportBackDuration holds (15-minute intervals sent hourly: four) is no backlog.
            routine = max(1, int(req.back / req.granularity)) if req.back and req.granularity else 1
            # one more than routine is a link slower than the interval (a round trip of 12 s at 10 s intervals): no news
            news = len(intervals) > routine + 1 and not (req.catch_up and req.backlog)
            line = ("TELEMETRY_USAGE: %d interval(s) of %s from %s to %s sent (request %s)", len(intervals),
                    wire_duration(req.granularity), iso_utc(intervals[0].start), iso_utc(intervals[-1].end), req.rrid)
            backlog = req.catch_up and (len(intervals) > routine + 1 or req.backlog)
            if backlog and not req.backlog:
                # a backlog's first batch: a backlog sent in one batch is the "delivered" line's news alone, said
                # with its range; this line is said once a second batch follows (a long backlog under way)
                req.backlog_first = line
            elif backlog and req.backlog_first is not None:
                log.info(*req.backlog_first)
                req.backlog_first = None
            log.log(logging.INFO if news and not backlog else logging.DEBUG, *line)
            if backlog:
                req.backlog_span = ((req.backlog_span or (intervals[0].start,))[0], intervals[-1].end)
                req.backlog += len(intervals)
        return False

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
                        iso_utc(req.first_sent))
            self._telemetry.ack(sent, delivered=False, reader=req.rrid, lost=True)
        if len(sent) < len(late):
            req.sent_until = None   # the intervals before the start's: sent next, then the ones after it go on
        return True

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
                     rrid, sample.kw, iso_utc(sample.ts))
        return True
