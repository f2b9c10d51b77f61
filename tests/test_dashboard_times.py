"""The zone the dashboard's times are in ("Times", beside the span): UTC with the default configuration, the
building's (forecaster.timezone) where it is set, the one chosen kept in the address; the time axis on round
hours of that zone, a half-hour zone's too, and on the days its clocks change."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest

from browser import IN_ONE_CHROMIUM, artifact_path, chromium_page, one_chromium  # noqa: F401 - fixture
from test_dashboard import FreshView, drawn, open_dashboard, reload_dashboard, server  # noqa: F401 - shared fixture
from test_dashboard_ahead import OVERPRINTED, AheadView
from test_dashboard_chart_keys import readout, tab_to_chart
from test_http_api import SampleView, assert_shaped_as
from bacnet_api import points as P
from ven.app import Gateway
from ven.config_load import parse_config

pytestmark = [pytest.mark.timeout(90), *IN_ONE_CHROMIUM]

ROME = ZoneInfo("Europe/Rome")


class ZoneView(SampleView):
    """The sample day of a building in `zone`; its minutes end at `end` (epoch s) when given."""

    def __init__(self, zone, hours=24, end=None):
        super().__init__(hours=hours)
        self.zone = zone
        if end is not None:
            end_at(self, end)

    def status(self):
        return {**super().status(), "timezone": self.zone}


def end_at(view, end):
    """Move a sample day so that its minutes end at `end` (epoch s), its events, now and forecasts with them."""
    shift = end - 60 - view.minutes[-1]
    view.minutes = [t + shift for t in view.minutes]
    for e in view.events:
        e["start"] += shift
        e["end"] += shift
    for k in ("now", "issued", "soon"):
        if hasattr(view, k):
            setattr(view, k, getattr(view, k) + shift)


class AheadZoneView(AheadView):
    """AheadView's hours (the latest forecasts, an event soon) in a building in `zone`."""

    def __init__(self, zone, hours):
        super().__init__(hours)
        self.zone = zone

    def status(self):
        return {**super().status(), "timezone": self.zone}


# the axis names a day "5 Dec": "12/5" read as the 12th of May in Rome (helper wall38)
MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()


def local(t, zone, fmt="%Y-%m-%d %H:%M"):
    return datetime.fromtimestamp(t, timezone.utc).astimezone(zone).strftime(fmt)


async def ticks(page, history):
    """Each x tick's label and the minute (epoch s) where it is drawn, read back from the plot's scale."""
    plot = page.locator("svg clipPath rect")
    left, width = float(await plot.get_attribute("x")), float(await plot.get_attribute("width"))
    t0, t_end = history["minutes"][0], history["minutes"][-1] + 60
    texts = await page.locator("#chart-svg text.x-tick").evaluate_all("ts => ts.map((t) => [t.textContent, t.getAttribute('x')])")
    return [(label, round((t0 + (float(x) - left) / width * (t_end - t0)) / 60) * 60) for label, x in texts]


def assert_on_the_zones_clock(tick_list, zone):
    """Each label is the zone's wall clock where it is drawn: HH:MM (with its zone's name in the hour an autumn
    change repeats), or the day ("5 Dec") at the zone's midnight."""
    for label, t in tick_list:
        at = datetime.fromtimestamp(t, timezone.utc).astimezone(zone)
        if ":" not in label:
            assert (label, at.strftime("%H:%M")) == (f"{at.day} {MONTHS[at.month - 1]}", "00:00"), (label, at)
        else:
            assert label.split(" ")[0] == at.strftime("%H:%M"), (label, at)


async def choose_zone(page, value):
    await page.get_by_label("Times", exact=True).select_option(value=value, timeout=5000)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("zone", [None, "Europe/Rome"])
