"""SIGKILL during an active event, restart with the VTN down: the level is back within 1 s of the
device answering, from SQLite alone. Runs the real `edge-gateway run` process."""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import pytest
from bacnet_peer import BacnetPeer, answered
from gateway_process import START_S, GatewayProcess, write_config
from waiting import eventually

from bacnet_api import points as P
from bacnet_api.simulator import MeterSimulator
from ven.vtn_server import DemoVtn

pytestmark = pytest.mark.timeout(180)


async def read_level(peer, gw):
    return await peer.read(gw, P.BY_NAME[P.EVENT_LEVEL].object_id, "presentValue")


@pytest.mark.timeout(int(2 * START_S) + 60)    # two gateway process starts, each given START_S
async def test_sigkill_during_event_restores_level_without_vtn(tmp_path, free_udp_port, free_tcp_port):
    bacnet_port, vtn_port = free_udp_port(), free_tcp_port()
    config = tmp_path / "gw.toml"
    # the meter is an address where nobody answers: it is not what this test is about
    write_config(config, bacnet_port=bacnet_port, vtn_port=vtn_port, http_port=free_tcp_port(),
                 storage=tmp_path / "gw.sqlite", ven_name="restart-test")
    gw = f"127.0.0.1:{bacnet_port}"
    log_path = tmp_path / "gateway.log"
    gateway = GatewayProcess(config, log_path)
    try:
        async with BacnetPeer(free_udp_port(), timeout=1.0) as peer:
            async with DemoVtn(port=vtn_port, poll_seconds=1.0) as vtn:
                gateway.start()
                deadline = time.monotonic() + START_S
                while not vtn.vens and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                assert vtn.vens, log_path.read_text()
                start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=3)
                vtn.add_event([2, 3], start=start, interval_seconds=30, event_id="restart-evt")
                deadline = time.monotonic() + 15
                while await read_level(peer, gw) != 2.0:
                    assert time.monotonic() < deadline, log_path.read_text()
                    await asyncio.sleep(0.2)
                gateway.kill()
            # the VTN is gone now; the gateway comes back
            gateway.start()
            answered_at = None
            deadline = time.monotonic() + START_S
            while True:
                assert time.monotonic() < deadline, log_path.read_text()
                level = await read_level(peer, gw)
                if isinstance(level, float):
                    answered_at = answered_at or time.monotonic()
                    if level == 2.0:
                        break
                    assert time.monotonic() - answered_at < 1.0, f"level {level} 1 s after the device answered"
                await asyncio.sleep(0.05)
            assert await peer.read(gw, P.BY_NAME[P.EVENT_ACTIVE].object_id, "presentValue") in (1, "active")
    finally:
        gateway.stop()
    text = log_path.read_text()
    assert "Traceback" not in text, text


@pytest.mark.timeout(int(2 * START_S) + 60)    # two gateway process starts, each given START_S
async def test_opt_out_command_survives_sigkill_and_new_events_are_refused(tmp_path, free_udp_port, free_tcp_port):
    # A BAS commands ADR-Opt-Out once and believes it holds priority 8; a restart must not drop it.
    bacnet_port, vtn_port = free_udp_port(), free_tcp_port()
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=bacnet_port, vtn_port=vtn_port, http_port=free_tcp_port(),
                 storage=tmp_path / "gw.sqlite", ven_name="opt-out-restart")
    gw, opt_out = f"127.0.0.1:{bacnet_port}", P.BY_NAME[P.OPT_OUT].object_id
    log_path = tmp_path / "gateway.log"
    gateway = GatewayProcess(config, log_path)
    try:
        async with BacnetPeer(free_udp_port(), timeout=1.0) as peer, DemoVtn(port=vtn_port, poll_seconds=1.0) as vtn:
            gateway.start()
            await eventually(lambda: vtn.vens, START_S, "registration")
            # sent again while unanswered within the peer's 1 s, as a BAS does (answered): a gateway just started
            # beside a loaded run missed a single request so (test_faults_storage)
            assert await answered(lambda: peer.write(gw, opt_out, "presentValue", "active", priority=8)) is None
            gateway.kill()
            gateway.start()

            async def commanded():
                return (await peer.read(gw, opt_out, "priorityArray")) == [None] * 7 + [1] + [None] * 8
            await eventually(commanded, START_S, "the priority-8 command back after the restart")
            assert await answered(lambda: peer.read(gw, opt_out, "presentValue")) == "active"
            start = datetime.now(timezone.utc) + timedelta(minutes=5)
            later = vtn.add_event([1], start=start, interval_seconds=60, event_id="after-restart")
            await eventually(lambda: vtn.opts_for(later) == ["optOut"], 15, "a new event answered optOut")

            assert await answered(lambda: peer.relinquish(gw, opt_out, priority=8)) is None
            await eventually(lambda: vtn.opts_for(later)[-1:] == ["optIn"], 15, "opted back in once relinquished")
    finally:
        gateway.stop()
    text = log_path.read_text()
    assert "ADR-Opt-Out commands restored from before the restart: active at priority 8 -> active" in text
    assert "Traceback" not in text, text


