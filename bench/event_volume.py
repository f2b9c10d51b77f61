"""The VEN at a utility program's volume, against a real openleadr VTN in another process on loopback.

    python bench/event_volume.py [--events 50,200] [--intervals 96,1440] [--churn 10]

Many events: a day-ahead program lists `--events` events over 7 days in one oadrDistributeEvent
(30-minute events, several per slot so they overlap, priorities 0-3), then the BAS opts out of all of them
(ADR-Opt-Out; and back in), then the VTN modifies all of them at once, then cancels all. For each step: seconds from the VTN's change until every event is answered, the
gateway's handling of the poll (`VtnClient._dispatch`, which includes sending oadrCreatedEvent and
waiting for the VTN's answer), the longest stall of the gateway's event loop (heartbeat, as in
loop_stall.py; "of it on CPU" is the loop thread's own running during the worst beat, without time spent
waiting for a CPU), the largest oadrCreatedEvent and how many were sent, answers per event at the VTN, and the gateway's log lines.
"set_opt_out ms (CPU)" is the ADR-Opt-Out call itself, as the BACnet write handler makes it on the loop.

Many intervals: one event of N intervals (96 x 15 min, 1440 x 1 min): its intake, the schedule's work per
timer wake (`_next_wake` + `state`), /api/status's event list, RSS; then the same event with 1 s intervals,
to see each level change land on time (lateness of the on_change callback after each interval start).

Churn: the VTN asks for re-registration `--churn` times, then answers polls 463 as many times, while it
lists 20 events: registrations, answers per event, events held, log lines.
Prints tables; nothing is asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def now() -> datetime:
    return datetime.now(timezone.utc)


# ---- the VTN process -------------------------------------------------------------------------------

def run_vtn(conn, port: int, poll_seconds: float) -> None:
    C.quiet_logging()
    asyncio.run(_vtn(conn, port, poll_seconds))


async def _vtn(conn, port, poll_seconds) -> None:
    from openleadr import errors
    from ven.vtn_server import DemoVtn

    C.quiet_logging()
    vtn = DemoVtn(port=port, poll_seconds=poll_seconds)
    refuse = [0]
    handlers = vtn._server.services["poll_service"].handlers
    real_poll = handlers["oadrPoll"]

    async def poll(*args, **kwargs):
        if refuse[0] > 0:
            refuse[0] -= 1
            raise errors.NotRegisteredOrAuthorizedError("demo VTN: refusing this poll (463) on purpose")
        return await real_poll(*args, **kwargs)
    handlers["oadrPoll"] = poll
    await vtn.start()
    conn.send("ready")
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: inbox.put_nowait(conn.recv()))
    try:
        while True:
            cmd, args = await inbox.get()
            if cmd == "stop":
                conn.send(None)
                return
            if cmd == "add":
                conn.send([vtn.add_event(**kw) for kw in args])
            elif cmd == "modify":
                conn.send([vtn.modify_event(eid, levels=levels) for eid, levels in args])
            elif cmd == "cancel":
                conn.send([vtn.cancel_event(eid) for eid in args])
            elif cmd == "drop_all":
                for e in list(vtn._events):
                    vtn.drop_event(e.event_descriptor.event_id)
                conn.send(None)
            elif cmd == "opts":
                conn.send({eid: len(vtn.opts_for(eid)) for eid in args})
            elif cmd == "created":
                conn.send([len(c.get("event_responses") or []) for c in vtn.created_events])
            elif cmd == "rereg":
                for ven_id in list(vtn.vens):
                    vtn.request_reregistration(ven_id)
                conn.send(vtn.registrations)
            elif cmd == "refuse":
                refuse[0] = args
                conn.send(None)
            elif cmd == "registrations":
                conn.send((vtn.registrations, refuse[0]))
    finally:
        loop.remove_reader(conn.fileno())
        await vtn.stop()


class Vtn:
    def __init__(self, port: int, poll_seconds: float = 1.0):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=run_vtn, args=(child, port, poll_seconds), name="bench-vtn", daemon=True)
        self.url = f"http://127.0.0.1:{port}/OpenADR2/Simple/2.0b"

    def start(self) -> "Vtn":
        self.proc.start()
        if not self.conn.poll(30):
            raise RuntimeError("VTN process did not start")
        self.conn.recv()
        return self

    async def ask(self, cmd: str, args=None):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._ask, cmd, args)

    def _ask(self, cmd, args):
        self.conn.send((cmd, args))
        if not self.conn.poll(60):
            raise RuntimeError(f"VTN process did not answer {cmd}")
        return self.conn.recv()

    def stop(self) -> None:
        if self.proc.is_alive():
            try:
                self._ask("stop", None)
            except (RuntimeError, OSError, EOFError):
                pass
        C.stop_process(self.proc)


# ---- the gateway side (this process) ---------------------------------------------------------------

class LogCount(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: dict[str, int] = {}

    def emit(self, record):
        self.lines[record.name.split(".")[0]] = self.lines.get(record.name.split(".")[0], 0) + 1

    def take(self) -> dict[str, int]:
        out, self.lines = self.lines, {}
        return out


class Ven:
    def __init__(self, tmp: Path, url: str):
        from ven.config import OpenadrConfig
        from ven.schedule import EventSchedule
        from ven.storage import Storage
        from ven.telemetry import TelemetryQueue
        from ven.vtn import VtnClient

        self.changes: list[tuple[float, float]] = []     # (time.time(), level) per on_change
        self.storage = Storage(tmp / "gw.sqlite")
        self.schedule = EventSchedule(self.storage, lambda st: self.changes.append((time.time(), st.level)))
        self.queue = TelemetryQueue(tmp / "gw.sqlite")
        cfg = OpenadrConfig(vtn_url=url, retry_min_seconds=0.2, retry_max_seconds=1.0, telemetry_seconds=10.0)
        self.vtn = VtnClient(cfg, self.schedule, self.queue)
        self.dispatches: list[tuple[str, int, float]] = []
        real = self.vtn._dispatch

        async def timed(rtype, payload):
            t = time.perf_counter()
            await real(rtype, payload)
            self.dispatches.append((rtype, len(payload.get("events") or []), time.perf_counter() - t))
        self.vtn._dispatch = timed
        self.sizes: list[int] = []
        client_cls = type(self.vtn)

        real_new = self.vtn._new_client

        def new_client():
            client = real_new()
            real_perform = client._perform_request

            async def perform(service, message):
                if "oadrCreatedEvent" in message[:2000]:
                    self.sizes.append(len(message))
                return await real_perform(service, message)
            client._perform_request = perform
            return client
        self.vtn._new_client = new_client
        del client_cls

    async def start(self):
        await self.schedule.start()
        await self.vtn.start()

    async def stop(self):
        await self.vtn.stop()
        await self.schedule.stop()
        self.queue.close()
        self.storage.close()


async def step(name, ven, vtn, hb, logs, change, done, timeout=120.0):
    ven.dispatches.clear()
    ven.sizes.clear()
    hb.reset()
    logs.take()
    t0 = time.perf_counter()
    await change()
    ok = bool(await C.wait_until(done, timeout, 0.05))
    took = time.perf_counter() - t0
    await asyncio.sleep(1.5)     # the polls after it, for the stall figures
    handled = [d for d in ven.dispatches if d[0] == "oadrDistributeEvent"]
    return [name, f"{took:.2f}" if ok else f"> {timeout:g}", max((d[2] for d in handled), default=float("nan")) * 1000,
            hb.summary()["max_ms"], on_cpu(hb), max(ven.sizes, default=0) / 1024, len(ven.sizes),
            logs.take().get("ven", 0)]


def on_cpu(hb) -> float:
    """The most the loop thread ran on a CPU during one overdue beat: the gateway's own blocking, without the
    time it waited for a CPU (other work on the machine inflates "max stall", not this)."""
    return max((run for _, _, _, (run, _) in hb.stalls), default=0.0)


async def many_events(n: int, tmp: Path, logs: LogCount) -> tuple[list[list], dict]:
    vtn = Vtn(C.free_tcp_port()).start()
    ven = Ven(tmp, vtn.url)
    hb = C.Heartbeat()
    rows = []
    try:
        await ven.start()
        await C.wait_until(lambda: ven.vtn.connected, 15)
        hb.start()
        base = (now() + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
        per_slot = 3     # events per 30-minute slot: overlapping, with different priorities
        specs = [dict(levels=[1 + i % 3], start=base + timedelta(days=(i // per_slot) % 7,
                                                                  minutes=30 * ((i // per_slot) // 7)),
                      interval_seconds=1800, priority=i % 4) for i in range(n)]
        ids: list[str] = []

        async def add():
            ids.extend(await vtn.ask("add", specs))

        counts = {}

        def all_at(k):
            def check():
                if not ids:
                    return False
                got = [ven.schedule.get(e) for e in ids]
                return all(e is not None and e.modification_number >= k - 1 for e in got) and len(ven.sizes) >= 1
            return check
        rows.append(await step(f"{n} new", ven, vtn, hb, logs, add, all_at(1)))
        counts["new"] = await vtn.ask("opts", ids)
        # the winner at each slot must be the highest-priority (lowest number > 0) event
        first = base + timedelta(minutes=1)
        st = ven.schedule.state(first)
        slot = [s for s in specs if s["start"] == base]
        ranked = sorted(slot, key=lambda s: (s["priority"] or 99, -s["levels"][0]))
        counts["level at first slot"] = (st.level, ranked[0]["levels"][0])

        async def opt_out():            # the BAS writes ADR-Opt-Out: every pending event is answered optOut
            t, cpu = time.perf_counter(), time.thread_time()
            ven.vtn.set_opt_out(True)   # as the BACnet write handler calls it: on the loop, at once
            counts["opt-out call"] = ((time.perf_counter() - t) * 1000, (time.thread_time() - cpu) * 1000)
        rows.append(await step(f"{n} opted out", ven, vtn, hb, logs, opt_out,
                               lambda: _all_opts(vtn, ids, 2)))
        counts["opted out"] = await vtn.ask("opts", ids)
        ven.vtn.set_opt_out(False)
        await C.wait_until(lambda: _all_opts(vtn, ids, 3), 120, 0.05)

        async def modify():
            await vtn.ask("modify", [(e, [3]) for e in ids])
        rows.append(await step(f"{n} modified", ven, vtn, hb, logs, modify,
                               lambda: _all_opts(vtn, ids, 4) if all_at(2)() else False))
        counts["modified"] = await vtn.ask("opts", ids)

        async def cancel():
            await vtn.ask("cancel", ids)
        rows.append(await step(f"{n} cancelled", ven, vtn, hb, logs, cancel,
                               lambda: _all_opts(vtn, ids, 5) if all(ven.schedule.get(e).cancelled for e in ids) else False))
        counts["cancelled"] = await vtn.ask("opts", ids)
        counts["status events"] = len(ven.schedule.events())
    finally:
        await hb.stop()
        await ven.stop()
        await asyncio.get_running_loop().run_in_executor(None, vtn.stop)
    return rows, counts


async def _all_opts(vtn: Vtn, ids: list[str], k: int) -> bool:
    """Every event has had `k` answers at the VTN."""
    return bool(ids) and min((await vtn.ask("opts", ids)).values()) >= k


def timer_work(schedule, repeat: int = 5) -> tuple[float, float]:
    """ms the schedule's timer spends per wake, and per /api/status event list."""
    t = time.perf_counter()
    for _ in range(repeat):
        n = now()
        schedule._next_wake(n)
        schedule.state(n)
    wake = (time.perf_counter() - t) / repeat * 1000
    t = time.perf_counter()
    schedule.events()
    return wake, (time.perf_counter() - t) * 1000


