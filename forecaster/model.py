"""The learned model: per horizon, four members combined (half a weighted average, half their median).

Gradient boosting, ridge and a small neural network learn the change in demand from the
reference-day features; a second boosted model learns the demand itself from the
plain ones (features.PLAIN). The average's weights are BLEND until the forecaster knows each
member's recent errors (live_weights). Fitting holds out the most recent days, scores the blend
against persistence there (the guard's first verdict), then refits on everything so the served
model has seen the latest days.
"""
from __future__ import annotations

import pickle
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from . import features
from .calendar import Calendar
from .series import MinuteSnapshot

if TYPE_CHECKING:   # annotations only: serving imports numpy alone (see _hgb)
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.neural_network import MLPRegressor

# Chosen on the Turin validation weeks (bench/forecast_accuracy.py --first-week 2019-05-06): 150 x 15
# leaves scored within 0.2 points CV(RMSE) of 400 x 31 at a quarter of the fit time, which a replayed
# year (365 refits) needs; 100 trees at a rate of 0.15 score as 150 at 0.1 (8.10 / 8.13 % at 60 min).
HGB = {"max_iter": 100, "learning_rate": 0.15, "max_leaf_nodes": 15, "min_samples_leaf": 20}
# (boosted change, ridge change, boosted plain demand, network change). Fixed, not fitted: on the
# Turin validation weeks (May-July), weights picked on each fit's held-out days scored worse than any
# fixed average near this one (60-min CV(RMSE) 8.5 vs 8.1); a week or four of held-out days is too few
# to choose by. The network's 0.2 (the first three scaled by 0.8): 7.94 % against 7.98 % without it,
# 0.1 and 0.3 no better.
BLEND = (0.4, 0.16, 0.24, 0.2)
MEDIAN_SHARE = 0.5  # see combine
# Live weights (see live_weights): each member's squared errors fade with this half-life in minutes of
# target time, and count once they span this long. Validation weeks: half-lives of 2, 6 and 24 hours
# scored 5.43-5.44 / 7.93-7.95 %, 1 hour 5.43 / 7.91.
LIVE_HALF_LIFE_MINUTES = 60.0
LIVE_MIN_SPAN_MINUTES = 120.0
MODEL_NAME = "hgb+ridge+plain+mlp"


def fit_threads(n: int):
    """Limit the threads of fits in this process (a threadpoolctl limiter): scikit-learn's OpenMP
    (the trees) and the BLAS under numpy (the network's small products, which extra threads slow)."""
    import sklearn.ensemble  # noqa: F401  (first: the limit applies to the OpenMP runtime it loads)
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n)


def _hgb(seed: int = 0) -> "_BinnedHGB":
    # Imported here: a fitted model predicts with numpy alone, so a process that only serves
    # forecasts never loads scikit-learn and scipy (about 100 MB).
    from sklearn.ensemble import HistGradientBoostingRegressor

    return _BinnedHGB(HistGradientBoostingRegressor(
        max_iter=HGB["max_iter"], learning_rate=HGB["learning_rate"], max_leaf_nodes=HGB["max_leaf_nodes"],
        min_samples_leaf=HGB["min_samples_leaf"], l2_regularization=1.0,
        # Day kinds and weekday stay numeric: a categorical encoder costs milliseconds per predict.
        early_stopping=False, random_state=seed))


