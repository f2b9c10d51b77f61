"""`cp other.sqlite gw.sqlite` while the gateway runs writes over the file in place: same inode, so the check that
finds a file deleted or replaced (ven/storage_follow.follow_file) took it for the gateway's own, nothing was said,
and the gateway's next writes, paired by SQLite with the pages put there, damaged it ("database disk image is
malformed" at the next start, every telemetry reading queued in it unreadable). Its old pages are gone from the disk,
so nothing can keep them; the gateway says so once, as an ERROR, at its next write."""
from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import subprocess
from datetime import datetime, timedelta, timezone

import pytest

from ven import storage_sidecars
from ven.storage import Storage
from ven.telemetry import TelemetryQueue

pytestmark = pytest.mark.timeout(120)

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def _said(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("put_there", ["older copy", "another file", "a larger file"])
def test_a_file_written_over_in_place_is_said_once(tmp_path, caplog, put_there):
    path, other = tmp_path / "gw.sqlite", tmp_path / "other.sqlite"
    store, queue = Storage(path), TelemetryQueue(path, max_age=timedelta(days=30))
    store.save_value("bacnet_commands:ADR-Opt-Out", '{"8": true}')
    for i in range(500):
        queue.add(T0 + timedelta(seconds=i), 90.0)
    if put_there == "older copy":       # as `sqlite3 gw.sqlite ".backup other.sqlite"` makes it
        with contextlib.closing(sqlite3.connect(path)) as db, contextlib.closing(sqlite3.connect(other)) as copy:
            db.backup(copy)
    elif put_there == "another file":
        Storage(other).close()
    else:   # another gateway's, with a longer backlog
        queue2 = TelemetryQueue(other, max_age=timedelta(days=30))
        for i in range(20000):
            queue2.add(T0 + timedelta(seconds=i), 50.0)
        queue2.close()
    # the VTN taking readings as they come: rows deleted, and the file's checkpoints, make it no smaller
    for i in range(500, 4000):
        queue.add(T0 + timedelta(seconds=i), 90.0)
        if i % 2:
            queue.ack(queue.peek(1))
    assert _said(caplog) == []
    subprocess.run(["cp", str(other), str(path)], check=True)
    for i in range(4000, 4010):
        queue.add(T0 + timedelta(seconds=i), 90.0)
    store.save_value("after", "1")
    said = _said(caplog)
    assert len(said) == 1 and "was written over in place" in said[0], said
    assert [r.levelno for r in caplog.records if r.levelno >= logging.WARNING] == [logging.ERROR]
    queue.close()
    store.close()


def test_a_vacuum_another_process_runs_is_not_taken_for_one(tmp_path, caplog):
    # VACUUM shrinks the file too (at its checkpoint), and damages nothing
    path = tmp_path / "gw.sqlite"
    store, queue = Storage(path), TelemetryQueue(path, max_age=timedelta(days=30))
    for i in range(6000):
        queue.add(T0 + timedelta(seconds=i), 90.0)
    queue.ack(queue.peek(5000))
    for i in range(6000, 6100):
        queue.add(T0 + timedelta(seconds=i), 90.0)
    size = path.stat().st_size
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("VACUUM")
        other.execute("PRAGMA wal_checkpoint(PASSIVE)")
    assert path.stat().st_size < size / 2
    for i in range(6100, 6200):
        queue.add(T0 + timedelta(seconds=i), 90.0)
    store.save_value("after", "1")
    assert _said(caplog) == []
    assert len(queue.peek(2000)) == 1200
    queue.close()
    store.close()


def test_a_file_put_in_place_night_after_night_is_followed_each_time(tmp_path, caplog):
    # what the gateway kept of each file it had written (its size, whether it was said to be written over, whether it
    # was made a copy of the gateway's) was kept by (device, inode) for good: a file put in its place later (a restore
    # each night), on an inode a file the gateway had left was freed from, was taken for that one, and not copied
    # into (what the gateway held was lost) or called written over in place (a false ERROR). And it only grew
    def kept() -> int:
        return sum(map(len, storage_sidecars._sidecars.values()))

    path = tmp_path / "gw.sqlite"
    store, queue = Storage(path), TelemetryQueue(path)
    queue.add(T0, 90.0)
    store.save_value("n", "0")
    before = kept()
    for i in range(1, 20):
        other = tmp_path / f"restore-{i}.sqlite"
        Storage(other).close()
        os.replace(other, path)     # a restore, as `mv` puts it there
        queue.add(T0 + timedelta(seconds=i), 90.0)      # the file there made a copy of the gateway's
        store.save_value("n", str(i))
    assert store.load_value("n") == "19" and len(queue.peek(100)) == 20
    said = _said(caplog)
    assert len(said) == 19 and all("was replaced while the gateway had it open" in s for s in said), said
    assert kept() <= before + 1     # the last one closed, dropped as the next is noted
    queue.close()
    store.close()
