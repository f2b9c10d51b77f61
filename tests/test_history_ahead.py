"""What /api/history says lies ahead: the latest forecast as the BAS reads it ("ahead", none once it is stale)
and the event intervals starting within the longest horizon ("upcoming"), kept out of the per-minute
arrays and "events" so that those, and the CSV made from them, still end at now."""
from __future__ import annotations

import csv
import io
import math
import time
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest
from waiting import eventually

from forecaster.core import Forecast
from forecaster.store import ForecastStore
from test_gateway import system  # noqa: F401 - shared fixture
from ven.history import build_history
from ven.history_csv import history_csv
from ven.http_api import to_json

pytestmark = pytest.mark.timeout(90)

NOW = 1_795_312_230.0  # 2026-11-22 01:50:30 UTC
EMPTY = {"power": {"time": [], "kw": []}}


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def event(event_id, start, minutes, level=2.0, **kw):
    return {"event_id": event_id, "status": "far", "opt": "optIn", "start": iso(start), "end": iso(start + minutes * 60),
            "signals": [{"name": "SIMPLE", "type": "level",
                         "intervals": [{"start": iso(start), "duration_seconds": minutes * 60.0, "payload": level}]}],
            **kw}


def issue(at: float, f15: float, f60: float) -> Forecast:
    return Forecast(issued_at=at, demand_kw={15: f15, 60: f60}, rate_kw_per_min=0.1, high_load=False, low_load=False,
                    high_threshold_kw=120.0, low_threshold_kw=60.0, model="persistence", level_kw=f15)


def test_ahead_is_the_latest_forecast_from_the_store(tmp_path):
    store = ForecastStore(str(tmp_path / "f.sqlite"))
    for at, f15, f60 in ((NOW - 125, 90.0, 95.0), (NOW - 65, 91.0, 96.0), (NOW - 25, 92.125, 97.5)):
        store.record_forecast(issue(at, f15, f60))
    body = build_history(NOW, 1.0, store.history(NOW - 3600))
    issued = NOW - 25   # 01:50:05
    assert body["ahead"] == {"issued_at": issued, "forecasts": [
        {"horizon": 15, "target": issued + 900, "minute": NOW - 30 + 900, "kw": 92.125},    # 02:05
        {"horizon": 60, "target": issued + 3600, "minute": NOW - 30 + 3600, "kw": 97.5}]}    # 02:50
    assert body["now"] == NOW
    # what lies ahead is not in the per-minute arrays: they end with now's minute
    assert body["minutes"][-1] == NOW - 30 and len(body["forecast_60"]) == 60
    assert 97.5 not in body["forecast_60"] and 92.125 not in body["forecast_15"]
    # the forecaster stopped: its last forecast is older than the flags' staleness, nothing is ahead
    assert build_history(NOW + 270, 1.0, store.history(NOW - 3600))["ahead"] is not None   # 295 s old
    assert build_history(NOW + 280, 1.0, store.history(NOW - 3600))["ahead"] is None       # 305 s
    assert build_history(NOW + 500, 1.0, store.history(NOW - 3600), flag_stale_seconds=600)["ahead"] is not None
    # made while the power input is stale: the BAS reads the forecast points in fault, the chart shows none
    assert build_history(NOW, 1.0, store.history(NOW - 3600), input_stale=True)["ahead"] is None
    assert build_history(NOW, 1.0, EMPTY)["ahead"] is None


def test_a_horizon_with_no_forecast_is_left_out_and_a_view_without_issue_times_is_read():
    store = {"power": {"time": [], "kw": []},
             # a view without "issued_at" (the store's target is the issue plus the horizon)
             "forecasts": {"15": {"target_time": [NOW - 20 + 900], "forecast_kw": [88.0]},
                           "60": {"target_time": [NOW - 20 + 3600], "forecast_kw": [math.nan]}}}
    ahead = build_history(NOW, 1.0, store)["ahead"]
    assert ahead == {"issued_at": NOW - 20, "forecasts": [
        {"horizon": 15, "target": NOW - 20 + 900, "minute": NOW - 30 + 900, "kw": 88.0}]}


