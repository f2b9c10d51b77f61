"""Fault suite, BACnet side and restarts: garbage on the BACnet port, a silent meter, SIGKILL with the
forecaster's history. The fuzz and kill tests run the real `python -m ven.cli run` process, so a
crash shows as a dead process; the meter is the routed simulator in this process."""
from __future__ import annotations

import asyncio
import logging
import random
import socket
import sqlite3
import struct
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest
from bacnet_peer import BacnetPeer
from gateway_process import START_S, GatewayProcess, write_config
from raw_router import RawRouter
from waiting import eventually

from bacnet_api import points as P
from bacnet_api.simulator import MeterSimulator
from ven.app import Gateway
from ven.config_load import parse_config
from ven.vtn_server import DemoVtn




# -- the gateway as a process ----------------------------------------------------------------------

FAULT_CONFIG = {"ven_name": "fault-test", "device_id": 500201, "retry_max_seconds": 5}  # no VTN listens
# a read later than this is a meter fault, which these tests must not see: 0.5 s, the other tests' limit, is
# missed now and then by a meter simulator and gateway starved of CPU beside a loaded test run
METER_TIMEOUT = 2.0
SNAPSHOT_PROPS = ["presentValue", "statusFlags", "reliability", "outOfService"]


async def snapshot(peer, gw):
    rows = await peer.read_multiple(gw, [(p.object_id, SNAPSHOT_PROPS) for p in P.POINTS])
    assert rows, rows       # a PeerError is falsy
    return {(p.name, prop): rows[(p.object_id, prop)] for p in P.POINTS for prop in SNAPSHOT_PROPS}


# -- malformed traffic -----------------------------------------------------------------------------

RP_SERVICE = 0x0C
RPM_SERVICE = 0x0E
# services that change state: never produced, so "every point keeps its value" is about robustness
_STATEFUL = {0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0F, 0x10, 0x11, 0x12, 0x13, 0x14, 0x1A}


def bvlc(npdu_apdu: bytes, function: int = 0x0A, length: int | None = None) -> bytes:
    total = len(npdu_apdu) + 4 if length is None else length
    return bytes([0x81, function]) + struct.pack(">H", total & 0xFFFF) + npdu_apdu


def npdu(expect_reply: bool = True) -> bytes:
    return bytes([0x01, 0x04 if expect_reply else 0x00])


def read_property(invoke: int, obj_type: int = 2, instance: int = 4, prop: int = 85) -> bytes:
    oid = struct.pack(">I", (obj_type << 22) | instance)
    return bytes([0x00, 0x05, invoke & 0xFF, RP_SERVICE, 0x0C]) + oid + bytes([0x19, prop])


# packets sent before waiting for the device to take them off its socket: 100 of at most 600 bytes (most under
# 100) fit its receive buffer (Linux default 208 KB, about 1 to 2 KB a datagram with the kernel's overhead)
PACE = 100