async def test_the_gateway_says_its_zone_and_the_page_shows_times_in_it(tmp_path, free_udp_port, free_tcp_port, zone):
    # a facility operator in Turin adds an hour (two in summer) to every "peak 11:00 UTC" the page printed
    cfg = parse_config({
        "bacnet": {"address": f"127.0.0.1/8:{free_udp_port()}", "device_id": 500017},
        "meter": {"address": "127.0.0.1:9", "poll_seconds": 5.0, "timeout_seconds": 0.5},   # nobody there
        "openadr": {"vtn_url": f"http://127.0.0.1:{free_tcp_port()}/OpenADR2/Simple/2.0b", "ven_name": "bldg-a"},
        "storage": {"path": str(tmp_path / "gw.sqlite")},
        "http": {"address": f"127.0.0.1:{free_tcp_port()}"},
        "forecaster": {"timezone": zone} if zone else {},
    }, "test", environ={})
    gateway = Gateway(cfg)
    await gateway.start()
    try:
        # the other tests' statuses are shaped as this one
        for view in (SampleView(), FreshView()):
            assert_shaped_as(gateway.status(), view.status())
        shown = zone or "UTC"
        async with chromium_page() as page:
            await open_dashboard(page, gateway.http.url + "/")
            assert await page.evaluate("fetch('/api/status').then((r) => r.json()).then((s) => s.timezone)") == shown
            assert await page.get_by_label("Times", exact=True).input_value() == shown
            options = await page.locator("#chart-tz option").all_inner_texts()
            assert options == (["UTC"] if zone is None else ["UTC", "Europe/Rome (building)"])
            assert f"times in {shown}" in await page.locator("#footer").inner_text()
            # which gateway, from the real /api/status (the header read a key only the tests' sample status had)
            assert await page.title() == "bldg-a · device 500017 · Edge Gateway"
            # each point row's tooltip says what the point is (the page read a description no status carried)
            row = page.locator('tr[data-point="one-hour-future-power"]')
            assert await row.get_attribute("title") == gateway.device._points[P.ONE_HOUR_FORECAST].description != ""
            assert re.fullmatch(rf"updated \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d {shown} · every 10 s",
                                await page.locator("#updated").inner_text())
            assert (await page.locator("#events thead").inner_text()).strip() == \
                f"Event\tStatus\tLevel\tStart ({shown})\tEnd ({shown})\tOpt\tSignals"
            assert page.errors == []
    finally:
        await gateway.stop()


async def test_a_building_in_rome_reads_rome_time_and_utc_when_chosen_also_after_a_reload(server):
    view = ZoneView("Europe/Rome")
    async with drawn(server, view, "?refresh=600") as (page, history):
        assert await page.locator("#chart-tz option").all_inner_texts() == ["UTC", "Europe/Rome (building)"]
        assert await page.get_by_label("Times", exact=True).input_value() == "Europe/Rome"
        # the first minute drawn: its UTC time plus Rome's offset then
        first = history["minutes"][0]
        utc = datetime.fromtimestamp(first, timezone.utc)
        offset = ROME.utcoffset(utc.replace(tzinfo=None))
        assert offset in (timedelta(hours=1), timedelta(hours=2))
        rome_words = f"{(utc + offset):%Y-%m-%d %H:%M} Europe/Rome"
        await tab_to_chart(page)
        await page.keyboard.press("Home")
        assert (await readout(page)).split("\n")[0] == rome_words
        assert await page.locator("svg text.axis-label", has_text="time (Europe/Rome)").count() == 1
        assert ", times in Europe/Rome." in await page.locator("#chart-svg").get_attribute("aria-label")
        assert_on_the_zones_clock(await ticks(page, history), ROME)
        assert await page.evaluate("window.dashboard.problems") == []    # a zone it knows needs no word
        active = next(e for e in view.events if e["event_id"] == "evt-peak-2")
        cells = await page.locator('#events tr[data-event="evt-peak-2"] td').all_inner_texts()
        assert cells[3:5] == [local(active["start"], ROME), local(active["end"], ROME)]
        title = await page.locator('svg rect.event[data-event="evt-peak-2"] title').text_content()
        assert title.endswith(f"{local(active['start'], ROME)}–{local(active['end'], ROME)} Europe/Rome")
        # a timestamp of the status tables ends in its offset then, where UTC's ends in Z
        started = await page.locator('[data-section="forecaster"] dt:text-is("last fit at") + dd').inner_text()
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+0[12]:00 \(\d+ s ago\)", started), started

        await choose_zone(page, "UTC")
        assert parse_qs(urlsplit(page.url).query) == {"refresh": ["600"], "tz": ["UTC"]}
        await page.keyboard.press("Home")
        assert (await readout(page)).split("\n")[0] == f"{utc:%Y-%m-%d %H:%M} UTC"
        assert await page.locator("svg text.axis-label", has_text="time (UTC)").count() == 1
        await page.wait_for_function("document.querySelector('#footer').innerText.includes('times in UTC')", timeout=10000)
        cells = await page.locator('#events tr[data-event="evt-peak-2"] td').all_inner_texts()
        assert cells[3] == local(active["start"], timezone.utc)

        await reload_dashboard(page)
        assert await page.get_by_label("Times", exact=True).input_value() == "UTC"
        assert "times in UTC" in await page.locator("#footer").inner_text()
        assert await page.locator("#events thead th").nth(3).inner_text() == "Start (UTC)"
        await choose_zone(page, "Europe/Rome")
        assert parse_qs(urlsplit(page.url).query)["tz"] == ["Europe/Rome"]
        assert await page.locator("svg text.axis-label", has_text="time (Europe/Rome)").count() == 1
        assert page.errors == []