@pytest.mark.timeout(360)    # four gateway process starts one after another, each given START_S
async def test_a_renamed_device_counts_a_new_database_revision(tmp_path, free_udp_port, free_tcp_port):
    # A BAS that cached the device's objects reads databaseRevision to know whether to read them again:
    # it must go up when an object is renamed, created or deleted (clause 12.11.35), here between two runs
    # (a new bacnet.device_name, device_id or a release with other points), and stand otherwise.
    bacnet_port, config, storage = free_udp_port(), tmp_path / "gw.toml", tmp_path / "gw.sqlite"
    gw, device = f"127.0.0.1:{bacnet_port}", "device 500001"
    gateway = GatewayProcess(config, tmp_path / "gateway.log")

    async def run_once(peer, device_name=None):
        write_config(config, bacnet_port=bacnet_port, http_port=free_tcp_port(), storage=storage,
                     ven_name="revision-test", device_name=device_name)
        gateway.start()
        try:
            # its first answer, as a BAS polling across the restart reads it: the device answers no one before the
            # start has counted the revision (before, the stack's own 1 was read in the second its socket was open)
            revision = await eventually(lambda: peer.read(gw, device, "databaseRevision"), START_S,
                                        "the device answers")
            return revision, await peer.read(gw, device, "objectName")
        finally:
            assert gateway.stop() == 0, gateway.log()[-3000:]

    async with BacnetPeer(free_udp_port(), timeout=1.0) as peer:
        first, name = await run_once(peer)
        assert isinstance(first, int) and name == "EdgeGateway"
        assert await run_once(peer) == (first, "EdgeGateway")              # the same objects: it stands
        renamed = await run_once(peer, device_name="Bldg-7-Gateway")
        assert renamed == (first + 1, "Bldg-7-Gateway")                    # a renamed object: one more
        assert await run_once(peer, device_name="Bldg-7-Gateway") == renamed
    assert gateway.log().count("BACnet objects differ from the last run") == 1, gateway.log()[-3000:]
    # which name is the new one (a sorted list of both left the reader to guess)
    assert (f"BACnet objects differ from the last run (new {device} Bldg-7-Gateway; gone {device} EdgeGateway): "
            f"databaseRevision {first + 1}") in gateway.log(), gateway.log()[-3000:]
    assert "Traceback" not in gateway.log()


@pytest.mark.timeout(360)    # eight gateway process starts one after another: 135 s in a loaded run of the suite
async def test_another_meter_than_the_last_run_is_said_once(tmp_path, free_udp_port, free_tcp_port):
    # A technician corrects meter.address to the building's main meter (or sets meter.units to watts): the
    # forecaster's stored history, thresholds and model were learned from the old readings, and nothing told them.
    # A mistyped address put right at the next start is no other meter: it read nothing, and was said to be.
    import sqlite3

    from forecaster.series import minute_of
    from forecaster.store import ForecastStore

    config, storage, log_path = tmp_path / "gw.toml", tmp_path / "gw.sqlite", tmp_path / "gateway.log"
    last = minute_of(time.time()) - 1
    ForecastStore(str(storage)).save_minutes(list(range(last - 120, last + 1)), [50.0] * 121, [1] * 121)
    gateway = GatewayProcess(config, log_path)
    said = "meter changed since the last run"

    def meter_read() -> str | None:
        with sqlite3.connect(storage) as db:
            row = db.execute("SELECT value FROM kv WHERE key = 'meter_read'").fetchone()
        db.close()
        return row and row[0]

    async def run_once(router_port, mac, answers=True):
        write_config(config, bacnet_port=free_udp_port(), http_port=free_tcp_port(), storage=storage,
                     ven_name="meter-test", meter_port=router_port)
        config.write_text(config.read_text().replace("[meter]\n", f'[meter]\naddress = "12345:{mac}"\n'))
        runs = gateway.log().count("edge-gateway ready") if log_path.exists() else 0
        gateway.start()
        try:
            await eventually(lambda: gateway.log().count("edge-gateway ready") > runs, START_S, "the gateway ready")
            if answers:     # the meter kept as the one the history comes from
                await eventually(lambda: meter_read() == f"12345:{mac} analogInput 2 presentValue", 15, "a reading")
        finally:
            assert gateway.stop() == 0, gateway.log()[-3000:]
        return gateway.log().count(said)

    async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=50.0) as one, \
            MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=80.0, mac=3) as other:
        port_one, port_other = (int(sim.router_address.rpartition(":")[2]) for sim in (one, other))
        assert await run_once(port_one, 2) == 0             # the first run: nothing to compare with
        assert await run_once(port_one, 2) == 0             # the same meter
        assert await run_once(port_one, 3, answers=False) == 1    # a typo: said, as the file says another meter
        assert meter_read() == "12345:2 analogInput 2 presentValue"
        assert await run_once(port_one, 2) == 1             # put right: the history's meter, nothing said
        assert await run_once(port_other, 3) == 2           # another one that reads: said once
        assert await run_once(port_other, 3) == 2
        line = [ln for ln in gateway.log().splitlines() if said in ln][-1]
        assert ("WARNING meter changed since the last run (was 12345:2 analogInput 2 presentValue, now 12345:3 "
                "analogInput 2 presentValue): the forecaster goes on from its ") in line, line
        # what the line tells the technician to run, with the gateway stopped: the next start learns afresh
        from ven.cli import main
        assert main(["forget-forecast", "--config", str(config), "--yes"]) == 0
        before = len(gateway.log())
        await run_once(port_other, 3)
        assert "forecaster resumed 0 minutes of stored history" in gateway.log()[before:]
    assert "Traceback" not in gateway.log()
