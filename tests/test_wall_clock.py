"""The gateway's wall clock: a box without a battery clock boots at 2020-01-01 and runs on it until NTP
steps it; a box in a zone with summer time sees its clock change twice a year. The gateway runs as a real
process under libfaketime (wall clock only; the monotonic clock stays real) and, for the zones, with TZ
set; the VTN, the meter and this test run on the real clock."""
from __future__ import annotations

import asyncio
import re
import math
import os
import time
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from gateway_process import GatewayProcess, write_config
from waiting import eventually

from bacnet_api.peer import BacnetPeer
from bacnet_api.simulator import MeterSimulator
from ven.telemetry import TelemetryQueue
from ven.vtn_server import DemoVtn

LIBFAKETIME = next(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"), None)   # Debian package faketime

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(LIBFAKETIME is None, reason="libfaketime is not installed")]


def set_offset(path: Path, seconds: float) -> None:
    """The gateway's wall clock reads real time + seconds (re-read at most once a second)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{'+' if seconds >= 0 else '-'}{abs(seconds):.0f}\n")
    os.replace(tmp, path)


def fake_clock(monkeypatch, clock: Path, at: datetime, zone: str = "UTC") -> None:
    """The gateway process started next reads its wall clock from `clock`, at `at` now, in `zone`."""
    set_offset(clock, (at - datetime.now(timezone.utc)).total_seconds())
    for name, value in (("LD_PRELOAD", str(LIBFAKETIME)), ("FAKETIME_TIMESTAMP_FILE", str(clock)),
                        ("FAKETIME_CACHE_DURATION", "1"), ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
                        # its fix for faked monotonic waits, on by default with this glibc, turned each hand-over of
                        # the GIL into a wait of up to seconds: the start's imports in a thread, 1 s alone, took
                        # 20 s to 55 s on a loaded machine. The monotonic clock is not faked: nothing to fix
                        ("FAKETIME_FORCE_MONOTONIC_FIX", "0"),
                        # file times stay real: faked ones make every import recompile its module
                        ("NO_FAKE_STAT", "1"), ("TZ", zone)):
        monkeypatch.setenv(name, value)     # read by the gateway process only (at exec)


async def test_readings_taken_before_the_clock_is_set_are_not_reported(tmp_path, free_tcp_port, free_udp_port,
                                                                       monkeypatch):
    clock = tmp_path / "faketime.txt"
    fake_clock(monkeypatch, clock, datetime(2020, 1, 1, tzinfo=timezone.utc))
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


# zone, a time before one of its clock changes and one after (UTC), BACnet's (utcOffset, daylightSavingsStatus)
# at each: minutes from local *standard* time to UTC, west positive, the same all year (clause 12.11)
CLOCK_CHANGES = [
    ("Europe/Rome", "2027-03-28T00:15:00", "2027-03-28T01:00:05", (-60, False), (-60, True)),      # 02:00 -> 03:00
    ("Australia/Lord_Howe", "2027-04-03T14:15:00", "2027-04-03T15:00:05", (-630, True), (-630, False)),  # 2:00 -> 1:30
    ("America/New_York", "2027-11-07T05:15:00", "2027-11-07T06:00:05", (300, True), (300, False)),  # 02:00 -> 01:00
    ("Asia/Kathmandu", "2027-03-28T00:15:00", "2027-03-28T01:00:05", (-345, False), (-345, False)),  # none; +05:45
    ("America/St_Johns", "2027-03-14T05:15:00", "2027-03-14T05:45:05", (210, False), (210, True)),  # 2:00 -> 3:00
    # the first zone into a new year (+14): the device's date turns with the local midnight, 10:00 UTC
    ("Pacific/Kiritimati", "2026-12-31T09:30:00", "2026-12-31T10:00:05", (-840, False), (-840, False)),
]


@pytest.mark.parametrize("zone, before, after, told_before, told_after", CLOCK_CHANGES,
                         ids=[c[0] for c in CLOCK_CHANGES])
async def test_the_device_tells_its_zone_across_a_clock_change(tmp_path, free_tcp_port, free_udp_port, monkeypatch,
                                                               zone, before, after, told_before, told_after):
    """A BAS or technician reading the device's localTime can tell the zone and UTC from utcOffset and
    daylightSavingsStatus, and all four follow a clock change without a restart."""
    clock = tmp_path / "faketime.txt"
    fake_clock(monkeypatch, clock, datetime.fromisoformat(before).replace(tzinfo=timezone.utc), zone)
    config, port = tmp_path / "gw.toml", free_udp_port()
    write_config(config, bacnet_port=port, http_port=free_tcp_port(), storage=tmp_path / "gw.sqlite", ven_name="tz")
    props = ["localDate", "localTime", "utcOffset", "daylightSavingsStatus"]

    read = []   # the device's last answer, for the failure's message

    async def device_time():
        rows = await peer.read_multiple(f"127.0.0.1:{port}", [("device 500001", props)])
        if rows:
            read[:] = [{p: rows[("device 500001", p)] for p in props}]
        return rows and read[0]

    def minute_of_day(time_: list) -> int:
        return time_[0] * 60 + time_[1]

    def local(at: str) -> tuple[list, int]:
        t = datetime.fromisoformat(at).replace(tzinfo=timezone.utc).astimezone(ZoneInfo(zone))
        return [t.year - 1900, t.month, t.day, t.isoweekday()], t.hour * 60 + t.minute

    async with BacnetPeer(free_udp_port()) as peer:
        with GatewayProcess(config, tmp_path / "gw.log") as gateway:
            for at, expected in ((before, told_before), (after, told_after)):
                set_offset(clock, (datetime.fromisoformat(at).replace(tzinfo=timezone.utc)
                                   - datetime.now(timezone.utc)).total_seconds())
                date, minute = local(at)    # each step's local times are 15 minutes or more apart
                read.clear()
                try:
                    seen = await eventually(
                        lambda: _when(device_time(), lambda d: 0 <= minute_of_day(d["localTime"]) - minute < 5),
                        60, f"the device's clock at {at}")
                except AssertionError as failed:   # once in CI, with nothing to tell why: say what there was
                    raise AssertionError(f"{failed}; last answer {read}, gateway alive {gateway.alive}, its log:\n"
                                         f"{gateway.log()[-3000:]}") from None
                assert seen["localDate"] == date, seen
                assert (seen["utcOffset"], seen["daylightSavingsStatus"]) == expected, seen
            # one read on a loaded machine may go unanswered within the peer's 5 s, as those above may: asked again
            listed = await eventually(lambda: peer.read(f"127.0.0.1:{port}", "device 500001", "propertyList"), 20,
                                      "the device's propertyList")
            assert {"utcOffset", "daylightSavingsStatus"} <= set(listed), listed


@pytest.mark.parametrize("back", [3600, 86400], ids=["1h", "1day"])
async def test_reports_go_on_after_the_clock_steps_back(tmp_path, free_tcp_port, free_udp_port, monkeypatch, back):
    """NTP putting a fast box right steps its clock back: the next update was due at a time of the clock
    that ran ahead, and telemetry stopped for as long as the step (readings queued, none reported)."""
    clock = tmp_path / "faketime.txt"
    fake_clock(monkeypatch, clock, datetime.now(timezone.utc))
    monkeypatch.setenv("FAKETIME_NO_CACHE", "1")    # the step is seen the moment it is written
    meter_port, vtn_port = free_udp_port(), free_tcp_port()
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=free_udp_port(), http_port=free_tcp_port(), storage=tmp_path / "gw.sqlite",
                 ven_name="step-back", vtn_port=vtn_port, meter_port=meter_port, telemetry_seconds=1)
    step = asyncio.Event()
    async with MeterSimulator(address=f"127.0.0.1/8:{meter_port}", value=42.0), \
            DemoVtn(vtn_port, poll_seconds=1) as vtn:
        # the step comes while an update is on its way (the VTN answers it 0.3 s later), as it does at some
        # point with a VTN that takes 100s of ms to answer, and at once when the step comes between updates
        handlers = vtn._server.services["report_service"].handlers

        async def update_meeting_the_step(payload, real=handlers["oadrUpdateReport"]):
            if step.is_set() and not ahead:
                ahead.append(max(ts for _, ivs in vtn.updates for ts, *_ in ivs))
                set_offset(clock, -back)
                await asyncio.sleep(0.3)
            return await real(payload)
        ahead: list[datetime] = []
        handlers["oadrUpdateReport"] = update_meeting_the_step
        with GatewayProcess(config, tmp_path / "gw.log") as gateway:
            await eventually(lambda: len(vtn.updates) >= 2, 90, "updates on the clock as it was")
            step.set()
            stepped = lambda: [ts for _, ivs in vtn.updates for ts, *_ in ivs
                               if ahead and ts < ahead[0] - timedelta(seconds=back / 2)]
            try:
                await eventually(lambda: len(stepped()) >= 3, 20, "updates stamped by the clock stepped back")
            except AssertionError as failed:
                raise AssertionError(f"{failed}; {len(vtn.updates)} update(s), the last at "
                                     f"{vtn.updates[-1][1][-1][0]}; log:\n{gateway.log()[-2000:]}") from None
    times = stepped()
    assert times == sorted(times) and len(set(times)) == len(times), times
    assert gateway.log().count("the clock stepped back; intervals are reported again") == 1, gateway.log()


async def test_readings_a_clock_ahead_took_while_the_vtn_was_away_do_not_hold_up_the_rest(
        tmp_path, free_tcp_port, free_udp_port, monkeypatch):
    """A box a day fast with the network down (no NTP, no VTN): once it is back, NTP steps the clock back
    and the VTN asks for telemetry. The readings queued meanwhile, dated a day ahead, waited for their
    intervals to end, a day later, and held up every reading behind them: the VTN got nothing."""
    clock = tmp_path / "faketime.txt"
    ahead_by = timedelta(days=1)
    fake_clock(monkeypatch, clock, datetime.now(timezone.utc) + ahead_by)
    monkeypatch.setenv("FAKETIME_NO_CACHE", "1")
    meter_port, vtn_port, storage = free_udp_port(), free_tcp_port(), tmp_path / "gw.sqlite"
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=free_udp_port(), http_port=free_tcp_port(), storage=storage,
                 ven_name="ahead", vtn_port=vtn_port, meter_port=meter_port, telemetry_seconds=1)
    # a reading every 0.1 s: more queued than one read of the queue takes (BATCH intervals)
    config.write_text(config.read_text().replace("poll_seconds = 0.5", "poll_seconds = 0.1"))
    # 15 s of them from before this run, as a run a day ahead queued them (taking them here took 15 s to 30 s);
    # the gateway queues its own behind them, on the clock a day ahead too
    seeded = TelemetryQueue(storage)
    first = datetime.now(timezone.utc) + ahead_by - timedelta(seconds=16)
    for n in range(150):
        seeded.add(first + timedelta(seconds=n / 10), 42.0)
    seeded.close()

    def queued() -> int:
        try:
            with sqlite3.connect(storage, timeout=5) as db:
                return db.execute("SELECT COUNT(*) FROM telemetry_queue").fetchone()[0]
        except sqlite3.Error:
            return 0
    async with MeterSimulator(address=f"127.0.0.1/8:{meter_port}", value=42.0):
        with GatewayProcess(config, tmp_path / "gw.log") as gateway:
            try:
                await eventually(lambda: queued() >= 150 + 10, 60, "readings queued by the clock a day ahead")
            except AssertionError as failed:
                raise AssertionError(f"{failed}; log:\n{gateway.log()[-2000:]}") from None
            set_offset(clock, 0)
            stepped_at = datetime.now(timezone.utc).replace(microsecond=0)
            async with DemoVtn(vtn_port, poll_seconds=1) as vtn:
                times = lambda: [ts for _, ivs in vtn.updates for ts, *_ in ivs]
                try:
                    await eventually(lambda: sum(stepped_at <= ts < stepped_at + timedelta(hours=1)
                                                 for ts in times()) >= 3, 30, "readings after the step reported")
                except AssertionError as failed:
                    raise AssertionError(f"{failed}; {len(vtn.updates)} update(s), {queued()} queued; log:\n"
                                         f"{gateway.log()[-2000:]}") from None
    ahead = [ts for ts in times() if ts > stepped_at + timedelta(hours=12)]
    assert len(ahead) >= 10 and len(set(times())) == len(times()), times()    # reported once, as the clock said
    assert gateway.log().count("ahead of the clock (it stepped back before they were reported)") == 1, gateway.log()
    # in the words of the step's other lines, not a raw timedelta ("up to 1 day, 0:00:04.99 ahead")
    assert re.search(r"samples dated up to [\d.]+ (h|days?) ahead of the clock", gateway.log()), gateway.log()


async def test_a_clock_put_back_after_a_start_does_not_mark_the_intervals_read_since(tmp_path, free_tcp_port,
                                                                                      free_udp_port, monkeypatch):
    # A box whose clock was 5 min fast at boot (a battery clock that drifted, or one kept in local time) started the
    # gateway before NTP put the clock back: the start took the gateway for down from its last read until its own
    # fast time, and every interval of the 5 min after the step, read throughout, went to the VTN as 'Quality
    # Uncertain - Sub Normal'. The start is re-dated by the clock as stepped.
    from test_report_quality import qualities
    from test_report_requests import EPOCH, S

    # g: the VTN's granularity, s: 12 ticks of the 0.5 s poll, so one read failing under load, and a tick the loaded
    # poll skipped besides (1 in 11, under the tenth), do not mark an interval read throughout
    clock, g = tmp_path / "faketime.txt", 6
    fake_clock(monkeypatch, clock, datetime.now(timezone.utc) + timedelta(seconds=300))
    meter_port, vtn_port, storage = free_udp_port(), free_tcp_port(), tmp_path / "gw.sqlite"
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=free_udp_port(), http_port=free_tcp_port(), storage=storage,
                 ven_name="clock-back", vtn_port=vtn_port, meter_port=meter_port, telemetry_seconds=1,
                 retry_min_seconds=0.2)
    # the run before stopped cleanly just now: its stop noted the meter's last read in storage.path, as the
    # gateway writes it (TelemetryQueue.note_last_read), where this start's gap begins
    seeded = TelemetryQueue(storage)
    seeded.note_last_read(datetime.now(timezone.utc))
    seeded.close()
    gateway = GatewayProcess(config, tmp_path / "gw.log")
    try:
        async with MeterSimulator(address=f"127.0.0.1/8:{meter_port}", value=42.0), \
                DemoVtn(vtn_port, poll_seconds=1, report_granularity=g * S, report_back=g * S) as vtn:
            gateway.start()
            await eventually(lambda: "meter not read for " in gateway.log(), 90,
                             f"the start on the clock 5 min fast\n{gateway.log()[-3000:]}")
            set_offset(clock, 0)                                    # NTP puts the clock back
            # the first interval wholly after the step, which the gateway sees within 1 s
            first = EPOCH + math.ceil((time.time() + 1.5) / g) * g * S
            await eventually(lambda: first in qualities(vtn), 60, f"the interval after the step\n{gateway.log()[-3000:]}")
        assert gateway.stop() == 0
    finally:
        gateway.stop()
    # the intervals read after the step, not those dated by the clock 5 min fast: the one the start fell in, by that
    # clock, missed the ticks before it, and a loaded machine sent it before the step, rightly marked
    after = {t: q for t, q in qualities(vtn).items() if first <= t < first + timedelta(seconds=150)}
    assert after and set(after.values()) == {None}, after


async def test_the_intervals_a_step_ahead_cuts_short_are_marked(tmp_path, free_tcp_port, free_udp_port, monkeypatch):
    # NTP stepping the clock ahead mid-interval: the interval the step left and the one it landed in each held only
    # part of their reads, and went to the VTN as means of whole intervals
    from test_report_quality import qualities
    from test_report_requests import S

    from ven.report_intervals import SUB_NORMAL

    clock, g = tmp_path / "faketime.txt", 6
    fake_clock(monkeypatch, clock, datetime.now(timezone.utc))
    meter_port, vtn_port = free_udp_port(), free_tcp_port()
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=free_udp_port(), http_port=free_tcp_port(), storage=tmp_path / "gw.sqlite",
                 ven_name="clock-ahead", vtn_port=vtn_port, meter_port=meter_port, telemetry_seconds=1,
                 retry_min_seconds=0.2)
    gateway = GatewayProcess(config, tmp_path / "gw.log")
    try:
        async with MeterSimulator(address=f"127.0.0.1/8:{meter_port}", value=42.0), \
                DemoVtn(vtn_port, poll_seconds=1, report_granularity=g * S, report_back=g * S) as vtn:
            gateway.start()
            await eventually(lambda: len(qualities(vtn)) >= 2, 90, f"intervals reported\n{gateway.log()[-3000:]}")
            set_offset(clock, 3600 + g / 2)     # an hour and half an interval ahead: a boundary on either side
            # the interval the step landed in
            await eventually(lambda: max(qualities(vtn)) > datetime.now(timezone.utc) + timedelta(minutes=59), 60,
                             f"an interval after the step\n{gateway.log()[-3000:]}")
        assert gateway.stop() == 0
    finally:
        gateway.stop()
    times = sorted(qualities(vtn))
    gap = next(k for k in range(1, len(times)) if times[k] - times[k - 1] > timedelta(minutes=30))
    flanking = {times[gap - 1]: qualities(vtn)[times[gap - 1]], times[gap]: qualities(vtn)[times[gap]]}
    assert SUB_NORMAL in flanking.values(), flanking


async def test_a_clock_stepped_back_is_said_before_what_it_did_to_the_forecaster(tmp_path, free_tcp_port,
                                                                                 free_udp_port, monkeypatch):
    # the step's own line came at the clock watch's next look, up to a minute after the forecaster, which sees the
    # step in the next reading's stamp, had said what it set aside: the effect read before its cause
    clock = tmp_path / "faketime.txt"
    fake_clock(monkeypatch, clock, datetime.now(timezone.utc))
    meter_port, http_port = free_udp_port(), free_tcp_port()
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=free_udp_port(), http_port=http_port, storage=tmp_path / "gw.sqlite",
                 ven_name="step-back", vtn_port=free_tcp_port(), meter_port=meter_port)
    gateway = GatewayProcess(config, tmp_path / "gw.log")

    async def read_a_while():
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http, \
                    http.get(f"http://127.0.0.1:{http_port}/api/status") as r:
                s = await r.json()
        except aiohttp.ClientError:
            return False
        return s["meter"]["last_value_kw"] == 42.0 and s["forecaster"]["last_meter_at"] is not None

    async with MeterSimulator(address=f"127.0.0.1/8:{meter_port}", value=42.0):
        gateway.start()
        try:
            await eventually(read_a_while, 90, "meter readings")
            await asyncio.sleep(2)      # a few more: the forecaster's newest reading is what the step goes back from
            set_offset(clock, -3600)
            await eventually(lambda: "set by NTP or by hand" in gateway.log()
                             and "set aside (the wall clock went back 60 min" in gateway.log(), 90,
                             "the step and what it did to the forecaster")
        finally:
            gateway.stop()
    lines = gateway.log().splitlines()
    cause = next(i for i, line in enumerate(lines) if "wall clock went back 60 min (set by NTP or by hand)" in line)
    effect = next(i for i, line in enumerate(lines) if "set aside (the wall clock went back 60 min" in line)
    assert cause < effect, "\n".join(lines[min(cause, effect):max(cause, effect) + 1])
    # the step said once: the forecaster's line began "wall clock went back 60 min" too, a second step to the reader
    assert len([line for line in lines if " WARNING wall clock went back" in line]) == 1, lines
    assert "WARNING forecaster history: " in lines[effect], lines[effect]
