"""EventSchedule against a real SQLite file and the real event loop clock."""
from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from waiting import eventually

from ven.events import OPEN_ENDED, OPT_IN, OPT_OUT, Event, Interval, Signal
from ven.schedule import EventSchedule
from ven.storage import Storage
from ven.storage_connect import StorageError


def now() -> datetime:
    return datetime.now(timezone.utc)


def make_event(event_id, levels, start, step, mod=0, test=False, opt=OPT_IN, name="SIMPLE", received_at=None):
    ivs = tuple(Interval(start + timedelta(seconds=i * step), timedelta(seconds=step), float(v))
                for i, v in enumerate(levels))
    return Event(event_id=event_id, modification_number=mod, status="far", test_event=test,
                 market_context="oadr://x", signals=(Signal(name, "level", ivs),),
                 start_offset=timedelta(0), received_at=received_at or now(), opt=opt)


class Recorder:
    def __init__(self):
        self.seen = []          # (wall time, state)

    def __call__(self, state):
        self.seen.append((now(), state))

    async def wait_level(self, level, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.seen and self.seen[-1][1].level == level:
                return self.seen[-1]
            await asyncio.sleep(0.005)
        raise AssertionError(f"level {level} not reached; saw {[s.level for _, s in self.seen]}")


@pytest.fixture
def storage(tmp_path):
    s = Storage(tmp_path / "var" / "gw.sqlite")
    yield s
    s.close()


async def test_each_interval_takes_effect_at_its_start(storage):
    rec = Recorder()
    sched = EventSchedule(storage, rec)
    await sched.start()
    try:
        start = now() + timedelta(seconds=0.6)
        sched.upsert(make_event("e1", [1, 2, 3], start, 0.4))
        assert sched.state().start_minutes == 1.0 and not sched.state().active
        for i, level in enumerate([1.0, 2.0, 3.0]):
            seen_at, st = await rec.wait_level(level)
            skew = (seen_at - (start + timedelta(seconds=0.4 * i))).total_seconds()
            assert 0 <= skew < 0.5, f"level {level} published {skew:.3f} s after its interval start"
            assert st.active and st.start_minutes == 0 and st.active_event_ids == ("e1",)
        seen_at, st = await rec.wait_level(0.0)
        assert (seen_at - (start + timedelta(seconds=1.2))).total_seconds() < 0.5
        assert not st.active and st.start_minutes == -1
    finally:
        await sched.stop()


async def test_overlap_highest_wins_and_cancel_returns_to_remaining(storage):
    rec = Recorder()
    sched = EventSchedule(storage, rec)
    await sched.start()
    try:
        t = now() - timedelta(seconds=1)
        sched.upsert(make_event("low", [1], t, 60))
        sched.upsert(make_event("high", [3], t, 60))
        assert sched.state().level == 3.0
        assert sched.state().active_event_ids == ("high", "low")
        sched.cancel("high")
        assert sched.state().level == 1.0
        gone = sched.retain_only(["high"])        # the VTN no longer lists "low"
        assert gone == ["low"]
        assert sched.state().level == 0.0 and not sched.state().active
        sched.upsert(make_event("t", [2], t, 60, test=True))
        assert sched.state().level == 0.0
        assert [e["event_id"] for e in sched.events()] == ["high", "low", "t"]
        assert {e["status"] for e in sched.events() if e["event_id"] != "t"} == {"cancelled"}
    finally:
        await sched.stop()


async def test_overlap_follows_priority_then_the_highest_level(storage):
    sched = EventSchedule(storage, Recorder())
    t = now() - timedelta(seconds=1)
    sched.upsert(replace(make_event("none", [3], t, 60), priority=0))    # 0: no priority, the lowest
    sched.upsert(replace(make_event("second", [2], t, 60), priority=2))
    assert sched.state().level == 2.0
    sched.upsert(replace(make_event("first", [1], t, 60), priority=1))
    sched.upsert(replace(make_event("first-too", [0], t, 60), priority=1))
    assert sched.state().level == 1.0  # the highest level among the highest priority
    assert sched.state().active_event_ids == ("first", "first-too", "none", "second")
    sched.cancel("first")
    sched.cancel("first-too")
    assert sched.state().level == 2.0
    sched.cancel("second")
    assert sched.state().level == 3.0


async def test_an_open_ended_event_runs_until_cancelled_and_is_purged_after(storage, tmp_path):
    clock = [now()]
    sched = EventSchedule(storage, Recorder(), clock=lambda: clock[0])
    ev = make_event("open", [2], clock[0] - timedelta(seconds=1), 60)
    iv = ev.signals[0].intervals[0]
    sched.upsert(replace(ev, signals=(replace(ev.signals[0], intervals=(replace(iv, duration=OPEN_ENDED),)),)))
    clock[0] += timedelta(days=30)
    assert sched.state().level == 2.0 and sched.state().active
    sched.cancel("open")
    assert sched.state().level == 0.0
    assert sched.get("open").cancelled_at == clock[0]
    clock[0] += timedelta(hours=25)
    sched._purge(clock[0])
    assert sched.events() == [] and [e.event_id for e in storage.load_events()] == ["open"]  # kept for the history
    clock[0] += timedelta(days=35)
    sched._purge(clock[0])
    assert sched.get("open") is None and storage.load_events() == []


async def test_modification_replaces_schedule_and_stale_one_is_ignored(storage):
    sched = EventSchedule(storage, Recorder())
    await sched.start()
    try:
        t = now() - timedelta(seconds=1)
        sched.upsert(make_event("e", [1], t, 60))
        sched.upsert(make_event("e", [3], t, 60, mod=2))
        assert sched.state().level == 3.0
        sched.upsert(make_event("e", [2], t, 60, mod=1))
        assert sched.state().level == 3.0
    finally:
        await sched.stop()


async def test_restart_from_sqlite_restores_level_at_once(tmp_path):
    path = tmp_path / "gw.sqlite"
    first = Storage(path)
    sched = EventSchedule(first, Recorder())
    await sched.start()
    sched.upsert(make_event("e", [2, 3], now() - timedelta(seconds=1), 30))
    sched.upsert(make_event("later", [1], now() + timedelta(minutes=10), 30))
    await sched.stop()
    first.close()                                   # as good as a SIGKILL: nothing else is flushed

    rec = Recorder()
    again = EventSchedule(Storage(path), rec)
    t0 = time.monotonic()
    await again.start()
    try:
        assert rec.seen, "state must be published during start()"
        assert rec.seen[0][1].level == 2.0 and rec.seen[0][1].active
        assert time.monotonic() - t0 < 1.0
        assert {e["event_id"] for e in again.events()} == {"e", "later"}
    finally:
        await again.stop()


async def test_a_stored_event_with_times_of_no_time_zone_is_skipped_not_a_crash_at_every_start(tmp_path, caplog):
    # An event edited by hand in storage.path ("+00:00" taken off its times): it was read as any other, and the
    # first comparison with the clock raised TypeError out of every start, the BAS without its device. As an
    # event this version cannot read (542f241): skipped, left in the file, one WARNING; the rest starts.
    path = tmp_path / "gw.sqlite"
    first = Storage(path)
    first.save_event(make_event("kept", [2], now() - timedelta(seconds=1), 600))
    first.save_event(make_event("edited", [3], now() - timedelta(seconds=1), 600))
    first.close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        (body,), = db.execute("SELECT body FROM adr_events WHERE event_id = 'edited'")
        db.execute("UPDATE adr_events SET body = ? WHERE event_id = 'edited'", (body.replace("+00:00", ""),))
    rec = Recorder()
    again = EventSchedule(Storage(path), rec)
    await asyncio.wait_for(again.start(), 5)
    try:
        assert rec.seen[0][1].level == 2.0 and {e["event_id"] for e in again.events()} == {"kept"}
    finally:
        await again.stop()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT body FROM adr_events WHERE event_id = 'edited'").fetchone()[0] == \
            body.replace("+00:00", "")
    said = [r.getMessage() for r in caplog.records if "this version cannot read" in r.getMessage()]
    assert len(said) == 1 and "(edited; ValueError: " in said[0], said


async def test_opt_out_and_back_in(storage):
    sched = EventSchedule(storage, Recorder())
    await sched.start()
    try:
        sched.upsert(make_event("active", [2], now() - timedelta(seconds=1), 60))
        sched.upsert(make_event("pending", [1], now() + timedelta(minutes=5), 60))
        changed = sched.set_opt_out(True)
        assert {e.event_id for e in changed} == {"active", "pending"}
        assert all(e.opt == OPT_OUT for e in changed)
        st = sched.state()
        assert st.level == 0.0 and st.opted_out and not st.active and st.start_minutes == -1
        changed = sched.set_opt_out(False)
        assert {e.event_id for e in changed} == {"active", "pending"}  # the running one too: the BAS decides
        assert sched.state().level == 2.0 and sched.state().active
        assert sched.get("active").opt == OPT_IN and sched.get("pending").opt == OPT_IN
    finally:
        await sched.stop()


def test_start_minutes_counts_whole_minutes_up(storage):
    sched = EventSchedule(storage, Recorder())
    sched.load()
    t = datetime(2026, 11, 21, 20, 0, tzinfo=timezone.utc)
    sched._events["e"] = make_event("e", [1], t, 60)
    assert sched.state(t - timedelta(seconds=150)).start_minutes == 3.0
    assert sched.state(t - timedelta(seconds=120)).start_minutes == 2.0
    assert sched.state(t - timedelta(seconds=1)).start_minutes == 1.0
    assert sched.state(t).start_minutes == 0.0
    assert sched._next_wake(t - timedelta(seconds=150)) == t - timedelta(seconds=120)


def test_unwritable_path_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="storage.path"):
        Storage(blocker / "sub" / "gw.sqlite")


