"""A VTN reached off loopback without TLS or without a client certificate: `check-config` and the start-up log
say what is exposed and which key fixes it. What openleadr and the VEN do in each case is shown against a real
VTN in tests/test_tls.py; here, that the operator is told, and that the loopback demo and the examples are not."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from gateway_process import START_S, GatewayProcess, write_config
from netns import linked_netns  # noqa: F401 - a fixture
from test_tls import pki  # noqa: F401 - a fixture: a CA, and VTN and VEN certificates
from waiting import eventually

from cli_run import run_cli
from ven.vtn_server import DemoVtn

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PLAIN = "is plain http to vtn.utility.example, not loopback: events, opt answers and telemetry cross the network in " \
        "clear text"
PASSWORD_TOO = ", the utility account's password (user:password@ in the URL) and "
INJECT = ", and anyone on the path can send the gateway events, which drive ADR-Event-Level: use https:// with " \
         "openadr.cert and openadr.key"
NO_CERT = "is https but openadr.cert and openadr.key are unset: the gateway presents no client certificate"


def check_config(path, **env) -> list[str]:
    """`edge-gateway check-config`'s lines about openadr keys; it must pass."""
    res = run_cli(["check-config", str(path)], timeout=60, stdin=subprocess.DEVNULL, env={**os.environ, **env})
    assert res.returncode == 0 and ": ok (" in res.stdout.splitlines()[-1], res.stdout + res.stderr
    return [line.partition(": warning: ")[2] for line in res.stdout.splitlines() if "warning: openadr." in line]


@pytest.mark.timeout(120)
def test_check_config_warns_of_a_vtn_reached_without_tls_or_without_a_client_certificate(tmp_path):
    conf = tmp_path / "gw.toml"
    vtn = "vtn.utility.example/OpenADR2/Simple/2.0b"
    conf.write_text(f'[openadr]\nvtn_url = "http://{vtn}"\n')
    assert check_config(conf) == [f"openadr.vtn_url {PLAIN}{INJECT}"]
    # the VTN's signatures checked: events cannot be injected, but everything is still read on the way
    conf.write_text(f'[openadr]\nvtn_url = "http://{vtn}"\nvtn_fingerprint = "{":".join(["AB"] * 10)}"\n')
    assert check_config(conf) == [f"openadr.vtn_url {PLAIN} (openadr.vtn_fingerprint still refuses events the VTN "
                                  "did not sign): use https:// with openadr.cert and openadr.key"]
    # as a variable sets it (docker/compose.yaml); the host alone is shown, as a URL may carry a password
    conf.write_text("")
    # (the password crosses in clear too, and is said to)
    assert check_config(conf, EDGE_GATEWAY__OPENADR__VTN_URL=f"http://user:pw@{vtn}") == [
        f"openadr.vtn_url (from EDGE_GATEWAY__OPENADR__VTN_URL) {PLAIN.replace(' and ', PASSWORD_TOO, 1)}{INJECT}"]
    conf.write_text(f'[openadr]\nvtn_url = "https://{vtn}"\n')
    (warning,) = check_config(conf)
    assert warning.startswith(f"openadr.vtn_url {NO_CERT}") and warning.endswith(": set both"), warning
    # loopback, however it is written: nothing crosses a network
    for url in ("http://localhost:8080/x", "http://localhost.:8080/x", "http://[::1]:8080/x", "https://127.0.0.2:8443/x"):
        assert check_config(conf, EDGE_GATEWAY__OPENADR__VTN_URL=url) == [], url


@pytest.mark.timeout(60)
def test_the_shipped_examples_warn_of_nothing_about_the_vtn(pki):  # noqa: F811
    d, _ = pki
    assert check_config(EXAMPLES / "gateway.toml") == []
    # the production example with its TLS files present (it names paths this machine does not have)
    tls = {"EDGE_GATEWAY__OPENADR__CERT": str(d / "other.pem"), "EDGE_GATEWAY__OPENADR__KEY": str(d / "other.key"),
           "EDGE_GATEWAY__OPENADR__CA_FILE": str(d / "ca.pem")}
    assert check_config(EXAMPLES / "gateway-tls.toml", **tls) == []
    assert sorted(p.name for p in EXAMPLES.glob("*.toml")) == ["gateway-tls.toml", "gateway.toml"], \
        "a new example config: say here which warnings it should give"


