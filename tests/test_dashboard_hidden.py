"""The dashboard in a tab the operator comes back to. A hidden tab's timers run once a minute at most (Chrome's
intensive throttling), so without asking at once the page showed a minute-old state as current. Headless
Chromium never hides a page, so the test sends the page the visibilitychange the browser would, with the
state it would report."""
from __future__ import annotations

import asyncio
import time

import pytest

from browser import IN_ONE_CHROMIUM, chromium_page, one_chromium  # noqa: F401 - fixture
from test_dashboard import FreshView, open_dashboard, server  # noqa: F401 - shared fixture

pytestmark = [pytest.mark.timeout(90), *IN_ONE_CHROMIUM]

SET_VISIBILITY = """(state) => {
  Object.defineProperty(document, "visibilityState", {configurable: true, get: () => state});
  Object.defineProperty(document, "hidden", {configurable: true, get: () => state === "hidden"});
  document.dispatchEvent(new Event("visibilitychange"));
}"""


async def test_a_tab_shown_again_asks_the_gateway_at_once(server):
    srv = await server(FreshView())
    async with chromium_page() as page:
        asked = []
        page.on("request", lambda req: asked.append(time.monotonic()) if "/api/status" in req.url else None)
        # an hour between ticks: only the page's own reaction to being shown can ask again within the test
        await open_dashboard(page, srv.url + "/?refresh=3600")
        await asyncio.sleep(0.5)    # the first draw's request is counted, nothing after it is in flight
        first = len(asked)
        assert first >= 1
        await page.evaluate(SET_VISIBILITY, "hidden")
        await asyncio.sleep(1.0)
        assert len(asked) == first, "hiding the tab is no reason to ask"
        await page.evaluate(SET_VISIBILITY, "visible")
        deadline = time.monotonic() + 10
        while len(asked) == first and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(asked) == first + 1, "shown again, the page asks for the gateway's state at once"
        await page.wait_for_function("() => !document.body.classList.contains('stale')", timeout=10000)
        assert page.errors == []
