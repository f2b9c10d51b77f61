"""What a registration settles (the VTN's vtnID, the venID, the poll frequency, the venID the answer must carry) as the
operator reads it in the log and the status, against a real openleadr VTN (DemoVtn) on loopback."""
from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from test_vtn import now, running, said
from waiting import eventually as until

from ven.vtn_server import DemoVtn
from ven.vtn_transport import poll_period

# its tests wait on the VTN's 10 s poll period (24 s of wall for 0.4 s of CPU): as the last file in alphabetical order
# among those not so marked, its 20 s test ended both full runs of session 53 alone
pytestmark = pytest.mark.mostly_waiting


def registration_answers_without(server: DemoVtn, key: str):
    """The VTN's oadrCreatedPartyRegistration leaves `key` out (the schema lets it); returns what puts it back."""
    handlers = server._server.services["registration_service"].handlers
    real = handlers["oadrCreatePartyRegistration"]

    async def without(payload):
        message_type, answer = await real(payload)
        return message_type, {k: v for k, v in answer.items() if k != key}
    handlers["oadrCreatePartyRegistration"] = without
    return lambda: handlers.__setitem__("oadrCreatePartyRegistration", real)


@pytest.mark.timeout(40)
async def test_a_vtn_restarted_with_another_vtn_id_and_poll_frequency_is_said_at_the_registration_after_it(
        tmp_path, free_tcp_port, caplog):
    # A registration during an outage repeats what the first one said, and is DEBUG: the registration with a VTN
    # restarted under another vtnID, asking for another poll frequency, said neither, and the operator kept reading
    # the old ones in the log (the gateway polled every 3 s, the log said 1 s)
    caplog.set_level(logging.INFO, logger="ven")
    port = free_tcp_port()
    server = DemoVtn(port, poll_seconds=1, vtn_id="VTN-A")
    await server.start()
    try:
        async with running(tmp_path, server.url) as gw:
            await until(lambda: gw.vtn.connected and gw.vtn.status()["report_request_id"], 10, "registration")
            first = gw.vtn.registration_id
            assert said(caplog, "registered with VTN") == [
                f"registered with VTN {server.url} (vtnID VTN-A): venID ven-edge-gateway, registrationID {first}, "
                "poll every 1 s, telemetry requested"]
            await server.stop()
            await until(lambda: not gw.vtn.connected, 5, "a failed poll")
            gw.vtn.record_sample(now() - timedelta(seconds=1), 12.5)
            server = DemoVtn(port, poll_seconds=3, vtn_id="VTN-B")      # restarted: it knows no VEN
            await server.start()
            await until(lambda: gw.vtn.connected and gw.vtn.vtn_id == "VTN-B", 15, "registered with the restarted VTN")
            await until(lambda: 12.5 in [r[4] for r in server.reports], 8, "the reading queued meanwhile")
            lines = said(caplog, "registered with VTN")
            assert len(lines) == 2 and lines[1] == (
                f"registered with VTN {server.url} (vtnID VTN-B): venID ven-edge-gateway, registrationID "
                f"{gw.vtn.registration_id}, poll every 3 s, telemetry requested"), lines
    finally:
        await server.stop()


@pytest.mark.timeout(30)
async def test_a_vtn_asking_for_polls_under_a_second_reads_as_the_period_polled_at(tmp_path, free_tcp_port, caplog):
    # openleadr writes a VTN's 0.5 s as "P" (and reads "PT0.5S" as 0): the line said "poll every 0.0 s" while the
    # gateway polled every second, its shortest
    caplog.set_level(logging.INFO, logger="ven")
    async with DemoVtn(free_tcp_port(), poll_seconds=0.5) as server:
        async with running(tmp_path, server.url) as gw:
            await until(lambda: gw.vtn.connected and gw.vtn.status()["report_request_id"], 10, "registration")
            assert said(caplog, "registered with VTN") == [
                f"registered with VTN {server.url} (vtnID {server.vtn_id}): venID ven-edge-gateway, registrationID "
                f"{gw.vtn.registration_id}, poll every 1 s (the VTN asked for 0 s; the gateway polls at most once a "
                f"second), telemetry requested"]


