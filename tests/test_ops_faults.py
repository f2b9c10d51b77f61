"""What the operator's log, /healthz and /metrics say while the gateway cannot do part of its job,
with real peers on loopback: a meter fault whose cause changes is logged again (silent, then answering
in kWh), the forecaster running out of power input is one WARNING and its end one INFO, /healthz stays
200 (a restart fixes none of it) but names what is degraded, and /metrics carries a gauge per fault."""
from __future__ import annotations

import asyncio
import logging
import math
import re
import time

import aiohttp
import pytest

from bacnet_api import points as P
from bacnet_api.simulator import MeterSimulator
from bacnet_peer import BacnetPeer
from test_gateway import fast_config, system  # noqa: F401 - a fixture
from test_meter import client, gateway, read_until_steady  # noqa: F401 - shared fixture and helpers
from ven.app import Gateway
from ven.vtn_server import DemoVtn
from waiting import eventually

pytestmark = pytest.mark.timeout(90)


def logs(caplog, logger, level):
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno == level]


async def test_a_meter_fault_whose_cause_changes_is_logged_again_once(gateway, free_udp_port, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger="bacnet_api.meter")
    async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=42.5) as sim:
        meter = client(gateway, sim)
        assert (await asyncio.wait_for(meter.read_once(), 5)).value == 42.5
        await sim.stop()
        for _ in range(2):
            assert (await asyncio.wait_for(meter.read_once(), 5)).error.startswith("no response from")
        sim.set_units("kilowattHours")  # the meter comes back, reporting its energy register
        await sim.start()
        for _ in range(4):
            reading = await asyncio.wait_for(meter.read_once(), 5)
            assert reading.value is None and "kilowattHours" in reading.error
        sim.set_units("kilowatts")
        await asyncio.wait_for(meter.read_once(), 5)  # units are read again after a failed read
        assert (await asyncio.wait_for(meter.read_once(), 5)).value == 42.5
        await read_until_steady(meter)
    warnings = logs(caplog, "bacnet_api.meter", logging.WARNING)
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("meter fault: no response from")
    assert warnings[1].startswith("meter fault, cause changed: ") and "kilowattHours is not a power unit" in warnings[1]
    assert any(m.startswith("meter answering again") for m in logs(caplog, "bacnet_api.meter", logging.INFO))


def scrape(text: str) -> dict[str, float]:
    # the value is the last field: a label value may hold spaces (edge_gateway_job_failing{what="meter read"})
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


