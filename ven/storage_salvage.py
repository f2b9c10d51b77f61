"""A storage.path that SQLite calls damaged (a power cut, a failing card), met at the start: moved aside and a new
file made with every table of it that still reads whole."""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import time
from pathlib import Path

from .storage_connect import BUSY_TIMEOUT_SECONDS, StorageError, connect
from .storage_damage import damaged
from .storage_sidecars import move_with_sidecars

log = logging.getLogger("ven.storage")


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
        kept, lost = _salvage(real, making)
        move_with_sidecars(making, made)
    except (StorageError, OSError):     # cannot be written there: still moved aside (below), or said
        kept, lost = [], []
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
              "now on is kept; %s%s. To recover more, with the gateway stopped: sqlite3 %s .recover | sqlite3 "
              "recovered.sqlite", p, why, aside.name,
              f"table(s) {', '.join(kept)} read whole from it" if kept else "nothing could be read from it",
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


def _salvage(damaged: Path, path: Path) -> tuple[list[str], list[str]]:
    """Copy each table of `damaged` that reads whole into a new file at `path`: (tables copied, tables not)."""
    kept, lost = [], []
    conn = connect(path)
    try:
        conn.execute("ATTACH DATABASE ? AS damaged", (f"{damaged.resolve().as_uri()}?mode=ro",))
    except sqlite3.Error:
        conn.close()
        return kept, lost
    try:
        try:
            schema = conn.execute("SELECT name, sql FROM damaged.sqlite_master WHERE type = 'table' AND sql IS NOT NULL"
                                  " AND name NOT LIKE 'sqlite_%'").fetchall()
        except sqlite3.Error:
            schema = []
        for name, sql in schema:
            try:
                conn.execute("BEGIN")
                conn.execute(re.sub(r"^CREATE TABLE (IF NOT EXISTS )?", "CREATE TABLE IF NOT EXISTS main.", sql))
                conn.execute(f'DELETE FROM main."{name}"')
                conn.execute(f'INSERT INTO main."{name}" SELECT * FROM damaged."{name}"')
                conn.execute("COMMIT")
                kept.append(name)
            except sqlite3.Error:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                lost.append(name)
    finally:
        conn.execute("DETACH DATABASE damaged")
        conn.close()
    return kept, lost
