"""Asyncio glue around the demand forecaster: picks the power source, runs the cycle, persists.

Every `cycle_seconds` it predicts and hands the Forecast to `publish` on the event loop. Prediction
and SQLite writes run in one serial worker thread; fitting runs in a child process (ven.fit_worker),
so a fit never delays a publish, never holds this process's GIL, and leaves scikit-learn out of it.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import os
import pickle
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Callable

from bacnet_api.bug_guard import BugGuard
from bacnet_api.settle import Flapping, span
from forecaster import DemandForecaster, Forecast
from forecaster.core import DEFAULT_MAX_KW, DEFAULT_MIN_KW, ClockStep
from forecaster.model import from_blob
from forecaster.store import ForecastStore

from .config import ForecasterConfig
from .fit_worker import fit_in_child
from .history import curtailed_spans
from .still_watch import StillWatch
from .storage_damage import ReadDamage
from .storage_fs_reason import with_fs_reason
from .storage_retry import REOPEN_SECONDS, ReopenTimer
from .storage_salvage import check_late
from .storage_sidecars import not_copied_yet, unpair_sidecars
from .tasks import cancel_and_wait
from .wallclock import CLOCK_STEP_S, PRUNE_HOLD_S, StepWatch

log = logging.getLogger(__name__)

# Pruning goes by the wall clock: right after a step years ahead it would delete the whole history.
# It waits wallclock.PRUNE_HOLD_S after any step, and an hour after start (a box may boot with its clock
# far ahead).
PRUNE_EVERY_S = 3600.0
# A deleted file comes back with the telemetry queue's next write, or the event store's check at least
# every 30 s (ven/schedule.py), whichever comes first.
DELETED_GRACE_S = 45.0
# Storage is often an SD card or eMMC, which small writes wear. The minutes of history and the issued
# forecasts are written every this many cycles (5 minutes at the default 60 s), in one transaction that
# rewrites the tables' last pages once instead of once a cycle (bench/storage_writes.py). A crash loses
# what was not yet written: the forecaster's history of those minutes (the 44 days it keeps are its
# own copy of the meter readings; the telemetry queue keeps each reading for the VTN) and those cycles'
# issued forecasts (the dashboard's chart and the load flags' state at a restart). A stop writes them.
SAVE_EVERY_CYCLES = 5
# ... except the first cycles of a run, each written: a gateway restarted every few minutes (killed short of memory,
# by its watchdog, a power supply failing) never reached its fifth cycle, and learnt nothing for as long as it lasted.
# They cost a few commits a start.
SAVE_FIRST_CYCLES = SAVE_EVERY_CYCLES
MAX_UNSAVED_FORECASTS = 1440    # kept for the next write while the file refuses writes: a day at 60 s
# A fit that failed (killed short of memory, a process that would not start) is tried again after
# retrain_minutes, then after twice that, four times ..., at most a day apart (or retrain_minutes if longer):
# a box that cannot fit is not pushed out of memory, with the BACnet side on it, every few minutes forever.
FIT_RETRY_MAX_MINUTES = 1440.0


def forecaster_params(c: ForecasterConfig) -> dict:
    """DemandForecaster keyword arguments from the [forecaster] section (shared with forecast-replay)."""
    return dict(
        horizons_minutes=c.horizons_minutes, slope_minutes=c.slope_minutes, high_load_kw=c.high_load_kw,
        low_load_kw=c.low_load_kw, threshold_days=c.threshold_days, hysteresis_fraction=c.hysteresis_fraction,
        min_on_minutes=c.min_on_minutes, min_off_minutes=c.min_off_minutes, arm_fraction=c.arm_fraction,
        history_days=c.history_days,
        retrain_minutes=c.retrain_minutes, stale_seconds=c.input_stale_seconds,
        timezone=c.timezone, holiday_preset=c.holiday_preset, holidays=c.holidays, rest_weekdays=c.rest_weekdays,
        partial_weekdays=c.partial_weekdays, rebound_minutes=c.rebound_minutes)


def forecaster_from_config(c: ForecasterConfig, min_kw: float = DEFAULT_MIN_KW,
                           max_kw: float = DEFAULT_MAX_KW) -> DemandForecaster:
    return DemandForecaster(min_kw=min_kw, max_kw=max_kw, **forecaster_params(c))


class ForecastService:
    def __init__(self, config: ForecasterConfig, storage_path: str, publish: Callable[[Forecast], None],
                 clock: Callable[[], float] = time.time, min_kw: float = DEFAULT_MIN_KW,
                 max_kw: float = DEFAULT_MAX_KW,
                 reopen_seconds: float = REOPEN_SECONDS, events: Callable[[], list] = list,
                 stalled: Callable[[], None] = lambda: None, fault=None):
        """`fault`: the gateway's one storage fault (ven/storage_fault.py), told of the history's writes failing and
        working again in place of the service's own lines."""
        self.config = config
        self._fault = fault
        self.storage_path = storage_path
        # damage met by the chart's read of the history (/api/history), said once: it showed what memory holds, silently
        self.read_damage = ReadDamage(storage_path, log, fault)
        self._publish = publish
        # called after a cycle whose forecast did not reach the points (a bug): the last one is no longer live
        self._stalled = stalled
        self._published = 0     # forecasts the points were given
        self._clock = clock
        self.forecaster = forecaster_from_config(config, min_kw, max_kw)
        self._store: ForecastStore | None = None
        self._cycle_pool = ThreadPoolExecutor(1, thread_name_prefix="forecast-cycle")
        self._task: asyncio.Task | None = None
        every = f"tried again every {span(self.config.cycle_seconds)}"
        settle = 2 * self.config.cycle_seconds
        self._cycle_bug = BugGuard(log, "forecast cycle", f"the forecast points keep their last values, flagged fault; "
                                   f"{every}", settle_s=settle)
        self._stalled_bug = BugGuard(log, "showing the forecast points in fault", every)
        self._shed_bug = BugGuard(log, "reading the events' sheds for the forecaster", every, settle_s=settle)
        self._reopen_bug = BugGuard(log, "opening storage.path for the forecaster again", every, settle_s=settle)
        self.bugs = (self._cycle_bug, self._shed_bug, self._reopen_bug, self._stalled_bug)
        self._fit_task: asyncio.Task | None = None
        self._last_input_t: float | None = None
        self._last_input_mono = 0.0     # when the BAS wrote, by the monotonic clock
        self._last_meter_t: float | None = None
        # bas-shed-power: what the BAS sheds now on its own (kW, 0 when not), added back to each sample, and since when
        self._shed_kw = 0.0
        self._shed_since: float | None = None
        self._shed_over = False     # a sample with the shed added went over max_kw in this shed (said once)
        self._active: str | None = None
        # source auto: since when the meter stands in for the BAS input (monotonic), for the line that ends it
        self._meter_since: float | None = None
        self._silent: float | None = None     # ... and how long the BAS had not written then (wall clock, s)
        # source auto: the meter standing in for a BAS that writes late. A BAS writing on change of value
        # writes less often while the load is flat, sometimes just over input_stale_seconds: each such gap
        # is the same fallback, and the line back to the BAS input waits until it has written steadily (for
        # twice input_stale_seconds: longer than one gap, which lasts up to input_stale_seconds unnoticed)
        self._fallback = Flapping(2 * config.input_stale_seconds)
        self._meter_unsaid = False    # start-up's meter pick, said once the BAS has had its time to write
        self._rejecting = ""                       # the source whose samples are refused since the WARNING
        self._still = StillWatch(config.input_stale_seconds, lambda: self.forecaster.longest_still_minutes,
                                 config.threshold_days)
        self._fit_failures = 0                     # failed fits in a row: 0 while fits succeed
        self._fit_retry_at: float | None = None    # while they fail: the next try (monotonic: unmoved by clock steps)
        self._fit_short = False
        self._store_failing = False
        self._saved_minutes = 0     # written by the work _persist runs
        # the model's write was the one refused (a fit's blob, a megabyte: a near-full disk refuses it first, the
        # minutes going in before it), and it waits in memory
        self._saving_model = self._model_refused = False
        self.storage_error: str | None = None     # why storage.path took no write, while it does not (the status)
        self._missing_since: float | None = None    # the file found deleted (monotonic), while it stays so
        self._read_at_start = False                 # the file would not open at the start: its history was read
        self._warm: tuple | None = None             # warm_start()'s samples, seeded at start()
        self._unsaved_model: bytes | None = None    # a fitted model not yet written
        self._unsaved_forecasts: list[Forecast] = []   # issued, not yet written (SAVE_EVERY_CYCLES)
        self._cycles_run = 0
        self._samples_taken = 0     # accepted ones: with the cycles, what changes history() in memory (history_state)
        self._reopen_seconds = reopen_seconds
        self._reopen: ReopenTimer | None = None
        self._next_prune = time.monotonic() + PRUNE_EVERY_S   # monotonic: unmoved by clock steps
        self._steps = StepWatch()    # between cycles
        self._steps_seen = 0
        self._reload_lock = threading.Lock()
        self._reload_since: float | None = None
        # The last cycle had no fresh power (cold start, or a silence of input_stale_seconds): the first
        # accepted sample wakes the cycle instead of leaving the points in fault until the next one.
        self._starved = False
        self._wake = asyncio.Event()
        self.last_forecast: Forecast | None = None
        self.last_cycle_seconds: float | None = None
        # the schedule's kept events (frozen values; a change replaces one), asked on the loop before each cycle, and
        # the list the forecaster was last told of: kept, so that no object of it is freed and its id reused
        self._events_of = events
        self._events_told: list | None = None
        self._imported_sheds: list[tuple[float, float]] = []   # the events of an imported history (import-history)

    # ---- inputs (called on the event loop) ---------------------------------------------------------
    def _use_input(self, t: float) -> bool:
        if self._last_input_t is None:
            return False
        wall, mono = t - self._last_input_t, time.monotonic() - self._last_input_mono
        if abs(wall - mono) > CLOCK_STEP_S:
            # the wall clock stepped since the BAS wrote: its stamps no longer measure the time between (a step
            # either way said "no BAS input taken for 300 s" of a BAS that wrote a second before)
            return mono <= self.config.input_stale_seconds
        # abs: after the clock went back, an input stamped by the old clock is no fresher for it
        return abs(wall) <= self.config.input_stale_seconds

    def _switch(self, source: str, why: str) -> None:
        if source == self._active:
            return
        now = time.monotonic()
        if self.config.source == "auto" and source == "meter" and self._active is None:
            # at start-up the meter's first reading comes before the BAS's first write: which one it learns
            # from is said once, at the BAS's first write or input_stale_seconds later (_say_meter)
            self._active, self._meter_since, self._meter_unsaid = source, now, True
            return
        if self.config.source == "auto" and source == "meter":
            if self._fallback.bad(now):
                log.info("forecaster now learns from meter (%s)", why)
                self._meter_since = now
            else:
                log.debug("forecaster now learns from meter again (%s)", why)
        elif self.config.source == "auto" and self._fallback.open:
            self._fallback.bad(now)  # the meter stood in until now: steady from here, said once it holds
            log.debug("forecaster now learns from %s (%s)", source, why)
        else:
            log.info("forecaster now learns from %s (%s)", source, why)
            self._meter_since = None
        self._active, self._meter_unsaid = source, False

    def _say_back(self) -> None:
        """The BAS writes again: the fallback's end, once it has written for its settle period without one."""
        fb = self._fallback
        since = self._meter_since
        if not fb.open or since is None or not fb.good(time.monotonic()):
            return
        if fb.times == 1:
            # the meter stands in from input_stale_seconds into the BAS's silence: "after 8 s on the meter" alone read
            # as a BAS silent 8 s, not 5 min
            silent = f" (the BAS wrote nothing for {span(self._silent)})" if self._silent and self._silent > 0 else ""
            log.info("forecaster now learns from bacnet_input (BAS writes input-power-meter) after %s on the meter%s",
                     span(fb.last_bad - since), silent)
        else:
            log.info("forecaster learns from bacnet_input steadily again after %s: the BAS wrote input-power-meter "
                     "more than %g s apart %d times meanwhile, the meter standing in each time (a BAS writing on "
                     "change of value may need a longer forecaster.input_stale_seconds)", span(fb.last_bad - since),
                     self.config.input_stale_seconds, fb.times)
        self._meter_since = self._silent = None

    def _say_meter(self) -> None:
        if self._meter_unsaid and time.monotonic() - self._meter_since >= self.config.input_stale_seconds:
            log.info("forecaster now learns from meter (no BAS input taken for %g s since start)",
                     self.config.input_stale_seconds)
            self._meter_unsaid = False
            self._fallback.bad(self._meter_since)  # a fallback like any other: its end is said the same way
            self._fallback.bad(time.monotonic())

    def implausible(self, kw: float) -> str | None:
        """Why a power reading cannot be the building's (the forecaster's unit guard), and what to do if it is."""
        why = self.forecaster.implausible(kw)
        return f"{why} (if it is the site's power, set bacnet.input_max_kw to a few times its peak)" if why else None

    def _take(self, t: float, kw: float, source: str) -> None:
        fc = self.forecaster
        prev = fc.newest_sample_at
        if math.isfinite(kw):
            self._still.reading(t, kw, source)
        if self._shed_kw and math.isfinite(kw) and fc.min_kw <= kw <= fc.max_kw:
            # learnt as the building's load without the BAS's shed: a forecast that had learnt the sheds would
            # expect the drop that follows high load, and the flag the BAS sheds on would turn itself off
            kw = kw + self._shed_kw
            if kw > fc.max_kw and not self._shed_over:
                # once a shed: a BAS's estimate that runs over the bound does so at each peak of the load under it
                log.warning("%s %g kW with bas-shed-power %g kW added is over bacnet.input_max_kw (%g kW): learnt as "
                            "%g kW while it is, for the rest of this shed", source, kw - self._shed_kw, self._shed_kw,
                            fc.max_kw, fc.max_kw)
                self._shed_over = True
            kw = min(kw, fc.max_kw)
        ok = fc.add_sample(t, kw)
        self._samples_taken += ok
        if fc.clock_steps != self._steps_seen:
            self._steps_seen = fc.clock_steps
            self._clock_stepped(fc.last_clock_step)
        elif ok and prev is not None and t - prev > fc.stale_seconds:
            # After a gap the store may hold minutes the memory set aside at a step back (a box that
            # booted a day behind, then NTP put it right); a range with nothing stored costs one query.
            self._want_reload(prev)
        if ok and self._starved and not self.input_stale():
            self._starved = False   # one early cycle per silence, however many samples end it
            self._wake.set()
        if not ok and not self._rejecting:
            log.warning("forecaster rejecting %s samples: %s", source, self.implausible(kw) or fc.last_rejection)
        elif ok and self._rejecting:
            log.info("forecaster accepting %s samples again", source)
        self._rejecting = "" if ok else source

    def _clock_stepped(self, step: ClockStep) -> None:
        self._hold_prune()
        # what the step did, not the step: the clock watch says that ("wall clock went back 60 min (set by NTP or by
        # hand)"), and two lines beginning "wall clock went back 60 min" in one second read as two steps
        if not step.reset:
            log.warning("forecaster history: %d minutes stamped after %s set aside (the wall clock went back %s; the "
                        "newest reading was %s)", step.dropped_minutes, _iso(step.to_t), span(-step.seconds),
                        _iso(step.from_t))
            return
        log.warning("forecaster history: the wall clock %s %s (a reading stamped %s, the newest was %s), beyond the "
                    "history held: %d minutes set aside in memory; stored history for the new time reloads",
                    "went back" if step.seconds < 0 else "jumped ahead", span(abs(step.seconds)),
                    _iso(step.to_t), _iso(step.from_t), step.dropped_minutes)
        self._want_reload(step.to_t - self.forecaster.keep_days * 86400)

    def _want_reload(self, since: float) -> None:
        with self._reload_lock:
            self._reload_since = since if self._reload_since is None else min(self._reload_since, since)

    def _hold_prune(self) -> None:
        self._next_prune = max(self._next_prune, time.monotonic() + PRUNE_HOLD_S)

    def on_input_power(self, t: float, kw: float | None) -> None:
        """The BAS wrote input-power-meter (None: it relinquished the point)."""
        if kw is None:
            self._last_input_t = None
            if self.config.source == "auto" and self._active == "bacnet_input":
                self._switch("meter", "BAS relinquished input-power-meter")
            return
        if self._active == "meter" and self._fallback.open and self._last_input_t is not None and self._silent is None:
            self._silent = t - self._last_input_t   # the gap that began the fallback, for the line that ends it
        self._last_input_t, self._last_input_mono = t, time.monotonic()
        if self.config.source in ("auto", "bacnet_input"):
            self._switch("bacnet_input", "BAS writes input-power-meter")
            self._say_back()
            self._take(t, kw, "input-power-meter")

    def on_shed(self, t: float, kw: float | None, since: float | None = None, by: str | None = None) -> None:
        """The BAS commanded bas-shed-power (None or 0: it sheds nothing now). `since`: a shed restored at a start,
        when it began (storage.path has it), so its age goes on across the restart. `by`: who wrote it."""
        relinquished, kw = kw is None, kw or 0.0
        # who: a shed is added to every sample learnt, and any device on the network may write it (bacnet.write_from)
        by = f", from {by}" if by else ""
        if kw and not self._shed_kw and since is not None and since <= t:
            log.info("BAS shed of %g kW (bas-shed-power) goes on from before the start, since %s", kw, _iso(since))
            self._shed_since = since
        elif kw and not self._shed_kw:
            log.info("BAS sheds %g kW (bas-shed-power%s): the forecaster adds it back to the power it learns from",
                     kw, by)
            self._shed_since = t
        elif self._shed_kw and not kw:
            log.info("BAS shed ended after %s (bas-shed-power %s%s)", span(max(0.0, t - self._shed_since)),
                     "relinquished" if relinquished else "0", by)
            self._shed_since, self._shed_over = None, False
        self._shed_kw = kw

    def on_meter(self, t: float, kw: float | None) -> None:
        """A gateway meter reading (None: the read failed; nothing enters the history)."""
        if kw is None:
            return
        self._last_meter_t = t
        if math.isfinite(kw):
            self.forecaster.reference = (t, kw, "the gateway meter's reading")
        if self.config.source == "meter" or (self.config.source == "auto" and not self._use_input(t)):
            if self.config.source == "auto" and self._active == "bacnet_input":
                self._switch("meter", f"no BAS input taken for {self.config.input_stale_seconds:g} s")
            else:
                self._switch("meter", "gateway meter")
                self._say_meter()
            self._take(t, kw, "meter")

    def _events_changed(self) -> list | None:
        """The schedule's events if any changed since the forecaster was told of them, else None (on the loop)."""
        events = self._events_of()
        told = self._events_told
        if told is not None and len(told) == len(events) and all(a is b for a, b in zip(told, events)):
            return None
        self._events_told = events
        return events

    def _tell_curtailed(self, events: list, now: float) -> None:
        at = dt.datetime.fromtimestamp(now, dt.timezone.utc)
        spans = curtailed_spans([ev.describe(at) for ev in events], now, now - self.forecaster.keep_days * 86400)
        self.forecaster.set_curtailed(spans + self._imported_sheds)

    def warm_start(self, times, values) -> None:
        """Seed the history (e.g. the shipped demo excerpt) at start(), into the minutes storage.path does not hold;
        persisted with the next cycle. Seeded before the file was read, a demo run again on its --storage file counted
        each minute it had seeded the time before twice."""
        self._warm = (times, values)
        if self._task is not None:      # started: the file is read already
            self._seed_warm()

    def _seed_warm(self) -> None:
        times, values = self._warm
        self._warm = None
        rejected = self.forecaster.rejected
        n = self.forecaster.seed(times, values, fill_only=True)
        held = len(times) - n - (self.forecaster.rejected - rejected)
        days = (max(times) - min(times)) / 86400 if n or held else 0.0
        if held:
            log.info("forecaster warm-started with %d of %d samples over %.1f days: the others fall in minutes the "
                     "stored history holds", n, n + held, days)
        else:
            log.info("forecaster warm-started with %d samples over %.1f days", n, days)

    # ---- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._store, loaded = await loop.run_in_executor(self._cycle_pool, self._open_store)
        except Exception as err:  # unwritable storage.path: forecast from memory, say so once
            self._store_failing = True      # _persist stays quiet from here on
            self.storage_error = with_fs_reason(str(err), self.storage_path)
            self._reopen = ReopenTimer(self._reopen_seconds)
            if self._fault is not None:
                self._fault.failed("forecaster", self.storage_error)
            else:
                log.error("storage.path %s: forecaster history cannot be stored (%s: %s); forecasting from "
                          "memory, stored once the file opens (tried every %g s)", self.storage_path,
                          type(err).__name__, self.storage_error, self._reopen_seconds)
            self._store, loaded = None, await loop.run_in_executor(self._cycle_pool, self._read_store)
        self._imported_sheds = loaded.get("set_aside", [])
        warmed = self._warm is not None
        if warmed:
            self._seed_warm()
        # warmed: the demo's "resumed 0 minutes ...; the history spans 20.5 days" read as a contradiction
        log.info("forecaster resumed %d minute%s of stored history%s%s%s", loaded["minutes"],
                 "" if loaded["minutes"] == 1 else "s", " besides the warm start" if warmed else "",
                 " and its fitted model" if loaded["model"] else self._learning_text(),
                 " (the file read as it is)" if self._read_at_start else "")
        for name, state in loaded.get("flags", {}).items():
            if state is not None and state[0]:
                log.info("forecaster resumed %s on, as since %s (its hysteresis and minimum on-time hold across "
                         "the restart)", name.replace("_", "-") + "-conditions", _iso(state[1]))
        self._task = asyncio.create_task(self._run(), name="forecast-cycle")

    def _learning_text(self) -> str:
        """When the first model comes, for the start-up line: a new install serves persistence for days."""
        learning = self.forecaster.learning()
        if learning is None:
            return ""
        need, have = span(learning["needs_minutes"] * 60), span(learning["have_minutes"] * 60)
        first = learning["first_fit_after"]
        if first is None:
            return f"; no model yet: the first is fitted once the history spans {need}, persistence serves until then"
        if first <= self._clock():
            return (f"; no model yet: the history spans {have}, the first is fitted now, in a minute or so (longer on "
                    f"a busy box: the fit takes idle CPU only), persistence serves until it is in")
        return (f"; no model yet: the first is fitted about {_iso(first)}, once the history spans {need} ({have} so "
                f"far), persistence serves until then")

    def _unpair(self) -> None:
        # this store opens the file for each write: after an `mv backup.sqlite gw.sqlite` under the running gateway it
        # is often the first to open the file put there, which SQLite paired with the old file's -wal
        unpair_sidecars(self.storage_path)

    def _open_store(self):
        store = ForecastStore(self.storage_path, before_connect=self._unpair)
        now = self._clock()
        try:
            store.prune_behind_newest(self.forecaster.keep_days * 86400, now)
        except sqlite3.Error:  # locked, say: the hourly prune does it; the history still loads
            pass
        return store, store.load_into(self.forecaster, now, flags=True)

    def _read_store(self) -> dict:
        """History, model and flags of a file that will not open for writing (a read-only mount, a full disk): the
        forecasts and thresholds rest on them at once, not on persistence and a day without thresholds until the
        file opens. The reopen then adds nothing again."""
        now = self._clock()
        try:
            loaded = ForecastStore(self.storage_path, read_only=True).load_into(self.forecaster, now, flags=True)
        except sqlite3.Error:   # unreadable too (or not there): from nothing, as before
            return {"minutes": 0, "model": False}
        self._read_at_start = True
        return loaded

    async def last_try(self) -> None:
        """At a stop, before stop(): a file that would not open at the start is tried once more now, not at the
        next cycle's retry, which never comes; the history kept in memory then goes to it with stop()'s flush."""
        if self._store is None and self._reopen is not None:
            self._reopen.expire()
            await asyncio.get_running_loop().run_in_executor(self._cycle_pool, self._reopen_store, self._clock())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        await cancel_and_wait(self._fit_task)  # kills a fit process still running; its model is not kept
        self._fit_task = None
        if self._store is not None:
            await asyncio.get_running_loop().run_in_executor(self._cycle_pool, self._flush)
        self._cycle_pool.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            published = self._published
            with self._cycle_bug.guard():    # a bug in one cycle must not end forecasting, nor fill the log
                await self._turn(loop)
            if self._published == published or self._cycle_bug.failing:
                # a frozen forecast with statusFlags normal reads as live to a BAS holding its peak on it. In fault
                # until the log's "works again", not only after each failed cycle: a bug met by every other cycle is
                # one fault, not a BAS alarm and its return each minute (a forecast published in this same pass is
                # not seen by the BAS in between: no await since)
                with self._stalled_bug.guard():
                    self._stalled()
            if self._cycle_bug.failing:
                self._wake.clear()      # a failed turn waits its cycle out too, not round again at once
            # the cadence runs on from an early cycle. Not wait_for: on Python 3.11 a wake-up in the moment the
            # task is cancelled wins over the cancel, and the stop waited for ever
            try:
                async with asyncio.timeout(max(0.0, self.config.cycle_seconds - (loop.time() - started))):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _turn(self, loop: asyncio.AbstractEventLoop) -> None:
        now = self._clock()
        with self._shed_bug.guard():
            events = self._events_changed()
            if events is not None:    # before a fit is cut: a shed is not learned as a normal afternoon
                try:
                    await loop.run_in_executor(self._cycle_pool, self._tell_curtailed, events, now)
                except BaseException:
                    self._events_told = None    # told again at the next cycle, not taken as told
                    raise
        retry_due = self._fit_retry_at is None or time.monotonic() >= self._fit_retry_at
        if self._fit_task is None and retry_due and self.forecaster.needs_fit(now):
            self._fit_task = asyncio.create_task(self.fit(now), name="forecast-fit")
            self._fit_task.add_done_callback(self._fit_done)
        self._wake.clear()
        self._starved = self.input_stale()
        if self._starved:
            self._still.stopped(self._clock())
        cycle_started = loop.time()
        f = await loop.run_in_executor(self._cycle_pool, self._cycle, now)
        self.last_forecast = f
        self.last_cycle_seconds = loop.time() - cycle_started
        self._publish(f)
        self._published += 1

    # ---- worker-thread work ---------------------------------------------------------------------
    def _reopen_store(self, now: float) -> None:
        """The file would not open at start: try it again now and then. Once it opens, its history joins
        the one kept in memory (which is written to it with the next save), and whichever model is newer
        stays: the one fitted in memory, else the stored one."""
        if not self._reopen.due():
            return
        check_late(self.storage_path)
        try:
            store = ForecastStore(self.storage_path, before_connect=self._unpair)
            fitted = self.forecaster.model_blob()
            # read as it was at the start already: loaded again its minutes would count twice
            loaded = ({"minutes": 0, "model": False} if self._read_at_start
                      else store.load_into(self.forecaster, now, model=fitted is None))
            store.save_model(fitted)
        except (sqlite3.Error, OSError):  # still not there; the start already said so
            return
        except Exception as err:  # noqa: BLE001 - a bug, not the file: said once, and the cycle's forecast goes on
            self._reopen_bug.failed(err)
            return
        self._reopen_bug.worked()
        self._store, self._store_failing, self.storage_error = store, False, None
        if loaded.get("set_aside"):
            self._imported_sheds = loaded["set_aside"]
            self._events_told = None    # told again at the next cycle, with these
        if self._fault is not None:
            found = [f"{loaded['minutes']} minute(s) of history" if loaded["minutes"] else "",
                     "its fitted model" if loaded["model"] else ""]
            self._fault.written("forecaster", self.forecaster.dirty_minutes, f"the forecaster took up the "
                                f"{' and '.join(f for f in found if f)} stored in it" if any(found) else "")
            return
        if self._read_at_start:
            log.info("storage.path %s: opened for the forecaster (its history was read at the start)",
                     self.storage_path)
            return
        log.info("storage.path %s: opened for the forecaster; %d stored minutes of history added%s",
                 self.storage_path, loaded["minutes"], " and its fitted model" if loaded["model"] else "")

    def _cycle(self, now: float) -> Forecast:
        mono = time.monotonic()
        if self._steps.stepped(now):   # seen here even with no readings
            self._hold_prune()
        if self._store is None:
            self._reopen_store(now)
        with self._reload_lock:
            since, self._reload_since = self._reload_since, None
        if since is not None and self._store is not None:
            # before this cycle's save: the minutes saved since the step are the ones memory holds
            self._persist(lambda s: self._reload(s, since, now))
        f = self.forecaster.predict(now)
        # kept as the BAS was served it: with no power for input_stale_seconds its points are in fault and both flags
        # off (app._on_forecast), and the history, its CSV and the chart showed high-load on (the forecaster's
        # minimum on-time holding it) and forecasts nobody was given
        kept = replace(f, demand_kw={}, rate_kw_per_min=None, high_load=False, low_load=False) \
            if self.input_stale() else f
        self._unsaved_forecasts = (self._unsaved_forecasts + [kept])[-MAX_UNSAVED_FORECASTS:]
        self._cycles_run += 1
        if (len(self._unsaved_forecasts) >= SAVE_EVERY_CYCLES or self._unsaved_model is not None
                or self._cycles_run <= SAVE_FIRST_CYCLES):
            self._persist(self._save)
        if mono >= self._next_prune:
            self._next_prune = mono + PRUNE_EVERY_S
            self._persist(lambda s: s.prune(now - self.forecaster.keep_days * 86400))
        return f

    def _reload(self, store: ForecastStore, since: float, now: float) -> None:
        # never before the kept window: a step to 2020 and back, both pending, must not span the years
        since = max(since, now - self.forecaster.keep_days * 86400)
        try:
            n = store.reload_into(self.forecaster, since, now)
        except sqlite3.DatabaseError as err:
            # a torn page of the history: tried again at every cycle, said as the history's writes refused and taken
            # again at each (two lines a cycle), while the minutes went on being stored. Said once; not tried again
            if not isinstance(err, sqlite3.OperationalError) and self._read_damaged(
                    err, "the forecaster cannot reload its stored history after the wall clock's step, and goes on "
                    "from the history it holds in memory"):
                return
            self._want_reload(since)   # tried again with the next cycle
            raise
        except BaseException:
            self._want_reload(since)   # tried again with the next cycle
            raise
        if n:
            log.info("forecaster reloaded %d stored minutes of history (%s to %s)", n, _iso(since), _iso(now))

    def _save(self, store: ForecastStore) -> None:
        """The minutes and forecasts not yet written, in one transaction, and a model not yet written."""
        ks, sums, counts = self.forecaster.drain_dirty()
        forecasts, self._unsaved_forecasts = self._unsaved_forecasts, []
        try:
            store.save(ks, sums, counts, forecasts)
        except BaseException:
            self.forecaster.mark_dirty(ks)  # written with the next save that succeeds
            self._unsaved_forecasts = (forecasts + self._unsaved_forecasts)[-MAX_UNSAVED_FORECASTS:]
            raise
        self._saved_minutes += len(ks)
        self._save_model(store)

    def _save_model(self, store: ForecastStore) -> None:
        blob = self._unsaved_model
        if blob is not None:
            self._saving_model = True
            store.save_model(blob)
            self._saving_model = False
            # a newer fit may have set another meanwhile (this runs on the worker thread): that one is still unsaved
            if self._unsaved_model is blob:
                self._unsaved_model = None

    def _flush(self) -> None:
        self._persist(self._save)

    def _persist(self, work) -> None:
        self._saved_minutes = 0
        # looked at before: the copy the other stores make of a deleted file may land while this write fails on it
        there = os.path.exists(self.storage_path)
        if self._store is not None and not_copied_yet(self.storage_path) and self._deleted_just_now(False):
            return      # deleted or replaced: the other stores' copy would overwrite what this wrote first
        try:
            work(self._store)
        except Exception as err:  # sqlite3 errors: keep forecasting, say so once
            if self._store is None:
                return      # the file did not open: the start's error stands, and its reopen is tried each cycle
            why = with_fs_reason(str(err), self.storage_path)
            model, self._saving_model = self._saving_model, False
            if not self._store_failing:
                if self._deleted_just_now(there):
                    return      # unsaved minutes stay dirty; the next cycle writes them
                self._model_refused = model
                if self._fault is not None:
                    # the minutes went in before it: not "forecast history is not stored"
                    self._fault.failed("forecaster", why, meanwhile="the forecaster's fitted model is not stored"
                                       if model else "")
                else:
                    log.error("storage.path %s: forecast history not stored (%s: %s); forecasting from memory "
                              "until it can", self.storage_path, type(err).__name__, why)
            self._store_failing, self.storage_error = True, why
        else:
            was_failing = self._store_failing
            self._store_failing, self.storage_error = False, None
            if was_failing and self._fault is not None:
                # those not written by this work (a prune, a model) go with the next save
                model = self._model_refused and self._unsaved_model is None
                self._fault.written("forecaster", self._saved_minutes + self.forecaster.dirty_minutes,
                                    "the forecaster's fitted model too" if model else "")
            elif was_failing:
                log.info("storage.path %s: forecast history written again", self.storage_path)
            self._model_refused = self._model_refused and self._unsaved_model is not None
            self._missing_since = None

    def _deleted_just_now(self, there: bool = True) -> bool:
        """The file is gone (an operator's clean-up): the gateway's other stores recreate it with its rows
        at their next write (ven/storage_follow.py follow_file), which this store cannot do, as it holds no
        connection to the old file. So the fault is only said once it outlasts DELETED_GRACE_S. `there`: the file
        was there when the failed write began (one missing then, and back now, was brought back meanwhile)."""
        if there and os.path.exists(self.storage_path):
            return False
        now = time.monotonic()
        if self._missing_since is None:
            self._missing_since = now
        return now - self._missing_since < DELETED_GRACE_S

    async def fit(self, now: float) -> bool | None:
        """One fit in a child process; the model serves, and is stored, when it comes back.
        True when it did, False when the history had too few usable rows, None if one was running."""
        job = self.forecaster.fit_job(now)
        if job is None:
            return None
        loop = asyncio.get_running_loop()
        fitted = None
        try:
            job_blob = await loop.run_in_executor(self._cycle_pool, pickle.dumps, job)
            blob = await fit_in_child(job_blob, self.forecaster.n_threads)
            fitted = await loop.run_in_executor(self._cycle_pool, from_blob, blob)
        finally:
            self.forecaster.fit_done(fitted)
        if fitted is not None:
            self._unsaved_model = blob      # until a write succeeds: a restart would otherwise fit again
            await loop.run_in_executor(self._cycle_pool, self._persist, self._save_model)
        return fitted is not None

    @property
    def shed_since(self) -> float | None:
        return self._shed_since

    def open_faults(self) -> list[str]:
        """What its log said began and has not said ended, for the stop line."""
        out = [f"forecaster fit failing ({self._fit_failures} tries)"] if self._fit_failures else []
        if self._rejecting:
            out.append(f"forecaster rejecting {self._rejecting} samples")
        if still := self._still.fault():
            out.append(still)
        return out

    def _fit_done(self, fut) -> None:
        self._fit_task = None
        if fut.cancelled():
            return
        err = fut.exception()
        if err is not None:
            retrain = self.config.retrain_minutes
            wait = min(retrain * 2 ** min(self._fit_failures, 20), max(retrain, FIT_RETRY_MAX_MINUTES))
            if not self._fit_failures:
                # the child's traceback, once: where it failed, for a bug report
                detail = getattr(err, "detail", "")
                log.error("forecaster fit failed: %s: %s; the last model or persistence serves, next try about %s%s",
                          type(err).__name__, err, _iso(self._clock() + wait * 60),
                          f"\n{detail}" if "\n" in detail else "")
            self._fit_failures += 1
            self._fit_retry_at = time.monotonic() + wait * 60
            return
        if self._fit_failures:
            log.info("forecaster fit succeeded again after %d failed tries", self._fit_failures)
        self._fit_failures, self._fit_retry_at = 0, None
        if fut.result() is False:   # sparse history: not a fault, but the operator should not read "fitted"
            if not self._fit_short:
                log.info("forecaster not fitted: %d minutes of history give too few complete 15-minute "
                         "demands to learn from; persistence serves, retried every %g min",
                         self.forecaster.history_minutes(), self.config.retrain_minutes)
            self._fit_short = True
            return
        self._fit_short = False
        log.info("%s", fitted_line(self.forecaster.status(), self.forecaster.validation_days,
                                   self.forecaster.rolling_min_hours))

    def input_stale(self) -> bool:
        """No accepted sample for input_stale_seconds: forecasts and flags rest on old power. The BAS
        must see that on the points (statusFlags fault), not 15 minutes later when the demand window
        empties."""
        newest = self.forecaster.newest_sample_at
        if self.config.source == "auto" and self._last_meter_t is not None:
            # the meter's readings are not taken while the BAS input is fresh: a BAS writing late and the meter's
            # first read after the limit lost would read as no power at all, with the meter answering
            newest = self._last_meter_t if newest is None else max(newest, self._last_meter_t)
        return newest is None or self._clock() - newest > self.config.input_stale_seconds

    # ---- operator view ----------------------------------------------------------------------------
    @property
    def storage_ok(self) -> bool:
        return not self._store_failing

    def fit_retry_at(self) -> float | None:
        """While fits fail: when the next is tried (epoch s; past while it runs); None while they succeed."""
        if self._fit_retry_at is None:
            return None
        return self._clock() + (self._fit_retry_at - time.monotonic())

    def status(self) -> dict:
        st = self.forecaster.status()
        st.update({
            "source": self.config.source, "active_source": self._active,
            "last_input_at": self._last_input_t, "last_meter_at": self._last_meter_t,
            "input_stale_seconds": self.config.input_stale_seconds,
            "storage_ok": self.storage_ok, "fit_ok": not self._fit_failures, "fit_retry_at": self.fit_retry_at(),
            "input_stale": self.input_stale(), "input_still_since": self._still.since(),
            # the cycle's error from the log's ERROR to its "works again": the forecast points read fault meanwhile
            "cycle_error": self._cycle_bug.error if self._cycle_bug.failing else None,
            # bas-shed-power: the kW added back to every sample while the BAS sheds, and since when (epoch s)
            "shed_kw": self._shed_kw, "shed_since": self._shed_since,
        })
        retry, learning = st["fit_retry_at"], st["learning"]
        if retry is not None and learning and learning["first_fit_after"] is not None:
            learning["first_fit_after"] = max(learning["first_fit_after"], retry)
        last = self.last_forecast_view()
        if last is not None:
            st["last_forecast"] = last
        return st

    def last_forecast_view(self) -> dict | None:
        """The last forecast published to the points, as plain values: /api/status's last_forecast and what
        /api/history says lies ahead, so the two never disagree and neither waits on storage.path."""
        f = self.last_forecast
        if f is None:
            return None
        return {"issued_at": f.issued_at, "demand_kw": {str(h): v for h, v in f.demand_kw.items()},
                "rate_kw_per_min": f.rate_kw_per_min, "high_load": f.high_load, "low_load": f.low_load,
                "high_threshold_kw": f.high_threshold_kw, "low_threshold_kw": f.low_threshold_kw}

    def _in_cycle_thread(self, fn):
        """fn() in the cycle's thread, after the flush history() makes: the chart shows the cycles not yet written
        too (SAVE_EVERY_CYCLES), and there a save swaps the unsaved list out while it writes (not read mid-save)."""
        def flushed():
            if self._store is not None:
                self._flush()
            return fn()
        try:
            return self._cycle_pool.submit(flushed).result()
        except RuntimeError:    # stopped: the stop wrote them
            return fn()

    def history_state(self) -> tuple:
        """What history() gives, but for the clock, taken without reading it: /api/history's ETag (Gateway.
        history_tag), so a dashboard's refresh with nothing new costs no read and no body. Memory by what changes it
        (the samples taken, the cycles run), storage.path by its and its WAL's inode, size and change time (a write
        of this process, or of a CLI beside it; after the flush history() makes, which is then no change)."""
        def taken() -> tuple:
            files = []
            for path in (self.storage_path, f"{self.storage_path}-wal"):
                try:
                    st = os.stat(path)
                    files.append((st.st_ino, st.st_size, st.st_mtime_ns))
                except (OSError, TypeError):
                    files.append(None)
            return (self._samples_taken, self._cycles_run, self._store is None, self._store_failing,
                    self.read_damage.error, *files)
        return self._in_cycle_thread(taken)

    def history(self, hours: float) -> dict:
        since = self._clock() - hours * 3600
        store = self._store
        # what the file refused is kept for the next write (MAX_UNSAVED_FORECASTS): the chart shows it as it will
        # be written. Taken before the read: one written meanwhile is in both, and counted once.
        unsaved = self._in_cycle_thread(lambda: self._unsaved_forecasts)
        stored = None
        if store is not None:
            try:
                stored = store.history(since)
            except sqlite3.Error as err:
                # read-only or full with no other connection holding it (the CLI, tests): a WAL file cannot be
                # read then either. The chart shows what memory holds, as when the file never opened.
                self._history_damaged(err)
        if stored is None:
            # the power (and so the demand) the forecaster holds in memory, rather than a chart claiming there
            # were no readings
            stored = {"power": self.forecaster.power_minutes(since), "forecasts": {}, "flags": {}}
        else:
            cut = stored.pop("unreadable", None)
            if cut is not None:
                self._history_damaged(sqlite3.DatabaseError(cut))
            if self._store_failing or cut is not None:     # the minutes not written (or not read) are in memory
                stored["power"] = _merged_power(stored["power"], self.forecaster.power_minutes(since))
        return _with_unsaved(stored, unsaved, since)

    def _history_damaged(self, err: sqlite3.Error) -> None:
        self._read_damaged(err, "the dashboard's chart (/api/history) shows the power the forecaster holds in memory, "
                           "and stored forecasts and load flags only up to the damage")

    def _read_damaged(self, err: sqlite3.Error, meanwhile: str) -> bool:
        """Whether `err`, a read's, is damage: said once (ReadDamage)."""
        # the store opens a connection for each read: name_damage reads the file's pages on one of its own, once
        conn = None
        if self.read_damage.error is None:
            try:
                conn = sqlite3.connect(f"{Path(self.storage_path).resolve().as_uri()}?mode=ro", uri=True)
            except sqlite3.Error:
                pass
        try:
            return self.read_damage.met(err, conn, meanwhile)
        finally:
            if conn is not None:
                conn.close()


