"""OpenADR 2.0b message-level rules, checked on what a real openleadr VTN (DemoVtn) on loopback receives:
the registration's flags, the METADATA report's buffered-history duration, each report's eiReportID, the
requestID each eventResponse names, and the acknowledgement a VTN with a lower-case vtnID gets."""
from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from datetime import timedelta

import pytest
from test_vtn import now, running
from waiting import eventually as until

from ven.vtn_server import DemoVtn

pytestmark = pytest.mark.mostly_waiting


@asynccontextmanager
async def _running(tmp_path, port, vtn_id="DEMO-VTN", **cfg):
    async with DemoVtn(port, poll_seconds=1, vtn_id=vtn_id) as server:
        async with running(tmp_path, server.url, **cfg) as gw:
            await until(lambda: gw.vtn.connected, 10, "registration")
            yield server, gw.vtn


def _answers(server: DemoVtn, event_id: str) -> list[tuple[str, str, int]]:
    """(requestID, optType, eiResponse code) of every eventResponse the VTN got for the event."""
    return [(r["request_id"], r["opt_type"], int(p["response"]["response_code"]))
            for p in server.created_events for r in p.get("event_responses") or [] if r["event_id"] == event_id]


@pytest.mark.timeout(30)
async def test_an_opt_change_names_the_distribute_event_that_carried_the_event(tmp_path, free_tcp_port):
    """Rule 42: an eventResponse carries the requestID of the oadrDistributeEvent. openleadr's answer on
    arrival does; the gateway's own later answer (ADR-Opt-Out) carried a fresh id no VTN could match."""
    async with _running(tmp_path, free_tcp_port()) as (server, vtn):
        eid = server.add_event([1], now() + timedelta(seconds=60), 60)
        await until(lambda: len(_answers(server, eid)) == 1, 10, "the answer on arrival")
        vtn.set_opt_out(True)
        await until(lambda: len(_answers(server, eid)) == 2, 10, "the optOut")
        (on_arrival, opt_in, _), (later, opt_out, _) = _answers(server, eid)
        assert (opt_in, opt_out) == ("optIn", "optOut")
        assert on_arrival and later == on_arrival


@pytest.mark.timeout(30)
async def test_a_vtn_with_a_lower_case_vtn_id_gets_its_events_acknowledged_200(tmp_path, free_tcp_port):
    """vtnID is any string; openleadr answered every event of a lower-case one with eiResponse 452."""
    async with _running(tmp_path, free_tcp_port(), vtn_id="utility-vtn") as (server, vtn):
        eid = server.add_event([2], now() + timedelta(seconds=60), 60)
        await until(lambda: _answers(server, eid), 10, "the answer")
        assert _answers(server, eid)[0][1:] == ("optIn", 200)
        assert getattr(vtn, "vtn_id", None) == "utility-vtn"   # as the VTN gave it at registration
        assert vtn._schedule.get(eid) is not None     # and followed as any other


@pytest.mark.timeout(30)
async def test_registration_says_pull_model_no_transport_address_and_no_signature_without_a_certificate(
        tmp_path, free_tcp_port):
    async with _running(tmp_path, free_tcp_port()) as (server, vtn):
        (reg,) = server.registration_requests
        assert (reg["profile_name"], reg["transport_name"]) == ("2.0b", "simpleHttp")
        assert reg["http_pull_model"] is True and reg["report_only"] is False
        assert reg["xml_signature"] is False           # no openadr.cert: messages are not signed
        assert "transport_address" not in reg   # a pull VEN has none (was the text "None", then an empty element)


@pytest.mark.timeout(30)
async def test_a_requested_reregistration_names_the_registration_it_renews(tmp_path, free_tcp_port):
    """oadrCreatePartyRegistration carries registrationID "for re-registering an existing registration"
    (2.0b schema): after oadrRequestReregistration it names the old one; the first registration names none."""
    async with _running(tmp_path, free_tcp_port()) as (server, vtn):
        first = vtn.registration_id
        server.request_reregistration(vtn.ven_id)
        await until(lambda: server.registrations == 2 and vtn.connected, 10, "registered again")
        assert [r.get("registration_id") for r in server.registration_requests] == [None, first]


@pytest.mark.timeout(30)
async def test_the_metadata_report_says_how_much_history_the_queue_buffers(tmp_path, free_tcp_port):
    """A METADATA report's duration is the history the VEN can buffer: openadr.queue_max_days, not the
    sampling period (PT1S told a VTN there was nothing to ask for after an outage)."""
    async with _running(tmp_path, free_tcp_port(), queue_max_days=3) as (server, vtn):
        await until(lambda: server.report_metadata, 10, "the offer")
        assert {m["duration"] for m in server.report_metadata} == {timedelta(days=3)}


@pytest.mark.timeout(30)
async def test_each_telemetry_report_has_its_own_ei_report_id(tmp_path, free_tcp_port):
    """eiReportID names the report instance; openleadr's template sent it empty in every oadrUpdateReport."""
    async with _running(tmp_path, free_tcp_port()) as (server, vtn):
        await until(lambda: vtn.status()["report_request_id"], 10, "the telemetry request")
        for n in (1, 2):
            vtn.record_sample(now(), 100.0 + n)
            await until(lambda: len(server.report_ids) >= n, 10, f"telemetry report {n}")
        ids = list(server.report_ids)
        assert all(ids) and len(set(ids)) == len(ids), ids


