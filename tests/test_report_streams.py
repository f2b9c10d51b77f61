"""A report request that takes up a stream another one served (the VTN's requests again after a new registration, a
cancel and a request again) or joins the queue midway (a request added beside another): the utility never gets an
interval twice, nor one averaged over part of its readings as if it were whole. From a utility's exploratory round
(two requests open through a VTN outage resent intervals, some with another value; a request added beside another
got a first interval of only the readings the other had not taken, unmarked).
A real openleadr VTN (DemoVtn) on loopback, a real SQLite queue."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from datetime import datetime

import pytest
from test_report_multiple import standing
from test_report_requests import S, drained, expected, now, received, running, said, same
from waiting import eventually as until

from ven.report_intervals import SUB_NORMAL, bucket_start
from ven.vtn_server import DemoVtn

pytestmark = pytest.mark.mostly_waiting

FAST, SLOW = (S, S), (10 * S, 10 * S)     # (granularity, reportBackDuration)


def of(vtns, granularity):
    """Every interval the VTNs received of `granularity`, in the order they came."""
    return [iv for iv in received(*vtns) if iv[1] == granularity]


def sent_until(rig, granularity):
    ends = [r["sent_until"] for r in rig.vtn.status()["report_requests"]
            if r["granularity_seconds"] == granularity.total_seconds()]
    return datetime.fromisoformat(ends[0]) if ends and ends[0] else None


def last_end(vtn, granularity):
    got = of([vtn], granularity)
    return got[-1][0] + granularity if got else None


async def fast_ahead(server, rig, other) -> None:
    """The VTN's request at registration and `other` both served, and read until the fast stream is 2-5 s past the
    slow one's last interval end (a PT10S boundary)."""
    await until(lambda: rig.vtn.status()["report_request_id"], 10, "telemetry requested")
    server.create_report(rig.vtn.ven_id, *other)
    await until(lambda: len(standing(rig)) == 2, 5, "both requests served")
    rig.start_meter(0.25)
    # the slow stream may land its first interval before the fast one's first (asked first, at registration)
    await until(lambda: None not in (last_end(server, SLOW[0]), last_end(server, S)) and 2 <= (
        last_end(server, S) - last_end(server, SLOW[0])).total_seconds() <= 5, 25, "the fast stream ahead")


@pytest.mark.parametrize("asked_first", ["fast", "slow"])
async def test_two_requests_asked_again_after_an_outage_go_on_where_each_ended(
        tmp_path, free_tcp_port, caplog, asked_first):
    """The fast stream ahead of the slow one when the VTN goes down: each stream goes on after its own last
    interval, not from the slow one's (which resent the fast one's last intervals, the same dtstart twice)."""
    caplog.set_level(logging.INFO, logger="ven")
    first_asked, other = (FAST, SLOW) if asked_first == "fast" else (SLOW, FAST)
    port = free_tcp_port()
    first = DemoVtn(port, poll_seconds=1, report_granularity=first_asked[0], report_back=first_asked[1])
    second = None
    await first.start()
    try:
        async with running(tmp_path, first.url) as rig:
            await fast_ahead(first, rig, other)
            await first.stop()
            # the polls fail until the VEN registers afresh, and that fails too: the case of a new registration
            await until(lambda: not rig.vtn.connected and rig.vtn.registration_failures >= 1, 15,
                        "registering again, the VTN lost")
            second = DemoVtn(port, poll_seconds=1, report_granularity=first_asked[0], report_back=first_asked[1])
            await second.start()
            await until(lambda: second.registrations == 1 and standing(rig), 10, "registered again, requested")
            second.create_report(rig.vtn.ven_id, *other)
            await until(lambda: len(standing(rig)) == 2, 5, "both requested again")
            await until(lambda: of([second], SLOW[0]), 15, "the slow stream goes on")
            await rig.stop_meter()
            await until(lambda: drained(rig), 15, "everything delivered")
            await asyncio.sleep(0.3)
            for granularity in (S, SLOW[0]):
                # each interval once, the mean of all its readings; none lost
                same(of([first, second], granularity), expected(rig.taken, granularity))
            assert not [q for *_, q in first.data_quality + second.data_quality if q is not None]
    finally:
        if second is not None:
            await second.stop()
        await first.stop()


