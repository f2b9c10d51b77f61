"""The forecaster's fit, run as a child process: `python -m ven.fit_worker`.

Reads a pickled forecaster FitJob on stdin and writes the pickled FittedModel (or None) on stdout.
The gateway starts one per fit, at idle CPU priority: the fit then never holds the gateway's GIL,
runs only on CPU time nothing else wants, so BACnet and the VEN keep their pace during a fit, and its
scikit-learn memory (about 100 MB) is returned when it exits. Short of memory, the kernel kills it first.
"""
from __future__ import annotations

import asyncio
import os
import pickle
import shutil
import signal
import sys
from pathlib import Path

DETAIL_LINES = 12   # of the child's stderr kept for the log: a traceback's end (one journal line: kept short)
TIMEOUT_S = 3600.0  # a fit takes seconds; one that hangs must not block every later one
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# util-linux's, on every Debian-based box and image: puts the fit at idle priority before Python starts, without the
# gateway waiting on a child that is at idle priority already (_born_nice)
CHRT = shutil.which("chrt")


class FitError(RuntimeError):
    """The fit process failed; the message carries its exit status and last error line, `detail` the end of what it
    wrote to stderr (a traceback: where it failed, which the last line alone does not say)."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


async def fit_in_child(job_blob: bytes, threads: int = 1, timeout: float = TIMEOUT_S) -> bytes:
    """Run a pickled FitJob in a child process; the pickled result. The child dies with the caller."""
    global CHRT
    path = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               _FIT_PARENT=str(os.getpid()), PYTHONPATH=path)
    # its own process group: a terminal's Ctrl-C goes to the gateway, which ends the fit as it stops. Not its own
    # session: with the kernel's autogroups (most desktops and servers) a session shares the CPUs as an equal of the
    # gateway's, SCHED_IDLE or not, and reads slowed to 0.6-0.8x during a fit. -P: `-m` would put the working
    # directory first on the path, and a gateway run from a checkout fitted with the checkout's code
    # Born with the stop signals blocked (a signal mask survives fork and exec): one that arrives before the child
    # has set them to ignored waits, and is then discarded, instead of ending a fit the gateway is about to end
    command, low = [sys.executable, "-P", "-m", "ven.fit_worker"], {}
    if CHRT:
        command[:0] = [CHRT, "--idle", "0"]
    else:
        low["preexec_fn"] = _born_nice
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        proc = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env, process_group=0, **low)
    except OSError as err:  # "Resource temporarily unavailable" said nothing of which
        raise FitError(f"fit process could not start: {err} (a process or memory limit reached: LimitNPROC, "
                       "TasksMax, ulimit -u, LimitAS?)") from err
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate(job_blob)
    except TimeoutError:
        raise FitError(f"fit process still running after {timeout:g} s{_cpu_had(proc.pid, timeout)}; killed") from None
    finally:
        if proc.returncode is None:  # timed out, or the gateway is stopping
            proc.kill()
            await proc.wait()
        await _stdin_closed(proc)
    if proc.returncode < 0:     # no error line of its own: the signal is the news
        raise FitError(f"fit process was killed by signal {-proc.returncode} ({_why(-proc.returncode)})")
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        if CHRT and lines and lines[-1].startswith("chrt: ") and not out:
            # the policy refused (a seccomp filter, a container's profile): later fits start at nice 19 instead
            CHRT = None
            return await fit_in_child(job_blob, threads, timeout)
        raise FitError(f"fit process exited with status {proc.returncode}: {lines[-1] if lines else 'no message'}",
                       "\n".join(lines[-DETAIL_LINES:]))
    return out


async def _stdin_closed(proc: asyncio.subprocess.Process) -> None:
    # A child gone before it read its whole job (the gateway stopping, the OOM killer) breaks the pipe. Python
    # 3.11 as Debian 12 ships it (3.11.2) keeps that error for whoever waits for the pipe to close, and with
    # nobody waiting logs "Future exception was never retrieved" and a BrokenPipeError traceback
    try:
        async with asyncio.timeout(1.0):
            await proc.stdin.wait_closed()
    except (TimeoutError, BrokenPipeError, ConnectionResetError):
        pass


def _cpu_had(pid: int, elapsed: float) -> str:
    # At idle priority a fit runs only on CPU time nothing else wants: on a one-core box kept busy (a BAS polling
    # flat out, another service) it starves, and "still running" read as a fit that hangs. Its CPU time tells which
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime
    except (OSError, ValueError, IndexError):    # not Linux
        return ""
    return cpu_words(seconds, elapsed)


def cpu_words(seconds: float, elapsed: float) -> str:
    """What a fit's CPU time over `elapsed` s says of a fit out of time: starved, or stuck with the CPU it had."""
    if seconds >= 0.5 * elapsed:
        # Under an address-space limit (LimitAS 340-360 MB, measured) OpenBLAS retried an allocation for the whole
        # hour, on a CPU it had to itself: blaming the CPU sent the installer to look at the wrong thing
        return (f", having had {seconds:.1f} s of CPU, so not starved of it: stuck, perhaps retrying a memory "
                "allocation under a limit (LimitAS, ulimit -v)")
    return f", having had {seconds:.1f} s of CPU (at idle priority: only CPU time nothing else on the box wants)"


