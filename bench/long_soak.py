"""Everything at once for most of an hour against the real `edge-gateway run` process.

    python bench/long_soak.py [--minutes 45] [--fault-every 6] [--fault-seconds 90] [--keep DIR]

Peers in this process, on loopback: a demo VTN (poll 10 s) issuing an event every 4 minutes, modified a minute
later and every other one cancelled; the routed meter simulator, its value changing every second to one never
served before (each read it answers is recorded); a BACnet client reading every point in a loop (a point each
0.5 s) and the device's activeCovSubscriptions; a second one holding COV subscriptions (lifetime 30 s, renewed)
that it lets lapse and renews; a BAS writing input-power-meter every 5 s; HTTP polling of /api/status,
/api/history and /metrics. The forecaster runs on the shipped building's history (retrain every 5 minutes).
After a healthy start, faults in turn every --fault-every minutes, each --fault-seconds long: VTN down, meter
silent, router gone, storage locked by another writer (an sqlite3 connection holding BEGIN IMMEDIATE).

Each minute: RSS, fds, threads, asyncio tasks (a sitecustomize thread in the gateway writes them), SQLite file
and WAL, rows per table, log lines. At the end: the table, each fault's start and end lines, lines repeated while
a fault stood, tracebacks, telemetry received vs served, forecasts published, growth extrapolated to 6 months.
Nothing is asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import sqlite3
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]

import _common as C  # noqa: E402
import aiohttp  # noqa: E402
from bacpypes3.pdu import Address  # noqa: E402
from bacpypes3.primitivedata import ObjectIdentifier  # noqa: E402
from bacnet_peer import BacnetPeer, PeerError  # noqa: E402
from gateway_process import GatewayProcess  # noqa: E402
from soak import children, file_sizes, line_kind, proc_stats, scrape  # noqa: E402

from bacnet_api import points as P  # noqa: E402
from bacnet_api import simulator as S  # noqa: E402
from ven.vtn_server import DemoVtn  # noqa: E402

# The gateway's asyncio tasks, read from another thread every 30 s (the loop is never touched)
SITECUSTOMIZE = '''
import os, threading, time, json, collections
def _watch(path=os.environ["SOAK_TASKS_FILE"]):
    import asyncio.tasks as t
    while True:
        time.sleep(30)
        try:
            names = collections.Counter(getattr(x.get_coro(), "__qualname__", "?") for x in list(t._all_tasks)
                                        if not x.done())
        except RuntimeError:
            continue
        with open(path, "a") as f:
            f.write(json.dumps({"t": time.time(), "n": sum(names.values()), "by": names}) + "\\n")
threading.Thread(target=_watch, daemon=True).start()
'''
FAULTS = {   # name: (start line, end line)
    "VTN down": (r"VTN (poll|registration) failed|VTN unreachable", r"VTN connected"),
    "meter silent": (r"meter fault", r"meter answering"),
    "router gone": (r"meter fault", r"meter answering"),
    "storage locked": (r"storage.*lock|locked", r"storage.*(again|unlocked|released)"),
}


class ServedMeter(S._MeterApplication):
    """The meter simulator's application, recording every presentValue it answers."""
    served: list[tuple[float, float]] = []
    sim: "S.MeterSimulator" = None

    async def indication(self, apdu) -> None:
        from bacpypes3.apdu import ReadPropertyRequest
        if not self._silent and isinstance(apdu, ReadPropertyRequest) and str(apdu.propertyIdentifier) == "present-value":
            ServedMeter.served.append((time.time(), ServedMeter.sim.value))
        await super().indication(apdu)


def meter_value(t: float) -> float:
    return round(40 + (int(t) % 100000) * 0.001, 3)   # a new value each second, none served twice in a day


