"""The kernel's word that the wall clock was set (NTP's step, `date -s`, a fake-hwclock at boot), where there is one.

A CLOCK_REALTIME timerfd armed with TFD_TIMER_CANCEL_ON_SET (timerfd_create(2)) becomes readable when anything sets
the clock, and at no other time (a slew moves it by milliseconds without a word). What waits for a wall-clock step
waits for that, instead of glancing at the clock each second: the schedule's glance woke the idle gateway once a
second for a step that comes a few times a year. Python has timerfd only from 3.13 (os.timerfd_create): libc's is
called here. Where there is none (not Linux, a sandbox refusing it) `open` returns None and the caller glances.
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)

_CLOCK_REALTIME = 0
_TFD_TIMER_ABSTIME, _TFD_TIMER_CANCEL_ON_SET = 1, 2
# an expiry no clock reaches: the timer is there for its cancellation alone. Within a C long: on a 32-bit box (armhf)
# 2**40 wrapped to 0, an expiry in the past, and the timer would fire, be armed again and fire without end
_NEVER_S = min(2 ** 40, 2 ** (8 * ctypes.sizeof(ctypes.c_long) - 1) - 1)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class ClockSetWatch:
    """Calls `on_set` on the event loop each time the wall clock is set, from `open` until `close`."""

    def __init__(self, fd: int, settime: Callable, on_set: Callable[[], None]):
        self._fd, self._settime, self._on_set = fd, settime, on_set

    @classmethod
    def open(cls, on_set: Callable[[], None]) -> ClockSetWatch | None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.timerfd_create(_CLOCK_REALTIME, os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, AttributeError):   # no libc to load, no timerfd_create in it
            return None
        if fd < 0:
            return None
        watch = cls(fd, libc.timerfd_settime, on_set)
        try:
            watch._arm()
            asyncio.get_running_loop().add_reader(fd, watch._readable)
        except OSError as err:
            os.close(fd)
            log.debug("no timerfd for wall-clock steps (%s): glanced at instead", err)
            return None
        return watch

    def close(self) -> None:
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _arm(self) -> None:
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(_NEVER_S, 0))
        if self._settime(self._fd, _TFD_TIMER_ABSTIME | _TFD_TIMER_CANCEL_ON_SET, ctypes.byref(spec), None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def _readable(self) -> None:
        try:
            os.read(self._fd, 8)
        except OSError as err:
            if err.errno not in (errno.ECANCELED, errno.EAGAIN):
                raise
        # a set clock cancels the timer, and the read said so: armed again for the next
        try:
            self._arm()
        except OSError as err:
            log.warning("the wall clock's steps are no longer signalled by the kernel (%s): glanced at each second "
                        "instead", err)
            self.close()
        self._on_set()

    @property
    def watching(self) -> bool:
        return self._fd >= 0
