"""cancel_and_wait, the stop every owner of a task uses: pure asyncio, no peers."""
from __future__ import annotations

import asyncio

import pytest

from ven.tasks import cancel_and_wait


@pytest.mark.timeout(10)
async def test_the_tasks_cancel_ends_them_and_is_not_an_error():
    tasks = [asyncio.create_task(asyncio.sleep(10)) for _ in range(3)]
    await cancel_and_wait(*tasks, None)
    assert all(t.cancelled() for t in tasks)


@pytest.mark.timeout(10)
async def test_a_stop_given_a_time_limit_that_runs_out_is_cancelled():
    # The caller's own cancel went into the `except CancelledError: pass` meant for the task's: a task that
    # lost its first cancel (as a loop on Python 3.11's wait_for could) ended at the second, which the
    # caller's time limit sends through, and the stop carried on as if in time.
    lost = []

    async def loses_the_first_cancel():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            lost.append(1)
        await asyncio.sleep(10)

    task = asyncio.create_task(loses_the_first_cancel())
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await cancel_and_wait(task)
    assert lost == [1] and task.cancelled()


@pytest.mark.timeout(10)
async def test_a_stop_in_the_cleanup_of_a_cancelled_task_still_runs_to_its_end():
    # how the gateway stops at SIGTERM: its task is cancelled and stops its parts in the cleanup
    stopped = []

    async def runs_until_cancelled():
        part = asyncio.create_task(asyncio.sleep(10))
        try:
            await asyncio.sleep(10)
        finally:
            await cancel_and_wait(part)
            stopped.append(part.cancelled())

    task = asyncio.create_task(runs_until_cancelled())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert stopped == [True] and task.cancelled()
