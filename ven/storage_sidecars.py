"""Which file each of the gateway's connections to storage.path has open, and the -wal and -shm beside it: a file
replaced under the gateway (`mv backup.sqlite gw.sqlite`) must not be paired with the old file's sidecars."""
from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path


def file_identity(path: str | Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`; None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class TrackedConnection(sqlite3.Connection):
    """A connection that says whether it is still open: while it is, the -wal and -shm it opened cannot be freed,
    so a file found under their names with their (device, inode) is theirs (unpair_sidecars)."""
    is_open = True
    seen_size = 0   # the file's size as this connection last saw it (ven/storage_overwritten.py)

    def close(self) -> None:
        self.is_open = False
        super().close()


@dataclass
class _Opened:
    """A connection connect() made: its file's (device, inode), its -wal's and -shm's, and what the connections open
    on that file share (`shared`)."""
    conn: weakref.ref
    ident: tuple[int, int] | None
    sides: dict[str, tuple[int, int] | None]
    shared: dict

    @property
    def open(self) -> bool:
        return (conn := self.conn()) is not None and conn.is_open


# By real path: the connections connect() made that are open. One closed is dropped as the next is noted: a file is
# another's once no connection has it open (its inode free again), and a gateway whose file was replaced each night,
# or a test suite's thousands of files, kept one each for good
_sidecars: dict[str, list[_Opened]] = {}
_sidecars_lock = threading.Lock()


def note_sidecars(conn: sqlite3.Connection, p: Path) -> None:
    real = os.path.realpath(p)
    ident = file_identity(real)
    with _sidecars_lock:
        for path, entries in list(_sidecars.items()):
            if open_ones := [e for e in entries if e.open]:
                _sidecars[path] = open_ones
            else:
                del _sidecars[path]
        shared = next((e.shared for e in _sidecars.get(real, ()) if e.ident == ident), {})
        _sidecars.setdefault(real, []).append(
            _Opened(weakref.ref(conn), ident, {s: file_identity(real + s) for s in ("-wal", "-shm")}, shared))


def live_files(real: str) -> list[tuple[int, int] | None]:
    with _sidecars_lock:
        return [e.ident for e in _sidecars.get(real, ()) if e.open]


def shared(path: str | os.PathLike, ident: tuple[int, int] | None) -> dict | None:
    """What the gateway's connections open on the file at `path` with (device, inode) `ident` share (what was done
    to it, said of it), or None when none has it open. Kept by (device, inode) no longer than a connection has the
    file open: the inode may be another file's after, and a file put at the path then (a restore) was taken for one
    already followed (its copy never made, what the gateway held lost) or written over in place (a false ERROR)."""
    real = os.path.realpath(path)
    with _sidecars_lock:
        return next((e.shared for e in _sidecars.get(real, ()) if e.ident == ident and e.open), None)


def not_copied_yet(path: str | os.PathLike) -> bool:
    """Whether the gateway's connections are all to a file that is no longer the one at `path` (deleted, replaced):
    the first of its stores to write copies that file there (follow_file), table by table over what the file there
    holds, and a write into it before then (the forecaster's, which opens the file each time) would be lost."""
    real = os.path.realpath(path)
    live = live_files(real)
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
        for entry in entries:
            if not entry.open:    # its -wal's and -shm's inodes may be another file's now
                continue
            kept.append(entry)
            if entry.ident == now:
                continue
            for suffix, was in entry.sides.items():
                if was is not None and file_identity(real + suffix) == was:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(real + suffix)
        _sidecars[real] = kept


def move_with_sidecars(path: Path, to: Path) -> None:
    """Rename an SQLite file with its -wal and -shm (those there are), at start, before anything opens it."""
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}{suffix}", f"{to}{suffix}")