async def test_randomized_event_no_longer_listed_after_the_vtn_end_runs_to_its_own_end(storage):
    # The VTN ends the event at its own clock and may stop listing it; here it still runs for its offset.
    sched = EventSchedule(storage, Recorder())
    await sched.start()
    try:
        t = now() - timedelta(seconds=70)
        ev = make_event("late", [2], t, 60)
        sched.upsert(replace(ev, start_offset=timedelta(seconds=30)))
        assert sched.state().level == 2.0          # VTN end was 10 s ago; ours is 20 s ahead
        assert sched.retain_only([]) == []
        assert sched.state().level == 2.0 and not sched.get("late").cancelled
        running = make_event("running", [1], now() - timedelta(seconds=5), 60)
        sched.upsert(running)
        assert sched.retain_only([]) == ["running"]  # one the VTN has not ended: implied cancellation
    finally:
        await sched.stop()


async def test_a_cancellation_records_when_it_came_only_for_an_event_known_before(storage):
    clock = [now()]
    sched = EventSchedule(storage, Recorder(), clock=lambda: clock[0])
    ev = make_event("known", [1], clock[0] - timedelta(seconds=5), 60)
    sched.upsert(ev)
    clock[0] += timedelta(seconds=10)
    sched.upsert(replace(ev, status="cancelled", modification_number=1))
    assert sched.get("known").cancelled_at == clock[0]
    sched.upsert(replace(make_event("never-seen", [1], clock[0], 60), status="cancelled"))
    assert sched.get("never-seen").cancelled_at is None  # it never ran here: the history leaves it out