@pytest.mark.timeout(30)
async def test_a_registration_answer_without_a_ven_id_is_a_failed_registration_that_says_so(
        tmp_path, free_tcp_port, caplog):
    # The schema lets oadrCreatedPartyRegistration leave the venID out (for a query's answer). A VTN leaving it out of
    # its registration answer registered the gateway without one: each message then named no VEN, the VTN asked to
    # register again, and the log blamed a VTN that "no longer knows this VEN", registering again every second
    caplog.set_level(logging.INFO, logger="ven")
    async with DemoVtn(free_tcp_port(), poll_seconds=1) as server:
        put_back = registration_answers_without(server, "ven_id")
        async with running(tmp_path, server.url) as gw:
            await until(lambda: gw.vtn.registration_failures >= 3, 10, "registrations refused for the missing venID")
            status = gw.vtn.status()
            assert status["last_error"] == "VTN registration answer carries no venID: not registered"
            assert not status["connected"] and status["ven_id"] is None and status["reregistrations"] == 0
            assert [m for m in said(caplog, "VTN") if "no longer knows" in m] == []
            assert said(caplog, "VTN registration failed") == [
                "VTN registration failed: VTN registration answer carries no venID: not registered; retrying (backoff "
                "up to 1 s)"]
            assert not said(caplog, "another cause"), "one line however often it is retried"
            put_back()
            await until(lambda: gw.vtn.connected, 10, "registered once the answer names the venID")
            assert gw.vtn.ven_id == "ven-edge-gateway" and gw.vtn.status()["last_error"] is None


@pytest.mark.timeout(30)
async def test_a_vtn_asking_for_polls_days_apart_is_polled_daily_and_reads_in_whole_seconds(
        tmp_path, free_tcp_port, caplog):
    # the line printed the period with %g, six digits: a VTN asking for P14D read "poll every 1.2096e+06 s"; and the
    # gateway polled that far apart, so an event (or its cancellation) sent the day after reached the site 13 days
    # late (openleadr's own client polls at least daily)
    caplog.set_level(logging.INFO, logger="ven")
    async with DemoVtn(free_tcp_port(), poll_seconds=14 * 86400) as server:
        async with running(tmp_path, server.url) as gw:
            await until(lambda: said(caplog, "registered with VTN"), 10, "registration")
            [line] = said(caplog, "registered with VTN")
            assert (f"registrationID {gw.vtn.registration_id}, poll every 86400 s (the VTN asked for 1209600 s; the "
                    "gateway polls at least once a day), telemetry") in line, line
            assert poll_period(gw.vtn._client) == 86400


@pytest.mark.timeout(30)
async def test_a_vtn_asking_for_no_poll_period_reads_as_openleadrs_default(tmp_path, free_tcp_port, caplog):
    # oadrRequestedOadrPollFreq may be left out; openleadr then polls every 10 s, and the line read "poll every 10 s"
    # as if the VTN had asked for it: the engineer looking for a 10 s setting at the utility would find none
    caplog.set_level(logging.INFO, logger="ven")
    async with DemoVtn(free_tcp_port(), poll_seconds=1) as server:
        registration_answers_without(server, "requested_oadr_poll_freq")
        async with running(tmp_path, server.url) as gw:
            await until(lambda: said(caplog, "registered with VTN"), 10, "registration")
            [line] = said(caplog, "registered with VTN")
            assert (f"registrationID {gw.vtn.registration_id}, poll every 10 s (the VTN asked for no period: "
                    "openleadr's default), telemetry") in line, line


@pytest.mark.timeout(60)
async def test_a_vtn_that_names_the_poll_period_it_left_out_before_is_said_at_the_registration_after_it(
        tmp_path, free_tcp_port, caplog):
    # A registration during an outage is DEBUG when its terms are those said last; a VTN that had left the period out
    # (openleadr's 10 s) and, restarted, asks for PT10S settled the same (vtnID, venID, period): the operator kept
    # reading "the VTN asked for no period" in the log
    caplog.set_level(logging.INFO, logger="ven")
    port = free_tcp_port()
    server = DemoVtn(port, poll_seconds=10)
    registration_answers_without(server, "requested_oadr_poll_freq")
    await server.start()
    try:
        async with running(tmp_path, server.url) as gw:
            await until(lambda: gw.vtn.connected and gw.vtn.status()["report_request_id"], 10, "registration")
            [line] = said(caplog, "registered with VTN")
            assert "poll every 10 s (the VTN asked for no period: openleadr's default)" in line, line
            await server.stop()
            await until(lambda: not gw.vtn.connected, 15, "a failed poll")
            server = DemoVtn(port, poll_seconds=10)     # restarted: it knows no VEN, and names the period
            await server.start()
            await until(lambda: gw.vtn.connected and gw.vtn.registration_id, 20, "registered with the restarted VTN")
            await until(lambda: len(said(caplog, "registered with VTN")) == 2, 5, "the registration said")
            assert said(caplog, "registered with VTN")[1] == (
                f"registered with VTN {server.url} (vtnID {server.vtn_id}): venID ven-edge-gateway, registrationID "
                f"{gw.vtn.registration_id}, poll every 10 s, telemetry requested")
    finally:
        await server.stop()
