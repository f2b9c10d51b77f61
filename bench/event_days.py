"""Demand-response event days: does the forecaster learn the sheds? (Turin office, synthetic events)

A seeded event program is written into the Turin series (forecast_accuracy.load_turin): in the 6 weeks
before the first test week and in every test week, one to three events a week (two on average) on
workdays (Italian holidays excepted), in half of the weeks on consecutive workdays (a hot spell). Each
event starts between 13:00 and 16:00 wall clock, lasts 2-4 hours, sheds `--shed` of the load and is
followed by a rebound of `--rebound` of the load decaying linearly to 0 over 45 minutes. Rows are
read as the project reads them: the row stamped T is the 15-minute demand ending at T, so an event
(S, E) scales the rows stamped S < T <= E and the rebound the three rows after E.

The project's walk-forward (forecast_accuracy.run_project: seeded on everything before each week, one
fit, a forecast every 15 minutes through the week) runs three ways:
  (a) clean: the series without events;
  (b) events, not told: the series with events, the forecaster unaware;
  (c) events, told: as (b), and before every fit and predict the forecaster is given
      DemandForecaster.set_curtailed(the (start, end) of every event started by then; no rebound, the
      forecaster adds its own margin, forecaster.rebound_minutes).

Scored only on targets outside every event and the 60 minutes after it (no forecaster can know an
unannounced shed; there every run's actual equals the clean series'). Two sets of targets:
  all        every such target of the weeks;
  workday pm targets stamped 13:15-20:00 on workdays with no event: the hours where reference days
             that are event days (yesterday, last week, recent same-kind and analog days) and a
             threshold lowered by sheds would show.
CV(RMSE) = RMSE / mean(actual) over the set's targets of a week, median over weeks; bias60 = mean
(forecast - actual) / mean(actual) at 60 minutes over all the weeks' targets in the set.

High-load flag at 60 minutes: the flag each run publishes (with its own threshold, as a gateway would)
scored against one truth for every run: actual demand 60 minutes on >= the CLEAN run's threshold at
the issue time (forecast_accuracy's definition on the series without events). A threshold dragged
down by sheds is part of what is measured, not a lower bar to score against; the mean published
threshold of each run is printed beside it. Cycles whose target is not in the set count as neither
flagged nor true (precision, recall and F1 are those of the set's cycles; a flag episode is cut where
the set is). false/day = flag episodes with no true cycle per day of the set (all: the weeks' days;
workday pm: the event-free workdays).

A last table scores the hour after each event's end against the series as metered: there a forecast issued
during the event, told of it, starts from the building as its reference days have it.

Run: python bench/event_days.py [--weeks 12] [--first-week 2019-09-02] [--shed 0.2] [--rebound 0.08]
                                [--seed 1] [--history-days 365]
About 2 minutes a way for 12 weeks on one core (one fit a week): 6 minutes for the three.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import forecast_accuracy as fa  # noqa: E402
from forecaster import DemandForecaster  # noqa: E402
from forecaster.calendar import WORKDAY, Calendar  # noqa: E402

LEAD_WEEKS = 6           # weeks of events before the first scored week
STEP = fa.STEP
REBOUND_MINUTES = 45
AFTER_MINUTES = 60       # targets this long after an event are not scored
PM = (13 * 3600, 20 * 3600)   # workday pm: rows stamped in (13:00, 20:00]


def make_events(first_monday: float, n_weeks: int, cal: Calendar, seed: int) -> list[tuple[float, float]]:
    """(start, end) epoch seconds of a seeded event program, week by week from `first_monday`: the same
    seed gives the same first weeks whatever n_weeks is."""
    rng = np.random.default_rng(seed)
    events = []
    for w in range(n_weeks):
        day0 = int(first_monday // 86400) + 7 * w
        work = [d for d in range(day0, day0 + 5) if cal.day_kind(np.array([d]))[0] == WORKDAY]
        n = min(len(work), int(rng.choice([1, 2, 3], p=[0.25, 0.5, 0.25])))
        if rng.random() < 0.5:   # a hot spell: consecutive workdays
            first = int(rng.integers(0, len(work) - n + 1))
            days = work[first:first + n]
        else:
            days = sorted(rng.choice(work, size=n, replace=False).tolist())
        for d in days:
            start = d * 86400 + 13 * 3600 + 900 * int(rng.integers(0, 13))   # 13:00 .. 16:00
            events.append((float(start), float(start + 900 * int(rng.integers(8, 17)))))  # 2 .. 4 h
    return events


def inject(t: np.ndarray, v: np.ndarray, events, shed: float, rebound: float) -> np.ndarray:
    """The series as metered with the events: shed inside each, then the rebound (each row gets the
    mean of the linear decay over its 15 minutes)."""
    out = v.copy()
    for s, e in events:
        out[(t > s) & (t <= e)] *= 1.0 - shed
        for j in range(1, REBOUND_MINUTES // 15 + 1):
            out[t == e + j * STEP] *= 1.0 + rebound * (1.0 - (j - 0.5) * 15 / REBOUND_MINUTES)
    return out


def told(events):
    """A DemandForecaster that is told, before each fit and predict, the events started by then."""
    class Told(DemandForecaster):
        def _tell(self, now):
            self.set_curtailed([ev for ev in events if ev[0] <= now])

        def fit(self, now, map_fn=map):
            self._tell(now)
            return super().fit(now, map_fn)

        def predict(self, now):
            self._tell(now)
            return super().predict(now)
    return Told


def walk_forward(t, v, weeks, history_days, forecaster=DemandForecaster):
    """forecast_accuracy.run_project on (t, v) with `forecaster`: (forecasts, flags, thresholds, seconds)."""
    params = dict(horizons_minutes=fa.HORIZONS, holiday_preset="IT", timezone="UTC")
    t0 = time.perf_counter()
    out, flags, thr, _, _, _ = fa.run_project(t, v, weeks, history_days, params, forecaster=forecaster)
    return out, np.concatenate(flags), np.concatenate(thr), time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weeks", type=int, default=12)
    ap.add_argument("--first-week", type=dt.date.fromisoformat, default=fa.FIRST_WEEK.date(),
                    help="Monday the first scored week starts (default: the test weeks)")
    ap.add_argument("--shed", type=float, default=0.2, help="fraction of the load shed during an event")
    ap.add_argument("--rebound", type=float, default=0.08, help="extra load right after an event, as a fraction")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--history-days", type=float, default=365.0)
    args = ap.parse_args(argv)
    first = dt.datetime.combine(args.first_week, dt.time(), dt.timezone.utc).timestamp()

    t, v = fa.load_turin()
    cal = Calendar("UTC", "IT")
    events = make_events(first - LEAD_WEEKS * 7 * 86400, LEAD_WEEKS + args.weeks, cal, args.seed)
    ve = inject(t, v, events, args.shed, args.rebound)
    i0 = int(np.searchsorted(t, first))
    weeks = [(i0 + w * 672, i0 + (w + 1) * 672) for w in range(args.weeks)]
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{len(events)} events (seed {args.seed}, shed {args.shed:.0%}, rebound +{args.rebound:.0%} over "
          f"{REBOUND_MINUTES} min), {sum(s >= first for s, _ in events)} in the scored weeks:")
    fmt = [f"{dt.datetime.fromtimestamp(s, dt.timezone.utc):%m-%d %a %H:%M}-"
           f"{dt.datetime.fromtimestamp(e, dt.timezone.utc):%H:%M}" for s, e in events]
    for j in range(0, len(fmt), 6):
        print("  " + "  ".join(fmt[j:j + 6]))

    # targets: issue rows w0-1 .. w1-2; the h-minute target is the row h/15 later
    tgt = {h: np.concatenate([np.arange(w0 - 1, w1 - 1) + h // 15 for w0, w1 in weeks]) for h in fa.HORIZONS}
    week_of = np.repeat(np.arange(args.weeks), 672)
    out_of_event = np.ones(t.size, bool)
    for s, e in events:
        out_of_event &= ~((t > s) & (t <= e + AFTER_MINUTES * 60))
    day = ((t - 1) // 86400).astype(np.int64)   # the row stamped 00:00 ends the day before
    tod = t - day * 86400
    event_day = np.isin(day, [int(s // 86400) for s, _ in events])
    pm = out_of_event & (cal.day_kind(day) == WORKDAY) & ~event_day & (tod > PM[0]) & (tod <= PM[1])
    sets = {"all": out_of_event, "workday pm": pm}
    assert np.array_equal(v[out_of_event], ve[out_of_event])

    runs = {"(a) clean": walk_forward(t, v, weeks, args.history_days),
            "(b) events, not told": walk_forward(t, ve, weeks, args.history_days)}
    runs["(c) events, told"] = walk_forward(t, ve, weeks, args.history_days, told(events))
    truth = np.isfinite(runs["(a) clean"][2]) & (v[tgt[60]] >= runs["(a) clean"][2])

    print(f"\nWalk-forward, {args.weeks} weeks from {args.first_week}, Turin office 2019 (15-min kW), targets "
          f"outside events and the {AFTER_MINUTES} min after. CV = median over weeks of CV(RMSE); flag at 60 min "
          "against the clean run's threshold; thr = mean published high-load threshold.")
    print(f"{'run':22s} {'targets':11s} {'CV15':>6s} {'CV60':>6s} {'bias60':>7s} {'prec':>6s} {'recall':>6s} "
          f"{'F1':>6s} {'false/d':>7s} {'thr kW':>7s} {'run s':>6s}")
    for name, (pred, flags, thr, secs) in runs.items():
        for sname, ok in sets.items():
            cv, bias = {}, None
            for h in fa.HORIZONS:
                p, a = np.concatenate(pred[h]), v[tgt[h]]
                m = ok[tgt[h]] & np.isfinite(p)
                weekly = [m & (week_of == w) for w in range(args.weeks)]
                cv[h] = 100 * np.median([np.sqrt(np.mean((p - a)[mw] ** 2)) / np.mean(a[mw])
                                         for mw in weekly if mw.any()])
                if h == 60:
                    bias = 100 * np.mean((p - a)[m]) / np.mean(a[m])
            c = ok[tgt[60]]
            days = args.weeks * 7 if sname == "all" else np.unique(day[tgt[60]][c]).size
            s = fa.flag_scores(flags & c, truth & c, days)
            print(f"{name:22s} {sname:11s} {cv[15]:5.2f}% {cv[60]:5.2f}% {bias:+6.2f}% {s['precision']:6.3f} "
                  f"{s['recall']:6.3f} {s['f1']:6.3f} {s['false_per_day']:7.3f} {np.nanmean(thr):7.1f} {secs:6.0f}")

    # The hour after each event: the building comes back (and rebounds). Told of the event, a forecast issued during it
    # for a target after its end starts from the building as its reference days have it, not from the shed
    after = np.zeros(t.size, bool)
    for s, e in events:
        after |= (t > e) & (t <= e + AFTER_MINUTES * 60)
    thr_clean = runs["(a) clean"][2]
    truth_after = np.isfinite(thr_clean) & (ve[tgt[60]] >= thr_clean)
    print(f"\nThe {AFTER_MINUTES} min after each event's end, against the series as metered (the shed over, the "
          "rebound): CV(RMSE) pooled over the weeks; flag at 60 min against the clean run's threshold.")
    print(f"{'run':22s} {'targets':7s} {'CV15':>6s} {'CV60':>6s} {'bias60':>7s} {'prec':>6s} {'recall':>6s} {'F1':>6s}")
    for name in ("(b) events, not told", "(c) events, told"):
        pred, flags, _, _ = runs[name]
        cv, bias = {}, None
        for h in fa.HORIZONS:
            p, a = np.concatenate(pred[h]), ve[tgt[h]]
            m = after[tgt[h]] & np.isfinite(p)
            cv[h] = 100 * np.sqrt(np.mean((p - a)[m] ** 2)) / np.mean(a[m])
            bias = 100 * np.mean((p - a)[m]) / np.mean(a[m])
        c = after[tgt[60]]
        s = fa.flag_scores(flags & c, truth_after & c, len(events))
        print(f"{name:22s} {int(c.sum()):7d} {cv[15]:5.2f}% {cv[60]:5.2f}% {bias:+6.2f}% {s['precision']:6.3f} "
              f"{s['recall']:6.3f} {s['f1']:6.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