async def test_healthz_names_what_is_degraded_metrics_gauge_it_and_input_stale_is_logged(
        tmp_path, free_udp_port, free_tcp_port, caplog):
    caplog.set_level(logging.INFO, logger="ven.app")
    ports = dict(bacnet_port=free_udp_port(), meter_port=free_udp_port(), vtn_port=free_tcp_port(),
                 http_port=free_tcp_port())
    vtn = DemoVtn(port=ports["vtn_port"], poll_seconds=1.0)
    meter = MeterSimulator(address=f"127.0.0.1/8:{ports['meter_port']}", value=87.5)
    gw = Gateway(fast_config(tmp_path, **ports, source="meter", input_stale_seconds=2.0))
    await vtn.start()
    await meter.start()
    await gw.start()
    try:
        base = gw.http.url
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async def get(path):
                async with http.get(base + path) as r:
                    return r.status, await r.text()

            await eventually(lambda: gw.vtn.connected and not gw.meter.fault and gw.meter.last_good is not None, 15)
            await eventually(lambda: not gw.forecast.input_stale(), 10)
            assert await get("/healthz") == (200, "ok\n")
            m = scrape((await get("/metrics"))[1])
            assert (m["edge_gateway_meter_fault"], m["edge_gateway_forecast_input_stale"],
                    m["edge_gateway_storage_writable"], m["edge_gateway_bacnet_initiation_disabled"]) == (0, 0, 1, 0)
            assert (m["edge_gateway_meter_fault_open"], m["edge_gateway_vtn_fault_open"]) == (0, 0)
            assert m["edge_gateway_meter_reads_total"] >= 1 and m["edge_gateway_meter_read_failures_total"] == 0

            # counted from here: a loaded machine's first reading can come after input_stale_seconds, and the start
            # then said it too. That fault ends once input has come for twice input_stale_seconds: running out
            # before that is the same fault, which says nothing new, so the meter is silenced only after its end.
            def said():
                return [w for w in logs(caplog, "ven.app", logging.WARNING) if "no power input" in w]

            def ended():
                return [i for i in logs(caplog, "ven.app", logging.INFO) if "power input again" in i]
            before = len(said())
            if before:
                await eventually(ended, 15, "the start's no-input fault ended")
            ends = len(ended())
            meter.set_silent(True)
            await eventually(lambda: gw.meter.fault and gw.forecast.input_stale(), 15)
            await eventually(lambda: len(said()) > before, 5, "the forecaster's input said stale")
            status, body = await get("/healthz")
            # a restart would not bring the meter back: the orchestrator is told it is up, the operator what fails
            assert status == 200 and body.startswith("ok (degraded: ") and "meter fault" in body
            assert "forecaster has no power input" in body
            m = scrape((await get("/metrics"))[1])
            assert m["edge_gateway_meter_fault"] == 1 and m["edge_gateway_forecast_input_stale"] == 1
            assert m["edge_gateway_meter_fault_open"] == 1
            # the points are in fault: NaN, not the last forecast held flat nor a flag at 0 ("no peak")
            assert all(math.isnan(m[k]) for k in ('edge_gateway_forecast_kw{horizon="60m"}', "edge_gateway_high_load",
                                                   "edge_gateway_low_load")), m
            failed = m["edge_gateway_meter_read_failures_total"]
            assert failed >= 1 and m["edge_gateway_meter_reads_total"] > failed

            meter.set_silent(False)
            await eventually(lambda: not gw.meter.fault, 15)
            # answering again, but not yet steadily (meter.settle_seconds): the fault the log has is still open, as an
            # intermittent meter's is while its last read is mostly good
            m = scrape((await get("/metrics"))[1])
            assert m["edge_gateway_meter_fault"] == 0 and m["edge_gateway_meter_fault_open"] == 1
            await eventually(lambda: not gw.forecast.input_stale(), 15)
            await eventually(lambda: len(ended()) > ends, 15, "the input back said")
            assert await get("/healthz") == (200, "ok\n")
            m = scrape((await get("/metrics"))[1])
            assert m["edge_gateway_meter_fault"] == 0 and m["edge_gateway_forecast_input_stale"] == 0
        stale = [w for w in logs(caplog, "ven.app", logging.WARNING) if "no power input" in w]
        # the silenced meter's one line, after the start's if a loaded machine's first reading came late
        assert len(stale) == before + 1 and "no meter reading" in stale[-1], stale

    finally:
        await gw.stop()
        await meter.stop()
        await vtn.stop()


async def test_a_stop_while_power_is_back_but_not_steady_says_so(tmp_path, free_udp_port, free_tcp_port, caplog):
    # the stop line said "forecaster without power input for 4 min" of an input back for 1.5 min
    caplog.set_level(logging.INFO, logger="ven.app")
    ports = dict(bacnet_port=free_udp_port(), meter_port=free_udp_port(), vtn_port=free_tcp_port(),
                 http_port=free_tcp_port())
    meter = MeterSimulator(address=f"127.0.0.1/8:{ports['meter_port']}", value=87.5)
    gw = Gateway(fast_config(tmp_path, **ports, source="meter", input_stale_seconds=2.0))
    await meter.start()
    await gw.start()
    try:
        await eventually(lambda: not gw.forecast.input_stale(), 15, "power")
        meter.set_silent(True)
        await eventually(lambda: any("no power input" in w for w in logs(caplog, "ven.app", logging.WARNING)), 15)
        meter.set_silent(False)
        await eventually(lambda: not gw._input_stale, 15, "power back")
        assert gw._no_input.open, "still settling: the end line waits 4 s of power"
    finally:
        await gw.stop()
        await meter.stop()
    [line] = [m for m in logs(caplog, "ven.app", logging.INFO) if m.startswith("edge-gateway stopped with")]
    assert re.search(r"forecaster without power input for \d+ s, back \d+ s ago and not yet steadily", line), line


