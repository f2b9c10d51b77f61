"""The chart's span, chosen on the page: the choice redraws at once from /api/history for that span, stays
in the address (a reload and a shared link keep it), the CSV link follows it, an ?hours= of its own is
shown as chosen, a long span is drawn by pixel column without losing its peak, and its history is asked
for at most once a minute while the status keeps its refresh."""
from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest

from browser import IN_ONE_CHROMIUM, one_chromium  # noqa: F401 - fixture
from test_dashboard import QUICK, drawn, get_json, reload_dashboard, server  # noqa: F401 - shared fixture
from test_dashboard_chart_keys import assert_reads, readout, tab_to_chart
from test_http_api import SampleView

pytestmark = [pytest.mark.timeout(90), *IN_ONE_CHROMIUM]

SPANS = ["1 h", "6 h", "24 h", "7 days", "35 days"]


class CountingView(SampleView):
    """The sample's load over `hours`, counting the spans /api/history is asked for."""

    def __init__(self, hours):
        super().__init__(hours=hours)
        self.asked = []

    def history(self, hours):
        self.asked.append(hours)
        return super().history(hours)


async def choose(page, label):
    # by its visible label, as a screen reader names it
    await page.get_by_label("Span").select_option(label=label, timeout=5000)


async def test_choosing_a_span_redraws_at_once_and_keeps_it(server):
    view = CountingView(hours=170)
    # the refresh is 10 minutes away: only the choice can redraw the chart
    async with drawn(server, view, "?refresh=600&lang=en#here") as (page, _):
        assert await page.locator("#chart-span option").all_inner_texts() == SPANS
        assert await page.get_by_label("Span").input_value() == "24"
        await choose(page, "7 days")
        await page.wait_for_function("window.dashboard.minutes === 10080", timeout=10000)
        assert view.asked[-1] == 168
        url = urlsplit(page.url)
        assert parse_qs(url.query) == {"refresh": ["600"], "lang": ["en"], "hours": ["168"]} and url.fragment == "here"
        assert await page.locator("#download-csv").get_attribute("href") == "api/history.csv?hours=168"
        assert await page.locator("#chart-title").inner_text() == "Power and demand, last 7 days"
        assert (await page.locator("#chart-svg").get_attribute("aria-label")).startswith("Power and demand, last 7 days,")
        assert "chart: last 7 days" in await page.locator("#footer").inner_text()
        # the keys read the week drawn, from its first minute
        week = await get_json(page.url.split("?")[0] + "api/history?hours=168")
        await tab_to_chart(page)
        await page.keyboard.press("Home")
        assert_reads(await readout(page), week, 0)
        await page.keyboard.press("End")
        assert_reads(await readout(page), week, len(week["minutes"]) - 1)

        await reload_dashboard(page)
        assert await page.get_by_label("Span").input_value() == "168"
        assert await page.evaluate("window.dashboard.minutes") == 10080
        assert await page.locator("#download-csv").get_attribute("href") == "api/history.csv?hours=168"
        assert page.errors == []


async def test_an_hours_of_its_own_shows_as_chosen(server):
    async with drawn(server, CountingView(hours=48), "?hours=48") as (page, _):
        assert await page.locator("#chart-span option").all_inner_texts() == ["1 h", "6 h", "24 h", "48 h", "7 days",
                                                                             "35 days"]
        assert await page.get_by_label("Span").input_value() == "48"
        assert await page.evaluate("window.dashboard.minutes") == 2880
        assert await page.locator("#download-csv").get_attribute("href") == "api/history.csv?hours=48"
        await choose(page, "6 h")
        await page.wait_for_function("window.dashboard.minutes === 360", timeout=10000)
        assert parse_qs(urlsplit(page.url).query) == {"hours": ["6"]}
        assert page.errors == []


async def test_a_long_span_keeps_its_peak_and_its_dip(server):
    view = CountingView(hours=840)
    n = len(view.minutes)
    # one minute each, inside a pixel column: taking every nth minute would most likely drop both
    peak, dip = n // 2 + 17, n // 3 + 29
    view.power[peak], view.power[dip] = 400.0, 1.0
    async with drawn(server, view, "?refresh=600") as (page, _):
        await choose(page, "35 days")
        await page.wait_for_function(f"window.dashboard.minutes === {n}", timeout=20000)
        power = page.locator('svg path[data-series="power_kw"]')
        values = int(await power.get_attribute("data-points"))
        assert values == n - 20   # the 20-minute outage
        # drawn by pixel column: a few thousand points, not 50,400
        assert int(await power.get_attribute("data-drawn")) < values / 10
        xy = [(float(a), float(b)) for a, b in re.findall(r"[ML](-?[\d.]+),(-?[\d.]+)", await power.get_attribute("d"))]
        # the kW scale from the two threshold lines (105 and 65 kW), the time scale from the plot's edges
        high = float(await page.locator('line[data-threshold="high_threshold_kw"]').get_attribute("y1"))
        low = float(await page.locator('line[data-threshold="low_threshold_kw"]').get_attribute("y1"))
        y_of = lambda kw: low + (kw - 65) * (high - low) / (105 - 65)  # noqa: E731
        plot = page.locator("svg clipPath rect")
        left, width = float(await plot.get_attribute("x")), float(await plot.get_attribute("width"))
        x_of = lambda i: left + (i + 0.5) / n * width  # noqa: E731
        top, bottom = min(xy, key=lambda p: p[1]), max(xy, key=lambda p: p[1])
        assert abs(top[1] - y_of(400)) <= 0.11 and abs(top[0] - x_of(peak)) <= 0.11, (top, x_of(peak), y_of(400))
        assert abs(bottom[1] - y_of(1)) <= 0.11 and abs(bottom[0] - x_of(dip)) <= 0.11, (bottom, x_of(dip), y_of(1))
        # the outage is still a break in the line
        assert (await power.get_attribute("d")).count("M") == 2
        # the label names the span's demand peak with its day
        label = await page.locator("#chart-svg").get_attribute("aria-label")
        assert re.search(r"demand peak [\d.]+ kW at \d{4}-\d\d-\d\d \d\d:\d\d", label), label
        assert page.errors == []


async def test_a_long_span_asks_for_its_history_once_a_minute(server):
    view = CountingView(hours=170)
    async with drawn(server, view, "?refresh=1&hours=168", speedup=QUICK) as (page, _):
        asked = len(view.asked)
        draws = await page.evaluate("window.dashboard.draws")
        # three refreshes of the status: the week's 10,080 minutes are not asked for (nor
        # drawn) again
        for _ in range(3):
            ok = await page.evaluate("window.dashboard.lastOk")
            await page.wait_for_function(f"window.dashboard.lastOk > {ok}", timeout=10000)
        assert len(view.asked) == asked
        assert await page.evaluate("window.dashboard.draws") == draws
        assert "the chart every 60 s" in await page.locator("#updated").inner_text()
        # a day is asked for at each refresh, as before (answered 304 while nothing in it changed)
        await choose(page, "24 h")
        await page.wait_for_function("window.dashboard.minutes === 1440", timeout=10000)
        done = await page.evaluate("window.dashboard.refreshes")
        await page.wait_for_function(f"window.dashboard.refreshes >= {done + 2}", timeout=10000)
        assert view.asked[-3:] == [24, 24, 24]
        assert "the chart every" not in await page.locator("#updated").inner_text()
        assert page.errors == []
