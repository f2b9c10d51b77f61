"""A request that ends while its update is on the way (the VTN cancels it on a poll, or takes its stream over with a
request in the answer to the report list offered again), and a request of its granularity asked for meanwhile: the
utility gets each interval once, none lost. A real openleadr VTN (DemoVtn) on loopback, a real SQLite queue."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

import pytest
from test_report_requests import S, drained, expected, received, said, same, streaming
from waiting import eventually as until

pytestmark = pytest.mark.mostly_waiting


@contextlib.asynccontextmanager
async def holding_an_update(server, rrid: str):
    """The VTN holds the next update under `rrid` unanswered until the block ends (a VTN storing it, a slow link)."""
    handlers = server._server.services["report_service"].handlers
    held, release = asyncio.Event(), asyncio.Event()

    async def holding(payload, real=handlers["oadrUpdateReport"]):
        if not release.is_set() and any(r["report_request_id"] == rrid for r in payload.get("reports") or []):
            held.set()
            await release.wait()
        return await real(payload)
    handlers["oadrUpdateReport"] = holding
    await asyncio.wait_for(held.wait(), 10)
    try:
        yield
    finally:
        release.set()


async def each_interval_once(server, rig, old: str, new: str) -> None:
    """Both requests' intervals together are the stream: nothing twice, nothing lost, the means of its readings; and
    the new request's first report is dated from the end of the old one's last interval."""
    await until(lambda: received(server, rrid=new), 10, "served under the new request")
    await rig.stop_meter()
    await until(lambda: drained(rig), 10, "every reading sent")
    await asyncio.sleep(0.3)        # what would come twice comes now
    same(sorted(received(server, rrid=old) + received(server, rrid=new)), expected(rig.taken, S))
    assert rig.queue.delivered == len(rig.taken)
    last_old = max(end for r, _, end in server.report_spans if r == old)
    assert next(start for r, start, _ in server.report_spans if r == new) == last_old


async def test_a_stream_taken_over_while_its_update_was_on_the_way_sends_that_updates_intervals_once(
        tmp_path, free_tcp_port, caplog):
    # The VTN asked for the report list again (METADATA) and requested the stream anew in its answer while an update
    # of the request served was on the way: the new request went on from before that update, and the VTN got its
    # intervals twice, once under each request
    caplog.set_level(logging.INFO, logger="ven")
    async with streaming(tmp_path, free_tcp_port()) as (server, rig, old):
        await until(lambda: len(received(server)) >= 2, 5, "live intervals")
        async with holding_an_update(server, old):
            server.create_report(rig.vtn.ven_id, timedelta(0), timedelta(0), report_specifier_id="METADATA", r_id="0")
            await until(lambda: rig.vtn.status()["report_request_id"] not in (None, old), 10, "the new request")
        new = rig.vtn.status()["report_request_id"]
        assert said(caplog, f"VTN requested telemetry (request {new}) in place of {old}")
        await each_interval_once(server, rig, old, new)


async def test_a_request_cancelled_while_its_update_was_on_the_way_and_asked_again_sends_that_updates_intervals_once(
        tmp_path, free_tcp_port, caplog):
    # The VTN cancelled the request on a poll while its update was on the way and asked for the stream again: the
    # new request went on from before that update, and the VTN got its intervals twice
    caplog.set_level(logging.INFO, logger="ven")
    async with streaming(tmp_path, free_tcp_port()) as (server, rig, old):
        await until(lambda: len(received(server)) >= 2, 5, "live intervals")
        async with holding_an_update(server, old):
            server.cancel_report(rig.vtn.ven_id, old)
            await until(lambda: said(caplog, f"the VTN cancelled the telemetry report (request {old})"), 10,
                        "the cancel taken while the update was on the way")
            new = server.create_report(rig.vtn.ven_id, S, S)
            await until(lambda: rig.vtn.status()["report_request_id"] == new, 10, "the new request")
        await each_interval_once(server, rig, old, new)


async def test_a_request_cancelled_while_its_update_was_on_the_way_and_asked_again_after_it_landed_sends_it_once(
        tmp_path, free_tcp_port, caplog):
    # As above, the stream asked for again only once the update was taken, its readings still held for another
    # request: the new request went on from before that update
    caplog.set_level(logging.INFO, logger="ven")
    async with streaming(tmp_path, free_tcp_port()) as (server, rig, old):
        other = server.create_report(rig.vtn.ven_id, 2 * S, 2 * S)
        await until(lambda: len(received(server, rrid=other)) >= 2, 8, "both served")
        handlers = server._server.services["report_service"].handlers
        takes, refusing = handlers["oadrUpdateReport"], asyncio.Event()

        async def refusing_the_other(payload):
            if refusing.is_set() and any(r["report_request_id"] == other for r in payload.get("reports") or []):
                raise RuntimeError("demo VTN: the other request's update failed on purpose")
            return await takes(payload)
        handlers["oadrUpdateReport"] = refusing_the_other
        refusing.set()      # the readings of the update under `old` stay held for `other`
        async with holding_an_update(server, old):
            server.cancel_report(rig.vtn.ven_id, old)
            await until(lambda: said(caplog, f"the VTN cancelled the telemetry report (request {old})"), 10,
                        "the cancel taken while the update was on the way")
        sent = len(received(server, rrid=old))
        await until(lambda: len(received(server, rrid=old)) > sent, 10, "the update under the cancelled request taken")
        new = server.create_report(rig.vtn.ven_id, S, S)
        await until(lambda: rig.vtn.status()["report_request_id"] == new, 10, "the new request")
        refusing.clear()
        await each_interval_once(server, rig, old, new)
        # the other whole too, from its first interval (the readings before it came were sent under `old` alone)
        got = received(server, rrid=other)[1:]
        same(got, [iv for iv in expected(rig.taken, 2 * S) if iv[0] >= got[0][0]])
