"""A BAS's COV subscriptions across a restart of the gateway: the real `edge-gateway run` process, stopped and started
again, and a second real BACnet stack that subscribed once and never subscribes again, as some BAS front-ends do."""
from __future__ import annotations

import asyncio
import json
import sqlite3
import time

import aiohttp
import pytest
from bacnet_peer import BacnetPeer
from bacpypes3.apdu import SubscribeCOVRequest
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import ObjectIdentifier
from gateway_process import START_S, GatewayProcess, write_config
from test_cov_keep import kept
from test_faults_storage import cover, tmpfs, uncover
from waiting import eventually

from bacnet_api import points as P
from bacnet_api.client import to_plain
from ven.cov_restore import COV_SUBSCRIPTIONS, encode
from ven.storage import Storage

pytestmark = pytest.mark.timeout(300)    # two gateway process starts, each given START_S

DEVICE_ID = 500001      # write_config's bacnet.device_id
DEVICE = f"device {DEVICE_ID}"


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


async def api(http_port: int, path: str) -> str:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{http_port}{path}", timeout=aiohttp.ClientTimeout(total=5)) as resp:
        return await resp.text()


@pytest.mark.timeout(int(START_S) + 90)
async def test_kept_subscriptions_come_back_when_storage_opens_late_merged_with_the_bas_requests_since(
        tmp_path, free_udp_port, free_tcp_port):
    # The gateway restarts before the data volume is mounted: the subscriptions storage.path kept were never put back,
    # and those the BAS made meanwhile were written over them once it opened.
    bacnet_port, http_port = free_udp_port(), free_tcp_port()
    gw, log_path = f"127.0.0.1:{bacnet_port}", tmp_path / "gateway.log"
    level, opt_out = P.BY_NAME[P.EVENT_LEVEL].object_id, P.BY_NAME[P.OPT_OUT].object_id
    level_kept, opt_out_kept = ("analog-value,4", P.EVENT_LEVEL), ("binary-value,4", P.OPT_OUT)
    async with BacnetPeer(free_udp_port(), timeout=2.0) as peer:
        me = peer.address.replace("/8", "")
        with tmpfs(tmp_path / "data", "rw,size=8m") as data:
            storage = data / "gw.sqlite"
            before = Storage(storage)
            before.save_value(COV_SUBSCRIPTIONS, encode([
                kept(me, 21, level_kept, confirmed=True, device=DEVICE_ID),     # indefinite: comes back
                # the BAS subscribes to it again meanwhile, with its own lifetime
                kept(me, 22, opt_out_kept, lifetime=3600, remaining=3000.0, device=DEVICE_ID),
                kept(me, 23, level_kept, device=DEVICE_ID),     # the BAS cancels it meanwhile
                kept(me, 24, opt_out_kept, lifetime=60, remaining=1.0, device=DEVICE_ID),   # runs out before it opens
            ], time.time()))
            before.close()
            cover(data)
            config = tmp_path / "gw.toml"
            write_config(config, bacnet_port=bacnet_port, http_port=http_port, storage=storage,
                         ven_name="cov-late", storage_retry_seconds=1)
            # the BAS's context for 21, which it subscribed to before the restart and never again
            forever = peer.app.change_of_value(Address(gw), oid(level), 21, True, 0)
            peer.app._cov_contexts[forever.address, 21] = forever
            with GatewayProcess(config, log_path) as gateway:
                await eventually(lambda: peer.read(gw, DEVICE, "objectName"), START_S, "the device answers")
                for process, obj, confirmed, lifetime in ((22, opt_out, False, 300), (25, level, False, 0)):
                    await asyncio.wait_for(peer.app.request(SubscribeCOVRequest(
                        subscriberProcessIdentifier=process, destination=Address(gw),
                        monitoredObjectIdentifier=oid(obj), issueConfirmedNotifications=confirmed,
                        lifetime=lifetime)), 5)
                await asyncio.wait_for(peer.app.request(SubscribeCOVRequest(     # a cancellation
                    subscriberProcessIdentifier=23, destination=Address(gw), monitoredObjectIdentifier=oid(level))), 5)
                assert sorted(await listed(peer, gw)) == [22, 25]
                # kept in memory a second after the last change (cov_restore.SAVE_AFTER_S), to go to the file once it
                # opens: what was written over the file's kept ones
                await asyncio.sleep(1.5)
                uncover(data)
                # the kept one back, notified at once
                assert await next_value(forever, 15) == 0.0
                subs = await listed(peer, gw)
                assert sorted(subs) == [21, 22, 25], subs
                assert subs[21] == ("analog-value,4", True, 0)
                assert subs[22][:2] == ("binary-value,4", False) and 0 < subs[22][2] <= 300, subs  # the BAS's own
                status = json.loads(await api(http_port, "/api/status"))["device"]["cov_subscriptions"]
                assert status["count"] == 3, status
                [subscriber] = status["subscribers"]
                assert subscriber["address"] == me and subscriber["objects"] == 3, status
                assert 0 < subscriber["shortest_remaining_seconds"] <= 300, status
                assert "\nedge_gateway_bacnet_cov_subscriptions 3.0\n" in await api(http_port, "/metrics")
                await eventually(lambda: stored(storage) == [21, 22, 25], 10, "the merge kept")
                assert gateway.stop() == 0
            assert stored(storage) == [21, 22, 25]
    text = log_path.read_text()
    said = [line for line in text.splitlines() if "BACnet COV subscriptions restored" in line]
    assert len(said) == 1, said
    assert said[0].endswith(
        "BACnet COV subscriptions restored from before the restart (storage.path opened late): 1 (not restored: "
        "1 already held again; 1 cancelled (or renewed, then run out) by the subscriber since the start; 1 ran out "
        "before storage.path opened)"), said
    assert "Traceback" not in text, text