async def test_a_building_zone_this_browser_does_not_know_is_said_where_the_operator_looks(server):
    # a zone newer than the browser's zone data: the page showed UTC with nothing saying it was not the building's
    async with drawn(server, ZoneView("Mars/Olympus_Mons"), "?refresh=600") as (page, _):
        assert await page.locator("#chart-tz option").all_inner_texts() == ["UTC"]
        item = page.locator('#problems li[data-problem="zone"]')
        assert await item.get_attribute("data-level", timeout=10000) == "warn"
        assert await item.locator(".detail").inner_text() == \
            "the building's zone Mars/Olympus_Mons (forecaster.timezone) is unknown to this browser: times are in UTC"
        assert await page.locator("#pills .pill").first.inner_text() == "healthy"
        assert page.errors == []


@pytest.mark.parametrize("building, shown, options", [
    ("Europe/Rome", "Europe/Rome", ["UTC", "Europe/Rome (building)", "America/New_York (this browser)"]),
    ("UTC", "UTC", ["UTC", "America/New_York (this browser)"]),
])
async def test_the_browsers_own_zone_is_offered_too(server, building, shown, options):
    srv = await server(ZoneView(building))
    async with chromium_page(timezone_id="America/New_York") as page:
        await open_dashboard(page, srv.url + "/")
        assert await page.locator("#chart-tz option").all_inner_texts() == options
        assert await page.get_by_label("Times", exact=True).input_value() == shown
        await choose_zone(page, "America/New_York")
        assert await page.locator("svg text.axis-label", has_text="time (America/New_York)").count() == 1
        await page.wait_for_function("document.querySelector('#footer').innerText.includes('times in America/New_York')",
                                     timeout=10000)
        assert page.errors == []


@pytest.mark.parametrize("building, browser, options", [
    ("Asia/Kolkata", "America/New_York", ["UTC", "Asia/Kolkata (building)", "America/New_York (this browser)"]),
    ("Asia/Kathmandu", "Asia/Kathmandu", ["UTC", "Asia/Kathmandu (building)"]),
    ("Asia/Kolkata", "Asia/Calcutta", ["UTC", "Asia/Kolkata (building)"]),
])
async def test_a_zone_the_browser_knows_by_an_older_name_is_shown_as_configured(server, building, browser, options):
    # Chromium's zone data names Asia/Kolkata "Asia/Calcutta" and Asia/Kathmandu "Asia/Katmandu": the menu, the axis and
    # the footer said a name the site never configured, and the building's and the browser's one zone was listed twice
    srv = await server(ZoneView(building))
    async with chromium_page(timezone_id=browser) as page:
        await open_dashboard(page, srv.url + "/")
        assert await page.locator("#chart-tz option").all_inner_texts() == options
        assert await page.get_by_label("Times", exact=True).input_value() == building
        assert await page.locator("svg text.axis-label", has_text=f"time ({building})").count() == 1
        assert page.errors == []
    # a bookmark naming the zone by the older name shows it by the configured one, in the menu and on the axis
    async with chromium_page(timezone_id=browser) as page:
        await open_dashboard(page, srv.url + "/?tz=" + {"Asia/Kolkata": "Asia/Calcutta"}.get(building, building))
        assert await page.get_by_label("Times", exact=True).input_value() == building
        assert await page.locator("svg text.axis-label", has_text=f"time ({building})").count() == 1


