"""Reads of the telemetry queue's status that met a torn page of storage.path failed silently: its count of the
readings waiting (the status and /metrics said 0 behind a stalled backlog) and its newest reading (a one-shot report
waited for good). Pages are torn as zeros, deterministically (tests/test_storage_damaged_reads.py)."""
from __future__ import annotations

import contextlib
import logging
import sqlite3
from datetime import datetime, timedelta, timezone

from test_storage_damaged_midrun import leaf_pages
from test_storage_damaged_reads import errors
from ven.storage_fault import StorageFault
from ven.telemetry import TelemetryQueue

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def tear_leaf(path, tree: str, which: int) -> None:
    """Leaf `which` of `tree` (-1: its last) read back as zeros; the -wal checkpointed into the file first."""
    size, leaves = leaf_pages(path, tree)
    with open(path, "r+b") as f:
        f.seek((leaves[which] - 1) * size)
        f.write(bytes(size))
    with contextlib.closing(sqlite3.connect(path)) as db:     # another connection's write: the queue reads again
        db.execute("UPDATE kv SET value = value WHERE key = 'opened_at'")
        db.commit()


def _queue(path):
    fault = StorageFault(path, retry_seconds=10, settle_seconds=0)
    queue = TelemetryQueue(path, max_age=timedelta(days=1), reopen_seconds=10, fault=fault)
    for i in range(3000):
        queue.add(T0 + timedelta(seconds=i), 90.0 + i % 3)
    return queue


def test_the_count_of_readings_waiting_meeting_a_torn_page_is_said_and_keeps_the_last_count(tmp_path, caplog):
    path = tmp_path / "gw.sqlite"
    queue = _queue(path)
    assert queue.pending == 3000
    tear_leaf(path, "telemetry_queue", len(range(3000)) // 200)     # the table's pages read: its count does
    assert queue.pending == 3000
    tear_leaf(path, "telemetry_queue_ts", 3)
    caplog.set_level(logging.INFO)
    assert [queue.pending for _ in range(3)] == [3000] * 3
    said = errors(caplog)
    assert len(said) == 1 and "is damaged" in said[0] and "count" in said[0], said
    assert queue.status()["storage_error"] is not None
    queue.close()


def test_the_newest_reading_meeting_a_torn_last_page_is_said_and_is_the_one_taken_last(tmp_path, caplog):
    path = tmp_path / "gw.sqlite"
    queue = _queue(path)
    tear_leaf(path, "telemetry_queue", -1)
    caplog.set_level(logging.INFO)
    newest = [queue.newest() for _ in range(3)]
    assert [(s.ts, s.kw) for s in newest] == [(T0 + timedelta(seconds=2999), 92.0)] * 3, newest
    said = errors(caplog)
    assert len(said) == 1 and "is damaged" in said[0] and "newest" in said[0], said
    queue.close()
