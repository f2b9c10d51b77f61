"""Another process holding storage.path's write lock as the gateway starts (a backup, an operator's sqlite3 in a
transaction). Every store's first open failed "database is locked", and a lock of a second or two was an ERROR line
("refuses writes") and an end line in each such start. A lock that passes within the grace a write gets
(LOCK_GRACE_SECONDS) is now waited out, the file tried every second, with no line; one that outlasts it is one WARNING
naming what waits in memory, and its end the storage fault's end line."""
from __future__ import annotations

import contextlib
import logging
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from ven.storage import Storage
from ven.storage_fault import StorageFault
from ven.telemetry import TelemetryQueue

pytestmark = pytest.mark.timeout(90)

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)

HOLD_THE_WRITE_LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("holding", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


@contextlib.contextmanager
def write_lock_held(path):
    """The write lock held by another process until `release` (yielded) is called, or the block ends."""
    other = subprocess.Popen([sys.executable, "-c", HOLD_THE_WRITE_LOCK, str(path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "holding"
        yield lambda: other.communicate("\n", timeout=30)
    finally:
        if other.poll() is None:
            other.communicate("\n", timeout=30)


def _gateway_stores(path, grace=None, retry_seconds=10):
    """The three parts' stores as the app makes them (ven/app.py), the forecaster's aside: one storage fault.
    retry_seconds: storage.retry_seconds, how often a file still locked past the grace is tried."""
    fault = StorageFault(path, retry_seconds=retry_seconds, settle_seconds=0)
    kw = {} if grace is None else {"lock_grace_seconds": grace}
    return fault, Storage(path, reopen_seconds=retry_seconds, fault=fault, **kw), \
        TelemetryQueue(path, reopen_seconds=retry_seconds, fault=fault, **kw)


def _until(written, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not written():
        assert time.monotonic() < deadline
        time.sleep(0.1)


def _flushed(store, queue) -> bool:
    """As the gateway's owners do every retry_seconds: True once both wrote what memory held."""
    queue.try_file()
    return store.flush() and queue.write_error is None


def _written(path):
    with contextlib.closing(sqlite3.connect(path)) as db:
        return (db.execute("SELECT value FROM kv WHERE key = 'bacnet_commands:ADR-Opt-Out'").fetchone(),
                db.execute("SELECT kw FROM telemetry_queue ORDER BY seq").fetchall())


def test_a_lock_that_passes_within_the_grace_is_waited_out_with_no_line(tmp_path, caplog):
    path = tmp_path / "gw.sqlite"
    Storage(path).close()       # the file of an earlier run
    caplog.set_level(logging.INFO)
    with write_lock_held(path) as release:
        fault, store, queue = _gateway_stores(path)
        store.save_value("bacnet_commands:ADR-Opt-Out", '{"8": true}')      # kept in memory meanwhile
        queue.add(T0, 90.0)
        assert store.retry_seconds <= 1.0       # tried every second, not every storage.retry_seconds
        release()
    _until(lambda: _flushed(store, queue))
    assert _written(path) == (('{"8": true}',), [(90.0,)])
    assert [r.getMessage() for r in caplog.records if r.name.startswith("ven.storage")] == []
    assert not fault.open
    queue.close()
    store.close()


def test_a_lock_that_outlasts_the_grace_is_one_warning_with_what_waits(tmp_path, caplog):
    path = tmp_path / "gw.sqlite"
    Storage(path).close()
    caplog.set_level(logging.INFO)
    with write_lock_held(path) as release:
        # past the grace it is tried every 2 s, not 10: what is written once the lock is gone comes 8 s sooner
        fault, store, queue = _gateway_stores(path, grace=0.3, retry_seconds=2)
        store.save_value("bacnet_commands:ADR-Opt-Out", '{"8": true}')
        queue.add(T0, 90.0)
        _until(lambda: not store.flush() and fault.open)   # tried every second, until the grace is out
        queue.add(T0.replace(second=1), 91.0)
        said = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert [r.levelno for r in said] == [logging.WARNING], [r.getMessage() for r in said]
        assert "another process" in said[0].getMessage() and "events are kept in memory" in said[0].getMessage()
        release()
    _until(lambda: _flushed(store, queue))
    fault.look()
    assert _written(path) == (('{"8": true}',), [(90.0,), (91.0,)])
    lines = [r for r in caplog.records if r.name.startswith("ven.storage")]
    assert len(lines) == 2 and "takes writes again" in lines[1].getMessage(), [r.getMessage() for r in lines]
    assert [r.levelno for r in caplog.records if r.levelno >= logging.WARNING] == [logging.WARNING]
    queue.close()
    store.close()


def test_a_lock_waited_out_by_stores_without_the_storage_fault_is_said_by_neither(tmp_path, caplog):
    # the stores as a tool or a test makes them, each saying its own lines: the events' store said nothing of a lock
    # waited out, and the telemetry queue, with its own copy of the wait, said "written to disk again": an end line
    # of a fault it had not said
    path = tmp_path / "gw.sqlite"
    Storage(path).close()
    caplog.set_level(logging.INFO)
    with write_lock_held(path) as release:
        store, queue = Storage(path, reopen_seconds=10), TelemetryQueue(path, reopen_seconds=10)
        store.save_value("bacnet_commands:ADR-Opt-Out", '{"8": true}')
        queue.add(T0, 90.0)
        release()
    _until(lambda: _flushed(store, queue))
    assert _written(path) == (('{"8": true}',), [(90.0,)])
    assert [r.getMessage() for r in caplog.records if r.name.startswith(("ven.storage", "ven.telemetry"))] == []
    queue.close()
    store.close()
