"""The VEN over a poor cellular link to a real openleadr VTN (tests/lossy_link.py between them): an answer reset
half-way, a link that holds everything for a while. What the VTN sent is not lost, and the log names the link."""
from __future__ import annotations

import logging
import re
from datetime import timedelta

import pytest
from lossy_link import LossyLink
from test_report_requests import S, expected, now, received, running, said
from waiting import eventually as until

from ven.vtn_server import DemoVtn

pytestmark = pytest.mark.timeout(90)


async def test_an_event_whose_poll_answer_is_lost_on_the_way_still_reaches_the_site(tmp_path, free_tcp_port,
                                                                                    caplog):
    # the VTN counts an event as delivered once it answered the poll, and sends it again only when it changes: the
    # event ran without the site, answered by nobody, with /healthz saying ok
    caplog.set_level(logging.INFO, logger="ven")
    async with DemoVtn(free_tcp_port(), poll_seconds=1) as vtn, LossyLink(vtn.port, free_tcp_port()) as link:
        async with running(tmp_path, link.url(vtn.url)) as rig:
            await until(lambda: rig.vtn.connected, 15, "registration over the link")
            link.cut_next = b"oadrDistributeEvent"
            eid = vtn.add_event([2.0], start=now() + timedelta(minutes=5), interval_seconds=600)
            await until(lambda: link.cuts == 1, 10, "the answer carrying the event reset half-way")
            await until(lambda: rig.schedule.get(eid) is not None, 10, "the event, after the lost answer")
            await until(lambda: vtn.opts_for(eid) == ["optIn"], 10, "its answer at the VTN")
    [failed] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    # the link's fault in the link's words: not aiohttp's "ContentLengthError: 400", read as an HTTP 400 from the VTN
    assert re.fullmatch(r"VTN poll failed: connection to the VTN at http://127\.0\.0\.1:\d+/OpenADR2/Simple/2\.0b "
                        r"broke during its answer to OadrPoll \(received \d+ of \d+ bytes\) \(reset by the network, a "
                        r"proxy or the VTN\)", failed), failed
    assert not said(caplog, "listed again"), "the list asked for again is no news at INFO"


async def test_updates_halved_by_a_black_hole_grow_back_once_the_link_carries_them(tmp_path, free_tcp_port, caplog):
    # an update that timed out in a black hole looks like one too large for the VTN: halved, it stayed at one
    # interval per update from then on, on a link that carries a hundred
    caplog.set_level(logging.INFO, logger="ven")
    async with DemoVtn(free_tcp_port(), poll_seconds=1) as vtn, LossyLink(vtn.port, free_tcp_port()) as link:
        async with running(tmp_path, link.url(vtn.url), request_timeout_seconds=2.0) as rig:
            await until(lambda: rig.vtn.status()["report_request_id"], 15, "telemetry requested")
            link.hole_from = b"oadrUpdateReport"     # the bearer is lost while the update is on its way
            began = now() - timedelta(seconds=80)
            taken = [(began + i * S, 50.0 + i) for i in range(60)]     # 60 intervals waiting at once
            for ts, kw in taken:
                rig.vtn.record_sample(ts, kw)
            [req] = rig.vtn._requests.values()
            await until(lambda: req.batch < 60, 15, "the update timed out and was halved")
            link.black_hole = False
            await until(lambda: rig.queue.pending == 0, 20, "the intervals delivered once the link is back")
            assert {t for t, _, _ in received(vtn)} >= {t for t, _, _ in expected(taken, S)}
            assert req.batch > 30, "grown back once updates were answered at once"
