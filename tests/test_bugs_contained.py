"""A bug in the gateway's own code (an exception nobody expected) in a job it runs again and again: the job goes on,
the log says it once with its traceback and once when it works again, and the stop line and /healthz name it while it
lasts. Each test makes one callee raise, as a bug would, in a real gateway with a real VTN and meter on loopback."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest

from bacnet_api import points as P
from bacnet_api.bug_guard import BugGuard
from test_gateway import system  # noqa: F401 - the shared fixture
from waiting import FIRST_CYCLE_SECONDS, eventually

pytestmark = pytest.mark.timeout(90)


class Raises:
    """Stands in for `real`: raises `err` the first `times` calls (None: while `armed`), then calls `real`."""

    def __init__(self, real, err: Exception, times: int | None = 1, when=lambda *a, **k: True):
        self.real, self.err, self.left, self.when, self.raised = real, err, times, when, 0
        self.armed = True

    def __call__(self, *args, **kwargs):
        if self.armed and (self.left is None or self.left > 0) and self.when(*args, **kwargs):
            self.raised += 1
            if self.left is not None:
                self.left -= 1
            raise self.err
        return self.real(*args, **kwargs)


def said(caplog, text: str, level: int | None = None) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage() and (level is None or r.levelno == level)]


def test_a_bug_is_said_once_with_its_traceback_again_only_when_it_fails_otherwise_and_when_it_ends(caplog):
    caplog.set_level(logging.INFO, logger="bugs")
    bug = BugGuard(logging.getLogger("bugs"), "the job", "tried again")

    def fail(n):
        with bug.guard():
            if n == 1:
                raise KeyError(f"one {n}")
            raise TypeError(f"two {n}")

    for n in (1, 1, 1, 2, 2, 1):    # the same place with other text each time is the same fault
        fail(n)
    assert bug.fault() == "the job failing (KeyError: 'one 1')" and bug.failures == 6
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == ["the job failed (a bug in the gateway): KeyError: 'one 1'; tried again",
                                                "the job still failing, now otherwise: TypeError: two 2"]
    assert all(r.exc_info for r in errors)
    with bug.guard():
        pass
    assert bug.fault() is None
    assert caplog.records[-1].getMessage() == "the job works again after 6 failures"
    fail(1)     # a new fault: said again, from the same place, whose traceback is in the log already
    [again] = [r for r in caplog.records if r.levelno == logging.ERROR][2:]
    assert again.getMessage().startswith("the job failed (a bug in the gateway): KeyError: 'one 1'; tried again (its "
                                         "traceback above, ") and not again.exc_info
    with bug.guard():
        raise KeyError("one")   # from another place: its own traceback
    assert [r for r in caplog.records if r.levelno == logging.ERROR][-1].exc_info


def test_a_bug_met_by_some_passes_only_is_one_fault_until_the_job_has_worked_a_while(caplog, monkeypatch):
    # a bug in a failed read's path, with a meter that fails one read in three: a start and an end at each
    import bacnet_api.bug_guard as bug_guard

    now = [1000.0]
    monkeypatch.setattr(bug_guard.time, "monotonic", lambda: now[0])
    caplog.set_level(logging.INFO, logger="bugs")
    bug = BugGuard(logging.getLogger("bugs"), "meter read", settle_s=30.0)
    for n in range(30):     # one pass in three fails, 10 s apart
        with bug.guard():
            if n % 3 == 0:
                raise ZeroDivisionError("in the failed read's path")
        now[0] += 10
    assert [r.levelno for r in caplog.records] == [logging.ERROR] and bug.failures == 10
    for _ in range(4):      # 40 s working: over
        with bug.guard():
            pass
        now[0] += 10
    assert caplog.records[-1].getMessage() == "meter read works again after 10 failures" and not bug.failing


def test_a_peers_fault_is_not_traced_but_a_programming_error_in_the_gateways_own_code_is_once(caplog):
    # the VEN session and the meter read take any exception for the VTN's or the meter's fault: a bug in the gateway
    # read as "VTN session error TypeError: ...", with no traceback to say where
    from bacnet_api.bug_guard import trace_if_a_bug
    from bacnet_api.settle import span

    caplog.set_level(logging.INFO, logger="bugs")
    seen: set = set()
    for _ in range(3):
        try:
            span("a kW")        # raises TypeError in bacnet_api/settle.py: the gateway's own code
        except TypeError as err:
            trace_if_a_bug(logging.getLogger("bugs"), "VTN session error", err, seen)
    for err in (TypeError("raised outside the gateway's code"), ConnectionResetError("reset by the VTN")):
        try:
            raise err
        except Exception as caught:  # noqa: BLE001
            trace_if_a_bug(logging.getLogger("bugs"), "VTN session error", caught, seen)
    [line] = caplog.records
    assert line.levelno == logging.ERROR and line.exc_info
    assert line.getMessage().startswith("VTN session error: TypeError: ") and "is a bug in the gateway" in \
        line.getMessage()


async def test_the_event_timer_goes_on_after_a_bug_in_one_of_its_passes(system, caplog):  # noqa: F811
    # one exception in the schedule's timer ended it: the event was stored and answered optIn, ADR-Event-Level
    # stayed 0 through it, and /healthz said ok
    vtn, meter, gateway, peer, gw = system
    caplog.set_level(logging.INFO)
    await eventually(lambda: gateway.vtn.connected, 15, "VTN connected")
    fault = Raises(gateway.schedule._next_wake, RuntimeError("a bug in the timer"))
    gateway.schedule._next_wake = fault
    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=3)
    vtn.add_event([2.0], start=start, interval_seconds=30, event_id="timer-bug")
    await eventually(lambda: gateway.schedule.get("timer-bug") is not None, 15, "the event received")
    await eventually(lambda: fault.raised, 10, "the bug")
    await eventually(lambda: gateway.device.get(P.EVENT_LEVEL) == 2.0, 15, "the event's level at its start")
    [line] = said(caplog, "event schedule's timer failed (a bug in the gateway): RuntimeError: a bug in the timer")
    assert line.levelno == logging.ERROR and line.exc_info
    assert said(caplog, "event schedule's timer works again after 1 failure")


async def failing_event(gateway, monkeypatch, event_id: str, err: Exception, times: int | None) -> Raises:
    """Once the VEN is connected, reading the VTN's event `event_id` raises `err` (`times` times; None: always)."""
    import ven.vtn_events as vtn_events

    await eventually(lambda: gateway.vtn.connected, 15, "VTN connected")
    fault = Raises(vtn_events.from_openleadr, err, times=times,
                   when=lambda raw, *a, **k: raw["event_descriptor"]["event_id"] == event_id)
    monkeypatch.setattr(vtn_events, "from_openleadr", fault)
    return fault


