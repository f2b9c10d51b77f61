"""Feature rows for 'demand ending h minutes after issue minute k', from a MinuteSnapshot.

The target is expressed as a change from the current 15-minute demand, and the strongest features
are the same change seen on reference days: the latest earlier day of the same kind (workday,
Saturday, Sunday/holiday) and the latest one at least a week back. Holidays therefore borrow a
Sunday's shape rather than last Friday's. One more column (analog_change) averages what the recent
same-kind days did next, weighted by how much their last three hours looked like today's.

A second, plain set of columns (recent demand, the same interval yesterday and last week, the time
of day) feeds a separate model of the demand itself: averaged in, a model that sees the day through
different eyes cancels part of the first one's errors.
"""
from __future__ import annotations

import numpy as np

from .calendar import WORKDAY, Calendar
from .series import MinuteSnapshot

DEMAND_MINUTES = 15

OWN_NAMES = (
    "level", "last5_minus_level", "d15", "d30", "d60", "d120", "d240",
    "ref1_change", "ref1_gap", "ref7_change", "ref7_gap", "ref1_lag_days", "ref7_lag_days",
    "tod_sin", "tod_cos", "tod_sin2", "tod_cos2", "weekday", "target_kind", "issue_kind",
    "ref1_target", "ref7_target", "mean_4h", "refn_change", "refn_gap", "refn_target", "refn_spread",
    "refn_gap_60", "refn_gap_180", "refn_scaled_change", "analog_change",
)
PLAIN_LAGS = (0, 15, 30, 45, 60, 105, 120, 240)
PLAIN_NAMES = tuple(f"plain_demand_{lag}" for lag in PLAIN_LAGS) + (
    "plain_d15", "plain_d60", "plain_target_day_back", "plain_target_week_back", "plain_day_back",
    "plain_week_back", "plain_tod_sin", "plain_tod_cos", "plain_weekday", "plain_workday",
)
FEATURE_NAMES = OWN_NAMES + PLAIN_NAMES  # build() returns the columns in this order
OWN = slice(0, len(OWN_NAMES))
PLAIN = slice(len(OWN_NAMES), len(FEATURE_NAMES))
N_REFS = 4  # the latest same-kind days whose median change is a denoised daily profile
TODAY_MINUTES = 240 + DEMAND_MINUTES   # how far back today's columns read: the 4-hour lags of a 15-minute demand
ANALOG_DAYS, ANALOG_BACK_DAYS = 20, 42  # candidate same-kind days for analog_change, and how far back
ANALOG_STEPS = 12                       # 15-minute demands (3 hours) compared with today's
ANALOG_CHUNK_ROWS = 1024  # rows x days x steps temporaries stay a few MB, not hundreds, on a year of rows


def demand(snap: MinuteSnapshot, ks: np.ndarray) -> np.ndarray:
    return snap.window_mean(ks, DEMAND_MINUTES)


