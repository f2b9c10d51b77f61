"""Probes of a request that ends with its update on the way, as the utility meets them (helper verify45b): the VTN
cancelling the request in its very answer to that update (2.0b's oadrUpdatedReport may carry an oadrCancelReport),
and an update dated ahead by a clock step landing for a request cancelled meanwhile. Each interval goes once, none
lost, each report dated from the end of the last interval the VTN took. A real openleadr VTN (DemoVtn) on loopback."""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone

import pytest
from test_report_in_flight import each_interval_once, failing_updates, holding_an_update
from test_report_requests import S, expected, received, running, said, same, streaming
from waiting import eventually as until

from ven.vtn_server import DemoVtn

pytestmark = pytest.mark.mostly_waiting


def cancelling_in_the_answer(server, rig, rrid: str) -> None:
    """The VTN takes the next update under `rrid` and cancels that request in its answer (oadrUpdatedReport)."""
    handlers = server._server.services["report_service"].handlers
    working = handlers["oadrUpdateReport"]

    async def taken_and_cancelled(payload):
        await working(payload)
        if not any(r["report_request_id"] == rrid for r in payload.get("reports") or []):
            return "oadrUpdatedReport", {}
        handlers["oadrUpdateReport"] = working
        return "oadrUpdatedReport", {"cancel_report": {
            "request_id": "cancel-in-answer", "report_request_id": [rrid], "report_to_follow": False,
            "ven_id": rig.vtn.ven_id}}
    handlers["oadrUpdateReport"] = taken_and_cancelled


def failing_once(server, rrid: str) -> None:
    """The VTN's next update under `rrid` fails (HTTP 500), unstored."""
    handlers = server._server.services["report_service"].handlers
    working = handlers["oadrUpdateReport"]

    async def failing(payload):
        if any(r["report_request_id"] == rrid for r in payload.get("reports") or []):
            handlers["oadrUpdateReport"] = working
            raise RuntimeError("demo VTN: the update failed on purpose")
        return await working(payload)
    handlers["oadrUpdateReport"] = failing


async def test_a_request_the_vtn_cancels_in_its_answer_to_an_update_and_asks_again_sends_each_interval_once(
        tmp_path, free_tcp_port, caplog):
    # The VTN cancelled the request in its answer to an update (after taking it), another request holding the
    # readings, then asked for the stream again: the new request went on from before that update, and the VTN got
    # its intervals twice (the answer's cancel ran before the update counted as taken)
    caplog.set_level(logging.INFO, logger="ven")
    async with streaming(tmp_path, free_tcp_port()) as (server, rig, old):
        other = server.create_report(rig.vtn.ven_id, 2 * S, 2 * S)
        await until(lambda: len(received(server, rrid=other)) >= 2, 8, "both served")
        # `other` takes nothing until the new request stands: the readings after `old`'s end were its alone, and
        # once it took them they left the queue, an interval the new request could not send (a CI run at -n 6)
        with failing_updates(server, other):
            cancelling_in_the_answer(server, rig, old)
            await until(lambda: server.canceled_reports, 8, "oadrCanceledReport")
            new = server.create_report(rig.vtn.ven_id, S, S)
            await until(lambda: rig.vtn.status()["report_request_id"] == new, 10, "the new request")
        await each_interval_once(server, rig, old, new)


async def test_a_request_the_vtn_cancels_in_its_answer_alone_then_asks_again_reports_from_that_updates_end(
        tmp_path, free_tcp_port, caplog):
    # The only request, cancelled in the answer to its update: the next request's first report was dated from the
    # end of the update before that one, so the utility read the intervals it had just taken as not measured
    caplog.set_level(logging.INFO, logger="ven")
    async with streaming(tmp_path, free_tcp_port()) as (server, rig, old):
        await until(lambda: len(received(server)) >= 2, 5, "live intervals")
        cancelling_in_the_answer(server, rig, old)
        await until(lambda: server.canceled_reports, 8, "oadrCanceledReport")
        new = server.create_report(rig.vtn.ven_id, S, S)
        await until(lambda: rig.vtn.status()["report_request_id"] == new, 10, "the new request")
        await each_interval_once(server, rig, old, new)