@pytest.mark.parametrize("zone, hours", [("Asia/Kolkata", 6), ("Asia/Kolkata", 24), ("Asia/Kathmandu", 6),
                                         ("America/St_Johns", 24), ("Pacific/Kiritimati", 24)])
async def test_a_half_hour_zones_ticks_fall_on_its_round_hours(server, zone, hours):
    # Asia/Kolkata is UTC+5:30: ticks on round UTC hours would read 05:30, 08:30 ... (Kathmandu +5:45, St John's -3:30;
    # Kiritimati, +14, has its midnight at 10:00 UTC)
    tz = ZoneInfo(zone)
    async with drawn(server, ZoneView(zone, hours=hours), f"?hours={hours}&refresh=600") as (page, _):
        history = await page.evaluate(f"fetch('/api/history?hours={hours}').then((r) => r.json())")
        tick_list = await ticks(page, history)
        assert len(tick_list) >= 4
        assert_on_the_zones_clock(tick_list, tz)
        minutes = {label[3:5] for label, _ in tick_list if ":" in label}
        assert minutes <= ({"00", "30"} if hours == 6 else {"00"}), tick_list
        # a step of whole hours starts at the zone's midnight (00:00, 02:00 ...)
        step_h = (tick_list[2][1] - tick_list[1][1]) // 3600
        if step_h:
            assert all(int(label[:2]) % step_h == 0 for label, _ in tick_list if ":" in label), tick_list
        assert page.errors == []


@pytest.mark.parametrize("day, hours, midnights, skipped", [
    # the last Sunday of October: 02:00-03:00 comes twice, a 25-hour day
    ("2026-10-25", 25, ["25 Oct", "26 Oct"], []),
    # the last Sunday of March: 02:00 never comes, a 23-hour day
    ("2026-03-29", 23, ["29 Mar", "30 Mar"], ["02:00"]),
])
async def test_the_days_romes_clocks_change_have_each_hour_once(server, day, hours, midnights, skipped):
    start = datetime.fromisoformat(day).replace(tzinfo=ROME)
    end = (start + timedelta(days=1)).astimezone(timezone.utc)
    assert (end - start).total_seconds() == hours * 3600
    # from an hour before the day: its midnight's label is not on the y axis
    async with drawn(server, ZoneView("Europe/Rome", hours=hours + 1, end=int(end.timestamp())),
                     f"?hours={hours + 1}&refresh=600") as (page, _):
        history = await page.evaluate(f"fetch('/api/history?hours={hours + 1}').then((r) => r.json())")
        assert history["minutes"][0] == int(start.timestamp()) - 3600
        tick_list = await ticks(page, history)
        labels = [label for label, _ in tick_list]
        assert len(labels) == len(set(labels)), labels
        assert_on_the_zones_clock(tick_list, ROME)
        assert [label for label in labels if ":" not in label] == midnights
        # every two hours of the local day, each once (where the clock went back, the first 02:00 is named by
        # its zone, and the second has a grid line but no room for its label)
        hhmm = [label.split(" ")[0] for label in labels if ":" in label]
        expected = ["22:00"] * (hhmm[:1] == ["22:00"]) + [f"{h:02d}:00" for h in range(2, 24, 2) if f"{h:02d}:00" not in skipped]
        assert hhmm == expected, labels
        await page.locator("#chart").screenshot(path=str(artifact_path(f"dashboard-times-rome-{day}.png")))
        assert await page.evaluate(OVERPRINTED) == []
        assert page.errors == []