async def main(args) -> None:
    work = Path(args.keep or tempfile.mkdtemp(prefix="long-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["HOME"] = str(work)
    (work / "site").mkdir(exist_ok=True)
    (work / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    tasks_file = work / "tasks.jsonl"
    os.environ["SOAK_TASKS_FILE"] = str(tasks_file)
    os.environ["PYTHONPATH"] = f"{work / 'site'}:{ROOT}"
    C.quiet_logging()
    ports = {"bacnet": C.free_port(), "meter": C.free_port(), "vtn": C.free_tcp_port(), "http": C.free_tcp_port()}
    storage = work / "gw.sqlite"
    C.seed_history(str(storage))
    cfg = C.gateway_config_dict(str(storage), ports["bacnet"], ports["meter"], ports["vtn"], ports["http"],
                                cycle_seconds=20.0, retrain_minutes=args.retrain_minutes, log_level="INFO")
    cfg["openadr"].update(ven_name="long-soak")
    cfg["storage"]["retry_seconds"] = 10
    config, log_path = work / "gw.toml", work / "gateway.log"
    config.write_text(C.to_toml(cfg))
    gw = f"127.0.0.1:{ports['bacnet']}"
    S._MeterApplication = ServedMeter   # the simulator builds its meter from this name
    meter = S.MeterSimulator(address=f"127.0.0.1/8:{ports['meter']}", value=meter_value(time.time()))
    ServedMeter.sim = meter
    vtn = DemoVtn(ports["vtn"], poll_seconds=10)
    rows, timeline, counts = [], [], collections.Counter()
    t0 = time.time()
    print(f"work dir {work}; load average {os.getloadavg()}", flush=True)

    def at(what: str) -> None:
        timeline.append((time.time(), what))
        print(f"{(time.time() - t0) / 60:5.1f} min  {what}", flush=True)

    async with BacnetPeer(C.free_port(), device_id=4000011, timeout=3.0) as reader, \
            BacnetPeer(C.free_port(), device_id=4000012, timeout=3.0) as subscriber, \
            BacnetPeer(C.free_port(), device_id=4000013, timeout=3.0) as bas, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        await meter.start()
        await vtn.start()
        gateway = GatewayProcess(config, log_path)
        gateway.start()
        await C.wait_until(lambda: "edge-gateway ready" in gateway.log(), 90)
        at("gateway ready")
        forecasts: list[tuple[float, object]] = []
        cov_notes = collections.Counter()
        active_subs: list[tuple[float, int]] = []

        async def meter_values():
            while True:
                meter.set_value(meter_value(time.time()))
                await asyncio.sleep(1 - time.time() % 1 + 0.001)

        async def bas_writes():
            while True:
                r = await bas.write(gw, P.BY_NAME[P.INPUT_POWER].object_id, "presentValue",
                                    meter_value(time.time()) + 1, priority=8)
                counts["bas write error" if r else "bas write"] += 1
                await asyncio.sleep(5)

        async def read_all():
            while True:
                for p in P.POINTS:
                    v = await reader.read(gw, p.object_id, "presentValue")
                    counts["read error" if isinstance(v, PeerError) or v is None else "read"] += 1
                    if p.name == P.ONE_HOUR_FORECAST:
                        forecasts.append((time.time(), v))
                    await asyncio.sleep(0.5)
                subs = await reader.read(gw, f"device {C.GATEWAY_DEVICE_ID}", "activeCovSubscriptions")
                active_subs.append((time.time(), len(subs) if isinstance(subs, list) else -1))

        async def cov_cycle():
            names = [P.EVENT_LEVEL, P.VTN_CONNECTED, P.METER_FAULT, P.METER_POWER]
            while True:
                cms = [subscriber.app.change_of_value(Address(gw), ObjectIdentifier(
                    P.BY_NAME[n].object_id.replace(" ", ",")), None, True, 30) for n in names]
                held = []
                for cm in cms:
                    try:
                        held.append((cm, await cm.__aenter__()))
                    except BaseException as err:   # noqa: BLE001 (bacpypes3's errors are BaseException)
                        counts[f"cov subscribe error {type(err).__name__}"] += 1

                async def drain(scm, name):
                    while True:
                        await scm.get_value()
                        cov_notes[name] += 1
                drains = [asyncio.create_task(drain(s, n)) for (c, s), n in zip(held, names)]
                await asyncio.sleep(120)                   # renewed by bacpypes3 every 28 s
                for cm, _ in held:                         # then let them lapse: no renewal, no cancel
                    if cm.refresh_subscription_handle:
                        cm.refresh_subscription_handle.cancel()
                await asyncio.sleep(60)
                for t in drains:
                    t.cancel()
                for cm, _ in held:
                    cm.refresh_subscription_handle = None
                    try:
                        await asyncio.wait_for(cm.__aexit__(None, None, None), 5)
                    except BaseException:   # noqa: BLE001
                        counts["cov cancel of a lapsed subscription refused"] += 1
                counts["cov cycle"] += 1

        async def http_poll():
            while True:
                for path in ("/api/status", "/api/history", "/metrics"):
                    try:
                        async with http.get(f"http://127.0.0.1:{ports['http']}{path}") as r:
                            await r.read()
                            counts[f"http {path} {r.status}"] += 1
                    except (aiohttp.ClientError, asyncio.TimeoutError) as err:
                        counts[f"http {path} {type(err).__name__}"] += 1
                await asyncio.sleep(10)

        async def events():
            n = 0
            while True:
                await asyncio.sleep(240)
                n += 1
                eid = f"soak-{n}"
                start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=90)
                vtn.add_event([1, 2, 1], start=start, interval_seconds=60, event_id=eid)
                at(f"event {eid} issued")
                await asyncio.sleep(60)
                vtn.modify_event(eid, levels=[2, 3, 2])
                at(f"event {eid} modified")
                if n % 2 == 0:
                    await asyncio.sleep(60)
                    vtn.cancel_event(eid)
                    at(f"event {eid} cancelled")

        async def sample():
            while True:
                try:
                    st = proc_stats(gateway.proc.pid)
                except (OSError, StopIteration):
                    return
                db, wal = file_sizes(storage)
                ro = sqlite3.connect(f"file:{storage}?mode=ro", uri=True, timeout=1)
                try:
                    tables = [r[0] for r in ro.execute("SELECT name FROM sqlite_master WHERE type='table'")]
                    nrows = {t: ro.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
                except sqlite3.Error as err:
                    nrows = {"error": str(err)}
                finally:
                    ro.close()
                tasks = json.loads(tasks_file.read_text().splitlines()[-1]) if tasks_file.exists() else {}
                rows.append({"min": (time.time() - t0) / 60, **st, "db": db, "wal": wal, "rows": nrows,
                             "tasks": tasks.get("n"), "lines": len(gateway.log().splitlines()),
                             "fits": len(children(gateway.proc.pid, b"ven.fit_worker"))})
                r = rows[-1]
                print(f"{r['min']:5.1f} min  RSS {r['rss']:.1f} fds {r['fds']} thr {r['threads']} tasks {r['tasks']} "
                      f"db {db:.0f}K wal {wal:.0f}K lines {r['lines']} rows {nrows}", flush=True)
                await asyncio.sleep(60)

        bg = [asyncio.create_task(c()) for c in (meter_values, bas_writes, read_all, cov_cycle, http_poll, events,
                                                 sample)]
        faults: list[tuple[str, float, float]] = []
        try:
            await asyncio.sleep(args.healthy_minutes * 60)
            kinds = ["VTN down", "meter silent", "router gone", "storage locked"]
            i = 0
            end = t0 + args.minutes * 60
            while time.time() + args.fault_seconds + 60 < end:
                kind = kinds[i % len(kinds)]
                i += 1
                start = time.time()
                at(f"fault {kind} starts")
                lock = None
                if kind == "VTN down":
                    await vtn.stop()
                elif kind == "meter silent":
                    meter.set_silent(True)
                elif kind == "router gone":
                    await meter.stop()
                else:
                    lock = sqlite3.connect(storage, isolation_level=None, timeout=5)
                    lock.execute("BEGIN IMMEDIATE")
                await asyncio.sleep(args.fault_seconds)
                if kind == "VTN down":
                    await vtn.start()
                elif kind == "meter silent":
                    meter.set_silent(False)
                elif kind == "router gone":
                    await meter.start()
                else:
                    lock.execute("COMMIT")
                    lock.close()
                at(f"fault {kind} ends")
                faults.append((kind, start, time.time()))
                await asyncio.sleep(max(0.0, min(args.fault_every * 60 - args.fault_seconds, end - time.time())))
            await asyncio.sleep(max(0.0, end - time.time()))
            metrics = scrape(ports["http"])
        finally:
            for t in bg:
                t.cancel()
            await asyncio.gather(*bg, return_exceptions=True)
            rc = gateway.stop()
            await vtn.stop()
            await meter.stop()
    report(args, work, rows, faults, timeline, log_path, vtn, forecasts, cov_notes, active_subs, counts, metrics, rc,
           tasks_file)


def report(args, work, rows, faults, timeline, log_path, vtn, forecasts, cov_notes, active_subs, counts, metrics, rc,
           tasks_file) -> None:
    print(f"\n==== exit code {rc}; load average {os.getloadavg()}")
    print(C.table(["min", "RSS MB", "fds", "thr", "tasks", "fits", "db KB", "wal KB", "log lines", "rows"],
                  [[f"{r['min']:.0f}", r["rss"], r["fds"], r["threads"], r["tasks"], r["fits"], r["db"], r["wal"],
                    r["lines"], " ".join(f"{k}={v}" for k, v in r["rows"].items())] for r in rows]))
    lines = log_path.read_text(errors="replace").splitlines()

    def when(ln: str) -> float | None:
        m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?)Z? ", ln)
        return datetime.fromisoformat(m[1]).replace(tzinfo=timezone.utc).timestamp() if m else None
    # a fault's end line comes after its settle period, doubled for one that recurs within 2 h: each fault's
    # lines are those up to the next fault's start
    print("\n==== faults: lines from the fault's start to the next fault's start")
    faulted = set()
    for i, (kind, a, b) in enumerate(faults):
        until = faults[i + 1][1] - 1 if i + 1 < len(faults) else float("inf")
        mine = [ln for ln in lines if (t := when(ln)) and a - 1 <= t < until]
        faulted.update(mine)
        start, end = FAULTS[kind]
        print(f"-- {kind} {b - a:.0f} s: {len(mine)} lines, starts {sum(bool(re.search(start, x)) for x in mine)}, "
              f"ends {sum(bool(re.search(end, x)) for x in mine)}")
        for ln in mine:
            print("    " + ln[:220])
        rep = [(k, n) for k, n in collections.Counter(line_kind(x) for x in mine).items() if n > 1]
        if rep:
            print("    REPEATED:", rep)
    healthy = [ln for ln in lines if (t := when(ln)) and t > rows[0]["min"] * 60 + timeline[0][0] + 120
               and ln not in faulted]
    faulted_s = (timeline[-1][0] - faults[0][1]) if faults else 0.0
    healthy_s = (faults[0][1] if faults else timeline[-1][0]) - timeline[0][0] - 120
    print(f"\nlines before the first fault (after the first 2 min): {len(healthy)} in {healthy_s / 60:.0f} min "
          f"({len(healthy) / max(healthy_s, 1) * 3600:.1f}/h); from the first fault on: {len(faulted)} in "
          f"{faulted_s / 60:.0f} min ({len(faulted) / max(faulted_s, 1) * 3600:.1f}/h)")
    for k, n in collections.Counter(line_kind(x) for x in healthy).most_common(30):
        print(f"  {n:4} {k}")
    print("tracebacks:", sum("Traceback" in ln for ln in lines), "; ERROR lines:", sum(" ERROR " in ln for ln in lines))

    served = {round(v, 3) for _, v in ServedMeter.served}
    by_ts = collections.defaultdict(set)
    for _, _, _, ts, v in vtn.reports:
        by_ts[ts.timestamp()].add(round(v, 3))
    conflicting = {t: v for t, v in by_ts.items() if len(v) > 1}
    unknown = [(t, v) for t, vs in by_ts.items() for v in vs if v not in served]
    ts = sorted(by_ts)
    holes = [(a, b) for a, b in zip(ts, ts[1:]) if b - a > 15]
    print(f"\ntelemetry: meter answered {len(ServedMeter.served)} reads; VTN received {len(vtn.reports)} samples, "
          f"{len(by_ts)} intervals, {len(vtn.reports) - len(by_ts)} repeated, {len(conflicting)} with different "
          f"values, {len(unknown)} values the meter never served; gaps: {len(holes)}")
    for a, b in holes:
        print(f"  gap {time.strftime('%H:%M:%S', time.gmtime(a))} .. {time.strftime('%H:%M:%S', time.gmtime(b))}")
    for t, v in list(conflicting.items())[:10] + [(t, {v}) for t, v in unknown[:10]]:
        print(f"  {time.strftime('%H:%M:%S', time.gmtime(t))} {sorted(v)}")
    print(f"metrics: queued {metrics.get('edge_gateway_telemetry_queued_total')} sent "
          f"{metrics.get('edge_gateway_telemetry_sent_total')} dropped {metrics.get('edge_gateway_telemetry_dropped_total')}"
          f" depth {metrics.get('edge_gateway_telemetry_queue_depth')}")
    fc = [(t, v) for t, v in forecasts if isinstance(v, float)]
    changes = [t for (t, v), (_, w) in zip(fc, fc[1:]) if v != w]
    longest = max((b - a for a, b in zip(changes, changes[1:])), default=float("nan"))
    print(f"forecast point: {len(fc)} reads, {len(changes)} changes, longest without change {longest:.0f} s, "
          f"last change {(time.time() - changes[-1]) if changes else float('nan'):.0f} s before the end")
    print(f"COV notifications {dict(cov_notes)}; activeCovSubscriptions over time (min, n): "
          f"{[(round((t - timeline[0][0]) / 60), n) for t, n in active_subs[::8]]}")
    print("client counts:", dict(counts))
    tk = [json.loads(x) for x in tasks_file.read_text().splitlines()] if tasks_file.exists() else []
    if tk:
        first, last = tk[0]["by"], tk[-1]["by"]
        print(f"asyncio tasks first {tk[0]['n']} last {tk[-1]['n']} max {max(x['n'] for x in tk)}; grew: "
              f"{ {k: (first.get(k, 0), v) for k, v in last.items() if v > first.get(k, 0)} }")
    # from minute 3 (after the first fit), and over the second half alone: RSS steps at each fit and levels off,
    # so a straight line from the start overstates it
    for a, b in ((rows[min(3, len(rows) - 1)], rows[-1]), (rows[len(rows) // 2], rows[-1])):
        span_days = (b["min"] - a["min"]) / 1440
        if span_days <= 0:
            continue
        print("\n==== growth from minute", round(a["min"]), "to", round(b["min"]), "extrapolated to 182 days")
        for key in ("rss", "fds", "threads", "db", "wal"):
            per_day = (b[key] - a[key]) / span_days
            print(f"  {key}: {a[key]:.1f} -> {b[key]:.1f}: {per_day:+.1f}/day, {per_day * 182:+.0f} in 6 months")
        for t in b["rows"]:
            if t in a["rows"] and isinstance(b["rows"][t], int):
                per_day = (b["rows"][t] - a["rows"][t]) / span_days
                print(f"  rows {t}: {a['rows'][t]} -> {b['rows'][t]}: {per_day:+.0f}/day")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=45.0)
    ap.add_argument("--healthy-minutes", type=float, default=4.0)
    ap.add_argument("--fault-every", type=float, default=6.0)
    ap.add_argument("--fault-seconds", type=float, default=90.0)
    ap.add_argument("--retrain-minutes", type=float, default=5.0)
    ap.add_argument("--keep")
    asyncio.run(main(ap.parse_args()))
