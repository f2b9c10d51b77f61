"""Offline replay: run a historical kW series through DemandForecaster in simulated time.

Each cycle adds the samples up to the cycle time, refits when the schedule says so, predicts, and
writes one row per horizon. Nothing waits on a clock, so a year of 15-minute data takes minutes.
"""
from __future__ import annotations

import contextlib
import csv
import datetime as dt
import math
import multiprocessing
import multiprocessing.resource_tracker
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from .core import DEFAULT_MAX_KW, DEFAULT_MIN_KW, DemandForecaster
from .plausibility import UNIT_RATIO
from .export_csv import ReplayInputError, read_export, read_spans
from .model import fit_threads

OUTPUT_COLUMNS = ("issued_at", "horizon_minutes", "target_time", "forecast_kw", "high_load", "low_load", "model")
# The live default schedule (daily); pass retrain_minutes to replay another one.
REPLAY_RETRAIN_MINUTES = 1440.0
# Cycles between fits are predicted in batches of up to a day: far cheaper than one by one, and the
# same forecasts, as long as the history window holds the features' look-back plus this day.
BATCH_SECONDS = 86400.0
# No held-out fit for a horizon whose live errors decide its guard until the next refit (DemandForecaster.fit_job):
# the forecasts are the same, as the guard would not read the verdict.
LIVE_GUARD_ONLY = True


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity (taskset, a cpuset) and a cgroup CPU quota (docker
    --cpus, systemd CPUQuota=), rounded up. os.cpu_count() counts the machine's: on a box or container
    given one core, replay ran a fit process per horizon side by side on it, slower than one and with
    three times the memory."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def _cgroup_cpu_quota() -> float | None:
    """CPUs' worth of time the cgroup hierarchy allows this process (the tightest level), None if unlimited."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    tightest = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2: cpu.max is "max 100000" or "QUOTA PERIOD"
            root, files = Path("/sys/fs/cgroup"), ("cpu.max",)
        elif "cpu" in controllers.split(","):
            root = next((Path("/sys/fs/cgroup", d) for d in (controllers, "cpu", "cpu,cpuacct")
                         if Path("/sys/fs/cgroup", d, "cpu.cfs_quota_us").exists()), None)
            files = ("cpu.cfs_quota_us", "cpu.cfs_period_us")
            if root is None:
                continue
        else:
            continue
        # Inside a container the path may name the host's hierarchy, which is not mounted here: the
        # levels that exist are read, from this process's own up to the mount's root
        level = Path(path.strip("/"))
        while True:
            quota = _read_quota(root / level, files)
            if quota is not None:
                tightest = quota if tightest is None else min(tightest, quota)
            if level == Path(""):
                break
            level = level.parent
    return tightest


def _read_quota(directory: Path, files: tuple[str, ...]) -> float | None:
    try:
        if len(files) == 1:
            quota, period = (directory / files[0]).read_text().split()[:2]
        else:
            quota, period = ((directory / f).read_text().strip() for f in files)
        if quota in ("max", "-1") or float(period) <= 0:
            return None
        return float(quota) / float(period)
    except (OSError, ValueError):
        return None


def _start_worker(n_threads: int) -> None:
    # Ctrl-C is the replay's process's to answer (it ends the pool); here it came in the middle of the imports
    # and printed a traceback or a "Fatal Python error". Born with it blocked (_ctrl_c_held), ignored from here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    # Each pool process fits one horizon; more threads than the forecaster's setting would
    # only fight the other process for the same cores. The limiter lives as long as the process.
    global _limits
    _limits = fit_threads(n_threads)


@contextlib.contextmanager
def _ctrl_c_held(block: bool = False):
    """Ctrl-C held off until the block ends, then raised: multiprocessing interrupted while it started its resource
    tracker or registered a lock printed "Exception ignored in: <Finalize object, dead>" and a leaked-semaphore
    warning, or hung. With `block`, also blocked in this thread, so the processes spawned meanwhile inherit it
    (the tracker, once it runs, is not started again: its start unblocks it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came = []
    previous = signal.signal(signal.SIGINT, lambda *_: came.append(True))
    if block:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        if block:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})   # one pending is handled here, held
        signal.signal(signal.SIGINT, previous)
        if came and callable(previous):
            previous(signal.SIGINT, None)       # Python's own: KeyboardInterrupt


@contextlib.contextmanager
def fit_map(processes: int, n_threads: int = 1):
    """A map function for the horizons' fits: a pool of `processes` processes, or map itself."""
    if processes <= 1:
        yield map
        return
    with _ctrl_c_held():
        multiprocessing.resource_tracker.ensure_running()
        # spawn, not fork: a fork taken after OpenMP started its threads can hang in the child.
        pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker, initargs=(n_threads,))

    def pool_map(fn, *iterables):
        with _ctrl_c_held(block=True):      # it submits every call here, spawning the processes it lacks
            return pool.map(fn, *iterables)

    try:
        yield pool_map
    finally:
        # after a Ctrl-C, the fits under way end first (their processes ignore it): seconds in a replay
        with _ctrl_c_held():
            pool.shutdown(wait=True, cancel_futures=True)


