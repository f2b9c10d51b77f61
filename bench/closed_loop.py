"""A BAS that sheds load while high-load-conditions is on: the closed loop, on the Turin office year.

The forecaster learns from the load as the BAS controlled it. This runs the gateway's forecaster (defaults: 35 days
of history, daily refits, 14-day 90th percentile, 3 % hysteresis, 15 min on/off) one cycle per 15-minute row from
--start for --weeks, seeded with the uncontrolled year before, and the BAS acts on each cycle's flag for the next
interval: the row is the load less --shed while the flag is on; after it turns off, a rebound of --rebound
fading over --rebound-minutes. Runs, each against the uncontrolled building:

  none      the BAS does nothing (the open-loop flag: the truth the others are judged by)
  acting    the BAS sheds while the flag is on
  told      as acting, and the flag's own sheds are given to set_curtailed (not what it is for: docs/bacnet.md, "The
            load flags")
  reported  as acting, and the BAS commands bas-shed-power with the kW it sheds: the forecaster is given each shed row
            with that added back (the gateway's forecast service does the addition live)
  reported:X  as reported, but the BAS's figure is X times what it really shed (a BAS that estimates its shed
            from nameplate or a setpoint: reported:0.5 under-reports by half)

Per run: flag hours and on/off episodes a week, the share of episodes one cycle long, precision and recall against
the open-loop flag's truth (the uncontrolled demand 60 minutes on reaches the open-loop threshold), the mean cut of
the weekly peak against the uncontrolled one, the weeks whose peak was above it (a rebound on the peak), the shed
energy, and the high threshold in the first and last week. Prints the load average; asserts nothing.

    python bench/closed_loop.py [--start 2019-06-03] [--weeks 12] [--shed 0.2] [--runs none,acting,reported:0.5]

About 1.5-4 minutes a run of 12 weeks on 2 cores (the fits).
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
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import forecast_accuracy as fa  # noqa: E402
from forecaster import DemandForecaster  # noqa: E402

WEEK = 672      # 15-minute cycles


def simulate(t, v, i0: int, weeks: int, shed: float, rebound: float, rebound_minutes: float, mode: str,
             fixed_kw: float | None, min_on: float) -> dict:
    n = weeks * WEEK
    fc = DemandForecaster(horizons_minutes=(15, 60), holiday_preset="IT", timezone="UTC", history_days=35.0,
                          high_load_kw=fixed_kw, min_on_minutes=min_on)
    lo = i0 - int(fc.keep_days * 96) - 1
    fc.seed(t[lo:i0 - 1], v[lo:i0 - 1])
    c = v.copy()
    rebound_rows = int(round(rebound_minutes / 15))
    spans: list[list] = []
    flag, thr = np.zeros(n, bool), np.full(n, np.nan)
    prev_on, off_i, was_shed = False, None, False
    started = time.perf_counter()
    told_share = float(mode.partition(":")[2] or 1.0) if mode.startswith("reported") else 0.0
    for j in range(n):
        i = i0 - 1 + j
        shed_kw = c[i] / (1.0 - shed) - c[i] if was_shed else 0.0
        fc.add_sample(t[i], c[i] + told_share * shed_kw)
        if mode == "told":
            fc.set_curtailed([(s, e) for s, e in spans])
        if fc.needs_fit(t[i]):
            fc.fit(t[i])
        f = fc.predict(t[i])
        on = flag[j] = f.high_load
        thr[j] = np.nan if f.high_threshold_kw is None else f.high_threshold_kw
        if mode != "none":
            if on and not prev_on:
                spans.append([float(t[i]), None])
            if not on and prev_on:
                spans[-1][1] = float(t[i])
                off_i = i
            if on:
                c[i + 1] = v[i + 1] * (1.0 - shed)
            elif off_i is not None and 1 <= i + 1 - off_i <= rebound_rows:
                c[i + 1] = v[i + 1] * (1.0 + rebound * (1.0 - (i + 1 - off_i - 0.5) * 15 / rebound_minutes))
        was_shed, prev_on = on and mode != "none", on
    return dict(flag=flag, thr=thr, c=c[i0:i0 + n], seconds=time.perf_counter() - started)


def summary(name: str, r: dict, truth: np.ndarray, v: np.ndarray, weeks: int) -> str:
    fl = r["flag"]
    edges = np.diff(np.concatenate([[0], fl.astype(int), [0]]))
    lengths = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
    tp = int((fl & truth).sum())
    peak_c = r["c"].reshape(weeks, WEEK).max(axis=1)
    peak_u = v.reshape(weeks, WEEK).max(axis=1)
    cut = v - r["c"]
    thr = [np.nanmean(r["thr"][w * WEEK:(w + 1) * WEEK]) for w in (0, weeks - 1)]
    return (f"{name:9s} {fl.sum() / 4 / weeks:7.1f} {lengths.size / weeks:8.1f} "
            f"{np.mean(lengths == 1) if lengths.size else 0:8.0%} {tp / max(1, fl.sum()):6.2f} "
            f"{tp / max(1, truth.sum()):6.2f} {np.mean(peak_u - peak_c):8.1f} {int(np.sum(peak_c > peak_u)):6d} "
            f"{cut[cut > 0].sum() * 0.25 / 1000:8.1f} {thr[0]:8.0f} {thr[1]:8.0f} {r['seconds']:6.0f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2019, 6, 3))
    ap.add_argument("--weeks", type=int, default=12)
    ap.add_argument("--shed", type=float, default=0.2, help="fraction of the load shed while the flag is on")
    ap.add_argument("--rebound", type=float, default=0.05, help="extra load when the flag turns off, as a fraction")
    ap.add_argument("--rebound-minutes", type=float, default=30.0)
    ap.add_argument("--fixed-kw", type=float, default=None, help="forecaster.high_load_kw (default: the percentile)")
    ap.add_argument("--min-on", type=float, default=15.0, help="forecaster.min_on_minutes")
    ap.add_argument("--runs", default="none,acting,told,reported")
    a = ap.parse_args(argv)
    t, v = fa.load_turin()
    i0 = int(np.searchsorted(t, dt.datetime.combine(a.start, dt.time(), dt.timezone.utc).timestamp()))
    n = a.weeks * WEEK
    runs = [r for r in a.runs.split(",") if r]
    if "none" not in runs:
        runs.insert(0, "none")      # the truth
    got = {}
    for mode in runs:
        got[mode] = simulate(t, v, i0, a.weeks, a.shed, a.rebound, a.rebound_minutes, mode, a.fixed_kw, a.min_on)
    # the open-loop flag's truth: the uncontrolled demand 60 minutes on reaches the open-loop threshold
    ahead = v[i0 - 1 + 4:i0 - 1 + 4 + n]
    truth = np.isfinite(got["none"]["thr"]) & (ahead >= got["none"]["thr"])
    print(f"Closed loop, Turin office, {a.weeks} weeks from {a.start}: shed {a.shed:.0%} while high-load-conditions is "
          f"on, rebound +{a.rebound:.0%} over {a.rebound_minutes:g} min; threshold "
          f"{'fixed ' + format(a.fixed_kw, 'g') + ' kW' if a.fixed_kw else 'the 14-day 90th percentile'}, min on "
          f"{a.min_on:g} min")
    print(f"{'run':9s} {'h/week':>7s} {'eps/wk':>8s} {'1-cycle':>8s} {'prec':>6s} {'recall':>6s} {'peak cut':>8s} "
          f"{'>none':>6s} {'shed MWh':>8s} {'thr wk1':>8s} {'thr last':>8s} {'run s':>6s}")
    for mode in runs:
        print(summary(mode, got[mode], truth, v[i0:i0 + n], a.weeks))
    print("h/week: flag-on hours; eps/wk: on/off episodes; 1-cycle: episodes one 15-min cycle long; prec/recall: "
          "against the open-loop flag's truth; peak cut: mean over weeks of the uncontrolled minus the metered weekly "
          "peak (kW); >none: weeks whose metered peak was above the uncontrolled one; thr: the mean high threshold of "
          "the first and last week (kW)")
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
