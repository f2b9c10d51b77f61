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
