"""An index of storage.path damaged while the gateway runs (a failing card tearing a page), met by an ordinary write:
the storage fault said "refuses writes (database disk image is malformed) ... until it takes them again", as of a full
disk that passes. It never passes: SQLite can neither rebuild nor drop an index with a page whose layout is broken,
only the next start, which sets the file aside and keeps every table that reads whole, puts it right. The fault's line
says so, naming what is damaged."""
from __future__ import annotations

import contextlib
import logging
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

from ven.storage import Storage
from ven.storage_fault import StorageFault
from ven.storage_salvage import set_aside_if_damaged
from ven.telemetry import TelemetryQueue

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def leaf_pages(path, tree: str) -> tuple[int, list[int]]:
    """The file's page size and the leaf pages of `tree` (a table or an index) in key order, its -wal checkpointed into
    it first, so no newer copy of a page hides damage made to it."""
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = db.execute("PRAGMA page_size").fetchone()[0]
        return size, [n for n, in db.execute("SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' "
                                             "ORDER BY path", (tree,))]


def damage_index_page(path, newest: bool = True, index: str = "telemetry_queue_ts") -> None:
    """The cells of the index's last leaf (where the newest readings' keys go), or its first (the oldest's), made
    garbage, its header left: every cell's offset past the page, which SQLite finds at its first read (random bytes
    may give one a key it reads, and stops at)."""
    size, leaves = leaf_pages(path, index)
    with open(path, "r+b") as f:
        f.seek((leaves[-1 if newest else 0] - 1) * size + 8)
        f.write(b"\xff" * (size - 8))


def stores_with_readings(path, max_age: timedelta = timedelta(days=1)) -> tuple[Storage, TelemetryQueue]:
    """The events' store and a telemetry queue sharing one storage fault, as in the gateway, 3,000 readings queued."""
    fault = StorageFault(path, retry_seconds=10, settle_seconds=0)
    store = Storage(path, reopen_seconds=10, fault=fault)
    queue = TelemetryQueue(path, max_age=max_age, reopen_seconds=10, fault=fault)
    for i in range(3000):
        queue.add(T0 + timedelta(seconds=i), 90.0)
    return store, queue


def test_an_index_damaged_while_the_gateway_runs_is_said_damaged_not_refusing(tmp_path, caplog):
    path = tmp_path / "gw.sqlite"
    store, queue = stores_with_readings(path)
    damage_index_page(path)
    caplog.set_level(logging.INFO)
    store.save_value("after", "1")      # a write by another connection: the queue's reads the file's pages again
    for i in range(3000, 3010):
        queue.add(T0 + timedelta(seconds=i), 90.0)
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.levelno for r in said] == [logging.ERROR], [r.getMessage() for r in said]
    line = said[0].getMessage()
    assert f"storage.path {path} is damaged" in line and "index telemetry_queue_ts" in line, line
    assert "refuses writes" not in line and "takes them again" not in line, line
    assert "restart" in line, line
    assert queue.write_error is not None and len(queue.peek(5000)) == 3010     # what it met waits in memory
    queue.close()
    store.close()
    # the restart the line asks for: the file aside, the queue's table kept whole, its index made again
    assert set_aside_if_damaged(path) is not None
    queue = TelemetryQueue(path, max_age=timedelta(days=1))
    assert len(queue.peek(5000)) == 3000
    queue.close()


def test_an_index_damaged_where_the_queue_drops_its_oldest_readings_is_said_once(tmp_path, caplog):
    # the queue's bound by age (DELETE ... WHERE ts < ?, by the index) failed on the damaged page at every reading and
    # nothing was said: the queue grew past telemetry.max_age, with no line, until the disk filled
    path = tmp_path / "gw.sqlite"
    store, queue = stores_with_readings(path, timedelta(hours=1))
    damage_index_page(path, newest=False)
    caplog.set_level(logging.INFO)
    store.save_value("after", "1")
    for i in range(3000, 6000):     # past the hour: the oldest are due to go
        queue.add(T0 + timedelta(seconds=i), 90.0)
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.levelno for r in said] == [logging.ERROR], [r.getMessage() for r in said]
    line = said[0].getMessage()
    assert f"storage.path {path} is damaged" in line and "index telemetry_queue_ts" in line, line
    assert "older than 60 min" in line and "restart" in line, line
    assert queue.write_error is None    # the readings still go to the file, which the restart keeps
    queue.close()
    store.close()
