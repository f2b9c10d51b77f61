"""A BAS writing while the gateway stops (a SIGTERM for an upgrade, a reboot): from the signal until the device's
socket closes, the VEN, the meter, the forecaster and the schedule stop one after another while the device still
answers. What it acknowledges then is kept and comes back at the next start, told to the VTN. Real gateway, real
BACnet client stack, the routed meter simulator, an openleadr VTN, a real SQLite file."""
from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timedelta, timezone

import pytest
from bacnet_peer import BacnetPeer
from test_gateway import fast_config
from waiting import eventually

from bacnet_api import points as P
from bacnet_api.simulator import MeterSimulator
from ven.app import SHED_COMMANDS, Gateway
from ven.storage import Storage
from ven.vtn_server import DemoVtn

pytestmark = pytest.mark.timeout(120)
SHED = P.BY_NAME[P.SHED_POWER].object_id
OPT_OUT = P.BY_NAME[P.OPT_OUT].object_id


def held_in_its_stop(part) -> tuple[asyncio.Event, asyncio.Event]:
    """`part`'s stop waits for the second event once it is reached (the first): the window a stop on a loaded box,
    or a slow disk, leaves open for as long as it lasts, held open for the test. What stops before it has stopped."""
    reached, release = asyncio.Event(), asyncio.Event()
    stop = part.stop

    async def held() -> None:
        reached.set()
        await release.wait()
        await stop()
    part.stop = held
    return reached, release


async def test_what_a_bas_writes_while_the_gateway_stops_comes_back_at_the_next_start(
        tmp_path, free_udp_port, free_tcp_port, caplog):
    caplog.set_level(logging.INFO)
    ports = dict(bacnet_port=free_udp_port(), meter_port=free_udp_port(), vtn_port=free_tcp_port(),
                 http_port=free_tcp_port())
    config = fast_config(tmp_path, **ports)
    gw = f"127.0.0.1:{ports['bacnet_port']}"
    async with DemoVtn(port=ports["vtn_port"], poll_seconds=1.0) as vtn, \
            MeterSimulator(address=f"127.0.0.1/8:{ports['meter_port']}", value=87.5), \
            BacnetPeer(free_udp_port()) as bas:
        gateway = Gateway(config)
        await gateway.start()
        stopping = None
        try:
            await eventually(lambda: vtn.vens, 20, "registration")
            start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(minutes=10)
            vtn.add_event([2], start=start, interval_seconds=600, event_id="later")
            await eventually(lambda: vtn.opts_for("later") == ["optIn"], 20, "the event answered")
            # a shed begun (kept at once), then its kW changed: a changed kW is kept within SHED_SAVE_S, and at the stop
            assert await bas.write(gw, SHED, "presentValue", 40.0, priority=9) is None
            reached, release = held_in_its_stop(gateway.schedule)
            stopping = asyncio.create_task(gateway.stop())
            await asyncio.wait_for(reached.wait(), 20)
            # the VEN, the meter and the forecaster have stopped; the device answers
            assert await bas.read(gw, P.BY_NAME[P.VTN_CONNECTED].object_id, "presentValue") == "inactive"
            assert await bas.write(gw, SHED, "presentValue", 45.0, priority=9) is None
            assert await bas.write(gw, OPT_OUT, "presentValue", "active", priority=8) is None
        finally:
            if stopping is None:
                await gateway.stop()
            else:
                release.set()
                await asyncio.wait_for(stopping, 30)
        # acknowledged, so kept: before, the changed kW waited for a timer the stopped loop never ran
        storage = Storage(config.storage.path)
        try:
            assert json.loads(storage.load_value(SHED_COMMANDS)) == {"9": 45.0}
        finally:
            storage.close()

        gateway = Gateway(config)
        await gateway.start()
        try:
            assert await bas.read(gw, SHED, "priorityArray") == [None] * 8 + [45.0] + [None] * 7
            assert await bas.read(gw, OPT_OUT, "priorityArray") == [None] * 7 + [1] + [None] * 8
            assert gateway.forecast.status()["shed_kw"] == 45.0
            # the VTN, stopped when the BAS wrote, hears the opt-out from this start
            await eventually(lambda: vtn.opts_for("later")[-1:] == ["optOut"], 20, "optOut told to the VTN")
        finally:
            await gateway.stop()
    said = [r.getMessage() for r in caplog.records if r.name.startswith("ven")]
    # the log said the opt-out, and before, never whether the utility heard it
    told = "the optOut for event later not told the VTN before the stop: not kept; the next start answers the events"
    stopped = said.index("edge-gateway stopped")
    assert said[stopped - 1].startswith(told), said
    assert sum(line.startswith(told) for line in said) == 1, said
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
