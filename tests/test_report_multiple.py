"""Several standing telemetry requests at once, as a utility holds them: short intervals for real-time
monitoring beside longer ones sent less often for settlement. Each gets every one of its
intervals, once, the mean of its readings; a reading leaves the queue once every request took it; a
cancelled request leaves the others served; one beyond the cap is refused 452.
A real openleadr VTN (DemoVtn) on loopback, a real SQLite queue."""
from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
from test_report_in_flight import holding_an_update
from test_report_requests import S, drained, expected, received, running, said, same
from waiting import eventually as until

from ven.vtn_reports import MAX_STANDING
from ven.vtn_server import DemoVtn

pytestmark = pytest.mark.mostly_waiting


def standing(rig) -> list[str]:
    return [r["report_request_id"] for r in rig.vtn.status()["report_requests"]]


@contextlib.asynccontextmanager
async def requested(tmp_path, port: int, caplog):
    """The demo VTN and a gateway's VEN, once the VTN's request at registration (PT1S) is served."""
    caplog.set_level(logging.INFO, logger="ven")
    async with DemoVtn(port, poll_seconds=1, report_granularity=S, report_back=S) as server:
        async with running(tmp_path, server.url) as rig:
            await until(lambda: rig.vtn.status()["report_request_id"], 10, "telemetry requested")
            # the VEN serves the request before its answer lands: a test counting answers from here counted it too
            await until(lambda: server.created_reports, 10, "the request answered")
            yield server, rig


async def two_requests(server, rig, granularity, report_back):
    """The VTN's request at registration and a second one for `granularity`: both served."""
    first = rig.vtn.status()["report_request_id"]
    second = server.create_report(rig.vtn.ven_id, granularity, report_back)
    await until(lambda: standing(rig) == [first, second], 5, "the second request served beside the first")
    return first, second


async def test_two_standing_requests_of_different_granularity_each_get_all_their_intervals_once(
        tmp_path, free_tcp_port, caplog):
    async with requested(tmp_path, free_tcp_port(), caplog) as (server, rig):
        fast, slow = await two_requests(server, rig, 2 * S, 4 * S)
        rig.start_meter(0.25)
        await until(lambda: len(rig.taken) >= 28, 15, "7 s of readings")
        await rig.stop_meter()
        want_fast, want_slow = expected(rig.taken, S), expected(rig.taken, 2 * S)
        await until(lambda: len(received(server, rrid=fast)) >= len(want_fast)
                    and len(received(server, rrid=slow)) >= len(want_slow), 10, "every interval of both")
        await until(lambda: drained(rig), 5, "the queue drained once both took every reading")
        await asyncio.sleep(0.3)
        same(received(server, rrid=fast), want_fast)          # nothing lost, nothing twice, the means
        same(received(server, rrid=slow), want_slow)
        assert max(len(iv) for r, iv in server.updates if r == slow) == 2, "PT2S intervals, two per PT4S"
        assert rig.queue.delivered == len(rig.taken)           # each reading counted once
        assert said(caplog, f"VTN requested telemetry (request {slow}) beside {fast}: intervals of PT2S")
        assert not said(caplog, "replaces")


async def the_other_served_whole(server, rig, slow: str) -> None:
    """The request left goes on, and once the meter stops has every interval: nothing lost, nothing twice, the
    means of its readings."""
    after = len(received(server, rrid=slow))
    await until(lambda: len(received(server, rrid=slow)) >= after + 2, 8, "the other still served")
    await rig.stop_meter()
    want = expected(rig.taken, 2 * S)
    await until(lambda: len(received(server, rrid=slow)) >= len(want), 6, "every interval of the other")
    await until(lambda: drained(rig), 5, "the queue drained by the one left")
    await asyncio.sleep(0.3)    # what would come twice comes now
    same(received(server, rrid=slow), want)