async def test_a_running_event_modified_or_cancelled_keeps_what_it_drove_in_the_history(storage):
    from ven.history import build_history

    t0 = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
    clock = [t0 + timedelta(minutes=10)]
    sched = EventSchedule(storage, Recorder(), clock=lambda: clock[0])
    sent = t0 - timedelta(hours=1)      # the history shades nothing before an event arrived
    ev = make_event("e", [1], t0, 1200, received_at=sent)
    sched.upsert(ev)
    # ten minutes at level 1, then the VTN shortens it to five minutes at level 2: already over
    sched.upsert(replace(make_event("e", [2], t0, 300), modification_number=1, received_at=ev.received_at))
    assert sched.state().level == 0.0
    clock[0] += timedelta(minutes=5)
    sched.upsert(make_event("e2", [3], clock[0] - timedelta(minutes=1), 600, received_at=sent))
    clock[0] += timedelta(minutes=1)
    sched.upsert(replace(make_event("e2", [3], clock[0] - timedelta(minutes=2), 600, received_at=sent),
                         status="cancelled", modification_number=1))

    def shaded():
        body = build_history(clock[0].timestamp() + 30, 1.0, {"power": {"time": [], "kw": []}}, sched.events())
        return [(e["event_id"], e["level"], (e["end"] - e["start"]) / 60) for e in body["events"]]
    assert shaded() == [("e", 1, 10.0), ("e2", 3, 2.0)]  # as the BAS saw them
    fresh = EventSchedule(storage, Recorder(), clock=lambda: clock[0])
    fresh.load()
    assert [e.ran_before for e in (fresh.get("e"), fresh.get("e2"))] == [sched.get("e").ran_before, ()]


