"""The wired gateway end to end, with real peers: an openleadr VTN, the routed meter simulator and a
second BACnet stack acting as the BAS. Intervals are shortened by configuration, nothing else differs."""
from __future__ import annotations

import asyncio
import logging
import math
import time
from datetime import datetime, timedelta, timezone

import pytest
from bacnet_peer import BacnetPeer, PeerError
from waiting import FIRST_CYCLE_SECONDS, eventually

from bacnet_api import points as P
from bacnet_api.simulator import MeterSimulator
from forecaster.series import minute_of
from ven.app import OPT_OUT_COMMANDS, Gateway
from ven.config_load import parse_config
from ven.vtn_server import DemoVtn

pytestmark = pytest.mark.timeout(90)


def fast_config(tmp_path, bacnet_port, meter_port, vtn_port, http_port, telemetry_seconds=None, **forecaster):
    return parse_config({
        "bacnet": {"address": f"127.0.0.1/8:{bacnet_port}", "device_id": 500001},
        "meter": {"router": f"127.0.0.1:{meter_port}", "poll_seconds": 1.0, "timeout_seconds": 1.0},
        "openadr": {"vtn_url": f"http://127.0.0.1:{vtn_port}/OpenADR2/Simple/2.0b", "ven_name": "gw-test",
                    "retry_max_seconds": 2.0,
                    **({"telemetry_seconds": telemetry_seconds} if telemetry_seconds is not None else {})},
        "storage": {"path": str(tmp_path / "gw.sqlite")},
        "http": {"address": f"127.0.0.1:{http_port}"},
        "forecaster": {"cycle_seconds": 1.0, **forecaster},
    }, "test", environ={})


def lone_config(tmp_path, bacnet_port, vtn_port, device_id, storage="gw.sqlite", **forecaster):
    """A gateway on its own: no meter (nobody at 127.0.0.1:9), no VTN on `vtn_port`, no HTTP."""
    return parse_config({
        "bacnet": {"address": f"127.0.0.1/8:{bacnet_port}", "device_id": device_id},
        "meter": {"address": "127.0.0.1:9", "poll_seconds": 1.0, "timeout_seconds": 0.5},
        "openadr": {"vtn_url": f"http://127.0.0.1:{vtn_port}/OpenADR2/Simple/2.0b"},
        "storage": {"path": str(tmp_path / storage)},
        "http": {"enabled": False},
        "forecaster": forecaster,
    }, "test", environ={})


# The system's report intervals: 2 s rather than the product's 10 s, so its tests wait seconds, not tens of them,
# for telemetry. A module importing the fixture sets its own SYSTEM_TELEMETRY_SECONDS (None: the product's).
SYSTEM_TELEMETRY_SECONDS = 2


@pytest.fixture
async def system(request, tmp_path, free_udp_port, free_tcp_port):
    ports = dict(bacnet_port=free_udp_port(), meter_port=free_udp_port(), vtn_port=free_tcp_port(),
                 http_port=free_tcp_port())
    vtn = DemoVtn(port=ports["vtn_port"], poll_seconds=1.0)
    meter = MeterSimulator(address=f"127.0.0.1/8:{ports['meter_port']}", value=87.5)
    telemetry = getattr(request.module, "SYSTEM_TELEMETRY_SECONDS", None)
    gateway = Gateway(fast_config(tmp_path, **ports, telemetry_seconds=telemetry))
    peer = BacnetPeer(free_udp_port())
    await vtn.start()
    await meter.start()
    await gateway.start()
    await peer.__aenter__()
    gw = f"127.0.0.1:{ports['bacnet_port']}"
    try:
        yield vtn, meter, gateway, peer, gw
    finally:
        await peer.__aexit__(None)
        await gateway.stop()
        await meter.stop()
        await vtn.stop()


async def read(peer, gw, name):
    return await peer.read(gw, P.BY_NAME[name].object_id, "presentValue")


