"""`edge-gateway demo`: the whole system on loopback, nothing to configure.

A demo VTN, the routed meter simulator replaying the shipped office building in real time, a BAS
simulator writing the same building's kW into input-power-meter, reading back what it needs and shedding
the building's load on it (which the meter reads too), and the gateway itself (the same `Gateway` that `run`
starts). Every exchange goes over real BACnet and OpenADR.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import re
import socket
import tempfile
import time
from argparse import Namespace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bacnet_api import points as P
from bacnet_api.bas_simulator import BasSimulator
from bacnet_api.simulator import MeterSimulator

from .config_load import parse_config
from .demo_data import load_series
from .vtn_server import DemoVtn

log = logging.getLogger("demo")
WEEK = 7 * 86400.0


class BuildingProfile:
    """The shipped building's load shape moved to the present, keeping weekday and time of day."""

    def __init__(self, times: list[float], values: list[float], now: float):
        self.times = np.asarray(times, dtype=float)
        self.values = np.asarray(values, dtype=float)
        last = self.times[-1]
        self.shift = math.ceil((now - last) / WEEK) * WEEK  # whole weeks keep the weekday

    def kw(self, t: float) -> float:
        src = t - self.shift
        while src > self.times[-1]:
            src -= WEEK
        return float(np.interp(src, self.times, self.values))

    def history(self, now: float) -> tuple[list[float], list[float]]:
        shifted = self.times + self.shift
        keep = shifted < now
        return shifted[keep].tolist(), self.values[keep].tolist()


def demo_config(args: Namespace, storage: str):
    return parse_config({
        "bacnet": {"address": f"127.0.0.1/8:{args.bacnet_port}", "device_id": 500001, "device_name": "EdgeGateway-demo"},
        "meter": {"address": "12345:2", "object": "analogInput 2", "router": f"127.0.0.1:{args.meter_port}",
                  "poll_seconds": float(args.telemetry_seconds), "timeout_seconds": 5.0},
        "openadr": {"vtn_url": f"http://127.0.0.1:{args.vtn_port}/OpenADR2/Simple/2.0b", "ven_name": "edge-gateway-demo",
                    "telemetry_seconds": args.telemetry_seconds},
        "storage": {"path": storage},
        "http": {"address": f"127.0.0.1:{args.http_port}"},
    }, "demo", environ={})     # the site's EDGE_GATEWAY__ variables (the image sets storage.path) are not the demo's


async def storyline(vtn: DemoVtn, t0: float, event_delay: float, step: float) -> None:
    """The utility's part: one event with levels 1, 2, 3; then a second one modified and cancelled."""
    def at(seconds: float) -> datetime:
        return datetime.fromtimestamp(t0 + seconds, timezone.utc)

    async def until(seconds: float) -> None:
        await asyncio.sleep(max(0.0, t0 + seconds - time.time()))

    await until(2)
    vtn.add_event([1, 2, 3], start=at(event_delay), interval_seconds=step, event_id="demo-levels-1-2-3")
    end = event_delay + 3 * step
    await until(end + 5)
    second = vtn.add_event([1, 1], start=at(end + 5 + 4 * step), interval_seconds=2 * step, event_id="demo-modified")
    await until(end + 5 + step)
    vtn.modify_event(second, levels=[2, 3])
    log.info("demo VTN: event %s modified to levels [2, 3]", second)
    await until(end + 5 + 2 * step)
    vtn.cancel_event(second)
    log.info("demo VTN: event %s cancelled", second)


def _when(view: dict) -> str:
    start = view.get(P.EVENT_START_MINUTES)
    start = -1 if start is None else start
    return "active" if view.get(P.EVENT_ACTIVE) else "no event pending" if start < 0 else f"next in {start:.0f} min"


def describe(view: dict, decision: str, faults=frozenset(), reported_kw: float | None = None) -> str:
    def kw(name):
        v = view.get(name)
        return "fault" if name in faults else "-" if v is None else f"{v:.1f} kW"
    # a point in fault says so: what the BAS decides on, and each of its lines says what changed (demo.Narrator)
    onoff = lambda name: "fault" if name in faults else "on" if view.get(name) else "off"  # noqa: E731
    trend = "fault" if P.RATE_OF_CHANGE in faults else f"{view.get(P.RATE_OF_CHANGE, 0):+.1f} kW/min"
    return (f"BAS sees level {view.get(P.EVENT_LEVEL, 0):.0f} ({_when(view)}), "
            f"meter {kw(P.METER_POWER)}, forecast 15 min {kw(P.FIFTEEN_MIN_FORECAST)} / 60 min {kw(P.ONE_HOUR_FORECAST)}, "
            f"trend {trend}, high-load {onoff(P.HIGH_LOAD)}, "
            f"low-load {onoff(P.LOW_LOAD)} -> {decision}"
            + (f" (its own: bas-shed-power {reported_kw:.1f} kW)" if reported_kw is not None else ""))


_KW = re.compile(r"[-+]?\d+\.\d kW(/min)?")


class Narrator:
    """The BAS simulator's lines: one when what the BAS acts on changes (the level, the event's state, a flag, a
    fault, its decision, its own shed), not when a kW reading or a forecast moves a tenth, which was a line at
    every cycle (360 an hour) for as long as the demo ran, and the gateway's own lines were lost among them."""

    def __init__(self) -> None:
        self._said: str | None = None

    def line(self, view: dict, decision: str, faults=frozenset(), reported_kw: float | None = None) -> str | None:
        text = describe(view, decision, faults, reported_kw)
        # the line as read, its kW figures aside: a state that differs where the line does not show it (a point
        # whose read failed this cycle) made two lines that read the same
        said = _KW.sub("#", text)
        if said == self._said:
            return None
        self._said = said
        return text


