"""A flaky site against the real `edge-gateway run` process: many hours of intermittent faults in a few minutes.

    python bench/flaky_day.py [--minutes 5] [--meter-drop 15] [--vtn-fail 15] [--keep DIR]

Real peers in this process, on loopback: the routed meter simulator losing every `--meter-drop`-th read of
presentValue (`set_dropping`, a busy MS/TP trunk), a demo VTN polled every second that fails about one poll in
`--vtn-fail` (at random, seeded: an HTTP 500 and a dropped connection in turn, before the VTN handles the poll), and
a BACnet peer as the BAS, writing input-power-meter at intervals jittering around forecaster.input_stale_seconds
(0.8-1.25x: a BAS on change of value, a little slower than the limit about half the time). The same peer subscribes
to COV of vtn-connected and meter-fault and counts their flips, and of power-rate-of-change for its fault flag (on
while the forecaster has no power input).

Each period is production's divided by one factor per source (meter.poll_seconds 10 s -> 0.5 s: x20; the VTN's
poll 10 s, openleadr's default -> 1 s: x10; input_stale_seconds 300 s -> 3 s: x100), and so are the settle
periods (meter.settle_seconds and openadr.settle_seconds 60 s -> 3 s and 6 s; the BAS input's is 2 x
input_stale_seconds by itself); a simulated hour of a source is 3600 s / its factor.

Two phases of --minutes / 2 each, every one with a fresh gateway, peers and SQLite file:
  settled: the settle periods scaled as above;
  zero:    openadr.settle_seconds 0 (an end line at the first answer), meter.settle_seconds 0.001 (0 is refused:
           gt=0; what is left are 5 good reads, fewer than the reads between two drops, so each dropped read is a
           start and an end line, as before b0f38d1 when the end came at the first answer). The BAS input's
           settle period is 2 x input_stale_seconds, not configurable; before b0f38d1 each late write was two INFO
           lines (to the meter and back), so the table gives 2 x the late writes for it.
Prints per phase: each source's failures injected, its WARNING/ERROR lines, INFO end lines and all lines, per
simulated hour; the flips a BACnet client saw; telemetry queued (/metrics) vs received by the VTN (duplicates,
holes); the gateway's RSS at the start and end of the faults. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]

import _common as C  # noqa: E402
from aiohttp import web  # noqa: E402
from bacpypes3.pdu import Address  # noqa: E402
from bacpypes3.primitivedata import ObjectIdentifier  # noqa: E402
from bacnet_peer import BacnetPeer  # noqa: E402
from gateway_process import GatewayProcess  # noqa: E402
from soak import line_kind, scrape, vtn_table  # noqa: E402

from bacnet_api import points as P  # noqa: E402
from bacnet_api.client import to_plain  # noqa: E402
from bacnet_api.simulator import MeterSimulator  # noqa: E402
from ven.vtn_server import DemoVtn  # noqa: E402

METER_POLL, VTN_POLL, STALE, TELEMETRY = 0.5, 1.0, 3.0, 1.0
SCALE = {"meter": 10 / METER_POLL, "VTN": 10 / VTN_POLL, "BAS input": 300 / STALE}
# source: (any line of it, its start lines, its end lines)
SOURCES = {
    "meter": (r"\bmeter (fault|answering)", r"meter fault", r"meter answering"),
    "VTN": (r"VTN|registered with|[Pp]oll", r"VTN (poll|registration) failed|VTN registration lost|"
            r"VTN .* again .* after it answered|VTN outage goes on", r"VTN connected"),
    "BAS input": (r"forecaster (now )?learns from|forecaster has (no )?power input",
                  r"learns from meter \(BAS input not written|has no power input",
                  r"learns from bacnet_input|has power input again"),
}


class FlakyPolls:
    """Fails about one oadrPoll in `one_in` (seeded), before openleadr handles it: an HTTP 500 and a dropped
    connection in turn, as a flaky proxy does. A middleware, so openleadr's own handlers stay as they are."""

    def __init__(self, vtn: DemoVtn, one_in: int, seed: int = 7):
        self.one_in, self.on, self.rng = one_in, False, random.Random(seed)
        self.polls = self.failed = self.dropped = 0
        vtn._server.app.middlewares.append(self._middleware)

    @web.middleware
    async def _middleware(self, request: web.Request, handler):
        if not request.path.endswith("/OadrPoll") or not self.on:
            return await handler(request)
        self.polls += 1
        if not self.one_in or self.rng.randrange(self.one_in):
            return await handler(request)
        self.failed += 1
        if self.failed % 2:
            return web.Response(status=500, text="proxy: upstream reset")
        self.dropped += 1
        request.transport.abort()    # the VEN sees the connection closed without an answer
        return web.Response(status=500)


