"""`bacnet.write_from`: only the listed sources write to the gateway's BACnet device. Two real bacpypes3
client stacks on loopback with different source addresses (127.0.0.2, the BAS; 127.0.0.3, anyone else),
and a client behind the meter simulator's router for a routed source."""
from __future__ import annotations

import asyncio
import logging
import socket
import struct

import aiohttp
import pytest
from bacpypes3.apdu import (DeviceCommunicationControlRequest, ErrorPDU, ReadPropertyRequest, SimpleAckPDU,
                            WritePropertyMultipleError, WritePropertyRequest)
from bacpypes3.basetypes import BinaryPV
from bacpypes3.constructeddata import Any
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import CharacterString, Enumerated, ObjectIdentifier, Real, Unsigned

from bacnet_api import write_access
from bacnet_api.device import GatewayDevice
from bacnet_api.points import INPUT_POWER, OPT_OUT, POINTS
from bacnet_api.simulator import MeterSimulator
from bacnet_api.write_access import WriteAccess
from bacnet_peer import BacnetPeer, PeerError
from test_bacnet_dcc import PASSWORD, dcc, error_of
from test_bacnet_services import (NO_SPACE, answer_to, confirmed, cov_request, errors_logged, forwarded, request,
                                  subscribe, udp, unicast, write_multiple)
from waiting import eventually

pytestmark = pytest.mark.timeout(60)

DEVICE_ID = 500321
BAS, OTHER = "127.0.0.2", "127.0.0.3"
INPUT = "analogValue 1"


@pytest.fixture
async def fenced(free_udp_port, caplog):
    caplog.set_level(logging.INFO)
    device = GatewayDevice(address=f"127.0.0.1/8:{free_udp_port()}", device_id=DEVICE_ID, device_name="Fenced",
                           dcc_password=PASSWORD, write_from=[f"{BAS}/32", "2001:*"])
    await device.start()
    try:
        yield device
    finally:
        await device.stop()


@pytest.fixture
async def bas(free_udp_port):
    async with BacnetPeer(free_udp_port(), host=BAS, timeout=3.0) as p:
        yield p


@pytest.fixture
async def other(free_udp_port):
    async with BacnetPeer(free_udp_port(), host=OTHER, device_id=4000002, timeout=3.0) as p:
        yield p


def where(device: GatewayDevice) -> str:
    return device.address.replace("/8", "")


async def request_timeout(awaitable, timeout: float = 3.0):
    return await asyncio.wait_for(awaitable, timeout)


def refusal_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "bacnet_api.write_access"]


async def test_the_listed_bas_writes_and_anyone_else_is_refused_with_nothing_changed(fenced, bas, other, caplog):
    caplog.set_level(logging.INFO)
    addr = where(fenced)
    assert await bas.write(addr, INPUT, "presentValue", 40.0, priority=8) is None
    assert fenced.get(INPUT_POWER) == 40.0
    before = await bas.read(addr, INPUT, "priorityArray")

    for attempt in (other.write(addr, INPUT, "presentValue", 999.0, priority=8),
                    other.write(addr, INPUT, "presentValue", 999.0, priority=1),
                    other.relinquish(addr, INPUT, priority=8),
                    other.write(addr, "binaryValue 4", "presentValue", Enumerated(1), priority=8)):
        err = await attempt
        assert isinstance(err, PeerError) and err.code == "writeAccessDenied", err
    assert fenced.get(INPUT_POWER) == 40.0 and fenced.get(OPT_OUT) is False
    assert await bas.read(addr, INPUT, "priorityArray") == before
    assert fenced.commands(OPT_OUT) == {}

    # reads, Who-Is and COV stay open to it
    assert await other.read(addr, INPUT, "presentValue") == 40.0
    assert [i.iAmDeviceIdentifier[1] for i in await other.who_is(addr, wait=2.0)] == [DEVICE_ID]
    async with other.app.change_of_value(Address(addr), ObjectIdentifier("analogValue,4"), None, False, 60) as scm:
        prop, _ = await request_timeout(scm.get_value())
        assert str(prop) == "present-value"

    # one line for the burst, naming the source, the point and the key to set
    lines = refusal_lines(caplog)
    assert len(lines) == 1, lines
    assert f"from {OTHER}:" in lines[0] and "input-power-meter (analogValue 1) presentValue at priority 8" in lines[0]
    assert "bacnet.write_from does not list it" in lines[0] and "write-access-denied" in lines[0], lines[0]
    status = fenced.write_refusals()
    assert status["writes_refused"] == 4 and status["write_from"] == [f"{BAS}/32", "2001:*"]
    assert status["last_write_refused"]["by"].startswith(f"{OTHER}:")
    assert "ADR-Opt-Out" in status["last_write_refused"]["what"]
    # who may write is said once at start; no traceback, nothing at ERROR
    started = [r.getMessage() for r in caplog.get_records("setup") if "bacnet.write_from" in r.getMessage()]
    assert len(started) == 1 and f"{BAS}/32, 2001:*" in started[0], started
    assert not errors_logged(caplog)


