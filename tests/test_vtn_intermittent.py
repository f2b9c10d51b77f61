"""An intermittent VTN against a real openleadr VTN on loopback: a proxy failing one poll in a few, and a load
balancer whose other VTN does not know this VEN (it asks to register again after a few answered polls). Each was a
WARNING and an INFO (or a WARNING and the registration's lines) at every failure; now one fault, said when it starts,
once when it turns out intermittent, and once when the VTN has answered steadily again. `connected` still says
what is at each poll, and telemetry goes on."""
from __future__ import annotations

import asyncio
import logging
import re
import time

import pytest
from openleadr import errors as oerrors
from test_vtn import fast_retries, gateway_lines, now, running, said_again  # noqa: F401 (fast_retries: autouse)
from waiting import eventually as until

from ven.vtn_server import DemoVtn

pytestmark = [pytest.mark.timeout(60), pytest.mark.mostly_waiting]

FAILURES = 4


class EveryThirdPoll:
    """Make the VTN's next oadrPoll and every third one after it misbehave (`act(payload)`), `times` times: two
    answered polls between, fewer than a fault's end needs (ven/vtn.py STEADY_POLLS). The first at once: the VEN
    polls once a second at most, and two answered polls before it would be two seconds of nothing tested."""

    def __init__(self, server: DemoVtn, act, times: int):
        self._handlers = server._server.services["poll_service"].handlers
        self._real, self._act, self._left, self.polls, self.done = self._handlers["oadrPoll"], act, times, 2, 0
        self._handlers["oadrPoll"] = self._poll

    async def _poll(self, payload, *args, **kwargs):
        self.polls += 1
        if self._left and self.polls % 3 == 0:
            self._left -= 1
            self.done += 1
            self._act(payload)
        return await self._real(payload, *args, **kwargs)


def fail(payload):
    raise RuntimeError("proxy: upstream reset")      # openleadr answers HTTP 500


def forgotten(payload):
    raise oerrors.RequestReregistration(payload["ven_id"])    # openleadr answers oadrRequestReregistration


async def test_a_vtn_failing_one_poll_in_a_few_is_one_intermittent_fault(tmp_path, free_tcp_port, caplog):
    # 4 failed polls were 4 WARNING "VTN poll failed" and 4 INFO "VTN connected again", and the third failure in a
    # session (not in a row) threw the registration away
    caplog.set_level(logging.INFO, logger="ven")
    async with DemoVtn(free_tcp_port(), poll_seconds=1) as server:
        async with running(tmp_path, server.url, settle_seconds=1.0) as gw:
            await until(lambda: gw.vtn.connected and gw.vtn.status()["report_request_id"], 10, "registration")
            mark, flips = len(caplog.records), len(gw.connected)
            flaky = EveryThirdPoll(server, fail, FAILURES)
            taken = []
            for _ in range(30):                     # telemetry all along, one sample in each 1 s interval
                if flaky.done == FAILURES:
                    break
                taken.append(float(len(taken)))
                gw.vtn.record_sample(now(), taken[-1])
                await asyncio.sleep(1.0)
            await until(lambda: said(caplog, mark, "VTN connected steadily again"), 30, "the end, once steady")
            await until(lambda: [r[4] for r in server.reports] == taken, 5, "every sample delivered")
            status = gw.vtn.status()
            assert server.registrations == 1, "failures not in a row keep the registration"
            assert gw.connected[flips:] == [False, True] * FAILURES, "connected: false from each failure to the answer"
    lines = gateway_lines(caplog, mark)
    assert not said_again(lines), lines
    warnings = [m for level, m in lines if level == "WARNING"]
    assert len(warnings) == 2 and warnings[0].startswith("VTN poll failed: HTTP 500 from "), lines
    assert re.fullmatch(r"VTN poll failed again \d+ s after it answered \(HTTP 500 from .*\): one intermittent fault, "
                        r"logged as ended once the VTN answers steadily for 1 s", warnings[1]), warnings[1]
    ended = [m for _, m in lines if m.startswith("VTN connected")]
    assert len(ended) == 1 and re.fullmatch(
        rf"VTN connected steadily again after \d+ s: {FAILURES} of \d+ poll\(s\) failed, not connected \d+ s in all, "
        rf"failing again {FAILURES - 1} time\(s\) after it had answered \(intermittent\)", ended[0]), lines
    fault = status["fault"]
    assert fault["ended"] and fault["intermittent"] and fault["polls_failed"] == FAILURES, fault
    assert fault["relapses"] == FAILURES - 1 and fault["polls"] >= 3 * FAILURES, fault
    assert status["last_error"] is None and status["poll_failures"] == 0