def fuzz_packets(n: int, seed: int = 20261122):
    rnd = random.Random(seed)
    rb = lambda k: bytes(rnd.getrandbits(8) for _ in range(k))  # noqa: E731
    valid_rp = bvlc(npdu() + read_property(1))
    kinds = []
    for i in range(n):
        kind = i % 12
        inv = rnd.randrange(256)
        if kind == 0:                               # random bytes, any length
            pkt = rb(rnd.randrange(0, 600))
        elif kind == 1:                             # a valid ReadProperty, truncated
            pkt = valid_rp[:rnd.randrange(1, len(valid_rp))]
        elif kind == 2:                             # valid headers, garbage APDU
            apdu = bytearray(rb(rnd.randrange(1, 200)))
            if apdu[0] >> 4 == 0 and len(apdu) > 3 and apdu[3] in _STATEFUL:
                apdu[3] = 0x30
            pkt = bvlc(npdu() + bytes(apdu))
        elif kind == 3:                             # confirmed request, unknown service
            pkt = bvlc(npdu() + bytes([0x00, 0x05, inv, rnd.randrange(0x21, 0x100)]) + rb(rnd.randrange(0, 40)))
        elif kind == 4:                             # unconfirmed request, unknown service
            pkt = bvlc(npdu(False) + bytes([0x10, rnd.randrange(0x0C, 0x100)]) + rb(rnd.randrange(0, 40)))
        elif kind == 5:                             # ReadProperty with an oversized (4 GB) tag
            big = struct.pack(">I", rnd.choice([0xFFFFFFFF, 0x7FFFFFFF, 0x10000, 1500]))
            pkt = bvlc(npdu() + bytes([0x00, 0x05, inv, RP_SERVICE, 0x0D, 0xFE]) + big + rb(rnd.randrange(0, 20)))
        elif kind == 6:                             # BVLC length disagrees with the datagram
            body = npdu() + read_property(inv, instance=rnd.randrange(1, 8))
            pkt = bvlc(body, length=rnd.choice([0, 1, 3, 4, len(body) + 3, len(body) + 5, 0xFFFF]))
        elif kind == 7:                             # ReadProperty with wrong tag lengths / truncated tags
            pkt = bvlc(npdu() + bytes([0x00, 0x05, inv, RP_SERVICE, rnd.choice([0x0A, 0x0B, 0x0C, 0x0D]),
                                       *rb(rnd.randrange(0, 6)), rnd.choice([0x19, 0x1A, 0x1C, 0x39]),
                                       *rb(rnd.randrange(0, 3))]))
        elif kind == 8:                             # ReadPropertyMultiple, garbage list
            pkt = bvlc(npdu() + bytes([0x00, 0x05, inv, RPM_SERVICE, 0x0C, 0x00, 0x80, 0x00, 0x04, 0x1E])
                       + rb(rnd.randrange(0, 30)) + rnd.choice([b"", b"\x1f"]))
        elif kind == 9:                             # segmented request fragments, bogus sequence numbers
            pkt = bvlc(npdu() + bytes([0x0C, 0x05, inv, rnd.randrange(256), rnd.randrange(1, 16), RP_SERVICE])
                       + rb(rnd.randrange(0, 50)))
        elif kind == 10:                            # acks, errors, rejects, aborts nobody asked for
            pdu_type = rnd.choice([0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0xF0])
            pkt = bvlc(npdu(False) + bytes([pdu_type, inv]) + rb(rnd.randrange(0, 30)))
        else:                                       # BVLC functions and NPDU flags at random
            control = rnd.choice([0x00, 0x04, 0x08, 0x20, 0x24, 0x28])  # no network-layer messages
            pkt = bvlc(bytes([0x01, control]) + rb(rnd.randrange(0, 60)), function=rnd.randrange(0, 0x0C))
        kinds.append(kind)
        yield pkt


