"""The level line a start says, from the level storage.path kept (pure logic over a real SQLite file)."""
from __future__ import annotations

import dataclasses
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
from test_schedule import make_event

from ven.events import OPT_OUT
from ven.level_log import LEVEL_SAID, LevelLog
from ven.schedule import ScheduleState
from ven.storage import Storage
from ven.storage_connect import connect


def state(level: float, event_id: str | None = None) -> ScheduleState:
    return ScheduleState(level=level, active=bool(level), start_minutes=0 if level else -1,
                         active_event_ids=(event_id,) if event_id else (), opted_out=False, level_event_id=event_id)


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ven.level_log"]


def test_a_start_says_the_level_against_the_one_stopped_at_and_each_change_after(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ven.level_log")
    path = tmp_path / "gw.sqlite"
    storage = Storage(path)
    first = LevelLog(storage, event=lambda event_id: None)
    first.update(state(0))          # a first start at 0: nothing to say
    first.update(state(3, "a"))
    first.update(state(3, "a"))     # the same level again: no line
    storage.close()
    storage = Storage(path)
    second = LevelLog(storage, event=lambda event_id: None)
    second.update(state(1, "b"))
    second.update(state(0))
    storage.close()
    assert lines(caplog) == [
        "ADR-Event-Level 0 -> 3 (event a)",
        "ADR-Event-Level 3 -> 1 while the gateway was stopped (event a no longer held; event b in force)",
        "ADR-Event-Level 1 -> 0"]


def test_a_start_names_what_became_of_the_event_it_stopped_in(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ven.level_log")
    end = datetime(2026, 12, 5, 18, 0, tzinfo=timezone.utc)
    cancelled = dataclasses.replace(make_event("c", [2], end - timedelta(hours=1), 7200), status="cancelled",
                                    cancelled_at=end)
    storage = Storage(tmp_path / "gw.sqlite")
    storage.save_value(LEVEL_SAID, '{"level": 2.0, "event": "c"}')
    LevelLog(storage, event={"c": cancelled}.get).update(state(0))
    assert lines(caplog) == [
        "ADR-Event-Level 2 -> 0 while the gateway was stopped (event c cancelled at 2026-12-05T18:00:00+00:00)"]
    storage.close()


def test_a_stopped_at_level_not_understood_is_taken_as_unknown(tmp_path, caplog):
    # a file of an older version has none; one written by hand or damaged must not stop the start
    caplog.set_level(logging.INFO, logger="ven.level_log")
    storage = Storage(tmp_path / "gw.sqlite")
    for saved in ("not json", "[]", '{"level": "x"}', '{"event": "a"}', "2"):
        storage.save_value(LEVEL_SAID, saved)
        LevelLog(storage, event=lambda event_id: None).update(state(2, "a"))
    assert lines(caplog) == ["ADR-Event-Level 2 at the start (event a in force)"] * 5
    storage.close()


def test_a_start_names_the_event_that_set_the_level_last_not_one_that_ended_before_the_stop(tmp_path, caplog):
    # Two overlapping events at 2: the first ended, the second went on at the same level (no line, rightly), and the
    # file kept the first's id. The second's cancellation (received before the stop, in effect at 18:00) taking the
    # level to 0 while the gateway was down read "event a over at 17:00", an hour before the stop (helper verify44)
    caplog.set_level(logging.INFO, logger="ven.level_log")
    t = datetime(2026, 12, 5, 16, 0, tzinfo=timezone.utc)
    a = make_event("a", [2], t, 3600)
    b = dataclasses.replace(make_event("b", [2], t + timedelta(minutes=30), 7200), status="cancelled",
                            cancelled_at=t + timedelta(hours=2))
    path = tmp_path / "gw.sqlite"
    storage = Storage(path)
    first = LevelLog(storage, event=lambda event_id: None)
    first.update(state(0))
    first.update(state(2, "a"))
    first.update(state(2, "b"))     # a over at 17:00, b in force at the same level
    storage.close()
    storage = Storage(path)
    LevelLog(storage, event={"a": a, "b": b}.get, clock=lambda: t + timedelta(hours=3)).update(state(0))
    storage.close()
    assert lines(caplog) == [
        "ADR-Event-Level 0 -> 2 (event a)",
        "ADR-Event-Level 2 -> 0 while the gateway was stopped (event b cancelled at 2026-12-05T18:00:00+00:00)"]


def test_a_start_does_not_call_an_event_over_that_is_not(tmp_path, caplog):
    # The VTN moved the event an hour later while the gateway was down (or the clock stood before its start at the
    # start): the line said "event c over at" its new end, a time still to come (helper verify44)
    caplog.set_level(logging.INFO, logger="ven.level_log")
    t = datetime(2026, 12, 5, 16, 0, tzinfo=timezone.utc)
    later = make_event("c", [2], t + timedelta(hours=1), 3600)
    opted_out = make_event("d", [2], t - timedelta(hours=1), 7200, opt=OPT_OUT)
    storage = Storage(tmp_path / "gw.sqlite")
    for saved in ('{"level": 2.0, "event": "c"}', '{"level": 2.0, "event": "d"}'):
        storage.save_value(LEVEL_SAID, saved)
        LevelLog(storage, event={"c": later, "d": opted_out}.get, clock=lambda: t).update(state(0))
    storage.close()
    assert lines(caplog) == [
        "ADR-Event-Level 2 -> 0 while the gateway was stopped (event c starts at 2026-12-05T17:00:00+00:00)",
        "ADR-Event-Level 2 -> 0 while the gateway was stopped (event d opted out)"]


def test_a_level_that_drops_in_the_middle_of_its_event_says_why(tmp_path, caplog):
    # The line comes as the points change, before the one that says the cause: "ADR-Event-Level 1 -> 0" in the middle
    # of an event read as its end, when the BAS had opted out, the VTN cancelled it or stopped listing it, or moved it
    # later (helper openadr49). Its end as it was to come says nothing more, as before.
    caplog.set_level(logging.INFO, logger="ven.level_log")
    t = datetime(2026, 12, 5, 16, 0, tzinfo=timezone.utc)
    running = make_event("a", [2], t - timedelta(minutes=10), 3600)
    events = {
        "opted": dataclasses.replace(running, event_id="opted", opt=OPT_OUT),
        "cancelled": dataclasses.replace(running, event_id="cancelled", status="cancelled", cancelled_at=t),
        "unlisted": dataclasses.replace(running, event_id="unlisted", status="cancelled", cancelled_at=t,
                                        unlisted=True),
        "moved": make_event("moved", [2], t + timedelta(hours=1), 3600),
        "ended": make_event("ended", [2], t - timedelta(hours=1), 3600),
    }
    storage = Storage(tmp_path / "gw.sqlite")
    level_log = LevelLog(storage, event=events.get, clock=lambda: t)
    level_log.update(state(0))
    for eid in events:
        level_log.update(state(2, eid))
        level_log.update(state(0))
    level_log.update(state(2, "gone"))
    level_log.update(state(1, "moved"))     # another event's level: named, as before, with why the last one left
    storage.close()
    assert [line for line in lines(caplog) if "-> 2" not in line] == [
        "ADR-Event-Level 2 -> 0 (event opted opted out)",
        "ADR-Event-Level 2 -> 0 (event cancelled cancelled)",
        "ADR-Event-Level 2 -> 0 (event unlisted no longer listed by the VTN)",
        "ADR-Event-Level 2 -> 0 (event moved now starts at 2026-12-05T17:00:00+00:00)",
        "ADR-Event-Level 2 -> 0",
        "ADR-Event-Level 2 -> 1 (event moved)"], lines(caplog)


def test_a_damaged_stopped_at_event_neither_raises_nor_reads_as_a_level(tmp_path, caplog):
    # '{"level": 2, "event": ["a"]}' raised TypeError (unhashable) in the schedule's change callback, before the points
    # were set: the start left ADR-Event-Level and the rest at their defaults, pass after pass (helper verify44)
    caplog.set_level(logging.INFO, logger="ven.level_log")
    storage = Storage(tmp_path / "gw.sqlite")
    for saved in ('{"level": 2, "event": ["a"]}', '{"level": 2, "event": {"a": 1}}', '{"level": NaN}',
                  '{"level": Infinity}', '{"level": true}'):
        storage.save_value(LEVEL_SAID, saved)
        LevelLog(storage, event={}.get).update(state(0))    # taken as unknown: a start at 0 says nothing
    assert lines(caplog) == []
    storage.close()


def an_earlier_version_ran(path) -> None:
    """What a run of 0.4.1 or earlier leaves in the file: its open's `opened_at` (its statement, a run later), and the
    level the log said left as this version wrote it (0.4.1 keeps none)."""
    with sqlite3.connect(path) as db:
        db.execute("INSERT OR REPLACE INTO kv (key, value) VALUES ('opened_at', datetime('now', '+5 seconds'))")
    db.close()


@pytest.mark.parametrize("now_level,said", [
    (0.0, []),
    (1.0, ["ADR-Event-Level 1 at the start (event b in force)"]),
])
def test_a_start_after_a_rollback_does_not_take_the_level_said_before_it_as_the_one_stopped_at(
        tmp_path, caplog, now_level, said):
    # Upgraded, rolled back to 0.4.1 during event a (which said a's cancellation itself), upgraded again: the start
    # said "ADR-Event-Level 2 -> 0 while the gateway was stopped (event a cancelled at ...)", a change made while the
    # rollback ran (helper upgrade45, a real 0.4.1 on the file)
    caplog.set_level(logging.INFO, logger="ven.level_log")
    path = tmp_path / "gw.sqlite"
    storage = Storage(path)
    LevelLog(storage, event=lambda event_id: None).update(state(2, "a"))
    storage.close()
    an_earlier_version_ran(path)
    caplog.clear()
    storage = Storage(path)
    LevelLog(storage, event=lambda event_id: None).update(state(now_level, "b" if now_level else None))
    storage.close()
    assert lines(caplog) == said


def test_a_restart_of_this_version_with_its_other_stores_opening_the_file_still_says_the_level_stopped_at(
        tmp_path, caplog):
    # the telemetry queue and the forecaster open the same file in each run, at once: none of them is another version
    caplog.set_level(logging.INFO, logger="ven.level_log")
    path = tmp_path / "gw.sqlite"
    storage = Storage(path)
    LevelLog(storage, event=lambda event_id: None).update(state(2, "a"))
    with ThreadPoolExecutor(4) as pool:
        for conn in list(pool.map(lambda _: connect(path), range(8))):
            conn.close()
    storage.close()
    caplog.clear()
    storage = Storage(path)
    LevelLog(storage, event=lambda event_id: None).update(state(0))
    storage.close()
    assert lines(caplog) == ["ADR-Event-Level 2 -> 0 while the gateway was stopped (event a no longer held)"]


def a_0_4_2_file(path, then_0_4_1: bool) -> None:
    """What 0.4.2 leaves (each open's `opened_at`, then the level its run said, both INSERT OR REPLACE; no
    `opened_at_here`), and after it, with `then_0_4_1`, a rollback's run (its open's `opened_at`)."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        for _ in range(3):      # check-config, the events, the telemetry queue
            db.execute("INSERT OR REPLACE INTO kv (key, value) VALUES ('opened_at', datetime('now', '-1 hour'))")
        db.execute("INSERT OR REPLACE INTO kv (key, value) VALUES ('format_version', '1')")
        db.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (LEVEL_SAID, '{"level": 2.0, "event": "a"}'))
        if then_0_4_1:
            db.execute("INSERT OR REPLACE INTO kv (key, value) VALUES ('opened_at', datetime('now', '-5 minutes'))")
    db.close()


@pytest.mark.parametrize("then_0_4_1,said", [
    (False, ["ADR-Event-Level 2 -> 0 while the gateway was stopped (event a no longer held)"]),
    (True, []),
])
def test_the_first_start_after_0_4_2_says_the_level_0_4_2_stopped_at_unless_an_earlier_version_ran_since(
        tmp_path, caplog, then_0_4_1, said):
    # 0.4.2 keeps the level said too, but writes no opened_at_here: the upgrade from it dropped the level, and its
    # first start said nothing of an event that ended while the gateway was down for the upgrade
    caplog.set_level(logging.INFO, logger="ven.level_log")
    path = tmp_path / "gw.sqlite"
    a_0_4_2_file(path, then_0_4_1)
    for conn in [connect(path) for _ in range(3)]:      # this version's check-config, then its stores
        conn.close()
    storage = Storage(path)
    LevelLog(storage, event=lambda event_id: None).update(state(0))
    storage.close()
    assert lines(caplog) == said
