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

# each compares a fork with an exec: with GATEWAY_TESTS_FORK=0 nothing forks
pytestmark = [pytest.mark.timeout(int(START_S) + 60),
              pytest.mark.skipif(os.environ.get("GATEWAY_TESTS_FORK", "1") == "0", reason="GATEWAY_TESTS_FORK=0")]

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


# --- run_cli / run_module (tests/cli_run.py): a command forked from the zygote ends as its exec would ---

# a module run by `-m` in each way, from the test's tmp_path: what each case prints and how it ends
EXITS = r"""
import os, signal, sys, time
case = sys.argv[1]
if case == "where":     # -m's __main__, argv and path, and what the child was given
    print(__name__, __spec__.name, sys.argv, sys.path[0], os.getcwd(), os.environ.get("ZYGOTE_TEST"),
          oct(os.umask(0)), sorted(os.listdir("/proc/self/fd")), sys.stdin.read(), sep="\n")
elif case == "buffered":     # stdout a pipe: flushed at the exit, after stderr's lines
    print("out 1"); print("err 1", file=sys.stderr); print("out 2", end="")
elif case == "exit":
    print("said", end=""); sys.exit(int(sys.argv[2]))
elif case == "exit text":
    sys.exit("why it ended")
elif case == "raise":
    raise ValueError("bad")
elif case == "interrupt":
    raise KeyboardInterrupt
elif case == "signal":
    print("before", flush=True); os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)
elif case == "sleep":
    print("started", flush=True); time.sleep(60)
elif case == "newlines":
    sys.stdout.buffer.write("a\r\nb\rc \u00e9\n".encode())
"""


@pytest.fixture
def exits(tmp_path, monkeypatch):
    (tmp_path / "exits.py").write_text(EXITS)
    monkeypatch.setenv("ZYGOTE_TEST", "set after the zygote's start")
    return tmp_path


def _both(exits, *args, **kwargs) -> tuple:
    """(exec'd, forked) subprocess.CompletedProcess of `python -m exits ARGS`."""
    from cli_run import run_module

    execd = subprocess.run([sys.executable, "-m", "exits", *args], cwd=exits, text=True, timeout=60,
                           **{"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kwargs})
    forked = run_module("exits", args, cwd=exits, timeout=60, **kwargs)
    assert zygote._zygote is not None and zygote._zygote.ready
    return execd, forked


@pytest.mark.parametrize("args", [["buffered"], ["exit", "0"], ["exit", "3"], ["exit", "300"], ["exit text"],
                                  ["raise"], ["interrupt"], ["signal"], ["newlines"]])
def test_a_forked_command_ends_and_says_as_its_exec(exits, args):
    execd, forked = _both(exits, *args)
    assert (forked.returncode, forked.stdout, forked.stderr) == (execd.returncode, execd.stdout, execd.stderr)
    assert forked.args == execd.args


def test_a_forked_command_runs_as_m_in_its_cwd_environment_and_umask_with_only_its_own_fds(exits):
    mask = os.umask(0o027)
    try:
        execd, forked = _both(exits, "where", input="to stdin")
    finally:
        os.umask(mask)
    assert forked.returncode == execd.returncode == 0, forked.stderr
    assert forked.stdout == execd.stdout, (forked.stdout, execd.stdout)
    assert f"\n{exits}\n{exits}\nset after the zygote's start\n0o27\n['0', '1', '2', '3']\nto stdin\n" in forked.stdout
    server = zygote._zygote.proc.pid
    held, ours = sorted(os.listdir(f"/proc/{server}/fd")), sorted(os.listdir("/proc/self/fd"))
    assert _both(exits, "exit", "0")[1].stdout == "said"
    assert sorted(os.listdir(f"/proc/{server}/fd")) == held     # the pipes passed to it closed there
    assert sorted(os.listdir("/proc/self/fd")) == ours          # and here


@pytest.mark.parametrize("unbuffered", ["1", None])
def test_a_forked_commands_stdout_is_buffered_as_its_execs(exits, monkeypatch, unbuffered):
    # PYTHONUNBUFFERED, read as the interpreter starts: a zygote of each value (the worker's, or one for the test)
    own = os.environ.get("PYTHONUNBUFFERED") != unbuffered
    if own:
        if unbuffered:
            monkeypatch.setenv("PYTHONUNBUFFERED", unbuffered)
        else:
            monkeypatch.delenv("PYTHONUNBUFFERED")
        monkeypatch.setattr(zygote, "_ENV_AT_IMPORT", dict(os.environ))
        monkeypatch.setattr(zygote, "_zygote", None)
    try:
        execd, forked = _both(exits, "buffered", stderr=subprocess.STDOUT)
    finally:
        if own and zygote._zygote:
            zygote._zygote.close()
    # a pipe: stdout's lines at the exit, after stderr's (line-buffered), unless unbuffered
    assert forked.stdout == execd.stdout == ("out 1\nerr 1\nout 2" if unbuffered else "err 1\nout 1\nout 2")


def test_a_forked_command_past_its_timeout_is_killed(exits):
    from cli_run import run_module

    with pytest.raises(subprocess.TimeoutExpired) as raised:
        run_module("exits", ["sleep"], cwd=exits, timeout=5)
    assert raised.value.output == b"started\n" and raised.value.timeout == 5
    assert raised.value.cmd == [sys.executable, "-m", "exits", "sleep"]
    assert not zygote._zygote.children     # reaped: killed, not left sleeping


def test_a_command_with_another_import_time_environment_is_execd(exits, monkeypatch):
    from cli_run import run_cli

    assert run_cli(["--version"], timeout=60).returncode == 0   # the zygote up: only the environment decides
    monkeypatch.setattr(zygote.Zygote, "start", lambda *_, **__: pytest.fail("forked"))
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    res = run_cli(["check-config", str(exits / "absent.toml")], timeout=60)
    assert res.returncode == 78 and "absent.toml: no such file" in res.stderr, res
