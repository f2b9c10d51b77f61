"""Damage met by some of a part's writes and missed by others: the forecaster's saves into the torn page of its
history fail while its prune of the oldest minutes, on other pages, goes in (seen after a wall-clock step back, whose
saves go into the history's first pages). The storage fault said "is damaged" and "takes writes again" in turn, a pair
of lines a settle period, for one damage that does not pass while the gateway runs."""
from __future__ import annotations

import contextlib
import logging
import sqlite3

from test_storage_damaged_reads import tear_page

from ven.storage_fault import StorageFault


def _write(path, sql: str, params=()) -> str | None:
    """A write of the file: SQLite's words if it fails."""
    try:
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            db.execute(sql, params)
    except sqlite3.Error as err:
        return str(err)
    return None


def test_damage_met_by_every_other_write_is_one_start_line_and_no_end_while_the_gateway_runs(tmp_path, caplog):
    path = tmp_path / "gw.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE forecast_minute (minute INTEGER PRIMARY KEY, sum_kw REAL NOT NULL)")
        db.executemany("INSERT INTO forecast_minute VALUES (?, 1.0)", [(k,) for k in range(1000, 4000)])
    tear_page(path, "forecast_minute", middle=False)
    fault = StorageFault(path, retry_seconds=1, settle_seconds=0)
    caplog.set_level(logging.INFO)
    for i in range(5):
        # a save at the old times: into the torn first page
        why = _write(path, "INSERT OR REPLACE INTO forecast_minute VALUES (?, 2.0)", (1000 + i,))
        assert why is not None and "malformed" in why, why
        fault.failed("forecaster", why)
        # a write past it goes in
        assert _write(path, "INSERT OR REPLACE INTO forecast_minute VALUES (?, 2.0)", (5000 + i,)) is None
        fault.written("forecaster")
        fault.look()
    said = [r.getMessage() for r in caplog.records if "storage.path" in r.getMessage()]
    assert len(said) == 1 and "is damaged" in said[0] and "restart" in said[0], "\n".join(said)
    assert fault.open
    # the stop line: the damage, not "taking them again ... not yet steadily"
    assert "damaged" in fault.fault() and "restart" in fault.fault(), fault.fault()
