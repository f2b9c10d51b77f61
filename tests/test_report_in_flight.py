"""A request that ends while its update is on the way (the VTN cancels it on a poll, or takes its stream over with a
request in the answer to the report list offered again), and a request of its granularity asked for meanwhile: the
utility gets each interval once, none lost. A real openleadr VTN (DemoVtn) on loopback, a real SQLite queue."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta, timezone

import pytest
from openleadr import errors
from test_report_requests import S, drained, expected, received, running, said, same, streaming
from waiting import eventually as until

from ven.report_intervals import bucket_start
from ven.vtn_server import DemoVtn

pytestmark = pytest.mark.mostly_waiting


def refusing_updates(server, rrid: str) -> None:
    """The VTN answers updates under `rrid` 452, as one that no longer holds the request does."""
    handlers = server._server.services["report_service"].handlers

    async def refusing(payload, real=handlers["oadrUpdateReport"]):
        if any(r["report_request_id"] == rrid for r in payload.get("reports") or []):
            raise errors.InvalidIdError(f"reportRequestID {rrid} unknown")
        return await real(payload)
    handlers["oadrUpdateReport"] = refusing


def warned(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("ven") and r.levelno >= logging.WARNING]


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


@contextlib.contextmanager
def failing_updates(server, rrid: str):
    """While the block runs, the VTN fails (HTTP 500) each update under `rrid`: the readings that request holds stay
    held, for a request of another granularity asked for meanwhile (taken, they left the queue)."""
    handlers = server._server.services["report_service"].handlers
    takes, failing = handlers["oadrUpdateReport"], [True]

    async def failing_the_request(payload):
        if failing[0] and any(r["report_request_id"] == rrid for r in payload.get("reports") or []):
            raise RuntimeError("demo VTN: the other request's update failed on purpose")
        return await takes(payload)
    handlers["oadrUpdateReport"] = failing_the_request
    try:
        yield
    finally:
        failing[0] = False


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


async def test_a_cancel_with_report_to_follow_taken_with_an_update_on_the_way_sends_the_intervals_complete_then(
        tmp_path, free_tcp_port, caplog):
    # The update on its way when the cancel came, made before it, was taken for the last one: the request ended
    # with it, and the intervals complete between it and the cancel never went under the request the VTN was told
    # a report would follow for (seen as test_report_requests' reportToFollow test finding no update due)
    caplog.set_level(logging.INFO, logger="ven")
    async with streaming(tmp_path, free_tcp_port()) as (server, rig, rrid):
        await until(lambda: len(received(server)) >= 2, 5, "live intervals")
        async with holding_an_update(server, rrid):
            await asyncio.sleep(1.5)        # intervals complete while it is held
            server.cancel_report(rig.vtn.ven_id, rrid, report_to_follow=True)
            await until(lambda: said(caplog, f"the VTN cancelled the telemetry report (request {rrid})"), 10,
                        "the cancel taken while the update was on the way")
        (cancel,) = [r.created for r in caplog.records if f"cancelled the telemetry report (request {rrid})"
                     in r.getMessage()]
        await until(lambda: said(caplog, f"last TELEMETRY_USAGE update sent for the cancelled request {rrid}"), 10,
                    "the last update")
        got = received(server, rrid=rrid)
        complete = bucket_start(datetime.fromtimestamp(cancel, timezone.utc), S)
        assert got[-1][0] + S >= complete, f"intervals up to {got[-1][0] + S}, {complete} complete at the cancel"
        same(got, expected([(ts, kw) for ts, kw in rig.taken if ts < got[-1][0] + S], S))    # each once, whole
        await asyncio.sleep(1.5)
        assert received(server, rrid=rrid) == got, "nothing after its last update"


async def test_a_request_cancelled_while_its_update_was_on_the_way_and_asked_again_after_it_landed_sends_it_once(
        tmp_path, free_tcp_port, caplog):
    # As above, the stream asked for again only once the update was taken, its readings still held for another
    # request: the new request went on from before that update
    caplog.set_level(logging.INFO, logger="ven")
    async with streaming(tmp_path, free_tcp_port()) as (server, rig, old):
        other = server.create_report(rig.vtn.ven_id, 2 * S, 2 * S)
        await until(lambda: len(received(server, rrid=other)) >= 2, 8, "both served")
        with failing_updates(server, other):   # the readings of the update under `old` stay held for `other`
            async with holding_an_update(server, old):
                server.cancel_report(rig.vtn.ven_id, old)
                await until(lambda: said(caplog, f"the VTN cancelled the telemetry report (request {old})"), 10,
                            "the cancel taken while the update was on the way")
            sent = len(received(server, rrid=old))
            await until(lambda: len(received(server, rrid=old)) > sent, 10,
                        "the update under the cancelled request taken")
            new = server.create_report(rig.vtn.ven_id, S, S)
            await until(lambda: rig.vtn.status()["report_request_id"] == new, 10, "the new request")
        await each_interval_once(server, rig, old, new)
        # the other whole too, from its first interval (the readings before it came were sent under `old` alone)
        got = received(server, rrid=other)[1:]
        same(got, [iv for iv in expected(rig.taken, 2 * S) if iv[0] >= got[0][0]])


@pytest.mark.parametrize("answer", ["taken", "refused"])
async def test_a_one_shot_cancelled_on_its_way_is_said_so_and_a_refusal_of_it_is_no_fault(
        tmp_path, free_tcp_port, caplog, answer):
    # The line said "cancelled ... before it was sent" for a report the VTN then took; and a VTN refusing it (452: it
    # cancelled it) had a WARNING that the reports were offered again (they were not) and a refusal in the status
    caplog.set_level(logging.INFO, logger="ven")
    async with streaming(tmp_path, free_tcp_port(), every=0.5) as (server, rig, standing):
        await until(lambda: received(server), 5, "the standing request served")
        oneshot = server.create_report(rig.vtn.ven_id, timedelta(0), timedelta(0))
        if answer == "refused":
            refusing_updates(server, oneshot)
        async with holding_an_update(server, oneshot):
            server.cancel_report(rig.vtn.ven_id, oneshot)
            await until(lambda: server.canceled_reports, 10, "oadrCanceledReport")
        assert said(caplog, "the VTN cancelled the one-shot report") == [
            f"the VTN cancelled the one-shot report {oneshot} while it was on its way: it is not sent again"]
        sent = len(received(server, rrid=standing))
        await until(lambda: len(received(server, rrid=standing)) >= sent + 2, 5, "the standing request goes on")
        assert len(received(server, rrid=oneshot)) == (1 if answer == "taken" else 0)
        assert warned(caplog) == [] and rig.vtn.telemetry_fault() is None


async def test_a_one_shot_cancelled_before_a_reading_is_said_cancelled_before_it_was_sent(
        tmp_path, free_tcp_port, caplog):
    caplog.set_level(logging.INFO, logger="ven")
    async with DemoVtn(free_tcp_port(), poll_seconds=1) as server:
        async with running(tmp_path, server.url) as rig:
            await until(lambda: rig.vtn.status()["report_request_id"], 10, "telemetry requested")
            oneshot = server.create_report(rig.vtn.ven_id, timedelta(0), timedelta(0))
            await until(lambda: said(caplog, f"one TELEMETRY_USAGE report (request {oneshot})"), 5, "the one-shot")
            server.cancel_report(rig.vtn.ven_id, oneshot)
            await until(lambda: server.canceled_reports, 10, "oadrCanceledReport")
            assert said(caplog, "the VTN cancelled the one-shot report") == [
                f"the VTN cancelled the one-shot report {oneshot} before it was sent"]


async def test_the_update_of_a_request_cancelled_on_its_way_refused_is_no_fault_and_its_intervals_go_to_the_next(
        tmp_path, free_tcp_port, caplog):
    # The VTN cancelled the only request served while its update was on the way, then refused that update (452: it
    # no longer holds the request): a WARNING said the reports were offered again (they were not), and the status
    # held the refusal until a request came and its first update was taken
    caplog.set_level(logging.INFO, logger="ven")
    async with streaming(tmp_path, free_tcp_port()) as (server, rig, old):
        await until(lambda: len(received(server)) >= 2, 5, "live intervals")
        refusing_updates(server, old)
        async with holding_an_update(server, old):
            server.cancel_report(rig.vtn.ven_id, old)
            await until(lambda: said(caplog, f"the VTN cancelled the telemetry report (request {old})"), 10,
                        "the cancel taken while the update was on the way")
        await asyncio.sleep(1.5)
        assert warned(caplog) == [] and rig.vtn.telemetry_fault() is None
        new = server.create_report(rig.vtn.ven_id, S, S)
        await until(lambda: rig.vtn.status()["report_request_id"] == new, 10, "the new request")
        await each_interval_once(server, rig, old, new)     # the refused update's intervals under the new one
