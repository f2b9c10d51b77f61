"""The gateway's connections following storage.path when the file there is no longer the one they opened (deleted,
replaced): the file at the path made a copy of the one they had."""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import sqlite3
import threading
import time
from pathlib import Path

from . import storage_connect
from .storage_connect import StorageError, connect
from .storage_overwritten import identity_and_size, note_size
from .storage_sidecars import file_identity, shared, unpair_sidecars

log = logging.getLogger("ven.storage")


def follow_file(conn: sqlite3.Connection, path: Path, ident: tuple[int, int] | None,
                table: str) -> tuple[sqlite3.Connection, tuple[int, int] | None]:
    """(connection, identity) of the file now at `path`.

    A connection keeps writing into its file after the file is deleted (an operator's clean-up) or
    replaced (a restore, a sync tool), and a restart would find none of it, or an older state: ADR-Opt-Out
    commands the BAS has since relinquished, telemetry the VTN has already taken. So when the file at
    `path` is no longer the one `conn` opened, the first of the gateway's connections to notice makes
    the file at the path a copy of the old one (every store's tables; directory and file created if
    missing, a file that is not SQLite moved aside), and each continues on a new connection. Raises
    sqlite3.Error or StorageError when that fails; the old connection is then still open and nothing
    is lost yet."""
    now, size = identity_and_size(path)
    if now == ident:
        note_size(conn, path, ident, size)
        return conn, ident
    if (shared(path, now) or {}).get("followed"):  # another connection of the gateway already copied the old file here
        fresh = connect(path, table)
        conn.close()
        return fresh, now
    aside = None
    # Where a symlinked storage.path points, not the link: made beside the link and renamed over it, the copy put the
    # file on the disk the link is in, not the data volume it names, and the run lock (beside the file a link names)
    # moved with it: a second `run`, forget-forecast or import-history no longer saw this gateway's
    real = Path(os.path.realpath(path))
    try:
        unpair_sidecars(real)   # before anything opens the file now there
        # a directory that cannot be made again (the volume gone read-only, or unmounted under it) is a write that
        # fails, as the docstring says, not an OSError out of every save
        real.parent.mkdir(parents=True, exist_ok=True)
        try:
            rows = _mirror_into(conn, real) if now is not None else _mirror_into_new_file(conn, real)
        except sqlite3.DatabaseError as err:
            if "not a database" not in str(err):
                raise
            aside = real.with_name(f"{real.name}.not-sqlite-{time.strftime('%Y%m%dT%H%M%S')}")
            os.replace(real, aside)
            rows = _mirror_into(conn, real)
    except OSError as err:
        raise StorageError(f"cannot make {path} again: {err.strerror or err}") from None
    fresh = connect(path, table)
    conn.close()
    ident = file_identity(path)
    if (copied := shared(path, ident)) is not None:
        copied["followed"] = True
    log.warning("storage.path %s was %s while the gateway had it open: made it a copy of the file the gateway "
                "had (%d row(s))%s; the gateway uses it from now on", path, "deleted" if now is None else "replaced",
                rows, f"; the file put there is not SQLite and was moved to {aside}" if aside else "")
    return fresh, ident


def _mirror_into_new_file(conn: sqlite3.Connection, path: Path) -> int:
    """_mirror_into a new file beside `path`, then renamed to it: copied in place, the file would be there, empty,
    from the ATTACH that makes it to the copy's commit, and the forecaster's store, which opens the file for
    each write, found no table in it (an ERROR line)."""
    part = path.with_name(f"{path.name}.copying-{os.getpid()}-{threading.get_ident()}")
    try:
        part.unlink(missing_ok=True)   # a copy a crash left half done
        rows = _mirror_into(conn, part)
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return rows


def remove_abandoned_copies(path: Path) -> None:
    """The copies `_mirror_into_new_file` left half made beside `path` when its gateway was killed in the
    middle (a SIGKILL, a power cut): as large as the file, and nothing else would ever remove them. One
    whose process still runs is being made; it is left alone."""
    real = Path(os.path.realpath(path))     # made beside the file a symlinked storage.path names
    for part in real.parent.glob(glob.escape(real.name) + ".copying-*"):
        pid = part.name[len(real.name) + len(".copying-"):].partition("-")[0]
        if not pid.isdigit() or _running(int(pid)):
            continue
        with contextlib.suppress(FileNotFoundError):
            size = part.stat().st_size
            part.unlink()
            log.info("storage.path %s: removed %s (%d bytes), a copy its gateway was stopped in the middle of",
                     path, part.name, size)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # another user's process
        return True
    return True


def _mirror_into(conn: sqlite3.Connection, path: Path) -> int:
    conn.execute("ATTACH DATABASE ? AS moved_to", (str(path),))
    try:
        # a new file there; an older copy keeps its own (read here: a test or bench sets it on storage_connect)
        conn.execute(f"PRAGMA moved_to.page_size={storage_connect.PAGE_SIZE}")
        schema = conn.execute("SELECT type, name, sql FROM main.sqlite_master WHERE sql IS NOT NULL"
                              " AND name NOT LIKE 'sqlite_%' ORDER BY type = 'index'").fetchall()
        copied = 0
        conn.execute("BEGIN")
        try:
            for kind, name, sql in schema:
                conn.execute(re.sub(r"^CREATE (UNIQUE )?(TABLE|INDEX) ",
                                    lambda m: f"CREATE {m[1] or ''}{m[2]} IF NOT EXISTS moved_to.", sql))
                if kind == "table":
                    conn.execute(f'DELETE FROM moved_to."{name}"')
                    copied += conn.execute(f'INSERT INTO moved_to."{name}" SELECT * FROM main."{name}"').rowcount
            conn.execute("COMMIT")
        except sqlite3.Error:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.execute("DETACH DATABASE moved_to")
    return copied
