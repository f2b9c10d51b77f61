"""The time the gateway was not running, on a box whose clock is behind at its start: a fake-hwclock restores the
time saved before a power cut (up to an hour old), a box without a battery clock boots in the past. The readings
that clock dates fall in the run before's time, so they are not reported; the gap runs from the meter's last read
to the first reading reported, once NTP sets the clock, and the intervals it falls in reach the VTN marked. The
gateway runs as a real process under libfaketime (test_wall_clock)."""
from __future__ import annotations

import time
from datetime import datetime, timezone

import aiohttp
import pytest
from gateway_process import GatewayProcess, write_config
from test_report_quality import qualities
from test_report_requests import EPOCH, S
from test_wall_clock import LIBFAKETIME, fake_clock, set_offset
from waiting import eventually

from bacnet_api.simulator import MeterSimulator
from ven.clock_sync import read_clock_sync
from ven.report_intervals import SUB_NORMAL
from ven.telemetry import TelemetryQueue
from ven.vtn_server import DemoVtn


async def status(http_port: int) -> dict:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        async with http.get(f"http://127.0.0.1:{http_port}/api/status") as r:
            return await r.json()


def test_a_gap_noted_again_for_a_start_re_dated_replaces_the_first(tmp_path):
    b = datetime.fromtimestamp((int(time.time()) // 10 - 5) * 10, timezone.utc)
    at = lambda s: b + s * S     # noqa: E731
    queue = TelemetryQueue(tmp_path / "gw.sqlite")
    assert queue.last_read() is None
    queue.add(at(3.2), 100.0)
    queue.note_last_read(at(2))     # a note older than the newest row: the row says the last read
    assert queue.last_read() == at(3.2)
    assert queue.note_gap(at(3.2), at(6.5), poll_seconds=1.0)
    assert [queue.failed_reads(at(0), at(10)), queue.failed_reads(at(10), at(20))] == [2, 0]
    # the clock stepped: the start was later than it said, and the gap is that much longer, not two gaps
    assert queue.note_gap(at(3.2), at(14.7), poll_seconds=1.0)
    assert [queue.failed_reads(at(0), at(10)), queue.failed_reads(at(10), at(20))] == [6, 4]
    assert not queue.note_gap(at(3.2), at(4.5), poll_seconds=1.0)    # by the clock now, no tick was missed
    assert queue.failed_reads(at(0), at(20)) == 0
    queue.close()
    queue = TelemetryQueue(tmp_path / "gw.sqlite")
    assert queue.last_read() == at(3.2)     # the note went with the first gap noted: it is no later read
    queue.close()


@pytest.mark.timeout(180)
@pytest.mark.skipif(LIBFAKETIME is None, reason="libfaketime is not installed")
async def test_a_start_on_a_clock_behind_the_last_read_marks_the_gap_once_ntp_sets_the_clock(
        tmp_path, free_tcp_port, free_udp_port, monkeypatch):
    # The gateway crashed at the last read (its readings still queued); it started again on a clock 5 min behind
    # that read, which NTP then set. The start took the last read for a later one: no gap, and the interval of the
    # crash, missing its ticks after the last read, went to the VTN unmarked, as if read throughout.
    if (sync := read_clock_sync()) is not None and sync.synchronized:
        # the gateway's clock is faked, the kernel's word is the machine's: on it, the run before's clock was ahead
        # and nothing is held (test_clock_ahead_before)
        pytest.skip("this machine's kernel says NTP keeps the clock: a clock behind is then taken as the right one")
    g = 6           # the VTN's granularity and reportBackDuration, s: 12 ticks of the 0.5 s poll
    b = int(time.time()) // g * g
    if time.time() < b + 2:
        b -= g
    at = lambda s: EPOCH + (b + s) * S     # noqa: E731
    storage, clock = tmp_path / "gw.sqlite", tmp_path / "faketime.txt"
    seeded = TelemetryQueue(storage)
    for tick in range(-12, 5):          # the interval before, read throughout, and the crash's until b + 2
        seeded.add(at(tick / 2), 80.0)
    seeded.close()
    fake_clock(monkeypatch, clock, datetime.now(timezone.utc).replace(microsecond=0) - 300 * S)
    meter_port, vtn_port, http_port = free_udp_port(), free_tcp_port(), free_tcp_port()
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=free_udp_port(), http_port=http_port, storage=storage, ven_name="clock-behind",
                 vtn_port=vtn_port, meter_port=meter_port, telemetry_seconds=1, retry_min_seconds=0.2)
    gateway = GatewayProcess(config, tmp_path / "gw.log")
    try:
        async with MeterSimulator(address=f"127.0.0.1/8:{meter_port}", value=80.0):
            gateway.start()
            await eventually(lambda: "edge-gateway ready" in gateway.log(), 90, f"the start\n{gateway.log()[-3000:]}")
            assert "meter not read for " not in gateway.log()      # by the clock behind, no tick was missed
            # a reading the clock behind dates, in the run before's time
            await eventually(lambda: "before the meter's last read of the run before" in gateway.log(), 30,
                             f"a reading held\n{gateway.log()[-3000:]}")
            assert (await status(http_port))["clock_behind_last_read"] == at(2).isoformat(timespec="seconds")
            set_offset(clock, 0)                                    # NTP sets the clock
            await eventually(lambda: "meter not read for " in gateway.log(), 30,
                             f"the gap, once the clock is set\n{gateway.log()[-3000:]}")
            assert (await status(http_port))["clock_behind_last_read"] is None
            # the VTN only now: what it is sent is sent after the step, as on a site where NTP was quicker
            async with DemoVtn(vtn_port, poll_seconds=1, report_granularity=g * S, report_back=g * S) as vtn:
                await eventually(lambda: at(0) in qualities(vtn), 60, f"the crash's interval\n{gateway.log()[-3000:]}")
        assert gateway.stop() == 0
    finally:
        gateway.stop()
    got = qualities(vtn)
    assert got[at(-6)] is None and got[at(0)] == SUB_NORMAL, got
    # the readings the clock behind dated, in the run before's time, are not reported: the VTN had those intervals
    # from it (here: 5 min before the crash, none)
    assert min(got) == at(-6), sorted(got)[:3]
    log = gateway.log()
    assert log.count("meter not read for ") == 1 and "Traceback" not in log, log[-3000:]
    assert log.count("before the meter's last read of the run before") == 1, log[-3000:]
    assert "meter readings are reported again" in log, log[-3000:]
