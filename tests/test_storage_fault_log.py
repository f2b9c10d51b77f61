"""storage.path refusing writes is one fault in the operator's log: one line when it starts, naming the path, the
cause and what each part of the gateway does meanwhile (events kept in memory, telemetry waiting in memory, the
forecaster's history not stored), and one when the last part writes again, saying how long it lasted and what went
from memory to the file (ven/storage_fault.py). Before, each part said its own start and end: three ERROR lines and
four INFO lines for one fault. Real SQLite files: under a regular file (which even root cannot make a directory of),
and on a tmpfs filled up."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
import time
from datetime import timedelta

import pytest
from test_faults_storage import T0, _event, _minutes, cover, fill, tmpfs, uncover
from waiting import eventually

from bacnet_api.simulator import MeterSimulator
from ven.app import Gateway
from ven.config import ForecasterConfig
from ven.config_load import parse_config
from ven.forecast_service import ForecastService
from ven.storage import Storage
from ven.telemetry import TelemetryQueue

pytestmark = [pytest.mark.timeout(90), pytest.mark.mostly_waiting]


def three_parts(path):
    """The one fault, and the events' store, the telemetry queue and the forecaster (not started) on `path` reporting
    into it, as the app wires them."""
    from ven.storage_fault import StorageFault

    fault = StorageFault(path, 0.1, settle_seconds=0)
    return (fault, Storage(path, reopen_seconds=0.1, fault=fault),
            TelemetryQueue(path, reopen_seconds=0.1, fault=fault),
            ForecastService(ForecasterConfig(cycle_seconds=0.05, source="meter"), str(path), publish=lambda f: None,
                            reopen_seconds=0.1, fault=fault))


def storage_lines(caplog, path) -> list[tuple[str, str]]:
    """The log's lines naming storage.path: the fault's own, and no part's (checked here)."""
    said = [r for r in caplog.records if f"storage.path {path}" in r.getMessage()]
    assert {r.name for r in said} <= {"ven.storage_fault"}, [(r.name, r.getMessage()) for r in said]
    return [(r.levelname, r.getMessage()) for r in said]


def config(directory, ports, retry=0.5, telemetry=True, settle=0.0, **openadr):
    return parse_config({
        "bacnet": {"address": f"127.0.0.1/8:{ports['bacnet_port']}", "device_id": 500461},
        "meter": {"router": f"127.0.0.1:{ports['meter_port']}", "poll_seconds": 1.0, "timeout_seconds": 1.0},
        "openadr": {"vtn_url": f"http://127.0.0.1:{ports['vtn_port']}/OpenADR2/Simple/2.0b", "ven_name": "fault-46",
                    "retry_max_seconds": 2.0, "telemetry": telemetry, **openadr},
        "storage": {"path": str(directory / "gw.sqlite"), "retry_seconds": retry, "settle_seconds": settle},
        "http": {"enabled": False},
        "forecaster": {"cycle_seconds": 0.5},
    }, "test", environ={})


@pytest.fixture
def ports(free_udp_port, free_tcp_port):
    return dict(bacnet_port=free_udp_port(), meter_port=free_udp_port(), vtn_port=free_tcp_port())


