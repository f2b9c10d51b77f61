"""The gateway's SQLite file (`storage.path`): demand-response events and a small key/value table
(state a restart must not forget, such as the BAS's commands on ADR-Opt-Out).

One file, WAL mode, one connection per user: other parts of the gateway (telemetry queue, forecaster
history) open their own connections and tables in the same file with `connect(path)`.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import glob
import logging
import os
import re
import sqlite3
import stat
import threading
import time
import weakref
from pathlib import Path
from typing import Callable

from .events import Event

log = logging.getLogger(__name__)

# How often a file that could not be opened at start is tried again (a fixed mount, fixed permissions).
REOPEN_SECONDS = 10.0
# How long a write waits for a lock another process holds (a backup, an sqlite3 shell). Most of these
# connections' writes run on the event loop (an ADR-Opt-Out's batch of events does not): BACnet waits
# as long as they do. A write that gives up is kept in memory and tried again; the gateway's own
# connections hold the lock for milliseconds.
BUSY_TIMEOUT_SECONDS = 0.5
LOCK_GRACE_SECONDS = 5.0  # a write lock held by another writer this long is reported as a fault
LOCK_RETRY_SECONDS = 1.0  # how often a file locked by another writer is tried while the grace lasts
# The WAL file keeps the size of the largest transaction it ever held (a week of telemetry moved from
# memory in one go is tens of MB) until every connection closes, which the gateway's never do while
# it runs: after a checkpoint it is cut back to this.
WAL_SIZE_LIMIT = 4 * 1024 * 1024
# Storage is often an SD card or eMMC, which small writes wear, and a WAL commit writes whole pages:
# most commits here change a row or two (a meter sample dirties 3 pages), so 1 KB pages write a quarter
# of the bytes of SQLite's default 4 KB (33.5 instead of 118.7 MB a day, bench/storage_writes.py). Only
# a file created here gets it: an existing one keeps its page size (WAL mode changes it only by
# rewriting the file, journal_mode=DELETE and VACUUM).
PAGE_SIZE = 1024


# The layout of storage.path this version writes. A later version that changes it raises the number, and
# this one, run on its file (a downgrade), says so once instead of silently dropping what it cannot read
# when it saves. Files from before the number existed are taken as this layout.
FORMAT_VERSION = 1
_newer_format_said: set[str] = set()


class StorageError(Exception):
    """The database file cannot be created, opened or written; the text says which and why."""


def _not_for_others(p: Path) -> None:
    """An existing file (an earlier version made it 0644) for its owner and group only: SQLite makes the -wal and -shm
    with the file's own mode."""
    for part in (p, p.with_name(p.name + "-wal"), p.with_name(p.name + "-shm")):
        try:
            mode = stat.S_IMODE(part.stat().st_mode)
            if mode & 0o027 and part.stat().st_uid == os.geteuid():
                os.chmod(part, mode & ~0o027)
        except OSError:     # not there, or not ours to change: SQLite says what it cannot do
            pass


