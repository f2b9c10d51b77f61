"""CPU seconds of the machine's processes by kind while a command runs (the test suite, by default).

    python bench/suite_cpu.py [--interval 1] [-- python -m pytest -q -n 8]

Samples /proc every INTERVAL seconds while COMMAND runs, and prints a table of CPU seconds by kind of process:
Chromium's renderers, its browser and GPU/utility processes, Playwright's driver, the pytest controller, the xdist
workers (with the gateways and CLI commands tests/zygote.py forks from them: a fork keeps its parent's command
line), gateways started by exec, and the rest by their command. Counts every process on the machine, not only the
command's: run it on a quiet machine. A process's CPU after its last sample is not seen, so short-lived ones are
undercounted by up to an interval each. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")


def kind(cmdline: bytes) -> str | None:
    args = [a.decode(errors="replace") for a in cmdline.split(b"\0") if a]
    if not args:
        return None     # a kernel thread
    line = " ".join(args)
    exe = os.path.basename(args[0])
    if "chromium" in args[0] or exe.startswith("chrome"):
        if "--type=renderer" in line:
            return "Chromium renderers"
        return "Chromium GPU/utility" if "--type=" in line else "Chromium browser"
    if "playwright" in line and exe == "node":
        return "Playwright driver (node)"
    if "python" in exe:
        if "exec(eval(sys.stdin.readline()))" in line:
            return "xdist workers (and the gateways and CLIs they fork)"
        if " -m pytest" in line or "bin/pytest" in line:
            return "pytest controller (and pytest runs tests start)"
        if "ven.cli" in line or "edge-gateway" in line:
            return "gateways and CLIs started by exec"
        if "ven.fit_worker" in line or "multiprocessing" in line:
            return "fit processes"
        return "python: " + " ".join(" ".join(args[1:3]).split())[:50]
    return exe[:40]


def sample(last: dict, names: dict, total: collections.Counter, first: bool) -> None:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            key, cpu = (pid, fields[19]), int(fields[11]) + int(fields[12])   # (pid, start time): pids are reused
            if key not in names:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    names[key] = kind(f.read())
        except (OSError, IndexError):
            continue
        if names[key] is None:
            continue
        # a process there at the first sample counts from then; one born later, from its start
        before = last.get(key, cpu if first else 0)
        total[names[key]] += (cpu - before) / HZ
        last[key] = cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("command", nargs="*", default=[sys.executable, "-m", "pytest", "-q", "-n", "8"])
    args = ap.parse_args()
    last: dict = {}
    names: dict = {}
    total: collections.Counter = collections.Counter()
    load0, t0 = os.getloadavg()[0], time.monotonic()
    sample(last, names, total, first=True)
    total.clear()
    run = subprocess.Popen(args.command)
    while run.poll() is None:
        time.sleep(args.interval)
        sample(last, names, total, first=False)
    wall = time.monotonic() - t0
    cpus = os.cpu_count() or 1
    spent = sum(total.values())
    print(f"\n{' '.join(args.command)}: exit {run.returncode}, {wall:.0f} s, load average {load0:.2f} -> "
          f"{os.getloadavg()[0]:.2f}; {spent:.0f} CPU-s seen of {wall * cpus:.0f} on {cpus} CPUs")
    print(f"{'kind':56s} {'CPU s':>8s} {'share':>6s}")
    print(f"{'-' * 56} {'-' * 8} {'-' * 6}")
    for name, seconds in total.most_common():
        if seconds >= 0.05:
            print(f"{name:56s} {seconds:8.1f} {100 * seconds / spent:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
