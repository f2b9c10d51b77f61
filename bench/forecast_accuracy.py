"""Walk-forward accuracy of the demand forecaster on a real office building (Turin, 2019).

Twelve test weeks start on Mondays 2019-09-02 ... 2019-11-18. For each, every method is trained on
everything before the week (no refit inside it) and issues forecasts every 15 minutes through the
week, fed the data as it would have arrived. Scored at 15 and 60 minutes ahead:

  CV(RMSE) = RMSE / mean(actual) over the week; MAPE = mean(|error| / actual). Medians over weeks.
  The forecast target is the 15-minute demand ending h minutes after issue; with this 15-minute
  data that is exactly the row stamped issue + h, so persistence forecasts the row stamped issue.

High-load flag at 60 minutes ("truth" stated plainly): at each issue time t the forecaster's own
threshold rule gives a threshold (90th percentile of 15-minute demand over the trailing 14 days,
using only data up to t). Truth is "actual demand ending at t + 60 min >= that threshold", with no
hysteresis. The scored flag is the published one: hysteresis 3 %, minimum on and off 15 minutes, and
it turns on only while the measured level is within 10 % of the threshold (arm_fraction).
A false-alarm episode is a maximal run of consecutive flagged cycles in which truth is never on.
The same flag machinery is also run on the baselines' forecasts for comparison.

Data: `contextual-anomaly-detector==1.0.1` wheel (MIT, Roberto Chiosa), fetched with
`pip download --no-deps` into bench/.cache and read out of the zip; the package is never installed.

Run: python bench/forecast_accuracy.py [--history-days 365] [--weeks 12] [--first-week 2019-09-02] [--live-refits]

The default weeks are the test weeks. Choose models and settings on earlier validation weeks, e.g.
--first-week 2019-05-06 (May-July; August has Italian holidays), and only confirm on the test weeks.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from forecaster import DemandForecaster  # noqa: E402
from forecaster.calendar import Calendar  # noqa: E402
from forecaster.flags import HysteresisFlag  # noqa: E402

WHEEL = "contextual-anomaly-detector==1.0.1"
MEMBER = "src/cmp/data/data.csv"
CACHE = Path(__file__).resolve().parent / ".cache"
STEP = 900
HORIZONS = (15, 60)
FIRST_WEEK = dt.datetime(2019, 9, 2, tzinfo=dt.timezone.utc)


def load_turin() -> tuple[np.ndarray, np.ndarray]:
    CACHE.mkdir(parents=True, exist_ok=True)
    wheels = sorted(CACHE.glob("contextual_anomaly_detector-1.0.1-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", str(CACHE)],
                       check=True)
        wheels = sorted(CACHE.glob("contextual_anomaly_detector-1.0.1-*.whl"))
    text = zipfile.ZipFile(wheels[0]).read(MEMBER).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    # Naive local wall time; treated as UTC so the calendar features see the wall clock.
    t = np.array([dt.datetime.fromisoformat(r["timestamp"]).replace(tzinfo=dt.timezone.utc).timestamp() for r in rows])
    v = np.array([float(r["Total_Power"]) for r in rows])
    return t, v


# ---- the plain HGB baseline, on the 15-minute grid ---------------------------------------------
def plain_features(v: np.ndarray, t: np.ndarray, i: np.ndarray, steps: int, cal: Calendar) -> np.ndarray:
    """Rows for issue index i (latest known value v[i]) predicting v[i + steps]."""
    def at(j):
        return np.where((j >= 0) & (j < v.size), v[np.clip(j, 0, v.size - 1)], np.nan)
    tgt = i + steps
    tt = t[np.clip(tgt, 0, t.size - 1)] + (tgt - np.clip(tgt, 0, t.size - 1)) * STEP
    tod = (tt % 86400) / 86400 * 2 * np.pi
    day = (tt // 86400).astype(np.int64)
    cols = [at(i - lag + 1) for lag in (1, 2, 3, 4, 8)]
    cols += [at(i) - at(i - 1), at(i) - at(i - 4), at(tgt - 96), at(tgt - 672), np.sin(tod), np.cos(tod),
             ((day + 3) % 7).astype(float), (cal.day_kind(day) == 0).astype(float)]
    return np.column_stack(cols)


def run_plain(t, v, weeks, cal_plain):
    out = {h: [] for h in HORIZONS}
    fit_s, pred_s, n_pred = [], 0.0, 0
    for w0, w1 in weeks:
        i_train = np.arange(700, w0 - 1)
        i_test = np.arange(w0 - 1, w1 - 1)  # issue at the row before each target window in the week
        f0 = time.perf_counter()
        models = {}
        for h in HORIZONS:
            s = h // 15
            tr = i_train[i_train + s < w0]
            models[h] = HistGradientBoostingRegressor(random_state=0).fit(plain_features(v, t, tr, s, cal_plain), v[tr + s])
        fit_s.append(time.perf_counter() - f0)
        p0 = time.perf_counter()
        for h in HORIZONS:
            out[h].append(models[h].predict(plain_features(v, t, i_test, h // 15, cal_plain)))
        pred_s += time.perf_counter() - p0
        n_pred += i_test.size
    return out, fit_s, pred_s / n_pred


def run_project(t, v, weeks, history_days, params, live_refits=False, forecaster=DemandForecaster):
    out = {h: [] for h in HORIZONS}
    flags, thresholds, models = [], [], []
    fit_s, pred_s, n_pred = [], 0.0, 0
    for w0, w1 in weeks:
        # live_refits: also refit inside the week on the gateway's schedule (forecaster.retrain_minutes)
        fc = forecaster(history_days=history_days, **params,
                        **({} if live_refits else {"retrain_minutes": 10**9}))
        lo = max(0, w0 - int(history_days * 96) - 1)
        fc.seed(t[lo:w0 - 1], v[lo:w0 - 1])
        now = t[w0 - 1]
        f0 = time.perf_counter()
        fc.fit(now)
        fit_s.append(time.perf_counter() - f0)
        pw = {h: [] for h in HORIZONS}
        wf, wt, wm = [], [], []
        for i in range(w0 - 1, w1 - 1):
            fc.add_sample(t[i], v[i])
            if live_refits and fc.needs_fit(t[i]):
                fc.fit(t[i])
            p0 = time.perf_counter()
            f = fc.predict(t[i])
            pred_s += time.perf_counter() - p0
            n_pred += 1
            for h in HORIZONS:
                pw[h].append(np.nan if f.demand_kw[h] is None else f.demand_kw[h])
            wf.append(f.high_load)
            wt.append(np.nan if f.high_threshold_kw is None else f.high_threshold_kw)
            wm.append(f.model)
        for h in HORIZONS:
            out[h].append(np.array(pw[h]))
        flags.append(np.array(wf))
        thresholds.append(np.array(wt))
        models.append(wm)
    return out, flags, thresholds, models, fit_s, pred_s / n_pred


def flag_run(forecast60, issue_t, thresholds, level):
    f = HysteresisFlag(True, 0.03, 900, 900, DemandForecaster().arm_fraction)
    return np.array([f.update(float(s), None if not np.isfinite(x) else float(x),
                              None if not np.isfinite(th) else float(th), float(lv))
                     for s, x, th, lv in zip(issue_t, forecast60, thresholds, level)])


def flag_scores(pred: np.ndarray, truth: np.ndarray, days: float) -> dict:
    tp = int((pred & truth).sum())
    fp = int((pred & ~truth).sum())
    fn = int((~pred & truth).sum())
    prec = tp / (tp + fp) if tp + fp else float("nan")
    rec = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else float("nan")
    episodes = false_eps = 0
    i = 0
    while i < pred.size:
        if pred[i]:
            j = i
            while j < pred.size and pred[j]:
                j += 1
            episodes += 1
            false_eps += not truth[i:j].any()
            i = j
        else:
            i += 1
    return {"precision": prec, "recall": rec, "f1": f1, "false_per_day": false_eps / days, "episodes": episodes}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--history-days", type=float, default=365.0,
                    help="history the project forecaster trains on (365 = everything before the week)")
    ap.add_argument("--weeks", type=int, default=12)
    ap.add_argument("--first-week", type=dt.date.fromisoformat, default=FIRST_WEEK.date(),
                    help="Monday the first week starts (default: the test weeks)")
    ap.add_argument("--live-refits", action="store_true",
                    help="the project forecaster also refits inside each week on the gateway's daily "
                         "schedule, as it runs live (default: one fit before the week, as the baselines)")
    args = ap.parse_args(argv)
    first_week = dt.datetime.combine(args.first_week, dt.time(), dt.timezone.utc)

    t, v = load_turin()
    assert np.all(np.diff(t) == STEP), "expected a regular 15-minute series"
    first = int(np.searchsorted(t, first_week.timestamp()))
    weeks = [(first + w * 672, first + (w + 1) * 672) for w in range(args.weeks)]
    truth = {h: [v[w0:w1] for w0, w1 in weeks] for h in HORIZONS}  # target rows of each week
    # issue rows are w0-1 .. w1-2; the h-minute target row is issue + h/15
    truth = {h: [v[w0 - 1 + h // 15: w1 - 1 + h // 15] for w0, w1 in weeks] for h in HORIZONS}
    issue_t = [t[w0 - 1:w1 - 1] for w0, w1 in weeks]

    forecasts: dict[str, dict] = {}
    timing: dict[str, tuple] = {}
    forecasts["persistence"] = {h: [v[w0 - 1:w1 - 1] for w0, w1 in weeks] for h in HORIZONS}
    forecasts["same time last week"] = {h: [v[w0 - 1 + h // 15 - 672: w1 - 1 + h // 15 - 672] for w0, w1 in weeks]
                                        for h in HORIZONS}
    plain, fit_s, pred_s = run_plain(t, v, weeks, Calendar("UTC", "IT"))
    forecasts["plain HGB"] = plain
    timing["plain HGB"] = (np.median(fit_s), pred_s)
    params = dict(horizons_minutes=HORIZONS, holiday_preset="IT", timezone="UTC")
    proj, pflags, pthr, pmodels, fit_s, pred_s = run_project(t, v, weeks, args.history_days, params,
                                                             args.live_refits)
    name = f"project forecaster ({args.history_days:g} d history{', daily refits' if args.live_refits else ''})"
    forecasts[name] = proj
    timing[name] = (np.median(fit_s), pred_s)

    def cv_mape(pred, act):
        ok = np.isfinite(pred)
        e = pred[ok] - act[ok]
        return np.sqrt(np.mean(e ** 2)) / np.mean(act[ok]) * 100, np.mean(np.abs(e) / act[ok]) * 100

    print(f"Walk-forward, {args.weeks} weeks from {first_week:%Y-%m-%d}, Turin office 2019 (15-min kW). "
          "Median over weeks; fit = median seconds per weekly fit (both horizons), predict = ms per issue.")
    print(f"{'method':50s} {'CV15':>7s} {'CV60':>7s} {'MAPE15':>7s} {'MAPE60':>7s} {'fit s':>7s} {'pred ms':>8s}")
    for m, fc in forecasts.items():
        stats = {h: np.array([cv_mape(p, a) for p, a in zip(fc[h], truth[h])]) for h in HORIZONS}
        fit, pred = timing.get(m, (0.0, 0.0))
        print(f"{m:50s} {np.median(stats[15][:, 0]):6.2f}% {np.median(stats[60][:, 0]):6.2f}% "
              f"{np.median(stats[15][:, 1]):6.2f}% {np.median(stats[60][:, 1]):6.2f}% {fit:7.2f} {pred * 1000:8.2f}")
    served = [m for wm in pmodels for m in wm]
    print("project forecaster served: " + ", ".join(f"{m} {served.count(m) / len(served):.0%}" for m in sorted(set(served))))
    for h in HORIZONS:   # a 12-week median is coarse: compare candidates week by week too
        per_week = [round(float(cv_mape(p, a)[0]), 2) for p, a in zip(proj[h], truth[h])]
        print(f"project CV(RMSE) {h} min per week: {per_week}")

    days = args.weeks * 7
    thr = np.concatenate(pthr)
    act60 = np.concatenate(truth[60])
    truth_flag = np.isfinite(thr) & (act60 >= thr)
    print(f"\nHigh-load flag at 60 min ({days} days, {truth_flag.sum()} of {truth_flag.size} cycles truly high; "
          "threshold = 90th pct of trailing 14 d, truth = actual demand at +60 min >= threshold)")
    print(f"{'method':50s} {'prec':>6s} {'recall':>6s} {'F1':>6s} {'false/day':>9s} {'episodes':>8s}")
    rows = {name: np.concatenate(pflags)}
    for m in ("persistence", "same time last week", "plain HGB"):
        rows[m] = np.concatenate([flag_run(p, it, th, lv) for p, it, th, lv in
                                  zip(forecasts[m][60], issue_t, pthr, forecasts["persistence"][60])])
    for m, pred in rows.items():
        s = flag_scores(pred, truth_flag, days)
        print(f"{m:50s} {s['precision']:6.3f} {s['recall']:6.3f} {s['f1']:6.3f} {s['false_per_day']:9.3f} {s['episodes']:8d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
