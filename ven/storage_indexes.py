"""storage.path's indexes checked against their tables once after the start, and one found wrong rebuilt.

The start's PRAGMA quick_check (ven/storage_salvage.set_aside_if_damaged) reads every page but does not compare an
index with its table: an index page whose keys changed while its layout stayed valid (a bit flipped on a card, a
write torn within a page) passed it, and the queries that go by that index (the forecasts /api/history reads by
target time, the telemetry queue's bound by age) returned wrong or missing rows for the whole run, with no line
saying why. PRAGMA integrity_check compares them, at 3.5 to 7 times quick_check's cost (bench/storage_checks.py, a
35-day file of 19 MB on the slow VM: 0.6-1.2 s against 0.1-0.25 s from the page cache, up to 2.7 s from the disk):
too long to add to each start before the BACnet device is up, so it runs once after it, in a thread. An index it
finds wrong is rebuilt from its table (REINDEX), which loses no row. Damage to an index's page layout fails
quick_check at the start already, which sets the file aside with every table read whole (REINDEX cannot clear such a
page).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

# integrity_check's words for an index that does not match its table: REINDEX rebuilds it from the table
_INDEX_WRONG = re.compile(r"^(?:row \d+ missing from index|wrong # of entries in index|non-unique entry in "
                          r"(?:UNIQUE )?index) (\S+)$")
BUSY_TIMEOUT_SECONDS = 5.0   # off the event loop: the stores' own writes hold the lock for milliseconds
SAID_LINES = 3  # integrity_check's lines the log line quotes
CHECK_LINES = 100   # integrity_check's lines a round reads
ROUNDS = 5
# How often a stop interrupts the check again: SQLite drops an interrupt made while none of the connection's statements
# runs (it clears it as the next one starts), and the check runs one after another
INTERRUPT_AGAIN_SECONDS = 0.05


def check_indexes(path: str | Path, conn: sqlite3.Connection | None = None,
                  stopping: Callable[[], bool] = lambda: False) -> list[str]:
    """Compare every index of the file at `path` with its table (on `conn`, if given: IndexCheck interrupts it at a
    stop), rebuild those that differ, and say so in one line; returns the indexes rebuilt. Asks `stopping` before each
    statement, and starts none once it says so."""
    own = conn is None
    conn = conn or _connect(path)
    try:
        rebuilt: list[str] = []
        first: str | None = None    # what the first check said, for the line
        # integrity_check stops at 100 lines, which one damaged page of an index can fill: checked again after each
        # rebuild, until it says no more (a few rounds at most: each rebuilds every index it named)
        for _ in range(ROUNDS):
            if stopping():
                break
            found = [row[0] for row in conn.execute(f"PRAGMA integrity_check({CHECK_LINES})")]
            if found == ["ok"]:
                break
            wrong = sorted({m[1] for line in found if (m := _INDEX_WRONG.match(line))} - set(rebuilt))
            more = len(found) - SAID_LINES
            quoted = "; ".join(found[:SAID_LINES]) + (f"; {more} more" if more > 0 else "")
            first = first or quoted
            if not wrong or any(not _INDEX_WRONG.match(line) for line in found):
                # not (only) an index: a table's page, a NOT NULL or CHECK broken, which the start's quick_check
                # passed and nothing here can rebuild
                log.warning("storage.path %s: PRAGMA integrity_check after the start found damage the gateway cannot "
                            "repair (%s)%s: it runs on; to keep what can be read, with the gateway stopped: sqlite3 %s "
                            ".recover | sqlite3 recovered.sqlite, and put that in its place", path, quoted,
                            f"; index(es) {', '.join(rebuilt)} rebuilt from their tables" if rebuilt else "", path)
                return rebuilt
            if stopping():
                break
            try:
                for name in wrong:
                    conn.execute(f'REINDEX "{name}"')
            except sqlite3.Error as err:
                if isinstance(err, sqlite3.OperationalError) and "interrupt" in str(err):
                    raise
                log.warning("storage.path %s: index(es) %s do not match their tables (%s) and could not be rebuilt "
                            "(%s): queries by them may return wrong rows; with the gateway stopped: sqlite3 %s REINDEX",
                            path, ", ".join(wrong), quoted, err, path)
                return rebuilt
            rebuilt += wrong
        if rebuilt:
            log.warning("storage.path %s: index(es) %s did not match their tables (%s): rebuilt from the tables, no "
                        "row lost (queries by them returned wrong or missing rows until now)", path,
                        ", ".join(rebuilt), first)
        return rebuilt
    finally:
        if own:
            conn.close()


def _connect(path: str | Path) -> sqlite3.Connection:
    # mode=rw: a file deleted meanwhile is not made here, empty (the stores make it again, with their rows)
    return sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_SECONDS,
                           isolation_level=None, check_same_thread=False)


class IndexCheck:
    """check_indexes once, in a thread, from the gateway's start; its stop interrupts it."""

    def __init__(self, path: str | Path):
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False

    async def start(self) -> None:
        self._task = asyncio.create_task(asyncio.to_thread(self._run), name="storage-index-check")

    def _run(self) -> None:
        try:
            self._conn = _connect(self.path)
        except sqlite3.Error:
            return      # the stores say why the file will not open
        try:
            check_indexes(self.path, self._conn, lambda: self._stopping)
        except sqlite3.Error as err:
            if "interrupt" not in str(err):     # the stop's
                log.warning("storage.path %s: the check of its indexes failed (%s); the gateway runs on", self.path,
                            err)
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()

    async def stop(self) -> None:
        self._stopping = True
        if self._task is None:
            return
        # an interrupt made between two of the check's statements is dropped: made again until the thread ends (the
        # check asks _stopping before each statement, so one that starts after the flag is set never runs)
        while not self._task.done():
            if (conn := self._conn) is not None:
                with contextlib.suppress(sqlite3.Error):    # closed already: its thread is ending
                    conn.interrupt()
            await asyncio.wait({self._task}, timeout=INTERRUPT_AGAIN_SECONDS)
        with contextlib.suppress(Exception):
            await self._task
