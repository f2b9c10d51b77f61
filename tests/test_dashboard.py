"""The dashboard in headless Chromium: it must draw the real series from /api/history, the event
shading, thresholds and flags, the point and event tables, fetch nothing from off the machine, and
keep refreshing. A screenshot is kept at tests/artifacts/dashboard.png for a human look."""
from __future__ import annotations

import json

import aiohttp
import pytest

from bacnet_api.points import POINTS
from browser import artifact_path, chromium_page
from test_http_api import SampleView
from ven.http_api import HttpServer
from ven.metrics import Metrics

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def server(free_tcp_port):
    servers = []

    async def start(view, token=""):
        srv = HttpServer(view, Metrics(), f"127.0.0.1:{free_tcp_port()}", token)
        await srv.start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        await srv.stop()


async def get_json(url, token=""):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        async with session.get(url, headers=headers) as resp:
            assert resp.status == 200
            return json.loads(await resp.text())


READY = "window.dashboard && window.dashboard.ready"


async def open_dashboard(page, url, timeout=20000):
    """Load the page and wait until its first draw is done."""
    await page.goto(url, wait_until="load", timeout=20000)
    await page.wait_for_function(READY, timeout=timeout)


def flag_runs(values):
    runs, prev = 0, False
    for v in values:
        runs += bool(v) and not prev
        prev = bool(v)
    return runs


async def test_dashboard_draws_history(server):
    view = SampleView()
    srv = await server(view)
    history = await get_json(srv.url + "/api/history?hours=24")
    async with chromium_page() as page:
        await open_dashboard(page, srv.url + "/")

        for key in ("power_kw", "demand_kw", "forecast_15", "forecast_60"):
            expected = sum(v is not None for v in history[key])
            assert expected > 1000, key  # the sample day is real data, with gaps
            path = page.locator(f'svg path[data-series="{key}"]')
            assert int(await path.get_attribute("data-points")) == expected, key
            d = await path.get_attribute("d")
            assert d.count("M") + d.count("L") == expected, key
        # the power trace spans the whole plot width (24 h), not a dot in a corner
        plot = await page.locator("svg clipPath rect").bounding_box()
        trace = await page.locator('svg path[data-series="power_kw"]').bounding_box()
        assert trace["width"] > 0.97 * plot["width"] and trace["height"] > 0.4 * plot["height"]
        # the 20-minute meter outage is a break in the line (a second moveto), not an interpolation
        d = await page.locator('svg path[data-series="power_kw"]').get_attribute("d")
        assert d.count("M") == 2

        levels = await page.locator("svg rect.event").evaluate_all("rs => rs.map(r => r.dataset.level)")
        assert levels == ["2", "1"]  # the pending event starts after the window
        assert await page.locator("svg line.threshold").count() == 2
        for key in ("high_load", "low_load"):
            runs = await page.locator(f'svg rect.flag-run[data-flag="{key}"]').count()
            assert runs == flag_runs(history[key]) > 0, key
        for label in ("kW", "time (UTC)"):
            assert await page.locator("svg text.axis-label", has_text=label).count() == 1
        assert await page.locator("#legend span").count() >= 8

        assert await page.locator("#points tbody tr").count() == len(POINTS)
        assert "overridden" in await page.locator('#points tr[data-point="input-power-meter"]').inner_text()
        rows = page.locator("#events tbody tr")
        assert await rows.count() == 3
        assert "active" in await page.locator('#events tr[data-event="evt-peak-2"]').inner_text()
        assert await page.locator('#tiles [data-point="meter-power"] .value').inner_text() != ""
        assert "healthy" in await page.locator("#pills").inner_text()
        assert await page.locator('[data-section="forecaster"]').count() == 1

        await page.screenshot(path=str(artifact_path("dashboard.png")), full_page=True)
        assert page.errors == []
        assert page.offsite == []


async def test_dashboard_refreshes_and_shows_faults(server):
    view = SampleView()
    srv = await server(view)
    async with chromium_page() as page:
        await open_dashboard(page, srv.url + "/?refresh=1&hours=6")
        assert await page.evaluate("window.dashboard.minutes") == 360
        draws = await page.evaluate("window.dashboard.draws")
        view.events.append({"event_id": "evt-new", "start": view.minutes[-30], "end": view.minutes[-10],
                            "level": 3, "opt": "optIn"})
        view.healthy = (False, "meter not answering")
        await page.wait_for_function(f"window.dashboard.draws > {draws} && window.dashboard.events === 3",
                                     timeout=10000)
        await page.wait_for_function("document.querySelector('#pills').innerText.includes('meter not answering')",
                                     timeout=10000)
        # the gateway stops answering: the page says so and keeps the last data
        view.fail_status = RuntimeError("gateway stopping")
        await page.wait_for_selector("#banner:not([hidden])", timeout=10000)
        assert "gateway stopping" in await page.locator("#banner").inner_text()
        assert await page.locator('svg path[data-series="power_kw"]').count() == 1
        await page.screenshot(path=str(artifact_path("dashboard-fault.png")), full_page=True)
        assert page.offsite == []


