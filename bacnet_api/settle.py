"""One fault in the log for a condition that comes and goes (the meter's reads, the VTN, the forecaster's power
input, the BAS input the auto source prefers): its end is said only once the condition has stayed good for a
settle period, and going bad again meanwhile is the same fault, counted. A fault that starts again within
RECUR_SECONDS of the last one's end doubles the settle period, at most DOUBLINGS times. Here, not in ven, because
the meter (bacnet_api.meter) needs it and bacnet_api never imports ven."""
from __future__ import annotations

import math

RECUR_SECONDS = 7200.0
DOUBLINGS = 6


class Flapping:
    def __init__(self, settle_seconds: float) -> None:
        self.base = float(settle_seconds)
        self.settle = self.base
        self.since: float | None = None     # monotonic, when the fault the log opened started; None: none open
        self.times = 0                      # separate bad stretches in it
        self.last_bad = 0.0
        self._bad = False
        self.ended = -math.inf              # monotonic, when the last fault's end was said

    @property
    def open(self) -> bool:
        return self.since is not None

    def bad(self, now: float) -> bool:
        """The condition is bad at `now`; True when this starts a fault (say so)."""
        self.times += not self._bad
        self._bad, self.last_bad = True, now
        if self.since is not None:
            return False
        recurs = now - self.ended < RECUR_SECONDS
        self.settle = min(2 * self.settle, self.base * 2 ** DOUBLINGS) if recurs else self.base
        self.since, self.times = now, 1
        return True

    def restart(self, now: float) -> None:
        """The open fault's settle period runs from `now`, as had the condition been bad until then: the same bad
        stretch, not another (a first answer after a wait that outlasted the period, say)."""
        self.last_bad = now

    def good(self, now: float) -> bool:
        """The condition is good at `now`; True when this ends the open fault (say so)."""
        self._bad = False
        if self.since is None or now - self.last_bad < self.settle:
            return False
        self.since, self.ended = None, now
        return True


def span(seconds: float) -> str:
    """A length of time for a log line (a fault's, a clock step's, a configured period): seconds, minutes, hours or
    days, whichever reads at a glance."""
    # to a tenth, without a ".0": a configured 24 h or 7 days reads as set, not as a measurement
    return (f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200
            else f"{round(seconds / 3600, 1):g} h" if seconds < 2 * 86400 else f"{round(seconds / 86400, 1):g} days")
