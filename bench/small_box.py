"""A small box: BLAS/OpenMP threads and the fit child's priority under one CPU (affinity, cgroup quota).

    python bench/small_box.py [--cycles 300] [--seconds 20]

Part 1, threads. A probe process per condition (both CPUs; `taskset`-style affinity to one CPU; a cgroup with a
1-CPU quota, as systemd CPUQuota=100% or docker --cpus 1 give, when this process may create one: root and a
writable cpu controller) imports the gateway's entry point and numpy as the gateway does, then runs one real fit
through `ven.fit_worker.fit_in_child` on the shipped building's 35 days and `--cycles` forecast cycles with the
fitted model. It reports the threads OpenBLAS starts in the gateway (threadpoolctl), the CPU time those threads
used, the most threads the fit child had, and how long the fit child ran before it was at idle priority.

Part 2, the BAS during a fit child's start, all on one CPU (affinity): a bacpypes3 device process (standing in
for the gateway) starts a fit child every 1.5 s (its job a sleep, so only the child's start-up competes; ended
after 1.2 s, as at idle priority it gets no CPU), and this process reads the device's analogValue flat out, one
at a time, for `--seconds`. Reads/s and latency in the 0.4 s after each start against the rest, and how long the
spawn held the device's loop.

Part 3, numpy's import with a BAS reading every 2 ms, everything in a cgroup with a 1-CPU quota (when this process
may create one), with OpenBLAS's default threads and with OPENBLAS_NUM_THREADS=1 (what `edge-gateway` sets):
read latency in the 0.6 s from the import, and the time the quota held the processes off the CPU.

Run it on two trees to compare (PYTHONPATH picks the code under test). Prints tables; nothing is asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import pickle
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

TCK = os.sysconf("SC_CLK_TCK")
SCHED_IDLE = 5


def _stat(pid: int | str, task: str | None = None) -> tuple[int, int, float]:
    """(nice, scheduling policy, CPU seconds) of a process, or of one of its threads."""
    path = f"/proc/{pid}/task/{task}/stat" if task else f"/proc/{pid}/stat"
    f = Path(path).read_text().rsplit(")", 1)[1].split()
    return int(f[16]), int(f[38]), (int(f[11]) + int(f[12])) / TCK


def _children() -> list[int]:
    pids = []
    for t in Path("/proc/self/task").iterdir():
        try:
            pids += [int(p) for p in (t / "children").read_text().split()]
        except FileNotFoundError:
            pass
    return pids


class ChildWatch:
    """From another thread: the first child this process starts, its priority when first seen, how long it ran
    (wall, CPU) before it was at idle priority, and the most threads it had."""

    def __init__(self):
        self.first = None
        self.normal_ms = self.normal_cpu_ms = None
        self.max_threads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pid = None
        while pid is None and not self._stop.is_set():
            kids = _children()
            pid = kids[0] if kids else None
        if pid is None:
            return
        seen = time.perf_counter()
        while not self._stop.is_set():
            try:
                nice, policy, cpu = _stat(pid)
                self.max_threads = max(self.max_threads, len(os.listdir(f"/proc/{pid}/task")))
            except (OSError, IndexError):
                return
            if self.first is None:
                self.first = (nice, policy)
            if self.normal_ms is None and (policy == SCHED_IDLE or nice > 0):
                self.normal_ms, self.normal_cpu_ms = (time.perf_counter() - seen) * 1000, cpu * 1000
            time.sleep(0.0005 if self.normal_ms is None else 0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# ---- part 1: the probe --------------------------------------------------------------------------------

def probe(cycles: int, cgroup: str | None) -> dict:
    import ven.cli

    try:
        ven.cli.main(["--version"])     # the entry point: whatever it sets before numpy is imported
    except SystemExit:
        pass
    # the loop's view of numpy's import: a thread waking every 2 ms, from the import to 0.5 s after it
    late, stop = [0.0], threading.Event()

    def beat():
        while not stop.is_set():
            t = time.perf_counter()
            time.sleep(0.002)
            late[0] = max(late[0], time.perf_counter() - t - 0.002)

    throttled = _throttled_ms(cgroup)
    beater = threading.Thread(target=beat)
    beater.start()
    tasks = set(os.listdir("/proc/self/task"))
    import numpy  # noqa: F401
    from threadpoolctl import threadpool_info

    blas_tids = set(os.listdir("/proc/self/task")) - tasks
    time.sleep(0.5)
    stop.set()
    beater.join()
    throttled = _throttled_ms(cgroup) - throttled
    from ven.config import ForecasterConfig
    from ven.fit_worker import fit_in_child
    from ven.forecast_service import forecaster_from_config

    now = time.time()
    fc = forecaster_from_config(ForecasterConfig())
    fc.seed(*C.building_profile(now).history(now))
    watch = ChildWatch()
    t = time.perf_counter()
    blob = asyncio.run(fit_in_child(pickle.dumps(fc.fit_job(now))))
    fit_s = time.perf_counter() - t
    watch.stop()
    fc.fit_done(pickle.loads(blob))
    t = time.perf_counter()
    for i in range(cycles):
        fc.predict(now + i * 1e-3)
    predict_ms = (time.perf_counter() - t) * 1000 / cycles
    blas_cpu = 0.0
    for tid in blas_tids:
        try:
            blas_cpu += _stat("self", tid)[2]
        except OSError:
            pass
    return {"late_ms": late[0] * 1000, "throttled_ms": throttled,
            "openblas": [i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas"],
            "extra_threads": len(blas_tids), "extra_cpu_ms": blas_cpu * 1000, "predict_ms": predict_ms,
            "rss_mb": C.rss_mb()[0], "fit_s": fit_s, "child_first": watch.first, "child_normal_ms": watch.normal_ms,
            "child_normal_cpu_ms": watch.normal_cpu_ms, "child_threads": watch.max_threads,
            "cpus": len(os.sched_getaffinity(0))}


def _throttled_ms(cgroup: str | None) -> float:
    """Time the cgroup's quota held its processes off the CPU (0 without a cgroup)."""
    if not cgroup:
        return 0.0
    stat = dict(line.split() for line in Path(cgroup, "cpu.stat").read_text().splitlines())
    if "throttled_usec" in stat:
        return int(stat["throttled_usec"]) / 1000
    return int(stat.get("throttled_time", 0)) / 1e6


