"""DeviceCommunicationControl and ReinitializeDevice, asked by a second real bacpypes3 stack on loopback
as a BAS or a technician's tool would: nobody silences, restarts or stops the gateway without the
configured password, and a disable it honours is logged, bounded and shown."""
from __future__ import annotations

import asyncio
import io
import logging
import re

import pytest
from bacpypes3.apdu import (
    DeviceCommunicationControlRequest,
    ErrorPDU,
    ErrorRejectAbortNack,
    ReinitializeDeviceRequest,
    RejectPDU,
    SimpleAckPDU,
)
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import CharacterString, ObjectIdentifier

from bacnet_api import services
from bacnet_api.device import GatewayDevice
from bacnet_api.meter import MeterClient
from bacnet_api.points import EVENT_LEVEL
from bacnet_api.simulator import MeterSimulator
from bacnet_peer import BacnetPeer
from test_bacnet_device import DEVICE_ID, gateway, peer, where  # noqa: F401 - shared fixtures
from test_bacnet_services import errors_logged, notification, request
from test_meter import read_until_steady
from ven.logs import FloodGuard
from waiting import eventually

pytestmark = pytest.mark.timeout(60)

PASSWORD = "Dr-3vent!"


def dcc(addr: str, mode: str, password: str | None = None, minutes: int | None = None):
    apdu = DeviceCommunicationControlRequest(enableDisable=mode, destination=Address(addr))
    if password is not None:
        apdu.password = CharacterString(password)
    if minutes is not None:
        apdu.timeDuration = minutes
    return apdu


def error_of(answer) -> str:
    assert isinstance(answer, ErrorPDU), answer
    return f"{answer.errorClass}/{answer.errorCode}"


def ours(caplog, level: int | None = None) -> list:
    return [r for r in caplog.records if r.name.startswith("bacnet_api")
            and (level is None or r.levelno == level)]


async def initiates(device: GatewayDevice, peer: BacnetPeer) -> bool:
    """Whether the gateway's own stack still sends requests: it reads the peer's device name."""
    try:
        async with asyncio.timeout(3):
            name = await device.app.read_property(Address(peer.address.replace("/8", "")),
                                                  ObjectIdentifier(f"device,{peer.device_id}"), "objectName")
        return str(name) == f"test-peer-{peer.device_id}"
    except (Exception, ErrorRejectAbortNack):
        return False


async def who_has(peer: BacnetPeer, addr: str, name: str) -> list:
    i_haves = await asyncio.wait_for(peer.app.who_has(object_name=CharacterString(name), address=Address(addr),
                                                      timeout=1), 3)
    return [(i.deviceIdentifier[1], str(i.objectName)) for i in i_haves]


@pytest.fixture
async def guarded(free_udp_port):
    device = GatewayDevice(address=f"127.0.0.1/8:{free_udp_port()}", device_id=DEVICE_ID,
                           device_name="TestGateway", dcc_password=PASSWORD)
    await device.start()
    try:
        yield device
    finally:
        await device.stop()


@pytest.mark.parametrize("mode", ["disableInitiation", "disable"])
@pytest.mark.parametrize("password", [None, "anything"], ids=["no-password", "some-password"])
async def test_without_a_configured_password_nobody_disables_communication(gateway, peer, caplog, mode, password):
    caplog.set_level(logging.INFO)
    addr = where(gateway)
    answer = await request(peer, dcc(addr, mode, password))
    assert error_of(answer) == "services/service-request-denied"
    assert gateway.communication() == {"mode": "enable"}
    # the gateway still answers and still initiates
    assert await peer.read(addr, "analogValue 4", "presentValue") == 0.0
    assert await initiates(gateway, peer)
    lines = ours(caplog, logging.WARNING)
    assert len(lines) == 1, lines
    assert mode in lines[0].getMessage() and "127.0.0.1:" in lines[0].getMessage()
    assert "dcc_password" in lines[0].getMessage() or "deprecated" in lines[0].getMessage()
    assert not errors_logged(caplog)
    # enable only restores: it is taken from anyone
    assert isinstance(await request(peer, dcc(addr, "enable")), SimpleAckPDU)