class _BinnedHGB:
    """Boosted trees on features we bin ourselves at unweighted quantiles.

    With sample weights, scikit-learn (1.9) bins every feature at weighted percentiles, which cost
    three quarters of a fit. Handing it at most 255 distinct values per feature makes it use them
    as they are; the thresholds match its own unweighted binning.
    """

    MAX_BINS = 255

    def __init__(self, est: HistGradientBoostingRegressor):
        self.est = est

    def fit(self, X, y, sample_weight=None):
        q = np.linspace(0, 1, self.MAX_BINS + 1)[1:-1]
        self.edges = []
        for j in range(X.shape[1]):
            col = X[:, j][np.isfinite(X[:, j])]
            self.edges.append(np.unique(np.quantile(col, q)) if col.size else np.empty(0))
        self.est.fit(self._codes(X), y, sample_weight=sample_weight)
        self._flatten()
        self.est = None  # the flat arrays are the model from here on; nothing of scikit-learn is pickled
        return self

    def _flatten(self):
        # scikit-learn walks its trees one Python call per tree: ~5 ms for one row. Walking all
        # trees together in numpy, one step per depth level, gives the same sums in microseconds.
        trees = [p[0].nodes for p in self.est._predictors]
        size = max(t.size for t in trees)
        shape = (len(trees), size)
        self.value = np.zeros(shape)
        self.feature = np.zeros(shape, dtype=np.intp)
        self.threshold = np.zeros(shape)
        self.nan_left = np.zeros(shape, dtype=bool)
        self.left = np.zeros(shape, dtype=np.intp)
        self.right = np.zeros(shape, dtype=np.intp)
        self.leaf = np.ones(shape, dtype=bool)
        for i, t in enumerate(trees):
            n = t.size
            self.value[i, :n] = t["value"]
            self.feature[i, :n] = t["feature_idx"]
            self.threshold[i, :n] = t["num_threshold"]
            self.nan_left[i, :n] = t["missing_go_to_left"]
            self.left[i, :n] = t["left"]
            self.right[i, :n] = t["right"]
            self.leaf[i, :n] = t["is_leaf"]
        self.baseline = float(np.ravel(self.est._baseline_prediction)[0])

    def _codes(self, X):
        out = np.empty(X.shape, dtype=float)
        for j, e in enumerate(self.edges):
            out[:, j] = np.searchsorted(e, X[:, j], side="left")
        out[np.isnan(X)] = np.nan
        return out

    CHUNK_ROWS = 2048  # rows x trees index arrays per step stay a few MB

    def predict(self, X):
        C = self._codes(np.asarray(X, dtype=float))
        return np.concatenate([self._walk(C[i:i + self.CHUNK_ROWS])
                               for i in range(0, C.shape[0], self.CHUNK_ROWS)] or [np.empty(0)])

    def _walk(self, C):
        trees = np.arange(self.value.shape[0])[None, :]
        rows = np.arange(C.shape[0])[:, None]
        node = np.zeros((C.shape[0], trees.size), dtype=np.intp)
        while True:
            leaf = self.leaf[trees, node]
            if leaf.all():
                break
            x = C[rows, self.feature[trees, node]]
            go_left = np.where(np.isnan(x), self.nan_left[trees, node], x <= self.threshold[trees, node])
            nxt = np.where(go_left, self.left[trees, node], self.right[trees, node])
            node = np.where(leaf, node, nxt)
        return self.baseline + self.value[trees, node].sum(axis=1)


class _RidgeOnDeltas:
    """Ridge on standardised features; missing values become 0 (no change) after scaling."""

    def __init__(self, alpha: float = 3.0):
        self.alpha = alpha

    def fit(self, X, y, w=None):
        from sklearn.linear_model import Ridge  # see _hgb: predicting needs only the coefficients

        self.mu = np.nanmean(X, axis=0)
        self.sd = np.nanstd(X, axis=0)
        self.mu = np.where(np.isfinite(self.mu), self.mu, 0.0)
        # A column that only rounding moved (a gap to a reference day on a history that repeats exactly:
        # a schedule, whole-kW readings) has a spread of ~1e-11 kW, not 0; scaled by it, the first real
        # gap (a new chiller) became 1e13 standard deviations and the forecast trillions of kW.
        level = np.abs(X[:, 0][np.isfinite(X[:, 0])])
        tiny = 1e-8 * max(float(level.max()) if level.size else 0.0, 1.0)
        self.sd = np.where(np.isfinite(self.sd) & (self.sd > tiny), self.sd, 1.0)
        ridge = Ridge(alpha=self.alpha).fit(self._z(X), y, sample_weight=w)
        self.coef, self.intercept = np.asarray(ridge.coef_, dtype=float), float(ridge.intercept_)
        return self

    def _z(self, X):
        return np.nan_to_num((X - self.mu) / self.sd, nan=0.0)

    def predict(self, X):
        return self._z(X) @ self.coef + self.intercept