def _why(signum: int) -> str:
    # The kernel's OOM killer (a systemd MemoryMax=, a small box) sends SIGKILL; so would an operator's kill -9
    if signum == signal.SIGKILL:
        return "SIGKILL: out of memory?"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "unknown signal"


def _born_nice() -> None:
    # Where there is no chrt. Runs in the child between fork and exec, and the gateway's loop waits in the spawn
    # until the exec. The child was put at SCHED_IDLE here: on a box whose cores other work kept busy it got no
    # turn for the exec, and each fit's start held the loop, and the BAS's reads, 0.6-4 s (bench/fit_spawn.py).
    # Nice 19 (weight 15 against the gateway's 1024) gets the exec done sooner (0.2-0.6 s there) and still keeps
    # Python's start (100-130 ms of CPU) from sharing a one-core box with the BAS's reads; main() moves to
    # SCHED_IDLE. Only system calls here, no lock another thread of the gateway could hold at the fork. Nothing may
    # raise: an exception in a preexec_fn fails the spawn
    try:
        os.setpriority(os.PRIO_PROCESS, 0, 19)
    except OSError:
        pass


def _idle() -> None:
    # SCHED_IDLE: the scheduler gives this process a core only when nothing else wants it (chrt set it already,
    # where there is one). Where that policy is missing, nice 19 from the fork stays, and comes close
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        pass


def _first_to_go() -> None:
    # Short of memory, the kernel kills the process it scores highest, by size: that may be the gateway (its
    # history grows with forecaster.history_days) or another service on the box. A fit can be tried again.
    try:
        with open("/proc/self/oom_score_adj", "w") as fh:
            fh.write("1000")
    except OSError:     # not Linux (raising its own score needs no privilege)
        pass


def _leave_stopping_to_the_parent() -> None:
    # systemd stops a unit by sending SIGTERM to each of its processes: a fit that died of it was logged as a
    # failed fit by a gateway merely stopping. The gateway kills its fit when it stops, and the kernel when it dies.
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _die_with_parent() -> None:
    # A gateway killed with SIGKILL cannot end its child, and a supervisor restarting it at once
    # would have two fits running side by side. Linux ends this process when its parent goes.
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.environ.get("_FIT_PARENT") not in (None, str(os.getppid())):
        raise SystemExit(1)  # the parent was gone before the line above took effect


def main() -> int:
    _idle()
    _leave_stopping_to_the_parent()
    _die_with_parent()
    _first_to_go()
    job = pickle.load(sys.stdin.buffer)
    fitted = job.run()
    sys.stdout.buffer.write(pickle.dumps(fitted, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