async def test_a_stream_cancelled_and_requested_again_beside_another_goes_on_after_its_last_interval(
        tmp_path, free_tcp_port, caplog):
    """A cancel and the same request again while a slower request is served: the new one went on from the slow
    one's place in the queue and sent the cancelled one's last intervals again."""
    caplog.set_level(logging.INFO, logger="ven")
    async with DemoVtn(free_tcp_port(), poll_seconds=1, report_granularity=SLOW[0], report_back=SLOW[1]) as server:
        async with running(tmp_path, server.url) as rig:
            await until(lambda: rig.vtn.status()["report_request_id"], 10, "telemetry requested")
            fast = server.create_report(rig.vtn.ven_id, *FAST)
            await until(lambda: len(standing(rig)) == 2, 5, "both requests served")
            rig.start_meter(0.25)
            # either stream may have sent nothing yet on a loaded machine
            await until(lambda: None not in (last_end(server, SLOW[0]), last_end(server, S)) and 2 <= (
                last_end(server, S) - last_end(server, SLOW[0])).total_seconds() <= 4, 25, "the fast stream ahead")
            server.cancel_report(rig.vtn.ven_id, fast)
            again = server.create_report(rig.vtn.ven_id, *FAST)
            await until(lambda: again in standing(rig) and fast not in standing(rig), 5, "requested again")
            await until(lambda: len(received(server, rrid=again)) >= 2, 5, "served again")
            await rig.stop_meter()
            await until(lambda: drained(rig), 15, "everything delivered")
            await asyncio.sleep(0.3)
            same(of([server], S), expected(rig.taken, S))         # nothing twice, nothing lost
            same(of([server], SLOW[0]), expected(rig.taken, SLOW[0]))
            assert not [q for *_, q in server.data_quality if q is not None]


async def test_a_request_beside_another_marks_a_first_interval_whose_earlier_readings_left_the_queue(
        tmp_path, free_tcp_port, caplog):
    """Readings the first request took left the queue: a request added after them whose first interval began
    before they left gets only the rest of that interval's readings. It is sent marked, not as a whole mean."""
    caplog.set_level(logging.INFO, logger="ven")
    g = 3 * S
    async with DemoVtn(free_tcp_port(), poll_seconds=1, report_granularity=2 * S, report_back=2 * S) as server:
        async with running(tmp_path, server.url) as rig:
            await until(lambda: rig.vtn.status()["report_request_id"], 10, "telemetry requested")
            t0 = bucket_start(now() - 120 * S, 60 * S)       # minutes ago, on every grid: whole intervals
            readings = [(t0 + (i + 0.5) * S, 100.0 + i) for i in range(10)]
            for ts, kw in readings:
                rig.vtn.record_sample(ts, kw)
            await until(lambda: drained(rig), 10, "the first request took them all")
            beside = server.create_report(rig.vtn.ven_id, g, g)
            await until(lambda: len(standing(rig)) == 2, 5, "the second request served")
            # t0+9 .. t0+12: 9.5 left with the first request's intervals, 10.5 and 11.5 are queued
            later = [(t0 + (i + 0.5) * S, 100.0 + i) for i in range(10, 15)]
            for ts, kw in later:
                rig.vtn.record_sample(ts, kw)
            await until(lambda: drained(rig), 10, "both took them")
            await asyncio.sleep(0.3)
            got = received(server, rrid=beside)
            assert [t for t, *_ in got] == [t0 + 9 * S, t0 + 12 * S]
            marks = {t: q for r, t, q in server.data_quality if r == beside}
            assert marks == {t0 + 9 * S: SUB_NORMAL, t0 + 12 * S: None}
            assert got[0][2] == pytest.approx(110.5)          # what it holds: the readings still queued
            same(got[1:], [iv for iv in expected(readings + later, g) if iv[0] == t0 + 12 * S])
            lines = said(caplog, f"request {beside}")
            assert [m for m in lines if "left the queue" in m], lines


