"""A building whose week is not Monday to Friday: the forecast on its holidays, with and without its week set.

A synthetic office in Asia/Kathmandu (120 kW open 09-18 local, 40 kW closed, 2 kW noise), 8 weeks from 2026-02-01,
three holidays listed in forecaster.holidays, replayed through the real forecaster (forecaster.replay.replay_series,
15-minute cycles, daily refits). Prints the 60-minute MAE on the holidays and on the other days of the last three
weeks (persistence's cycles left out) for: a Monday-Friday office (the calendar's default week), a Sunday-Friday
office (Nepal) with the default week, the same without its holidays listed, and the same with
forecaster.rest_weekdays = ["saturday"], partial_weekdays = []. Asserts nothing.

    python bench/site_week.py

About a minute a run on 2 cores (the fits).
"""
from __future__ import annotations

import datetime as dt
import os
import random
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from forecaster.replay import replay_series  # noqa: E402

ZONE = "Asia/Kathmandu"
START = dt.datetime(2026, 2, 1, tzinfo=ZoneInfo(ZONE))
DAYS = 56
HOLIDAYS = ["2026-03-10", "2026-03-17", "2026-03-19"]        # a Tuesday, a Tuesday and a Thursday
NEPAL = {"rest_weekdays": ["saturday"], "partial_weekdays": []}


def series(workdays: set[int]) -> tuple[np.ndarray, np.ndarray]:
    rng = random.Random(3)
    t, v = [], []
    for i in range(DAYS * 96):
        wall = START + dt.timedelta(minutes=15 * i)
        open_now = wall.weekday() in workdays and str(wall.date()) not in HOLIDAYS and 9 <= wall.hour < 18
        t.append(wall.timestamp())
        v.append((120 if open_now else 40) + rng.gauss(0, 2))
    return np.array(t), np.array(v)


def run(workdays: set[int], holidays: list[str], week: dict) -> tuple[float, float, float]:
    started = dt.datetime.now().timestamp()
    t, v = series(workdays)
    truth = dict(zip(t.tolist(), v.tolist()))
    rows = []
    replay_series(t, v, lambda f, h, kw: rows.append((h, f.issued_at + h * 60, kw, f.model_for(h))),
                  cycle_minutes=15, fit_processes=1, timezone=ZONE, holidays=holidays, **week)
    zone = ZoneInfo(ZONE)
    late = {str((START + dt.timedelta(days=d)).date()) for d in range(DAYS - 21, DAYS)} - set(HOLIDAYS)

    def mae(days: set[str]) -> float:
        errors = [abs(kw - truth[target]) for h, target, kw, model in rows
                  if h == 60 and kw is not None and target in truth and model != "persistence"
                  and str(dt.datetime.fromtimestamp(target, zone).date()) in days]
        return float(np.mean(errors))
    return mae(set(HOLIDAYS)), mae(late), dt.datetime.now().timestamp() - started


def main() -> int:
    cases = [("Monday-Friday office, default week", {0, 1, 2, 3, 4}, HOLIDAYS, {}),
             ("Sunday-Friday office, default week", {6, 0, 1, 2, 3, 4}, HOLIDAYS, {}),
             ("the same, holidays not listed", {6, 0, 1, 2, 3, 4}, [], {}),
             ("the same, holidays listed, its week set", {6, 0, 1, 2, 3, 4}, HOLIDAYS, NEPAL)]
    print(f"{'case':42s} {'holidays':>9s} {'other days':>11s} {'run s':>6s}   (60-min MAE, kW)")
    for name, workdays, holidays, week in cases:
        on_holidays, other, seconds = run(workdays, holidays, week)
        print(f"{name:42s} {on_holidays:9.2f} {other:11.2f} {seconds:6.0f}")
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
