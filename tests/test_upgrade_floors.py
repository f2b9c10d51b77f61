"""An upgrade from a release before 0.4.5 with a config it took: a period under one of the floors 0.4.5 added, or a
device name longer than 450 bytes. 0.4.5 refused them, in check-config and at start: the upgrade took the building's
gateway down, its demand-response points with it, until someone edited the file. Each now starts at the floor (the
name cut to fit) with one warning naming the key, the value given, the value used and why; a value no release took
(0, negative, not a number) is still refused. Real config files through the real `edge-gateway` CLI."""
from __future__ import annotations

import json
import os
import subprocess
import urllib.request

import pytest
from bacnet_api.simulator import MeterSimulator
from bacnet_peer import BacnetPeer
from cli_run import run_cli, run_cli_async
from gateway_process import START_S, GatewayProcess, write_config
from test_config_limits import FLOORS
from waiting import eventually

# as 0.4.4 took them: every floored period at 0.001 (a whole day count too), the device name 2 bytes over
OLD_RELEASE = """
[bacnet]
device_name = "{name}"
[meter]
poll_seconds = 0.001
[openadr]
retry_min_seconds = 0.001
retry_max_seconds = 0.001
[storage]
path = "{storage}"
retry_seconds = 0.001
[forecaster]
cycle_seconds = 0.001
retrain_minutes = 0.001
history_days = 0.001
"""

LONG_NAME = "Building 7 gateway " + "N" * 433     # 452 bytes: two over


def check_config(path, **env) -> subprocess.CompletedProcess:
    return run_cli(["check-config", str(path)], timeout=60, env={**os.environ, **env})


def floor_line(key: str, given: str, floor: float, unit: str) -> str:
    """How a warning of a value raised to its floor starts: the key, the value given and the value used."""
    return f"{key} {given} is under its floor of {floor:g} {unit}: {floor:g} is used ("