async def test_an_event_whose_handling_failed_is_handled_again_at_the_next_listing(system, caplog,  # noqa: F811
                                                                                  monkeypatch):
    # the VTN heard optOut, then optIn from openleadr's cache at the next listing, and the gateway never had the
    # event: the site told the utility it would run an event it never ran. The log had one line on openleadr's
    # logger, without a traceback, then nothing for 10 minutes
    vtn, meter, gateway, peer, gw = system
    caplog.set_level(logging.INFO)
    await failing_event(gateway, monkeypatch, "handled-a", TypeError("a bug in reading events"), times=1)
    start = datetime.now(timezone.utc) + timedelta(minutes=10)
    vtn.add_event([1.0], start=start, interval_seconds=600, event_id="handled-a")
    await eventually(lambda: vtn.opts_for("handled-a"), 15, "an answer to the event")
    assert vtn.opts_for("handled-a") == ["optOut"] and gateway.schedule.get("handled-a") is None
    vtn.add_event([2.0], start=start, interval_seconds=600, event_id="handled-b")    # the VTN lists its events again
    await eventually(lambda: gateway.schedule.get("handled-a") is not None, 15, "the event handled again")
    await eventually(lambda: vtn.opts_for("handled-a") == ["optOut", "optIn"], 10, "optIn once it is held")
    assert vtn.opts_for("handled-b") == ["optIn"]
    [line] = said(caplog, "handling an event from the VTN failed (a bug in the gateway): TypeError")
    assert line.levelno == logging.ERROR and line.exc_info and line.name == "ven.vtn"
    assert said(caplog, "handling an event from the VTN works again")


