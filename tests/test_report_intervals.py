"""The pure bucketing of meter samples into the report intervals a VTN asked for."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from ven.report_intervals import (EPOCH, SUB_NORMAL, Interval, bucket_start, complete_intervals, effective_granularity,
                                  grid, next_boundary, report_period)

T0 = datetime(2026, 11, 30, 12, 0, 0, tzinfo=timezone.utc)
S = timedelta(seconds=1)
M = timedelta(minutes=1)


@dataclass(frozen=True)
class Sample:
    seq: int
    ts: datetime
    kw: float


def samples(*pairs):
    return [Sample(i + 1, T0 + timedelta(seconds=t), kw) for i, (t, kw) in enumerate(pairs)]


def test_buckets_lie_on_the_utc_grid():
    assert bucket_start(T0 + timedelta(seconds=59.999), M) == T0
    assert bucket_start(T0 + timedelta(seconds=60), M) == T0 + M
    assert bucket_start(T0 + timedelta(minutes=7, seconds=3), timedelta(minutes=5)) == T0 + timedelta(minutes=5)
    assert next_boundary(T0, M) == T0 + M                       # strictly after
    assert next_boundary(T0 + timedelta(seconds=1), M) == T0 + M


def test_each_interval_is_the_mean_of_its_readings_and_only_complete_ones_go_out():
    got, late = complete_intervals(samples((0, 10.0), (20, 20.0), (40, 30.0), (61, 50.0), (119, 70.0), (121, 1.0)),
                                   M, now=T0 + timedelta(seconds=125))
    assert late == []
    assert [(iv.start, iv.duration, iv.value, [s.seq for s in iv.samples]) for iv in got] == [
        (T0, M, pytest.approx(20.0), [1, 2, 3]),
        (T0 + M, M, pytest.approx(60.0), [4, 5])]                 # the third minute is not over


def test_a_mean_carries_its_own_digits_not_the_noise_of_the_division():
    # 677.2941800000001 went to the VTN for a mean of readings of a few digits each (helper verify41)
    got, _ = complete_intervals(samples((0, 1690.3), (10, 1.6903), (20, 339.89224)), M, now=T0 + M)
    assert repr(got[0].value) == "677.29418"
    got, _ = complete_intervals(samples((0, 1.0), (10, 2.0), (20, 2.0)), M, now=T0 + M)
    assert repr(got[0].value) == "1.66666666667"      # twelve significant digits of a mean that has more


def test_an_interval_is_ready_exactly_when_its_end_has_passed():
    s = samples((5, 1.0))
    assert complete_intervals(s, M, now=T0 + M - timedelta(microseconds=1))[0] == []
    assert len(complete_intervals(s, M, now=T0 + M)[0]) == 1


def test_a_bucket_without_readings_is_not_sent():
    # a slow meter (read every 30 s) behind 10 s intervals: no interval invented for the gaps
    got, _ = complete_intervals(samples((0, 1.0), (30, 2.0), (60, 3.0)), timedelta(seconds=10), now=T0 + M + M)
    assert [(iv.start - T0).total_seconds() for iv in got] == [0, 30, 60]
    assert all(iv.duration == timedelta(seconds=10) for iv in got)


def test_samples_of_a_period_already_reported_are_kept_apart():
    got, late = complete_intervals(samples((10, 1.0), (70, 2.0)), M, now=T0 + 3 * M, sent_until=T0 + M)
    assert [s.seq for s in late] == [1]
    assert [(iv.start, iv.value) for iv in got] == [(T0 + M, 2.0)]


def test_report_period_and_granularity_rules():
    assert report_period(M, 5 * M) == 5 * M                     # batched every reportBackDuration
    assert report_period(5 * M, M) == 5 * M                     # never more often than intervals complete
    assert report_period(M, timedelta(0)) == M                  # 0: each as it completes
    assert effective_granularity(None, 10 * S) == 10 * S
    assert effective_granularity(S, 10 * S) == 10 * S           # finer than sampled: the sampling period
    assert effective_granularity(M, 10 * S) == M
    with pytest.raises(ValueError):
        bucket_start(T0, timedelta(0))


def test_an_interval_is_marked_once_more_than_a_tenth_of_its_reads_failed():
    def quality(good, failed):
        return Interval(T0, 15 * M, 50.0, tuple(samples(*[(i, 50.0) for i in range(good)])), failed).quality
    assert quality(90, 0) is None                   # whole: no oadrDataQuality, as before there was any
    assert quality(87, 3) is None                   # a busy trunk's lost read now and then
    assert quality(81, 9) is None                   # a tenth
    assert quality(80, 10) == SUB_NORMAL
    assert quality(5, 1) == SUB_NORMAL              # one of a 1-minute interval's 6 reads
    assert quality(1, 89) == SUB_NORMAL
    assert Interval(T0, 10 * S, 50.0, ()).quality is None    # a one-shot's single reading


def test_a_stream_asked_again_on_another_grid_goes_on_from_where_it_was_sent():
    # The VTN took intervals up to 12:00:06 on one grid, then asked again on a grid through 12:00:04 (a reportInterval
    # of its own): the interval holding 12:00:06 went out as 12:00:04-12:00:11, over two seconds it already had
    origin = T0 + timedelta(seconds=4)
    sent_until = T0 + timedelta(seconds=6)
    got, late = complete_intervals(samples((5, 99.0), (7, 10.0), (10, 20.0), (12, 30.0)), timedelta(seconds=7),
                                   T0 + timedelta(seconds=20), sent_until, origin)
    assert [s.seq for s in late] == [1]
    assert [(iv.start, iv.duration, iv.value) for iv in got] == [
        (sent_until, timedelta(seconds=5), 15.0), (T0 + timedelta(seconds=11), timedelta(seconds=7), 30.0)]


ROME, LORD_HOWE = ZoneInfo("Europe/Rome"), ZoneInfo("Australia/Lord_Howe")
H, DAY = timedelta(hours=1), timedelta(days=1)


def local(zone, *when):
    return datetime(*when, tzinfo=zone).astimezone(timezone.utc)


def days_of(zone, origin, *readings, step=DAY):
    """(local start, length in hours) of the whole-day intervals the readings (local times) go out in."""
    got, _ = complete_intervals([Sample(i, local(zone, *t), 1.0) for i, t in enumerate(readings)], step,
                                datetime.max.replace(tzinfo=timezone.utc), origin=origin, zone=zone)
    return [(iv.start.astimezone(zone).strftime("%m-%d %H:%M"), iv.duration / H) for iv in got]


def test_days_from_a_local_midnight_stay_the_buildings_days_across_both_clock_changes():
    # A VTN asks for P1D from 1 March 00:00 Rome (28 February 23:00Z). Fixed 24-hour steps from it ran 01:00 to 01:00
    # CEST from 29 March to 31 October, the first hour's energy booked to the day before. Now: Rome's days, 23 hours
    # on the day the clocks go forward, 25 on the day they go back (2.0b sends a duration per interval).
    origin = local(ROME, 2027, 3, 1)
    assert days_of(ROME, origin, (2027, 3, 27, 12), (2027, 3, 28, 0, 30), (2027, 3, 28, 23, 30), (2027, 3, 29, 0, 30),
                   (2027, 4, 15, 0, 10), (2027, 10, 31, 0, 30), (2027, 10, 31, 23, 59), (2027, 11, 1, 0, 5)) == [
        ("03-27 00:00", 24), ("03-28 00:00", 23), ("03-29 00:00", 24), ("04-15 00:00", 24), ("10-31 00:00", 25),
        ("11-01 00:00", 24)]
    # from a summer midnight (1 October, 22:00Z) into the winter: 25 October is 25 hours, its last reading in it
    assert days_of(ROME, local(ROME, 2026, 10, 1), (2026, 10, 25, 23, 30), (2026, 10, 26, 0, 10)) == [
        ("10-25 00:00", 25), ("10-26 00:00", 24)]
    # whole weeks from a Monday: the week holding the change is 167 hours, the readings of its first hour in it
    assert days_of(ROME, local(ROME, 2027, 3, 1), (2027, 3, 22, 0, 30), (2027, 3, 29, 0, 30), step=7 * DAY) == [
        ("03-22 00:00", 167), ("03-29 00:00", 168)]


def test_days_keep_to_a_half_hour_clock_change():
    # Lord Howe goes forward 30 minutes at 02:00 (4 October 2026) and back at 02:00 (5 April 2026)
    origin = local(LORD_HOWE, 2026, 1, 1)
    assert days_of(LORD_HOWE, origin, (2026, 4, 5, 0, 10), (2026, 4, 6, 0, 10), (2026, 10, 4, 23, 50),
                   (2026, 10, 5, 0, 10)) == [("04-05 00:00", 24.5), ("04-06 00:00", 24), ("10-04 00:00", 23.5),
                                             ("10-05 00:00", 24)]


def test_a_grid_not_of_days_from_a_local_midnight_is_fixed_steps_as_before():
    midnight, six = local(ROME, 2027, 3, 1), local(ROME, 2027, 3, 1, 6)
    after = local(ROME, 2027, 4, 15, 12)
    assert grid(DAY, midnight, ROME).zone == ROME
    for step, origin, zone in ((H, midnight, ROME), (DAY + H, midnight, ROME), (DAY, six, ROME), (DAY, midnight, None),
                               (DAY, EPOCH, ROME), (timedelta(hours=12), midnight, ROME)):
        g = grid(step, origin, zone)
        assert g.zone is None
        assert g.start(after) == bucket_start(after, step, origin)
        assert g.next(after) == next_boundary(after, step, origin)
    # a zone without clock changes: the same as fixed days
    kolkata = ZoneInfo("Asia/Kolkata")
    g = grid(DAY, local(kolkata, 2027, 3, 1), kolkata)
    assert g.zone == kolkata and g.start(after) == bucket_start(after, DAY, local(kolkata, 2027, 3, 1))


def test_a_local_day_grid_starts_on_and_steps_past_its_midnights():
    g = grid(DAY, local(ROME, 2027, 3, 1), ROME)
    change = local(ROME, 2027, 3, 28)
    assert g.start(change) == change and g.next(change) == local(ROME, 2027, 3, 29) == change + 23 * H
    assert g.start(change - timedelta(microseconds=1)) == local(ROME, 2027, 3, 27)
    assert g.start(local(ROME, 2027, 2, 10, 5)) == local(ROME, 2027, 2, 10)        # before the origin too
    # where the clock skips midnight (Santiago, 6 September 2026: 00:00 -04 is 01:00 -03) the day starts at 01:00
    santiago = ZoneInfo("America/Santiago")
    first = datetime(2026, 9, 6, 4, tzinfo=timezone.utc)
    assert grid(DAY, first, santiago).zone == santiago
    assert grid(DAY, local(santiago, 2026, 9, 1), santiago).next(local(santiago, 2026, 9, 5, 12)) == first
