"""When storage.path, which would not open or take a write, is tried again: a file that would not open at the start,
and another process's write lock, waited out for a grace before it counts as a fault."""
from __future__ import annotations

import logging
import time
from typing import Callable

from .storage_connect import StorageError

log = logging.getLogger("ven.storage")

# How often a file that could not be opened at start is tried again (a fixed mount, fixed permissions).
REOPEN_SECONDS = 10.0
LOCK_GRACE_SECONDS = 5.0  # a write lock held by another writer this long is reported as a fault
LOCK_RETRY_SECONDS = 1.0  # how often a file locked by another writer is tried while the grace lasts


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


class Opening:
    """A store's file opened at its start, and tried again while it will not open or take a write: one place for the
    events' store and the telemetry queue, which each had a copy of it (and the queue's, unlike the store's, said the
    end of a lock it had waited out unsaid). `error`: why the file would not open at the start, else None; `timer`:
    paces the tries (None when it opened).

    Another process's write lock (a backup, an operator's sqlite3 in a transaction) passes, and nothing is lost
    meanwhile: met at the start or by a write, it is waited out for the grace, the file tried every
    LOCK_RETRY_SECONDS, and said only if it outlasts it. A lock at the start that ends within the grace is said
    neither as a fault nor as its end: said at once, a lock of a second or two was an ERROR line and an end line in
    every such start."""

    def __init__(self, open_file: Callable[[], None], reopen_seconds: float | None, meanwhile: str, say: bool = True,
                 grace_seconds: float = LOCK_GRACE_SECONDS):
        self.grace = LockGrace(grace_seconds)
        self._retry_seconds = reopen_seconds
        self.timer, self.error = open_or_retry_later(open_file, reopen_seconds, meanwhile, say)
        self.quiet = locked(self.error) and self.grace.excuses(self.error)     # a lock at the start, unsaid yet

    def excuses(self, err: Exception | str, failing: bool) -> bool:
        """Whether `err`, an open or a write that failed, goes unsaid: another process's lock within the grace, met
        while the store is quiet (the start's lock) or writes (not `failing`: it has no error said). A start's lock
        that outlasts the grace, or another fault after it, ends the quiet: the file is tried at the pace of
        reopen_seconds from then on, and the caller says the fault."""
        if failing and not self.quiet:
            return False
        if self.grace.excuses(err):
            return True
        if self.quiet:
            self.quiet = False
            self.timer.seconds = self._retry_seconds
        return False

    def done(self) -> bool:
        """The file opened, or took a write: a lock from now on gets a grace of its own. True when a lock at the start
        was waited out unsaid, whose end then goes unsaid too."""
        quiet, self.quiet = self.quiet, False
        self.grace.clear()
        return quiet
