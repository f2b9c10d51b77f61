"""A VTN reached off loopback without TLS or without a client certificate: `check-config` and the start-up log
say what is exposed and which key fixes it. What openleadr and the VEN do in each case is shown against a real
VTN in tests/test_tls.py; here, that the operator is told, and that the loopback demo and the examples are not."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from gateway_process import GatewayProcess, write_config
from netns import linked_netns  # noqa: F401 - a fixture
from test_tls import pki  # noqa: F401 - a fixture: a CA, and VTN and VEN certificates
from waiting import eventually

from ven.vtn_server import DemoVtn

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PLAIN = "is plain http to vtn.utility.example, not loopback: events, opt answers and telemetry cross the network in " \
        "clear text"
INJECT = ", and anyone on the path can send the gateway events, which drive ADR-Event-Level: use https:// with " \
         "openadr.cert and openadr.key"
NO_CERT = "is https but openadr.cert and openadr.key are unset: the gateway presents no client certificate"


def check_config(path, **env) -> list[str]:
    """`edge-gateway check-config`'s lines about openadr keys; it must pass."""
    res = subprocess.run([sys.executable, "-m", "ven.cli", "check-config", str(path)], capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL, env={**os.environ, **env})
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
    assert check_config(conf, EDGE_GATEWAY__OPENADR__VTN_URL=f"http://user:pw@{vtn}") == [
        f"openadr.vtn_url (from EDGE_GATEWAY__OPENADR__VTN_URL) {PLAIN}{INJECT}"]
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


@pytest.mark.timeout(90)
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
            await eventually(lambda: "registered with VTN" in gateway.log() or not gateway.alive, 30,
                             "registration over plain http")
            assert gateway.alive, gateway.log()
    warned = [line for line in gateway.log().splitlines() if "openadr.vtn_url" in line]
    assert len(warned) == 1 and " WARNING " in warned[0], gateway.log()
    assert warned[0].endswith(f"config: openadr.vtn_url is plain http to {ns.host_ip}, not loopback: events, opt "
                              f"answers and telemetry cross the network in clear text{INJECT}"), warned[0]
