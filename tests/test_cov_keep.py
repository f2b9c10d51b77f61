"""The parts of keeping COV subscriptions across a restart (tests/test_cov_restart.py runs the whole): what is stored
and read back, what restoring puts back and leaves out, and what the gateway keeps as subscriptions come and go.
A real device and a real second bacpypes3 stack on loopback, a real SQLite file."""
from __future__ import annotations

import json
import logging
import time

import pytest
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import ObjectIdentifier

from bacnet_api import cov_keep
from bacnet_api.device import GatewayDevice
from bacnet_api.points import FIFTEEN_MIN_FORECAST
from bacnet_api.simulator import MeterSimulator
from bacnet_api.services import COV_PER_SOURCE
from bacnet_peer import BacnetPeer
from test_bacnet_device import DEVICE_ID, gateway, peer, where  # noqa: F401 - shared fixtures
from test_bacnet_services import cov_subscriptions, notification, request, subscribe
from waiting import eventually

from ven import cov_restore
from ven.cov_restore import COV_SUBSCRIPTIONS, CovKeeper, decode, encode
from ven.storage import Storage

pytestmark = pytest.mark.timeout(60)

LEVEL = ("analog-value,4", "ADR-Event-Level")


def kept(recipient: str, process: int, obj=LEVEL, *, lifetime: int = 0, remaining: float | None = None,
         confirmed: bool = False, device: int = DEVICE_ID, **more) -> dict:
    return {"recipient": recipient, "process": process, "object": obj[0], "object_name": obj[1], "device": device,
            "confirmed": confirmed, "lifetime": lifetime, "remaining": remaining, "cov_increment": None,
            "forwarded_by": None, "router": None, **more}


def recipient(p: BacnetPeer) -> str:
    return p.address.replace("/8", "")


# ----- what is stored


def test_the_time_left_is_stored_as_when_it_ends_and_the_time_down_counts_against_it():
    subs = [kept("127.0.0.1:47809", 1), kept("12345:0x02", 2, lifetime=600, remaining=100.0),
            kept("127.0.0.1:47809", 3, lifetime=60, remaining=5.0)]
    text = encode(subs, now=1000.0)
    assert [s["ends"] for s in json.loads(text)["subscriptions"]] == [None, 1100.0, 1005.0]
    # back 30 s later: the indefinite one and the routed one's 70 s left; the third ran out meanwhile
    back, ran_out = decode(text, now=1030.0)
    assert ran_out == 1
    assert [(s["recipient"], s["process"], s["remaining"]) for s in back] == [
        ("127.0.0.1:47809", 1, None), ("12345:0x02", 2, 70.0)]


def test_a_clock_set_back_since_does_not_lengthen_a_lifetime():
    [back], _ = decode(encode([kept("127.0.0.1:47809", 1, lifetime=600, remaining=100.0)], now=1.8e9), now=0.0)
    assert back["remaining"] == 600


@pytest.mark.parametrize("address", ["127.0.0.1:47809", "192.168.1.5", "12345:2", "12345:0x0a0b",
                                     "12345:10.0.0.1", "12345:10.0.0.1:47809"])
def test_a_recipient_reads_back_as_the_address_it_was(address):
    # routed recipients keep their network and MAC: a notification goes back through the router
    assert str(Address(str(Address(address)))) == str(Address(address))
    [back], _ = decode(encode([kept(str(Address(address)), 1)], 0.0), 0.0)
    assert Address(back["recipient"]) == Address(address)


@pytest.mark.parametrize("bad, why", [
    ({"process": -1}, "negative"),
    ({"process": True}, "process True"),
    ({"confirmed": "yes"}, "confirmed 'yes'"),
    ({"recipient": "*"}, "not one station"),
    ({"recipient": "no such address"}, "subscription 0"),
    ({"object": "analogValue"}, "subscription 0"),
    ({"lifetime": 60}, "lifetime 60 with remaining None"),
    ({"remaining": 5.0}, "lifetime 0 with remaining 5.0"),
    ({"cov_increment": float("nan")}, "cov_increment nan"),
    ({"object_name": None}, "object_name None"),
])
def test_a_stored_subscription_this_version_cannot_use_is_said_so(bad, why):
    with pytest.raises(ValueError, match=why):
        cov_keep.check([{**kept("127.0.0.1:47809", 1), **bad}])


def test_one_listed_twice_is_not_read():
    with pytest.raises(ValueError, match="listed twice"):
        cov_keep.check([kept("127.0.0.1:47809", 1), kept("127.0.0.1:47809", 1)])


# ----- restoring