class Flips:
    """Changes of one point's present-value (`fault`: of its statusFlags fault bit), from confirmed COV
    notifications."""

    def __init__(self, peer: BacnetPeer, gw: str, obj: str, lifetime: int, fault: bool = False):
        self.values: list[str] = []
        self.prop = "status-flags" if fault else "present-value"
        self._cm = peer.app.change_of_value(Address(gw), ObjectIdentifier(obj.replace(" ", ",")), None, True,
                                                lifetime)
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> "Flips":
        scm = await self._cm.__aenter__()

        async def watch():
            while True:
                prop, value = await scm.get_value()
                if str(prop) == self.prop:
                    v = str(to_plain(value)[1] if self.prop == "status-flags" else to_plain(value))
                    if not self.values or self.values[-1] != v:
                        self.values.append(v)
        self._task = asyncio.create_task(watch())
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._cm.__aexit__(None, None, None)


def config_text(storage: Path, ports: dict, meter_settle: float, vtn_settle: float) -> str:
    cfg = C.gateway_config_dict(str(storage), ports["bacnet"], ports["meter"], ports["vtn"], ports["http"],
                                poll_seconds=METER_POLL, telemetry_seconds=TELEMETRY, cycle_seconds=1.0,
                                log_level="INFO")
    # a dropped read ends at the timeout; production's 5 s of a 10 s poll, scaled
    cfg["meter"].update(timeout_seconds=METER_POLL / 2, settle_seconds=meter_settle)
    cfg["openadr"].update(settle_seconds=vtn_settle, retry_min_seconds=0.5, retry_max_seconds=2.0,
                          ven_name="flaky-day")
    cfg["forecaster"]["input_stale_seconds"] = STALE
    return C.to_toml(cfg)


async def phase(name: str, seconds: float, args, work: Path, meter_settle: float, vtn_settle: float) -> dict:
    ports = {"bacnet": C.free_port(), "meter": C.free_port(), "vtn": C.free_tcp_port(), "http": C.free_tcp_port()}
    config, log_path = work / f"{name}.toml", work / f"{name}.log"
    config.write_text(config_text(work / f"{name}.sqlite", ports, meter_settle, vtn_settle))
    gw = f"127.0.0.1:{ports['bacnet']}"
    rng = random.Random(11)
    out: dict = {"name": name, "meter_settle": meter_settle, "vtn_settle": vtn_settle}
    vtn = DemoVtn(ports["vtn"], poll_seconds=VTN_POLL)
    flaky = FlakyPolls(vtn, args.vtn_fail)
    async with MeterSimulator(address=f"127.0.0.1/8:{ports['meter']}", value=87.5) as meter, vtn, \
            BacnetPeer(C.free_port(), timeout=2.0) as bas:
        gateway = GatewayProcess(config, log_path)
        gateway.start()
        writes: list[float] = []
        jitter = True

        async def bas_writes():
            while True:
                writes.append(time.monotonic())
                await bas.write(gw, P.BY_NAME[P.INPUT_POWER].object_id, "presentValue", 80 + rng.random(), priority=8)
                await asyncio.sleep(STALE * rng.uniform(0.8, 1.25) if jitter else 1.0)

        writer = None
        try:
            if not await C.wait_until(lambda: "edge-gateway ready" in gateway.log(), 60):
                raise RuntimeError(f"gateway not ready:\n{gateway.log()}")
            await C.wait_until(lambda: vtn.vens and len(vtn.reports) >= 2, 30)
            jitter = False
            writer = asyncio.create_task(bas_writes())
            await asyncio.sleep(2 * STALE)      # the BAS input is the forecaster's source before its faults begin
            lifetime = int(seconds + 120)
            async with Flips(bas, gw, P.BY_NAME[P.VTN_CONNECTED].object_id, lifetime) as connected, \
                    Flips(bas, gw, P.BY_NAME[P.METER_FAULT].object_id, lifetime) as meter_fault, \
                    Flips(bas, gw, P.BY_NAME[P.RATE_OF_CHANGE].object_id, lifetime, fault=True) as rate_fault:
                await asyncio.sleep(1)
                mark = len(gateway.log().splitlines())
                out["rss_start"] = C.rss_mb(gateway.proc.pid)[0]
                t0 = time.monotonic()
                meter.set_dropping(args.meter_drop)
                flaky.on, jitter, first_write = True, True, len(writes)
                await asyncio.sleep(seconds)
                out["seconds"] = time.monotonic() - t0
                out["meter_dropped"] = meter._meter._value_reads // args.meter_drop if args.meter_drop else 0
                out["meter_reads"] = meter._meter._value_reads
                meter.set_dropping(0)
                flaky.on, jitter = False, False
                gaps = [b - a for a, b in zip(writes[first_write - 1:], writes[first_write:])]
                out["bas_writes"], out["bas_late"] = len(gaps), sum(1 for g in gaps if g > STALE)
                out["vtn_polls"], out["vtn_failed"], out["vtn_dropped"] = flaky.polls, flaky.failed, flaky.dropped
                out["rss_end"] = C.rss_mb(gateway.proc.pid)[0]
                out["lines"] = gateway.log().splitlines()[mark:]
                # the last intervals reach the VTN once an answered poll follows: then queued vs received
                await asyncio.sleep(4 * TELEMETRY + 2 * VTN_POLL)
                m = scrape(ports["http"])
                out["queued"] = m.get("edge_gateway_telemetry_queued_total", float("nan"))
                out["sent"] = m.get("edge_gateway_telemetry_sent_total", float("nan"))
                out["dropped"] = m.get("edge_gateway_telemetry_dropped_total", float("nan"))
                out["depth"] = m.get("edge_gateway_telemetry_queue_depth", float("nan"))
                out["vtn"] = {"vtn_report_times": [ts.timestamp() for _, _, _, ts, _ in vtn.reports],
                              "vtn_registrations": vtn.registrations}
                out["connected"], out["meter_fault"] = connected.values, meter_fault.values
                out["rate_fault"] = rate_fault.values
        finally:
            if writer:
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
            out["exit"] = gateway.stop()
    out["log"] = log_path
    return out


