"""Telemetry updates to a VTN that answers polls but has trouble with the updates: one too slow for a
backlog's 100 intervals per message, one answering them with an HTTP error, one refusing them for good.
The samples wait, the operator hears of it once, and everything arrives once the VTN takes it.
A real openleadr VTN (DemoVtn) on loopback, a real SQLite queue."""
from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest
import test_report_requests
from openleadr import errors
from test_report_landing import cancelling_in_the_answer
from test_report_requests import S, expected, now, received, running, said, streaming
from waiting import eventually as until

from ven.telemetry import TelemetryQueue
from ven.vtn_server import DemoVtn

pytestmark = pytest.mark.mostly_waiting


def slow_updates(server: DemoVtn, per_interval: float) -> list[int]:
    """The VTN stores each interval as it reads it (a database insert each): an update takes `per_interval`
    a piece. Returns the list the size of every update received goes to."""
    handlers = server._server.services["report_service"].handlers
    real, sizes = handlers["oadrUpdateReport"], []

    async def slow(payload):
        n = sum(len(r.get("intervals") or []) for r in payload.get("reports") or [])
        sizes.append(n)
        await asyncio.sleep(per_interval * n)
        return await real(payload)
    handlers["oadrUpdateReport"] = slow
    return sizes


async def test_a_backlog_too_large_for_the_vtn_to_answer_in_time_goes_in_smaller_updates(
        tmp_path, free_tcp_port, caplog):
    caplog.set_level(logging.INFO, logger="ven")
    server = DemoVtn(free_tcp_port(), poll_seconds=1)
    sizes = slow_updates(server, 0.05)          # 100 intervals: 5 s, beyond the VEN's 3 s; 50: 2.5 s
    async with running(tmp_path, server.url, telemetry_seconds=10.0, request_timeout_seconds=3.0) as rig:
        # twenty minutes queued while the VTN was away: 100 intervals that time out, then 50, 50 and the last 20
        began = now() - timedelta(minutes=20)
        taken = [(began + i * 10 * S, 100.0 + i) for i in range(120)]
        for ts, kw in taken:
            rig.vtn.record_sample(ts, kw)
        async with server:
            await until(lambda: rig.queue.pending == 0, 25, "the backlog delivered")
            want = {t for t, _, _ in expected(taken, 10 * S)}
            assert {t for t, _, _ in received(server)} == want
            assert sizes[0] == 100 and max(sizes[1:]) <= 50, sizes
            lines = said(caplog, "the VTN did not take an update of")
            assert len(lines) == 1 and "100 TELEMETRY_USAGE interval(s)" in lines[0] and "sending 50" in lines[0]


async def test_updates_answered_with_an_http_error_while_polls_are_answered_are_said_once_and_delivered_after(
        tmp_path, free_tcp_port, caplog):
    caplog.set_level(logging.INFO, logger="ven")
    async with DemoVtn(free_tcp_port(), poll_seconds=1) as server:
        async with running(tmp_path, server.url) as rig:
            await until(lambda: rig.vtn.status()["report_request_id"], 10, "telemetry requested")
            rig.start_meter(0.25)
            await until(lambda: len(received(server)) >= 2, 8, "live intervals")
            handlers = server._server.services["report_service"].handlers
            working = handlers["oadrUpdateReport"]
            server.fail_next("oadrUpdateReport", 10**6)     # its report store down: HTTP 500 to each update
            await until(lambda: said(caplog, "answers polls but not telemetry updates"), 10, "the fault said")
            await until(lambda: rig.queue.pending >= 8, 10, "readings queued meanwhile")
            assert rig.vtn.connected
            # connected, so only this tells the dashboard's "Needs attention" (problems.js) the telemetry is stuck
            fault = rig.vtn.status()["telemetry_fault"]
            assert fault["kind"] == "unanswered" and "HTTP 500" in fault["why"] and fault["count"] >= 3, fault
            assert fault["since"].endswith("Z")
            handlers["oadrUpdateReport"] = working
            await until(lambda: said(caplog, "answers telemetry updates again"), 10, "the end said")
            await rig.stop_meter()
            await until(lambda: rig.queue.pending == 0, 10, "drained")
            await asyncio.sleep(0.3)
            starts = [t for t, _, _ in received(server)]
            assert starts == [t for t, _, _ in expected(rig.taken, S)], "every interval once, in order"
            (line,) = said(caplog, "answers polls but not telemetry updates")
            assert "HTTP 500" in line
            assert len(said(caplog, "answers telemetry updates again")) == 1
            assert rig.vtn.status()["last_error"] is None
            assert rig.vtn.status()["telemetry_fault"] is None


