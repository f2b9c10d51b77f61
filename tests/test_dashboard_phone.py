"""The chart as an operator checking the building on a phone sees it, and on long spans: the threshold labels
leave the hour ahead clear, the legend stays a few lines above the chart, the hour ahead keeps room for its
markers and a label however long the span, and the chart's label for a screen reader is a few sentences
(the readout says each minute). Screenshots are kept at tests/artifacts/dashboard-phone-*.png."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal

import pytest

from browser import IN_ONE_CHROMIUM, artifact_path, chromium_page, one_chromium  # noqa: F401 - fixture
from test_dashboard import open_dashboard, server  # noqa: F401 - shared fixture
from test_dashboard_ahead import KW, OVERPRINTED, AheadView, hhmm
from test_dashboard_chart_keys import readout
from test_dashboard_faults import EverythingView

pytestmark = [pytest.mark.timeout(90), *IN_ONE_CHROMIUM]

# each text of the chart outside the drawing, by its text
CUT = """() => {
  const width = document.querySelector('#chart-svg').viewBox.baseVal.width;
  return [...document.querySelectorAll('#chart-svg text')].filter((t) => {
    const box = t.getBBox(); return box.x < 0 || box.x + box.width > width; }).map((t) => t.textContent); }"""


class BusyView(AheadView, EverythingView):
    """Everything at once: the clock and a refused write, the latest forecasts, an active, an opted-out and an
    upcoming event."""

    def __init__(self):
        super().__init__()   # AheadView's, on to FaultView's (a day)


def kw(v: float) -> str:
    """As the page writes a kW (format.js fmtNum). JavaScript's toFixed takes a tie away from zero, where
    Python's format takes it to even: 118.25 is "118.3" on the page, "118.2" by f"{v:.1f}"."""
    if float(v).is_integer():
        return str(int(v))
    step = Decimal("0.1") if abs(v) >= 100 else Decimal("0.01")
    return str(Decimal(v).quantize(step, rounding=ROUND_HALF_UP))


async def box(page, selector):
    return await page.locator(selector).evaluate("(n) => { const r = n.getBoundingClientRect(); "
                                                 "return {left: r.left, right: r.right, top: r.top, bottom: r.bottom}; }")


@pytest.mark.parametrize("hours", [6, 24])
async def test_on_a_phone_the_threshold_labels_leave_the_hour_ahead_clear(server, hours):
    # "high 105 kW" sat right-aligned at the plot's edge: over the now line and the forecast markers
    srv = await server(AheadView())
    async with chromium_page(360, 844) as page:
        await open_dashboard(page, srv.url + f"/?hours={hours}&refresh=600")
        await page.locator("#chart").screenshot(path=str(artifact_path(f"dashboard-phone-thresholds-{hours}h.png")))
        now = (await box(page, "svg line.now-line"))["left"]
        labels = await page.locator("svg g.thresholds text").evaluate_all(
            "ts => ts.map((t) => [t.textContent, t.getBoundingClientRect().right])")
        assert [text for text, _ in labels] == ["high 105 kW", "low 65 kW"]
        assert [text for text, right in labels if right > now - 2] == [], (labels, now)
        assert await page.evaluate(OVERPRINTED) == []
        assert await page.evaluate(CUT) == []
        assert page.errors == []


async def test_on_a_phone_the_legend_is_a_few_lines_and_names_everything(server):
    # nine items of a desktop's words, one or two a line, were 8 lines (200 px) above the chart
    view = BusyView()   # the one served: another built now may be a minute later
    srv = await server(view)
    async with chromium_page(360, 844) as page:
        await open_dashboard(page, srv.url + "/?refresh=600")
        legend = page.locator("#legend")
        await page.locator(".card-head").screenshot(path=str(artifact_path("dashboard-phone-legend.png")))
        text = await legend.inner_text()
        for words in ("Power", "Demand", "Forecast 15 min", "Forecast 60 min", f"issued {hhmm(view.issued)}",
                      "Thresholds", "Event level", "1", "2", "3", "Opted out", "Upcoming"):
            assert words in text, (words, text)
        lines = await legend.evaluate("(l) => new Set([...l.children].map((c) => Math.round(c.getBoundingClientRect().top))).size")
        assert lines <= 4, text
        assert (await box(page, "#legend"))["bottom"] - (await box(page, "#legend"))["top"] <= 4 * 20
        assert await page.evaluate("document.documentElement.scrollWidth") <= 360
        assert page.errors == []