def _mlp(seed: int = 0) -> "_MlpOnDeltas":
    from sklearn.neural_network import MLPRegressor  # see _hgb: predicting needs only the weights

    # Validation weeks: a rate of 0.003 stopped after 8 epochs without gain blends as well as 0.001
    # after 15 (60-min CV(RMSE) 7.91 against 7.94 %) in a third of the time (0.3 s on 35 days).
    return _MlpOnDeltas(MLPRegressor(hidden_layer_sizes=(64, 32), alpha=1e-3, learning_rate_init=3e-3, max_iter=300,
                                     early_stopping=True, n_iter_no_change=8, random_state=seed))


class _MlpOnDeltas:
    """A small neural network on the same columns as ridge: a smooth non-linear view between the
    ridge's straight lines and the trees' steps. Missing values take the training medians."""

    def __init__(self, net: MLPRegressor):
        self.net = net

    def fit(self, X, y, w=None):
        from sklearn.exceptions import ConvergenceWarning

        med = np.nanmedian(X, axis=0)
        self.fill = np.where(np.isfinite(med), med, 0.0)
        Z = self._filled(X)
        self.mu, sd = Z.mean(axis=0), Z.std(axis=0)
        self.sd = np.where(sd > 0, sd, 1.0)
        self.y_sd = float(np.std(y)) or 1.0
        self.lo, self.hi = Z.min(axis=0), Z.max(axis=0)
        self.y_lo, self.y_hi = float(np.min(y)), float(np.max(y))
        with warnings.catch_warnings():  # a short history stops at max_iter: the fit is still usable
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.net.fit((Z - self.mu) / self.sd, y / self.y_sd, sample_weight=w)
        self.weights = [np.asarray(c, dtype=float) for c in self.net.coefs_]
        self.biases = [np.asarray(b, dtype=float) for b in self.net.intercepts_]
        self.net = None  # as _BinnedHGB: the arrays are the model, nothing of scikit-learn is pickled
        return self

    def _filled(self, X):
        return np.where(np.isnan(X), self.fill, X)

    def predict(self, X):
        # Inputs and answers stay within what training saw: a network extrapolates without bound (a
        # week-back reference that was missing while it learned, and is there now, is such an input).
        Z = np.clip(self._filled(np.asarray(X, dtype=float)), self.lo, self.hi)
        a = (Z - self.mu) / self.sd
        for W, b in zip(self.weights[:-1], self.biases[:-1]):
            a = np.maximum(a @ W + b, 0.0)
        return np.clip((a @ self.weights[-1] + self.biases[-1])[:, 0] * self.y_sd, self.y_lo, self.y_hi)


@dataclass
class Members:
    hgb: object
    ridge: object
    plain: object
    mlp: object

    def predict_each(self, X: np.ndarray) -> np.ndarray:
        """Each member's forecast change from the current demand (X[:, 0], 'level'), one column per
        member in BLEND's order, for rows of features.build."""
        own = X[:, features.OWN]
        return np.column_stack([self.hgb.predict(own), self.ridge.predict(own),
                                self.plain.predict(X[:, features.PLAIN]) - X[:, 0], self.mlp.predict(own)])

    def predict_delta(self, X: np.ndarray) -> np.ndarray:
        return combine(self.predict_each(X))


def combine(each: np.ndarray, weights=None) -> np.ndarray:
    """Rows of member forecasts (changes or demands alike) -> one forecast per row.

    Half the weighted average (BLEND unless `weights`), half the members' median (the mean of the
    middle two): a member far off the others on a row counts for less. Validation weeks (May-July):
    CV(RMSE) 5.46 / 7.99 -> 5.44 / 7.95 % at 15 / 60 min, better in 9 and 8 of 12 weeks, and in 8-9 of 12
    with three other sets of members fitted on extra columns; the median alone or 0.3 / 0.7 of it
    scored the same, a weighted median worse. Test weeks (bench): 4.34 / 5.98 -> 4.33 / 5.96, F1 0.818 -> 0.824.
    """
    w = np.asarray(BLEND if weights is None else weights, dtype=float)
    return MEDIAN_SHARE * np.median(each, axis=-1) + (1 - MEDIAN_SHARE) * (each @ w)