@pytest.mark.parametrize("asked_first", ["fast", "slow"])
async def test_two_streams_go_on_where_each_ended_after_a_restart(tmp_path, free_tcp_port, caplog, asked_first):
    """The places of the streams in the queue were kept in memory: after a restart both read from the oldest
    reading queued, so the fast one sent its intervals since the slow one's place again."""
    caplog.set_level(logging.INFO, logger="ven")
    first_asked, other = (FAST, SLOW) if asked_first == "fast" else (SLOW, FAST)
    taken = []
    async with DemoVtn(free_tcp_port(), poll_seconds=1, report_granularity=first_asked[0],
                       report_back=first_asked[1]) as server:
        async with running(tmp_path, server.url) as rig:
            await fast_ahead(server, rig, other)
            await rig.stop_meter()
            taken += rig.taken
            # the fast stream's last interval taken by the VTN: a stop while an update is under way sends it again
            await until(lambda: sent_until(rig, FAST[0]) == bucket_start(taken[-1][0], S) + S, 5, "fast stream sent")
        with contextlib.closing(sqlite3.connect(tmp_path / "gw.sqlite")) as db:
            assert db.execute("SELECT COUNT(*) FROM telemetry_queue").fetchone()[0] > 0, "the slow stream's wait"
        fast_before = len(of([server], S))
        async with running(tmp_path, server.url) as rig:
            await until(lambda: standing(rig), 10, "registered again, requested")
            server.create_report(rig.vtn.ven_id, *other)
            await until(lambda: len(standing(rig)) == 2, 5, "both requested again")
            rig.start_meter(0.25)
            await until(lambda: len(of([server], S)) >= fast_before + 2, 15, "the fast stream goes on")
            await rig.stop_meter()
            taken += rig.taken
            await until(lambda: drained(rig), 15, "everything delivered")
            await asyncio.sleep(0.3)
    for granularity in (S, SLOW[0]):
        same(of([server], granularity), expected(taken, granularity))     # each interval once, none lost
    assert not [q for *_, q in server.data_quality if q is not None]
    assert not said(caplog, "not requested again")


async def test_a_stream_of_the_last_run_not_requested_again_holds_its_readings_no_longer(
        tmp_path, free_tcp_port, caplog):
    """After a restart the VTN asks only for the slow stream: the fast one's place is held for
    request_wait_seconds, then one INFO line, its readings leave with the slow stream's and it is forgotten."""
    caplog.set_level(logging.INFO, logger="ven")
    async with DemoVtn(free_tcp_port(), poll_seconds=1, report_granularity=SLOW[0], report_back=SLOW[1]) as server:
        async with running(tmp_path, server.url) as rig:
            await fast_ahead(server, rig, FAST)
            await rig.stop_meter()
        assert sorted(rig.queue.places) == [1, 10]
        async with running(tmp_path, server.url, request_wait_seconds=2) as rig:
            await until(lambda: standing(rig), 10, "registered again, the slow stream requested")
            await until(lambda: said(caplog, "TELEMETRY_USAGE of PT1S not requested again"), 10, "the fast released")
            assert sorted(rig.queue.places) == [10]
            await until(lambda: drained(rig), 15, "the slow stream took every reading, and they left")
    with contextlib.closing(sqlite3.connect(tmp_path / "gw.sqlite")) as db:
        stored = db.execute("SELECT value FROM kv WHERE key = 'telemetry_places'").fetchone()[0]
    assert list(json.loads(stored)) == ["10"]


async def test_readings_a_clock_ahead_dated_are_not_averaged_with_the_readings_of_those_times(
        tmp_path, free_tcp_port, caplog):
    """The clock 120 s ahead for a minute, then back: a request reporting the readings it dated once their times had
    come put each in one interval with the reading really taken then, and sent their mean, unmarked (ledger41)."""
    caplog.set_level(logging.INFO, logger="ven")
    g = 2 * S
    t0 = bucket_start(now() - 120 * S, 60 * S)
    real = [(t0 + (i + 0.5) * S, 100.0 + i) for i in range(10)]
    dated_ahead = [(t0 + (i + 0.25) * S, 500.0 + i) for i in range(2, 6)]   # taken a minute earlier, really
    async with DemoVtn(free_tcp_port(), poll_seconds=1, report_granularity=g, report_back=g) as server:
        async with running(tmp_path, server.url) as rig:
            for ts, kw in dated_ahead + real:
                rig.vtn.record_sample(ts, kw)
            # marked at the step back (ReadGaps.note_reported -> TelemetryQueue.mark_ahead), while their times were
            # still to come: here, their times have come since
            rig.queue.ahead.update((x.seq, x) for x in rig.queue.peek(10) if x.kw >= 500)
            await until(lambda: rig.vtn.status()["report_request_id"], 10, "telemetry requested")
            await until(lambda: drained(rig), 10, "every reading sent or left out")
            await asyncio.sleep(0.3)
    same(received(server), expected(real, g))               # the real readings' means, each interval once
    assert len(said(caplog, "dated by a wall clock that was ahead")) == 1
    assert rig.queue.dropped == len(dated_ahead)
