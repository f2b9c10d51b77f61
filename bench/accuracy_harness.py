"""A harness for trying forecaster candidates on the walk-forward weeks without refitting every time.

`build` fits each of the 12 weeks once, as `forecast_accuracy.py` does (everything before the week,
no refit inside it), and caches per week and horizon: the fitted model, its training rows (ks, X, y:
what model.plan_horizon builds), the week's feature rows, each member's forecast change on them, and
the published forecasts, flags and thresholds. It reproduces `forecast_accuracy.py` for the project
forecaster exactly (2026-12-01: validation 5.43 / 7.91 %, F1 0.863; test 4.33 / 5.93 %, F1 0.823).

A candidate then refits one member on the cached training rows, or changes how members are combined,
and `replay` re-runs the sequential part of the forecaster (live weights, guard, flags) on the week
with the candidate's member forecasts: seconds per week instead of a full fit.

    python bench/accuracy_harness.py build val|test     # ~4-9 min each; 170-280 MB in bench/.cache
    python bench/accuracy_harness.py show val|test      # the cached model's scores, and a replay check

    import sys; sys.path.insert(0, "bench"); import accuracy_harness as H
    W = H.load("val"); t, v = H.load_turin()
    base = H.score(W, [w["pred"] for w in W], [w["flags"] for w in W])
    each = {h: W[0]["test"][h][2] for h in H.HORIZONS}   # rows x (hgb, ridge, plain, mlp) changes
    pred, flags = H.replay(W[0], t, v, each)

Choose on "val" (the weeks from 2019-05-06); look at "test" once per adopted candidate.
"""
from __future__ import annotations

import datetime as dt
import pickle
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from forecast_accuracy import CACHE, HORIZONS, flag_scores, load_turin  # noqa: E402
from forecaster import DemandForecaster, features, model  # noqa: E402

FIRST = {"val": dt.date(2019, 5, 6), "test": dt.date(2019, 9, 2)}
PARAMS = dict(horizons_minutes=HORIZONS, holiday_preset="IT", timezone="UTC", retrain_minutes=10**9)
HISTORY_DAYS = 365.0


def weeks_of(t, which: str, n: int = 12):
    first = dt.datetime.combine(FIRST[which], dt.time(), dt.timezone.utc).timestamp()
    f = int(np.searchsorted(t, first))
    return [(f + w * 672, f + (w + 1) * 672) for w in range(n)]


def _forecaster(t, v, w0: int, until: int) -> DemandForecaster:
    fc = DemandForecaster(history_days=HISTORY_DAYS, **PARAMS)
    lo = max(0, w0 - int(HISTORY_DAYS * 96) - 1)
    fc.seed(t[lo:until], v[lo:until])
    return fc


