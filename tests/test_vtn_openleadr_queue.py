"""The gateway against openleadr's own OpenADRServer run as a utility would run it: its internal event queue
(`add_event`, `cancel_event`, an event object changed and its modificationNumber raised), no handlers of the
test's own for polls or events. DemoVtn, which the other tests use, serves its own event list instead.

openleadr's VTN drops an event from its queue as it lists it `completed`, then fails (HTTP 500, a TypeError) any
oadrCreatedEvent that answers it: the gateway's answer to an event already over when listed (one the utility ended
early, one entered after the fact) is never taken. That one answer must not hold back the others."""
from __future__ import annotations

import contextlib
import io
import logging
from datetime import datetime, timedelta, timezone

import pytest
from aiohttp import web
from openleadr import OpenADRServer, objects, utils

from test_vtn import running
from waiting import eventually as until

pytestmark = pytest.mark.mostly_waiting


# a VTN's application failing (its database busy, say): HTTP 200, the failure in the eiResponse's code
BUSY = (b'<?xml version="1.0" encoding="utf-8"?>\n<oadr:oadrPayload xmlns:oadr="http://openadr.org/oadr-2.0b/2012/07">'
        b'<oadr:oadrSignedObject><oadr:oadrResponse ei:schemaVersion="2.0b" '
        b'xmlns:ei="http://docs.oasis-open.org/ns/energyinterop/201110"><ei:eiResponse><ei:responseCode>500'
        b'</ei:responseCode><ei:responseDescription>server busy</ei:responseDescription>'
        b'<requestID xmlns="http://docs.oasis-open.org/ns/energyinterop/201110/payloads"/></ei:eiResponse>'
        b'<ei:venID>%s</ei:venID></oadr:oadrResponse></oadr:oadrSignedObject></oadr:oadrPayload>')


def now() -> datetime:
    return datetime.now(timezone.utc)


class UtilityVtn:
    """openleadr's OpenADRServer with its internal queue; records every eventResponse the VTN is sent."""

    def __init__(self, port: int):
        self.vens: dict[str, dict] = {}
        self.answers: list[tuple[str, int, str]] = []      # (eventID, modificationNumber, optType) as sent
        self.server = OpenADRServer(vtn_id="UTILITY", http_host="127.0.0.1", http_port=port,
                                    requested_poll_freq=timedelta(seconds=1), ven_lookup=self._lookup)
        self.server.add_handler("on_create_party_registration", self._register)
        self.server.add_handler("on_register_report", self._offered)
        self.url = f"http://127.0.0.1:{port}/OpenADR2/Simple/2.0b"
        handlers = self.server.services["event_service"].handlers

        async def created_event(payload, real=handlers["oadrCreatedEvent"]):
            self.answers += [(r["event_id"], r["modification_number"], r["opt_type"])
                             for r in payload["event_responses"]]
            return await real(payload)
        handlers["oadrCreatedEvent"] = created_event
        self.server.app.middlewares.append(self._busy)

    busy = False            # while True, oadrCreatedEvent is answered with eiResponse 500 "server busy"
    busy_answers = 0

    @web.middleware
    async def _busy(self, request, handler):
        if self.busy and request.path.endswith("/EiEvent"):
            body = await request.read()
            if b"oadrCreatedEvent" in body:
                self.busy_answers += 1
                return web.Response(body=BUSY % self.ven_id.encode(), content_type="application/xml")
        return await handler(request)

    def _lookup(self, ven_id):
        return self.vens.get(ven_id)

    def _offered(self, ven_id, resource_id, measurement, unit, scale, min_sampling_interval, max_sampling_interval):
        return None     # no telemetry asked: this is about events

    def _register(self, payload):
        ven_id = f"ven-{payload['ven_name']}"
        self.vens[ven_id] = {"ven_id": ven_id, "registration_id": "reg-1"}
        return ven_id, "reg-1"

    @property
    def ven_id(self) -> str:
        return next(iter(self.vens))

    def add_event(self, event_id: str, level: float, start: datetime, duration: timedelta,
                  response_required: str = "always") -> None:
        self.server.add_event(ven_id=self.ven_id, signal_name="SIMPLE", signal_type="level", event_id=event_id,
                              intervals=[objects.Interval(dtstart=start, duration=duration, signal_payload=level)],
                              callback=lambda ven_id, event_id, opt_type: None, response_required=response_required)

    def touch(self, event_id: str) -> None:
        """A new modification of the event, its times and levels as they were."""
        utils.increment_event_modification_number(
            utils.find_by(self.server.events[self.ven_id], "event_descriptor.event_id", event_id))
        self.server.events_updated[self.ven_id] = True

    def delete(self, event_id: str) -> None:
        """The utility deletes an event from its VTN: it is no longer listed."""
        self.server.events[self.ven_id][:] = [e for e in self.server.events[self.ven_id]
                                              if e.event_descriptor.event_id != event_id]
        self.server.events_updated[self.ven_id] = True

    def end_now(self, event_id: str) -> None:
        """The operator ends a running event: its interval and active period end now, a new modification."""
        event = utils.find_by(self.server.events[self.ven_id], "event_descriptor.event_id", event_id)
        ends = now() - utils.getmember(event, "active_period.dtstart")   # the active period is a dict in openleadr's
        utils.setmember(event, "active_period.duration", ends)
        event.event_signals[0].intervals[0].duration = ends
        utils.increment_event_modification_number(event)
        self.server.events_updated[self.ven_id] = True

    async def __aenter__(self) -> "UtilityVtn":
        with contextlib.redirect_stdout(io.StringIO()):     # openleadr prints a banner
            await self.server.run()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.server.stop()


