"""One running gateway per storage.path.

A second `edge-gateway run` on the same file (started by hand beside the service with other ports, or a container and a
host install sharing the volume) registered as the same VEN, and the VTN got every reading twice; neither log said a
word. `run` holds an advisory lock on `<storage.path>.lock` for as long as the process lives (the kernel drops it when
the process ends, however it ends), and refuses to start while another process holds it. `forget-forecast` asks the
same lock. A directory that cannot be made or refuses the lock file (read-only) gives no lock: the gateway
starts as before, as it does on a file it cannot write. A full disk gives the lock without the pid in it.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path


def lock_path(storage_path: str | os.PathLike) -> Path:
    path = Path(storage_path).resolve()   # a relative path, or a symlink: the same file, the same lock
    return path.with_name(path.name + ".lock")


def _holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid.isdigit() else "another process"


class RunLock:
    def __init__(self, storage_path: str | os.PathLike) -> None:
        self.path = lock_path(storage_path)
        self._fd: int | None = None

    def take(self) -> str | None:
        """Hold the lock until the process ends. Returns None (held, or no lock to be had here) or, when another
        process holds it, a sentence naming it."""
        try:
            # the storage makes the directory too; made here first, a first run is locked as well
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            writable = True
        except OSError:
            try:    # a read-only volume with the lock file on it: a read-only descriptor locks as well
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                writable = False
            except OSError:
                return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held_by = _holder(fd)
            os.close(fd)
            return f"storage.path {self.path.with_suffix('')} is in use by {held_by} (a gateway holds {self.path})"
        except OSError:     # a file system without locks: as without a lock file
            os.close(fd)
            return None
        if writable:
            try:    # the pid only names the holder to a second run; a full disk takes the lock, not the pid
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError:
                pass
        self._fd = fd
        return None

    def close(self) -> None:
        """Let the lock go before the process ends (a test; `run` keeps it until it exits)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def held_by_another(storage_path: str | os.PathLike) -> str | None:
    """Why a gateway seems to run on `storage_path` (its lock held), or None."""
    lock = RunLock(storage_path)
    try:
        fd = os.open(lock.path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return f"storage.path {lock.path.with_suffix('')} is in use by {_holder(fd)}"
    except OSError:
        return None
    finally:
        os.close(fd)
    return None
