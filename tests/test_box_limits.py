"""A small box's limits, as its unit may set them. Under a low open-file limit (LimitNOFILE=64) the API's connection
limit comes down so it refuses first, before accept() runs out of descriptors: out of them, CPython retried each accept
every second, its retries multiplying, and asyncio logged each with a traceback (9,082 in a minute with 40 dashboards
polling and 40 idle connections). Too little memory to start is said as such."""
from __future__ import annotations

import asyncio
import logging
import resource
import signal
import socket
import time

import pytest

from gateway_process import START_S, GatewayProcess, write_config
from ven.http_api import MAX_CONNECTIONS, connection_limit
from ven.logs import QuietAcceptErrors

pytestmark = pytest.mark.timeout(90)


def test_the_connection_limit_leaves_the_gateway_its_own_descriptors():
    assert connection_limit(1024) == MAX_CONNECTIONS == connection_limit(resource.RLIM_INFINITY)
    assert connection_limit(256) == MAX_CONNECTIONS
    assert connection_limit(128) == 38 and connection_limit(64) == 6 and connection_limit(32) == 4


def test_a_process_out_of_descriptors_is_one_line_a_minute_not_a_traceback_at_each_retry(caplog):
    caplog.set_level(logging.INFO)
    loop = asyncio.new_event_loop()
    try:
        quiet = QuietAcceptErrors()
        emfile = OSError(24, "Too many open files")
        for _ in range(500):
            quiet(loop, {"message": "socket.accept() out of system resource", "exception": emfile})
        quiet(loop, {"message": "Task exception was never retrieved", "exception": KeyError("x")})
    finally:
        loop.close()
    lines = [r for r in caplog.records]
    assert len(lines) == 2 and "out of file descriptors (LimitNOFILE" in lines[0].getMessage(), lines
    assert not lines[0].exc_info and lines[1].getMessage() == "Task exception was never retrieved"   # asyncio's own


@pytest.mark.timeout(int(START_S) + 60)   # an exec'd gateway process's start (START_S), then the test
def test_a_gateway_at_limit_nofile_64_refuses_connections_before_it_runs_out(tmp_path, free_udp_port, free_tcp_port):
    http_port = free_tcp_port()
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=free_udp_port(), http_port=http_port, storage=tmp_path / "gw.sqlite",
                 ven_name="few-files", device_id=500341)
    with GatewayProcess(config, tmp_path / "log", prefix=("prlimit", "--nofile=64:64", "--")) as gateway:
        gateway.wait_for("http dashboard on", START_S)
        held = []
        try:
            # 40 dashboards' and proxies' connections held open, and more, coming while the loop is busy (a loaded
            # box; here stopped): asyncio accepts as many as wait in the listen backlog in one go, each a descriptor,
            # before the limit is asked about any (100 of them: out of descriptors under the suite's load)
            gateway.proc.send_signal(signal.SIGSTOP)
            try:
                for _ in range(60):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    held.append(sock)
                    sock.setblocking(False)
                    sock.connect_ex(("127.0.0.1", http_port))
                time.sleep(0.5)
            finally:
                gateway.proc.send_signal(signal.SIGCONT)
            gateway.wait_for("refusing new ones until some close")     # the limit, not the descriptors, refused
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 10
        while True:     # answering again once the server has seen those close
            try:
                with socket.create_connection(("127.0.0.1", http_port), timeout=5) as sock:
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    if sock.recv(64).startswith(b"HTTP/1.1 200"):
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, gateway.log()[-3000:]
            time.sleep(0.2)
        assert gateway.alive
    text = gateway.log()
    assert "at most 6 connections, as the process may open only 64 files" in text, text[-3000:]
    assert "out of system resource" not in text and "Traceback" not in text, text[-3000:]
    assert "could not be accepted" not in text, text[-3000:]


@pytest.mark.parametrize("err", [ImportError("/venv/lib/python3.11/site-packages/lxml/etree.cpython-311-x86_64-linux-gnu"
                                             ".so: failed to map segment from shared object"),
                                 MemoryError("Unable to allocate 394. KiB")])
def test_too_little_memory_to_start_is_said_as_such_not_a_traceback(monkeypatch, capsys, err):
    # under LimitAS=200M the start ended in a raw traceback ("failed to map segment from shared object") that said
    # nothing of memory (prlimit --as=200000000 edge-gateway run: measured, 2026-12-05)
    from ven import cli

    def short_of_memory(config_path, customize=None):
        raise err
    monkeypatch.setattr(cli, "run_gateway", short_of_memory)
    assert cli.main(["run", "--config", "gw.toml"]) == 1
    said = capsys.readouterr().err
    assert said.startswith("edge-gateway run: out of memory (") and "LimitAS" in said and "380 MB" in said, said


def test_an_import_error_that_is_not_memory_is_raised_as_it_is(monkeypatch):
    from ven import cli

    def missing(config_path, customize=None):
        raise ImportError("No module named 'openleadr'")
    monkeypatch.setattr(cli, "run_gateway", missing)
    with pytest.raises(ImportError, match="openleadr"):
        cli.main(["run", "--config", "gw.toml"])


def test_an_address_space_limit_under_what_the_fits_need_is_said_at_the_start():
    # under LimitAS=300M every fit failed with a line naming a thread or a shared object, never the limit
    from ven.config_checks import memory_limit_warnings

    assert memory_limit_warnings(resource.RLIM_INFINITY) == [] and memory_limit_warnings(512 * 10**6) == []
    [warning] = memory_limit_warnings(300 * 10**6)
    assert warning.startswith("the process may use only 300 MB of address space (LimitAS, ulimit -v): the "
                              "forecaster's fits need about 380 MB"), warning


@pytest.mark.timeout(int(START_S) + 60)   # a gateway process's start, then its stop
def test_a_gateway_under_limit_as_says_so_in_its_start_up_log(tmp_path, free_udp_port, free_tcp_port):
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=free_udp_port(), http_port=free_tcp_port(), storage=tmp_path / "gw.sqlite",
                 ven_name="little-memory", device_id=500342)
    with GatewayProcess(config, tmp_path / "log", prefix=("prlimit", "--as=330000000", "--")) as gateway:
        gateway.wait_for("edge-gateway ready", START_S)
    assert "WARNING the process may use only 330 MB of address space (LimitAS" in gateway.log(), gateway.log()[-3000:]