@pytest.mark.timeout(240)
async def test_garbage_and_malformed_apdus_do_not_crash_or_change_points(tmp_path, free_udp_port, free_tcp_port):
    bacnet_port, meter_port = free_udp_port(), free_udp_port()
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=bacnet_port, meter_port=meter_port, http_port=free_tcp_port(),
                 storage=tmp_path / "gw.sqlite", cycle_seconds=3600, meter_timeout_seconds=METER_TIMEOUT,
                 **FAULT_CONFIG)
    gw = f"127.0.0.1:{bacnet_port}"
    gateway = GatewayProcess(config, tmp_path / "gateway.log")
    async with MeterSimulator(address=f"127.0.0.1/8:{meter_port}", value=87.5):
        async with BacnetPeer(free_udp_port(), timeout=2.0) as peer:
            try:
                gateway.start()
                await eventually(lambda: peer.read(gw, P.BY_NAME[P.METER_POWER].object_id, "presentValue"),
                                 START_S, "gateway answering with a meter value")
                assert await peer.write(gw, P.BY_NAME[P.INPUT_POWER].object_id, "presentValue", 123.5,
                                        priority=8) is None
                await asyncio.sleep(0.5)
                before = await snapshot(peer, gw)
                assert before[(P.METER_POWER, "presentValue")] == pytest.approx(87.5)
                assert before[(P.INPUT_POWER, "presentValue")] == 123.5

                async def drained():    # a read queued behind the flood on the device's socket is answered
                    return not gateway.alive or await peer.read(gw, P.BY_NAME[P.INPUT_POWER].object_id,
                                                                "presentValue")
                sent = 0
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.bind(("127.0.0.1", 0))
                    sock.setblocking(False)
                    for pkt in fuzz_packets(10_000):
                        sock.sendto(pkt, ("127.0.0.1", bacnet_port))
                        sent += 1
                        if sent % PACE == 0:
                            # paced so the packets are processed, not dropped: the next ones go once the device
                            # has taken these off its socket (a read behind them answered), which a fixed
                            # 10 ms per 25 packets only guessed at (and took 4 s of sleeping)
                            await eventually(drained, 10, f"an answer after {sent} packets")
                            assert gateway.alive, f"died after {sent} packets\n{gateway.log()[-4000:]}"
                assert sent == 10_000
                await eventually(drained, 10, "an answer after the flood")
                assert gateway.alive, gateway.log()[-4000:]

                # every point as before; on a loaded machine a meter read the flood delayed past its time-out
                # shows as a meter fault until the next read, so the points get until then to be as before
                seen = {}

                async def as_before():
                    seen["after"] = await snapshot(peer, gw)
                    return seen["after"] == before
                try:
                    await eventually(as_before, 3 * METER_TIMEOUT + 5, "the points as before the flood", 0.5)
                except AssertionError:
                    assert seen["after"] == before
                # and it still does its job: a write, a read, a Who-Is
                assert await peer.write(gw, P.BY_NAME[P.INPUT_POWER].object_id, "presentValue", 99.0,
                                        priority=8) is None
                assert await peer.read(gw, P.BY_NAME[P.INPUT_POWER].object_id, "presentValue") == 99.0
                assert await peer.who_is(gw)
                assert gateway.alive
            finally:
                code = gateway.stop()
    text = gateway.log()
    assert code == 0, text[-4000:]
    assert "Traceback" not in text, text[-4000:]
    # 10,000 bad datagrams must not turn into 10,000 log lines: a few lines say it happened
    noise = [line for line in text.splitlines() if "incoming PDU" in line or "is not BACnet/IP" in line]
    assert 1 <= len(noise) <= 10, noise


@pytest.mark.timeout(240)
async def test_another_host_claiming_the_meter_network_does_not_take_the_configured_routers_reads(
        tmp_path, free_udp_port, free_tcp_port):
    bacnet_port, meter_port = free_udp_port(), free_udp_port()
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=bacnet_port, meter_port=meter_port, http_port=free_tcp_port(),
                 storage=tmp_path / "gw.sqlite", cycle_seconds=3600, meter_timeout_seconds=METER_TIMEOUT,
                 **FAULT_CONFIG)
    gw = f"127.0.0.1:{bacnet_port}"
    meter_power = lambda: peer.read(gw, P.BY_NAME[P.METER_POWER].object_id, "presentValue")  # noqa: E731
    async with MeterSimulator(address=f"127.0.0.1/8:{meter_port}", value=87.5) as meter, \
            BacnetPeer(free_udp_port(), timeout=2.0) as peer:
        with GatewayProcess(config, tmp_path / "gateway.log") as gateway, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            await eventually(meter_power, START_S, "gateway answering with a meter value")
            # what the claim does is looked for from here on: a read that missed METER_TIMEOUT before it (a starved
            # simulator as the gateway started, through the configured router: CI at -n 6) is no part of it
            before = len(gateway.log())
            other.bind(("127.0.0.1", 0))
            network = struct.pack(">H", 12345)
            # I-Am-Router-To-Network 12345, and an I-Am from network 12345 as a router relays it
            other.sendto(bvlc(bytes([0x01, 0x80, 0x01]) + network), ("127.0.0.1", bacnet_port))
            other.sendto(bvlc(bytes([0x01, 0x08]) + network + bytes([0x01, 0x07, 0x10, 0x00, 0xC4, 0x02, 0x00,
                                                                    0x00, 0x07, 0x22, 0x01, 0xE0, 0x91, 0x00,
                                                                    0x21, 0x08])), ("127.0.0.1", bacnet_port))
            meter.set_value(88.5)
            # read through the configured router, not sent to the other host (a meter fault, or its values)
            await eventually(_equal(meter_power, 88.5), 10, "the meter's new value read through its router")
            assert gateway.alive
            assert "meter fault" not in gateway.log()[before:], gateway.log()[-2000:]