async def many_intervals(k: int, tmp: Path, logs: LogCount) -> tuple[list, list]:
    vtn = Vtn(C.free_tcp_port()).start()
    ven = Ven(tmp, vtn.url)
    hb = C.Heartbeat()
    try:
        await ven.start()
        await C.wait_until(lambda: ven.vtn.connected, 15)
        hb.start()
        rss0 = C.rss_mb()[0]
        start = (now() + timedelta(minutes=2)).replace(second=0, microsecond=0)
        step_s = 86400 // k
        ids = []

        async def add():
            ids.extend(await vtn.ask("add", [dict(levels=[1 + i % 3 for i in range(k)], start=start,
                                                  interval_seconds=step_s)]))
        row = await step(f"1 event x {k} x {step_s} s", ven, vtn, hb, logs, add,
                         lambda: ids and ven.schedule.get(ids[0]) is not None and ven.sizes)
        wake, listing = timer_work(ven.schedule)
        rss1 = C.rss_mb()[0]
        await vtn.ask("drop_all")
        await C.wait_until(lambda: ven.schedule.get(ids[0]).cancelled, 10)
        # the same number of intervals, 1 s each: does each level land on time?
        ven.changes.clear()
        hb.reset()
        start = (now() + timedelta(seconds=4)).replace(microsecond=0)
        watch = min(k, 20)
        fast = await vtn.ask("add", [dict(levels=[1 + i % 3 for i in range(k)], start=start, interval_seconds=1)])
        await C.wait_until(lambda: now() > start + timedelta(seconds=watch + 0.5), watch + 30)
        late = []
        for i in range(watch):
            boundary = (start + timedelta(seconds=i)).timestamp()
            want = float(1 + i % 3)
            hit = next((t for t, lv in ven.changes if lv == want and t >= boundary - 0.001), None)
            late.append((hit - boundary) * 1000 if hit is not None else float("inf"))
        await vtn.ask("drop_all")
        await C.wait_until(lambda: ven.schedule.get(fast[0]).cancelled, 10)
        timing = [f"{k} x 1 s (first {watch})", statistics.median(late), max(late), hb.summary()["max_ms"], on_cpu(hb)]
    finally:
        await hb.stop()
        await ven.stop()
        await asyncio.get_running_loop().run_in_executor(None, vtn.stop)
    return row + [wake, listing, rss1 - rss0], timing


