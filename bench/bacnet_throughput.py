"""ReadProperty throughput and latency: a bare bacpypes3 device against the running gateway.

    python bench/bacnet_throughput.py [--reads 5000] [--concurrency 50] [--rounds 3]

Three processes besides this one (the client): a bare bacpypes3 device (device object, network port
and one plain analogValue 6), the full gateway (`ven.app.Gateway`: BACnet device, meter polling
through the routed simulator, OpenADR VEN with telemetry, forecaster with 35 days of the shipped
building's history) and the peers (demo VTN and meter simulator). This process reads
`analogValue 6 presentValue` (meter-power on the gateway) `--reads` times with `--concurrency`
requests in flight, round after round:
  bare      the bare device
  gateway   the gateway, meter polled every 2 s, forecast every 10 s, telemetry every 10 s
  retrain   the gateway while the forecaster fits back to back, in its own fit processes
Each device process also reports its own CPU per read (the loop thread, and the whole process; the
fit processes are not in it) and its event loop's worst lateness during the round. Prints tables;
nothing is asserted. Goal (issue 7): the gateway at least 0.9x the bare device, during a retrain too.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


# ---- the device-under-test process ------------------------------------------------------------------

def run_dut(conn, kind: str, bacnet_port: int, gw_ports: dict | None, storage: str | None,
            switch_interval: float | None) -> None:
    C.quiet_logging()
    asyncio.run(_dut(conn, kind, bacnet_port, gw_ports, storage, switch_interval))


async def _dut(conn, kind, bacnet_port, gw_ports, storage, switch_interval) -> None:
    loop = asyncio.get_running_loop()
    address = f"127.0.0.1/8:{bacnet_port}"
    gateway = app = None
    info = {}
    if kind == "bare":
        from bacpypes3.local.analog import AnalogValueObject

        from bacnet_api.client import close_stack, start_stack

        app = await start_stack(address, 600001, "bare-bacpypes3")
        # the reference is bacpypes3 as it ships: start_stack gave it the gateway's kept lookups (static_lookup.py)
        import inspect

        from bacnet_api import static_lookup
        for name in static_lookup.MODULES:
            sys.modules[name].inspect = inspect
        app.add_object(AnalogValueObject(objectIdentifier=("analogValue", 6), objectName="meter-power",
                                         presentValue=87.5, units="kilowatts", statusFlags=[0, 0, 0, 0],
                                         eventState="normal", outOfService=False))
    else:
        from ven.app import Gateway
        from ven.config_load import parse_config

        info["history_minutes"] = C.seed_history(storage)
        cfg = parse_config(C.gateway_config_dict(storage, bacnet_port, poll_seconds=2.0, cycle_seconds=10.0,
                                                 telemetry_seconds=10.0, **gw_ports), "bench", environ={})
        gateway = Gateway(cfg)
        await gateway.start()
        if switch_interval:  # to compare with Python's default
            sys.setswitchinterval(switch_interval)
        # the first fit starts on the first forecast cycle; let it finish so "gateway" rounds are clean
        deadline = time.monotonic() + 120
        fc = gateway.forecast.forecaster
        while (fc.fitted_model is None or fc.status()["fitting"]) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        while not gateway.vtn.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        info["train_rows"] = fc.status()["train_rows"]
        info["first_fit_s"] = fc.status()["last_fit_seconds"]
        info["vtn_connected"] = gateway.vtn.connected
    hb = C.Heartbeat()
    hb.start()
    conn.send(("ready", info))

    inbox: asyncio.Queue = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: inbox.put_nowait(conn.recv()))
    fits: list[tuple[float, float]] = []  # (start, end) of each fit; end inf while it runs
    retrain_task = None

    async def retrain_forever():
        svc = gateway.forecast
        while True:
            fits.append((time.time(), float("inf")))
            await svc.fit(time.time())  # the service's own fit, in a child process
            fits[-1] = (fits[-1][0], time.time())

    mark = None
    try:
        while True:
            msg = await inbox.get()
            if msg[0] == "begin":
                fits.clear()
                if msg[1] and gateway is not None:
                    retrain_task = asyncio.create_task(retrain_forever())
                    await asyncio.sleep(0.3)  # the fit is under way before the first read
                hb.reset()
                mark = (time.thread_time(), time.process_time())
                conn.send("begun")
            elif msg[0] == "end":
                loop_cpu = time.thread_time() - mark[0]
                proc_cpu = time.process_time() - mark[1]
                t_start, t_end = msg[1], msg[2]
                covered = sum(max(0.0, min(b, t_end) - max(a, t_start)) for a, b in fits)
                if retrain_task is not None:
                    retrain_task.cancel()
                    await asyncio.gather(retrain_task, return_exceptions=True)
                    retrain_task = None
                    while gateway.forecast.forecaster.status()["fitting"]:  # the fit in flight ends
                        await asyncio.sleep(0.05)
                s = hb.summary()
                conn.send({"loop_cpu_s": loop_cpu, "proc_cpu_s": proc_cpu, "loop_max_ms": s["max_ms"],
                           "fits": len(fits), "fit_s": statistics.median([b - a for a, b in fits]) if fits else None,
                           "fit_cover": covered / max(1e-9, t_end - t_start) if fits else 0.0})
            elif msg[0] == "stop":
                break
    finally:
        loop.remove_reader(conn.fileno())
        await hb.stop()
        if gateway is not None:
            await gateway.stop()
        if app is not None:
            await close_stack(app)
    conn.send("stopped")


class Dut:
    def __init__(self, kind: str, bacnet_port: int, gw_ports: dict | None = None, storage: str | None = None,
                 switch_interval: float | None = None):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.kind = kind
        self.address = f"127.0.0.1:{bacnet_port}"
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=run_dut, args=(child, kind, bacnet_port, gw_ports, storage, switch_interval),
                                name=f"bench-dut-{kind}", daemon=True)
        self.info: dict = {}

    def start(self, timeout: float = 150.0) -> "Dut":
        self.proc.start()
        if not self.conn.poll(timeout):
            raise RuntimeError(f"{self.kind} device did not start within {timeout:g} s")
        _, self.info = self.conn.recv()
        return self

    def ask(self, msg, timeout: float = 120.0):
        self.conn.send(msg)
        if not self.conn.poll(timeout):
            raise RuntimeError(f"{self.kind} device did not answer {msg[0]!r}")
        return self.conn.recv()

    def stop(self) -> None:
        if self.proc.is_alive():
            try:
                self.conn.send(("stop",))
                self.conn.poll(20)
            except (BrokenPipeError, OSError):
                pass
        C.stop_process(self.proc)


# ---- the client (this process) ----------------------------------------------------------------------

async def hammer(app, address: str, n: int, concurrency: int) -> dict:
    from bacpypes3.apdu import ErrorRejectAbortNack
    from bacpypes3.pdu import Address

    from bacnet_api.client import object_id

    dest, obj = Address(address), object_id(C.METER_OBJECT)
    latencies: list[float] = []
    errors = 0
    todo = iter(range(n))

    async def worker():
        nonlocal errors
        for _ in todo:
            t = time.perf_counter()
            try:
                value = await asyncio.wait_for(app.read_property(dest, obj, "presentValue"), 10.0)
            except (ErrorRejectAbortNack, asyncio.TimeoutError, Exception):
                errors += 1
                continue
            if value is None:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    ms = [x * 1000 for x in latencies]
    return {"reads": len(ms), "errors": errors, "rate": len(ms) / wall, "p50": C.pct(ms, 50),
            "p99": C.pct(ms, 99), "wall": wall}


async def measure(app, dut: Dut, args, retrain: bool) -> dict:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, dut.ask, ("begin", retrain))
    t_start = time.time()
    r = await hammer(app, dut.address, args.reads, args.concurrency)
    t_end = time.time()
    r.update(await loop.run_in_executor(None, dut.ask, ("end", t_start, t_end)))
    return r


async def client_main(args, bare: Dut, gw: Dut) -> list[tuple[str, int, dict]]:
    from bacnet_api.client import close_stack, start_stack

    app = await start_stack(f"127.0.0.1/8:{C.free_port()}", 4000201, "bench-client")
    results = []
    try:
        for dut in (bare, gw):  # warm both paths (address caches, first-call costs)
            await hammer(app, dut.address, 200, args.concurrency)
        for rnd in range(1, args.rounds + 1):
            for phase, dut, retrain in (("bare", bare, False), ("gateway", gw, False), ("retrain", gw, True)):
                r = await measure(app, dut, args, retrain)
                results.append((phase, rnd, r))
                print(f"  round {rnd} {phase:<8} {r['rate']:7.0f} reads/s  p50 {r['p50']:5.1f} ms  "
                      f"p99 {r['p99']:5.1f} ms", flush=True)
    finally:
        await close_stack(app)
    return results


def report(results, args) -> None:
    # Each gateway round is compared with the bare round just before it: the machine's other load
    # changes over a run, and neighbouring rounds see about the same.
    bare_of = {rnd: r["rate"] for p, rnd, r in results if p == "bare"}
    rows = []
    for phase, rnd, r in results:
        per_read = 1000.0 / max(1, r["reads"] + r["errors"])
        rows.append([phase, rnd, r["reads"], r["errors"], r["rate"], r["p50"], r["p99"],
                     f"{r['rate'] / bare_of[rnd]:.2f}x", r["loop_cpu_s"] * per_read, r["proc_cpu_s"] * per_read,
                     r["loop_max_ms"], f"{r['fits']} / {100 * r['fit_cover']:.0f}%" if phase == "retrain" else "-"])
    print()
    print(f"ReadProperty analogValue 6 presentValue, {args.reads} reads per round, {args.concurrency} in flight, "
          f"client in its own process; "
          f"switch interval {args.switch_interval or sys.getswitchinterval()} s")
    print(C.table(["phase", "round", "ok", "errors", "reads/s", "p50 ms", "p99 ms", "vs bare (same round)",
                   "loop CPU ms/read", "proc CPU ms/read", "loop max lag ms", "fits / window covered"], rows))
    print()
    summary = []
    for phase in ("bare", "gateway", "retrain"):
        rs = [(rnd, r) for p, rnd, r in results if p == phase]
        ratio = statistics.median(r["rate"] / bare_of[rnd] for rnd, r in rs)
        summary.append([phase, statistics.median(r["rate"] for _, r in rs), statistics.median(r["p50"] for _, r in rs),
                        statistics.median(r["p99"] for _, r in rs), f"{ratio:.2f}x",
                        "yes" if phase == "bare" or ratio >= 0.9 else "NO"])
    print("median over rounds (goal: gateway >= 0.9x bare, during a retrain too)")
    print(C.table(["phase", "reads/s", "p50 ms", "p99 ms", "vs bare", "goal met"], summary))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reads", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--switch-interval", type=float, default=None,
                    help="override sys.setswitchinterval in the gateway process (default: Python's 5 ms)")
    args = ap.parse_args()
    C.quiet_logging()
    tmp = tempfile.TemporaryDirectory(prefix="bench-throughput-")
    ports = {"meter_port": C.free_port(), "vtn_port": C.free_tcp_port(), "http_port": C.free_tcp_port()}
    peers = C.Peers(ports["meter_port"], ports["vtn_port"], vtn_poll_seconds=10.0)
    bare = Dut("bare", C.free_port())
    gw = Dut("gateway", C.free_port(), ports, str(Path(tmp.name) / "gw.sqlite"), args.switch_interval)
    started = []
    try:
        for part in (peers, bare, gw):
            part.start()
            started.append(part)
        print(f"gateway ready: {gw.info}", flush=True)
        print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores; other work on the machine skews numbers)")
        results = asyncio.run(client_main(args, bare, gw))
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        for part in reversed(started):
            part.stop()
        tmp.cleanup()
    report(results, args)
    print(f"\npeers: {peers.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
