"""Rows of storage.path this version cannot use (out of range, malformed, edited by hand, a newer version's): each is
skipped with one WARNING, or taken as what it clearly meant, and the rest of the file starts and is served."""
from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
import math
import sqlite3
import time
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest
from bacnet_peer import BacnetPeer
from gateway_process import START_S, GatewayProcess, write_config
from test_schedule import Recorder, make_event
from waiting import eventually

from bacnet_api import points as P
from forecaster.store import ForecastStore
from ven.config import ForecasterConfig, OpenadrConfig
from ven.forecast_service import ForecastService
from ven.schedule import EventSchedule
from ven.storage import Storage
from ven.telemetry import TelemetryQueue
from ven.vtn import VtnClient
from ven.vtn_server import DemoVtn


def now() -> datetime:
    return datetime.now(timezone.utc)


def edit(path, event_id: str, change) -> str:
    """Rewrite one stored event's body with `change(body dict)`, as a hand edit or another version would."""
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        (body,), = db.execute("SELECT body FROM adr_events WHERE event_id = ?", (event_id,))
        d = json.loads(body)
        change(d)
        text = json.dumps(d)
        db.execute("UPDATE adr_events SET body = ? WHERE event_id = ?", (text, event_id))
    return text


def interval(i: int, field: int, value):
    def change(d):
        d["signals"][0]["intervals"][i][field] = value
    return change


# Each crashed every start (OverflowError, TypeError, RecursionError out of load or the first publish), or put a
# value the BAS must never see on ADR-Event-Level. (A duration past year 9999 is read as open-ended: below.)
UNREADABLE = {
    "ends after year 9999": interval(0, 0, "9999-12-31T23:00:00+00:00"),
    "starts in year 1, +14:00": interval(0, 0, "0001-01-01T00:00:00+14:00"),
    "a randomization offset of 9000 years": lambda d: d.update(start_offset=9000 * 365.25 * 86400),
    "a startafter of 1e20 s": lambda d: d.update(start_after=1e20),
    "a ramp-up of 9000 years": lambda d: d.update(ramp_up=9000 * 365.25 * 86400),
    "a priority of inf": lambda d: d.update(priority=float("inf")),
    "a modification number of inf": lambda d: d.update(modification_number=float("inf")),
    "a number as its id": lambda d: d.update(event_id=5),
    "a level of inf": interval(0, 2, float("inf")),
    "a level of NaN": interval(0, 2, float("nan")),
    "an answer the VTN does not know": lambda d: d.update(opt="maybe"),
}