async def test_an_event_whose_handling_keeps_failing_is_one_fault_beside_those_that_work(system, caplog,  # noqa: F811
                                                                                        monkeypatch):
    # each listing handles the failing event and the others: "works again" after each message, and the traceback
    # again at the next, for as long as it failed
    vtn, meter, gateway, peer, gw = system
    caplog.set_level(logging.INFO)
    fault = await failing_event(gateway, monkeypatch, "always-fails", TypeError("a bug in reading this event"),
                                times=None)
    start = datetime.now(timezone.utc) + timedelta(minutes=10)
    vtn.add_event([1.0], start=start, interval_seconds=600, event_id="always-fails")
    for other in ("works-1", "works-2"):     # each a listing of all three
        vtn.add_event([2.0], start=start, interval_seconds=600, event_id=other)
        await eventually(lambda: vtn.opts_for(other) == ["optIn"], 15, f"{other} answered")
    assert fault.raised >= 2 and set(vtn.opts_for("always-fails")) == {"optOut"}
    assert len(said(caplog, "handling an event from the VTN failed")) == 1
    assert not said(caplog, "handling an event from the VTN works again")
    assert "handling an event from the VTN failing (TypeError: a bug in reading this event)" in gateway.degraded()


async def test_the_meter_poll_goes_on_after_a_bug_and_its_points_show_the_fault_meanwhile(system, caplog,  # noqa: F811
                                                                                         monkeypatch):
    # an exception after the read (the poll ticks' arithmetic) ended the poll: meter-power kept its last kW, not in
    # fault, and nothing was said until the forecaster ran out of power minutes later
    import bacnet_api.meter as meter_module

    vtn, meter, gateway, peer, gw = system
    caplog.set_level(logging.INFO)
    await eventually(lambda: gateway.device.get(P.METER_POWER) == 87.5, 15, "the meter read")
    fault = Raises(meter_module._utc_us, ZeroDivisionError("a bug after the read"), times=None)
    monkeypatch.setattr(meter_module, "_utc_us", fault)
    await eventually(lambda: gateway.device.get(P.METER_FAULT), 10, "meter-fault while the bug lasts")
    assert gateway.device.status_flags(P.METER_POWER)["fault"]
    assert "meter read failing (ZeroDivisionError: a bug after the read)" in gateway.degraded()
    await eventually(lambda: fault.raised >= 3, 10, "three polls with the bug")
    assert len(said(caplog, "meter read failed (a bug in the gateway)")) == 1
    fault.armed = False
    meter.set_value(42.0)
    await eventually(lambda: gateway.device.get(P.METER_POWER) == 42.0, 10, "the poll reading again")
    await eventually(lambda: said(caplog, "meter read works again after"), 10, "the end of the bug, 3 polls on")
    assert not any("meter read failing" in d for d in gateway.degraded())


async def test_the_forecast_goes_on_after_a_bug_and_a_lasting_one_is_one_line(system, caplog):  # noqa: F811
    # an exception outside the cycle proper ended forecasting (points frozen, not in fault, nothing said, and the
    # history since lost at the stop); one inside it was an ERROR and a traceback at every cycle, 1,440 a day
    vtn, meter, gateway, peer, gw = system
    caplog.set_level(logging.INFO)
    service = gateway.forecast
    await eventually(lambda: service.last_forecast is not None, FIRST_CYCLE_SECONDS, "a first forecast")
    fault = Raises(service.forecaster.needs_fit, RuntimeError("a bug before the cycle"), times=None)
    service.forecaster.needs_fit = fault
    await eventually(lambda: fault.raised >= 3, 15, "three cycles with the bug")
    assert len(said(caplog, "forecast cycle failed (a bug in the gateway)")) == 1
    assert "forecast cycle failing (RuntimeError: a bug before the cycle)" in gateway.degraded()
    fault.armed = False
    first = service.last_forecast
    await eventually(lambda: service.last_forecast is not first, 10, "forecasts again")
    await eventually(lambda: said(caplog, "forecast cycle works again after"), 5, "the end of the bug")


