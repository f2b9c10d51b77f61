"""Store-and-forward telemetry: the SQLite queue alone, then through a VTN outage and restart."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sqlite3
import time
from datetime import datetime, timedelta, timezone

import pytest
from gateway_process import GatewayProcess, kill_when_said, write_config
from waiting import eventually as until

from bacnet_api.simulator import MeterSimulator
from ven.config import OpenadrConfig
from ven.schedule import EventSchedule
from ven.storage import Storage
from ven.storage_connect import BUSY_TIMEOUT_SECONDS
from ven.report_intervals import complete_intervals
from ven.telemetry import ACK_DEFER_MAX, TelemetryQueue
from ven.vtn import VtnClient
from ven.vtn_server import DemoVtn

T0 = datetime(2026, 11, 21, 20, 0, tzinfo=timezone.utc)




def test_queue_keeps_order_survives_reopen_and_drops_oldest_beyond_bound(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ven.telemetry")
    path = tmp_path / "gw.sqlite"
    q = TelemetryQueue(path, max_age=timedelta(minutes=1))
    for i in range(6):
        q.add(T0 + timedelta(seconds=10 * i), 90.0 + i)
    batch = q.peek(3)
    assert [s.kw for s in batch] == [90.0, 91.0, 92.0]
    q.ack(batch)
    assert q.pending == 3 and q.delivered == 3 and q.last_delivery is not None
    q.close()

    assert not [r for r in caplog.records if "wait for the VTN" in r.getMessage()]     # a new file: nothing
    q = TelemetryQueue(path, max_age=timedelta(minutes=1))     # e.g. after a restart
    assert [(s.ts, s.kw) for s in q.peek()] == [(T0 + timedelta(seconds=10 * i), 90.0 + i) for i in (3, 4, 5)]
    # what survived the restart is said then, not only once the VTN takes it (days later, with the VTN away)
    [said] = [r.getMessage() for r in caplog.records if "wait for the VTN" in r.getMessage()]
    assert said.startswith(f"storage.path {path}: 3 telemetry reading(s) in it wait for the VTN (the oldest "
                           f"{(T0 + timedelta(seconds=30)).isoformat()[:19]}Z)"), said   # as the log's own stamps
    q.add(T0 + timedelta(seconds=101), 99.0)                   # more than 60 s after 93 and 94: both go
    assert [s.kw for s in q.peek()] == [95.0, 99.0]
    assert q.dropped == 2
    q.close()
    assert TelemetryQueue(path).dropped == 2


def test_status_counts_stored_in_another_form_are_one_warning_each_not_a_failed_start(tmp_path, caplog):
    # a downgrade onto a newer version's file, or an edit by hand: these two values raised out of every start
    caplog.set_level(logging.WARNING, logger="ven.telemetry")
    path = tmp_path / "gw.sqlite"
    q = TelemetryQueue(path)
    q.add(T0, 90.0)
    q.close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executemany("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)",
                       [("telemetry_dropped", "3.0"), ("telemetry_last_delivery", "1796230038.5"),
                        ("telemetry_places", '{"PT1S": "2026-12-03T20:00:00+00:00"}')])
    q = TelemetryQueue(path)
    try:
        assert [s.kw for s in q.peek()] == [90.0]               # the queue itself is untouched
        assert q.dropped == 0 and q.last_delivery is None and q.places == {}
    finally:
        q.close()
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 3 and "stored telemetry_dropped '3.0' unreadable" in said[0] \
        and "stored telemetry_last_delivery '1796230038.5' unreadable" in said[1] \
        and "stored telemetry_places '{\"PT1S\"" in said[2], said


def test_the_report_streams_places_are_kept_with_the_deletions_of_their_readings(tmp_path):
    path = tmp_path / "gw.sqlite"
    q = TelemetryQueue(path)
    first = [q.add(T0 + timedelta(seconds=i), 90.0 + i) for i in range(4)]
    q.set_place(timedelta(minutes=15), T0 + timedelta(seconds=2))
    q.ack(q.peek(2))
    q.add(T0 + timedelta(seconds=4), 94.0)      # the deletions and the place go with the next reading
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT seq FROM telemetry_queue ORDER BY seq").fetchall()[0] == (first[2],)
        assert json.loads(db.execute("SELECT value FROM kv WHERE key = 'telemetry_places'").fetchone()[0]) == {
            "900": (T0 + timedelta(seconds=2)).isoformat()}
    q.close()
    q = TelemetryQueue(path)
    try:
        assert q.places == {900: T0 + timedelta(seconds=2)}
        q.park_reader("parked", T0 + timedelta(seconds=3))      # it took the reading dated before its place
        q.add_reader("other")
        assert [s.kw for s in q.peek(reader="parked")] == [93.0, 94.0]
        assert [s.kw for s in q.peek(reader="other")] == [92.0, 93.0, 94.0]
    finally:
        q.close()


def test_a_reading_dated_in_the_second_the_restart_begins_goes_once_with_the_restarts_own(tmp_path):
    # a restart test once stopped before the interval of the run before's newest reading was over, and read it as lost
    # (helper damage50): it stays queued, behind the stream's place, and its interval holds the next run's reading too
    s, ms = timedelta(seconds=1), timedelta(milliseconds=1)
    q = TelemetryQueue(tmp_path / "gw.sqlite")
    for i in range(10):
        q.add(T0 + i * s + 200 * ms, 90.0 + i)
    q.set_place(s, T0 + 9 * s)     # as vtn_delivery does: the intervals up to 9 s went, then their readings are taken
    q.ack(q.peek(9))
    q.close()       # a clean stop at 9.5 s, the interval of the reading at 9.2 s not yet over
    q = TelemetryQueue(tmp_path / "gw.sqlite")
    try:
        q.park_reader("parked PT1S", q.places[1])      # the start (_park_stored_streams), at 9.6 s
        q.add(T0 + 9 * s + 700 * ms, 80.0)     # its first read, in the same second
        intervals, late = complete_intervals(q.peek(reader="parked PT1S"), s, T0 + 10 * s, q.places[1])
        assert not late
        assert [(iv.start, iv.value, len(iv.samples)) for iv in intervals] == [(T0 + 9 * s, 89.5, 2)]
    finally:
        q.close()


def test_bounding_a_full_queue_by_age_does_not_scan_it_with_every_sample(tmp_path, caplog):
    # a week-long outage at a 1 s poll queues 600k rows: each sample's age bound must go by an index,
    # not read the whole queue on the event loop (57 ms a sample at 600k rows on a desktop without it)
    path = tmp_path / "gw.sqlite"
    q = TelemetryQueue(path, max_age=timedelta(minutes=10))
    q.add(T0, 1.0)
    plan = " ".join(r[-1] for r in q._conn.execute(
        "EXPLAIN QUERY PLAN DELETE FROM telemetry_queue WHERE ts < ?", (T0.isoformat(),)))
    assert "telemetry_queue_ts" in plan, plan
    caplog.set_level(logging.WARNING)
    for i in range(1, 1200):                   # 20 minutes at 1 s: the first 10 are dropped, in order
        q.add(T0 + timedelta(seconds=i), float(i))
    assert q.dropped == 599 and q.pending == 601
    assert [s.kw for s in q.peek(2)] == [599.0, 600.0]
    assert sum("dropping the oldest" in r.getMessage() for r in caplog.records) == 1
    q.close()


def test_a_vtn_taking_less_than_arrives_is_one_episode_of_dropping_with_an_end_line(tmp_path, caplog):
    # A request whose updates take 9 of every 10 new samples stays at the age bound: each update must
    # not end the episode, or every next sample dropped says the WARNING again.
    q = TelemetryQueue(tmp_path / "gw.sqlite", max_age=timedelta(minutes=10))
    caplog.set_level(logging.INFO, logger="ven.telemetry")
    said = lambda text: [r for r in caplog.records if text in r.getMessage()]
    t = 0
    for _ in range(1200):                       # 20 minutes at 1 s with no VTN: 10 minutes dropped
        q.add(T0 + timedelta(seconds=t), 1.0)
        t += 1
    for _ in range(30):
        for _ in range(10):
            q.add(T0 + timedelta(seconds=t), 1.0)
            t += 1
        q.ack(q.peek(9))
    assert q.dropped == 599 + 10 + 29 and len(said("dropping the oldest")) == 1   # then 1 a round behind
    assert "holds 10 min of samples" in said("dropping the oldest")[0].getMessage()
    assert not said("taking the backlog") and q.dropping      # a stop now: the stop line names it
    while q.pending > 1:                        # the VTN catches up
        q.ack(q.peek(100))
    [end] = said("taking the backlog")
    assert end.levelno == logging.INFO and "638 sample(s) older than 10 min were dropped" in end.getMessage()
    assert not q.dropping
    for _ in range(700):                        # a second outage is a second episode
        q.add(T0 + timedelta(seconds=t), 1.0)
        t += 1
    assert len(said("dropping the oldest")) == 2
    q.close()


def test_the_wal_file_is_cut_back_after_a_large_transaction(tmp_path):
    # samples held in memory while the file failed go to it in one transaction: the WAL grows to hold
    # it and must not keep that size while the gateway runs
    path = tmp_path / "gw.sqlite"
    q = TelemetryQueue(path)
    db = q._conn
    db.execute("BEGIN")
    db.executemany("INSERT INTO telemetry_queue (ts, kw) VALUES (?, ?)",
                   (((T0 + timedelta(seconds=i)).isoformat(), 1.0) for i in range(150_000)))
    db.execute("COMMIT")
    assert (tmp_path / "gw.sqlite-wal").stat().st_size > 8 * 2**20
    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    q.add(T0 + timedelta(days=1), 2.0)
    assert (tmp_path / "gw.sqlite-wal").stat().st_size <= 4 * 2**20
    q.close()


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
    # another process's lock, which passes: a warning, not an error of the file
    assert q.write_error and [r.levelno for r in caplog.records if r.levelno >= logging.WARNING] == [logging.WARNING]
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
    caplog.set_level(logging.DEBUG, logger="ven.vtn")   # each reading's line is DEBUG
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
        await until(lambda: queue.pending == 0 and first.updates, 5, "live samples")
        await first.stop()
        await meter(15)                                         # 3 s of outage
        assert queue.pending >= 10
        second = DemoVtn(port, poll_seconds=1)                  # a restarted VTN: knows no VEN
        await second.start()
        await meter(5)
        await until(lambda: second.registrations >= 1 and queue.pending == 0, 15, "backlog delivered")
        await asyncio.sleep(0.3)                                # nothing may follow twice
        got = [(ts, d, value) for vtn in (first, second) for _, ivs in vtn.updates for ts, d, _, value in ivs]
        # each 1 s interval (the offer's sampling, which DemoVtn requests) once, in order, the mean of its samples
        buckets: dict[datetime, list[float]] = {}
        for ts, kw in sent:
            buckets.setdefault(ts.replace(microsecond=0), []).append(kw)
        assert [(t, d) for t, d, _ in got] == [(t, timedelta(seconds=1)) for t in sorted(buckets)]
        assert [v for *_, v in got] == pytest.approx([sum(v) / len(v) for _, v in sorted(buckets.items())])
        assert all(r[1] == "main-meter" and r[2] == "RealPower" for r in second.reports)
        assert second.report_offers[-1][1:] == ("main-meter", "RealPower", "W", "k", timedelta(seconds=1))
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("telemetry ")]
        assert len(lines) == len(sent)
        assert any(" + PT1S, " in line for line in lines)         # which interval a live sample goes to
        assert any("(queued, " in line and "waiting)" in line for line in lines)
        assert said_once(caplog, "queued telemetry delivered")
        # a backlog sent in one batch is one line, with its range and count: its batch's own line said the same
        news = [r.getMessage() for r in caplog.records
                if r.levelno == logging.INFO and "interval(s) of" in r.getMessage()]
        assert len(news) == 1 and re.fullmatch(r"queued telemetry delivered: \d+ interval\(s\) of PT1S from \S+Z to "
                                               r"\S+Z with their original times \(request \S+\)", news[0]), news
        assert client.status()["telemetry"]["pending"] == 0
    finally:
        await client.stop()
        await schedule.stop()
        if second is not None:
            await second.stop()
        await first.stop()
        queue.close()
        storage.close()


def said_once(caplog, text):
    return len([r for r in caplog.records if text in r.getMessage()]) == 1


def test_newest_is_the_latest_waiting_sample_and_stays_queued(tmp_path):
    q = TelemetryQueue(tmp_path / "gw.sqlite")
    assert q.newest() is None
    for i in range(3):
        q.add(T0 + timedelta(seconds=i), 10.0 + i)
    assert q.newest().kw == 12.0 and q.pending == 3
    q.ack(q.peek(3)[2:])
    assert q.newest().kw == 11.0
    q.close()


def test_two_readers_each_read_every_sample_once_and_a_sample_leaves_once_both_took_it(tmp_path):
    q = TelemetryQueue(tmp_path / "gw.sqlite")
    q.add_reader("fast")
    q.add_reader("slow")
    for i in range(6):
        q.add(T0 + timedelta(seconds=i), float(i))
    q.ack(q.peek(4, "fast"), reader="fast")
    assert [s.kw for s in q.peek(10, "fast")] == [4.0, 5.0]           # its place, not the queue's head
    assert [s.kw for s in q.peek(10, "slow")] == [float(i) for i in range(6)]
    q.ack(q.peek(2, "slow"), delivered=False, reader="slow")       # e.g. before its reportInterval
    # both took 0, 1: gone; 2, 3 held for slow. Each counted once, when fast delivered it
    assert q.pending == 2 and q.held == 2 and q.delivered == 4
    q.close()
    q = TelemetryQueue(tmp_path / "gw.sqlite")                       # the taken rows are deleted on disk
    assert [s.kw for s in q.peek(10)] == [2.0, 3.0, 4.0, 5.0]
    q.add_reader("fast")
    q.add_reader("slow")
    q.ack(q.peek(3, "fast"), reader="fast")
    q.drop_reader("slow")                                            # cancelled: what fast took goes
    assert [s.kw for s in q.peek(10)] == [5.0] and q.delivered == 3            # since this start
    q.close()


def test_readings_held_for_a_parked_stream_are_delivered_and_not_pending(tmp_path):
    # a stream of the run before, parked until the VTN requests it again, while the 10 s request delivers every
    # interval: /api/status said delivered 0 and pending growing, and the oldest-sample age metric rose, as if the
    # VTN took nothing (helper ledger41)
    q = TelemetryQueue(tmp_path / "gw.sqlite")
    q.add_reader("parked")
    q.add_reader("live")
    for i in range(6):
        q.add(T0 + timedelta(seconds=10 * i), float(i))
        q.ack(q.peek(10, "live"), reader="live")
    assert q.delivered == 6 and q.pending == 0 and q.held == 6 and q.oldest_undelivered() is None
    q.add(T0 + timedelta(seconds=60), 6.0)                            # not yet taken by either
    assert q.pending == 1 and q.oldest_undelivered().kw == 6.0
    assert q.status()["pending"] == 1 and q.status()["held"] == 6
    q.ack(q.peek(10, "parked"), reader="parked")                      # its request came again
    assert q.delivered == 7 and q.pending == 0 and q.held == 1        # 6.0, which live has yet to take
    q.ack(q.peek(10, "live"), reader="live")
    assert q.delivered == 7 and q.pending == 0 and q.held == 0 and q.peek(10) == []
    q.close()


def test_a_clock_stepped_ahead_and_back_counts_only_the_ticks_it_really_missed(tmp_path, monkeypatch):
    # +120 s, then back: the gap noted at the step ahead ran to the fast clock's time, and the real readings after
    # the step back, each whole, went to the VTN marked Sub Normal (helper ledger41)
    import ven.read_gaps as read_gaps
    q = TelemetryQueue(tmp_path / "gw.sqlite")
    gaps = read_gaps.ReadGaps(q, None, 10.0, hold=lambda last: None, release=lambda: None)
    mono = iter([0.0, 10.0, 20.0, 30.0, 40.0])
    monkeypatch.setattr(read_gaps.time, "monotonic", lambda: next(mono))
    s = timedelta(seconds=1)
    for read_at in (T0, T0 + 10 * s, T0 + 140 * s, T0 + 30 * s, T0 + 40 * s):   # ahead at the third, back at the 4th
        q.add(read_at, read_at.second + 0.5)
        gaps.note_reported(read_at)
    assert [x.ts for x in q.ahead.values()] == [T0 + 140 * s]   # marked at the step back: its time is not its own
    assert q.failed_reads(T0 + 20 * s, T0 + 30 * s) == 1     # the tick read while the clock was ahead
    assert q.failed_reads(T0 + 30 * s, T0 + 140 * s) == 0    # read, after the step back: whole
    q.close()


def test_readings_a_parked_stream_took_in_the_run_before_are_held_not_pending_after_a_restart(tmp_path):
    # after each restart everything kept for a parked stream read as pending again, growing by what was held at each
    # stop, beside an oldest-sample age of a few seconds (helper verify41)
    s = timedelta(seconds=1)
    q = TelemetryQueue(tmp_path / "gw.sqlite")
    for k in (0, 10, 20, 30):
        q.add(T0 + k * s, float(k))
    q.close()
    q = TelemetryQueue(tmp_path / "gw.sqlite")
    q.park_reader("PT1M", before=T0 + 25 * s)           # its place: it reported up to T0 + 25 s before the stop
    assert (q.pending, q.held, q.delivered) == (1, 3, 0)
    assert q.oldest_undelivered().kw == 30.0             # the one reading no stream has had
    q.close()


def test_a_reading_delivered_then_aged_out_while_held_is_not_also_dropped(tmp_path, caplog):
    # counted delivered when the first request took it, then dropped when the queue's bound deleted it for the other:
    # each reading twice, and "dropping the oldest" said of readings the VTN has (helper rev41)
    caplog.set_level(logging.INFO, logger="ven")
    q = TelemetryQueue(tmp_path / "gw.sqlite", max_age=timedelta(minutes=5))
    q.add_reader("parked")
    q.add_reader("live")
    for i in range(6):
        q.add(T0 + timedelta(minutes=i), float(i))
        q.ack(q.peek(10, "live"), reader="live")
    assert q.delivered == 6 and q.held == 6 and q.dropped == 0
    q.add(T0 + timedelta(minutes=20), 20.0)       # the first six age out of the 5-minute bound
    q.ack(q.peek(10, "live"), reader="live")
    assert q.delivered == 7 and q.dropped == 0 and q.held == 1     # 20.0, for the parked stream
    assert not [r for r in caplog.records if "dropping the oldest" in r.getMessage()]
    q.close()


def test_samples_a_clock_ahead_dated_are_marked_at_the_step_back_and_leave_with_their_rows(tmp_path):
    q = TelemetryQueue(tmp_path / "gw.sqlite")
    q.add_reader("standing")
    q.add_reader("later")
    s = timedelta(seconds=1)
    for k in (0, 10, 140, 150):                         # 140 and 150: read while the clock was 120 s ahead
        q.add(T0 + k * s, float(k))
    assert q.mark_ahead(T0 + 30 * s) == 2               # stepped back to T0 + 30 s
    assert [x.kw for x in q.ahead_due("later", T0 + 90 * s)] == []          # still ahead of the clock
    assert [x.kw for x in q.ahead_due("later", T0 + 150 * s)] == [140.0, 150.0]
    q.ack([x for x in q.peek(10, "standing") if x.kw >= 140], reader="standing")
    assert [x.kw for x in q.ahead_due("standing", T0 + 150 * s)] == []      # that request took them
    q.ack(q.ahead_due("later", T0 + 150 * s), delivered=False, reader="later", lost=True)
    assert q.ahead == {} and [x.kw for x in q.peek(10, "later")] == [0.0, 10.0]
    q.close()


def test_two_readers_apart_across_the_move_from_memory_to_the_file_each_get_every_sample_once(tmp_path):
    # the file refuses writes (a lock held past the grace) while one request is ahead of the other: it
    # takes samples held in memory, and peeks more before the file takes them (renumbered) and acks after
    path = tmp_path / "gw.sqlite"
    q = TelemetryQueue(path, reopen_seconds=0.2, lock_grace_seconds=0.0)
    q.add_reader("fast")
    q.add_reader("slow")
    got: dict[str, list[float]] = {"fast": [], "slow": []}

    def take(name, limit=100, ack=True):
        batch = q.peek(limit, name)
        got[name] += [s.kw for s in batch]
        if ack:
            q.ack(batch, reader=name)
        return batch

    for i in range(3):
        q.add(T0 + timedelta(seconds=i), float(i))
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    for i in range(3, 7):
        assert q.add(T0 + timedelta(seconds=i), float(i)) < 0                  # held in memory
    take("fast", 5)                                                            # 0-2 on file, 3-4 in memory
    in_flight = take("fast", ack=False)                                        # 5-6: the update on its way
    take("slow", 2)
    other.execute("ROLLBACK")
    other.close()
    time.sleep(0.25)                                                           # the file is tried again
    q.add(T0 + timedelta(seconds=7), 7.0)
    assert q.status()["in_memory"] == 0 and q.write_error is None              # moved to the file
    q.ack(in_flight, reader="fast")                                            # the VTN took it
    take("slow")
    take("fast")
    assert got == {"fast": [float(i) for i in range(8)], "slow": [float(i) for i in range(8)]}
    assert take("slow") == [] and take("fast") == []
    assert q.pending == 0 and q.delivered == 8
    assert not q._sent and not q._moved and not any(r.taken for r in q._readers.values())   # nothing kept for gone rows
    q.close()
    q = TelemetryQueue(path)
    assert q.peek() == []
    q.close()


def test_what_one_request_took_of_samples_that_age_out_is_forgotten_with_them(tmp_path):
    # a request far behind (its updates refused for days): the numbers the other one delivered stayed in
    # memory for good once their samples aged out, one more each reading (0.5 MB a day at a 10 s poll)
    q = TelemetryQueue(tmp_path / "gw.sqlite", max_age=timedelta(minutes=1))
    q.add_reader("fast")
    q.add_reader("slow")
    for i in range(60):
        q.add(T0 + timedelta(seconds=10 * i), float(i))
        q.ack(q.peek(10, "fast"), reader="fast")
    q.ack(q.peek(3, "slow"), reader="slow")
    kept = len(q._sent) + sum(len(r.taken) for r in q._readers.values())
    assert kept <= 14, kept      # the last minute's 7 samples, each at most in _sent and one reader's taken
    assert [s.kw for s in q.peek(100, "slow")] == [float(i) for i in range(56, 60)]
    q.close()


def test_samples_forgotten_undelivered_are_not_counted_as_delivered(tmp_path):
    q = TelemetryQueue(tmp_path / "gw.sqlite")
    for i in range(3):
        q.add(T0 + timedelta(seconds=i), 10.0 + i)
    q.ack(q.peek(1), delivered=False)
    assert q.pending == 2 and q.delivered == 0 and q.sent_total == 0 and q.last_delivery is None
    q.ack(q.peek(2))
    assert q.pending == 0 and q.delivered == 2
    q.close()


def test_a_reading_does_not_count_the_queue_for_a_debug_line_not_logged(tmp_path, caplog):
    # The DEBUG line's "N waiting" was counted with every reading at any log level: a COUNT(*) over the
    # whole queue on the event loop, 15-20 ms a reading with a week's backlog at a 1 s poll.
    storage = Storage(tmp_path / "gw.sqlite")
    queue = TelemetryQueue(tmp_path / "gw.sqlite")
    client = VtnClient(OpenadrConfig(), EventSchedule(storage, lambda st: None), queue)
    statements: list[str] = []
    queue._db().set_trace_callback(statements.append)
    caplog.set_level(logging.INFO, logger="ven.vtn")
    client.record_sample(datetime.now(timezone.utc), 50.0)
    assert statements and not any("COUNT(" in s for s in statements), statements
    caplog.set_level(logging.DEBUG, logger="ven.vtn")
    client.record_sample(datetime.now(timezone.utc), 51.0)
    assert "(queued, 2 waiting)" in caplog.text
    queue.close()
    storage.close()


async def test_a_backlog_sampled_faster_than_telemetry_seconds_goes_in_full_batches_and_two_log_lines(
        tmp_path, free_tcp_port, caplog):
    # The meter read every 0.2 s and intervals of telemetry_seconds (1 s): five samples per interval.
    # A read sized for one sample per interval filled batches of 20 intervals, not 100: a week's backlog
    # was five times the messages, each with an INFO line.
    caplog.set_level(logging.INFO, logger="ven.vtn")
    port = free_tcp_port()
    storage = Storage(tmp_path / "gw.sqlite")
    schedule = EventSchedule(storage, lambda st: None)
    queue = TelemetryQueue(tmp_path / "gw.sqlite")
    server = DemoVtn(port, poll_seconds=1)
    client = VtnClient(OpenadrConfig(vtn_url=server.url, telemetry_seconds=1.0, retry_min_seconds=0.2,
                                     retry_max_seconds=1.0), schedule, queue)
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=260)
    for i in range(250 * 5):                                   # 250 whole seconds, queued while no VTN
        client.record_sample(start + timedelta(seconds=i / 5), 50.0 + i // 5)
    await schedule.start()
    await client.start()
    try:
        async with server:
            await until(lambda: queue.pending == 0, 20, "backlog delivered")
            sizes = [len(ivs) for _, ivs in server.updates]
            assert sizes == [100, 100, 50], "full batches"
            got = [value for _, ivs in server.updates for *_, value in ivs]
            assert got == [50.0 + s for s in range(250)], "each second once, in order, the mean of its samples"
            await until(lambda: said_once(caplog, "queued telemetry delivered"), 5, "the end of the backlog")
            # the first batch's line (a long backlog under way), and the end's with the whole backlog's range
            assert len([r for r in caplog.records if r.getMessage().startswith("TELEMETRY_USAGE")]) == 1
            first = f"{start:%Y-%m-%dT%H:%M:%S}Z"
            assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("TELEMETRY_USAGE")][0] \
                .startswith(f"TELEMETRY_USAGE: 100 interval(s) of PT1S from {first} to "), caplog.text
            delivered = f"queued telemetry delivered: 250 interval(s) of PT1S from {first} to "
            assert any(r.getMessage().startswith(delivered) for r in caplog.records), caplog.text
    finally:
        await client.stop()
        await schedule.stop()
        queue.close()
        storage.close()


@contextlib.asynccontextmanager
async def _backlog(tmp_path, port, second_update, **cfg):
    """A VTN that takes the first oadrUpdateReport and hands the later ones to `second_update(payload, real)`, and a
    VEN holding 250 whole seconds queued while there was no VTN: (client, the updates seen, the backlog's start)."""
    storage = Storage(tmp_path / "gw.sqlite")
    schedule = EventSchedule(storage, lambda st: None)
    queue = TelemetryQueue(tmp_path / "gw.sqlite")
    server = DemoVtn(port, poll_seconds=1)
    handlers = server._server.services["report_service"].handlers
    taken = []

    async def first_only(payload, real=handlers["oadrUpdateReport"]):
        taken.append(payload)
        return await (real(payload) if len(taken) == 1 else second_update(payload, real))
    handlers["oadrUpdateReport"] = first_only
    client = VtnClient(OpenadrConfig(vtn_url=server.url, telemetry_seconds=1.0, retry_min_seconds=0.2,
                                     retry_max_seconds=1.0, **cfg), schedule, queue)
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=260)
    for i in range(250):
        client.record_sample(start + timedelta(seconds=i), 50.0 + i)
    await schedule.start()
    await client.start()
    try:
        async with server:
            yield client, taken, start
    finally:
        await client.stop()
        await schedule.stop()
        queue.close()
        storage.close()


