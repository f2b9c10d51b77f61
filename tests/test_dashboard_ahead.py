"""The chart past now: when the gateway has a fresh forecast or an event about to start, the time axis goes
on by the longest horizon, a line marks now, the latest forecasts are markers at their minute and kW, the
upcoming event is shaded from its start, the readout reaches the forecasts and the chart's label says them.
Without anything ahead the axis ends at now, as before. With KEEP_SCREENSHOTS=1 a screenshot is kept at
tests/artifacts/dashboard-ahead.png."""
from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest

from browser import IN_ONE_CHROMIUM, artifact_path, chromium_page, keep_screenshot, one_chromium  # noqa: F401 - fixture
from test_dashboard import QUICK, drawn, open_dashboard, server  # noqa: F401 - shared fixture
from test_dashboard_chart_keys import assert_reads, readout, tab_to_chart
from test_http_api import SampleView
from ven.history import build_history

pytestmark = [pytest.mark.timeout(90), *IN_ONE_CHROMIUM]

KW = {15: 118.5, 60: 71.25}


def hhmm(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%H:%M")


class AheadView(SampleView):
    """The sample's day with the gateway's latest forecast, issued 25 s ago, and a level-2 event starting in
    40 minutes, shaped by build_history as the gateway shapes them."""

    def __init__(self, hours: float | None = None):
        super().__init__(*(() if hours is None else (hours,)))
        self.now = self.minutes[-1] + 30
        self.issued = self.now - 25
        self.soon = self.minutes[-1] + 40 * 60
        self.ahead = True

    def clock(self) -> float:
        # the gateway's clock as its history was made: the page moves the now line on to a later status "now"
        # (chart.js followNow), so a clock running on moved it off self.now, which the tests measure from, by the
        # seconds the test took past the minute's half (1.3 px, a failure in one run of two under load)
        return self.now

    def history(self, hours):
        body = super().history(hours)
        if not self.ahead:
            return body
        store = {"power": {"time": [], "kw": []}}
        latest = {"issued_at": self.issued, "demand_kw": {str(h): kw for h, kw in KW.items()}}
        iso = lambda t: datetime.fromtimestamp(t, timezone.utc).isoformat()  # noqa: E731
        soon = {"event_id": "evt-soon", "status": "near", "opt": "optIn", "signals": [{"name": "SIMPLE", "intervals": [
            {"start": iso(self.soon), "duration_seconds": 3600.0, "payload": 2.0}]}]}
        shaped = build_history(self.now, hours, store, [soon], latest_forecast=latest)
        return {**body, **{k: shaped[k] for k in ("now", "ahead", "upcoming")}}


async def attr(page, selector, name):
    return float(await page.locator(selector).get_attribute(name))


async def power_xs(page):
    d = await page.locator('path[data-series="power_kw"]').get_attribute("d")
    return [float(x) for x in re.findall(r"[ML](-?[\d.]+),", d)]


async def scales(page, body, minutes_ahead):
    """The chart's time scale (epoch s -> x) from the plot's edges and its span (past the hour ahead, the axis
    ends where the page says: a little past it, so the last marker is inside the plot), its kW scale (kW -> y)
    from the two threshold lines (105 and 65 kW)."""
    left, width = await attr(page, "svg clipPath rect", "x"), await attr(page, "svg clipPath rect", "width")
    t0, t1 = body["minutes"][0], body["minutes"][-1] + 60 + minutes_ahead * 60
    if minutes_ahead:
        t1 = await page.evaluate("window.dashboard.axisEnd")
    high = await attr(page, 'line[data-threshold="high_threshold_kw"]', "y1")
    low = await attr(page, 'line[data-threshold="low_threshold_kw"]', "y1")
    return (lambda t: left + (t - t0) / (t1 - t0) * width), (lambda kw: low + (kw - 65) * (high - low) / (105 - 65))


async def test_the_chart_goes_past_now_to_the_forecasts_and_the_next_event(server):
    view = AheadView()
    async with drawn(server, view, "?hours=6&refresh=1", speedup=QUICK) as (page, _):
        await page.wait_for_function("window.dashboard.minutes === 360", timeout=10000)
        await keep_screenshot(page, "dashboard-ahead.png", full_page=True)
        body = view.history(6)
        x_of, y_of = await scales(page, body, 60)
        plot_right = await attr(page, "svg clipPath rect", "x") + await attr(page, "svg clipPath rect", "width")
        # the history still ends at now, a line marks it, and the axis goes on an hour
        now_x = await attr(page, "svg line.now-line", "x1")
        assert abs(now_x - x_of(view.now)) <= 0.11 and plot_right - now_x > 0.13 * (plot_right - x_of(body["minutes"][0]))
        power = await power_xs(page)
        assert abs(max(power) - x_of(body["minutes"][-1] + 30)) <= 0.11
        # each forecast at the middle of the minute it forecasts, at its kW, in its series' colour
        for h, kw in KW.items():
            dot = f'svg circle.ahead-forecast[data-horizon="{h}"]'
            minute = body["minutes"][-1] + h * 60
            assert abs(await attr(page, dot, "cx") - x_of(minute + 30)) <= 0.11, h
            assert abs(await attr(page, dot, "cy") - y_of(kw)) <= 0.11, h
            colour = "var(--f15)" if h == 15 else "var(--f60)"
            assert await page.locator(dot).get_attribute("fill") == colour
            assert await page.locator(f'svg path[data-ahead="{h}"]').get_attribute("stroke") == colour
        # the event starting in 40 minutes is shaded from its start to the axis' end, by its level
        soon = page.locator('svg rect.event.upcoming[data-event="evt-soon"]')
        assert await soon.get_attribute("data-level") == "2"
        x0 = float(await soon.get_attribute("x"))
        assert abs(x0 - x_of(view.soon)) <= 0.11 and abs(x0 + float(await soon.get_attribute("width")) - plot_right) <= 0.11
        # the active event runs on past now to its end (30 minutes on), the thresholds to the axis' end
        active = page.locator('svg rect.event[data-event="evt-peak-2"]')
        end = float(await active.get_attribute("x")) + float(await active.get_attribute("width"))
        assert abs(end - x_of(view.minutes[-1] + 1800)) <= 0.11
        assert await attr(page, 'line[data-threshold="high_threshold_kw"]', "x2") == pytest.approx(plot_right)
        issued = hhmm(view.issued)
        assert f"Latest forecasts (issued {issued})" in await page.locator("#legend").inner_text()
        assert await page.locator("#chart-title").inner_text() == "Power and demand, last 6 h, and the next 60 min"
        label = await page.locator("#chart-svg").get_attribute("aria-label")
        assert label.startswith("Power and demand, last 6 h, and the next 60 min, times in UTC."), label
        for h, kw in KW.items():
            assert f"{kw:g} kW for {hhmm(body['minutes'][-1] + h * 60)}" in label, label
        assert f", issued {issued}." in label and f"an event of level 2 starts at {hhmm(view.soon)}" in label, label
        assert await page.evaluate("[window.dashboard.ahead, window.dashboard.upcoming]") == [2, 1]

        # nothing ahead (the forecast went stale): the axis ends at now again
        view.ahead = False
        await page.wait_for_function("window.dashboard.ahead === 0", timeout=10000)
        x_of, _ = await scales(page, view.history(6), 0)
        power = await power_xs(page)
        assert abs(max(power) - x_of(view.minutes[-1] + 30)) <= 0.11
        assert await page.locator("svg line.now-line").count() == 0
        assert await page.locator("svg circle.ahead-forecast").count() == 0
        assert await page.locator("#chart-title").inner_text() == "Power and demand, last 6 h"
        assert page.errors == []


async def test_the_readout_reaches_the_forecasts_ahead(server):
    view = AheadView()
    async with drawn(server, view, "?hours=6&refresh=600") as (page, _):
        await page.wait_for_function("window.dashboard.minutes === 360", timeout=10000)
        body = view.history(6)
        last = len(body["minutes"]) - 1
        day = lambda t: datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")  # noqa: E731
        issued = hhmm(view.issued)
        f15, f60 = (body["minutes"][-1] + h * 60 for h in (15, 60))
        said15 = f"{day(f15)} (ahead)\nForecast 15 min ahead: forecast for {hhmm(f15)}, issued {issued}: 118.5 kW"
        said60 = (f"{day(f60)} (ahead)\nForecast 60 min ahead: forecast for {hhmm(f60)}, issued {issued}: 71.25 kW\n"
                  f"an event of level 2 starts at {hhmm(view.soon)}")
        # the keys start at now, step on to the forecasts and back
        await tab_to_chart(page)
        assert_reads(await readout(page), body, last)
        await page.keyboard.press("ArrowRight")
        assert await readout(page) == said15
        assert await page.locator("#chart-said").text_content() == said15
        await page.keyboard.press("End")
        assert await readout(page) == said60
        await page.keyboard.press("ArrowLeft")
        await page.keyboard.press("ArrowLeft")
        assert_reads(await readout(page), body, last)
        await page.keyboard.press("Escape")
        # the mouse over the 15-minute marker reads it
        dot = await page.locator('svg circle.ahead-forecast[data-horizon="15"]').bounding_box()
        await page.mouse.move(dot["x"] + dot["width"] / 2, dot["y"] + dot["height"] / 2)
        assert await readout(page) == said15
        assert page.errors == []


async def test_on_a_phone_the_readout_of_a_forecast_stays_on_the_chart(server):
    # "Forecast 60 min ahead: forecast for 05:17, issued 04:17: 71.25 kW" on one line is 420 px: on a 360 px
    # phone the kW was cut off at the chart's edge and the page scrolled sideways
    srv = await server(AheadView())
    async with chromium_page(360, 844) as page:
        await open_dashboard(page, srv.url + "/?hours=6&refresh=600")
        await tab_to_chart(page)
        await page.keyboard.press("End")
        assert "71.25 kW" in await readout(page)
        await keep_screenshot(page, "dashboard-ahead-360.png", full_page=True)
        tip = await page.locator("#tooltip").bounding_box()
        chart = await page.locator("#chart").bounding_box()
        assert chart["x"] <= tip["x"] and tip["x"] + tip["width"] <= chart["x"] + chart["width"] + 0.5, (tip, chart)
        assert await page.evaluate("document.documentElement.scrollWidth") <= 360
        assert page.errors == []


# every two text boxes of the chart that overlap, by their text
OVERPRINTED = """() => {
  const texts = [...document.querySelectorAll('#chart-svg text')].map((t) => [t.textContent, t.getBoundingClientRect()]);
  const out = [];
  texts.forEach(([a, r], i) => texts.slice(i + 1).forEach(([b, q]) => {
    if (r.left < q.right && q.left < r.right && r.top < q.bottom && q.top < r.bottom) out.push(`${a} / ${b}`);
  }));
  return out;
}"""


@pytest.mark.parametrize("width", [1440, 360])
async def test_an_event_starting_at_now_does_not_overprint_the_now_label(server, width):
    # the minutes an operator watches most: its level's label ("L2") began where "now" is written
    view = AheadView()
    view.soon = view.minutes[-1] + 60
    srv = await server(view)
    async with chromium_page(width, 844) as page:
        await open_dashboard(page, srv.url + "/?hours=1&refresh=600")
        assert await page.locator("svg text.now-label").count() == 1
        assert await page.locator("svg text.event-label", has_text="L2").count() == 1
        await page.locator("#chart").screenshot(path=str(artifact_path(f"dashboard-event-at-now-{width}.png")))
        assert await page.evaluate(OVERPRINTED) == []
        assert page.errors == []


@pytest.mark.parametrize("width, hours", [(1440, 6), (360, 24), (1440, 168)])
async def test_the_last_forecasts_marker_is_wholly_inside_the_plot_on_its_minute(server, width, hours):
    # the 60-minute forecast's marker was drawn 30 s before the axis' end: half of it hung past the plot's edge
    view = AheadView(hours=hours + 2)
    srv = await server(view)
    async with chromium_page(width, 844) as page:
        await open_dashboard(page, srv.url + f"/?hours={hours}&refresh=600")
        await page.locator("#chart").screenshot(path=str(artifact_path(f"dashboard-ahead-marker-{width}-{hours}h.png")))
        left, plot_w = await attr(page, "svg clipPath rect", "x"), await attr(page, "svg clipPath rect", "width")
        dot = 'svg circle.ahead-forecast[data-horizon="60"]'
        cx, r, stroke = (await attr(page, dot, "cx"), await attr(page, dot, "r"), await attr(page, dot, "stroke-width"))
        assert cx + r + stroke / 2 <= left + plot_w + 0.01, (cx, r, left + plot_w)
        # still at the middle of the minute it forecasts, on the axis' scale (the hour ahead's own where it is widened)
        body = view.history(hours)
        t_end, t1 = body["minutes"][-1] + 60, await page.evaluate("window.dashboard.axisEnd")
        assert t_end + 3600 < t1 < t_end + 3600 + 10 * 60
        minute = body["minutes"][-1] + 60 * 60
        if await page.locator("svg rect.ahead-band").count():
            split = await attr(page, "svg rect.ahead-band", "x")
            x_of = lambda t: split + (t - t_end) / (t1 - t_end) * (left + plot_w - split)  # noqa: E731
        else:
            x_of = lambda t: left + (t - body["minutes"][0]) / (t1 - body["minutes"][0]) * plot_w  # noqa: E731
        assert abs(cx - x_of(minute + 30)) <= 0.11
        await tab_to_chart(page)
        await page.keyboard.press("End")
        assert f"forecast for {hhmm(minute)}" in await readout(page)
        assert page.errors == []
