"""A VTN that takes the telemetry report offer and never requests it (a misconfigured VTN, a program without
telemetry): readings pile up in storage.path and nothing goes out. The operator hears of it once, as a WARNING,
after openadr.request_wait_seconds (and 3 polls) registered without a request, naming what the VTN asked for
instead; /api/status says so while it lasts; one INFO line when a request finally comes, and the readings queued
meanwhile go to it. A real openleadr VTN (DemoVtn) on loopback, a real SQLite queue."""
from __future__ import annotations

import asyncio
import logging

import pytest
from waiting import eventually as until

from test_report_requests import S, expected, received, running, said, same
from ven.vtn_server import DemoVtn

pytestmark = pytest.mark.mostly_waiting

WAIT = "no telemetry request from the VTN for"     # the WARNING's words


async def test_a_vtn_that_never_requests_telemetry_is_said_once_and_its_request_ends_it(
        tmp_path, free_tcp_port, caplog):
    caplog.set_level(logging.INFO, logger="ven")
    async with DemoVtn(free_tcp_port(), poll_seconds=0.5, request_telemetry=False) as server:
        async with running(tmp_path, server.url, request_wait_seconds=2) as rig:
            await until(lambda: rig.vtn.status()["connected"], 10, "registered")
            assert rig.vtn.status()["report_offered"] and rig.vtn.status()["report_request_id"] is None
            rig.start_meter(0.25)
            await asyncio.sleep(1.2)
            assert rig.vtn.status()["telemetry_unrequested"] is None, "not before request_wait_seconds"
            # what the VTN asks for meanwhile is named: a one-shot report is no standing request
            server.create_report(rig.vtn.ven_id, 0 * S, 0 * S, report_request_id="rr-once")
            status = await until(lambda: rig.vtn.status()["telemetry_unrequested"], 5, "said in the status")
            assert status["since"] and status["wait_seconds"] == 2 and status["asked"], status
            assert any("rr-once" in a for a in status["asked"]), status
            await asyncio.sleep(2)      # many more polls: still one line
            lines = said(caplog, WAIT)
            assert len(lines) == 1, lines
            warned = [r for r in caplog.records if WAIT in r.getMessage()][0]
            assert warned.levelno == logging.WARNING and warned.exc_info is None
            assert "TELEMETRY_USAGE" in lines[0] and "rr-once" in lines[0] and "queue_max_days" in lines[0], lines
            assert received(server, rrid="rr-once") and not [r for r, _ in server.updates if r != "rr-once"]
            assert rig.queue.pending > 10, "readings wait"
            # the VTN finally asks: one INFO line, the readings waiting go to it, the status clears
            rrid = server.create_report(rig.vtn.ven_id, S, S)
            await until(lambda: rig.vtn.status()["report_request_id"] == rrid, 5, "served")
            assert rig.vtn.status()["telemetry_unrequested"] is None
            await rig.stop_meter()
            await until(lambda: rig.queue.pending == 0, 10, "the queued readings sent")
            same(received(server, rrid=rrid), expected(rig.taken, S))
            ended = said(caplog, "reading(s) waiting go to it")
            assert len(ended) == 1 and rrid in ended[0], ended
            assert [r.levelno for r in caplog.records if r.getMessage() == ended[0]] == [logging.INFO]
            assert len(said(caplog, WAIT)) == 1


async def test_a_vtn_that_requests_at_registration_or_soon_after_is_not_warned_of(tmp_path, free_tcp_port, caplog):
    caplog.set_level(logging.INFO, logger="ven")
    async with DemoVtn(free_tcp_port(), poll_seconds=0.5, request_telemetry=False) as server:
        # a request_wait_seconds of 2 left a loaded machine's next poll under a second to take a request made 1 s
        # after the registration: 4, and the wait is then past by the machine's clock, not by a sleep
        async with running(tmp_path, server.url, request_wait_seconds=4) as rig:
            await until(lambda: rig.vtn.status()["connected"], 10, "registered")
            registered = asyncio.get_running_loop().time()
            rig.start_meter(0.25)
            await asyncio.sleep(1)
            rrid = server.create_report(rig.vtn.ven_id, S, S)     # on a poll after the registration, in time
            await until(lambda: rig.vtn.status()["report_request_id"] == rrid, 5, "served")
            await asyncio.sleep(max(0.0, registered + 4.5 - asyncio.get_running_loop().time()))
            assert rig.vtn.status()["telemetry_unrequested"] is None
            assert not said(caplog, WAIT) and not said(caplog, "waiting go to it")


async def test_a_cancelled_request_not_followed_by_another_is_said_once_the_wait_is_over(
        tmp_path, free_tcp_port, caplog):
    caplog.set_level(logging.INFO, logger="ven")
    async with DemoVtn(free_tcp_port(), poll_seconds=0.5) as server:
        async with running(tmp_path, server.url, request_wait_seconds=2) as rig:
            rrid = await until(lambda: rig.vtn.status()["report_request_id"], 10, "telemetry requested")
            rig.start_meter(0.25)
            await asyncio.sleep(2.5)
            assert rig.vtn.status()["telemetry_unrequested"] is None and not said(caplog, WAIT), "served: nothing"
            server.cancel_report(rig.vtn.ven_id, rrid)
            await until(lambda: server.canceled_reports, 5, "oadrCanceledReport")
            await until(lambda: rig.vtn.status()["telemetry_unrequested"], 6, "said after the wait")
            assert len(said(caplog, WAIT)) == 1 and "is not requested" in said(caplog, WAIT)[0]
            # one fault, one WARNING: the cancel itself, the VTN's choice, is INFO (it was a WARNING of its own)
            warned = [r.getMessage() for r in caplog.records if r.name.startswith("ven") and r.levelno >= logging.WARNING]
            assert len(warned) == 1 and WAIT in warned[0], warned
            assert [r.levelno for r in caplog.records if "the VTN cancelled the telemetry report" in r.getMessage()] \
                == [logging.INFO]


async def test_the_wait_starts_over_after_a_vtn_outage(tmp_path, free_tcp_port, caplog):
    # the outage is its own fault, with its own lines: the VTN had no time to request telemetry meanwhile
    caplog.set_level(logging.INFO, logger="ven")
    port = free_tcp_port()
    first = DemoVtn(port, poll_seconds=0.5, request_telemetry=False)
    second = None
    await first.start()
    try:
        async with running(tmp_path, first.url, request_wait_seconds=3) as rig:
            await until(lambda: rig.vtn.status()["connected"], 10, "registered")
            await asyncio.sleep(1.5)
            await first.stop()
            await until(lambda: not rig.vtn.status()["connected"], 10, "the outage")
            await asyncio.sleep(2)          # past the wait, counted from the registration
            second = DemoVtn(port, poll_seconds=0.5, request_telemetry=False)
            await second.start()
            await until(lambda: rig.vtn.status()["connected"], 10, "connected again")
            await asyncio.sleep(1.5)
            assert not said(caplog, WAIT) and rig.vtn.status()["telemetry_unrequested"] is None
            await until(lambda: rig.vtn.status()["telemetry_unrequested"], 6, "said, the wait over again")
            assert len(said(caplog, WAIT)) == 1
    finally:
        if second is not None:
            await second.stop()
        await first.stop()
