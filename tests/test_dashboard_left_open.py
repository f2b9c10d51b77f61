"""The dashboard left open for days on a wall screen or a laptop, in headless Chromium: the gateway going away
and coming back while it is open, holding its answers, upgraded meanwhile, and the screen's own clock minutes
off the gateway's."""
from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from pathlib import Path

import pytest

from browser import IN_ONE_CHROMIUM, chromium_page, errors_but_gateway_away, one_chromium  # noqa: F401 - fixture
from test_dashboard import QUICK, loaded_again, open_dashboard
from waiting import eventually
from test_http_api import SampleView, _iso
from ven.http_api import HttpServer
from ven.metrics import Metrics

pytestmark = [pytest.mark.timeout(90), *IN_ONE_CHROMIUM]

AGES = "Array.from(document.querySelectorAll('#tiles .age')).map((n) => n.textContent)"


class ReadingView(SampleView):
    """SampleView with the gateway's clock and the tiles' ages as the gateway gives them: a reading a few
    seconds old at each answer, the BAS's input too."""

    version = "0.1.0"

    def status(self):
        body = super().status()
        now = time.time()
        body["version"] = self.version
        body["now"] = _iso(now)
        body["meter"].update({"last_value_kw": 96.4, "last_value_at": _iso(now - 3)})
        body["forecaster"].update({"last_input_at": now - 4, "input_stale_seconds": 300})
        return body


@contextlib.asynccontextmanager
async def serving(view, port):
    srv = HttpServer(view, Metrics(), f"127.0.0.1:{port}", "", loop_lag_limit=30)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


def seconds_ago(text):
    """'read 12 s ago' -> 12; anything else (minutes, 'in 3 min') -> None."""
    words = text.split()
    return int(words[-3]) if words[-2:] == ["s", "ago"] else None


async def test_tile_ages_keep_counting_while_the_gateway_is_away_and_the_page_comes_back_by_itself(free_tcp_port):
    # the tiles said "read 3 s ago" all through a gateway restart, under a banner saying the data was old
    port = free_tcp_port()
    view = ReadingView()
    async with chromium_page(speedup=QUICK) as page:
        async with serving(view, port):
            await open_dashboard(page, f"http://127.0.0.1:{port}/?refresh=1&hours=6")
            ages = await page.evaluate(AGES)
            assert len(ages) == 2 and all(seconds_ago(a) is not None and seconds_ago(a) < 15 for a in ages), ages
        # stopped: within a refresh or two the page says so, and the ages go on counting
        await page.wait_for_function("window.dashboard.stale", timeout=10000)
        first = [seconds_ago(a) for a in await page.evaluate(AGES)]

        async def counted_on():
            later = [seconds_ago(a) for a in await page.evaluate(AGES)]
            return all(b is not None and b >= a + 3 for a, b in zip(first, later))
        await eventually(counted_on, 10, "the ages counting on")
        banner = await page.locator("#banner").inner_text()
        assert "gateway unreachable (since" in banner and "Showing data from" in banner, banner
        assert "gateway unreachable" in await page.locator("#pills .pill.why").inner_text()
        # back on the same address: no reload needed, fresh ages, nothing marked stale
        async with serving(view, port):
            await page.wait_for_function("!window.dashboard.stale", timeout=10000)
            assert await page.locator("#banner").is_hidden()
            ages = await page.evaluate(AGES)
            assert all(seconds_ago(a) is not None and seconds_ago(a) < 15 for a in ages), ages
    assert errors_but_gateway_away(page) == []


@pytest.mark.parametrize("off_s, words", [(180, "3 min ahead of"), (-180, "3 min behind")])
async def test_a_browser_clock_minutes_off_the_gateways_reads_ages_by_the_gateways(free_tcp_port, off_s, words):
    # a kiosk PC without NTP, 3 minutes ahead: a reading taken just now read "3 min ago" (behind: "in 3 min"), and
    # the BAS's input, written seconds ago, would turn "old" at 5 minutes off
    port = free_tcp_port()
    async with serving(ReadingView(), port):
        async with chromium_page() as page:
            await page.clock.install(time=time.time() + off_s)
            await open_dashboard(page, f"http://127.0.0.1:{port}/?refresh=1&hours=6")
            await page.wait_for_function("window.dashboard.draws >= 1", timeout=10000)
            ages = await page.evaluate(AGES)
            assert len(ages) == 2 and all(seconds_ago(a) is not None and seconds_ago(a) < 15 for a in ages), ages
            assert await page.locator("#tiles .age.old").count() == 0
            # (waited for: a refresh dropped by a network change on the machine says "last update" meanwhile)
            await page.wait_for_function("(words) => document.querySelector('#updated').textContent.includes("
                                         "`this browser's clock is ${words} the gateway's`)", arg=words, timeout=10000)
            assert page.errors == []


# The view served by a process of its own, which SIGSTOP holds and SIGCONT lets go. A server stopped and another,
# holding, started on the port in its place left a moment with none: under load a refresh fell in it, was refused,
# and the page said "gateway unreachable" instead of the time-out this is about.
SERVE = """
import asyncio, sys
sys.path.insert(0, sys.argv[2])
from test_dashboard_left_open import ReadingView, serving

async def main():
    async with serving(ReadingView(), int(sys.argv[1])):
        print("serving", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)   # until the test closes it

asyncio.run(main())
"""


