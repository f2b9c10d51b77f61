"""A storage.path written over in place while the gateway has it open (`cp other.sqlite gw.sqlite`, which keeps the
file's inode): told by its size, said once."""
from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from .storage_sidecars import shared

log = logging.getLogger("ven.storage")


def identity_and_size(path: str | Path) -> tuple[tuple[int, int] | None, int]:
    try:
        st = os.stat(path)
    except OSError:
        return None, 0
    return (st.st_dev, st.st_ino), st.st_size


def note_size(conn: sqlite3.Connection, path: Path, ident: tuple[int, int] | None, size: int) -> None:
    """Say once, as an ERROR, that the file at `path` was written over in place. Nothing here can undo it: its old
    pages are gone from the disk, and the gateway's connections pair its own -wal (its last writes) with the pages
    put there, as one file (SQLite has no way to tell), which damages it at the next checkpoint (measured: `cp` of an
    older copy of the file, or of another gateway's, then 3,000 more telemetry readings: "database disk image is
    malformed", every row of the queue unreadable). Said, the operator can put the file there again with the gateway
    stopped; else the next start checks the file and keeps what reads whole (set_aside_if_damaged). Seen when the
    file grew past the pages `conn` sees (a checkpoint writes none past them), or shrank below them: a VACUUM another
    process ran shrinks what `conn` sees first, and the file at its checkpoint. One put there whose size falls
    between the two is not seen, nor one of the same size (an older copy of the gateway's own file, once its size is
    steady): its time of change would tell, but so do the gateway's own checkpoints, which SQLite tells only in the
    -shm (a descriptor of it opened and closed here drops SQLite's locks on it) or by a checkpoint of its own."""
    before, conn.seen_size = conn.seen_size, size
    if size == before:     # most writes: the size has not changed since the last
        return
    try:
        pages = conn.execute("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()").fetchone()[0]
    except sqlite3.Error:   # the write that follows says what is wrong
        return
    if before < size <= pages or pages <= size < before:
        return
    said = shared(path, ident)      # by every connection of the gateway to that file, once
    if said is None or said.get("overwritten_said"):
        return
    said["overwritten_said"] = True
    sizes = (f"{size} bytes, more than the {pages} the gateway has in it" if size > before else
             f"{size} bytes, down from {before}, fewer than the {pages} the gateway has in it")
    log.error("storage.path %s was written over in place while the gateway had it open (%s: a `cp` onto it, a "
              "restore into it): SQLite cannot see that, and the gateway's writes, in its -wal, land among the pages "
              "put there and damage them; what the file held before is gone from the disk. To use the file put "
              "there, stop the gateway and copy it in again (its source is whole) before starting it; else the next "
              "start checks the file and, if damaged, moves it aside and keeps every table that reads whole", path,
              sizes)
