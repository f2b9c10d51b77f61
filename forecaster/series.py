"""1-minute bins of irregular samples, and windowed means over them.

A sample at time t belongs to the minute that ENDS at ceil(t / 60) * 60: meters report the power of
the interval just finished, so a 15-minute series stamped 00:15 fills the demand window ending 00:15.
Minute k (an integer) is the minute ending at k * 60 seconds.
"""
from __future__ import annotations

import math

import numpy as np


def minute_of(t: float) -> int:
    return math.ceil(t / 60.0)


class MinuteBins:
    """Sums and counts per minute over a sliding window of `keep_minutes`; grows and trims itself."""

    def __init__(self, keep_minutes: int):
        self.keep = int(keep_minutes)
        self.k0 = 0
        self.sums = np.zeros(0)
        self.counts = np.zeros(0, dtype=np.int64)
        # Sum of each sample's seconds into its minute: where in the minute the readings were taken, so a
        # slope over sparse readings (one every 2-3 minutes) is not skewed by rounding them to the minute.
        self.offsets = np.zeros(0)
        self.last_k: int | None = None

    def __len__(self) -> int:
        return int(np.count_nonzero(self.counts))

    def _ensure(self, k_lo: int, k_hi: int) -> None:
        if self.sums.size == 0:
            self.k0 = k_lo
            n = max(k_hi - k_lo + 1, 1440)
            self.sums, self.counts, self.offsets = np.zeros(n), np.zeros(n, dtype=np.int64), np.zeros(n)
            return
        if k_lo < self.k0:
            pad = self.k0 - k_lo
            self.sums = np.concatenate([np.zeros(pad), self.sums])
            self.counts = np.concatenate([np.zeros(pad, dtype=np.int64), self.counts])
            self.offsets = np.concatenate([np.zeros(pad), self.offsets])
            self.k0 = k_lo
        need = k_hi - self.k0 + 1
        if need > self.sums.size:
            n = max(need, self.sums.size * 2)
            self.sums = np.concatenate([self.sums, np.zeros(n - self.sums.size)])
            self.counts = np.concatenate([self.counts, np.zeros(n - self.counts.size, dtype=np.int64)])
            self.offsets = np.concatenate([self.offsets, np.zeros(n - self.offsets.size)])

    def add(self, ks: np.ndarray, values: np.ndarray, counts: np.ndarray | None = None,
            offsets: np.ndarray | None = None) -> None:
        """Add values (already validated) into minutes ks; counts > 1 means values are sums. `offsets`:
        seconds into the minute of each sample (summed like values); unknown (stored minutes): mid-minute."""
        ks = np.asarray(ks, dtype=np.int64)
        if ks.size == 0:
            return
        if self.jumps_ahead(int(ks.min())):
            # The clock jumped further ahead than the window (a box that booted at 1970 and then
            # set its clock): what is held would be trimmed anyway, and growing to the new minute
            # would allocate every minute in between (56 years: 470 MB).
            self.clear()
        self._ensure(int(ks.min()), int(ks.max()))
        idx = ks - self.k0
        np.add.at(self.sums, idx, values)
        np.add.at(self.counts, idx, 1 if counts is None else counts)
        n = np.ones(ks.size) if counts is None else np.asarray(counts, dtype=float)
        np.add.at(self.offsets, idx, 30.0 * n if offsets is None else np.asarray(offsets, dtype=float))
        hi = int(ks.max())
        self.last_k = hi if self.last_k is None else max(self.last_k, hi)
        self._trim()

    def jumps_ahead(self, k: int) -> bool:
        """Minute k lies further ahead of the newest than the window: adding it clears what is held."""
        return self.last_k is not None and k > self.last_k + self.keep

    def drop_after(self, k: int) -> int:
        """Forget the minutes after k; returns how many of them held data."""
        i = max(k + 1 - self.k0, 0)
        if i >= self.sums.size:
            return 0
        dropped = int(np.count_nonzero(self.counts[i:]))
        self.sums[i:] = 0.0
        self.counts[i:] = 0
        self.offsets[i:] = 0.0
        if self.last_k is not None and self.last_k > k:
            self.last_k = max(k, self.k0)
        return dropped

    def clear(self) -> None:
        self.k0, self.last_k = 0, None
        self.sums, self.counts, self.offsets = np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0)

    def _trim(self) -> None:
        # Keep `keep` minutes behind the newest; cut in chunks so trimming stays rare.
        cut = (self.last_k - self.keep + 1) - self.k0
        if cut > max(self.keep // 4, 1440):
            self.sums, self.counts = self.sums[cut:].copy(), self.counts[cut:].copy()
            self.offsets = self.offsets[cut:].copy()
            self.k0 += cut

    def span(self) -> tuple[int, int] | None:
        """First and last minute that hold data, or None."""
        nz = np.flatnonzero(self.counts)
        if nz.size == 0:
            return None
        return self.k0 + int(nz[0]), self.k0 + int(nz[-1])

    def held(self, k_from: int, k_to: int) -> tuple[np.ndarray, np.ndarray]:
        """The minutes from k_from to k_to that hold readings (ascending) and their means, read in place: a
        snapshot of the thresholds' days copies and indexes 20,160 minutes where 15-minute data holds 1,344."""
        a, b = max(k_from - self.k0, 0), min(k_to + 1 - self.k0, self.sums.size)
        i = np.flatnonzero(self.counts[a:b]) + a if b > a else np.zeros(0, dtype=np.int64)
        return i + self.k0, self.sums[i] / self.counts[i]

    def holds_before(self, k: int) -> bool:
        """Whether a minute before k holds readings."""
        return bool(self.counts[:min(max(k - self.k0, 0), self.counts.size)].any())

    def snapshot(self, k_from: int | None = None, k_to: int | None = None) -> "MinuteSnapshot":
        """Copy of minutes [k_from, k_to] (defaults: everything held); minutes not held are empty."""
        lo = self.k0 if k_from is None else k_from
        hi = (self.last_k if self.last_k is not None else self.k0) if k_to is None else k_to
        n = max(hi - lo + 1, 0)
        sums = np.zeros(n)
        counts = np.zeros(n, dtype=np.int64)
        offsets = np.zeros(n)
        a, b = max(lo, self.k0), min(hi + 1, self.k0 + self.sums.size)  # overlap with what is held
        if b > a:
            sums[a - lo:b - lo] = self.sums[a - self.k0:b - self.k0]
            counts[a - lo:b - lo] = self.counts[a - self.k0:b - self.k0]
            offsets[a - lo:b - lo] = self.offsets[a - self.k0:b - self.k0]
        return MinuteSnapshot(lo, sums, counts, offsets)


class MinuteSnapshot:
    """A frozen copy of minute means with O(1) windowed means via prefix sums."""

    def __init__(self, k0: int, sums: np.ndarray, counts: np.ndarray, offsets: np.ndarray | None = None):
        self.k0 = k0
        self.offsets = offsets
        self.n = sums.size
        self.counts = counts
        self.set_aside: tuple[tuple[int, int], ...] = ()   # minute spans without() emptied, within this snapshot
        with np.errstate(invalid="ignore", divide="ignore"):
            self.means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        self._index()

    def _index(self) -> None:
        have = self.counts > 0
        # Window means weight each minute equally (a minute with 30 samples counts once).
        self._ps = np.concatenate([[0.0], np.cumsum(np.where(have, self.means, 0.0))])
        self._pc = np.concatenate([[0], np.cumsum(have.astype(np.int64))])
        self._tables: dict[int, np.ndarray] = {}

    def without(self, spans) -> "MinuteSnapshot":
        """A copy with the minutes of `spans` ((first, last) minute numbers, both kept out) empty, or this
        snapshot itself when none of them falls in it."""
        inside = [(max(first, self.k0), min(last, self.k0 + self.n - 1)) for first, last in spans]
        inside = [(first, last) for first, last in inside if last >= first]
        if not inside:
            return self
        ks = np.concatenate([np.arange(first, last + 1) for first, last in inside])
        out = self.with_minutes(ks, np.full(ks.size, np.nan))
        out.set_aside = self.set_aside + tuple(inside)
        return out

    def with_minutes(self, ks: np.ndarray, values: np.ndarray) -> "MinuteSnapshot":
        """A copy with minutes `ks` (within it) holding `values` (NaN: none), each as one reading at mid-minute,
        and nothing set aside."""
        out = MinuteSnapshot.__new__(MinuteSnapshot)
        out.k0, out.n, out.set_aside = self.k0, self.n, ()
        i = np.asarray(ks, dtype=np.int64) - self.k0
        have = np.isfinite(values)
        out.means = self.means.copy()
        out.means[i] = values
        out.counts = self.counts.copy()
        out.counts[i] = have
        out.offsets = None if self.offsets is None else self.offsets.copy()
        if out.offsets is not None:
            out.offsets[i] = np.where(have, 30.0, 0.0)
        out._index()
        return out

    def minute_time(self, ks: np.ndarray) -> np.ndarray:
        """When minute ks's readings were taken on average, in minutes (minute k spans k-1..k)."""
        i = np.asarray(ks, dtype=np.int64) - self.k0
        ks = np.asarray(ks, dtype=float)
        if self.offsets is None:
            return ks - 0.5
        ok = (i >= 0) & (i < self.n)
        j = np.where(ok, i, 0)
        c = np.where(ok, self.counts[j], 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(c > 0, self.offsets[j] / np.maximum(c, 1), 30.0)
        return ks - 1.0 + mean / 60.0

    def window_mean(self, k_end: np.ndarray, width: int) -> np.ndarray:
        """Mean of the minute means over the `width` minutes ending at k_end (NaN if none or off range)."""
        i = np.asarray(k_end, dtype=np.int64) - self.k0
        ok = (i - width + 1 >= 0) & (i < self.n)
        hi = np.where(ok, i + 1, 0)
        lo = np.where(ok, i + 1 - width, 0)
        c = self._pc[hi] - self._pc[lo]
        s = self._ps[hi] - self._ps[lo]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(ok & (c > 0), s / np.maximum(c, 1), np.nan)

    def window_mean_lookup(self, k_end: np.ndarray, width: int) -> np.ndarray:
        """window_mean, read from a table of every held minute's mean once the request is large
        enough to pay for building it: one read per window instead of a dozen array operations."""
        table = self._tables.get(width)
        if table is None:
            if np.size(k_end) * 4 < self.n or not self.n:  # a one-row predict asks for a few hundred
                return self.window_mean(k_end, width)
            table = self._tables[width] = self.window_mean(np.arange(self.k0, self.k0 + self.n), width)
        i = np.asarray(k_end, dtype=np.int64) - self.k0
        ok = (i >= 0) & (i < self.n)
        return np.where(ok, table[np.where(ok, i, 0)], np.nan)