async def test_a_file_that_cannot_be_opened_at_the_start_is_one_line_then_one_when_it_opens(tmp_path, ports, caplog):
    caplog.set_level(logging.INFO)
    where = tmp_path / "data"
    where.write_text("")        # a regular file where the directory should be: no part can open the file, root or not
    path = where / "gw.sqlite"
    gw = Gateway(config(where, ports, settle=1.0))     # its end said by the app's look, a second after the writes
    async with MeterSimulator(address=f"127.0.0.1/8:{ports['meter_port']}", value=87.5):
        await gw.start()
        try:
            # the meter's first reading is kept (an event-store value), queued (telemetry) and learnt (forecaster)
            await eventually(lambda: gw.telemetry.status()["in_memory"] >= 2, 15, "readings waiting in memory")
            await eventually(lambda: not gw.forecast.storage_ok, 10, "the forecaster without its file")
            assert set(gw.storage_status()["errors"]) == {"events", "telemetry", "forecaster"}
            said = storage_lines(caplog, path)
            assert len(said) == 1 and said[0][0] == "ERROR", said
            start = said[0][1]
            for consequence in ("events are kept in memory", "telemetry readings wait in memory",
                                "forecast history is not stored", "a restart before then loses what memory holds"):
                assert consequence in start, start
            assert "File exists" in start and start.count("storage.path") == 1, start

            where.unlink()      # the operator puts the directory right: every part opens the file at its next try
            await eventually(lambda: gw.storage_status()["ok"], 20, "every part writing the file")
            await eventually(lambda: len(storage_lines(caplog, path)) == 2, 10, "the end line, steady for 1 s")
            said = storage_lines(caplog, path)
            assert [level for level, _ in said] == ["ERROR", "INFO"], said
            end = said[1][1]
            assert "(steadily for 1 s)" in end or "(steadily for 2 s)" in end, end
            assert f"storage.path {path} takes writes again after " in end and "MB free" not in end, end
            assert "telemetry reading(s)" in end and "held in memory go to it" in end, end
            # the meter's last read, a saved value, not an event: no event changed
            assert "change(s) to events and saved state" in end and "event change" not in end, end
            queued = gw.telemetry.pending
        finally:
            await gw.stop()
    with contextlib.closing(sqlite3.connect(path)) as db:      # nothing lost
        assert db.execute("SELECT value FROM kv WHERE key = 'meter_read'").fetchone() is not None
        assert db.execute("SELECT COUNT(*) FROM telemetry_queue").fetchone()[0] >= queued >= 2
        assert db.execute("SELECT COUNT(*) FROM forecast_minute").fetchone()[0] >= 1
    stopped = [r.getMessage() for r in caplog.records if "edge-gateway stopped" in r.getMessage()]
    assert len(stopped) == 1 and "storage.path" not in stopped[0], stopped     # no fault left open: all written


