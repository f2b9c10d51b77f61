"""Waiting for a condition in tests: poll with a deadline instead of sleeping a guessed time."""
from __future__ import annotations

import asyncio
import time


async def eventually(check, timeout: float, what: str = "condition", interval: float = 0.05):
    """Poll `check()` (sync or async) until it returns a truthy value, which is returned; else fail
    after `timeout` seconds naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        # the look at the deadline too: a list filled after the last look read as met in the failure's own message
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not met within {timeout} s (last: {last!r})")
        await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))


# The first cycle of a forecast service pays its imports (numpy, scikit-learn) and the history's load: a worker among
# eight on two cores with two busy loops beside took over 10 s (test_import_history). Waits for the first forecast take
# this; what a test times after it keeps its own bound.
FIRST_CYCLE_SECONDS = 40


async def while_growing(count, target: int, stalled: float, what: str = "count", interval: float = 0.5) -> None:
    """Poll `count()` until it reaches `target`; fail only once it has not grown for `stalled` seconds: for work
    whose pace is the machine's (a backlog sent to a VTN), bounded by its progress, not by a guessed total time."""
    last, since = None, time.monotonic()
    while (now := count()) < target:
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > stalled:
            raise AssertionError(f"{what}: stuck at {now} of {target} for {stalled} s")
        await asyncio.sleep(interval)
