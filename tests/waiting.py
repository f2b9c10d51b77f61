"""Waiting for a condition in tests: poll with a deadline instead of sleeping a guessed time."""
from __future__ import annotations

import asyncio
import time


async def eventually(check, timeout: float, what: str = "condition", interval: float = 0.05):
    """Poll `check()` (sync or async) until it returns a truthy value, which is returned; else fail
    after `timeout` seconds naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"{what}: not met within {timeout} s (last: {last!r})")


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