async def test_meter_reaches_bacnet_and_the_vtn(system):
    vtn, meter, gateway, peer, gw = system
    await eventually(lambda: read(peer, gw, P.VTN_CONNECTED), 10)
    value = await eventually(lambda: read(peer, gw, P.METER_POWER), 5)
    assert value == pytest.approx(87.5)
    assert str(await read(peer, gw, P.METER_FAULT)) in ("inactive", "0")
    # the VTN receives the simulator's value as real_power in kW
    await eventually(lambda: vtn.reports, 10)
    _, resource, measurement, ts, value = vtn.reports[-1]
    assert (resource, value) == ("main-meter", pytest.approx(87.5)), vtn.reports[-1]
    assert measurement.replace("_", "").lower() == "realpower", measurement

    meter.set_silent(True)
    await eventually(lambda: gateway.device.get(P.METER_FAULT), 10)
    assert gateway.device.status_flags(P.METER_POWER)["fault"]
    meter.set_silent(False)
    await eventually(lambda: not gateway.device.get(P.METER_FAULT), 10)


async def test_event_levels_and_opt_out_over_bacnet(system, caplog):
    caplog.set_level(logging.INFO)
    vtn, meter, gateway, peer, gw = system
    await eventually(lambda: gateway.vtn.connected, 10)
    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=4)
    vtn.add_event([1, 2, 3], start=start, interval_seconds=2, event_id="e2e-levels")

    async def pending_within_a_minute():
        return await read(peer, gw, P.EVENT_START_MINUTES) == 1.0
    await eventually(pending_within_a_minute, 4)
    seen = []
    # the event ends at start + 6 s; once its end is seen, a second more of level 0 (about ten reads) shows it
    # stays ended; the 2 s deadline after the end only bounds the wait for it
    deadline, settled = start + timedelta(seconds=8), start + timedelta(seconds=7)
    while datetime.now(timezone.utc) < deadline:
        level = await read(peer, gw, P.EVENT_LEVEL)
        if not seen or seen[-1] != level:
            seen.append(level)
        if len(seen) == 5 and datetime.now(timezone.utc) >= settled:
            break
        await asyncio.sleep(0.1)
    assert seen == [0.0, 1.0, 2.0, 3.0, 0.0]
    # the forecaster keeps the 6 s the building shed, and the hour after, out of what it learns
    shed = ((math.floor(start.timestamp() / 60) + 1, minute_of(start.timestamp() + 6 + 3600)),)
    await eventually(lambda: gateway.forecast.forecaster.curtailed == shed, 5)

    # a second event, then the BAS opts out over BACnet: level drops to 0 and the VTN hears optOut
    # starting 2 s on, not running already: it must still be on when a loaded machine's wait for level 2 (up to
    # 8 s) is over, for the opt-out to find it
    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=2)
    vtn.add_event([2, 2], start=start, interval_seconds=5, event_id="e2e-opt")
    await eventually(lambda: gateway.device.get(P.EVENT_LEVEL) == 2.0, 8)
    assert await peer.write(gw, P.BY_NAME[P.OPT_OUT].object_id, "presentValue", "active", priority=8) is None
    await eventually(lambda: gateway.device.get(P.EVENT_LEVEL) == 0.0, 2)
    await eventually(lambda: "optOut" in vtn.opts_for("e2e-opt"), 10)
    # one line for the write, one for what the VEN does about it (a third said the write again)
    said = [r.getMessage() for r in caplog.records if "ADR-Opt-Out" in r.getMessage()
            and r.name.split(".")[0] in ("ven", "bacnet_api")]
    # who wrote it and at what priority: "who opted us out of Tuesday's event?" has an answer in the log
    bas = peer.address.replace("/8", "")
    assert said == [f"BACnet write accepted: ADR-Opt-Out = active (priority 8, from {bas})",
                    "ADR-Opt-Out active: opting out of 1 active/pending event(s); new events answered optOut"], said

    # A BAS writes its switch each scan. Those writes changed nothing but each logged two INFO lines ("relinquished:
    # opting back in" for a command of inactive) and committed and synced storage.path (6.7 KB a write).
    saved = []
    save_value = gateway.storage.save_value
    gateway.storage.save_value = lambda key, value: (saved.append(key), save_value(key, value))[1]
    oid = P.BY_NAME[P.OPT_OUT].object_id
    for _ in range(3):
        assert await peer.write(gw, oid, "presentValue", "active", priority=8) is None
    assert await peer.relinquish(gw, oid, 12) is None   # an empty priority relinquished
    assert saved == []
    # a command at another priority is kept (a restart gives it back), but the switch the VTN hears stays
    assert await peer.write(gw, oid, "presentValue", "inactive", priority=10) is None
    assert saved == [OPT_OUT_COMMANDS] and gateway.device.get(P.OPT_OUT) is True
    said = [r.getMessage() for r in caplog.records if "ADR-Opt-Out" in r.getMessage()
            and r.name.split(".")[0] in ("ven", "bacnet_api")]
    # what this writer wrote, not the opt-out another holds at 8: "= True (priority 10, from <it>)" blamed it
    assert said[2:] == [f"BACnet write accepted: ADR-Opt-Out inactive at priority 10 (from {bas}); active at priority "
                        "8 stays in effect"], said
    assert await peer.relinquish(gw, oid, 8) is None     # the command at 10 decides now
    await eventually(lambda: gateway.device.get(P.OPT_OUT) is False, 5)
    said = [r.getMessage() for r in caplog.records if "BACnet write accepted: ADR-Opt-Out" in r.getMessage()]
    assert said[-1] == f"BACnet write accepted: ADR-Opt-Out relinquished at priority 8 (from {bas}); now inactive " \
        "at priority 10", said


