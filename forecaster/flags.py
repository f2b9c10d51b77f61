"""A load flag with hysteresis and minimum on / off times, so a noisy forecast never flickers the BAS."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class HysteresisFlag:
    """`above=True`: on when value >= threshold, off once below threshold - band.
    `above=False`: on when value <= threshold, off once above threshold + band.
    band = fraction * the load's size: |threshold|, or the spread of the load (the gap between the two flags'
    thresholds) where that is larger. A change of state waits until the current state is old enough.
    With `arm_fraction`, turning on also needs the measured level (when given) within that fraction
    of the load's size from the threshold: a forecast far ahead of what the meter shows is mostly a mistimed ramp."""

    above: bool
    fraction: float
    min_on_s: float
    min_off_s: float
    arm_fraction: float | None = None
    on: bool = False
    since: float | None = None

    def update(self, t: float, value: float | None, threshold: float | None, level: float | None = None,
               max_band: float | None = None, blocked: bool = False, spread: float = 0.0) -> bool:
        """`max_band` caps the hysteresis band (a quarter of the gap to the other flag's threshold, so the
        band never reaches across it); `blocked` (the other flag is on) keeps this one from turning on;
        `spread`: the gap between the two thresholds."""
        if value is None or threshold is None:
            want = False  # no basis for a claim: fall back to off, still honouring min-on
        else:
            # A threshold near 0 (a sub-meter reading 0 at night, net load with solar) left no band at all: the
            # low flag followed the sign of a forecast wandering about 0 kW, 14 changes on a day the meter never moved
            size = max(abs(threshold), spread)
            band = self.fraction * size
            if max_band is not None:
                band = min(band, max(max_band, 0.0))
            if self.above:
                want = value >= threshold if not self.on else value >= threshold - band
            else:
                want = value <= threshold if not self.on else value <= threshold + band
            if want and not self.on and self.arm_fraction is not None and level is not None:
                arm = self.arm_fraction * size
                want = level >= threshold - arm if self.above else level <= threshold + arm
            if want and not self.on and blocked:
                want = False   # never "shed" and "charge" at once
        if want != self.on:
            # a clock that went back makes the age negative: the state is as old as can be
            held = float("inf") if self.since is None or t < self.since else t - self.since
            if held >= (self.min_on_s if self.on else self.min_off_s):
                self.on, self.since = want, t
        return self.on