async def shed_and_other_answered(vtn: UtilityVtn, gw) -> None:
    """`gw` registered, and the VTN's two events answered optIn: "shed" running, "other" in half an hour."""
    await until(lambda: gw.vtn.connected, 10, "registration")
    vtn.add_event("shed", 2.0, now() - timedelta(seconds=1), timedelta(minutes=10))
    vtn.add_event("other", 1.0, now() + timedelta(minutes=30), timedelta(minutes=10))
    await until(lambda: {("shed", 0, "optIn"), ("other", 0, "optIn")} <= set(vtn.answers), 10, "answered")


@contextlib.asynccontextmanager
async def two_events_one_ended(tmp_path, free_tcp_port):
    """Two events running at the utility's VTN, answered; then the operator ends one of them early."""
    logging.getLogger("openleadr").setLevel(logging.CRITICAL)    # its traceback for each answer it fails
    async with UtilityVtn(free_tcp_port()) as vtn, running(tmp_path, vtn.url) as gw:
        await until(lambda: gw.vtn.connected, 10, "registration")
        started = now() - timedelta(seconds=1)
        vtn.add_event("shed", 2.0, started, timedelta(minutes=10))
        vtn.add_event("short", 1.0, started, timedelta(minutes=10))
        await until(lambda: {("shed", 0, "optIn"), ("short", 0, "optIn")} <= set(vtn.answers), 10, "both answered")
        assert gw.level == 2.0
        vtn.end_now("short")    # listed completed, and dropped from the VTN's queue as it is listed
        await until(lambda: ("short", 1, "optIn") in vtn.answers, 10, "the answer to the event ended")
        assert gw.level == 2.0
        yield vtn, gw


@pytest.mark.timeout(60)
async def test_an_opt_out_reaches_openleadrs_vtn_after_it_failed_the_answer_to_an_event_it_ended(
        tmp_path, free_tcp_port):
    async with two_events_one_ended(tmp_path, free_tcp_port) as (vtn, gw):
        gw.vtn.set_opt_out(True)    # the BAS writes ADR-Opt-Out
        await until(lambda: ("shed", 0, "optOut") in vtn.answers, 10, "the BAS's optOut at the utility's VTN")
        assert gw.level == 0.0
        gw.vtn.set_opt_out(False)
        # sent in one message with an answer the VTN fails, it would be failed with it
        answered = len(vtn.answers)
        await until(lambda: ("shed", 0, "optIn") in vtn.answers[answered:], 10, "the optIn again")
        assert gw.level == 2.0


