"""An index of storage.path whose keys no longer match its table (its page's layout still valid: a bit flipped on a
card, a write torn within a page) passed the start's PRAGMA quick_check, and the forecasts /api/history reads by
target time came back wrong for the whole run. The gateway compares its indexes with their tables once after the start
and rebuilds one that differs, with one line, losing no row."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import struct
import threading
import time

import pytest
from gateway_process import START_S, GatewayProcess, write_config

from forecaster.store import ForecastStore
from ven.storage import Storage
from ven.storage_salvage import set_aside_if_damaged
from ven import storage_indexes
from ven.storage_indexes import IndexCheck, check_indexes

pytestmark = pytest.mark.timeout(int(START_S) + 60)

# three days ago (within what the forecaster keeps), not on a whole second: SQLite writes a whole REAL as an integer
T0 = (time.time() // 60 - 3 * 1440) * 60 + 0.25
FORECASTS = 2000        # a day and a half of forecasts a minute apart, two horizons: the index spans many 1 KB pages


def history_file(path) -> None:
    """The gateway's file with the forecaster's tables (ForecastStore makes them, and the index on target_time)."""
    Storage(path).close()
    ForecastStore(str(path))
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executemany("INSERT INTO forecast_demand VALUES (?, ?, ?, ?)",
                       [(T0 + 60 * i, h, T0 + 60 * i + 60 * h, 100.0 + i % 7) for i in range(FORECASTS)
                        for h in (15, 60)])
        db.commit()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def change_index_keys(path, index: str = "forecast_demand_target") -> list[float]:
    """Every key on one leaf page of `index` (its first column, a REAL) made 1e9, the page's layout left valid;
    returns the keys it held."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        size = db.execute("PRAGMA page_size").fetchone()[0]
        pages = [p for p, in db.execute("SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY "
                                        "pageno", (index,))]
    page = pages[len(pages) // 2]
    with open(path, "r+b") as f:
        f.seek((page - 1) * size)
        data = bytearray(f.read(size))
        keys = []
        for k in range(int.from_bytes(data[3:5], "big")):
            cell = int.from_bytes(data[8 + 2 * k:10 + 2 * k], "big")
            # a cell: its payload's size (one byte here), the record's header (its size, each column's type), values
            if data[cell + 2] == 7:     # a REAL
                at = cell + 1 + data[cell + 1]
                keys.append(struct.unpack(">d", data[at:at + 8])[0])
                data[at:at + 8] = struct.pack(">d", 1e9)
        f.seek((page - 1) * size)
        f.write(data)
    assert keys
    return keys


def forecasts_at(path, target: float) -> int:
    """The forecasts for one target time, as /api/history's read finds them (by the index on target_time)."""
    got = ForecastStore(str(path)).history(target)["forecasts"]
    return sum(1 for f in got.values() for t in f["target_time"] if t == target)


# the primary key's index too: with both, integrity_check's first 100 lines do not name both
@pytest.mark.parametrize("indexes", [["forecast_demand_target"],
                                     ["forecast_demand_target", "sqlite_autoindex_forecast_demand_1"]])
def test_an_index_that_does_not_match_its_table_is_rebuilt_with_no_row_lost(tmp_path, caplog, indexes):
    path = tmp_path / "gw.sqlite"
    history_file(path)
    keys = [change_index_keys(path, index) for index in indexes][0]
    assert forecasts_at(path, keys[0]) == 0     # the rows are there, the index does not find them
    assert set_aside_if_damaged(path) is None   # quick_check passes it
    with caplog.at_level(logging.INFO):
        assert sorted(check_indexes(path)) == sorted(indexes)
    said = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(said) == 1 and said[0].levelno == logging.WARNING, [r.getMessage() for r in said]
    assert f"{', '.join(sorted(indexes))} did not match" in said[0].getMessage()
    assert "no row lost" in said[0].getMessage()
    assert forecasts_at(path, keys[0]) >= 1
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("SELECT COUNT(*) FROM forecast_demand").fetchone()[0] == 2 * FORECASTS
    caplog.clear()
    assert check_indexes(path) == [] and not caplog.records     # a sound file: nothing said


async def test_a_stop_as_the_check_begins_ends_it(tmp_path, caplog, monkeypatch):
    # SQLite drops an interrupt made before a statement runs (it clears it as a connection's statement starts): a stop
    # between the check's connection and its first statement, or between two of its statements, was lost, and the stop
    # waited for the whole check (seconds on a big file, up to five rounds of integrity_check and REINDEX)
    path = tmp_path / "gw.sqlite"
    history_file(path)
    change_index_keys(path)
    connected, go_on = threading.Event(), threading.Event()
    check_them = storage_indexes.check_indexes

    def as_it_begins(*args, **kwargs):   # the stop made in the window, which is otherwise microseconds wide
        connected.set()
        go_on.wait(30)
        return check_them(*args, **kwargs)
    monkeypatch.setattr(storage_indexes, "check_indexes", as_it_begins)
    check = IndexCheck(path)
    caplog.set_level(logging.INFO)
    await check.start()
    assert await asyncio.to_thread(connected.wait, 30)
    stopping = asyncio.create_task(check.stop())
    await asyncio.sleep(0)      # the stop's interrupt made
    go_on.set()
    await asyncio.wait_for(stopping, 30)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == []     # nothing checked or rebuilt
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() != [("ok",)]     # the index is still to rebuild


def test_the_gateway_rebuilds_a_wrong_index_after_its_start(tmp_path, free_udp_port, free_tcp_port):
    path = tmp_path / "gw.sqlite"
    history_file(path)
    keys = change_index_keys(path)
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=free_udp_port(), http_port=free_tcp_port(), storage=path, ven_name="ix")
    with GatewayProcess(config, tmp_path / "gateway.log") as gw:
        gw.wait_for("edge-gateway ready", START_S)
        gw.wait_for("did not match their tables", START_S)
        assert forecasts_at(path, keys[0]) >= 1
    text = gw.log()
    assert text.count("forecast_demand_target did not match") == 1, text
    assert "ERROR" not in text and "damaged" not in text, text
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        # every forecast the file held is in it still (the gateway's own forecasts add to them)
        assert db.execute("SELECT COUNT(*) FROM forecast_demand WHERE issued_at < ?",
                          (T0 + 60 * FORECASTS,)).fetchone()[0] == 2 * FORECASTS
