"""A load flag with hysteresis and minimum on / off times, so a noisy forecast never flickers the BAS."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class HysteresisFlag:
    """`above=True`: on when value >= threshold, off once below threshold - band.
    `above=False`: on when value <= threshold, off once above threshold + band.
    band = fraction * |threshold|. A change of state waits until the current state is old enough.
    With `arm_fraction`, turning on also needs the measured level (when given) within that fraction
    of the threshold: a forecast far ahead of what the meter shows is mostly a mistimed ramp."""

    above: bool
    fraction: float
    min_on_s: float
    min_off_s: float
    arm_fraction: float | None = None
    on: bool = False
    since: float | None = None

    def update(self, t: float, value: float | None, threshold: float | None, level: float | None = None) -> bool:
        if value is None or threshold is None:
            want = False  # no basis for a claim: fall back to off, still honouring min-on
        else:
            band = self.fraction * abs(threshold)
            if self.above:
                want = value >= threshold if not self.on else value >= threshold - band
            else:
                want = value <= threshold if not self.on else value <= threshold + band
            if want and not self.on and self.arm_fraction is not None and level is not None:
                arm = self.arm_fraction * abs(threshold)
                want = level >= threshold - arm if self.above else level <= threshold + arm
        if want != self.on:
            # a clock that went back makes the age negative: the state is as old as can be
            held = float("inf") if self.since is None or t < self.since else t - self.since
            if held >= (self.min_on_s if self.on else self.min_off_s):
                self.on, self.since = want, t
        return self.on
