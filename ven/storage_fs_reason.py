"""Why the file system under storage.path refuses writes, in the OS's words: SQLite says "unable to open database
file" or "disk I/O error" for a read-only mount, a full disk or a directory the gateway may not write."""
from __future__ import annotations

import errno
import os
import resource
from pathlib import Path


def os_reason(p: Path) -> str:
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
    return _size_limit(p)


def _size_limit(p: str | os.PathLike) -> str:
    """The process's file-size limit (ulimit -f, systemd's LimitFSIZE=), once the file or its -wal is near it: SQLite
    says "disk I/O error" for the EFBIG a write past it gets, and the disk has room and the directory is writable."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit == resource.RLIM_INFINITY:
        return ""
    real = os.path.realpath(p)
    sizes = []
    for name in (real, f"{real}-wal"):
        try:
            sizes.append((os.stat(name).st_size, os.path.basename(name)))
        except OSError:
            pass
    size, name = max(sizes, default=(0, ""))
    if not sizes or size + FULL_BYTES < limit:
        return ""
    return (f" ({os.strerror(errno.EFBIG)}: {name} is {size} bytes, this process may write files of at most {limit} "
            "(ulimit -f, systemd's LimitFSIZE=))")


def with_fs_reason(text: str, p: str | os.PathLike) -> str:
    """`text` (SQLite's words) and the file system's reason, unless it says it already: a retry's error carries
    the last one's."""
    reason = fs_reason(p)
    return text if reason.strip() in text else f"{text}{reason}"
