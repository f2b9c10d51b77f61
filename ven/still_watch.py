"""The power input read as one exact value for too long: a frozen BAS point or a dead sensor. One WARNING when the
spell gets long against how long the load held one value before (the forecaster's window says), one line at its end."""
from __future__ import annotations

import logging
from collections.abc import Callable

from bacnet_api.settle import span

log = logging.getLogger("ven.forecast_service")

# A power input that reads exactly one value this long, and twice as long as the load ever held still over the
# thresholds' days, is a frozen BAS point or a dead sensor: 173.4 kW held for 30 h through a night that drew 60 kW
# read as a trend of 0 and raised high-load for 10 h (helper loads39). A sub-meter at 0 all weekend has held still
# as long before
STILL_MIN_S = 3600.0


class StillWatch:
    def __init__(self, gap_s: float, usual_minutes: Callable[[], float | None], days: float):
        self._gap_s = gap_s                 # a gap in the readings longer than this starts a spell afresh
        self._usual = usual_minutes         # the longest the load held one value before (minutes; None: unknown)
        self._days = days                   # the window that was measured over, for the WARNING
        # the input's value, its source and since when it has read exactly that (epoch s), and whether the WARNING
        # is out
        self._spell: tuple[str, float, float] | None = None
        self._last = 0.0                    # the spell's latest reading (epoch s)
        self.said = False

    def reading(self, t: float, kw: float, source: str) -> None:
        s, last = self._spell, self._last
        self._last = t
        if s is not None and not self.said and not 0 <= t - last <= self._gap_s:
            # a gap, or the clock stepped: two equal readings either side of a 2 h step forward were no 2 h spell
            # (helper rev39). One already said stands: the input reads the same after the gap
            s = None
        if s is None or s[0] != source or s[1] != kw:
            if self.said:
                # the other source taking over is no sign the frozen one moved (helper rev39)
                held = span(max(0.0, t - s[2]))
                if s[0] == source:
                    log.info("%s moving again after %s at %g kW", source, held, s[1])
                else:
                    log.info("%s held %g kW for %s, and the forecaster learns from %s now", s[0], s[1], held, source)
            self._spell, self.said = (source, kw, t), False
            return
        usual = self._usual()
        # exactly 0: a load switched off (a sub-meter all weekend, its first one too), not a frozen sensor
        if self.said or usual is None or kw == 0 or t - s[2] < max(STILL_MIN_S, 2 * usual * 60):
            return
        self.said = True
        log.warning("%s has read exactly %g kW for %s, where the load held one value %s at most in the last %g days: "
                    "a frozen BAS point or a dead sensor? The forecaster learns it as the building's load", source, kw,
                    span(t - s[2]), span(usual * 60), self._days)

    def since(self) -> float | None:
        """Since when the input has read one value, while its WARNING stands (epoch s)."""
        return self._spell[2] if self.said else None

    def fault(self) -> str | None:
        """The open fault's words, while the WARNING stands."""
        return f"{self._spell[0]} reading exactly {self._spell[1]:g} kW" if self.said else None

    def stopped(self, now: float) -> None:
        """The input stopped altogether: the "no power input" fault says the rest, and this one ends."""
        if self.said:
            source, kw, since = self._spell
            log.info("%s held %g kW for %s, then stopped: no power input now", source, kw, span(max(0.0, now - since)))
            self._spell, self.said = None, False
