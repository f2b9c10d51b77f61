"""The gateway's own event schedule: turns stored events into ADR-Event-Level/Active/Start-Minutes.

openleadr reports an event once, on arrival; nothing happens at interval starts. This coordinator
owns every known event, persists each change before publishing it, and runs one timer task that
wakes exactly at the next interval boundary (or minute tick of the start countdown) and publishes
the new state. Opted-out, cancelled and test events never drive the points.
"""
from __future__ import annotations

import asyncio
import bisect
import logging
import math
import random
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable, Mapping

from bacnet_api.bug_guard import BugGuard
from bacnet_api.settle import span

from .clock_set import ClockSetWatch
from .events import OPT_IN, OPT_OUT, Event, enrolled, with_opt
from .tasks import at_most as bounded, cancel_and_wait
from .storage import Storage
from .wallclock import PRUNE_HOLD_S, StepWatch, clock_suspect

log = logging.getLogger(__name__)

_MAX_SLEEP = 30.0   # re-evaluate at least this often
BUG_RETRY_S = 1.0   # a pass that failed (a bug) is run again this soon: an event's boundaries are to the second
# A wait for the next boundary goes by the monotonic clock: a wall clock stepped meanwhile (NTP) left the points
# showing an event the clock had put over, or not begun, for up to _MAX_SLEEP. The kernel says when the clock is set
# (clock_set.py), and the schedule looks again then; without that word (another OS, a clock given to the schedule)
# the wall clock is glanced at this often, and a step of more than STEP_GLANCE_S (a slew moves it by milliseconds)
# re-evaluates at once.
STEP_GLANCE_S = 1.0
# Ended events stay in storage.path for the history as long as /api/history reaches back
# (http_api.MAX_HISTORY_HOURS): a building owner settles a program's month with the utility from them.
KEEP_HISTORY = timedelta(days=35)
# the eventStatus values a VTN lists an event with as time moves it along (a cancellation is a modification)
LISTED_STATUSES = ("far", "near", "active", "completed")
# a VTN status this far from what the event's times say is said (a listing made just before a start may arrive after)
STATUS_SLACK = timedelta(minutes=1)
UNLISTED = "no longer listed by the VTN"    # why an implied cancellation ends an event, as its line says
_SORT_EVERY_S = 600.0
# More events than this gone from the VTN's list at once are one line, not one each (2,000 made 2,000 lines)
MANY_EVENTS = 10
# Pruning goes by the wall clock: a box that boots with its clock a year ahead, or a step ahead, would delete
# every event. As the forecaster's, it waits an hour after start and wallclock.PRUNE_HOLD_S after a step.
_PRUNE_HOLD_START_S = 3600.0


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class ScheduleState:
    level: float
    active: bool
    start_minutes: float        # whole minutes until the next event starts (rounded up); 0 while active; -1 if none
    active_event_ids: tuple[str, ...]
    opted_out: bool
    level_event_id: str | None = None  # the event whose level is published (priority decides overlaps)


VTN_SYNC_WAIT_S = 5.0    # see EventSchedule.synced


