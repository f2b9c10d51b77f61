"""The longest event-loop stall of the running gateway, measured by a heartbeat in its own loop.

    python bench/loop_stall.py [--duration 600] [--poll 1] [--cycle 10] [--telemetry 10] [--retrain-minutes 2]

The gateway (`ven.app.Gateway`, in this process) starts with 35 days of the shipped building's
history in its SQLite file and no model, so it fits on its first forecast cycle, then refits every
`--retrain-minutes`. The peers run in a second process: the demo VTN (telemetry reports, polls), the
routed meter simulator, and a BAS simulator that every 10 s writes input-power-meter and reads the
gateway's points by ReadPropertyMultiple. Defaults: meter every 1 s (production 10 s), forecast every
10 s (production 60 s), telemetry every 10 s (production), retrain every 2 min (production 60 min).

A heartbeat task sleeps 10 ms and records how late it wakes; a watchdog thread samples the stacks of
the loop thread and of every busy thread while a beat is overdue by more than 15 ms, which names the
cause of each of the worst stalls. Before the gateway starts, the same heartbeat runs in an empty loop
(`--floor-seconds`, 30 by default): the machine's own wake-up delay, beside which the gateway's number
is read. Prints tables; nothing is asserted. Goal (issue 7): max under 20 ms.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


async def run(args, storage: str) -> dict:
    from ven.app import Gateway, freeze_startup_objects
    from ven.config_load import parse_config

    minutes = C.seed_history(storage)
    bacnet_port = C.free_port()
    ports = {"meter_port": C.free_port(), "vtn_port": C.free_tcp_port(), "http_port": C.free_tcp_port()}
    cfg = parse_config(C.gateway_config_dict(storage, bacnet_port, poll_seconds=args.poll,
                                             cycle_seconds=args.cycle, telemetry_seconds=args.telemetry,
                                             retrain_minutes=args.retrain_minutes, **ports), "bench", environ={})
    peers = C.Peers(ports["meter_port"], ports["vtn_port"], vtn_poll_seconds=10.0, bas_port=C.free_port(),
                    gateway=f"127.0.0.1:{bacnet_port}", bas_interval=10.0)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, peers.start)
    gateway = Gateway(cfg)
    fits: list[float] = []
    meter_reads = 0
    hb = C.Heartbeat(threads=args.threads)
    gc_pauses = C.GcPauses()
    svc = gateway.forecast
    original_fit = svc.fit

    async def counted_fit(now):  # only counts
        t = time.perf_counter()
        await original_fit(now)
        fits.append(time.perf_counter() - t)
    svc.fit = counted_fit
    try:
        await gateway.start()
        if not args.no_gc_freeze:
            freeze_startup_objects()   # as `edge-gateway run` does
        t = time.perf_counter()
        gc.collect()   # what one full collection costs the loop from here on: rare, but it holds the GIL
        gc_pauses.full_after_start = ((time.perf_counter() - t) * 1000, len(gc.get_objects()), gc.get_freeze_count())
        if args.switch_interval:  # to compare with Python's default
            sys.setswitchinterval(args.switch_interval)
        C.quiet_logging()  # the gateway's imports (openleadr) reset some levels
        original_on_meter = gateway.meter.on_reading

        def on_meter(reading):
            nonlocal meter_reads
            meter_reads += 1
            original_on_meter(reading)
        gateway.meter.on_reading = on_meter

        hb.start()
        gc_pauses.start()
        t0 = time.monotonic()
        next_note = t0 + 60
        while time.monotonic() - t0 < args.duration:
            await asyncio.sleep(min(1.0, args.duration - (time.monotonic() - t0)))
            if time.monotonic() >= next_note:
                print(f"  {time.monotonic() - t0:5.0f} s: max {hb.max_late * 1000:.1f} ms, "
                      f"fits {len(fits)}, meter reads {meter_reads}", flush=True)
                next_note += 60
        elapsed = time.monotonic() - t0
        gc_pauses.stop()
        await hb.stop()
        status = gateway.status()
    finally:
        gc_pauses.stop()
        await hb.stop()
        await gateway.stop()
        summary = await loop.run_in_executor(None, peers.stop)
    return {"hb": hb, "gc": gc_pauses, "elapsed": elapsed, "fits": fits, "meter_reads": meter_reads, "minutes": minutes,
            "status": status, "peers": summary}


async def machine_floor(seconds: float) -> dict:
    """The same heartbeat in an empty loop of this process, before the gateway starts: how late this
    machine wakes a sleeping thread by itself (a VM's host can delay a halted vCPU's wake-up by tens
    of milliseconds). A gateway stall near this floor is the machine's, not the gateway's."""
    hb = C.Heartbeat()
    hb.start()
    await asyncio.sleep(seconds)
    await hb.stop()
    return hb.summary()


def what(stacks: list[str]) -> str:
    """The loop thread's innermost frames, then which other threads of the gateway were busy."""
    loop = next((s for s in stacks if s.startswith("LOOP:")), "LOOP: (no sample)")
    others = [s.split(":", 1)[0] for s in stacks if not s.startswith("LOOP:")]
    frames = loop[6:].split(" < ")
    return " < ".join(frames[:3]) + (f"  [busy: {', '.join(others)}]" if others else "")


