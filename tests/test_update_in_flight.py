"""A telemetry update on its way when the VTN asks the VEN to register again, or when the gateway stops: the VTN
takes it either way. Closed under it, it counted as failed, and its interval reached the VTN twice, under the old
request and under the next registration's (or the next run's). A real DemoVtn on loopback holds its answer."""
from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from bacnet_api.simulator import MeterSimulator
from test_gateway import fast_config
from ven.app import Gateway
from ven.vtn_server import DemoVtn
from waiting import eventually

pytestmark = [pytest.mark.timeout(90), pytest.mark.mostly_waiting]

HOLD_S = 1.5    # the VTN's answer to one update comes this late (a slow VTN or link): longer than its poll


@pytest.mark.parametrize("meanwhile", ["reregistration", "stop"])
async def test_an_update_the_vtn_took_as_the_session_ended_is_not_sent_again(tmp_path, free_udp_port, free_tcp_port,
                                                                             meanwhile):
    ports = dict(bacnet_port=free_udp_port(), meter_port=free_udp_port(), vtn_port=free_tcp_port(),
                 http_port=free_tcp_port())
    config = fast_config(tmp_path, **ports, telemetry_seconds=2)
    vtn = DemoVtn(port=ports["vtn_port"], poll_seconds=0.3)
    handlers = vtn._server.services["report_service"].handlers
    real, held = handlers["oadrUpdateReport"], asyncio.Event()

    async def holding(payload):
        if not held.is_set():
            held.set()
            if meanwhile == "reregistration":
                vtn.request_reregistration(gateway.vtn.ven_id)   # the VTN forgets the VEN while it takes this one
            await asyncio.sleep(HOLD_S)
        return await real(payload)
    meter = MeterSimulator(address=f"127.0.0.1/8:{ports['meter_port']}", value=40.0)
    gateway = Gateway(config)
    await vtn.start()
    await meter.start()
    await gateway.start()
    try:
        await eventually(lambda: len(vtn.updates) >= 2, 30, "updates flowing")
        handlers["oadrUpdateReport"] = holding
        await asyncio.wait_for(held.wait(), 15)
        if meanwhile == "stop":
            await gateway.stop()        # what SIGTERM runs
            gateway = Gateway(config)
            await gateway.start()
        sent = len(vtn.updates)
        await eventually(lambda: len(vtn.updates) >= sent + 3, 30, "updates after it, under the new request")
    finally:
        await gateway.stop()
        await meter.stop()
        await vtn.stop()
    seen = Counter(start for _, intervals in vtn.updates for start, *_ in intervals)
    assert [start for start, n in seen.items() if n > 1] == [], vtn.updates
