"""Shared pieces of the bench scripts: ports, percentiles, the peers process (VTN, meter, BAS), a
gateway configuration with a 35-day warm history, and a heartbeat that measures event-loop stalls.

The peers (demo VTN, routed meter simulator, BAS simulator) run in their own process, as they would
on other machines: the gateway's loop should only carry the gateway's work.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GATEWAY_DEVICE_ID = 500001
METER_OBJECT = "analogValue 6"  # meter-power: a read-only AV, the point a BAS polls most


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_tcp_port() -> int:
    return free_port(socket.SOCK_STREAM)


def pct(values, p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence; NaN when empty."""
    if not len(values):
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))]


async def wait_until(check, timeout: float, interval: float = 0.01):
    """Poll `check()` (sync or async) until it returns a truthy value, which is returned; None after
    `timeout` s (a benchmark records what did not happen rather than failing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(interval)
    return None


def quiet_logging(level: int = logging.ERROR) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)
    for name in ("openleadr", "aiohttp", "bacpypes3", "BAC0_Root", "apscheduler"):
        logging.getLogger(name).setLevel(level)


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time a process has used, from /proc (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int | str = "self") -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB, from /proc."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(rest.split()[0]) / 1024.0
    return fields.get("VmRSS", float("nan")), fields.get("VmHWM", float("nan"))


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else _fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(x) -> str:
    if isinstance(x, float):
        return "n/a" if x != x else (f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}")
    return str(x)


# ---- the gateway's configuration and a warm forecaster history ------------------------------------

def gateway_config_dict(storage: str, bacnet_port: int, meter_port: int, vtn_port: int, http_port: int, *,
                        poll_seconds: float = 10.0, telemetry_seconds: float = 10.0, cycle_seconds: float = 60.0,
                        retrain_minutes: float = 60.0, log_level: str = "WARNING") -> dict:
    """Production defaults unless told otherwise; only the ports and the storage file are bench-specific."""
    return {
        "bacnet": {"address": f"127.0.0.1/8:{bacnet_port}", "device_id": GATEWAY_DEVICE_ID,
                   "device_name": "EdgeGateway-bench"},
        "meter": {"address": "12345:2", "object": "analogInput 2", "router": f"127.0.0.1:{meter_port}",
                  "poll_seconds": poll_seconds, "timeout_seconds": min(5.0, max(1.0, poll_seconds))},
        "openadr": {"vtn_url": f"http://127.0.0.1:{vtn_port}/OpenADR2/Simple/2.0b", "ven_name": "gw-bench",
                    "telemetry_seconds": telemetry_seconds, "retry_max_seconds": 5.0},
        "storage": {"path": storage},
        "http": {"address": f"127.0.0.1:{http_port}"},
        "forecaster": {"cycle_seconds": cycle_seconds, "retrain_minutes": retrain_minutes},
        "log_level": log_level,
    }


def to_toml(cfg: dict) -> str:
    lines = []
    for section, values in cfg.items():
        if not isinstance(values, dict):
            lines.insert(0, f"{section} = {_toml_value(values)}")
    for section, values in cfg.items():
        if isinstance(values, dict):
            lines.append(f"\n[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def use_page_size(size: int) -> None:
    """Files the stores create from now on get `size`-byte pages (0: the stores' own); an existing file
    keeps its page size. A version without the setting keeps SQLite's 4,096."""
    if size:
        import forecaster.store
        try:
            import ven.storage_connect as connecting
        except ImportError:     # a version before 0.4.7 connects in ven.storage
            import ven.storage as connecting
        connecting.PAGE_SIZE = forecaster.store.PAGE_SIZE = size


def building_profile(now: float | None = None):
    from ven.demo import BuildingProfile
    from ven.demo_data import load_series

    return BuildingProfile(*load_series(), now=time.time() if now is None else now)


def seed_history(storage: str, now: float | None = None) -> int:
    """Write the shipped building's history (moved to the present) into the gateway's SQLite file, the
    way a gateway that has run for weeks finds it at start-up. No model is stored: the gateway fits
    on its first forecast cycle. Returns the number of minutes written."""
    from forecaster.store import ForecastStore
    from ven.config import ForecasterConfig
    from ven.forecast_service import forecaster_from_config

    now = time.time() if now is None else now
    fc = forecaster_from_config(ForecasterConfig())
    fc.seed(*building_profile(now).history(now))
    return ForecastStore(storage).save_minutes(*fc.drain_dirty())


# ---- the peers process: VTN, meter simulator and (optionally) a BAS simulator ------------------

def run_peers(conn, meter_port: int, vtn_port: int, vtn_poll_seconds: float = 10.0,
              bas_port: int | None = None, gateway: str | None = None, bas_interval: float = 10.0) -> None:
    """Process entry point. Sends "ready", then serves until it receives "stop"; answers with counts."""
    quiet_logging()
    asyncio.run(_peers(conn, meter_port, vtn_port, vtn_poll_seconds, bas_port, gateway, bas_interval))


async def _peers(conn, meter_port, vtn_port, vtn_poll_seconds, bas_port, gateway, bas_interval) -> None:
    from bacnet_api.bas_simulator import BasSimulator
    from bacnet_api.simulator import MeterSimulator
    from ven.vtn_server import DemoVtn

    quiet_logging()  # again: importing openleadr resets its logger's level
    profile = building_profile()
    vtn = DemoVtn(port=vtn_port, poll_seconds=vtn_poll_seconds)
    meter = MeterSimulator(address=f"127.0.0.1/8:{meter_port}", value=profile.kw(time.time()))
    parts = [vtn, meter]
    bas = None
    if bas_port is not None:
        bas = BasSimulator(bas_port, gateway, lambda: profile.kw(time.time()), interval=bas_interval)
        parts.append(bas)
    started = []
    try:
        for p in parts:
            await p.start()
            started.append(p)
        conn.send("ready")
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_reader(conn.fileno(), stop.set)
        while not stop.is_set():
            meter.set_value(bas.drawn_kw() if bas else profile.kw(time.time()))
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
        loop.remove_reader(conn.fileno())
        conn.recv()
    finally:
        for p in reversed(started):
            try:
                await p.stop()
            except Exception:
                pass
    conn.send({"vtn_reports": len(vtn.reports), "vtn_registrations": vtn.registrations,
               "bas_cycles": bas.cycles if bas else 0,
               "vtn_report_times": [ts.timestamp() for _, _, _, ts, _ in vtn.reports]})


class Peers:
    """The peers process, started and stopped from the bench's main process."""

    def __init__(self, meter_port: int, vtn_port: int, **kwargs):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=run_peers, args=(child, meter_port, vtn_port), kwargs=kwargs,
                                name="bench-peers", daemon=True)
        self.summary: dict = {}

    def start(self, timeout: float = 30.0) -> "Peers":
        self.proc.start()
        if not self.conn.poll(timeout):
            self.stop()
            raise RuntimeError("peers process did not start")
        self.conn.recv()
        return self

    def stop(self) -> dict:
        if self.proc.is_alive():
            try:
                self.conn.send("stop")
                if self.conn.poll(15):
                    self.summary = self.conn.recv()
            except (BrokenPipeError, EOFError, OSError):
                pass
        stop_process(self.proc)
        return self.summary


