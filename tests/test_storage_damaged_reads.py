"""storage.path damaged while the gateway runs (a page a failing card tears), met by a read rather than a write.

The events' store's reads raised out of the BAS's ADR-Opt-Out write, which then never reached the VTN (a traceback in
the log, said as a bug); the telemetry queue's read of its backlog returned nothing at the damage, with nothing said,
and no reading went to the VTN after it; the chart's read of the forecaster's history fell back to memory without a
word. And the restart the lines ask for lost every row of a table one of whose pages was torn, thousands still
readable. Pages are torn as a page read back as zeros: deterministic, where random bytes may leave cells SQLite reads.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest
from bacnet_peer import BacnetPeer
from gateway_process import START_S, GatewayProcess, write_config
from test_storage_damaged_midrun import leaf_pages, stores_with_readings
from waiting import FIRST_CYCLE_SECONDS, eventually

from bacnet_api import points as P
from forecaster.store import ForecastStore
from ven.storage_fault import StorageFault
from ven.storage_salvage import set_aside_if_damaged
from ven.telemetry import TelemetryQueue
from ven.vtn_server import DemoVtn

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def tear_page(path, tree: str, middle: bool = True, every: bool = False, cells: bool = False) -> None:
    """A leaf of `tree` (its middle one, or its first; or all of them) made zeros, as a page a failing card lost reads
    back (with `cells`, its header left and the rest 0xff: every cell's pointer past the page); the file's -wal
    checkpointed into it first, so no newer copy of the page hides the damage."""
    size, leaves = leaf_pages(path, tree)
    with open(path, "r+b") as f:
        for page in leaves if every else [leaves[len(leaves) // 2] if middle else leaves[0]]:
            f.seek((page - 1) * size + (8 if cells else 0))
            f.write(b"\xff" * (size - 8) if cells else bytes(size))


def unreadable(path, sql: str) -> bool:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
            db.execute(sql).fetchall()
    except sqlite3.DatabaseError as err:
        return "malformed" in str(err)
    return False


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("cells", [False, True], ids=["page-zeros", "cells-torn"])
def test_a_start_keeps_the_rows_of_a_table_around_its_torn_page(tmp_path, caplog, cells):
    # the copy of a table stopped at its torn page and kept none of it: a week's backlog for one page of 30 readings.
    # A page whose cells are torn, its header left, reads as rows of one garbage rowid, out of order
    path = tmp_path / "gw.sqlite"
    queue = TelemetryQueue(path, max_age=timedelta(days=7))
    for i in range(3000):
        queue.add(T0 + timedelta(seconds=i), 90.0)
    queue.close()
    store = ForecastStore(str(path))
    store.save(range(1000, 4000), [50.0] * 3000, [1] * 3000)
    tear_page(path, "telemetry_queue", cells=cells)
    tear_page(path, "forecast_minute", middle=False, cells=cells)
    caplog.set_level(logging.INFO)
    assert set_aside_if_damaged(path) is not None
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(said) == 1, said
    assert "of telemetry_queue read around its damaged pages" in said[0], said
    assert "of forecast_minute read around its damaged pages" in said[0], said
    queue = TelemetryQueue(path, max_age=timedelta(days=7))
    kept = [s.seq for s in queue.peek(5000)]
    queue.close()
    # one leaf's readings lost, those before and after it kept with their numbers, in order
    assert 2900 < len(kept) < 3000 and kept[0] == 1 and kept[-1] == 3000 and kept == sorted(kept), len(kept)
    with contextlib.closing(sqlite3.connect(path)) as db:
        minutes = [k for k, in db.execute("SELECT minute FROM forecast_minute ORDER BY minute")]
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert 2800 < len(minutes) < 3000 and minutes[-1] == 3999, len(minutes)     # 100 minutes a leaf


def test_the_backlog_read_meeting_a_torn_page_is_said_once_and_what_reads_is_sent_in_order(tmp_path, caplog):
    # the read of the backlog returned nothing at the damage, with nothing said: no reading went to the VTN from then
    # on, and /api/status said the file was fine
    path = tmp_path / "gw.sqlite"
    store, queue = stores_with_readings(path)
    tear_page(path, "telemetry_queue")
    store.save_value("after", "1")      # another connection's write: the queue reads the file's pages again
    caplog.set_level(logging.INFO)
    sent = []
    for i in range(40):     # a delivery that reads ahead of what it sends, as vtn_delivery does
        batch = queue.peek(300)[:100]
        queue.ack(batch)
        sent += [s.seq for s in batch]
        queue.add(T0 + timedelta(seconds=3000 + i), 90.0)
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.levelno for r in said] == [logging.ERROR], [r.getMessage() for r in said]
    line = said[0].getMessage()
    assert f"storage.path {path} is damaged" in line and "table telemetry_queue" in line, line
    assert "restart" in line, line
    # every reading before the damage went, in order; none after it (the VTN could not take them after newer ones)
    assert 1400 < len(sent) < 1600 and sent == list(range(1, len(sent) + 1)), (len(sent), sent[-3:])
    # the readings taken after it go to the file, not memory: deleting those the VTN took, beside the torn page,
    # failed every reading's write, and the restart lost all of them
    assert queue.status()["storage_error"] is not None and queue.status()["in_memory"] == 0, queue.status()
    queue.close()
    store.close()
    assert set_aside_if_damaged(path) is not None     # the restart the line asks for
    queue = TelemetryQueue(path, max_age=timedelta(days=1))
    kept = {s.ts for s in queue.peek(5000)}
    queue.close()
    assert {T0 + timedelta(seconds=3000 + i) for i in range(40)} <= kept


def test_the_charts_history_read_meeting_a_torn_page_gives_what_reads(tmp_path):
    path = tmp_path / "gw.sqlite"
    store = ForecastStore(str(path))
    store.save(range(1000, 4000), [50.0] * 3000, [1] * 3000)
    tear_page(path, "forecast_minute")
    got = store.history(0.0)
    assert got["unreadable"] is not None and "malformed" in got["unreadable"]
    assert 1400 < len(got["power"]["time"]) < 1600, len(got["power"]["time"])


@pytest.mark.timeout(240)     # a gateway process's start (START_S), then the test
async def test_a_gateway_whose_saved_state_and_history_tear_while_it_runs_goes_on(tmp_path, free_udp_port,
                                                                                  free_tcp_port):
    # The kv table's page torn: the BAS's ADR-Opt-Out write read the command held there first, which raised; the VTN
    # never heard the optOut. The forecaster's history torn: the chart fell back to memory with nothing said.
    storage = (tmp_path / "gw.sqlite").resolve()
    now = int(time.time() // 60)
    store = ForecastStore(str(storage))
    store.save(range(now - 2000, now - 1), [50.0] * 1999, [1] * 1999)    # a day and a half of history
    bacnet_port, http_port, vtn_port = free_udp_port(), free_tcp_port(), free_tcp_port()
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=bacnet_port, http_port=http_port, vtn_port=vtn_port, storage=storage,
                 ven_name="torn-reads", cycle_seconds=60)
    gateway, opt_out = f"127.0.0.1:{bacnet_port}", P.BY_NAME[P.OPT_OUT].object_id
    async with DemoVtn(vtn_port, poll_seconds=0.5) as vtn:
        with GatewayProcess(config, tmp_path / "gateway.log") as gw:
            await eventually(lambda: vtn.vens and "edge-gateway ready" in gw.log(), START_S, "registration")
            eid = vtn.add_event([1.0], datetime.now(timezone.utc) + timedelta(hours=1), 3600)
            await eventually(lambda: any(e == eid and o == "optIn" for _, e, o in vtn.opts), 30, "the optIn")
            async with BacnetPeer(free_udp_port(), timeout=10.0) as bas:    # the BAS's command, held in the kv table
                assert await bas.write(gateway, opt_out, "presentValue", "inactive", priority=8) is None
            # torn until a read of it fails: a gateway's write between the checkpoint and the tear puts a whole copy
            # of the page in the -wal
            for _ in range(50):
                tear_page(storage, "kv", every=True)    # wherever the BAS's command is
                tear_page(storage, "forecast_minute")
                if unreadable(storage, "SELECT * FROM kv") and unreadable(storage, "SELECT * FROM forecast_minute"):
                    break
                await asyncio.sleep(0.1)    # a checkpoint a reader of the gateway held back: once it let go
            assert unreadable(storage, "SELECT * FROM kv")
            with contextlib.closing(sqlite3.connect(storage, timeout=10)) as db:
                db.execute("PRAGMA user_version = 1")   # a write: the gateway's connections read the pages again
                db.commit()
            async with BacnetPeer(free_udp_port(), timeout=10.0) as bas:
                assert await bas.write(gateway, opt_out, "presentValue", "active", priority=8) is None
                await eventually(lambda: any(e == eid and o == "optOut" for _, e, o in vtn.opts), 30, "the optOut")
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
                    async with http.get(f"http://127.0.0.1:{http_port}/api/history?hours=48") as r:
                        assert r.status == 200, await r.text()
                        history = await r.json()

                    async def damage_said():
                        async with http.get(f"http://127.0.0.1:{http_port}/api/status") as r:
                            st = (await r.json())["storage"]
                            # each part whose read met it, until the restart
                            return not st["ok"] and {"events", "forecaster"} <= st["errors"].keys()
                    await eventually(damage_said, 30, "/api/status saying storage.path is not fine")
                # the device still answers, the point holds the BAS's command
                assert await bas.read(gateway, opt_out, "presentValue") == "active"
            await eventually(lambda: "the dashboard's chart" in gw.log(), 30, "the chart's damage said")
            assert gw.alive
    log = gw.log()
    power = [kw for kw in history["power_kw"] if kw is not None]
    assert len(power) > 1900, len(power)    # every minute, the damaged page's from the forecaster's memory
    said = [line for line in log.splitlines() if " ERROR " in line]
    assert len(said) == 1 and f"storage.path {storage} is damaged" in said[0] and "restart" in said[0], said
    assert "Traceback" not in log, log[-3000:]
    # the restart the line asks for: the file aside, every row that reads kept (the history around its torn page)
    with GatewayProcess(config, tmp_path / "restart.log") as gw:
        await eventually(lambda: "edge-gateway ready" in gw.log(), START_S, "the restart")
    said = [line for line in gw.log().splitlines() if f"storage.path {storage} is damaged" in line]
    assert len(said) == 1 and "row(s) of forecast_minute read around its damaged pages" in said[0], said
    with contextlib.closing(sqlite3.connect(storage, timeout=10)) as db:
        assert db.execute("SELECT COUNT(*) FROM forecast_minute").fetchone()[0] > 1850


def test_the_failed_reads_read_meeting_a_torn_page_is_said_once(tmp_path, caplog):
    # the intervals' failed reads were read as none at the damage, with nothing said: reported to the VTN as if read
    path = tmp_path / "gw.sqlite"
    queue = TelemetryQueue(path, max_age=timedelta(days=7))
    queue.add_failed(*(T0 + timedelta(seconds=10 * i) for i in range(3000)))
    queue.add(T0, 90.0)
    tear_page(path, "telemetry_failed_reads")
    caplog.set_level(logging.INFO)
    for hour in range(9):
        queue.failed_reads(T0 + timedelta(hours=hour), T0 + timedelta(hours=hour + 1))
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.levelno for r in said] == [logging.ERROR], [r.getMessage() for r in said]
    assert "table telemetry_failed_reads" in said[0].getMessage() and "restart" in said[0].getMessage()
    assert queue.status()["storage_error"] is not None
    queue.close()


@pytest.mark.timeout(60)
async def test_the_history_reload_after_a_clock_step_meeting_a_torn_page_is_said_once(tmp_path, caplog):
    # a box booted at 2020 and put right by NTP reloads its stored history; a torn page of it failed that read at every
    # cycle, said as the history's writes refused and taken again, a pair of lines each time
    from test_forecast_clock import BOOT_2020, _stored_history

    from ven.config import ForecasterConfig
    from ven.forecast_service import ForecastService
    path = str(tmp_path / "gw.sqlite")
    real = time.time()
    _stored_history(path, real - 60)
    fault = StorageFault(path, retry_seconds=1, settle_seconds=0)
    clock, published = [BOOT_2020], []
    svc = ForecastService(ForecasterConfig(cycle_seconds=0.05, source="meter"), path, publish=published.append,
                          clock=lambda: clock[0], fault=fault)
    await svc.start()
    try:
        svc.on_meter(BOOT_2020, 100.0)
        await eventually(lambda: published and published[-1].issued_at == BOOT_2020, FIRST_CYCLE_SECONDS,
                         "a forecast at 2020")
        tear_page(path, "forecast_minute")
        caplog.set_level(logging.INFO)
        clock[0] = real = time.time()                           # NTP steps the clock right
        for i in range(20):     # cycles, each saving its minute
            clock[0] = real + 60 * i
            svc.on_meter(clock[0], 150.0)
            await eventually(lambda: published[-1].issued_at == clock[0], 10, "a forecast")
        assert svc.storage_ok
    finally:
        await svc.stop()
    said = [r for r in caplog.records if "storage.path" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.ERROR], [r.getMessage() for r in said]
    assert "table forecast_minute" in said[0].getMessage() and "restart" in said[0].getMessage()
