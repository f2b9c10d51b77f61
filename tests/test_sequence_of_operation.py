"""What examples/bas-sequence-of-operation.md tells a BAS to act on, read over the wire as a BAS reads it
(a second BACnet stack on loopback against a real Gateway)."""
from __future__ import annotations

import asyncio

import pytest
from bacnet_peer import BacnetPeer, PeerError
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import ObjectIdentifier
from waiting import eventually

from bacnet_api import points as P
from ven.app import Gateway
from ven.config_load import parse_config

pytestmark = pytest.mark.timeout(30)

FLAGS = (P.HIGH_LOAD, P.LOW_LOAD)
THRESHOLDS = (P.HIGH_LOAD_THRESHOLD, P.LOW_LOAD_THRESHOLD)


def _config(tmp_path, bacnet_port, tcp_port, meter_timeout=0.5, **forecaster):
    return parse_config({
        "bacnet": {"address": f"127.0.0.1/8:{bacnet_port}", "device_id": 500009},
        "meter": {"address": "127.0.0.1:9", "poll_seconds": 1.0, "timeout_seconds": meter_timeout},
        "openadr": {"vtn_url": f"http://127.0.0.1:{tcp_port}/OpenADR2/Simple/2.0b"},
        "storage": {"path": str(tmp_path / "gw.sqlite")},
        "http": {"enabled": False},
        "forecaster": {"cycle_seconds": 0.2, "source": "bacnet_input", **forecaster},
    }, "test", environ={})


async def _flags_while_the_bas_writes(cfg, peer_port):
    """Write input-power-meter until a forecast is out, then read the load flags and their thresholds as
    the BAS does."""
    gateway = Gateway(cfg)
    await gateway.start()
    try:
        async with BacnetPeer(peer_port) as peer:
            gw = cfg.bacnet.address.replace("/8", "")
            fc = P.BY_NAME[P.FIFTEEN_MIN_FORECAST].object_id

            async def forecast_live():
                err = await peer.write(gw, P.BY_NAME[P.INPUT_POWER].object_id, "presentValue", 300.0, priority=8)
                assert err is None, err
                await asyncio.sleep(0.3)
                return await peer.read(gw, fc, "statusFlags") == [0, 0, 0, 0]

            await eventually(forecast_live, 8, "a live forecast from what the BAS writes")
            rows = await peer.read_multiple(gw, [(P.BY_NAME[n].object_id, ["presentValue", "statusFlags", "reliability"])
                                                 for n in FLAGS + THRESHOLDS])
            assert not isinstance(rows, PeerError), rows
            return {n: tuple(rows[(P.BY_NAME[n].object_id, prop)] for prop in ("presentValue", "statusFlags", "reliability"))
                    for n in FLAGS + THRESHOLDS}
    finally:
        await gateway.stop()


async def test_load_flags_show_fault_while_there_is_no_threshold(tmp_path, free_udp_port, free_tcp_port):
    # A new install: percentile thresholds need a day of history. The forecasts are live, but the
    # load flags read inactive with statusFlags normal: a BAS holding a peak limit on high-load read
    # "no peak" where the gateway could not tell (docs/bacnet.md: "no data" never reads as "no peak").
    cfg = _config(tmp_path, free_udp_port(), free_tcp_port())
    flags = await _flags_while_the_bas_writes(cfg, free_udp_port())
    for name in FLAGS:
        assert flags[name] == ("inactive", [0, 1, 0, 0], "unreliableOther"), (name, flags[name])
    for name in THRESHOLDS:     # no threshold: the points say so, rather than a threshold of 0 kW
        assert flags[name] == (0.0, [0, 1, 0, 0], "unreliableOther"), (name, flags[name])


async def test_a_configured_threshold_serves_its_flag_from_the_first_forecast(tmp_path, free_udp_port, free_tcp_port):
    # high_load_kw set, low_load_kw left to the percentile: high-load has a basis at once, low-load not yet
    cfg = _config(tmp_path, free_udp_port(), free_tcp_port(), high_load_kw=500.0)
    flags = await _flags_while_the_bas_writes(cfg, free_udp_port())
    assert flags[P.HIGH_LOAD] == ("inactive", [0, 0, 0, 0], "noFaultDetected")
    assert flags[P.LOW_LOAD] == ("inactive", [0, 1, 0, 0], "unreliableOther")
    assert flags[P.HIGH_LOAD_THRESHOLD] == (500.0, [0, 0, 0, 0], "noFaultDetected")
    assert flags[P.LOW_LOAD_THRESHOLD] == (0.0, [0, 1, 0, 0], "unreliableOther")


