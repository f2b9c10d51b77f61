"""The event loop's own watchdog, for `run` under any supervisor (Docker's restart policy, runit, systemd).

A loop that stops turning (a call that never returns, a deadlock) leaves the process alive and every BACnet point
frozen, the VTN unanswered and the telemetry unread, and no supervisor restarts a process that has not exited. The
loop notes the time every BEAT_S (5 s); a thread of its own looks as often, and once the loop has not noted it for
LOOP_STUCK_S writes every thread's stack to stderr (where the loop was stuck, for a bug report) and exits with
status 1. The state is SQLite's, safe at any instant, and the next start resumes from it.

A process that was stopped whole (SIGSTOP, Ctrl-Z, `docker pause`) is not stuck: the thread's own 5 s sleep
then lasts as long as the stop, and it starts counting again. A call that never returns while holding the GIL stops
the thread too: faulthandler's timer, a C thread the thread re-arms every tenth of it, ends that one after
GIL_BACKSTOP_S (a pause longer than that may be taken for it: a restart, which is safe). systemd's WatchdogSec
(30 s in the shipped unit), outside the process, acts first where it is set.
"""
from __future__ import annotations

import asyncio
import faulthandler
import logging
import math
import os
import sys
import threading
import time

LOOP_STUCK_S = 60.0     # the loop's longest step in normal work is tens of milliseconds, a loaded one-core box's 0.3 s
# Against a 60 s limit a look every 5 s exits within 70 s of the loop's last turn; at 1 s the loop and the thread
# each woke an idle gateway once a second (helper idle50)
BEAT_S = 5.0
PAUSED_S = 5.0          # the thread's sleep overshooting by this much: the whole process was stopped, not the loop
GIL_BACKSTOP_S = 600.0
EXIT_GRACE_S = 5.0      # the stacks get this long to be written: a stderr nobody reads (a stalled log driver)
                        # must not keep a stuck gateway alive
START_AGAIN_S = 60.0    # a thread that could not start (a process or memory limit reached) is tried again this often

log = logging.getLogger(__name__)


async def exit_when_stuck() -> None:
    """Run as a task from the end of the start to the end of the stop; cancelled, the thread ends."""
    beat = [time.monotonic()]
    done = threading.Event()
    # A process or memory limit reached (RLIMIT_NPROC, RLIMIT_AS) refuses a new thread: the gateway runs on, and
    # is watched once one starts
    tries = 0
    while True:
        try:
            threading.Thread(target=_watch, args=(beat, done, LOOP_STUCK_S), name="loop-watchdog",
                             daemon=True).start()
            break
        except RuntimeError as err:
            # once, and once when it starts: a line a minute while the limit holds is no news
            if not tries:
                log.warning("the event loop's watchdog thread could not start (%s: a process or memory limit?): a "
                            "stuck loop is not caught until it does; tried again every %g s", err, START_AGAIN_S)
            tries += 1
            await asyncio.sleep(START_AGAIN_S)
    if tries:
        log.info("the event loop's watchdog thread started, after %d failed tries", tries)
    try:
        while True:
            beat[0] = time.monotonic()
            await asyncio.sleep(BEAT_S)
    finally:
        done.set()


def _watch(beat: list[float], done: threading.Event, stuck_s: float) -> None:
    fd = sys.stderr.fileno()    # written by descriptor: no lock the stuck loop may hold (sys.stderr's, logging's)
    last, armed = time.monotonic(), -math.inf
    backstop_failing = False
    try:
        while not done.wait(BEAT_S):
            now = time.monotonic()
            paused = now - last > BEAT_S + PAUSED_S
            if paused or now - armed >= GIL_BACKSTOP_S / 10:
                # each arming starts a C thread of faulthandler's own: a tenth of its time is often enough. One that
                # cannot start (a process or memory limit reached) ended this thread, and with it the watch
                try:
                    faulthandler.dump_traceback_later(GIL_BACKSTOP_S, exit=True, file=fd)
                    armed = now
                    if backstop_failing:
                        _say(fd, "edge-gateway: the loop watchdog's backstop timer runs again\n")
                        backstop_failing = False
                except RuntimeError as err:
                    if not backstop_failing:
                        _say(fd, f"edge-gateway: the loop watchdog's backstop timer could not start ({err}: a process "
                                 "or memory limit?); the watch goes on, the timer is tried again at each look\n")
                    backstop_failing, armed = True, -math.inf
            if paused:
                beat[0] = now       # stopped and continued: the loop gets its time to turn again
            last = now
            if now - beat[0] >= stuck_s and not done.is_set():
                _exit(fd, now - beat[0])
    finally:
        faulthandler.cancel_dump_traceback_later()


def _say(fd: int, text: str) -> None:
    try:
        os.write(fd, text.encode())
    except OSError:
        pass


def _exit(fd: int, stuck_for: float) -> None:
    try:
        threading.Timer(EXIT_GRACE_S, os._exit, (1,)).start()
    except RuntimeError:
        pass        # no thread to spare: the stacks are written unguarded, then the exit
    try:
        os.write(fd, f"edge-gateway: the event loop has not turned for {stuck_for:.0f} s: every thread's stack "
                     "follows; exiting (status 1) for the supervisor to restart it\n".encode())
        faulthandler.dump_traceback(file=fd, all_threads=True)
    except OSError:
        pass        # stderr gone (a pipe whose reader died): exit all the same
    finally:
        os._exit(1)
