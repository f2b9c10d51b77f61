"""Schedule skew and telemetry backlog delivery, measured against a real openleadr VTN on loopback.

    python bench/event_timing.py [--bacnet-intervals 60] [--wire-intervals 20] [--local-intervals 300] [--local-ms 100] [--backlog 5000]
                                 [--page-size N]

Skew: an event with SIMPLE intervals (levels 1,2,3 repeating) arrives over OpenADR (1 s intervals:
OpenADR durations travel in whole seconds); a second, local run feeds EventSchedule directly with
100 ms intervals. For each interval start we record when the on_change callback ran. Backlog: samples
queued while the VTN is down, then the time from the VTN coming up until the queue is empty; and the
storage part of it alone, on a file of its own: the samples queued (a commit each), then taken from
the queue as delivery does (peek a batch of 100 intervals, acknowledge it). `--page-size` creates the
files with that page size.
The BACnet run is what the BAS sees: the real `edge-gateway run` process, a VTN sending 1 s intervals,
and a BACnet client (this process) reading ADR-Event-Level back to back; the skew is from each interval
start to the first read that returns its level (so it includes one read's latency).
Prints a table; nothing is asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

from ven.config import OpenadrConfig  # noqa: E402
from ven.events import Event, Interval, Signal  # noqa: E402
from ven.schedule import EventSchedule  # noqa: E402
from ven.storage import Storage  # noqa: E402
from ven.telemetry import TelemetryQueue  # noqa: E402
from ven.vtn import VtnClient  # noqa: E402
from ven.vtn_server import DemoVtn  # noqa: E402


async def skew_run(seen, n, step, add):
    seen.clear()
    start = datetime.now(timezone.utc) + timedelta(seconds=3)
    levels = [(i % 3) + 1 for i in range(n)]
    add(levels, start, step)
    end = start + timedelta(seconds=step * n)
    await C.wait_until(lambda: datetime.now(timezone.utc) > end + timedelta(seconds=0.3), 10 + step * n)
    skews = []
    for i, level in enumerate(levels):
        boundary = start + timedelta(seconds=i * step)
        hit = next((t for t, lv in seen if lv == level and t >= boundary - timedelta(milliseconds=1)), None)
        if hit is not None:
            skews.append((hit - boundary).total_seconds() * 1000)
    return n, skews


async def bacnet_skew(n: int, tmp: Path):
    """Interval start -> ADR-Event-Level change seen by a BACnet client, against `edge-gateway run`."""
    import os
    import subprocess

    from bacnet_api import points as P
    from bacnet_api.peer import BacnetPeer

    bacnet_port, client_port, vtn_port, http_port = C.free_port(), C.free_port(), C.free_tcp_port(), C.free_tcp_port()
    config = tmp / "bench.toml"
    config.write_text(f"""
