"""The device's socket is open from the stack's first moment, and the gateway sets the device up after it
(databaseRevision from storage.path, the BAS's restored commands, what a write starts): a request that comes
before GatewayDevice.serve() waits for it, read from a second real bacpypes3 stack on loopback."""
from __future__ import annotations

import asyncio
import logging

import pytest

from bacnet_api.device import GatewayDevice
from bacnet_api.points import BY_NAME, OPT_OUT, POINTS
from bacnet_peer import BacnetPeer, PeerError
from waiting import eventually

pytestmark = pytest.mark.timeout(60)

DEVICE_ID = 500124
OPT_OUT_ID = BY_NAME[OPT_OUT].object_id


def where(device: GatewayDevice) -> str:
    return device.address.replace("/8", "")


def held(device: GatewayDevice) -> int:
    return device.app._waiting


@pytest.fixture
async def unserved(free_udp_port):
    device = GatewayDevice(address=f"127.0.0.1/8:{free_udp_port()}", device_id=DEVICE_ID, device_name="Starting")
    await device.start(serve=False)
    try:
        yield device
    finally:
        await device.stop()


@pytest.fixture
async def peer(free_udp_port):
    async with BacnetPeer(free_udp_port(), timeout=10.0) as p:
        yield p


async def test_requests_before_serve_are_answered_as_the_device_is_once_set_up(unserved, peer, caplog):
    caplog.set_level(logging.INFO, logger="bacnet_api")
    addr, device = where(unserved), f"device {DEVICE_ID}"
    taken = []
    revision = asyncio.create_task(peer.read(addr, device, "databaseRevision"))
    objects = asyncio.create_task(peer.read(addr, device, "objectList"))
    write = asyncio.create_task(peer.write(addr, OPT_OUT_ID, "presentValue", "active", priority=8))
    await eventually(lambda: held(unserved) == 3, 10, "the three requests waiting")
    assert not (revision.done() or objects.done() or write.done())
    # what the gateway's start does before it serves: the last run's revision, the write's listener
    unserved.database_revision = 7
    unserved.on_write(OPT_OUT, taken.append)
    unserved.serve()
    assert await asyncio.wait_for(revision, 10) == 7
    assert sorted(await asyncio.wait_for(objects, 10)) == sorted(
        {device, "networkPort 1"} | {p.object_id for p in POINTS})
    assert await asyncio.wait_for(write, 10) is None
    assert taken == [True] and unserved.get(OPT_OUT) is True
    lines = [r.getMessage() for r in caplog.records if "answering on" in r.getMessage()]
    assert len(lines) == 1 and "(3 request(s) that came during the start answered now)" in lines[0], lines
    # served: no more waiting
    assert await peer.read(addr, device, "databaseRevision") == 7


async def test_who_is_before_serve_is_answered_once_served(unserved, peer):
    addr = where(unserved)
    heard = asyncio.create_task(peer.who_is(addr, wait=3.0))
    await eventually(lambda: held(unserved) == 1, 10, "the Who-Is waiting")
    assert not heard.done()
    unserved.serve()
    # the Who-Is's answer, and serve()'s own announcement if the peer hears the broadcast
    assert {i.iAmDeviceIdentifier[1] for i in await asyncio.wait_for(heard, 10)} == {DEVICE_ID}


async def test_a_stop_before_serve_drops_what_waits(free_udp_port, peer):
    device = GatewayDevice(address=f"127.0.0.1/8:{free_udp_port()}", device_id=DEVICE_ID, device_name="Stopped")
    await device.start(serve=False)
    addr = where(device)
    read = asyncio.create_task(peer.read(addr, f"device {DEVICE_ID}", "databaseRevision"))
    try:
        await eventually(lambda: held(device) == 1, 10, "the read waiting")
        app = device.app
        await asyncio.wait_for(device.stop(), 10)
        # nothing carried out, and no request left waiting on a closed stack (a pending task at the loop's close)
        assert app._waiting == 0
        assert not read.done()
    finally:
        read.cancel()
        await asyncio.gather(read, return_exceptions=True)


async def test_bac0s_own_announcement_task_does_not_poll_for_the_devices_life(free_udp_port):
    # BAC0's Lite._i_am waits for bacpypes3's i_am to become a coroutine function, which it never is: it woke
    # every 10 ms while the device ran. Its I-Am is serve()'s.
    device = GatewayDevice(address=f"127.0.0.1/8:{free_udp_port()}", device_id=DEVICE_ID, device_name="Quiet")
    await device.start()
    try:
        await asyncio.sleep(0.05)
        names = [getattr(t.get_coro(), "__qualname__", "") for t in asyncio.all_tasks() if not t.done()]
        assert "Lite._i_am" not in names, names
    finally:
        await device.stop()


async def test_a_request_whose_transaction_ended_meanwhile_is_not_carried_out(unserved, free_udp_port, caplog):
    # a start slower than the stack's applicationTimeout (3 s; 0.3 s here) ends the request's transaction, with no
    # answer to the BAS. Carried out at serve(), the write would be taken that the BAS holds as failed, and its
    # answer met a closed transaction (an ERROR with a traceback)
    caplog.set_level(logging.INFO)
    unserved.app.asap.applicationTimeout = 300
    taken = []
    unserved.on_write(OPT_OUT, taken.append)
    async with BacnetPeer(free_udp_port(), timeout=1.0) as bas:     # given up before its own retry, at 3 s
        refused = await bas.write(where(unserved), OPT_OUT_ID, "presentValue", "active", priority=8)
        assert isinstance(refused, PeerError) and refused.code == "timeout", refused
        assert held(unserved) == 1
        unserved.serve()
        # said as it is dropped: after the line, nothing of it is carried out
        await eventually(lambda: held(unserved) == 0 and any("waited past" in r.getMessage() for r in caplog.records),
                         10, "the held write dropped")
        assert taken == [] and unserved.get(OPT_OUT) is False
    late = [r.getMessage() for r in caplog.records if "waited past" in r.getMessage()]
    assert len(late) == 1 and "which ended it unanswered: not carried out" in late[0], late
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records
