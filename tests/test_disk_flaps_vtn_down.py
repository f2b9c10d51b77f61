"""An operator's hour on a small box: the VTN is away while the data disk fills and empties twice, then the gateway
restarts (an upgrade, say), then the VTN comes back. Every telemetry sample goes once, in order; each fault is said
once when it starts and once when it ends. Real tmpfs (root), real `edge-gateway run`, real openleadr VTN, meter
simulator on loopback."""
from __future__ import annotations

import asyncio
import signal

import pytest
from bacnet_peer import BacnetPeer
from gateway_process import START_S, GatewayProcess
from test_faults_storage import _reads, fill, storage_errors, tmpfs, write_storage_config
from waiting import eventually

from bacnet_api.simulator import MeterSimulator
from ven.vtn_server import DemoVtn


@pytest.mark.timeout(int(2 * START_S) + 120)   # two gateway process starts, then the test
async def test_a_disk_that_fills_twice_while_the_vtn_is_away_then_a_restart_loses_and_repeats_no_sample(
        tmp_path, free_udp_port, free_tcp_port):
    bacnet_port, meter_port, vtn_port = free_udp_port(), free_udp_port(), free_tcp_port()
    log_path, gw = tmp_path / "gateway.log", f"127.0.0.1:{bacnet_port}"
    vtns: list[DemoVtn] = []
    with tmpfs(tmp_path / "small", "size=8m") as disk:
        storage, config = disk / "gw.sqlite", tmp_path / "gw.toml"
        write_storage_config(config, bacnet_port, meter_port, vtn_port, free_tcp_port(), storage)
        gateway = GatewayProcess(config, log_path)
        async with MeterSimulator(address=f"127.0.0.1/8:{meter_port}", value=87.5) as meter, \
                BacnetPeer(free_udp_port(), timeout=1.0) as peer:
            try:
                vtns.append(DemoVtn(vtn_port, poll_seconds=1))
                await vtns[0].start()
                gateway.start()
                await eventually(lambda: "edge-gateway ready" in gateway.log(), START_S, "the gateway ready")
                await eventually(lambda: len(vtns[0].reports) >= 3, 30, "telemetry")
                await vtns[0].stop()
                for n, kw in ((1, 90.0), (2, 91.0)):
                    filler = fill(disk)
                    await eventually(lambda: len(storage_errors(gateway.log(), storage)) >= n, 15, f"fill {n} said")
                    meter.set_value(kw)
                    await eventually(lambda: _reads(peer, gw, kw), 10, f"meter-power {kw} served")
                    await asyncio.sleep(2.0)    # a whole 1 s report interval of it, read while the disk is full
                    filler.unlink()
                    await eventually(lambda: gateway.log().count("takes writes again") >= n, 30, f"recovery {n}")
                meter.set_value(92.0)
                await eventually(lambda: _reads(peer, gw, 92.0), 10, "meter-power 92 served")
                await asyncio.sleep(2.0)    # a whole 1 s report interval of it before the stop
                gateway.proc.send_signal(signal.SIGTERM)      # the restart, the VTN still away
                assert gateway.proc.wait(timeout=30) == 0, gateway.log()[-3000:]
                meter.set_value(93.0)
                gateway.start()
                await eventually(lambda: gateway.log().count("edge-gateway ready") == 2, START_S, "the restart")
                await eventually(lambda: _reads(peer, gw, 93.0), 10, "meter-power 93 served")
                vtns.append(DemoVtn(vtn_port, poll_seconds=1))
                await vtns[1].start()
                await eventually(lambda: any(v == 93.0 for *_, v in vtns[1].reports), 60, "the backlog delivered")
            finally:
                assert gateway.stop() == 0, gateway.log()[-3000:]
                for vtn in vtns:
                    await vtn.stop()
    text = log_path.read_text()
    assert "Traceback" not in text, text[-3000:]
    got = [(ts, kw) for vtn in vtns for *_, ts, kw in vtn.reports]
    stamps = [ts for ts, _ in got]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps), "in order, each once"
    assert {90.0, 91.0, 92.0, 93.0} <= {kw for _, kw in got}, "the readings of both fills and the restart"
    stopped = [b for a, b in zip(stamps, stamps[1:]) if (b - a).total_seconds() >= 1.5]
    assert len(stopped) <= 1, f"a sample went missing outside the restart: {stopped}"
    # one line per thing that happened: each line but DEBUG's once, the storage fault's start once a fill (its end
    # says how long and what memory held, another line each time)
    faults = storage_errors(text, storage)
    for run in text.split(" starting: ")[1:]:     # each run's lines
        said = [line.split(" ", 1)[1] for line in run.splitlines()[1:] if line[:4].isdigit() and " DEBUG " not in line
                and line not in faults]
        assert not {line for line in said if said.count(line) > 1}, said
    assert len(faults) == 2 and all("No space left on device" in f for f in faults), faults
    assert text.count("takes writes again") == 2, text[-3000:]