@pytest.mark.timeout(60)
async def test_the_answer_to_an_event_ended_early_that_openleadrs_vtn_fails_is_not_sent_at_every_poll(
        tmp_path, free_tcp_port, caplog):
    caplog.set_level(logging.INFO, logger="ven")
    async with two_events_one_ended(tmp_path, free_tcp_port) as (vtn, gw):
        polls = gw.vtn.last_poll
        for _ in range(3):
            polls = (await until(lambda: gw.vtn.last_poll != polls and gw.vtn.last_poll, 10, "a poll"))
        # the event is over: the VTN (and the dashboard's "Needs attention", and the alert) are not kept busy with it
        assert vtn.answers.count(("short", 1, "optIn")) == 1
        status = gw.vtn.status()
        assert status["opt_answers_not_taken"] is None and status["opt_answers_waiting"] == 0, status
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO and "short" in r.getMessage()
             and "VTN failed" in r.getMessage()]
    assert lines == ["the VTN failed the optIn for event short, over already (HTTP 500 from "
                     f"{vtn.url}/EiEvent: no text in its answer): not sent again"], lines
    assert not [r for r in caplog.records if "did not take the answer" in r.getMessage()]


@pytest.mark.timeout(60)
async def test_an_opt_out_openleadrs_vtn_cannot_take_is_said_with_its_own_failure_and_the_others_go(
        tmp_path, free_tcp_port, caplog):
    """openleadr's VTN serves no EiOpt: the optOut for an event that wants no answer (an oadrCreateOpt) is failed
    404, every time. The optOut for the event beside it goes, and the line says why the first did not."""
    caplog.set_level(logging.INFO, logger="ven")
    logging.getLogger("openleadr").setLevel(logging.CRITICAL)
    async with UtilityVtn(free_tcp_port()) as vtn, running(tmp_path, vtn.url) as gw:
        await until(lambda: gw.vtn.connected, 10, "registration")
        started = now() - timedelta(seconds=1)
        vtn.add_event("silent", 1.0, started, timedelta(minutes=10), response_required="never")
        vtn.add_event("shed", 2.0, started, timedelta(minutes=10))
        await until(lambda: ("shed", 0, "optIn") in vtn.answers and gw.schedule.get("silent"), 10, "both listed")
        gw.vtn.set_opt_out(True)
        await until(lambda: ("shed", 0, "optOut") in vtn.answers, 10, "the optOut for the event that wants one")
        await until(lambda: gw.vtn.status()["opt_answers_not_taken"], 10, "the answer not taken")
        status = gw.vtn.status()
        assert status["opt_answers_waiting"] == 1
        assert status["opt_answers_not_taken"]["why"].startswith(f"HTTP 404 from {vtn.url}/EiOpt"), status
    lines = [r.getMessage() for r in caplog.records if "did not take the answer" in r.getMessage()]
    assert len(lines) == 1 and f"(HTTP 404 from {vtn.url}/EiOpt" in lines[0], lines


@pytest.mark.timeout(60)
async def test_an_opt_out_the_vtn_answers_with_a_server_error_code_is_sent_again_until_taken(
        tmp_path, free_tcp_port, caplog):
    caplog.set_level(logging.INFO, logger="ven")
    async with UtilityVtn(free_tcp_port()) as vtn, running(tmp_path, vtn.url) as gw:
        await until(lambda: gw.vtn.connected, 10, "registration")
        vtn.add_event("shed", 2.0, now() - timedelta(seconds=1), timedelta(minutes=10))
        await until(lambda: ("shed", 0, "optIn") in vtn.answers, 10, "the event answered")
        vtn.busy = True
        gw.vtn.set_opt_out(True)
        await until(lambda: vtn.busy_answers >= 2, 10, "the optOut sent again while the VTN fails it")
        assert gw.vtn.status()["opt_answer_error"] is None, "a server error is no refusal of the answer"
        vtn.busy = False
        await until(lambda: ("shed", 0, "optOut") in vtn.answers, 10, "the BAS's optOut at the utility's VTN")
        await until(lambda: gw.vtn.status()["opt_answers_waiting"] == 0, 5, "no answer waiting")
        assert gw.vtn.status()["opt_answer_error"] is None
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("ven")]
    assert lines == ["the VTN did not take the answer(s) to 1 event(s) (the VTN failed the optOut answer to event "
                     "shed: 500 server busy): sent again at each poll; the utility counts the site as it last heard "
                     "it meanwhile"], lines
    assert [r for r in caplog.records if "took the answers to events again" in r.getMessage()]


