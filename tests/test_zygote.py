"""tests/zygote.py: a gateway forked from the worker's zygote starts as an exec'd one would, reports its exit as
Popen does, and ends with the worker that started it."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zygote
from gateway_process import START_S, GatewayProcess, write_config

pytestmark = pytest.mark.timeout(int(START_S) + 60)

WORKER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from gateway_process import GatewayProcess
gateway = GatewayProcess(Path(sys.argv[2]), Path(sys.argv[3]))
gateway.start()
zygote = gateway.proc._zygote
print(type(gateway.proc).__name__, gateway.proc.pid, zygote.proc.pid, zygote.home, flush=True)
sys.stdin.read()
"""


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _config(tmp_path, free_udp_port, free_tcp_port) -> Path:
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=free_udp_port(), http_port=free_tcp_port(), storage=tmp_path / "gw.sqlite",
                 ven_name="zygote")
    return config


def test_a_forked_gateway_takes_the_tests_environment_and_cwd_and_reports_a_signal(
        tmp_path, free_udp_port, free_tcp_port, monkeypatch):
    config = _config(tmp_path, free_udp_port, free_tcp_port)
    monkeypatch.setenv("EDGE_GATEWAY__BACNET__DEVICE_ID", "4242")   # set after the zygote's start: read at run
    monkeypatch.chdir(tmp_path)
    gateway = GatewayProcess(config, tmp_path / "gw.log")
    gateway.start()
    try:
        assert isinstance(gateway.proc, zygote.ForkedProcess)
        gateway.wait_for("edge-gateway ready", START_S)
        assert os.readlink(f"/proc/{gateway.proc.pid}/cwd") == str(tmp_path)
        with pytest.raises(subprocess.TimeoutExpired):
            gateway.proc.wait(timeout=0.2)
    finally:
        gateway.kill()
    assert gateway.proc.returncode == -signal.SIGKILL
    log = gateway.log()
    assert "starting: device 4242 on" in log, log
    assert "Warning" not in log and "Traceback" not in log, log     # e.g. runpy's, for a module imported twice


def test_a_start_whose_import_time_environment_differs_is_execd(
        tmp_path, free_udp_port, free_tcp_port, monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")     # read as numpy loads: the zygote's numpy has 1
    with GatewayProcess(_config(tmp_path, free_udp_port, free_tcp_port), tmp_path / "gw.log") as gateway:
        assert isinstance(gateway.proc, subprocess.Popen)


def test_a_forked_gateway_stops_when_its_worker_dies(tmp_path, free_udp_port, free_tcp_port):
    # as the exec'd one's PR_SET_PDEATHSIG: a worker killed by a timeout left its gateway holding ports and storage
    config, log = _config(tmp_path, free_udp_port, free_tcp_port), tmp_path / "gw.log"
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(Path(__file__).parent), str(config), str(log)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        kind, gateway, server, home = worker.stdout.readline().split()
        assert kind == "ForkedProcess"
        deadline = time.monotonic() + START_S
        while "edge-gateway ready" not in log.read_text():
            assert time.monotonic() < deadline and not _gone(int(gateway)), log.read_text()
            time.sleep(0.1)
    finally:
        worker.kill()
        worker.wait(timeout=10)
    deadline = time.monotonic() + 30
    while not (_gone(int(gateway)) and _gone(int(server))):
        assert time.monotonic() < deadline, f"still running 30 s after its worker died\n{log.read_text()}"
        time.sleep(0.1)
    assert "SIGTERM: stopping" in log.read_text()
    shutil.rmtree(home)     # the zygote's, which its killed worker left