async def churn(times: int, tmp: Path, logs: LogCount) -> list:
    vtn = Vtn(C.free_tcp_port()).start()
    ven = Ven(tmp, vtn.url)
    try:
        await ven.start()
        await C.wait_until(lambda: ven.vtn.connected, 15)
        start = now() + timedelta(hours=2)
        ids = await vtn.ask("add", [dict(levels=[1], start=start + timedelta(hours=i), interval_seconds=1800)
                                    for i in range(20)])
        await C.wait_until(lambda: all(ven.schedule.get(e) for e in ids), 15)
        logs.take()
        t0 = time.perf_counter()
        for _ in range(times):
            regs = (await vtn.ask("registrations"))[0]
            await vtn.ask("rereg")
            await C.wait_until(lambda: ven.vtn.connected and vtn._ask("registrations", None)[0] > regs, 30, 0.05)
        for _ in range(times):
            regs = (await vtn.ask("registrations"))[0]
            await vtn.ask("refuse", 1)
            await C.wait_until(lambda: ven.vtn.connected and vtn._ask("registrations", None)[0] > regs, 30, 0.05)
        took = time.perf_counter() - t0
        opts = await vtn.ask("opts", ids)
        regs = (await vtn.ask("registrations"))[0]
        held = sum(1 for e in ids if (ev := ven.schedule.get(e)) is not None and not ev.cancelled)
        lines = logs.take()
    finally:
        await ven.stop()
        await asyncio.get_running_loop().run_in_executor(None, vtn.stop)
    return [f"{times} rereg + {times} x 463", took, regs, min(opts.values()), max(opts.values()), held,
            lines.get("ven", 0), lines.get("openleadr", 0)]


