"""A storage.path that SQLite calls damaged (a power cut, a failing card), met at the start: moved aside and a new
file made with every table of it that still reads whole."""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import threading
import time
from pathlib import Path

from .storage_connect import BUSY_TIMEOUT_SECONDS, StorageError, connect
from .storage_damage import damaged
from .storage_sidecars import live_files, move_with_sidecars

log = logging.getLogger("ven.storage")
# The files this process checked (real paths): one that opens only after the start is checked as its first store opens
_checked: set[str] = set()
_checked_lock = threading.Lock()


def check_late(path: str | Path) -> None:
    """A file that opens only after the start (its volume mounted later, a lock held past the start): the start's
    check, once, as a store is about to open it. It never had one: a file a power cut damaged was used as it was, and
    a torn page cost what lay behind it until the next restart set it aside. Not while this process has it open
    (moved aside then, the stores holding it would follow it to a copy)."""
    real = os.path.realpath(path)
    with _checked_lock:
        if real in _checked:
            return
        if live_files(real):
            _checked.add(real)
            return
        set_aside_if_damaged(path)


def set_aside_if_damaged(path: str | Path) -> Path | None:
    """At start, before any store opens it: a file at `path` SQLite calls damaged is moved aside
    (`<name>.damaged-<time>`, with its -wal and -shm) and a new one made with every table of it that can
    still be read whole (the events, the ADR-Opt-Out commands in kv, ...); returns where it went."""
    p = Path(path)
    _finish_salvage(p)
    if not p.is_file():
        return None
    try:
        # quick_check reads every page (tens of ms a MB on an SD card, once at start): a damaged page in the
        # telemetry backlog is found at its first read otherwise, and the rows behind it are never sent. Read
        # without the write lock connect() takes: another process holding it at the start (a backup, an operator's
        # sqlite3) made this "database is locked", and the damaged file was used, and written, for the whole run
        with contextlib.closing(sqlite3.connect(str(p), timeout=BUSY_TIMEOUT_SECONDS)) as conn:
            why = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
    except sqlite3.DatabaseError as err:
        if not damaged(str(err)):
            return None     # locked, unreadable: the stores say why
        why = str(err)
    _checked.add(os.path.realpath(p))
    if why == "ok":
        return None
    why = "; ".join(line for line in why.splitlines() if line and not line.startswith("***"))
    real = p.resolve()      # a symlink's file, not the link: the run lock and the -wal are the file's
    aside = real.with_name(f"{real.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
    # The new file is made beside it and put in place whole: made in place table by table, a crash in the middle
    # (the power flickering as the box boots after the cut that damaged the file) would leave a file that reads
    # whole, which the next start takes as it is, the tables not yet copied lost with no line saying so
    making, made = _salvage_names(real)
    try:
        kept, lost, part = _salvage(real, making)
        move_with_sidecars(making, made)
    except (StorageError, OSError):     # cannot be written there: still moved aside (below), or said
        kept, lost, part = [], [], {}
        _remove_salvage(making)
    try:
        move_with_sidecars(real, aside)
    except OSError as err:
        # a directory the gateway's user may not write: left as it is, tried every storage.retry_seconds
        _remove_salvage(made)
        log.error("storage.path %s is damaged (%s) and cannot be moved aside: %s; the gateway keeps what it takes "
                  "in memory. Stop it, move the file away (sqlite3 %s .recover | sqlite3 recovered.sqlite gets "
                  "what it can out of it) and start it again", p, why, err.strerror or err, p.name)
        return None
    move_with_sidecars(made, real)      # none made: the stores make a new file
    log.error("storage.path %s is damaged (%s): moved to %s and a new file made, so what the gateway takes from "
              "now on is kept; %s%s%s. To recover more, with the gateway stopped: sqlite3 %s .recover | sqlite3 "
              "recovered.sqlite", p, why, aside.name,
              f"table(s) {', '.join(kept)} read whole from it" if kept else
              "nothing could be read whole from it" if not part else "no table read whole from it",
              "".join(f"; {rows} row(s) of {name} read around its damaged pages (theirs lost)"
                      for name, rows in part.items()),
              f"; not {', '.join(lost)}" if lost else "", aside.name)
    return aside


def _salvage_names(real: Path) -> tuple[Path, Path]:
    """Where the file made from a damaged one is made, and where it waits, whole, to be put in its place."""
    return real.with_name(real.name + ".salvaging"), real.with_name(real.name + ".salvaged")


def _remove_salvage(part: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        # a read-only mount answers EROFS to removing what is not there
        with contextlib.suppress(OSError):
            if os.path.lexists(f"{part}{suffix}"):
                os.unlink(f"{part}{suffix}")


def _finish_salvage(p: Path) -> None:
    """What a start killed while it set a damaged file aside left: a file made half is removed (the damaged one is
    still in place, and is saved again); one made whole whose damaged file went aside is put in its place."""
    real = p.resolve()
    making, made = _salvage_names(real)
    _remove_salvage(making)
    if not made.exists():
        return
    if real.exists():   # killed before the damaged file went aside: it is found and saved again
        _remove_salvage(made)
        return
    aside = _newest_aside(real) or real.with_name(f"{real.name}.damaged")
    # the damaged file's -wal and -shm, if the stop came before they followed it: never replayed into the new file,
    # and beside the damaged one, where `sqlite3 ... .recover` replays them
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{real}{suffix}", f"{aside}{suffix}")
    move_with_sidecars(made, real)
    log.error("storage.path %s: the file made from a damaged one (its start was stopped in the middle) put in "
              "place; the damaged file is beside it as %s", p, aside.name)


def _newest_aside(real: Path) -> Path | None:
    """The damaged file set aside last: <name>.damaged-<time>, whose times sort as they run."""
    prefix = f"{real.name}.damaged-"
    names = [n for n in os.listdir(real.parent) if n.startswith(prefix) and not n.endswith(("-wal", "-shm"))]
    return real.with_name(max(names)) if names else None


def _salvage(damaged: Path, path: Path) -> tuple[list[str], list[str], dict[str, int]]:
    """Copy each table of `damaged` into a new file at `path`: (tables copied whole, tables not, {table: rows copied}
    of those copied in part)."""
    kept, lost, part = [], [], {}
    conn = connect(path)
    try:
        conn.execute("ATTACH DATABASE ? AS damaged", (f"{damaged.resolve().as_uri()}?mode=ro",))
    except sqlite3.Error:
        conn.close()
        return kept, lost, part
    try:
        try:
            schema = conn.execute("SELECT name, sql FROM damaged.sqlite_master WHERE type = 'table' AND sql IS NOT NULL"
                                  " AND name NOT LIKE 'sqlite_%'").fetchall()
        except sqlite3.Error:
            schema = []
        for name, sql in schema:
            create = re.sub(r"^CREATE TABLE (IF NOT EXISTS )?", "CREATE TABLE IF NOT EXISTS main.", sql)
            try:
                conn.execute("BEGIN")
                conn.execute(create)
                conn.execute(f'DELETE FROM main."{name}"')
                conn.execute(f'INSERT INTO main."{name}" SELECT * FROM damaged."{name}"')
                conn.execute("COMMIT")
                kept.append(name)
                continue
            except sqlite3.Error:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            # a torn page of the table itself: the rows on its other pages still read, by their rowids (the telemetry
            # backlog, weeks of forecaster history were lost whole for one page). Each statement its own transaction:
            # one that meets the damage inside an open one left the connection failing every statement after it
            try:
                conn.execute(create)
                rows = copy_readable_rows(conn, name)
            except sqlite3.Error:
                rows = 0
            if rows:
                part[name] = rows
            else:
                lost.append(name)
    finally:
        conn.execute("DETACH DATABASE damaged")
        conn.close()
    return kept, lost, part


MAX_ROWID = 2 ** 63 - 1


def copy_readable_rows(conn: sqlite3.Connection, name: str) -> int:
    """Copy the rows of table `name` of the attached file `damaged` that still read, around its damaged pages, into
    main; how many. The rowid b-tree's inner pages lead past a torn leaf: a read in rowid order stops at it, and the
    first rowid whose seek reads again (found by doubling, then halving, the step) is where the next readable run of
    rows begins. A table without rowids gets nothing."""
    copied, start = 0, -MAX_ROWID - 1
    while start is not None:
        first = last = before = None
        stopped = False
        try:
            # every column read: a page read back as zeros fails there
            for row in conn.execute(f'SELECT rowid, * FROM damaged."{name}" WHERE rowid >= ? ORDER BY rowid',
                                    (start,)):
                if last is not None and row[0] <= last:
                    # out of order: the cells of a page whose header was left, their pointers torn, read as rows of one
                    # garbage rowid (a copy of the range up to them stopped there, without an error). Read twice, the
                    # row before was its first
                    stopped = True
                    if row[0] == last:
                        last = before
                        first = None if last is None else first
                    break
                first = row[0] if first is None else first
                before, last = last, row[0]
        except sqlite3.DatabaseError:
            stopped = failed = True
        else:
            failed = False
        if last is not None:
            copied += _copy_range(conn, name, first, last)
        if failed:
            # Python's cursor steps a row ahead of the one it gives: the last row before the torn page was read, then
            # lost with the error of the read past it (a reading that never reached the VTN, lost by the restart)
            after = _row_from(conn, name, start if last is None else last + 1)
            if after is not None and _copy_row(conn, name, after):
                copied += 1
                last = after
        if not stopped or (last is not None and last >= MAX_ROWID):
            return copied
        start = _next_readable(conn, name, start if last is None else last + 1)
    return copied


def _reads_from(conn: sqlite3.Connection, name: str, rowid: int) -> bool:
    try:
        conn.execute(f'SELECT * FROM damaged."{name}" WHERE rowid >= ? ORDER BY rowid LIMIT 1', (rowid,)).fetchall()
    except sqlite3.DatabaseError:
        return False
    return True


def _row_from(conn: sqlite3.Connection, name: str, rowid: int) -> int | None:
    """The first rowid from `rowid` on, if its seek reads (LIMIT 1: the read stops at it, not past it)."""
    try:
        row = conn.execute(f'SELECT rowid FROM damaged."{name}" WHERE rowid >= ? ORDER BY rowid LIMIT 1',
                           (rowid,)).fetchone()
    except sqlite3.DatabaseError:
        return None
    return None if row is None else row[0]


def _copy_row(conn: sqlite3.Connection, name: str, rowid: int) -> bool:
    """Copy one row by its rowid: a lookup, which reads no page past it as a range's copy does."""
    try:
        return conn.execute(f'INSERT INTO main."{name}" SELECT * FROM damaged."{name}" WHERE rowid = ?',
                            (rowid,)).rowcount == 1
    except sqlite3.DatabaseError:
        return False


def _next_readable(conn: sqlite3.Connection, name: str, failing: int) -> int | None:
    """The first rowid past `failing`, whose seek meets a damaged page, from which a read in rowid order goes again."""
    step = 1
    while not _reads_from(conn, name, min(MAX_ROWID, failing + step)):
        if failing + step >= MAX_ROWID:
            return None
        step *= 2
    bad, good = failing, min(MAX_ROWID, failing + step)
    while good - bad > 1:
        mid = (bad + good) // 2
        bad, good = (bad, mid) if _reads_from(conn, name, mid) else (mid, good)
    return good


def _copy_range(conn: sqlite3.Connection, name: str, first: int, last: int) -> int:
    """Copy the rows of rowids first..last (read in order before): halved around a row that does not read whole (a
    torn overflow page of a long value)."""
    before = conn.total_changes     # a cursor's rowcount counted the first of these statements only
    try:
        conn.execute(f'INSERT INTO main."{name}" SELECT * FROM damaged."{name}" WHERE rowid BETWEEN ? AND ?',
                     (first, last))
        return conn.total_changes - before
    except sqlite3.DatabaseError:
        if first == last:
            return 0
        mid = (first + last) // 2
        return _copy_range(conn, name, first, mid) + _copy_range(conn, name, mid + 1, last)
