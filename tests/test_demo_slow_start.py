"""The demo's storyline counted from the demo process's start: on a box where the gateway took seconds to start
(beside the suite: 6 s, then 6 s to register) the event of levels 1, 2, 3 was received in its second interval, and
level 1 was never shown. It counts from the moment the demo says it runs, as that line's "event at +N s" says."""
from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

import ven.demo as demo
from ven.app import Gateway
from ven.cli import build_parser

pytestmark = pytest.mark.timeout(60)


async def test_the_demo_event_is_counted_from_the_demo_running_not_from_its_start(
        tmp_path, free_udp_port, free_tcp_port, monkeypatch):
    started_at, told = [], []
    real_start = Gateway.start

    async def slow_start(self):     # a gateway as slow to start as on a loaded box
        await asyncio.sleep(1.5)
        await real_start(self)
        started_at.append(time.time())
    monkeypatch.setattr(Gateway, "start", slow_start)

    async def storyline(vtn, t0, event_delay, step):
        told.append(t0)
        os.kill(os.getpid(), signal.SIGINT)     # the demo's Ctrl-C: all the test needs is seen
        await asyncio.Event().wait()
    monkeypatch.setattr(demo, "storyline", storyline)
    args = build_parser().parse_args([
        "demo", "--duration", "40", "--event-delay", "8", "--interval-seconds", "3", "--bas-interval", "1",
        "--storage", str(tmp_path / "demo.sqlite"),
        "--bacnet-port", str(free_udp_port()), "--meter-port", str(free_udp_port()), "--bas-port", str(free_udp_port()),
        "--vtn-port", str(free_tcp_port()), "--http-port", str(free_tcp_port())])
    assert await demo.run_demo(args) == 0
    assert started_at and told, (started_at, told)
    assert told[0] >= started_at[0], f"the storyline counted from {started_at[0] - told[0]:.1f} s before the start"
