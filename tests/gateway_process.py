"""The gateway as a real `python -m ven.cli run` process in tests: its TOML config and its lifecycle; and a
crash (SIGKILL) of a child Python at a point it names."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

import zygote


# A gateway process's start, to its first reading and its API: 7-10 s beside the suite on 2 cores (-n 5 or 6), but at
# twice that load its imports alone took 14 s and the start over 30 s. The bound for waits on it: what is asked is
# that it comes up, not how fast (bench/ measures that)
START_S = 90.0


def write_config(path, *, bacnet_port, http_port, storage, ven_name, vtn_port=9, meter_port=None,
                 device_id=None, device_name=None, cycle_seconds=1, retry_min_seconds=None, retry_max_seconds=1,
                 telemetry_seconds=None, storage_retry_seconds=None, log_level=None,
                 bacnet_ip="127.0.0.1/8", http_ip="127.0.0.1", http_token=None, meter_host="127.0.0.1",
                 vtn_host="127.0.0.1", vtn_settle_seconds=0, meter_timeout_seconds=0.5, storage_settle_seconds=0):
    """A config on loopback. Without meter_port the meter is an address where nobody answers, and
    the default vtn_port 9 has nobody listening: for tests that are about something else.
    bacnet_ip ("ip/prefix"), http_ip, meter_host and vtn_host put the device, the API, the meter's router and
    the VTN on other addresses (tests/netns.py). vtn_settle_seconds 0: a VTN fault's end is logged at its first
    answer (None: the default, as on a site); storage_settle_seconds likewise for storage.path's fault.
    meter_timeout_seconds: short, so a silent meter is found fast; a test that must see no meter fault while the
    machine is loaded gives it longer."""
    meter = (f'router = "{meter_host}:{meter_port}"\npoll_seconds = 0.5' if meter_port is not None
             else 'address = "127.0.0.1:9"\npoll_seconds = 1')
    path.write_text(f"""
{f'log_level = "{log_level}"' if log_level else ""}
[bacnet]
address = "{bacnet_ip}:{bacnet_port}"
{f"device_id = {device_id}" if device_id is not None else ""}
{f'device_name = "{device_name}"' if device_name is not None else ""}
[meter]
{meter}
timeout_seconds = {meter_timeout_seconds}
settle_seconds = 1
[openadr]
vtn_url = "http://{vtn_host}:{vtn_port}/OpenADR2/Simple/2.0b"
ven_name = "{ven_name}"
{f"retry_min_seconds = {retry_min_seconds}" if retry_min_seconds is not None else ""}
retry_max_seconds = {retry_max_seconds}
{f"settle_seconds = {vtn_settle_seconds}" if vtn_settle_seconds is not None else ""}
{f"telemetry_seconds = {telemetry_seconds}" if telemetry_seconds is not None else ""}
[storage]
path = "{storage}"
{f"retry_seconds = {storage_retry_seconds}" if storage_retry_seconds is not None else ""}
{f"settle_seconds = {storage_settle_seconds}" if storage_settle_seconds is not None else ""}
[http]
address = "{http_ip}:{http_port}"
{f'token = "{http_token}"' if http_token else ""}
[forecaster]
cycle_seconds = {cycle_seconds}
""")


def waiting_for_its_address(tmp_path, ip: str, ven_name: str, http_port: int) -> "GatewayProcess":
    """A gateway (not started) whose bacnet.address is `ip` (tests/netns.py absent_address), on port 47808: it waits
    for the address, sending nothing meanwhile."""
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=47808, http_port=http_port, storage=tmp_path / "gw.sqlite", ven_name=ven_name,
                 bacnet_ip=f"{ip}/24")
    return GatewayProcess(config, tmp_path / "gateway.log")


def _ends_with(parent: int):
    """The child is sent SIGTERM when the test worker that started it dies: a worker killed by a timeout left its
    gateway running for an hour, holding its ports and storage file, with the rest of the run beside it."""
    def arm() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:      # the worker died before the prctl
            os.kill(os.getpid(), signal.SIGTERM)
    return arm


PR_SET_PDEATHSIG = 1


def start_cli(args, log_path, prefix=(), fork=True) -> "subprocess.Popen | zygote.ForkedProcess":
    """`python -m ven.cli ARGS`, both outputs appended to log_path, ending with the worker: forked from its zygote
    where that is what an exec would give (see GatewayProcess), else exec'd."""
    if fork and not prefix:
        with open(log_path, "ab"):     # created by the test, as the exec path's open does
            pass
        proc = zygote.start(list(args), dict(os.environ), log_path)
        if proc is not None:
            return proc
    with open(log_path, "ab") as log:
        return subprocess.Popen([*prefix, sys.executable, "-m", "ven.cli", *args], stdout=log,
                                stderr=subprocess.STDOUT, env=dict(os.environ), preexec_fn=_ends_with(os.getpid()))


class GatewayProcess:
    """Start, SIGKILL, restart and stop one gateway process; output appends to log_path.
    As a context manager it starts on entry and stops (SIGTERM) on exit."""

    def __init__(self, config, log_path, prefix=(), fork=True):
        """prefix: argv the command runs under, e.g. ("ip", "netns", "exec", NAME), which execs it (same pid).
        fork: from the worker's zygote (tests/zygote.py) where that is what an exec would give; False for a test
        of the start itself (its imports, a signal during them), which must exec."""
        self.config, self.log_path, self.prefix, self.fork = config, log_path, list(prefix), fork
        self.proc: subprocess.Popen | zygote.ForkedProcess | None = None

    def start(self) -> None:
        self.proc = start_cli(["run", "--config", str(self.config)], self.log_path, self.prefix, self.fork)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        """Until the log has `text`; fails at once if the process ends first, else after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            assert self.alive and time.monotonic() < deadline, (text, self.log()[-3000:])
            time.sleep(0.1)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            return None

    def __enter__(self) -> "GatewayProcess":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def kill_when_said(code: str, *args: str, said: str) -> None:
    """Run `code` (python -c, with `args`) until it prints the line `said`, then SIGKILL it: what a crash at
    that point leaves on disk. The code waits on its stdin once it has said it."""
    child = subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env=dict(os.environ))
    try:
        assert child.stdout.readline().strip() == said
    finally:
        child.kill()
        child.wait(timeout=10)
