"""Whether the kernel says the wall clock is kept synchronized (NTP: chrony, systemd-timesyncd, ntpd).

Event starts from the VTN are absolute UTC times applied by this clock, and telemetry is stamped with it; an
OpenADR VEN is expected to run NTP. A box without it (UDP 123 blocked, no time daemon installed, an image that
never enabled one) drifts by seconds a day and nothing else shows it. The time daemon tells the kernel how good
the clock is; adjtimex(2) in read-only mode (modes 0) asks it, without root, systemd or the daemon's own tools.
A container shares the host's clock, so it reads the host's state, which is the one that matters. glibc makes the
call as clock_adjtime(CLOCK_REALTIME), which Docker's default seccomp profile allows since 20.10; an older or
stricter profile refuses it (EPERM), and then the answer is "cannot tell".
"""
from __future__ import annotations

import ctypes
import functools
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from bacnet_api.settle import span

from .wallclock import StepWatch, clock_suspect

log = logging.getLogger(__name__)

STA_UNSYNC = 0x0040     # <sys/timex.h>: set by the kernel when nothing has disciplined the clock for a while
TIME_ERROR = 5          # adjtimex's answer for a clock not synchronized
CHECK_EVERY_S = 300.0   # how often the running gateway asks: a syscall, but the state changes over hours
NOT_SYNCHRONIZED = ("the machine's clock is not synchronized (no NTP): event start times and telemetry time stamps "
                    "drift; enable chrony or systemd-timesyncd (on the host, for a container) and let it reach its "
                    "NTP servers (UDP 123)")


@dataclass(frozen=True)
class ClockSync:
    synchronized: bool
    max_error_s: float      # the kernel's bound on the clock's error (maxerror): meaningful while synchronized
    est_error_s: float      # the time daemon's estimate of it (esterror)


def decode(ret: int, status: int, maxerror_us: int, esterror_us: int) -> ClockSync:
    """What adjtimex's answer says: unsynchronized by its return value or the STA_UNSYNC status bit."""
    return ClockSync(synchronized=ret != TIME_ERROR and not status & STA_UNSYNC,
                     max_error_s=maxerror_us / 1e6, est_error_s=esterror_us / 1e6)


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """glibc's struct timex (bits/timex.h). c_long is the kernel's __syscall_slong_t on x86_64 and aarch64, and
    on 32-bit ARM for the plain `adjtimex` symbol (the 64-bit-time one is __adjtimex64); ctypes pads as C does
    (208 bytes on x86_64). The kernel writes the whole struct: the 11 reserved ints at the end must be there."""
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
                ("time", _Timeval), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long),
                ("shift", ctypes.c_int), ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long),
                ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long),
                ("tai", ctypes.c_int), ("_reserved", ctypes.c_int * 11)]


@functools.cache
def _adjtimex():
    try:
        return ctypes.CDLL(None, use_errno=True).adjtimex    # the C library Python runs on (glibc or musl)
    except (OSError, AttributeError):
        return None


def read_clock_sync() -> ClockSync | None:
    """The kernel's word on the clock; None when it cannot be asked (not Linux, no adjtimex in the C library, the
    call refused, e.g. by a container's seccomp profile): cannot tell is not a guess either way."""
    if not sys.platform.startswith("linux"):
        return None
    adjtimex = _adjtimex()
    if adjtimex is None:
        return None
    tx = _Timex(modes=0)    # 0: read only. Any other mode would set the clock (and need CAP_SYS_TIME)
    ret = adjtimex(ctypes.byref(tx))
    if ret == -1:
        log.debug("adjtimex: %s", os.strerror(ctypes.get_errno()))
        return None
    return decode(ret, tx.status, tx.maxerror, tx.esterror)


def status_fields(sync: ClockSync | None) -> dict:
    """For /api/status: synchronized true/false/null (cannot tell), and the kernel's bound on the error while it
    means something (unsynchronized, the kernel holds it at its 16 s cap)."""
    return {"clock_synchronized": None if sync is None else sync.synchronized,
            "clock_max_error_ms": round(sync.max_error_s * 1000, 3) if sync and sync.synchronized else None}


def metric_value(sync: ClockSync | None) -> float:
    """1 synchronized, 0 not, NaN cannot tell (an alert on == 0 stays quiet where the kernel cannot be asked)."""
    return math.nan if sync is None else float(sync.synchronized)


class SyncWatch:
    """One WARNING when the clock is found not synchronized at two looks in a row, one INFO when it is again; the
    last answer for the status and the metrics. Asks the kernel at most every CHECK_EVERY_S; cannot tell says
    nothing. The kernel boots unsynchronized and a gateway started at boot looks before chrony or timesyncd has
    set the clock (seconds later): one look would put a WARNING and its end in the log at every boot."""

    def __init__(self, read: Callable[[], ClockSync | None] = read_clock_sync, every_s: float = CHECK_EVERY_S,
                 wall: Callable[[], float] = time.time):
        self._read, self._every, self._wall = read, every_s, wall
        self._steps = StepWatch()
        self._next = -math.inf
        self.last: ClockSync | None = None
        self.warned = False     # the WARNING said and its end not yet
        self._drifting = 0      # looks in a row that found it not synchronized

    @property
    def every_s(self) -> float:
        """The least time between two looks: asked more often, it answers from the last."""
        return self._every

    def status(self) -> dict:
        """For /api/status: status_fields of the last answer, and clock_warning, the log's WARNING in force (the
        dashboard names it then, not at a boot's first look)."""
        return {**status_fields(self.last), "clock_warning": self.warned}

    def check(self, now: float) -> ClockSync | None:
        """Ask the kernel if CHECK_EVERY_S has passed since the last time (`now` monotonic seconds); say a step of
        the wall clock since the last call."""
        self.look_for_step()
        if now < self._next:
            return self.last
        self._next = now + self._every
        self.last = sync = self._read()
        if sync is None:
            return None
        self._drifting = 0 if sync.synchronized else self._drifting + 1
        if self._drifting >= 2 and not self.warned:
            self.warned = True
            log.warning("%s", NOT_SYNCHRONIZED)
        elif sync.synchronized and self.warned:
            self.warned = False
            log.info("the machine's clock is synchronized again (maximum error %.0f ms)", sync.max_error_s * 1000)
        return sync

    def look_for_step(self) -> None:
        """Say a step of the wall clock since the last look, now: before a reading it stamped reaches the parts that
        say what the step did to them (the forecaster's history, the telemetry), so the cause comes first in the log,
        not at the next look up to a minute later."""
        wall = self._wall()
        self._say_step(self._steps.step(wall), wall)

    @staticmethod
    def _say_step(step: float, wall: float) -> None:
        # What else the step moved (reports, events, the forecaster's history) is said where it happened; this
        # line is the cause, in either direction, readings or not. Not from a clock not yet set (a box without a
        # clock battery, at each boot): the gateway's "clock not set" line and its end say that one
        if step and not clock_suspect(datetime.fromtimestamp(wall - step, timezone.utc)):
            log.warning("wall clock %s %s (set by NTP or by hand): times stamped from now on follow it",
                        "jumped ahead" if step > 0 else "went back", span(abs(step)))
