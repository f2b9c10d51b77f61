"""A replay's refits: the members fitted in a pool of processes (the work shared, the model unchanged), and no
held-out fit for a horizon whose live errors decide its guard until the next refit."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from forecaster import DemandForecaster, features, model
from forecaster.core import _Rolling
from forecaster.replay import fit_map

T0 = dt.datetime(2024, 3, 4, tzinfo=dt.timezone.utc).timestamp()  # a Monday, 00:00 UTC


def _office(days: int, step: float = 900.0):
    """test_forecaster's office (100 kW at night, 300 kW on weekdays 08:00-18:00, ramps), with noise."""
    t = T0 + np.arange(0, days * 86400, step)
    tod = (t % 86400) / 3600.0
    weekday = ((t // 86400).astype(int) + 3) % 7 < 5
    day = np.clip((tod - 7) / 1.5, 0, 1) * np.clip((19 - tod) / 1.5, 0, 1)
    return t, 100 + 200 * day * weekday + np.random.default_rng(0).normal(0, 2.0, t.size)


@pytest.mark.timeout(600)    # 248 s at a load of 8-13 on 2 cores: the CPU of its fits, not a hang
def test_two_fit_processes_share_each_horizons_members_and_fit_what_one_process_fits():
    fc = DemandForecaster(validation_days=2, min_fit_hours=48)
    # six days: enough for both horizons to hold two out (what the calls counted below need); the same fits on ten
    # took 2.9 s of CPU against 1.6, and this test is about who fits what, not how well
    t, v = _office(6)
    fc.seed(t, v)
    job = fc.fit_job(t[-1])
    # one thread, as the gateway's fits and fit_map's processes have: unlimited, the trees' OpenMP threads spun
    # on a shared machine for six times the CPU (18.8 s against 3.0 s of this fit at a load of 7 on 2 cores)
    with model.fit_threads(1):
        alone = job.run(map)
    calls, order = [], []

    with fit_map(2) as pool_map:
        def recorded(fn, *iterables):
            args = [list(a) for a in iterables]
            calls.append((fn.__name__, len(args[0])))
            return pool_map(fn, *args)

        shared = job.run(recorded, meanwhile=lambda: order.append([name for name, _ in calls]))
    # Each horizon's members are calls of their own, not one call a horizon: the 60-minute network trains about
    # twice as long as the 15-minute one, and one core waited for the other every refit. Here both horizons
    # are held out first (6 days, 2 held out), so two sets of members each.
    assert dict(calls)["fit_member"] == 2 * 2 * len(model.MEMBER_TASKS)
    # the forecasts a replay issues meanwhile are computed while the fits run, not before they are handed out
    assert order == [["plan_horizon", "fit_member"]]
    snap, cal = job.snap, job.calendar
    for h in fc.horizons_minutes:
        a, b = alone.horizons[h], shared.horizons[h]
        assert (a.val_rmse, a.val_persistence_rmse, a.val_rows) == (b.val_rmse, b.val_persistence_rmse, b.val_rows)
        assert a.val_rows > 0 and a.validated_until_minute == b.validated_until_minute
        ks = model.training_minutes(snap, job.last_k, job.stride, h)
        X, _ = features.build(snap, cal, ks, h)
        assert np.array_equal(a.members.predict_each(X), b.members.predict_each(X), equal_nan=True)   # to the bit


def test_live_errors_hold_through_a_time_only_while_enough_of_them_stay_in_the_window():
    roll = _Rolling(168 * 3600)
    end = 1_700_000_100 // 60 * 60
    for k in range(30 * 4):      # 30 hours of 15-minute targets, resolved as they came
        roll.add((end - (119 - k) * 900) // 60, 1.0, 2.0)
    roll.resolve(end // 60, lambda k: 0.0)
    assert roll.holds_through(end + 86400 + 900, 12, 24 * 3600)
    assert roll.holds_through(end + 6 * 86400, 12, 24 * 3600)
    # with none coming after them, 6 days and 6 hours on the first 12 of the 30 hours have left the window: 18 hours
    # are left, under the day the guard needs
    assert not roll.holds_through(end + 6 * 86400 + 6 * 3600, 12, 24 * 3600)
    assert not _Rolling(3600).holds_through(end, 12, 0)


@pytest.mark.timeout(600)    # 248 s at a load of 8-13 on 2 cores: the CPU of its fits, not a hang
def test_a_replays_refit_skips_the_held_out_fit_while_live_errors_decide_until_the_next():
    fc = DemandForecaster(validation_days=2, min_fit_hours=48)
    t, v = _office(9)      # six days to the first fit (both horizons hold two out, as with ten), three live
    first_days = t < T0 + 6 * 86400
    fc.seed(t[first_days], v[first_days])
    fc.fit(t[first_days][-1] + 900)
    verdict = {h: fc.fitted_model.horizons[h].validated_until_minute for h in fc.horizons_minutes}
    assert all(verdict.values())
    later = t[~first_days]
    for now, kw in zip(later, v[~first_days]):     # three days of live forecasts, scored as the targets come
        fc.add_sample(now, kw)
        fc.predict(now)
    now = later[-1] + 900
    # the gateway's refit (no next fit known): the verdict's days are stale, so a held-out fit scores new ones
    job = fc.fit_job(now)
    assert job.live_decides == ()
    plan = model.plan_horizon(job.snap, job.calendar, 60, job.last_k, job.stride, job.validation_days,
                              job.previous.horizons[60], False)
    assert plan.sets() == ("train", "all")
    fc.fit_done(None)
    # a replay's, the next a day later: the live errors decide until then, and the held-out fit is not made
    job = fc.fit_job(now, next_fit=now + 86400 + 900)
    assert job.live_decides == tuple(fc.horizons_minutes)
    calls = []

    def recorded(fn, *iterables):
        args = [list(a) for a in iterables]
        calls.append((fn.__name__, len(args[0])))
        return map(fn, *args)

    with model.fit_threads(1):     # as DemandForecaster.fit runs it (see the test above)
        fitted = job.run(recorded)
    fc.fit_done(fitted)
    assert dict(calls)["fit_member"] == len(fc.horizons_minutes) * len(model.MEMBER_TASKS)
    assert {h: fitted.horizons[h].validated_until_minute for h in fc.horizons_minutes} == verdict
    assert fitted.trained_until_minute > max(verdict.values())