async def test_parts_writing_again_one_by_one_end_the_fault_once_the_last_does(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    with tmpfs(tmp_path / "disk", "size=2m") as disk:
        path = disk / "gw.sqlite"
        fault, store, q, svc = three_parts(path)
        k = int(time.time() // 60)
        await svc.start()
        try:
            svc.on_meter((k - 60) * 60 - 30, 100.0)
            await eventually(lambda: _minutes(str(path)) == [(k - 60, 100.0)], 10, "the first minute stored")
            filler = fill(disk)
            for i in range(300):        # enough rows that the file must grow
                q.add(T0 + timedelta(seconds=i), 80.0 + i)
            assert q.write_error and "full" in q.write_error
            events = [_event(f"e{i}", "x" * 2000) for i in range(30)]
            store.save_events(events)
            assert store.write_error
            for minute in range(k - 59, k):     # a minute the forecaster saves is a row or two: an hour's
                svc.on_meter(minute * 60 - 30, 150.0)
            await eventually(lambda: not svc.storage_ok, 10, "the forecaster's save refused")
            said = storage_lines(caplog, path)
            assert [level for level, _ in said] == ["ERROR"], said
            assert "full" in said[0][1], said

            filler.unlink()
            await eventually(lambda: svc.storage_ok, 10, "the forecaster writing again")
            q.add(T0 + timedelta(seconds=300), 380.0)
            assert q.write_error is None
            # two parts write again, the events not yet: the same fault, no end line
            assert [level for level, _ in storage_lines(caplog, path)] == ["ERROR"], storage_lines(caplog, path)
            assert store.flush() and store.write_error is None
        finally:
            await svc.stop()
        said = storage_lines(caplog, path)
        assert [level for level, _ in said] == ["ERROR", "INFO"], said
        assert "30 change(s) to events and saved state" in said[1][1] and "300 telemetry reading(s)" in said[1][1], said
        assert "minute(s) of forecast history" in said[1][1], said
        # the disk a little less full, not steadily writable: another fault may follow soon, and the line says so
        assert " MB free on its file system (it may fill again): " in said[1][1], said
        assert not fault.open and fault.fault() is None
        q.close()
        store.close()
        assert len(Storage(path).load_events()) == 30
        assert [s.kw for s in TelemetryQueue(path).peek(1000)] == [80.0 + i for i in range(301)]
        assert len(_minutes(str(path))) == 60


async def test_a_stop_with_the_fault_open_names_it_and_says_no_part_line_after_it(tmp_path, ports, caplog):
    caplog.set_level(logging.INFO)
    with tmpfs(tmp_path / "disk", "size=2m") as disk:
        path = disk / "gw.sqlite"
        gw = Gateway(config(disk, ports, retry=0.2))
        async with MeterSimulator(address=f"127.0.0.1/8:{ports['meter_port']}", value=87.5):
            await gw.start()
            try:
                await eventually(lambda: gw.telemetry.pending >= 2, 15, "readings queued in the file")
                await eventually(lambda: _minutes(str(path)), 10, "the forecaster's first minute stored")
                fill(disk)
                # the queue writes each reading; the forecaster only every few cycles, the last at the stop
                await eventually(lambda: gw.telemetry.write_error, 15, "the queue's write refused")
            finally:
                await gw.stop()
    said = storage_lines(caplog, path)
    assert [level for level, _ in said] == ["ERROR"], said
    stopped = [r.getMessage() for r in caplog.records if "edge-gateway stopped" in r.getMessage()]
    assert len(stopped) == 1 and "storage.path refusing writes for " in stopped[0], stopped
    # what is lost, part by part: "what they held in memory is lost" named parts that held nothing beside one that did
    assert re.search(r"storage\.path refusing writes for \d+ s \(telemetry(, forecaster)? refused: \d+ telemetry "
                     r"reading\(s\)( and \d+ minute\(s\) of forecast history)? held in memory are lost\)",
                     stopped[0]), stopped


async def test_with_telemetry_off_the_fault_ends_once_the_file_takes_writes(tmp_path, ports, caplog, monkeypatch):
    # openadr.telemetry false queues no reading, and only a reading tried the queue's file again: the fault, /healthz
    # and edge_gateway_storage_writable stayed open until a restart, long after events and forecaster wrote again
    from ven import app

    monkeypatch.setattr(app, "LOOK_EVERY_S", 0.3)
    caplog.set_level(logging.INFO)
    where = tmp_path / "data"
    where.write_text("")
    path = where / "gw.sqlite"
    gw = Gateway(config(where, ports, telemetry=False))
    async with MeterSimulator(address=f"127.0.0.1/8:{ports['meter_port']}", value=87.5):
        await gw.start()
        try:
            await eventually(lambda: not gw.forecast.storage_ok, 10, "the forecaster without its file")
            said = storage_lines(caplog, path)
            assert len(said) == 1 and said[0][0] == "ERROR", said
            assert "telemetry readings" not in said[0][1], said     # telemetry is off: nothing of it waits

            where.unlink()
            await eventually(lambda: gw.storage_status()["ok"], 15, "every part writing the file")
            await eventually(lambda: len(storage_lines(caplog, path)) == 2, 5, "the end line")
            assert [level for level, _ in storage_lines(caplog, path)] == ["ERROR", "INFO"]
        finally:
            await gw.stop()
    stopped = [r.getMessage() for r in caplog.records if "edge-gateway stopped" in r.getMessage()]
    assert len(stopped) == 1 and "storage.path" not in stopped[0], stopped


def test_a_storage_path_written_with_dot_slash_is_named_once_in_the_start_line(tmp_path, caplog, monkeypatch):
    # the events' error names the path as pathlib writes it ("data/gw.sqlite"): the start line said it twice,
    # "storage.path ./data/gw.sqlite refuses writes (storage.path data/gw.sqlite: cannot create directory ...)"
    from ven.storage_fault import StorageFault

    caplog.set_level(logging.INFO)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").write_text("")
    fault = StorageFault("./data/gw.sqlite", 0.1)
    store = Storage("./data/gw.sqlite", reopen_seconds=0.1, fault=fault)
    said = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(said) == 1 and said[0].count("storage.path") == 1, said
    assert said[0].startswith("storage.path ./data/gw.sqlite refuses writes (cannot create directory data: File "
                              "exists)"), said
    store.close()


async def test_a_disk_that_refuses_only_the_biggest_write_says_which_parts_it_refuses(tmp_path, caplog):
    # A near-full disk refuses the forecaster's model (a fit's blob, the biggest write) while the events' and the
    # queue's rows still go in: the start line said "events are kept in memory, telemetry readings wait in memory"
    # while both were written, and /api/status named the forecaster alone
    import os

    caplog.set_level(logging.INFO)
    with tmpfs(tmp_path / "disk", "size=4m") as disk:
        path = disk / "gw.sqlite"
        fault, store, q, svc = three_parts(path)
        await svc.start()
        try:
            free = os.statvfs(disk)
            (disk / "filler").write_bytes(b"\0" * (free.f_bavail * free.f_frsize - 300_000))
            k = int(time.time() // 60)
            svc.on_meter((k - 1) * 60 - 30, 100.0)         # a minute of history to save with it
            svc._unsaved_model = os.urandom(1_000_000)     # a fitted model bigger than what is free
            await asyncio.get_running_loop().run_in_executor(svc._cycle_pool, svc._persist, svc._save)
            for i in range(20):
                q.add(T0 + timedelta(seconds=i), 100.0 + i)
            store.save_events([_event("e1", "x")])
            assert store.write_error is None and q.write_error is None and not svc.storage_ok
            said = storage_lines(caplog, path)
            assert [level for level, _ in said] == ["ERROR"], said
            # the minutes went in before the model: its history is stored, not its model
            assert ": the forecaster's fitted model is not stored until it takes them again (tried every 0.1 s), and " \
                   "events are kept in memory and telemetry readings wait in memory once it refuses their writes " \
                   "too; " in said[0][1], said
            assert _minutes(str(path)) == [(k - 1, 100.0)]

            (disk / "filler").unlink()
            await asyncio.get_running_loop().run_in_executor(svc._cycle_pool, svc._persist, svc._save)
            assert svc.storage_ok
            said = storage_lines(caplog, path)
            assert [level for level, _ in said] == ["ERROR", "INFO"], said
            assert said[1][1].endswith("; the forecaster's fitted model too"), said
        finally:
            await svc.stop()
            q.close()
            store.close()


async def test_with_telemetry_off_the_end_line_promises_no_telemetry(tmp_path, ports, caplog, monkeypatch):
    # a file holding readings queued while telemetry was on, not mounted yet at a start with openadr.telemetry false:
    # the end line said they "are sent after the newer intervals", which nothing sends
    from ven import app

    monkeypatch.setattr(app, "LOOK_EVERY_S", 0.3)
    caplog.set_level(logging.INFO)
    with tmpfs(tmp_path / "disk", "size=4m") as disk:
        path = disk / "gw.sqlite"
        q = TelemetryQueue(path)
        for i in range(3):
            q.add(T0 + timedelta(seconds=i), 80.0)
        q.close()
        cover(disk)
        gw = Gateway(config(disk, ports, telemetry=False))
        try:
            async with MeterSimulator(address=f"127.0.0.1/8:{ports['meter_port']}", value=87.5):
                await gw.start()
                try:
                    await eventually(lambda: not gw.forecast.storage_ok, 10, "the forecaster without its file")
                    uncover(disk)
                    await eventually(lambda: len(storage_lines(caplog, path)) == 2, 15, "the end line")
                finally:
                    await gw.stop()
        finally:
            with contextlib.suppress(Exception):
                uncover(disk)
    said = storage_lines(caplog, path)
    assert [level for level, _ in said] == ["ERROR", "INFO"], said
    assert "telemetry" not in said[1][1].replace(str(path), ""), said


async def test_a_stop_on_a_full_disk_says_the_readings_the_vtn_took_are_reported_again(tmp_path, ports, caplog):
    # verify46b: the deletion of readings the VTN took waits (ACK_DEFER_MAX), and a full disk refused it at the stop:
    # the next start sent them again (under the new request, an interval the VTN had, with another value), and the stop
    # line said only "what they held in memory is lost"
    from ven.vtn_server import DemoVtn

    caplog.set_level(logging.INFO)
    with tmpfs(tmp_path / "disk", "size=8m") as disk:
        path = disk / "gw.sqlite"
        gw = Gateway(config(disk, ports, retry=0.2, telemetry_seconds=1.0))
        async with MeterSimulator(address=f"127.0.0.1/8:{ports['meter_port']}", value=87.5), \
                DemoVtn(ports["vtn_port"], poll_seconds=1) as vtn:
            await gw.start()
            try:
                await eventually(lambda: gw.telemetry.delivered >= 2, 20, "readings the VTN took")
                filler = fill(disk)
                await eventually(lambda: gw.telemetry.write_error, 15, "the queue's write refused")
            finally:
                await gw.stop()
            taken = {iv[0] for _, ivs in vtn.updates for iv in ivs}
        filler.unlink()     # room again, as at the next start
        stopped = [r.getMessage() for r in caplog.records if "edge-gateway stopped" in r.getMessage()]
        kept = [s for s in TelemetryQueue(path).peek(1000) if s.ts.replace(microsecond=0) in taken]
        assert kept, "no reading the VTN took stayed in the file: the case is not met"
        assert len(stopped) == 1 and (f"held in memory are lost), and {len(kept)} telemetry reading(s) "
                                      "the VTN took stay in it, their deletion refused: the next start reports them "
                                      "again") in stopped[0], stopped


def _refuse_then_take(q, disk, added: list) -> None:
    """Fill the disk until the queue's write is refused, then free it and add until one is taken: one flap."""
    filler = fill(disk)
    while not q.write_error and len(added) < 5000:
        q.add(T0 + timedelta(seconds=len(added)), 80.0)
        added.append(1)
    assert q.write_error, "the full disk took every write"
    filler.unlink()
    deadline = time.monotonic() + 5
    while q.write_error and time.monotonic() < deadline:
        time.sleep(0.11)    # the queue tries the file again every reopen_seconds
        q.add(T0 + timedelta(seconds=len(added)), 80.0)
        added.append(1)
    assert not q.write_error, q.write_error


def test_a_disk_that_flaps_is_one_fault_ended_once_writes_stay_taken(tmp_path, caplog):
    # A failing card, or a full disk freed a little at a time, refuses writes, takes them, refuses them again every
    # few seconds: each flap was an ERROR and an INFO line, thousands a day. One fault now: its end is said once every
    # part has written for the settle period (60 s by default, doubled for a fault back within 2 hours), counting the
    # refusals
    from ven.storage_fault import StorageFault

    caplog.set_level(logging.INFO)
    now = [1000.0]
    with tmpfs(tmp_path / "disk", "size=2m") as disk:
        path = disk / "gw.sqlite"
        fault = StorageFault(path, 0.1, clock=lambda: now[0])
        q = TelemetryQueue(path, reopen_seconds=0.1, fault=fault)
        added: list = []
        try:
            for _ in range(3):      # three flaps, 5 s apart
                _refuse_then_take(q, disk, added)
                now[0] += 5
            said = storage_lines(caplog, path)
            assert [level for level, _ in said] == ["ERROR"], said
            assert fault.open and "taking them again for 5 s and not yet steadily" in fault.fault(), fault.fault()

            now[0] += 50    # 55 s of writes taken: not yet steady
            fault.look()
            assert len(storage_lines(caplog, path)) == 1
            now[0] += 5
            fault.look()
            said = storage_lines(caplog, path)
            assert [level for level, _ in said] == ["ERROR", "INFO"], said
            assert f"storage.path {path} takes writes again after 10 s, refused 3 separate times (steadily for 60 s)" \
                   in said[1][1], said
            assert not fault.open and fault.fault() is None

            # back within 2 hours: the same start line, and its end needs twice the settle period
            now[0] += 600
            _refuse_then_take(q, disk, added)
            now[0] += 60
            fault.look()
            assert [level for level, _ in storage_lines(caplog, path)] == ["ERROR", "INFO", "ERROR"]
            now[0] += 60
            fault.look()
            said = storage_lines(caplog, path)
            assert [level for level, _ in said] == ["ERROR", "INFO", "ERROR", "INFO"], said
            assert "takes writes again after 0 s (steadily for 2 min)" in said[3][1], said
        finally:
            q.close()
        assert len(TelemetryQueue(path).peek(10_000)) == len(added)     # nothing lost