def live_weights(mean_sq_errors) -> np.ndarray:
    """BLEND reweighted by each member's recent squared error (inverse, as Bates and Granger combine
    forecasts), summing to 1: a member that has been off for the last hours counts for less until
    it is right again. Validation weeks: 5.44 / 7.95 -> 5.43 / 7.91 % at 15 / 60 min, better in 9 and 8
    of 12 weeks; the inverse square or cube of the error no better (bench/README, eighth round)."""
    e = np.asarray(mean_sq_errors, dtype=float)
    if not (np.all(np.isfinite(e)) and e.max() > 0):
        return np.asarray(BLEND, dtype=float)
    w = np.asarray(BLEND) / np.maximum(e, 1e-9 * e.max())   # an exact member is not an infinite one
    return w / w.sum()


def fit_members(X, y, w=None) -> Members:
    """y is the change in demand; the plain member learns the demand itself (y + level)."""
    return Members(*fit_member((X, y, w), MEMBER_ORDER))


@dataclass
class HorizonModel:
    horizon: int
    members: Members | None = None
    val_rmse: float = float("nan")        # the blend on the held-out days
    val_persistence_rmse: float = float("nan")
    val_rows: int = 0
    validated_until_minute: int | None = None  # last minute of the data the held-out verdict saw

    def predict_delta(self, X: np.ndarray) -> np.ndarray:
        return self.members.predict_delta(X)

    @property
    def beats_persistence(self) -> bool:
        return bool(self.val_rows) and self.val_rmse < self.val_persistence_rmse


@dataclass
class FittedModel:
    name: str
    horizons: dict[int, HorizonModel]
    fitted_at: float
    trained_until_minute: int
    train_rows: int
    fit_seconds: float
    info: dict = field(default_factory=dict)
    features: tuple = ()  # the feature columns it was fitted on; a model from another set is refitted
    calendar: tuple = ()  # Calendar.settings it was fitted with; () from versions that did not record them
    # the horizons the fit was asked for: one it left out (too few rows) is not a changed configuration, and is
    # tried at the next refit rather than at every start; () from versions that did not record them
    asked: tuple = ()


def from_blob(blob: bytes) -> FittedModel | None:
    """A pickled FittedModel (None pickles as None: too little history to fit)."""
    try:
        fitted = pickle.loads(blob)
    except (AttributeError, ImportError) as err:  # a newer version's classes: a downgrade
        raise OtherVersion(f"its classes are not in this version ({err})") from None
    if fitted is not None and not isinstance(fitted, FittedModel):
        raise ValueError("not a fitted forecaster model")
    if fitted is not None and fitted.name != MODEL_NAME:
        raise OtherVersion(f"model of kind {fitted.name!r}, this version fits {MODEL_NAME!r}")
    if fitted is not None and tuple(fitted.features) != features.FEATURE_NAMES:
        raise OtherVersion(f"model fitted on {len(fitted.features)} other feature columns, "
                           f"this version has {len(features.FEATURE_NAMES)}")
    return fitted


class OtherSettings(ValueError):
    """A stored model fitted for other horizons or another calendar than the forecaster's now."""


class OtherVersion(ValueError):
    """A stored model another version of the forecaster fitted (an upgrade or a downgrade)."""


@dataclass(frozen=True)
class FitJob:
    """Everything one fit needs, picklable, so it can run in another thread or process."""
    snap: MinuteSnapshot
    calendar: Calendar
    horizons: tuple
    last_k: int
    stride: int
    validation_days: float
    now: float
    previous: FittedModel | None
    # horizons whose guard the live errors decide, with no held-out fit (offline replay; see plan_horizon)
    live_decides: tuple = ()

    def run(self, map_fn=map, meanwhile=None) -> FittedModel | None:
        return fit(self.snap, self.calendar, self.horizons, self.last_k, self.stride, self.validation_days,
                   self.now, self.previous, map_fn, meanwhile, self.live_decides)


