"""A VTN's answer that is not what OpenADR sends (a DTD with entities, an answer that inflates to 512 MB), against
the real `edge-gateway run` process: it is refused as a failed request, the process stays up and goes on. And a
request with a DTD to the demo VTN (`edge-gateway demo-vtn`): refused the same way, and the VTN goes on serving."""
from __future__ import annotations

import subprocess
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest
from browser import chromium_page
from fake_vtn import FakeVtn
from gateway_process import START_S, GatewayProcess, start_cli, write_config
from raw_vtn import RawVtn, distribute, event, interval, signal
from test_dashboard import open_dashboard
from waiting import eventually

from ven.vtn_server import DemoVtn

pytestmark = pytest.mark.timeout(150)   # a gateway process's start (START_S), then the test

ENTITIES = ('<!DOCTYPE oadrPayload [<!ENTITY a "a"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
            '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>\n')


@asynccontextmanager
async def behind_raw_vtn(tmp_path, free_udp_port, free_tcp_port, ven_name: str):
    """The gateway as a process whose VTN is a RawVtn, registration and reports going on to a DemoVtn:
    (the DemoVtn, the RawVtn, the GatewayProcess, its HTTP port)."""
    config, http_port = tmp_path / "gw.toml", free_tcp_port()
    async with DemoVtn(free_tcp_port(), poll_seconds=1) as demo, RawVtn(free_tcp_port(), demo.url, demo.vtn_id) as raw:
        write_config(config, bacnet_port=free_udp_port(), vtn_port=raw.port, http_port=http_port,
                     storage=tmp_path / "gw.sqlite", ven_name=ven_name)
        with GatewayProcess(config, tmp_path / "gateway.log") as gw:
            yield demo, raw, gw, http_port


async def status(http_port: int) -> dict:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        async with session.get(f"http://127.0.0.1:{http_port}/api/status") as resp:
            return await resp.json()


async def test_a_dtd_with_entities_from_the_vtn_is_refused_and_the_gateway_stays_up(tmp_path, free_udp_port,
                                                                                     free_tcp_port):
    async with behind_raw_vtn(tmp_path, free_udp_port, free_tcp_port, "hostile-xml") as (demo, raw, gw, http_port):
        await eventually(lambda: demo.vens, START_S, "registration")
        start = datetime.now(timezone.utc) + timedelta(minutes=30)
        valid = distribute(raw.vtn_id, [event("entity-evt", start, "PT1H", [signal([interval(2, "PT1H", 0)])])])
        # the entity in an element the schema takes as text; RawVtn.send would validate it in this process
        hostile = valid.replace(b">entity-evt<", b">&c;<").replace(b"\n", b"\n" + ENTITIES.encode(), 1)
        raw.outbox.append(hostile)
        await eventually(lambda: raw.served == 1, 10, "the message polled")
        await eventually(lambda: "DTD" in gw.log() or not gw.alive, 10, "the refusal logged")
        assert gw.alive, f"the gateway died (exit {gw.proc.returncode}):\n{gw.log()}"
        assert "VTN message failed OpenADR schema validation: the message carries a DTD" in gw.log()
        raw.send(valid.replace(b">entity-evt<", b">after-evt<"))
        await eventually(lambda: raw.answers("after-evt"), 15, "the next event answered")
        assert [e["event_id"] for e in (await status(http_port))["events"]] == ["after-evt"]
        assert gw.alive and "Traceback" not in gw.log()


@contextmanager
def demo_vtn_process(port: int, log_path):
    """`edge-gateway demo-vtn` as a process of its own: a crash in it must not take the test run with it."""
    proc = start_cli(["demo-vtn", "--port", str(port), "--duration", "80"], log_path)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.mark.timeout(240)     # a demo-vtn process's start and a gateway process's (START_S each)
async def test_a_dtd_with_entities_posted_to_the_demo_vtn_is_refused_and_it_serves_on(tmp_path, free_udp_port,
                                                                                      free_tcp_port):
    from openleadr.messaging import create_message

    port, log_path = free_tcp_port(), tmp_path / "vtn.log"
    registration = create_message("oadrCreatePartyRegistration", request_id="req-1", ven_name="entity-ven",
                                  http_pull_model=True, xml_signature=False, report_only=False,
                                  profile_name="2.0b", transport_name="simpleHttp", transport_address=None).encode()
    hostile = registration.replace(b">entity-ven<", b">&c;<").replace(b"\n", b"\n" + ENTITIES.encode(), 1)
    url = f"http://127.0.0.1:{port}/OpenADR2/Simple/2.0b/EiRegisterParty"
    with demo_vtn_process(port, log_path) as vtn:
        await eventually(lambda: "demo VTN listening" in log_path.read_text() or vtn.poll() is not None, START_S,
                         "VTN up")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            try:
                async with http.post(url, data=hostile, headers={"Content-Type": "application/xml"}) as resp:
                    answer = resp.status, await resp.text()
            except aiohttp.ClientError as err:     # the process died under the request
                answer = err
        await eventually(lambda: "WARNING" in log_path.read_text() or vtn.poll() is not None, 10, "the refusal said")
        assert vtn.poll() is None, f"the demo VTN died (exit {vtn.returncode}), answering {answer!r}:\n{log_path.read_text()}"
        assert answer == (400, "XML failed validation: the message carries a DTD (<!DOCTYPE>), which OpenADR "
                               "messages never do"), answer
        config = tmp_path / "gw.toml"
        write_config(config, bacnet_port=free_udp_port(), vtn_port=port, http_port=free_tcp_port(),
                     storage=tmp_path / "gw.sqlite", ven_name="after-entity")
        with GatewayProcess(config, tmp_path / "gateway.log") as gw:
            await eventually(lambda: "telemetry requested" in gw.log() or not gw.alive, START_S,
                             "a VEN served after it")
            assert gw.alive and "registered with VTN" in gw.log(), gw.log()
    said = log_path.read_text()
    faults = [line.split(" ", 1)[1] for line in said.splitlines() if " WARNING " in line or " ERROR " in line]
    assert faults == ["WARNING demo VTN: refused a request from 127.0.0.1 to /OpenADR2/Simple/2.0b/EiRegisterParty: "
                      "the message carries a DTD (<!DOCTYPE>), which OpenADR messages never do"], said
    assert "Traceback" not in said, said