async def test_a_restart_keeps_a_held_high_load(tmp_path, free_udp_port, free_tcp_port):
    # The BAS holds its peak limit while high-load-conditions is active. The flag turned on at 300 kW
    # and holds for its minimum on-time while the load eases to ~200 kW. A gateway restart then read
    # inactive (no fault) at once, and min_off kept it off for 15 minutes: the BAS left SHED-2 on a
    # start-up default. The flag resumes as the last run left it.
    cfg = _config(tmp_path, free_udp_port(), free_tcp_port(), high_load_kw=250.0, low_load_kw=100.0,
                  min_on_minutes=15, min_off_minutes=15)
    gw = cfg.bacnet.address.replace("/8", "")
    high, av1 = P.BY_NAME[P.HIGH_LOAD].object_id, P.BY_NAME[P.INPUT_POWER].object_id

    async def flag_after_writing(peer, kw):
        assert await peer.write(gw, av1, "presentValue", kw, priority=8) is None
        await asyncio.sleep(0.3)
        rows = await peer.read_multiple(gw, [(high, ["presentValue", "statusFlags"])])
        assert not isinstance(rows, PeerError), rows
        return rows[(high, "presentValue")], rows[(high, "statusFlags")]

    async with BacnetPeer(free_udp_port()) as peer:
        gateway = Gateway(cfg)
        await gateway.start()
        try:
            await eventually(lambda: _is(flag_after_writing(peer, 300.0), ("active", [0, 0, 0, 0])), 8,
                             "high-load on at 300 kW")
            for _ in range(12):   # the load eases below the threshold and its band: min-on holds the flag
                assert await flag_after_writing(peer, 200.0) == ("active", [0, 0, 0, 0])
        finally:
            await gateway.stop()
        gateway = Gateway(cfg)
        await gateway.start()
        try:
            seen = await eventually(lambda: _is(flag_after_writing(peer, 200.0), None, live=True), 8,
                                    "a live high-load after the restart")
            assert seen == ("active", [0, 0, 0, 0]), seen
            assert not gateway.device.get(P.LOW_LOAD)
        finally:
            await gateway.stop()


async def test_a_load_flag_in_fault_reads_inactive_while_its_minimum_on_time_holds_it(tmp_path, free_udp_port,
                                                                                       free_tcp_port):
    # A BAS writing on change of value, with input_stale_seconds raised for it as docs/bacnet.md suggests, wrote
    # nothing for 16 minutes at a steady high load: the 15-minute demand window emptied, the forecasts went to
    # fault, and high-load-conditions read ACTIVE with statusFlags fault while its minimum on-time held it. The
    # sequence says a flag in fault reads inactive ("cannot tell"), as it does while the input is stale.
    import time

    cfg = _config(tmp_path, free_udp_port(), free_tcp_port(), high_load_kw=250.0, low_load_kw=100.0,
                  min_on_minutes=60, input_stale_seconds=3600)
    gw, av1 = cfg.bacnet.address.replace("/8", ""), P.BY_NAME[P.INPUT_POWER].object_id
    high, fc = P.BY_NAME[P.HIGH_LOAD].object_id, P.BY_NAME[P.ONE_HOUR_FORECAST].object_id
    gateway = Gateway(cfg)
    ahead = [0.0]
    gateway.forecast._clock = lambda: time.time() + ahead[0]   # the forecaster's wall clock, run on 16 minutes

    async def read(peer):
        rows = await peer.read_multiple(gw, [(high, ["presentValue", "statusFlags"]), (fc, ["statusFlags"])])
        assert not isinstance(rows, PeerError), rows
        return rows[(high, "presentValue")], rows[(high, "statusFlags")], rows[(fc, "statusFlags")]

    await gateway.start()
    try:
        async with BacnetPeer(free_udp_port()) as peer:
            async def flag_on():
                assert await peer.write(gw, av1, "presentValue", 300.0, priority=8) is None
                await asyncio.sleep(0.3)
                return await read(peer) == ("active", [0, 0, 0, 0], [0, 0, 0, 0])

            await eventually(flag_on, 8, "high-load on at 300 kW")
            ahead[0] = 16 * 60.0     # no write since: no demand to forecast from, the input not yet stale
            assert not gateway.forecast.input_stale()
            seen = await eventually(lambda: _faulted(read(peer)), 8, "the forecast in fault")
            assert seen == ("inactive", [0, 1, 0, 0], [0, 1, 0, 0]), seen
            assert gateway.forecast.last_forecast.high_load    # held by min-on inside: only the point drops
    finally:
        await gateway.stop()


async def _faulted(read):
    got = await read
    return got if got[2] == [0, 1, 0, 0] else None


