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
from bacnet_peer import BacnetPeer
from gateway_process import START_S, GatewayProcess, write_config
from waiting import FIRST_CYCLE_SECONDS, eventually

from bacnet_api import points as P
from bacnet_api.simulator import MeterSimulator
from forecaster.core import Forecast
from forecaster.store import ForecastStore
from test_faults_storage import tmpfs
from test_gateway import read, system  # noqa: F401 - shared fixture
from ven.history import build_history
from ven.history_csv import history_csv
from ven.http_api import to_json
from ven.vtn_server import DemoVtn

pytestmark = pytest.mark.timeout(180)

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


def latest(at: float, f15, f60) -> dict:
    """The forecast service's last forecast as app.py hands it in (/api/status's forecaster.last_forecast)."""
    return {"issued_at": at, "demand_kw": {"15": f15, "60": f60}, "rate_kw_per_min": 0.1, "high_load": False,
            "low_load": False, "high_threshold_kw": 120.0, "low_threshold_kw": 60.0}


def test_ahead_is_the_forecast_services_latest_not_the_stored_ones(tmp_path):
    store = ForecastStore(str(tmp_path / "f.sqlite"))
    for at, f15, f60 in ((NOW - 125, 90.0, 95.0), (NOW - 65, 91.0, 96.0)):
        store.record_forecast(issue(at, f15, f60))
    issued = NOW - 25   # 01:50:05, not stored yet (the service writes every few cycles, or cannot write)
    last = latest(issued, 92.125, 97.5)
    body = build_history(NOW, 1.0, store.history(NOW - 3600), latest_forecast=last)
    assert body["ahead"] == {"issued_at": issued, "forecasts": [
        {"horizon": 15, "target": issued + 900, "minute": NOW - 30 + 900, "kw": 92.125},    # 02:05
        {"horizon": 60, "target": issued + 3600, "minute": NOW - 30 + 3600, "kw": 97.5}]}    # 02:50
    assert body["now"] == NOW
    # what lies ahead is not in the per-minute arrays: they end with now's minute
    assert body["minutes"][-1] == NOW - 30 and len(body["forecast_60"]) == 60
    assert 97.5 not in body["forecast_60"] and 92.125 not in body["forecast_15"]
    # nothing stored (storage.path cannot be written): the same forecast is ahead
    assert build_history(NOW, 1.0, EMPTY, latest_forecast=last)["ahead"] == body["ahead"]
    # nothing in memory (before the first cycle): stored forecasts are never read back as ahead
    assert build_history(NOW, 1.0, store.history(NOW - 3600))["ahead"] is None
    # the forecaster stopped: its last forecast is older than the flags' staleness, nothing is ahead
    assert build_history(NOW + 270, 1.0, EMPTY, latest_forecast=last)["ahead"] is not None   # 295 s old
    assert build_history(NOW + 280, 1.0, EMPTY, latest_forecast=last)["ahead"] is None       # 305 s
    assert build_history(NOW + 500, 1.0, EMPTY, flag_stale_seconds=600, latest_forecast=last)["ahead"] is not None
    # made while the power input is stale: the BAS reads the forecast points in fault, the chart shows none
    assert build_history(NOW, 1.0, EMPTY, input_stale=True, latest_forecast=last)["ahead"] is None
    # made without power (no demand to forecast from): no number, the points are in fault, nothing ahead
    assert build_history(NOW, 1.0, EMPTY, latest_forecast=latest(issued, None, None))["ahead"] is None
    assert build_history(NOW, 1.0, EMPTY)["ahead"] is None


def test_a_horizon_with_no_forecast_is_left_out():
    for f60 in (math.nan, None):
        ahead = build_history(NOW, 1.0, EMPTY, latest_forecast=latest(NOW - 20, 88.0, f60))["ahead"]
        assert ahead == {"issued_at": NOW - 20, "forecasts": [
            {"horizon": 15, "target": NOW - 20 + 900, "minute": NOW - 30 + 900, "kw": 88.0}]}
    # a Forecast's own keys are numbers, /api/status's text: either is read
    by_number = {"issued_at": NOW - 20, "demand_kw": {15: 88.0, 60: 90.0}}
    assert [f["kw"] for f in build_history(NOW, 1.0, EMPTY, latest_forecast=by_number)["ahead"]["forecasts"]] == [88.0, 90.0]


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