def _equal(read, expected):
    async def check():
        return await read() == expected
    return check


# -- SIGKILL: the forecaster's history survives ---------------------------------------------------

async def get_status(http_port):
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as s:
        try:
            async with s.get(f"http://127.0.0.1:{http_port}/api/status") as r:
                return await r.json() if r.status == 200 else None
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return None


def stored_minutes(path):
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
        try:
            return db.execute("SELECT minute, count FROM forecast_minute ORDER BY minute").fetchall()
        except sqlite3.OperationalError:
            return []


@pytest.mark.timeout(240)
async def test_sigkill_keeps_the_forecaster_history(tmp_path, free_udp_port, free_tcp_port):
    bacnet_port, meter_port, http_port = free_udp_port(), free_udp_port(), free_tcp_port()
    config, storage = tmp_path / "gw.toml", tmp_path / "gw.sqlite"
    write_config(config, bacnet_port=bacnet_port, meter_port=meter_port, http_port=http_port, storage=storage,
                 cycle_seconds=0.5, **FAULT_CONFIG)
    gateway = GatewayProcess(config, tmp_path / "gateway.log")
    try:
        async with MeterSimulator(address=f"127.0.0.1/8:{meter_port}", value=87.5):
            gateway.start()
            await eventually(lambda: storage.exists() and stored_minutes(storage), START_S,
                             "history persisted")
            await asyncio.sleep(1.5)                          # a few more samples into the stored minute
            status = await get_status(http_port)
            assert status, gateway.log()[-3000:]
            fc = status["forecaster"]
            assert fc["history_minutes"] >= 1 and fc["history_first"] is not None
            stored = stored_minutes(storage)
            gateway.kill()

        # restart with the meter gone: whatever history shows now came from the file
        gateway.start()
        status = await eventually(lambda: get_status(http_port), START_S, "status after the restart")
        after = status["forecaster"]
        assert after["history_first"] == fc["history_first"]
        assert after["history_minutes"] >= len(stored) >= 1
        assert after["history_minutes"] >= fc["history_minutes"] - 1   # at most the unsaved minute
        assert f"forecaster resumed {len(stored)} minute{'' if len(stored) == 1 else 's'} of stored history" in \
            gateway.log()
    finally:
        gateway.stop()
    assert "Traceback" not in gateway.log(), gateway.log()[-4000:]


# -- the meter goes silent ------------------------------------------------------------------------