async def _is(read, want, live=False):
    got = await read
    if live:
        return got if got[1] == [0, 0, 0, 0] else None
    return got if got == want else None


async def test_meter_fault_is_flagged_until_the_first_meter_read_has_ended(tmp_path, free_udp_port, free_tcp_port):
    # "inactive" right after start claimed a good meter that had not been read yet
    cfg = _config(tmp_path, free_udp_port(), free_tcp_port(), meter_timeout=2.0)   # 127.0.0.1:9 never answers
    mf = P.BY_NAME[P.METER_FAULT].object_id
    gateway = Gateway(cfg)
    await gateway.start()
    try:
        async with BacnetPeer(free_udp_port()) as peer:
            gw = cfg.bacnet.address.replace("/8", "")
            assert await peer.read(gw, mf, "statusFlags") == [0, 1, 0, 0]
            await eventually(lambda: gateway.device.get(P.METER_FAULT), 8, "the first read timed out")
            assert await peer.read(gw, mf, "presentValue") == "active"
            assert await peer.read(gw, mf, "statusFlags") == [0, 0, 0, 0]
    finally:
        await gateway.stop()


async def test_a_restart_keeps_input_power_opt_out_and_cov_subscriptions(tmp_path, free_udp_port, free_tcp_port):
    # what the sequence tells the BAS to expect of a gateway restart: its input-power-meter and ADR-Opt-Out commands
    # hold (the kW not taken as a reading), and so do the COV subscriptions (lifetime 0 here: indefinite)
    cfg = _config(tmp_path, free_udp_port(), free_tcp_port())
    gw, device = cfg.bacnet.address.replace("/8", ""), "device 500009"
    power, opt_out = P.BY_NAME[P.INPUT_POWER].object_id, P.BY_NAME[P.OPT_OUT].object_id
    async with BacnetPeer(free_udp_port()) as peer:
        gateway = Gateway(cfg)
        await gateway.start()
        try:
            assert await peer.write(gw, power, "presentValue", 250.0, priority=8) is None
            assert await peer.write(gw, opt_out, "presentValue", "active", priority=8) is None
            subscription = peer.app.change_of_value(Address(gw), ObjectIdentifier("analogValue,4"), 31, False, 0)
            await subscription.__aenter__()
            assert len(await peer.read(gw, device, "activeCovSubscriptions")) == 1
        finally:
            await gateway.stop()
        gateway = Gateway(cfg)
        await gateway.start()
        try:
            assert await peer.read(gw, power, "presentValue") == 250.0
            assert await peer.read(gw, power, "priorityArray") == [None] * 7 + [250.0] + [None] * 8
            assert gateway.forecast.status()["last_input_at"] is None
            assert await peer.read(gw, opt_out, "presentValue") == "active"
            kept = await peer.read(gw, device, "activeCovSubscriptions")
            assert len(kept) == 1, kept
        finally:
            await subscription.__aexit__(None, None, None)
            await gateway.stop()


async def test_the_rate_shows_fault_until_power_came_in_during_two_minutes(tmp_path, free_udp_port, free_tcp_port):
    # A trend needs readings from two minutes: with the BAS's first writes in one minute the forecasts are live
    # and power-rate-of-change is in fault, which the sequence did not list (only "until the first forecast")
    import time

    cfg = _config(tmp_path, free_udp_port(), free_tcp_port())
    gw, av1 = cfg.bacnet.address.replace("/8", ""), P.BY_NAME[P.INPUT_POWER].object_id
    fc, rate = P.BY_NAME[P.FIFTEEN_MIN_FORECAST].object_id, P.BY_NAME[P.RATE_OF_CHANGE].object_id
    left = 60 - time.time() % 60
    if left < 15:   # start in a fresh minute, with time to spare for the gateway's start and the writes
        await asyncio.sleep(left + 0.5)
    minute = time.time() // 60
    gateway = Gateway(cfg)
    await gateway.start()
    try:
        async with BacnetPeer(free_udp_port()) as peer:
            async def forecast_live():
                assert await peer.write(gw, av1, "presentValue", 300.0, priority=8) is None
                await asyncio.sleep(0.3)
                return await peer.read(gw, fc, "statusFlags") == [0, 0, 0, 0]

            await eventually(forecast_live, 8, "a live forecast from what the BAS writes")
            rows = await peer.read_multiple(gw, [(rate, ["statusFlags", "reliability"])])
            assert time.time() // 60 == minute, "the writes ran into the next minute: the rate would be live"
            assert (rows[(rate, "statusFlags")], rows[(rate, "reliability")]) == ([0, 1, 0, 0], "unreliableOther")
    finally:
        await gateway.stop()
