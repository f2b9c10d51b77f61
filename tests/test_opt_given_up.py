"""An answer to an event the gateway stopped sending untaken (given up: the VTN refused it, stopped listing its event,
or came back from an outage without it), and what follows: the VTN taking an answer to that event after all, or the
event gone. What the operator reads (one line when the fault starts, one when it ends, the answers named), what
/api/status says and what the utility's VTN holds at the end. openleadr's OpenADRServer with its event queue
(UtilityVtn), as a utility runs it."""
from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from aiohttp import web
from openleadr import errors as oerrors
from openleadr import utils
from test_report_requests import said
from test_vtn import running
from test_vtn_faults_outstanding import stop_line, whole_gateway
from test_vtn_openleadr_queue import BUSY, UtilityVtn, now, shed_and_other_answered
from waiting import eventually as until

pytestmark = pytest.mark.mostly_waiting

REFUSED_END = "no answer to events stands refused any more (refused since "


def refusing(vtn: UtilityVtn, event_id: str, opt: str) -> dict:
    """The VTN refuses (452) every `opt` answer to `event_id` while the returned dict's "on" is true."""
    state = {"on": True}
    handlers = vtn.server.services["event_service"].handlers
    real = handlers["oadrCreatedEvent"]

    async def refuse(payload, *args, **kwargs):
        if state["on"] and any(r["event_id"] == event_id and r["opt_type"] == opt
                               for r in payload.get("event_responses") or []):
            raise oerrors.InvalidIdError(f"event {event_id} is closed for changes")
        return await real(payload, *args, **kwargs)
    handlers["oadrCreatedEvent"] = refuse
    return state


def modify(vtn: UtilityVtn, event_id: str, level: float) -> None:
    """The utility changes a running event's level: a new modification."""
    event = utils.find_by(vtn.server.events[vtn.ven_id], "event_descriptor.event_id", event_id)
    event.event_signals[0].intervals[0].signal_payload = level
    utils.increment_event_modification_number(event)
    vtn.server.events_updated[vtn.ven_id] = True


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("ven")]


@pytest.mark.timeout(60)
async def test_a_refused_answer_ends_once_the_vtn_takes_the_events_next_modifications(tmp_path, free_tcp_port, caplog):
    # The VTN refused the BAS's optOut (452), then the utility changed the event and took the optOut openleadr sent
    # for the new modification. The refusal had no end line, and the dashboard's "VTN refused an opt answer" stayed
    # red (opt_answer_error) though the utility now held the site's optOut: only an answer the gateway sent itself
    # cleared it, and silently
    caplog.set_level(logging.INFO, logger="ven")
    logging.getLogger("openleadr").setLevel(logging.CRITICAL)
    async with UtilityVtn(free_tcp_port()) as vtn, running(tmp_path, vtn.url) as gw:
        await until(lambda: gw.vtn.connected, 10, "registration")
        vtn.add_event("shed", 2.0, now() - timedelta(seconds=1), timedelta(minutes=10))
        await until(lambda: ("shed", 0, "optIn") in vtn.answers, 10, "the event answered")
        refusal = refusing(vtn, "shed", "optOut")
        gw.vtn.set_opt_out(True)        # the BAS writes ADR-Opt-Out
        await until(lambda: gw.vtn.status()["opt_answer_error"], 10, "the optOut refused")
        assert gw.vtn.status()["opt_answers_waiting"] == 0, "a refused answer is not sent again"
        assert gw.vtn.refused_answers()["answers"] == "the optOut for event shed"
        refusal["on"] = False
        modify(vtn, "shed", 3.0)
        await until(lambda: ("shed", 1, "optOut") in vtn.answers, 10, "the optOut for the new modification taken")
        await until(lambda: gw.vtn.status()["opt_answer_error"] is None, 10, "the refusal over")
        status = gw.vtn.status()
        assert status["opt_answers_waiting"] == 0 and status["opt_answers_not_taken"] is None, status
        assert gw.vtn.refused_answers() is None
    assert [a for a in vtn.answers if a[0] == "shed"] == [("shed", 0, "optIn"), ("shed", 1, "optOut")]
    assert warnings(caplog) == ["VTN refused the optOut answer to event shed: 452 event shed is closed for changes"]
    ends = said(caplog, REFUSED_END)
    assert len(ends) == 1 and ends[0].startswith(f"the VTN took the optOut for event shed: {REFUSED_END}"), ends