def build(snap: MinuteSnapshot, cal: Calendar, ks: np.ndarray, h: int,
          refs: MinuteSnapshot | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(X, level): feature matrix (FEATURE_NAMES) for issue minutes ks at horizon h, and the current demand.

    Earlier days are read from `refs` (default: references(snap)), where a demand-response event's shed reads as
    a normal day's, while today reads as metered."""
    refs = references(snap if refs is None else refs, cal)
    ks = np.asarray(ks, dtype=np.int64)
    js = ks + h
    level = demand(snap, ks)
    cols = [level, snap.window_mean(ks, 5) - level]
    for lag in (15, 30, 60, 120, 240):
        cols.append(level - demand(snap, ks - lag))
    local_j = cal.local_seconds(js * 60)
    day_j = local_j // 86400
    local_k = cal.local_seconds(ks * 60)
    offs = [cal.same_kind_offsets(day_j, min_back) for min_back in (1, 7)]
    targets = []
    for off in offs:
        ref_k = demand(refs, cal.days_back(ks, off))
        ref_j = demand(refs, cal.days_back(js, off))
        cols += [ref_j - ref_k, level - ref_k]
        targets.append(ref_j)
    cols += [off.astype(float) for off in offs]
    tod = (local_j % 86400) / 86400.0 * 2 * np.pi
    weekday, kind_j = ((day_j + 3) % 7).astype(float), cal.day_kind(day_j)
    cols += [np.sin(tod), np.cos(tod), np.sin(2 * tod), np.cos(2 * tod)]
    cols.append(weekday)
    cols.append(kind_j.astype(float))
    cols.append(cal.day_kind(local_k // 86400).astype(float))
    cols += targets
    cols.append(snap.window_mean(ks, 240))
    backn = cal.recent_same_kind(day_j, N_REFS)
    rj = demand(refs, cal.days_back(js[:, None], backn))
    rk = demand(refs, cal.days_back(ks[:, None], backn))
    with np.errstate(all="ignore"):
        ref_level = _row_median(rk)
        cols += [_row_median(rj - rk), level - ref_level, _row_median(rj), _row_std(rj - rk)]
        # How far today has run from the reference days over the last hours: a steadier signal
        # of an unusual day than the gap at one instant.
        for width in (60, 180):
            rw = refs.window_mean(cal.days_back(ks[:, None], backn), width)
            cols.append(snap.window_mean(ks, width) - _row_median(rw))
        # The reference change scaled to today's level: a day at 80 % of usual swings 80 % as much.
        # Only for a reference level above 0: a sub-meter that read 0 kW then (a chiller off) made it
        # infinite, and every fit failed on it; a net export (PV) would turn the swing upside down.
        cols.append(np.where(ref_level > 0, _row_median(rj) * level / ref_level - level, np.nan))
    cols.append(_analog_change(snap, refs, cal, ks, js, day_j))
    cols += [demand(snap, ks - lag) for lag in PLAIN_LAGS]
    cols += [level - demand(snap, ks - 15), level - demand(snap, ks - 60), demand(refs, cal.days_back(js, 1)),
             demand(refs, cal.days_back(js, 7)), demand(refs, cal.days_back(ks, 1)), demand(refs, cal.days_back(ks, 7))]
    cols += [np.sin(tod), np.cos(tod), weekday, (kind_j == WORKDAY).astype(float)]
    return np.column_stack(cols), level


FILL_BACK_DAYS = 42   # how far back a set-aside minute looks for a same-kind day to stand in for it


def references(snap: MinuteSnapshot, cal: Calendar) -> MinuteSnapshot:
    """`snap` with each minute it set aside (a demand-response event's shed and the rebound after it) read from
    the latest earlier day of the same kind that has that wall-clock minute as metered, as a utility's baseline
    stands in for an event day: the reference days' shed hours read as a normal day's, and their other hours
    as they were."""
    if not snap.set_aside:
        return snap
    # the zone's offset and the day's kind of every minute held, looked up once: each day back is then indexing
    k_all = snap.k0 + np.arange(snap.n, dtype=np.int64)
    offset = cal.local_seconds(k_all * 60) - k_all * 60
    kind = cal.day_kind((k_all * 60 - 1 + offset) // 86400)      # minute k ends at k * 60
    todo = np.concatenate([np.arange(first, last + 1) for first, last in snap.set_aside]) - snap.k0
    ks, values = todo + snap.k0, np.full(todo.size, np.nan)
    where = np.arange(todo.size)
    for back in range(1, FILL_BACK_DAYS + 1):
        guess = todo - back * 1440
        ok = guess >= 0
        src = np.where(ok, guess + (offset[todo] - offset[np.where(ok, guess, 0)]) // 60, 0)  # as Calendar.days_back
        ok &= (src >= 0) & (src < snap.n)
        src = np.where(ok, src, 0)
        got = np.where(ok & (kind[src] == kind[todo]), snap.means[src], np.nan)
        hit = np.isfinite(got)
        values[where[hit]] = got[hit]
        todo, where = todo[~hit], where[~hit]
        if not todo.size:
            break
    return snap.with_minutes(ks, values)


def _analog_change(snap: MinuteSnapshot, refs: MinuteSnapshot, cal: Calendar, ks, js, day_j) -> np.ndarray:
    """What recent same-kind days did next, weighted by how closely their last three hours had the
    shape of today's: a late start or an early shutdown today picks the days that had one too."""
    back = cal.recent_same_kind(day_j, ANALOG_DAYS, ANALOG_BACK_DAYS)
    c = ANALOG_CHUNK_ROWS
    return np.concatenate([_analog_rows(snap, refs, cal, ks[i:i + c], js[i:i + c], back[i:i + c])
                           for i in range(0, ks.size, c)] or [np.empty(0)])


def _analog_rows(snap: MinuteSnapshot, refs: MinuteSnapshot, cal: Calendar, ks, js, back) -> np.ndarray:
    have = back < ANALOG_BACK_DAYS  # recent_same_kind pads with ANALOG_BACK_DAYS where it ran out of days
    steps = np.arange(ANALOG_STEPS) * DEMAND_MINUTES
    k_back = cal.days_back(ks[:, None], back)                                      # (rows, days)
    today = snap.window_mean_lookup(ks[:, None] - steps, DEMAND_MINUTES)          # (rows, steps)
    cand = refs.window_mean_lookup(k_back[:, :, None] - steps, DEMAND_MINUTES)    # (rows, days, steps)
    cand = np.where(have[:, :, None], cand, np.nan)
    with np.errstate(all="ignore"):
        diff = (cand - cand[:, :, :1]) - (today - today[:, :1])[:, None, :]    # shapes, levels removed
        dist = np.nansum(diff ** 2, axis=2) / np.sum(np.isfinite(diff), axis=2)
        change = refs.window_mean_lookup(cal.days_back(js[:, None], back), DEMAND_MINUTES) - cand[:, :, 0]
        w = np.exp(-dist / (_row_median(dist)[:, None] + 1e-6))
        w = np.where(np.isfinite(w) & np.isfinite(change), w, 0.0)
        return np.sum(w * np.nan_to_num(change), axis=1) / np.sum(w, axis=1)


def _row_std(a: np.ndarray) -> np.ndarray:
    # np.nanstd warns through the warnings module on empty rows; filters are not thread-safe.
    c = np.sum(~np.isnan(a), axis=1)
    m = np.nansum(a, axis=1) / c
    return np.sqrt(np.nansum((a - m[:, None]) ** 2, axis=1) / c)


def _row_median(a: np.ndarray) -> np.ndarray:
    """nanmedian along rows for narrow arrays, without np.nanmedian's per-call overhead."""
    s = np.sort(a, axis=1)  # NaN sorts last
    c = np.sum(~np.isnan(a), axis=1)
    rows = np.arange(a.shape[0])
    lo = s[rows, np.maximum((c - 1) // 2, 0)]
    hi = np.where(c % 2 == 1, lo, s[rows, np.minimum(c // 2, a.shape[1] - 1)])
    return np.where(c > 0, (lo + hi) / 2, np.nan)