def training_minutes(snap: MinuteSnapshot, last_k: int, stride: int, h: int) -> np.ndarray:
    """Issue minutes whose target window is complete, stepping back from the newest data."""
    ks = np.arange(last_k - h, snap.k0 + features.DEMAND_MINUTES, -stride)[::-1]
    return ks


# Validation weeks (May-July) scored 30 d < 60 d < 120 d <= 240 d; 120 keeps last season's weight
# at a quarter, not half, for weeks that follow a change of season.
HALF_LIFE_DAYS = 120.0


def _recency(ks: np.ndarray) -> np.ndarray | None:
    # Buildings drift with the seasons: recent weeks say more about next hour than last spring.
    if HALF_LIFE_DAYS <= 0:
        return None
    return 0.5 ** ((ks.max() - ks) / (HALF_LIFE_DAYS * 1440.0))


def fit(snap: MinuteSnapshot, cal: Calendar, horizons, last_k: int, stride: int,
        validation_days: float, now: float, previous: FittedModel | None = None, map_fn=map,
        meanwhile=None, live_decides=()) -> FittedModel | None:
    """Fit one model per horizon; None when there is too little history for any horizon.

    The held-out verdict (validation errors) of `previous` is carried over while
    its held-out days are under `validation_days` old: the next verdict then scores days it has not
    seen, and a refit costs one fit instead of two. Live rolling errors take over the guard anyway.
    The members are independent: `map_fn` (e.g. a process pool's map) may fit them side by side. Each
    horizon's rows are built by one call and each member fitted by another, not a horizon per call: the
    60-minute network trains about twice as long as the 15-minute one, and two processes each fitting
    a horizon left one core waiting for the other every refit. `meanwhile()`, if given, is called once the
    members' fits are handed to `map_fn` and before their results are awaited (a replay issues the
    forecasts of the day before: with a pool's map, while the fits run).
    """
    t0 = time.perf_counter()
    horizons = tuple(horizons)
    olds = [previous.horizons.get(h) if previous is not None else None for h in horizons]
    n = len(horizons)
    plans = list(map_fn(plan_horizon, [snap] * n, [cal] * n, horizons, [last_k] * n, [stride] * n,
                        [validation_days] * n, olds, [h in live_decides for h in horizons]))
    tasks = [(i, which, names) for i, plan in enumerate(plans) if plan is not None
             for which in plan.sets() for names in MEMBER_TASKS]
    # the costliest first, so the last call a process takes is a short one (bit-identical in any order)
    tasks.sort(key=lambda t: -sum(_member_cost(plans[t[0]].horizon, name) for name in t[2]))
    results = map_fn(fit_member, [plans[i].rows(which) for i, which, _ in tasks],
                     [names for *_, names in tasks])
    if meanwhile is not None:
        meanwhile()
    done = {}
    for (i, which, names), members in zip(tasks, results):
        done.update({(i, which, name): m for name, m in zip(names, members)})
    out, rows = {}, 0
    for i, plan in enumerate(plans):
        if plan is None:
            continue
        fitted = {which: Members(*(done[(i, which, name)] for name in MEMBER_ORDER)) for which in plan.sets()}
        out[plan.horizon] = plan.finish(fitted)
        rows += int(plan.y.size)
    if not out:
        return None
    return FittedModel(name=MODEL_NAME, horizons=out, fitted_at=now, trained_until_minute=last_k,
                       train_rows=rows, fit_seconds=time.perf_counter() - t0,
                       features=features.FEATURE_NAMES, calendar=cal.settings, asked=horizons)


MEMBER_ORDER = ("hgb", "ridge", "plain", "mlp")   # Members' fields
# The members each call fits: the ridge (milliseconds) goes with the plain trees rather than on a call of its own.
MEMBER_TASKS = (("hgb",), ("plain", "ridge"), ("mlp",))


