"""What the gateway's BACnet device answers beyond plain reads and writes: WritePropertyMultiple,
COV subscriptions (fault flags, subscribers that vanish), the device object's own description, and
the error a BAS gets for a bad ReadPropertyMultiple or WriteProperty.
A second real bacpypes3 stack on loopback asks, as a BAS would."""
from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import math
import socket
import struct
import time
from importlib.metadata import version

import pytest
from bacpypes3.apdu import (
    CreateObjectRequest,
    DeleteObjectRequest,
    ErrorPDU,
    ErrorRejectAbortNack,
    ReadPropertyMultipleACK,
    ReadPropertyMultipleRequest,
    ReadPropertyRequest,
    ReadRangeRequest,
    RejectPDU,
    SimpleAckPDU,
    SubscribeCOVRequest,
    WritePropertyMultipleError,
    WritePropertyMultipleRequest,
    WritePropertyRequest,
)
from bacpypes3.basetypes import (
    CreateObjectRequestObjectSpecifier,
    ObjectTypesSupported,
    PropertyIdentifier,
    PropertyReference,
    PropertyValue,
    ReadAccessSpecification,
    ServicesSupported,
    WriteAccessSpecification,
)
from bacpypes3.constructeddata import Any
from bacpypes3.pdu import Address, IPv4Address
from bacpypes3.primitivedata import CharacterString, Enumerated, Null, ObjectIdentifier, ObjectType, Real, Unsigned

from bacnet_api import services as bacnet_services
from bacnet_api.client import close_stack, start_stack, to_plain
from bacnet_api.forwarded import _one_station
from bacnet_api.device import GatewayDevice
from bacnet_api.host_network import dns_servers
from bacnet_api.own_address import LINK, Missing
from bacnet_api.points import EVENT_LEVEL, EVENT_START_MINUTES, INPUT_POWER, METER_POWER, OPT_OUT, POINTS
from bacnet_peer import BacnetPeer, PeerError
from test_bacnet_device import DEVICE_ID, gateway, peer, port_of, where  # noqa: F401 - shared fixtures
from waiting import eventually

from ven.logs import FloodGuard

pytestmark = pytest.mark.timeout(60)


async def request(peer: BacnetPeer, apdu, timeout: float = 3.0):
    """The answer to a raw request: the ack, or the error/reject/abort PDU."""
    try:
        return await asyncio.wait_for(peer.app.request(apdu), timeout)
    except ErrorRejectAbortNack as err:
        return err


def write_multiple(addr: str, obj: str, prop: str | int, value, priority: int | None = 8):
    pv = PropertyValue(propertyIdentifier=PropertyIdentifier(prop), value=Any(value))
    if priority is not None:
        pv.priority = priority
    spec = WriteAccessSpecification(objectIdentifier=ObjectIdentifier(obj), listOfProperties=[pv])
    return WritePropertyMultipleRequest(listOfWriteAccessSpecs=[spec], destination=Address(addr))


def write_one(addr: str, obj: str, prop: str | int, value, priority: int | None = None):
    apdu = WritePropertyRequest(objectIdentifier=ObjectIdentifier(obj), propertyIdentifier=PropertyIdentifier(prop),
                                propertyValue=Any(value), destination=Address(addr))
    if priority is not None:
        apdu.priority = priority
    return apdu


def read_multiple(addr: str, specs: list[tuple[str, list[str]]]):
    return ReadPropertyMultipleRequest(destination=Address(addr), listOfReadAccessSpecs=[
        ReadAccessSpecification(objectIdentifier=ObjectIdentifier(obj), listOfPropertyReferences=[
            PropertyReference(propertyIdentifier=PropertyIdentifier(prop)) for prop in props])
        for obj, props in specs])


def unicast(apdu: bytes) -> bytes:
    npdu = bytes([0x01, 0x04]) + apdu
    return bytes([0x81, 0x0A]) + struct.pack(">H", 4 + len(npdu)) + npdu


def confirmed(invoke: int, request) -> bytes:
    """`request` (a bacpypes3 confirmed request) as the APDU a BAS would send: no segments, up to 1476 octets."""
    return bytes([0x00, 0x05, invoke, request.service_choice]) + bytes(request.encode().pduData)