def _remove(cgroup: Path) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            return cgroup.rmdir()
        except OSError:     # busy until the last process in it (a child just stopped) is gone
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _cgroup_one_cpu() -> Path | None:
    """A new cgroup with a 1-CPU quota, or None if this process may not make one."""
    name = f"small-box-bench-{os.getpid()}"
    root = Path("/sys/fs/cgroup")
    try:
        if "cpu" in (root / "cgroup.controllers").read_text().split():     # cgroup v2
            d = root / name
            d.mkdir()
            (d / "cpu.max").write_text("100000 100000")
            return d
    except OSError:
        pass
    try:
        d = root / "cpu" / name                                             # cgroup v1
        d.mkdir()
        (d / "cpu.cfs_period_us").write_text("100000")
        (d / "cpu.cfs_quota_us").write_text("100000")
        return d
    except OSError:
        return None


def run_probe(label: str, cycles: int, cpus: set[int] | None = None, cgroup: Path | None = None) -> dict:
    code = ("import json, os, sys\n"
            f"cpus, cgroup = {sorted(cpus) if cpus else None!r}, {str(cgroup) if cgroup else None!r}\n"
            "if cpus: os.sched_setaffinity(0, cpus)\n"
            "if cgroup: open(cgroup + '/cgroup.procs', 'w').write(str(os.getpid()))\n"
            f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
            "import small_box\n"
            f"print(json.dumps(small_box.probe({cycles}, cgroup)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{label}: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- part 2: the BAS during a fit child's start --------------------------------------------------------

def run_device(conn, port: int, seconds: float, mode: str) -> None:
    asyncio.run(_device(conn, port, seconds, mode))


async def _device(conn, port: int, seconds: float, mode: str) -> None:
    from bacpypes3.local.analog import AnalogValueObject

    from bacnet_api.client import close_stack, start_stack
    from ven.fit_worker import fit_in_child

    app = await start_stack(f"127.0.0.1/8:{port}", 600002, "small-box-device")
    app.add_object(AnalogValueObject(objectIdentifier=("analogValue", 6), objectName="meter-power",
                                     presentValue=87.5, units="kilowatts", statusFlags=[0, 0, 0, 0],
                                     eventState="normal", outOfService=False))
    conn.send("ready")
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)     # go: the BAS reads, this loop answers
    starts, spawn_ms = [], []
    if mode == "import":    # numpy's import, in a worker thread as the gateway's, once the BAS reads
        await asyncio.sleep(1.0)
        starts.append(time.time())
        t = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(None, __import__, "numpy")
        spawn_ms.append((time.perf_counter() - t) * 1000)
        await asyncio.sleep(seconds - 1.0)
        await close_stack(app)
        conn.send({"starts": starts, "spawn_ms": spawn_ms})
        return
    job = pickle.dumps(types.SimpleNamespace(run=functools.partial(time.sleep, 0.3)))
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            starts.append(time.time())
            t = time.perf_counter()
            fit = asyncio.ensure_future(fit_in_child(job))
            await asyncio.sleep(0)          # the spawn runs on this loop, as in the gateway
            spawn_ms.append((time.perf_counter() - t) * 1000)
            # at idle priority it gets no CPU while the BAS reads flat out: ended (killed) as the gateway would
            await asyncio.sleep(1.2)
            fit.cancel()
            await asyncio.gather(fit, return_exceptions=True)
            await asyncio.sleep(max(0.0, 1.5 - (time.time() - starts[-1])))
    finally:
        await close_stack(app)
    conn.send({"starts": starts, "spawn_ms": spawn_ms})


