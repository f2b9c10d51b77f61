"""Event messages as a VTN other than openleadr writes them (tests/raw_vtn.py), each valid OpenADR 2.0b:
the gateway follows them as it follows openleadr's (level, ADR-Event-Start-Minutes, opt answers)."""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone

import pytest
from lxml.etree import XMLSyntaxError
from openleadr.messaging import validate_xml_schema

from raw_vtn import RawVtn, distribute, event, interval, register_report, signal
from test_vtn import running, said
from waiting import eventually as until
from ven.vtn_server import DemoVtn

pytestmark = pytest.mark.mostly_waiting


def now() -> datetime:
    return datetime.now(timezone.utc)


def simple(levels, duration="PT1H"):
    return signal([interval(level, duration, uid) for uid, level in enumerate(levels)])


@asynccontextmanager
async def raw_gateway(tmp_path, free_tcp_port, vtn_id="UTILITY-VTN", ven_id=None):
    async with DemoVtn(free_tcp_port(), poll_seconds=1, vtn_id=vtn_id) as demo, \
            RawVtn(free_tcp_port(), demo.url, demo.vtn_id, ven_ids=ven_id and ("ven-edge-gateway", ven_id)) as raw, \
            running(tmp_path, raw.url) as gw:
        await until(lambda: gw.vtn.connected, 10, "registration")
        yield raw, gw
        assert raw.invalid == [], "every message of the gateway is valid OpenADR 2.0b"


async def deliver(raw: RawVtn, message: bytes) -> None:
    served = raw.served
    raw.send(message)
    await until(lambda: raw.served > served, 5, "the message polled")


async def test_a_minimal_message_in_a_default_namespace_with_many_events_and_signals_is_followed(
        tmp_path, free_tcp_port, caplog):
    caplog.set_level(logging.INFO, logger="ven")
    soon = now() + timedelta(minutes=30)
    async with raw_gateway(tmp_path, free_tcp_port) as (raw, gw):
        price = signal([interval(0.42, "PT1H", 0)], "ELECTRICITY_PRICE", "price", "p")
        dispatch = signal([interval(-50, "PT1H", 0)], "LOAD_DISPATCH", "delta", "d")
        # the intervals listed out of order: uid says which follows which
        shed = signal([interval(3, "PT30M", 1), interval(2, "PT30M", 0)], sid="s")
        await deliver(raw, distribute(raw.vtn_id, [
            event("active", now() - timedelta(minutes=1), "PT1H", [price, shed, dispatch], status="active"),
            event("day", soon, "P1D", [simple([1], "P1D")]),
            event("open", soon + timedelta(days=2), "PT0S", [simple([2], "PT0S")], status="near"),
            event("over", now() - timedelta(hours=3), "PT1H", [simple([3])], status="completed"),
            event("off", soon, "PT1H", [simple([3])], status="cancelled", mod=2,
                  head="<ei:modificationReason>forecast changed</ei:modificationReason>"),
            event("quiet", soon, "PT1H", [simple([1])], response_required="never")]))
        # "over" too, though over on arrival (openleadr answered it not): 2.0b rule 62, every event that wants one
        answered = ["active", "day", "off", "open", "over"]
        await until(lambda: sorted(e for e, _, _ in raw.answered) == answered, 5, "answers")
        assert {e: opt for e, _, opt in raw.answered} == dict.fromkeys(answered, "optIn")
        assert ("off", "2", "optIn") in raw.answered
        state = gw.schedule.state()
        assert (state.level, state.active, state.level_event_id) == (2.0, True, "active")
        assert gw.schedule.get("day").end - gw.schedule.get("day").start == timedelta(days=1)
        assert gw.schedule.get("open").open_ended and gw.schedule.get("off").cancelled
        assert [s.name for s in gw.schedule.get("active").signals] == ["ELECTRICITY_PRICE", "SIMPLE", "LOAD_DISPATCH"]

        # an empty program: an eiResponse and no event, every event is over
        await deliver(raw, distribute(raw.vtn_id, [], request_id="d2", response=(
            "<ei:eiResponse><ei:responseCode>200</ei:responseCode><pyld:requestID/></ei:eiResponse>")))
        await until(lambda: gw.schedule.state().level == 0.0, 5, "level 0")
        assert gw.schedule.state().start_minutes == -1.0 and gw.vtn.status()["last_error"] is None
        assert not said(caplog, "error") and not said(caplog, "Traceback")