[bacnet]
address = "127.0.0.1/8:{bacnet_port}"
[meter]
address = "127.0.0.1:9"
poll_seconds = 5
timeout_seconds = 1
[openadr]
vtn_url = "http://127.0.0.1:{vtn_port}/OpenADR2/Simple/2.0b"
retry_max_seconds = 1
[storage]
path = "{tmp / 'bacnet.sqlite'}"
[http]
address = "127.0.0.1:{http_port}"
""")
    gw = f"127.0.0.1:{bacnet_port}"
    obj = P.BY_NAME[P.EVENT_LEVEL].object_id
    server = DemoVtn(vtn_port, poll_seconds=1)
    await server.start()
    proc = subprocess.Popen([sys.executable, "-m", "ven.cli", "run", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HOME": str(tmp)})
    seen: list[tuple[datetime, float]] = []
    try:
        async with BacnetPeer(client_port, timeout=1.0) as peer:
            await C.wait_until(lambda: bool(server.vens), 30)

            async def watch(end):
                while datetime.now(timezone.utc) < end:
                    level = await peer.read(gw, obj, "presentValue")
                    if isinstance(level, float) and (not seen or seen[-1][1] != level):
                        seen.append((datetime.now(timezone.utc), level))

            start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=4)
            levels = [(i % 3) + 1 for i in range(n)]
            server.add_event(levels, start, 1.0)
            await watch(start + timedelta(seconds=n + 1))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        await server.stop()
    skews = []
    for i, level in enumerate(levels):
        boundary = start + timedelta(seconds=i)
        hit = next((t for t, lv in seen if lv == level and t >= boundary - timedelta(milliseconds=1)), None)
        if hit is not None:
            skews.append((hit - boundary).total_seconds() * 1000)
    return n, skews


def backlog_storage(path: Path, n: int) -> tuple[float, float]:
    """Seconds to queue `n` samples and to take them all back, batch by batch, without a VTN."""
    queue = TelemetryQueue(path)
    t0 = datetime.now(timezone.utc) - timedelta(seconds=10 * n)
    t = time.perf_counter()
    for i in range(n):
        queue.add(t0 + timedelta(seconds=10 * i), 90.0 + (i % 100) / 100)
    queued = time.perf_counter() - t
    t = time.perf_counter()
    while batch := queue.peek(101)[:100]:
        queue.ack(batch)
    assert queue.pending == 0
    drained = time.perf_counter() - t
    queue.close()
    return queued, drained


async def main(args) -> None:
    C.use_page_size(args.page_size)
    tmp = Path(tempfile.mkdtemp(prefix="bench-openadr-"))
    alone = backlog_storage(tmp / "backlog.sqlite", args.backlog)
    seen_by_bas = await bacnet_skew(args.bacnet_intervals, tmp)
    port = C.free_tcp_port()
    seen: list[tuple[datetime, float]] = []
    storage = Storage(tmp / "gw.sqlite")
    schedule = EventSchedule(storage, lambda st: seen.append((datetime.now(timezone.utc), st.level)))
    queue = TelemetryQueue(tmp / "gw.sqlite")
    server = DemoVtn(port, poll_seconds=1)
    cfg = OpenadrConfig(vtn_url=server.url, retry_min_seconds=0.2, retry_max_seconds=1.0, telemetry_seconds=10)
    client = VtnClient(cfg, schedule, queue)
    await schedule.start()
    await client.start()

    # Telemetry backlog first: the VTN is not up yet, so every sample queues.
    t0 = datetime.now(timezone.utc) - timedelta(seconds=10 * args.backlog)
    for i in range(args.backlog):
        queue.add(t0 + timedelta(seconds=10 * i), 90.0 + (i % 100) / 100)
    await server.start()
    up = time.perf_counter()
    await C.wait_until(lambda: client.connected, 30)
    registered = time.perf_counter() - up
    await C.wait_until(lambda: queue.pending == 0, 600)
    drained = time.perf_counter() - up
    got = len(server.reports)
    in_order = [r[3] for r in server.reports] == sorted(r[3] for r in server.reports)

    # Schedule skew, event delivered over OpenADR.
    wire = await skew_run(seen, args.wire_intervals, 1.0,
                          lambda levels, start, step: server.add_event(levels, start, step))
    await client.stop()
    await server.stop()

    # Schedule skew, event handed to the schedule directly (sub-second intervals).
    def local(levels, start, step):
        ivs = tuple(Interval(start + timedelta(seconds=i * step), timedelta(seconds=step), float(v))
                    for i, v in enumerate(levels))
        schedule.upsert(Event("local", 0, "far", False, "", (Signal("SIMPLE", "level", ivs),),
                              timedelta(0), datetime.now(timezone.utc)))
    fast = await skew_run(seen, args.local_intervals, args.local_ms / 1000, local)
    await schedule.stop()

    print(f"{'measure':<50}{'value':>14}")
    print("-" * 64)
    for label, (n, skews) in (("BACnet client, gateway process, 1 s", seen_by_bas),
                              ("over OpenADR, 1 s intervals", wire),
                              (f"local, {args.local_ms} ms intervals", fast)):
        print(f"{label + ': intervals / seen':<50}{f'{n} / {len(skews)}':>14}")
        if skews:
            print(f"{'  interval start -> seen p50 (ms)':<50}{statistics.median(skews):>14.2f}")
            print(f"{'  interval start -> seen p99 (ms)':<50}{C.pct(skews, 99):>14.2f}")
            print(f"{'  interval start -> seen max (ms)':<50}{max(skews):>14.2f}")
    print(f"{'backlog samples queued / received':<50}{f'{args.backlog} / {got}':>14}")
    print(f"{'received in timestamp order':<50}{str(in_order):>14}")
    print(f"{'VTN up -> registered (s)':<50}{registered:>14.2f}")
    print(f"{'VTN up -> backlog delivered (s)':<50}{drained:>14.2f}")
    print(f"{'backlog delivery rate (samples/s)':<50}{args.backlog / max(drained - registered, 1e-9):>14.0f}")
    print(f"{'storage alone: backlog queued / taken back (s)':<50}{f'{alone[0]:.2f} / {alone[1]:.2f}':>14}")
    db = sqlite3.connect(tmp / "gw.sqlite")
    print(f"{'page size of the files':<50}{db.execute('PRAGMA page_size').fetchone()[0]:>14}")
    db.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bacnet-intervals", type=int, default=60)
    ap.add_argument("--wire-intervals", type=int, default=20)
    ap.add_argument("--local-intervals", type=int, default=300)
    ap.add_argument("--local-ms", type=int, default=100)
    ap.add_argument("--backlog", type=int, default=5000)
    ap.add_argument("--page-size", type=int, default=0, help="create the files with this page size (0: the stores' own)")
    asyncio.run(main(ap.parse_args()))