def _member_cost(h: int, name: str) -> float:
    # rough CPU seconds on 35 days of 15-minute rows (bench/README, accuracy sixteenth round); only the order matters
    return {"hgb": 0.37, "ridge": 0.01, "plain": 0.27}.get(name, 0.25 + 0.012 * h)


def fit_member(rows, names: tuple) -> list:
    """The members `names` fitted on (X, y, w): a pool's process fits some of a horizon's members, fit_members all."""
    X, y, w = rows
    # A feature with no values yet (week-back references in the first week) becomes a constant:
    # no split or coefficient uses it, and that stays true when values appear at predict time.
    X = np.where(np.isnan(X).all(axis=0), 0.0, X)
    own = X[:, features.OWN]
    fits = {"hgb": lambda: _hgb().fit(own, y, sample_weight=w),
            "ridge": lambda: _RidgeOnDeltas().fit(own, y, w),
            "plain": lambda: _hgb().fit(X[:, features.PLAIN], y + X[:, 0], sample_weight=w),
            "mlp": lambda: _mlp().fit(own, y, w)}
    return [fits[name]() for name in names]


@dataclass
class HorizonPlan:
    """One horizon's training rows and what its fit is to do with them: fit on all of them, and, unless
    `old`'s held-out verdict is carried over, first on all but the held-out tail to score against it."""
    horizon: int
    ks: np.ndarray
    X: np.ndarray
    y: np.ndarray
    held: np.ndarray | None
    last_k: int
    old: HorizonModel | None

    def sets(self) -> tuple:
        return ("all",) if self.held is None else ("train", "all")

    def rows(self, which: str):
        if which == "all":
            return self.X, self.y, _recency(self.ks)
        train = ~self.held
        return self.X[train], self.y[train], _recency(self.ks[train])

    def finish(self, fitted: dict) -> HorizonModel:
        hm = HorizonModel(self.horizon)
        if self.held is None:
            if self.old is not None:
                hm.val_rmse, hm.val_persistence_rmse = self.old.val_rmse, self.old.val_persistence_rmse
                hm.val_rows, hm.validated_until_minute = self.old.val_rows, self.old.validated_until_minute
        else:
            held = self.held
            hm.val_rmse = float(np.sqrt(np.mean((fitted["train"].predict_delta(self.X[held]) - self.y[held]) ** 2)))
            hm.val_persistence_rmse = float(np.sqrt(np.mean(self.y[held] ** 2)))
            hm.val_rows = int(held.sum())
            hm.validated_until_minute = self.last_k
        hm.members = fitted["all"]
        return hm


def plan_horizon(snap: MinuteSnapshot, cal: Calendar, h: int, last_k: int, stride: int, validation_days: float,
                 old: HorizonModel | None, live: bool = False) -> HorizonPlan | None:
    """The rows one horizon fits on; None with under 50 usable rows. `live`: the live errors decide this
    horizon's guard and will until the next refit (a replay, whose live errors are never lost to a restart):
    `old`'s verdict is carried over as it is, however old, as the guard would not read a new one."""
    val_minutes = int(validation_days * 1440)
    ks = training_minutes(snap, last_k, stride, h)
    X, level = features.build(snap, cal, ks, h)
    y = features.demand(snap, ks + h) - level
    ok = np.isfinite(y) & np.isfinite(level)
    ks, X, y = ks[ok], X[ok], y[ok]
    if y.size < 50:
        return None
    if live and old is not None:
        return HorizonPlan(h, ks, X, y, None, last_k, old)
    seen = getattr(old, "validated_until_minute", None)
    if old is not None and old.val_rows and seen is not None and 0 <= last_k - seen < val_minutes:
        return HorizonPlan(h, ks, X, y, None, last_k, old)
    # The guard: score on the held-out tail, trained only on what precedes it.
    held = ks + h > last_k - val_minutes
    if held.sum() >= 20 and (~held).sum() >= 50:
        return HorizonPlan(h, ks, X, y, held, last_k, None)
    return HorizonPlan(h, ks, X, y, None, last_k, None)