async def test_restored_ones_are_notified_at_once_and_then_at_each_change(gateway, peer):
    context = peer.app.change_of_value(Address(where(gateway)), ObjectIdentifier("analogValue,4"), 7, True, 0)
    # the peer's context, without its SubscribeCOV: as the BAS's after the gateway's restart
    peer.app._cov_contexts[context.address, 7] = context
    gateway.set("ADR-Event-Level", 2.0)
    assert await cov_keep.restore(gateway, [kept(recipient(peer), 7, confirmed=True)]) == {}
    assert (await notification(context))["present-value"] == 2.0
    gateway.set("ADR-Event-Level", 3.0)
    assert (await notification(context))["present-value"] == 3.0
    assert await cov_subscriptions(peer, where(gateway)) == [(7, "analog-value,4", True, 0)]
    [listed] = cov_keep.subscriptions(gateway)
    assert listed == kept(recipient(peer), 7, confirmed=True)


async def test_restored_ones_keep_the_shares_and_only_objects_the_device_serves(gateway, peer):
    me = recipient(peer)
    subs = [kept(me, n) for n in range(1, COV_PER_SOURCE + 6)]     # 5 past one source's share
    subs += [kept(me, 100, ("analog-value,99", "gone-point")),      # a release without the point
             kept(me, 101, ("analog-value,4", "another-name")),     # another point at the same identifier
             kept(me, 102, device=DEVICE_ID + 1),                   # another bacnet.device_id
             kept(where(gateway), 103)]                             # the device itself
    left = await cov_keep.restore(gateway, cov_keep.check(subs))
    assert left == {cov_keep.NO_ROOM: 5, cov_keep.GONE: 2, cov_keep.OTHER_DEVICE: 1, cov_keep.OWN_ADDRESS: 1}
    assert len(cov_keep.subscriptions(gateway)) == COV_PER_SOURCE
    # one the subscriber took again before the restore got to it keeps the subscriber's parameters
    assert await cov_keep.restore(gateway, [kept(me, 1, lifetime=60, remaining=30.0)]) == {cov_keep.TAKEN: 1}
    assert [s["lifetime"] for s in cov_keep.subscriptions(gateway) if s["process"] == 1] == [0]


async def test_restored_ones_count_against_whom_they_did(free_udp_port):
    # bacnet.write_from lists the BAS: its subscriptions are bounded only by the table, strangers' by their half, and
    # those that came in Forwarded-NPDUs from a host other than the BBMD by that host's share, as when they came
    from bacnet_api.services import COV_UNLISTED, MAX_COV_SUBSCRIPTIONS

    device = GatewayDevice(address=f"127.0.0.1/8:{free_udp_port()}", device_id=DEVICE_ID, device_name="TestGateway",
                           write_from=["127.0.0.2"])
    await device.start()
    try:
        forwarded = [kept(f"127.0.0.3:{40000 + n}", 1, forwarded_by="127.0.0.9") for n in range(COV_PER_SOURCE + 1)]
        strangers = [kept(f"127.0.0.4:{40000 + n}", 1) for n in range(COV_UNLISTED)]
        bas = [kept("127.0.0.2:47808", n) for n in range(MAX_COV_SUBSCRIPTIONS)]
        left = await cov_keep.restore(device, cov_keep.check(forwarded + strangers + bas))
        held = cov_keep.subscriptions(device)
        assert sum(1 for s in held if s["forwarded_by"] == "127.0.0.9") == COV_PER_SOURCE
        assert sum(1 for s in held if not s["forwarded_by"] and s["recipient"] != "127.0.0.2") == \
            COV_UNLISTED - COV_PER_SOURCE
        assert sum(1 for s in held if s["recipient"] == "127.0.0.2") == MAX_COV_SUBSCRIPTIONS - COV_UNLISTED
        assert left == {cov_keep.NO_ROOM: 1 + COV_PER_SOURCE + COV_UNLISTED}
    finally:
        await device.stop()