def test_a_cancelled_event_winding_down_shows_its_next_step_up_to_its_randomized_end():
    # 2.0b rule 65: a cancelled event with a startafter window runs on to a random time within it. A step starting
    # inside that wind-down drives ADR-Event-Level, but the chart took every cancellation for over, and showed it
    # neither ahead nor shaded until it began
    steps = {"event_id": "steps", "status": "cancelled", "opt": "optIn", "cancelled_at": iso(NOW + 900),
             "signals": [{"name": "SIMPLE", "type": "level", "intervals": [
                 {"start": iso(NOW - 600), "duration_seconds": 900.0, "payload": 1.0},
                 {"start": iso(NOW + 300), "duration_seconds": 1800.0, "payload": 3.0},
                 {"start": iso(NOW + 2100), "duration_seconds": 600.0, "payload": 2.0}]}]}
    body = build_history(NOW, 1.0, EMPTY, [steps])
    assert body["upcoming"] == [
        {"start": NOW + 300, "end": NOW + 900, "level": 3, "event_id": "steps", "opt": "optIn", "upcoming": True}]
    assert [(e["level"], e["start"], e["end"]) for e in body["events"]] == [(1, NOW - 600, NOW + 300)]

def test_the_csv_has_no_row_after_now():
    store = {"power": {"time": [NOW - 90, NOW - 30], "kw": [100.0, 101.0]},
             "forecasts": {15: {"target_time": [NOW - 25 + 900], "issued_at": [NOW - 25], "forecast_kw": [102.0]},
                           60: {"target_time": [NOW - 25 + 3600], "issued_at": [NOW - 25], "forecast_kw": [130.0]}}}
    body = to_json(build_history(NOW, 1.0, store, [event("soon", NOW + 10, 30, level=3.0)],
                                 latest_forecast=latest(NOW - 25, 102.0, 130.0)))
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


async def test_while_storage_cannot_be_written_the_chart_shows_the_forecast_the_points_carry(
        tmp_path, free_udp_port, free_tcp_port):
    # storage.path on a read-only mount: the forecasts are kept in memory only, and the chart showed none
    # ahead while the BAS read them on the points and /api/status named them
    bacnet_port, meter_port, vtn_port, http_port = free_udp_port(), free_udp_port(), free_tcp_port(), free_tcp_port()
    log_path, gw = tmp_path / "gateway.log", f"127.0.0.1:{bacnet_port}"
    with tmpfs(tmp_path / "ro", "ro,size=8m") as ro:
        config = tmp_path / "gw.toml"
        write_config(config, bacnet_port=bacnet_port, meter_port=meter_port, vtn_port=vtn_port, http_port=http_port,
                     storage=ro / "gw.sqlite", ven_name="ahead-ro", retry_min_seconds=0.2, cycle_seconds=2)
        async with MeterSimulator(address=f"127.0.0.1/8:{meter_port}", value=87.5), \
                DemoVtn(vtn_port, poll_seconds=1) as vtn, BacnetPeer(free_udp_port(), timeout=1.0) as peer, \
                aiohttp.ClientSession(f"http://127.0.0.1:{http_port}", timeout=aiohttp.ClientTimeout(total=5)) as http:
            async def get(path):
                async with http.get(path) as r:
                    assert r.status == 200, await r.text()
                    return await r.json()

            with GatewayProcess(config, log_path):
                await eventually(lambda: vtn.vens, START_S, f"registration\n{log_path.read_text()}")
                # randomized: the VTN allows 20 minutes of start-after, the gateway draws its own offset
                nominal = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(minutes=30)
                vtn.add_event([2], start=nominal, interval_seconds=600, event_id="rand", start_after_seconds=1200)
                ev = await eventually(lambda: _event(get, "rand"), 10, "the event at the gateway")
                offset = ev["start_offset_seconds"]
                assert 0 < offset <= 1200, ev
                upcoming = (await get("/api/history?hours=1"))["upcoming"]
                # the chart shades the interval where the BAS will see the level change
                assert [(e["event_id"], e["start"], e["end"]) for e in upcoming] == [
                    ("rand", nominal.timestamp() + offset, nominal.timestamp() + offset + 600)], (offset, upcoming)

                async def same_forecast():
                    # one cycle apart at most: taken between two looks that agree
                    before = (await get("/api/status"))["forecaster"].get("last_forecast")
                    body = await get("/api/history?hours=1")
                    after = await get("/api/status")
                    last = after["forecaster"].get("last_forecast")
                    if last is None or last != before or last["demand_kw"]["15"] is None:
                        return None
                    return body, last, after
                body, last, status = await eventually(same_forecast, 30, "a forecast from the meter's power")
                assert not status["storage"]["ok"] and "forecaster" in status["storage"]["errors"], status["storage"]
                assert body["ahead"] is not None, (last, body["ahead"])
                assert body["ahead"]["issued_at"] == last["issued_at"]
                assert {f["horizon"]: f["kw"] for f in body["ahead"]["forecasts"]} == {
                    int(h): round(kw, 3) for h, kw in last["demand_kw"].items()}
                for f in body["ahead"]["forecasts"]:
                    assert f["kw"] == pytest.approx(87.5, abs=0.01)   # the meter's steady 87.5 kW, persisted
                # the BAS reads the same forecast on its points
                assert await read(peer, gw, P.FIFTEEN_MIN_FORECAST) == pytest.approx(87.5, abs=0.01)
                assert await read(peer, gw, P.ONE_HOUR_FORECAST) == pytest.approx(87.5, abs=0.01)