async def test_bas_input_moves_the_forecast_points(system):
    vtn, meter, gateway, peer, gw = system
    assert gateway.device.status_flags(P.FIFTEEN_MIN_FORECAST)["fault"]  # no forecast yet
    for kw in (100.0, 110.0, 120.0, 130.0):
        assert await peer.write(gw, P.BY_NAME[P.INPUT_POWER].object_id, "presentValue", kw, priority=8) is None
        await asyncio.sleep(0.2)
    await eventually(lambda: not gateway.device.status_flags(P.FIFTEEN_MIN_FORECAST)["fault"], 10)
    f15 = await read(peer, gw, P.FIFTEEN_MIN_FORECAST)
    f60 = await read(peer, gw, P.ONE_HOUR_FORECAST)
    assert 90.0 <= f15 <= 140.0 and 90.0 <= f60 <= 140.0
    status = gateway.status()
    assert status["forecaster"] and status["points"][P.INPUT_POWER]["value"] == 130.0


async def test_operator_api_reflects_the_running_gateway(system):
    import aiohttp

    vtn, meter, gateway, peer, gw = system
    await eventually(lambda: gateway.vtn.connected and gateway.telemetry.sent_total >= 2, 15)
    vtn.add_event([2], start=datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=1),
                  interval_seconds=20, event_id="api-evt")    # running already: the API is what is tested
    await eventually(lambda: gateway.device.get(P.EVENT_LEVEL) == 2.0, 8)
    base = gateway.http.url
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.get(f"{base}/healthz") as r:
            assert r.status == 200
        async with http.get(f"{base}/api/status") as r:
            status = await r.json()
        assert status["points"][P.METER_POWER]["value"] == pytest.approx(87.5)
        assert status["points"][P.EVENT_LEVEL]["value"] == 2.0
        assert status["points"]["ADR-Opt-Out"]["texts"] == ["opted in", "opted out"]   # as the BAS reads them
        assert "texts" not in status["points"][P.METER_POWER]
        assert status["vtn"]["connected"] and status["vtn"]["registration_id"]
        assert any(e["event_id"] == "api-evt" for e in status["events"])
        assert status["meter"]["fault"] is False and status["forecaster"]
        assert status["config_warnings"] == []  # loopback VTN, meter read faster than telemetry, zone UTC
        async with http.get(f"{base}/metrics") as r:
            text = await r.text()
        # the value is the last field: a label value may hold spaces (edge_gateway_job_failing{what="meter read"})
        metrics = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line and not line.startswith("#")}
        assert metrics["edge_gateway_meter_kw"] == pytest.approx(87.5)
        assert metrics["edge_gateway_vtn_connected"] == 1.0
        assert metrics["edge_gateway_event_level"] == 2.0
        assert metrics["edge_gateway_telemetry_sent_total"] >= 2
        assert metrics["edge_gateway_telemetry_queued_total"] >= metrics["edge_gateway_telemetry_sent_total"]
        async with http.get(f"{base}/api/history?hours=1") as r:
            assert r.status == 200
            history = await r.json()
        assert any(e.get("level") == 2 or e.get("level") == 2.0 for e in history["events"]), history["events"]
        async with http.post(f"{base}/api/status") as r:
            assert r.status == 405  # read-only