def _cycle_seconds(cycle_minutes) -> float:
    cycle = float(cycle_minutes) * 60.0
    if not (math.isfinite(cycle) and cycle >= 60.0):  # the history is kept in 1-minute means
        raise ValueError(f"cycle_minutes must be at least 1 minute, got {cycle_minutes!r}")
    return cycle


def replay_series(times, values, write_row, cycle_minutes: float = 15, fit_processes: int | None = None,
                  on_gap=None, curtailed=(), **forecaster_params) -> dict:
    """Replay a series (finite times, sorted); fits run in `fit_processes` processes, one horizon each
    (default: one per horizon, at most one per core). `curtailed`: (start, end) epoch seconds of the
    demand-response events the building shed for (DemandForecaster.set_curtailed). Given all at once:
    every use of them looks back from its issue time, so an event later in the series changes nothing before it.

    A gap between samples longer than the forecaster keeps history (`keep_days`) is not walked cycle by
    cycle: nothing from before it would be left to forecast from, and a mistyped year would mean
    millions of empty cycles. The replay resumes at the first sample after it, with a forecaster that
    holds only the model fitted before the gap, and calls on_gap(index before, index after)."""
    forecaster_params.setdefault("retrain_minutes", REPLAY_RETRAIN_MINUTES)
    cycle = _cycle_seconds(cycle_minutes)
    times = np.asarray(times, dtype=float)
    if not times.size:
        raise ValueError("no samples to replay")
    if not np.all(np.isfinite(times)) or np.any(np.diff(times) < 0):
        raise ValueError("times must be finite and sorted")
    fc = DemandForecaster(**forecaster_params)
    fc.set_curtailed(curtailed)
    if fit_processes is None:
        fit_processes = min(len(fc.horizons_minutes), usable_cpus())
    if fit_processes < 1:
        raise ValueError("fit_processes must be at least 1")

    def after_gap(old: DemandForecaster) -> DemandForecaster:
        new = DemandForecaster(**forecaster_params)
        new.set_curtailed(curtailed)
        blob = old.model_blob()
        if blob is not None:
            new.set_model_blob(blob)
        new.rejected, new.implausible_rejected = old.rejected, old.implausible_rejected
        return new

    with fit_map(fit_processes, fc.n_threads) as map_fn:
        summary = _replay(fc, times, values, write_row, cycle, map_fn, after_gap, on_gap)
    summary["fit_processes"] = fit_processes
    return summary


def _replay(fc: DemandForecaster, times, values, write_row, cycle: float, map_fn, after_gap, on_gap) -> dict:
    t0 = time.perf_counter()
    fit_s, issuing, fits, cycles, accepted, gaps = 0.0, 0.0, 0, 0, 0, 0
    models: dict[str, int] = {}
    pending: list[float] = []
    max_gap = fc.keep_days * 86400.0

    def issue_pending() -> None:
        nonlocal cycles
        for f in fc.predict_series(pending):
            models[f.model] = models.get(f.model, 0) + 1
            for h, kw in f.demand_kw.items():
                write_row(f, h, kw)
        cycles += len(pending)
        pending.clear()

    def issue_timed() -> None:
        # "fit_seconds" counts the wait for the fits, not the forecasts issued meanwhile
        nonlocal issuing
        i0 = time.perf_counter()
        issue_pending()
        issuing = time.perf_counter() - i0

    i, n = 0, len(times)
    now = _first_cycle(fc, times[0], cycle)
    end = times[-1]
    while now - cycle < end:  # the last cycle is the first one at or after the last sample
        while i < n and times[i] <= now:
            accepted += fc.add_sample(float(times[i]), float(values[i]))
            i += 1
        if fc.needs_fit(now):
            f0 = time.perf_counter()
            # the cycles before this fit are issued by the model that served then, while the fit runs
            fc.fit(now, map_fn, meanwhile=issue_timed if pending else None,
                   next_fit=now + fc.retrain_minutes * 60 + cycle if LIVE_GUARD_ONLY else None)
            fit_s += time.perf_counter() - f0 - issuing
            issuing = 0.0
            fits += 1
        pending.append(now)
        if now - pending[0] >= BATCH_SECONDS:
            issue_pending()
        if i < n and times[i] - times[i - 1] > max_gap:
            # This cycle is the first at or after the last sample before the gap, as at the series' end.
            issue_pending()
            gaps += 1
            if on_gap is not None:
                on_gap(i - 1, i)
            fc = after_gap(fc)
            now = _first_cycle(fc, times[i], cycle)
        else:
            now = now + cycle if cycle <= QUARTER_HOUR_S else _first_cycle(fc, now + 1.0, cycle)
    if pending:
        issue_pending()
    return {"cycles": cycles, "samples": n, "accepted": accepted, "rejected": fc.rejected, "fits": fits,
            "fit_seconds": round(fit_s, 2), "elapsed_seconds": round(time.perf_counter() - t0, 2),
            "models": models, "retrain_minutes": fc.retrain_minutes, "gaps_skipped": gaps,
            "implausible_rejected": fc.implausible_rejected, "threshold_days": fc.threshold_days}


