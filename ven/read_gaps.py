"""The time the meter was not read, for the VTN: while the gateway was not running (before a new install's first read
too), and while a wall clock stepped ahead between two reads. Noted in the telemetry queue, so the intervals it falls
in count the poll ticks missed as failed reads (docs/openadr.md "Data quality"), with the wall clock's faults at a
start (not set yet, behind the run before) told apart from a stop."""
from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Callable

from bacnet_api.settle import span

from .clock_sync import SyncWatch
from .telemetry import TelemetryQueue
from .wallclock import CLOCK_STEP_S, clock_suspect

log = logging.getLogger(__name__)

# where the time before a new install's first read begins, for the gap that counts its ticks as missed: before any
# interval a request can lay, however long its granularity
NEVER_READ = datetime(1970, 1, 1, tzinfo=timezone.utc)


class ReadGaps:
    def __init__(self, telemetry: TelemetryQueue, clock_sync: SyncWatch, poll_seconds: float,
                 hold: Callable[[datetime], None], release: Callable[[], None]) -> None:
        """hold(last): the VEN holds this run's readings until the clock passes the run before's last read;
        release(): it reports those it held."""
        self._telemetry, self.clock_sync, self._poll_seconds = telemetry, clock_sync, poll_seconds
        self._hold, self._release = hold, release
        # the gap this start ended (note_not_running): the last read before it, and the start by the wall clock and
        # by the monotonic one, to re-date the start when the wall clock steps (NTP at boot)
        self.resumed: tuple[datetime, datetime, float] | None = None
        self._last_read: tuple[datetime, float] | None = None    # the meter's last reported read: its time, monotonic
        self._never_read = False    # storage.path holds no read before this start (a new install): see note_not_running

    def on_reading(self, read_at: datetime, asked_at: datetime | None = None) -> None:
        """Each meter reading, good or failed (`asked_at`: the poll tick it was asked at, where a failed read's
        missed ticks begin): the first after a start whose clock stepped re-dates its gap; the first of a new install
        ends the time before it."""
        if self._never_read and not clock_suspect(read_at):
            self._never_read = False
            self._telemetry.note_gap(NEVER_READ, min(read_at, asked_at or read_at), self._poll_seconds)
        if self.resumed is not None:
            self._redate(*self.resumed, read_at=read_at)

    def note_not_running(self) -> None:
        # The meter was not read while the gateway was not running: the intervals that began before the stop (or
        # crash) and the one the first read falls in would go to the VTN as if read throughout, and the utility
        # settles on them. Their missed ticks count as failed reads (docs/openadr.md "Data quality").
        now, last = datetime.now(timezone.utc), self._telemetry.last_read()
        if last is None:
            # A new install (or a file whose every read the VTN took, then a crash) has no read before: the first
            # interval read went to the VTN unmarked as the mean of the part after the first read, while the same
            # interval after a restart is marked. For a utility settling on it the two are alike, a mean of part of
            # the interval's time: its ticks before the first read count as missed too (on_reading), once the clock
            # is set (the readings a clock not set dates are not reported, so the gap runs to the first that is)
            self._never_read = True
            return
        self.resumed = (last, now, time.monotonic())
        # A clock not yet set (a box without a battery clock boots in the past) or behind the last read (one whose
        # time was saved before a power cut) would make the gap a span of years, or none. Its readings are not
        # reported, and the gap runs to the first that is, once NTP has set the clock (_redate)
        if self._clock_unset_at_start():
            if not self.run_before_was_ahead(last, now):
                self._hold(last)
        elif self._telemetry.note_gap(last, now, self._poll_seconds):
            self._say_not_read(last, now)

    def note_reported(self, read_at: datetime) -> None:
        """A wall clock stepped ahead between two reads cuts the interval the one before fell in, and the one after
        begins in, short of their reads: the ticks it skipped count as missed, as while not running, so the VTN
        gets them marked rather than as means of whole intervals."""
        mono, last = time.monotonic(), self._last_read     # reported readings only: not those a wrong clock dated
        self._last_read = (read_at, mono)
        if last is None:
            return
        step = (read_at - last[0]).total_seconds() - (mono - last[1])
        if step > CLOCK_STEP_S:
            self._telemetry.note_gap(last[0], read_at, self._poll_seconds)
        elif step < -CLOCK_STEP_S:
            # back again (a wrong time source put right): a gap noted at the step ahead ran to a time of the clock
            # that was ahead. The readings now dated in it are real ones: counted as missed on top, they marked
            # whole intervals Sub Normal (helper ledger41). It ends where the readings begin again.
            self._telemetry.end_gaps_at(read_at)
            self._telemetry.mark_ahead(read_at)

    def run_before_was_ahead(self, last: datetime, now: datetime) -> bool:
        """Whether this clock, behind the run before's last read, is the right one: the kernel says NTP keeps it
        synchronized, so that run's clock was ahead (a box without NTP that ran fast, put right since). Holding this
        run's readings until the clock passed that read lost them for as long as it had been ahead; they are
        reported as read, and the time not running, which that run's clock cannot tell, is not counted."""
        sync = self.clock_sync.last
        if sync is None or not sync.synchronized or clock_suspect(now) or now > last:
            return False
        self.resumed = None
        self._release()
        dropped = self._telemetry.drop_after(now)
        log.warning("the meter's last read before this start (%s) is %s ahead of this clock, which NTP keeps "
                    "synchronized: the run before's clock was ahead, and its readings went to the VTN dated up to that "
                    "much after they were read%s; this run's readings are reported as read",
                    last.isoformat(timespec="seconds"), span((last - now).total_seconds()),
                    f" ({dropped} not yet reported, dated after now, are dropped: their intervals are not theirs)"
                    if dropped else "")
        return True

    def _clock_unset_at_start(self) -> bool:
        last, said, _ = self.resumed
        return clock_suspect(said) or said < last

    def _say_not_read(self, last: datetime, start: datetime, clock_set: bool = False) -> None:
        log.info("meter not read for %s %s (last read %s): the report intervals it falls in count the poll ticks "
                 "missed as failed reads", span((start - last).total_seconds()),
                 "until the first reading reported after this start, on a clock behind or not set" if clock_set else
                 "before this start", last.isoformat(timespec="seconds"))

    def _redate(self, last: datetime, said: datetime, mono: float, read_at: datetime) -> None:
        # A box whose clock was fast at boot (a battery clock that drifted, or one kept in local time) starts the
        # gateway before NTP puts the clock back: the gap noted at start ran to that fast time, and every interval
        # read after the step until then went to the VTN marked. The start by the clock as it is now ends the gap.
        # One the clock was not set at (note_not_running) ends at the first reading reported (VtnClient
        # .record_sample): the readings before it are not, and for the VTN the meter was not read.
        now = datetime.now(timezone.utc)
        unset = self._clock_unset_at_start()
        if unset:
            if clock_suspect(read_at) or read_at <= last:
                return
            start, mono = read_at, time.monotonic() - max(0.0, (now - read_at).total_seconds())
        else:
            start = now - timedelta(seconds=time.monotonic() - mono)
            if clock_suspect(start) or abs((start - said).total_seconds()) <= CLOCK_STEP_S:
                return
        self.resumed = (last, start, mono)
        if self._telemetry.note_gap(last, start, self._poll_seconds) and unset:
            self._say_not_read(last, start, clock_set=True)
