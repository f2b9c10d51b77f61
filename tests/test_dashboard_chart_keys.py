"""The chart's readout without a mouse: Tab reaches the chart and its focus is seen, the keys step the
readout through the minutes of /api/history, a screen reader hears each step once in the same words the
mouse's readout shows, and the refresh leaves the readout at its minute (by time: the minutes slide)."""
from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest

from browser import IN_ONE_CHROMIUM, one_chromium  # noqa: F401 - fixture
from test_dashboard import QUICK, drawn, get_json, server  # noqa: F401 - shared fixture
from test_dashboard_access import live_changes, record_live_changes
from test_http_api import SampleView

pytestmark = [pytest.mark.timeout(90), *IN_ONE_CHROMIUM]

SERIES = {"power_kw": "Power (1 min)", "demand_kw": "Demand (15 min)", "forecast_15": "Forecast 15 min ahead",
          "forecast_60": "Forecast 60 min ahead"}
FLAGS = {"high_load": "high load", "low_load": "low load"}


class SlidingView(SampleView):
    """The sample's last day but an hour; the test slides the window on, as the clock does."""

    def __init__(self):
        super().__init__(hours=25)
        self.end = len(self.minutes) - 60

    def history(self, hours):
        window = slice(self.end - int(hours * 60), self.end)
        return {k: v[window] if isinstance(v, list) and k != "events" else v
                for k, v in super().history(25).items()}


def assert_reads(text, history, i):
    """The readout's words are minute i of `history`: its UTC time, each series' value, its flags."""
    lines = text.split("\n")
    assert lines[0] == datetime.fromtimestamp(history["minutes"][i], timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    said = dict(re.fullmatch(r"(.+): (.+) kW", line).groups() for line in lines[1:1 + len(SERIES)])
    for key, label in SERIES.items():
        v = history[key][i]
        assert said[label] == "—" if v is None else abs(float(said[label]) - v) <= 0.05, (label, said, v)
    flags = [label for key, label in FLAGS.items() if history[key][i] is True]
    assert lines[1 + len(SERIES):] == ([f"flags: {', '.join(flags)}"] if flags else [])


async def readout(page):
    if await page.locator("#tooltip").is_hidden():
        return None
    return await page.locator("#tooltip").evaluate("t => t.textContent")


async def said(page):
    """What the live regions said since the last call (each press is said at once, in its handler)."""
    await page.wait_for_function("window.liveChanges.length > 0", timeout=5000)
    return await live_changes(page)


async def history_now(page):
    return await get_json(page.url.split("?")[0] + "api/history?hours=24")


def contrast(a, b):
    def lum(css):
        rgb = [float(v) / 255 for v in re.findall(r"[\d.]+", css)[:3]]
        return sum(w * (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4)
                   for w, c in zip((0.2126, 0.7152, 0.0722), rgb))
    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


async def tab_to_chart(page):
    for _ in range(12):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.id") == "chart-svg":
            return
    pytest.fail("Tab never reaches the chart")


async def test_the_keys_step_the_readout_and_each_step_is_said_once(server):
    async with drawn(server, SlidingView()) as (page, history):
        await record_live_changes(page)
        await tab_to_chart(page)
        style, width, color, card = await page.evaluate("""() => {
            const s = getComputedStyle(document.querySelector('#chart-svg'));
            return [s.outlineStyle, parseFloat(s.outlineWidth), s.outlineColor,
                    getComputedStyle(document.querySelector('#chart').closest('.card')).backgroundColor]; }""")
        assert style != "none" and width >= 2 and contrast(color, card) >= 3, (style, width, color, card)
        assert "arrows" in await page.locator("#chart-svg").get_attribute("aria-label")
        # the focus shows where the keys start, and says only the chart's label
        last = len(history["minutes"]) - 1
        assert_reads(await readout(page), history, last)
        assert await page.evaluate("window.liveChanges") == []

        for key, i in (("End", last), ("ArrowLeft", last - 1), ("ArrowLeft", last - 2), ("Shift+ArrowLeft", last - 62),
                       ("PageDown", last - 122), ("PageUp", last - 62), ("Shift+ArrowRight", last - 2),
                       ("ArrowRight", last - 1), ("Home", 0), ("ArrowLeft", 0), ("PageDown", 0), ("End", last)):
            await page.keyboard.press(key)
            text = await readout(page)
            assert_reads(text, history, i)
            assert await said(page) == [text], key
        # at the right edge the readout stays inside the chart
        tip, chart = await page.locator("#tooltip").bounding_box(), await page.locator("#chart").bounding_box()
        assert chart["x"] <= tip["x"] and tip["x"] + tip["width"] <= chart["x"] + chart["width"], (tip, chart)

        await page.keyboard.press("Escape")
        assert await readout(page) is None
        # the mouse reads the same words for the same minute (a pixel is about a minute: it says which)
        plot = await page.locator("svg clipPath rect").bounding_box()
        await page.mouse.move(plot["x"] + (last - 1.5) / (last + 1) * plot["width"], plot["y"] + plot["height"] / 2)
        text = await readout(page)
        i = history["minutes"].index(int(datetime.strptime(text.split("\n")[0], "%Y-%m-%d %H:%M UTC")
                                         .replace(tzinfo=timezone.utc).timestamp()))
        assert_reads(text, history, i)
        assert abs(i - (last - 2)) <= 2
        await page.keyboard.press("End")
        for _ in range(last - i):
            await page.keyboard.press("ArrowLeft")
        await page.mouse.move(plot["x"] / 2, plot["y"] + plot["height"] / 2)   # the mouse leaves: the keys' readout
        assert await readout(page) == text
        await page.keyboard.press("Escape")
        assert await readout(page) is None
        assert page.errors == []


async def test_the_readout_keeps_its_minute_across_the_refresh(server):
    view = SlidingView()
    async with drawn(server, view, "?refresh=1", speedup=QUICK) as (page, history):
        await record_live_changes(page)
        await tab_to_chart(page)
        for key in ("End", "ArrowLeft", "ArrowLeft"):
            await page.keyboard.press(key)
        minute = history["minutes"][-3]
        assert len(await said(page)) == 3

        async def refreshed():
            done = await page.evaluate("window.dashboard.refreshes")
            await page.wait_for_function(f"window.dashboard.refreshes >= {done + 2}", timeout=10000)
            return await history_now(page)
        view.end += 3   # three minutes on: the minute read out is three places further back
        history = await refreshed()
        assert history["minutes"][-6] == minute
        assert_reads(await readout(page), history, -6)
        assert await page.evaluate("window.liveChanges") == []   # the operator did not move: nothing said

        # the first minute slides out of the data: the readout goes to the one nearest it
        await page.keyboard.press("Home")
        assert len(await said(page)) == 1
        view.end += 2
        history = await refreshed()
        assert_reads(await readout(page), history, 0)
        await page.keyboard.press("ArrowRight")
        assert_reads(await readout(page), history, 1)
        assert page.errors == []