async def test_numbered_events_vtn_and_ven_are_followed_and_answered_by_their_own_ids(
        tmp_path, free_tcp_port, caplog):
    # IDs are text: openleadr read "1001" as the number 1001, and the gateway took the event as no longer listed
    # (optOut); "0042" was answered as event 42; a vtnID "4711" ended the session at each listing; an event
    # targeting venID "90210" was not for the VEN openleadr knew as 90210
    caplog.set_level(logging.INFO, logger="ven")
    async with raw_gateway(tmp_path, free_tcp_port, vtn_id="4711", ven_id="90210") as (raw, gw):
        assert gw.vtn.ven_id == "90210"
        ours = "<ei:eiTarget><ei:venID>90210</ei:venID></ei:eiTarget>"
        listing = [event("1001", now() - timedelta(minutes=1), "PT1H", [simple([2])], status="active", target=ours),
                   event("0042", now() + timedelta(minutes=10), "PT1H", [simple([1])])]
        await deliver(raw, distribute(raw.vtn_id, listing, request_id="77"))
        await until(lambda: len(raw.answered) >= 2, 5, "the answers")
        await deliver(raw, distribute(raw.vtn_id, listing, request_id="78"))
        await until(lambda: len(raw.answered) >= 4, 5, "the answers to the second listing")
        assert sorted(raw.answered) == [("0042", "0", "optIn")] * 2 + [("1001", "0", "optIn")] * 2
        state = gw.schedule.state()
        assert (state.level, state.level_event_id) == (2.0, "1001")
        assert not gw.schedule.get("1001").cancelled and gw.schedule.get("0042") is not None
        gw.vtn.set_opt_out(True)      # the gateway's own answer, taken by a bare oadrResponse (no description)
        await until(lambda: len(raw.answered) >= 6, 5, "the optOut answers")
        assert sorted(raw.answered[4:]) == [("0042", "0", "optOut"), ("1001", "0", "optOut")]
        await until(lambda: gw.vtn.status()["opt_answers_waiting"] == 0, 5, "the answers taken")
        assert gw.vtn.status()["last_error"] is None and gw.vtn.status()["opt_answer_error"] is None
        assert not said(caplog, "session error")


async def test_an_event_listed_twice_in_one_message_is_followed_once_and_the_others_too(
        tmp_path, free_tcp_port, caplog):
    # openleadr answered the second copy of a cancelled event from the answer it had just dropped (KeyError):
    # optOut to every event of the message, and the events after it never reached the gateway
    caplog.set_level(logging.INFO, logger="ven")
    start = now() + timedelta(minutes=10)
    async with raw_gateway(tmp_path, free_tcp_port) as (raw, gw):
        await deliver(raw, distribute(raw.vtn_id, [event("e1", start, "PT1H", [simple([3])])]))
        await until(lambda: raw.answers("e1") == ["optIn"], 5, "the first answer")
        cancelled = event("e1", start, "PT1H", [simple([3])], status="cancelled", mod=1)
        running_now = event("e2", now() - timedelta(minutes=1), "PT1H", [simple([1])], status="active")
        await deliver(raw, distribute(raw.vtn_id, [cancelled, running_now, cancelled], request_id="d2"))
        await until(lambda: raw.answers("e2"), 5, "the answer to e2")
        assert raw.answered[1:] == [("e1", "1", "optIn"), ("e2", "0", "optIn")]
        assert gw.schedule.get("e1").cancelled and gw.schedule.state().level == 1.0
        assert len(said(caplog, "more than once in one message")) == 1


async def test_date_times_without_a_time_zone_are_read_as_utc(tmp_path, free_tcp_port, caplog):
    # the schema's date-time takes the Z as optional; openleadr passed such a time on as text, and the session
    # ended at each listing of the event (never followed, never answered)
    caplog.set_level(logging.INFO, logger="ven")
    start = now() - timedelta(minutes=1)
    async with raw_gateway(tmp_path, free_tcp_port) as (raw, gw):
        message = distribute(raw.vtn_id, [event("e1", start, "PT1H", [simple([2])], status="active")])
        await deliver(raw, message.replace(b"Z</cal:date-time>", b"</cal:date-time>")
                      .replace(b"Z</ei:createdDateTime>", b"</ei:createdDateTime>"))
        await until(lambda: raw.answers("e1") == ["optIn"], 5, "the answer")
        assert gw.schedule.state().level == 2.0
        assert abs(gw.schedule.get("e1").start - start) < timedelta(milliseconds=1)
        assert gw.vtn.status()["last_error"] is None and not said(caplog, "session error")


def test_a_date_time_with_a_zone_offset_is_not_valid_openadr():
    # what the gateway refuses as schema-invalid is: xcal date-times are UTC or zone-less, never offset
    message = distribute("VTN", [event("e1", now(), "PT1H", [simple([1])])])
    validate_xml_schema(message)
    with pytest.raises(XMLSyntaxError):
        validate_xml_schema(message.replace(b"Z</cal:date-time>", b"+02:00</cal:date-time>", 1))