def test_check_config_takes_an_old_releases_periods_at_their_floors_with_one_warning_each(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text(OLD_RELEASE.format(name=LONG_NAME, storage=tmp_path / "gw.sqlite"), encoding="utf-8")
    out = check_config(path)
    assert out.returncode == 0, out
    assert out.stderr == "", out.stderr
    lines = out.stdout.splitlines()
    warned = [line.removeprefix(f"{path}: warning: ") for line in lines if line.startswith(f"{path}: warning: ")]
    for section, key, floor, why in FLOORS:
        said = [line for line in warned if line.startswith(f"{section}.{key} ")]
        unit = {"seconds": "s", "minutes": "min", "days": "days"}[key.rpartition("_")[2]]
        # the key, the value given, the value used and why, in one line
        assert len(said) == 1, (key, warned)
        assert said[0].startswith(floor_line(f"{section}.{key}", "0.001", floor, unit)), said
        assert f"{why}); set {floor:g} or more" in said[0], said
    named = [line for line in warned if line.startswith("bacnet.device_name ")]
    assert named == ["bacnet.device_name is 452 bytes in UTF-8, more than the 450 allowed (an I-Have naming it must "
                     "fit one 480-byte APDU, as a BAS behind an MS/TP router receives it): its first 450 characters "
                     "are used, 'Building 7 g' to 'NNNNNNNNNNNN'; shorten it"], warned
    assert lines[-1].startswith(f"{path}: ok ("), lines


@pytest.mark.parametrize("value, reason", [
    ("0", "Input should be greater than or equal to 0.1 (got 0): a meter read takes"),
    ("-1", "Input should be greater than or equal to 0.1 (got -1): a meter read takes"),
    ('"fast"', "Input should be a valid number (got str 'fast')"),
    ("true", "Input should be a valid number (got bool True)"),
    ("nan", "Input should be a finite number"),
])
def test_a_value_no_release_took_is_still_refused_naming_the_key(tmp_path, value, reason):
    path = tmp_path / "gw.toml"
    path.write_text(f"[meter]\npoll_seconds = {value}\n", encoding="utf-8")
    out = check_config(path)
    assert out.returncode == 78, out
    assert out.stderr.startswith(f"configuration error: {path}: meter.poll_seconds: {reason}"), out.stderr
    assert "warning" not in out.stdout, out.stdout


def test_a_period_under_its_floor_from_a_variable_names_the_variable(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text(f'[storage]\npath = "{tmp_path / "gw.sqlite"}"\n', encoding="utf-8")
    out = check_config(path, EDGE_GATEWAY__FORECASTER__CYCLE_SECONDS="0.01")
    assert out.returncode == 0, out
    assert (f"{path}: warning: forecaster.cycle_seconds (from EDGE_GATEWAY__FORECASTER__CYCLE_SECONDS) 0.01 is under "
            f"its floor of 0.05 s: 0.05 is used (") in out.stdout, out.stdout


async def test_run_starts_an_old_releases_config_at_the_floors(tmp_path, free_udp_port, free_tcp_port):
    # the upgrade must not take the BAS's points down: the device answers, under the name cut to fit, and the
    # start-up log and /api/status say what was used instead of what was given
    bacnet_port, http_port, config = free_udp_port(), free_tcp_port(), tmp_path / "gw.toml"
    write_config(config, bacnet_port=bacnet_port, http_port=http_port, storage=tmp_path / "gw.sqlite",
                 ven_name="floors-test", device_name=LONG_NAME, cycle_seconds=0.02, retry_min_seconds=0.01,
                 storage_retry_seconds=0.1)
    gateway = GatewayProcess(config, tmp_path / "gateway.log")
    with gateway:
        # fails at once if the process ends (0.4.5: exit 2, "configuration error")
        gateway.wait_for("BACnet device ", START_S)
        async with BacnetPeer(free_udp_port(), timeout=1.0) as peer:
            name = await eventually(lambda: peer.read(f"127.0.0.1:{bacnet_port}", "device 500001", "objectName"),
                                    START_S, "the device answers")
        assert name == LONG_NAME[:450]

        def status():
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/status", timeout=5) as r:
                return json.load(r)
        warnings = (await eventually(lambda: _or_none(status), START_S, "the API answers"))["config_warnings"]
    log = [line for line in gateway.log().splitlines() if " WARNING config: " in line]
    for key, given, floor, unit in [("forecaster.cycle_seconds", "0.02", 0.05, "s"),
                                    ("openadr.retry_min_seconds", "0.01", 0.05, "s"),
                                    ("storage.retry_seconds", "0.1", 0.2, "s")]:
        said = [line.partition(" WARNING config: ")[2] for line in log if f" config: {key} " in line]
        assert len(said) == 1 and said[0].startswith(floor_line(key, given, floor, unit)), (key, log)
        assert said[0] in warnings, warnings
    assert sum(" config: bacnet.device_name is 452 bytes" in line for line in log) == 1, log
    assert "Traceback" not in gateway.log()


def _or_none(call):
    try:
        return call()
    except OSError:
        return None


async def _cli(*args: str) -> tuple[int, list[str], list[str]]:
    """`edge-gateway ARGS`: (exit code, stdout lines, stderr lines)."""
    res = await run_cli_async(args, timeout=45, text=False)
    return res.returncode, res.stdout.decode().splitlines(), res.stderr.decode().splitlines()


@pytest.mark.timeout(120)
async def test_the_other_commands_say_a_raised_value_once_on_stderr(tmp_path, free_udp_port, free_tcp_port):
    # read-meter, health and points took meter.poll_seconds 0.01 at its floor unsaid, where check-config and run say
    # it: the installer checking the meter with read-meter never learnt the file's value was not the one used.
    # stderr: stdout is the command's result
    path = tmp_path / "gw.toml"
    async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=42.5) as sim:
        path.write_text(f'[meter]\naddress = "{sim.meter_address}"\nrouter = "{sim.router_address}"\n'
                        f'poll_seconds = 0.01\ntimeout_seconds = 2\n[http]\naddress = "127.0.0.1:{free_tcp_port()}"\n'
                        f'[storage]\npath = "{tmp_path / "gw.sqlite"}"\n', encoding="utf-8")
        read = await _cli("read-meter", "--config", str(path), "--bind", f"127.0.0.1/8:{free_udp_port()}")
    health = await _cli("health", "--config", str(path), "--timeout", "2")
    points = await _cli("points", "--config", str(path))
    warning = f"{path}: warning: " + floor_line("meter.poll_seconds", "0.01", 0.1, "s")
    for name, (code, out, err), ok in (("read-meter", read, 0), ("health", health, 1), ("points", points, 0)):
        assert code == ok, (name, out, err)
        assert len(err) == 1 and err[0].startswith(warning), (name, err)
        assert not any("warning" in line for line in out), (name, out)
    assert len(read[1]) == 1 and read[1][0].startswith(f"meter {sim.meter_address} analogInput 2 presentValue: 42.500 "
                                                       "kW"), read
    assert health[1][0].endswith("/healthz: no answer ([Errno 111] Connection refused): nothing listens there (the "
                                 "gateway not running, or running with another http.address?)"), health
    assert points[1][0].startswith("device 500001 ")