async def test_a_vtn_asking_to_register_again_after_short_sessions_is_one_intermittent_fault(
        tmp_path, free_tcp_port, caplog):
    # A load balancer in front of two VTNs, one of which knows the VEN: each time, a WARNING "VTN registration lost" and
    # the registration's lines (registered, telemetry requested) again. The fault counts the registration lost at
    # its start among its attempts.
    caplog.set_level(logging.INFO, logger="ven")
    async with DemoVtn(free_tcp_port(), poll_seconds=1) as server:
        async with running(tmp_path, server.url, settle_seconds=1.0) as gw:
            await until(lambda: gw.vtn.connected and gw.vtn.status()["report_request_id"], 10, "registration")
            mark, flips = len(caplog.records), len(gw.connected)
            balancer = EveryThirdPoll(server, forgotten, FAILURES)
            await until(lambda: balancer.done == FAILURES and server.registrations == FAILURES + 1, 30,
                        "registered again after each loss")
            await until(lambda: said(caplog, mark, "VTN connected steadily again"), 30, "the end, once steady")
            gw.vtn.record_sample(now(), 42.0)
            await until(lambda: [r[4] for r in server.reports] == [42.0], 5, "telemetry under the last registration")
            status = gw.vtn.status()
            assert gw.connected[flips:] == [False, True] * FAILURES, "connected: false from each loss to the answer"
    lines = gateway_lines(caplog, mark)
    assert not said_again(lines), lines
    warnings = [m for level, m in lines if level == "WARNING"]
    # the first loss is news (a VTN may lose its registrations once); the second soon after is a pattern
    assert len(warnings) == 2, lines
    assert warnings[0] == "VTN registration lost (the VTN asked for re-registration); registering again"
    assert re.fullmatch(r"VTN registration lost again \d+ s after the last time \(the VTN asked for re-registration\); "
                        r"registering again: one intermittent fault, logged as ended once the VTN answers steadily "
                        r"for 1 s", warnings[1]), warnings
    assert len([m for _, m in lines if m.startswith("registered with VTN")]) == 1, "said after the first loss only"
    ended = [m for _, m in lines if m.startswith("VTN connected")]
    assert len(ended) == 1 and re.fullmatch(
        rf"VTN connected steadily again after \d+ s: 0 of \d+ poll\(s\) failed, registration lost {FAILURES - 1} "
        rf"time\(s\), "
        rf"{FAILURES} registration attempt\(s\) of which 0 failed, not connected \d+ s in all, failing again "
        rf"{FAILURES - 2} time\(s\) after it had answered \(intermittent\)", ended[0]), lines
    assert status["fault"]["context_losses"] == FAILURES - 1 and status["fault"]["ended"], status["fault"]


async def test_one_failed_poll_ends_in_the_log_once_steady_and_one_soon_after_is_intermittent(
        tmp_path, free_tcp_port, caplog):
    # the end line waits for the steady answers (a relapse meanwhile would be the same fault); `connected` does not.
    # A fault soon after the end (bacnet_api/settle.py RECUR_SECONDS) says it is the same trouble back
    caplog.set_level(logging.INFO, logger="ven")
    async with DemoVtn(free_tcp_port(), poll_seconds=1) as server:
        async with running(tmp_path, server.url, settle_seconds=1.0) as gw:
            await until(lambda: gw.vtn.connected, 10, "registration")
            mark, flips = len(caplog.records), len(gw.connected)
            flaky = EveryThirdPoll(server, fail, 1)
            # flaky.done counts the failure as the VTN makes it, before the VEN has its answer: wait for both flips
            await until(lambda: flaky.done and len(gw.connected) >= flips + 2, 10, "a failed poll, then an answered one")
            assert gw.connected[flips:] == [False, True], "connected again at the first answer"
            assert not said(caplog, mark, "VTN connected"), "the end waits for 3 answered polls"
            assert not gw.vtn.status()["fault"]["ended"] and gw.vtn.status()["last_error"] is None
            await until(lambda: said(caplog, mark, "VTN connected"), 10, "the end, once steady")
            status = gw.vtn.status()
            # another one soon after (within 2 h of the end): the same trouble back, its settle period doubled
            again = EveryThirdPoll(server, fail, 1)
            await until(lambda: said(caplog, mark, "VTN connected steadily again"), 15, "the second end, once steady")
            assert again.done == 1 and gw.vtn.status()["fault"]["intermittent"]
    lines = gateway_lines(caplog, mark)
    assert [m for level, m in lines if level == "WARNING"] == [
        m for _, m in lines if m.startswith("VTN poll failed: HTTP 500 from ")], lines
    assert len(lines) == 4, lines
    assert re.fullmatch(r"VTN connected again after \d+ s \(1 failed poll\(s\)\)", lines[1][1]), lines
    assert not status["fault"]["intermittent"] and status["fault"]["ended"] and status["fault"]["polls_failed"] == 1
    assert re.fullmatch(r"VTN poll failed: HTTP 500 from .* \(again, \d+ s after the last VTN fault: one intermittent "
                        r"fault, logged as ended once the VTN answers steadily for 2 s\)", lines[2][1]), lines
    assert re.fullmatch(r"VTN connected steadily again after \d+ s: 1 of \d+ poll\(s\) failed, not connected \d+ s "
                        r"in all \(intermittent\)", lines[3][1]), lines


