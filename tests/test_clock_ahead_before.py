"""A start behind the meter's last read on a clock NTP keeps synchronized: the run before's clock was the wrong one
(a box without NTP that ran fast, put right since). Its readings are reported as read, not held until the clock
passes that read, which lost them for as long as that clock had been ahead. The kernel's answer is the test's
(SyncWatch's reader); the rest is real: the gateway in this process, a meter simulator, a VTN, a SQLite file."""
from __future__ import annotations

import contextlib
import logging
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest
from test_gateway import fast_config
from waiting import eventually

from bacnet_api.simulator import MeterSimulator
from ven.app import Gateway
from ven.clock_sync import ClockSync, SyncWatch
from ven.telemetry import TelemetryQueue
from ven.vtn_server import DemoVtn

pytestmark = pytest.mark.timeout(90)

AHEAD = "the run before's clock was ahead"
HELD = "before the meter's last read of the run before"


def ran_ahead(storage, minutes: float) -> datetime:
    """The file of a run whose clock was `minutes` ahead of now at its last read, its last two readings not yet
    reported; returns that read's time."""
    last = datetime.now(timezone.utc) + timedelta(minutes=minutes)
    queue = TelemetryQueue(storage)
    queue.add(last - timedelta(seconds=1), 80.0)
    queue.add(last, 80.0)
    queue.note_last_read(last)
    queue.close()
    return last


def queued_after(storage, ts: datetime) -> int:
    with contextlib.closing(sqlite3.connect(storage)) as db:
        return db.execute("SELECT COUNT(*) FROM telemetry_queue WHERE ts > ?", (ts.isoformat(),)).fetchone()[0]


@pytest.mark.parametrize("synchronized_at_start", [True, False])
async def test_a_start_behind_the_last_read_on_a_synchronized_clock_reports_its_readings(
        tmp_path, free_udp_port, free_tcp_port, caplog, synchronized_at_start):
    caplog.set_level(logging.INFO, logger="ven")
    ports = dict(bacnet_port=free_udp_port(), meter_port=free_udp_port(), vtn_port=free_tcp_port(),
                 http_port=free_tcp_port())
    cfg = fast_config(tmp_path, **ports, telemetry_seconds=1)
    last = ran_ahead(cfg.storage.path, minutes=30)
    kernel = {"synchronized": synchronized_at_start}
    sync = SyncWatch(lambda: ClockSync(kernel["synchronized"], 0.01, 0.001), every_s=0)   # asked at every look
    gateway = Gateway(cfg, clock_sync=sync)
    async with DemoVtn(port=ports["vtn_port"], poll_seconds=1.0) as vtn, \
            MeterSimulator(address=f"127.0.0.1/8:{ports['meter_port']}", value=87.5):
        await gateway.start()
        try:
            if not synchronized_at_start:
                # held, as on a fake-hwclock's restored time, until the kernel says NTP has the clock
                await eventually(lambda: gateway.vtn.readings_held >= 2, 15, "readings held")
                # the run before's last readings go to the VTN meanwhile: on a fake-hwclock's time they are right
                await eventually(lambda: len([r for r in vtn.reports if r[3] > last - timedelta(minutes=5)]) == 2, 20,
                                 "the run before's readings sent")
                assert gateway.vtn.readings_held_before() == last and AHEAD not in caplog.text
                kernel["synchronized"] = True
                await eventually(lambda: AHEAD in caplog.text, 10, "the clock taken as right")
            assert gateway.vtn.readings_held_before() is None
            now = datetime.now(timezone.utc)

            def reported_now():
                return [ts for *_, ts, _ in vtn.reports if abs((ts - now).total_seconds()) < 60]
            await eventually(reported_now, 20, f"this run's readings reported\n{caplog.text[-3000:]}")
            held = gateway.vtn.readings_held
        finally:
            await gateway.stop()
    said = [r for r in caplog.records if AHEAD in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING, caplog.text
    assert last.isoformat(timespec="seconds") in said[0].getMessage()
    assert queued_after(cfg.storage.path, last - timedelta(minutes=5)) == 0
    ahead = [ts for *_, ts, _ in vtn.reports if ts > last - timedelta(minutes=5)]
    if synchronized_at_start:
        # the two readings that clock dated half an hour ahead would have joined an interval not theirs once this
        # clock got there: dropped, and said; the VTN got none
        assert " (2 not yet reported, dated after now, are dropped: " in said[0].getMessage()
        assert not ahead, ahead
    else:
        # while the clock could have been the wrong one (a fake-hwclock's) they were the right ones: sent, none dropped
        assert len(ahead) == 2 and "dropped" not in said[0].getMessage(), (ahead, said[0].getMessage())
    # 30 min ahead: the gap is that run's clock's, not a time the meter was not read
    assert "meter not read for" not in caplog.text, caplog.text
    if synchronized_at_start:
        assert held == 0 and HELD not in caplog.text, caplog.text
    else:
        # the hold's one start and one end
        assert caplog.text.count(HELD) == 1 and "meter readings are reported again" in caplog.text, caplog.text
