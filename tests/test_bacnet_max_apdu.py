"""The largest APDU the gateway's device says it takes (BACnet/IP's 1476), and that it takes and asks for just that:
its I-Am, its device object and network port, a BAS's second real bacpypes3 stack sizing its requests by the I-Am,
the gateway's own requests (to the meter), and its segmented answers to a BAS that takes 1476."""
from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from bacpypes3.apdu import ConfirmedRequestPDU
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import ObjectIdentifier

from test_bacnet_device import DEVICE_ID, gateway, peer, port_of, where  # noqa: F401 - shared fixtures
from test_bacnet_segmentation import RawClient, segmented_answer

pytestmark = pytest.mark.timeout(60)


async def test_the_i_am_device_object_network_port_and_own_requests_say_1476(gateway, peer):
    # BAC0 left bacpypes3's 1024 while the device took requests of 1476 octets whole
    addr = where(gateway)
    i_am = await peer.who_is(addr, wait=2.0)
    assert [(int(i.maxAPDULengthAccepted), str(i.segmentationSupported)) for i in i_am] == [(1476, "segmented-both")]
    assert await peer.read(addr, f"device {DEVICE_ID}", "maxApduLengthAccepted") == 1476
    assert await peer.read(addr, "networkPort 1", "apduLength") == 1476

    # the gateway as a client (its meter reads): a meter may answer it in APDUs of up to 1476 octets
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as meter:
        meter.bind(("127.0.0.1", 0))
        meter.setblocking(False)
        read = asyncio.create_task(gateway.app.read_property(
            Address(f"127.0.0.1:{meter.getsockname()[1]}"), ObjectIdentifier("analogInput,2"), "presentValue"))
        try:
            async with asyncio.timeout(2):
                data, _ = await asyncio.get_running_loop().sock_recvfrom(meter, 1500)
        finally:
            read.cancel()
        await asyncio.gather(read, return_exceptions=True)
    apdu = data[6:]
    assert apdu[0] >> 4 == 0 and apdu[1] & 0x0F == 5, apdu.hex()   # a confirmed request, max-APDU code 5: 1476


async def test_a_bas_sizing_its_request_by_the_i_am_sends_1476_octets_whole_and_is_answered(gateway, peer):
    # A BAS takes the device's limit from its I-Am and segments (or splits) a longer request: at 1024 a
    # ReadPropertyMultiple of 1,400 octets went in two segments the device did not need
    addr = where(gateway)
    await peer.who_is(addr, wait=2.0)
    sent = []
    down = peer.app.asap.request

    async def seen(apdu):
        sent.append(apdu)
        await down(apdu)
    peer.app.asap.request = seen
    count = 696      # presentValue of analogValue 1 that many times: 1,400 octets of request, 6 KB of answer
    result = await peer._bounded(peer.app.read_property_multiple(
        Address(addr), [ObjectIdentifier("analogValue,1"), ["presentValue"] * count]))
    assert len(result) == count, result
    requests = [a for a in sent if isinstance(a, ConfirmedRequestPDU)]
    assert [(a.apduSeg, 4 + len(a.pduData)) for a in requests] == [(False, 1403)]


# ALL of every point: about 2,200 octets of answer, more than one APDU of 1476
RPM_EVERY_POINT = b"".join(bytes([0x0C]) + struct.pack(">I", (kind << 22) | i) + bytes([0x1E, 0x09, 0x08, 0x1F])
                           for kind, count in ((2, 10), (5, 6)) for i in range(1, count + 1))


async def test_segments_to_a_bas_that_takes_1476_fit_it_header_included(gateway):
    client = RawClient(port_of(gateway))
    try:
        client.send(bytes([0x02, 0x05, 40, 14]) + RPM_EVERY_POINT)     # 1476 octets, segments accepted
        segments = await segmented_answer(client, 40)
    finally:
        client.close()
    assert len(segments) >= 2 and max(len(s) for s in segments) == 1476, [len(s) for s in segments]