async def test_a_subscriber_that_restarted_with_new_process_identifiers_is_not_refused_for_its_old_ones(
        gateway, peer, caplog):
    # Its old unconfirmed indefinite ones are never refused, so nothing cancels them: restored at every restart of the
    # gateway, they would hold its share for good, and its new ones be refused no-space-to-add-list-element
    caplog.set_level(logging.INFO)
    me, addr = recipient(peer), where(gateway)
    points = [LEVEL, ("analog-value,5", FIFTEEN_MIN_FORECAST)]
    await cov_keep.restore(gateway, [kept(me, n, points[n % 2]) for n in range(COV_PER_SOURCE)])
    # its share is full: a new one to an object it held takes a restored one's place, once a line says so
    for process in (100, 101):
        answer = await request(peer, subscribe(addr, "analogValue,4", process, False, 0))
        assert type(answer).__name__ == "SimpleAckPDU", answer
    held = cov_keep.subscriptions(gateway)
    assert len(held) == COV_PER_SOURCE
    assert [s["process"] for s in held if s["process"] >= 100] == [100, 101]
    said = [r.getMessage() for r in caplog.records if "give way" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"BACnet COV subscriptions from {me} restored from before the "
                                                 f"restart give way to its new ones"), said
    # one it renewed since is its own, and one to an object it held none of is refused as any past the share
    assert type(await request(peer, subscribe(addr, "analogValue,5", 1, False, 0))).__name__ == "SimpleAckPDU"
    refused = await request(peer, subscribe(addr, "analogValue,6", 102, False, 0))
    assert str(getattr(refused, "errorCode", refused)) == "no-space-to-add-list-element", refused
    assert any(s["process"] == 1 for s in cov_keep.subscriptions(gateway))


async def test_a_restored_lifetime_runs_out_as_any(gateway, peer):
    await cov_keep.restore(gateway, [kept(recipient(peer), 5, lifetime=3600, remaining=0.3)])
    [listed] = cov_keep.subscriptions(gateway)
    assert listed["lifetime"] == 3600 and 0 < listed["remaining"] <= 0.3    # a renewal without a lifetime asks 3600
    await eventually(lambda: cov_keep.subscriptions(gateway) == [], 5, "ran out")


async def test_a_recipient_behind_a_router_is_notified_through_it_after_a_restart(free_udp_port):
    # A BAS on another network (an MS/TP front-end, a second building's IP network): the stack learns the path from
    # its request, and a restarted one knows none and asks by broadcast (on loopback, and on a site with two routers
    # to that network, nobody answers it). MeterSimulator's router and the stack behind it stand for the BAS's.
    port = free_udp_port()
    behind = MeterSimulator(address=f"127.0.0.1/8:{free_udp_port()}", network=12345, mac=2)
    await behind.start()
    device = None
    try:
        async def started() -> GatewayDevice:
            started = GatewayDevice(address=f"127.0.0.1/8:{port}", device_id=DEVICE_ID, device_name="TestGateway")
            await started.start()
            return started

        device = await started()
        context = behind._meter.change_of_value(Address(f"1:127.0.0.1:{port}"), ObjectIdentifier("analogValue,4"), 21,
                                                False, 0)
        async with context:
            assert (await notification(context))["present-value"] == 0.0
            [was] = cov_keep.subscriptions(device)
            assert (was["recipient"], was["router"]) == ("12345:2", behind.router_address)
            await device.stop()
            device = await started()
            assert await cov_keep.restore(device, cov_keep.check([was])) == {}
            assert (await notification(context))["present-value"] == 0.0
            device.set("ADR-Event-Level", 2.0)
            assert (await notification(context))["present-value"] == 2.0
    finally:
        if device is not None:
            await device.stop()
        await behind.stop()


# ----- what the gateway keeps


@pytest.fixture
def storage(tmp_path):
    store = Storage(tmp_path / "gw.sqlite")
    yield store
    store.close()


async def test_kept_as_they_come_and_go(gateway, peer, storage, monkeypatch):
    monkeypatch.setattr(cov_restore, "SAVE_AFTER_S", 0.05)
    keeper = CovKeeper(gateway, storage)
    assert await keeper.start() == 0
    assert storage.load_value(COV_SUBSCRIPTIONS) is None    # nothing to keep: no write

    def stored() -> list:
        return [(s["process"], s["lifetime"]) for s in json.loads(storage.load_value(COV_SUBSCRIPTIONS) or "{}")
                .get("subscriptions", [])]

    async with peer.app.change_of_value(Address(where(gateway)), ObjectIdentifier("analogValue,4"), 8, True, 600):
        await eventually(lambda: stored() == [(8, 600)], 5, "kept once subscribed")
    await eventually(lambda: stored() == [], 5, "the cancellation kept")
    await keeper.stop()


