"""storage.path's page size: a file the gateway creates gets small pages (fewer bytes written per commit,
for an SD card's wear); a file it already has keeps its own, and works as before. Real SQLite files."""
from __future__ import annotations

import contextlib
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import forecaster.store
import ven.storage_connect
from forecaster import DemandForecaster
from forecaster.store import ForecastStore
from ven.events import Event, Interval, Signal
from ven.storage import Storage
from ven.telemetry import TelemetryQueue

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
MINUTE = int(T0.timestamp() // 60)


def _event(event_id: str) -> Event:
    ivs = (Interval(T0 + timedelta(hours=1), timedelta(minutes=30), 2.0),)
    return Event(event_id, 0, "far", False, "oadr://x", (Signal("SIMPLE", "level", ivs),), timedelta(0), T0)


def _file(path: Path) -> tuple[int, str, str]:
    """(page size, journal mode, integrity) of the file."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return (db.execute("PRAGMA page_size").fetchone()[0], db.execute("PRAGMA journal_mode").fetchone()[0],
                db.execute("PRAGMA integrity_check").fetchone()[0])


def _remove(path: Path) -> None:
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        p.unlink(missing_ok=True)


@pytest.mark.parametrize("creator", ["events", "telemetry", "forecaster"])
def test_a_new_file_gets_small_pages_whichever_store_creates_it(tmp_path, creator):
    path = tmp_path / "data" / "gw.sqlite"
    if creator == "events":
        Storage(path).close()
    elif creator == "telemetry":
        TelemetryQueue(path).close()
    else:
        ForecastStore(str(path))
    assert _file(path) == (1024, "wal", "ok")


def test_an_existing_4k_file_keeps_its_pages_and_everything_in_it(tmp_path, monkeypatch):
    path = tmp_path / "gw.sqlite"
    with monkeypatch.context() as old:       # the file a version before the setting made: SQLite's 4,096
        old.setattr(ven.storage_connect, "PAGE_SIZE", 4096, raising=False)
        old.setattr(forecaster.store, "PAGE_SIZE", 4096, raising=False)
        store, queue, fstore = Storage(path), TelemetryQueue(path), ForecastStore(str(path))
        store.save_event(_event("before"))
        store.save_value("opt_out", '{"8": 1}')
        queue.add(T0, 40.0)
        fstore.save_minutes([MINUTE], [100.0], [1])
        fstore.save_model(b"m" * 700_000)
        store.close()
        queue.close()
    assert _file(path) == (4096, "wal", "ok")

    store, queue, fstore = Storage(path), TelemetryQueue(path), ForecastStore(str(path))
    store.save_event(_event("after"))
    queue.add(T0 + timedelta(seconds=10), 41.0)
    fstore.save_minutes([MINUTE + 1], [110.0], [1])
    fstore.save_model(b"n" * 700_000)
    store.close()
    queue.close()

    assert _file(path) == (4096, "wal", "ok")
    assert sorted(e.event_id for e in Storage(path).load_events()) == ["after", "before"]
    assert Storage(path).load_value("opt_out") == '{"8": 1}'
    assert [s.kw for s in TelemetryQueue(path).peek()] == [40.0, 41.0]
    assert ForecastStore(str(path)).load_into(DemandForecaster(history_days=35), T0.timestamp() + 600,
                                              model=False)["minutes"] == 2
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT blob FROM forecast_model").fetchone()[0] == b"n" * 700_000


def test_a_file_deleted_while_open_comes_back_with_small_pages(tmp_path, monkeypatch):
    # the copy the gateway makes of the file it had is a new file: it gets the new page size
    path = tmp_path / "gw.sqlite"
    with monkeypatch.context() as old:
        old.setattr(ven.storage_connect, "PAGE_SIZE", 4096, raising=False)
        store, queue = Storage(path), TelemetryQueue(path)
    store.save_event(_event("before"))
    queue.add(T0, 40.0)
    assert _file(path)[0] == 4096
    _remove(path)

    queue.add(T0 + timedelta(seconds=10), 41.0)
    store.save_event(_event("after"))
    store.close()
    queue.close()
    assert _file(path) == (1024, "wal", "ok")
    assert sorted(e.event_id for e in Storage(path).load_events()) == ["after", "before"]
    assert [s.kw for s in TelemetryQueue(path).peek()] == [40.0, 41.0]


def test_a_file_replaced_while_open_by_an_older_4k_copy_keeps_its_pages(tmp_path, monkeypatch):
    path, backup = tmp_path / "gw.sqlite", tmp_path / "backup.sqlite"
    with monkeypatch.context() as old:
        old.setattr(ven.storage_connect, "PAGE_SIZE", 4096, raising=False)
        store, queue = Storage(path), TelemetryQueue(path)
    queue.add(T0, 40.0)
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(f"VACUUM INTO '{backup}'")
    queue.add(T0 + timedelta(seconds=10), 41.0)
    _remove(path)
    backup.rename(path)

    queue.add(T0 + timedelta(seconds=20), 42.0)
    store.save_event(_event("after"))
    store.close()
    queue.close()
    assert _file(path) == (4096, "wal", "ok")
    assert [s.kw for s in TelemetryQueue(path).peek()] == [40.0, 41.0, 42.0]