async def test_write_property_multiple_from_an_unlisted_source_is_refused_whole(fenced, bas, other):
    addr = where(fenced)
    answer = await request(other, write_multiple(addr, "analogValue,1", "presentValue", Real(55.0)))
    assert isinstance(answer, WritePropertyMultipleError), answer
    assert (str(answer.errorType.errorClass), str(answer.errorType.errorCode)) == ("property", "write-access-denied")
    failed = answer.firstFailedWriteAttempt
    assert failed.objectIdentifier == ObjectIdentifier("analogValue,1") and str(failed.propertyIdentifier) == \
        "present-value"
    assert fenced.get(INPUT_POWER) == 0.0 and fenced.commands(INPUT_POWER) == {}

    answer = await request(bas, write_multiple(addr, "analogValue,1", "presentValue", Real(55.0)))
    assert isinstance(answer, SimpleAckPDU), answer
    assert fenced.get(INPUT_POWER) == 55.0


async def test_device_communication_control_from_an_unlisted_source_is_refused_before_the_password(
        fenced, bas, other, caplog):
    addr = where(fenced)
    answer = await request(other, dcc(addr, "disableInitiation", PASSWORD, minutes=5))
    # not password-failure: the password was right, the client is not one the site allows
    assert error_of(answer) == "services/service-request-denied"
    assert fenced.communication() == {"mode": "enable"}
    assert "DeviceCommunicationControl disableInitiation" in refusal_lines(caplog)[0]

    assert isinstance(await request(bas, dcc(addr, "disableInitiation", PASSWORD, minutes=5)), SimpleAckPDU)
    assert fenced.communication()["mode"] == "disableInitiation"
    # an enable is refused to it too, before the password is looked at (the password guards enable as well, and
    # its answer would otherwise tell an unlisted client whether a guess was right); the listed client enables
    answer = await request(other, dcc(addr, "enable", PASSWORD))
    assert error_of(answer) == "services/service-request-denied"
    assert fenced.communication()["mode"] == "disableInitiation"
    assert isinstance(await request(bas, dcc(addr, "enable", PASSWORD)), SimpleAckPDU)
    assert fenced.communication() == {"mode": "enable"}
    assert fenced.write_refusals()["writes_refused"] == 2