@pytest.mark.timeout(60)
async def test_silent_meter_faults_without_invented_values_then_recovers(
        tmp_path, free_udp_port, free_tcp_port, caplog):
    caplog.set_level(logging.INFO)
    bacnet_port, meter_port, vtn_port = free_udp_port(), free_udp_port(), free_tcp_port()
    cfg = parse_config({
        "bacnet": {"address": f"127.0.0.1/8:{bacnet_port}", "device_id": 500202},
        "meter": {"router": f"127.0.0.1:{meter_port}", "poll_seconds": 0.5, "timeout_seconds": 1.0,
                  "settle_seconds": 0.5},
        "openadr": {"vtn_url": f"http://127.0.0.1:{vtn_port}/OpenADR2/Simple/2.0b", "ven_name": "silent",
                    "retry_min_seconds": 0.2, "retry_max_seconds": 1.0, "telemetry_seconds": 1},
        "storage": {"path": str(tmp_path / "gw.sqlite")},
        "http": {"enabled": False},
        "forecaster": {"cycle_seconds": 1.0},
    }, "test", environ={})
    gw = f"127.0.0.1:{bacnet_port}"
    meter = MeterSimulator(address=f"127.0.0.1/8:{meter_port}", value=87.5)
    vtn = DemoVtn(vtn_port, poll_seconds=1)
    gateway = Gateway(cfg)
    await meter.start()
    await vtn.start()
    try:
        await gateway.start()
        async with BacnetPeer(free_udp_port(), timeout=2.0) as peer:
            meter_power = P.BY_NAME[P.METER_POWER].object_id
            await eventually(lambda: gateway.vtn.connected and vtn.reports, 15, "live telemetry")
            assert await peer.read(gw, meter_power, "statusFlags") == [0, 0, 0, 0]

            meter.set_silent(True)
            # An answer the meter sent just before is still received, at most one read timeout later.
            went_silent = datetime.now(timezone.utc) + timedelta(seconds=1.0)
            async def meter_fault():
                return await peer.read(gw, P.BY_NAME[P.METER_FAULT].object_id, "presentValue") == "active"
            await eventually(meter_fault, 5, "meter-fault on")
            assert await peer.read(gw, P.BY_NAME[P.METER_FAULT].object_id, "presentValue") == "active"
            assert await peer.read(gw, meter_power, "statusFlags") == [0, 1, 0, 0]
            assert await peer.read(gw, meter_power, "reliability") == "communicationFailure"
            # the last good value stays readable, flagged; nothing new is made up
            assert await peer.read(gw, meter_power, "presentValue") == pytest.approx(87.5)
            meter.set_value(55.0)                             # the meter's value moves while nobody hears it
            await asyncio.sleep(2.0)
            assert await peer.read(gw, meter_power, "presentValue") == pytest.approx(87.5)
            seen = gateway.status()["meter"]      # what the dashboard shows: the value and its age
            assert seen["fault"] and seen["last_value_kw"] == pytest.approx(87.5) and seen["last_error"]
            assert datetime.fromisoformat(seen["last_value_at"]) < went_silent <= \
                datetime.fromisoformat(seen["last_attempt_at"])
            forecaster_fed_at = gateway.forecast.status()["last_meter_at"]
            assert forecaster_fed_at < went_silent.timestamp()
            back = datetime.now(timezone.utc)
            meter.set_silent(False)

            await eventually(lambda: peer.read(gw, meter_power, "presentValue"), 5)
            await eventually(lambda: gateway.device.get(P.METER_POWER) == 55.0, 5, "fresh value after recovery")
            assert await peer.read(gw, meter_power, "statusFlags") == [0, 0, 0, 0]
            assert await peer.read(gw, P.BY_NAME[P.METER_FAULT].object_id, "presentValue") == "inactive"
            await eventually(lambda: any(v == 55.0 for *_, v in vtn.reports), 10, "telemetry resumes")
            # drained but for the readings of the 1 s interval still running (read every 0.5 s)
            await eventually(lambda: gateway.telemetry.pending <= 2, 10, "queue drained")
            await eventually(lambda: gateway.meter.fault_window() is None, 10, "the meter's fault ended")
    finally:
        await gateway.stop()
        await vtn.stop()
        await meter.stop()
    # reports are 1 s intervals dated at their start: none may lie wholly inside the silence
    during = [(ts, v) for *_, ts, v in vtn.reports if went_silent < ts and ts + timedelta(seconds=1) <= back]
    assert during == [], "no telemetry sample while the meter was silent"
    assert [v for *_, v in vtn.reports].count(55.0) >= 1
    faults = [r for r in caplog.records if r.getMessage().startswith("meter fault:")]
    recoveries = [r for r in caplog.records if r.getMessage().startswith("meter answering again")]
    assert len(faults) == 1 and len(recoveries) == 1
    assert not [r for r in caplog.records if r.exc_info], "no stack traces for an expected fault"