async def test_intervals_named_by_text_uids_are_followed_in_the_order_written(tmp_path, free_tcp_port, caplog):
    # xcal:uid is text in the 2.0b schema; openleadr read every uid as a number, and a VTN naming its intervals
    # ("int-1") had each poll fail on the message: the event never ran, was never answered, and the gateway
    # re-registered every few polls and then failed to register at all while the VTN listed the event
    caplog.set_level(logging.INFO, logger="ven")
    start = now() - timedelta(minutes=1)
    async with raw_gateway(tmp_path, free_tcp_port) as (raw, gw):
        named = signal([interval(2, "PT10M", "int-1"), interval(3, "PT10M", "int-2"), interval(1, "PT40M", "a")])
        await deliver(raw, distribute(raw.vtn_id, [event("e1", start, "PT1H", [named], status="active"),
                                                   event("e2", now() + timedelta(hours=2), "PT1H", [simple([1])])]))
        await until(lambda: sorted(raw.answered) == [("e1", "0", "optIn"), ("e2", "0", "optIn")], 5, "the answers")
        ev = gw.schedule.get("e1")
        assert [(iv.payload, iv.start - ev.start) for iv in ev.signals[0].intervals] == [
            (2.0, timedelta(0)), (3.0, timedelta(minutes=10)), (1.0, timedelta(minutes=20))]
        assert gw.schedule.state().level == 2.0
        assert gw.vtn.status()["last_error"] is None and gw.vtn.poll_failures == 0
        assert not said(caplog, "could not be read") and not said(caplog, "session error")


async def test_an_interval_without_a_duration_lasts_to_the_next_one_or_the_active_period_end(
        tmp_path, free_tcp_port, caplog):
    # xcal:duration is optional in an ei:interval (2.0b schema); an interval without one was taken to last 0 s: a
    # one-interval event never ran (ADR-Event-Level 0, ADR-Event-Active off for its hour) while the VTN heard optIn,
    # and its log line named an end equal to its start
    caplog.set_level(logging.INFO, logger="ven")
    start = (now() - timedelta(minutes=1)).replace(microsecond=0)    # as the message carries it
    async with raw_gateway(tmp_path, free_tcp_port) as (raw, gw):
        steps = signal([interval(1, None, 0, start=start), interval(2, None, 1, start=start + timedelta(minutes=20))],
                       sid="steps")
        await deliver(raw, distribute(raw.vtn_id, [event("one", start, "PT1H", [simple([3], None)], status="active"),
                                                   event("steps", start, "PT1H", [steps], status="active")]))
        await until(lambda: sorted(raw.answered) == [("one", "0", "optIn"), ("steps", "0", "optIn")], 5, "answers")
        state = gw.schedule.state()
        assert (state.level, state.active, state.level_event_id) == (3.0, True, "one")
        one, stepped = gw.schedule.get("one"), gw.schedule.get("steps")
        assert (one.start, one.end) == (start, start + timedelta(hours=1))
        assert [(iv.start - start, iv.duration, iv.payload) for iv in stepped.signals[0].intervals] == [
            (timedelta(0), timedelta(minutes=20), 1.0), (timedelta(minutes=20), timedelta(minutes=40), 2.0)]
        assert stepped.simple_level(start + timedelta(minutes=30)) == 2.0
        assert len(said(caplog, "without a duration")) == 2, "one warning per event"
        served = raw.served
        await deliver(raw, distribute(raw.vtn_id, [event("one", start, "PT1H", [simple([3], None)], status="active"),
                                                   event("steps", start, "PT1H", [steps], status="active")],
                                      request_id="dist-2"))
        await until(lambda: raw.served > served, 5, "listed again")
        assert len(said(caplog, "without a duration")) == 2, "not again at each listing"


@pytest.mark.parametrize("request_id", ["reg-7", ""], ids=["named", "empty"])
async def test_a_vtn_registering_its_reports_is_answered_with_none_requested(
        tmp_path, free_tcp_port, caplog, request_id):
    # 2.0b report registration goes both ways: a VTN's oadrRegisterReport (its METADATA) waits for an
    # oadrRegisteredReport. The gateway logged it and sent nothing; the VTN may offer it at every poll.
    # An empty requestID (the schema's xs:string allows it) was echoed as the text "None".
    caplog.set_level(logging.INFO, logger="ven")
    async with raw_gateway(tmp_path, free_tcp_port) as (raw, gw):
        await deliver(raw, register_report(gw.vtn.ven_id, request_id=request_id))
        await until(lambda: raw.registered, 5, "the oadrRegisteredReport")
        (answer,) = raw.registered
        assert answer["response"]["response_code"] == 200 and (answer["response"]["request_id"] or "") == request_id
        assert answer["ven_id"] == gw.vtn.ven_id and not answer.get("report_requests")
        assert len(said(caplog, "VTN offered reports")) == 1 and gw.vtn.status()["last_error"] is None


async def test_an_event_listing_with_an_empty_request_id_is_answered_with_it_empty(tmp_path, free_tcp_port):
    # openleadr's template wrote Python's None as the text "None": a requestID the VTN never sent
    async with raw_gateway(tmp_path, free_tcp_port) as (raw, gw):
        await deliver(raw, distribute(raw.vtn_id, [event("e-empty", now() + timedelta(minutes=10), "PT1H",
                                                         [simple([1])])], request_id=""))
        await until(lambda: raw.answers("e-empty") == ["optIn"], 5, "the answer")
        assert raw.answer_request_ids == [""] and not raw.invalid, (raw.answer_request_ids, raw.invalid)
