"""DemandForecaster: samples in, 15-minute demand forecasts, a power slope and load flags out.

Pure computation with no I/O. add_sample and predict are cheap; predicting needs numpy only. Fitting
is heavy: fit() runs it here, or fit_job() hands out a picklable snapshot that another thread or
process trains on while forecasts go on, and fit_done() swaps the result in under a lock.
"""
from __future__ import annotations

import math
import pickle
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from . import features, model
from .calendar import DEFAULT_PARTIAL, DEFAULT_REST, Calendar
from .flags import HysteresisFlag
from .plausibility import InputWindow, judge_held
from .series import MinuteBins, minute_of

PERSISTENCE = "persistence"
# Predict sees as many days as training did: the N_REFS latest same-kind days reach 42 days back
# (four Sundays and holidays), and a shorter window fed live rows fewer references than training rows.
_REF_DAYS = 43


@dataclass(frozen=True)
class Forecast:
    issued_at: float
    demand_kw: dict[int, float | None]   # horizon minutes -> forecast 15-min demand ending then
    rate_kw_per_min: float | None
    high_load: bool
    low_load: bool
    high_threshold_kw: float | None
    low_threshold_kw: float | None
    model: str                           # what served: one name, or "15:a,60:b" when the horizons differ
    level_kw: float | None = None        # current 15-min demand (what persistence forecasts)

    def model_for(self, horizon: int) -> str:
        """The name of what served `horizon`."""
        for part in self.model.split(","):
            h, sep, name = part.partition(":")
            if sep and h == str(horizon):
                return name
        return self.model


@dataclass(frozen=True)
class ClockStep:
    """A wall-clock step the samples showed: `from_t` the newest sample before it, `to_t` the one after."""
    from_t: float
    to_t: float
    dropped_minutes: int    # minutes of history set aside
    reset: bool             # the whole history (the step reached past it)

    @property
    def seconds(self) -> float:
        return self.to_t - self.from_t


class _Rolling:
    """Squared errors of the model and of persistence over a trailing window of target times."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.pending: deque[tuple[int, float, float]] = deque()  # (target minute, model, persistence)
        self.done: deque[tuple[float, float, float]] = deque()   # (target time, model se, persistence se)
        # Running sums keep rmse() O(1) however long the window and however often predict runs.
        self._sm = self._sp = 0.0

    def add(self, target_k: int, model_kw: float, persist_kw: float) -> None:
        self.pending.append((target_k, model_kw, persist_kw))

    def resolve(self, done_k: int, actual_of) -> None:
        while self.pending and self.pending[0][0] <= done_k:
            k, m, p = self.pending.popleft()
            a = actual_of(k)
            if a is not None:
                self.done.append((k * 60.0, (m - a) ** 2, (p - a) ** 2))
                self._sm += self.done[-1][1]
                self._sp += self.done[-1][2]
        horizon = done_k * 60.0 - self.seconds
        while self.done and self.done[0][0] < horizon:
            _, m, p = self.done.popleft()
            self._sm -= m
            self._sp -= p
        if not self.done:
            self._sm = self._sp = 0.0

    def span_seconds(self) -> float:
        return self.done[-1][0] - self.done[0][0] if self.done else 0.0

    def holds_through(self, t: float, count: int, seconds: float) -> bool:
        """Whether at least `count` errors spanning `seconds` stay in the window until time t, whatever comes."""
        kept = [x[0] for x in self.done if x[0] >= math.floor(t / 60.0) * 60.0 - self.seconds]
        return bool(kept) and len(kept) >= count and kept[-1] - kept[0] >= seconds

    def rmse(self) -> tuple[float | None, float | None, int]:
        n = len(self.done)
        if not n:
            return None, None, 0
        return math.sqrt(max(self._sm, 0.0) / n), math.sqrt(max(self._sp, 0.0) / n), n


class _MemberErrors:
    """Each member's recent squared error, fading with model.LIVE_HALF_LIFE_MINUTES of target time,
    for model.live_weights."""

    def __init__(self):
        self.pending: deque[tuple[int, np.ndarray]] = deque()  # (target minute, each member's forecast)
        self.mean_sq: np.ndarray | None = None
        self.first_k: int | None = None   # target minute of the oldest error in mean_sq
        self.last_k: int | None = None

    def add(self, target_k: int, each_kw: np.ndarray) -> None:
        self.pending.append((target_k, each_kw))

    def resolve(self, done_k: int, actual_of, kept_out=lambda k: False) -> None:
        """`kept_out(k)`: k's demand was metered but set aside (a shed): no error to count, and no gap either."""
        while self.pending and self.pending[0][0] <= done_k:
            k, each = self.pending.popleft()
            a = actual_of(k)
            if a is None:
                if self.last_k is not None and k > self.last_k and kept_out(k):
                    # the weights before an event are the best guess after it: a shed and its rebound would
                    # otherwise read as a gap, and the fixed blend serve for the two hours after each event
                    self.last_k = k
                continue
            sq = (each - a) ** 2
            if (self.mean_sq is None or self.mean_sq.shape != sq.shape or k < self.last_k
                    or k - self.last_k > model.LIVE_MIN_SPAN_MINUTES):
                # first, or after a clock step back or a gap in the data: start over
                self.mean_sq, self.first_k = sq, k
            else:
                keep = 0.5 ** ((k - self.last_k) / model.LIVE_HALF_LIFE_MINUTES)
                self.mean_sq = keep * self.mean_sq + (1 - keep) * sq
            self.last_k = k

    def weights(self) -> np.ndarray | None:
        """None (the fixed blend) until the errors span model.LIVE_MIN_SPAN_MINUTES."""
        if self.mean_sq is None or self.last_k - self.first_k < model.LIVE_MIN_SPAN_MINUTES:
            return None
        return model.live_weights(self.mean_sq)