def connect(path: str | Path, table: str = "") -> sqlite3.Connection:
    """A connection to the file, with the kv table and `table` (its CREATE statement) in place."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StorageError(f"storage.path {p}: cannot create directory {p.parent}: {err.strerror}") from None
    conn = None
    _not_for_others(p)
    unpair_sidecars(p)
    try:
        conn = sqlite3.connect(str(p), timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False,
                               factory=_Tracked)
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")   # before WAL mode writes the file's header
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        # Probe a write now so an unwritable file fails at start-up, not mid-event.
        conn.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        _note_opened(conn)
        _check_format(conn, p)
        if table:
            conn.execute(table)
    except sqlite3.Error as err:
        if conn is not None:
            conn.close()
        raise StorageError(f"storage.path {p}: cannot open SQLite database for writing: {err}"
                           f"{_os_reason(p)}") from None
    _note_sidecars(conn, p)
    return conn


class _Tracked(sqlite3.Connection):
    """A connection that says whether it is still open: while it is, the -wal and -shm it opened cannot be freed,
    so a file found under their names with their (device, inode) is theirs (unpair_sidecars)."""
    is_open = True

    def close(self) -> None:
        self.is_open = False
        super().close()


# By real path: the connections connect() made, each with its file's (device, inode) and its -wal's and -shm's
_sidecars: dict[str, list[tuple[weakref.ref, tuple[int, int] | None, dict[str, tuple[int, int] | None]]]] = {}
_sidecars_lock = threading.Lock()


def _note_sidecars(conn: sqlite3.Connection, p: Path) -> None:
    real = os.path.realpath(p)
    entry = (weakref.ref(conn), file_identity(real), {s: file_identity(real + s) for s in ("-wal", "-shm")})
    with _sidecars_lock:
        _sidecars.setdefault(real, []).append(entry)


def _live_files(real: str) -> list[tuple[int, int] | None]:
    with _sidecars_lock:
        return [ident for ref, ident, _ in _sidecars.get(real, ()) if (c := ref()) is not None and c.is_open]


def not_copied_yet(path: str | os.PathLike) -> bool:
    """Whether the gateway's connections are all to a file that is no longer the one at `path` (deleted, replaced):
    the first of its stores to write copies that file there (follow_file), table by table over what the file there
    holds, and a write into it before then (the forecaster's, which opens the file each time) would be lost."""
    real = os.path.realpath(path)
    live = _live_files(real)
    return bool(live) and file_identity(real) not in live


def unpair_sidecars(path: str | os.PathLike) -> None:
    """Remove the -wal and -shm beside `path` that belong to a file the gateway still has open but that is no longer
    the one at `path` (deleted, or replaced with `mv backup.sqlite gw.sqlite`, its -wal and -shm left in place). SQLite
    pairs a file with the -wal and -shm of its name: the next connection to the file put there (the gateway's copy
    of its own, the forecaster's next write, an operator's sqlite3) read the old file's pages from that -wal as its
    own, wrote its own into it, and the file ended "database disk image is malformed". The gateway's connections to
    the old file keep theirs open, and SQLite does not checkpoint nor remove them at close once its file has moved.
    Call before opening the file at `path`."""
    real = os.path.realpath(path)
    with _sidecars_lock:
        entries = _sidecars.get(real)
        if not entries:
            return
        now = file_identity(real)
        kept = []
        for ref, ident, sides in entries:
            conn = ref()
            if conn is None or not conn.is_open:    # its -wal's and -shm's inodes may be another file's now
                continue
            kept.append((ref, ident, sides))
            if ident == now:
                continue
            for suffix, was in sides.items():
                if was is not None and file_identity(real + suffix) == was:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(real + suffix)
        _sidecars[real] = kept


# kv values an earlier version run on the file leaves stale, as it does not keep them: the level the log last said
# (ven.level_log.LEVEL_SAID) read, after a rollback and the upgrade again, as the level the gateway stopped at,
# though that version ran on and said its own changes. Kept by 0.4.2 too, which writes no opened_at_here: a key added
# here later needs a copy of its own (opened_at_here is this one's and any later version's)
_KEPT_BY_THIS_VERSION = ("event_level_said",)


def _note_opened(conn: sqlite3.Connection) -> None:
    """`opened_at`, which every version writes at each open, and its copy, which only this one does: they differ
    when another version opened the file since, and the values it left stale are dropped."""
    conn.execute("BEGIN IMMEDIATE")     # another store of this run opening the file at once sees both or neither
    try:
        # (rowid: kv's rows are written INSERT OR REPLACE, each write a row after every other, by every version)
        seen = {key: (value, rowid) for rowid, key, value in conn.execute(
            "SELECT rowid, key, value FROM kv WHERE key IN ('opened_at', 'opened_at_here')")}
        opened, here = seen.get("opened_at"), seen.get("opened_at_here")
        if opened and (here or (None,))[0] != opened[0]:
            stale = _KEPT_BY_THIS_VERSION
            if here is None:
                # no copy: 0.4.2 opened it last, or an earlier version did after it. 0.4.2 keeps these keys too, each
                # written after its run's opens: dropping them there lost the first start's "while the gateway was
                # stopped" line of every upgrade from 0.4.2
                stale = tuple(k for k, in conn.execute(
                    f"SELECT key FROM kv WHERE key IN ({','.join('?' * len(stale))}) AND rowid < ?",
                    (*stale, opened[1])))
            if stale:
                conn.execute(f"DELETE FROM kv WHERE key IN ({','.join('?' * len(stale))})", stale)
        conn.execute("INSERT OR REPLACE INTO kv (key, value) VALUES ('opened_at', datetime('now'))")
        conn.execute("INSERT OR REPLACE INTO kv (key, value) SELECT 'opened_at_here', value FROM kv "
                     "WHERE key = 'opened_at'")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


# What SQLite says of a file a power cut or a failing card damaged (or that was never SQLite). Unlike a lock, a
# full disk or a read-only mount, it never passes: trying it again every storage.retry_seconds kept everything
# the gateway took in memory only, for good, and a restart lost it.
# "malformed database schema": a torn page of the schema table; every statement fails on it, the file then refused
# each write of the run while it was taken for a passing fault (met by bench/storage_locks.py after an mv over it)
DAMAGED = ("file is not a database", "database disk image is malformed", "malformed database schema")


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
        if not any(d in str(err) for d in DAMAGED):
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


def move_with_sidecars(path: Path, to: Path) -> None:
    """Rename an SQLite file with its -wal and -shm (those there are), at start, before anything opens it."""
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}{suffix}", f"{to}{suffix}")


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