@pytest.mark.parametrize("width, hours", [(360, 24), (768, 24), (1440, 168)])
async def test_on_a_long_span_the_hour_ahead_keeps_room_and_a_label(server, width, hours):
    # at its share of the time axis an hour of a day on a phone is 10 px, of a week on a desktop 7 px: the
    # two forecasts sat on each other against the plot's edge, "now" was cut off, and nothing said what it was
    view = AheadView(hours=hours + 2)
    srv = await server(view)
    async with chromium_page(width, 844) as page:
        await open_dashboard(page, srv.url + f"/?hours={hours}&refresh=600")
        await page.locator("#chart").screenshot(path=str(artifact_path(f"dashboard-phone-ahead-{width}-{hours}h.png")))
        now = (await box(page, "svg line.now-line"))["left"]
        plot = await box(page, "svg g.flags rect >> nth=0")   # a lane: as wide as the plot
        assert plot["right"] - now >= 48, (now, plot)
        dots = [await box(page, f'svg circle.ahead-forecast[data-horizon="{h}"]') for h in KW]
        assert dots[0]["right"] <= dots[1]["left"] and dots[1]["right"] <= plot["right"] + 5
        label = await box(page, "svg text.ahead-tick")
        assert await page.locator("svg text.ahead-tick").text_content() == "+60 min"
        assert now <= label["left"] and label["right"] <= plot["right"] + 1
        assert await page.evaluate(OVERPRINTED) == []
        assert await page.evaluate(CUT) == []
        # the pointer over the 15-minute forecast reads it
        dot = await page.locator('svg circle.ahead-forecast[data-horizon="15"]').bounding_box()
        await page.mouse.move(dot["x"] + dot["width"] / 2, dot["y"] + dot["height"] / 2)
        assert f"Forecast 15 min ahead: forecast for {hhmm(view.minutes[-1] + 15 * 60)}" in await readout(page)
        assert page.errors == []


async def test_the_chart_label_says_the_essentials_in_a_few_sentences(server):
    # a screen reader read 1,050 characters (four series' lowest and highest, each with a date) on each focus
    view = BusyView()
    srv = await server(view)
    async with chromium_page(1440, 900) as page:
        await open_dashboard(page, srv.url + "/?refresh=600")
        label = await page.locator("#chart-svg").get_attribute("aria-label")
        assert len(label) <= 400, (len(label), label)
        body = view.history(24)
        at = datetime.fromtimestamp(body["minutes"][-1], timezone.utc).strftime("%H:%M")
        demand = [v for v in body["demand_kw"] if v is not None]
        peak = body["minutes"][body["demand_kw"].index(max(demand))]
        flags = [f"{k.split('_')[0]} load now" for k in ("high_load", "low_load") if body[k][-1]] or ["no load flag now"]
        for words in ("Power and demand, last 24 h, and the next 60 min, times in UTC.",
                      f"At {at}: power {kw(body['power_kw'][-1])} kW, demand {kw(body['demand_kw'][-1])} kW",
                      f"demand peak {kw(max(demand))} kW at {hhmm(peak)}", *flags,
                      f"forecast {KW[15]:g} kW for {hhmm(body['minutes'][-1] + 15 * 60)}",
                      f"{KW[60]:g} kW for {hhmm(body['minutes'][-1] + 60 * 60)}",
                      f"level 1 event until {hhmm(view.minutes[-1] + 1800)}",
                      f"an event of level 2 starts at {hhmm(view.soon)}",
                      "high 105 kW", "low 65 kW", "arrows"):
            assert words.lower() in label.lower(), (words, label)
        # the keys' instructions are its description, read after a pause
        hint = await page.locator("#chart-svg").get_attribute("aria-describedby")
        assert "Page Down" in await page.locator(f"#{hint}").text_content()
        assert page.errors == []


@pytest.mark.parametrize("width", [1440, 360])
async def test_thresholds_a_few_kw_apart_keep_both_labels_legible(server, width):
    # 100 and 97 kW are 8 px apart on the kW axis: "high 100 kW" and "low 97 kW" printed over each other
    view = AheadView()
    view.high_threshold, view.low_threshold = 100.0, 97.0
    srv = await server(view)
    async with chromium_page(width, 844) as page:
        await open_dashboard(page, srv.url + "/?refresh=600")
        await page.locator("#chart").screenshot(path=str(artifact_path(f"dashboard-phone-close-thresholds-{width}.png")))
        assert await page.locator("svg g.thresholds text").all_text_contents() == ["high 100 kW", "low 97 kW"]
        assert await page.evaluate(OVERPRINTED) == []
        assert await page.evaluate(CUT) == []
        assert page.errors == []


class RomeBusyView(BusyView):
    """BusyView of a building with forecaster.timezone Europe/Rome: the Times choice lists it."""

    def status(self):
        return {**super().status(), "timezone": "Europe/Rome"}


@pytest.mark.parametrize("width, browser_zone", [(360, None), (360, "America/New_York"), (768, None)])
async def test_each_chart_choice_keeps_its_label_beside_it_when_the_controls_wrap(server, width, browser_zone):
    # "Span [24 h] Times" on one line and the zone's list alone under it: a label ending a line names nothing
    srv = await server(RomeBusyView())
    async with chromium_page(width, 844, timezone_id=browser_zone) as page:
        await open_dashboard(page, srv.url + "/?refresh=600")
        await page.locator(".card-head").screenshot(path=str(artifact_path(f"dashboard-phone-choices-{width}.png")))
        assert await page.get_by_label("Times", exact=True).input_value() == "Europe/Rome"
        pairs = await page.locator(".card-head label").evaluate_all("""ls => ls.map((l) => {
            const a = l.getBoundingClientRect(), b = l.control.getBoundingClientRect();
            return [l.textContent, a.right, a.top, a.bottom, b.left, b.top, b.bottom]; })""")
        assert [name for name, *_ in pairs] == ["Span", "Times"]
        apart = [(name, round(c_left - right)) for name, right, top, bottom, c_left, c_top, c_bottom in pairs
                 if not (right <= c_left <= right + 12 and c_top < bottom and top < c_bottom)]
        assert apart == [], pairs
        assert await page.evaluate("document.documentElement.scrollWidth") <= width
        assert page.errors == []