async def _event(get, event_id: str) -> dict | None:
    return next((e for e in (await get("/api/status"))["events"] if e["event_id"] == event_id), None)


async def test_a_304_makes_no_body_and_its_tag_is_the_one_a_200_gives(tmp_path, free_udp_port, free_tcp_port,
                                                                      monkeypatch):
    # a dashboard's refresh with nothing new (every second or so) read storage.path and made the whole body (2 MB
    # for 35 days) only to hash it and answer 304
    import ven.history
    from test_gateway import fast_config
    from test_schedule import make_event
    from ven.app import Gateway

    made = []
    real_build = ven.history.build_history
    monkeypatch.setattr(ven.history, "build_history", lambda *a, **kw: (made.append(1), real_build(*a, **kw))[1])
    # no meter answering and one forecast cycle an hour: nothing changes unless the test changes it
    gateway = Gateway(fast_config(tmp_path, bacnet_port=free_udp_port(), meter_port=free_udp_port(),
                                  vtn_port=free_tcp_port(), http_port=free_tcp_port(), cycle_seconds=3600))
    await gateway.start()
    url = f"{gateway.http.url}/api/history?hours=1"
    try:
        await eventually(lambda: gateway.forecast.last_forecast_view() is not None, FIRST_CYCLE_SECONDS,
                         "the cycle at start")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async def get(tag=None):
                async with http.get(url, headers={"If-None-Match": tag} if tag else {}) as r:
                    return r.status, r.headers["ETag"], (await r.json() if r.status == 200 else None)

            async def same_state_twice():
                # the minute is in the tag (the chart's span moves with it): these answers and all the steps below
                # within one, begun in its first 40 s
                minute = time.time() // 60
                if time.time() % 60 > 40:
                    return None
                first, second = await get(), await get()
                # the gateway's own writes to storage.path (its VTN outage, a forecast saved) change the state
                # between them too: the same tag for the same state is what is waited for (CI at 48c2dbd)
                return (first, second) if time.time() // 60 == minute and first[1] == second[1] else None
            (status, a, body), (again, a_again, body_again) = await eventually(same_state_twice, 130,
                                                                               "the same state twice within a minute")
            assert status == again == 200
            assert {**body, "now": 0} == {**body_again, "now": 0}
            before = len(made)
            assert (await get(a))[:2] == (304, a)
            assert len(made) == before, "a 304 made no body"

            assert all(v is None for v in gateway.forecast.last_forecast_view()["demand_kw"].values())
            gateway.forecast.on_meter(time.time(), 93.0)          # a reading: the minute in progress changes
            # the first reading brings a cycle at once: a tag taken before it ends is not the state after (CI at
            # 5d13bf2: the 304 asked with the tag c was a 200)
            await eventually(lambda: any(v is not None for v in gateway.forecast.last_forecast_view()["demand_kw"]
                                         .values()), 30, "the cycle the first reading brings")
            status, b, body = await get(a)
            assert status == 200 and b != a and body["power_kw"][-1] == 93.0
            assert (await get(b))[:2] == (304, b)
            start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(minutes=30)
            gateway.schedule.upsert(make_event("soon", [2], start, 600))    # an event to come, within the horizon
            status, c, body = await get(b)
            assert status == 200 and c not in (a, b) and [e["event_id"] for e in body["upcoming"]] == ["soon"]
            assert (await get(c))[:2] == (304, c)
    finally:
        await gateway.stop()