async def test_history_while_storage_path_cannot_be_opened_shows_the_power_held_in_memory(
        tmp_path, free_udp_port, free_tcp_port):
    # storage.path under a regular file cannot be opened, even by root: the gateway runs from memory,
    # and the chart must not claim there were no meter readings while the meter tile shows one
    ports = dict(bacnet_port=free_udp_port(), meter_port=free_udp_port(), vtn_port=free_tcp_port(),
                 http_port=free_tcp_port())
    (tmp_path / "not-a-dir").write_text("")
    cfg = fast_config(tmp_path / "not-a-dir", **ports)  # storage.path: <tmp>/not-a-dir/gw.sqlite
    meter = MeterSimulator(address=f"127.0.0.1/8:{ports['meter_port']}", value=87.5)
    gw = Gateway(cfg)
    await meter.start()
    await gw.start()
    try:
        await eventually(lambda: gw.meter.last_good is not None, 15)
        assert gw.status()["storage"]["ok"] is False
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.get(gw.http.url + "/api/history?hours=1") as r:
                assert r.status == 200
                body = await r.json()
        assert [v for v in body["power_kw"] if v is not None] and 87.5 in body["power_kw"], body["power_kw"][-5:]
        assert body["demand_kw"][-1] == pytest.approx(87.5)
    finally:
        await gw.stop()
        await meter.stop()


def test_no_input_warning_in_the_first_input_stale_seconds_even_on_resumed_history(tmp_path, caplog):
    # a restart resumes history older than input_stale_seconds: the first forecast cycles run on it
    # before the meter's first reading, which is not a silence worth a WARNING (nor its end an INFO)
    caplog.set_level(logging.INFO, logger="ven.app")
    gw = Gateway(fast_config(tmp_path, 47001, 47002, 8001, 8002, input_stale_seconds=30.0))
    gw.forecast.forecaster.add_sample(time.time() - 900, 80.0)  # the resumed history's newest sample
    assert gw.forecast.input_stale()
    gw._log_input_stale(True)
    gw._log_input_stale(False)
    assert not [r for r in caplog.records if "power input" in r.getMessage()]
    gw.started_at -= 31  # the grace is over: now it is a silence
    gw._log_input_stale(True)
    assert [r.levelno for r in caplog.records if "power input" in r.getMessage()] == [logging.WARNING]


@pytest.mark.timeout(60)
async def test_a_bas_writing_a_little_slower_than_input_stale_seconds_is_one_no_input_fault(
        tmp_path, free_udp_port, free_tcp_port, caplog):
    # forecaster.source bacnet_input and a BAS whose writes are sometimes just over input_stale_seconds
    # apart: each such gap was a WARNING and an INFO. The points still show fault in each gap, and
    # /healthz names it; the log says the fault once, and its end once the BAS writes steadily
    caplog.set_level(logging.INFO, logger="ven.app")
    ports = dict(bacnet_port=free_udp_port(), meter_port=free_udp_port(), vtn_port=free_tcp_port(),
                 http_port=free_tcp_port())
    gw = Gateway(fast_config(tmp_path, **ports, source="bacnet_input", input_stale_seconds=1.0, cycle_seconds=0.1))
    addr = f"127.0.0.1:{ports['bacnet_port']}"
    input_power = P.BY_NAME[P.INPUT_POWER].object_id
    await gw.start()
    try:
        async with BacnetPeer(free_udp_port()) as bas:
            async def write(kw=90.0):
                assert await bas.write(addr, input_power, "presentValue", kw, priority=8) is None

            def no_input():
                return "forecaster has no power input" in gw.health()[1]

            await eventually(no_input, 5, "no input at start")    # past the start-up grace, not yet written
            for _ in range(4):            # late writes: the forecasts go to fault each time, /healthz follows
                await write()
                await eventually(lambda: not no_input(), 5, "input again")
                await eventually(no_input, 5, "stale again")

            async def steady():                           # the BAS writes within the limit again
                await write()
                await asyncio.sleep(0.2)
                return any("power input again" in m for m in logs(caplog, "ven.app", logging.INFO))
            await eventually(steady, 20, "the end of the fault, once steady")
    finally:
        await gw.stop()
    warnings = [m for m in logs(caplog, "ven.app", logging.WARNING) if "no power input" in m]
    ends = [m for m in logs(caplog, "ven.app", logging.INFO) if "power input again" in m]
    assert len(warnings) == 1 and len(ends) == 1, (warnings, ends)
    assert "steadily, after running out 5 times" in ends[0], ends