def udp(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


def forwarded(origin: tuple[str, int], apdu: bytes) -> bytes:
    """A BVLL Forwarded-NPDU carrying `apdu`, its originating-address field saying `origin`."""
    npdu = bytes([0x01, 0x04]) + apdu  # expecting a reply
    return (bytes([0x81, 0x04]) + struct.pack(">H", 10 + len(npdu)) + socket.inet_aton(origin[0])
            + struct.pack(">H", origin[1]) + npdu)


NO_SPACE = "3/19"  # resources/no-space-to-add-list-element, as `answer_to` gives it


async def answer_to(sock: socket.socket, timeout: float = 3.0) -> str:
    """What the gateway answered to the address of `sock`: "ack", "complex-ack", "class/code" of an Error, or
    "none" if nothing came within `timeout` s. Unconfirmed requests (a new subscription's first notification) are
    passed over."""
    try:
        async with asyncio.timeout(timeout):
            kind = 1
            while kind == 1:
                data, _ = await asyncio.get_running_loop().sock_recvfrom(sock, 1500)
                apdu = data[6:]  # past the BVLC header and the NPDU (version, control)
                kind = apdu[0] >> 4
    except TimeoutError:
        return "none"
    if kind == 5:  # Error: its class and code, each an enumerated application tag of one octet
        return f"{apdu[4]}/{apdu[6]}"
    return {2: "ack", 3: "complex-ack"}.get(kind, apdu.hex())


def errors_logged(caplog) -> list:
    return [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def notification(scm, timeout: float = 3.0) -> dict:
    """The next COV notification, {"present-value": ..., "status-flags": [...]}."""
    got = {}
    while len(got) < 2:
        prop, value = await asyncio.wait_for(scm.get_value(), timeout)
        got[str(prop)] = to_plain(value)
    return got


# ----- WritePropertyMultiple


async def test_write_property_multiple_is_acknowledged(gateway, peer):
    answer = await request(peer, write_multiple(where(gateway), "analogValue,1", "presentValue", Real(25.0)))
    assert isinstance(answer, SimpleAckPDU), answer
    assert gateway.get(INPUT_POWER) == 25.0


@pytest.mark.parametrize("obj, prop, value, error", [
    ("analogValue,1", "presentValue", Real(5000.0), "property/value-out-of-range"),
    ("analogValue,1", "presentValue", Real(math.nan), "property/value-out-of-range"),
    ("analogValue,4", "presentValue", Real(3.0), "property/write-access-denied"),  # read-only point
    (f"device,{DEVICE_ID}", "objectName", CharacterString("renamed"), "property/write-access-denied"),
    ("analogValue,1", 9999, Real(1.0), "property/unknown-property"),
    ("analogValue,99", "presentValue", Real(1.0), "object/unknown-object"),
], ids=["out-of-range", "nan", "read-only-point", "device-object", "unknown-property", "unknown-object"])
async def test_refused_write_property_multiple_gets_its_error(gateway, peer, caplog, obj, prop, value, error):
    addr = where(gateway)
    assert await peer.write(addr, "analogValue 1", "presentValue", 40.0, priority=8) is None
    priority = 8 if prop == "presentValue" else None

    answer = await request(peer, write_multiple(addr, obj, prop, value, priority))

    assert isinstance(answer, WritePropertyMultipleError), answer
    assert f"{answer.errorType.errorClass}/{answer.errorType.errorCode}" == error
    failed = answer.firstFailedWriteAttempt
    assert failed.objectIdentifier == ObjectIdentifier(obj)
    assert failed.propertyIdentifier == PropertyIdentifier(prop)
    assert gateway.get(INPUT_POWER) == 40.0
    assert await peer.read(addr, f"device {DEVICE_ID}", "objectName") == "TestGateway"
    assert await peer.read(addr, "analogValue 4", "presentValue") == 0.0
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []


def writes_in_one(addr: str, *writes: tuple):
    """One WritePropertyMultiple of `writes`, each (object, property, value, priority)."""
    apdu = write_multiple(addr, *writes[0])
    for write in writes[1:]:
        apdu.listOfWriteAccessSpecs.append(write_multiple(addr, *write).listOfWriteAccessSpecs[0])
    return apdu


async def test_write_property_multiple_to_an_unknown_object_stops_there_keeping_the_writes_before_it(gateway, peer):
    # clause 15.10.2: the writes before the first failed one are made, and a BAS takes them as made; the device
    # refused the whole request, so the BAS showed input-power-meter at 7 while it read 0
    addr = where(gateway)
    answer = await request(peer, writes_in_one(addr, ("analogValue,1", "presentValue", Real(7.0), 8),
                                               ("analogValue,99", "presentValue", Real(8.0), 8),
                                               ("binaryValue,4", "presentValue", Enumerated(1), 8)))

    assert isinstance(answer, WritePropertyMultipleError), answer
    assert str(answer.errorType.errorCode) == "unknown-object"
    assert answer.firstFailedWriteAttempt.objectIdentifier == ObjectIdentifier("analogValue,99")
    assert answer.firstFailedWriteAttempt.propertyIdentifier == PropertyIdentifier("presentValue")
    assert gateway.commands(INPUT_POWER) == {8: 7.0}
    assert gateway.commands(OPT_OUT) == {}    # after the failure: not written


async def test_write_property_multiple_with_a_bad_value_in_the_middle_names_it_and_keeps_the_writes_before(
        gateway, peer):
    addr = where(gateway)
    answer = await request(peer, writes_in_one(addr, ("analogValue,1", "presentValue", Real(11.0), 8),
                                               ("binaryValue,4", "presentValue", Enumerated(7), 8),
                                               ("analogValue,1", "presentValue", Real(12.0), 9)))

    assert isinstance(answer, WritePropertyMultipleError), answer
    assert f"{answer.errorType.errorClass}/{answer.errorType.errorCode}" == "property/value-out-of-range"
    failed = answer.firstFailedWriteAttempt
    assert (failed.objectIdentifier, failed.propertyIdentifier) == (ObjectIdentifier("binaryValue,4"),
                                                                    PropertyIdentifier("presentValue"))
    assert gateway.commands(INPUT_POWER) == {8: 11.0} and gateway.commands(OPT_OUT) == {}


# ----- COV


async def test_cov_subscriber_sees_the_fault_flag_come_and_go(gateway, peer):
    addr = where(gateway)
    async with peer.app.change_of_value(Address(addr), ObjectIdentifier("analogValue,6"), None, True, 60) as scm:
        assert await notification(scm) == {"present-value": 0.0, "status-flags": [0, 1, 0, 0]}  # no reading yet

        gateway.set(METER_POWER, 50.0)  # the first reading clears the fault with the value
        assert await notification(scm) == {"present-value": 50.0, "status-flags": [0, 0, 0, 0]}

        gateway.set_fault(METER_POWER, True)  # the meter went silent: only the flag changes
        assert await notification(scm) == {"present-value": 50.0, "status-flags": [0, 1, 0, 0]}

        gateway.set(METER_POWER, 61.0)  # a reading again, as the gateway applies it
        gateway.set_fault(METER_POWER, False)
        assert await notification(scm) == {"present-value": 61.0, "status-flags": [0, 0, 0, 0]}

        gateway.set_fault(METER_POWER, False)  # no change, no notification
        with pytest.raises(asyncio.TimeoutError):
            await notification(scm, timeout=0.3)


async def test_vanished_cov_subscriber_is_dropped_quietly(gateway, peer, free_udp_port, caplog):
    caplog.set_level(logging.INFO)
    addr = Address(where(gateway))
    # answer timeouts as a site would see them, shortened so the test does not wait 12 s
    gateway.app.device_object.apduTimeout = 200
    gateway.app.device_object.numberOfApduRetries = 1

    bas = await start_stack(f"127.0.0.1/8:{free_udp_port()}", 4000002, "vanishing-bas")
    gone = bas.change_of_value(addr, ObjectIdentifier("analogValue,4"), 77, True, 300)
    await gone.__aenter__()
    # it watched other points too: one line for all of them (there was one per point, at each one's next change)
    others = [bas.change_of_value(addr, ObjectIdentifier(f"analogValue,{i}"), 80 + i, True, 300) for i in (2, 3)]
    for other in others:
        await other.__aenter__()
    await close_stack(bas)  # power lost: no unsubscribe
    try:
        async with peer.app.change_of_value(addr, ObjectIdentifier("analogValue,4"), None, True, 60) as scm:
            await notification(scm)
            for level in (1.0, 2.0, 3.0):
                gateway.set(EVENT_LEVEL, level)
                assert (await notification(scm))["present-value"] == level  # live subscribers unaffected
                await asyncio.sleep(0.1)

            def dropped():
                return [r for r in caplog.records if "stopped answering" in r.getMessage()]
            await eventually(dropped, 5.0, "the vanished subscriber logged")
            for level in (0.0, 1.0, 2.0):  # cancelled: no more attempts, no more lines
                gateway.set(EVENT_LEVEL, level)
                assert (await notification(scm))["present-value"] == level
            await asyncio.sleep(1.0)
    finally:
        for context in (gone, *others):
            await context.__aexit__(RuntimeError, RuntimeError(), None)  # drop the context, send nothing

    [line] = dropped()
    assert line.levelno == logging.WARNING and "process 77" in line.getMessage()
    said = line.getMessage()
    assert "its confirmed subscriptions cancelled (process " in said and said.count("process ") == 3, said
    assert "lifetime" not in said, said     # each had one: the BAS renews them
    listed = await peer.read(where(gateway), f"device {DEVICE_ID}", "activeCovSubscriptions")
    assert listed == [], listed     # the vanished BAS's three gone (the live subscriber has left too)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []


@pytest.mark.parametrize("back_by", ["retry", "subscribing"])
async def test_a_silent_subscribers_subscriptions_without_a_lifetime_are_kept_and_notified_once_it_answers(
        gateway, peer, free_udp_port, caplog, monkeypatch, back_by):
    # cancelled with those that have one, they never came back: a BAS renews only a finite lifetime, and one whose
    # network was down for a minute showed the values of then for good, while the line said it would subscribe again
    caplog.set_level(logging.INFO)
    # back by the device's retry, or sooner by a SubscribeCOV of its own (the retry a minute away)
    monkeypatch.setattr(bacnet_services, "COV_RETRY_SECONDS", 0.5 if back_by == "retry" else 600, raising=False)
    addr = where(gateway)
    gateway.app.device_object.apduTimeout = 200     # as in the test above: no 12 s of retries
    gateway.app.device_object.numberOfApduRetries = 1
    port = free_udp_port()
    heard: list[tuple[int, float]] = []

    async def bas_on(port: int):
        bas = await start_stack(f"127.0.0.1/8:{port}", 4000003, "indefinite-bas")

        async def ack(apdu):
            heard.append((int(apdu.subscriberProcessIdentifier), float(apdu.listOfValues[0].value.cast_out(Real))))
            await bas.response(SimpleAckPDU(context=apdu))
        bas.do_ConfirmedCOVNotificationRequest = ack
        return bas

    bas = await bas_on(port)
    for process, obj, lifetime in ((31, "analogValue,4", 0), (32, "analogValue,7", 0), (33, "analogValue,2", 300)):
        assert isinstance(await asyncio.wait_for(bas.request(subscribe(addr, obj, process, True, lifetime)), 3),
                          SimpleAckPDU)
    await eventually(lambda: len(heard) == 3, 3.0, "the first notifications")
    await close_stack(bas)      # its network down: no answer, no unsubscribe

    def stopped():
        return [r for r in caplog.records if "stopped answering" in r.getMessage()]
    gateway.set(EVENT_LEVEL, 1.0)
    await eventually(stopped, 5.0, "the silent subscriber logged")
    [line] = stopped()
    said = line.getMessage()
    assert "its confirmed subscription cancelled (process 33 analog-value,2)" in said, said
    assert "those without a lifetime kept (process 31 analog-value,4, process 32 analog-value,7), which a BAS never " \
        "renews: not notified until it answers again" in said, said
    assert sorted(s[0] for s in await cov_subscriptions(peer, addr)) == [31, 32]

    gateway.set(EVENT_LEVEL, 2.0)       # changes it misses, tried once each retry, not once each change
    gateway.set(EVENT_START_MINUTES, 7.0)
    await asyncio.sleep(1.0)
    assert len(stopped()) == 1

    heard.clear()
    bas = await bas_on(port)            # back, holding its subscriptions as before
    try:
        if back_by == "subscribing":
            assert isinstance(await asyncio.wait_for(bas.request(subscribe(addr, "analogValue,2", 33, True, 300)), 3),
                              SimpleAckPDU)
        await eventually(lambda: {31: 2.0, 32: 7.0}.items() <= dict(heard).items(), 5.0, "the values it missed")
    finally:
        await close_stack(bas)
    back = [r.getMessage() for r in caplog.records if " answers again:" in r.getMessage()]
    assert back == [f"COV subscriber 127.0.0.1:{port} answers again: notified of the 2 point(s) it watches without "
                    "a lifetime"], back
    assert errors_logged(caplog) == []


async def test_a_subscription_its_subscriber_disowns_is_cancelled(gateway, peer, caplog):
    # a BAS restarted with new process identifiers answers the old ones' confirmed notifications unknown-subscription:
    # kept, an indefinite one was notified and refused at every change until the gateway restarted, each holding a
    # place of the source's 25 (after a second such restart a BAS watching all 16 points was refused its own)
    caplog.set_level(logging.INFO)
    addr = where(gateway)
    # process 9 is a subscription the peer's stack holds no context for (as after a restart): it answers
    # services/unknown-subscription to its notifications
    assert isinstance(await request(peer, subscribe(addr, "analogValue,4", 9, True, 0)), SimpleAckPDU)
    async with peer.app.change_of_value(Address(addr), ObjectIdentifier("analogValue,7"), 10, True, 0) as scm:
        await notification(scm)

        async def only_the_live_one_left():
            return [s[0] for s in await cov_subscriptions(peer, addr)] == [10]
        await eventually(only_the_live_one_left, 5.0, "the disowned subscription cancelled")
        for level in (1.0, 2.0):  # no more notifications to it, nor lines
            gateway.set(EVENT_LEVEL, level)
            await asyncio.sleep(0.2)
        gateway.set(EVENT_START_MINUTES, 5.0)
        assert (await notification(scm))["present-value"] == 5.0    # the live one goes on
    lines = [r for r in caplog.records if "process 9" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "holds no such subscription" in lines[0].getMessage() and "cancelled" in lines[0].getMessage()
    assert errors_logged(caplog) == []


async def test_a_notification_lost_to_this_machines_own_link_keeps_the_subscription(gateway, free_udp_port, caplog):
    # the gateway's own link down for 30 s: every confirmed subscription was cancelled as if the BAS had gone, the
    # BAS blamed in the log and never told, its graphic frozen until its own lifetime ended (helper links41)
    caplog.set_level(logging.INFO)
    addr = Address(where(gateway))
    gateway.app.device_object.apduTimeout = 200
    gateway.app.device_object.numberOfApduRetries = 1
    bas = await start_stack(f"127.0.0.1/8:{free_udp_port()}", 4000003, "cut-off-bas")
    kept = bas.change_of_value(addr, ObjectIdentifier("analogValue,4"), 78, True, 300)
    await kept.__aenter__()
    try:
        await close_stack(bas)      # no answer, as across a link that is down
        # the device's watch of its own address finds the link down, as /sys/class/net says for a cable out
        gateway.own_address._probe = lambda address: Missing(LINK, "the link of eth0, which holds 127.0.0.1, is down")
        gateway.own_address.check()
        for level in (1.0, 2.0):
            gateway.set(EVENT_LEVEL, level)
            await asyncio.sleep(0.1)

        def said():
            return [r.getMessage() for r in caplog.records if "COV notifications not delivered" in r.getMessage()]
        await eventually(said, 5.0, "the kept subscription logged")
        await asyncio.sleep(0.5)
    finally:
        await kept.__aexit__(RuntimeError, RuntimeError(), None)
    assert said() == ["COV notifications not delivered while the link of eth0, which holds 127.0.0.1, is down: the "
                      "subscriptions are kept, and a later change reaches their subscribers"]
    assert not [r for r in caplog.records if "stopped answering" in r.getMessage()]
    assert [c.proc_id for c in gateway.app._cov_subscriptions()] == [78]
    gateway.own_address._probe = lambda address: None           # the link back: the next spell is said again
    gateway.own_address.check()
    assert getattr(gateway.app, "_cov_kept_for", None) is None


async def test_subscribers_gone_silent_in_numbers_are_one_line_then_a_count(
        gateway, peer, free_udp_port, caplog, monkeypatch):
    # A subscriber's address is whatever its request said (a Forwarded-NPDU makes one up per datagram): each that never
    # answered was a WARNING of its own, about 1.5 lines a second from one host. The operator log's flood guard (as
    # setup_logging installs it) keeps the first, then counts.
    caplog.set_level(logging.INFO)
    # pytest keeps one capture handler for the whole run: a filter added to it stayed, and the next test files' lines
    # (test_bacnet_dcc's refusals) were counted, not captured, failing them when both ran in one worker
    monkeypatch.setattr(caplog.handler, "filters", [*caplog.handler.filters, FloodGuard()])
    addr = Address(where(gateway))
    gateway.app.device_object.apduTimeout = 200
    gateway.app.device_object.numberOfApduRetries = 1
    vanished = []
    for i in range(3):
        bas = await start_stack(f"127.0.0.1/8:{free_udp_port()}", 4000010 + i, f"vanishing-{i}")
        context = bas.change_of_value(addr, ObjectIdentifier("analogValue,4"), 90 + i, True, 300)
        await context.__aenter__()
        vanished.append(context)
        await close_stack(bas)
    try:
        gateway.set(EVENT_LEVEL, 2.0)
        await eventually(lambda: gateway.app._cov_subscriptions() == [], 10, "all three cancelled")
    finally:
        for context in vanished:
            await context.__aexit__(RuntimeError, RuntimeError(), None)
    said = [r.getMessage() for r in caplog.records if "stopped answering" in r.getMessage()]
    assert len(said) == 1 and said[0].endswith("(repeats are counted, one line per 600 s at most)"), said


async def test_a_subscription_naming_the_device_itself_is_refused(gateway, peer, caplog):
    # a Forwarded-NPDU may claim any origin: the device's own address had it send its notifications to itself
    caplog.set_level(logging.DEBUG, logger="bacnet_api.services")
    own = ("127.0.0.1", port_of(gateway))
    subscription = SubscribeCOVRequest(subscriberProcessIdentifier=5, monitoredObjectIdentifier=ObjectIdentifier(
        "analogValue,4"), issueConfirmedNotifications=True, lifetime=300)
    with udp("127.0.0.1") as sender:
        sender.sendto(forwarded(own, confirmed(1, subscription)), own)
        await eventually(lambda: "it is this device's own address" in caplog.text, 5, "the subscription handled")
    assert await cov_subscriptions(peer, where(gateway)) == []


def test_a_forwarded_npdu_claiming_a_broadcast_or_multicast_origin_is_no_station():
    # answered (or subscribed to COV), such an "origin" had the device send to every station there is, off the box
    for origin, one in (("255.255.255.255", False), ("224.0.0.1", False), ("0.0.0.0", False), ("10.1.2.3", True),
                        ("192.168.1.255", False), ("192.168.2.255", True)):
        assert _one_station(IPv4Address(f"{origin}:47808"), ipaddress.IPv4Address("192.168.1.255")) is one, origin


async def test_a_forwarded_npdu_claiming_its_own_networks_broadcast_is_not_answered(gateway):
    # the device on 127.0.0.1/8: 127.255.255.255 is its network's broadcast, as 192.168.1.255 is a site /24's (on
    # loopback: the kernel keeps 127/8 on lo). A read claiming it as origin was answered to every station there.
    own = ("127.0.0.1", port_of(gateway))
    read = ReadPropertyRequest(objectIdentifier=ObjectIdentifier(f"device,{DEVICE_ID}"),
                               propertyIdentifier="objectName")
    with udp("127.255.255.255") as everyone, udp("127.0.0.2") as one, udp("127.0.0.1") as sender:
        sender.sendto(forwarded(everyone.getsockname(), confirmed(1, read)), own)
        sender.sendto(forwarded(one.getsockname(), confirmed(2, read)), own)
        assert await answer_to(one) == "complex-ack"      # a station's origin is answered, there
        assert await answer_to(everyone, 0.5) == "none"


# ----- the device object


async def test_device_object_describes_this_device(gateway, peer):
    addr, device = where(gateway), f"device {DEVICE_ID}"
    assert await peer.read(addr, device, "vendorName") == "edge-gateway project"
    assert await peer.read(addr, device, "modelName") == "edge-gateway"
    assert await peer.read(addr, device, "firmwareRevision") == version("edge-gateway")
    assert await peer.read(addr, device, "applicationSoftwareVersion") == version("edge-gateway")

    object_types = await peer.read(addr, device, "protocolObjectTypesSupported")
    names = {v: k for k, v in ObjectTypesSupported._bitstring_names.items()}
    assert {names[i] for i, bit in enumerate(object_types) if bit} == {
        "device", "analog-value", "binary-value", "network-port"}

    services = await peer.read(addr, device, "protocolServicesSupported")
    names = {v: k for k, v in ServicesSupported._bitstring_names.items()}
    assert {names[i] for i, bit in enumerate(services) if bit} == {
        "read-property", "read-property-multiple", "write-property", "write-property-multiple",
        "subscribe-cov", "device-communication-control", "who-is", "who-has"}  # not reinitialize-device


async def test_claimed_services_answer_and_others_are_rejected(gateway, peer):
    addr = where(gateway)
    assert [i.iAmDeviceIdentifier[1] for i in await peer.who_is(addr, wait=2.0)] == [DEVICE_ID]
    i_haves = await asyncio.wait_for(
        peer.app.who_has(object_name=CharacterString(METER_POWER), address=Address(addr), timeout=1), 3)
    assert [(i.deviceIdentifier[1], str(i.objectName)) for i in i_haves] == [(DEVICE_ID, METER_POWER)]
    assert await peer.read(addr, "analogValue 6", "objectName") == METER_POWER
    rows = await peer.read_multiple(addr, [("analogValue 6", ["objectName"])])
    assert rows[("analogValue 6", "objectName")] == METER_POWER
    assert await peer.write(addr, "analogValue 1", "presentValue", 5.0, priority=8) is None
    answer = await request(peer, write_multiple(addr, "analogValue,1", "presentValue", Real(6.0)))
    assert isinstance(answer, SimpleAckPDU)
    async with peer.app.change_of_value(Address(addr), ObjectIdentifier("analogValue,1"), None, False, 60) as scm:
        assert (await notification(scm))["present-value"] == 6.0

    # bacpypes3 has a ReadRange handler that only raises NotImplementedError
    read_range = ReadRangeRequest(objectIdentifier=ObjectIdentifier(f"device,{DEVICE_ID}"),
                                  propertyIdentifier=PropertyIdentifier("objectList"),
                                  destination=Address(addr))
    answer = await request(peer, read_range)
    assert isinstance(answer, RejectPDU) and str(answer.apduAbortRejectReason) == "unrecognized-service"


async def test_device_lists_its_active_cov_subscriptions(gateway, peer):
    addr = Address(where(gateway))
    device = ObjectIdentifier(f"device,{DEVICE_ID}")

    async def subscriptions() -> list:
        return list(await asyncio.wait_for(peer.app.read_property(addr, device, "activeCovSubscriptions"), 3))

    assert await subscriptions() == []
    async with peer.app.change_of_value(addr, ObjectIdentifier("analogValue,1"), 41, True, 60) as scm:
        await notification(scm)
        async with peer.app.change_of_value(addr, ObjectIdentifier("binaryValue,4"), 42, False, 0):
            listed = {int(s.recipient.processIdentifier): s for s in await subscriptions()}
            assert sorted(listed) == [41, 42]
            port = int(peer.address.rpartition(":")[2])
            for s in listed.values():  # the peer, as a BACnet/IP address: 4 bytes of IP, 2 of port
                assert s.recipient.recipient.address.macAddress == bytes([127, 0, 0, 1]) + port.to_bytes(2, "big")
            commanded, opt_out = listed[41], listed[42]
            assert commanded.monitoredPropertyReference.objectIdentifier == ObjectIdentifier("analogValue,1")
            assert str(commanded.monitoredPropertyReference.propertyIdentifier) == "present-value"
            assert commanded.issueConfirmedNotifications and 55 <= commanded.timeRemaining <= 60
            assert opt_out.monitoredPropertyReference.objectIdentifier == ObjectIdentifier("binaryValue,4")
            assert not opt_out.issueConfirmedNotifications and opt_out.timeRemaining == 0  # no lifetime
        assert [int(s.recipient.processIdentifier) for s in await subscriptions()] == [41]
    assert await subscriptions() == []


# ----- the answers BACnet prescribes for reads and writes


async def test_network_port_instance_4194303_is_the_port_the_request_came_in_on(gateway, peer, caplog):
    # clause 15.5.2: a tool that does not know the port's instance asks for 4194303 (its address, mask, BACnet/IP
    # mode); the device answered unknown-object
    addr = where(gateway)
    assert await peer.read(addr, "networkPort 4194303", "objectIdentifier") == "networkPort 1"
    assert await peer.read(addr, "networkPort 4194303", "apduLength") == 1476
    rows = await peer.read_multiple(addr, [("networkPort 4194303", ["objectName", "networkType"])])
    assert rows == {("networkPort 1", "objectName"): await peer.read(addr, "networkPort 1", "objectName"),
                    ("networkPort 1", "networkType"): "ipv4"}, rows
    # it is the network port, whose properties are fixed
    answer = await request(peer, write_one(addr, "networkPort,4194303", "objectName", CharacterString("x")))
    assert isinstance(answer, ErrorPDU), answer
    assert f"{answer.errorClass}/{answer.errorCode}" == "property/write-access-denied"
    # an instance the device does not have is still no port
    assert isinstance(await peer.read(addr, "networkPort 2", "objectName"), PeerError)
    assert errors_logged(caplog) == []


async def test_device_instance_4194303_is_this_device(gateway, peer, caplog):
    addr = where(gateway)
    assert await peer.read(addr, "device 4194303", "objectName") == "TestGateway"
    assert await peer.read(addr, "device 4194303", "objectIdentifier") == f"device {DEVICE_ID}"

    rows = await peer.read_multiple(addr, [("device 4194303", ["objectName", "vendorName"])])
    assert rows == {(f"device {DEVICE_ID}", "objectName"): "TestGateway",
                    (f"device {DEVICE_ID}", "vendorName"): "edge-gateway project"}
    answer = await request(peer, read_multiple(addr, [("device,4194303", ["all"])]))
    assert isinstance(answer, ReadPropertyMultipleACK), answer
    [result] = answer.listOfReadAccessResults
    assert result.objectIdentifier == ObjectIdentifier(f"device,{DEVICE_ID}")
    assert {str(e.propertyIdentifier) for e in result.listOfResults} >= {"object-name", "object-list"}

    # it is the device, whose properties are fixed
    answer = await request(peer, write_one(addr, "device,4194303", "objectName", CharacterString("x")))
    assert isinstance(answer, ErrorPDU), answer
    assert f"{answer.errorClass}/{answer.errorCode}" == "property/write-access-denied"
    answer = await request(peer, write_multiple(addr, "device,4194303", "objectName", CharacterString("x"), None))
    assert isinstance(answer, WritePropertyMultipleError), answer
    assert str(answer.errorType.errorCode) == "write-access-denied"
    assert await peer.read(addr, f"device {DEVICE_ID}", "objectName") == "TestGateway"
    assert errors_logged(caplog) == []


async def test_required_and_optional_put_conditionally_required_properties_with_the_required(gateway, peer, caplog):
    # A commandable point requires its command properties and a segmenting device its segment limits:
    # bacpypes3 called priorityArray required and relinquishDefault optional on one point, all three optional on
    # the other, and the device's segment limits optional while it says segmented-both.
    addr = where(gateway)
    answer = await request(peer, read_multiple(addr, [
        ("analogValue,1", ["required"]), ("binaryValue,4", ["required"]), (f"device,{DEVICE_ID}", ["required"]),
        ("analogValue,1", ["optional"]), ("binaryValue,4", ["optional"]), (f"device,{DEVICE_ID}", ["optional"])]))
    assert isinstance(answer, ReadPropertyMultipleACK), answer
    groups = [{str(e.propertyIdentifier) for e in r.listOfResults} for r in answer.listOfReadAccessResults]
    command = {"priority-array", "relinquish-default", "current-command-priority"}
    segments = {"max-segments-accepted", "apdu-segment-timeout"}
    assert command <= groups[0] and command <= groups[1] and segments <= groups[2], groups
    assert not (command & (groups[3] | groups[4])) and not segments & groups[5], groups
    assert errors_logged(caplog) == []


@pytest.mark.parametrize("group", ["all", "required", "optional"])
async def test_read_property_multiple_of_a_missing_object_answers_the_others(gateway, peer, caplog, group):
    addr = where(gateway)
    answer = await request(peer, read_multiple(addr, [
        ("analogValue,4", ["presentValue"]), ("analogValue,99", [group]), ("analogValue,6", [group])]))

    assert isinstance(answer, ReadPropertyMultipleACK), answer
    level, missing, meter = answer.listOfReadAccessResults
    assert level.objectIdentifier == ObjectIdentifier("analogValue,4")
    assert level.listOfResults[0].readResult.propertyValue.cast_out(Real) == 0.0
    assert missing.objectIdentifier == ObjectIdentifier("analogValue,99")
    [element] = missing.listOfResults
    assert str(element.propertyIdentifier) == group
    error = element.readResult.propertyAccessError
    assert f"{error.errorClass}/{error.errorCode}" == "object/unknown-object"
    assert meter.objectIdentifier == ObjectIdentifier("analogValue,6")
    read = {str(e.propertyIdentifier) for e in meter.listOfResults}
    assert ("object-name" in read) == (group != "optional") and ("description" in read) == (group != "required")
    assert all(e.readResult.propertyAccessError is None for e in meter.listOfResults)
    assert errors_logged(caplog) == []


@pytest.mark.parametrize("group", ["all", "required", "optional"])
async def test_read_property_multiple_of_a_group_with_an_array_index_is_refused_as_no_array(
        gateway, peer, caplog, group):
    # ALL, REQUIRED and OPTIONAL name no property, let alone an array: a tool that sends an index with one gets
    # property-is-not-an-array for that reference (as bacnet-stack answers), not every property's whole value as if
    # the index were not there, the other references of the request answered beside it
    addr = where(gateway)
    with_index = PropertyReference(propertyIdentifier=PropertyIdentifier(group), propertyArrayIndex=1)
    answer = await request(peer, ReadPropertyMultipleRequest(destination=Address(addr), listOfReadAccessSpecs=[
        ReadAccessSpecification(objectIdentifier=ObjectIdentifier("analogValue,1"), listOfPropertyReferences=[
            with_index, PropertyReference(propertyIdentifier=PropertyIdentifier("priorityArray"),
                                          propertyArrayIndex=0)]),
        ReadAccessSpecification(objectIdentifier=ObjectIdentifier("analogValue,99"), listOfPropertyReferences=[
            with_index])]))

    assert isinstance(answer, ReadPropertyMultipleACK), answer
    point, missing = answer.listOfReadAccessResults
    refused, length = point.listOfResults
    assert (str(refused.propertyIdentifier), refused.propertyArrayIndex) == (group, 1)
    error = refused.readResult.propertyAccessError
    assert f"{error.errorClass}/{error.errorCode}" == "property/property-is-not-an-array"
    assert length.readResult.propertyValue.cast_out(Unsigned) == 16     # the array beside it: 16 priorities
    [unknown] = missing.listOfResults       # the object is looked for first
    error = unknown.readResult.propertyAccessError
    assert f"{error.errorClass}/{error.errorCode}" == "object/unknown-object"
    assert errors_logged(caplog) == []


@pytest.mark.parametrize("obj, prop, value, priority, error", [
    ("analogValue,1", 9999, Real(1.0), 8, "property/unknown-property"),
    ("analogValue,4", "priorityArray", Real(1.0), None, "property/unknown-property"),  # not commandable
    ("analogValue,1", "priorityArray", Real(1.0), None, "property/write-access-denied"),
    ("analogValue,4", "presentValue", CharacterString("12"), None, "property/write-access-denied"),
    ("analogValue,4", "presentValue", Null(()), None, "property/write-access-denied"),
    (f"device,{DEVICE_ID}", "objectName", Real(1.0), None, "property/write-access-denied"),
    ("analogValue,1", "presentValue", CharacterString("12"), 8, "property/invalid-data-type"),
    ("analogValue,1", "presentValue", Enumerated(1), None, "property/invalid-data-type"),
    ("binaryValue,4", "presentValue", Real(1.0), 8, "property/invalid-data-type"),
    ("analogValue,1", "presentValue", Real(5000.0), 8, "property/value-out-of-range"),
    ("analogValue,99", "presentValue", Real(1.0), 8, "object/unknown-object"),
], ids=["vendor-property", "absent-property", "priority-array", "read-only-wrong-type", "read-only-null",
        "device-wrong-type", "string-for-real", "enumerated-for-real", "real-for-binary", "out-of-range",
        "unknown-object"])
@pytest.mark.parametrize("service", ["WriteProperty", "WritePropertyMultiple"])
async def test_refused_write_gets_the_error_bacnet_names(gateway, peer, caplog, obj, prop, value, priority, error,
                                                         service):
    addr = where(gateway)
    assert await peer.write(addr, "analogValue 1", "presentValue", 40.0, priority=8) is None

    if service == "WriteProperty":
        answer = await request(peer, write_one(addr, obj, prop, value, priority))
        assert isinstance(answer, ErrorPDU), answer
        assert f"{answer.errorClass}/{answer.errorCode}" == error
    else:
        answer = await request(peer, write_multiple(addr, obj, prop, value, priority))
        assert isinstance(answer, WritePropertyMultipleError), answer
        assert f"{answer.errorType.errorClass}/{answer.errorType.errorCode}" == error
        failed = answer.firstFailedWriteAttempt
        assert (failed.objectIdentifier, failed.propertyIdentifier) == (ObjectIdentifier(obj), PropertyIdentifier(prop))
    assert await peer.read(addr, "analogValue 1", "priorityArray") == [None] * 7 + [40.0] + [None] * 8
    assert await peer.read(addr, "analogValue 4", "presentValue") == 0.0
    assert await peer.read(addr, "binaryValue 4", "priorityArray") == [None] * 16
    assert await peer.read(addr, f"device {DEVICE_ID}", "objectName") == "TestGateway"
    assert errors_logged(caplog) == []


@pytest.mark.parametrize("point, obj, command", [
    (INPUT_POWER, "analogValue,1", Real(7.0)),
    (OPT_OUT, "binaryValue,4", Enumerated(1)),
])
@pytest.mark.parametrize("write", [write_one, functools.partial(write_multiple, priority=None)],
                         ids=["WriteProperty", "WritePropertyMultiple"])
async def test_null_without_priority_relinquishes_priority_16(gateway, peer, caplog, point, obj, command, write):
    addr, name = where(gateway), obj.replace(",", " ")
    seen = []
    gateway.on_write(point, seen.append)
    assert isinstance(await request(peer, write(addr, obj, "presentValue", command)), SimpleAckPDU)
    assert isinstance(await request(peer, write_one(addr, obj, "presentValue", command, 8)), SimpleAckPDU)
    assert (await peer.read(addr, name, "priorityArray"))[15] is not None

    answer = await request(peer, write(addr, obj, "presentValue", Null(())))

    assert isinstance(answer, SimpleAckPDU), answer
    slots = await peer.read(addr, name, "priorityArray")
    assert slots[15] is None and slots[7] is not None  # only 16 relinquished
    assert len(seen) == 3
    assert errors_logged(caplog) == []


@pytest.mark.parametrize("asker", ["gateway", "peer"])
async def test_an_answer_to_a_request_given_up_on_is_dropped_quietly(gateway, peer, asker):
    # A read's timeout cancels bacpypes3's request future; bacpypes3 unlists it only on the next loop turn, and an
    # answer landing before then raised InvalidStateError (logged with a traceback). The gateway's device asks as a
    # meter read past meter.timeout_seconds; start_stack's application (the BAS simulator, the CLI's read-meter, the
    # tests' peers) as a BAS's read past its timeout on a loaded box
    from bacpypes3.apdu import ReadPropertyRequest

    app, device, address = ((gateway.app, "device,4000001", peer.address.replace("/8", "")) if asker == "gateway"
                            else (peer.app, f"device,{DEVICE_ID}", where(gateway)))
    ask = ReadPropertyRequest(objectIdentifier=ObjectIdentifier(device), propertyIdentifier="objectName",
                              destination=Address(address))
    future = app.request(ask)
    future.cancel()     # given up on at once
    late = SimpleAckPDU(context=ask)
    late.pduSource, late.apduInvokeID = ask.pduDestination, ask.apduInvokeID
    await app.confirmation(late)       # the same loop turn: still listed, already cancelled
    await asyncio.sleep(0)
    assert future.cancelled()
    assert await peer.read(where(gateway), f"device,{DEVICE_ID}", "objectName") == "TestGateway"  # on as before


# ----- propertyList


# what every object has, which Property_List must not name (clause 12.1.x)
IDENTITY = {"objectIdentifier", "objectName", "objectType"}


@pytest.mark.parametrize("mode", ["normal", "foreign"])  # a foreign device's port has two more properties
async def test_property_list_of_every_object_leaves_out_the_four_the_standard_excludes(free_udp_port, peer, caplog,
                                                                                       mode):
    # bacpypes3 listed objectIdentifier, objectName, objectType and propertyList itself in every object's
    # propertyList: a BTL-style check flags it, and a client enumerating by it reads the list it is reading.
    foreign = dict(bbmd_address=f"127.0.0.1:{free_udp_port()}", bbmd_ttl=60) if mode == "foreign" else {}
    device = GatewayDevice(address=f"127.0.0.1/8:{free_udp_port()}", device_id=DEVICE_ID, device_name="TestGateway",
                           **foreign)
    await device.start()
    try:
        addr = where(device)
        objects = await peer.read(addr, f"device {DEVICE_ID}", "objectList")
        assert len(objects) == 2 + len(POINTS), objects  # the device, the network port and every point
        for obj in objects:
            listed = await peer.read(addr, obj, "propertyList")
            assert isinstance(listed, list) and listed, (obj, listed)
            assert not (IDENTITY | {"propertyList"}) & set(listed), (obj, listed)
            assert len(set(listed)) == len(listed), (obj, listed)
            # by array index: 0 is the length, 1..n the elements, n + 1 does not exist
            assert await peer.read(addr, obj, "propertyList", 0) == len(listed), obj
            assert [await peer.read(addr, obj, "propertyList", i) for i in range(1, len(listed) + 1)] == listed
            beyond = await peer.read(addr, obj, "propertyList", len(listed) + 1)
            assert isinstance(beyond, PeerError) and beyond.code == "invalidArrayIndex", (obj, beyond)
            # ReadPropertyMultiple: ALL still returns the three (required) beside exactly what is listed,
            # leaving propertyList out as BACnet does for ALL and REQUIRED; by name it reads as above
            rows = await peer.read_multiple(addr, [(obj, ["all", "propertyList"])])
            assert not isinstance(rows, PeerError), (obj, rows)
            everything = [prop for (_obj, prop) in rows]
            assert everything[-1] == "propertyList" and rows[(obj, "propertyList")] == listed, obj
            assert set(everything[:-1]) == set(listed) | IDENTITY, (obj, everything)
            assert rows[(obj, "objectIdentifier")] == obj
            required = await peer.read_multiple(addr, [(obj, ["required"])])
            assert IDENTITY <= {prop for (_obj, prop) in required} <= set(listed) | IDENTITY, (obj, required)
        if mode == "foreign":
            assert {"fdBbmdAddress", "fdSubscriptionLifetime"} <= set(await peer.read(addr, "networkPort 1",
                                                                                      "propertyList"))
    finally:
        await device.stop()
    assert errors_logged(caplog) == []


async def test_nothing_renames_creates_or_deletes_an_object_so_the_database_revision_stands(gateway, peer, caplog):
    # databaseRevision must go up when an object is created or deleted or an object's name or identifier
    # changes. Over BACnet the gateway allows none of them (names are a contract), so its revision is
    # fixed. Should a name, an identifier or CreateObject/DeleteObject ever be allowed, this fails:
    # the device must then count the change in databaseRevision.
    addr, device = where(gateway), f"device {DEVICE_ID}"
    revision = await peer.read(addr, device, "databaseRevision")
    assert isinstance(revision, int), revision
    objects = await peer.read(addr, device, "objectList")
    names = {obj: await peer.read(addr, obj, "objectName") for obj in objects}
    for obj in objects:
        oid = obj.replace(" ", ",")
        for prop, value in (("objectName", CharacterString("renamed")),
                            ("objectIdentifier", ObjectIdentifier(f"{oid.partition(',')[0]},4000"))):
            answer = await request(peer, write_one(addr, oid, prop, value))
            assert isinstance(answer, ErrorPDU) and str(answer.errorCode) == "write-access-denied", (obj, prop, answer)
            answer = await request(peer, write_multiple(addr, oid, prop, value, None))
            assert isinstance(answer, WritePropertyMultipleError), (obj, prop, answer)
            assert str(answer.errorType.errorCode) == "write-access-denied", (obj, prop)
    specifier = CreateObjectRequestObjectSpecifier(objectType=ObjectType("analogValue"))
    create = CreateObjectRequest(objectSpecifier=specifier, destination=Address(addr))
    delete = DeleteObjectRequest(objectIdentifier=ObjectIdentifier("analogValue,2"), destination=Address(addr))
    for apdu in (create, delete):
        answer = await request(peer, apdu)
        assert isinstance(answer, RejectPDU), answer
        assert str(answer.apduAbortRejectReason) == "unrecognized-service"
    assert await peer.read(addr, device, "objectList") == objects
    assert {obj: await peer.read(addr, obj, "objectName") for obj in objects} == names
    assert await peer.read(addr, device, "databaseRevision") == revision
    assert errors_logged(caplog) == []


# ----- the network port, COV subscription parameters and bounds, reserved priorities


@pytest.mark.parametrize("group", ["all", "required", "optional"])
async def test_read_property_multiple_of_the_network_port_answers_every_property(gateway, peer, caplog, group):
    # A BAS discovering the device reads ALL of every object: BAC0's empty fdBBMDAddress failed the whole
    # request (operational-problem), and networkNumber, macAddress and apduLength (required) were missing.
    # REQUIRED follows the device's protocol revision, 22: before revision 24 every port requires its
    # network number, that number's quality, its APDU length and link speed (bacpypes3 calls three optional).
    addr = where(gateway)
    answer = await request(peer, read_multiple(addr, [("network-port,1", [group]), ("analogValue,1", ["objectName"])]))

    assert isinstance(answer, ReadPropertyMultipleACK), answer
    port, point = answer.listOfReadAccessResults
    assert point.listOfResults[0].readResult.propertyValue.cast_out(CharacterString) == INPUT_POWER
    errors = {str(e.propertyIdentifier): e.readResult.propertyAccessError for e in port.listOfResults
              if e.readResult.propertyAccessError is not None}
    assert errors == {}
    read = {str(e.propertyIdentifier) for e in port.listOfResults}
    required = {"object-name", "network-type", "network-number", "network-number-quality", "apdu-length",
                "link-speed", "changes-pending"}
    optional = {"mac-address", "ip-address", "bacnet-ip-udp-port", "bacnet-ip-mode", "ip-default-gateway",
                "ip-dns-server"}
    if group == "required":
        assert read >= required and not read & optional, read
    elif group == "optional":
        assert read >= optional and not read & required, read
    else:
        assert read >= required | optional, read
    assert "fd-bbmd-address" not in read and "fd-subscription-lifetime" not in read  # normal mode, not foreign

    port_number = int(addr.rpartition(":")[2])
    assert await peer.read(addr, "networkPort 1", "macAddress") == bytes([127, 0, 0, 1]) + port_number.to_bytes(2, "big")
    assert await peer.read(addr, "networkPort 1", "networkNumber") == 0
    assert await peer.read(addr, "networkPort 1", "apduLength") == 1476
    # what the machine says: loopback has no default gateway; the name servers of resolv.conf
    assert bytes(await peer.read(addr, "networkPort 1", "ipDefaultGateway")) == bytes(4)
    assert [bytes(a) for a in await peer.read(addr, "networkPort 1", "ipDNSServer")] == dns_servers()
    answer = await request(peer, ReadPropertyRequest(objectIdentifier=ObjectIdentifier("network-port,1"),
                                                     propertyIdentifier=PropertyIdentifier("fdBBMDAddress"),
                                                     destination=Address(addr)))
    assert isinstance(answer, ErrorPDU) and f"{answer.errorClass}/{answer.errorCode}" == "property/unknown-property"
    assert errors_logged(caplog) == []


def subscribe(addr: str, obj: str, process: int, confirmed: bool | None = None, lifetime: int | None = None):
    apdu = SubscribeCOVRequest(subscriberProcessIdentifier=process, monitoredObjectIdentifier=ObjectIdentifier(obj),
                               destination=Address(addr))
    if confirmed is not None:
        apdu.issueConfirmedNotifications = confirmed
    if lifetime is not None:
        apdu.lifetime = lifetime
    return apdu


def cov_request(process: int, obj: str = "analogValue,7") -> SubscribeCOVRequest:
    """An unconfirmed subscription with no lifetime, for `confirmed` to encode."""
    return SubscribeCOVRequest(subscriberProcessIdentifier=process, monitoredObjectIdentifier=ObjectIdentifier(obj),
                               issueConfirmedNotifications=False, lifetime=0)


def acks_every_notification(peer: BacnetPeer) -> None:
    """The peer takes confirmed notifications of subscriptions it made as raw requests (its stack holds no context for
    them, and would answer unknown-subscription, which cancels them), as a BAS takes its own."""
    async def ack(apdu):
        await peer.app.response(SimpleAckPDU(context=apdu))
    peer.app.do_ConfirmedCOVNotificationRequest = ack


async def cov_subscriptions(peer: BacnetPeer, addr: str) -> list[tuple[int, str, bool, int]]:
    """(process, object, confirmed, seconds left) of each subscription the device lists."""
    listed = await asyncio.wait_for(peer.app.read_property(
        Address(addr), ObjectIdentifier(f"device,{DEVICE_ID}"), "activeCovSubscriptions"), 3)
    return [(int(s.recipient.processIdentifier), str(s.monitoredPropertyReference.objectIdentifier),
             bool(s.issueConfirmedNotifications), int(s.timeRemaining)) for s in listed]


def notifications_to(peer: BacnetPeer) -> asyncio.Queue:
    """The unconfirmed COV notifications the peer gets, as (process, seconds left, presentValue) of an analog point."""
    got: asyncio.Queue = asyncio.Queue()

    async def take(apdu) -> None:
        value = next(v.value for v in apdu.listOfValues if str(v.propertyIdentifier) == "present-value")
        got.put_nowait((int(apdu.subscriberProcessIdentifier), int(apdu.timeRemaining), float(value.cast_out(Real))))
    peer.app.do_UnconfirmedCOVNotificationRequest = take
    return got


async def test_a_notification_says_the_time_remaining_as_the_device_lists_it(gateway, peer):
    # clause 13.7.1.5 and 12.11.39 count the same seconds: the list said 60 of a lifetime of 60 and the first
    # notification, sent at the same moment, 59 (bacpypes3 rounds the notification's down)
    addr, got = where(gateway), notifications_to(peer)
    assert isinstance(await request(peer, subscribe(addr, "analogValue,4", 7, False, 60)), SimpleAckPDU)
    process, left, _ = await asyncio.wait_for(got.get(), 3)
    assert (process, left) == (7, 60)
    assert [s[3] for s in await cov_subscriptions(peer, addr)] == [60]


async def test_a_subscription_whose_lifetime_ended_during_a_stall_is_not_notified_and_the_others_are(gateway, peer,
                                                                                                     caplog):
    # A loop held up past a subscription's end (a loaded box) with a change to send before its timer ran: bacpypes3
    # computed a negative time remaining, failed with a traceback (ValueError: unsigned), and the subscriptions after
    # it in the list were not notified of the change
    addr, got = where(gateway), notifications_to(peer)
    for process, lifetime in ((8, 1), (9, 60)):
        assert isinstance(await request(peer, subscribe(addr, "analogValue,4", process, False, lifetime)), SimpleAckPDU)
        await asyncio.wait_for(got.get(), 3)
    time.sleep(2.2)     # the loop held up: the gateway runs in it
    gateway.set(EVENT_LEVEL, 3.0)
    process, left, value = await asyncio.wait_for(got.get(), 3)
    assert (process, value) == (9, 3.0) and 0 < left <= 60
    await asyncio.sleep(0.3)    # nothing more comes (the ended one's notification would be as quick)
    assert got.empty()
    assert [s[0] for s in await cov_subscriptions(peer, addr)] == [9]
    assert errors_logged(caplog) == []


@pytest.mark.timeout(15)
async def test_subscribe_cov_with_a_lifetime_but_no_confirmed_flag_is_rejected(gateway, peer, caplog):
    # a lifetime needs issueConfirmedNotifications (clause 13.14.1.1.3); it failed with a traceback
    addr = where(gateway)
    answer = await request(peer, subscribe(addr, "analogValue,2", 5, None, 60))
    assert isinstance(answer, RejectPDU), answer
    assert str(answer.apduAbortRejectReason) == "missing-required-parameter"
    assert await cov_subscriptions(peer, addr) == []
    assert errors_logged(caplog) == []


@pytest.mark.timeout(15)
@pytest.mark.parametrize("confirmed", [True, False], ids=["confirmed", "unconfirmed"])
async def test_subscribe_cov_without_a_lifetime_is_an_indefinite_subscription(gateway, peer, caplog, confirmed):
    """Lifetime absent is an indefinite lifetime, as 0 (clause 13.14.1.1.4), which the device takes: a BAS that
    leaves it out (as some do for 'permanent') was rejected missing-required-parameter and fell back to polling."""
    addr = where(gateway)
    acks_every_notification(peer)
    answer = await request(peer, subscribe(addr, "analogValue,5", 9, confirmed, None))
    assert isinstance(answer, SimpleAckPDU), answer
    assert await cov_subscriptions(peer, addr) == [(9, "analog-value,5", confirmed, 0)]   # 0: no lifetime
    # cancelled as any other
    assert isinstance(await request(peer, subscribe(addr, "analogValue,5", 9)), SimpleAckPDU)
    assert await cov_subscriptions(peer, addr) == []
    assert errors_logged(caplog) == []


@pytest.mark.timeout(15)
async def test_subscribe_cov_renewal_replaces_the_confirmed_flag(gateway, peer, caplog):
    addr = where(gateway)
    acks_every_notification(peer)
    assert isinstance(await request(peer, subscribe(addr, "analogValue,4", 6, False, 0)), SimpleAckPDU)
    assert await cov_subscriptions(peer, addr) == [(6, "analog-value,4", False, 0)]

    assert isinstance(await request(peer, subscribe(addr, "analogValue,4", 6, True, 120)), SimpleAckPDU)
    [(process, obj, confirmed, left)] = await cov_subscriptions(peer, addr)
    assert (process, obj, confirmed) == (6, "analog-value,4", True) and 115 <= left <= 120

    assert isinstance(await request(peer, subscribe(addr, "analogValue,4", 6, False, 60)), SimpleAckPDU)
    [(process, obj, confirmed, left)] = await cov_subscriptions(peer, addr)
    assert (process, obj, confirmed) == (6, "analog-value,4", False) and 55 <= left <= 60

    assert isinstance(await request(peer, subscribe(addr, "analogValue,4", 6)), SimpleAckPDU)  # cancel
    assert await cov_subscriptions(peer, addr) == []
    assert errors_logged(caplog) == []


@pytest.mark.timeout(15)
@pytest.mark.parametrize("obj", ["device,4194303", "network-port,1"])
async def test_subscribe_cov_to_an_object_without_cov_says_so(gateway, peer, caplog, obj):
    # the device and its network port report no changes of value: a BAS is told that the object lacks the
    # function (bacpypes3 said the generic cov-subscription-failed), and its cancellation succeeds as any does
    addr = where(gateway)
    answer = await request(peer, subscribe(addr, obj, 7, False, 60))
    assert isinstance(answer, ErrorPDU), answer
    assert f"{answer.errorClass}/{answer.errorCode}" == "object/optional-functionality-not-supported"
    assert isinstance(await request(peer, subscribe(addr, obj, 7)), SimpleAckPDU)
    answer = await request(peer, subscribe(addr, "analogValue,99", 7, False, 60))
    assert isinstance(answer, ErrorPDU) and f"{answer.errorClass}/{answer.errorCode}" == "object/unknown-object"
    assert await cov_subscriptions(peer, addr) == []
    assert errors_logged(caplog) == []


async def test_a_bas_restarted_with_new_process_identifiers_subscribes_to_every_point_again(gateway, peer, caplog):
    # a BAS watching all 16 points restarted (same address, new process identifiers) while its old subscriptions ran
    # out: the source's share was 25, so 7 of its 16 were refused no-space-to-add-list-element for up to a lifetime
    addr = where(gateway)
    oids = [p.object_id.replace(" ", ",") for p in POINTS]
    for first in (1, 101):
        answers = [await request(peer, subscribe(addr, oid, first + i, False, 300)) for i, oid in enumerate(oids)]
        refused = [str(getattr(a, "errorCode", a)) for a in answers if not isinstance(a, SimpleAckPDU)]
        assert refused == [], (first, refused)
    assert len(await cov_subscriptions(peer, addr)) == 2 * len(POINTS)


@pytest.mark.timeout(30)
async def test_cov_subscriptions_are_bounded_and_one_source_holds_twice_the_points(gateway, peer, caplog):
    # A BAS that subscribes with a new process identifier at each restart must not grow the list forever; and one
    # client, unconfirmed with no lifetime, took all of it until a restart: every other BAS was then refused.
    MAX_COV_SUBSCRIPTIONS, SHARE = 100, 32  # bacnet_api.services' MAX_COV_SUBSCRIPTIONS and COV_PER_SOURCE, documented
    caplog.set_level(logging.INFO)
    addr, gateway_at = where(gateway), ("127.0.0.1", port_of(gateway))
    acks_every_notification(peer)

    for i in range(SHARE):
        assert isinstance(await request(peer, subscribe(addr, "analogValue,7", 1000 + i, False, 0)), SimpleAckPDU), i
    for apdu in (subscribe(addr, "analogValue,7", 5000, False, 0),
                 subscribe(addr, "binaryValue,4", 1000, False, 0)):  # another object, same process
        answer = await request(peer, apdu)
        assert isinstance(answer, ErrorPDU), answer
        assert f"{answer.errorClass}/{answer.errorCode}" == "resources/no-space-to-add-list-element"
    # renewing one it holds still works
    assert isinstance(await request(peer, subscribe(addr, "analogValue,7", 1000, True, 60)), SimpleAckPDU)

    # three more sources fill the table (the third finding it full short of its share), and a fifth finds it full
    with udp("127.0.0.1") as a, udp("127.0.0.1") as b, udp("127.0.0.1") as c, udp("127.0.0.1") as fifth:
        for sock, room in ((a, SHARE), (b, SHARE), (c, MAX_COV_SUBSCRIPTIONS - 3 * SHARE)):
            for i in range(room + 1):
                sock.sendto(unicast(confirmed(i, cov_request(i))), gateway_at)
                assert await answer_to(sock) == ("ack" if i < room else NO_SPACE), i
        assert len(await cov_subscriptions(peer, addr)) == MAX_COV_SUBSCRIPTIONS
        fifth.sendto(unicast(confirmed(1, cov_request(1))), gateway_at)
        assert await answer_to(fifth) == NO_SPACE
        # a cancellation makes room for one more
        assert isinstance(await request(peer, subscribe(addr, "analogValue,7", 1001)), SimpleAckPDU)
        fifth.sendto(unicast(confirmed(2, cov_request(1))), gateway_at)
        assert await answer_to(fifth) == "ack"
    listed = await cov_subscriptions(peer, addr)
    assert len(listed) == MAX_COV_SUBSCRIPTIONS
    assert {p for p, *_ in listed} == set(range(SHARE)) | {1000} | set(range(1002, 1000 + SHARE))

    # the first refusal is said, naming who holds the most, and the first taken after it; the refusals that followed
    # within 10 min are counted for the next such line
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if "SubscribeCOV" in r.getMessage()]
    source = peer.address.replace("/8", "")
    assert [level for level, _ in lines] == ["WARNING", "INFO"], lines
    assert (f"SubscribeCOV from {source} refused (no-space-to-add-list-element): it holds 32, the most one source "
            f"may; the most are held by {source} (32), of 32 in all") in lines[0][1], lines
    assert "accepted again (from 127.0.0.1:" in lines[1][1] and "after 2 refused" in lines[1][1], lines
    assert errors_logged(caplog) == []


@pytest.mark.parametrize("priority, error", [
    (6, "property/write-access-denied"),  # reserved for Minimum On/Off
    (0, "property/value-out-of-range"),
    (17, "property/value-out-of-range"),
])
@pytest.mark.parametrize("point, obj, command", [
    (INPUT_POWER, "analogValue,1", Real(7.0)),
    (OPT_OUT, "binaryValue,4", Enumerated(1)),
])
@pytest.mark.parametrize("service", ["WriteProperty", "WritePropertyMultiple"])
async def test_write_at_a_reserved_or_invalid_priority_is_refused(gateway, peer, caplog, priority, error, point,
                                                                   obj, command, service):
    addr, name = where(gateway), obj.replace(",", " ")
    seen = []
    gateway.on_write(point, seen.append)

    if service == "WriteProperty":
        answer = await request(peer, write_one(addr, obj, "presentValue", command, priority))
        assert isinstance(answer, ErrorPDU), answer
        assert f"{answer.errorClass}/{answer.errorCode}" == error
    else:
        answer = await request(peer, write_multiple(addr, obj, "presentValue", command, priority))
        assert isinstance(answer, WritePropertyMultipleError), answer
        assert f"{answer.errorType.errorClass}/{answer.errorType.errorCode}" == error
    assert await peer.read(addr, name, "priorityArray") == [None] * 16
    assert seen == []
    assert errors_logged(caplog) == []


async def test_a_fault_in_serving_an_unconfirmed_request_is_traced_once_not_at_each_request(gateway, peer, caplog,
                                                                                           monkeypatch):
    # anyone on the network can send the request that meets it, as often as they like: a traceback each time
    caplog.set_level(logging.DEBUG, logger="bacnet_api.services")
    addr = where(gateway)

    def broken(apdu):
        raise RuntimeError("a fault in serving Who-Has")
    monkeypatch.setattr(gateway.app, "do_WhoHasRequest", broken)
    for _ in range(3):
        assert await asyncio.wait_for(
            peer.app.who_has(object_name=CharacterString(METER_POWER), address=Address(addr), timeout=0.5), 3) == []
    failed = [r for r in caplog.records if r.getMessage().startswith("BACnet: WhoHas from")]
    assert [r.levelno for r in failed] == [logging.ERROR, logging.DEBUG, logging.DEBUG], failed
    assert failed[0].exc_info and not failed[1].exc_info