@pytest.mark.timeout(60)
async def test_the_answer_to_a_new_event_the_vtn_answers_with_a_server_error_code_is_sent_again(
        tmp_path, free_tcp_port, caplog):
    caplog.set_level(logging.INFO, logger="ven")
    async with UtilityVtn(free_tcp_port()) as vtn, running(tmp_path, vtn.url) as gw:
        await until(lambda: gw.vtn.connected, 10, "registration")
        vtn.busy = True
        vtn.add_event("shed", 2.0, now() - timedelta(seconds=1), timedelta(minutes=10))
        await until(lambda: vtn.busy_answers >= 1, 10, "the answer to the event failed")
        vtn.busy = False
        await until(lambda: ("shed", 0, "optIn") in vtn.answers, 10, "the optIn at the utility's VTN")
        assert gw.vtn.status()["opt_answer_error"] is None
    assert [r.getMessage() for r in caplog.records if "did not get through" in r.getMessage()] == [
        "the answer to 1 event(s) did not get through (the VTN failed it: 500 server busy); it is sent again"]


@pytest.mark.timeout(60)
async def test_openleadrs_vtn_tells_an_events_callback_its_first_answer_only(tmp_path, free_tcp_port):
    # What a utility running openleadr's VTN hears through add_event's callback: the first answer, only. The BAS's
    # later optOut reaches the VTN (an oadrCreatedEvent for the same modification, which 2.0b lets a VEN send to change
    # its answer; HTTP 200) and the callback, popped at the first, is not called again: the utility reads the
    # oadrCreatedEvent itself to settle on the site's answer (docs/openadr.md "With openleadr's own VTN")
    heard = []
    async with UtilityVtn(free_tcp_port()) as vtn, running(tmp_path, vtn.url) as gw:
        await until(lambda: gw.vtn.connected, 10, "registration")
        vtn.server.add_event(ven_id=vtn.ven_id, signal_name="SIMPLE", signal_type="level", event_id="shed",
                             intervals=[objects.Interval(dtstart=now(), duration=timedelta(minutes=10),
                                                         signal_payload=2.0)],
                             callback=lambda ven_id, event_id, opt_type: heard.append(opt_type))
        await until(lambda: heard, 10, "the first answer")
        gw.vtn.set_opt_out(True)
        await until(lambda: ("shed", 0, "optOut") in vtn.answers, 10, "the BAS's optOut at the utility's VTN")
        await until(lambda: gw.vtn.status()["opt_answers_waiting"] == 0, 5, "taken")
    assert heard == ["optIn"] and gw.vtn.status()["opt_answers_not_taken"] is None


@pytest.mark.timeout(60)
async def test_answers_sent_one_by_one_after_openleadrs_vtn_failed_their_batch_are_one_line(
        tmp_path, free_tcp_port, caplog, monkeypatch):
    """A VTN whose clock runs ahead lists an event completed that runs on here: openleadr's VEN answers it with the
    others, and openleadr's VTN, which dropped it as it listed it completed, fails the whole answer (HTTP 500). The
    answers then go one per message. Their line was one per message: as many INFO lines as events at each such
    listing, all day, for one thing."""
    caplog.set_level(logging.INFO, logger="ven")
    logging.getLogger("openleadr").setLevel(logging.CRITICAL)
    ahead = set()
    listed = utils.order_events

    def vtn_clock_ahead(events, *args, **kwargs):
        out = listed(events, *args, **kwargs)
        for event in out or []:
            if utils.getmember(event, "event_descriptor.event_id") in ahead:
                utils.setmember(event, "event_descriptor.event_status", "completed")
        return out
    monkeypatch.setattr(utils, "order_events", vtn_clock_ahead)    # the VTN's listing only: the VEN never calls it
    async with UtilityVtn(free_tcp_port()) as vtn, running(tmp_path, vtn.url) as gw:
        await until(lambda: gw.vtn.connected, 10, "registration")
        started = now() - timedelta(seconds=1)
        for eid in ("a", "b", "c", "early"):
            vtn.add_event(eid, 1.0, started, timedelta(minutes=10))
        await until(lambda: {(eid, 0, "optIn") for eid in ("a", "b", "c", "early")} <= set(vtn.answers), 10,
                    "all four answered")
        caplog.clear()
        answered = len(vtn.answers)
        ahead.add("early")
        vtn.touch("early")
        await until(lambda: [r for r in caplog.records if r.getMessage().startswith("told the VTN")], 10,
                    "the answers sent again, one by one")
        await until(lambda: {(eid, 0, "optIn") for eid in ("a", "b", "c")} <= set(vtn.answers[answered:]), 10,
                    "the three taken")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("told the VTN")]
    assert lines == ["told the VTN optIn for events a, b, c"], lines


