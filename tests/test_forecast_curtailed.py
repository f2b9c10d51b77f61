"""Demand-response sheds kept out of what the forecaster learns from (DemandForecaster.set_curtailed)."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from forecaster import DemandForecaster, features, model
from forecaster.calendar import Calendar
from forecaster.model import MODEL_NAME
from forecaster.series import MinuteSnapshot, minute_of

# fits of weeks of minutes, 10-15 s of CPU each: on 2 loaded cores (14 test workers, others fitting beside them) one
# took past the default 120 s, a bound that is only there to catch a hang
pytestmark = pytest.mark.timeout(300)

T0 = dt.datetime(2024, 3, 4, tzinfo=dt.timezone.utc).timestamp()  # a Monday, 00:00 UTC
DAY = 86400


def peaky_office(t: np.ndarray) -> np.ndarray:
    """100 kW at night, 300 kW by day on weekdays, and a 400 kW peak 12:00-16:00 (cooling)."""
    tod = (t % DAY) / 3600.0
    weekday = ((t // DAY).astype(int) + 3) % 7 < 5
    day = np.clip((tod - 7) / 1.5, 0, 1) * np.clip((19 - tod) / 1.5, 0, 1)
    peak = np.clip((tod - 11.75) / 0.5, 0, 1) * np.clip((16.25 - tod) / 0.5, 0, 1)
    return 100 + (200 * day + 100 * peak) * weekday


def shed(t: np.ndarray, v: np.ndarray, days) -> np.ndarray:
    """The building held at 280 kW 12:00-16:00 on `days` (days since T0): an event's shed."""
    out = v.copy()
    for d in days:
        out[(t > T0 + d * DAY + 12 * 3600) & (t <= T0 + d * DAY + 16 * 3600)] = 280.0
    return out


def spans(days):
    return [(T0 + d * DAY + 12 * 3600, T0 + d * DAY + 16 * 3600) for d in days]


def test_a_snapshot_without_spans_empties_exactly_those_minutes():
    snap = MinuteSnapshot(1000, np.arange(100, dtype=float) * 2, np.full(100, 2, dtype=np.int64))
    assert snap.without([(5000, 6000)]) is snap           # nothing of it in this snapshot: no copy
    cut = snap.without([(1010, 1019), (1095, 10**9)])
    assert cut.set_aside == ((1010, 1019), (1095, 1099))
    assert np.isnan(cut.window_mean(np.arange(1010, 1020), 1)).all()
    assert cut.window_mean(np.array([1009, 1020]), 1).tolist() == [9.0, 20.0]
    # a window across the hole averages the minutes either side of it, as with a gap in the readings
    assert cut.window_mean(np.array([1021]), 15)[0] == pytest.approx(np.mean([7, 8, 9, 20, 21]))
    assert snap.set_aside == () and not np.isnan(snap.means).any()   # the original is untouched


def test_set_curtailed_takes_the_whole_list_adds_the_rebound_and_ignores_what_is_not_a_span():
    fc = DemandForecaster(rebound_minutes=60)
    t = T0 + np.arange(0, 2 * DAY, 60.0)
    fc.seed(t, np.full(t.size, 200.0))
    fc.set_curtailed([(T0 + 3600, T0 + 7200), (T0 + 7200 + 1800, T0 + 4 * 3600),   # overlap once the hour is added
                      (float("nan"), T0), (T0 + 5000, T0 + 4000), (None, None)])
    # the minutes with readings after 01:00 up to the end of the hour after 04:00: 01:01 to 05:00
    assert fc.curtailed == ((minute_of(T0 + 3600) + 1, minute_of(T0 + 5 * 3600)),)
    assert fc.curtailed_minutes() == 4 * 60
    fc.set_curtailed([(T0 + DAY, None)])                      # running: everything from its start
    assert fc.curtailed_minutes() == DAY // 60 - 1
    running = fc.curtailed
    fc.set_curtailed([(T0 + DAY, float("inf"))])              # an infinite end is no end too, not a bad span
    assert fc.curtailed == running
    assert fc.status()["curtailed_minutes"] == DAY // 60 - 1
    fc.set_curtailed([])
    assert fc.curtailed_minutes() == 0