@pytest.mark.parametrize("password", [None, "wrong", PASSWORD.lower()], ids=["none", "wrong", "wrong-case"])
async def test_a_wrong_password_is_a_password_failure(guarded, peer, caplog, password):
    caplog.set_level(logging.INFO)
    answer = await request(peer, dcc(where(guarded), "disableInitiation", password, minutes=5))
    assert error_of(answer) == "security/password-failure"
    assert guarded.communication() == {"mode": "enable"}
    assert await initiates(guarded, peer)
    lines = ours(caplog, logging.WARNING)
    assert len(lines) == 1 and "password-failure" in lines[0].getMessage(), lines
    assert PASSWORD not in caplog.text  # the secret is never logged
    assert not errors_logged(caplog)


@pytest.mark.parametrize("password", [None, "wrong"], ids=["no-password", "wrong-password"])
async def test_enable_takes_the_password_too_once_one_is_set(guarded, peer, caplog, password):
    """The password guards the service, not one mode of it (clause 16.1.1.1.3, 16.1.2): an enable with a wrong or
    no password was acknowledged, ending a disable the site's technician set, and an ack told a guesser the password
    was right without the log saying so."""
    caplog.set_level(logging.INFO)
    addr = where(guarded)
    assert isinstance(await request(peer, dcc(addr, "disableInitiation", PASSWORD, minutes=5)), SimpleAckPDU)
    answer = await request(peer, dcc(addr, "enable", password))
    assert error_of(answer) == "security/password-failure"
    assert guarded.communication()["mode"] == "disableInitiation"    # the disable stands
    assert not await initiates(guarded, peer)
    refused = [r.getMessage() for r in ours(caplog, logging.WARNING) if "refused" in r.getMessage()]
    assert len(refused) == 1 and "enable" in refused[0] and "password-failure" in refused[0], refused
    # with the password it ends the disable, as before
    assert isinstance(await request(peer, dcc(addr, "enable", PASSWORD)), SimpleAckPDU)
    assert guarded.communication() == {"mode": "enable"}
    assert await initiates(guarded, peer)
    assert PASSWORD not in caplog.text
    assert not errors_logged(caplog)


async def test_a_password_guesser_gets_one_line_in_the_operator_log(guarded, peer, caplog):
    # each refusal was a WARNING line: anyone on the BACnet network could fill the disk with the log
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(FloodGuard())
    logging.getLogger().addHandler(handler)
    try:
        for guess in ("a", "b", "c", "d", "e"):
            answer = await request(peer, dcc(where(guarded), "disableInitiation", guess, minutes=5))
            assert error_of(answer) == "security/password-failure"   # each one is still refused on the wire
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [line for line in out.getvalue().splitlines() if "DeviceCommunicationControl" in line]
    assert len(lines) == 1 and "password-failure" in lines[0] and "repeats are counted" in lines[0], lines
    assert guarded.communication() == {"mode": "enable"}


async def test_disable_is_refused_even_with_the_password(guarded, peer, caplog):
    # DISABLE (answer nothing) is deprecated since Protocol_Revision 20; the device says 22
    addr = where(guarded)
    assert await peer.read(addr, f"device {DEVICE_ID}", "protocolRevision") >= 20
    answer = await request(peer, dcc(addr, "disable", PASSWORD))
    assert error_of(answer) == "services/service-request-denied"
    assert await peer.read(addr, "analogValue 4", "presentValue") == 0.0
    assert await initiates(guarded, peer)
    assert guarded.communication() == {"mode": "enable"}