async def test_a_bas_value_at_the_bound_feeds_the_forecast_and_no_forecast_is_a_fault(
        tmp_path, free_udp_port, free_tcp_port):
    cfg = parse_config({
        "bacnet": {"address": f"127.0.0.1/8:{free_udp_port()}", "device_id": 500002,
                   "input_min_kw": -999.9, "input_max_kw": 999.9},
        "meter": {"address": "127.0.0.1:9", "poll_seconds": 1.0, "timeout_seconds": 0.5},
        "openadr": {"vtn_url": f"http://127.0.0.1:{free_tcp_port()}/OpenADR2/Simple/2.0b"},
        "storage": {"path": str(tmp_path / "gw.sqlite")},
        "http": {"enabled": False},
        "forecaster": {"cycle_seconds": 0.2, "source": "bacnet_input"},
    }, "test", environ={})
    gateway = Gateway(cfg)
    await gateway.start()
    try:
        async with BacnetPeer(free_udp_port()) as peer:
            gw = cfg.bacnet.address.replace("/8", "")
            # 999.9 travels as the Real 999.9000244: the device takes it, so must the forecaster
            assert await peer.write(gw, P.BY_NAME[P.INPUT_POWER].object_id, "presentValue", 999.9, priority=8) is None
            await eventually(lambda: not gateway.device.status_flags(P.FIFTEEN_MIN_FORECAST)["fault"], 10, "forecast")
            assert await read(peer, gw, P.FIFTEEN_MIN_FORECAST) == pytest.approx(999.9, abs=0.01)
            assert gateway.forecast.status()["rejected_samples"] == 0
            # 20 minutes on with nothing new: no forecast. The old one stays readable, flagged.
            gateway.forecast._clock = lambda: time.time() + 1200
            for name in (P.FIFTEEN_MIN_FORECAST, P.ONE_HOUR_FORECAST, P.RATE_OF_CHANGE):
                await eventually(lambda name=name: gateway.device.status_flags(name)["fault"], 5, f"{name} fault")
            assert await peer.read(gw, P.BY_NAME[P.FIFTEEN_MIN_FORECAST].object_id, "statusFlags") == [0, 1, 0, 0]
    finally:
        await gateway.stop()


@pytest.mark.timeout(40)
async def test_status_carries_the_config_warnings_and_healthz_stays_ok(tmp_path, free_udp_port, free_tcp_port):
    # the start-up log says them once and they scroll away: an operator who watches only the dashboard
    # never learned that every other report interval goes unsent
    import aiohttp

    cfg = parse_config({
        "bacnet": {"address": f"127.0.0.1/8:{free_udp_port()}", "device_id": 500005},
        "meter": {"address": "127.0.0.1:9", "poll_seconds": 20.0, "timeout_seconds": 0.5},   # nobody there
        "openadr": {"vtn_url": f"http://127.0.0.1:{free_tcp_port()}/OpenADR2/Simple/2.0b", "telemetry_seconds": 10},
        "storage": {"path": str(tmp_path / "gw.sqlite")},
        "http": {"address": f"127.0.0.1:{free_tcp_port()}"},
    }, "test", environ={})
    (warning,) = cfg.warnings()
    assert warning.startswith("meter.poll_seconds (20) is longer than openadr.telemetry_seconds (10)"), warning
    gateway = Gateway(cfg)
    await gateway.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.get(f"{gateway.http.url}/api/status") as r:
                assert r.status == 200
                status = await r.json()
            assert status["config_warnings"] == [warning]
            async with http.get(f"{gateway.http.url}/healthz") as r:
                health = await r.text()
                assert r.status == 200, health  # a setting, not a fault
            assert "poll_seconds" not in health
    finally:
        await gateway.stop()