@pytest.mark.timeout(60)
async def test_a_refused_answer_whose_event_the_vtn_drops_ends_as_never_taken(tmp_path, free_tcp_port, caplog):
    caplog.set_level(logging.INFO, logger="ven")
    logging.getLogger("openleadr").setLevel(logging.CRITICAL)
    async with UtilityVtn(free_tcp_port()) as vtn, running(tmp_path, vtn.url) as gw:
        await shed_and_other_answered(vtn, gw)
        refusing(vtn, "shed", "optOut")
        gw.vtn.set_opt_out(True)
        await until(lambda: ("other", 0, "optOut") in vtn.answers, 10, "the other optOut taken")
        await until(lambda: gw.vtn.status()["opt_answer_error"], 10, "the optOut for shed refused")
        assert gw.vtn.status()["opt_answer_error"], "another event's answer taken is not the refused one's"
        vtn.delete("shed")
        await until(lambda: gw.vtn.status()["opt_answer_error"] is None, 10, "the refusal over")
    assert not [a for a in vtn.answers if a[0] == "shed" and a[2] == "optOut"], vtn.answers
    ends = said(caplog, REFUSED_END)
    assert len(ends) == 1 and ends[0].startswith(
        f"the VTN never took the optOut for event shed and no longer lists the event: {REFUSED_END}"), ends
    assert len(warnings(caplog)) == 1, warnings(caplog)


@pytest.mark.timeout(60)
async def test_an_answer_given_up_and_then_taken_within_the_fault_is_not_said_never_taken(
        tmp_path, free_tcp_port, caplog):
    # The VTN fails the answers to "other" (busy) throughout. It stops listing "shed", whose optOut waited too: that
    # answer is given up. Then it lists "shed" again and takes its optOut. The fault's end line must not name it as
    # an answer the VTN never took
    caplog.set_level(logging.INFO, logger="ven")
    logging.getLogger("openleadr").setLevel(logging.CRITICAL)
    vtn = UtilityVtn(free_tcp_port())
    busy = {"on": False}

    @web.middleware
    async def fail_others_answers(request, handler):
        if busy["on"] and request.path.endswith("/EiEvent") and b">other<" in await request.read():
            return web.Response(body=BUSY % vtn.ven_id.encode(), content_type="application/xml")
        return await handler(request)
    vtn.server.app.middlewares.insert(0, fail_others_answers)
    async with vtn, running(tmp_path, vtn.url) as gw:
        await shed_and_other_answered(vtn, gw)
        busy["on"] = True
        vtn.busy = True         # every answer failed at first: both optOuts wait
        gw.vtn.set_opt_out(True)
        await until(lambda: gw.vtn.status()["opt_answers_not_taken"], 10, "the optOuts not taken")
        vtn.delete("shed")
        await until(lambda: "shed" not in gw.vtn.answers_waiting(), 10, "the optOut for shed given up")
        assert gw.vtn._opts_given_up == [("shed", "optOut", "the VTN no longer lists the event")]
        vtn.busy = False        # only the answers naming "other" fail now
        vtn.add_event("shed", 2.0, now() - timedelta(seconds=1), timedelta(minutes=10))
        await until(lambda: ("shed", 0, "optOut") in vtn.answers, 10, "the optOut for shed listed again, taken")
        assert gw.vtn.status()["opt_answers_not_taken"], "the answer to other still waits"
        busy["on"] = False
        await until(lambda: ("other", 0, "optOut") in vtn.answers, 10, "the other optOut taken")
        await until(lambda: gw.vtn.status()["opt_answers_not_taken"] is None, 10, "the fault over")
        assert gw.vtn.status()["opt_answers_waiting"] == 0 and gw.vtn.status()["opt_answer_error"] is None
    assert not said(caplog, "never took"), said(caplog, "never took")
    assert len(said(caplog, "took the answers to events again")) == 1
    assert len(said(caplog, "did not take the answer")) == 1


@pytest.mark.timeout(90)
async def test_an_opt_out_written_while_the_vtn_was_away_and_back_without_the_event_is_said_not_sent(
        tmp_path, free_tcp_port, caplog):
    # The BAS opted out while the VTN was down; the VTN came back without the event (openleadr's queue is memory): the
    # optOut waiting for it went with no line, and no "told the VTN" followed. The utility then enters the event
    # again: the site's answer of now, optOut, reaches it
    caplog.set_level(logging.INFO, logger="ven")
    logging.getLogger("openleadr").setLevel(logging.CRITICAL)
    port = free_tcp_port()
    vtn = UtilityVtn(port)
    await vtn.__aenter__()
    restarted = None
    try:
        async with running(tmp_path, vtn.url) as gw:
            await until(lambda: gw.vtn.connected, 10, "registration")
            vtn.add_event("shed", 2.0, now() - timedelta(seconds=1), timedelta(minutes=10))
            await until(lambda: ("shed", 0, "optIn") in vtn.answers, 10, "answered")
            await vtn.__aexit__()
            await until(lambda: gw.vtn.open_fault(), 10, "the outage")
            gw.vtn.set_opt_out(True)
            assert gw.vtn.answers_waiting() == "the optOut for event shed"
            restarted = UtilityVtn(port)
            await restarted.__aenter__()
            await until(lambda: gw.vtn.connected and gw.vtn.open_fault() is None, 20, "the VTN back")
            await until(lambda: gw.vtn.status()["opt_answers_waiting"] == 0, 10, "nothing waits")
            status = gw.vtn.status()
            assert status["opt_answers_not_taken"] is None and status["opt_answer_error"] is None, status
            restarted.add_event("shed", 2.0, now() - timedelta(seconds=1), timedelta(minutes=10))
            await until(lambda: ("shed", 0, "optOut") in restarted.answers and not gw.vtn.answers_waiting(), 10,
                        "the event entered again answered optOut")
    finally:
        if restarted is not None:
            await restarted.__aexit__()
    assert said(caplog, "waiting for the VTN") == [
        "the optOut for event shed, waiting for the VTN, is not sent: the VTN no longer lists the event"]
    assert len(said(caplog, "VTN connected")) == 1
    assert [w for w in warnings(caplog) if "VTN" in w][0].startswith("VTN poll failed"), warnings(caplog)