def stop_process(proc, timeout: float = 10.0) -> None:
    """Join a multiprocessing child we started; terminate, then kill, only that one if it lingers."""
    proc.join(timeout)
    if proc.is_alive():
        proc.terminate()
        proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join(5)


# ---- the cyclic garbage collector's pauses ------------------------------------------------------------

class GcPauses:
    """How long each collection of Python's cyclic GC held the GIL, by generation: a collection runs in
    whichever thread allocates, and every other thread, the event loop's too, waits for it."""

    def __init__(self):
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._t0 = None
        self.full_after_start: tuple[float, int, int] | None = None   # ms, objects tracked, objects frozen

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        elif self._t0 is not None:
            self.pauses[info["generation"]].append((time.perf_counter() - self._t0) * 1000)
            self._t0 = None

    def start(self) -> None:
        gc.callbacks.append(self._callback)

    def stop(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def rows(self) -> list[list]:
        return [[g, len(p), max(p, default=float("nan")), sum(p)] for g, p in self.pauses.items()]


# ---- event-loop heartbeat with a stall sampler -----------------------------------------------------

class Heartbeat:
    """A task that sleeps `period` s and records how late it wakes (the loop's stall), plus a watchdog
    thread that, while the heartbeat is overdue by more than `sample_after` s, records the stack of the
    loop's thread and of every other busy thread: the evidence for what caused a stall."""

    def __init__(self, period: float = 0.010, sample_after: float = 0.015, keep: int = 12, threads: bool = False):
        self.period = period
        self.threads = threads   # read every thread's CPU time at each beat: about 0.3 ms a beat on the loop
        self.sample_after = sample_after
        self.keep = keep
        self.lateness: list[float] = []
        self.max_late = 0.0  # kept as it goes: a progress line must not sort the whole run on the loop
        # (lateness s, wall time, stacks, (ms on CPU, ms waiting for a CPU) of the loop thread)
        self.stalls: list[tuple[float, float, list[str], tuple[float, float]]] = []
        self._expected = None
        self._task = None
        self._thread = None
        self._stop = threading.Event()
        self._loop_tid = None
        self._samples: list[list[str]] = []
        self._lock = threading.Lock()
        # wall time of a stall -> the process's other threads that ran on a CPU during it, busiest first:
        # a thread holding the GIL in one long C call cannot be sampled, but its CPU time shows
        self.others_on_cpu: dict[float, list[tuple[str, float]]] = {}

    def start(self) -> None:
        self._loop_tid = threading.get_ident()
        self._task = asyncio.get_running_loop().create_task(self._beat(), name="bench-heartbeat")
        self._thread = threading.Thread(target=self._watch, name="bench-stall-sampler", daemon=True)
        self._thread.start()

    def reset(self) -> None:
        self.max_late = 0.0
        self.lateness.clear()
        self.stalls.clear()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._thread is not None:
            self._thread.join(2)

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        sched, threads = _schedstat(), _threads_cpu() if self.threads else {}
        while True:
            self._expected = loop.time() + self.period
            await asyncio.sleep(self.period)
            late = loop.time() - self._expected
            before, sched = sched, _schedstat()
            threads_before, threads = threads, _threads_cpu() if self.threads else {}
            self.lateness.append(late)
            self.max_late = max(self.max_late, late)
            with self._lock:
                samples, self._samples = self._samples, []
            if late > self.sample_after:
                split = ((sched[0] - before[0]) / 1e6, (sched[1] - before[1]) / 1e6) if sched and before else (0.0, 0.0)
                at = time.time()
                self.stalls.append((late, at, samples[-1] if samples else [], split))
                self.stalls.sort(key=lambda s: -s[0])
                del self.stalls[self.keep:]
                if self.threads:   # kept for the stalls kept, as they are
                    self.others_on_cpu[at] = _busiest(threads_before, threads, threading.get_native_id())
                    self.others_on_cpu = {s[1]: self.others_on_cpu[s[1]] for s in self.stalls if s[1] in self.others_on_cpu}

    def _watch(self) -> None:
        while not self._stop.wait(0.004):
            expected = self._expected
            if expected is None or time.monotonic() - expected < self.sample_after:
                continue
            stacks = describe_threads(self._loop_tid)
            with self._lock:
                self._samples.append(stacks)
                del self._samples[:-3]

    def summary(self) -> dict:
        ms = [x * 1000 for x in self.lateness]
        return {"beats": len(ms), "max_ms": max(ms) if ms else float("nan"), "p99_ms": pct(ms, 99),
                "p999_ms": pct(ms, 99.9), "p50_ms": pct(ms, 50),
                "over_20ms": sum(1 for x in ms if x > 20), "over_10ms": sum(1 for x in ms if x > 10)}


def _schedstat() -> tuple[int, int] | None:
    """(ns on CPU, ns runnable but waiting for a CPU) of the calling thread, from the Linux scheduler."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            run, wait, _ = f.read().split()
        return int(run), int(wait)
    except (OSError, ValueError):
        return None


def _threads_cpu() -> dict[int, int]:
    """ns on a CPU of each thread of this process (Python's and native ones: OpenMP, BLAS, sqlite)."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                out[int(tid)] = int(f.read().split()[0])
        except (OSError, ValueError):
            pass
    return out


def _busiest(before: dict[int, int], after: dict[int, int], loop_tid: int) -> list[tuple[str, float]]:
    names = {t.native_id: t.name for t in threading.enumerate()}
    used = [(names.get(tid, f"native {tid}"), (ns - before.get(tid, 0)) / 1e6)
            for tid, ns in after.items() if tid != loop_tid]
    return sorted([u for u in used if u[1] >= 1.0], key=lambda u: -u[1])[:3]


_IDLE = ("wait", "select", "poll", "_worker", "get", "acquire", "_wait_for_tstate_lock", "sleep", "epoll")


def describe_threads(loop_tid: int, depth: int = 6) -> list[str]:
    """The loop thread's innermost frames, and any other thread that is not idle, as short lines."""
    names = {t.ident: t.name for t in threading.enumerate()}
    out = []
    for tid, frame in sys._current_frames().items():
        if tid == threading.get_ident():
            continue
        stack = traceback.extract_stack(frame)
        if tid != loop_tid and (not stack or stack[-1].name in _IDLE):
            continue
        inner = [f"{_short(f.filename)}:{f.lineno} {f.name}" for f in stack[-depth:]]
        who = "LOOP" if tid == loop_tid else names.get(tid, str(tid))
        out.append(f"{who}: " + " < ".join(reversed(inner)))
    return out


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        i = path.find(marker)
        if i >= 0:
            return path[i + len(marker):]
    return os.path.basename(path)