@pytest.mark.timeout(30)
async def test_a_look_that_fails_stops_neither_the_others_nor_itself(tmp_path, free_udp_port, free_tcp_port, caplog):
    # the three looks shared one try: the clock's failing once, the certificate was never looked at again
    from ven.cert_expiry import CertWatch
    from ven.clock_sync import ClockSync, SyncWatch

    caplog.set_level(logging.INFO, logger="ven.app")
    kernel = {"broken": False}

    def adjtimex():
        if kernel["broken"]:
            raise RuntimeError("a bug in the reader")
        return ClockSync(True, 0.01, 0.001)

    cfg = lone_config(tmp_path, free_udp_port(), free_tcp_port(), 500007, cycle_seconds=3600)
    certs = CertWatch(cfg.openadr, every_s=0)
    looked = []
    real = certs.check
    certs.check = lambda mono, now: (looked.append(mono), real(mono, now))
    gateway = Gateway(cfg, clock_sync=SyncWatch(adjtimex, every_s=0), cert_watch=certs)
    try:
        await gateway.start()
        kernel["broken"] = True
        await eventually(lambda: len(looked) >= 4, 10, "the certificate looked at, again and again")
        await eventually(lambda: len(looked) >= 8, 10, "and still")
        lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.getMessage().startswith("looking at")]
        assert lines == [(logging.ERROR, "looking at the clock's synchronization failed; tried again every 0.1 s")]
        kernel["broken"] = False
        await eventually(lambda: len([r for r in caplog.records if r.getMessage().startswith("looking at")]) == 2,
                         10, "the end said")
        assert caplog.records[-1].getMessage() == "looking at the clock's synchronization works again"
    finally:
        await gateway.stop()


@pytest.mark.timeout(40)
async def test_a_clock_no_time_service_keeps_is_a_warning_in_the_log_status_and_metrics(tmp_path, free_udp_port,
                                                                                          free_tcp_port, caplog):
    # event starts are the utility's UTC times applied by this clock: one that drifts shifts them, unseen
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    from ven.clock_sync import NOT_SYNCHRONIZED, ClockSync, SyncWatch

    caplog.set_level(logging.INFO, logger="ven.clock_sync")
    kernel = {"says": ClockSync(False, 16.0, 16.0), "asked": 0}

    def adjtimex():
        kernel["asked"] += 1
        return kernel["says"]

    cfg = parse_config({
        "bacnet": {"address": f"127.0.0.1/8:{free_udp_port()}", "device_id": 500006},
        "meter": {"address": "127.0.0.1:9", "poll_seconds": 1.0, "timeout_seconds": 0.5},   # nobody there
        "openadr": {"vtn_url": f"http://127.0.0.1:{free_tcp_port()}/OpenADR2/Simple/2.0b"},
        "storage": {"path": str(tmp_path / "gw.sqlite")},
        "http": {"address": f"127.0.0.1:{free_tcp_port()}"},
        # an hour's forecast cycle: the clock is looked at on its own tick all the same (it was only in the forecast's
        # callback, so hourly here, and never while the forecast cycle failed)
        "forecaster": {"cycle_seconds": 3600},
    }, "test", environ={})
    gateway = Gateway(cfg, clock_sync=SyncWatch(adjtimex, every_s=0))   # asked at every look
    await gateway.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async def get(path):
                async with http.get(f"{gateway.http.url}{path}") as r:
                    return r.status, (await r.json() if path.startswith("/api") else await r.text())

            def lines():
                return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "ven.clock_sync"]

            _, status = await get("/api/status")
            assert (status["clock_synchronized"], status["clock_max_error_ms"]) == (False, None)
            code, health = await get("/healthz")
            assert code == 200 and "clock" not in health, health      # a warning, not a fault
            _, text = await get("/metrics")
            metric = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
            assert metric["edge_gateway_clock_synchronized"] == 0
            asked = kernel["asked"]
            await eventually(lambda: kernel["asked"] >= asked + 2, 10, "asked again while it drifts")
            assert lines() == [(logging.WARNING, NOT_SYNCHRONIZED)]      # once, not at every look
            assert (await get("/api/status"))[1]["clock_warning"] is True

            kernel["says"] = ClockSync(True, 0.0125, 0.0003)            # chrony reached its servers
            await eventually(lambda: len(lines()) == 2, 10, "the end said")
            assert lines()[1] == (logging.INFO, "the machine's clock is synchronized again (maximum error 12 ms)")
            _, status = await get("/api/status")
            assert (status["clock_synchronized"], status["clock_max_error_ms"]) == (True, 12.5)
            assert status["clock_warning"] is False
            _, text = await get("/metrics")
            assert "edge_gateway_clock_synchronized 1.0" in text.splitlines()
    finally:
        await gateway.stop()