async def test_a_stop_names_every_fault_whose_end_its_log_has_not_said(tmp_path, free_udp_port, free_tcp_port,
                                                                       caplog, monkeypatch):
    # the stop line named the meter's, the VTN's and a few more, but not the clock not synchronized, the forecaster
    # refusing every sample, nor an HTTP endpoint failing: the log read as if they went on until the next start
    # (a fit failing and a BBMD's refusal are named the same way, tested with their parts)
    from ven.clock_sync import ClockSync, SyncWatch

    caplog.set_level(logging.INFO)
    ports = dict(bacnet_port=free_udp_port(), meter_port=free_udp_port(), vtn_port=free_tcp_port(),
                 http_port=free_tcp_port())
    meter = MeterSimulator(address=f"127.0.0.1/8:{ports['meter_port']}", value=87.5)
    sync = SyncWatch(lambda: ClockSync(False, 16.0, 16.0), every_s=0)
    gw = Gateway(fast_config(tmp_path, **ports, source="meter"), clock_sync=sync)
    await meter.start()
    await gw.start()
    try:
        await eventually(lambda: not gw.forecast.input_stale(), 15, "the meter's readings")
        meter.set_silent(True)     # no good reading after the one below to end its fault
        # a read answered just before the silence could still arrive after the bad sample and end its fault
        await eventually(lambda: gw.meter.fault_window() is not None, 15, "the meter's silence")
        gw.forecast.on_meter(time.time(), math.inf)     # the meter client bounds its readings; a custom source may not
        assert any("forecaster rejecting meter samples" in w
                   for w in logs(caplog, "ven.forecast_service", logging.WARNING)), "refused"
        await eventually(lambda: sync.warned, 15, "the clock's warning")
        monkeypatch.setattr(gw, "status", lambda: 1 / 0)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{gw.http.url}/api/status") as answer:
                assert answer.status == 500
    finally:
        await gw.stop()
        await meter.stop()
    [line] = [m for m in logs(caplog, "ven.app", logging.INFO) if m.startswith("edge-gateway stopped with")]
    for fault in ("the machine's clock not synchronized", "forecaster rejecting meter samples",
                  "http status failing (ZeroDivisionError: division by zero)"):
        assert fault in line, line


async def test_the_stop_line_gives_the_clocks_reason_as_its_warning_did(system):  # noqa: F811
    # a box booting at 1970 after an earlier run: the warning said "before this version was built", the stop line
    # "behind the meter's last read of the run before"
    from datetime import datetime, timezone

    gateway = system[2]

    def said():
        return [f for f in gateway._open_faults() if f.startswith("meter readings")]
    gateway.vtn.hold_readings_until(datetime(2031, 1, 1, tzinfo=timezone.utc))
    gateway.vtn.record_sample(datetime(1970, 1, 1, 0, 0, 5, tzinfo=timezone.utc), 10.0)
    assert re.fullmatch(r"meter readings not reported \(\d+ so far\): the wall clock reading before this version was "
                        r"built", *said()), said()
    gateway.vtn.record_sample(datetime(2031, 6, 1, tzinfo=timezone.utc), 10.0)     # set: its end line
    gateway.vtn.hold_readings_until(datetime(2032, 1, 1, tzinfo=timezone.utc))
    gateway.vtn.record_sample(datetime(2031, 7, 1, tzinfo=timezone.utc), 10.0)
    assert re.fullmatch(r"meter readings not reported \(\d+ so far\): the wall clock reading before the meter's last "
                        r"read of the run before \(2032-01-01T00:00:00Z\)", *said()), said()