async def test_a_failing_forecast_cycle_shows_the_forecast_points_in_fault_to_the_bas(system, caplog):  # noqa: F811
    # the points kept the last forecast with statusFlags normal for as long as the bug lasted (hours): a BAS
    # holding its peak limit on fifteen-min-future-power and high-load-conditions took a frozen forecast as live
    vtn, meter, gateway, peer, gw = system
    caplog.set_level(logging.INFO)
    service = gateway.forecast
    await eventually(lambda: service.last_forecast is not None, FIRST_CYCLE_SECONDS, "a first forecast")
    forecast_points = (P.FIFTEEN_MIN_FORECAST, P.ONE_HOUR_FORECAST, P.RATE_OF_CHANGE, P.HIGH_LOAD, P.LOW_LOAD)

    async def flags(name):
        return await peer.read(gw, P.BY_NAME[name].object_id, "statusFlags")

    async def in_fault(name, fault=True):
        return await flags(name) == [0, int(fault), 0, 0]

    await eventually(lambda: in_fault(P.FIFTEEN_MIN_FORECAST, False), 10, "a live forecast")
    live = await peer.read(gw, P.BY_NAME[P.FIFTEEN_MIN_FORECAST].object_id, "presentValue")
    fault = Raises(service.forecaster.predict, RuntimeError("a bug in the cycle"), times=None)
    service.forecaster.predict = fault
    await eventually(lambda: fault.raised >= 1, 10, "a cycle with the bug")
    for name in forecast_points:
        await eventually(lambda: in_fault(name), 5, f"{name} in fault")
        assert await peer.read(gw, P.BY_NAME[name].object_id, "reliability") == "unreliableOther", name
    # the last forecast stays readable; the flags read inactive ("cannot tell"), as with no power input
    assert await peer.read(gw, P.BY_NAME[P.FIFTEEN_MIN_FORECAST].object_id, "presentValue") == live
    assert str(await peer.read(gw, P.BY_NAME[P.HIGH_LOAD].object_id, "presentValue")) == "inactive"
    fault.armed = False
    await eventually(lambda: in_fault(P.FIFTEEN_MIN_FORECAST, False), 10, "forecasts again")
    assert await in_fault(P.ONE_HOUR_FORECAST, False)


async def test_a_bug_in_the_metrics_is_a_500_and_a_line_naming_it_not_a_bad_request(system, caplog,  # noqa: F811
                                                                                    monkeypatch):
    vtn, meter, gateway, peer, gw = system
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(gateway, "refresh_metrics", lambda: {}["gone"])
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.get(f"{gateway.http.url}/metrics") as answer:
                assert answer.status == 500 and "KeyError" in await answer.text()
    [line] = said(caplog, "http metrics failing: KeyError: 'gone'")
    assert line.exc_info
    assert not said(caplog, "Error handling request")


async def test_a_stop_names_a_job_still_failing_on_a_bug(system, caplog):  # noqa: F811
    vtn, meter, gateway, peer, gw = system
    caplog.set_level(logging.INFO)
    await eventually(lambda: gateway.forecast.last_forecast is not None, FIRST_CYCLE_SECONDS, "a first forecast")
    fc = gateway.forecast.forecaster
    fc.needs_fit = Raises(fc.needs_fit, KeyError("x"), times=None)
    await eventually(lambda: said(caplog, "forecast cycle failed"), 10, "the bug")
    assert "forecast cycle failing (KeyError: 'x')" in gateway._open_faults()     # what the stop line lists


def test_a_write_that_fails_other_than_in_sqlite_leaves_no_transaction_open(tmp_path, caplog):
    # an event that would not serialize left the connection inside BEGIN: the next write, of something else, failed
    # "cannot start a transaction within a transaction", an ERROR blaming storage.path
    from ven.storage import Storage

    storage = Storage(tmp_path / "gw.sqlite")
    try:
        class Unwritable:
            event_id = "odd"

            def to_json(self):
                raise TypeError("not JSON")
        with pytest.raises(TypeError):
            storage._commit({"odd": Unwritable()}, {})
        assert not storage.conn.in_transaction
        assert storage._commit({}, {"key": "value"}) is None
    finally:
        storage.close()
    with sqlite3.connect(tmp_path / "gw.sqlite") as db:
        assert db.execute("SELECT value FROM kv WHERE key = 'key'").fetchone() == ("value",)