@pytest.mark.timeout(40)
async def test_a_cold_start_publishes_persistence_from_the_first_bas_write(tmp_path, free_udp_port, free_tcp_port):
    # The cycle at start found nothing, and the next came a whole cycle later: the BAS read 0, in fault,
    # for the first minute (in the demo too), though the gateway had a kW to forecast from.
    cfg = lone_config(tmp_path, free_udp_port(), free_tcp_port(), 500004, storage="empty.sqlite", cycle_seconds=60)
    names = (P.FIFTEEN_MIN_FORECAST, P.ONE_HOUR_FORECAST)
    gateway = Gateway(cfg)
    await gateway.start()
    try:
        async with BacnetPeer(free_udp_port()) as peer:
            gw = cfg.bacnet.address.replace("/8", "")

            async def points():
                rows = await peer.read_multiple(gw, [(P.BY_NAME[n].object_id, ["presentValue", "statusFlags"])
                                                     for n in names])
                assert not isinstance(rows, PeerError), rows
                return [(rows[(P.BY_NAME[n].object_id, "presentValue")], rows[(P.BY_NAME[n].object_id, "statusFlags")])
                        for n in names]

            assert await points() == [(0.0, [0, 1, 0, 0])] * 2      # no power yet
            assert await peer.write(gw, P.BY_NAME[P.INPUT_POWER].object_id, "presentValue", 123.5, priority=8) is None

            async def published():
                p = await points()
                return p if p == [(123.5, [0, 0, 0, 0])] * 2 else None
            await eventually(published, 5, "the persistence forecast of the first BAS write")
    finally:
        await gateway.stop()


@pytest.mark.timeout(90)
async def test_no_power_for_input_stale_seconds_faults_the_forecasts_and_drops_the_load_flags(
        tmp_path, free_udp_port, free_tcp_port):
    # The BAS stops writing: the forecast and rate points kept reading as live ([0,0,0,0]) and
    # high-load stayed active for ~14 minutes, until the 15-minute demand window emptied.
    from forecaster.series import minute_of
    from forecaster.store import ForecastStore

    path = tmp_path / "gw.sqlite"
    # what an earlier run stored a minute ago: with the live minute, two minutes give a rate
    ForecastStore(str(path)).save_minutes([minute_of(time.time()) - 1], [300.0], [1])
    cfg = parse_config({
        "bacnet": {"address": f"127.0.0.1/8:{free_udp_port()}", "device_id": 500003},
        "meter": {"address": "127.0.0.1:9", "poll_seconds": 1.0, "timeout_seconds": 0.5},
        "openadr": {"vtn_url": f"http://127.0.0.1:{free_tcp_port()}/OpenADR2/Simple/2.0b"},
        "storage": {"path": str(path)},
        "http": {"enabled": False},
        "forecaster": {"cycle_seconds": 0.2, "source": "bacnet_input", "input_stale_seconds": 3,
                       "high_load_kw": 250.0, "low_load_kw": 100.0, "min_on_minutes": 0, "min_off_minutes": 0},
    }, "test", environ={})
    names = (P.FIFTEEN_MIN_FORECAST, P.ONE_HOUR_FORECAST, P.RATE_OF_CHANGE, P.HIGH_LOAD, P.LOW_LOAD)
    gateway = Gateway(cfg)
    await gateway.start()
    try:
        async with BacnetPeer(free_udp_port()) as peer:
            gw = cfg.bacnet.address.replace("/8", "")

            async def points():   # as the BAS reads them
                rows = await peer.read_multiple(gw, [(P.BY_NAME[n].object_id, ["presentValue", "statusFlags"])
                                                     for n in names])
                assert not isinstance(rows, PeerError), rows
                return {n: (rows[(P.BY_NAME[n].object_id, "presentValue")],
                            rows[(P.BY_NAME[n].object_id, "statusFlags")]) for n in names}

            async def write_and_read(kw):
                assert await peer.write(gw, P.BY_NAME[P.INPUT_POWER].object_id, "presentValue", kw, priority=8) is None
                await asyncio.sleep(0.3)
                return await points()

            def live(p, kw):
                return (all(p[n][1] == [0, 0, 0, 0] for n in names) and 299.9 <= p[P.FIFTEEN_MIN_FORECAST][0] <= kw + 0.1
                        and p[P.HIGH_LOAD][0] == "active" and p[P.LOW_LOAD][0] == "inactive")

            async def fresh(kw):   # the BAS keeps writing until it reads the points live
                p = await write_and_read(kw)
                return p if live(p, kw) else None

            # the first cycle waits for the forecaster's imports (numpy, scikit-learn): 15 s was too few for a worker
            # among eight on two cores (in-tree run of 5e68c55). What is timed below is the fault, not the start.
            p = await eventually(lambda: fresh(300.0), FIRST_CYCLE_SECONDS, "live forecast points while the BAS writes")
            assert p[P.RATE_OF_CHANGE][0] == pytest.approx(0.0, abs=1e-6)

            seen = []

            async def stale():     # the BAS stopped writing
                seen.append(await points())
                return seen[-1] if all(seen[-1][n][1] == [0, 1, 0, 0] for n in names) else None
            try:
                p = await eventually(stale, 8, "fault on every forecast point once no power came in for 3 s")
            except AssertionError as err:
                raise AssertionError(f"{err}; last read: {seen[-1] if seen else None}") from None
            assert p[P.FIFTEEN_MIN_FORECAST][0] == pytest.approx(300.0)   # the last value stays readable
            assert p[P.ONE_HOUR_FORECAST][0] == pytest.approx(300.0)
            assert (p[P.HIGH_LOAD][0], p[P.LOW_LOAD][0]) == ("inactive", "inactive")   # no data is no claim
            assert gateway.forecast.status()["input_stale"] is True

            await eventually(lambda: fresh(310.0), 5, "faults cleared by a new write")
            assert gateway.forecast.status()["input_stale"] is False
    finally:
        await gateway.stop()


