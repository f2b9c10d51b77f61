"""The event loop's own watchdog, for `run` under any supervisor (Docker's restart policy, runit, systemd).

A loop that stops turning (a call that never returns, a deadlock) leaves the process alive and every BACnet point
frozen, the VTN unanswered and the telemetry unread, and no supervisor restarts a process that has not exited. The
loop notes the time every second; a thread of its own looks every second, and once the loop has not noted it for
LOOP_STUCK_S writes every thread's stack to stderr (where the loop was stuck, for a bug report) and exits with
status 1. The state is SQLite's, safe at any instant, and the next start resumes from it.

A process that was stopped whole (SIGSTOP, Ctrl-Z, `docker pause`) is not stuck: the thread's own one-second sleep
then lasts as long as the stop, and it starts counting again. A call that never returns while holding the GIL stops
the thread too: faulthandler's timer, a C thread the thread re-arms every tenth of it, ends that one after
GIL_BACKSTOP_S (a pause longer than that may be taken for it: a restart, which is safe). systemd's WatchdogSec
(30 s in the shipped unit), outside the process, acts first where it is set.
"""
from __future__ import annotations

import asyncio
import faulthandler
import math
import os
import sys
import threading
import time

LOOP_STUCK_S = 60.0     # the loop's longest step in normal work is tens of milliseconds, a loaded one-core box's 0.3 s
BEAT_S = 1.0
PAUSED_S = 5.0          # the thread's sleep overshooting by this much: the whole process was stopped, not the loop
GIL_BACKSTOP_S = 600.0
EXIT_GRACE_S = 5.0      # the stacks get this long to be written: a stderr nobody reads (a stalled log driver)
                        # must not keep a stuck gateway alive


async def exit_when_stuck() -> None:
    """Run as a task from the end of the start to the end of the stop; cancelled, the thread ends."""
    beat = [time.monotonic()]
    done = threading.Event()
    threading.Thread(target=_watch, args=(beat, done, LOOP_STUCK_S), name="loop-watchdog", daemon=True).start()
    try:
        while True:
            beat[0] = time.monotonic()
            await asyncio.sleep(BEAT_S)
    finally:
        done.set()


def _watch(beat: list[float], done: threading.Event, stuck_s: float) -> None:
    fd = sys.stderr.fileno()    # written by descriptor: no lock the stuck loop may hold (sys.stderr's, logging's)
    last, armed = time.monotonic(), -math.inf
    try:
        while not done.wait(BEAT_S):
            now = time.monotonic()
            paused = now - last > BEAT_S + PAUSED_S
            if paused or now - armed >= GIL_BACKSTOP_S / 10:
                # each arming starts a C thread of faulthandler's own: a tenth of its time is often enough
                faulthandler.dump_traceback_later(GIL_BACKSTOP_S, exit=True, file=fd)
                armed = now
            if paused:
                beat[0] = now       # stopped and continued: the loop gets its time to turn again
            last = now
            if now - beat[0] >= stuck_s and not done.is_set():
                _exit(fd, now - beat[0])
    finally:
        faulthandler.cancel_dump_traceback_later()


def _exit(fd: int, stuck_for: float) -> None:
    threading.Timer(EXIT_GRACE_S, os._exit, (1,)).start()
    try:
        os.write(fd, f"edge-gateway: the event loop has not turned for {stuck_for:.0f} s: every thread's stack "
                     "follows; exiting (status 1) for the supervisor to restart it\n".encode())
        faulthandler.dump_traceback(file=fd, all_threads=True)
    except OSError:
        pass        # stderr gone (a pipe whose reader died): exit all the same
    finally:
        os._exit(1)