async def test_a_bas_writing_into_a_broken_listener_is_acknowledged_and_said_once(system, caplog):  # noqa: F811
    # a traceback at every write: a BAS writing its kW every few seconds filled the log with them
    vtn, meter, gateway, peer, gw = system
    caplog.set_level(logging.INFO)
    service = gateway.forecast
    fault = Raises(service.on_input_power, ValueError("a bug in taking the kW"), times=None)
    service.on_input_power = fault
    point = P.BY_NAME[P.INPUT_POWER].object_id
    for kw in (50.0, 51.0, 52.0):
        assert await peer.write(gw, point, "presentValue", kw, priority=8) is None    # a SimpleACK
    assert fault.raised == 3
    [line] = said(caplog, f"{P.INPUT_POWER} write callback failed (a bug in the gateway): ValueError")
    assert line.exc_info
    fault.armed = False
    assert await peer.write(gw, point, "presentValue", 53.0, priority=8) is None
    assert said(caplog, f"{P.INPUT_POWER} write callback works again after 3 failures")


async def test_an_event_whose_handling_raised_once_the_schedule_took_it_is_answered_as_it_runs(system,  # noqa: F811
                                                                                                caplog):
    # a bug after the schedule took the event (here in logging it): the VTN heard optOut while the points ran it
    vtn, meter, gateway, peer, gw = system
    caplog.set_level(logging.INFO)
    await eventually(lambda: gateway.vtn.connected, 15, "VTN connected")
    gateway.vtn._log_event = Raises(gateway.vtn._log_event, TypeError("a bug in logging the event"), times=None,
                                    when=lambda ev, prev: ev.event_id == "half")
    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=3)
    vtn.add_event([2.0], start=start, interval_seconds=60, event_id="half")
    await eventually(lambda: vtn.opts_for("half"), 15, "an answer to the event")
    await eventually(lambda: gateway.device.get(P.EVENT_LEVEL) == 2.0, 10, "the level at its start")
    assert gateway.schedule.get("half").opt == "optIn" and vtn.opts_for("half") == ["optIn"]
    assert said(caplog, "handling an event from the VTN failed (a bug in the gateway): TypeError")


@contextlib.asynccontextmanager
async def quick_schedule(tmp_path, monkeypatch, sort_every_s: float, max_sleep_s: float):
    """An EventSchedule on its own storage.path, its sort and its longest wait shortened to the test's pace."""
    import ven.schedule as schedule_module
    from ven.schedule import EventSchedule
    from ven.storage import Storage

    monkeypatch.setattr(schedule_module, "_SORT_EVERY_S", sort_every_s)
    monkeypatch.setattr(schedule_module, "_MAX_SLEEP", max_sleep_s)
    storage = Storage(tmp_path / "gw.sqlite")
    sched = EventSchedule(storage, lambda st: None)
    await sched.start()
    try:
        yield sched
    finally:
        await sched.stop()
        storage.close()


async def test_a_lasting_bug_in_the_schedules_sort_is_one_fault(tmp_path, caplog, monkeypatch):
    # the next sort was set before the purge ran: one that always raised failed one pass in 600 s, the retry a second
    # later skipped it and "worked again": a traceback every 10 minutes for good, and the purge never done
    caplog.set_level(logging.INFO, logger="ven.schedule")
    async with quick_schedule(tmp_path, monkeypatch, sort_every_s=2.5, max_sleep_s=0.3) as sched:
        purge = Raises(sched._purge, KeyError("a bug in the purge"), times=None)
        sched._purge = purge
        await eventually(lambda: purge.raised >= 4, 15, "the sort tried again")
        assert sched._step_bugs["sort"].failing
    assert len(said(caplog, "event schedule's sort failed (a bug in the gateway)")) == 1
    assert not said(caplog, "event schedule's sort works again")