async def test_disable_initiation_with_the_password_is_honoured_logged_and_times_out(
        guarded, peer, free_udp_port, caplog, monkeypatch):
    monkeypatch.setattr(services, "DCC_MINUTE_SECONDS", 1.5)  # a "minute" of timeDuration, shortened
    caplog.set_level(logging.INFO)
    addr = where(guarded)
    async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=42.5) as sim:
        meter = MeterClient(guarded, address=sim.meter_address, object="analogInput 2",
                            router=sim.router_address, timeout_seconds=1.0, settle_seconds=0.2)
        assert (await meter.read_once()).value == 42.5
        guarded.set(EVENT_LEVEL, 2)

        answer = await request(peer, dcc(addr, "disableInitiation", PASSWORD, minutes=2))
        assert isinstance(answer, SimpleAckPDU), answer
        state = guarded.communication()
        assert state["mode"] == "disableInitiation" and state["by"] == peer.address.replace("/8", "")
        assert state["minutes"] == 2 and state["until"] and state["since"]

        # the BAS still reads the demand-response point and still finds the device (I-Am is allowed)
        assert await peer.read(addr, "analogValue 4", "presentValue") == 2.0
        assert [i.iAmDeviceIdentifier[1] for i in await peer.who_is(addr, wait=1.0)] == [DEVICE_ID]
        # but I-Am in answer to Who-Is is all it initiates (clause 16.1): a Who-Has gets no I-Have
        assert await who_has(peer, addr, EVENT_LEVEL) == []
        # the gateway initiates nothing: a meter read fails at once, saying why, and never hangs
        for _ in range(3):
            started = asyncio.get_running_loop().time()
            reading = await meter.read_once()
            assert reading.value is None and "DeviceCommunicationControl" in reading.error
            assert asyncio.get_running_loop().time() - started < 0.5
        assert meter.fault is True
        assert not await initiates(guarded, peer)

        # it ends by itself after its duration
        await eventually(lambda: guarded.communication() == {"mode": "enable"}, 8)
        assert await initiates(guarded, peer)
        assert await who_has(peer, addr, EVENT_LEVEL) == [(DEVICE_ID, EVENT_LEVEL)]
        assert (await meter.read_once()).value == 42.5 and meter.fault is False
        await read_until_steady(meter)

    dcc_lines = [r for r in ours(caplog) if r.name == "bacnet_api.services"]
    assert [r.levelno for r in dcc_lines] == [logging.WARNING, logging.INFO], dcc_lines
    started, ended = (r.getMessage() for r in dcc_lines)
    assert peer.address.replace("/8", "") in started and "disableInitiation" in started and "2 min" in started
    assert "ran out" in ended
    meter_lines = [r for r in ours(caplog) if r.name == "bacnet_api.meter" and r.levelno >= logging.INFO]
    assert [r.levelno for r in meter_lines] == [logging.WARNING, logging.INFO], meter_lines
    assert "DeviceCommunicationControl" in meter_lines[0].getMessage()
    assert PASSWORD not in caplog.text
    assert not errors_logged(caplog)


async def test_enable_ends_an_indefinite_disable_and_cov_notifications_resume(guarded, peer, caplog):
    caplog.set_level(logging.INFO)
    addr = where(guarded)
    async with peer.app.change_of_value(Address(addr), ObjectIdentifier("analogValue,4"), 77, True, 60) as scm:
        assert (await notification(scm))["present-value"] == 0.0  # the initial notification
        answer = await request(peer, dcc(addr, "disableInitiation", PASSWORD))  # no duration: until enabled
        assert isinstance(answer, SimpleAckPDU), answer
        assert guarded.communication()["until"] is None
        guarded.set(EVENT_LEVEL, 3)  # a confirmed notification the gateway must not send now
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(scm.get_value(), 1.0)
        assert await peer.read(addr, "analogValue 4", "presentValue") == 3.0

        assert isinstance(await request(peer, dcc(addr, "enable", PASSWORD)), SimpleAckPDU)
        assert guarded.communication() == {"mode": "enable"}
        guarded.set(EVENT_LEVEL, 1)
        assert (await notification(scm))["present-value"] == 1.0
    lines = [r for r in ours(caplog) if r.name == "bacnet_api.services"]
    assert [r.levelno for r in lines] == [logging.WARNING, logging.INFO], lines
    assert "no time limit" in lines[0].getMessage()
    assert "enabled by DeviceCommunicationControl" in lines[1].getMessage()
    assert re.match(r"BACnet communication initiation enabled again after \d+ s: ", lines[1].getMessage())
    # the notification not sent is not blamed on the subscriber
    assert not [r for r in ours(caplog) if "COV subscriber" in r.getMessage()]
    assert not errors_logged(caplog)