async def main_async(args, tmp: Path) -> None:
    import ven.vtn  # noqa: F401 - importing openleadr resets its logger's level
    logs = LogCount()
    for h in logging.getLogger().handlers:
        h.setLevel(logging.ERROR)
    logging.getLogger().addHandler(logs)
    for name in ("ven", "openleadr"):
        logging.getLogger(name).setLevel(logging.INFO)
    if args.gc_freeze:
        from ven.app import freeze_startup_objects
        freeze_startup_objects()   # as `edge-gateway run` does once ready
    gc_pauses = C.GcPauses()
    gc_pauses.start()
    rows, checks = [], []
    for n in args.events:
        r, counts = await many_events(n, tmp / f"e{n}", logs)
        rows += r
        checks.append([n] + [f"{min(counts[k].values())}-{max(counts[k].values())}"
                             for k in ("new", "opted out", "modified", "cancelled")]
                      + ["%g (want %g)" % counts["level at first slot"], counts["status events"],
                         "%.1f (%.1f)" % counts["opt-out call"]])
    print(C.table(["step", "all answered s", "poll handling ms", "loop max stall ms", "of it on CPU ms", "oadrCreatedEvent KB",
                   "oadrCreatedEvent msgs", "ven log lines"], rows))
    print()
    print(C.table(["events", "answers/event after new", "after opt-out", "after modify (opt-in between)", "after cancel", "level at first slot",
                   "events in /api/status", "set_opt_out ms (CPU)"], checks))
    irows, trows = [], []
    for k in args.intervals:
        r, t = await many_intervals(k, tmp / f"i{k}", logs)
        irows.append(r)
        trows.append(t)
    if irows:
        print()
        print(C.table(["event", "answered s", "poll handling ms", "loop max stall ms", "of it on CPU ms", "oadrCreatedEvent KB",
                       "msgs", "ven log lines", "timer wake ms", "status list ms", "RSS growth MB"], irows))
        print()
        print(C.table(["1 s intervals", "level change late p50 ms", "max ms", "loop max stall ms", "of it on CPU ms"],
                      trows))
    if args.churn:
        print()
        print(C.table(["churn", "s", "VTN registrations", "answers/event min", "max", "events held of 20",
                       "ven log lines", "openleadr log lines"], [await churn(args.churn, tmp / "churn", logs)]))
    gc_pauses.stop()
    print()
    print(f"the cyclic GC over all of the above{' (start-up objects frozen first)' if args.gc_freeze else ''}:")
    print(C.table(["GC generation", "collections", "longest ms", "total ms"], gc_pauses.rows()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", default="50,200", help="event counts, comma-separated (default 50,200)")
    ap.add_argument("--intervals", default="96,1440", help="interval counts of the long event (default 96,1440)")
    ap.add_argument("--gc-freeze", action="store_true",
                    help="freeze the objects made so far out of the cyclic GC first, as `edge-gateway run` does when ready")
    ap.add_argument("--churn", type=int, default=10, help="re-registrations and 463 polls (default 10; 0: skip)")
    args = ap.parse_args()
    args.events = [int(x) for x in args.events.split(",") if x]
    args.intervals = [int(x) for x in args.intervals.split(",") if x]
    C.quiet_logging()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-volume-") as tmp:
        asyncio.run(main_async(args, Path(tmp)))
    print(f"\nload average {load0:.2f} -> {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
