"""A BAS across a restart of the gateway (a SIGTERM for an upgrade or a reboot, then a start on the same storage.path):
its commands come back as it left them, and what it wrote while the gateway stopped is kept. Real gateway, real
BACnet client stack, the routed meter simulator, an openleadr VTN, a real SQLite file."""
from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest
from bacnet_peer import BacnetPeer
from gateway_process import START_S, GatewayProcess, write_config
from test_gateway import fast_config
from waiting import eventually

from bacnet_api import points as P
from bacnet_api.simulator import MeterSimulator
from ven.app import INPUT_COMMANDS, SHED_COMMANDS, Gateway
from ven.storage import Storage
from ven.vtn_server import DemoVtn

pytestmark = pytest.mark.timeout(120)
SHED = P.BY_NAME[P.SHED_POWER].object_id
OPT_OUT = P.BY_NAME[P.OPT_OUT].object_id
INPUT = P.BY_NAME[P.INPUT_POWER].object_id
COMMANDS = [(SHED, ["priorityArray", "presentValue"]), (OPT_OUT, ["priorityArray", "presentValue"]),
            (INPUT, ["priorityArray", "presentValue"])]
EVENT = [(P.BY_NAME[name].object_id, ["presentValue", "statusFlags"])
         for name in (P.EVENT_LEVEL, P.EVENT_ACTIVE, P.EVENT_START_MINUTES)]


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
            # kept, and taken without a fault from the stopped forecaster, which learns nothing from it
            assert await bas.write(gw, INPUT, "presentValue", 100.0, priority=16) is None
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
            assert await bas.read(gw, INPUT, "priorityArray") == [None] * 15 + [100.0]
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
    # the BAS's kW came after the forecaster had stopped: it learns nothing from it, and said it did
    assert not [line for line in said[:stopped] if line.startswith("forecaster now learns from")], said
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.timeout(300)    # two gateway process starts, each given START_S
async def test_a_restart_is_invisible_to_the_commands_of_a_bas_polling_across_it(tmp_path, free_udp_port,
                                                                                 free_tcp_port):
    # The technician's program holds ADR-Opt-Out, bas-shed-power and its kW in input-power-meter at two priorities each
    # (a restart emptied input-power-meter's before 0.4.10); the BAS polls every few hundred ms while the gateway is
    # upgraded. Every answer it gets, before, during the stop and after the start, shows its commands as it left them
    # and the event as it runs.
    bacnet_port, vtn_port, meter_port = free_udp_port(), free_tcp_port(), free_udp_port()
    config, log_path = tmp_path / "gw.toml", tmp_path / "gateway.log"
    # a meter given long to answer: a read timing out on a loaded box is a WARNING, not what this test is about
    write_config(config, bacnet_port=bacnet_port, vtn_port=vtn_port, http_port=free_tcp_port(), meter_port=meter_port,
                 storage=tmp_path / "gw.sqlite", ven_name="restart-bas", meter_timeout_seconds=5)
    gw = f"127.0.0.1:{bacnet_port}"
    gateway = GatewayProcess(config, log_path)
    async with DemoVtn(port=vtn_port, poll_seconds=1.0) as vtn, \
            MeterSimulator(address=f"127.0.0.1/8:{meter_port}", value=87.5), BacnetPeer(free_udp_port()) as bas:
        try:
            gateway.start()
            await eventually(lambda: "edge-gateway ready" in gateway.log(), START_S, "the gateway ready")
            await eventually(lambda: vtn.vens, 30, "registration")
            start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=3)
            vtn.add_event([2], start=start, interval_seconds=900, event_id="shed")
            # opted in (12 decides over 14), shedding 40 kW (9 over 14)
            for obj, value, priority in ((OPT_OUT, "inactive", 12), (OPT_OUT, "active", 14), (SHED, 40.0, 9),
                                         (SHED, 10.0, 14), (INPUT, 100.0, 10), (INPUT, 90.0, 16)):
                assert await bas.write(gw, obj, "presentValue", value, priority=priority) is None, (obj, priority)

            async def event_running():
                rows = await bas.read_multiple(gw, EVENT)
                return hasattr(rows, "items") and rows[(EVENT[0][0], "presentValue")] == 2.0 and rows
            event = await eventually(event_running, 30, "the event running, level 2")
            commands = await bas.read_multiple(gw, COMMANDS)
            assert commands[(SHED, "priorityArray")] == [None] * 8 + [40.0] + [None] * 4 + [10.0] + [None] * 2
            assert commands[(OPT_OUT, "priorityArray")] == [None] * 11 + [0, None, 1] + [None] * 2
            assert (commands[(SHED, "presentValue")], commands[(OPT_OUT, "presentValue")]) == (40.0, "inactive")
            assert commands[(INPUT, "priorityArray")] == [None] * 9 + [100.0] + [None] * 5 + [90.0]

            answers, stop = [], asyncio.Event()

            async def poll() -> None:   # as a BAS's scan does, whatever the gateway is doing
                while not stop.is_set():
                    rows = await bas.read_multiple(gw, COMMANDS + EVENT)
                    if hasattr(rows, "items"):
                        answers.append(rows)
                    await asyncio.sleep(0.2)
            polling = asyncio.create_task(poll())
            await eventually(lambda: answers, 10, "the BAS's scan answered")
            gateway.proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(gateway.proc.wait, 30) == 0
            stopped_at = len(answers)
            starts = gateway.log().count(STARTING)
            gateway.start()
            await eventually(lambda: ready_after(gateway, starts), START_S, "the gateway ready again")
            await eventually(lambda: len(answers) > stopped_at + 5, 30, "the BAS's scan answered again")
            stop.set()
            await polling
            for rows in answers:
                assert {key: rows[key] for key in commands} == dict(commands.items()), rows
                assert {key: rows[key] for key in event} == dict(event.items()), rows
            await eventually(lambda: vtn.opts_for("shed")[-1:] == ["optIn"], 20, "answered again at the start")
        finally:
            gateway.stop()
    log = gateway.log()
    assert log.count("edge-gateway stopped") == 2 and log.count("SIGTERM: stopping") == 2, log
    assert "ADR-Opt-Out commands restored from before the restart: inactive at priority 12, active at priority 14 -> " \
           "inactive" in log, log
    assert not re.search(r"WARNING|ERROR|Traceback", log), log