def test_an_event_starting_within_the_longest_horizon_is_upcoming():
    soon = event("soon", NOW + 30 * 60, 60, level=2.0)
    later = event("later", NOW + 3 * 3600, 60, level=3.0)
    # cancelled before it started: it never runs, nothing to shade
    gone = event("gone", NOW + 20 * 60, 30, status="cancelled", cancelled_at=iso(NOW - 120))
    out = event("out", NOW + 50 * 60, 30, level=1.0, opt="optOut",
                opt_changes=[{"at": iso(NOW - 600), "opt": "optIn"}, {"at": iso(NOW - 60), "opt": "optOut"}])
    # running now at level 1, level 3 from 20 minutes on: the part that ran is an event, the next upcoming
    steps = {"event_id": "steps", "status": "active", "opt": "optIn",
             "signals": [{"name": "SIMPLE", "type": "level", "intervals": [
                 {"start": iso(NOW - 600), "duration_seconds": 1800.0, "payload": 1.0},
                 {"start": iso(NOW + 1200), "duration_seconds": 1800.0, "payload": 3.0}]}]}
    body = build_history(NOW, 1.0, EMPTY, [soon, later, gone, out, steps])
    assert body["upcoming"] == [
        {"start": NOW + 1200, "end": NOW + 3000, "level": 3, "event_id": "steps", "opt": "optIn", "upcoming": True},
        {"start": NOW + 1800, "end": NOW + 5400, "level": 2, "event_id": "soon", "opt": "optIn", "upcoming": True},
        {"start": NOW + 3000, "end": NOW + 4800, "level": 1, "event_id": "out", "opt": "optOut", "upcoming": True}]
    # "events" still holds only what ran, up to now
    assert [(e["event_id"], e["level"], e["start"]) for e in body["events"]] == [("steps", 1, NOW - 600)]
    # the window is the longest horizon
    wider = build_history(NOW, 1.0, EMPTY, [later], horizons=(15, 240))["upcoming"]
    assert [e["event_id"] for e in wider] == ["later"]
    assert build_history(NOW, 1.0, EMPTY, [later, gone])["upcoming"] == []


def test_the_csv_has_no_row_after_now():
    store = {"power": {"time": [NOW - 90, NOW - 30], "kw": [100.0, 101.0]},
             "forecasts": {15: {"target_time": [NOW - 25 + 900], "issued_at": [NOW - 25], "forecast_kw": [102.0]},
                           60: {"target_time": [NOW - 25 + 3600], "issued_at": [NOW - 25], "forecast_kw": [130.0]}}}
    body = to_json(build_history(NOW, 1.0, store, [event("soon", NOW + 10, 30, level=3.0)]))
    assert body["ahead"]["forecasts"][1]["kw"] == 130.0 and body["upcoming"][0]["start"] == NOW + 10
    rows = list(csv.DictReader(io.StringIO(history_csv(body))))
    assert len(rows) == 60 and rows[-1]["minute"] == iso(NOW - 30)
    # an event starting 10 s after now (inside now's minute) has not run: no level in the rows yet
    assert {r["event_level"] for r in rows} == {"0"}
    assert "130.0000" not in history_csv(body) and "102.0000" not in history_csv(body)


async def test_the_gateway_shows_its_latest_forecast_and_the_next_event_ahead(system):  # noqa: F811
    vtn, meter, gateway, peer, gw = system
    await eventually(lambda: gateway.vtn.connected, 10)
    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(minutes=40)
    vtn.add_event([2], start=start, interval_seconds=1800, event_id="next-evt")
    await eventually(lambda: any(e["event_id"] == "next-evt" for e in gateway.schedule.events()), 10)
    base = gateway.http.url
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async def history():
            async with http.get(f"{base}/api/history?hours=1") as r:
                assert r.status == 200
                body = await r.json()
            return body if body["ahead"] else None
        body = await eventually(history, 15)
        async with http.get(f"{base}/api/status") as r:
            last = (await r.json())["forecaster"]["last_forecast"]
    ahead = body["ahead"]
    # the forecast the BAS reads now, or the one a cycle (1 s) before it
    assert 0 <= last["issued_at"] - ahead["issued_at"] <= 5 and time.time() - ahead["issued_at"] < 10
    assert [f["horizon"] for f in ahead["forecasts"]] == [15, 60]
    for f in ahead["forecasts"]:
        assert f["target"] == ahead["issued_at"] + f["horizon"] * 60
        assert f["kw"] == pytest.approx(87.5, abs=0.01)   # the meter's steady 87.5 kW, persisted
    assert [(e["event_id"], e["level"], e["start"], e["upcoming"]) for e in body["upcoming"]] == [
        ("next-evt", 2, start.timestamp(), True)]
    assert all(e["event_id"] != "next-evt" for e in body["events"])