async def test_a_watts_meter_reaches_the_vtn_and_bacnet_in_kw(system):
    # the meter drops off and comes back set up in watts: the VTN, the BAS and /api/status see kW
    vtn, meter, gateway, peer, gw = system
    await eventually(lambda: gateway.meter.latest and gateway.meter.latest.ok, 10, "first reading")
    assert gateway.status()["meter"]["units"] == "kilowatts"
    meter.set_silent(True)
    await eventually(lambda: gateway.device.get(P.METER_FAULT), 10, "meter-fault on")
    meter.set_units("watts")
    meter.set_value(64250.0)
    meter.set_silent(False)
    await eventually(lambda: not gateway.device.get(P.METER_FAULT), 10, "meter-fault off")
    assert await read(peer, gw, P.METER_POWER) == pytest.approx(64.25)
    assert gateway.status()["meter"]["units"] == "watts"
    assert gateway.status()["meter"]["last_value_kw"] == pytest.approx(64.25)
    # the 2 s interval the meter came back in may mix kW from before the silence; the next one is all
    # 64.25 kW, complete up to 4 s after the recovery
    await eventually(lambda: any(r[-1] == pytest.approx(64.25) for r in vtn.reports), 25, "the VTN receives kW")
    assert all(r[-1] < 1000 for r in vtn.reports), vtn.reports  # never 64250 "kW"


async def test_a_stop_while_the_vtn_refuses_the_telemetry_names_that_fault_in_its_line(
        tmp_path, free_udp_port, free_tcp_port, caplog):
    # The VTN refusing every update is a fault the log starts (WARNING) and ends (INFO): a stop during it said
    # "edge-gateway stopped", as if it had ended, though the status (vtn.telemetry_fault) held it open
    from openleadr import errors

    caplog.set_level(logging.INFO, logger="ven")
    ports = dict(bacnet_port=free_udp_port(), meter_port=free_udp_port(), vtn_port=free_tcp_port(),
                 http_port=free_tcp_port())
    cfg = fast_config(tmp_path, **ports)
    cfg = cfg.model_copy(update={"openadr": cfg.openadr.model_copy(update={"telemetry_seconds": 1.0})})
    async with DemoVtn(port=ports["vtn_port"], poll_seconds=1.0) as vtn:
        async def refuse(payload):
            raise errors.InvalidDataError("values not accepted")
        vtn._server.services["report_service"].handlers["oadrUpdateReport"] = refuse
        meter = MeterSimulator(address=f"127.0.0.1/8:{ports['meter_port']}", value=87.5)
        await meter.start()
        gateway = Gateway(cfg)
        try:
            await gateway.start()
            await eventually(lambda: gateway.vtn.status()["telemetry_fault"], 20, "the refusals said")
            assert gateway.health() == (True, "ok (degraded: VTN not taking telemetry)")
            gateway.refresh_metrics()       # for the alert: only the backlog's age said it, after 15 min, not why
            assert b"\nedge_gateway_telemetry_not_taken 1.0\n" in gateway.metrics.render()
        finally:
            await gateway.stop()
            await meter.stop()
    last = [r.getMessage() for r in caplog.records if r.getMessage().startswith("edge-gateway stopped")]
    assert len(last) == 1 and "so no end line follows: " in last[0] and "454 values not accepted" in last[0], last