async def test_a_lasting_bug_in_one_of_the_timers_jobs_does_not_stop_the_others(tmp_path, caplog, monkeypatch):
    # one guard for the whole pass: a judging of unlisted events that always raised skipped the flush, the adoption of
    # a late file and the sort at every pass
    caplog.set_level(logging.INFO, logger="ven.schedule")
    async with quick_schedule(tmp_path, monkeypatch, sort_every_s=0.5, max_sleep_s=0.2) as sched:
        sched._judge_unlisted = Raises(sched._judge_unlisted, KeyError("a bug in judging"), times=None)
        calls: list = []
        sched._purge = Raises(sched._purge, KeyError("never"), times=None,      # counts the calls, raises none
                              when=lambda *a, **k: calls.append(1) and False)
        await eventually(lambda: len(calls) >= 2, 10, "the sort going on")
    assert len(said(caplog, "event schedule's judging of unlisted events failed (a bug in the gateway)")) == 1


async def test_a_stop_waits_for_every_task_though_one_had_died_of_an_error(caplog):
    # cancel_and_wait raised the dead task's error at once: the rest were not waited for, and the owner's clean-up
    # after it (the forecaster's last save of its history) never ran
    from ven.tasks import cancel_and_wait

    async def dies():
        raise KeyError("a bug")

    async def runs(done: list):
        try:
            await asyncio.sleep(60)
        finally:
            done.append(True)
    done: list = []
    dead, alive = asyncio.create_task(dies(), name="dies"), asyncio.create_task(runs(done), name="runs")
    await asyncio.sleep(0.01)
    await cancel_and_wait(dead, alive)
    assert done == [True] and alive.cancelled()
    [line] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert line.getMessage() == "task dies had ended on an error: KeyError: 'a bug'" and line.exc_info


def test_a_bugs_fault_is_one_line_of_a_bounded_length():
    bug = BugGuard(logging.getLogger("bugs"), "the job")
    with bug.guard():
        raise ValueError("line one\nline two " + "x" * 500)
    assert bug.fault().startswith("the job failing (ValueError: line one line two xxx") and "\n" not in bug.fault()
    assert len(bug.fault()) < 240


async def test_a_connected_callback_that_failed_is_called_again_until_it_takes(system, caplog):  # noqa: F811
    # the VTN's connection was said once: a callback that raised left vtn-connected wrong until the next change
    vtn, meter, gateway, peer, gw = system
    await eventually(lambda: gateway.vtn.connected, 15, "VTN connected")
    fault = Raises(gateway.vtn._on_connected, RuntimeError("a bug in showing the connection"), times=1)
    gateway.vtn._on_connected = fault
    gateway.vtn._connected_told = False         # as if the last call had raised: the point not yet told
    gateway.device.set(P.VTN_CONNECTED, False)
    await eventually(lambda: gateway.device.get(P.VTN_CONNECTED), 10, "vtn-connected at a later poll")
    assert fault.raised == 1


def test_a_job_short_of_memory_or_files_is_said_as_the_machines_limit_not_a_bug(caplog):
    # at a memory limit the meter's callback read "failed (a bug in the gateway): MemoryError", and the dashboard said
    # to report it
    import errno

    caplog.set_level(logging.INFO, logger="bugs")
    for err, short in ((MemoryError("Unable to allocate 788. KiB"), "memory"),
                       (OSError(errno.EMFILE, "Too many open files"), "file descriptors"),
                       (RuntimeError("can't start new thread"), "processes or threads")):
        bug = BugGuard(logging.getLogger("bugs"), "the job")
        with bug.guard():
            raise err
        assert f"failed (the machine is short of {short}" in caplog.records[-1].getMessage(), caplog.records[-1]
        assert bug.fault().startswith(f"the job failing, short of {short} ("), bug.fault()
        # an expected fault of the box: no traceback, which would read as a bug to look for
        assert caplog.records[-1].exc_info is None, short
    with BugGuard(logging.getLogger("bugs"), "the job").guard():
        raise KeyError("x")
    assert "failed (a bug in the gateway)" in caplog.records[-1].getMessage()
    assert caplog.records[-1].exc_info is not None     # a bug's traceback says where to look