STARTING = "starting: device"


def ready_after(gateway: GatewayProcess, starts: int) -> bool:
    """The start after the log's first `starts` said it is ready. Not only the ready line after the log's last start:
    until the new process writes its own start line, that is the run before's, ready long ago, and under load a test
    went on at once, read the device as it came up and found the new run's API not yet listening."""
    log = gateway.log()
    return log.count(STARTING) > starts and "edge-gateway ready" in log.rpartition(STARTING)[2]


async def api(http_port: int, path: str) -> str:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{http_port}{path}", timeout=aiohttp.ClientTimeout(total=5)) as resp:
        return await resp.text()


@pytest.mark.timeout(int(3 * START_S) + 120)    # three gateway process starts
async def test_a_bas_finds_its_input_power_commands_after_a_restart_and_a_crash_not_taken_as_readings(
        tmp_path, free_udp_port, free_tcp_port):
    # The BAS writes the building's kW at priority 10, with a fallback at 16; a BAS writing on change of value may not
    # write again for minutes. Before 0.4.10 a restart emptied input-power-meter's priority array: the BAS read 0 kW
    # (the relinquish default) in the point it commands, its acknowledged command gone, while its other commands on the
    # device came back.
    bacnet_port, vtn_port, meter_port, http_port = free_udp_port(), free_tcp_port(), free_udp_port(), free_tcp_port()
    config, log_path = tmp_path / "gw.toml", tmp_path / "gateway.log"
    write_config(config, bacnet_port=bacnet_port, vtn_port=vtn_port, http_port=http_port, meter_port=meter_port,
                 storage=tmp_path / "gw.sqlite", ven_name="restart-input", meter_timeout_seconds=5)
    gw = f"127.0.0.1:{bacnet_port}"
    gateway = GatewayProcess(config, log_path)

    async def started() -> None:
        starts = gateway.log().count(STARTING) if log_path.exists() else 0
        gateway.start()
        await eventually(lambda: ready_after(gateway, starts), START_S, "the gateway ready")

    async with DemoVtn(port=vtn_port, poll_seconds=1.0), \
            MeterSimulator(address=f"127.0.0.1/8:{meter_port}", value=87.5), BacnetPeer(free_udp_port()) as bas:
        try:
            await started()
            for value, priority in ((100.0, 10), (90.0, 16), (120.0, 10)):  # the last a kW changed: kept at the stop
                assert await bas.write(gw, INPUT, "presentValue", value, priority=priority) is None, priority
            gateway.proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(gateway.proc.wait, 30) == 0

            await started()
            assert await bas.read(gw, INPUT, "priorityArray") == [None] * 9 + [120.0] + [None] * 5 + [90.0]
            assert await bas.read(gw, INPUT, "presentValue") == 120.0
            # the BAS's command, not a reading: the forecaster waits for its next write, the meter standing in
            forecaster = json.loads(await api(http_port, "/api/status"))["forecaster"]
            assert forecaster["last_input_at"] is None and forecaster["active_source"] != "bacnet_input", forecaster

            # a relinquish is on the disk before its SimpleACK: a crash after it does not bring the command back; a kW
            # changed at the priorities held is kept within INPUT_SAVE_S, so the crash loses the 95
            assert await bas.relinquish(gw, INPUT, priority=10) is None
            assert await bas.write(gw, INPUT, "presentValue", 95.0, priority=16) is None
            await asyncio.to_thread(gateway.kill)

            await started()
            assert await bas.read(gw, INPUT, "priorityArray") == [None] * 15 + [90.0]
        finally:
            gateway.stop()
    log = gateway.log()
    assert "input-power-meter commands restored from before the restart: 120 at priority 10, 90 at priority 16 -> " \
           "120 (the BAS's command, not a reading: the forecaster learns from its next write)" in log, log
    assert "input-power-meter commands restored from before the restart: 90 at priority 16 -> 90 " in log, log
    # the one warning is the kill's, said at the start after it
    said = [line for line in log.splitlines() if re.search(r"WARNING|ERROR|Traceback", line)]
    assert len(said) == 1 and "ended without a stop" in said[0], log