async def test_cancelling_one_request_leaves_the_other_served(tmp_path, free_tcp_port, caplog):
    async with requested(tmp_path, free_tcp_port(), caplog) as (server, rig):
        fast, slow = await two_requests(server, rig, 2 * S, 2 * S)
        rig.start_meter(0.25)
        await until(lambda: len(received(server, rrid=slow)) >= 2, 8, "both served")
        server.cancel_report(rig.vtn.ven_id, fast)
        await until(lambda: server.canceled_reports, 5, "oadrCanceledReport")
        assert server.canceled_reports == [(200, "OK", [slow], True)]
        assert standing(rig) == [slow]
        sent = len(received(server, rrid=fast))
        await the_other_served_whole(server, rig, slow)
        assert len(received(server, rrid=fast)) == sent, "nothing more under the cancelled request"
        same(received(server, rrid=fast), expected(rig.taken, S)[:sent])
    # the log says the other goes on, not that readings queue until the VTN asks again
    ends = [m for m in said(caplog, f"request {fast}") if "cancelled" in m]
    assert ends and all(m.endswith(f"request {slow} still served") for m in ends), ends


async def test_an_update_taken_after_its_request_was_cancelled_leaves_the_others_readings(
        tmp_path, free_tcp_port, caplog):
    # The cancel of one request came on a poll while that request's update was on the way. When the VTN took the
    # update, its readings left the queue as if no other request were served: the other request's interval lacked
    # them and went as the mean of the rest (a whole-suite run at -n 8, 2026-12-05)
    async with requested(tmp_path, free_tcp_port(), caplog) as (server, rig):
        fast, slow = await two_requests(server, rig, 2 * S, 2 * S)
        rig.start_meter(0.25)
        async with holding_an_update(server, fast):
            server.cancel_report(rig.vtn.ven_id, fast)
            await until(lambda: said(caplog, f"the VTN cancelled the telemetry report (request {fast})"), 10,
                        "the cancel taken while the update was on the way")
            sent = len(received(server, rrid=fast))
        await until(lambda: len(received(server, rrid=fast)) > sent, 10, "the update under the cancelled request taken")
        await the_other_served_whole(server, rig, slow)
        assert rig.queue.delivered == len(rig.taken)         # each reading counted once


async def test_standing_requests_beyond_the_cap_are_refused_452_and_the_others_go_on(
        tmp_path, free_tcp_port, caplog):
    async with requested(tmp_path, free_tcp_port(), caplog) as (server, rig):
        more = [server.create_report(rig.vtn.ven_id, n * S, n * S) for n in range(2, MAX_STANDING + 2)]
        await until(lambda: [c for c in server.created_reports if c[0] != 200], 10, "the refusal")
        served, over = standing(rig), more[-1]
        assert len(served) == MAX_STANDING and over not in served
        (code, text, pending), = [c for c in server.created_reports if c[0] != 200]
        assert code == 452 and over in text and pending == served
        lines = said(caplog, "standing telemetry requests are served already")
        assert len(lines) == 1 and over in lines[0]
        rig.start_meter(0.25)
        await until(lambda: all(received(server, rrid=r) for r in served[:2]), 8, "the ones served go on")
        assert received(server, rrid=over) == []


async def test_two_requests_in_one_create_report_are_both_pending_and_each_gets_all_its_intervals_once(
        tmp_path, free_tcp_port, caplog):
    async with requested(tmp_path, free_tcp_port(), caplog) as (server, rig):
        first = rig.vtn.status()["report_request_id"]
        answered = len(server.created_reports)
        two, three = server.create_reports(rig.vtn.ven_id, [(2 * S, 2 * S), (3 * S, 3 * S)])
        await until(lambda: len(server.created_reports) > answered, 5, "the oadrCreatedReport")
        assert server.created_reports[answered:] == [(200, "OK", [first, two, three])]
        assert standing(rig) == [first, two, three]
        rig.start_meter(0.25)
        await until(lambda: len(rig.taken) >= 28, 15, "7 s of readings")
        await rig.stop_meter()
        want = {first: expected(rig.taken, S), two: expected(rig.taken, 2 * S), three: expected(rig.taken, 3 * S)}
        await until(lambda: all(len(received(server, rrid=r)) >= len(w) for r, w in want.items()), 10,
                    "every interval of the three")
        await until(lambda: drained(rig), 5, "the queue drained once all took every reading")
        await asyncio.sleep(0.3)
        for rrid, w in want.items():
            same(received(server, rrid=rrid), w)               # nothing lost, nothing twice, the means
        assert rig.queue.delivered == len(rig.taken)
