"""What the recent history says a power reading can be: the ceiling past which a reading is another unit, and the
longest the load has held one value (a frozen input is measured against it). Pure numpy on a minute snapshot."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import features
from .series import MinuteSnapshot

# A reading this many times the median 15-minute demand of the thresholds' days is another unit (watts written as
# kW: 1,000 times), not the building: a 38 kW shop's 30,000 put the forecasts at 7,482 kW and raised high-load at
# once, and its days held the thresholds up for two weeks after. The median, not the peak: two days of watts among
# twenty lifted the peak to megawatts, and one reading taken let in the rest. A building's peak is a few times its
# median, and one re-opened after weeks idle stays well under it
UNIT_RATIO = 100.0
# ... that median taken as at least this: a sub-metered load idle for weeks (a chiller plant at 0.5 kW of controls
# all winter) starts at hundreds of times its idle power, and a site of a few kW writing W still goes over it
UNIT_FLOOR_KW = 10.0
# a window needs a day of 15-minute demands to be judged by
MIN_SLOTS = 96


@dataclass(frozen=True)
class InputWindow:
    basis: str              # what the ceiling is a multiple of, for the reason ("the median 15-minute demand ...")
    median_kw: float        # that (kW)
    # the most minutes the load held one value before the spell it is in now (None: no spell ended in the window)
    longest_still_minutes: float | None = None

    @property
    def ceiling_kw(self) -> float:
        """A reading's |kW| over this is another unit."""
        return UNIT_RATIO * max(abs(self.median_kw), UNIT_FLOOR_KW)

    def why_implausible(self, kw: float) -> str | None:
        """Why a reading cannot be the building's power (another unit), or None."""
        if abs(kw) <= self.ceiling_kw:
            return None
        floor = f", taken as {UNIT_FLOOR_KW:g}" if abs(self.median_kw) < UNIT_FLOOR_KW else ""
        median = f"{self.median_kw:.4g} kW{floor}"
        if kw < 0:
            # -99999 is a BAS's "no data" value far more often than watts exported: "over 100 times ... watts written
            # as kW?" of it sent the technician to the units
            return (f"{kw:g} kW is over {UNIT_RATIO:g} times {self.basis} ({median}) below zero: a BAS's \"no data\" "
                    f"value (-99999), or watts written as kW?")
        return f"{kw:g} kW is over {UNIT_RATIO:g} times {self.basis} ({median}): watts written as kW?"


def judge_window(snap: MinuteSnapshot | None, first: int, last: int, max_gap_minutes: float,
                 days: float) -> InputWindow | None:
    """The window of minutes `first`..`last` (None: under a day of demand in it). A spell of one value does not
    span a gap in the readings over `max_gap_minutes`: a gateway stopped for days with a sub-meter at 0 either side
    was no 3-day spell, and would have hidden a frozen input for six. What judge_held decides, from a snapshot: the
    reference its tests compare it with."""
    d = features.demand(snap, np.arange(first + 14, last + 1, 15)) if snap is not None else np.array([])
    d = d[np.isfinite(d)]
    if d.size < MIN_SLOTS:
        return None
    return InputWindow(f"the median 15-minute demand of the last {days:g} days", float(np.median(np.abs(d))),
                       longest_still(snap, first, last, max_gap_minutes))


def judge_held(ks: np.ndarray, means: np.ndarray, first: int, last: int, max_gap_minutes: float, days: float,
               since: int | None = None) -> InputWindow | None:
    """judge_window of a snapshot from `since` (the first minute the history holds, if after `first`) to `last`,
    from the minutes that hold readings alone: `ks` (ascending, within `first`..`last`) and their `means`. Judged
    again each quarter-hour, the snapshot was most of a replay's time: 15-minute data holds 1,344 of its 20,160
    minutes. The same window to the bit: a snapshot's 15-minute demand is a difference of its running sums, and an
    empty minute adds exactly nothing to one; a demand that begins before the snapshot does is not counted."""
    origin = first if since is None else max(first, since)
    fin = np.isfinite(means)
    ks, means = ks[fin], means[fin]
    ends = np.arange(first + 14, last + 1, 15)
    starts = ends - 14
    ps = np.concatenate([[0.0], np.cumsum(means)])
    hi, lo = np.searchsorted(ks, ends, "right"), np.searchsorted(ks, starts, "left")
    c = hi - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where((starts >= origin) & (c > 0), (ps[hi] - ps[lo]) / np.maximum(c, 1), np.nan)
    d = d[np.isfinite(d)]
    if d.size < MIN_SLOTS:
        return None
    return InputWindow(f"the median 15-minute demand of the last {days:g} days", float(np.median(np.abs(d))),
                       _longest_spell(ks, means, max_gap_minutes))


def longest_still(snap: MinuteSnapshot, first: int, last: int, max_gap_minutes: float = np.inf) -> float | None:
    """The most minutes, from the first to the last of them, that the minutes with readings from `first` to `last`
    held one value, but for the spell they end in: that is the one a frozen input is in, which measured against
    itself was never long."""
    lo, hi = max(first, snap.k0), min(last, snap.k0 + snap.n - 1)
    if hi < lo:
        return None
    means = snap.means[lo - snap.k0:hi - snap.k0 + 1]
    have = np.flatnonzero(np.isfinite(means))
    return _longest_spell(have, means[have], max_gap_minutes)


def _longest_spell(have: np.ndarray, v: np.ndarray, max_gap_minutes: float) -> float | None:
    """longest_still of the minutes `have` (ascending) holding means `v`."""
    if have.size < 2:
        return None
    # a minute's mean of n equal readings is that reading to within rounding
    moved = np.abs(np.diff(v)) > 1e-9 * np.maximum(1.0, np.abs(v[1:]))
    starts = np.flatnonzero(np.concatenate([[True], moved | (np.diff(have) > max_gap_minutes)]))
    if starts.size < 2:
        return None     # one spell: nothing before it to measure by
    ends = starts[1:] - 1
    return float((have[ends] - have[starts[:-1]]).max() + 1)