async def test_a_stored_input_power_command_the_bounds_now_refuse_is_not_restored(tmp_path, free_udp_port,
                                                                                  free_tcp_port, caplog):
    # bacnet.input_max_kw lowered to catch a BAS writing W: its stored 200,000 is no command the point can hold, and
    # restored at the bound it would read 100,000 kW at the BAS's priority, a value nobody wrote
    caplog.set_level(logging.INFO, logger="ven.device_restore")
    config = fast_config(tmp_path, bacnet_port=free_udp_port(), meter_port=free_udp_port(), vtn_port=free_tcp_port(),
                         http_port=free_tcp_port())
    storage = Storage(config.storage.path)
    try:
        storage.save_value(INPUT_COMMANDS, json.dumps({"9": 2e5, "16": 90.0}))
    finally:
        storage.close()
    gateway = Gateway(config)
    await gateway.start()
    try:
        async with BacnetPeer(free_udp_port()) as bas:
            assert await bas.read(config.bacnet.address.replace("/8", ""), INPUT, "priorityArray") == \
                [None] * 15 + [90.0]
        assert json.loads(gateway.storage.load_value(INPUT_COMMANDS)) == {"16": 90.0}
    finally:
        await gateway.stop()
    said = [r.getMessage() for r in caplog.records if "input-power-meter commands" in r.getMessage()]
    assert said[0] == ("stored input-power-meter commands outside -100000..100000 kW (bacnet.input_min_kw.."
                       "input_max_kw, or the point's lowest, changed since?): 200000 at priority 9, not restored"), said
    assert said[1].startswith("input-power-meter commands restored from before the restart: 90 at priority 16 -> 90 ")
