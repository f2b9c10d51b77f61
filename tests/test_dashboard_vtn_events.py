"""The dashboard's events table for events as a real VTN (DemoVtn, openleadr) sends them: a test event never moves the
points, and the table has to say so, not read as a shed the site makes or one another event overrides; the utility's
vtnComment is shown beside the event."""
from __future__ import annotations

import dataclasses
import random
from datetime import datetime, timedelta, timezone

import pytest

from browser import IN_ONE_CHROMIUM, chromium_page, one_chromium  # noqa: F401 - fixture
from test_dashboard import open_dashboard, server  # noqa: F401 - shared fixture
from raw_vtn import distribute, event, interval, signal
from test_event_semantics import _running, put_event
from test_vtn_interop import deliver, raw_gateway
from test_http_api import SampleView
from waiting import eventually as until

pytestmark = [pytest.mark.timeout(90), *IN_ONE_CHROMIUM]


class LiveView(SampleView):
    """The sample's readings and state, with the events and schedule of a gateway following a real VTN."""

    def __init__(self, gw):
        super().__init__()
        self.gw = gw

    def status(self) -> dict:
        out = super().status()
        out["events"] = self.gw.schedule.events()
        out["schedule"] = dataclasses.asdict(self.gw.schedule.state())
        return out


async def test_a_test_event_is_said_to_be_one_not_overridden(server, tmp_path, free_tcp_port):
    # the utility's monthly test event beside a real one: "active (overridden)" read as a shed the site had been
    # asked for and a higher-priority event had taken over, while a test event moves nothing by design (2.0b)
    async with _running(tmp_path, free_tcp_port()) as (vtn, gw):
        now = datetime.now(timezone.utc)
        vtn.add_event([2], now - timedelta(seconds=1), 600, event_id="real")
        vtn.add_event([3], now - timedelta(seconds=1), 600, event_id="drill", test_event=True)
        vtn.add_event([1], now + timedelta(hours=2), 600, event_id="drill-later", test_event=True)
        await until(lambda: all(gw.schedule.get(e) for e in ("real", "drill", "drill-later")), 10, "the events")
        assert gw.level == 2.0
        srv = await server(LiveView(gw))
        async with chromium_page() as page:
            await open_dashboard(page, srv.url + "/")

            async def phase(event_id):
                return (await page.locator(f'#events tr[data-event="{event_id}"] td').nth(1).inner_text()).strip()
            assert await phase("real") == "active"
            assert await phase("drill") == "active (test event)"
            assert await phase("drill-later") == "pending (far, test event)"
            assert page.errors == []


async def test_the_utilitys_comment_on_an_event_is_shown_beside_it(server, tmp_path, free_tcp_port):
    async with _running(tmp_path, free_tcp_port()) as (vtn, gw):
        ev = put_event(vtn, [2])
        ev.event_descriptor.vtn_comment = "Heat advisory:   critical\tpeak day"
        eid = ev.event_descriptor.event_id
        await until(lambda: gw.schedule.get(eid) is not None, 10, "the event")
        srv = await server(LiveView(gw))
        async with chromium_page() as page:
            await open_dashboard(page, srv.url + "/")
            cell = page.locator(f'#events tr[data-event="{eid}"] td').nth(0)
            assert (await cell.inner_text()).split("\n") == [eid, "Heat advisory: critical peak day"]
            assert page.errors == []


async def test_an_event_cancelled_while_it_winds_down_says_so_and_its_step_in_force(
        server, tmp_path, free_tcp_port, monkeypatch):
    # cancelled with a startafter while it runs, its level holds to a random time within it (rule 65): the table read
    # plain "cancelled" while ADR-Event-Level still showed its level, and the operator saw a shed with no event
    monkeypatch.setattr(random, "uniform", lambda a, b: (a + b) / 2)     # the start and the end drawn mid-window
    async with _running(tmp_path, free_tcp_port()) as (vtn, gw):
        eid = vtn.add_event([2, 3], datetime.now(timezone.utc) - timedelta(minutes=20), 1800, start_after_seconds=600)
        await until(lambda: gw.level == 2.0, 10, "the event running")
        vtn.cancel_event(eid)
        await until(lambda: gw.schedule.get(eid).cancelled, 10, "the cancellation")
        assert gw.level == 2.0      # for 300 s yet
        srv = await server(LiveView(gw))
        async with chromium_page() as page:
            await open_dashboard(page, srv.url + "/")
            cells = page.locator(f'#events tr[data-event="{eid}"] td')
            assert (await cells.nth(1).inner_text()).strip() == "cancelled (winding down)"
            assert (await cells.nth(2).inner_text()).strip() == "2 now → 3"
            assert page.errors == []


async def test_an_event_past_its_simple_intervals_is_not_said_to_be_overridden(server, tmp_path, free_tcp_port):
    # a SIMPLE shed of 10 min beside a LOAD_DISPATCH signal of an hour (a hand-written VTN's; openleadr's refuses to
    # send signals of different lengths): after the shed the event is active at level 0, and "active (overridden)"
    # had the operator look for an event of higher priority that was not there
    async with raw_gateway(tmp_path, free_tcp_port) as (raw, gw):
        start = datetime.now(timezone.utc) - timedelta(minutes=15)
        await deliver(raw, distribute(raw.vtn_id, [event("dispatch", start, "PT1H", [
            signal([interval(2, "PT10M", 0)], sid="s"),
            signal([interval(-50, "PT1H", 0)], "LOAD_DISPATCH", "delta", "d")], status="active")]))
        await until(lambda: gw.schedule.get("dispatch") is not None, 10, "the event")
        assert (gw.schedule.state().level, gw.schedule.state().active) == (0.0, True)
        srv = await server(LiveView(gw))
        async with chromium_page() as page:
            await open_dashboard(page, srv.url + "/")
            phase = page.locator('#events tr[data-event="dispatch"] td').nth(1)
            assert (await phase.inner_text()).strip() == "active"
            assert page.errors == []
