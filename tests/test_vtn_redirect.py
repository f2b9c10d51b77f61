"""A VTN URL answering a redirect: the VEN polled whatever host the Location named (aiohttp follows redirects by
default), took that host's events as the VTN's and ran them, without a word in the log. Now it is a VTN fault, said
once, naming where the redirect pointed, and nothing is sent there."""
from __future__ import annotations

import logging
from datetime import timedelta

import aiohttp
import pytest
from aiohttp import web
from raw_vtn import distribute, event, interval, signal
from test_vtn import now, running
from waiting import eventually

from ven.vtn_server import DemoVtn

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("status, bad", [(302, False), (307, False), (307, True)])
async def test_a_redirect_from_the_vtn_is_not_followed_and_is_one_fault(tmp_path, free_tcp_port, caplog, status, bad):
    # bad: a Location urllib cannot read ("http://[bad"): a ValueError had the VEN register again every second
    caplog.set_level(logging.INFO, logger="ven")
    front_port, other_port = free_tcp_port(), free_tcp_port()
    elsewhere = []
    redirecting = [True]
    async with DemoVtn(free_tcp_port(), poll_seconds=0.5) as upstream, aiohttp.ClientSession() as http:
        body = distribute(upstream.vtn_id, [event("redirected-evt", now() + timedelta(hours=2), "PT1H",
                                                  [signal([interval(2, "PT1H", 0)])])])

        async def other_host(request: web.Request) -> web.Response:
            elsewhere.append((str(request.url), request.headers.get("Authorization")))
            return web.Response(body=body, content_type="application/xml")

        async def front(request: web.Request) -> web.Response:
            # the VTN: registration and reports go through; its polls answer with a redirect while `redirecting`
            service = request.match_info["service"]
            if service == "OadrPoll" and redirecting[0]:
                return web.Response(status=status, text="moved", headers={"Location": location})
            async with http.post(f"{upstream.url}/{service}", data=await request.read(),
                                 headers={"Content-Type": request.content_type}) as answer:
                return web.Response(body=await answer.read(), status=answer.status,
                                    content_type=answer.content_type)

        location = "http://[bad/elsewhere/OadrPoll" if bad else f"http://127.0.0.1:{other_port}/elsewhere/OadrPoll"
        runners = []
        for port, handler, route in ((front_port, front, "/OpenADR2/Simple/2.0b/{service}"),
                                     (other_port, other_host, "/{tail:.*}")):
            app = web.Application()
            app.router.add_route("*", route, handler)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            runners.append(runner)
        try:
            url = f"http://gw:secret@127.0.0.1:{front_port}/OpenADR2/Simple/2.0b"
            async with running(tmp_path, url) as gw:
                said = f"HTTP {status} from http://gw:***@127.0.0.1:{front_port}/OpenADR2/Simple/2.0b/OadrPoll: " \
                       f"redirected to {repr(location) if bad else location}, not followed"
                await eventually(lambda: said in caplog.text, 20, "the redirect in the log")
                redirecting[0] = False       # the VTN answers its polls again: the fault ends
                mark = len(caplog.records)
                await eventually(lambda: any("VTN connected again after" in r.getMessage()
                                             for r in caplog.records[mark:]), 20, "the fault's end")
                assert gw.schedule.get("redirected-evt") is None
        finally:
            for runner in runners:
                await runner.cleanup()
    assert elsewhere == []
    assert caplog.text.count("redirected to") == 1, caplog.text
