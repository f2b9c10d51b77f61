"""openadr.proxy: the VEN reaches a real openleadr VTN through the site's outbound HTTP proxy (tinyproxy, as a site
might run it), over https (CONNECT, the client certificate end to end) and plain http; the proxy's refusals and
silences are named as the proxy's, once."""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from waiting import eventually as until

from cli_run import run_cli
from test_tls import pki, run_ven, ven_tls  # noqa: F401 - pki: a fixture, a CA and VTN and VEN certificates
from ven.config import OpenadrConfig
from ven.vtn_server import DemoVtn

TINYPROXY = shutil.which("tinyproxy")
pytestmark = pytest.mark.skipif(TINYPROXY is None, reason="tinyproxy is not installed (apt-get install tinyproxy)")


@dataclasses.dataclass
class Proxy:
    port: int
    log_path: Path

    def url(self, credentials: str = "") -> str:
        return f"http://{credentials + '@' if credentials else ''}127.0.0.1:{self.port}"

    def requests(self) -> list[str]:
        """What the proxy was asked, as its log says: "CONNECT 127.0.0.1:8443", "POST http://..."."""
        return re.findall(r"Request \(file descriptor \d+\): (\S+ \S+)", self.log_path.read_text(errors="replace"))


@pytest.fixture
def tinyproxy(tmp_path, free_tcp_port):
    started = []

    def start(*rules: str) -> Proxy:
        port = free_tcp_port()
        conf = tmp_path / f"tinyproxy-{port}.conf"
        conf.write_text("\n".join([f"Port {port}", "Listen 127.0.0.1", "Allow 127.0.0.1", "Timeout 30",
                                   "LogLevel Info", "MaxClients 20", *rules]) + "\n")
        log_path = tmp_path / f"tinyproxy-{port}.log"
        with open(log_path, "wb") as out:
            proc = subprocess.Popen([TINYPROXY, "-d", "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        started.append(proc)
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return Proxy(port, log_path)
            except OSError:
                assert time.monotonic() < deadline, "tinyproxy did not listen"
                time.sleep(0.05)

    yield start
    for proc in started:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def test_an_https_vtn_through_the_sites_proxy_with_credentials(pki, free_tcp_port, tinyproxy):  # noqa: F811
    d, fp = pki
    proxy = tinyproxy("BasicAuth site-gw pr0xy-pass")
    vtn = DemoVtn(free_tcp_port(), poll_seconds=1, cert=str(d / "vtn.pem"), key=str(d / "vtn.key"),
                  ca_file=str(d / "ca.pem"), ven_fingerprint=fp["ven"])
    async with vtn:
        client, close = await run_ven(d, vtn_url=vtn.url, proxy=proxy.url("site-gw:pr0xy-pass"),
                                      vtn_fingerprint=fp["vtn"], **ven_tls(d))
        try:
            await until(lambda: client.connected, 20, "registration through the proxy")
            # the tunnel carried TLS end to end: the VTN saw the VEN's own certificate
            assert vtn.vens[client.ven_id]["fingerprint"] == fp["ven"]
            client.record_sample(dt.datetime.now(dt.timezone.utc), 42.5)
            await until(lambda: [r[4] for r in vtn.reports] == [42.5], 15, "the report through the proxy")
            assert client.status()["proxy"] == proxy.url("site-gw:***")
        finally:
            await close()
    asked = proxy.requests()
    assert asked and set(asked) == {f"CONNECT 127.0.0.1:{vtn.url.split(':')[2].split('/')[0]}"}, asked


async def test_a_plain_http_vtn_through_the_proxy(tmp_path, free_tcp_port, tinyproxy):
    proxy = tinyproxy()
    vtn = DemoVtn(free_tcp_port(), poll_seconds=1)
    async with vtn:
        client, close = await run_ven(tmp_path, vtn_url=vtn.url, proxy=proxy.url())
        try:
            await until(lambda: client.connected, 20, "registration through the proxy")
            client.record_sample(dt.datetime.now(dt.timezone.utc), 7.25)
            await until(lambda: [r[4] for r in vtn.reports] == [7.25], 15, "the report through the proxy")
        finally:
            await close()
    asked = proxy.requests()
    assert f"POST {vtn.url}/EiRegisterParty" in asked and f"POST {vtn.url}/OadrPoll" in asked, asked
    assert all(a.startswith(f"POST {vtn.url}/") for a in asked), asked


# a plain http request is no CONNECT: the proxy's ConnectPort rule is not asked
@pytest.mark.parametrize("scheme, case", [(s, c) for s in ("https", "http")
                                          for c in ("wrong-password", "no-password", "port-not-allowed", "proxy-down",
                                                    "vtn-down")
                                          if (s, c) != ("http", "port-not-allowed")])
async def test_the_proxys_refusal_is_named_as_the_proxys_once(pki, free_tcp_port, tinyproxy, caplog, case,  # noqa: F811
                                                             scheme):
    caplog.set_level(logging.DEBUG, logger="ven")
    d, fp = pki
    vtn_port = free_tcp_port()
    rules = {"wrong-password": ["BasicAuth site-gw right-pass"], "no-password": ["BasicAuth site-gw right-pass"],
             "port-not-allowed": [f"ConnectPort {vtn_port + 1}"]}.get(case, [])
    proxy = tinyproxy(*rules)
    proxy_url = proxy.url("site-gw:wrong-pass" if case == "wrong-password" else "")
    if case == "proxy-down":
        proxy_url = f"http://127.0.0.1:{free_tcp_port()}"     # nothing listens there
    https = scheme == "https"
    vtn = DemoVtn(vtn_port, poll_seconds=1, **(dict(cert=str(d / "vtn.pem"), key=str(d / "vtn.key"),
                                                  ca_file=str(d / "ca.pem"), ven_fingerprint=fp["ven"])
                                             if https else {}))
    url = vtn.url
    async with vtn if case != "vtn-down" else contextlib.nullcontext():
        client, close = await run_ven(d, vtn_url=url, proxy=proxy_url, **(ven_tls(d) if https else {}))
        try:
            await until(lambda: client.registration_failures >= 3, 20, "refused registrations")
            assert not client.connected
        finally:
            await close()
    expected = {
        # tinyproxy answers a wrong password 401 and none 407: to CONNECT, both are the proxy's; to a plain
        # request, a 401 may be the VTN's (a password in vtn_url), so it is said as it came, through the proxy
        "wrong-password": (r"proxy at http://site-gw:\*\*\*@127\.0\.0\.1:\d+ did not open the way to 127\.0\.0\.1:\d+ "
                           r"\(HTTP 401 Unauthorized\): it asks for credentials or refused the ones given \(openadr\.proxy "
                           r"as http://user:password@host:port\)" if https else
                           r"HTTP 401 from http://127\.0\.0\.1:\d+/OpenADR2/Simple/2\.0b/EiRegisterParty \(through the "
                           r"proxy at http://site-gw:\*\*\*@127\.0\.0\.1:\d+\): 401 Unauthorized"),
        "no-password": r"proxy at http://127\.0\.0\.1:\d+ did not open the way to 127\.0\.0\.1:\d+ "
                       r"\(HTTP 407 Proxy Authentication Required\): it asks for credentials or refused the ones given",
        "port-not-allowed": r"proxy at http://127\.0\.0\.1:\d+ did not open the way to 127\.0\.0\.1:\d+ \(HTTP 403 .*\): "
                            r"its rules do not let the gateway reach that host and port",
        "proxy-down": r"proxy unreachable at http://127\.0\.0\.1:\d+ \(openadr\.proxy\): .+",
        "vtn-down": (r"proxy at http://127\.0\.0\.1:\d+ did not open the way to 127\.0\.0\.1:\d+ \(HTTP 5\d\d .*\): "
                     r"it could not reach the VTN" if https else
                     r"HTTP 5\d\d from http://127\.0\.0\.1:\d+/OpenADR2/Simple/2\.0b/EiRegisterParty \(through the "
                     r"proxy at http://127\.0\.0\.1:\d+\): 500 Unable to connect"),
    }[case]
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1, [r.getMessage() for r in warned]
    assert re.search(r"VTN registration failed: " + expected, warned[0].getMessage()), warned[0].getMessage()
    assert "wrong-pass" not in caplog.text and "right-pass" not in caplog.text
    assert not any(r.exc_info for r in caplog.records)
    assert re.search(expected, client.status()["last_error"]), client.status()["last_error"]


@pytest.mark.parametrize("value, words", [
    ("https://proxy.site:3128", "must start with http://"),
    ("socks5://u:secret@proxy.site:1080", "must start with http://"),
    ("http://proxy.site", "needs a host and a port"),
    ("http://u:secret@proxy.site", "needs a host and a port"),
    ("http://proxy.site:3128/path", "takes no path"),
    ("http://proxy.site:99999", "Port out of range"),
])
def test_a_bad_proxy_is_refused_naming_the_key_without_its_password(tmp_path, value, words):
    conf = tmp_path / "gw.toml"
    conf.write_text(f'[openadr]\nproxy = "{value}"\n')
    res = run_cli(["check-config", str(conf)], timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 78, res.stderr
    assert res.stderr.startswith("configuration error: ") and "openadr.proxy: " in res.stderr, res.stderr
    assert words in res.stderr and "secret" not in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_a_proxy_variable_the_gateway_does_not_read_is_warned_of(tmp_path):
    https = "https://vtn.utility.example/OpenADR2/Simple/2.0b"
    c = OpenadrConfig(vtn_url=https)
    [warning] = c.environment_proxy_warnings({"HTTPS_PROXY": "http://u:secret@proxy.site:3128"})
    assert warning.startswith("HTTPS_PROXY is set in the gateway's environment (http://u:***@proxy.site:3128) but "
                              "is not read: requests go straight to vtn.utility.example"), warning
    assert "openadr.proxy" in warning
    assert c.environment_proxy_warnings({"https_proxy": "http://p:1", "NO_PROXY": ".utility.example"}) == []
    assert c.environment_proxy_warnings({"HTTP_PROXY": "http://p:1"}) == []   # another scheme's
    assert OpenadrConfig(vtn_url=https, proxy="http://p:1").environment_proxy_warnings({"HTTPS_PROXY": "x"}) == []
    assert OpenadrConfig().environment_proxy_warnings({"HTTP_PROXY": "http://p:1"}) == []     # loopback VTN
    assert OpenadrConfig(vtn_url="http://vtn.example:8080/x").environment_proxy_warnings(
        {"ALL_PROXY": "http://p:1"})[0].startswith("ALL_PROXY is set")

    conf = tmp_path / "gw.toml"
    conf.write_text(f'[openadr]\nvtn_url = "{https}"\n')
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    res = run_cli(["check-config", str(conf)], timeout=60, stdin=subprocess.DEVNULL,
                  env=dict(env, HTTPS_PROXY="http://proxy.site:3128"))
    assert res.returncode == 0, res.stderr
    assert "HTTPS_PROXY is set in the gateway's environment (http://proxy.site:3128) but is not read" in (
        res.stdout + res.stderr)
