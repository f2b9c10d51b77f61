"""The gateway's fit processes, as the tests that wait for a fit find them."""
import os
from pathlib import Path


def fit_processes() -> list[int]:
    """Live children of this process running ven.fit_worker."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and b"ven.fit_worker" in (d / "cmdline").read_bytes():
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if ppid == os.getpid() and state != "Z":
                    out.append(int(d.name))
        except OSError:  # it exited while we looked
            continue
    return out


def fit_given_cpu() -> None:
    """The fit process runs at SCHED_IDLE, on CPU time nothing else wants: with the suite's other workers keeping
    both cores busy it got none for 90 s. These tests are about what a fit leaves, not its priority (bench/ measures
    that), so this process's fits get an ordinary share. Needs root or CAP_SYS_NICE (CI has it); else they wait as
    on a site."""
    for pid in fit_processes():
        try:
            if os.sched_getscheduler(pid) == os.SCHED_IDLE:
                os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))
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