def said(caplog, since, text):
    return [r.getMessage() for r in caplog.records[since:] if r.name == "ven.vtn" and text in r.getMessage()]


async def test_a_vtn_back_after_a_registration_backoff_is_logged_as_ended_only_once_it_has_answered_steadily(
        tmp_path, free_tcp_port, caplog):
    # openadr.settle_seconds counted from the last failure: a VTN down for minutes is tried once a backoff (up to
    # retry_max_seconds, 60 s, the settle period's default), so its end was said at the third poll, 4 s after its
    # first answer, and a VTN failing again a few seconds later was a new fault, two more lines
    caplog.set_level(logging.INFO, logger="ven")
    settle = 5.0
    server = DemoVtn(free_tcp_port(), poll_seconds=1)
    async with running(tmp_path, server.url, settle_seconds=settle, retry_min_seconds=6.0,
                       retry_max_seconds=6.0) as gw:
        await until(lambda: gw.vtn.registration_failures >= 1, 10, "a failed registration")
        async with server:
            await until(lambda: gw.connected == [True], 15, "registration once the VTN is up")
            answered = time.time()
            await until(lambda: said(caplog, 0, "VTN connected"), 20, "the end, once steady")
    end = next(r for r in caplog.records if r.name == "ven.vtn" and "VTN connected" in r.getMessage())
    assert end.created - answered >= settle - 0.5, (end.created - answered, end.getMessage())


async def test_a_vtn_that_flaps_says_the_telemetry_it_took_meanwhile_once_in_its_end_line(
        tmp_path, free_tcp_port, caplog):
    # A VTN down and back every few seconds (a flapping link, a VTN restarting in a loop) is one fault, but each
    # answered stretch delivered the readings queued meanwhile with a "queued telemetry delivered" INFO line: one line
    # per flap while the fault lasted. Now the first (news: the backlog arrives) and the fault's end line, with all
    caplog.set_level(logging.INFO, logger="ven")
    port = free_tcp_port()
    async with running(tmp_path, f"http://127.0.0.1:{port}/OpenADR2/Simple/2.0b", settle_seconds=4.0) as gw:
        async with DemoVtn(port, poll_seconds=1):
            await until(lambda: gw.vtn.connected and gw.vtn.status()["report_request_id"], 10, "registration")
            # the client began before the VTN: that fault's end first, once steady
            await until(lambda: gw.vtn.open_fault() is None, 15, "the start's fault over")
        mark = len(caplog.records)
        taken = 0
        # down 3 s with a reading each second, then up until the backlog is delivered: twice, which the line per
        # flap made two lines
        for _ in range(2):
            for _ in range(3):
                gw.vtn.record_sample(now(), 50.0)
                taken += 1
                await asyncio.sleep(1.0)
            async with DemoVtn(port, poll_seconds=1):
                await until(lambda: gw.queue.pending == 0, 15, "the readings queued while it was down delivered")
                assert gw.vtn.open_fault() is not None, "the fault ended before its settle period: the case is not met"
        async with DemoVtn(port, poll_seconds=1):
            await until(lambda: said(caplog, mark, "VTN connected"), 20, "the fault's end, once steady")
        lines = gateway_lines(caplog, mark)
    assert len([m for _, m in lines if m.startswith("queued telemetry delivered: ")]) == 1, lines
    ended = said(caplog, mark, "VTN connected")
    assert len(ended) == 1 and re.search(r"; \d+ interval\(s\) of telemetry queued meanwhile delivered in all, from "
                                         r"\S+Z to \S+Z, with their original times$", ended[0]), ended