async def test_unreadable_ones_are_one_warning_and_the_start_goes_on(gateway, storage, caplog):
    caplog.set_level(logging.INFO)
    storage.save_value(COV_SUBSCRIPTIONS, '{"subscriptions": [{"recipient": 5}]}')
    assert await CovKeeper(gateway, storage).start() == 0
    said = [r for r in caplog.records if r.name == "ven.cov_restore"]
    assert [(r.levelname, r.getMessage()) for r in said] == [
        ("WARNING", "stored BACnet COV subscriptions '{\"subscriptions\": [{\"recipient\": 5}]}' unreadable "
                    "(ValueError: subscription 0: recipient 5): none restored, the BAS subscribes again")]
    assert cov_keep.subscriptions(gateway) == []
    # left as it is until there is something to keep: a newer version's, after a downgrade, is not lost for nothing
    assert storage.load_value(COV_SUBSCRIPTIONS) == '{"subscriptions": [{"recipient": 5}]}'


async def test_the_start_says_how_many_and_why_not_in_one_line(gateway, peer, storage, caplog):
    caplog.set_level(logging.INFO)
    me = recipient(peer)
    storage.save_value(COV_SUBSCRIPTIONS, encode(
        [kept(me, 1), kept(me, 2, lifetime=60, remaining=1.0), kept(me, 3, ("analog-value,99", "gone"))],
        now=0.0))     # stored in 1970: the one of 60 s ran out long ago
    assert await CovKeeper(gateway, storage).start() == 1
    said = [r.getMessage() for r in caplog.records if r.name == "ven.cov_restore"]
    assert said == ["BACnet COV subscriptions restored from before the restart: 1 (not restored: 1 to an object the "
                    "device no longer serves; 1 ran out while the gateway was down)"], said
    # what was not restored is not kept either
    assert [s["process"] for s in json.loads(storage.load_value(COV_SUBSCRIPTIONS))["subscriptions"]] == [1]


async def test_a_late_open_merges_the_kept_ones_with_what_the_bas_asked_since(gateway, peer, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    from test_faults_storage import cover, tmpfs, uncover

    me, addr = recipient(peer), where(gateway)
    with tmpfs(tmp_path / "data", "rw,size=8m") as data:
        before = Storage(data / "gw.sqlite")
        before.save_value(COV_SUBSCRIPTIONS, encode([kept(me, 1), kept(me, 2)], time.time()))
        before.close()
        cover(data)
        storage = Storage(data / "gw.sqlite", reopen_seconds=0.1)
        try:
            opened = []
            storage.on_late_open = opened.append
            keeper = CovKeeper(gateway, storage)
            assert await keeper.start() == 0
            # the BAS cancels 2, which it held before the restart, and subscribes to 3
            for apdu in (subscribe(addr, "analogValue,4", 2), subscribe(addr, "analogValue,4", 3, False, 0)):
                assert type(await request(peer, apdu)).__name__ == "SimpleAckPDU"
            keeper.save()   # into memory, written over the file's as it opens
            uncover(data)
            await eventually(lambda: storage.flush() or opened, 5, "storage.path opened")
            assert await keeper.late(opened[0].get(COV_SUBSCRIPTIONS)) == 1
            assert sorted(s["process"] for s in cov_keep.subscriptions(gateway)) == [1, 3]
            assert [s["process"] for s in json.loads(storage.load_value(COV_SUBSCRIPTIONS))["subscriptions"]] == [3, 1]
            # once: a second open (or a keeper whose file was open at its start) puts nothing back again
            assert await keeper.late(opened[0].get(COV_SUBSCRIPTIONS)) == 0
            await keeper.stop()
        finally:
            storage.close()
    said = [r.getMessage() for r in caplog.records if r.name == "ven.cov_restore"]
    assert said == ["BACnet COV subscriptions restored from before the restart (storage.path opened late): 1 (not "
                    "restored: 1 cancelled (or renewed, then run out) by the subscriber since the start)"], said


async def test_the_operator_sees_each_subscriber_its_objects_and_the_soonest_to_run_out(gateway, peer):
    assert cov_keep.summary(gateway) == {"count": 0, "subscribers": []}
    addr = where(gateway)
    for apdu in (subscribe(addr, "analogValue,4", 1, False, 0), subscribe(addr, "binaryValue,4", 2, False, 600)):
        assert type(await request(peer, apdu)).__name__ == "SimpleAckPDU"
    # and one restored for a subscriber that has not come back: indefinite only
    assert await cov_keep.restore(gateway, [kept("127.0.0.1:47999", 1)]) == {}
    shown = gateway.cov_subscriptions()
    assert shown["count"] == 3
    [bas, other] = shown["subscribers"]
    assert (bas["address"], bas["objects"]) == (recipient(peer), 2) and 590 < bas["shortest_remaining_seconds"] <= 600
    assert other == {"address": "127.0.0.1:47999", "objects": 1, "shortest_remaining_seconds": None}
