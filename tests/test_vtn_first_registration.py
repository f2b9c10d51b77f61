"""The start's first registration, while the VTN has not answered it yet: nothing has failed, so the dashboard, its
pills and /healthz do not call the VTN unreachable. A page left open across a restart gets its first answer just as
the gateway listens, before any registration could end: it said "VTN unreachable: no answer from the VTN - check
that the VTN is up" at every restart (helper ops52). A real gateway process and the demo's openleadr VTN, held
(SIGSTOP) so that its first answer takes as long as the test needs."""
from __future__ import annotations

import json
import signal
import urllib.request

import pytest

from browser import IN_ONE_CHROMIUM, chromium_page, one_chromium  # noqa: F401 - fixture
from gateway_process import START_S, GatewayProcess, start_cli, write_config
from test_dashboard import open_dashboard
from waiting import eventually

pytestmark = [pytest.mark.timeout(300), *IN_ONE_CHROMIUM]

PILLS_AND_PROBLEMS = "() => [document.querySelector('#pills').innerText, document.querySelector('#problems').hidden" \
                     " ? '' : document.querySelector('#problems').innerText]"

VTN_CARD = "() => document.querySelector('[data-section=vtn]').innerHTML"
CONNECTED_MARKED = "() => Array.from(document.querySelectorAll('[data-section=vtn] dt')).some(" \
                   "(dt) => dt.textContent.trim().toLowerCase() === 'connected' && " \
                   "dt.nextElementSibling.classList.contains('bad'))"


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.read().decode()


async def test_the_first_registration_under_way_is_connecting_not_a_fault(
        tmp_path, free_udp_port, free_tcp_port, monkeypatch):
    # the held VTN's request is not timed out meanwhile: its first answer is as slow as the test makes it
    monkeypatch.setenv("EDGE_GATEWAY__OPENADR__REQUEST_TIMEOUT_SECONDS", "900")
    vtn_port, http_port = free_tcp_port(), free_tcp_port()
    vtn_log = tmp_path / "vtn.log"
    vtn = start_cli(["demo-vtn", "--host", "127.0.0.1", "--port", str(vtn_port)], vtn_log)
    try:
        await eventually(lambda: "demo VTN listening" in vtn_log.read_text(), START_S, "the demo VTN listening")
        vtn.send_signal(signal.SIGSTOP)     # the kernel takes the connection; the VTN answers nothing until SIGCONT
        config = tmp_path / "gw.toml"
        write_config(config, bacnet_port=free_udp_port(), http_port=http_port, storage=tmp_path / "gw.sqlite",
                     ven_name="first-registration", vtn_port=vtn_port)
        base = f"http://127.0.0.1:{http_port}"
        with GatewayProcess(config, tmp_path / "gw.log") as gateway:
            gateway.wait_for("edge-gateway ready", START_S)
            vtn_status = json.loads(_get(base + "/api/status"))["vtn"]
            assert vtn_status["connected"] is False and vtn_status["connecting"] is True, vtn_status
            assert "VTN" not in _get(base + "/healthz"), gateway.log()[-2000:]
            async with chromium_page() as page:
                await open_dashboard(page, base + "/?refresh=1")
                pills, problems = await page.evaluate(PILLS_AND_PROBLEMS)
                assert "VTN connecting" in pills and "VTN disconnected" not in pills, pills
                assert "VTN" not in problems, problems
                # nor does the VTN card mark "connected: false" as a problem meanwhile
                assert not await page.evaluate(CONNECTED_MARKED), await page.evaluate(VTN_CARD)
                assert "WARNING VTN" not in gateway.log(), gateway.log()[-2000:]

                vtn.send_signal(signal.SIGCONT)
                # connected at the first poll answered, after the "registered" line
                vtn_status = await eventually(lambda: (v := json.loads(_get(base + "/api/status"))["vtn"])["connected"]
                                              and v, START_S, "connected once the VTN answers")
                assert vtn_status["connecting"] is False, vtn_status

                async def connected():
                    return "VTN connected" in (await page.evaluate(PILLS_AND_PROBLEMS))[0]
                await eventually(connected, START_S, "the VTN pill saying connected")

                # a VTN lost after that is a fault, not a first registration: the page says so
                vtn.send_signal(signal.SIGKILL)
                vtn.wait(timeout=10)

                async def unreachable():
                    pills, problems = await page.evaluate(PILLS_AND_PROBLEMS)
                    return "VTN disconnected" in pills and "VTN unreachable" in problems
                await eventually(unreachable, START_S, "the page calling the lost VTN unreachable")
                assert await page.evaluate(CONNECTED_MARKED), await page.evaluate(VTN_CARD)
                assert json.loads(_get(base + "/api/status"))["vtn"]["connecting"] is False
    finally:
        if vtn.poll() is None:
            vtn.send_signal(signal.SIGCONT)
            vtn.kill()
            vtn.wait(timeout=10)
