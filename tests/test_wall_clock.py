"""A gateway whose wall clock is not set: a box without a battery clock boots at 2020-01-01 and runs
on it until NTP steps it. The gateway runs as a real process under libfaketime (wall clock only; the
monotonic clock stays real); the VTN, the meter and this test run on the real clock."""
from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import pytest
from gateway_process import GatewayProcess, write_config
from waiting import eventually

from bacnet_api.simulator import MeterSimulator
from ven.vtn_server import DemoVtn

LIBFAKETIME = next(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"), None)   # Debian package faketime

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(LIBFAKETIME is None, reason="libfaketime is not installed")]


def set_offset(path: Path, seconds: float) -> None:
    """The gateway's wall clock reads real time + seconds (re-read at most once a second)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{'+' if seconds >= 0 else '-'}{abs(seconds):.0f}\n")
    os.replace(tmp, path)


async def test_readings_taken_before_the_clock_is_set_are_not_reported(tmp_path, free_tcp_port, free_udp_port,
                                                                       monkeypatch):
    clock = tmp_path / "faketime.txt"
    boot = datetime(2020, 1, 1, tzinfo=timezone.utc)
    set_offset(clock, (boot - datetime.now(timezone.utc)).total_seconds())
    for name, value in (("LD_PRELOAD", str(LIBFAKETIME)), ("FAKETIME_TIMESTAMP_FILE", str(clock)),
                        ("FAKETIME_CACHE_DURATION", "1"), ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
                        # file times stay real: faked ones make every import recompile its module
                        ("NO_FAKE_STAT", "1")):
        monkeypatch.setenv(name, value)     # read by the gateway process only (at exec)
    http_port, meter_port = free_tcp_port(), free_udp_port()
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=free_udp_port(), http_port=http_port, storage=tmp_path / "gw.sqlite",
                 ven_name="clock-test", vtn_port=free_tcp_port(), meter_port=meter_port, telemetry_seconds=1)
    vtn_port = int(config.read_text().split("http://127.0.0.1:")[1].split("/")[0])
    meter = MeterSimulator(address=f"127.0.0.1/8:{meter_port}", value=42.0)
    gateway = GatewayProcess(config, tmp_path / "gw.log")

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        async def status():
            try:
                async with http.get(f"http://127.0.0.1:{http_port}/api/status") as r:
                    return await r.json() if r.status == 200 else None
            except aiohttp.ClientError:
                return None

        async with DemoVtn(vtn_port, poll_seconds=1) as vtn:
            await meter.start()
            gateway.start()
            try:
                st = await eventually(
                    lambda: _when(status(), lambda s: s["vtn"]["report_request_id"]
                                  and s["meter"]["last_value_kw"] == 42.0), 90, "registered, meter read")
                assert st["now"].startswith("2020-01-01")
                await eventually(lambda: _when(status(), lambda s: s["vtn"]["connected"] and s["uptime_seconds"] > 5),
                                 20, "readings taken for a few seconds")
                assert vtn.reports == [], "no reading dated 2020 reached the VTN"
                st = await status()
                assert 0 < st["uptime_seconds"] < 600, "uptime is time run, not the wall clock's 6 years"
                assert st["clock_suspect"] is True and st["vtn"]["telemetry"]["pending"] == 0
                set_offset(clock, 0)                                    # NTP steps the clock
                await eventually(lambda: vtn.reports, 20, "readings reported once the clock is set")
                assert all(ts.year >= 2026 for *_, ts, _ in vtn.reports)
                st = await status()
                assert st["clock_suspect"] is False and st["uptime_seconds"] < 600
            finally:
                gateway.stop()
                await meter.stop()
    log = gateway.log()
    assert log.count("before this version was built: meter readings are not reported until it is set") == 1, log
    assert log.count("the wall clock is set") == 1, log


async def _when(status_coro, check):
    s = await status_coro
    return s if s and check(s) else None
