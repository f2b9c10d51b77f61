"""The dashboard behind a reverse proxy that serves it under a path (https://bms.example/gateway/ ->
http://127.0.0.1:8000/): every request the page makes stays under that path, as nothing else there is the
gateway's. The proxy is a real HTTP server on loopback forwarding to the gateway's API."""
from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from browser import IN_ONE_CHROMIUM, chromium_page, one_chromium  # noqa: F401 - fixture
from test_dashboard import QUICK, open_dashboard, server  # noqa: F401 - the fixture
from test_dashboard_access import live_changes, record_live_changes
from test_http_api import SampleView

pytestmark = [pytest.mark.timeout(90), *IN_ONE_CHROMIUM]
PREFIX = "/bms/gateway/"
HEALTH_TIMEOUT_MS = 8000    # ven/web/app.js FETCH_TIMEOUT_MS


@pytest_asyncio.fixture(loop_scope="module")   # on the module's loop, as its tests are (pytestmark)
async def proxy(free_tcp_port):
    """start(upstream, hold=(), drop=set()) -> (the proxy's base URL, the paths it was asked for outside PREFIX, the
    requests held, its traffic: {"busy": requests being forwarded, "answered": Counter of paths forwarded}); a
    request for a path in `hold` (after PREFIX) is held open, never answered; one for a path in `drop` (which the
    test may change meanwhile) has its connection closed unanswered."""
    runners, outside, held, released = [], [], [], asyncio.Event()
    traffic = {"busy": 0, "answered": Counter()}

    async def start(upstream: str, hold: tuple[str, ...] = (), drop: set[str] = frozenset()):
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

        async def forward(request: web.Request) -> web.StreamResponse:
            if not request.path.startswith(PREFIX):
                outside.append(request.path_qs)
                return web.Response(status=404, text="not the gateway's")
            if request.path[len(PREFIX):] in hold:
                held.append(request.path)
                await released.wait()       # the test's end: the server's cleanup would wait a minute for it
                return web.Response(status=503, text="held")
            if request.path[len(PREFIX):] in drop:
                request.transport.close()       # as a server going away between two requests
                return web.Response(status=503, text="dropped")
            headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "accept")}
            url = upstream + "/" + request.path_qs[len(PREFIX):]
            traffic["busy"] += 1
            try:
                async with session.get(url, headers=headers, allow_redirects=False) as up:
                    body = await up.read()
                    keep = {k: v for k, v in up.headers.items()
                            if k.lower() in ("content-type", "content-disposition", "cache-control")}
            finally:
                traffic["busy"] -= 1
            traffic["answered"][request.path[len(PREFIX):]] += 1
            return web.Response(status=up.status, body=body, headers=keep)

        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", forward)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_tcp_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append((runner, session))
        return f"http://127.0.0.1:{port}", outside, held, traffic

    yield start
    released.set()
    for runner, session in runners:
        await session.close()
        await runner.cleanup()


async def test_the_dashboard_works_under_a_reverse_proxys_path(server, proxy):  # noqa: F811
    srv = await server(SampleView(), token="s3cret")
    base, outside, _, _ = await proxy(srv.url)
    async with chromium_page() as page:
        await open_dashboard(page, base + PREFIX + "?hours=6#token=s3cret", timeout=20000)
        assert await page.locator('svg path[data-series="power_kw"]').get_attribute("data-points") not in (None, "0")
        assert await page.locator("#download-csv").evaluate("a => a.href") == \
            base + PREFIX + "api/history.csv?hours=6"
        async with page.expect_download(timeout=10000) as info:
            await page.click("#download-csv")
        assert (await info.value).suggested_filename.endswith("-6h.csv")
        # /healthz answers 503 while the event loop lags, and here the proxy, the API and the test share one loop:
        # on a loaded machine that is the page's only console line, and it is not the proxy's doing
        assert [e for e in page.errors if "status of 503" not in e] == [] and page.offsite == []
    assert outside == []


async def test_a_health_check_held_open_is_said_and_the_page_goes_on(server, proxy):  # noqa: F811
    # the page's /healthz had no time limit: held open by a proxy, every refresh waited on it, so the page never
    # drew and, once drawn, kept its last answer on screen as current
    srv = await server(SampleView())
    base, _, held, traffic = await proxy(srv.url, hold=("healthz",))
    # each refresh waits out the held /healthz's 8 s: the next one starts at once after it. The page's clock jumps
    # those 8 s once the proxy holds each one (its time limit is set before the request goes): 16 s of the test's
    # 18 s were waiting for them, and what the page does when they are up is the same
    async with chromium_page(speedup=QUICK) as page:
        await page.clock.install()

        async def time_out_each_held() -> None:
            # every one, not the first two: a load open_dashboard makes again (a network change) asks again. Each
            # once its refresh's status is answered and nothing else is on its way: the jump fires every timer, and
            # on a loaded machine it timed out a status still on its way ("gateway not answering")
            jumped = 0
            while True:
                if len(held) > jumped and traffic["answered"]["api/status"] >= len(held) and not traffic["busy"]:
                    jumped = len(held)
                    await page.clock.fast_forward(HEALTH_TIMEOUT_MS)
                await asyncio.sleep(0.05)

        jumping = asyncio.create_task(time_out_each_held())
        try:
            await open_dashboard(page, base + PREFIX + "?refresh=1", timeout=30000)
            pill = page.locator("#pills .pill.bad").first
            assert (await pill.inner_text()).strip() == "unhealthy: no answer within 8 s"
            first = await page.evaluate("window.dashboard.lastOk")
            await page.wait_for_function(f"window.dashboard.lastOk > {first}", timeout=30000)   # and it goes on
        finally:
            jumping.cancel()
        assert await page.evaluate("window.dashboard.stale") is False


async def test_a_health_check_the_connection_fails_for_is_the_gateway_unreachable_not_unhealthy(server, proxy):  # noqa: F811
    # A gateway stopping answered the page's status and was gone for its /healthz: the page read that as "unhealthy",
    # and a screen reader heard "Needs attention: Gateway unhealthy" before "Gateway unreachable", of a gateway
    # that never said it was unhealthy. The refresh fails, as one whose status went unanswered does.
    srv = await server(SampleView())
    drop: set[str] = set()
    base, _, _, _ = await proxy(srv.url, drop=drop)
    async with chromium_page(speedup=QUICK) as page:
        await open_dashboard(page, base + PREFIX + "?refresh=1", timeout=20000)
        await record_live_changes(page)
        drop.add("healthz")
        await page.wait_for_function("window.dashboard.stale", timeout=10000)
        assert "gateway unreachable" in await page.locator("#banner").inner_text()
        said = await live_changes(page)
        assert said and not any("unhealthy" in s for s in said), said
        drop.clear()
        await page.wait_for_function("!window.dashboard.stale", timeout=10000)
