"""ADR-Event-Level in the log: one line a change, as the BAS's point shows it, across restarts too."""
from __future__ import annotations

import json
import logging
import math
from datetime import datetime
from typing import Callable

from .events import OPT_IN, Event
from .schedule import ScheduleState, over, utcnow
from .storage import Storage

log = logging.getLogger(__name__)

LEVEL_SAID = "event_level_said"     # the level the log last said, and its event: {"level": 2.0, "event": "..."}


class LevelLog:
    """Says each change of the published level; at a start, the level found against the one the gateway stopped at.

    Commissioning checks in the log that a level reached the BAS. Without the stopped-at level, an event that ended
    while the gateway was down left its "0 -> 2" the last word on it."""

    def __init__(self, storage: Storage, event: Callable[[str], Event | None],
                 clock: Callable[[], datetime] = utcnow):
        self._storage, self._event, self._clock = storage, event, clock
        # the level and its event as last said and kept in storage.path; None: nothing since the start
        self._last: tuple[float, str | None] | None = None

    def update(self, state: ScheduleState) -> None:
        # the event too, when another one takes over at the same level: a start names the one the level was last of
        last = (state.level, state.level_event_id)
        if last == self._last:
            return
        if self._last is None:
            self._at_start(state)
        elif state.level != self._last[0]:
            why = [f"event {state.level_event_id}"] if state.level_event_id else []
            if self._last[1] and self._last[1] != state.level_event_id and (left := self._why_it_left(self._last[1])):
                why.insert(0, left)
            log.info("ADR-Event-Level %s -> %s%s", f"{self._last[0]:g}", f"{state.level:g}",
                     f" ({'; '.join(why)})" if why else "")
        self._storage.save_value(LEVEL_SAID, json.dumps({"level": state.level, "event": state.level_event_id}))
        self._last = last

    def _at_start(self, state: ScheduleState) -> None:
        stopped = self._stopped_at()
        in_force = f"event {state.level_event_id} in force" if state.level_event_id else ""
        if stopped is None or stopped[0] == state.level:
            if state.level:
                # the level a start finds in force (restored from storage.path), not a change: "0 -> 2" read as the
                # event starting again, the 0 being the point's own for the milliseconds before the schedule set it
                log.info("ADR-Event-Level %s at the start%s", f"{state.level:g}", f" ({in_force})" if in_force else "")
            return
        level, event_id = stopped
        what = [in_force] if in_force else []
        if event_id and event_id != state.level_event_id:
            what.insert(0, self._became_of(event_id))
        log.info("ADR-Event-Level %s -> %s while the gateway was stopped%s", f"{level:g}", f"{state.level:g}",
                 f" ({'; '.join(what)})" if what else "")

    def _stopped_at(self) -> tuple[float, str | None] | None:
        """The level the log last said before this start, and its event; None when not known (a first start, a file
        of a version before 0.4.2, or a value not understood)."""
        try:
            saved = json.loads(self._storage.load_value(LEVEL_SAID) or "null")
        except ValueError:
            return None
        if not isinstance(saved, dict):
            return None
        level, event_id = saved.get("level"), saved.get("event")
        if (not isinstance(level, (int, float)) or isinstance(level, bool) or not math.isfinite(level)
                or not isinstance(event_id, (str, type(None)))):
            return None
        return float(level), event_id

    def _why_it_left(self, event_id: str) -> str:
        """Why the event that set the level no longer does, as it happens, when it did not end as it was to: the line
        comes as the points change, before the one that says the cause (a cancellation's or an implied one's, the
        ADR-Opt-Out line), and "ADR-Event-Level 1 -> 0" in the middle of an event read as its end."""
        event = self._event(event_id)
        if event is None:
            return ""
        if event.cancelled:
            how = "no longer listed by the VTN" if event.unlisted else "cancelled"
            return f"event {event_id} {how}"
        now = self._clock()
        if over(event) <= now:
            return ""       # its end, said in the line that received it
        if event.opt != OPT_IN:
            return f"event {event_id} opted out"
        if event.start > now:
            return f"event {event_id} now starts at {event.start.isoformat(timespec='seconds')}"
        return ""

    def _became_of(self, event_id: str) -> str:
        event = self._event(event_id)
        if event is None:
            return f"event {event_id} no longer held"
        now, end = self._clock(), over(event)
        if end <= now:      # its times as the line that received it says them
            what = "cancelled" if event.cancelled else "over"
            return f"event {event_id} {what} at {end.isoformat(timespec='seconds')}"
        # held and not over: "over at" would name a time to come
        if event.opt != OPT_IN:
            return f"event {event_id} opted out"
        if event.start > now:       # moved later by the VTN, or a clock set back
            return f"event {event_id} starts at {event.start.isoformat(timespec='seconds')}"
        return f"event {event_id} no longer sets the level"