async def test_a_backlog_whose_second_batch_fails_says_the_first_batch_it_sent(tmp_path, free_tcp_port, caplog):
    # The first batch's line was held back until a second batch went: with the VTN failing the second (away again, a
    # stop next), the 100 intervals it took were said by no line, or only after the next outage, as if sent then
    caplog.set_level(logging.INFO, logger="ven.vtn")

    async def fails(payload, real):
        raise RuntimeError("the VTN fails from the second update on")
    async with _backlog(tmp_path, free_tcp_port(), fails) as (client, taken, start):
        await until(lambda: len(taken) >= 3, 20, "the second batch refused, and tried again")
        sent = [r.getMessage() for r in caplog.records if r.getMessage().startswith("TELEMETRY_USAGE")]
        assert len(sent) == 1 and sent[0].startswith(
            f"TELEMETRY_USAGE: 100 interval(s) of PT1S from {start:%Y-%m-%dT%H:%M:%S}Z to "), caplog.text


async def test_a_stop_while_a_backlogs_second_batch_is_on_its_way_says_what_went(
        tmp_path, free_tcp_port, caplog, monkeypatch):
    # The first batch's line waits for a second batch to go: a stop while that second update was on its way (a slow
    # VTN) said neither, and the operator could not tell whether any of the backlog had reached the VTN
    from ven import vtn as vtn_module

    monkeypatch.setattr(vtn_module, "STOP_LANDING_S", 0.5)
    caplog.set_level(logging.INFO, logger="ven.vtn")

    async def slow(payload, real):
        await asyncio.sleep(5)      # the second update not answered before the stop
        return await real(payload)
    async with _backlog(tmp_path, free_tcp_port(), slow, request_timeout_seconds=30) as (client, taken, start):
        await until(lambda: len(taken) >= 2, 20, "the second batch on its way")
        await client.stop()
    said = [r.getMessage() for r in caplog.records]
    sent = [m for m in said if m.startswith("queued telemetry: ")]
    assert len(sent) == 1 and sent[0].startswith(f"queued telemetry: 100 interval(s) of PT1S from "
                                                 f"{start:%Y-%m-%dT%H:%M:%S}Z to "), said
    assert "sent before the stop (request " in sent[0], sent
    assert sent[0].endswith("; the rest of the backlog is sent after the next start"), sent
    assert TelemetryQueue(tmp_path / "gw.sqlite").pending == 150       # the second batch, not known taken, kept


