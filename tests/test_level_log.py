"""The level line a start says, from the level storage.path kept (pure logic over a real SQLite file)."""
from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timedelta, timezone

from test_schedule import make_event

from ven.level_log import LEVEL_SAID, LevelLog
from ven.schedule import ScheduleState
from ven.storage import Storage


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