async def read_paced(address: str, seconds: float, go, pause: float) -> list[tuple[float, float]]:
    """A BAS reading one at a time, `pause` seconds between reads (0: flat out)."""
    from bacpypes3.pdu import Address

    from bacnet_api.client import close_stack, object_id, start_stack

    app = await start_stack(f"127.0.0.1/8:{C.free_port()}", 4000202, "small-box-bas")
    dest, obj = Address(address), object_id(C.METER_OBJECT)
    reads = []
    try:
        await app.read_property(dest, obj, "presentValue")
        go()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            t0, t = time.time(), time.perf_counter()
            try:
                await asyncio.wait_for(app.read_property(dest, obj, "presentValue"), 10.0)
            except (asyncio.TimeoutError, Exception):
                continue
            reads.append((t0, (time.perf_counter() - t) * 1000))
            if pause:
                await asyncio.sleep(pause)
    finally:
        await close_stack(app)
    return reads


def part2(seconds: float, mode: str = "spawn", window: float = 0.4) -> dict:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    port = C.free_port()
    conn, child = ctx.Pipe()
    proc = ctx.Process(target=run_device, args=(child, port, seconds, mode), daemon=True)
    proc.start()
    try:
        if not conn.poll(60):
            raise RuntimeError("device did not start")
        conn.recv()
        reads = asyncio.run(read_paced(f"127.0.0.1:{port}", seconds + 0.5, lambda: conn.send("go"),
                                       0.002 if mode == "import" else 0.0))
        if not conn.poll(60):
            raise RuntimeError("device did not report")
        dev = conn.recv()
    finally:
        C.stop_process(proc)
    near = [ms for t, ms in reads if any(0 <= t - s < window for s in dev["starts"])]
    rest = [ms for t, ms in reads if not any(0 <= t - s < window for s in dev["starts"])]
    span = reads[-1][0] - reads[0][0] if reads else 0.0
    near_s = len(dev["starts"]) * window
    return {"near": near, "rest": rest, "near_rate": len(near) / near_s, "rest_rate": len(rest) / (span - near_s),
            **dev}