@pytest.mark.timeout(60)
async def test_a_meter_that_answers_with_an_unusable_value_is_not_a_communication_failure(
        tmp_path, free_udp_port, free_tcp_port):
    # A meter answering in kWh, beyond the kW bounds or flagging its own value read communicationFailure on
    # meter-power, the same as a dead network: the BAS alarm sent the technician to the cabling and the router
    # while the meter answered every read. communicationFailure is kept for a read nothing answered.
    meter_port = free_udp_port()
    cfg = parse_config({
        "bacnet": {"address": f"127.0.0.1/8:{free_udp_port()}", "device_id": 500204, "input_max_kw": 1000},
        "meter": {"router": f"127.0.0.1:{meter_port}", "poll_seconds": 0.5, "timeout_seconds": 1.0},
        "openadr": {"vtn_url": f"http://127.0.0.1:{free_tcp_port()}/OpenADR2/Simple/2.0b"},  # no VTN listens
        "storage": {"path": str(tmp_path / "gw.sqlite")},
        "http": {"enabled": False},
        "forecaster": {"cycle_seconds": 3600},
    }, "test", environ={})
    gw, gateway = cfg.bacnet.address.replace("/8", ""), Gateway(cfg)
    meter_power, meter_fault = P.BY_NAME[P.METER_POWER].object_id, P.BY_NAME[P.METER_FAULT].object_id
    async with MeterSimulator(address=f"127.0.0.1/8:{meter_port}", value=87.5) as meter:
        try:
            await gateway.start()
            async with BacnetPeer(free_udp_port(), timeout=2.0) as peer:
                async def seen(want=None):
                    rows = await peer.read_multiple(gw, [(meter_power, ["presentValue", "statusFlags", "reliability"]),
                                                         (meter_fault, ["presentValue"])])
                    got = (rows[(meter_power, "presentValue")], rows[(meter_power, "statusFlags")],
                           rows[(meter_power, "reliability")], rows[(meter_fault, "presentValue")])
                    return got if want is None or got == want else None

                good = (87.5, [0, 0, 0, 0], "noFaultDetected", "inactive")
                unusable = (87.5, [0, 1, 0, 0], "unreliableOther", "active")
                await eventually(lambda: seen(good), 10, "a meter value")
                for cause, change, want in (
                        ("outside", lambda: meter.set_value(5000.0), unusable),
                        ("not a power unit", lambda: (meter.set_units("kilowattHours"), meter.set_value(87.5)),
                         unusable),
                        # the meter's own word for its fault goes on to the BAS: unreliableOther said less than the
                        # log and /api/status (helper meters41)
                        ("flags its value as fault", lambda: (meter.set_units("kilowatts"),
                                                              meter.set_status(reliability="overRange")),
                         (87.5, [0, 1, 0, 0], "overRange", "active"))):
                    change()
                    await eventually(lambda: cause in (gateway.status()["meter"]["last_error"] or ""), 5, cause)
                    assert (got := await seen()) == want, (cause, got)
                meter.set_silent(True)
                await eventually(lambda: seen((87.5, [0, 1, 0, 0], "communicationFailure", "active")), 5,
                                 "silent: a communication failure")
        finally:
            await gateway.stop()


# -- the router in front of the meter refuses the reads -------------------------------------------

@pytest.mark.timeout(60)
async def test_router_reject_is_named_in_the_fault_log_and_status(tmp_path, free_udp_port, free_tcp_port, caplog):
    caplog.set_level(logging.INFO)
    http_port = free_tcp_port()
    async with RawRouter(answer="meter", value=87.5) as router:
        cfg = parse_config({
            "bacnet": {"address": f"127.0.0.1/8:{free_udp_port()}", "device_id": 500203},
            # a timeout longer than the poll: a read that waited for it would show no reason in time
            "meter": {"router": router.address, "poll_seconds": 0.5, "timeout_seconds": 20},
            "openadr": {"vtn_url": f"http://127.0.0.1:{free_tcp_port()}/OpenADR2/Simple/2.0b",
                        "retry_min_seconds": 1.0, "retry_max_seconds": 5.0},  # no VTN listens
            "storage": {"path": str(tmp_path / "gw.sqlite")},
            "http": {"address": f"127.0.0.1:{http_port}"},
            "forecaster": {"cycle_seconds": 3600},
        }, "test", environ={})
        gateway = Gateway(cfg)
        try:
            await gateway.start()
            await eventually(lambda: gateway.device.get(P.METER_POWER) == 87.5, 10, "a meter value")
            router.answer = "reject:1"
            reason = (f"router {router.address} rejected the request for network 12345: "
                      "not directly connected (reason 1)")
            status = await eventually(
                lambda: _meter_status(http_port, lambda m: m["fault"] and m["last_error"] == reason),
                5, "/api/status naming the router's reject")
            assert status["router"] == router.address and status["last_value_kw"] == 87.5
            assert gateway.device.get(P.METER_FAULT) is True

            router.answer = "busy"
            busy = (f"router {router.address} is busy and refused the request for network 12345 "
                    "(Router-Busy-To-Network)")
            await eventually(lambda: _meter_status(http_port, lambda m: m["last_error"] == busy), 5, "busy")
            router.answer = "meter"
            await eventually(lambda: _meter_status(http_port, lambda m: not m["fault"]), 5, "meter back")
        finally:
            await gateway.stop()
    faults = [r.getMessage() for r in caplog.records if r.getMessage().startswith("meter fault:")]
    assert faults == [f"meter fault: {reason}"]  # one line at fault start, with the router's reason
    assert not [r for r in caplog.records if r.exc_info]