_FLAG_KEYS = ("time", "high_load", "low_load", "high_threshold_kw", "low_threshold_kw", "model")


def _merged_power(stored: dict, held: dict) -> dict:
    kw = dict(zip(stored["time"], stored["kw"]))
    kw.update(zip(held["time"], held["kw"]))
    times = sorted(kw)
    return {"time": times, "kw": [kw[t] for t in times]}


def _with_unsaved(stored: dict, unsaved: list[Forecast], since: float) -> dict:
    """ForecastStore.history's lists with the forecasts not written yet in them, as the store will give them."""
    if not unsaved:
        return stored
    fl = stored["flags"] or {k: [] for k in _FLAG_KEYS}
    written = set(fl["time"]).union(*(f["issued_at"] for f in stored["forecasts"].values()))
    new = [f for f in unsaved if f.issued_at not in written]
    if not new:
        return stored
    flags = list(zip(*(fl[k] for k in _FLAG_KEYS)))
    flags += [(f.issued_at, f.high_load, f.low_load, _stored(f.high_threshold_kw), _stored(f.low_threshold_kw),
               f.model) for f in new if f.issued_at >= since]
    flags.sort(key=lambda r: r[0])
    forecasts = {}
    for h in sorted(set(stored["forecasts"]).union(*(f.demand_kw for f in new))):
        old = stored["forecasts"].get(h) or {"target_time": [], "issued_at": [], "forecast_kw": []}
        rows = list(zip(old["target_time"], old["issued_at"], old["forecast_kw"]))
        rows += [(f.issued_at + h * 60, f.issued_at, _stored(f.demand_kw[h])) for f in new
                 if h in f.demand_kw and f.issued_at + h * 60 >= since]
        rows.sort(key=lambda r: r[0])
        forecasts[h] = {k: [r[i] for r in rows] for i, k in enumerate(("target_time", "issued_at", "forecast_kw"))}
    return {**stored, "forecasts": forecasts, "flags": {k: [r[i] for r in flags] for i, k in enumerate(_FLAG_KEYS)}}