@pytest.mark.parametrize("width", [1440, 768])
async def test_the_minutes_an_hour_before_a_clock_change_draw_with_the_forecasts_ahead(server, width):
    # the axis past now ends a little past the last forecast, off the whole minute: where Rome's clock change fell
    # in its last minute, looking for that change looped for ever and the tab froze (each page open then, on
    # its refresh), twice a year for a minute or two
    change = int(datetime(2026, 3, 29, 1, tzinfo=timezone.utc).timestamp())
    view = AheadZoneView("Europe/Rome", hours=6)
    srv = await server(view)
    async with chromium_page(width, 900) as page:
        for end in range(change - 3600 - 3 * 60, change - 3600, 60):   # the axis' end 1-3 minutes past the change
            end_at(view, end)
            await page.clock.set_fixed_time(view.now)   # the page's clock at the gateway's minute
            await open_dashboard(page, srv.url + "/?hours=6&refresh=600", timeout=10000)
            assert await page.locator("#chart-svg circle.ahead-forecast").count() == 2
            assert await page.evaluate("window.dashboard.axisEnd") > end + 3600
        assert page.errors == []


@pytest.mark.parametrize("zone, end, hours", [
    # the day after Rome's clocks went forward: its first hour comes twice in 24 h, "04:00 CET" and "04:00 CEST"
    ("Europe/Rome", "2026-03-29T02:06:00+00:00", 24),
    # New York's hour that comes twice: "01:00 GMT-4" then "01:00 GMT-5"
    ("America/New_York", "2026-11-01T10:48:00+00:00", 6),
])
async def test_a_tick_named_by_its_zone_near_the_y_axis_does_not_overprint_its_lowest_kw(server, zone, end, hours):
    # a tick's label twice as wide as "04:00" was drawn as close to the y axis as a plain one, over the "40"
    end = int(datetime.fromisoformat(end).timestamp())
    view = ZoneView(zone, hours=24, end=end)
    async with chromium_page(768, 900) as page:
        srv = await server(view)
        await page.clock.set_fixed_time(end + 5)
        await open_dashboard(page, srv.url + f"/?hours={hours}&refresh=600")
        labels = await page.locator("#chart-svg text.x-tick").evaluate_all("ts => ts.map((t) => t.textContent)")
        assert any(":" in label and " " in label for label in labels), labels   # a label named by its zone is there
        assert await page.evaluate(OVERPRINTED) == []
        assert page.errors == []


async def test_times_near_a_clock_change_carry_their_zone_where_the_hour_repeats(server):
    # Rome's autumn change: an event of 00:58Z-01:05Z read "2026-10-25 02:58 | 2026-10-25 02:05" in the events table,
    # ending before it began; the axis named CEST and CET, the table and the chart's words did not
    from test_dashboard import made_at

    when = int(datetime(2026, 10, 25, 1, 6, tzinfo=timezone.utc).timestamp())
    view = made_at(when, lambda: ZoneView("Europe/Rome", hours=6))
    at = lambda h, m: int(datetime(2026, 10, 25, h, m, tzinfo=timezone.utc).timestamp())  # noqa: E731
    view.events = [{"event_id": "across", "start": at(0, 58), "end": at(1, 5), "level": 1, "opt": "optIn"},
                   {"event_id": "far-off", "start": at(12, 0), "end": at(13, 0), "level": 2, "opt": "optIn"}]
    # the recent log, newest first, went 02:05:38, then 02:58:02, with nothing to say why
    view.recent_log = lambda level, limit: {"capacity": 500, "total": 2, "lines": [
        {"at": "2026-10-25T01:05:38Z", "level": "INFO", "message": "second pass"},
        {"at": "2026-10-25T00:58:02Z", "level": "INFO", "message": "first pass"}]}
    async with drawn(server, view, "?hours=6&refresh=600", at=when + 3) as (page, _):
        await page.wait_for_function("document.querySelectorAll('#log-lines li.log-line').length === 2", timeout=10000)
        assert await page.locator("#log-lines li.log-line time").all_inner_texts() == ["02:05:38 CET", "02:58:02 CEST"]
        rows = {await r.locator("td").first.inner_text(): await r.inner_text()
                for r in await page.locator("#events tbody tr").all()}
        assert "2026-10-25 02:58 CEST" in rows["across"] and "2026-10-25 02:05 CET" in rows["across"], rows
        assert "2026-10-25 13:00\t" in rows["far-off"] + "\t" and "CET" not in rows["far-off"], rows   # hours away
        await choose_zone(page, "UTC")
        await page.wait_for_function("document.querySelector('#events tbody').innerText.includes('00:58')",
                                     timeout=10000)
        assert "CE" not in await page.locator("#events tbody").inner_text()
        assert page.errors == []