def taken_ports(ports: dict[str, tuple[int, str]]) -> list[str]:
    """One line per loopback port (by its command-line flag) that something else holds."""
    problems = []
    seen: dict[tuple[int, str], str] = {}
    for flag, (port, proto) in ports.items():
        if (port, proto) in seen:
            problems.append(f"{proto.upper()} port {port} is given to both {seen[port, proto]} and {flag}")
            continue
        seen[port, proto] = flag
        kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
        with socket.socket(socket.AF_INET, kind) as probe:
            if kind == socket.SOCK_STREAM:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as err:
                problems.append(f"{proto.upper()} port {port} on 127.0.0.1 is taken ({err.strerror}): "
                                f"choose another with {flag}")
    return problems


async def run_demo(args: Namespace) -> int:
    from .app import Gateway
    from .cli import serve_until_signalled

    t0 = time.time()
    tmp = None
    if args.storage is None:
        tmp = tempfile.TemporaryDirectory(prefix="edge-gateway-demo-")
        storage = str(Path(tmp.name) / "gateway.sqlite")
    else:
        storage = args.storage
    profile = BuildingProfile(*load_series(), now=t0)
    cfg = demo_config(args, storage)

    vtn = DemoVtn(port=args.vtn_port, poll_seconds=2.0, request_status=True)
    meter = MeterSimulator(address=f"127.0.0.1/8:{args.meter_port}", value=profile.kw(t0))
    gateway = Gateway(cfg)
    gateway.forecast.warm_start(*profile.history(t0))
    narrator = Narrator()

    def narrate(view: dict, decision: str) -> None:
        if (text := narrator.line(view, decision, bas.faults, bas.reported_kw)) is not None:
            log.info(text)
    bas = BasSimulator(args.bas_port, f"127.0.0.1:{args.bacnet_port}", lambda: profile.kw(time.time()),
                       interval=args.bas_interval, on_change=narrate)
    started = []

    async def main() -> None:
        for part in (vtn, meter, gateway, bas):
            started.append(part)  # a start that fails half way is stopped too (sockets, tasks)
            await part.start()
        log.info("demo running: gateway BACnet 127.0.0.1:%d (device 500001), dashboard http://127.0.0.1:%d/, "
                 "event at +%.0f s", args.bacnet_port, args.http_port, args.event_delay)
        # from now, as the line says: counted from t0, a box that took seconds to start the gateway received the
        # event in its second interval, and level 1 was never shown
        tasks = [asyncio.create_task(storyline(vtn, time.time(), args.event_delay, args.interval_seconds)),
                 asyncio.create_task(drive_meter(meter, bas.drawn_kw))]
        try:
            # --duration from here too: counted from the call, a box slow to start the parts ran out of it mid-start,
            # and the demo stopped before its gateway had stored the warm start's history (helper flake44)
            await (asyncio.sleep(args.duration) if args.duration else asyncio.Event().wait())
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    try:
        await serve_until_signalled(main())
    finally:
        for part in reversed(started):
            try:
                await part.stop()
            except Exception as err:  # stop the rest regardless
                log.warning("stopping %s: %s", type(part).__name__, err)
        summary = demo_summary(vtn)
        log.info("demo VTN received %d telemetry samples; opt answers: %s", len(summary["reports"]),
                 opt_answers_text(summary["opts"]))
        if args.report:
            Path(args.report).write_text(json.dumps(summary, indent=1))
        if tmp is not None:
            tmp.cleanup()
    return 0


async def drive_meter(meter: MeterSimulator, drawn_kw) -> None:
    while True:
        meter.set_value(drawn_kw())
        await asyncio.sleep(5.0)


def opt_answers_text(opts) -> str:
    """The VTN's record of opt answers, each run of one answer to one event said once with its count: the VEN
    answers an event at its receipt, each modification and its cancellation, which read as the same line thrice."""
    said = []
    for (event, opt), run in itertools.groupby(opts):
        n = len(list(run))
        said.append(f"{event}={opt}" + (f" ({n} answers)" if n > 1 else ""))
    return ", ".join(said) or "none"


def demo_summary(vtn: DemoVtn) -> dict:
    return {
        "reports": [{"ven_id": v, "resource_id": r, "measurement": m, "timestamp": ts.isoformat(), "value": val}
                    for v, r, m, ts, val in vtn.reports],
        # TELEMETRY_STATUS: the site's status as the VTN received it, each interval
        "status": [{"timestamp": ts.isoformat(), **status} for _, intervals in vtn.status_updates
                   for ts, _, _, status in intervals],
        "opts": [(e, o) for _, e, o in vtn.opts],
        "registrations": vtn.registrations,
    }


async def run_demo_vtn(args: Namespace) -> int:
    """The demo's VTN alone, e.g. in docker compose beside a real gateway."""
    from .cli import serve_until_signalled

    vtn = DemoVtn(port=args.port, host=args.host, poll_seconds=2.0, request_status=True)

    async def main() -> None:
        await storyline(vtn, time.time(), args.event_delay, args.interval_seconds)
        await asyncio.Event().wait()

    await vtn.start()
    try:
        await serve_until_signalled(main(), args.duration)
    finally:
        await vtn.stop()
    return 0
