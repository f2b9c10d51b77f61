"""The gateway's fit processes, as the tests that wait for a fit find them."""
import os
from pathlib import Path


def children() -> list[int]:
    """This process's live children (not zombies), from its threads' lists: no look at anyone else's."""
    pids = []
    for task in Path("/proc/self/task").iterdir():
        try:
            pids += [int(pid) for pid in (task / "children").read_text().split()]
        except OSError:     # a thread that ended meanwhile
            pass
    return [pid for pid in pids if _state(pid) not in ("Z", "")]


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:  # it exited while we looked
        return ""


def fit_processes() -> list[int]:
    """Live children of this process running ven.fit_worker (or chrt, about to run it at idle priority).

    Only this process's children have their command lines read: reading a process's cmdline waits on its memory
    map's lock, which a fit process holds through its exec, and at idle priority on a loaded machine an exec took
    0.9 s (bench/fit_spawn.py); a look through all of /proc met every other worker's fits too."""
    out = []
    for pid in children():
        try:
            if b"ven.fit_worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
        except OSError:
            continue
    return out


def fit_given_cpu() -> None:
    """The fit process runs at SCHED_IDLE, on CPU time nothing else wants: with the suite's other workers keeping
    both cores busy it got none for 90 s. These tests are about what a fit leaves, not its priority (bench/ measures
    that), so this process's fits get an ordinary share: its children at SCHED_IDLE or a higher nice than this
    process (only fits are), found without reading their command lines (fit_processes). Needs root or
    CAP_SYS_NICE (CI has it); else they wait as on a site."""
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    for pid in children():
        try:
            if os.sched_getscheduler(pid) == os.SCHED_IDLE or os.getpriority(os.PRIO_PROCESS, pid) > ours:
                os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))
                os.setpriority(os.PRIO_PROCESS, pid, ours)
        except OSError:     # not allowed, or it exited meanwhile
            pass


async def fitted_with_cpu(fit):
    """Await a fit_in_child(...) coroutine, giving its process an ordinary share of the CPU (fit_given_cpu) as soon as
    it exists: at SCHED_IDLE beside the suite's six workers its Python start alone (about 130 ms of CPU) took over 30 s
    in a CI run."""
    import asyncio

    task = asyncio.ensure_future(fit)
    try:
        while not task.done():
            fit_given_cpu()
            await asyncio.wait([task], timeout=0.02)
        return task.result()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
