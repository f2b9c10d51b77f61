"""A BAS's COV subscriptions across a restart of the gateway: the real `edge-gateway run` process, stopped and started
again, and a second real BACnet stack that subscribed once and never subscribes again, as some BAS front-ends do."""
from __future__ import annotations

import asyncio
import json
import sqlite3
import time

import pytest
from bacnet_peer import BacnetPeer
from bacpypes3.apdu import SubscribeCOVRequest
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import ObjectIdentifier
from gateway_process import START_S, GatewayProcess, write_config
from waiting import eventually

from bacnet_api import points as P
from bacnet_api.client import to_plain

pytestmark = pytest.mark.timeout(300)    # two gateway process starts, each given START_S

DEVICE = "device 500001"     # write_config's bacnet.device_id


def oid(text: str) -> ObjectIdentifier:
    return ObjectIdentifier(text.replace(" ", ","))    # points' object_id is "analogValue 4"


async def next_value(scm, timeout: float) -> object:
    """The presentValue of the next COV notification `scm` (the peer's subscription context) gets."""
    deadline = time.monotonic() + timeout
    while True:
        prop, value = await asyncio.wait_for(scm.get_value(), max(0.1, deadline - time.monotonic()))
        if str(prop) == "present-value":
            return to_plain(value)


async def listed(peer: BacnetPeer, gw: str) -> dict[int, tuple[str, bool, int]]:
    """process -> (object, confirmed, seconds left) of each subscription the device lists."""
    subs = await asyncio.wait_for(peer.app.read_property(Address(gw), oid(DEVICE),
                                                         "activeCovSubscriptions"), 5)
    return {int(s.recipient.processIdentifier): (str(s.monitoredPropertyReference.objectIdentifier),
                                                 bool(s.issueConfirmedNotifications), int(s.timeRemaining))
            for s in subs}


def stored(path) -> list[int]:
    """The processes of the subscriptions storage.path keeps."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
        row = db.execute("SELECT value FROM kv WHERE key = 'bacnet_cov_subscriptions'").fetchone()
    return sorted(s["process"] for s in json.loads(row[0])["subscriptions"]) if row else []


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
async def test_cov_subscriptions_survive_a_restart_and_are_notified_without_subscribing_again(
        tmp_path, free_udp_port, free_tcp_port, stop):
    bacnet_port, config, storage = free_udp_port(), tmp_path / "gw.toml", tmp_path / "gw.sqlite"
    write_config(config, bacnet_port=bacnet_port, http_port=free_tcp_port(), storage=storage, ven_name="cov-restart")
    gw = f"127.0.0.1:{bacnet_port}"
    level, opt_out = P.BY_NAME[P.EVENT_LEVEL].object_id, P.BY_NAME[P.OPT_OUT].object_id
    gateway = GatewayProcess(config, tmp_path / "gateway.log")
    try:
        async with BacnetPeer(free_udp_port(), timeout=2.0) as peer:
            gateway.start()
            await eventually(lambda: peer.read(gw, DEVICE, "objectName"), START_S, "the device answers")
            # an indefinite confirmed one (the frozen graphics' case), an hour's unconfirmed one, and one of 2 s that
            # runs out before the next start
            forever = peer.app.change_of_value(Address(gw), oid(level), 11, True, 0)
            hour = peer.app.change_of_value(Address(gw), oid(opt_out), 12, False, 3600)
            async with forever, hour:
                assert await next_value(forever, 5) == 0.0
                assert await next_value(hour, 5) == "inactive"
                short = SubscribeCOVRequest(subscriberProcessIdentifier=13, destination=Address(gw),
                                            monitoredObjectIdentifier=oid(level),
                                            issueConfirmedNotifications=False, lifetime=2)
                await asyncio.wait_for(peer.app.request(short), 5)
                ran_out_at = time.monotonic() + 2
                assert sorted(await listed(peer, gw)) == [11, 12, 13]
                if stop == "SIGKILL":   # a power cut: what was written by then (a second after the last change)
                    await eventually(lambda: {11, 12} <= set(stored(storage)), 10, "kept in storage.path")
                    gateway.kill()
                else:
                    assert gateway.stop() == 0, gateway.log()[-3000:]
                await asyncio.sleep(max(0.0, ran_out_at - time.monotonic()))

                gateway.start()
                # the device back: each kept subscription notified with the current values, unasked
                assert await next_value(forever, START_S) == 0.0
                assert await next_value(hour, 5) == "inactive"
                subs = await listed(peer, gw)
                assert sorted(subs) == [11, 12], subs     # the 2 s one ran out meanwhile
                assert subs[11] == ("analog-value,4", True, 0)
                assert subs[12][:2] == ("binary-value,4", False) and 0 < subs[12][2] <= 3600
                # and live: a change reaches the subscriber
                assert await peer.write(gw, opt_out, "presentValue", "active", priority=8) is None
                assert await next_value(hour, 5) == "active"
                assert await peer.relinquish(gw, opt_out, priority=8) is None
                assert await next_value(hour, 5) == "inactive"
    finally:
        gateway.stop()
    text = gateway.log()
    assert text.count("BACnet COV subscriptions restored from before the restart: 2") == 1, text[-3000:]
    assert "Traceback" not in text, text