# the bounds of a reading taken, as bacnet.input_min_kw / input_max_kw's defaults
DEFAULT_MIN_KW, DEFAULT_MAX_KW = -1e5, 1e5
# A load whose 10th and 90th percentiles are closer than this share of it is flat for the flags: a data centre at
# 1000 +- 1 kW had its thresholds 1.3 kW apart and raised high-load on 0.3 % of noise, a BAS shedding on metering error
# (the accuracy class of a common sub-meter). One with a daily swing of a few percent keeps its flags
FLAT_SPREAD = 0.01
# ... or whose 15-minute demand follows itself less than this from one interval to the next (its lag-1 autocorrelation;
# noise alone is about 0, a building's day about 0.9): a school on holiday at 28-32 kW had its 90th percentile on noise,
# and high-load came on 2-7 times a day
FLAT_R1 = 0.2


class DemandForecaster:
    def __init__(self, horizons_minutes=(15, 60), slope_minutes=5, high_load_kw=None, low_load_kw=None,
                 threshold_days=14.0, hysteresis_fraction=0.03, min_on_minutes=15.0, min_off_minutes=15.0,
                 arm_fraction=0.1,
                 history_days=35.0, retrain_minutes=1440.0, min_kw=DEFAULT_MIN_KW, max_kw=DEFAULT_MAX_KW,
                 stale_seconds=300.0,
                 timezone="UTC", holiday_preset="", holidays=(), rest_weekdays=DEFAULT_REST,
                 partial_weekdays=DEFAULT_PARTIAL, validation_days=7.0, min_fit_hours=48.0,
                 rolling_hours=168.0, rolling_min_count=12, rolling_min_hours=24.0,
                 high_percentile=90.0, low_percentile=10.0, rebound_minutes=60.0,
                 n_threads=1):
        if not horizons_minutes or any(int(h) < 1 for h in horizons_minutes):
            raise ValueError("horizons_minutes must be positive minutes")
        if min_kw >= max_kw:
            raise ValueError("min_kw must be below max_kw")
        if slope_minutes < 2:
            raise ValueError("slope_minutes must be at least 2")
        self.horizons_minutes = tuple(sorted(int(h) for h in horizons_minutes))
        self.slope_minutes = int(slope_minutes)
        self.high_load_kw = high_load_kw
        self.low_load_kw = low_load_kw
        self.threshold_days = float(threshold_days)
        self.hysteresis_fraction = float(hysteresis_fraction)
        self.min_on_minutes = float(min_on_minutes)
        self.min_off_minutes = float(min_off_minutes)
        self.arm_fraction = arm_fraction
        self.history_days = float(history_days)
        self.retrain_minutes = float(retrain_minutes)
        self.min_kw, self.max_kw = float(min_kw), float(max_kw)
        self.stale_seconds = float(stale_seconds)
        self.validation_days = float(validation_days)
        self.min_fit_hours = float(min_fit_hours)
        self.rolling_min_count = int(rolling_min_count)
        self.rolling_min_hours = float(rolling_min_hours)
        self.high_percentile, self.low_percentile = float(high_percentile), float(low_percentile)
        # After a shed the building takes a while to come back (chillers and fans catch up): that hour
        # is no one's normal day either.
        self.rebound_minutes = float(rebound_minutes)
        # OpenMP threads for scikit-learn in fit(). One by default: on small data a second spinning
        # thread gains little and takes a core from everything else on a small box.
        self.n_threads = n_threads
        self.calendar = Calendar(timezone, holiday_preset, tuple(holidays), rest_weekdays, partial_weekdays)

        self._lock = threading.Lock()
        # Minutes kept: what training uses, or the features' look-back if longer, plus a day, so that
        # replay can predict a day of cycles at once and each still finds its whole look-back.
        self._lookback_minutes = int(max(self.threshold_days, _REF_DAYS) * 1440)
        self.keep_days = max(self.history_days, self._lookback_minutes / 1440) + 1.0
        self._bins = MinuteBins(int(self.keep_days * 1440))
        self._newest_t: float | None = None
        self.clock_steps = 0      # wall-clock steps seen (ClockStep); the newest is last_clock_step
        self.clock_resets = 0     # of which set the whole history aside
        self.last_clock_step: ClockStep | None = None
        self._dirty: set[int] = set()
        self._model: model.FittedModel | None = None
        self._fitting = False
        self._last_fit_try: float | None = None
        # A week of live errors covers every kind of day: over a 48-hour window a quiet weekend,
        # where persistence is nearly exact, could hand Monday's ramp to persistence.
        self._rolling = {h: _Rolling(rolling_hours * 3600) for h in self.horizons_minutes}
        self._member_errors = {h: _MemberErrors() for h in self.horizons_minutes}
        self._high = HysteresisFlag(True, self.hysteresis_fraction, min_on_minutes * 60, min_off_minutes * 60,
                                    arm_fraction)
        self._low = HysteresisFlag(False, self.hysteresis_fraction, min_on_minutes * 60, min_off_minutes * 60,
                                   arm_fraction)
        self._thresholds: tuple[int, float | None, float | None] | None = None
        # from the thresholds' days: the lowest a forecast may be (0 for a site that never drew less, else None), and
        # what a reading can be (None: under a day held)
        self._floor: float | None = None
        self._window: InputWindow | None = None
        self._judged: int | None = None     # the 15-minute slot the window was judged for
        # (t, kW, what it is) of another source's reading of the same load, the measure until a day is held
        self.reference: tuple[float, float, str] | None = None
        self.implausible_rejected = 0       # of `rejected`: readings over the window's ceiling
        self.last_rejection = ""      # why the last reading refused was
        self._curtailed: tuple[tuple[int, int], ...] = ()   # minute spans set aside (set_curtailed)
        self._sheds: tuple[tuple[int, int], ...] = ()       # the same without the rebound: the events' own minutes
        self.rejected = 0
        self.last_forecast: Forecast | None = None

    # ---- load flags across a restart ------------------------------------------------------
    def restore_flags(self, high: tuple[bool, float] | None, low: tuple[bool, float] | None) -> None:
        """Resume the load flags as the last run left them: (on, since) each, from its stored issues.
        A restart must not drop a held high-load (its hysteresis band and minimum on-time) nor let a
        flag turn on again before its minimum off-time: the BAS would release a peak limit, or shed,
        on a start-up default."""
        for flag, state in ((self._high, high), (self._low, low)):
            if state is not None:
                flag.on, flag.since = bool(state[0]), float(state[1])

    # ---- samples -------------------------------------------------------------------------
    def _valid(self, kw, t: float | None = None) -> bool:
        try:
            kw = float(kw)
        except (TypeError, ValueError):
            self.last_rejection = f"{kw!r} is not a number"
            return False
        if not (math.isfinite(kw) and self.min_kw <= kw <= self.max_kw):
            self.last_rejection = f"{kw!r} kW is non-finite or outside {self.min_kw:g}..{self.max_kw:g} kW"
            return False
        implausible = self.implausible(kw, t)
        if implausible:
            self.last_rejection = implausible
            self.implausible_rejected += 1
            return False
        return True

    def implausible(self, kw: float, t: float | None = None) -> str | None:
        """Why a reading (at `t`, else now as the history has it) within the bounds cannot be the building's power
        (another unit), or None."""
        if self.max_kw < DEFAULT_MAX_KW:
            return None     # an input_max_kw the installer lowered is the site's own bound: it judges instead
        t = self._newest_t if t is None else t
        if t is not None:
            self._judge_window(minute_of(t))
        window = self._window
        ref = self.reference
        if window is None and ref is not None and (t is None or abs(t - ref[0]) <= self.stale_seconds):
            # under a day held, another source's reading of the same load now is the measure: a BAS writing W from
            # the day of installation was learnt, became the median, and was never caught after (helper rev39 S9)
            window = InputWindow(ref[2], ref[1])
        return window.why_implausible(kw) if window is not None else None

    @property
    def longest_still_minutes(self) -> float | None:
        """The longest the load held exactly one value in the thresholds' days before the spell it is in now, in
        minutes (None: under a day held, or no spell ended)."""
        return self._window.longest_still_minutes if self._window is not None else None

    def _judge_window(self, k: int) -> None:
        """What a reading can be, from the thresholds' days up to minute k: once a 15 minutes, from the first
        reading of a start on (a BAS writing W through a restart got in before the first forecast, and raised
        high-load)."""
        slot = k // 15
        if slot == self._judged:
            return
        first = k - int(self.threshold_days * 1440) + 1
        with self._lock:
            ks, means = self._bins.held(first, k)
            since = None if not ks.size or self._bins.holds_before(first) else int(ks[0])
        self._judged = slot
        self._window = judge_held(ks, means, first, k, self.stale_seconds / 60, self.threshold_days, since)

    def add_sample(self, t: float, kw: float) -> bool:
        """Store one reading taken now; False (and nothing stored) when non-finite or out of range.

        Readings arrive as they are taken, so one stamped more than stale_seconds before the newest
        is no straggler: the wall clock went back (NTP stepping a box that ran fast). Refusing it
        would blind the forecaster for as long as the step; instead the minutes after it, stamped
        by the wrong clock, are set aside and the history goes on from here. A step further ahead
        than the history reaches sets it all aside. Either way last_clock_step says what happened."""
        if not math.isfinite(t) or not self._valid(kw, t):
            if not math.isfinite(t):
                self.last_rejection = f"a reading stamped {t!r}, no time"
            self.rejected += 1
            return False
        k = minute_of(t)
        with self._lock:
            step = None
            newest = self._newest_t
            if newest is not None and t < newest - self.stale_seconds:
                if t >= newest - self._bins.keep * 60:
                    step = ClockStep(newest, t, self._bins.drop_after(k), False)
                else:
                    step = ClockStep(newest, t, len(self._bins), True)
            elif newest is not None and self._bins.jumps_ahead(k):
                # a box that booted at 1970 (or 2020) and then set its clock
                step = ClockStep(newest, t, len(self._bins), True)
            if step is not None:
                if step.reset:
                    self._bins.clear()
                    self._dirty.clear()
                    self.clock_resets += 1
                self._newest_t = None
                self._thresholds = self._judged = None
                self.clock_steps += 1
                self.last_clock_step = step
            self._bins.add(np.array([k]), np.array([float(kw)]), offsets=np.array([t - (k - 1) * 60.0]))
            self._dirty.add(k)
            self._newest_t = t if self._newest_t is None else max(self._newest_t, t)
        return True

    @property
    def newest_sample_at(self) -> float | None:
        return self._newest_t

    def power_minutes(self, since_epoch: float) -> dict:
        """The 1-minute mean power held in memory from since_epoch on, shaped like ForecastStore.history's
        "power" ({"time": minute end, epoch s; "kw"}): the chart's source while storage.path cannot be opened."""
        with self._lock:  # the HTTP history is shaped in a worker thread while samples come in
            span = self._bins.span()
            if span is None:
                return {"time": [], "kw": []}
            snap = self._bins.snapshot(max(span[0], math.ceil(since_epoch / 60.0)), span[1])
        held = np.flatnonzero(snap.counts)
        return {"time": [float(snap.k0 + i) * 60.0 for i in held], "kw": [float(snap.means[i]) for i in held]}

    def seed(self, times, values, fill_only: bool = False) -> int:
        """Bulk-load a history (any order, any age); invalid values are skipped. With `fill_only`, samples in minutes
        already held are left out (a history seeded again over one restored: its minutes would count twice). Returns
        how many were kept."""
        t = np.asarray(times, dtype=float)
        v = np.asarray(values, dtype=float)
        ok = np.isfinite(t) & np.isfinite(v) & (v >= self.min_kw) & (v <= self.max_kw)
        self.rejected += int((~ok).sum())
        t, v = t[ok], v[ok]
        if not t.size:
            return 0
        ks = np.ceil(t / 60.0).astype(np.int64)
        with self._lock:
            if fill_only:
                lo = int(ks.min())
                new = self._bins.snapshot(lo, int(ks.max())).counts[ks - lo] == 0
                t, v, ks = t[new], v[new], ks[new]
                if not t.size:
                    return 0
            self._bins.add(ks, v, offsets=t - (ks - 1) * 60.0)
            self._dirty.update(ks.tolist())
            self._judged = None     # judged again with these minutes
            newest = float(t.max())
            self._newest_t = newest if self._newest_t is None else max(self._newest_t, newest)
        return int(t.size)

    def load_minutes(self, ks, sums, counts, fill_only: bool = False) -> int:
        """Restore persisted minute bins (from ForecastStore); not marked dirty. With `fill_only`, minutes
        already held are left as they are (a reload after a clock step: they are the newer readings).
        Returns how many minutes were added."""
        ks = np.asarray(ks, dtype=np.int64)
        sums = np.asarray(sums, dtype=float)
        counts = np.asarray(counts, dtype=np.int64)
        with self._lock:
            if fill_only and ks.size:
                held = self._bins.snapshot(int(ks.min()), int(ks.max())).counts
                new = held[ks - int(ks.min())] == 0
                ks, sums, counts = ks[new], sums[new], counts[new]
            if not ks.size:
                return 0
            self._bins.add(ks, sums, counts)
            self._thresholds = self._judged = None
            # Stored minutes keep no reading times: the last one was somewhere in minute k, (k-1)*60 .. k*60.
            # Its start, not its end: the end is up to 60 s after the real last reading, so a reading just
            # after a restart read as a step back by a clock that never moved (input_stale_seconds < 60),
            # and the input counted as fresh up to 60 s past input_stale_seconds.
            newest = float(ks.max() - 1) * 60.0
            self._newest_t = newest if self._newest_t is None else max(self._newest_t, newest)
        return int(ks.size)

    def drain_dirty(self) -> tuple[list[int], list[float], list[int]]:
        """Minutes changed since the last drain, as absolute (minute, sum, count) rows for the store."""
        with self._lock:
            ks = sorted(self._dirty)
            self._dirty.clear()
            b = self._bins
            rows = [(k, float(b.sums[k - b.k0]), int(b.counts[k - b.k0]))
                    for k in ks if 0 <= k - b.k0 < b.sums.size and b.counts[k - b.k0] > 0]
        return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]

    @property
    def dirty_minutes(self) -> int:
        """Minutes changed since the last drain: what the next save writes."""
        with self._lock:
            return len(self._dirty)

    def mark_dirty(self, ks) -> None:
        """Minutes a failed save drained: the next drain returns them again, with their values then."""
        with self._lock:
            self._dirty.update(int(k) for k in ks)

    def history_minutes(self) -> int:
        with self._lock:
            return len(self._bins)

    # ---- learning ------------------------------------------------------------------------
    def _stride(self, snap) -> int:
        # Train every 5 minutes, or at the data's own spacing when it is coarser (15-min meters).
        have = np.flatnonzero(~np.isnan(snap.means))
        if have.size < 3:
            return 5
        return int(max(5, min(60, np.median(np.diff(have)))))

    def needs_fit(self, now: float) -> bool:
        with self._lock:
            if self._fitting:
                return False
            span = self._bins.span()
            if span is None or (span[1] - span[0]) < self.min_fit_hours * 60:
                return False
            last = self._model.fitted_at if self._model else None
            if self._last_fit_try is not None and (last is None or self._last_fit_try > last):
                last = self._last_fit_try
        return last is None or now - last >= self.retrain_minutes * 60

    def learning(self) -> dict | None:
        """While no model was ever fitted: the history needs_fit waits for, what is held, and when
        needs_fit turns true if samples keep coming (epoch s, None before the first sample). None once
        a model exists."""
        with self._lock:
            if self._model is not None:
                return None
            span = self._bins.span()
            tried, fitting = self._last_fit_try, self._fitting
        need = math.ceil(self.min_fit_hours * 60)
        have = span[1] - span[0] if span else 0
        first = None
        if span is not None:
            # needs_fit counts the span, not the minutes held: a sample in minute span[0] + need completes
            # it, and that minute ends at (span[0] + need) * 60 (a gap on the way does not move this)
            first = float(span[0] + need) * 60.0
            if fitting:     # the first fit under way: it comes when it ends, not a retrain_minutes after it began
                first = tried
            elif tried is not None:     # a fit tried and none came back: the next waits for retrain_minutes
                first = max(first, tried + self.retrain_minutes * 60)
        return {"needs_minutes": need, "have_minutes": have, "first_fit_after": first}

    def fit(self, now: float, map_fn=map, meanwhile=None, next_fit: float | None = None) -> "DemandForecaster":
        """Fit in this thread (offline replay, benchmarks); the gateway runs fit_job elsewhere.
        `map_fn` (a process pool's map) may fit the members side by side; `meanwhile()` is called while
        they are fitted (model.fit), with the model held before this fit still serving. `next_fit`: the time
        by which the next fit will have replaced this one (a replay's), see fit_job."""
        job = self.fit_job(now, next_fit)
        if job is None:
            if meanwhile is not None:
                meanwhile()
            return self
        fitted = None
        try:
            with model.fit_threads(self.n_threads):
                fitted = job.run(map_fn, meanwhile)
        finally:
            self.fit_done(fitted)
        return self

    def fit_job(self, now: float, next_fit: float | None = None) -> model.FitJob | None:
        """A picklable snapshot to train on, marking a fit in flight; None while one already is.
        Whoever runs it hands the result (or None on failure) back to fit_done.

        With `next_fit` (an offline replay: the gateway cannot know it, and a restart loses its live errors),
        a horizon whose live errors will decide its guard until then, whatever they turn out to be, gets no
        held-out fit: the verdict it gives would never be read, and it is most of a second fit."""
        with self._lock:
            if self._fitting:
                return None
            self._fitting = True
            self._last_fit_try = now
            last_k = min(minute_of(now), self._bins.last_k if self._bins.last_k is not None else 0)
            snap = self._bins.snapshot(last_k - int(self.history_days * 1440), last_k).without(self._curtailed)
            live = () if next_fit is None else tuple(
                h for h in self.horizons_minutes
                if self._rolling[h].holds_through(next_fit, self.rolling_min_count, self.rolling_min_hours * 3600))
            return model.FitJob(snap, self.calendar, self.horizons_minutes, last_k, self._stride(snap),
                                self.validation_days, now, self._model, live)

    def fit_done(self, fitted: model.FittedModel | None) -> None:
        with self._lock:
            self._fitting = False
            if fitted is not None:
                self._model = fitted

    def model_blob(self) -> bytes | None:
        with self._lock:
            return pickle.dumps(self._model) if self._model is not None else None

    def set_model_blob(self, blob: bytes) -> None:
        fitted = model.from_blob(blob)
        if fitted is None:
            raise ValueError("not a fitted forecaster model")
        # The configuration may have changed since the fit: a horizon it has no model for would serve
        # persistence, and a model fed another zone's hours or holidays reads the day shifted (its 60-minute
        # error doubled on the Turin year), each until the next refit, up to retrain_minutes later.
        had, want = sorted(fitted.asked or fitted.horizons), sorted(self.horizons_minutes)
        if not set(want) <= set(had):
            raise model.OtherSettings(f"fitted for horizons {'/'.join(map(str, had))} min, not "
                                      f"{'/'.join(map(str, want))}")
        if fitted.calendar and tuple(fitted.calendar) != self.calendar.settings:
            raise model.OtherSettings(f"fitted for {_calendar_words(tuple(fitted.calendar))}, not "
                                      f"{_calendar_words(self.calendar.settings)}")
        with self._lock:
            self._model = fitted

    @property
    def fitted_model(self) -> model.FittedModel | None:
        return self._model

    def set_curtailed(self, spans) -> None:
        """The periods a demand-response event sheds the building's load: (start, end) epoch seconds, end
        None (or inf) for an event with no end yet; the whole list each time. Their minutes, and rebound_minutes after
        each, stay out of training and live errors, and reference days and the load thresholds read them as the
        reference days had them (features.references): a shed afternoon taught
        as a normal one has next week's peak forecast low, and the high-load flag late, on the hot days
        events come on. The forecast starts from the power as metered, but for a target after the end of
        the shed under way: that one starts from the building as its reference days have it, so the load
        coming back at the end of an event is forecast, and the high-load flag is on for it in time."""
        sheds, kept = [], []
        for start, end in spans:
            end = None if end == math.inf else end      # no end either way
            if start is None or not math.isfinite(start) or (end is not None and not math.isfinite(end)):
                continue
            if end is None or end > start:
                first = math.floor(start / 60.0) + 1    # the minutes that hold readings after start
                sheds.append((first, 2 ** 62 if end is None else minute_of(end)))
                kept.append((first, 2 ** 62 if end is None else minute_of(end + self.rebound_minutes * 60.0)))
        kept = _merged(kept)
        with self._lock:
            self._sheds = _merged(sheds)
            if kept != self._curtailed:
                self._curtailed = kept
                self._thresholds = self._judged = None

    @property
    def curtailed(self) -> tuple[tuple[int, int], ...]:
        """The (first, last) minute numbers set_curtailed keeps out, merged, the rebound included."""
        return self._curtailed

    def curtailed_minutes(self) -> int:
        """Minutes of the history held that set_curtailed keeps out."""
        with self._lock:
            span = self._bins.span()
            if span is None:
                return 0
            return sum(max(0, min(last, span[1]) - max(first, span[0]) + 1) for first, last in self._curtailed)

    # ---- forecasting ---------------------------------------------------------------------
    def _thresholds_at(self, snap, k_done: int) -> tuple[float | None, float | None]:
        slot = k_done // 15
        if self._thresholds is not None and self._thresholds[0] == slot:
            return self._thresholds[1], self._thresholds[2]
        hi, lo = self.high_load_kw, self.low_load_kw
        ks = np.arange(k_done - int(self.threshold_days * 1440) + 15, k_done + 1, 15)
        d = features.demand(snap, ks)
        d = d[np.isfinite(d)]
        # Percentiles of under a day of history would call every afternoon a peak.
        # A forecast below 0 for a site that never drew less (a sub-meter reading 0 at night) is no load at all
        self._floor = 0.0 if d.size >= 96 and float(d.min()) >= 0 else None
        if (hi is None or lo is None) and d.size >= 96:
            p_hi, p_lo = (float(np.percentile(d, q)) for q in (self.high_percentile, self.low_percentile))
            merged_hi = p_hi if hi is None else hi
            merged_lo = p_lo if lo is None else lo
            # A flat history (a stuck meter, a data centre, a site idle most of the time) has no peak and no valley;
            # a configured threshold on the wrong side of the other's percentile would, like a flat one, turn
            # both flags on together (shed and charge at once). Only configured ones serve then.
            flat = p_hi - p_lo <= FLAT_SPREAD * max(abs(p_hi), abs(p_lo)) or _lag1(d) < FLAT_R1
            if not flat and merged_hi > merged_lo:
                hi, lo = merged_hi, merged_lo
        self._thresholds = (slot, hi, lo)
        return hi, lo

    def _slope(self, snap, k: int) -> float | None:
        wide = max(self.slope_minutes, features.DEMAND_MINUTES)
        ks = np.arange(k - wide + 1, k + 1)
        ks = ks[np.isfinite(snap.window_mean(ks, 1))]           # the minutes with readings, oldest first
        # Whole empty minutes between two readings longer than input_stale_seconds were a spell
        # without power (the points in fault): what came before it is another spell, and a slope
        # across it is the step over the gap, not a trend. The rate waits for two new minutes.
        silent = np.flatnonzero((np.diff(ks) - 1) * 60.0 > self.stale_seconds)
        if silent.size:
            ks = ks[silent[-1] + 1:]
        recent = ks[ks > k - self.slope_minutes]
        if recent.size < 2:
            # A meter read every few minutes leaves under two minutes in slope_minutes: widen to the
            # demand window rather than have the trend come and go from one cycle to the next. Only
            # for readings sparse all along (no two in adjacent minutes): a writer that wrote each
            # second and then paused (under input_stale_seconds) has a hole there, not a spacing.
            if ks.size < 2 or np.diff(ks).min() < 2:
                return None
            recent = ks
        y = snap.window_mean(recent, 1)
        x = snap.minute_time(recent)   # when the readings were taken, not the minute they round to
        x -= x.mean()
        return float(np.dot(x, y - y.mean()) / np.dot(x, x))

    def predict(self, now: float) -> Forecast:
        return self.predict_series([now])[0]

    def predict_series(self, times) -> list[Forecast]:
        """Forecasts for increasing issue times, the same as predict() at each time in turn with the
        model held now. Every feature looks back from its issue minute, so once the samples up to
        the last time are in, the learned part is computed for all times in one batch (replay)."""
        ks = np.array([minute_of(t) for t in times], dtype=np.int64)
        with self._lock:
            snap = self._bins.snapshot(int(ks[0]) - self._lookback_minutes, int(ks[-1]))
            fitted = self._model
            masked = snap.without(self._curtailed)
            sheds = self._sheds
        refs = features.references(masked, self.calendar)
        levels = features.demand(snap, ks)
        # Today as if not shed: the shed's own minutes read as the reference days have them, what came after as
        # metered. A forecast for a target after a shed's end starts from it as long as today's features still
        # reach into the shed (no row the model learned from had a shed in them), and so does the flags' arm rule
        today, arming = None, levels
        flagged = _after_shed(sheds, ks, self.horizons_minutes[-1])   # the flags' horizon, with the most such rows
        if flagged.any():
            today = features.references(snap.without(sheds), self.calendar)
            arming = np.where(flagged, features.demand(today, ks), levels)
        learned = {}
        for h in self.horizons_minutes:
            hm = fitted.horizons.get(h) if fitted else None
            if hm is not None:
                X, _ = features.build(snap, self.calendar, ks, h, refs)
                learned[h] = levels[:, None] + hm.members.predict_each(X)
                after = _after_shed(sheds, ks, h)
                if after.any():
                    X, level = features.build(today, self.calendar, ks[after], h, refs)
                    learned[h][after] = level[:, None] + hm.members.predict_each(X)
        return [self._issue(snap, masked, refs, fitted, float(t), int(k), float(levels[i]),
                            {h: v[i] for h, v in learned.items()}, float(arming[i]))
                for i, (t, k) in enumerate(zip(times, ks))]

    def _issue(self, snap, masked, refs, fitted, now: float, k: int, level: float,
               learned: dict[int, np.ndarray], arming: float) -> Forecast:
        """The sequential part of a forecast: the members' live weights, live validation, the guard,
        slope, thresholds, flags. `learned`: each member's forecast demand, per horizon. `masked` is `snap`
        without the curtailed minutes: a shed no forecast was told of counts against neither the model
        nor persistence. `refs` has them as the reference days had them, for the thresholds (as if not shed).
        `arming`: the level the flags' arm rule compares (predict_series)."""
        k_done = math.floor(now / 60.0)
        level_kw = level if math.isfinite(level) else None
        out: dict[int, float | None] = {}
        names = {}
        # The shed minutes as the building would have drawn them, not left out: sheds come at the peaks, and the
        # percentile of what was left fell with each one (a BAS whose own sheds were told of, every high hour,
        # took the high threshold below the night load within weeks: bench/README, closed loop). First: the floor
        # the forecasts below take comes with them
        hi_thr, lo_thr = self._thresholds_at(refs, k_done)

        def actual(j: int):
            a = float(features.demand(masked, np.array([j]))[0])
            return a if math.isfinite(a) else None

        def kept_out(j: int) -> bool:
            return bool(masked.set_aside) and math.isfinite(float(features.demand(snap, np.array([j]))[0]))

        for h in self.horizons_minutes:
            roll = self._rolling[h]
            roll.resolve(k_done, actual)
            errors = self._member_errors[h]
            errors.resolve(k_done, actual, kept_out)
            value, name = level_kw, PERSISTENCE
            x = None
            each = learned.get(h)
            if each is not None and np.all(np.isfinite(each)):
                x = float(model.combine(each, errors.weights()))
                errors.add(k + h, each)
            if x is not None and not self.min_kw <= x <= self.max_kw:
                # a 15-minute demand no input could ever average to (outside bacnet.input_min_kw..max_kw) is a
                # model gone wrong, whatever its live errors: persistence serves it, and it counts against nothing
                x = None
            if x is not None and self._floor is not None:
                x = max(x, self._floor)
            if x is not None and level_kw is not None and math.isfinite(x):
                roll.add(k + h, x, level)
                if self._serves(fitted.horizons[h], roll):
                    value, name = x, fitted.name
            out[h] = value
            names[h] = name
        rate = self._slope(snap, k)
        flag_on = out[self.horizons_minutes[-1]]
        # Near-flat loads (a data centre, a cold store) put the 10th and 90th percentiles closer than the
        # bands (3 % of each threshold): both flags latched on and stayed on. Cap each band at a quarter
        # of the gap, and let a flag turn on only while the other is off.
        gap = (hi_thr - lo_thr) / 4.0 if hi_thr is not None and lo_thr is not None else None
        arm = arming if math.isfinite(arming) else level_kw
        spread = 4.0 * gap if gap is not None else 0.0
        high = self._high.update(now, flag_on, hi_thr, arm, max_band=gap, blocked=self._low.on, spread=spread)
        low = self._low.update(now, flag_on, lo_thr, arm, max_band=gap, blocked=high, spread=spread)
        kinds = set(names.values())
        label = kinds.pop() if len(kinds) == 1 else ",".join(f"{h}:{n}" for h, n in names.items())
        fc = Forecast(now, out, rate, high, low, hi_thr, lo_thr, label, level_kw)
        self.last_forecast = fc
        return fc

    def _serves(self, hm: model.HorizonModel, roll: _Rolling) -> bool:
        m, p, n = roll.rmse()
        # A few quiet night hours alone favour persistence and would hand it the morning ramp
        # (after every restart): live errors overrule the held-out verdict once they span a day.
        if n >= self.rolling_min_count and roll.span_seconds() >= self.rolling_min_hours * 3600:
            return m <= p
        # Too few live checks yet: trust the held-out verdict from fitting.
        return hm.beats_persistence

    # ---- reporting -----------------------------------------------------------------------
    def status(self) -> dict:
        with self._lock:
            fitted = self._model
            span = self._bins.span()
            n = len(self._bins)
            fitting = self._fitting
        horizons = {}
        for h in self.horizons_minutes:
            hm = fitted.horizons.get(h) if fitted else None
            m, p, cnt = self._rolling[h].rmse()
            serving = PERSISTENCE
            if hm is not None and self._serves(hm, self._rolling[h]):
                serving = fitted.name
            horizons[h] = {
                "serving": serving,
                "validation_rmse_kw": _num(hm.val_rmse) if hm else None,
                "validation_persistence_rmse_kw": _num(hm.val_persistence_rmse) if hm else None,
                # end of the data the held-out verdict scored: before the fit's own end when carried over
                "validated_until": (hm.validated_until_minute * 60.0
                                    if hm and hm.validated_until_minute is not None else None),
                "rolling_rmse_kw": m, "rolling_persistence_rmse_kw": p, "rolling_count": cnt,
            }
        last = self.last_forecast
        return {
            "model": last.model if last else (PERSISTENCE if not fitted else fitted.name),
            "history_minutes": n,
            # starts of the first and last minutes held (minute k ends at k * 60: the last one, still
            # filling, would read as a time in the future)
            "history_first": (span[0] - 1) * 60.0 if span else None,
            "history_last": (span[1] - 1) * 60.0 if span else None,
            "last_fit_at": fitted.fitted_at if fitted else None,
            "last_fit_seconds": fitted.fit_seconds if fitted else None,
            "trained_until": fitted.trained_until_minute * 60.0 if fitted else None,
            "train_rows": fitted.train_rows if fitted else 0,
            "fitting": fitting,
            "rejected_samples": self.rejected,
            "curtailed_minutes": self.curtailed_minutes(),
            "horizons": horizons,
            "learning": self.learning(),
        }


def _merged(spans: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for first, last in sorted(spans):
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return tuple(out)


def _after_shed(sheds: tuple[tuple[int, int], ...], ks: np.ndarray, h: int) -> np.ndarray:
    """Issue minutes whose target, h minutes on, comes after the end of a shed that today's features reach into."""
    out = np.zeros(ks.size, dtype=bool)
    for first, last in sheds:
        out |= (ks >= first) & (ks < last + features.TODAY_MINUTES) & (ks + h > last)
    return out


def _num(x: float) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _calendar_words(settings: tuple) -> str:
    """Calendar.settings for the log: 'time zone Europe/Rome, holiday preset IT and holidays [...]' (and the week)."""
    zone, preset, holidays, *week = settings
    words = f"time zone {zone}, holiday preset {preset or 'none'} and holidays {list(holidays)}"
    if week:
        rest, partial = week[0]
        words += f", resting {'/'.join(rest) or 'no day'} and partly open {'/'.join(partial) or 'no day'}"
    return words


def _lag1(x: np.ndarray) -> float:
    """The lag-1 autocorrelation of a series (0 for a constant one)."""
    x = x - x.mean()
    power = float(x @ x)
    return float(x[1:] @ x[:-1]) / power if power > 0 else 0.0
