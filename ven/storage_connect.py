"""Connecting to storage.path: the file's pages, WAL mode and kv table set up alike for every part of the gateway that
opens it (the events' store, the telemetry queue; the forecaster's history opens it its own way, alike)."""
from __future__ import annotations

import logging
import os
import sqlite3
import stat
from pathlib import Path

from .storage_fs_reason import os_reason
from .storage_sidecars import TrackedConnection, note_sidecars, unpair_sidecars

log = logging.getLogger("ven.storage")

# How long a write waits for a lock another process holds (a backup, an sqlite3 shell). Most of these
# connections' writes run on the event loop (an ADR-Opt-Out's batch of events does not): BACnet waits
# as long as they do. A write that gives up is kept in memory and tried again; the gateway's own
# connections hold the lock for milliseconds.
BUSY_TIMEOUT_SECONDS = 0.5
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
                               factory=TrackedConnection)
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
                           f"{os_reason(p)}") from None
    note_sidecars(conn, p)
    return conn


# kv values an earlier version run on the file leaves stale, as it does not keep them: the level the log last said
# (ven.level_log.LEVEL_SAID) read, after a rollback and the upgrade again, as the level the gateway stopped at,
# though that version ran on and said its own changes. Kept by 0.4.2 too, which writes no opened_at_here: a key added
# here later needs a copy of its own (opened_at_here is this one's and any later version's)
_KEPT_BY_THIS_VERSION = ("event_level_said",)
# kv values some earlier versions keep and others (still run on the file after a rollback) do not, each with a copy of
# opened_at of its own, written by this version and later: input-power-meter's commands, kept from 0.4.10. A BAS's
# relinquish under 0.4.9 was not kept, and the upgrade again brought the relinquished kW back at its priority. Another
# version opened the file since: the value is dropped unless that version wrote it after its open (0.4.10 to 0.4.12
# keep it). With no copy yet (the upgrade from 0.4.12, say) it is trusted, as before.
_KEPT_SINCE = {"bacnet_commands:input-power-meter": "opened_at_input_commands"}


def _note_opened(conn: sqlite3.Connection) -> None:
    """`opened_at`, which every version writes at each open, and its copy, which only this one does: they differ
    when another version opened the file since, and the values it left stale are dropped."""
    conn.execute("BEGIN IMMEDIATE")     # another store of this run opening the file at once sees both or neither
    try:
        # (rowid: kv's rows are written INSERT OR REPLACE, each write a row after every other, by every version)
        seen = {key: (value, rowid) for rowid, key, value in conn.execute(
            f"SELECT rowid, key, value FROM kv WHERE key IN ('opened_at', 'opened_at_here', "
            f"{', '.join('?' * len(_KEPT_SINCE))})", tuple(_KEPT_SINCE.values()))}
        opened, here = seen.get("opened_at"), seen.get("opened_at_here")
        for key, copy in _KEPT_SINCE.items():
            if opened and copy in seen and seen[copy][0] != opened[0] and conn.execute(
                    "DELETE FROM kv WHERE key = ? AND rowid < ?", (key, opened[1])).rowcount:
                log.info("%s not restored: another version ran on storage.path (at %s UTC) and did not keep what the "
                         "BAS wrote there", key.replace("bacnet_commands:", "") + " commands", opened[0])
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
        conn.executemany("INSERT OR REPLACE INTO kv (key, value) SELECT ?, value FROM kv WHERE key = 'opened_at'",
                         [(copy,) for copy in _KEPT_SINCE.values()])
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


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
