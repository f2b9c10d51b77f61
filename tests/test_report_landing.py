"""Probes of a request that ends with its update on the way, as the utility meets them (helper verify45b): the VTN
cancelling the request in its very answer to that update (2.0b's oadrUpdatedReport may carry an oadrCancelReport),
and an update dated ahead by a clock step landing for a request cancelled meanwhile. Each interval goes once, none
lost, each report dated from the end of the last interval the VTN took. A real openleadr VTN (DemoVtn) on loopback."""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone

import pytest
from test_report_in_flight import each_interval_once, holding_an_update
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