def _check_format(conn: sqlite3.Connection, path: Path) -> None:
    row = conn.execute("SELECT value FROM kv WHERE key = 'format_version'").fetchone()
    try:
        found = int(row[0]) if row else None
    except ValueError:
        found = None
    if found is not None and found > FORMAT_VERSION:
        if str(path) not in _newer_format_said:
            _newer_format_said.add(str(path))
            log.warning("storage.path %s was written by a newer edge-gateway (file format %d, this version writes "
                        "%d): what this version does not know may be dropped when it saves; run the newer version, "
                        "or keep a copy of the file", path, found, FORMAT_VERSION)
        return
    if found != FORMAT_VERSION:
        conn.execute("INSERT OR REPLACE INTO kv (key, value) VALUES ('format_version', ?)", (str(FORMAT_VERSION),))


def file_identity(path: str | Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`; None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


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
    now, size = _identity_and_size(path)
    if now == ident:
        _note_size(conn, path, ident, size)
        return conn, ident
    if (str(path), now) in _followed:  # another connection of the gateway already copied the old file here
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
    _followed.add((str(path), ident))
    log.warning("storage.path %s was %s while the gateway had it open: made it a copy of the file the gateway "
                "had (%d row(s))%s; the gateway uses it from now on", path, "deleted" if now is None else "replaced",
                rows, f"; the file put there is not SQLite and was moved to {aside}" if aside else "")
    return fresh, ident


_followed: set[tuple[str, tuple[int, int] | None]] = set()  # (path, identity) this process has copied into

# The size each file the gateway writes was last seen at, by (path, identity): one that changes past the pages the
# gateway has in it was written over in place, `cp other.sqlite gw.sqlite` while the gateway runs, which keeps the
# file's inode, so follow_file's identity cannot tell it from the gateway's own file (_note_size)
_sizes: dict[tuple[str, tuple[int, int] | None], int] = {}


def _identity_and_size(path: str | Path) -> tuple[tuple[int, int] | None, int]:
    try:
        st = os.stat(path)
    except OSError:
        return None, 0
    return (st.st_dev, st.st_ino), st.st_size


def _note_size(conn: sqlite3.Connection, path: Path, ident: tuple[int, int] | None, size: int) -> None:
    """Say once, as an ERROR, that the file at `path` was written over in place. Nothing here can undo it: its old
    pages are gone from the disk, and the gateway's connections pair its own -wal (its last writes) with the pages
    put there, as one file (SQLite has no way to tell), which damages it at the next checkpoint (measured: `cp` of an
    older copy of the file, or of another gateway's, then 3,000 more telemetry readings: "database disk image is
    malformed", every row of the queue unreadable). Said, the operator can put the file there again with the gateway
    stopped; else the next start checks the file and keeps what reads whole (set_aside_if_damaged). Seen when the
    file grew past the pages `conn` sees (a checkpoint writes none past them), or shrank below them: a VACUUM another
    process ran shrinks what `conn` sees first, and the file at its checkpoint. One put there whose size falls
    between the two is not seen."""
    key = (str(path), ident)
    before = _sizes.get(key, 0)
    if size == before or key in _overwritten_said:     # most writes: the size has not changed since the last
        return
    _sizes[key] = size
    try:
        pages = conn.execute("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()").fetchone()[0]
    except sqlite3.Error:   # the write that follows says what is wrong
        return
    if before < size <= pages or pages <= size < before:
        return
    sizes = (f"{size} bytes, more than the {pages} the gateway has in it" if size > before else
             f"{size} bytes, down from {before}, fewer than the {pages} the gateway has in it")
    _overwritten_said.add(key)
    log.error("storage.path %s was written over in place while the gateway had it open (%s: a `cp` onto it, a "
              "restore into it): SQLite cannot see that, and the gateway's writes, in its -wal, land among the pages "
              "put there and damage them; what the file held before is gone from the disk. To use the file put "
              "there, stop the gateway and copy it in again (its source is whole) before starting it; else the next "
              "start checks the file and, if damaged, moves it aside and keeps every table that reads whole", path,
              sizes)


_overwritten_said: set[tuple[str, tuple[int, int] | None]] = set()


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


def _remove_abandoned_copies(path: Path) -> None:
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
        conn.execute(f"PRAGMA moved_to.page_size={PAGE_SIZE}")  # a new file there; an older copy keeps its own
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


def locked(why: str | None) -> bool:
    """Whether `why` (SQLite's words) is another process holding the file's write lock: a backup, an sqlite3 shell.
    It passes, and nothing is lost meanwhile: what waits in memory goes to the file once it lets go."""
    return why is not None and "locked" in why


class LockGrace:
    """A write lock held by another writer (the gateway's own forecaster saving its model on a slow
    card, a backup) is waited out for `seconds` before it counts as a fault: what could not be written
    waits in memory meanwhile and goes with the next write."""

    def __init__(self, seconds: float = LOCK_GRACE_SECONDS):
        self.seconds = seconds
        self._since: float | None = None

    def excuses(self, err: Exception | str) -> bool:
        if not locked(str(err)):
            return False
        now = time.monotonic()
        self._since = self._since or now
        return now - self._since < self.seconds

    def clear(self) -> None:
        self._since = None


class ReopenTimer:
    """Paces the attempts to open a file that would not open: at most one per `seconds`."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._next = time.monotonic() + seconds

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.seconds
        return True

    def expire(self) -> None:
        """Make the next due() true at once: a stop's last try does not wait for the pace."""
        self._next = 0.0


def open_or_retry_later(open_file: Callable[[], None], reopen_seconds: float | None,
                        meanwhile: str, say: bool = True) -> tuple[ReopenTimer | None, str | None]:
    """Call `open_file`; when the file will not open, StorageError without `reopen_seconds`, else
    one ERROR saying what happens `meanwhile` (unless not `say`: the caller reports it) and (the timer that
    paces retries, the reason). A write lock another process holds (a backup, an sqlite3 shell at the start) is not
    said here: the caller waits it out for its LockGrace, trying every second, and says it only if it outlasts that."""
    try:
        open_file()
    except StorageError as err:
        if reopen_seconds is None:
            raise
        if locked(str(err)):
            return ReopenTimer(min(LOCK_RETRY_SECONDS, reopen_seconds)), str(err)
        if say:
            log.error("%s; %s (tried every %g s); a restart before then loses them", err, meanwhile, reopen_seconds)
        return ReopenTimer(reopen_seconds), str(err)
    return None, None


def _os_reason(p: Path) -> str:
    """SQLite says "unable to open database file" or "disk I/O error"; the OS knows why. Asked without opening the
    file: closing any descriptor of it drops every lock SQLite holds on it in this process, and a connection closing
    next took itself for the last, checkpointed and removed the WAL the others still wrote in (a damaged file: one
    store's open failing, "database is locked", beside another's open connection, as at a late first open)."""
    if p == Path(":memory:"):
        return ""
    if why := fs_reason(p):
        return why
    asked = p if p.exists() else p.parent     # a file not there yet is made in its directory
    if not asked.exists():
        return f" ({os.strerror(errno.ENOENT)})"
    return "" if os.access(asked, os.R_OK | os.W_OK) else f" ({os.strerror(errno.EACCES)})"


# Under this much free space a write fails before the disk is quite full: SQLite grows the WAL a page at a time
FULL_BYTES = 2**20


def fs_reason(p: str | os.PathLike) -> str:
    """Why the file system holding `p` refuses writes, as the OS words it (" (Read-only file system)"), or "":
    SQLite's own words ("disk I/O error" for a card the kernel made read-only) leave it out. Asked without
    writing, as each retry asks: a probe file written each time wore the card and could be left behind."""
    if Path(p) == Path(":memory:"):
        return ""
    try:
        fs = os.statvfs(Path(p).parent)
    except OSError as err:
        return f" ({err.strerror})"
    root = os.geteuid() == 0     # root may use the blocks and inodes ext4 reserves
    if fs.f_flag & os.ST_RDONLY:
        return f" ({os.strerror(errno.EROFS)})"
    # ext4 read-only after an error (errors=remount-ro) refuses a write open without the mount's flag. Opened: the
    # -wal, never the file itself (_os_reason says why); SQLite locks the -shm and the file, not the -wal
    try:
        os.close(os.open(f"{os.path.realpath(p)}-wal", os.O_WRONLY | os.O_CLOEXEC))
    except FileNotFoundError:
        pass
    except OSError as err:
        return f" ({err.strerror})"
    if (fs.f_bfree if root else fs.f_bavail) * fs.f_frsize < FULL_BYTES:
        return f" ({os.strerror(errno.ENOSPC)})"
    if fs.f_files and not (fs.f_ffree if root else fs.f_favail):
        return f" ({os.strerror(errno.ENOSPC)}: no inodes left)"
    return ""


def with_fs_reason(text: str, p: str | os.PathLike) -> str:
    """`text` (SQLite's words) and the file system's reason, unless it says it already: a retry's error carries
    the last one's."""
    reason = fs_reason(p)
    return text if reason.strip() in text else f"{text}{reason}"


def _read_snapshot(path: Path, say: bool = True) -> tuple[list[Event], dict[str, str]]:
    """Events and kv values of a file that cannot be opened for writing, read-only; none if unreadable. `say`: in
    a line of its own."""
    for mode in ("mode=ro", "immutable=1"):  # immutable: no -shm can be made beside it, WAL unread
        try:
            with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True,
                                                    timeout=BUSY_TIMEOUT_SECONDS)) as db:
                events = _readable_events(db.execute("SELECT event_id, body FROM adr_events").fetchall(), path)
                values = dict(db.execute("SELECT key, value FROM kv"))
        except sqlite3.Error:
            continue
        if (events or values) and say:
            log.info("storage.path %s: read %d event(s) and the saved state from it, read-only", path, len(events))
        return events, values
    return [], {}


# Events already said to be unreadable, by (file, event id): the file is read again at each late open.
_unreadable_said: set[tuple[str, str]] = set()


def _readable_events(rows, path: Path) -> list[Event]:
    """The events of (event_id, body) rows this version can read. A row it cannot (a newer version's, after a
    downgrade; one edited by hand) crashed every start, and the BAS lost the device with it: it is left in the
    file as it is, never run or rewritten here, and named once in a WARNING."""
    events, unreadable = [], []
    for event_id, body in rows:
        try:
            events.append(Event.from_json(body))
        # OverflowError: a number past what a timedelta or int holds (1e400, a duration of 10^20 s); RecursionError:
        # JSON nested deeper than the parser goes
        except (ValueError, KeyError, TypeError, AttributeError, IndexError, OverflowError, RecursionError) as err:
            if (str(path), str(event_id)) not in _unreadable_said:
                _unreadable_said.add((str(path), str(event_id)))
                unreadable.append((str(event_id), err))
    if unreadable:
        event_id, err = unreadable[0]
        log.warning("storage.path %s: %d stored event(s) this version cannot read (%s; %s: %s), perhaps written by "
                    "a newer edge-gateway: not run here, and left in the file as they are for the version that wrote "
                    "them", path, len(unreadable), ", ".join(i for i, _ in unreadable), type(err).__name__, err)
    return events


def _run_before(path: Path) -> bool:
    """Whether a gateway ran on the file at `path`: there, not empty, and holding this module's kv table (or not
    readable enough to tell, which an earlier run's file may well be)."""
    try:
        if path.stat().st_size == 0:
            return False
    except OSError:
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=1)) as db:
            return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'kv'").fetchone() is not None
    except sqlite3.Error:
        return True


EVENTS_TABLE = ("CREATE TABLE IF NOT EXISTS adr_events ("
                " event_id TEXT PRIMARY KEY, body TEXT NOT NULL, end_utc TEXT NOT NULL)")


def _release(waiters: list[asyncio.Future]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)


class Storage:
    """Demand-response events and small values, which must survive a SIGKILL.

    A write that fails (disk full, file system gone read-only) does not stop the schedule: the change
    is kept here and written with the next write that succeeds (or `flush()`); the error is logged
    once when it starts and once when writes succeed again.

    With `reopen_seconds`, a file that cannot be opened at all is not an error either: events are kept
    here, the file is tried again at most that often from `flush()`, and once it opens they are written
    to it; the events it already held come back from `take_found()`. Without it, StorageError."""

    def __init__(self, path: str | Path, reopen_seconds: float | None = None,
                 lock_grace_seconds: float = LOCK_GRACE_SECONDS, fault=None):
        """`fault`: the gateway's one storage fault (ven/storage_fault.py), told of this store's writes failing and
        working again in place of the store's own lines."""
        self.path = Path(path)
        self._fault = fault
        self._grace = LockGrace(lock_grace_seconds)
        self._retry_every = reopen_seconds
        self.conn: sqlite3.Connection | None = None
        self._ident: tuple[int, int] | None = None
        self._unsaved: dict[str, Event | None] = {}     # event_id -> event to write, None: to delete
        self._unsaved_values: dict[str, str] = {}
        self._found: list[Event] = []
        # A write in a worker thread (save_events_soon) has the connection until its task ends; meanwhile
        # the loop's writes wait in memory and that task writes them next. The lock covers the rest: close
        # waits for the worker's transaction, and a read does not fall inside it.
        self._behind: asyncio.Task | None = None
        self._lock = threading.Lock()
        self._closed = False
        # synced(): callers waiting for what was saved before they asked to be on the disk, and whether a commit
        # since the last fdatasync may still be only in the page cache (synchronous=NORMAL syncs at checkpoints)
        self._sync_waiters: list[asyncio.Future] = []
        self._unsynced = False
        self._dir_synced: tuple[int, int] | None = None   # the -wal whose directory entry was synced
        # A file there before this run was written by an earlier one, perhaps of an earlier version that kept
        # less in it: what it does not hold cannot then be taken for a first run's nothing. One that only
        # import-history wrote (the forecaster's tables alone) is a first run's.
        self.found_file = _run_before(self.path)
        # called with the kv values the file held when it opened after the start; memory's values are
        # written over them right after, so an owner that wants to merge saves the merged value again
        self.on_late_open: Callable[[dict[str, str]], None] | None = None
        # called when a write starts to fail: an owner pacing its retries by retry_seconds wakes to it
        self.on_write_failed: Callable[[], None] | None = None
        self._reopen, self.write_error = open_or_retry_later(
            self._open, reopen_seconds, "events are kept in memory and written once it opens", say=fault is None)
        # another process held the write lock as the file opened (a backup, an sqlite3 shell): waited out for the
        # grace, tried every second, and said only if it outlasts it. Said at once, a lock of a second or two was an
        # ERROR line and an end line in every such start
        self._open_unsaid = locked(self.write_error) and self._grace.excuses(self.write_error)
        # a file that refuses writes may still be read (a file system gone read-only): what it holds
        # (events, the BAS's ADR-Opt-Out commands) is what a restart must not forget
        self._read_only: tuple[list[Event], dict[str, str]] = ([], {})
        if self.conn is None:
            self._read_only = _read_snapshot(self.path, say=fault is None and not self._open_unsaid)
            if not self._open_unsaid:
                self._say_not_opened()

    def _say_not_opened(self) -> None:
        if self._fault is None:
            if locked(self.write_error):   # open_or_retry_later said the other faults
                log.warning("storage.path %s: another process (a backup, an sqlite3 shell) has held its write lock "
                            "for %g s (%s): events are kept in memory and written once it lets go (tried every "
                            "%g s); a restart before then loses them", self.path, self._grace.seconds,
                            self.write_error.removeprefix(f"storage.path {self.path}: "), self._retry_every)
            return
        read = (f"{len(self._read_only[0])} event(s) and the saved state read from it, read-only"
                if any(self._read_only) else "")
        self._fault.failed("events", self.write_error, read, every=True)

    def _open(self) -> None:
        self.conn = connect(self.path, EVENTS_TABLE)
        self._ident = file_identity(self.path)
        _remove_abandoned_copies(self.path)

    def _opened(self) -> bool:
        """True once the file is open (and still the file at the path); tries it again if it was not
        and it is time."""
        if self.conn is not None:
            try:
                with self._lock:
                    self.conn, self._ident = follow_file(self.conn, self.path, self._ident, EVENTS_TABLE)
            except (sqlite3.Error, StorageError) as err:
                self._write_failed(err)
                return False
            return True
        if not self._reopen.due():
            return False
        try:
            self._open()
        except StorageError as err:
            self.write_error = str(err)
            if self._open_unsaid and not self._grace.excuses(err):
                self._reopen.seconds = self._retry_every
                self._say_not_opened()
                self._open_unsaid = False
            return False
        # a lock at the start waited out: nothing said of it, nor of its end
        unsaid, self._open_unsaid = self._open_unsaid, False
        self._grace.clear()
        # what memory changed wins over what the file held
        self._found = [ev for ev in self.load_events() if ev.event_id not in self._unsaved]
        values = dict(self.conn.execute("SELECT key, value FROM kv"))  # before memory's values replace them
        kept = len(self._unsaved) + len(self._unsaved_values)
        if self._fault is None and not unsaid:
            log.info("storage.path %s: opened; %d event change(s) kept in memory go to it, %d event(s) read "
                     "from it", self.path, kept, len(self._found))
        self.write_error = None
        if self._fault is not None:
            self._fault.written("events", kept, f"{len(self._found)} event(s) read from it" if self._found else "")
        if self.on_late_open is not None:
            try:
                self.on_late_open(values)
            except Exception:  # the owner's bug must not keep the file closed
                log.exception("storage on_late_open callback failed")
        return True

    @property
    def retry_seconds(self) -> float | None:
        """While the file has not opened, or refuses writes (a full disk): how often it is tried (its owner should
        flush that often; the schedule's own pace, up to 30 s, left the BAS's ADR-Opt-Out in memory that long)."""
        if self.conn is None and self._reopen is not None:
            return self._reopen.seconds
        return self._retry_every if self.write_error is not None else None

    def take_found(self) -> list[Event]:
        """Events the file held when it opened after the start (once)."""
        found, self._found = self._found, []
        return found

    def load_events(self) -> list[Event]:
        if self.conn is None:
            return list(self._read_only[0])
        with self._lock:
            rows = self.conn.execute("SELECT event_id, body FROM adr_events").fetchall()
        return _readable_events(rows, self.path)

    @property
    def held(self) -> int:
        """Changes to events and saved values held in memory, not yet written to the file."""
        return len(self._unsaved) + len(self._unsaved_values)

    def load_value(self, key: str) -> str | None:
        if key in self._unsaved_values:
            return self._unsaved_values[key]
        if self.conn is None:
            return self._read_only[1].get(key)
        with self._lock:
            row = self.conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def save_value(self, key: str, value: str) -> None:
        self._unsaved_values[key] = value
        self.flush()

    def save_event(self, event: Event) -> None:
        self.save_events((event,))

    def save_events(self, events) -> None:
        """In one write: ADR-Opt-Out over a day-ahead program's 200 events is not 200 commits on the loop."""
        for event in events:
            self._unsaved[event.event_id] = event
        self.flush()

    def save_events_soon(self, events) -> None:
        """As save_events, the JSON and the transaction in a worker thread: ADR-Opt-Out over a day-ahead
        program's 500 events took the loop 15 ms for them. Writes that follow wait for it and go after it;
        without a running loop (a tool, a test), at once."""
        for event in events:
            self._unsaved[event.event_id] = event
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._behind is None and self._unsaved:
            self._behind = loop.create_task(self._write_behind(), name="storage-write")

    async def synced(self) -> None:
        """Return once what was saved before the call is on the disk, not only in the page cache: a power cut
        keeps it. The connection commits with synchronous=NORMAL (an fsync at every commit, on the event loop,
        would stall it tens of ms on an SD card), so this writes what waits in memory and then fdatasyncs the
        WAL in the write-behind worker, in order with the writes before and after it. For what someone is told
        has been taken (the BAS's ack of an ADR-Opt-Out command, the VTN's opt answers). A file that cannot be
        written returns it at once, the change kept in memory as before (its error logged once)."""
        if not self._unsaved and not self._unsaved_values and not self._unsynced and self._behind is None:
            return
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._sync_waiters.append(done)
        if self._behind is None:
            self._behind = loop.create_task(self._write_behind(), name="storage-write")
        await asyncio.shield(done)

    async def _write_behind(self) -> None:
        waiters: list[asyncio.Future] = []
        try:
            while self._unsaved or self._unsaved_values or self._sync_waiters:
                waiters, self._sync_waiters = self._sync_waiters, []
                if not self._opened():
                    _release(waiters)
                    return
                events, values = dict(self._unsaved), dict(self._unsaved_values)
                failure = await asyncio.to_thread(self._write, events, values, bool(waiters))
                self._written(events, values, failure)
                _release(waiters)
                if failure is not None:
                    return      # tried again by the next flush, as a failed write on the loop is
        finally:
            self._behind = None
            # also those of a write that raised, or that close() cancelled (it writes them itself, and the last
            # connection's close syncs): a waiter never released held the BAS's ack and the VTN's answers for good
            _release(waiters)
            _release(self._sync_waiters)
            self._sync_waiters = []

    def delete_event(self, event_id: str) -> None:
        self.delete_events((event_id,))

    def delete_events(self, event_ids) -> None:
        """In one write: pruning a month of events is not a month of transactions."""
        for event_id in event_ids:
            self._unsaved[event_id] = None
        self.flush()

    def flush(self) -> bool:
        """Write what earlier failed writes left; True when nothing is left unsaved."""
        if self._behind is not None:  # the worker's write has the connection, and writes this next
            return False
        if not self._opened():
            return False
        if not self._unsaved and not self._unsaved_values:
            return True
        events, values = dict(self._unsaved), dict(self._unsaved_values)
        return self._written(events, values, self._write(events, values))

    def _write(self, events: dict[str, Event | None], values: dict[str, str],
               sync: bool = False) -> sqlite3.Error | OSError | None:
        """One transaction, then with `sync` the WAL fdatasynced; any thread, the caller's error handling on
        the loop (_written)."""
        failure = self._commit(events, values) if events or values else None
        if sync and failure is None and self._unsynced:
            # after the commit, outside its write lock: the telemetry and forecaster connections write on the
            # loop, and would wait for a sync held inside the lock
            self._unsynced = False
            try:
                self._sync_wal()
            except OSError as err:
                self._unsynced = True
                return err
        return failure

    def _sync_wal(self) -> None:
        """fdatasync the -wal, where every commit of the file so far is (or in the db file, which a checkpoint
        syncs before the WAL is reused); the directory too, once per -wal file, so the file itself is found."""
        # beside the file a symlinked storage.path names, as SQLite keeps it: beside the link there is none
        real = Path(os.path.realpath(self.path))
        wal = f"{real}-wal"
        try:
            fd = os.open(wal, os.O_RDONLY)
        except FileNotFoundError:   # checkpointed and removed: the db file holds it, synced by that checkpoint
            return
        try:
            os.fdatasync(fd)
            st = os.fstat(fd)
            ident = st.st_dev, st.st_ino
        finally:
            os.close(fd)
        if ident != self._dir_synced:
            fd = os.open(real.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._dir_synced = ident

    def _commit(self, events: dict[str, Event | None], values: dict[str, str]) -> sqlite3.Error | None:
        with self._lock:
            if self._closed:  # a worker that started after close(), which wrote this itself
                return None
            try:
                self.conn.execute("BEGIN")
                for key, value in values.items():
                    self.conn.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, value))
                for event_id, event in events.items():
                    if event is None:
                        self.conn.execute("DELETE FROM adr_events WHERE event_id = ?", (event_id,))
                    else:
                        self.conn.execute(
                            "INSERT INTO adr_events (event_id, body, end_utc) VALUES (?, ?, ?)"
                            " ON CONFLICT(event_id) DO UPDATE SET body=excluded.body, end_utc=excluded.end_utc",
                            (event.event_id, event.to_json(), event.end.isoformat()))
                self.conn.execute("COMMIT")
                self._unsynced = True
            except BaseException as err:
                # anything (an event that would not serialize, a bug) leaves no transaction open: the next write, of
                # other things, failed "within a transaction" and blamed the file
                if self.conn.in_transaction:
                    try:
                        self.conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                if isinstance(err, sqlite3.Error):
                    return err
                raise
        return None

    def _written(self, events: dict[str, Event | None], values: dict[str, str],
                 failure: sqlite3.Error | OSError | None) -> bool:
        if failure is not None:
            if self.write_error is None and self._grace.excuses(failure):
                return False
            self._write_failed(failure)
            return False
        self._grace.clear()
        # what changed again while it was written stays for the next write
        for event_id, event in events.items():
            if self._unsaved.get(event_id, False) is event:
                del self._unsaved[event_id]
        for key, value in values.items():
            if self._unsaved_values.get(key) == value:
                del self._unsaved_values[key]
        if self.write_error is not None:
            self.write_error = None
            if self._fault is not None:
                self._fault.written("events", len(events) + len(values))
            else:
                log.info("storage.path %s: events saved again", self.path)
        return not self._unsaved and not self._unsaved_values

    def _write_failed(self, err: Exception) -> None:
        why = with_fs_reason(str(err), self.path)
        if self.write_error is None:
            self.write_error = why
            if self._fault is not None:
                self._fault.failed("events", why)
            else:   # a lock is another process's, and passes: a warning, as the storage fault says it
                log.log(logging.WARNING if locked(why) else logging.ERROR, "storage.path %s: cannot save events "
                        "(%s): kept in memory and written when it can; a restart before then loses them", self.path,
                        why)
            if self.on_write_failed is not None:
                self.on_write_failed()
        self.write_error = why

    def last_try(self) -> None:
        """At a stop, before close: a file that would not open is tried once more now, not at its next retry,
        which never comes. A data volume mounted in the seconds before a stop then gets what memory holds (the
        BAS's ADR-Opt-Out commands, events) instead of losing it, and the owner's on_late_open merge can run."""
        if self.conn is None and self._reopen is not None:
            self._reopen.expire()
            self.flush()

    def close(self) -> None:
        if self._behind is not None:
            # what its worker is writing stays unsaved here until the task ends: written again below, after
            # that transaction (the lock)
            self._behind.cancel()
            self._behind = None
        self.flush()
        if self.conn is not None:
            with self._lock:
                self._closed = True
                self.conn.close()