async def test_a_vtn_refusing_each_new_request_by_its_id_is_one_warning(tmp_path, free_tcp_port, caplog):
    # a VTN that lost its report requests answers each update 452 "reportRequestID <id> unknown"; the gateway offers
    # again, the VTN requests anew and refuses that id too: a text that differed each time made a WARNING each time
    class Everything(set):
        def __contains__(self, item):
            return True

    caplog.set_level(logging.INFO, logger="ven")
    async with streaming(tmp_path, free_tcp_port()) as (server, rig, _):     # offers again every 0.25 s at most
        await until(lambda: len(received(server)) >= 2, 8, "live intervals")
        server._forgotten = Everything()
        await until(lambda: (rig.vtn.status()["telemetry_fault"] or {}).get("count", 0) >= 4, 20, "4 refusals")
        refused = [r for r in caplog.records if r.levelno == logging.WARNING and "VTN refused the report" in
                   r.getMessage()]
        assert len(refused) == 1, [r.getMessage() for r in refused]
        server._forgotten = set()
        await until(lambda: said(caplog, "takes telemetry again"), 10, "the end said")
        await rig.stop_meter()


async def test_updates_failing_until_the_vtn_cancels_the_request_end_with_it(tmp_path, free_tcp_port, caplog):
    # the fault's end line waited for an update to get through, and none is sent once the request is cancelled: the
    # status, the dashboard and a stop line held "updates unanswered" open for as long as the VTN asked for nothing
    caplog.set_level(logging.INFO, logger="ven")
    async with streaming(tmp_path, free_tcp_port()) as (server, rig, rrid):
        await until(lambda: len(received(server)) >= 2, 8, "live intervals")
        server.fail_next("oadrUpdateReport", 10**6)
        await until(lambda: said(caplog, "answers polls but not telemetry updates"), 10, "the fault said")
        server.cancel_report(rig.vtn.ven_id, rrid)
        await until(lambda: said(caplog, "telemetry updates no longer sent after"), 10, "the fault's end")
        (end,) = said(caplog, "telemetry updates no longer sent after")
        assert end.endswith("failed: the VTN cancelled the report request they were for"), end
        assert rig.vtn.status()["telemetry_fault"] is None and rig.vtn.status()["last_error"] is None
        await rig.stop_meter()


