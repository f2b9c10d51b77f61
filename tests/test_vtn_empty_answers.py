"""A VTN (or something in front of it) that answers the VEN's messages with an empty HTTP 200: 2.0b has the VTN answer
oadrCreatedEvent with oadrResponse and oadrUpdateReport with oadrUpdatedReport, and an empty body says nothing about
whether the message reached the VTN. The answer to an event and a telemetry update are handled alike: not taken, sent
again, the operator told once at the start and once at the end (the poll's empty answer, a failed poll, is in
test_faults_vtn). A real openleadr VTN (DemoVtn) behind a FakeVtn relaying its answers emptied, a real SQLite queue."""
from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from test_faults_vtn import in_front_of_a_vtn
from test_report_requests import drained, expected, now, received, running, said
from waiting import eventually as until

pytestmark = pytest.mark.mostly_waiting

EMPTY = "the VTN's answer was empty (HTTP 200 with no body)"


async def test_an_empty_answer_to_the_answer_to_an_event_is_no_answer_and_it_goes_again(
        tmp_path, free_tcp_port, caplog):
    # it was taken as delivered, while an empty answer to an update was a failed update: the VTN that did not hear
    # optIn counted the site out of the event, and nothing said so (helper vtns41 C1)
    caplog.set_level(logging.INFO, logger="ven")
    async with in_front_of_a_vtn(free_tcp_port) as (fake, vtn):
        async with running(tmp_path, fake.url) as rig:
            await until(lambda: rig.vtn.connected, 10, "registered")
            fake.empty_services, fake.mode = ("EiEvent",), "empty_proxy"
            eid = vtn.add_event([1.0], now() + timedelta(minutes=5), 600)
            await until(lambda: said(caplog, "did not get through"), 10, "the empty answer said")
            assert said(caplog, "did not get through") == [
                f"the answer to 1 event(s) did not get through ({EMPTY}); it is sent again"]
            fake.mode = "proxy"
            await until(lambda: said(caplog, f"told the VTN optIn for event {eid}"), 10, "sent again, answered")
            assert ("ven-edge-gateway", eid, "optIn") in vtn.opts
            assert len(said(caplog, "did not get through")) == 1


async def test_an_empty_answer_to_an_update_is_no_answer_said_once_and_the_intervals_go_again(
        tmp_path, free_tcp_port, caplog):
    caplog.set_level(logging.INFO, logger="ven")
    async with in_front_of_a_vtn(free_tcp_port) as (fake, vtn):
        async with running(tmp_path, fake.url) as rig:
            await until(lambda: rig.vtn.status()["report_request_id"], 10, "telemetry requested")
            rig.start_meter(0.25)
            await until(lambda: len(received(vtn)) >= 2, 8, "live intervals")
            fake.empty_services, fake.mode = ("EiReport",), "empty_proxy"
            await until(lambda: said(caplog, "not telemetry updates"), 15, "the fault said")
            assert said(caplog, "not telemetry updates") == [
                f"the VTN answers polls but not telemetry updates ({EMPTY}): the samples stay queued and the updates "
                "are retried (backoff up to 0.25 s)"]
            fake.mode = "proxy"
            await until(lambda: said(caplog, "answers telemetry updates again"), 10, "the end said")
            await rig.stop_meter()
            await until(lambda: drained(rig), 10, "drained")
            # each interval reached the VTN at least once: the ones whose answer was lost went again (the VTN can tell
            # them by reportRequestID and dtstart; docs/openadr.md says delivery is at least once)
            assert {t for t, _, _ in received(vtn)} == {t for t, _, _ in expected(rig.taken, timedelta(seconds=1))}
            assert len(said(caplog, "not telemetry updates")) == 1


async def test_an_opt_out_the_vtn_does_not_take_is_said_and_shown_until_it_takes_it(tmp_path, free_tcp_port, caplog):
    # the BAS's opt-out went as an oadrCreateOpt answered empty (or failed) at every poll, the polls answered: nothing
    # said it, /healthz said ok and the dashboard only counted "opt answers waiting" on the VTN card, while the
    # utility counted the site in the event it had left (helper operator42)
    caplog.set_level(logging.INFO, logger="ven")
    async with in_front_of_a_vtn(free_tcp_port) as (fake, vtn):
        async with running(tmp_path, fake.url) as rig:
            await until(lambda: rig.vtn.connected, 10, "registered")
            eid = vtn.add_event([1.0], now() + timedelta(minutes=5), 600)
            await until(lambda: said(caplog, f"told the VTN optIn for event {eid}") or
                        ("ven-edge-gateway", eid, "optIn") in vtn.opts, 10, "the event answered")
            assert rig.vtn.status()["opt_answers_not_taken"] is None
            fake.empty_services, fake.mode = ("EiOpt", "EiEvent"), "empty_proxy"
            rig.vtn.set_opt_out(True)
            await until(lambda: rig.vtn.status()["opt_answers_not_taken"] is not None, 10, "the fault shown")
            stuck = rig.vtn.status()["opt_answers_not_taken"]
            assert stuck["count"] == 1 and stuck["why"] == EMPTY and rig.vtn.connected
            await until(lambda: said(caplog, "did not take the answer"), 5, "the fault said")
            assert said(caplog, "did not take the answer") == [
                f"the VTN did not take the answer(s) to 1 event(s) ({EMPTY}): sent again at each poll; the utility "
                "counts the site as it last heard it meanwhile"]
            fake.mode = "proxy"
            await until(lambda: rig.vtn.status()["opt_answers_not_taken"] is None, 10, "taken")
            assert ("ven-edge-gateway", eid, "optOut") in vtn.opts
            assert len(said(caplog, "did not take the answer")) == 1
            assert said(caplog, "took the answers to events again")