QUARTER_HOUR_S = 900.0


def _first_cycle(fc: DemandForecaster, t: float, cycle: float) -> float:
    """The first cycle at or after t, on the building's wall clock: hourly cycles in Kathmandu (+05:45) issue on its
    hours, not at :45, and daily ones at its midnight after a clock change too (every zone's quarter-hours are UTC
    ones, so 15-minute cycles are the same either way)."""
    def offset(x: float) -> float:
        return float(fc.calendar.local_seconds([int(x)])[0] - int(x))
    # the clocks may change before the next boundary (a day's cycle, Lord Howe's half hour): try it by each offset
    # met on the way, and take the first time whose own wall clock is on a boundary
    candidates = []
    for o in {offset(t + k * cycle) for k in range(3)}:
        first = math.ceil((t + o) / cycle) * cycle - o
        candidates += [x for x in (first, first + cycle) if x >= t and (x + offset(x)) % cycle == 0]
    return min(candidates, default=math.ceil(t / cycle) * cycle)


def replay_csv(csv_path, time_column, value_column: str, output_path, cycle_minutes: float = 15,
               fit_processes: int | None = None, time_format: str | None = None, encoding: str | None = None,
               decimal: str | None = None, value_unit: str | None = None, events_path=None, stamped: str = "end",
               **forecaster_params) -> dict:
    """Replay a CSV and write `OUTPUT_COLUMNS` rows to output_path; returns a summary dict, whose
    "notes" name the rows skipped and the gaps not replayed. `events_path`: a CSV of the events the
    building shed for (read_spans), kept out of learning as the gateway does. `stamped`: as read_export's.

    Rows are written to a hidden file beside output_path that replaces it only once the replay has
    succeeded: refused input or an interrupted run leaves no file that looks like a result."""
    _cycle_seconds(cycle_minutes)
    tz = ZoneInfo(forecaster_params.get("timezone", "UTC"))
    times, values, lines, skipped, notes, reading = read_export(
        csv_path, time_column, value_column, tz, time_format, encoding, decimal, value_unit, stamped)
    if reading:
        notes.insert(0, reading)
    curtailed = read_spans(events_path, tz, time_format, encoding) if events_path else []

    def iso(t: float) -> str:
        return dt.datetime.fromtimestamp(t, tz).isoformat()

    def on_gap(a: int, b: int) -> None:
        days = (times[b] - times[a]) / 86400.0
        notes.append(f"line {lines[a]} ({iso(times[a])}) to line {lines[b]} ({iso(times[b])}): a gap of "
                     f"{days:.1f} days, longer than the forecaster keeps history; not replayed")

    out = Path(output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A pipe or device (--output /dev/stdout) is written as it goes; a file, or the file a symlink
    # names, is written beside itself and renamed into place once the replay has succeeded.
    direct = os.path.exists(out) and not os.path.isfile(out)
    target = Path(os.path.realpath(out))
    # A pipe or device is opened by the name given: realpath turns /dev/stdout on a pipe into
    # /proc/PID/fd/pipe:[N], which names no file that can be opened.
    part = out if direct else target.with_name(f".{target.name}.partial")
    try:
        with part.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(OUTPUT_COLUMNS)

            def write_row(f, h, kw):
                w.writerow((iso(f.issued_at), h, iso(f.issued_at + h * 60), "" if kw is None else f"{kw:.3f}",
                            int(f.high_load), int(f.low_load), f.model_for(h)))

            summary = replay_series(times, values, write_row, cycle_minutes, fit_processes, on_gap=on_gap,
                                    curtailed=curtailed, **forecaster_params)
        if not summary["accepted"]:
            raise ReplayInputError(f"{csv_path}: none of the {len(times)} rows in {value_column!r} holds a "
                                   "usable kW value (non-finite or outside the forecaster's min_kw..max_kw); "
                                   "nothing to replay")
        if not direct:
            os.replace(part, target)
    except BaseException:
        if not direct:
            part.unlink(missing_ok=True)
        raise
    implausible, days = summary["implausible_rejected"], summary.pop("threshold_days")  # days: a setting, not a count
    if outside := summary["rejected"] - implausible:
        # counted only, where every other row left out is named: a 150 MW site's peaks over the default bound went
        # unsaid, and the flags came from the rest
        lo, hi = forecaster_params.get("min_kw", DEFAULT_MIN_KW), forecaster_params.get("max_kw", DEFAULT_MAX_KW)
        notes.append(f"{outside:,} row(s) outside {lo:g}..{hi:g} kW (bacnet.input_min_kw..input_max_kw with --config) "
                     "not replayed, as the gateway would not take them")
    if implausible:
        notes.append(f"{implausible:,} row(s) over {UNIT_RATIO:g} times the median 15-minute demand of the {days:g} "
                     "days before them (another unit: watts as kW?) not replayed, as the gateway would not take them")
    summary["skipped_rows"] = skipped
    if events_path:
        summary["events"] = len(curtailed)
    summary["output"] = str(out)
    summary["notes"] = notes
    return summary
