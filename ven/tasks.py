"""Stopping background tasks, and waiting a bounded time for work that goes on: patterns several owners repeat."""
from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


async def cancel_and_wait(*tasks: asyncio.Task | None) -> None:
    """Cancel the tasks and wait until each has ended; their own cancellation is not an error. One that had died of
    an error is said, with its traceback, and the rest are waited for all the same: raised here, it skipped the
    owner's clean-up after it (the forecaster's last save of its history)."""
    live = [t for t in tasks if t is not None]
    # a cancel of the caller that came before (the gateway stops in the cleanup of its cancelled task) is not
    # this one's business; one that comes while it waits (a stop given a time limit) must go on up, or the
    # stop would carry on as if it had finished in time
    already = asyncio.current_task().cancelling()
    for t in live:
        t.cancel()
    for t in live:
        try:
            await t
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling() > already:
                raise
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as err:  # noqa: BLE001 - its job had stopped unsaid: said now, at the latest (bacpypes3's
            # errors derive from BaseException)
            log.error("task %s had ended on an error: %s: %s", t.get_name(), type(err).__name__, err, exc_info=err)


async def woken(wake: asyncio.Event, timeout: float | None) -> None:
    """Wait until `wake` is set, or `timeout` seconds (None: no limit) have passed; then clear it for the next wait."""
    try:
        async with asyncio.timeout(timeout):
            await wake.wait()
    except TimeoutError:
        pass
    wake.clear()


async def at_most(work, seconds: float) -> None:
    """Wait for `work` at most `seconds`; past that it goes on, unwaited (shielded). asyncio.timeout, not wait_for:
    Python 3.11's wait_for drops a cancel that comes as the work ends, and a stop then waited for ever."""
    try:
        async with asyncio.timeout(seconds):
            await asyncio.shield(work)
    except TimeoutError:
        pass