def _shaded(sched, at, hours=2.0):
    """/api/history's event spans as (event, level, start, end, opt), minutes from 12:00."""
    from ven.history import build_history

    body = build_history(at.timestamp() + 30, hours, {"power": {"time": [], "kw": []}}, sched.events())
    noon = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc).timestamp()
    return [(e["event_id"], e["level"], (e["start"] - noon) / 60, (e["end"] - noon) / 60, e["opt"])
            for e in body["events"]]


def _stored_opts(path) -> dict[str, list[str]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        stored = {eid: json.loads(body) for eid, body in db.execute("SELECT event_id, body FROM adr_events")}
    return {eid: [opt for _, opt in d["opt_changes"]] or [d["opt"]] for eid, d in stored.items()}


async def test_opt_out_changes_the_points_at_once_and_writes_the_events_off_the_loop_in_order(tmp_path):
    # ADR-Opt-Out over a day-ahead program's 500 events: their JSON and transaction took the loop 15+ ms
    # in the BACnet write handler. The BAS still reads level 0 right after its write; a quick relinquish
    # after it, and an event that arrives meanwhile, end up in the file as they happened.
    path = tmp_path / "gw.sqlite"
    storage = Storage(path)
    sched = EventSchedule(storage, Recorder())
    start = now() - timedelta(seconds=1)
    for i in range(50):
        sched.upsert(make_event(f"e{i}", [2], start + timedelta(minutes=30 * i), 1800))
    await sched.start()
    loop_thread = threading.get_ident()
    writers = set()
    storage.conn.set_trace_callback(lambda sql: "adr_events" in sql and writers.add(threading.get_ident()))
    try:
        sched.set_opt_out(True)
        assert sched.state().level == 0.0 and sched.state().opted_out   # before any await
        sched.set_opt_out(False)
        sched.upsert(make_event("late", [1], start + timedelta(days=1), 60))
        assert sched.state().level == 2.0
        expected = {**{f"e{i}": [OPT_IN, OPT_OUT, OPT_IN] for i in range(50)}, "late": [OPT_IN]}
        await eventually(lambda: _stored_opts(path) == expected, 5, "the file to hold both answers")
        assert writers and loop_thread not in writers
    finally:
        await sched.stop()
        storage.close()


async def test_closing_the_store_right_after_an_opt_out_writes_all_of_it(tmp_path):
    path = tmp_path / "gw.sqlite"
    storage = Storage(path)
    sched = EventSchedule(storage, Recorder())
    for i in range(50):
        sched.upsert(make_event(f"e{i}", [2], now() + timedelta(minutes=30 * i), 1800))
    await sched.start()
    sched.set_opt_out(True)
    await asyncio.sleep(0)      # its worker has started
    await sched.stop()
    storage.close()
    assert _stored_opts(path) == {f"e{i}": [OPT_IN, OPT_OUT] for i in range(50)}


async def test_a_stop_in_the_moment_the_disk_answers_ends_the_wait_for_the_sync(storage, monkeypatch):
    # The VEN's session waits in synced() before it sends its answers, and its stop cancels it. A cancel that came in
    # the moment the sync ended was dropped by Python 3.11's wait_for, which returned the sync's result instead: the
    # session polled on, and the VEN's stop (a SIGTERM's) waited for it for ever (once in a loaded test run)
    sched = EventSchedule(storage, Recorder())
    disk = asyncio.get_running_loop().create_future()
    monkeypatch.setattr(storage, "synced", lambda: disk)
    waiting = asyncio.create_task(sched.synced(at_most=5))
    await asyncio.sleep(0)
    disk.set_result(None)
    await asyncio.sleep(0)          # the sync's end is on its way to the waiter...
    waiting.cancel()                # ...as the stop comes
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5):
            await waiting


