"""What a VTN fault leaves outstanding, said where it ends: its end line, or the stop line when the gateway stops with
it open. The answers to events the VTN did not take (the BAS's optOut the utility still counts the site in for), and
TELEMETRY_STATUS updates the VTN does not answer. openleadr's own OpenADRServer with its event queue, as a utility runs
it (UtilityVtn), and DemoVtn for status; the whole gateway in this process where the stop line is what is tested."""
from __future__ import annotations

import contextlib
import logging
import re
from datetime import timedelta

import pytest
from aiohttp import web
from test_report_quality import _gateway_config
from test_report_requests import S, said
from test_vtn import running
from test_vtn_openleadr_queue import UtilityVtn, now, shed_and_other_answered
from waiting import eventually as until

from bacnet_api.simulator import MeterSimulator
from ven.app import Gateway
from ven.vtn_server import DemoVtn

pytestmark = pytest.mark.mostly_waiting


@contextlib.asynccontextmanager
async def whole_gateway(tmp_path, free_udp_port, url_port):
    """The gateway (in this process, stopped as `edge-gateway` stops it) reading a meter, its VTN on `url_port`."""
    meter_port = free_udp_port()
    cfg = _gateway_config(tmp_path, free_udp_port(), meter_port, url_port, poll=1.0, timeout=0.5)
    async with MeterSimulator(address=f"127.0.0.1/8:{meter_port}", value=80.0):
        gateway = Gateway(cfg)
        try:
            await gateway.start()
            yield gateway
        finally:
            await gateway.stop()


async def opted_out_while_failing(vtn: UtilityVtn, gw) -> None:
    """Both events answered optIn, then the BAS opts out while the VTN fails every answer: both optOuts wait."""
    await shed_and_other_answered(vtn, gw)
    vtn.busy = True
    gw.vtn.set_opt_out(True)
    await until(lambda: gw.vtn.status()["opt_answers_not_taken"], 10, "the optOut not taken")


def stop_line(caplog) -> str:
    (line,) = said(caplog, "edge-gateway stopped")
    return line


@pytest.mark.timeout(90)
async def test_a_stop_names_the_answers_to_events_the_vtn_has_not_taken(
        tmp_path, free_tcp_port, free_udp_port, caplog):
    # The stop line said "answers to 1 event(s) not taken by the VTN" and the VTN's last failure: not which answer to
    # which event, so the operator could not tell the utility which shed it still counts on, nor what becomes of it
    caplog.set_level(logging.INFO, logger="ven")
    logging.getLogger("openleadr").setLevel(logging.CRITICAL)
    vtn_port = free_tcp_port()
    async with UtilityVtn(vtn_port) as vtn:
        async with whole_gateway(tmp_path, free_udp_port, vtn_port) as gateway:
            await until(lambda: gateway.vtn.connected, 30, "registered")
            vtn.add_event("shed", 2.0, now() - timedelta(seconds=1), timedelta(minutes=10))
            await until(lambda: ("shed", 0, "optIn") in vtn.answers, 10, "the event answered")
            vtn.busy = True
            gateway.vtn.set_opt_out(True)       # the BAS writes ADR-Opt-Out
            await until(lambda: gateway.vtn.opts_not_taken(), 10, "the optOut not taken")
    line = stop_line(caplog)
    assert "answers to 1 event(s) not taken by the VTN for " in line, line
    assert ("(the optOut for event shed; the last failure: the VTN failed the optOut answer to event shed: 500 server "
            "busy): not kept; the next start answers the events the VTN lists as any start does") in line, line