async def test_dashboard_with_token(server):
    srv = await server(SampleView(), token="s3cret")
    async with chromium_page() as page:
        await page.goto(srv.url + "/", wait_until="load", timeout=20000)
        await page.wait_for_selector("#token-form:not([hidden])", timeout=10000)
        await page.fill("#token-input", "s3cret")
        await page.click("#token-form button")
        await page.wait_for_function(READY, timeout=10000)
        assert await page.locator("#token-form").is_hidden()
    async with chromium_page() as page:
        await open_dashboard(page, srv.url + "/#token=s3cret", timeout=10000)
        assert "token" not in page.url  # the fragment is dropped from the address bar
        assert page.errors == []


class FreshView:
    """A gateway that just started: no readings, no forecasts, no thresholds, no events."""

    def status(self):
        return {"version": "0.1.0", "uptime_seconds": 3.0,
                "points": [{"name": p.name, "object": p.object_id, "value": p.initial, "units": p.units,
                            "status_flags": {"fault": p.starts_in_fault}} for p in POINTS],
                "events": [], "vtn": {"registered": False, "connected": False, "last_error": "connection refused"}}

    def history(self, hours):
        return {"minutes": [], "power_kw": [], "demand_kw": [], "forecast_15": [], "forecast_60": [],
                "high_load": [], "low_load": [], "high_threshold_kw": None, "low_threshold_kw": None, "events": []}

    def health(self):
        return True, "ok"


async def test_dashboard_fresh_gateway(server):
    srv = await server(FreshView())
    async with chromium_page() as page:
        await open_dashboard(page, srv.url + "/")
        assert await page.locator("svg text.empty", has_text="no history yet").count() == 1
        assert "no pending, active or recent events" in await page.locator("#events").inner_text()
        assert "VTN not registered" in await page.locator("#pills").inner_text()
        assert await page.locator('#tiles [data-point="meter-power"] .value').inner_text() == "fault"
        await page.screenshot(path=str(artifact_path("dashboard-fresh.png")), full_page=True)
        assert page.errors == []


class StoreShapedView(SampleView):
    """The same day in the shapes the gateway's parts produce: device.snapshot() (points keyed by name,
    "flags"), schedule.events() (levels only inside signal payloads, far/near phases) and the
    forecaster store's history, shaped for the dashboard by ven.http_api.build_history."""

    def status(self):
        body = super().status()
        body["points"] = {p["name"]: {"object": p["object"], "value": p["value"], "units": p["units"],
                                      "access": p["access"], "flags": p["status_flags"], "reliability": "noFaultDetected"}
                          for p in body["points"]}
        for e in body["events"]:
            level = e.pop("level")
            e["status"] = {"pending": "far"}.get(e["status"], e["status"])
            e["signals"] = [{"name": "SIMPLE", "type": "level",
                             "intervals": [{"start": e["start"], "duration_seconds": 3600.0, "payload": float(level)}]}]
        return body

    def history(self, hours):
        from ven.http_api import build_history
        known = [(t, v) for t, v in zip(self.minutes, self.power) if v is not None]
        store = {"power": {"time": [t + 30 for t, _ in known], "kw": [v for _, v in known]},
                 "forecasts": {h: {"target_time": [t + 60 for t, v in zip(self.minutes, vals) if v is not None],
                                   "forecast_kw": [v for v in vals if v is not None]}
                               for h, vals in ((15, self.forecast_15), (60, self.forecast_60))},
                 "flags": {"time": [t + 59 for t in self.minutes], "high_load": self.high_load, "low_load": self.low_load,
                           "high_threshold_kw": [self.high_threshold] * len(self.minutes),
                           "low_threshold_kw": [self.low_threshold] * len(self.minutes)}}
        return build_history(self.minutes[-1] + 30, hours, store, self.status()["events"])


async def test_dashboard_with_gateway_shapes(server):
    srv = await server(StoreShapedView())
    history = await get_json(srv.url + "/api/history?hours=24")
    async with chromium_page() as page:
        await open_dashboard(page, srv.url + "/")
        for key in ("power_kw", "demand_kw", "forecast_15", "forecast_60"):
            expected = sum(v is not None for v in history[key])
            assert expected > 1000, key
            assert int(await page.locator(f'svg path[data-series="{key}"]').get_attribute("data-points")) == expected
        levels = await page.locator("svg rect.event").evaluate_all("rs => rs.map(r => r.dataset.level)")
        assert levels == ["2", "1"]
        for key in ("high_load", "low_load"):
            assert await page.locator(f'svg rect.flag-run[data-flag="{key}"]').count() == flag_runs(history[key]) > 0
        assert await page.locator("#points tbody tr").count() == len(POINTS)
        assert "overridden" in await page.locator('#points tr[data-point="input-power-meter"]').inner_text()
        badges = await page.locator("#events tbody .level").all_inner_texts()
        assert badges == ["2", "1", "3"]
        assert "pending (far)" in await page.locator('#events tr[data-event="evt-next"]').inner_text()
        await page.screenshot(path=str(artifact_path("dashboard-gateway-shapes.png")), full_page=True)
        assert page.errors == [] and page.offsite == []
