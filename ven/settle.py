"""One fault in the log for a condition that comes and goes (the forecaster's power input, the BAS input
the auto source prefers): its end is said only once the condition has stayed good for a settle period, and
going bad again meanwhile is the same fault, counted. A fault that starts again within RECUR_SECONDS of the
last one's end doubles the settle period, at most DOUBLINGS times. The meter's own reads do the same in
bacnet_api.meter, which cannot import this."""
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

    def good(self, now: float) -> bool:
        """The condition is good at `now`; True when this ends the open fault (say so)."""
        self._bad = False
        if self.since is None or now - self.last_bad < self.settle:
            return False
        self.since, self.ended = None, now
        return True


def span(seconds: float) -> str:
    """A fault's length for a log line: seconds, minutes, hours or days, whichever reads at a glance."""
    return (f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200
            else f"{seconds / 3600:.1f} h" if seconds < 2 * 86400 else f"{seconds / 86400:.1f} days")