def test_an_acknowledgement_goes_out_of_the_file_with_the_next_sample_and_at_a_stop(tmp_path):
    path = tmp_path / "gw.sqlite"
    q = TelemetryQueue(path)
    with contextlib.closing(sqlite3.connect(path)) as other:     # what a crash at that moment leaves
        def in_file():
            return [kw for (kw,) in other.execute("SELECT kw FROM telemetry_queue ORDER BY seq")]
        q.add(T0, 1.0)
        assert in_file() == [1.0]                   # committed before it can be offered
        q.ack(q.peek())
        assert q.peek() == [] and q.pending == 0 and in_file() == [1.0]    # never offered again
        q.add(T0 + timedelta(seconds=10), 2.0)
        assert in_file() == [2.0]                   # one commit: this sample in, the acknowledged one out
        q.ack(q.peek())
        q.close()
        assert in_file() == []
    again = TelemetryQueue(path)
    assert again.pending == 0 and again.last_delivery == q.last_delivery
    again.close()


_ACK_THEN_CRASH = """
import sys
from datetime import datetime, timedelta, timezone
from ven.telemetry import TelemetryQueue
q = TelemetryQueue(sys.argv[1])
t0 = datetime(2026, 11, 21, 20, 0, tzinfo=timezone.utc)
for i in range(200):
    q.add(t0 + timedelta(seconds=i), float(i))
for s in q.peek(150):       # the VTN takes 150 samples, one update each, and no reading follows
    q.ack([s])
print("acknowledged", flush=True)
sys.stdin.read()
"""


