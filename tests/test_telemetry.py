"""Store-and-forward telemetry: the SQLite queue alone, then through a VTN outage and restart."""
from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from datetime import datetime, timedelta, timezone

from waiting import eventually as until

from ven.config import OpenadrConfig
from ven.schedule import EventSchedule
from ven.storage import BUSY_TIMEOUT_SECONDS, Storage
from ven.telemetry import TelemetryQueue
from ven.vtn import VtnClient
from ven.vtn_server import DemoVtn

T0 = datetime(2026, 11, 21, 20, 0, tzinfo=timezone.utc)




def test_queue_keeps_order_survives_reopen_and_drops_oldest_beyond_bound(tmp_path):
    path = tmp_path / "gw.sqlite"
    q = TelemetryQueue(path, max_age=timedelta(minutes=1))
    for i in range(6):
        q.add(T0 + timedelta(seconds=10 * i), 90.0 + i)
    batch = q.peek(3)
    assert [s.kw for s in batch] == [90.0, 91.0, 92.0]
    q.ack(batch)
    assert q.pending == 3 and q.delivered == 3 and q.last_delivery is not None
    q.close()

    q = TelemetryQueue(path, max_age=timedelta(minutes=1))     # e.g. after a restart
    assert [(s.ts, s.kw) for s in q.peek()] == [(T0 + timedelta(seconds=10 * i), 90.0 + i) for i in (3, 4, 5)]
    q.add(T0 + timedelta(seconds=101), 99.0)                   # more than 60 s after 93 and 94: both go
    assert [s.kw for s in q.peek()] == [95.0, 99.0]
    assert q.dropped == 2
    q.close()
    assert TelemetryQueue(path).dropped == 2


def test_a_lock_held_by_another_process_costs_one_short_wait_not_one_per_sample(tmp_path, caplog):
    # a backup or an sqlite3 shell holding the write lock: the queue runs on the event loop, so each
    # sample must not wait out a busy timeout; they wait in memory and go in order once it is free
    path = tmp_path / "gw.sqlite"
    q = TelemetryQueue(path, reopen_seconds=0.3, lock_grace_seconds=0.0)
    q.add(T0, 90.0)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    started = time.monotonic()
    for i in range(1, 21):
        assert q.add(T0 + timedelta(seconds=10 * i), 90.0 + i) < 0  # held in memory
    waited = time.monotonic() - started
    assert waited < 10 * BUSY_TIMEOUT_SECONDS, f"{waited:.1f} s: the file was tried for each sample"
    assert q.write_error and len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
    other.execute("ROLLBACK")
    other.close()
    time.sleep(0.35)
    q.add(T0 + timedelta(seconds=300), 200.0)
    assert [s.kw for s in q.peek(100)] == [90.0 + i for i in range(21)] + [200.0] and q.write_error is None
    q.close()


def test_a_lock_held_for_a_moment_is_waited_out_without_a_fault(tmp_path, caplog):
    # the forecaster saving its model on a slow card holds the lock for a second or two: not a fault
    path = tmp_path / "gw.sqlite"
    q = TelemetryQueue(path, reopen_seconds=10)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    for i in range(3):
        assert q.add(T0 + timedelta(seconds=i), 90.0 + i) < 0  # waits in memory
    other.execute("ROLLBACK")
    other.close()
    time.sleep(1.05)  # retried every second while the grace lasts, not every 10 s
    q.add(T0 + timedelta(seconds=3), 93.0)
    assert [s.kw for s in q.peek()] == [90.0, 91.0, 92.0, 93.0] and q.write_error is None
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    q.close()


async def test_outage_backlog_arrives_once_in_order_with_original_timestamps(tmp_path, free_tcp_port, caplog):
    caplog.set_level(logging.INFO, logger="ven")
    port = free_tcp_port()
    storage = Storage(tmp_path / "gw.sqlite")
    schedule = EventSchedule(storage, lambda st: None)
    queue = TelemetryQueue(tmp_path / "gw.sqlite")
    first = DemoVtn(port, poll_seconds=1)
    cfg = OpenadrConfig(vtn_url=first.url, telemetry_seconds=1.0, retry_min_seconds=0.2, retry_max_seconds=1.0)
    client = VtnClient(cfg, schedule, queue)
    sent: list[tuple[datetime, float]] = []
    second = None

    async def meter(n):
        for _ in range(n):
            ts = datetime.now(timezone.utc)
            kw = round(80 + len(sent) * 0.01, 2)
            sent.append((ts, kw))
            client.record_sample(ts, kw)
            await asyncio.sleep(0.2)

    await first.start()
    await schedule.start()
    await client.start()
    try:
        await until(lambda: client.connected, 10, "registration")
        await meter(5)
        await until(lambda: len(first.reports) == 5, 5, "live samples")
        await first.stop()
        await meter(15)                                         # 3 s of outage
        assert queue.pending >= 10
        second = DemoVtn(port, poll_seconds=1)                  # a restarted VTN: knows no VEN
        await second.start()
        await meter(5)
        await until(lambda: second.registrations >= 1 and queue.pending == 0, 15, "backlog delivered")
        await asyncio.sleep(0.3)                                # nothing may follow twice
        got = [(ts, value) for _, _, _, ts, value in first.reports + second.reports]
        assert got == sent, "every sample exactly once, in order, with its own timestamp"
        assert all(r[1] == "main-meter" and r[2] == "RealPower" for r in second.reports)
        assert second.report_offers[-1][1:] == ("main-meter", "RealPower", "W", "k", timedelta(seconds=1))
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("telemetry ")]
        assert len(lines) == len(sent)
        assert any(line.endswith("(sent)") for line in lines)
        assert any("(queued, " in line and "waiting)" in line for line in lines)
        assert client.status()["telemetry"]["pending"] == 0
    finally:
        await client.stop()
        await schedule.stop()
        if second is not None:
            await second.stop()
        await first.stop()
        queue.close()
        storage.close()
