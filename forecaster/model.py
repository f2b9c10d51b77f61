"""The learned model: per horizon, a blend of gradient boosting and ridge on the change in demand.

Fitting holds out the most recent days, scores the blend against persistence there (the guard's
first verdict), then refits on everything so the served model has seen the latest days.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import Ridge

from . import features
from .calendar import Calendar
from .series import MinuteSnapshot

# Chosen on the Turin walk-forward (bench/forecast_accuracy.py): the bigger trees beat 250 x 15 leaves.
HGB = {"max_iter": 400, "learning_rate": 0.04, "max_leaf_nodes": 31, "min_samples_leaf": 20}
BLEND_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # weight of the boosted trees; the rest is ridge


def _hgb(seed: int = 0) -> HistGradientBoostingRegressor:
    return HistGradientBoostingRegressor(
        max_iter=HGB["max_iter"], learning_rate=HGB["learning_rate"], max_leaf_nodes=HGB["max_leaf_nodes"],
        min_samples_leaf=HGB["min_samples_leaf"], l2_regularization=1.0,
        # Day kinds and weekday stay numeric: a categorical encoder costs milliseconds per predict.
        early_stopping=False, random_state=seed)


class _RidgeOnDeltas:
    """Ridge on standardised features; missing values become 0 (no change) after scaling."""

    def __init__(self, alpha: float = 3.0):
        self.alpha = alpha

    def fit(self, X, y, w=None):
        self.mu = np.nanmean(X, axis=0)
        self.sd = np.nanstd(X, axis=0)
        self.mu = np.where(np.isfinite(self.mu), self.mu, 0.0)
        self.sd = np.where(np.isfinite(self.sd) & (self.sd > 0), self.sd, 1.0)
        self.ridge = Ridge(alpha=self.alpha).fit(self._z(X), y, sample_weight=w)
        return self

    def _z(self, X):
        return np.nan_to_num((X - self.mu) / self.sd, nan=0.0)

    def predict(self, X):
        return self.ridge.predict(self._z(X))


@dataclass
class HorizonModel:
    horizon: int
    weight: float = 0.5
    hgb: object = None
    ridge: object = None
    val_rmse: float = float("nan")        # blend on the held-out days
    val_persistence_rmse: float = float("nan")
    val_rows: int = 0

    def predict_delta(self, X: np.ndarray) -> np.ndarray:
        out = np.zeros(X.shape[0])
        if self.weight > 0:
            out += self.weight * self.hgb.predict(X)
        if self.weight < 1:
            out += (1 - self.weight) * self.ridge.predict(X)
        return out

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


def training_minutes(snap: MinuteSnapshot, last_k: int, stride: int, h: int) -> np.ndarray:
    """Issue minutes whose target window is complete, stepping back from the newest data."""
    ks = np.arange(last_k - h, snap.k0 + features.DEMAND_MINUTES, -stride)[::-1]
    return ks


HALF_LIFE_DAYS = 60.0


def _recency(ks: np.ndarray) -> np.ndarray | None:
    # Buildings drift with the seasons: recent weeks say more about next hour than last spring.
    if HALF_LIFE_DAYS <= 0:
        return None
    return 0.5 ** ((ks.max() - ks) / (HALF_LIFE_DAYS * 1440.0))


def _fit_pair(X, y, weight, w=None):
    # A feature with no values yet (week-back references in the first week) becomes a constant:
    # no split or coefficient uses it, and that stays true when values appear at predict time.
    X = np.where(np.isnan(X).all(axis=0), 0.0, X)
    hgb = _hgb().fit(X, y, sample_weight=w) if weight > 0 else None
    ridge = _RidgeOnDeltas().fit(X, y, w) if weight < 1 else None
    return hgb, ridge


def fit(snap: MinuteSnapshot, cal: Calendar, horizons, last_k: int, stride: int,
        validation_days: float, now: float) -> FittedModel | None:
    """Fit one model per horizon; None when there is too little history for any horizon."""
    t0 = time.perf_counter()
    out: dict[int, HorizonModel] = {}
    rows = 0
    val_minutes = int(validation_days * 1440)
    for h in horizons:
        ks = training_minutes(snap, last_k, stride, h)
        X, level = features.build(snap, cal, ks, h)
        y = features.demand(snap, ks + h) - level
        ok = np.isfinite(y) & np.isfinite(level)
        ks, X, y, level = ks[ok], X[ok], y[ok], level[ok]
        if y.size < 50:
            continue
        hm = HorizonModel(h)
        # The guard: score on the held-out tail, trained only on what precedes it.
        held = ks + h > last_k - val_minutes
        train = ks + h <= last_k - val_minutes
        if held.sum() >= 20 and train.sum() >= 50:
            hgb, ridge = _fit_pair(X[train], y[train], 0.5, _recency(ks[train]))
            ph, pr = hgb.predict(X[held]), ridge.predict(X[held])
            errs = {w: float(np.sqrt(np.mean((w * ph + (1 - w) * pr - y[held]) ** 2))) for w in BLEND_WEIGHTS}
            hm.weight = min(errs, key=errs.get)
            hm.val_rmse = errs[hm.weight]
            hm.val_persistence_rmse = float(np.sqrt(np.mean(y[held] ** 2)))
            hm.val_rows = int(held.sum())
        hm.hgb, hm.ridge = _fit_pair(X, y, hm.weight, _recency(ks))
        out[h] = hm
        rows += y.size
    if not out:
        return None
    return FittedModel(name="hgb+ridge", horizons=out, fitted_at=now, trained_until_minute=last_k,
                       train_rows=rows, fit_seconds=time.perf_counter() - t0)
