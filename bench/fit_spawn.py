"""How long starting a fit process holds the gateway's event loop while other processes keep the cores busy.

    python bench/fit_spawn.py [--spawns 10] [--busy 0 2 4]

For each count of busy loops (`sh -c 'while :; do :; done'` at ordinary priority: another service, a compile, a
backup on the same box), this process starts `--spawns` fit processes one after another through
`ven.fit_worker.fit_in_child` (the job a sleep: only the start is measured) while a ticker task wakes every 5 ms.
Per spawn: how long the loop was held (the ticker's latest wake-up, from the spawn's start until the child has
begun Python's exec, and 10 ms after). The child is then ended. To compare two trees, run a copy of this file in
each (it imports the tree it is in). Prints a table; nothing is asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import pickle
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

TICK = 0.005
PF_FORKNOEXEC = 0x40     # a process forked that has not exec'd yet


def _child_running_python() -> bool:
    """A child of this process has begun Python's exec (for ven.fit_worker: it has no other children). Not from its
    cmdline: reading that waits on the child's memory map, which its exec holds, and at idle priority on busy cores
    an exec took 0.9 s, which the ticker counted as the loop held. From its stat: exec'd (PF_FORKNOEXEC clear) and
    not chrt, which the gateway starts the fit through where it can."""
    for task in Path("/proc/self/task").iterdir():
        try:
            for pid in (task / "children").read_text().split():
                head, _, tail = Path(f"/proc/{pid}/stat").read_text().rpartition(")")
                if not int(tail.split()[6]) & PF_FORKNOEXEC and head.partition("(")[2] != "chrt":
                    return True
        except OSError:
            continue
    return False


async def _one_spawn(job: bytes) -> float:
    """The longest ticker lateness in s over one fit process's start."""
    from ven.fit_worker import fit_in_child

    late = 0.0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal late
        while not stop.is_set():
            t = time.monotonic()
            await asyncio.sleep(TICK)
            late = max(late, time.monotonic() - t - TICK)

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(TICK * 2)
    start = time.monotonic()
    fit = asyncio.create_task(fit_in_child(job))
    while not _child_running_python() and not fit.done() and time.monotonic() - start < 60:
        await asyncio.sleep(0.001)
    await asyncio.sleep(TICK * 2)
    stop.set()
    await tick
    fit.cancel()
    await asyncio.gather(fit, return_exceptions=True)
    return late


async def _series(spawns: int, job: bytes) -> list[float]:
    out = []
    for _ in range(spawns):
        out.append(await _one_spawn(job))
        await asyncio.sleep(0.05)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spawns", type=int, default=10)
    ap.add_argument("--busy", type=int, nargs="+", default=[0, 2, 4])
    args = ap.parse_args()
    job = pickle.dumps(types.SimpleNamespace(run=functools.partial(time.sleep, 60)))
    rows = []
    for busy in args.busy:
        loops = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(busy)]
        try:
            time.sleep(0.5)
            got = asyncio.run(_series(args.spawns, job))
        finally:
            for p in loops:
                p.kill()
                p.wait()
        held = [g * 1000 for g in got]
        rows.append([busy, args.spawns, f"{statistics.median(held):.1f}", f"{max(held):.1f}"])
    print(C.table(["busy loops", "spawns", "loop held p50 ms", "max ms"], rows))


if __name__ == "__main__":
    main()
