"""The event loop's own watchdog, for `run` under any supervisor (Docker's restart policy, runit, systemd).

A loop that stops turning (a call that never returns, a deadlock) leaves the process alive and every BACnet point
frozen, the VTN unanswered and the telemetry unread, and no supervisor restarts a process that has not exited.
faulthandler's timer runs in a C thread that needs neither the loop nor the GIL: re-armed from the loop every
quarter of LOOP_STUCK_S, it fires only when the loop has not turned for that long, and then writes every thread's
stack to stderr (under "Timeout (0:01:00)!": where the loop was stuck, for a bug report) and exits with status 1.
The state is SQLite's, safe at any instant, and the next start resumes from it. systemd's WatchdogSec (30 s, the
shipped unit) acts first where it is set.
"""
from __future__ import annotations

import asyncio
import faulthandler

LOOP_STUCK_S = 60.0     # the loop's longest step in normal work is tens of milliseconds, a loaded one-core box's 0.3 s


async def exit_when_stuck() -> None:
    """Run as a task from the end of the start to the end of the stop; cancelled, the timer is disarmed."""
    try:
        while True:
            faulthandler.dump_traceback_later(LOOP_STUCK_S, exit=True)
            await asyncio.sleep(LOOP_STUCK_S / 4)
    finally:
        faulthandler.cancel_dump_traceback_later()