async def test_an_update_failing_after_its_request_was_cancelled_leaves_no_error_behind(
        tmp_path, free_tcp_port, caplog):
    # The cancel reached the VEN on a poll while an update was on the way; that update's HTTP 500 then came back and
    # set last_error with nothing left to clear it: the status and the dashboard said "HTTP 500 from .../EiReport"
    # for as long as the VTN asked for no telemetry (CI, 2026-12-05)
    caplog.set_level(logging.INFO, logger="ven")
    async with streaming(tmp_path, free_tcp_port()) as (server, rig, rrid):
        await until(lambda: len(received(server)) >= 2, 8, "live intervals")
        server.fail_next("oadrUpdateReport", 10**6)
        await until(lambda: said(caplog, "answers polls but not telemetry updates"), 10, "the fault said")
        handlers = server._server.services["report_service"].handlers
        held, release, failed = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def held_then_failing(payload):
            held.set()
            await release.wait()
            failed.set()
            raise RuntimeError("demo VTN: oadrUpdateReport failed on purpose")
        handlers["oadrUpdateReport"] = held_then_failing
        await asyncio.wait_for(held.wait(), 10)
        server.cancel_report(rig.vtn.ven_id, rrid)
        await until(lambda: said(caplog, "telemetry updates no longer sent after"), 10, "the fault's end")
        release.set()
        await asyncio.wait_for(failed.wait(), 5)
        # the VEN has had the 500 once it has polled twice since
        polled = rig.vtn.last_poll
        await until(lambda: rig.vtn.last_poll > polled, 5, "a poll after the failed update")
        polled = rig.vtn.last_poll
        await until(lambda: rig.vtn.last_poll > polled, 5, "another poll")
        status = rig.vtn.status()
        assert status["telemetry_fault"] is None and status["last_error"] is None, status
        assert not said(caplog, "answers polls but not telemetry updates")[1:], "the fault said again"
        await rig.stop_meter()


async def test_a_vtn_refusing_every_update_for_a_while_is_one_warning_and_one_line_at_its_end(
        tmp_path, free_tcp_port, caplog):
    caplog.set_level(logging.INFO, logger="ven")
    async with DemoVtn(free_tcp_port(), poll_seconds=1) as server:
        async with running(tmp_path, server.url) as rig:        # offers again every 0.25 s at most
            await until(lambda: rig.vtn.status()["report_request_id"], 10, "telemetry requested")
            rig.start_meter(0.25)
            await until(lambda: len(received(server)) >= 2, 8, "live intervals")
            handlers = server._server.services["report_service"].handlers
            working = handlers["oadrUpdateReport"]

            async def refuse(payload):      # e.g. its meter-data system rejecting the values for a while
                raise errors.InvalidDataError("values not accepted")
            handlers["oadrUpdateReport"] = refuse
            await until(lambda: len(server.report_metadata) >= 5, 15, "the offer made again and again")
            fault = rig.vtn.status()["telemetry_fault"]
            assert rig.vtn.connected and fault["kind"] == "refused" and fault["count"] >= 2, fault
            assert "454 values not accepted" in fault["why"] and fault["since"].endswith("Z"), fault
            handlers["oadrUpdateReport"] = working
            await until(lambda: said(caplog, "takes telemetry again"), 10, "the end said")
            assert rig.vtn.status()["telemetry_fault"] is None
            await rig.stop_meter()
            await until(lambda: rig.queue.pending == 0, 10, "drained")
            await asyncio.sleep(0.3)
            starts = [t for t, _, _ in received(server)]
            assert starts == [t for t, _, _ in expected(rig.taken, S)], "every interval once, in order"
            lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO and r.name == "ven.vtn"]
            assert len([m for m in lines if "454 values not accepted" in m]) == 1
            # the offers and requests made again meanwhile, each alike, are no news
            assert len([m for m in lines if m.startswith("VTN requested telemetry")]) == 1, lines
            assert not [m for m in lines if m.startswith("VTN took the telemetry report offer")], lines


async def test_updates_asked_further_apart_than_the_queue_keeps_readings_come_often_enough_to_lose_none(
        tmp_path, free_tcp_port, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="ven")
    # the queue keeps 6 s of readings (a week, scaled down) and the VTN asks for an update every 12 s (a fortnight)
    monkeypatch.setattr(test_report_requests, "TelemetryQueue", lambda path: TelemetryQueue(path, max_age=6 * S))
    async with DemoVtn(free_tcp_port(), poll_seconds=1, report_granularity=S, report_back=12 * S) as server:
        async with running(tmp_path, server.url, queue_max_days=6 / 86400) as rig:
            await until(lambda: rig.vtn.status()["report_request_id"], 10, "telemetry requested")
            rig.start_meter(0.25)
            # 8 s of readings: updates 12 s apart would find those of the first 2 s older than the queue keeps
            await asyncio.sleep(8)
            await rig.stop_meter()
            await until(lambda: rig.queue.pending == 0, 14, "drained")   # an update due every 12 s at most
            await asyncio.sleep(0.3)
            starts = [t for t, _, _ in received(server)]
            assert starts == [t for t, _, _ in expected(rig.taken, S)], "every interval once, in order"
            assert rig.queue.status()["dropped"] == 0
            (line,) = said(caplog, "longer than the gateway keeps readings")
            assert "asks for updates every PT12S" in line and "updates are sent every PT3S instead" in line
            assert rig.vtn.status()["report_back_seconds"] == 3


