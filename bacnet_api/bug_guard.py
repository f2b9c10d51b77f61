"""A job the gateway runs again and again (a poll, a cycle, a callback on each reading or write) that raised what
nobody expected: a bug, not a meter, VTN or file fault, which each have their own lines. Its traceback goes to the log
once, again only when it fails otherwise (another exception, or the same one from another line), and one line says
when the job has worked a while again; the job goes on meanwhile. Left to itself such an error either ended the loop
that ran the job (its points frozen, nothing said until the stop) or put a traceback in the log at every cycle (1,440 a
day at a 60 s cycle), and nothing said when it stopped. Here, not in ven, because the meter and the device need it
and bacnet_api never imports ven."""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Iterator

from .settle import RECUR_SECONDS, Flapping, span

_ROOT = Path(__file__).resolve().parents[1]
# with the separator: a checkout's own virtualenv (<root>/venv/...) is not the gateway's code
_OURS = tuple(str(_ROOT / package) + os.sep for package in ("ven", "bacnet_api", "forecaster"))
# what a mistake in code raises, not a peer's fault or a file's (those have their own exceptions and lines)
PROGRAMMING_ERRORS = (TypeError, AttributeError, NameError, KeyError, IndexError, ZeroDivisionError, AssertionError,
                      RecursionError)


def where_raised(err: BaseException) -> tuple[str, str, int]:
    frames = traceback.extract_tb(err.__traceback__)
    # the place, not the text: a message with a time or a count in it is still the one fault
    if not frames:
        return type(err).__name__, "", 0
    return type(err).__name__, frames[-1].filename, frames[-1].lineno or 0


def short_of(err: BaseException) -> str | None:
    """What the machine ran short of, if that is what `err` says (a limit of the box, not a bug), else None."""
    if isinstance(err, MemoryError):
        return "memory (a memory limit: LimitAS, ulimit -v, or the box's RAM)"
    if isinstance(err, OSError) and err.errno in (errno.EMFILE, errno.ENFILE):
        return "file descriptors (LimitNOFILE, ulimit -n)"
    if isinstance(err, OSError) and err.errno in (errno.EAGAIN, errno.ENOMEM) or (
            isinstance(err, RuntimeError) and "can't start new thread" in str(err)):
        return "processes or threads (LimitNPROC, TasksMax, ulimit -u) or memory"
    return None


def first_from(err: BaseException, seen: set) -> bool:
    """Whether `err` is the first raised from its place among those `seen` (which then holds it)."""
    where = where_raised(err)
    first = where not in seen
    seen.add(where)
    return first


def trace_if_a_bug(log: logging.Logger, what: str, err: BaseException, seen: set) -> None:
    """For a job whose failures are a peer's faults as a rule (the VEN session: the VTN's), and said as such: one that
    is a programming error raised in the gateway's own code gets its traceback too, once for each place (`seen`)."""
    if isinstance(err, PROGRAMMING_ERRORS) and where_raised(err)[1].startswith(_OURS) and first_from(err, seen):
        log.error("%s: %s: %s is a bug in the gateway, not a fault of its peer (its traceback, once)", what,
                  type(err).__name__, err, exc_info=err)


class BugGuard:
    def __init__(self, log: logging.Logger, what: str, then: str = "", settle_s: float = 0.0) -> None:
        """`what` names the job in the log ("forecast cycle"); `then` says what happens meanwhile ("tried again
        every 60 s"); `settle_s`: how long it must work before its end is said (a bug met by one pass in a few,
        a failed read's path with a meter that fails now and then, is one fault, not a start and an end each time),
        doubled for one that comes back within RECUR_SECONDS, as the meter's and the VTN's faults are."""
        self.log, self.what, self.then = log, what, then
        self.failures = 0       # since the fault began
        self.error = ""         # the last failure, "Type: text", while failing
        self._flap = Flapping(settle_s)
        self.short: str | None = None   # what the machine was short of, if that is what the fault began with
        self._seen: set[tuple[str, str, int]] = set()     # the ways it failed in this fault
        self._traced: dict[tuple[str, str, int], float] = {}   # when each way's traceback was last in the log

    @property
    def failing(self) -> bool:
        return self._flap.open

    def fault(self) -> str | None:
        """The open fault for the stop line and /healthz, or None."""
        if not self.failing:
            return None
        return f"{self.what} failing, short of {self.short.split(' (')[0]} ({self.error})" if self.short else \
            f"{self.what} failing ({self.error})"

    def failed(self, err: BaseException) -> None:
        now = time.monotonic()
        # one line, of a bounded length: it goes into /healthz's reason and the stop line
        where, self.error = where_raised(err), " ".join(f"{type(err).__name__}: {err}".split())[:200]
        # a box's limit (memory, file descriptors, threads) is an expected fault, not a bug: its line says which, and
        # a traceback would send the operator looking for one
        limit = short_of(err)
        traced = where in self._traced or limit is not None
        if self._flap.bad(now):
            self._seen, self.failures = set(), 0
            self.short = limit
            self.log.error("%s failed (%s): %s%s%s", self.what,
                           f"the machine is short of {limit}" if limit else "a bug in the gateway", self.error,
                           f"; {self.then}" if self.then else "", self._traceback_said(where, now),
                           exc_info=None if traced else err)
        elif where not in self._seen:
            self.log.error("%s still failing, now otherwise: %s%s", self.what, self.error,
                           self._traceback_said(where, now), exc_info=None if traced else err)
        self._seen.add(where)
        if limit is None:
            self._traced.setdefault(where, now)
        self.failures += 1

    def _traceback_said(self, where: tuple[str, str, int], now: float) -> str:
        # the same bug back after its end: its traceback is in the log already, from its first time
        for old, at in list(self._traced.items()):
            if now - at > RECUR_SECONDS:
                del self._traced[old]
        return f" (its traceback above, {span(now - self._traced[where])} ago)" if where in self._traced else ""

    def worked(self) -> None:
        if self._flap.open and self._flap.good(time.monotonic()):
            self.log.info("%s works again after %d failure%s", self.what, self.failures,
                          "" if self.failures == 1 else "s")
            self._seen, self.failures, self.error = set(), 0, ""

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Run the block as one pass of the job: an Exception is said (once) and not raised; cancellation is."""
        try:
            yield
        except Exception as err:  # noqa: BLE001 - what a bug raises cannot be listed: said here, the job goes on
            self.failed(err)
        else:
            self.worked()
