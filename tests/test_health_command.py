"""`edge-gateway health`: the container's HEALTHCHECK probes /healthz at the address the gateway's own
config (with its env overrides) names. The probe used to read only EDGE_GATEWAY__HTTP__ADDRESS, so a
gateway whose config file set another port was marked unhealthy, and restarted by an orchestrator."""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time

import pytest
from cli_run import run_cli
from gateway_process import START_S, GatewayProcess, write_config

pytestmark = pytest.mark.timeout(90)


def _health(config, **env) -> subprocess.CompletedProcess:
    return run_cli(["health", "--config", str(config), "--timeout", "2"], timeout=30, env={**os.environ, **env})


@pytest.mark.timeout(int(START_S) + 60)   # a gateway process's start (START_S), then the probes
def test_health_probes_the_configured_address_and_says_why_not(tmp_path, free_udp_port, free_tcp_port):
    config = tmp_path / "gw.toml"
    http_port = free_tcp_port()
    write_config(config, bacnet_port=free_udp_port(), http_port=http_port, storage=tmp_path / "gw.sqlite",
                 ven_name="health")
    down = _health(config)
    assert down.returncode == 1 and f"127.0.0.1:{http_port}/healthz: no answer" in down.stdout, down
    with GatewayProcess(config, tmp_path / "gw.log") as gateway:
        deadline = time.monotonic() + START_S      # the gateway process's start, then its first registration try
        # "VTN not connected" once the first registration has failed: while it is under way nothing has failed yet
        while ((up := _health(config)).returncode != 0 or "VTN not connected" not in up.stdout) \
                and time.monotonic() < deadline and gateway.alive:
            time.sleep(0.3)
        assert up.returncode == 0, (up, gateway.log()[-2000:])
        # healthy but degraded: nobody at the VTN's or the meter's address, and the probe's line says so
        assert f"127.0.0.1:{http_port}/healthz: ok (degraded: " in up.stdout and "VTN not connected" in up.stdout
        # monitoring asks to hear of it: the same answer, exit 1 (a container's check keeps 0: a restart mends no VTN)
        strict = run_cli(["health", "--config", str(config), "--timeout", "2", "--strict"], timeout=30)
        assert strict.returncode == 1 and "ok (degraded: " in strict.stdout, strict
        # an env override is part of the config: it moves the probe as it moves the gateway
        moved = _health(config, EDGE_GATEWAY__HTTP__ADDRESS=f"127.0.0.1:{free_tcp_port()}")
        assert moved.returncode == 1 and "no answer" in moved.stdout, moved
        # a proxy in the container's environment must not carry the loopback probe away
        proxied = _health(config, http_proxy="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
        assert proxied.returncode == 0, proxied


def test_nothing_listening_is_said_so(tmp_path, free_udp_port, free_tcp_port):
    # a newcomer's `health` beside a gateway not started yet said only "no answer ([Errno 111] Connection refused)"
    config = tmp_path / "gw.toml"
    http_port = free_tcp_port()
    write_config(config, bacnet_port=free_udp_port(), http_port=http_port, storage=tmp_path / "gw.sqlite",
                 ven_name="health")
    down = _health(config)
    assert down.returncode == 1 and down.stdout.strip() == (
        f"http://127.0.0.1:{http_port}/healthz: no answer ([Errno 111] Connection refused): nothing listens there "
        "(the gateway not running, or running with another http.address?)"), down


def test_health_of_a_bad_or_http_less_config(tmp_path, free_udp_port, free_tcp_port):
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=free_udp_port(), http_port=free_tcp_port(), storage=tmp_path / "gw.sqlite",
                 ven_name="health")
    off = _health(config, EDGE_GATEWAY__HTTP__ENABLED="false")
    assert off.returncode == 0 and "serves no /healthz" in off.stdout, off
    # Docker reserves exit code 2: a config the gateway cannot start with is plainly unhealthy
    bad = _health(config, EDGE_GATEWAY__HTTP__ADDRESS="no-port-here")
    assert bad.returncode == 1 and "http.address" in bad.stderr, bad


def test_a_wildcard_bind_is_probed_on_loopback():
    from ven.cli import _probe_url

    assert _probe_url("0.0.0.0:8000") == "http://127.0.0.1:8000/healthz"
    assert _probe_url("[::]:8000") == "http://[::1]:8000/healthz"
    assert _probe_url("gw.example:81") == "http://gw.example:81/healthz"


@contextlib.contextmanager
def _serving(handler):
    """An HTTP server of python's own on a loopback port (another program where the gateway's /healthz should be)."""
    import http.server
    import threading

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()


def _config_for(tmp_path, free_udp_port, http_port: int):
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=free_udp_port(), http_port=http_port, storage=tmp_path / "gw.sqlite",
                 ven_name="health")
    return config


def test_strict_is_exit_0_for_a_plain_ok(tmp_path, free_udp_port, free_tcp_port):
    # --strict must not page anyone for a healthy gateway: a /healthz answering as one does, on loopback
    import http.server

    answers = iter(["ok", "ok (degraded: meter fault)"])

    class Healthz(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = (next(answers) + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    with _serving(Healthz) as port:
        config = _config_for(tmp_path, free_udp_port, port)
        strict = [run_cli(["health", "--config", str(config), "--timeout", "2", "--strict"], timeout=30)
                  for _ in range(2)]
    assert [r.returncode for r in strict] == [0, 1], strict
    assert strict[0].stdout.strip().endswith("/healthz: ok"), strict[0]


def test_another_program_at_the_address_is_one_line_and_unhealthy(tmp_path, free_udp_port):
    # python's own file server where the gateway should be (a port a newcomer left to another program): its 404 page
    # was printed whole as the probe's answer, eleven lines of HTML; and a 200 for a file named healthz read healthy
    import functools
    import http.server

    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    with _serving(handler) as port:
        config = _config_for(tmp_path, free_udp_port, port)
        missing = _health(config)
        (served / "healthz").write_text("<html><body>\n<p>status page</p>\n</body></html>\n")
        page = _health(config)
    url = f"http://127.0.0.1:{port}/healthz"
    why = ("not the gateway's /healthz answer: another program answers at this address (the gateway not running, or "
           "running with another http.address?)")
    assert missing.returncode == 1 and len(missing.stdout.splitlines()) == 1, missing
    assert re.fullmatch(rf"{re.escape(url)}: HTTP 404 \(text/html, \d+ bytes\): {re.escape(why)}\n",
                        missing.stdout), missing
    assert page.returncode == 1, page
    assert page.stdout == f"{url}: HTTP 200 (application/octet-stream, 47 bytes): {why}\n", page