async def test_a_cancel_the_vtn_puts_in_its_answer_to_an_update_ends_the_request(tmp_path, free_tcp_port, caplog):
    caplog.set_level(logging.INFO, logger="ven")
    async with DemoVtn(free_tcp_port(), poll_seconds=1) as server:
        async with running(tmp_path, server.url) as rig:
            rrid = await until(lambda: rig.vtn.status()["report_request_id"], 10, "telemetry requested")
            rig.start_meter(0.25)
            await until(lambda: len(received(server)) >= 2, 8, "live intervals")
            cancelling_in_the_answer(server, rig, rrid)     # 2.0b: oadrUpdatedReport may carry an oadrCancelReport
            await until(lambda: server.canceled_reports, 5, "oadrCanceledReport")
            assert server.canceled_reports == [(200, "OK", [], True)]
            sent = len(server.updates)
            await asyncio.sleep(2.5)
            assert len(server.updates) == sent, "nothing sent under the cancelled request"
            # waited for: 8 readings in 2.5 s at a 0.25 s meter left a loaded loop two late ticks
            await until(lambda: rig.queue.pending >= 8, 5, "readings wait for the next request")
            assert rig.vtn.status()["report_request_id"] is None and len(server.updates) == sent
            assert said(caplog, f"the VTN cancelled the telemetry report (request {rrid})")


async def test_updates_failing_for_a_while_are_retried_at_the_next_answered_poll_not_after_the_grown_backoff(
        tmp_path, free_tcp_port):
    # The VTN's report store down for a while, its polls answered: the updates' backoff grew meanwhile, and the backlog
    # waited for it (up to openadr.retry_max_seconds, 60 s by default) with the VTN taking everything again. An answered
    # poll shows the VTN is there: the update goes again then, at most one per poll.
    async with DemoVtn(free_tcp_port(), poll_seconds=1) as server:
        async with running(tmp_path, server.url, retry_min_seconds=0.2, retry_max_seconds=20.0) as rig:
            await until(lambda: rig.vtn.status()["report_request_id"], 10, "telemetry requested")
            rig.start_meter(0.25)
            await until(lambda: len(received(server)) >= 2, 8, "live intervals")
            handlers = server._server.services["report_service"].handlers
            working, failed = handlers["oadrUpdateReport"], []

            async def failing(payload):
                failed.append(asyncio.get_running_loop().time())
                raise RuntimeError("report store down")
            handlers["oadrUpdateReport"] = failing
            # failures 0.2, 0.4, 0.8, 1.6 and 3.2 s apart: the next after 6.4 s
            await until(lambda: len(failed) >= 6, 15, "the backoff grown")
            handlers["oadrUpdateReport"] = working
            back = asyncio.get_running_loop().time()
            await until(lambda: len(received(server)) and received(server)[-1][0] >= now() - 3 * S, 10, "delivered")
            # the grown backoff's next try is 6.4 s away: 4.5 leaves a loaded machine's poll (1 s) room to be late
            assert asyncio.get_running_loop().time() - back < 4.5, "within about a poll of the VTN taking updates"
            await rig.stop_meter()
            await until(lambda: rig.queue.pending == 0, 10, "drained")
            await asyncio.sleep(0.3)
            assert [t for t, _, _ in received(server)] == [t for t, _, _ in expected(rig.taken, S)]
