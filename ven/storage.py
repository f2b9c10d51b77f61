"""The gateway's SQLite file (`storage.path`): demand-response events and a small key/value table
(state a restart must not forget, such as the BAS's commands on ADR-Opt-Out).

One file, WAL mode, one connection per user: other parts of the gateway (telemetry queue, forecaster
history) open their own connections and tables in the same file (ven/storage_connect.py). The file's
handling is in modules of its own: ven/storage_sidecars.py (which file each connection has, its -wal and
-shm), ven/storage_salvage.py (a damaged file at the start), ven/storage_follow.py and
ven/storage_overwritten.py (a file deleted, replaced or written over while open), ven/storage_retry.py
(a file that will not open or take a write, another process's lock) and ven/storage_fs_reason.py.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Callable

from .events import Event
from .storage_connect import BUSY_TIMEOUT_SECONDS, StorageError, connect
from .storage_damage import UNTIL_RESTART, ReadDamage, damaged, name_damage
from .storage_follow import follow_file, remove_abandoned_copies
from .storage_fs_reason import with_fs_reason
from .storage_retry import LOCK_GRACE_SECONDS, Opening, locked
from .storage_salvage import check_late
from .storage_sidecars import file_identity

log = logging.getLogger(__name__)


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
        self._opening = Opening(self._open, reopen_seconds, "events are kept in memory and written once it opens",
                                say=fault is None, grace_seconds=lock_grace_seconds)
        self.write_error = self._opening.error
        # a file that refuses writes may still be read (a file system gone read-only): what it holds
        # (events, the BAS's ADR-Opt-Out commands) is what a restart must not forget
        self._read_only: tuple[list[Event], dict[str, str]] = ([], {})
        self.read_damage = ReadDamage(self.path, log, fault)     # damage a read met while the gateway runs (said once)
        self._read_error_said: str | None = None
        if self.conn is None:
            self._read_only = _read_snapshot(self.path, say=fault is None and not self._opening.quiet)
            if not self._opening.quiet:
                self._say_not_opened()

    def _say_not_opened(self) -> None:
        if self._fault is None:
            if locked(self.write_error):   # open_or_retry_later said the other faults
                log.warning("storage.path %s: another process (a backup, an sqlite3 shell) has held its write lock "
                            "for %g s (%s): events are kept in memory and written once it lets go (tried every "
                            "%g s); a restart before then loses them", self.path, self._opening.grace.seconds,
                            self.write_error.removeprefix(f"storage.path {self.path}: "), self._retry_every)
            return
        read = (f"{len(self._read_only[0])} event(s) and the saved state read from it, read-only"
                if any(self._read_only) else "")
        self._fault.failed("events", self.write_error, read, every=True)

    def _open(self) -> None:
        self.conn = connect(self.path, EVENTS_TABLE)
        self._ident = file_identity(self.path)
        remove_abandoned_copies(self.path)

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
        if not self._opening.timer.due():
            return False
        check_late(self.path)
        try:
            self._open()
        except StorageError as err:
            self.write_error = str(err)
            if self._opening.quiet and not self._opening.excuses(err, failing=True):
                self._say_not_opened()
            return False
        unsaid = self._opening.done()   # a lock at the start waited out: nothing said of it, nor of its end
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
        if self.conn is None and self._opening.timer is not None:
            return self._opening.timer.seconds
        return self._retry_every if self.write_error is not None else None

    def take_found(self) -> list[Event]:
        """Events the file held when it opened after the start (once)."""
        found, self._found = self._found, []
        return found

    def load_events(self) -> list[Event]:
        if self.conn is None:
            return list(self._read_only[0])
        try:
            with self._lock:
                rows = self.conn.execute("SELECT event_id, body FROM adr_events").fetchall()
        except sqlite3.DatabaseError as err:
            self._read_failed(err, "its events")
            return []
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
        try:
            with self._lock:
                row = self.conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        except sqlite3.DatabaseError as err:
            self._read_failed(err, "its saved state (ADR-Opt-Out and bas-shed-power commands, the meter read)")
            return None
        return None if row is None else row[0]

    def _read_failed(self, err: sqlite3.DatabaseError, what: str) -> None:
        """A read that failed. Damage met while the gateway runs (a torn page of the kv table) raised out of the BAS's
        ADR-Opt-Out write, which then never reached the VTN, with a traceback in the log: said once, and the caller
        goes on as with nothing read (the BAS's command, written again, is kept in memory)."""
        if isinstance(err, sqlite3.ProgrammingError):   # a closed connection: a bug, not the file
            raise err
        if self.read_damage.met(err, self.conn, f"{what} cannot be read from it, and the gateway goes on with what it "
                                                f"holds in memory"):
            return
        why = with_fs_reason(str(err), self.path)
        if why != self._read_error_said:    # once each, not at every BAS write that reads the saved state
            self._read_error_said = why
            log.warning("storage.path %s: %s cannot be read (%s): the gateway goes on with what it holds in memory",
                        self.path, what, why)

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
            if self._opening.excuses(failure, failing=self.write_error is not None):
                return False
            self._write_failed(failure)
            return False
        self._opening.done()
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
            self.write_error = why = name_damage(why, self.conn)
            if self._fault is not None:
                self._fault.failed("events", why)
            elif damaged(why):
                log.error("storage.path %s is damaged (%s): events are kept in memory; %s", self.path, why,
                          UNTIL_RESTART)
            else:   # a lock is another process's, and passes: a warning, as the storage fault says it
                log.log(logging.WARNING if locked(why) else logging.ERROR, "storage.path %s: cannot save events "
                        "(%s): kept in memory and written when it can; a restart before then loses them", self.path,
                        why)
            if self.on_write_failed is not None:
                self.on_write_failed()
        elif not damaged(self.write_error):     # one named, kept: the same damage met again
            self.write_error = why

    def last_try(self) -> None:
        """At a stop, before close: a file that would not open is tried once more now, not at its next retry,
        which never comes. A data volume mounted in the seconds before a stop then gets what memory holds (the
        BAS's ADR-Opt-Out commands, events) instead of losing it, and the owner's on_late_open merge can run."""
        if self.conn is None and self._opening.timer is not None:
            self._opening.timer.expire()
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
