"""The date below which the wall clock cannot be right.

A box without a battery-backed clock boots at a fixed date (often 2020-01-01) and runs on it until
NTP steps it. Anything the gateway dates by that clock meanwhile is wrong by years: a meter reading
reported to the VTN would be taken by the utility as a real reading of that year, and an event's end
cannot be judged. This version cannot run before it was built, so an earlier reading proves the
clock wrong. Raise it with each release; a clock that is wrong but later than this is not detected.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone

CLOCK_FLOOR = datetime(2026, 11, 1, tzinfo=timezone.utc)
# What goes by the wall clock and deletes (pruning) waits this long after a step, so a clock put right
# within a day finds what it would have deleted still there.
PRUNE_HOLD_S = 86400.0
CLOCK_STEP_S = 30.0     # the wall clock moving this much more or less than the monotonic one is a step


def clock_suspect(now: datetime) -> bool:
    """True when `now` (aware) is before this version was built: the wall clock is not set."""
    return now < CLOCK_FLOOR


class StepWatch:
    """Tells a step of the wall clock from time passing, between one look and the next."""

    def __init__(self, wall: float | None = None, threshold: float = CLOCK_STEP_S):
        self._last = None if wall is None else (wall, time.monotonic())
        self._threshold = threshold

    def stepped(self, wall: float) -> bool:
        """Whether the wall clock (epoch seconds) moved CLOCK_STEP_S more or less than the monotonic one
        since the last look."""
        return self.step(wall) != 0.0

    def step(self, wall: float) -> float:
        """The step since the last look: seconds the wall clock (epoch seconds) moved beyond the monotonic one,
        ahead positive, back negative; 0.0 for less than the threshold (CLOCK_STEP_S) either way."""
        mono = time.monotonic()
        last, self._last = self._last, (wall, mono)
        if last is None:
            return 0.0
        step = (wall - last[0]) - (mono - last[1])
        return step if abs(step) > self._threshold else 0.0