@pytest.mark.timeout(30)
async def test_an_event_list_from_another_vtn_id_is_refused_and_not_followed(tmp_path, free_tcp_port, caplog):
    """Rule 21: an ID in a payload that is not the expected one is an error. Followed, a list naming another
    vtnID set the level of a VTN the VEN is not registered with, and cancelled the registered VTN's events."""
    caplog.set_level(logging.INFO, logger="ven")
    async with _running(tmp_path, free_tcp_port()) as (server, vtn):
        ours = server.add_event([1], now() + timedelta(seconds=60), 60)
        await until(lambda: vtn._schedule.get(ours) is not None, 10, "the registered VTN's event")
        services = [server._server.services[name] for name in ("poll_service", "event_service")]
        for service in services:
            service.vtn_id = "OTHER-VTN"       # its event lists now name another vtnID; its registrations do not
        theirs = server.add_event([3], now() + timedelta(seconds=60), 60)
        await until(lambda: [p for p in server.created_events if int(p["response"]["response_code"]) == 452],
                    10, "the refusal")
        refusal = next(p for p in server.created_events if int(p["response"]["response_code"]) == 452)
        assert "OTHER-VTN" in refusal["response"]["response_description"] and not refusal.get("event_responses")
        # registered again once, in case the VTN's own vtnID changed: it had not, and the lists stay refused
        await until(lambda: vtn.reregistrations == 1 and vtn.connected, 10, "one registration again")
        await until(lambda: len([p for p in server.created_events if int(p["response"]["response_code"]) == 452]) >= 2,
                    10, "the list refused after it too")
        assert vtn._schedule.get(theirs) is None, "not followed"
        assert not vtn._schedule.get(ours).cancelled, "and its list cancelled nothing"
        for service in services:
            service.vtn_id = server.vtn_id
        server._touch()
        await until(lambda: vtn._schedule.get(theirs) is not None, 10, "taken once the registered VTN lists it")
        said = [r.getMessage() for r in caplog.records if "oadrDistributeEvent from" in r.getMessage()]
        assert len(said) == 2 and "vtnID 'OTHER-VTN', not 'DEMO-VTN'" in said[0] and "again" in said[1]
        assert vtn.reregistrations == 1
        assert not [r for r in caplog.records if "registration lost" in r.getMessage() and r.levelno >= logging.INFO]


@pytest.mark.timeout(30)
async def test_a_vtn_that_changed_its_vtn_id_keeping_registrations_has_its_events_followed(
        tmp_path, free_tcp_port, caplog):
    """A VTN reinstalled under another vtnID that kept its registrations: every event list was refused 452 (rule 21)
    for as long as the gateway ran, shown connected, one WARNING in the log, the building never shed."""
    caplog.set_level(logging.INFO, logger="ven")
    async with _running(tmp_path, free_tcp_port()) as (server, vtn):
        for service in server._server.services.values():
            service.vtn_id = "VTN-NEW"
        eid = server.add_event([2], now() + timedelta(seconds=60), 60)
        await until(lambda: vtn._schedule.get(eid) is not None, 15, "the event followed")
        assert vtn.vtn_id == "VTN-NEW" and vtn.reregistrations == 1
        said = [(r.levelno, r.getMessage()) for r in caplog.records if r.levelno >= logging.INFO
                and ("vtnID" in r.getMessage() or "registration lost" in r.getMessage())]
        assert [level for level, _ in said] == [logging.INFO, logging.WARNING, logging.INFO], said
        assert said[1][1].startswith("oadrDistributeEvent from vtnID 'VTN-NEW', not 'DEMO-VTN'") and \
            said[1][1].endswith("registering again, in case the VTN's vtnID changed"), said
        assert "(vtnID VTN-NEW)" in said[2][1], said


@pytest.mark.timeout(40)
async def test_names_with_xml_markup_reach_the_vtn_escaped_and_as_they_were(tmp_path, free_tcp_port):
    """Every string is text on the wire: openleadr's templates did not escape, so an eventID "CPP&DR-1" (schema-valid
    as the VTN sent it) came back in a malformed oadrCreatedEvent, refused at every poll, and the utility never heard
    the optIn; a ven_name "Smith & Sons" never registered (helper sec39 W1). The venID the demo VTN makes of the
    ven_name carries the markup into every message the VEN sends."""
    name = 'Smith & Sons <"east\'s">'
    async with _running(tmp_path, free_tcp_port(), ven_name=name) as (server, vtn):
        (reg,) = server.registration_requests
        assert reg["ven_name"] == name and "&" in vtn.ven_id
        eid = server.add_event([1], now() + timedelta(seconds=60), 60, event_id="CPP&DR-1 <x>")
        await until(lambda: _answers(server, eid), 10, "the answer")
        assert _answers(server, eid)[0][1:] == ("optIn", 200)
        rrid = server.create_report(vtn.ven_id, timedelta(seconds=1), timedelta(seconds=1),
                                    report_request_id='rr&1 <"b">')
        await until(lambda: vtn.status()["report_request_id"] == rrid, 10, "the request taken")


        async def reported():
            while not any(r == rrid for r, _ in server.updates):
                vtn.record_sample(now(), 100.0)     # an interval is complete once a reading of the next one came
                await asyncio.sleep(0.3)
        await asyncio.wait_for(reported(), 10)
        vtn.set_opt_out(True)
        await until(lambda: [o for _, o, _ in _answers(server, eid)][-1:] == ["optOut"], 10, "the optOut")