@contextlib.asynccontextmanager
async def serving_process(port):
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", SERVE, str(port), str(Path(__file__).parent),
                                                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(30):
            assert await proc.stdout.readline() == b"serving\n"
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
        proc.stdin.close()
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_a_gateway_holding_its_answers_gets_one_refresh_at_a_time(free_tcp_port):
    # at ?refresh=1 each tick started another refresh while the last waited out its 8 s: 24 requests in flight,
    # every one of them landing on the gateway as it came back
    port = free_tcp_port()
    # its ticks five times as often: the refreshes held at once would be more, not fewer, without the one at a time
    async with serving_process(port) as gateway, chromium_page(speedup=QUICK) as page:
        await open_dashboard(page, f"http://127.0.0.1:{port}/?refresh=1")
        started = []
        page.on("request", lambda r: started.append(r.url))
        # held, as a gateway stopped with SIGSTOP, swapping, or its disk stalled: its kernel takes the connections
        # and the requests, nothing answers
        gateway.send_signal(signal.SIGSTOP)
        # what the page asked before the stop may have been answered: a loaded machine's page made a good refresh or
        # two between the listener and the stop (9 requests seen, CI of f6e1fb0)
        before = len(started)
        await page.wait_for_function("window.dashboard.stale", timeout=15000)   # the first timed out at 8 s
        said = await page.locator("#banner").inner_text()
        assert "no answer within 8 s" in said, said
        # one refresh's status, history and /healthz by the time out, then the next refresh's. The log is asked after
        # a good answer only: one seen here is the last good refresh's, which a loaded machine sent this late
        asked = [url for url in started[before:] if "/api/log" not in url]
        assert len(asked) <= 6, started
        gateway.send_signal(signal.SIGCONT)
        await page.wait_for_function("!window.dashboard.stale", timeout=15000)
    assert errors_but_gateway_away(page) == []


async def test_a_gateway_upgraded_while_the_page_is_open_gets_its_own_page(free_tcp_port):
    # a wall screen open across an upgrade kept the old scripts for weeks, blind to what the new version says,
    # its footer naming the new version all the same
    port = free_tcp_port()
    view = ReadingView()
    async with serving(view, port), chromium_page(speedup=QUICK) as page:
        await open_dashboard(page, f"http://127.0.0.1:{port}/?refresh=1&hours=6")
        await page.evaluate("window.loadedBefore = true")
        view.version = "0.2.0"
        await loaded_again(page)
        assert "version 0.2.0" in await page.locator("#footer").inner_text()
        assert page.url.endswith("/?refresh=1&hours=6")   # the operator's choices kept
        # not again and again: a second version within 10 minutes is shown without a reload
        await page.evaluate("window.loadedBefore = true")
        view.version = "0.3.0"
        await page.wait_for_function("document.querySelector('#footer').textContent.includes('version 0.3.0')",
                                     timeout=10000)
        assert await page.evaluate("window.loadedBefore === true")
        assert page.errors == []


async def test_a_gateway_serving_another_page_of_the_same_version_gets_it_loaded(free_tcp_port):
    # an install from a newer commit is 0.1.0 as the last was: a wall screen kept the old page's scripts
    port = free_tcp_port()
    view = ReadingView()
    async with serving(view, port) as srv, chromium_page(speedup=QUICK) as page:
        answers = []
        page.on("response", lambda r: answers.append(r.url) if "/api/status" in r.url else None)
        await open_dashboard(page, f"http://127.0.0.1:{port}/?refresh=1")
        await page.evaluate("window.loadedBefore = true")
        first = len(answers)
        await eventually(lambda: len(answers) >= first + 3, 10, "three more answers of the same gateway")
        assert await page.evaluate("window.loadedBefore === true"), "reloaded for answers of the same gateway"
        srv.page = "0123456789abcdef"   # as a gateway restarted on other dashboard files gives it
        await loaded_again(page)
        assert "version 0.1.0" in await page.locator("#footer").inner_text()
        assert page.errors == []


class BusyView(ReadingView):
    """A gateway that starts on the status seconds after it was asked (its loop busy with a fit, a stalled disk)."""

    # past the page's 3 s bound on a round trip it takes the gateway's clock from (ven/web/app.js
    # SKEW_ROUND_TRIP_MS) whatever the load, under the page's 8 s limit on a request, and enough to put the ages
    # 5.5 s off: 8.5 and 9.5 s, past the 7 s the test allows (3 and 4 s old when made, read up to 3 s later on a
    # loaded box: CI at load 24 read them at 5 and 6 s)
    delay = 5.5

    async def status(self):
        await asyncio.sleep(self.delay)
        return super().status()


async def test_an_answer_made_seconds_after_the_question_does_not_set_the_pages_clock(free_tcp_port):
    # the clock difference was taken from any answer: one made 5.5 s after the question put every age 5.5 s off
    port = free_tcp_port()
    async with serving(BusyView(), port), chromium_page() as page:
        await open_dashboard(page, f"http://127.0.0.1:{port}/?refresh=60")
        ages = [seconds_ago(a) for a in await page.evaluate(AGES)]
        assert len(ages) == 2 and all(a is not None and a <= 7 for a in ages), ages    # 3 s and 4 s old when made
        assert page.errors == []