async def test_an_update_dated_ahead_that_lands_for_a_cancelled_request_goes_once(tmp_path, free_tcp_port, caplog):
    # Readings dated an hour ahead (taken before the clock stepped back) went under a request the VTN cancelled while
    # that update was on the way; the VTN took it, and the request it asked for meanwhile sent them again
    caplog.set_level(logging.INFO, logger="ven")
    async with DemoVtn(free_tcp_port(), poll_seconds=1) as server:
        async with running(tmp_path, server.url) as rig:
            old = await until(lambda: rig.vtn.status()["report_request_id"], 10, "telemetry requested")
            ahead = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(hours=1)
            for n in range(12):
                rig.queue.add(ahead + timedelta(seconds=n / 4), 10.0 + n)
            async with holding_an_update(server, old):
                server.cancel_report(rig.vtn.ven_id, old)
                await until(lambda: said(caplog, f"the VTN cancelled the telemetry report (request {old})"), 10,
                            "the cancel taken while the update was on the way")
                new = server.create_report(rig.vtn.ven_id, S, S)
                await until(lambda: rig.vtn.status()["report_request_id"] == new, 10, "the new request")
            await until(lambda: received(server, rrid=old), 10, "the update dated ahead taken")
            await asyncio.sleep(2.5)    # what would go twice goes now
            taken = [(ahead + timedelta(seconds=n / 4), 10.0 + n) for n in range(12)]
            got = received(server, rrid=old) + received(server, rrid=new)
            same(sorted(g for g in got if g[0] >= ahead), expected(taken, S))


@pytest.mark.parametrize("answer", ["taken", "failed"])
async def test_a_request_cancelled_with_report_to_follow_then_at_once_while_its_update_was_on_the_way_goes_once(
        tmp_path, free_tcp_port, caplog, answer):
    # The VTN cancelled the request with reportToFollow and asked for its stream again, then, tired of waiting for
    # the last update, cancelled it outright while an update was on the way: the request after it went on from
    # before that update (the second end handed the stream over at once), and the VTN got its intervals twice.
    # Failed (HTTP 500), that update's intervals go under the new request (a guard: they did before too)
    caplog.set_level(logging.INFO, logger="ven")
    async with streaming(tmp_path, free_tcp_port()) as (server, rig, old):
        await until(lambda: len(received(server)) >= 2, 5, "live intervals")
        if answer == "failed":
            caplog.set_level(logging.DEBUG, logger="ven")
            failing_once(server, old)
        cancelled = f"the VTN cancelled the telemetry report (request {old})"
        async with holding_an_update(server, old):
            server.cancel_report(rig.vtn.ven_id, old, report_to_follow=True)
            await until(lambda: said(caplog, cancelled), 10, "the cancel with reportToFollow")
            new = server.create_report(rig.vtn.ven_id, S, S)
            await until(lambda: rig.vtn.status()["report_request_id"] == new, 10, "the new request")
            server.cancel_report(rig.vtn.ven_id, old)
            await until(lambda: len(said(caplog, cancelled)) == 2, 10, "the cancel outright")
        if answer == "failed":
            await until(lambda: said(caplog, f"an update of cancelled request {old} failed"), 10, "the update failed")
        await each_interval_once(server, rig, old, new)


async def test_a_stream_taken_over_while_its_update_was_on_the_way_and_that_update_failed_loses_nothing(
        tmp_path, free_tcp_port, caplog):
    # The report list asked for again (METADATA) and the stream requested anew in the answer while an update was on
    # the way, which then failed (HTTP 500): its intervals go under the new request, once (a guard)
    caplog.set_level(logging.INFO, logger="ven")
    async with streaming(tmp_path, free_tcp_port()) as (server, rig, old):
        await until(lambda: len(received(server)) >= 2, 5, "live intervals")
        failing_once(server, old)
        async with holding_an_update(server, old):
            server.create_report(rig.vtn.ven_id, timedelta(0), timedelta(0), report_specifier_id="METADATA", r_id="0")
            await until(lambda: rig.vtn.status()["report_request_id"] not in (None, old), 10, "the new request")
        await each_interval_once(server, rig, old, rig.vtn.status()["report_request_id"])


async def test_a_stop_while_the_update_of_a_cancelled_request_lands_then_a_start_sends_each_interval_once(
        tmp_path, free_tcp_port, caplog):
    # SIGTERM (VtnClient.stop) while the update of a request the VTN had just cancelled was on its way: the update
    # lands during the stop; the next run, asked for the stream again, sends each interval once, dated right
    caplog.set_level(logging.INFO, logger="ven")
    async with DemoVtn(free_tcp_port(), poll_seconds=1) as server:
        async with running(tmp_path, server.url) as rig:
            old = await until(lambda: rig.vtn.status()["report_request_id"], 10, "telemetry requested")
            rig.start_meter(0.25)
            await until(lambda: len(received(server)) >= 2, 5, "live intervals")
            async with holding_an_update(server, old):
                server.cancel_report(rig.vtn.ven_id, old)
                await until(lambda: said(caplog, f"the VTN cancelled the telemetry report (request {old})"), 10,
                            "the cancel taken while the update was on the way")
                await rig.stop_meter()
                stopping = asyncio.create_task(rig.vtn.stop())
                await asyncio.sleep(0.3)
            await asyncio.wait_for(stopping, 10)
            taken = list(rig.taken)
        async with running(tmp_path, server.url) as rig:
            new = await until(lambda: rig.vtn.status()["report_request_id"], 10, "telemetry requested again")
            rig.start_meter(0.25)
            await until(lambda: received(server, rrid=new), 10, "served under the new request")
            await rig.stop_meter()
            await until(lambda: rig.queue.pending == rig.queue.held == 0, 10, "every reading sent")
            await asyncio.sleep(0.3)
            same(sorted(received(server, rrid=old) + received(server, rrid=new)), expected(taken + rig.taken, S))
            last_old = max(end for r, _, end in server.report_spans if r == old)
            assert next(start for r, start, _ in server.report_spans if r == new) == last_old


