"""Report requests as a VTN other than openleadr writes them (tests/raw_vtn.py), each valid OpenADR 2.0b:
a reportInterval bounds the reporting, an oadrCancelReport may name several requests. Registration and
the gateway's answers go on to a real openleadr VTN (DemoVtn), which records the updates."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from raw_vtn import RawVtn, cancel_report, create_report, report_request
from test_report_requests import S, expected, now, received, running, said, same
from waiting import eventually as until
from ven.report_intervals import EPOCH, complete_intervals, next_boundary, report_origin, report_window
from ven.vtn_server import DemoVtn

pytestmark = pytest.mark.mostly_waiting


@dataclass(frozen=True)
class Reading:
    seq: int
    ts: datetime
    kw: float


@contextlib.asynccontextmanager
async def raw_streaming(tmp_path, free_tcp_port):
    """A meter read every 0.25 s, reported to the request the openleadr VTN made at registration:
    (the openleadr VTN, the hand-writing one, the gateway's rig, the standing request)."""
    async with DemoVtn(free_tcp_port(), poll_seconds=1) as demo, \
            RawVtn(free_tcp_port(), demo.url, demo.vtn_id) as raw, running(tmp_path, raw.url) as rig:
        await until(lambda: rig.vtn.status()["report_request_id"], 10, "telemetry requested")
        rig.start_meter(0.25)
        yield demo, raw, rig, rig.vtn.status()["report_request_id"]
        assert raw.invalid == [], "every message of the gateway is valid OpenADR 2.0b"


def offered(demo: DemoVtn) -> tuple[str, str]:
    return demo.report_metadata[-1]["report_specifier_id"], demo.report_metadata[-1]["r_id"]


async def standing_cancelled(demo: DemoVtn, raw: RawVtn, rig, standing: str) -> tuple[str, str]:
    """Once the request made at registration is served, the hand-writing VTN cancels it: (specifier id, r_id) to ask
    again with."""
    await until(lambda: received(demo, rrid=standing), 5, "the standing request served")
    sid, rid = offered(demo)
    raw.send(cancel_report(rig.vtn.ven_id, [standing]))
    await until(lambda: rig.vtn.status()["report_request_id"] is None, 5, "the standing request cancelled")
    return sid, rid


async def test_a_report_interval_in_the_future_is_reported_within_it_and_the_request_ends_after_it(
        tmp_path, free_tcp_port, caplog):
    caplog.set_level(logging.INFO, logger="ven")
    async with raw_streaming(tmp_path, free_tcp_port) as (demo, raw, rig, standing):
        await until(lambda: received(demo, rrid=standing), 5, "the standing request served")
        sid, rid = offered(demo)
        raw.send(cancel_report(rig.vtn.ven_id, [standing]))    # else served beside it, as a VTN may
        await until(lambda: rig.vtn.status()["report_request_id"] is None, 5, "the standing request cancelled")
        start = next_boundary(now(), S) + 4 * S         # a whole second a few polls ahead
        end = start + 2 * S
        raw.send(create_report(rig.vtn.ven_id, [report_request("rr-window", sid, [rid], start=start, duration="PT2S")]))
        await until(lambda: rig.vtn.status()["report_request_id"] == "rr-window", 5, "the windowed request taken")
        # the gateway takes the request before its oadrCreatedReport reaches the VTN
        await until(lambda: (200, "OK", ["rr-window"]) in demo.created_reports, 5, "the request answered")
        await until(lambda: rig.vtn.status()["report_request_id"] is None, 12, "the request over at the window's end")
        got = received(demo, rrid="rr-window")
        same(got, expected([(ts, kw) for ts, kw in rig.taken if start <= ts < end], S))   # the window, all of it
        sent = len(demo.updates)
        await asyncio.sleep(1.5)
        assert len(demo.updates) == sent, "nothing sent after the window"
        await until(lambda: rig.queue.pending >= 4, 5, "readings after the window wait for the VTN's next request")
        assert len(demo.updates) == sent, "nothing sent after the window"
        assert said(caplog, "request rr-window ended: its reportInterval")


async def test_a_request_from_now_until_cancelled_still_gets_the_readings_queued_before_it(
        tmp_path, free_tcp_port, caplog):
    # a VTN back from an outage asking "from now, until cancelled": the readings the gateway queued meanwhile
    # are what it keeps them for, not readings outside the request
    caplog.set_level(logging.INFO, logger="ven")
    async with raw_streaming(tmp_path, free_tcp_port) as (demo, raw, rig, standing):
        sid, rid = await standing_cancelled(demo, raw, rig, standing)
        await until(lambda: rig.queue.pending >= 8, 10, "readings queued meanwhile")
        head = rig.queue.peek(1)[0].ts
        backlog = len(expected([(ts, kw) for ts, kw in rig.taken if ts >= head], S))
        raw.send(create_report(rig.vtn.ven_id, [report_request("rr-open", sid, [rid], start=now(), duration="PT0S")],
                               request_id="create-2"))
        await until(lambda: len(received(demo, rrid="rr-open")) >= backlog, 10, "the backlog")
        # the readings are taken again only now: the last second queued was still filling when it was counted
        want = expected([(ts, kw) for ts, kw in rig.taken if ts >= head], S)[:backlog]
        same(received(demo, rrid="rr-open")[:backlog], want)
        assert not said(caplog, "are not reported")


async def test_a_cancel_naming_several_requests_ends_the_served_one_and_names_the_others(
        tmp_path, free_tcp_port, caplog):
    caplog.set_level(logging.INFO, logger="ven")
    async with raw_streaming(tmp_path, free_tcp_port) as (demo, raw, rig, standing):
        await until(lambda: received(demo, rrid=standing), 5, "the standing request served")
        raw.send(cancel_report(rig.vtn.ven_id, [standing, "rr-no-such"]))
        await until(lambda: demo.canceled_reports, 5, "oadrCanceledReport")
        (code, text, pending, echoed), = demo.canceled_reports
        assert (code, pending, echoed) == (452, [], True) and "rr-no-such" in text and standing not in text
        assert rig.vtn.status()["report_request_id"] is None
        sent = len(demo.updates)
        await asyncio.sleep(2.5)
        assert len(demo.updates) == sent, "nothing sent under the cancelled request"
        assert said(caplog, f"the VTN cancelled the telemetry report (request {standing})")


def test_a_report_interval_is_the_grid_intervals_overlapping_it():
    """A VTN that writes its request's own time as dtstart gets the interval in progress, and the last
    interval is the one holding the end; a duration of 0 reports until cancelled, from the queue's head."""
    t0 = datetime(2026, 7, 1, 14, 0, tzinfo=timezone.utc)
    m15 = timedelta(minutes=15)

    def window(start, duration):
        return report_window({"report_interval": {"dtstart": start, "duration": duration}}, m15)
    assert window(t0, 2 * timedelta(hours=1)) == (t0, t0 + timedelta(hours=2))
    assert window(t0 + timedelta(minutes=6, seconds=18.7), timedelta(hours=1)) == (t0, t0 + 5 * m15)
    assert window(t0 + S, timedelta(0)) == (None, None)     # until cancelled, the backlog included
    assert window(t0, timedelta(days=9999 * 365)) == (None, None)   # "until further notice" as P9999Y: the same
    assert report_window({}, m15) == (None, None)


def test_hourly_and_daily_intervals_from_a_local_midnight_keep_to_it():
    # A utility in Kolkata (+05:30) asks for hours from its midnight, 18:30Z: on the UTC grid each interval straddled
    # two of its billing hours, and the first held half an hour from before the dtstart it asked for.
    hour, day = timedelta(hours=1), timedelta(days=1)
    midnight = datetime(2026, 6, 30, 18, 30, tzinfo=timezone.utc)
    spec = {"report_interval": {"dtstart": midnight, "duration": day}}
    origin = report_origin(spec)
    assert origin == midnight and report_window(spec, hour, origin) == (midnight, midnight + day)
    readings = [Reading(i, midnight + timedelta(minutes=m), kw)
                for i, (m, kw) in enumerate([(-20, 100.0), (-5, 100.0), (5, 50.0), (40, 50.0), (65, 70.0)])]
    got, _ = complete_intervals(readings, hour, midnight + 3 * hour, origin=origin)
    assert [(iv.start - midnight, iv.value) for iv in got] == [(-hour, 100.0), (timedelta(0), 50.0), (hour, 70.0)]
    # a day from Rome's midnight (22:00Z in summer) is Rome's day, not the UTC one
    rome = datetime(2026, 7, 1, 22, 0, tzinfo=timezone.utc)
    origin = report_origin({"report_interval": {"dtstart": rome, "duration": 7 * day}})
    assert [iv.start for iv in complete_intervals([Reading(1, rome + 23 * hour, 1.0)], day, rome + 2 * day,
                                                  origin=origin)[0]] == [rome]
    # a VTN writing the time it asked as dtstart keeps the UTC grid: the interval in progress; so does one that rounds
    # it to the minute, and asks on a quarter-hour
    asked = midnight + timedelta(minutes=7, seconds=12)
    spec = {"report_interval": {"dtstart": asked, "duration": day}}
    assert report_origin(spec) == EPOCH
    assert report_window(spec, hour, report_origin(spec))[0] == datetime(2026, 6, 30, 18, 0, tzinfo=timezone.utc)
    rounded = {"report_interval": {"dtstart": midnight, "duration": day}}
    assert report_origin(rounded, now=midnight + timedelta(seconds=50)) == EPOCH
    assert report_origin(rounded, now=midnight - timedelta(seconds=50)) == EPOCH
    assert report_origin(rounded, now=midnight + timedelta(hours=3)) == midnight
    assert report_origin({}) == EPOCH and report_origin({"report_interval": {"dtstart": None}}) == EPOCH


def test_a_report_interval_of_days_from_a_local_midnight_is_of_the_buildings_days():
    # P30D from a Rome midnight is 30 of Rome's days across a clock change, its intervals Rome's days; without the
    # building's zone (or with another), 30 days of 24 hours on a fixed grid, as before
    rome, day = ZoneInfo("Europe/Rome"), timedelta(days=1)
    for first, last in (((2027, 3, 1), (2027, 3, 31)), ((2026, 10, 1), (2026, 10, 31))):
        start, end = (datetime(*d, tzinfo=rome).astimezone(timezone.utc) for d in (first, last))
        spec = {"report_interval": {"dtstart": start, "duration": 30 * day}}
        assert report_window(spec, day, report_origin(spec), rome) == (start, end)
        assert report_window(spec, day, report_origin(spec)) == (start, start + 30 * day)
        assert report_window(spec, day, report_origin(spec), ZoneInfo("Asia/Kolkata")) == (start, start + 30 * day)


async def test_intervals_are_laid_from_a_report_interval_that_starts_on_a_quarter_hour(tmp_path, free_tcp_port,
                                                                                       caplog):
    # Live, with 7-second intervals (a quarter-hour is not a whole number of them, so the two grids differ): each
    # interval's dtstart is the request's start plus whole intervals, not a multiple of 7 s from the UTC epoch
    caplog.set_level(logging.INFO, logger="ven")
    async with raw_streaming(tmp_path, free_tcp_port) as (demo, raw, rig, standing):
        sid, rid = await standing_cancelled(demo, raw, rig, standing)
        quarter = next_boundary(now(), timedelta(minutes=15)) - timedelta(minutes=15)
        # one quarter-hour in 7 is on both grids, and one a few seconds back reads as the time of the request: then
        # the one before
        while (quarter - EPOCH).total_seconds() % 7 == 0 or now() - quarter < timedelta(minutes=3):
            quarter -= timedelta(minutes=15)
        raw.send(create_report(rig.vtn.ven_id, [report_request("rr-local", sid, [rid], granularity="PT7S",
                                                               report_back="PT7S", start=quarter, duration="PT2H")],
                               request_id="create-2"))
        got = await until(lambda: received(demo, rrid="rr-local")[1:], 20, "two intervals")
        assert all((ts - quarter).total_seconds() % 7 == 0 and d == 7 * S for ts, d, _ in got), got
        assert said(caplog, f"intervals of PT7S (mean of the readings in each), on the grid of its reportInterval's "
                            f"start {quarter.strftime('%Y-%m-%dT%H:%M:%SZ')}")


async def test_readings_before_a_report_interval_are_dropped_in_one_line(tmp_path, free_tcp_port, caplog):
    # a week of 10 s readings queued is 60,000: dropped 100 at a time, each with a line, it was 600 lines at once
    caplog.set_level(logging.INFO, logger="ven")
    async with raw_streaming(tmp_path, free_tcp_port) as (demo, raw, rig, standing):
        sid, rid = await standing_cancelled(demo, raw, rig, standing)
        earlier = now() - timedelta(hours=2)
        for i in range(1000):
            rig.queue.add(earlier + i * S, 40.0)
        start = now()
        raw.send(create_report(rig.vtn.ven_id, [report_request("rr-from-now", sid, [rid], start=start,
                                                               duration="PT1H")], request_id="create-2"))
        await until(lambda: received(demo, rrid="rr-from-now"), 10, "the request served")
        dropped = said(caplog, "are not reported")
        assert len(dropped) == 1 and int(dropped[0].split()[0]) >= 1000, dropped
        assert all(ts >= start - S for ts, _, _ in received(demo, rrid="rr-from-now"))