@pytest.mark.timeout(90)
async def test_a_stop_during_a_vtn_outage_names_the_opt_out_not_taken(tmp_path, free_tcp_port, free_udp_port, caplog):
    # The BAS opted out while the VTN was down: the stop line named the outage, not that the utility never heard it
    caplog.set_level(logging.INFO, logger="ven")
    logging.getLogger("openleadr").setLevel(logging.CRITICAL)
    vtn_port = free_tcp_port()
    vtn = UtilityVtn(vtn_port)
    await vtn.__aenter__()
    try:
        async with whole_gateway(tmp_path, free_udp_port, vtn_port) as gateway:
            await until(lambda: gateway.vtn.connected, 30, "registered")
            vtn.add_event("shed", 2.0, now() - timedelta(seconds=1), timedelta(minutes=10))
            await until(lambda: ("shed", 0, "optIn") in vtn.answers, 10, "the event answered")
            await vtn.__aexit__()
            vtn = None
            await until(lambda: gateway.vtn.open_fault(), 10, "the outage")
            gateway.vtn.set_opt_out(True)       # waits for the VTN: no message can reach it
    finally:
        if vtn is not None:
            await vtn.__aexit__()
    line = stop_line(caplog)
    assert "VTN fault for " in line and ", the optOut for event shed not taken: not kept;" in line, line


@pytest.mark.timeout(60)
@pytest.mark.parametrize("utility, why", [
    ("ends_it", "failed after the event's end"),     # listed completed, then dropped from openleadr's queue
    ("deletes_it", "the VTN no longer lists the event"),
])
async def test_an_answer_the_vtn_never_took_is_not_said_taken_once_it_stops_waiting(
        tmp_path, free_tcp_port, caplog, utility, why):
    # openleadr's VTN failed the BAS's optOut (busy) until the utility ended the event (or deleted it): the answer
    # stopped waiting, and the end line said "the VTN took the answers to events again". The utility never heard the
    # optOut, and settled the event on the optIn.
    caplog.set_level(logging.INFO, logger="ven")
    logging.getLogger("openleadr").setLevel(logging.CRITICAL)
    async with UtilityVtn(free_tcp_port()) as vtn, running(tmp_path, vtn.url) as gw:
        await opted_out_while_failing(vtn, gw)
        if utility == "ends_it":
            vtn.end_now("shed")
        else:
            vtn.delete("shed")
        await until(lambda: "shed" not in gw.vtn.answers_waiting(), 10, "the optOut for shed no longer waiting")
        vtn.busy = False    # the other event's optOut goes
        await until(lambda: ("other", 0, "optOut") in vtn.answers, 10, "the other optOut taken")
        await until(lambda: gw.vtn.status()["opt_answers_not_taken"] is None, 10, "the fault over")
    assert not [a for a in vtn.answers if a[0] == "shed" and a[2] == "optOut"], vtn.answers
    assert not said(caplog, "took the answers to events again")
    ends = said(caplog, "no answer to events waits")
    assert len(ends) == 1 and ends[0].endswith(f"and it never took the optOut for event shed ({why})"), ends
    assert len(said(caplog, "did not take the answer")) == 1 and not said(caplog, "did not get through")


@pytest.mark.timeout(60)
async def test_an_answer_dropped_while_a_pass_of_answers_is_under_way_is_not_sent(tmp_path, free_tcp_port, caplog):
    # The poll reads the VTN's listing while the delivery task's pass of answers awaits the VTN: an answer the listing
    # dropped (the utility deleted its event) still went from the messages the pass had built, the utility refused it
    # (452), and a WARNING said so, of an answer the gateway had already given up on (-n 8 beside four busy loops)
    caplog.set_level(logging.INFO, logger="ven")
    logging.getLogger("openleadr").setLevel(logging.CRITICAL)
    async with UtilityVtn(free_tcp_port()) as vtn, running(tmp_path, vtn.url) as gw:
        await opted_out_while_failing(vtn, gw)
        client, dropped = gw.vtn._client, []
        real = client._perform_request

        async def perform(service, message):
            named = re.findall(r"eventID>(\w+)<", message)
            if service == "EiEvent" and "oadrCreatedEvent" in message and len(named) == 1 and not dropped:
                # a pass's answer on its way (each goes alone since the VTN failed them together; openleadr's answer
                # to a listing names both); what the poll does meanwhile: the utility deleted the other event
                kept = named[0]
                dropped.append("other" if kept == "shed" else "shed")
                vtn.delete(dropped[0])
                gw.vtn._listed({kept})
                # the VTN takes answers from this one on: set before, an answer already on its way while it failed
                # them was taken late, before the pass got here (the answers go one at a time, under a lock)
                vtn.busy = False
            return await real(service, message)
        client._perform_request = perform
        await until(lambda: dropped, 10, "a pass's answer on its way")
        await until(lambda: gw.vtn.status()["opt_answers_not_taken"] is None, 10, "the fault over")
        await until(lambda: not gw.vtn.answers_waiting(), 10, "no answer waiting")
    assert (dropped[0], 0, "optOut") not in vtn.answers, vtn.answers
    assert ({"shed", "other"} - set(dropped)).pop() in {a[0] for a in vtn.answers if a[2] == "optOut"}, vtn.answers
    assert not said(caplog, "refused"), said(caplog, "refused")