async def test_history_shows_the_answer_in_force_when_across_a_restart(tmp_path):
    path = tmp_path / "var" / "gw.sqlite"
    t0 = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
    clock = [t0 - timedelta(minutes=5)]
    first = Storage(path)
    sched = EventSchedule(first, Recorder(), clock=lambda: clock[0])
    sched.upsert(replace(make_event("hour", [2], t0, 3600), received_at=clock[0]))
    sched.upsert(replace(make_event("steps", [1, 3], t0 + timedelta(minutes=35), 600), received_at=clock[0]))

    def at(minutes):
        clock[0] = t0 + timedelta(minutes=minutes)

    at(20)
    sched.set_opt_out(True)      # the BAS writes ADR-Opt-Out active for ten minutes ...
    at(25)                       # (a modification of the pending event meanwhile keeps its answers)
    sched.upsert(replace(make_event("steps", [1, 3], t0 + timedelta(minutes=35), 600), modification_number=1,
                         received_at=t0 - timedelta(minutes=5), opt=OPT_OUT))
    at(30)
    sched.set_opt_out(False)     # ... and relinquishes it
    at(50)
    sched.set_opt_out(True)      # opted out now: what ran before stays opted in
    at(52)
    expected = [("hour", 2, 0, 20, OPT_IN), ("hour", 2, 20, 30, OPT_OUT), ("hour", 2, 30, 50, OPT_IN),
                ("hour", 2, 50, 60, OPT_OUT),
                ("steps", 1, 35, 45, OPT_IN), ("steps", 3, 45, 50, OPT_IN), ("steps", 3, 50, 55, OPT_OUT)]
    assert _shaded(sched, clock[0]) == expected
    assert [c["opt"] for c in sched.events()[0]["opt_changes"]] == [OPT_IN, OPT_OUT, OPT_IN, OPT_OUT]
    first.close()                # as good as a SIGKILL: nothing else is flushed

    second = Storage(path)
    try:
        again = EventSchedule(second, Recorder(), clock=lambda: clock[0])
        again.load()
        assert _shaded(again, clock[0]) == expected
        assert again.get("hour").opt_log == sched.get("hour").opt_log
    finally:
        second.close()