def per_source(r: dict) -> list[list]:
    rows = []
    injected = {"meter": r["meter_dropped"], "VTN": r["vtn_failed"], "BAS input": r["bas_late"]}
    for source, (any_line, start, end) in SOURCES.items():
        mine = [ln for ln in r["lines"] if re.search(any_line, ln)]
        hours = r["seconds"] * SCALE[source] / 3600
        warn = [ln for ln in mine if re.match(r"\S+ (WARNING|ERROR) ", ln)]
        ends = [ln for ln in mine if re.search(end, ln) and not re.match(r"\S+ (WARNING|ERROR|DEBUG) ", ln)]
        rows.append([source, hours, injected[source], injected[source] / hours, len(warn), len(warn) / hours,
                     len(ends), len(ends) / hours, len(mine), len(mine) / hours])
    return rows


def report(r: dict) -> None:
    print(f"\n=== {r['name']}: meter.settle_seconds {r['meter_settle']:g}, openadr.settle_seconds {r['vtn_settle']:g}, "
          f"BAS input settle {2 * STALE:g} s; {r['seconds']:.0f} s of faults; exit code {r['exit']}; log {r['log']}")
    print(C.table(["source", "sim h", "injected", "/h", "WARN+ERR", "/h", "INFO end", "/h", "all lines", "/h"],
                  per_source(r)))
    print(f"meter: {r['meter_reads']} reads of presentValue, {r['meter_dropped']} lost; VTN: {r['vtn_polls']} polls, "
          f"{r['vtn_failed']} failed ({r['vtn_dropped']} connections dropped); BAS: {r['bas_writes']} writes, "
          f"{r['bas_late']} later than {STALE:g} s")
    other = [ln for ln in r["lines"] if not any(re.search(s[0], ln) for s in SOURCES.values())]
    print(f"lines of no source above: {len(other)}; tracebacks: {sum('Traceback' in ln for ln in r['lines'])}")
    kinds = collections.Counter(line_kind(ln) for ln in r["lines"] if re.match(r"\d{4}-", ln))
    print(C.table(["count", "kind (digits masked)"], [[n, k] for k, n in kinds.most_common(25)]))
    for point, values, bad in (("vtn-connected", r["connected"], "inactive"),
                               ("meter-fault", r["meter_fault"], "active"),
                               ("power-rate-of-change fault flag", r["rate_fault"], "1")):
        flips = max(0, len(values) - 1)
        print(f"{point}: {flips} flips seen by COV, {sum(1 for v in values[1:] if v == bad)} to {bad}")
    print(f"telemetry: queued {r['queued']:.0f}, sent {r['sent']:.0f}, dropped {r['dropped']:.0f}, queue depth "
          f"{r['depth']:.0f} (/metrics, {4 * TELEMETRY + 2 * VTN_POLL:g} s after the faults stopped)")
    vtn_table(r["vtn"], TELEMETRY)
    print(f"RSS at the faults' start {r['rss_start']:.1f} MB, at their end {r['rss_end']:.1f} MB")


async def main(args) -> None:
    work = Path(args.keep or tempfile.mkdtemp(prefix="flaky-day-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["HOME"] = str(work)     # BAC0 writes ~/.BAC0
    C.quiet_logging()
    print(f"load average at start: {os.getloadavg()}; work dir {work}")
    seconds = args.minutes * 60 / 2
    settled = await phase("settled", seconds, args, work, 60 / SCALE["meter"], 60 / SCALE["VTN"])
    zero = await phase("zero", seconds, args, work, 0.001, 0.0)
    for r in (settled, zero):
        report(r)
    print("\n=== lines per simulated hour, settled vs zero (BAS input: zero is 2 INFO per late write, as before "
          "b0f38d1)")
    rows = []
    for (s, z) in zip(per_source(settled), per_source(zero)):
        z_all = 2 * zero["bas_late"] / z[1] if s[0] == "BAS input" else z[9]
        rows.append([s[0], s[3], s[5], s[7], s[9], z[3], z_all])
    print(C.table(["source", "injected/h", "settled WARN+ERR/h", "INFO end/h", "all/h", "zero: injected/h",
                   "zero: all/h"], rows))
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="faults in both phases together")
    ap.add_argument("--meter-drop", type=int, default=15, help="lose every N-th meter read (0: none)")
    ap.add_argument("--vtn-fail", type=int, default=15, help="fail about one VTN poll in N (0: none)")
    ap.add_argument("--keep", help="directory for the configs, logs and SQLite files")
    asyncio.run(main(ap.parse_args()))
