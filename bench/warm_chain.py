"""Scoring a network warm-started from the day before's on the walk-forward weeks (accuracy, seventeenth round).

The accuracy harness fits once a week, so a refit that starts from yesterday's network cannot be scored on it
as it is. This chains the network's daily refits, as the gateway and the replay make them: a cold fit on
everything before the chain's first day, then one refit a day on everything before that day, each started
from the previous day's network (WarmMlp: --warm). At each walk-forward week's start the chained
network's forecasts replace the cached cold network's in the harness's member forecasts, and the harness
replays the week (live weights, guard, flags) as for any other candidate. The other three members are the
cached ones: only the network's start differs. The rows are the harness's (test cache, week 12: everything
before 2019-11-18), cut at each day, so a day's fit is the one model.plan_horizon would build.

    python bench/warm_chain.py [--only val] [--cold-days-before 28] [--warm '{"settings": {...}, "shrink": 0.5}']
    python bench/warm_chain.py --cold          # the same chain, every fit cold: the cached model, a check

Needs `accuracy_harness.py build val` and `build test` first.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import accuracy_harness as H  # noqa: E402
from forecaster import features, model  # noqa: E402


class WarmMlp(model._MlpOnDeltas):
    """The model's network member, started from `start` (another WarmMlp or _MlpOnDeltas) when given.

    start's weights are rewritten for this fit's scaling so that they are the same function of the raw
    columns (the first layer takes the new means and spreads, the last the new spread of the target); then
    they may be shrunk toward zero and perturbed by a fresh initialisation (`shrink`, `perturb`: Ash and
    Adams, 2020), and training goes on with the estimator's settings changed by `settings`."""

    def fit(self, X, y, w=None, start=None, settings=None, shrink=1.0, perturb=0.0):
        if start is None:
            return super().fit(X, y, w)
        net = self.net
        real_fit = net.fit

        def warm_fit(A, t, sample_weight=None):
            from sklearn.utils import check_random_state

            W = [x.copy() for x in start.weights]
            b = [c.copy() for c in start.biases]
            b[0] = b[0] + ((self.mu - start.mu) / start.sd) @ W[0]
            W[0] = W[0] * (self.sd / start.sd)[:, None]
            W[-1], b[-1] = W[-1] * (start.y_sd / self.y_sd), b[-1] * (start.y_sd / self.y_sd)
            net.set_params(warm_start=True, **(settings or {}))
            # what scikit-learn 1.9's first pass sets up; its fresh weights are the perturbation
            net._random_state = check_random_state(net.random_state)
            net._initialize(t.reshape(-1, 1), [A.shape[1], *net.hidden_layer_sizes, 1], A.dtype)
            net.n_features_in_ = A.shape[1]
            net.coefs_ = [shrink * x + perturb * f for x, f in zip(W, net.coefs_)]
            net.intercepts_ = [shrink * c + perturb * f for c, f in zip(b, net.intercepts_)]
            net._best_coefs = [x.copy() for x in net.coefs_]
            net._best_intercepts = [c.copy() for c in net.intercepts_]
            return real_fit(A, t, sample_weight=sample_weight)

        net.fit = warm_fit
        super().fit(X, y, w)
        self.epochs_run = int(net.n_iter_)
        return self


def fit_net(ks, X, y, start, warm):
    X = np.where(np.isnan(X).all(axis=0), 0.0, X)      # as model.fit_member
    t0 = time.process_time()
    net = WarmMlp(model._mlp().net)
    keep = {}

    def seen(A, t, sample_weight=None):   # records the epochs of a cold fit too
        out = real(A, t, sample_weight=sample_weight)
        keep["epochs"] = int(net.net.n_iter_) if net.net is not None else None
        return out
    if warm is None or start is None:
        real = net.net.fit
        net.net.fit = seen
        net.fit(X[:, features.OWN], y, model._recency(ks))
        net.epochs_run = keep["epochs"]
    else:
        net.fit(X[:, features.OWN], y, model._recency(ks), start=start, **warm)
    return net, time.process_time() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cold-days-before", type=int, default=28, help="the chain's cold fit, days before week 1")
    ap.add_argument("--warm", default='{"settings": {"learning_rate_init": 0.003, "n_iter_no_change": 3}}',
                    help="WarmMlp.fit's settings, shrink and perturb, as JSON")
    ap.add_argument("--cold", action="store_true", help="no warm start (check: reproduces the cached model)")
    ap.add_argument("--only", choices=("val", "test"), help="one set of weeks (its chain starts before its week 1)")
    args = ap.parse_args(argv)
    warm = None if args.cold else json.loads(args.warm)
    t, v = H.load_turin()
    sets = (args.only,) if args.only else ("val", "test")
    W = {w: H.load(w) for w in sets}
    rows = W[sets[-1]][-1]["train"]     # ks, X, y per horizon: everything before the last week (test: 2019-11-18)
    starts = {}                                        # issue minute of a week's fit -> (which, index)
    for which in sets:
        for i, wk in enumerate(W[which]):
            # the build's fit saw the samples before the week's first issue (its last_k: the sample before it)
            starts[int(np.ceil(t[wk["w0"] - 2] / 60.0))] = (which, i)
    first = min(starts)
    days = [first + d * 1440 for d in range(-args.cold_days_before, (max(starts) - first) // 1440 + 1)]
    nets = {h: None for h in H.HORIZONS}
    each = {w: [{h: W[w][i]["test"][h][2].copy() for h in H.HORIZONS} for i in range(12)] for w in W}
    cpu = {"cold": [], "warm": []}
    epochs = {"cold": [], "warm": []}
    for last_k in days:
        if warm is None and last_k not in starts:
            continue                                   # cold fits do not depend on the day before's
        for h in H.HORIZONS:
            ks, X, y = rows[h]
            keep = ks + h <= last_k
            start = nets[h]
            nets[h], s = fit_net(ks[keep], X[keep], y[keep], start, warm)
            kind = "warm" if start is not None and warm is not None else "cold"
            cpu[kind].append(s)
            epochs[kind].append(nets[h].epochs_run)
            if last_k in starts:
                which, i = starts[last_k]
                test_X = W[which][i]["test"][h][0]
                each[which][i][h][:, 3] = nets[h].predict(test_X[:, features.OWN])
        if last_k in starts:
            print(f"{starts[last_k][0]} week {starts[last_k][1] + 1}: fits so far {len(cpu['cold'])} cold, "
                  f"{len(cpu['warm'])} warm", flush=True)
    for kind in cpu:
        if cpu[kind]:
            print(f"{kind} fits: {len(cpu[kind])}, CPU s median {np.median(cpu[kind]):.2f} mean "
                  f"{np.mean(cpu[kind]):.2f}, epochs median {np.median(epochs[kind]):.0f} "
                  f"(range {min(epochs[kind])}-{max(epochs[kind])})")
    for which in sets:
        weeks = W[which]
        base = H.score(weeks, [w["pred"] for w in weeks], [w["flags"] for w in weeks])
        H.report(f"cached model, {which}", base)
        out = [H.replay(wk, t, v, each[which][i]) for i, wk in enumerate(weeks)]
        s = H.score(weeks, [p for p, _ in out], [f for _, f in out])
        H.report(f"{'cold' if args.cold else 'warm'} chain, {which}", s, base)
        for h in H.HORIZONS:
            print(f"  {h} min per week: {np.round(s['per'][h], 2).tolist()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
