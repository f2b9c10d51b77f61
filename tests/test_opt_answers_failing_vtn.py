"""Opt answers to a VTN that answers but fails them, against openleadr's own VTN: a bounded number of requests
per poll, and an answer it fails for good holds no other back."""
from __future__ import annotations

import logging
import re
from datetime import timedelta

import pytest
from aiohttp import web

from test_vtn import running
from test_vtn_openleadr_queue import UtilityVtn, now
from waiting import eventually as until

pytestmark = pytest.mark.mostly_waiting


@pytest.mark.timeout(60)
async def test_a_busy_vtn_is_not_sent_every_waiting_answer_at_every_poll(tmp_path, free_tcp_port):
    """A BAS opting out of 10 events while the VTN answers "500 server busy": at most a couple of requests a poll
    (the whole batch went, one request per event, at every poll: 111 in 10 s of 1 s polls), all 10 once well."""
    logging.getLogger("openleadr").setLevel(logging.CRITICAL)
    async with UtilityVtn(free_tcp_port()) as vtn, running(tmp_path, vtn.url) as gw:
        await until(lambda: gw.vtn.connected, 10, "registration")
        ids = [f"e{i}" for i in range(10)]
        for eid in ids:
            vtn.add_event(eid, 2.0, now() + timedelta(minutes=5), timedelta(minutes=10))
        await until(lambda: {(eid, 0, "optIn") for eid in ids} <= set(vtn.answers), 10, "the events answered")
        vtn.busy = True
        gw.vtn.set_opt_out(True)
        await until(lambda: vtn.busy_answers >= 1, 5, "the optOuts failed")
        polls, first = gw.vtn.polls_total, vtn.busy_answers
        await until(lambda: gw.vtn.polls_total >= polls + 3, 10, "three polls while the VTN fails the answers")
        polls = gw.vtn.polls_total - polls
        assert polls >= 1, "the gateway polled meanwhile"
        # a pass: the batch, then two of its answers alone; at most two a poll after
        assert vtn.busy_answers - first <= 2 * (polls + 2), (vtn.busy_answers - first, polls)
        vtn.busy = False
        await until(lambda: {(eid, 0, "optOut") for eid in ids} <= set(vtn.answers), 20, "every optOut taken")
        await until(lambda: gw.vtn.status()["opt_answers_waiting"] == 0, 5, "no answer waiting")


@pytest.mark.timeout(60)
async def test_answers_the_vtn_fails_for_good_hold_no_other_back(tmp_path, free_tcp_port):
    """openleadr's VTN fails every oadrCreateOpt (404: it serves no EiOpt): three events that want no answer
    opted out of, failed at each poll, and the optOut for the event beside them still goes."""
    logging.getLogger("openleadr").setLevel(logging.CRITICAL)
    async with UtilityVtn(free_tcp_port()) as vtn, running(tmp_path, vtn.url) as gw:
        await until(lambda: gw.vtn.connected, 10, "registration")
        started = now() - timedelta(seconds=1)
        for i in range(3):
            vtn.add_event(f"silent{i}", 1.0, started, timedelta(minutes=10), response_required="never")
        vtn.add_event("shed", 2.0, started, timedelta(minutes=10))
        await until(lambda: ("shed", 0, "optIn") in vtn.answers and gw.schedule.get("silent2"), 10, "listed")
        gw.vtn.set_opt_out(True)
        await until(lambda: ("shed", 0, "optOut") in vtn.answers, 10, "the optOut for the event that wants one")
        await until(lambda: gw.vtn.status()["opt_answers_waiting"] == 3, 5, "the three oadrCreateOpt waiting")


@pytest.mark.timeout(60)
async def test_an_opt_sent_again_keeps_its_opt_id(tmp_path, free_tcp_port):
    """2.0b's optID names the opt at the VTN. An oadrCreateOpt the VTN fails (openleadr's 404: it serves no EiOpt;
    a time-out whose request the VTN took) is sent again at each poll: each time under a new optID, a VTN that
    stores opts would keep one more opt-out of the event at each try. The same answer keeps its optID; the optIn
    that follows the BAS's relinquish is a new opt, with a new one."""
    logging.getLogger("openleadr").setLevel(logging.CRITICAL)
    vtn = UtilityVtn(free_tcp_port())
    sent: list[tuple[str, str, str]] = []      # (eventID, optType, optID) of each oadrCreateOpt, as it came
    cancels: list[str] = []

    @web.middleware
    async def opts(request, handler):
        body = (await request.read()).decode() if request.path.endswith("/EiOpt") else ""
        cancels.extend(["oadrCancelOpt"] * ("oadrCancelOpt" in body))
        if "oadrCreateOpt" in body:
            sent.append(tuple(re.search(f"<ei:{tag}>([^<]*)<", body).group(1)
                              for tag in ("eventID", "optType", "optID")))
        return await handler(request)
    vtn.server.app.middlewares.insert(0, opts)
    async with vtn, running(tmp_path, vtn.url) as gw:
        await until(lambda: gw.vtn.connected, 10, "registration")
        vtn.add_event("silent", 1.0, now() - timedelta(seconds=1), timedelta(minutes=10), response_required="never")
        await until(lambda: gw.schedule.get("silent"), 10, "listed")
        gw.vtn.set_opt_out(True)
        await until(lambda: len(sent) >= 3, 10, "the optOut sent again at the polls")
        gw.vtn.set_opt_out(False)
        await until(lambda: sum(opt == "optIn" for _, opt, _ in sent) >= 3, 10, "the optIn sent again at the polls")
    outs = {oid for eid, opt, oid in sent if opt == "optOut"}
    ins = {oid for eid, opt, oid in sent if opt == "optIn"}
    assert {eid for eid, _, _ in sent} == {"silent"}, sent
    assert len(outs) == 1 and len(ins) == 1 and outs != ins, sent
    assert cancels == [], "an opt the VTN refused (404) is none it holds: nothing to withdraw"