async def test_a_stop_while_the_vtn_refuses_the_report_offer_names_that_fault_in_its_line(
        tmp_path, free_udp_port, free_tcp_port, caplog):
    # the WARNING "the VTN did not take the telemetry report offer" has its end at the next registration that takes
    # it: a stop before then said a bare "edge-gateway stopped", as if nothing was open
    from openleadr import errors

    caplog.set_level(logging.INFO, logger="ven")
    ports = dict(bacnet_port=free_udp_port(), meter_port=free_udp_port(), vtn_port=free_tcp_port(),
                 http_port=free_tcp_port())
    async with DemoVtn(port=ports["vtn_port"], poll_seconds=1.0) as vtn:
        async def refuse(payload):
            raise errors.InvalidDataError("no reports from this VEN")
        vtn._server.services["report_service"].handlers["oadrRegisterReport"] = refuse
        gateway = Gateway(fast_config(tmp_path, **ports))
        try:
            await gateway.start()
            await eventually(lambda: gateway.vtn.status()["report_offer_error"], 20, "the refusal said")
            # connected all along: /healthz's 200 says what the gateway cannot do (it said plain "ok")
            assert "VTN not taking the telemetry report offer" in gateway.health()[1]
            gateway.refresh_metrics()
            assert b"\nedge_gateway_telemetry_not_taken 1.0\n" in gateway.metrics.render()
        finally:
            await gateway.stop()
    last = [r.getMessage() for r in caplog.records if r.getMessage().startswith("edge-gateway stopped")]
    assert len(last) == 1 and "telemetry report offer not taken by the VTN (" in last[0], last
    assert "no reports from this VEN" in last[0], last


async def test_a_vtn_that_never_requests_telemetry_is_in_the_status_and_in_the_stop_line(
        tmp_path, free_udp_port, free_tcp_port, caplog):
    # a VTN taking the offer and requesting nothing: the gateway looked healthy while readings piled up
    caplog.set_level(logging.INFO, logger="ven")
    ports = dict(bacnet_port=free_udp_port(), meter_port=free_udp_port(), vtn_port=free_tcp_port(),
                 http_port=free_tcp_port())
    cfg = fast_config(tmp_path, **ports)
    cfg = cfg.model_copy(update={"openadr": cfg.openadr.model_copy(
        update={"telemetry_seconds": 1.0, "request_wait_seconds": 1.0})})
    async with DemoVtn(port=ports["vtn_port"], poll_seconds=0.5, request_telemetry=False):
        meter = MeterSimulator(address=f"127.0.0.1/8:{ports['meter_port']}", value=87.5)
        await meter.start()
        gateway = Gateway(cfg)
        try:
            await gateway.start()
            unrequested = await eventually(lambda: gateway.status()["vtn"]["telemetry_unrequested"], 20, "said")
            assert unrequested["r_id"] == cfg.openadr.report_resource_id and unrequested["asked"] == []
            assert gateway.status()["vtn"]["connected"] is True
            gateway.refresh_metrics()
            assert b"\nedge_gateway_telemetry_unrequested 1.0\n" in gateway.metrics.render()
        finally:
            await gateway.stop()
            await meter.stop()
    last = [r.getMessage() for r in caplog.records if r.getMessage().startswith("edge-gateway stopped")]
    assert len(last) == 1 and "telemetry not requested by the VTN for " in last[0], last