async def _meter_status(http_port, check):
    status = await get_status(http_port)
    meter = status and status["meter"]
    return meter if meter and check(meter) else None


# -- a meter that loses a read now and then ---------------------------------------------------------

@pytest.mark.timeout(60)
async def test_an_intermittent_meter_is_one_fault_in_the_log_and_counted_in_the_status(
        tmp_path, free_udp_port, free_tcp_port, caplog):
    # one read lost in five: the log says the fault once; /api/status counts the lost reads; meter-fault,
    # meter.fault and /healthz still follow each read, so the BAS and an orchestrator see no debounced state
    caplog.set_level(logging.INFO)
    http_port, meter_port = free_tcp_port(), free_udp_port()
    cfg = parse_config({
        "bacnet": {"address": f"127.0.0.1/8:{free_udp_port()}", "device_id": 500204},
        "meter": {"router": f"127.0.0.1:{meter_port}", "poll_seconds": 0.1, "timeout_seconds": 0.3,
                  "settle_seconds": 1.0},
        "openadr": {"vtn_url": f"http://127.0.0.1:{free_tcp_port()}/OpenADR2/Simple/2.0b",
                    "retry_min_seconds": 1.0, "retry_max_seconds": 5.0},  # no VTN listens
        "storage": {"path": str(tmp_path / "gw.sqlite")},
        "http": {"address": f"127.0.0.1:{http_port}"},
        "forecaster": {"cycle_seconds": 3600},
    }, "test", environ={})
    # settle 1 s, ten reads: a loaded CI once saw five good reads in a row amid the drops and logged an end
    async with MeterSimulator(address=f"127.0.0.1/8:{meter_port}", value=87.5) as sim:
        gateway = Gateway(cfg)
        try:
            await gateway.start()
            await eventually(lambda: gateway.device.get(P.METER_POWER) == 87.5, 10, "a meter value")
            sim.set_dropping(5)
            status = await eventually(lambda: _meter_status(
                http_port, lambda m: (m["fault_window"] or {}).get("failed_reads", 0) >= 4 and not m["fault"]),
                20, "four lost reads counted, the last read good")
            window = status["fault_window"]
            assert window["intermittent"] is True and window["reads"] > window["failed_reads"]
            assert window["last_failure"].startswith("no response from 12345:2")
            assert gateway.device.get(P.METER_FAULT) == (gateway.meter.latest.value is None) == gateway.meter.fault
            ok, text = gateway.health()
            assert ok and ("meter fault" in text) == gateway.meter.fault

            sim.set_dropping(0)
            await eventually(lambda: _meter_status(http_port, lambda m: m["fault_window"] is None), 10,
                             "the fault ended once the meter answers steadily")
        finally:
            await gateway.stop()
    meter_lines = [r.getMessage() for r in caplog.records if r.name == "bacnet_api.meter" and r.levelno >= logging.INFO]
    assert len(meter_lines) == 2, meter_lines
    assert meter_lines[0].startswith("meter fault: no response from 12345:2")
    assert meter_lines[1].startswith("meter answering steadily again after ") and "(intermittent: " in meter_lines[1]
    assert not [r for r in caplog.records if r.exc_info]