def build(which: str) -> None:
    t, v = load_turin()
    out = []
    for w0, w1 in weeks_of(t, which):
        fc = _forecaster(t, v, w0, w0 - 1)
        job = fc.fit_job(t[w0 - 1])
        t0 = time.perf_counter()
        with model.fit_threads(1):
            fitted = job.run()
        fit_s = time.perf_counter() - t0
        fc.fit_done(fitted)
        train = {}
        for h in HORIZONS:  # the rows plan_horizon builds
            ks = model.training_minutes(job.snap, job.last_k, job.stride, h)
            X, level = features.build(job.snap, job.calendar, ks, h)
            y = features.demand(job.snap, ks + h) - level
            ok = np.isfinite(y) & np.isfinite(level)
            train[h] = (ks[ok], X[ok], y[ok])
        # Every feature looks back from its issue minute: the week's samples first, then forecasts in
        # one batch are the same as the benchmark's add-then-predict loop (predict_series).
        fc.seed(t[w0 - 1:w1 - 1], v[w0 - 1:w1 - 1])
        issue_t = t[w0 - 1:w1 - 1]
        ks = np.ceil(issue_t / 60.0).astype(np.int64)
        snap = fc._bins.snapshot(int(ks[0]) - fc._lookback_minutes, int(ks[-1]))
        test = {}
        for h in HORIZONS:
            X, level = features.build(snap, fc.calendar, ks, h)
            test[h] = (X, level, fitted.horizons[h].members.predict_each(X))
        fcs = fc.predict_series(list(issue_t))
        out.append(dict(w0=w0, w1=w1, fit_s=fit_s, fitted=fitted, train=train, test=test, issue_t=issue_t,
                        pred=_demands(fcs), flags=np.array([f.high_load for f in fcs]),
                        thr=np.array([np.nan if f.high_threshold_kw is None else f.high_threshold_kw for f in fcs]),
                        truth={h: v[w0 - 1 + h // 15: w1 - 1 + h // 15] for h in HORIZONS}))
        print(f"{which} week {len(out)}: fit {fit_s:.1f} s", flush=True)
    with open(CACHE / f"harness_{which}.pkl", "wb") as f:
        pickle.dump(out, f)


def _demands(fcs) -> dict:
    return {h: np.array([np.nan if f.demand_kw[h] is None else f.demand_kw[h] for f in fcs]) for h in HORIZONS}


def load(which: str) -> list[dict]:
    with open(CACHE / f"harness_{which}.pkl", "rb") as f:
        return pickle.load(f)


def replay(week: dict, t, v, each_of: dict | None = None, combine=None) -> tuple[dict, np.ndarray]:
    """The week's forecasts and high-load flags with each_of[h] (rows x members: forecast changes, as
    Members.predict_each gives) in place of the fitted members' (default: the cached ones), and
    `combine` in place of model.combine if given."""
    fc = _forecaster(t, v, week["w0"], week["w1"] - 1)
    fitted = week["fitted"]
    fc.fit_done(fitted)
    saved = model.combine
    try:
        for h in HORIZONS:
            rows = week["test"][h][2] if each_of is None else each_of[h]
            fitted.horizons[h].members.predict_each = (lambda X, rows=rows: rows)  # shadows the method
        if combine is not None:
            model.combine = combine
        fcs = fc.predict_series(list(week["issue_t"]))
    finally:
        model.combine = saved
        for h in HORIZONS:
            fitted.horizons[h].members.__dict__.pop("predict_each", None)
    return _demands(fcs), np.array([f.high_load for f in fcs])


def cv_rmse(pred, act) -> float:
    ok = np.isfinite(pred)
    return float(np.sqrt(np.mean((pred[ok] - act[ok]) ** 2)) / np.mean(act[ok]) * 100)


def score(weeks, preds, flags) -> dict:
    """preds: per week {horizon: forecasts}; flags: per week the high-load flags. Scored as
    forecast_accuracy.py scores the project forecaster."""
    per = {h: np.array([cv_rmse(p[h], w["truth"][h]) for p, w in zip(preds, weeks)]) for h in HORIZONS}
    thr = np.concatenate([w["thr"] for w in weeks])
    truth = np.isfinite(thr) & (np.concatenate([w["truth"][60] for w in weeks]) >= thr)
    s = flag_scores(np.concatenate(flags), truth, len(weeks) * 7)
    return dict(per=per, med={h: float(np.median(per[h])) for h in HORIZONS},
                mean={h: float(np.mean(per[h])) for h in HORIZONS}, f1=s["f1"], p=s["precision"],
                r=s["recall"], fpd=s["false_per_day"])


def report(name: str, s: dict, base: dict | None = None) -> None:
    """One line: medians and means over the weeks, F1, false episodes per day, and against `base`
    how many weeks are better / worse at each horizon."""
    line = (f"{name:36s} {s['med'][15]:.3f} / {s['med'][60]:.3f}  mean {s['mean'][15]:.3f} / {s['mean'][60]:.3f}"
            f"  F1 {s['f1']:.3f} false/day {s['fpd']:.3f}")
    if base is not None:
        for h in HORIZONS:
            better = int(np.sum(s["per"][h] < base["per"][h] - 1e-9))
            worse = int(np.sum(s["per"][h] > base["per"][h] + 1e-9))
            line += f"  {h}: {better} better / {worse} worse"
    print(line, flush=True)


def main(argv) -> int:
    if len(argv) != 2 or argv[0] not in ("build", "show") or argv[1] not in FIRST:
        print(__doc__)
        return 2
    if argv[0] == "build":
        build(argv[1])
        return 0
    weeks = load(argv[1])
    base = score(weeks, [w["pred"] for w in weeks], [w["flags"] for w in weeks])
    report(f"cached model, {argv[1]}", base)
    for h in HORIZONS:
        print(f"  {h} min per week: {np.round(base['per'][h], 2).tolist()}")
    t, v = load_turin()
    pred, flags = replay(weeks[0], t, v)
    same = all(np.allclose(pred[h], weeks[0]["pred"][h], equal_nan=True) for h in HORIZONS)
    print(f"  replay of week 1 gives the cached forecasts and flags: {same and bool(np.all(flags == weeks[0]['flags']))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
