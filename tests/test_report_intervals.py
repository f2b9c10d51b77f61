"""The pure bucketing of meter samples into the report intervals a VTN asked for."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest

from ven.report_intervals import (SUB_NORMAL, Interval, bucket_start, complete_intervals, effective_granularity,
                                  next_boundary, report_period)

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
