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
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from .core import DemandForecaster
from .model import fit_threads

OUTPUT_COLUMNS = ("issued_at", "horizon_minutes", "target_time", "forecast_kw", "high_load", "low_load", "model")
# The live default schedule (daily); pass retrain_minutes to replay another one.
REPLAY_RETRAIN_MINUTES = 1440.0
# Cycles between fits are predicted in batches of up to a day: far cheaper than one by one, and the
# same forecasts, as long as the history window holds the features' look-back plus this day.
BATCH_SECONDS = 86400.0


class ReplayInputError(ValueError):
    """The CSV cannot be replayed; the message names the file, row or column."""


def parse_time(text: str, tz: ZoneInfo) -> float:
    """Epoch seconds from an ISO 8601 timestamp (naive means the forecaster's time zone) or a number."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    d = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if d.tzinfo is None:
        d = d.replace(tzinfo=tz)
    return d.timestamp()


def read_series(csv_path, time_column: str, value_column: str, tz: ZoneInfo) -> tuple[np.ndarray, np.ndarray, int]:
    """(times, values, skipped rows) sorted by time; lines starting with '#' are comments."""
    path = Path(csv_path)
    try:
        fh = path.open(newline="", encoding="utf-8")
    except OSError as err:
        raise ReplayInputError(f"{path}: cannot read: {err.strerror}") from None
    times, values, skipped = [], [], 0
    with fh:
        reader = csv.DictReader(line for line in fh if not line.lstrip().startswith("#"))
        cols = reader.fieldnames or []
        for c in (time_column, value_column):
            if c not in cols:
                raise ReplayInputError(f"{path}: no column {c!r}; columns are {', '.join(cols) or '(none)'}")
        for row in reader:
            try:
                t = parse_time(row[time_column], tz)
                v = float(row[value_column])
            except (TypeError, ValueError):
                skipped += 1
                continue
            times.append(t)
            values.append(v)
    if not times:
        raise ReplayInputError(f"{path}: no usable rows in columns {time_column!r}, {value_column!r}")
    t, v = np.array(times), np.array(values)
    order = np.argsort(t, kind="stable")
    return t[order], v[order], skipped


def _limit_threads(n_threads: int) -> None:
    # Each pool process fits one horizon; more threads than the forecaster's setting would
    # only fight the other process for the same cores. The limiter lives as long as the process.
    global _limits
    _limits = fit_threads(n_threads)


@contextlib.contextmanager
def fit_map(processes: int, n_threads: int = 1):
    """A map function for the horizons' fits: a pool of `processes` processes, or map itself."""
    if processes <= 1:
        yield map
        return
    # spawn, not fork: a fork taken after OpenMP started its threads can hang in the child.
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_limit_threads, initargs=(n_threads,)) as pool:
        yield pool.map


def replay_series(times, values, write_row, cycle_minutes: float = 15, fit_processes: int | None = None,
                  **forecaster_params) -> dict:
    """Replay a series; fits run in `fit_processes` processes, one horizon each (default: one per
    horizon, at most one per core)."""
    forecaster_params.setdefault("retrain_minutes", REPLAY_RETRAIN_MINUTES)
    fc = DemandForecaster(**forecaster_params)
    cycle = float(cycle_minutes) * 60.0
    if cycle <= 0:
        raise ValueError("cycle_minutes must be positive")
    if fit_processes is None:
        fit_processes = min(len(fc.horizons_minutes), os.cpu_count() or 1)
    if fit_processes < 1:
        raise ValueError("fit_processes must be at least 1")
    with fit_map(fit_processes, fc.n_threads) as map_fn:
        summary = _replay(fc, times, values, write_row, cycle, map_fn)
    summary["fit_processes"] = fit_processes
    return summary


def _replay(fc: DemandForecaster, times, values, write_row, cycle: float, map_fn) -> dict:
    t0 = time.perf_counter()
    fit_s, fits, cycles, accepted = 0.0, 0, 0, 0
    models: dict[str, int] = {}
    pending: list[float] = []

    def issue_pending() -> None:
        nonlocal cycles
        for f in fc.predict_series(pending):
            models[f.model] = models.get(f.model, 0) + 1
            for h, kw in f.demand_kw.items():
                write_row(f, h, kw)
        cycles += len(pending)
        pending.clear()

    i, n = 0, len(times)
    now = math.ceil(times[0] / cycle) * cycle
    end = times[-1]
    while now - cycle < end:  # the last cycle is the first one at or after the last sample
        while i < n and times[i] <= now:
            accepted += fc.add_sample(float(times[i]), float(values[i]))
            i += 1
        if fc.needs_fit(now):
            if pending:  # issued before this fit, so by the model that served then
                issue_pending()
            f0 = time.perf_counter()
            fc.fit(now, map_fn)
            fit_s += time.perf_counter() - f0
            fits += 1
        pending.append(now)
        if now - pending[0] >= BATCH_SECONDS:
            issue_pending()
        now += cycle
    if pending:
        issue_pending()
    return {"cycles": cycles, "samples": n, "accepted": accepted, "rejected": fc.rejected, "fits": fits,
            "fit_seconds": round(fit_s, 2), "elapsed_seconds": round(time.perf_counter() - t0, 2),
            "models": models, "retrain_minutes": fc.retrain_minutes}


def replay_csv(csv_path, time_column: str, value_column: str, output_path, cycle_minutes: float = 15,
               fit_processes: int | None = None, **forecaster_params) -> dict:
    """Replay a CSV and write `OUTPUT_COLUMNS` rows to output_path; returns a summary dict."""
    tz = ZoneInfo(forecaster_params.get("timezone", "UTC"))
    times, values, skipped = read_series(csv_path, time_column, value_column, tz)

    def iso(t: float) -> str:
        return dt.datetime.fromtimestamp(t, tz).isoformat()

    out = Path(output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(OUTPUT_COLUMNS)

        def write_row(f, h, kw):
            w.writerow((iso(f.issued_at), h, iso(f.issued_at + h * 60), "" if kw is None else f"{kw:.3f}",
                        int(f.high_load), int(f.low_load), f.model))

        summary = replay_series(times, values, write_row, cycle_minutes, fit_processes, **forecaster_params)
    summary["skipped_rows"] = skipped
    summary["output"] = str(out)
    return summary
