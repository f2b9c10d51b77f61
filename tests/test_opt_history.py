"""What /api/history says about an event the BAS opted out of for a while: each part with the answer
in force then, and the same after a restart. The wired gateway with real peers: an openleadr VTN, the
routed meter simulator, a second BACnet stack as the BAS, a real SQLite file."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest
from bacnet_peer import BacnetPeer
from test_gateway import fast_config
from waiting import eventually

from bacnet_api import points as P
from bacnet_api.simulator import MeterSimulator
from ven.app import Gateway
from ven.vtn_server import DemoVtn

pytestmark = pytest.mark.timeout(90)


async def spans(gateway, event_id):
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async with http.get(f"{gateway.http.url}/api/history?hours=1") as r:
            assert r.status == 200
            body = await r.json()
    return [(e["start"], e["end"], e["level"], e["opt"]) for e in body["events"] if e["event_id"] == event_id]


def now() -> float:
    return datetime.now(timezone.utc).timestamp()


async def test_a_bas_opt_out_for_a_while_stays_in_the_history_across_a_restart(tmp_path, free_udp_port,
                                                                               free_tcp_port):
    ports = dict(bacnet_port=free_udp_port(), meter_port=free_udp_port(), vtn_port=free_tcp_port(),
                 http_port=free_tcp_port())
    config = fast_config(tmp_path, **ports)
    gw, opt_out = f"127.0.0.1:{ports['bacnet_port']}", P.BY_NAME[P.OPT_OUT].object_id
    async with DemoVtn(port=ports["vtn_port"], poll_seconds=1.0) as vtn, BacnetPeer(free_udp_port()) as peer:
        meter = MeterSimulator(address=f"127.0.0.1/8:{ports['meter_port']}", value=87.5)
        await meter.start()
        gateway = Gateway(config)
        try:
            await gateway.start()
            await eventually(lambda: gateway.vtn.connected, 10)
            # time for a poll of a loaded machine before the start: an event that comes after it is shown (and its
            # history span begins) when it came, not at its start
            start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=5)
            vtn.add_event([2], start=start, interval_seconds=60, event_id="bas-out")
            await eventually(lambda: gateway.device.get(P.EVENT_LEVEL) == 2.0, 12)

            written = now()
            assert await peer.write(gw, opt_out, "presentValue", "active", priority=8) is None
            await eventually(lambda: gateway.device.get(P.EVENT_LEVEL) == 0.0, 2)
            took = now()
            await asyncio.sleep(1.0)
            released = now()
            assert await peer.relinquish(gw, opt_out, priority=8) is None
            await eventually(lambda: gateway.device.get(P.EVENT_LEVEL) == 2.0, 2)
            back = now()

            shown = await spans(gateway, "bas-out")
            assert [(level, opt) for _, _, level, opt in shown] == [(2, "optIn"), (2, "optOut"), (2, "optIn")]
            (s0, e0, _, _), (s1, e1, _, _), (s2, e2, _, _) = shown
            assert s0 == start.timestamp() and e2 == start.timestamp() + 60
            assert e0 == s1 and e1 == s2  # one span cut twice, nothing lost or doubled
            assert written <= s1 <= took and released <= e1 <= back
            await eventually(lambda: vtn.opts_for("bas-out")[-2:] == ["optOut", "optIn"], 10)
        finally:
            await gateway.stop()

        gateway = Gateway(config)  # the same SQLite file
        try:
            await gateway.start()
            assert await spans(gateway, "bas-out") == shown
        finally:
            await gateway.stop()
            await meter.stop()