class EventSchedule:
    def __init__(self, storage: Storage, on_change: Callable[[ScheduleState], None],
                 clock: Callable[[], datetime] = utcnow, keep_recent: timedelta = timedelta(hours=24),
                 keep_history: timedelta = KEEP_HISTORY, programmes: frozenset[str] = frozenset()):
        """`programmes`: openadr.market_contexts; a stored event of another is not followed from the start."""
        self._storage = storage
        self._programmes = programmes
        self._on_change = on_change
        self._clock = clock
        self._keep_recent = keep_recent
        self._keep_history = max(keep_history, keep_recent)
        # live, pending and recent (over for less than keep_recent): what the timers, the points and
        # /api/status go through
        self._events: dict[str, Event] = {}
        # over for longer, kept for /api/history: out of their way, so a month of a daily program costs them nothing
        self._past: dict[str, Event] = {}
        self._prune_from = time.monotonic() + _PRUNE_HOLD_START_S
        self._opted_out = False
        self._last: ScheduleState | None = None
        self._wake: asyncio.Event | None = None
        self._clock_set: ClockSetWatch | None = None
        self._task: asyncio.Task | None = None
        self._pass_bug = BugGuard(log, "event schedule's timer", f"run again every {BUG_RETRY_S:g} s")
        self._change_bug = BugGuard(log, "event schedule's change callback (the points)",
                                   "called again at the timer's next pass")
        # each of the timer's jobs on its own: a lasting bug in one (the judging of unlisted events, say) skipped the
        # others at every pass (a storage.path that opened late never adopted, nothing purged)
        self._step_bugs = {step: BugGuard(log, f"event schedule's {step}", "tried again at the timer's next pass")
                           for step in ("judging of unlisted events", "storage flush", "adoption of a late file",
                                        "sort")}
        self.bugs = (self._pass_bug, self._change_bug, *self._step_bugs.values())
        self._loaded = False
        self._unjudged: set[str] = set()   # unlisted by the VTN while the wall clock was not set
        self._ended_by_vtn: set[str] = set()  # listed completed, then no longer listed, still running here
        # (event, VTN status) whose disagreement with its times was said
        self._status_odd: set[tuple[str, str]] = set()

    @property
    def storage(self) -> Storage:
        """The file the events are kept in, where VtnClient keeps its opts too."""
        return self._storage

    # -- lifecycle ---------------------------------------------------------------------------

    def load(self) -> None:
        """Read persisted events (idempotent); `start` does this, exposed for synchronous wiring."""
        if self._loaded:
            return
        for ev in self._storage.load_events():
            if ev.for_this_ven and not enrolled(ev.market_context, self._programmes):
                # a programme the site left while the gateway was stopped: shed for it until the VTN listed the event
                # again, which it does only once it answers (helper verify41)
                log.info("event %s is of market context %r, not one of openadr.market_contexts now: no longer "
                         "followed, answered optOut when the VTN lists it", ev.event_id, ev.market_context)
                ev = with_opt(replace(ev, for_this_ven=False), OPT_OUT)
            self._events[ev.event_id] = ev
        self._loaded = True
        now = self._clock()
        stamps = [t for ev in self._events.values() for t in _stamps(ev)]
        # a clock not set yet (2020 at boot) would take a month of ended events for ones to come, and the BAS's
        # ADR-Opt-Out would answer them all: the file's latest time stamp is a time that has been
        self._purge(max([now, *stamps]) if clock_suspect(now) else now, prune=False)
        # Pruned at start too, behind the file's newest time stamp: safe with a clock far ahead, and a gateway
        # restarted more often than hourly (the timer's first prune) still prunes.
        newest = max((t for t in stamps if t <= now), default=None)
        if newest is not None:
            self._prune(newest)
        if self._events or self._past:
            log.info("restored %d event(s) from storage%s", len(self._events) + len(self._past),
                     f" ({len(self._past)} of them over for more than {span(self._keep_recent.total_seconds())}, "
                     "kept for the history)" if self._past else "")

    async def start(self) -> None:
        self.load()
        self._wake = asyncio.Event()
        # a write failing between two wakes: the loop's next sleep is cut to storage.retry_seconds, not up to 30 s
        # later (a worker thread writes the events too)
        loop, wake = asyncio.get_running_loop(), self._wake
        self._storage.on_write_failed = lambda: loop.call_soon_threadsafe(wake.set)
        if self._clock is utcnow and self._clock_set is None:  # the kernel's word is of its clock, not one given
            self._clock_set = ClockSetWatch.open(wake.set)
        now = self._clock()
        self._publish(now)
        # a step from here on is one the load's sorting went by
        self._task = asyncio.create_task(self._run(StepWatch(now.timestamp())), name="event-schedule")

    async def stop(self) -> None:
        self._storage.on_write_failed = None
        await cancel_and_wait(self._task)
        self._task = None
        if self._clock_set is not None:
            self._clock_set.close()
            self._clock_set = None

    # -- changes -----------------------------------------------------------------------------

    def get(self, event_id: str) -> Event | None:
        return self._events.get(event_id) or self._past.get(event_id)

    @property
    def opted_out(self) -> bool:
        return self._opted_out

    def upsert(self, event: Event) -> Event | None:
        """Store a new or changed event; the copy stored, or None when the change was not taken."""
        old = self.get(event.event_id)
        if old is not None and event.modification_number < old.modification_number:
            # a VTN restarted without its events and the event entered again, a stale replica, a replayed message
            log.info("event %s: the VTN lists modification %d, older than the %d followed here: %d is followed still; "
                     "the site's answers name %d, as the VTN lists it", event.event_id, event.modification_number,
                     old.modification_number, old.modification_number, event.modification_number)
            return None
        if (old is not None and old.cancelled and not old.unlisted
                and event.modification_number == old.modification_number):
            return None
        if old is not None:  # what it already drove stays in the history as it ran
            now = self._clock()
            # the answers it had stay in its log; a different one (back from an implied cancellation
            # under another ADR-Opt-Out) takes effect now
            event = replace(event, opt=old.opt, opt_changes=old.opt_log).opted(event.opt, now)
            if event.cancelled:
                # a cancellation stored by a version that kept no time for it stays undated, not "now"
                stopped = event.cancelled_at or old.cancelled_at or (None if old.cancelled else _termination(old, now))
                event = replace(event, cancelled_at=stopped,
                                modified_at=old.modified_at, ran_before=old.ran_before)
            elif event.modification_number > old.modification_number and old.start <= now:
                event = replace(event, modified_at=now, ran_before=old.ran_until(now))
            else:
                event = replace(event, modified_at=old.modified_at, ran_before=old.ran_before)
        self._storage.save_event(event)
        self._place(event, self._clock())
        self._changed()
        return event

    def cancel(self, event_id: str, unlisted: bool = False) -> None:
        ev = self._events.get(event_id)
        if ev is None or ev.cancelled:
            return
        ev = replace(ev, status="cancelled", unlisted=unlisted, cancelled_at=_termination(ev, self._clock()))
        self._storage.save_event(ev)
        self._events[event_id] = ev
        self._changed()

    def forget(self, event_id: str) -> None:
        if self._events.pop(event_id, None) is not None or self._past.pop(event_id, None) is not None:
            self._storage.delete_event(event_id)
            self._changed()

    def retain_only(self, event_ids: Iterable[str], why: str = UNLISTED) -> list[str]:
        """Implied cancellation: events the VTN no longer lists (and that have not ended) go.

        Ended by the VTN's clock: a randomized event still runs here for its offset after the VTN
        has ended it and may stop listing it. While the wall clock is not set (before CLOCK_FLOOR),
        "has not ended" cannot be judged: an event that ran would be cancelled at a date years off,
        and purged once the clock is right. Those wait, and are judged once the clock is set."""
        keep = set(event_ids)
        now = self._clock()
        unlisted = {eid for eid, ev in self._events.items() if eid not in keep and not ev.cancelled}
        if clock_suspect(now):
            if unlisted - self._unjudged:
                log.info("event(s) %s no longer listed by the VTN; the wall clock reads %s, before this version "
                         "was built, so whether they ended is judged once it is set",
                         ", ".join(sorted(unlisted)), now.isoformat(timespec="seconds"))
            self._unjudged = unlisted
            return []
        self._unjudged = set()
        return self._cancel_unlisted(unlisted, now, why)

    def vtn_statuses(self, statuses: Mapping[str, str | None]) -> None:
        """The eventStatus the VTN lists each event with now, kept with the event: openleadr passes an unchanged
        event on only when it first sees it, so a listing that only moves it along (far, near, active) reached
        nothing, and the status read `near` while the VTN said `active` (helper conformance40 C1). One the VTN says
        has completed is over by its clock: its dropping it from the list afterwards is its end, not an implied
        cancellation. A cancellation comes as a modification, and is the schedule's own."""
        now = self._clock()
        self._status_odd = {said for said in self._status_odd if said[0] in self._events}   # of events still kept
        for eid, status in statuses.items():
            ev = self._events.get(eid)
            if ev is None or ev.cancelled or status not in LISTED_STATUSES:
                continue
            if ev.status != status:
                ev = replace(ev, status=status)
                self._storage.save_event(ev)
                self._events[eid] = ev
            self._say_if_odd(ev, status, now)

    def _say_if_odd(self, ev: Event, status: str, now: datetime) -> None:
        """One line for an event whose VTN status disagrees with its times, which decide here: a technician sees
        the site shed while the utility's portal says the event is over, or not shed while it says active (helper
        conformance40 C2)."""
        if clock_suspect(now) or (ev.event_id, status) in self._status_odd:
            return
        # the VTN's own times: a randomized event starts and ends later here (each one was said, helper rev40)
        begins, ends = ev.start - ev.start_offset, ev.stop - ev.start_offset
        if status == "completed" and now < ends - STATUS_SLACK:
            here = f"its times run until {ev.stop.isoformat(timespec='seconds')}: it runs to its end here"
        elif status == "active" and now < begins - STATUS_SLACK:
            here = f"it starts at {begins.isoformat(timespec='seconds')}: it starts then here"
        elif status in ("far", "near") and ev.start + STATUS_SLACK <= now < ev.stop:
            here = f"it started at {ev.start.isoformat(timespec='seconds')}: it runs here"
        elif status in ("far", "near", "active") and now >= max(ev.stop, ends + STATUS_SLACK):
            # a VTN clock behind this one: its events come over already here, answered optIn and never shed, and
            # "(over already: it drives nothing)" alone did not say why
            here = f"its times ended at {ev.stop.isoformat(timespec='seconds')}: it is over here"
        else:
            return
        self._status_odd.add((ev.event_id, status))
        log.info("event %s: the VTN lists it %s, while %s (its clock and this one's may differ)", ev.event_id, status,
                 here)

    def _cancel_unlisted(self, unlisted: Iterable[str], now: datetime, why: str) -> list[str]:
        live = [eid for eid in sorted(unlisted) if (ev := self._events.get(eid)) is not None
                and not ev.cancelled and now < ev.end - ev.start_offset]
        # A VTN whose clock runs ahead of this one ends an event, and stops listing it, before it ends
        # here: once it has said "completed", the event runs to its end by this clock (what the BAS was told).
        over = [eid for eid in live if self._events[eid].status == "completed"]
        for eid in set(over) - self._ended_by_vtn:
            log.info("event %s, listed completed by the VTN, is no longer listed: it runs to its end here (%s); "
                     "the VTN's clock may be ahead of this one", eid,
                     self._events[eid].end.isoformat(timespec="seconds"))
        self._ended_by_vtn = set(over)
        gone = [eid for eid in live if eid not in over]
        plain = []
        for eid in gone:
            self.cancel(eid, unlisted=True)
            ev = self._events[eid]
            # not stop > now alone, which holds for every event (the cancellation's stop is taken a moment after
            # `now`): one not running yet stops then too (_termination), not at random
            if ev.drives_points and ev.start_after > timedelta(0) and ev.start <= now < ev.stop:
                log.info("event %s %s: treated as cancelled; its level ends at %s, at random "
                         "within its startafter of %g s", eid, why, ev.stop.isoformat(timespec="seconds"),
                         ev.start_after.total_seconds())
            else:
                plain.append(eid)
        if len(plain) > MANY_EVENTS:
            # a VTN that dropped its whole list (its database reset, a day-ahead program's hundreds): one happening
            log.info("%d events %s: treated as cancelled (%s, ... %s)", len(plain), why,
                     ", ".join(plain[:MANY_EVENTS // 2]), ", ".join(plain[-2:]))
        else:
            for eid in plain:
                log.info("event %s %s: treated as cancelled", eid, why)
        return gone

    def _judge_unlisted(self, now: datetime) -> None:
        """The wall clock is set now: events the VTN stopped listing meanwhile are judged by it."""
        if not self._unjudged or clock_suspect(now):
            return
        unlisted, self._unjudged = self._unjudged, set()
        gone = self._cancel_unlisted(unlisted, now, UNLISTED)
        over = sorted(set(unlisted) - set(gone))
        if over:
            log.info("event(s) %s, no longer listed by the VTN while the wall clock was not set, had ended: kept "
                     "as they ran", ", ".join(over))

    def set_opt_out(self, opted_out: bool) -> list[Event]:
        """Opt out of the active and every pending event, or back in to them: the point is the BAS's
        switch, and an event without an end would otherwise stay out until the VTN cancels it.

        Returns the events whose answer changed, so the caller can tell the VTN. Safe to call
        before `start` (e.g. with the point's state at boot).
        """
        self.load()
        self._opted_out = opted_out
        now = self._clock()
        changed = []
        for ev in list(self._events.values()):
            if opted_out and ev.cancelled and ev.cancelled_at is not None and ev.cancelled_at > now:
                # a randomized cancellation still running down: the site stops now, and the VTN, which
                # cancelled it, hears nothing more of it
                ev = replace(ev, cancelled_at=now)
                self._events[ev.event_id] = ev
                self._storage.save_events_soon([ev])
                continue
            if ev.cancelled or ev.test_event or not ev.for_this_ven or not ev.has_simple:
                continue    # none of these is the BAS's to answer: they drive nothing here either way
            if ev.phase(now) not in ("far", "near", "active"):
                continue
            opt = OPT_OUT if opted_out else OPT_IN
            if ev.opt == opt:
                continue
            ev = ev.opted(opt, now)
            self._events[ev.event_id] = ev
            changed.append(ev)
        # off the loop: the points change now, the file a few ms later (the BAS's write is in storage.path
        # already, and a restart opts out again from it)
        self._storage.save_events_soon(changed)
        self._changed()
        return changed

    async def synced(self, at_most: float = VTN_SYNC_WAIT_S) -> None:
        """Every change made so far is on the disk (Storage.synced): before the VTN hears an answer. A disk that
        takes longer than `at_most` (a dying card) has the answer go meanwhile: held longer, the VEN would stop
        polling, and the utility's next events with it."""
        await bounded(self._storage.synced(), at_most)

    # -- views -------------------------------------------------------------------------------

    def state(self, at: datetime | None = None) -> ScheduleState:
        """Overlapping events: the level of the highest-priority one in effect (ei:priority 1 first,
        0 = none last); among events of equal priority, the highest level."""
        now = at or self._clock()
        level, rank, winner = None, None, None
        active_ids = []
        next_start = None
        for ev in self._events.values():
            if not ev.drives_points:
                continue
            if ev.start <= now < ev.stop:
                active_ids.append(ev.event_id)
                lv = ev.simple_level(now)
                if lv is not None and (rank is None or ev.rank < rank or (ev.rank == rank and lv > level)):
                    level, rank, winner = lv, ev.rank, ev.event_id
            elif now < ev.start < ev.stop and (next_start is None or ev.start < next_start):
                next_start = ev.start
        if active_ids:
            minutes = 0.0
        elif next_start is not None:
            minutes = float(math.ceil((next_start - now).total_seconds() / 60.0))
        else:
            minutes = -1.0
        return ScheduleState(level=float(level or 0.0), active=bool(active_ids),
                             start_minutes=minutes, active_event_ids=tuple(sorted(active_ids)),
                             opted_out=self._opted_out, level_event_id=winner)

    def events(self) -> list[dict]:
        """Every known event for the status API, grouped active/pending/recent, with all signals."""
        now = self._clock()
        winner = self.state(now).level_event_id
        out = []
        for ev in sorted(self._events.values(), key=lambda e: (e.start, e.event_id)):
            d = ev.describe(now)
            d["sets_level"] = ev.event_id == winner  # false for an active event another one overrides
            phase = d["status"]
            d["group"] = ("active" if phase == "active" else
                          "pending" if phase in ("far", "near") else "recent")
            out.append(d)
        return out

    def history_events(self, since: datetime) -> list[Event]:
        """Every kept event not over before `since`, oldest first: what /api/history shades."""
        return sorted((ev for evs in (self._past, self._events) for ev in evs.values() if over(ev) >= since),
                      key=lambda e: (e.start, e.event_id))

    # -- timer -------------------------------------------------------------------------------

    def _changed(self) -> None:
        self._publish(self._clock())
        if self._wake is not None:
            self._wake.set()

    def _publish(self, at: datetime) -> None:
        st = self.state(at)
        if st != self._last:
            with self._change_bug.guard():
                self._on_change(st)
                self._last = st     # not before: points a failed callback left unset are set at its next pass

    def _next_wake(self, now: datetime) -> datetime | None:
        best = None
        next_start = None
        for ev in self._events.values():
            if not ev.drives_points:
                continue
            bounds = ev.boundaries()
            i = bisect.bisect_right(bounds, now)
            if i < len(bounds) and (best is None or bounds[i] < best):
                best = bounds[i]
            if now < ev.start < ev.stop and (next_start is None or ev.start < next_start):
                next_start = ev.start
        if next_start is not None:
            # The countdown changes when the time left crosses a whole minute.
            left = (next_start - now).total_seconds()
            k = math.ceil(left / 60.0) - 1
            tick = next_start - timedelta(minutes=k)
            if tick <= now:
                tick += timedelta(minutes=1)
            if best is None or tick < best:
                best = tick
        return best

    def _adopt(self, found: list[Event], now: datetime) -> None:
        """Events of a storage file that opened only after the start: restored as `load` would have."""
        new = [ev for ev in found if self.get(ev.event_id) is None]
        if not new:
            return
        self._events.update((ev.event_id, ev) for ev in new)
        self._purge(now, prune=False)
        log.info("restored %d event(s) from storage", len(new))
        self._publish(now)

    def _place(self, ev: Event, now: datetime) -> None:
        recent = over(ev) + self._keep_recent >= now
        if recent and ev.event_id in self._past and clock_suspect(now):
            return  # it was over by a clock that was set
        (self._events if recent else self._past)[ev.event_id] = ev
        (self._past if recent else self._events).pop(ev.event_id, None)

    def _purge(self, now: datetime, prune: bool = True) -> None:
        """Events over for longer than keep_recent leave the working set for the history; with `prune`,
        those over for longer than keep_history leave the file. By the clock of now: after a clock set back
        (a box booted with a clock ahead, then NTP) what it had set aside is live again."""
        for ev in [*self._events.values(), *self._past.values()]:
            self._place(ev, now)
        if prune:
            self._prune(now)

    def _prune(self, now: datetime) -> None:
        gone = [eid for eid, ev in self._past.items() if over(ev) + self._keep_history < now]
        for eid in gone:
            del self._past[eid]
        if gone:
            self._storage.delete_events(gone)

    async def _run(self, steps: StepWatch) -> None:
        assert self._wake is not None
        self._next_sort = time.monotonic() + _SORT_EVERY_S
        woke, woke_for = False, None
        while True:
            delay, target = BUG_RETRY_S, None
            with self._pass_bug.guard():    # a bug in one pass must not leave the points as they are for good
                if woke:
                    self._after_wait(steps, woke_for)
                delay, target = self._plan()
            woke_for, woke = await self._wait(delay, target), True
            self._wake.clear()          # after the wait: a change made before this task first ran counts

    def _plan(self) -> tuple[float, datetime | None]:
        """How long the timer waits, at most, and the boundary it waits for (None: only a change or _MAX_SLEEP)."""
        now = self._clock()
        target = self._next_wake(now)
        delay = _MAX_SLEEP if target is None else min(_MAX_SLEEP, (target - now).total_seconds())
        retry = self._storage.retry_seconds
        if retry is not None:  # a file that would not open is tried this often, here (flush below)
            delay = min(delay, retry)
        return delay, target

    def _after_wait(self, steps: StepWatch, woke_for: datetime | None) -> None:
        now = self._clock()
        # The loop may fire a hair before the boundary; evaluate at the boundary itself.
        at = max(now, woke_for) if woke_for is not None and (woke_for - now).total_seconds() < 0.005 else now
        self._publish(at)
        with self._step_bugs["judging of unlisted events"].guard():
            self._judge_unlisted(now)
        with self._step_bugs["storage flush"].guard():
            self._storage.flush()       # changes a failed write left in memory (no-op when none)
        with self._step_bugs["adoption of a late file"].guard():
            self._adopt(self._storage.take_found(), now)
        mono = time.monotonic()
        stepped = steps.stepped(now.timestamp())
        if stepped:
            self._prune_from = max(self._prune_from, mono + PRUNE_HOLD_S)
        if stepped or mono >= self._next_sort:
            with self._step_bugs["sort"].guard():
                self._purge(now, prune=mono >= self._prune_from)
                self._publish(now)
                self._next_sort = mono + _SORT_EVERY_S     # not before: a purge that raised is tried at the next pass

    async def _wait(self, delay: float, target: datetime | None) -> datetime | None:
        """Until a change, `delay` seconds or a step of the wall clock: `target` if the delay ran out, else None."""
        assert self._wake is not None
        end, glance = time.monotonic() + delay, StepWatch(self._clock().timestamp(), threshold=STEP_GLANCE_S)
        while True:
            left = end - time.monotonic()
            # told of a step (it sets _wake), the wait needs no glance
            look = left if self._clock_set is not None and self._clock_set.watching else STEP_GLANCE_S
            try:
                async with asyncio.timeout(max(0.0, min(left, look))):
                    await self._wake.wait()
                return None
            except TimeoutError:
                if left <= look:
                    return target
                if glance.stepped(self._clock().timestamp()):
                    return None


def _termination(ev: Event, now: datetime) -> datetime:
    """When a cancellation arriving `now` takes effect here. 2.0b rule 65: a cancelled event (explicitly or
    implicitly) that has a startafter window ends at a random time within it, as it started, so the sites of a
    program do not all snap back at once; one not running here yet stops at once."""
    if ev.start_after > timedelta(0) and ev.start <= now < ev.end:
        return min(ev.end, now + timedelta(seconds=random.uniform(0.0, ev.start_after.total_seconds())))
    return now


def over(ev: Event) -> datetime:
    """When the event stopped: its end, or its cancellation (an open-ended event is over once cancelled;
    one cancelled without a known time, on arrival)."""
    return min(ev.end, ev.cancelled_at or ev.received_at) if ev.cancelled else ev.end


def _stamps(ev: Event):
    """The times the gateway's clock put on the event as things happened."""
    yield ev.received_at
    yield from (at for at, _ in ev.opt_changes)
    if ev.cancelled_at:
        yield ev.cancelled_at
