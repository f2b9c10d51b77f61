"""The chart is fetched and drawn again only when what it shows changed: an open page asks for /api/history at each
refresh with the ETag of the one it holds, and the gateway answers 304 while nothing in it but its "now" changed.
A reading in the minute in progress, a new minute, an event and the span chosen draw it again; the tiles, pills and
problem list still follow every refresh; the now line goes on through the minute by the gateway's clock."""
from __future__ import annotations

import pytest

from browser import IN_ONE_CHROMIUM, chromium_page, one_chromium  # noqa: F401 - fixture
from test_dashboard import QUICK, open_dashboard, server  # noqa: F401 - shared fixture
from test_dashboard_ahead import AheadView, power_xs
from test_dashboard_span import choose
from test_http_api import SampleView

pytestmark = [pytest.mark.timeout(90), *IN_ONE_CHROMIUM]


class LiveView(SampleView):
    """The sample as a gateway gives it: each history made "now" (the sample's clock), which alone changes between
    two answers until a reading, a minute or an event comes."""

    def history(self, hours):
        return {**super().history(hours), "now": self.clock()}

    def next_minute(self, kw):
        """A minute on: the oldest goes, the new one has a reading of `kw`."""
        self.minutes = self.minutes[1:] + [self.minutes[-1] + 60]
        for key in ("power", "demand", "forecast_15", "forecast_60", "high_load", "low_load"):
            values = getattr(self, key)
            setattr(self, key, values[1:] + [kw if key in ("power", "demand") else values[-1]])


def watch_history(page):
    """The status of each /api/history answer the page gets, in order."""
    got = []
    page.on("response", lambda resp: got.append(resp.status) if "/api/history?" in resp.url else None)
    return got


async def refreshes(page, count=3):
    """Wait for `count` more answers taken (each asked after the call: the first may have been on its way)."""
    done = await page.evaluate("window.dashboard.refreshes")
    await page.wait_for_function(f"window.dashboard.refreshes >= {done + count + 1}", timeout=10000)


async def draws(page):
    return await page.evaluate("window.dashboard.draws")


async def test_the_chart_is_drawn_again_only_when_what_it_shows_changed(server):
    view = LiveView(hours=6)
    srv = await server(view)
    async with chromium_page(speedup=QUICK) as page:
        got = watch_history(page)
        await open_dashboard(page, srv.url + "/?refresh=1&hours=6")
        drawn = await draws(page)
        # refresh after refresh with nothing new: the history is asked for, answered 304, and not drawn again
        await refreshes(page)
        assert await draws(page) == drawn
        assert got[0] == 200 and set(got[1:]) == {304}, got
        # ... while the header follows each answer still
        view.healthy = (False, "meter not answering")
        await page.wait_for_function("document.querySelector('#pills').innerText.includes('meter not answering')",
                                     timeout=10000)
        assert await draws(page) == drawn

        # a reading in the minute in progress: drawn again, with it
        line = await page.locator('path[data-series="power_kw"]').get_attribute("d")
        asked = len(got)
        view.power[-1] = 250.0
        await page.wait_for_function(f"window.dashboard.draws > {drawn}", timeout=10000)
        assert await page.locator('path[data-series="power_kw"]').get_attribute("d") != line
        assert 200 in got[asked:], got[asked:]
        await refreshes(page)
        drawn = await draws(page)
        await refreshes(page)
        assert await draws(page) == drawn

        # a new minute
        label = await page.locator("#chart-svg").get_attribute("aria-label")
        view.next_minute(42.0)
        await page.wait_for_function(f"window.dashboard.draws > {drawn}", timeout=10000)
        assert await page.evaluate("window.dashboard.minutes") == 360
        now_label = await page.locator("#chart-svg").get_attribute("aria-label")
        assert "power 42 kW" in now_label and now_label != label, now_label

        # an event
        drawn = await draws(page)
        view.events.append({"event_id": "evt-new", "start": view.minutes[-30], "end": view.minutes[-10],
                            "level": 3, "opt": "optIn"})
        await page.wait_for_function(f"window.dashboard.draws > {drawn} && window.dashboard.events === 3",
                                     timeout=10000)

        # the span chosen: drawn at once from the history of the new span, which is then kept as the day's was
        drawn = await draws(page)
        await choose(page, "1 h")
        await page.wait_for_function(f"window.dashboard.draws > {drawn} && window.dashboard.minutes === 60",
                                     timeout=10000)
        await refreshes(page)
        drawn = await draws(page)
        asked = len(got)
        await refreshes(page)
        assert await draws(page) == drawn
        assert set(got[asked:]) == {304}, got[asked:]
        # (an unhealthy /healthz answers 503, which Chromium logs)
        assert [e for e in page.errors if "503 (Service Unavailable)" not in e] == []


class MovingAheadView(AheadView):
    """The sample's forecasts ahead (so a now line), its status and history made at the sample's clock, which stands
    `into` s into its last minute until the test moves it (a clock running on would move the line by itself)."""

    def __init__(self):
        super().__init__(hours=6)
        self.into = 5.0

    def clock(self):
        return self.minutes[-1] + self.into

    def history(self, hours):
        self.now = self.clock()
        return super().history(hours)


async def test_the_now_line_goes_on_through_the_minute_without_a_draw(server):
    view = MovingAheadView()
    srv = await server(view)
    async with chromium_page(speedup=QUICK) as page:
        await open_dashboard(page, srv.url + "/?refresh=1&hours=1")
        x0 = float(await page.locator("svg line.now-line").get_attribute("x1"))
        drawn = await draws(page)
        # 45 s on, within the same minute: nothing in the history changed but its "now"
        view.into = 50.0
        xs = await power_xs(page)
        minute = xs[-1] - xs[-2]
        await page.wait_for_function(f"Number(document.querySelector('svg line.now-line').getAttribute('x1')) > "
                                     f"{x0 + minute / 2}", timeout=10000)
        x1 = float(await page.locator("svg line.now-line").get_attribute("x1"))
        assert abs(x1 - (x0 + minute * 45 / 60)) < minute / 10, (x0, x1, minute)
        assert float(await page.locator("svg text.now-label").get_attribute("x")) == pytest.approx(x1 + 3)
        assert await draws(page) == drawn
        assert page.errors == []


# the chart's width read once from a getter that throws the first time, as a draw cut short by anything would be
THROW_ONCE = """() => {
  const width = Object.getOwnPropertyDescriptor(Element.prototype, "clientWidth");
  let thrown = false;
  Object.defineProperty(Element.prototype, "clientWidth", {configurable: true, get() {
    if (!thrown && this.id === "chart-svg") { thrown = true; throw new Error("draw cut short"); }
    return width.get.call(this);
  }});
}"""


async def test_a_draw_cut_short_is_tried_again_at_the_next_refresh(server):
    # the inputs of a draw that threw were once kept as drawn, so the page stayed undrawn until the history changed
    srv = await server(LiveView(hours=6))
    async with chromium_page(speedup=QUICK) as page:
        await page.add_init_script(f"({THROW_ONCE})()")
        await open_dashboard(page, srv.url + "/?refresh=1&hours=6", timeout=10000)
        assert await page.evaluate("window.dashboard.minutes") == 360
        assert await page.locator('path[data-series="power_kw"]').count() == 1