@pytest.mark.timeout(60)
def test_a_crash_after_acknowledgements_loses_nothing_and_resends_fewer_than_ack_defer_max(tmp_path):
    path = tmp_path / "gw.sqlite"
    kill_when_said(_ACK_THEN_CRASH, str(path), said="acknowledged")
    q = TelemetryQueue(path)
    left = [s.kw for s in q.peek(1000)]
    q.close()
    resent = len(left) - 50
    assert left == [float(i) for i in range(150 - resent, 200)]     # every unacknowledged one, in order
    assert 0 <= resent < ACK_DEFER_MAX <= 60                        # the VTN gets those again: at least once


def _intervals(vtn) -> list[datetime]:
    return [ts for _, ivs in vtn.updates for ts, *_ in ivs]


@pytest.mark.timeout(120)
async def test_a_sigkill_right_after_an_update_resends_at_most_that_update_and_loses_nothing(
        tmp_path, free_udp_port, free_tcp_port):
    bacnet_port, meter_port, vtn_port = free_udp_port(), free_udp_port(), free_tcp_port()
    config, storage = tmp_path / "gw.toml", tmp_path / "gw.sqlite"
    # 1 s report intervals (DemoVtn requests the offer's finest), a reading every 0.5 s
    write_config(config, bacnet_port=bacnet_port, meter_port=meter_port, vtn_port=vtn_port,
                 http_port=free_tcp_port(), storage=storage, ven_name="ack-kill", telemetry_seconds=1,
                 retry_min_seconds=0.2)
    gateway = GatewayProcess(config, tmp_path / "gateway.log")
    try:
        async with MeterSimulator(address=f"127.0.0.1/8:{meter_port}", value=87.5), \
                DemoVtn(vtn_port, poll_seconds=1) as vtn:
            gateway.start()
            # past the first update (which may carry what was read before the registration): updates as they go
            await until(lambda: len(vtn.updates) >= 3, 30, f"updates\n{gateway.log()[-3000:]}")
            n = len(vtn.updates)
            await until(lambda: len(vtn.updates) > n, 10, "the next update", interval=0.005)
            gateway.kill()                          # its acknowledgement is, at best, in memory only
            before, last = _intervals(vtn), vtn.updates[-1][1]
            with contextlib.closing(sqlite3.connect(storage)) as db:
                queued = {datetime.fromisoformat(ts).replace(microsecond=0)
                          for (ts,) in db.execute("SELECT ts FROM telemetry_queue")}
            gateway.start()
            await until(lambda: queued <= set(_intervals(vtn)[len(before):]), 30,
                        f"what the file held delivered after the restart\n{gateway.log()[-3000:]}")
        assert gateway.stop() == 0
    finally:
        gateway.stop()
    resent = queued & set(before)
    assert len(resent) <= len(last), (sorted(resent), last)
    assert "Traceback" not in gateway.log()