def peak_rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def test_an_answer_that_inflates_to_512_mb_is_refused_without_reading_it_whole(tmp_path, free_udp_port,
                                                                                     free_tcp_port):
    config = tmp_path / "gw.toml"
    async with DemoVtn(free_tcp_port(), poll_seconds=1) as demo, \
            FakeVtn(free_tcp_port(), mode="proxy", upstream=demo.url) as fake:
        # with the utility account in the URL: the refusal's line named the URL with its password in clear
        write_config(config, bacnet_port=free_udp_port(), vtn_port=fake.port, http_port=free_tcp_port(),
                     storage=tmp_path / "gw.sqlite", ven_name="gzip-bomb", vtn_host="ven:S3CRET@127.0.0.1")
        with GatewayProcess(config, tmp_path / "gateway.log") as gw:
            await eventually(lambda: "telemetry requested" in gw.log(), START_S, "registration")
            faults = gw.log().count("WARNING VTN")
            fake.mode = "gzip_bomb"
            await eventually(lambda: gw.log().count("WARNING VTN") > faults or not gw.alive, 20, "the answer refused")
            assert gw.alive, gw.log()
            # the gateway promises 200 MB; reading the answer whole took it to 1.2 GB
            assert peak_rss_mb(gw.proc.pid) < 200
            assert "over 16 MB (decompressed): refused" in gw.log()
            assert "ven:***@127.0.0.1" in gw.log() and "S3CRET" not in gw.log()
            fake.mode = "proxy"
            await eventually(lambda: "VTN connected again" in gw.log(), 15, "the VTN's answers taken again")


# markup as XML text: the gateway reads it as the characters < > " and must show them as text
MARKUP = "&lt;img src=x onerror=&quot;window.__xss=1&quot;&gt;&lt;script&gt;window.__xss=2&lt;/script&gt;"


async def test_markup_in_what_the_vtn_writes_is_shown_as_text_in_the_dashboard(tmp_path, free_udp_port,
                                                                               free_tcp_port):
    async with behind_raw_vtn(tmp_path, free_udp_port, free_tcp_port, "markup") as (demo, raw, gw, http_port):
        await eventually(lambda: "telemetry requested" in gw.log(), START_S, "registration")
        now = datetime.now(timezone.utc)
        levels = signal([interval(2, "PT1H", 0)])
        named = signal([interval(1, "PT1H", 0)], name=f"x-{MARKUP}", kind="level", sid=MARKUP)
        message = distribute(raw.vtn_id, [
            event(f"evt{MARKUP}", now - timedelta(minutes=5), "PT1H", [levels, named], status="active",
                  head=f"<ei:modificationReason>{MARKUP}</ei:modificationReason>")])
        raw.send(message.replace(b"http://utility.example/programs/cpp", MARKUP.encode()))
        await eventually(lambda: gw.log().count("evt<img") >= 1, 15, "the event taken")
        async with chromium_page() as page:
            # loads a network change dropped are tried again there (another test's namespace coming or going)
            await open_dashboard(page, f"http://127.0.0.1:{http_port}/")
            shown = await page.locator("#events tbody").inner_text()
            assert '<img src=x onerror="window.__xss=1">' in shown, shown
            assert await page.evaluate("window.__xss") is None
            assert await page.locator("img, script:not([src])").count() == 0
            assert page.errors == []


async def test_a_line_break_in_what_the_vtn_writes_does_not_start_a_line_in_the_log(tmp_path, free_udp_port,
                                                                                    free_tcp_port):
    forged = "2000-01-01T00:00:00Z edge-gateway stopped"
    async with behind_raw_vtn(tmp_path, free_udp_port, free_tcp_port, "log-lines") as (demo, raw, gw, _):
        await eventually(lambda: "telemetry requested" in gw.log(), START_S, "registration")
        start = datetime.now(timezone.utc) + timedelta(minutes=30)
        raw.send(distribute(raw.vtn_id, [event(f"evt&#13;&#10;{forged}", start, "PT1H",
                                               [signal([interval(1, "PT1H", 0)])])]))
        await eventually(lambda: "received: SIMPLE levels" in gw.log(), 15, "the event taken")
        lines = gw.log().splitlines()
        assert not [line for line in lines if line.startswith(forged)], gw.log()
        assert [line for line in lines if f"event evt\\r\\n{forged} received" in line], gw.log()
