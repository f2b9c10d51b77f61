"""storage.path deleted or replaced alone under the running gateway, its -wal and -shm left in place (`rm gw.sqlite`,
`mv backup.sqlite gw.sqlite`): SQLite pairs a file with the -wal and -shm of its name, so the next connection to the
file put there (the gateway's copy of its own file, the forecaster's next write, an operator's sqlite3) read the old
file's pages from that -wal as its own and wrote its own into it: "database disk image is malformed" at the stop, and
the next start set the file aside with what did not read whole. The gateway removes the old file's -wal and -shm
from the names before it opens the file there (its own connections keep theirs open)."""
from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from datetime import datetime, timedelta, timezone

import pytest
from waiting import eventually

from ven.config import ForecasterConfig
from ven.forecast_service import ForecastService
from ven.storage import Storage
from ven.telemetry import TelemetryQueue

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)


def _check(path) -> list:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return [r[0] for r in db.execute("PRAGMA integrity_check")]


def _minutes(path) -> list:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return [k for k, in db.execute("SELECT minute FROM forecast_minute ORDER BY minute")]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["replaced", "deleted"])
async def test_a_file_moved_away_alone_leaves_no_damage_and_loses_nothing(tmp_path, how):
    path = tmp_path / "gw.sqlite"
    backup = tmp_path / "backup.sqlite"
    store, queue = Storage(path), TelemetryQueue(path)
    k = int(time.time() // 60)
    # saving every few cycles of 50 ms: its writes, which open the file each time, come first after the move
    svc = ForecastService(ForecasterConfig(cycle_seconds=0.05, source="meter"), str(path), publish=lambda f: None)
    await svc.start()
    try:
        store.save_value("opt_out", '{"8": 1}')
        for i in range(300):     # pages enough that the old file's -wal and a copy of it differ in layout
            queue.add(T0 + timedelta(seconds=i), 40.0 + i % 7)
        svc.on_meter((k - 3) * 60 - 30, 100.0)
        await eventually(lambda: _minutes(path) == [k - 3], 10, "a minute stored")
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute(f"VACUUM INTO '{backup}'")        # a backup taken while it ran
        for i in range(300, 400):
            queue.add(T0 + timedelta(seconds=i), 40.0)
        store.save_value("opt_out", "{}")
        if how == "replaced":
            os.replace(backup, path)                    # mv backup.sqlite gw.sqlite, its -wal and -shm left
        else:
            path.unlink()                               # rm gw.sqlite alone
        # the forecaster's writes come first (they open the file each time), then the queue's and the events'
        svc.on_meter((k - 2) * 60 - 30, 200.0)
        await asyncio.sleep(0.6)
        queue.add(T0 + timedelta(seconds=400), 41.0)
        store.save_value("after", "1")
        svc.on_meter((k - 1) * 60 - 30, 300.0)
        await eventually(lambda: _minutes(path) == [k - 3, k - 2, k - 1], 10, f"the minutes in the file there {k}")
    finally:
        await svc.stop()
        store.close()
        queue.close()
    assert _check(path) == ["ok"]
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT COUNT(*) FROM telemetry_queue").fetchone()[0] == 401
    again = Storage(path)
    assert again.load_value("opt_out") == "{}" and again.load_value("after") == "1"
    again.close()