def part3(starts: int) -> None:
    """numpy's import in the device while the BAS reads, everything in a cgroup with a 1-CPU quota."""
    cgroup = _cgroup_one_cpu()
    if cgroup is None:
        print("\npart 3: n/a (no cgroup: needs root and a writable cpu controller)")
        return
    rows = []
    try:
        Path(cgroup, "cgroup.procs").write_text(str(os.getpid()))     # the device and the BAS follow
        results = {"OpenBLAS's default": ([], [], [], []), "OPENBLAS_NUM_THREADS=1": ([], [], [], [])}
        for i in range(starts):
            for label, (near, rest, import_ms, throttled) in results.items():
                if label == "OpenBLAS's default":
                    os.environ.pop("OPENBLAS_NUM_THREADS", None)
                else:
                    os.environ["OPENBLAS_NUM_THREADS"] = "1"
                before = _throttled_ms(str(cgroup))
                r = part2(2.5, "import", 0.6)
                throttled.append(_throttled_ms(str(cgroup)) - before)
                near += r["near"]
                rest += r["rest"]
                import_ms += r["spawn_ms"]
        for label, (near, rest, import_ms, throttled) in results.items():
            rows.append([label, len(near), f"{C.pct(near, 50):.2f}", f"{C.pct(near, 99):.2f}", f"{max(near):.2f}",
                         f"{C.pct(rest, 99):.2f}", f"{max(rest):.2f}", f"{C.pct(import_ms, 50):.0f}",
                         f"{sum(throttled):.0f}"])
    finally:
        os.environ.pop("OPENBLAS_NUM_THREADS", None)
        root = cgroup.parent if cgroup.parent.name == "cpu" else Path("/sys/fs/cgroup")
        for pid in Path(cgroup, "cgroup.procs").read_text().split():     # this one, multiprocessing's tracker
            try:
                Path(root, "cgroup.procs").write_text(pid)
            except OSError:     # it ended meanwhile
                pass
        _remove(cgroup)
    print(f"\npart 3: a BAS reading every 2 ms while the device imports numpy ({starts} device starts each), "
          f"all in a cgroup with a 1-CPU quota")
    print(C.table(["setting", "reads in the 0.6 s from the import", "p50 ms", "p99 ms", "max ms", "the rest: p99 ms",
                   "max ms", "import ms (median)", "quota throttled ms (sum)"], rows))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=300, help="forecast cycles in each probe")
    ap.add_argument("--seconds", type=float, default=20.0, help="part 2's length")
    ap.add_argument("--part", choices=("1", "2", "3", "all"), default="all")
    ap.add_argument("--imports", type=int, default=8, help="part 3's device starts per setting")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs; code under test: "
          f"{__import__('ven').__file__}", flush=True)
    if args.part in ("3", "all"):
        part3(args.imports)
    if args.part in ("1", "all"):
        rows = []
        conditions = [("both CPUs", None, False), ("affinity 1 CPU", {min(os.sched_getaffinity(0))}, False),
                      ("cgroup 1-CPU quota", None, True)]
        for label, cpus, quota in conditions:
            cgroup = _cgroup_one_cpu() if quota else None
            if quota and cgroup is None:
                rows.append([label, "n/a (no cgroup: needs root)"] + [""] * 10)
                continue
            try:
                r = run_probe(label, args.cycles, cpus, cgroup)
            finally:
                if cgroup is not None:
                    _remove(cgroup)
            rows.append([label, r["cpus"], r["openblas"], r["extra_threads"], f"{r['extra_cpu_ms']:.0f}",
                         f"{r['late_ms']:.1f}", f"{r['throttled_ms']:.0f}",
                         f"{r['predict_ms']:.2f}", f"{r['rss_mb']:.1f}", r["child_threads"],
                         f"{r['child_first']}", f"{r['child_normal_ms']:.0f} / {r['child_normal_cpu_ms']:.0f}"])
        print("\npart 1: gateway-side OpenBLAS threads, a real fit child, forecast cycles")
        print(C.table(["condition", "CPUs seen", "OpenBLAS threads", "threads numpy added", "their CPU ms",
                       "2 ms timer's worst lateness, numpy import +0.5 s", "quota throttled ms",
                       "predict ms", "RSS MB", "fit child max threads", "child first (nice, policy)",
                       "child at normal priority ms (wall / CPU)"], rows))
    if args.part in ("2", "all"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})     # inherited by the device and its children
        r = part2(args.seconds)
        print(f"\npart 2: a BAS reading flat out, one at a time, while the device starts a fit child every 1.5 s "
              f"(ended after 1.2 s), 1 CPU ({len(r['starts'])} starts)")
        print(C.table(["reads", "n", "reads/s", "p50 ms", "p99 ms", "max ms"],
                      [[k, len(v), f"{rate:.0f}", f"{C.pct(v, 50):.2f}", f"{C.pct(v, 99):.2f}",
                        f"{max(v, default=float('nan')):.2f}"]
                       for k, v, rate in (("0.4 s after a start", r["near"], r["near_rate"]),
                                          ("the rest", r["rest"], r["rest_rate"]))]))
        print(f"spawn call on the device's loop: median {C.pct(r['spawn_ms'], 50):.2f} ms, "
              f"max {max(r['spawn_ms']):.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