@pytest.mark.parametrize("what", list(UNREADABLE))
async def test_a_stored_event_out_of_range_is_skipped_and_the_rest_starts(tmp_path, caplog, what):
    path = tmp_path / "gw.sqlite"
    first = Storage(path)
    first.save_event(make_event("kept", [2], now() - timedelta(seconds=1), 600))
    first.save_event(make_event("bad", [3], now() + timedelta(minutes=5), 600))
    first.close()
    body = edit(path, "bad", UNREADABLE[what])
    rec = Recorder()
    sched = EventSchedule(Storage(path), rec)
    await asyncio.wait_for(sched.start(), 5)
    try:
        assert rec.seen[-1][1].level == 2.0 and rec.seen[-1][1].start_minutes == 0.0
        assert [e["event_id"] for e in sched.events()] == ["kept"]
        assert [e.event_id for e in sched.history_events(now() - timedelta(days=30))] == ["kept"]
        sched.set_opt_out(True)
        sched.set_opt_out(False)
    finally:
        await sched.stop()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT body FROM adr_events WHERE event_id = 'bad'").fetchone()[0] == body
    said = [r for r in caplog.records if "this version cannot read" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "WARNING" and "(bad; " in said[0].getMessage(), said
    assert not any(r.exc_info for r in caplog.records)


@pytest.mark.parametrize("seconds", [1e20, float("inf"), 9999 * 365.25 * 86400])
async def test_a_stored_duration_past_year_9999_is_until_further_notice(tmp_path, caplog, seconds):
    # The known gap of earlier rounds: an event whose interval lasts P9999Y (what a VTN means by "until
    # further notice" when it does not use rule 47's 0) raised OverflowError out of every start.
    path = tmp_path / "gw.sqlite"
    first = Storage(path)
    first.save_event(make_event("kept", [2], now() - timedelta(seconds=1), 600))
    first.save_event(make_event("long", [1], now() + timedelta(minutes=5), 600))
    first.close()
    edit(path, "long", interval(0, 1, seconds))
    sched = EventSchedule(Storage(path), Recorder())
    await asyncio.wait_for(sched.start(), 5)
    try:
        events = {e["event_id"]: e for e in sched.events()}
        assert events["long"]["open_ended"] and events["long"]["end"] is None and events["long"]["status"] == "far"
        assert sched.state().level == 2.0 and sched.state().start_minutes == 0.0
    finally:
        await sched.stop()
    assert "cannot read" not in caplog.text


@pytest.mark.timeout(180)     # a gateway process's start (START_S), then the test
async def test_a_gateway_with_unreadable_events_starts_serves_the_rest_and_takes_the_vtn_s_copy(
        tmp_path, free_udp_port, free_tcp_port):
    # One row out of range in storage.path: the process died at every start (systemd restarting it every 5 s), the
    # BAS without its device and the utility's events unanswered, until someone deleted the file by hand and lost
    # the BAS's ADR-Opt-Out commands and every other event with it.
    bacnet_port, vtn_port, http_port = free_udp_port(), free_tcp_port(), free_tcp_port()
    config, log_path, storage = tmp_path / "gw.toml", tmp_path / "gateway.log", tmp_path / "gw.sqlite"
    first = Storage(storage)
    first.save_event(make_event("kept", [2], now() - timedelta(seconds=1), 900))
    first.save_event(make_event("long", [1], now() + timedelta(hours=2), 600))
    first.save_event(make_event("evt-beyond", [3], now() + timedelta(hours=3), 600))
    first.save_value("bacnet_commands:ADR-Opt-Out", json.dumps({"12": False}))
    first.close()
    edit(storage, "long", interval(0, 1, 9999 * 365.25 * 86400))
    edit(storage, "evt-beyond", interval(0, 0, "9999-12-31T23:00:00+00:00"))
    write_config(config, bacnet_port=bacnet_port, vtn_port=vtn_port, http_port=http_port, storage=storage,
                 ven_name="stored-rows")
    gw = f"127.0.0.1:{bacnet_port}"
    async with BacnetPeer(free_udp_port(), timeout=1.0) as peer, aiohttp.ClientSession() as http:
        with GatewayProcess(config, log_path) as gateway:
            async def level():
                assert gateway.alive, gateway.log()[-3000:]
                return await peer.read(gw, P.BY_NAME[P.EVENT_LEVEL].object_id, "presentValue") == 2.0
            await eventually(level, START_S, "the readable event at level 2")
            commands = await peer.read(gw, P.BY_NAME[P.OPT_OUT].object_id, "priorityArray")
            assert [(i + 1, v) for i, v in enumerate(commands) if v is not None] == [(12, 0)], commands

            async def events():
                async with http.get(f"http://127.0.0.1:{http_port}/api/status") as r:
                    return {e["event_id"]: e for e in (await r.json())["events"]}

            async def answering():      # the HTTP server starts after the BACnet device answers
                try:
                    return await events()
                except aiohttp.ClientConnectionError:
                    return None
            listed = await eventually(answering, START_S, "the HTTP API")
            assert set(listed) == {"kept", "long"} and listed["long"]["open_ended"], listed
            # The VTN lists the event whose stored copy was skipped: to this run it is a new event, answered as
            # one (optIn, ADR-Opt-Out being inactive), and the VTN's copy takes the unreadable row's place.
            async with DemoVtn(port=vtn_port, poll_seconds=1.0) as vtn:
                await eventually(lambda: vtn.vens, 30, "registration")
                eid = vtn.add_event([1], start=now() + timedelta(hours=3), interval_seconds=600,
                                    event_id="evt-beyond")
                await eventually(lambda: vtn.opts_for(eid) == ["optIn"], 20, "the VTN's event answered")
                await eventually(_listed(events, "evt-beyond"), 10, "the VTN's copy on /api/status")
            assert gateway.stop() == 0, gateway.log()[-3000:]
    with contextlib.closing(sqlite3.connect(storage)) as db:
        body = json.loads(db.execute("SELECT body FROM adr_events WHERE event_id = 'evt-beyond'").fetchone()[0])
    assert not body["signals"][0]["intervals"][0][0].startswith("9999"), body
    text = gateway.log()
    assert text.count("1 stored event(s) this version cannot read (evt-beyond; ValueError: a time beyond the years "
                      "1-9999") == 1, text
    assert "Traceback" not in text, text


def _listed(events, eid):
    async def check():
        return eid in await events()
    return check


@pytest.mark.parametrize("row", [(-5, "abc", 1), (-5, float("inf"), 1), (-5, 5.0, "x"), (4_300_000_000, 5.0, 1)],
                         ids=["sum text", "sum inf", "count text", "minute after year 9999"])
async def test_one_unreadable_minute_of_forecaster_history_leaves_the_rest_loaded_and_stored(tmp_path, caplog, row):
    # One such row made the whole history fail to load (ValueError, or MemoryError asking for 30 GB for a minute
    # in year 9999): the forecaster started from nothing, logged that storage.path could not be written, and
    # never stored a minute again in that run (each retry failed on the same row, quietly). An inf was loaded
    # into a history that takes only finite readings.
    path = str(tmp_path / "g.sqlite")
    k = int(time.time() // 60)
    ForecastStore(path).save(list(range(k - 600, k - 10)), [50.0] * 590, [1] * 590)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("INSERT OR REPLACE INTO forecast_minute VALUES (?, ?, ?)", (row[0] if row[0] > 0 else k + row[0],
                                                                              *row[1:]))
    svc = ForecastService(ForecasterConfig(cycle_seconds=0.05), path, publish=lambda f: None, min_kw=0, max_kw=5000)
    await asyncio.wait_for(svc.start(), 10)
    try:
        assert svc.status()["history_minutes"] == 590
        t = time.time()
        svc.on_meter(t, 60.0)
    finally:
        await svc.stop()
    with contextlib.closing(sqlite3.connect(path)) as db:   # stored again: the store is in use
        assert db.execute("SELECT sum_kw FROM forecast_minute WHERE minute = ?", (math.ceil(t / 60),)).fetchone() == (60.0,)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    said = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(said) == 1 and "1 stored minute(s) of forecaster history unreadable" in said[0], said


async def test_an_unreadable_minute_of_history_is_named_once_however_often_the_clock_steps(tmp_path, caplog):
    # Each wall-clock step reloads the stored minutes; each reload named the same row again: a box whose clock
    # went back and forth (a failing battery clock and NTP) repeated the WARNING at every step, as if a new fault.
    path = str(tmp_path / "g.sqlite")
    real = time.time()
    k = int(real // 60)
    ForecastStore(path).save(list(range(k - 600, k - 10)), [50.0] * 590, [1] * 590)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE forecast_minute SET sum_kw = 'abc' WHERE minute = ?", (k - 300,))
    clock = [real]
    svc = ForecastService(ForecasterConfig(cycle_seconds=0.05, source="meter"), path, publish=lambda f: None,
                          clock=lambda: clock[0], min_kw=0, max_kw=5000)
    caplog.set_level(logging.INFO, logger="ven.forecast_service")
    await asyncio.wait_for(svc.start(), 10)
    try:
        svc.on_meter(real, 60.0)
        for step in range(2):
            clock[0] = 1577836800.0 + step * 60       # a box without a battery clock at 2020, then NTP again
            svc.on_meter(clock[0], 60.0)
            clock[0] = real = time.time()
            reloads = len([r for r in caplog.records if "reloaded" in r.getMessage()])
            svc.on_meter(real, 60.0)
            await eventually(lambda: len([r for r in caplog.records if "reloaded" in r.getMessage()]) > reloads,
                             10, "the stored history reloaded")
    finally:
        await svc.stop()
    said = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(said) == 1 and "1 stored minute(s) of forecaster history unreadable (minute" in said[0], said


async def test_an_unreadable_stored_load_flag_starts_off_and_the_history_loads(tmp_path, caplog):
    # int('on') out of the last issued forecast's high_load: as above, the whole history unloaded and never stored
    path = str(tmp_path / "g.sqlite")
    k = int(time.time() // 60)
    store = ForecastStore(path)
    store.save(list(range(k - 600, k - 10)), [50.0] * 590, [1] * 590)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("INSERT INTO forecast_issue (issued_at, model, high_load, low_load) VALUES (?, 'persistence', "
                   "'on', 0)", (time.time() - 120,))
    svc = ForecastService(ForecasterConfig(cycle_seconds=0.05), path, publish=lambda f: None, min_kw=0, max_kw=5000)
    await asyncio.wait_for(svc.start(), 10)
    try:
        assert svc.status()["history_minutes"] == 590
    finally:
        await svc.stop()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    said = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(said) == 1 and "the last stored high-load unreadable" in said[0], said


@pytest.mark.parametrize("bad", [("garbage", 5.0), ("2026-12-01T10:00:00", 5.0), ("9999-12-31T23:59:59+00:00", 5.0),
                                 (None, "abc"), (None, float("inf"))],
                         ids=["time not a time", "time of no zone", "time at year 9999's end", "kW text", "kW inf"])
async def test_an_unreadable_queued_sample_is_dropped_and_the_backlog_behind_it_reaches_the_vtn(
        tmp_path, free_tcp_port, caplog, bad):
    # A row of the telemetry queue that is not a sample raised out of every report to the VTN (and every /metrics
    # scrape), or went out as an interval a VTN refuses: the backlog behind it, and every reading after it, never
    # reached the utility.
    path = tmp_path / "gw.sqlite"
    backlog = [now().replace(microsecond=0) - timedelta(seconds=s) for s in (8, 6, 4)]
    first = TelemetryQueue(path)
    for ts in backlog:
        first.add(ts, 80.0)
    first.close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE telemetry_queue SET ts = ?, kw = ? WHERE seq = 2",
                   (bad[0] or (backlog[1].isoformat()), bad[1]))
    storage, queue = Storage(path), TelemetryQueue(path)
    schedule = EventSchedule(storage, lambda st: None)
    vtn = DemoVtn(free_tcp_port(), poll_seconds=1)
    client = VtnClient(OpenadrConfig(vtn_url=vtn.url, telemetry_seconds=1.0, retry_min_seconds=0.2,
                                     retry_max_seconds=1.0), schedule, queue)
    await vtn.start()
    await schedule.start()
    await client.start()
    try:
        await eventually(lambda: queue.pending == 0 and vtn.updates, 15, "the backlog delivered")
        got = [ts for _, ivs in vtn.updates for ts, *_ in ivs]
        assert backlog[0] in got and backlog[2] in got and backlog[1] not in got, got
        assert queue.status()["dropped"] == 1
    finally:
        await client.stop()
        await schedule.stop()
        await vtn.stop()
        queue.close()
        storage.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT COUNT(*) FROM telemetry_queue").fetchone() == (0,)
    said = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(said) == 1 and "1 queued telemetry sample(s) unreadable (row 2: " in said[0], said
    assert not any(r.exc_info for r in caplog.records)


@pytest.mark.parametrize("key, value, said", [
    ("bacnet_database", '{"revision": 1e400, "objects": []}', "stored BACnet objects of the last run unreadable "
                                                             "(OverflowError: cannot convert float infinity to integer)"),
    ("bacnet_database", '{"revision": -5, "objects": []}', "stored BACnet objects of the last run unreadable "
                                                          "(ValueError: databaseRevision -5)"),
    ("bacnet_commands:ADR-Opt-Out", "[" * 100000 + "]" * 100000, "stored ADR-Opt-Out commands '[[[["),
    ("bacnet_cov_subscriptions", "[" * 100000 + "]" * 100000, "stored BACnet COV subscriptions '[[[["),
    ("bacnet_cov_subscriptions", '{"subscriptions": [{"ends": 1e400}]}', "unreadable (ValueError: ends inf): none "
                                                                         "restored"),
], ids=["databaseRevision 1e400", "databaseRevision -5", "ADR-Opt-Out commands nested 10^5 deep",
        "COV subscriptions nested 10^5 deep", "a COV subscription ending at 1e400"])
@pytest.mark.timeout(180)     # a gateway process's start (START_S), then the test
async def test_an_unreadable_stored_value_is_one_warning_and_the_gateway_starts(
        tmp_path, free_udp_port, free_tcp_port, key, value, said):
    # Each raised out of every start (OverflowError, bacpypes3's ValueError('unsigned'), RecursionError).
    bacnet_port, config, log_path, storage = free_udp_port(), tmp_path / "gw.toml", tmp_path / "log", tmp_path / "gw.sqlite"
    first = Storage(storage)
    first.save_event(make_event("kept", [2], now() - timedelta(seconds=1), 900))
    first.save_value(key, value)
    first.close()
    write_config(config, bacnet_port=bacnet_port, http_port=free_tcp_port(), storage=storage, ven_name="stored-kv")
    gw = f"127.0.0.1:{bacnet_port}"
    async with BacnetPeer(free_udp_port(), timeout=1.0) as peer:
        with GatewayProcess(config, log_path) as gateway:
            async def level():
                assert gateway.alive, gateway.log()[-3000:]
                return await peer.read(gw, P.BY_NAME[P.EVENT_LEVEL].object_id, "presentValue") == 2.0
            await eventually(level, START_S, "the stored event at level 2")
            assert gateway.stop() == 0, gateway.log()[-3000:]
    text = gateway.log()
    lines = [line for line in text.splitlines() if said in line]
    assert len(lines) == 1 and " WARNING " in lines[0] and len(lines[0]) < 500, text[-3000:]
    assert "Traceback" not in text, text[-3000:]


@pytest.mark.parametrize("column, value", [("sum_kw", float("inf")), ("sum_kw", "abc"), ("sum_kw", "12.5kW"),
                                           ("count", -2)],
                         ids=["sum inf", "sum text", "sum text after a number", "count negative"])
@pytest.mark.timeout(180)     # a gateway process's start (START_S), then the test
async def test_a_gateway_with_an_unreadable_minute_in_its_history_resumes_and_charts_the_rest(
        tmp_path, free_udp_port, free_tcp_port, column, value):
    # The whole process, as a site has it: the row failed the load (an ERROR saying storage.path could not be
    # written), the forecaster and the dashboard's chart started from nothing. Then the chart (and its CSV) drew the
    # row the forecaster skipped: SQLite's sum / count made 'abc' 0 kW, '12.5kW' 12.5 kW and a count of -2 -25 kW.
    http_port, config, log_path, storage = free_tcp_port(), tmp_path / "gw.toml", tmp_path / "log", tmp_path / "gw.sqlite"
    k = int(time.time() // 60)
    ForecastStore(str(storage)).save(list(range(k - 120, k - 10)), [50.0] * 110, [1] * 110)
    with contextlib.closing(sqlite3.connect(storage)) as db, db:
        db.execute(f"UPDATE forecast_minute SET {column} = ? WHERE minute = ?", (value, k - 60))
    write_config(config, bacnet_port=free_udp_port(), http_port=http_port, storage=storage, ven_name="stored-history")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        with GatewayProcess(config, log_path) as gateway:
            async def history():
                assert gateway.alive, gateway.log()[-3000:]
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with http.get(f"http://127.0.0.1:{http_port}/api/history?hours=3") as r:
                        assert r.status == 200, await r.text()
                        return await r.json()
            body = await eventually(history, START_S, "/api/history")
            kw = [v for v in body["power_kw"] if v is not None]
            assert kw and set(kw) == {50.0} and len(kw) == 109, body["power_kw"]
            async with http.get(f"http://127.0.0.1:{http_port}/api/history.csv?hours=3") as r:
                rows = list(csv.DictReader(io.StringIO(await r.text())))
            kw = [row["power_kw"] for row in rows if row["power_kw"]]
            assert set(kw) == {"50.0000"} and len(kw) == 109, kw
            assert gateway.stop() == 0, gateway.log()[-3000:]
    text = gateway.log()
    assert "forecaster resumed 109 minutes of stored history" in text, text[-3000:]
    assert text.count("1 stored minute(s) of forecaster history unreadable") == 1, text[-3000:]
    assert "Traceback" not in text and " ERROR " not in text, text[-3000:]


@pytest.mark.timeout(270)     # two gateway process starts (START_S each), then the test
async def test_unreadable_queued_samples_dropped_stay_counted_after_a_restart(tmp_path, free_udp_port, free_tcp_port):
    # The samples dropped as unreadable were counted in memory only: after a restart /api/status and /metrics said
    # fewer samples had been dropped than the operator had seen (the rows were gone from the file by then).
    http_port, config, log_path, storage = free_tcp_port(), tmp_path / "gw.toml", tmp_path / "log", tmp_path / "gw.sqlite"
    queue = TelemetryQueue(storage)
    for s in (8, 6, 4):
        queue.add(now() - timedelta(seconds=s), 80.0)
    queue.close()
    with contextlib.closing(sqlite3.connect(storage)) as db, db:
        db.execute("UPDATE telemetry_queue SET kw = 'abc' WHERE seq = 1")   # the oldest, which a scrape reads
    write_config(config, bacnet_port=free_udp_port(), http_port=http_port, storage=storage, ven_name="stored-queue")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async def dropped():
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with http.get(f"http://127.0.0.1:{http_port}/metrics") as r:   # a scrape reads the queue
                    metrics = await r.text()
                async with http.get(f"http://127.0.0.1:{http_port}/api/status") as r:
                    status = await r.json()
                counted = [line for line in metrics.splitlines() if line.startswith("edge_gateway_telemetry_dropped_total")]
                return status["vtn"]["telemetry"]["dropped"], counted

        for run in ("the run that drops it", "the next run"):
            with GatewayProcess(config, log_path) as gateway:
                await eventually(dropped, START_S, run)
                seen = await dropped()      # a second scrape: the counter is brought up to date before each
                assert seen[0] == 1 and seen[1] == ["edge_gateway_telemetry_dropped_total 1.0"], (run, seen)
                assert gateway.stop() == 0, gateway.log()[-3000:]
    with contextlib.closing(sqlite3.connect(storage)) as db:
        assert db.execute("SELECT seq FROM telemetry_queue ORDER BY seq").fetchall() == [(2,), (3,)]
    assert "Traceback" not in gateway.log()
