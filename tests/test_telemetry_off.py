"""openadr.telemetry = false, for a programme that takes no telemetry (events only): before it there was no way to
say so, and such a site had the "VTN has not requested telemetry" WARNING and dashboard item for good, with readings
piling up in storage.path for nobody. With it: no report offered, nothing queued, no warning; events are served and
the meter read as before; a VTN that requests telemetry anyway is refused, and the log names the setting.
A real openleadr VTN (DemoVtn), the routed meter simulator, a real SQLite file."""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone

from bacnet_peer import BacnetPeer
from test_gateway import fast_config
from waiting import eventually

from bacnet_api.simulator import MeterSimulator
from ven.app import Gateway
from ven.vtn_server import DemoVtn


def _ports(free_udp_port, free_tcp_port) -> dict:
    return dict(bacnet_port=free_udp_port(), meter_port=free_udp_port(), vtn_port=free_tcp_port(),
                http_port=free_tcp_port())


def _openadr(cfg, **settings):
    return cfg.model_copy(update={"openadr": cfg.openadr.model_copy(update=settings)})


async def test_a_programme_without_telemetry_gets_events_and_no_offer_queue_or_warning(
        tmp_path, free_udp_port, free_tcp_port, caplog):
    caplog.set_level(logging.INFO, logger="ven")
    ports = _ports(free_udp_port, free_tcp_port)
    cfg = fast_config(tmp_path, **ports)
    cfg = _openadr(cfg, telemetry=False, telemetry_seconds=1.0, request_wait_seconds=1.0)
    async with DemoVtn(port=ports["vtn_port"], poll_seconds=0.5) as vtn:
        meter = MeterSimulator(address=f"127.0.0.1/8:{ports['meter_port']}", value=87.5)
        await meter.start()
        gateway = Gateway(cfg)
        good, forward = [], gateway.meter.on_reading

        def record(reading):            # observe only: the gateway's own callback still runs
            if reading.value is not None:
                good.append(reading)
            forward(reading)
        gateway.meter.on_reading = record
        try:
            await gateway.start()
            await eventually(lambda: gateway.vtn.connected, 20, "registered")
            eid = vtn.add_event([2.0], datetime.now(timezone.utc) + timedelta(hours=1), 3600)
            await eventually(lambda: vtn.opts_for(eid) == ["optIn"], 20, "the event answered")
            # past request_wait_seconds (1 s) and its 3 polls (1.5 s), with readings taken all along
            await eventually(lambda: len(good) >= 4, 15, "meter readings")
            async with BacnetPeer(free_udp_port(), timeout=5.0) as bas:
                assert await bas.read(f"127.0.0.1:{ports['bacnet_port']}", "analogValue 6", "presentValue") == 87.5
            status = gateway.status()["vtn"]
            assert status["telemetry_enabled"] is False and status["report_offered"] is False
            assert vtn.report_offers == [] and vtn.report_metadata == [], "no TELEMETRY_USAGE offered"
            assert gateway.telemetry.pending == 0, "no reading queued for a VTN that takes none"
            assert status["telemetry_unrequested"] is None
            # a VTN that requests telemetry anyway: refused (452), and the log says which setting to look at
            vtn.create_report(gateway.vtn.ven_id, timedelta(seconds=1), timedelta(seconds=1),
                              report_specifier_id="gw-test-telemetry", r_id=cfg.openadr.report_resource_id,
                              report_request_id="rr-anyway")
            await eventually(lambda: vtn.created_reports, 10, "the oadrCreatedReport")
            assert vtn.created_reports[-1][0] == 452 and vtn.created_reports[-1][2] == [], vtn.created_reports
            assert gateway.status()["vtn"]["report_request_id"] is None
        finally:
            await gateway.stop()
            await meter.stop()
    lines = [r.getMessage() for r in caplog.records]
    assert any("telemetry off (openadr.telemetry = false)" in m and m.startswith("registered with VTN")
               for m in lines), lines
    refused = [r for r in caplog.records if "openadr.telemetry is false: refused" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelno == logging.WARNING and "rr-anyway" in refused[0].getMessage()
    assert not [m for m in lines if "no telemetry request from the VTN" in m or "telemetry report offer" in m], lines
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r not in refused], \
        [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_run_without_telemetry_is_not_taken_for_time_the_meter_was_not_read(
        tmp_path, free_udp_port, free_tcp_port, caplog):
    # telemetry true, a clean stop; a run with it false, the meter read throughout; true again: the start said "meter
    # not read for" the whole span since the first run's last read, the run without telemetry included, as if the
    # gateway had been down all that time (a week of events-only, a week "not read"). The gap starts where the run
    # before it stopped, whatever its openadr.telemetry.
    caplog.set_level(logging.INFO, logger="ven")
    ports = _ports(free_udp_port, free_tcp_port)
    cfg = fast_config(tmp_path, **ports)
    last = {}
    async with DemoVtn(port=ports["vtn_port"], poll_seconds=0.5), \
            MeterSimulator(address=f"127.0.0.1/8:{ports['meter_port']}", value=87.5):
        for run, on in enumerate((True, False, True)):
            gateway = Gateway(_openadr(cfg, telemetry=on))
            try:
                await gateway.start()
                if run < 2:
                    await eventually(lambda: gateway.meter.latest is not None and gateway.meter.latest.ok, 15,
                                     "a reading")
                    await asyncio.sleep(2.5 if not on else 0)       # the run without telemetry reads on
            finally:
                await gateway.stop()
            if run < 2:
                last[on] = gateway.meter.latest.timestamp
            if run == 1:
                await asyncio.sleep(2.5)        # down for two ticks of the 1 s poll, or more: the start says it
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("meter not read for ")]
    assert len(said) == 1, said
    assert f"(last read {last[False].isoformat(timespec='seconds')})" in said[0], (said, last)