async def test_a_repeated_disable_is_one_fault_with_a_new_end(guarded, peer, caplog):
    # a BAS that sends its disable again (to extend it) does not start a second fault
    caplog.set_level(logging.INFO)
    addr = where(guarded)
    assert isinstance(await request(peer, dcc(addr, "disableInitiation", PASSWORD, minutes=5)), SimpleAckPDU)
    first = guarded.communication()
    await asyncio.sleep(1.1)  # the times are to the second
    assert isinstance(await request(peer, dcc(addr, "disableInitiation", PASSWORD)), SimpleAckPDU)
    renewed = guarded.communication()
    assert renewed["since"] == first["since"] and first["until"] and renewed["until"] is None
    assert isinstance(await request(peer, dcc(addr, "enable", PASSWORD)), SimpleAckPDU)
    lines = [r for r in ours(caplog) if r.name == "bacnet_api.services"]
    assert [r.levelno for r in lines] == [logging.WARNING, logging.INFO, logging.INFO], lines
    assert "renewed" in lines[1].getMessage() and "no time limit" in lines[1].getMessage()
    assert not errors_logged(caplog)


@pytest.mark.parametrize("state", ["coldstart", "warmstart", "startBackup", "activateChanges"])
@pytest.mark.parametrize("configured, sent", [(False, False), (True, False), (True, True)],
                         ids=["no-dcc-password", "dcc-password-not-sent", "dcc-password-sent"])
async def test_reinitialize_device_is_refused_and_logged(free_udp_port, peer, caplog, state, configured, sent):
    caplog.set_level(logging.INFO)
    device = GatewayDevice(address=f"127.0.0.1/8:{free_udp_port()}", device_id=DEVICE_ID, device_name="TestGateway",
                           **({"dcc_password": PASSWORD} if configured else {}))
    await device.start()
    try:
        addr = where(device)
        apdu = ReinitializeDeviceRequest(reinitializedStateOfDevice=state, destination=Address(addr))
        if sent:
            apdu.password = CharacterString(PASSWORD)
        answer = await request(peer, apdu)
        assert isinstance(answer, RejectPDU) and str(answer.apduAbortRejectReason) == "unrecognized-service", answer
        lines = ours(caplog, logging.WARNING)
        assert len(lines) == 1 and "ReinitializeDevice" in lines[0].getMessage() and state in lines[0].getMessage()
        assert peer.address.replace("/8", "") in lines[0].getMessage()
        # nothing restarted or stopped: it answers and initiates as before
        assert device.running
        assert await peer.read(addr, "analogValue 4", "presentValue") == 0.0
        assert await initiates(device, peer)
    finally:
        await device.stop()
    assert PASSWORD not in caplog.text
    assert not errors_logged(caplog)


async def test_a_stopped_device_leaves_no_time_out_behind(guarded, peer, monkeypatch, caplog):
    monkeypatch.setattr(services, "DCC_MINUTE_SECONDS", 0.3)
    caplog.set_level(logging.INFO)
    answer = await request(peer, dcc(where(guarded), "disableInitiation", PASSWORD, minutes=1))
    assert isinstance(answer, SimpleAckPDU)
    await guarded.stop()
    assert guarded.communication() == {"mode": "enable"}
    await asyncio.sleep(0.6)  # the time-out would have fired by now
    assert not [r for r in ours(caplog, logging.INFO) if "enabled again" in r.getMessage()]
    await guarded.start()  # a restarted device initiates
    assert guarded.communication() == {"mode": "enable"}
    assert await initiates(guarded, peer)
    assert not errors_logged(caplog)