async def test_a_station_behind_a_router_is_matched_by_network_and_mac(free_udp_port):
    # the meter simulator's meter (12345:2, behind its router on network 1) writes to the gateway
    sim = MeterSimulator(address=f"127.0.0.1/8:{free_udp_port()}")
    await sim.start()
    try:
        for listed, allowed in ((["12345:2"], True), (["12345:*"], True), (["12345:3", "2001:*"], False),
                                (["127.0.0.0/8"], False)):
            device = GatewayDevice(address=f"127.0.0.1/8:{free_udp_port()}", device_id=DEVICE_ID,
                                   device_name="Fenced", write_from=listed)
            await device.start()
            try:
                remote = Address(f"{sim.ip_network}:{where(device)}")
                try:
                    answer = await request_timeout(sim._meter.write_property(
                        remote, ObjectIdentifier("analogValue,1"), "presentValue", Real(12.0), None, 8))
                except ErrorPDU as err:
                    answer = err
                assert (answer is None) == allowed, (listed, answer)
                assert device.get(INPUT_POWER) == (12.0 if allowed else 0.0)
                if not allowed:
                    assert str(answer.errorCode) == "write-access-denied", answer
                    assert device.write_refusals()["last_write_refused"]["by"] == "12345:2"
            finally:
                await device.stop()
    finally:
        await sim.stop()


async def test_status_and_metrics_count_the_refusals(tmp_path, free_udp_port, free_tcp_port):
    from ven.app import Gateway
    from ven.config_load import parse_config

    cfg = parse_config({
        "bacnet": {"address": f"127.0.0.1/8:{free_udp_port()}", "device_id": 500005, "write_from": [BAS]},
        "meter": {"router": f"127.0.0.1:{free_udp_port()}", "timeout_seconds": 1.0},
        "openadr": {"vtn_url": f"http://127.0.0.1:{free_tcp_port()}/OpenADR2/Simple/2.0b"},
        "storage": {"path": str(tmp_path / "gw.sqlite")},
        "http": {"address": f"127.0.0.1:{free_tcp_port()}"},
    }, "test", environ={})
    addr = cfg.bacnet.address.replace("/8", "")
    gateway = Gateway(cfg)
    await gateway.start()
    try:
        async with BacnetPeer(free_udp_port(), host=OTHER) as intruder, \
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async def get(path: str):
                async with http.get(gateway.http.url + path) as r:
                    assert r.status == 200
                    return await (r.json() if path.startswith("/api") else r.text())

            device = (await get("/api/status"))["device"]
            assert (device["write_from"], device["writes_refused"], device["last_write_refused"]) == ([BAS], 0, None)
            assert "edge_gateway_bacnet_writes_refused_total 0.0" in await get("/metrics")
            for _ in range(3):
                err = await intruder.write(addr, INPUT, "presentValue", 5.0, priority=8)
                assert err.code == "writeAccessDenied", err
            device = (await get("/api/status"))["device"]
            assert device["writes_refused"] == 3
            assert device["last_write_refused"]["by"] == intruder.address.replace("/8", "")
            assert device["last_write_refused"]["at"].endswith("+00:00")
            assert "edge_gateway_bacnet_writes_refused_total 3.0" in await get("/metrics")
    finally:
        await gateway.stop()


# ----- the list itself, on the addresses bacpypes3 gives a request's source


@pytest.mark.parametrize("entries, source, allowed", [
    ([], "10.9.8.7", True),                                   # no list: anyone, as before
    (["192.168.10.20"], "192.168.10.20", True),
    (["192.168.10.20"], "192.168.10.20:47809", True),         # an address names the station on any port
    (["192.168.10.20"], "192.168.10.21", False),
    (["192.168.10.20:47809"], "192.168.10.20:47809", True),
    (["192.168.10.20:47809"], "192.168.10.20", False),
    (["192.168.10.0/24"], "192.168.10.254", True),
    (["192.168.10.0/24"], "192.168.11.1", False),
    (["192.168.10.0/24"], "2001:192.168.10.5", False),        # an IP entry is a station on the gateway's network
    (["2001:5"], "2001:5", True),
    (["2001:5"], "2001:0x05", True),
    (["2001:5"], "2002:5", False),
    (["2001:5"], "5", False),                                 # an MS/TP MAC on the local network is not remote
    (["2001:0x0102"], "2001:0x0102", True),
    (["2001:*"], "2001:77", True),
    (["2001:*"], "2001:192.168.5.10:47809", True),
    (["2001:*"], "192.168.5.10", False),
    (["2001:192.168.5.10"], "2001:192.168.5.10", True),
    (["2001:192.168.5.10:47808"], "2001:192.168.5.10", True),
    (["2001:192.168.5.10"], "2001:192.168.5.10:47809", False),
    (["10.0.0.0/8", "2001:3"], "2001:3", True),
])
def test_the_list_matches_sources_as_bacpypes3_prints_them(entries, source, allowed):
    assert WriteAccess(entries).allows(Address(source)) is allowed