@pytest.mark.timeout(60)
async def test_an_event_a_vtn_clock_behind_lists_far_while_it_is_over_here_is_said(tmp_path, free_tcp_port, caplog,
                                                                                   monkeypatch):
    """A VTN whose clock runs 3 minutes behind this one sends an event of 2 minutes starting 'now' by its clock: over
    already here, it never sheds, while the VTN lists it far and hears optIn. One line says the clocks may differ."""
    caplog.set_level(logging.INFO, logger="ven")
    logging.getLogger("openleadr").setLevel(logging.CRITICAL)
    listed = utils.order_events

    def vtn_clock_behind(events, *args, **kwargs):
        out = listed(events, *args, **kwargs)
        for event in out or []:
            if utils.getmember(event, "event_descriptor.event_status") != "cancelled":
                utils.setmember(event, "event_descriptor.event_status", "far")
        return out
    monkeypatch.setattr(utils, "order_events", vtn_clock_behind)    # the VTN's listing only: the VEN never calls it
    async with UtilityVtn(free_tcp_port()) as vtn, running(tmp_path, vtn.url) as gw:
        await until(lambda: gw.vtn.connected, 10, "registration")
        vtn.add_event("shed", 2.0, now() - timedelta(minutes=3), timedelta(minutes=2))
        await until(lambda: ("shed", 0, "optIn") in vtn.answers, 10, "the event answered")
        vtn.touch("shed")       # listed again: said once
        await until(lambda: ("shed", 1, "optIn") in vtn.answers, 10, "the modification answered")
        assert gw.level == 0.0
    lines = [r.getMessage() for r in caplog.records if "the VTN lists it" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("event shed: the VTN lists it far, while its times ended at ") \
        and lines[0].endswith(": it is over here (its clock and this one's may differ)"), lines


class RenumberingVtn(UtilityVtn):
    """The utility's VTN reinstalled: its registrations lost, it gives the VEN another venID."""

    def _register(self, payload):
        ven_id = f"ven2-{payload['ven_name']}"
        self.vens[ven_id] = {"ven_id": ven_id, "registration_id": "reg-2"}
        return ven_id, "reg-2"


@pytest.mark.timeout(60)
async def test_a_new_venid_from_a_vtn_that_lost_its_registrations_is_said_in_the_registration_line(
        tmp_path, free_tcp_port, caplog):
    """openleadr's own WARNING for it was garbled ("did not match the venID the venID that was previously configured
    ... the value supplied by the VEN"), and the gateway's registration line named the new venID as if nothing
    changed: the utility's records of the site now go by another ID."""
    caplog.set_level(logging.INFO)
    port = free_tcp_port()
    async with UtilityVtn(port) as vtn, running(tmp_path, vtn.url) as gw:
        await until(lambda: gw.vtn.connected, 10, "registration")
        old = gw.vtn.ven_id
        await vtn.server.stop()
        async with RenumberingVtn(port) as again:
            await until(lambda: gw.vtn.connected and gw.vtn.ven_id == f"ven2-{old[len('ven-'):]}", 30,
                        "registered again under the new venID")
            new = gw.vtn.ven_id
            again.add_event("shed", 2.0, now() - timedelta(seconds=1), timedelta(minutes=10))
            await until(lambda: ("shed", 0, "optIn") in again.answers, 10, "its event followed and answered")
    lines = [r.getMessage() for r in caplog.records if "registered with VTN" in r.getMessage()]
    assert len(lines) == 2 and f"venID {new} (a new one: it was {old}), registrationID reg-2" in lines[1], lines
    assert not [r for r in caplog.records if "did not match the venID" in r.getMessage()]