@pytest.mark.timeout(60)
async def test_the_answer_to_a_new_event_that_did_not_get_through_has_its_end_line(tmp_path, free_tcp_port, caplog):
    # "the answer to 1 event(s) did not get through ...; it is sent again" began a fault that the status, a stop line
    # and an end line knew nothing of: the VTN took it at the next try, and no end line followed
    caplog.set_level(logging.INFO, logger="ven")
    logging.getLogger("openleadr").setLevel(logging.CRITICAL)
    vtn = UtilityVtn(free_tcp_port())
    failed = []

    @web.middleware
    async def fail_the_first_answer(request, handler):
        if not failed and b"oadrCreatedEvent" in await request.read():
            failed.append(now())
            return web.Response(status=503, text="restarting")
        return await handler(request)
    vtn.server.app.middlewares.insert(0, fail_the_first_answer)
    async with vtn, running(tmp_path, vtn.url) as gw:
        await until(lambda: gw.vtn.connected, 10, "registration")
        vtn.add_event("shed", 2.0, now() - timedelta(seconds=1), timedelta(minutes=10))
        await until(lambda: ("shed", 0, "optIn") in vtn.answers, 10, "the optIn at the utility's VTN")
        await until(lambda: said(caplog, "took the answers to events again"), 10, "the end line")
    assert len(failed) == 1
    assert said(caplog, "did not get through") == [
        f"the answer to 1 event(s) did not get through (HTTP 503 from {vtn.url}/EiEvent: restarting); it is sent again"]
    assert not said(caplog, "did not take the answer")


@pytest.mark.timeout(90)
async def test_a_stop_names_status_updates_the_vtn_does_not_answer(tmp_path, free_tcp_port, free_udp_port, caplog):
    # "the VTN answers polls but not TELEMETRY_STATUS updates" was open at the stop, and the stop line said nothing
    # of it: the fault read as going on (or its end line lost), and the samples it held went unsaid
    caplog.set_level(logging.INFO, logger="ven")
    vtn_port = free_tcp_port()
    server = DemoVtn(vtn_port, poll_seconds=1, request_status=False)

    @web.middleware
    async def fail_status_updates(request, handler):
        body = await request.read()
        if b"oadrUpdateReport" in body and b"oadrPayloadResourceStatus" in body:
            return web.Response(status=500, text="busy")
        return await handler(request)
    server._server.app.middlewares.insert(0, fail_status_updates)
    async with server:
        async with whole_gateway(tmp_path, free_udp_port, vtn_port) as gateway:
            await until(lambda: gateway.vtn.connected and server.status_metadata, 30, "registered")
            server.create_status_report(gateway.vtn.ven_id, S, timedelta(0))
            await until(lambda: said(caplog, "but not TELEMETRY_STATUS updates"), 20, "the fault said")
    line = stop_line(caplog)
    assert "TELEMETRY_STATUS updates not answered by the VTN for " in line, line
    assert " in a row: HTTP 500 from " in line and "sample(s) held are dropped with this stop)" in line, line
    assert len(said(caplog, "but not TELEMETRY_STATUS updates")) == 1


def test_the_answers_are_named_by_kind(tmp_path):
    from ven.vtn_events import answers_text
    assert answers_text([]) == ""
    assert answers_text([("a", "optOut")]) == "the optOut for event a"
    assert answers_text([("a", "optOut"), ("b", "optIn"), ("c", "optOut")]) == \
        "the optOut for events a, c and the optIn for event b"