@pytest.mark.timeout(60)
async def test_the_whole_gateway_while_initiation_is_disabled(tmp_path, free_udp_port, free_tcp_port, caplog):
    """Measured end to end: /api/status shows who disabled initiation; the meter faults once, at once; the
    forecaster, fed by the meter here, goes stale as with a silent meter and nothing crashes; enable ends it."""
    import aiohttp

    from ven.app import Gateway
    from ven.config_load import parse_config

    caplog.set_level(logging.INFO)
    sim_port, http_port = free_udp_port(), free_tcp_port()
    cfg = parse_config({
        "bacnet": {"address": f"127.0.0.1/8:{free_udp_port()}", "device_id": 500004, "dcc_password": PASSWORD},
        "meter": {"router": f"127.0.0.1:{sim_port}", "poll_seconds": 0.5, "timeout_seconds": 1.0,
                  "settle_seconds": 0.5},
        "openadr": {"vtn_url": f"http://127.0.0.1:{free_tcp_port()}/OpenADR2/Simple/2.0b"},
        "storage": {"path": str(tmp_path / "gw.sqlite")},
        "http": {"address": f"127.0.0.1:{http_port}"},
        "forecaster": {"cycle_seconds": 0.2, "source": "meter", "input_stale_seconds": 3},
    }, "test", environ={})
    gw = cfg.bacnet.address.replace("/8", "")
    async with MeterSimulator(f"127.0.0.1/8:{sim_port}", value=87.5):
        gateway = Gateway(cfg)
        await gateway.start()
        try:
            async with BacnetPeer(free_udp_port()) as bas, \
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
                async def status() -> dict:
                    async with http.get(f"{gateway.http.url}/api/status") as r:
                        assert r.status == 200
                        return await r.json()

                await eventually(lambda: gateway.meter.last_good is not None and not stale_points(gateway, any), 15)
                assert (await status())["device"]["communication"] == {"mode": "enable"}

                answer = await request(bas, dcc(gw, "disableInitiation", PASSWORD))
                assert isinstance(answer, SimpleAckPDU), answer
                await eventually(lambda: gateway.meter.fault, 5)
                body = await status()
                assert body["device"]["communication"]["mode"] == "disableInitiation"
                assert body["device"]["communication"]["by"] == bas.address.replace("/8", "")
                assert body["device"]["communication"]["until"] is None
                assert "DeviceCommunicationControl" in body["meter"]["last_error"]
                assert PASSWORD not in str(body)
                # the BAS still reads the gateway; the forecaster goes stale, as with a silent meter
                assert await bas.read(gw, "analogValue 6", "presentValue") == pytest.approx(87.5)
                await eventually(lambda: gateway.forecast.status()["input_stale"] is True, 8)
                await eventually(lambda: stale_points(gateway), 3)
                # up (a restart would only end the disable early), and saying what it cannot do
                ok, text = gateway.health()
                assert ok and "BACnet communication initiation disabled by" in text and "meter fault" in text

                assert isinstance(await request(bas, dcc(gw, "enable", PASSWORD)), SimpleAckPDU)
                await eventually(lambda: not gateway.meter.fault and not stale_points(gateway, any), 8)
                assert (await status())["device"]["communication"] == {"mode": "enable"}
                await eventually(lambda: gateway.meter.fault_window() is None, 8, "the meter's fault ended")
        finally:
            await gateway.stop()
    meter_lines = [r for r in caplog.records if r.name == "bacnet_api.meter" and r.levelno >= logging.INFO]
    assert [r.levelno for r in meter_lines] == [logging.WARNING, logging.INFO], meter_lines
    dcc_lines = [r for r in caplog.records if r.name == "bacnet_api.services"]
    assert [r.levelno for r in dcc_lines] == [logging.WARNING, logging.INFO], dcc_lines
    assert not [r for r in caplog.records if (r.levelno >= logging.ERROR or r.exc_info)
                and r.name.split(".")[0] in ("bacnet_api", "ven", "forecaster") and r.name != "ven.vtn"]
    assert PASSWORD not in caplog.text


def stale_points(gateway, which=all) -> bool:
    """The meter-power and forecast points flagged fault, and the forecaster saying why."""
    from bacnet_api import points as P

    if which is all and not gateway.forecast.status()["input_stale"]:
        return False
    return which(gateway.device.status_flags(n)["fault"] for n in (P.FIFTEEN_MIN_FORECAST, P.METER_POWER))