def test_an_event_stored_by_the_previous_version_loads_with_its_answer_of_now(tmp_path):
    import json
    import sqlite3

    path = tmp_path / "gw.sqlite"
    t0 = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
    clock = [t0 + timedelta(minutes=10)]
    first = Storage(path)
    sched = EventSchedule(first, Recorder(), clock=lambda: clock[0])
    sched.upsert(replace(make_event("old", [2], t0, 3600), received_at=t0 - timedelta(minutes=5), opt=OPT_OUT))
    first.close()
    with sqlite3.connect(path) as db:     # the body the previous version wrote: no opt_changes
        (body,) = db.execute("SELECT body FROM adr_events WHERE event_id = 'old'").fetchone()
        d = json.loads(body)
        d.pop("opt_changes", None)
        db.execute("UPDATE adr_events SET body = ? WHERE event_id = 'old'", (json.dumps(d),))
    db.close()

    second = Storage(path)
    try:
        sched = EventSchedule(second, Recorder(), clock=lambda: clock[0])
        sched.load()
        assert sched.get("old").opt_log == ((t0 - timedelta(minutes=5), OPT_OUT),)
        assert _shaded(sched, clock[0]) == [("old", 2, 0, 60, OPT_OUT)]
        clock[0] = t0 + timedelta(minutes=15)
        sched.set_opt_out(False)
        assert _shaded(sched, clock[0]) == [("old", 2, 0, 15, OPT_OUT), ("old", 2, 15, 60, OPT_IN)]
    finally:
        second.close()
    third = Storage(path)
    try:
        again = EventSchedule(third, Recorder(), clock=lambda: clock[0])
        again.load()
        assert _shaded(again, clock[0]) == [("old", 2, 0, 15, OPT_OUT), ("old", 2, 15, 60, OPT_IN)]
    finally:
        third.close()


def test_an_event_listed_again_under_another_answer_logs_when_it_changed(storage):
    t0 = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
    clock = [t0 + timedelta(minutes=5)]
    sched = EventSchedule(storage, Recorder(), clock=lambda: clock[0])
    ev = replace(make_event("back", [1], t0, 3600), received_at=t0 - timedelta(minutes=1))
    sched.upsert(ev)
    sched.retain_only([])                  # the VTN stopped listing it: an implied cancellation
    clock[0] = t0 + timedelta(minutes=8)
    sched.set_opt_out(True)                # leaves the cancelled event alone
    clock[0] = t0 + timedelta(minutes=10)
    sched.upsert(replace(ev, opt=OPT_OUT))  # listed again: it takes the site's answer of now
    assert sched.get("back").opt_log == ((t0 - timedelta(minutes=1), OPT_IN), (t0 + timedelta(minutes=10), OPT_OUT))
    assert _shaded(sched, clock[0]) == [("back", 1, 0, 10, OPT_IN), ("back", 1, 10, 60, OPT_OUT)]


def test_a_cancellation_stored_by_an_older_version_is_not_dated_to_the_upgrade(tmp_path):
    import json
    import sqlite3

    path = tmp_path / "gw.sqlite"
    t0 = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
    cancelled = replace(make_event("c", [1], t0, 3600), status="cancelled", received_at=t0 - timedelta(minutes=5))
    first = Storage(path)
    first.save_event(cancelled)
    first.close()
    with sqlite3.connect(path) as db:     # versions before cancelled_at and unlisted wrote neither
        (body,) = db.execute("SELECT body FROM adr_events WHERE event_id = 'c'").fetchone()
        d = json.loads(body)
        d.pop("cancelled_at", None)
        d.pop("unlisted", None)
        db.execute("UPDATE adr_events SET body = ? WHERE event_id = 'c'", (json.dumps(d),))
    db.close()

    second = Storage(path)
    try:
        now = t0 + timedelta(minutes=40)  # the upgrade, long after the VTN cancelled it
        sched = EventSchedule(second, Recorder(), clock=lambda: now)
        sched.load()
        sched.upsert(cancelled)           # the VTN lists the cancellation again
        assert sched.get("c").cancelled_at is None   # when it stopped is not known: not "now"
        assert _shaded(sched, now) == []
    finally:
        second.close()