def _stored(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x   # SQLite keeps NaN as NULL


def fitted_line(st: dict, validation_days: float, rolling_min_hours: float) -> str:
    """The log line of a fit, from the forecaster's status after it."""
    parts = []
    for h, v in st["horizons"].items():
        part = f"{h} min {v['serving']}"
        if v["validation_rmse_kw"] is not None:
            # a refit within validation_days keeps the earlier fit's held-out scores: the same numbers day after
            # day read as a model that stopped learning
            until = v.get("validated_until")
            carried = (f", carried from the fit on data to {_iso(until)}"
                       if until is not None and st.get("trained_until") is not None and until < st["trained_until"]
                       else "")
            part += (f" (validation rmse {_kw(v['validation_rmse_kw'])} vs persistence "
                     f"{_kw(v['validation_persistence_rmse_kw'])}{carried})")
        parts.append(part)
    if any(v["validation_rmse_kw"] is None for v in st["horizons"].values()):
        # "validation rmse n/a" left the operator of a new install to guess why persistence went on serving
        # (DemandForecaster._serves: the held-out verdict, else a day of live checks)
        parts.append(f"no held-out validation yet (it needs over {validation_days:g} days of history): "
                     f"until then the model serves once {rolling_min_hours:g} h of its live forecasts beat "
                     f"persistence's")
    return (f"forecaster fitted on {st['train_rows']} rows in {st['last_fit_seconds'] or 0:.1f} s: "
            + "; ".join(parts))


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


def _kw(x) -> str:
    return "n/a" if x is None else f"{x:.1f} kW"