async def test_the_disable_s_duration_is_not_moved_by_a_wall_clock_step(guarded, peer, caplog, monkeypatch):
    # a box without a battery-backed clock boots at an old date and NTP steps it forward: the disable lasted
    # seconds, not the step (its `since` and `until` for /api/status stay wall-clock times)
    caplog.set_level(logging.INFO)
    addr = where(guarded)
    assert isinstance(await request(peer, dcc(addr, "disableInitiation", PASSWORD)), SimpleAckPDU)
    from datetime import datetime, timedelta

    class Stepped(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) + timedelta(hours=3)
    monkeypatch.setattr(services, "datetime", Stepped)
    assert isinstance(await request(peer, dcc(addr, "enable", PASSWORD)), SimpleAckPDU)
    ended = [r.getMessage() for r in ours(caplog) if r.name == "bacnet_api.services"][-1]
    seconds = int(re.match(r"BACnet communication initiation enabled again after (\d+) s: ", ended).group(1))
    assert seconds < 60, ended      # the test's own timeout bounds it; the step was 10800 s


@pytest.mark.parametrize("mode, minutes, reason", [
    (3, None, "undefined-enumeration"), (200, 5, "undefined-enumeration"),
    ("disableInitiation", 65536, "parameter-out-of-range"), ("disableInitiation", 4294967295, "parameter-out-of-range"),
])
async def test_a_mode_or_duration_bacnet_does_not_define_is_rejected_and_changes_nothing(
        guarded, peer, caplog, mode, minutes, reason):
    # bacpypes3 decodes any number into them: enable-disable 3 with the password was carried out as
    # disableInitiation, time-duration 65536 as 45 days, and 2^32-1 acknowledged and then an OverflowError
    caplog.set_level(logging.INFO)
    addr = where(guarded)
    assert isinstance(await request(peer, dcc(addr, "disableInitiation", PASSWORD, minutes=5)), SimpleAckPDU)
    before = guarded.communication()
    answer = await request(peer, dcc(addr, mode, PASSWORD, minutes=minutes))
    assert isinstance(answer, RejectPDU) and str(answer.apduAbortRejectReason) == reason, answer
    assert guarded.communication() == before        # the 5-minute disable stands, with its end
    lines = [r.getMessage() for r in ours(caplog, logging.WARNING) if "rejected" in r.getMessage()]
    assert len(lines) == 1 and reason in lines[0], lines
    assert not errors_logged(caplog)


LONGEST = "Dr-3vent!ÄÖÜ-2026-x!"      # 20 characters, 23 bytes in UTF-8


@pytest.mark.parametrize("configured", [None, LONGEST], ids=["no-dcc-password", "dcc-password"])
@pytest.mark.parametrize("mode", ["enable", "disableInitiation", "disable"])
async def test_a_password_over_20_characters_is_rejected_parameter_out_of_range(
        free_udp_port, peer, caplog, configured, mode):
    # clause 16.1.1.1.3: "a CharacterString of up to 20 characters"; bacnet-stack rejects a longer one
    # parameter-out-of-range while decoding, before the password is compared or the mode looked at. It was
    # security/password-failure, with a password set: the technician retyped a password no device takes
    assert len(LONGEST) == 20 and len(LONGEST.encode("utf-8")) == 23
    caplog.set_level(logging.INFO)
    device = GatewayDevice(address=f"127.0.0.1/8:{free_udp_port()}", device_id=DEVICE_ID, device_name="TestGateway",
                           **({"dcc_password": configured} if configured else {}))
    await device.start()
    try:
        addr = where(device)
        if configured:      # an enable must leave a disable standing
            assert isinstance(await request(peer, dcc(addr, "disableInitiation", LONGEST, minutes=5)), SimpleAckPDU)
        before = device.communication()
        answer = await request(peer, dcc(addr, mode, LONGEST + "?", minutes=5))
        assert isinstance(answer, RejectPDU) and str(answer.apduAbortRejectReason) == "parameter-out-of-range", answer
        assert device.communication() == before
        lines = [r.getMessage() for r in ours(caplog, logging.WARNING) if "refusals" in r.name]
        assert lines == [f"BACnet DeviceCommunicationControl {mode} from {peer.address.replace('/8', '')} rejected "
                         "(parameter-out-of-range): a password of 21 characters (at most 20)"], lines
        if configured:      # 20 characters, more bytes, are a password: taken
            assert isinstance(await request(peer, dcc(addr, "enable", LONGEST)), SimpleAckPDU)
            assert device.communication() == {"mode": "enable"}
    finally:
        await device.stop()
    assert LONGEST not in caplog.text
    assert not errors_logged(caplog)