async def test_a_clock_stepped_back_while_the_update_of_a_cancelled_request_was_on_the_way_loses_nothing(
        tmp_path, free_tcp_port, caplog, monkeypatch):
    # A box an hour fast, put right (NTP) while the update of a request the VTN had just cancelled was on its way: the
    # request asked for meanwhile went on from that update's end, an hour ahead of the clock, and took every reading
    # of that hour as gone to the VTN already: the utility got nothing for an hour
    import test_report_requests
    import ven.vtn_delivery
    import ven.vtn_reports
    import ven.vtn_updates
    step = [timedelta(hours=1)]
    for module in (ven.vtn_reports, ven.vtn_delivery, ven.vtn_updates):     # the telemetry modules' clock
        monkeypatch.setattr(module, "utcnow", lambda: datetime.now(timezone.utc) + step[0])
    monkeypatch.setattr(test_report_requests, "now", lambda: datetime.now(timezone.utc) + step[0])
    caplog.set_level(logging.INFO, logger="ven")
    async with streaming(tmp_path, free_tcp_port()) as (server, rig, old):
        await until(lambda: len(received(server)) >= 2, 5, "live intervals")
        async with holding_an_update(server, old):
            server.cancel_report(rig.vtn.ven_id, old)
            await until(lambda: said(caplog, f"the VTN cancelled the telemetry report (request {old})"), 10,
                        "the cancel taken while the update was on the way")
            step[0], stepped = timedelta(0), len(rig.taken)
            new = server.create_report(rig.vtn.ven_id, S, S)
            await until(lambda: rig.vtn.status()["report_request_id"] == new, 10, "the new request")
        await until(lambda: len(received(server, rrid=new)) >= 3, 10, "the readings after the step served")
        await rig.stop_meter()
        await until(lambda: rig.queue.pending == rig.queue.held == 0, 10, "every reading sent")
        await asyncio.sleep(0.3)
        got = received(server, rrid=new)
        after = expected(rig.taken[stepped:], S)
        same([g for g in got if g[0] >= after[0][0] and g[0] < after[-1][0] + S], after)
        old_got = {t for t, *_ in received(server, rrid=old)}
        assert not [g for g in got if g[0] in old_got], "an interval the VTN took under the old request went again"


async def test_an_update_of_a_cancelled_request_that_never_returns_loses_nothing(tmp_path, free_tcp_port, caplog):
    # The VTN never answers the update of a request it cancelled meanwhile (openadr.request_timeout_seconds runs out):
    # the request asked for meanwhile sends its intervals, and nothing waits on it any more (a guard)
    caplog.set_level(logging.INFO, logger="ven")
    async with DemoVtn(free_tcp_port(), poll_seconds=1) as server:
        async with running(tmp_path, server.url, request_timeout_seconds=1.0) as rig:
            old = await until(lambda: rig.vtn.status()["report_request_id"], 10, "telemetry requested")
            rig.start_meter(0.25)
            await until(lambda: len(received(server)) >= 2, 5, "live intervals")
            handlers = server._server.services["report_service"].handlers
            working, held, gone = handlers["oadrUpdateReport"], asyncio.Event(), asyncio.Event()

            async def never_answered(payload):
                if any(r["report_request_id"] == old for r in payload.get("reports") or []):
                    held.set()
                    await gone.wait()
                    raise RuntimeError("demo VTN: the update was lost")
                return await working(payload)
            handlers["oadrUpdateReport"] = never_answered
            try:
                await asyncio.wait_for(held.wait(), 10)
                server.cancel_report(rig.vtn.ven_id, old)
                new = server.create_report(rig.vtn.ven_id, S, S)
                await until(lambda: rig.vtn.status()["report_request_id"] == new, 10, "the new request")
                await each_interval_once(server, rig, old, new)
                assert rig.vtn._landing is None
            finally:
                gone.set()