@pytest.mark.timeout(int(START_S) + 60)   # a gateway process's start (START_S), then the test
async def test_the_start_up_log_warns_once_of_a_plain_http_vtn_off_loopback_and_the_gateway_still_runs(
        tmp_path, free_udp_port, free_tcp_port, linked_netns):  # noqa: F811
    # the gateway in a namespace of the test's own; the VTN across the link, where a utility's would be
    ns = linked_netns
    ns.add_address(ns.ip(1))
    vtn_port = free_tcp_port()
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=free_udp_port(), http_port=free_tcp_port(), storage=tmp_path / "gw.sqlite",
                 ven_name="plain-http", vtn_host=ns.host_ip, vtn_port=vtn_port)
    async with DemoVtn(vtn_port, host=ns.host_ip, poll_seconds=1):
        with GatewayProcess(config, tmp_path / "gateway.log", prefix=ns.exec_prefix) as gateway:
            await eventually(lambda: "edge-gateway ready" in gateway.log(), START_S, "the gateway ready")
            await eventually(lambda: "registered with VTN" in gateway.log() or not gateway.alive, 30,
                             "registration over plain http")
            assert gateway.alive, gateway.log()
    warned = [line for line in gateway.log().splitlines() if "openadr.vtn_url" in line]
    assert len(warned) == 1 and " WARNING " in warned[0], gateway.log()
    assert warned[0].endswith(f"config: openadr.vtn_url is plain http to {ns.host_ip}, not loopback: events, opt "
                              f"answers and telemetry cross the network in clear text{INJECT}"), warned[0]


@pytest.mark.timeout(60)
async def test_a_password_in_vtn_url_is_shown_as_stars_in_the_log_the_status_and_check_config(tmp_path, caplog,
                                                                                              free_udp_port,
                                                                                              free_tcp_port):
    # aiohttp sends a URL's user:password@ as basic auth, so a site may write one into vtn_url: the start-up line,
    # every VTN fault line, /api/status and check-config printed it
    import json
    import logging

    from aiohttp import web

    from ven.app import Gateway
    from ven.config_load import parse_config

    caplog.set_level(logging.INFO)
    answering, closed = free_tcp_port(), free_tcp_port()
    app = web.Application()
    app.router.add_post("/{tail:.*}", lambda request: web.Response(status=500, text="VTN down for maintenance"))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", answering).start()
    try:
        for port, fault in ((answering, "HTTP 500 from"), (closed, "VTN unreachable at")):
            url = f"http://ven-7:s3cret-pw@127.0.0.1:{port}/OpenADR2/Simple/2.0b"
            conf = tmp_path / "gw.toml"
            conf.write_text(f'[openadr]\nvtn_url = "{url}"\n')
            res = run_cli(["check-config", str(conf)], timeout=60, stdin=subprocess.DEVNULL)
            assert "ven-7:***@127.0.0.1" in res.stdout and "s3cret" not in res.stdout + res.stderr, res.stdout
            caplog.clear()
            gateway = Gateway(parse_config({
                "bacnet": {"address": f"127.0.0.1/8:{free_udp_port()}", "device_id": 500311},
                "meter": {"router": f"127.0.0.1:{free_udp_port()}", "timeout_seconds": 0.5},
                "openadr": {"vtn_url": url, "retry_min_seconds": 0.2, "retry_max_seconds": 0.5},
                "storage": {"path": str(tmp_path / f"gw-{port}.sqlite")},
                "http": {"enabled": False},
            }, "test", environ={}))
            await gateway.start()
            try:
                await eventually(lambda: any(fault in r.getMessage() for r in caplog.records), 15, fault)
                status = json.dumps(gateway.status(), default=str)
            finally:
                await gateway.stop()
            logged = "\n".join(r.getMessage() for r in caplog.records)
            assert "ven-7:***@127.0.0.1" in logged and "ven-7:***@127.0.0.1" in status, logged
            assert "s3cret" not in logged and "s3cret" not in status, logged
    finally:
        await runner.cleanup()