@pytest.mark.parametrize("entry, reason", [
    ("192.168.10.20/24", "has host bits set: the network is 192.168.10.0/24, the one station 192.168.10.20"),
    ("192.168.10.0/33", "not an IPv4 address or network"),
    ("192.168.10.300", "not an IPv4 address or network"),
    ("192.168.10.*", "for IP networks use CIDR"),
    ("*", "for IP networks use CIDR"),
    ("bas.local", "must be an IPv4 address"),
    ("fe80::1", "must be an IPv4 address"),
    ("", "empty"),
    ("0:5", "network must be 1..65534"),
    ("65535:*", "network must be 1..65534"),
    ("2001:300", "a decimal MAC is one octet, 0..255 (MS/TP); got 300: write longer ones in hex, e.g. 2001:0x012c"),
    ("2001:0x1", "the MAC after 2001: must be"),
    ("2001:mac", "the MAC after 2001: must be"),
    ("192.168.10.20:70000", "port must be 1..65535"),
])
def test_a_bad_entry_says_why(entry, reason):
    with pytest.raises(ValueError) as err:
        write_access.parse_entry(entry)
    assert reason in str(err.value), str(err.value)


def test_refusals_are_logged_once_per_source_per_ten_minutes_with_a_count(monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    now = [1000.0]
    monkeypatch.setattr(write_access.time, "monotonic", lambda: now[0])
    access = WriteAccess(["192.168.10.20"])
    a, b = Address("192.168.10.50"), Address("2001:7")
    for _ in range(5):
        access.refuse(a, "WriteProperty of x", "write-access-denied")
    access.refuse(b, "WriteProperty of x", "write-access-denied")
    now[0] += 599
    access.refuse(a, "WriteProperty of x", "write-access-denied")
    now[0] += 2
    access.refuse(a, "WriteProperty of y", "write-access-denied")
    lines = refusal_lines(caplog)
    assert len(lines) == 3, lines
    assert "from 192.168.10.50 " in lines[0] and "repeats from it are counted" in lines[0]
    assert "from 2001:7 " in lines[1]
    assert "of y from 192.168.10.50 " in lines[2] and "5 more refused from it since the last line 601 s ago" in lines[2]
    assert access.refused == 8


def test_sources_made_up_in_bulk_share_one_line(monkeypatch, caplog):
    # a routed source's NET:MAC is what the sender writes in its NPDU: the log stays bounded whatever it invents
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(write_access.time, "monotonic", lambda: 5000.0)
    access = WriteAccess(["192.168.10.20"])
    for mac in range(250):
        access.refuse(Address(f"2001:{mac}"), "WriteProperty of x", "write-access-denied")
    assert len(refusal_lines(caplog)) == write_access.MAX_SOURCES_LOGGED + 1
    assert len(access._logged) == write_access.MAX_SOURCES_LOGGED + 1
    assert access.refused == 250


# ----- a source in a Forwarded-NPDU: believed only from bacnet.bbmd_address


def write_opt_out(priority: int = 8) -> WritePropertyRequest:
    return WritePropertyRequest(objectIdentifier=ObjectIdentifier("binaryValue,4"), propertyIdentifier="presentValue",
                                propertyValue=Any(BinaryPV("active")), priority=priority)


def disable_initiation() -> DeviceCommunicationControlRequest:
    return DeviceCommunicationControlRequest(enableDisable="disableInitiation", timeDuration=Unsigned(5),
                                             password=CharacterString(PASSWORD))


def read_opt_out() -> ReadPropertyRequest:
    return ReadPropertyRequest(objectIdentifier=ObjectIdentifier("binaryValue,4"), propertyIdentifier="presentValue")


WRITE_ACCESS_DENIED, SERVICE_REQUEST_DENIED = "2/40", "5/29"  # property/..., services/...


@pytest.mark.parametrize("write_from", [[f"{BAS}/32", "2001:*"], []], ids=["listed", "open"])
async def test_a_forwarded_npdu_claiming_the_bas_from_another_host_writes_nothing(free_udp_port, caplog, write_from):
    # Anyone can send one datagram, from any port, whose originating-address field names the BAS: bacpypes3 makes
    # that the source, and with no BBMD configured took it (ADR-Opt-Out written). A BBMD forwards broadcasts,
    # never a request to one station; without the list, anyone may write, forwarded or not, as before.
    caplog.set_level(logging.INFO)
    device = GatewayDevice(address=f"127.0.0.1/8:{free_udp_port()}", device_id=DEVICE_ID, device_name="Fenced",
                           dcc_password=PASSWORD, write_from=write_from)
    await device.start()
    gateway = ("127.0.0.1", int(device.address.rpartition(":")[2]))
    try:
        with udp(BAS) as bas, udp(OTHER) as sender:
            claimed = bas.getsockname()
            sender.sendto(forwarded(claimed, confirmed(1, write_opt_out())), gateway)
            if not write_from:
                assert await answer_to(bas) == "ack"
                assert device.get(OPT_OUT) is True
                assert device.write_refusals()["writes_refused"] == 0 and refusal_lines(caplog) == []
                # taken, but its writer said as the sender's word, as a refusal says it
                said = [r.getMessage() for r in caplog.records if "write accepted" in r.getMessage()]
                assert said == [f"BACnet write accepted: ADR-Opt-Out = active (priority 8, from {claimed[0]}:"
                                f"{claimed[1]} (claimed in a Forwarded-NPDU from {OTHER}:{sender.getsockname()[1]}))"]
                return
            assert await answer_to(bas) == WRITE_ACCESS_DENIED  # answered to the source it claims
            sender.sendto(forwarded(claimed, confirmed(2, disable_initiation())), gateway)
            assert await answer_to(bas) == SERVICE_REQUEST_DENIED
            assert device.get(OPT_OUT) is False and device.commands(OPT_OUT) == {}
            assert device.communication() == {"mode": "enable"}
            # a read so forwarded is answered as before
            sender.sendto(forwarded(claimed, confirmed(3, read_opt_out())), gateway)
            assert await answer_to(bas) == "complex-ack"
            # the BAS itself writes
            bas.sendto(unicast(confirmed(4, write_opt_out())), gateway)
            assert await answer_to(bas) == "ack"
            assert device.get(OPT_OUT) is True

            # counted as refused writes; one line for the sender, naming it and the source it claimed
            status = device.write_refusals()
            assert status["writes_refused"] == 2, status
            lines = refusal_lines(caplog)
            assert len(lines) == 1, lines
            who = f"{claimed[0]}:{claimed[1]} (claimed in a Forwarded-NPDU from {OTHER}:{sender.getsockname()[1]})"
            assert f"from {who} refused (write-access-denied)" in lines[0], lines[0]
            assert "believed only from bacnet.bbmd_address, and none is set" in lines[0], lines[0]
            assert status["last_write_refused"]["by"] == who
            assert "DeviceCommunicationControl disableInitiation" in status["last_write_refused"]["what"]
    finally:
        await device.stop()
    assert not errors_logged(caplog)


async def accepted_by(bbmd: socket.socket, device: GatewayDevice) -> None:
    """Answer the device's Register-Foreign-Device on the socket playing its BBMD, and wait until it is registered."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(5):
        registration = b""
        while registration[:4] != bytes([0x81, 0x05, 0x00, 0x06]):  # Register-Foreign-Device
            registration, at = await loop.sock_recvfrom(bbmd, 1500)
    await loop.sock_sendto(bbmd, bytes([0x81, 0x00, 0x00, 0x06, 0x00, 0x00]), at)  # BVLC-Result: done
    link = next(iter(device.app.link_layers.values()))
    await eventually(lambda: link.bbmdRegistrationStatus == 0, 5, "registered")


async def test_a_source_forwarded_by_the_configured_bbmd_is_believed(free_udp_port, caplog):
    # the device registered as a foreign device with bacnet.bbmd_address (here a socket answering as a BBMD): what
    # that BBMD forwards counts as from its originating station; bacpypes3 drops a Forwarded-NPDU from anyone else
    with udp("127.0.0.4") as bbmd, udp(BAS) as bas, udp(OTHER) as sender:
        device = GatewayDevice(address=f"127.0.0.1/8:{free_udp_port()}", device_id=DEVICE_ID, device_name="Fenced",
                               write_from=[f"{BAS}/32"], bbmd_address="%s:%d" % bbmd.getsockname(), bbmd_ttl=60)
        await device.start()
        gateway = ("127.0.0.1", int(device.address.rpartition(":")[2]))
        try:
            await accepted_by(bbmd, device)

            sender.sendto(forwarded(bas.getsockname(), confirmed(1, write_opt_out())), gateway)
            assert await answer_to(bas, timeout=0.5) == "none"
            assert device.get(OPT_OUT) is False
            bbmd.sendto(forwarded(bas.getsockname(), confirmed(2, write_opt_out())), gateway)
            assert await answer_to(bas) == "ack"
            assert device.get(OPT_OUT) is True
            assert device.write_refusals()["writes_refused"] == 0
        finally:
            await device.stop()
    assert not errors_logged(caplog)


async def test_its_own_i_am_forwarded_back_by_the_bbmd_on_the_standard_port_is_no_twin(caplog):
    # A BBMD on the gateway's own subnet broadcasts the gateway's I-Am back to it, the origin its own address. On
    # 47808, the port of every real site, bacpypes3 writes that source without the port and the own-address check
    # (written with it) missed: each gateway warned of a twin at its own address, and /healthz said degraded
    me, other = "127.0.0.203", "127.0.0.204"
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind((me, 47808))
    except OSError:
        pytest.skip("UDP 47808 on 127.0.0.203 is taken")
    finally:
        probe.close()
    i_am = (bytes([0x01, 0x00, 0x10, 0x00, 0xC4]) + struct.pack(">I", (8 << 22) | DEVICE_ID)
            + bytes([0x22, 0x04, 0x00, 0x91, 0x03, 0x22, 0x03, 0x4A]))

    def forwarded_i_am(origin: str) -> bytes:
        return (bytes([0x81, 0x04]) + struct.pack(">H", 10 + len(i_am)) + socket.inet_aton(origin)
                + struct.pack(">H", 47808) + i_am)

    caplog.set_level(logging.WARNING)
    with udp("127.0.0.4") as bbmd:
        device = GatewayDevice(address=f"{me}/32:47808", device_id=DEVICE_ID, device_name="Campus",
                               bbmd_address="%s:%d" % bbmd.getsockname(), bbmd_ttl=60)
        await device.start()
        try:
            await accepted_by(bbmd, device)
            bbmd.sendto(forwarded_i_am(me), (me, 47808))
            bbmd.sendto(forwarded_i_am(other), (me, 47808))      # a real twin, heard after it
            await eventually(device.twins, 5, "the other device heard")
            assert [t["address"] for t in device.twins()] == [other]
        finally:
            await device.stop()
    said = [r.getMessage() for r in caplog.records if "answers as device" in r.getMessage()]
    assert len(said) == 1 and f"from {other}:" in said[0], said


# ----- COV: the sources write_from does not list hold half the subscriptions, a quarter each at most


def cov_lines(caplog) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if "SubscribeCOV" in r.getMessage()]


async def test_unlisted_sources_cannot_take_the_cov_subscriptions_the_bas_needs(fenced, bas, caplog):
    # One client not in write_from took all 100 (unconfirmed, no lifetime, processes 1..120) until a restart, the BAS
    # was refused no-space-to-add-list-element, and nothing was logged. Now it holds twice the points, the unlisted
    # sources together half, and the BAS subscribes to every point whatever they do.
    caplog.set_level(logging.INFO)
    addr, gateway = where(fenced), ("127.0.0.1", int(fenced.address.rpartition(":")[2]))
    with udp(OTHER) as a, udp(OTHER) as b, udp(OTHER) as c, udp(BAS) as listed:
        taken = []
        for sock in (a, b, c):
            answers = []
            for process in range(1, 41):
                sock.sendto(unicast(confirmed(process, cov_request(process))), gateway)
                answers.append(await answer_to(sock))
            assert set(answers) <= {"ack", NO_SPACE}, answers
            taken.append(answers.count("ack"))
        answers = {p.name: await request(bas, subscribe(addr, p.object_id.replace(" ", ","), 9, False, 0))
                   for p in POINTS}
        assert {name: str(getattr(answer, "errorCode", answer)) for name, answer in answers.items()
                if not isinstance(answer, SimpleAckPDU)} == {}
        assert taken == [32, 18, 0]
        assert len(await bas.read(addr, f"device {DEVICE_ID}", "activeCovSubscriptions")) == 50 + len(POINTS)

        # the unlisted host claiming a listed address in a Forwarded-NPDU is held to the unlisted half all the same
        claim = forwarded(listed.getsockname(), confirmed(1, cov_request(1)))
        c.sendto(claim, gateway)
        assert await answer_to(listed) == NO_SPACE
        listed.sendto(unicast(confirmed(2, cov_request(1))), gateway)
        assert await answer_to(listed) == "ack"
        # renewing one it holds is always taken
        a.sendto(unicast(confirmed(41, cov_request(1))), gateway)
        assert await answer_to(a) == "ack"

        # one line for the first spell of refusals, naming who holds the most, and one when one is taken again; the
        # next spell began within 10 min of that line: counted, and said with the next line
        a_is, b_is = "%s:%d" % a.getsockname(), "%s:%d" % b.getsockname()
        lines = cov_lines(caplog)
        assert [level for level, _ in lines] == ["WARNING", "INFO"], lines
        assert (f"SubscribeCOV from {a_is} refused (no-space-to-add-list-element): it holds 32, the most one source "
                f"may; the most are held by {a_is} (32), of 32 in all") in lines[0][1], lines
        assert f"SubscribeCOV accepted again (from {b_is}) after 8 refused" in lines[1][1], lines
        fenced.app._cov_said_at -= 600
        c.sendto(unicast(confirmed(99, cov_request(99))), gateway)
        assert await answer_to(c) == NO_SPACE
        lines = cov_lines(caplog)
        assert len(lines) == 3, lines
        c_is = "%s:%d" % c.getsockname()
        assert (f"from {c_is} refused (no-space-to-add-list-element): sources bacnet.write_from does not list hold "
                f"50, the most they may together (the rest is kept for those it lists); the most are held by"
                ) in lines[2][1]
        assert f"{a_is} (32)" in lines[2][1] and f"{b_is} (18)" in lines[2][1], lines[2]
        # b's 22 after its 18th, c's 40 and the forwarded one
        assert f"of {51 + len(POINTS)} in all; 63 more were refused since the last such line" in lines[2][1], lines[2]
        # a stop now ends the spell unsaid: the stop line names it (its one refusal, said in its line)
        assert fenced.app.cov_refusing() == "BACnet SubscribeCOV refused (1 in this spell)"
    assert not errors_logged(caplog)