async def test_an_unlisted_event_winds_down_only_with_a_startafter_and_the_log_says_which(storage, caplog):
    # Every unlisted event was logged "its level ends at ..., at random within its startafter", though it had none
    # and its level had dropped at once.
    caplog.set_level("INFO", logger="ven")
    start = now() - timedelta(seconds=60)
    storage.save_event(make_event("plain", [2], start, 600))
    storage.save_event(replace(make_event("randomized", [2], start, 600), start_after=timedelta(seconds=900)))
    sched = EventSchedule(storage, Recorder())
    await sched.start()
    try:
        assert sorted(sched.retain_only([])) == ["plain", "randomized"]
        said = sorted(r.getMessage() for r in caplog.records if "no longer listed" in r.getMessage())
        assert said[0] == "event plain no longer listed by the VTN: treated as cancelled", said
        assert said[1].startswith("event randomized no longer listed by the VTN: treated as cancelled; its level "
                                  "ends at ") and said[1].endswith(", at random within its startafter of 900 s"), said
    finally:
        await sched.stop()


async def test_a_whole_list_gone_at_once_is_one_line_not_one_per_event(storage, caplog):
    # a VTN that stopped listing 2,000 events (its database reset) made 2,000 lines; each is still cancelled
    from ven.schedule import MANY_EVENTS

    caplog.set_level("INFO", logger="ven")
    start = now() + timedelta(hours=1)
    ids = [f"day-ahead-{i:04d}" for i in range(300)]
    for i, eid in enumerate(ids):
        storage.save_event(make_event(eid, [1], start + timedelta(hours=i), 3600))
    storage.save_event(replace(make_event("randomized", [2], now() - timedelta(seconds=60), 600),
                               start_after=timedelta(seconds=900)))
    sched = EventSchedule(storage, Recorder())
    await sched.start()
    try:
        assert sorted(sched.retain_only([])) == sorted(ids + ["randomized"])
        assert all(sched.get(eid).cancelled for eid in ids)
        said = [r.getMessage() for r in caplog.records if "no longer listed" in r.getMessage()]
        assert len(said) == 2, said     # the one whose level winds down still has its own line
        assert said[0].startswith("event randomized no longer listed by the VTN: treated as cancelled; its level ")
        shown = ", ".join(ids[:MANY_EVENTS // 2])
        assert said[1] == (f"300 events no longer listed by the VTN: treated as cancelled ({shown}, ... "
                           "day-ahead-0298, day-ahead-0299)"), said
    finally:
        await sched.stop()


async def test_an_event_unlisted_while_the_clock_reads_2020_is_judged_once_the_clock_is_set(storage, caplog):
    # No battery clock: the gateway restarts at 2020-01-01 and the VTN no longer lists an event that ran
    # (as VTNs do once it is over). Its end cannot be judged by that clock: cancelled "at 2020", it would
    # drop out of the history and be purged once NTP sets the clock.
    caplog.set_level("INFO", logger="ven")
    real = now().replace(microsecond=0)
    clock = [datetime(2020, 1, 1, 0, 0, 1, tzinfo=timezone.utc)]
    storage.save_event(make_event("ran", [2], real - timedelta(minutes=30), 600))
    storage.save_event(make_event("dropped", [1], real + timedelta(minutes=30), 600))  # the VTN cancelled it
    sched = EventSchedule(storage, Recorder(), clock=lambda: clock[0])
    await sched.start()
    try:
        assert sched.retain_only([]) == []
        assert not sched.get("ran").cancelled and not sched.get("dropped").cancelled
        clock[0] = real                      # NTP sets the clock
        sched._wake.set()                    # the timer notices within 30 s; now, for the test
        await eventually(lambda: sched.get("dropped").cancelled, 2, "judged once the clock is set")
        assert sched.get("dropped").cancelled_at == real
        assert not sched.get("ran").cancelled and sched.get("ran").cancelled_at is None
        assert {e["event_id"]: e["status"] for e in sched.events()} == {"ran": "completed", "dropped": "cancelled"}
        sched._purge(real)
        assert sched.get("ran") is not None, "kept as it ran"
        assert len([r for r in caplog.records if "had ended: kept as they ran" in r.getMessage()]) == 1
    finally:
        await sched.stop()


async def test_a_step_of_the_wall_clock_moves_the_level_at_once(storage):
    # the wait for the next boundary went by the monotonic clock, up to 30 s: after a step past an event's end its
    # level showed for 29 s more, and a step into its next interval showed the one before for as long
    offset = [timedelta(0)]
    sched = EventSchedule(storage, rec := Recorder(), clock=lambda: now() + offset[0])
    await sched.start()
    try:
        sched.upsert(make_event("e", [2, 3], now() - timedelta(seconds=1), 60))
        await rec.wait_level(2.0)
        for step, level in ((timedelta(seconds=65), 3.0), (timedelta(minutes=15), 0.0), (timedelta(0), 2.0)):
            offset[0] = step
            await rec.wait_level(level, timeout=2.5)
    finally:
        await sched.stop()


def test_an_event_the_vtn_lists_as_not_yet_over_while_it_is_over_here_is_said_once(storage, caplog):
    # A VTN clock a few minutes behind this one: its events arrive over already here, and the site never sheds,
    # while the VTN lists them far, near or active and hears optIn. The log said "(over already: it drives
    # nothing)" and no word of the clocks (seen against openleadr's VTN under faketime, helper explore53)
    import logging

    caplog.set_level(logging.INFO, logger="ven.schedule")
    sched = EventSchedule(storage, lambda state: None)
    t0 = now()
    gone = make_event("gone", [2], t0 - timedelta(minutes=4), 120)
    ending = make_event("ending", [1], t0 - timedelta(minutes=2), 100)     # over 20 s ago: a listing's delay
    for ev in (gone, ending):
        sched.upsert(ev)
    for status in ("far", "far", "active"):
        sched.vtn_statuses({"gone": status, "ending": status})
    assert [r.getMessage() for r in caplog.records if "the VTN lists it" in r.getMessage()] == [
        f"event gone: the VTN lists it {status}, while its times ended at {gone.end.isoformat(timespec='seconds')}: "
        "it is over here (its clock and this one's may differ)" for status in ("far", "active")]


def test_a_vtn_status_that_disagrees_with_the_events_times_is_said_once(storage, caplog):
    # An event the VTN lists completed while its times say it runs was followed with nothing said: a technician saw
    # the site shed while the utility's portal called the event over (helper conformance40 C2)
    import logging

    caplog.set_level(logging.INFO, logger="ven.schedule")
    sched = EventSchedule(storage, lambda state: None)
    t0 = now()
    running = make_event("running", [2], t0 - timedelta(minutes=5), 3600)
    later = make_event("later", [1], t0 + timedelta(hours=1), 600)
    soon = make_event("soon", [1], t0 + timedelta(seconds=20), 600)
    for ev in (running, later, soon):
        sched.upsert(ev)
    for _ in range(2):
        sched.vtn_statuses({"running": "completed", "later": "active", "soon": "active"})
    assert [r.getMessage() for r in caplog.records if "the VTN lists it" in r.getMessage()] == [
        f"event running: the VTN lists it completed, while its times run until "
        f"{running.end.isoformat(timespec='seconds')}: it runs to its end here (its clock and this one's may differ)",
        f"event later: the VTN lists it active, while it starts at {later.start.isoformat(timespec='seconds')}: it "
        "starts then here (its clock and this one's may differ)"], "once each; a start 20 s off is a listing's delay"
    assert sched.get("running").status == "completed" and sched.state().level == 2.0
    sched.vtn_statuses({"running": "far"})
    assert "event running: the VTN lists it far, while it started at" in caplog.records[-1].getMessage()
    # a randomized event, completed by the VTN at its own end, runs 5 min longer here: no disagreement (it was said
    # for every one, helper rev40 M2)
    said = len(caplog.records)
    sched.upsert(replace(make_event("rnd", [2], t0 - timedelta(minutes=60), 3590),
                         start_offset=timedelta(minutes=5), start_after=timedelta(minutes=10)))
    sched.vtn_statuses({"rnd": "completed"})
    assert len(caplog.records) == said, caplog.records[-1].getMessage()