def verdict(late_ms: float, run_ms: float, wait_ms: float) -> str:
    """Where the loop thread's time went during the overdue beat (period 10 ms + lateness)."""
    blocked = late_ms + 10 - run_ms - wait_ms
    parts = {"running": run_ms, "no CPU": wait_ms, "blocked (GIL/sleep)": blocked}
    return max(parts, key=parts.get)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds to measure (default 600)")
    ap.add_argument("--poll", type=float, default=1.0, help="meter poll seconds")
    ap.add_argument("--cycle", type=float, default=10.0, help="forecast cycle seconds")
    ap.add_argument("--telemetry", type=float, default=10.0, help="telemetry seconds")
    ap.add_argument("--retrain-minutes", type=float, default=2.0)
    ap.add_argument("--switch-interval", type=float, default=None,
                    help="override sys.setswitchinterval in the gateway (default: Python's 5 ms)")
    ap.add_argument("--floor-seconds", type=float, default=30.0,
                    help="first measure the same heartbeat in an empty loop this long, the machine's own floor "
                         "(default 30; 0 skips it)")
    ap.add_argument("--no-gc-freeze", action="store_true",
                    help="leave the start-up objects in the cyclic GC's collections (before 14th round)")
    ap.add_argument("--stacks", action="store_true", help="print the full sampled stacks of the worst stalls")
    ap.add_argument("--threads", action="store_true",
                    help="name the gateway's other threads that ran during each worst stall, and for how long "
                         "(reads every thread's CPU time at each beat, which adds to the loop's work)")
    args = ap.parse_args()
    C.quiet_logging()
    load0 = os.getloadavg()[0]
    floor = asyncio.run(machine_floor(args.floor_seconds)) if args.floor_seconds > 0 else None
    with tempfile.TemporaryDirectory(prefix="bench-stall-") as tmp:
        r = asyncio.run(run(args, str(Path(tmp) / "gw.sqlite")))
    hb, st = r["hb"], r["status"]
    s = hb.summary()
    fc = st["forecaster"]
    print()
    print(f"gateway loop heartbeat (10 ms sleep), {r['elapsed']:.0f} s; meter every {args.poll:g} s, forecast every "
          f"{args.cycle:g} s, telemetry every {args.telemetry:g} s, retrain every {args.retrain_minutes:g} min, "
          f"BAS every 10 s; switch interval {sys.getswitchinterval()} s; load average {load0:.2f} -> {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    rows = [["gateway", s["beats"], s["max_ms"], s["p99_ms"], s["p999_ms"], s["p50_ms"], s["over_10ms"], s["over_20ms"],
             "yes" if s["max_ms"] < 20 else "NO"]]
    if floor is not None:
        rows.append([f"machine floor (empty loop, {args.floor_seconds:g} s first)", floor["beats"], floor["max_ms"],
                     floor["p99_ms"], floor["p999_ms"], floor["p50_ms"], floor["over_10ms"], floor["over_20ms"], ""])
    print(C.table(["loop", "beats", "max ms", "p99 ms", "p99.9 ms", "p50 ms", "beats > 10 ms", "beats > 20 ms",
                   "goal < 20 ms"], rows))
    print()
    print(C.table(["meter reads", "history min", "fits", "fit s (median)", "forecast model", "telemetry delivered",
                   "VTN reports", "BAS cycles"],
                  [[r["meter_reads"], fc["history_minutes"], len(r["fits"]),
                    sorted(r["fits"])[len(r["fits"]) // 2] if r["fits"] else float("nan"), fc["model"],
                    st["vtn"]["telemetry"]["delivered"], r["peers"].get("vtn_reports", "?"),
                    r["peers"].get("bas_cycles", "?")]]))
    print()
    full = r["gc"].full_after_start
    if full is not None:
        print(f"a full GC collection once the gateway is up: {full[0]:.1f} ms, {full[1]:,} objects tracked, "
              f"{full[2]:,} frozen" + (" (--no-gc-freeze)" if args.no_gc_freeze else ""))
    print(C.table(["GC generation", "collections", "longest ms", "total ms"], r["gc"].rows()))
    if hb.stalls:
        print()
        print("worst stalls (loop thread's innermost frames while overdue; other busy threads in brackets)")
        print("loop thread during the beat: on CPU / runnable waiting for a CPU (machine load) / neither (GIL)")
        head = ["late ms", "at", "on CPU ms", "no CPU ms", "mostly", "where"]
        rows = [[late * 1000, time.strftime("%H:%M:%S", time.gmtime(t)), run, wait, verdict(late * 1000, run, wait),
                 what(stk)] for late, t, stk, (run, wait) in hb.stalls]
        if args.threads:
            print("other threads on CPU: the gateway's other threads that ran during the beat (ms), busiest first")
            head.insert(5, "other threads on CPU")
            for row, (_, t, _, _) in zip(rows, hb.stalls):
                row.insert(5, ", ".join(f"{n} {ms:.1f}" for n, ms in hb.others_on_cpu.get(t, [])) or "-")
        print(C.table(head, rows))
        if args.stacks:
            for late, t, stk, _ in hb.stalls:
                print(f"\n{late * 1000:.1f} ms at {time.strftime('%H:%M:%S', time.gmtime(t))}")
                for line in stk:
                    print("   ", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