@pytest.mark.timeout(90)
async def test_a_stop_names_an_answer_the_vtn_refused(tmp_path, free_tcp_port, free_udp_port, caplog):
    caplog.set_level(logging.INFO, logger="ven")
    logging.getLogger("openleadr").setLevel(logging.CRITICAL)
    vtn_port = free_tcp_port()
    async with UtilityVtn(vtn_port) as vtn:
        async with whole_gateway(tmp_path, free_udp_port, vtn_port) as gateway:
            await until(lambda: gateway.vtn.connected, 30, "registered")
            vtn.add_event("shed", 2.0, now() - timedelta(seconds=1), timedelta(minutes=10))
            await until(lambda: ("shed", 0, "optIn") in vtn.answers, 10, "the event answered")
            refusing(vtn, "shed", "optOut")
            gateway.vtn.set_opt_out(True)
            await until(lambda: gateway.vtn.status()["opt_answer_error"], 10, "the optOut refused")
            assert "VTN refused an answer to an event" in gateway.degraded(), gateway.degraded()
    line = stop_line(caplog)
    assert "the optOut for event shed refused by the VTN for " in line, line
    assert (" (the last refusal: VTN refused the optOut answer to event shed: 452 event shed is closed for changes): "
            "not kept; the next start answers the events the VTN lists as any start does") in line, line


@pytest.mark.timeout(90)
async def test_the_bas_opt_out_names_the_modification_a_restarted_vtn_lists_though_older_than_the_one_followed(
        tmp_path, free_tcp_port, caplog):
    # The utility's VTN restarted without its events (openleadr's queue is memory) and the event, modified once before,
    # was entered again: the same id at modification 0. The gateway follows modification 1 still (an older number is
    # a stale copy, ven/schedule.py), and openleadr's answer to the listing named 0, which the VTN took. The BAS's
    # optOut then named 1, which that VTN does not have: refused 452, and the utility kept counting on the site's optIn
    caplog.set_level(logging.INFO, logger="ven")
    logging.getLogger("openleadr").setLevel(logging.CRITICAL)
    port = free_tcp_port()
    vtn = UtilityVtn(port)
    await vtn.__aenter__()
    restarted = None
    try:
        async with running(tmp_path, vtn.url) as gw:
            await until(lambda: gw.vtn.connected, 10, "registration")
            vtn.add_event("shed", 2.0, now() - timedelta(seconds=1), timedelta(minutes=10))
            await until(lambda: ("shed", 0, "optIn") in vtn.answers, 10, "answered")
            modify(vtn, "shed", 3.0)
            await until(lambda: ("shed", 1, "optIn") in vtn.answers, 10, "the modification answered")
            await vtn.__aexit__()
            await until(lambda: gw.vtn.open_fault(), 10, "the outage")
            restarted = UtilityVtn(port)
            restarted.vens.update(vtn.vens)
            restarted.add_event("shed", 2.0, now() - timedelta(seconds=1), timedelta(minutes=10))
            await restarted.__aenter__()
            await until(lambda: ("shed", 0, "optIn") in restarted.answers, 20, "the listing answered")
            gw.vtn.set_opt_out(True)        # the BAS writes ADR-Opt-Out
            await until(lambda: gw.vtn.status()["opt_answers_waiting"] == 0, 10, "the optOut sent")
            assert gw.vtn.status()["opt_answer_error"] is None, gw.vtn.status()["opt_answer_error"]
            assert gw.schedule.get("shed").modification_number == 1, "the newer copy is followed still"
    finally:
        if restarted is not None:
            await restarted.__aexit__()
    assert restarted.answers[-1] == ("shed", 0, "optOut"), restarted.answers
    assert said(caplog, "older than the") == [
        "event shed: the VTN lists modification 0, older than the 1 followed here: 1 is followed still; the site's "
        "answers name 0, as the VTN lists it"]
    assert not [w for w in warnings(caplog) if w.startswith("VTN refused")], warnings(caplog)
