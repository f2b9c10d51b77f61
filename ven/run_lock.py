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


RUNNING = "running"     # after the pid while `run` runs, until its stop


def _said(fd: int) -> list[str]:
    try:
        return os.pread(fd, 32, 0).decode("ascii", "replace").split()
    except OSError:
        return []


def _holder(fd: int) -> str:
    pid = (_said(fd) or [""])[0]
    return f"process {pid}" if pid.isdigit() else "another process"


class RunLock:
    def __init__(self, storage_path: str | os.PathLike) -> None:
        self.path = lock_path(storage_path)
        self._fd: int | None = None
        # the pid of a `run` before that held the lock and ended without a stop (killed, crashed, a power cut):
        # it left "<pid> running" in the file, which its stop would have made "<pid>"
        self.ended_without_stop: int | None = None

    def take(self, running: bool = False) -> str | None:
        """Hold the lock until the process ends. Returns None (held, or no lock to be had here) or, when another
        process holds it, a sentence naming it. running: `run`'s, which says so in the file until stopped()."""
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
        said = _said(fd)
        # on a read-only volume the mark stays: told at every start after one kill, of runs that stopped as they should
        if running and writable and len(said) == 2 and said[0].isdigit() and said[1] == RUNNING:
            self.ended_without_stop = int(said[0])
        self._fd = fd
        if writable:    # the pid only names the holder to a second run; a full disk takes the lock, not the pid
            self._write(f"{os.getpid()}{' ' + RUNNING if running else ''}\n")
        return None

    def stopped(self) -> None:
        """`run` stopped as it should: the next start has nothing to say of this one."""
        self._write(f"{os.getpid()}\n")

    def _write(self, text: str) -> None:
        if self._fd is None:
            return
        try:    # on the disk: a power cut is one of the ends the next start tells
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, text.encode(), 0)
            os.fsync(self._fd)
        except OSError:
            pass

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
