"""Meter samples -> the report intervals a VTN asked for (OpenADR TELEMETRY_USAGE). Pure: no I/O.

A utility reads each interval as "the mean power over [dtstart, dtstart + duration)", and adds
intervals up to energy. So samples are grouped into buckets of the requested granularity laid on
a clock grid (start = origin + floor((t - origin) / G) * G; the origin is the UTC epoch unless the request
starts on a quarter-hour, see vtn_reports.report_origin), each bucket's value is the mean of the readings
taken in it, and a bucket is ready only once its end has passed: a bucket sent early would be
sent again, changed, when its later readings arrive. A bucket with no reading is not sent (no
value is invented for a gap in the meter's data).

A bucket in which more than FAILED_SHARE of the meter's reads failed (a meter fault) is the mean of part of its
time: it goes to the VTN marked oadrDataQuality "Quality Uncertain - Sub Normal" (OPC's "derived from fewer good
sources than required"), which a utility's settlement can tell from a whole one. Other buckets carry no marking,
as before. A bucket with no good reading is still not sent: a value the VTN took as a reading would be invented.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterable, Protocol

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
SUB_NORMAL = "Quality Uncertain - Sub Normal"     # one of oadr_20b.xsd's oadrDataQualityType values
# A busy MS/TP trunk loses one read in 20-50 as a matter of course: marking each interval holding one would mark
# nearly every 15-minute interval (90 reads) of such a site, and the marking would tell a utility nothing. A
# tenth lets those through and marks a fault that took a minute and a half of a 15-minute interval.
FAILED_SHARE = 0.1


class SampleLike(Protocol):
    seq: int
    ts: datetime
    kw: float


@dataclass(frozen=True)
class Interval:
    start: datetime
    duration: timedelta
    value: float
    samples: tuple        # the samples averaged into it: acknowledged together once the VTN took it
    failed: int = 0       # ticks in it whose readings are missing from the mean: failed reads, the gateway not running
    # some of its readings left the queue before its request came (the other requests served took them): the mean
    # of only the rest
    cut: bool = False

    @property
    def end(self) -> datetime:
        return self.start + self.duration

    @property
    def quality(self) -> str | None:
        """oadrDataQuality for the VTN: None (no element) unless more than FAILED_SHARE of its reads failed, or it
        lacks readings that left the queue."""
        return SUB_NORMAL if self.cut or self.failed > FAILED_SHARE * (len(self.samples) + self.failed) else None


def bucket_start(ts: datetime, granularity: timedelta, origin: datetime = EPOCH) -> datetime:
    """floor(ts / G) * G on the grid through `origin` (for G = PT1M on the UTC grid: the start of the minute)."""
    g = _whole_microseconds(granularity)
    us = (ts - origin) // timedelta(microseconds=1)
    return origin + timedelta(microseconds=(us // g) * g)


def next_boundary(now: datetime, period: timedelta, origin: datetime = EPOCH) -> datetime:
    """The first multiple of `period` on the grid through `origin` strictly after `now`."""
    return bucket_start(now, period, origin) + period


def complete_intervals(samples: Iterable[SampleLike], granularity: timedelta, now: datetime,
                       sent_until: datetime | None = None,
                       origin: datetime = EPOCH) -> tuple[list[Interval], list[SampleLike]]:
    """(intervals whose end has passed, in time order; samples of a period already reported).

    `sent_until`: the end of the last interval the VTN took. A sample before it (the clock stepped
    back, or a reading arrived after its interval went out) would make that interval appear twice
    with two values: it is returned apart for the caller to account for, never put in an interval."""
    buckets: dict[datetime, list[SampleLike]] = {}
    late: list[SampleLike] = []
    for s in samples:
        if sent_until is not None and s.ts < sent_until:
            late.append(s)
            continue
        buckets.setdefault(bucket_start(s.ts, granularity, origin), []).append(s)
    out = []
    for start in sorted(buckets):
        if start + granularity > now:
            break           # buckets after an incomplete one are later still
        group = buckets[start]
        # the stream sent up to sent_until on another grid (a request asked again on a reportInterval of its own):
        # the interval holding it goes from there, shorter, rather than over time the VTN has an interval for
        begin = max(start, sent_until) if sent_until is not None else start
        # twelve significant digits: a mean's own, without the binary noise of the division (677.2941800000001 went
        # to the VTN, helper verify41)
        mean = float(f"{math.fsum(s.kw for s in group) / len(group):.12g}")
        out.append(Interval(begin, start + granularity - begin, mean, tuple(group)))
    return out, late


def report_period(granularity: timedelta, report_back: timedelta) -> timedelta:
    """How often an update goes out: every reportBackDuration, but never more often than intervals
    complete (a shorter or zero reportBackDuration: each interval as it completes)."""
    return max(granularity, report_back)


def effective_granularity(requested: timedelta | None, sampling: timedelta) -> timedelta:
    """The granularity that can be honoured: none asked, or finer than the meter is sampled -> the
    sampling period (averaging cannot make readings that were never taken)."""
    if requested is None or requested < sampling:
        return sampling
    return requested


def _whole_microseconds(d: timedelta) -> int:
    us = d // timedelta(microseconds=1)
    if us <= 0:
        raise ValueError(f"granularity must be positive, got {d}")
    return us