def test_a_set_aside_minute_reads_as_the_latest_earlier_same_kind_day_had_it():
    # three weeks of minutes, each day's value its day number; Wednesday and Thursday of week 3 shed at 15:00
    days = 21
    t = T0 + np.arange(60, days * DAY + 1, 60.0)
    k = np.array([minute_of(x) for x in t])
    day_of = ((t - 1) // DAY - T0 // DAY).astype(int)
    snap = MinuteSnapshot(int(k[0]), day_of.astype(float), np.ones(t.size, dtype=np.int64))
    at = lambda d, hour: minute_of(T0 + d * DAY + hour * 3600)   # noqa: E731
    cut = snap.without([(at(16, 15), at(16, 16)), (at(17, 15), at(17, 16))])
    refs = features.references(cut, Calendar())
    assert refs.set_aside == ()
    # Wednesday 15:30 reads Tuesday's; Thursday 15:30 passes over Wednesday (shed then) to Tuesday too
    assert refs.window_mean(np.array([at(16, 15.5), at(17, 15.5)]), 1).tolist() == [15.0, 15.0]
    # the rest of those days reads as metered, and Monday's 15:30 is not anybody's stand-in for Saturday's
    assert refs.window_mean(np.array([at(16, 12), at(17, 17)]), 1).tolist() == [16.0, 17.0]
    sat = snap.without([(at(19, 15), at(19, 16))])
    assert features.references(sat, Calendar()).window_mean(np.array([at(19, 15.5)]), 1).tolist() == [12.0]
    # a minute with no same-kind day within FILL_BACK_DAYS stays empty
    first = snap.without([(at(0, 15), at(0, 16))])
    assert np.isnan(features.references(first, Calendar()).window_mean(np.array([at(0, 15.5)]), 1)[0])


def test_a_set_aside_minute_reads_the_same_wall_clock_minute_across_a_clock_change():
    # Rome's spring change was Sunday 31 March 2024: Monday 15:30 (CEST) reads Friday 15:30 (CET), 71 hours before
    fri = dt.datetime(2024, 3, 29, 14, 30, tzinfo=dt.timezone.utc).timestamp()
    mon = dt.datetime(2024, 4, 1, 13, 30, tzinfo=dt.timezone.utc).timestamp()
    t = np.arange(fri - 3 * DAY, mon + DAY, 60.0)
    snap = MinuteSnapshot(minute_of(t[0]), (t - fri) / 60.0, np.ones(t.size, dtype=np.int64))  # minutes from Friday
    cut = snap.without([(minute_of(mon) - 30, minute_of(mon) + 30)])
    assert features.references(cut, Calendar("Europe/Rome")).window_mean(np.array([minute_of(mon)]), 1)[0] == 0.0


def _forecast_after_a_week_of_sheds(told: bool) -> tuple[float, DemandForecaster]:
    events = [21, 22, 23, 24, 25]                # the fourth week's afternoons, Monday to Friday
    issue = T0 + 28 * DAY + 11.5 * 3600          # the Monday after, 11:30: the peak begins in an hour
    t = T0 + np.arange(0, 28 * DAY + 11.5 * 3600 + 1, 900.0)
    fc = DemandForecaster(validation_days=2)
    fc.seed(t, shed(t, peaky_office(t), events))
    if told:
        fc.set_curtailed(spans(events))
    fc.fit(issue)
    f = fc.predict(issue)
    assert f.model == MODEL_NAME
    return f.demand_kw[60], fc


def test_a_week_of_shed_afternoons_does_not_teach_next_monday_that_its_peak_is_gone():
    truth = float(np.mean(peaky_office(T0 + 28 * DAY + 12.5 * 3600 - np.arange(0, 900, 60.0))))   # 400 kW
    untold, _ = _forecast_after_a_week_of_sheds(told=False)
    told, fc = _forecast_after_a_week_of_sheds(told=True)
    # Every reference day of that Monday (last Friday, last Monday, the four latest workdays) was shed:
    # told nothing, the forecaster expects the 280 kW it saw; told, their shed hours read as the week before.
    assert untold < truth - 50
    assert abs(told - truth) < 20
    assert fc.status()["curtailed_minutes"] == 5 * (4 * 60 + 60)


def _nine_days() -> tuple[DemandForecaster, np.ndarray, np.ndarray]:
    t = T0 + np.arange(0, 10 * DAY, 900.0)
    v = peaky_office(t)
    fc = DemandForecaster(validation_days=2, horizons_minutes=(15, 60))
    fc.seed(t[t < T0 + 9 * DAY], v[t < T0 + 9 * DAY])
    return fc, t, v


_NINE_DAYS_MODEL: list[bytes] = []


@pytest.fixture(scope="module")
def nine_days_model() -> bytes:
    """The model _an_event_day's forecaster fits: its two tests fitted the same minutes before being told of the event,
    the same model to the last bit (7 s of CPU each). Kept in the module, not the fixture: a worker that runs another
    file's test between these two sets the fixture up again."""
    if not _NINE_DAYS_MODEL:
        fc, _, _ = _nine_days()
        _NINE_DAYS_MODEL.append(fc.fit(T0 + 9 * DAY).model_blob())
    return _NINE_DAYS_MODEL[0]


def _an_event_day(blob: bytes, each_cycle=lambda fc, t: None) -> DemandForecaster:
    """Nine days of the office, a fit, then day 9 cycle by cycle (every 15 minutes) with its afternoon shed and told.
    The fit is nine_days_model's, handed over the way fc.fit(T0 + 9 * DAY) hands its own (fit_job, fit_done)."""
    fc, t, v = _nine_days()
    assert fc.fit_job(T0 + 9 * DAY) is not None
    fc.fit_done(model.from_blob(blob))
    fc.set_curtailed(spans([9]))
    day9 = (t >= T0 + 9 * DAY)
    for ti, vi in zip(t[day9], shed(t, v, [9])[day9]):
        fc.add_sample(ti, vi)
        fc.predict(ti)
        each_cycle(fc, ti)
    return fc


def test_live_errors_leave_out_targets_the_building_shed(nine_days_model):
    fc = _an_event_day(nine_days_model)
    _, _, n = fc._rolling[60].rmse()
    # targets every 15 minutes of the day, less 12:00-17:00 (the shed and its hour after)
    resolved = [k for k, *_ in fc._rolling[60].done]
    assert n == len(resolved) and n > 40
    assert not any(T0 + 9 * DAY + 12 * 3600 < k <= T0 + 9 * DAY + 17 * 3600 for k in resolved)


def test_during_an_event_a_target_after_its_end_is_forecast_as_the_building_comes_back():
    # Monday 12:00-15:00 held at 280 kW by an event; the 400 kW peak runs on to 16:00. From 14:30 the forecast for
    # after 15:00 is of the peak the building returns to, so the high-load flag holds the BAS's peak limit through the
    # end of the event, and on after it while the 15-minute demand still holds shed minutes; a target inside the
    # event still follows the shed
    day = 28
    end = T0 + day * DAY + 15.75 * 3600
    t = T0 + np.arange(0, end - T0 + 1, 60.0)      # a meter read every minute
    v = peaky_office(t)
    v[(t > T0 + day * DAY + 12 * 3600) & (t <= T0 + day * DAY + 15 * 3600)] = 280.0
    event = [(T0 + day * DAY + 12 * 3600, T0 + day * DAY + 15 * 3600)]
    issues = [T0 + day * DAY + hour * 3600 for hour in (12.5, 14.5, 15 + 1 / 60, 15.25, 15.5)]
    morning = t <= T0 + day * DAY + 11 * 3600

    def at_eleven() -> DemandForecaster:
        # the demand ending 16:01 is 370 kW, inside the default 3 % band under 380 (368.6): a forecast 1.5 kW under
        # it (368.5, on one machine's floating point) turned the flag off at 15:01. A 6 % band (off under 357) keeps
        # the test on what it is about, the forecast of the return, not on a knife's edge
        fc = DemandForecaster(validation_days=2, high_load_kw=380.0, min_on_minutes=0, min_off_minutes=0,
                              hysteresis_fraction=0.06)
        fc.seed(t[morning], v[morning])
        return fc

    # the fit comes before the event is told, so both forecasters serve the one model, as a restart resumes a stored
    # one (a fit is 10-15 s of CPU; a second fit of the same minutes made the same model, to the last bit)
    blob = at_eleven().fit(T0 + day * DAY + 11 * 3600).model_blob()
    got = {}
    for told in (False, True):
        fc = at_eleven()
        fc.set_model_blob(blob)
        if told:
            fc.set_curtailed(event)
        out, i = [], int(morning.sum())
        for issue in issues:
            while i < t.size and t[i] <= issue:
                fc.add_sample(t[i], v[i])
                i += 1
            f = fc.predict(issue)
            out.append((f.demand_kw[15], f.demand_kw[60], f.high_load))
        got[told] = out
    peak = lambda at: float(np.mean(peaky_office(at - np.arange(0, 900, 60.0))))   # noqa: E731 - demand ending at
    assert got[True][0][1] == pytest.approx(got[False][0][1])    # 12:30 for 13:30: inside the event, as metered
    for (f15, f60, high), issue in zip(got[True][1:], issues[1:]):
        if issue + 900 > event[0][1]:
            assert abs(f15 - peak(issue + 900)) < 25, (issue, f15)
        assert abs(f60 - peak(issue + 3600)) < 25, (issue, f60)    # at 15:15, 16:15 is on the way down: 323 kW
    # at 14:30 and 15:01 the flag is on for the peak to come, though the meter reads 280 kW, and then the 15-minute
    # demand still holds shed minutes
    assert [high for *_, high in got[True][1:3]] == [True, True]
    assert [high for *_, high in got[False][1:3]] == [False, False]
    assert got[False][1][1] < 330 and got[False][2][1] < 340, got[False]   # told nothing: the shed, and then its end


def test_the_members_live_weights_carry_over_an_event_as_over_no_gap(nine_days_model):
    # The shed and its hour after are kept out of the members' live errors; that read as a five-hour gap in the data,
    # and after every event the fixed blend served until two hours of new errors came. The weights of the morning
    # carry on; a real gap in the readings still starts them over.
    weighed = {}
    fc = _an_event_day(nine_days_model, lambda fc, ti: weighed.__setitem__(
        ti, [fc._member_errors[h].weights() is not None for h in (15, 60)]))
    hour = lambda x: T0 + 9 * DAY + x * 3600     # noqa: E731
    assert weighed[hour(11.75)] == [True, True]
    assert all(weighed[x] == [True, True] for x in weighed if x >= hour(17)), \
        [x for x in weighed if x >= hour(17) and weighed[x] != [True, True]]
    later = T0 + 9 * DAY + 23.5 * 3600 + 3 * 3600                     # three hours without a reading
    fc.add_sample(later, float(peaky_office(np.array([later]))[0]))
    fc.predict(later)
    fc.add_sample(later + 900, float(peaky_office(np.array([later + 900]))[0]))
    fc.predict(later + 900)
    assert fc._member_errors[15].weights() is None


def test_the_high_threshold_reads_the_shed_hours_as_the_building_would_have_drawn_them():
    # Sheds come at the peaks: left out of the 90th percentile, each one took a piece of the top decile with it, and
    # after a hot spell of events (every workday afternoon for two weeks here) the high threshold was the shed load's.
    # Read as the reference days had them, the threshold is the building's.
    t = T0 + np.arange(0, 35 * DAY, 900.0)
    days = [d for d in range(21, 35) if d % 7 < 5]      # the last two weeks' workdays (T0 is a Monday)
    now = T0 + 35 * DAY - 900
    got = {}
    for told in (False, True, None):
        fc = DemandForecaster(validation_days=2)
        fc.seed(t, peaky_office(t) if told is None else shed(t, peaky_office(t), days))
        if told:
            fc.set_curtailed(spans(days))
        got[told] = fc.predict(now).high_threshold_kw
    clean = got[None]
    assert clean == pytest.approx(400.0, abs=1)                 # the afternoon peak is the top decile
    assert got[True] == pytest.approx(clean, abs=5), got        # told: the building's
    assert got[False] < clean - 50, got                         # not told: the shed load's (280 kW afternoons)
