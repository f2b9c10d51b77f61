"""Pure conversion and evaluation of events (no network)."""
from __future__ import annotations

import random
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from ven.events import MAX_OPT_CHANGES, OPT_IN, OPT_OUT, Event, from_openleadr, with_opt

T0 = datetime(2026, 11, 21, 20, 0, tzinfo=timezone.utc)


def raw_event(levels=(1, 2, 3), start=T0, step=60, mod=0, status="far", test=False, startafter=None,
              extra=None):
    signals = [{"signal_name": "SIMPLE", "signal_type": "level", "signal_id": "s1",
                "intervals": [{"dtstart": start + timedelta(seconds=i * step), "duration": timedelta(seconds=step),
                               "signal_payload": float(v), "uid": i} for i, v in enumerate(levels)]}]
    if extra:
        signals.append({"signal_name": extra, "signal_type": "price", "signal_id": "s2",
                        "intervals": [{"dtstart": start, "duration": timedelta(seconds=step),
                                       "signal_payload": 0.31, "uid": 0}]})
    active = {"dtstart": start, "duration": timedelta(seconds=step * len(levels))}
    if startafter is not None:
        active["tolerance"] = {"tolerate": {"startafter": timedelta(seconds=startafter)}}
    return {"event_descriptor": {"event_id": "e1", "modification_number": mod, "event_status": status,
                                 "test_event": test, "market_context": "oadr://x"},
            "active_period": active, "event_signals": signals}


def test_levels_follow_intervals_and_end():
    ev = from_openleadr(raw_event(), received_at=T0 - timedelta(hours=1))
    assert ev.simple_level(T0 - timedelta(seconds=1)) is None
    assert ev.simple_level(T0) == 1.0
    assert ev.simple_level(T0 + timedelta(seconds=60)) == 2.0
    assert ev.simple_level(T0 + timedelta(seconds=179.9)) == 3.0
    assert ev.simple_level(T0 + timedelta(seconds=180)) is None
    assert ev.phase(T0 - timedelta(seconds=1)) == "far"
    assert ev.phase(T0 + timedelta(seconds=5)) == "active"
    assert ev.phase(T0 + timedelta(seconds=180)) == "completed"
    assert ev.drives_points


def test_randomization_drawn_once_and_kept_across_modification_and_json():
    raw = raw_event(startafter=120)
    ev = from_openleadr(raw, T0, rng=random.Random(4))
    assert timedelta(0) <= ev.start_offset <= timedelta(seconds=120)
    assert ev.start_offset > timedelta(0)
    assert ev.start == T0 + ev.start_offset
    again = Event.from_json(ev.to_json())
    assert again == ev
    modified = from_openleadr(raw_event(levels=(3,), startafter=120, mod=1), T0, previous=again,
                              rng=random.Random(99))
    assert modified.start_offset == ev.start_offset
    assert modified.modification_number == 1


def test_test_event_and_cancelled_and_opted_out_never_drive():
    assert not from_openleadr(raw_event(test=True), T0).drives_points
    assert not from_openleadr(raw_event(test="true"), T0).drives_points
    assert not from_openleadr(raw_event(status="cancelled"), T0).drives_points
    assert not with_opt(from_openleadr(raw_event(), T0), OPT_OUT).drives_points


def test_other_signals_kept_but_only_simple_sets_level():
    ev = from_openleadr(raw_event(levels=(2,), extra="ELECTRICITY_PRICE"), T0)
    assert [s.name for s in ev.signals] == ["SIMPLE", "ELECTRICITY_PRICE"]
    assert ev.simple_level(T0) == 2.0
    d = ev.describe(T0)
    assert d["signals"][1]["intervals"][0]["payload"] == 0.31
    price_only = from_openleadr(raw_event(levels=(2,)), T0)
    # replace, not __dict__: that also holds the event's cached start, end and boundaries
    price_only = replace(price_only, signals=(ev.signals[1],))
    assert price_only.simple_level(T0) is None and not price_only.drives_points


def test_lowercase_simple_signal_drives_the_level():
    # the 2.0b schema's backwards-compatible spelling of SIMPLE
    raw = raw_event(levels=(2,))
    raw["event_signals"][0]["signal_name"] = "simple"
    ev = from_openleadr(raw, T0)
    assert ev.drives_points and ev.simple_level(T0) == 2.0


def test_ramp_up_as_openleadr_parses_it_makes_the_event_near():
    raw = raw_event(start=T0 + timedelta(minutes=10))
    raw["active_period"]["ramp_up"] = timedelta(minutes=10)      # openleadr's key for x-eiRampUp
    ev = from_openleadr(raw, T0)
    assert ev.ramp_up == timedelta(minutes=10)
    assert ev.phase(T0 + timedelta(minutes=5)) == "near"
    assert ev.phase(T0 - timedelta(minutes=5)) == "far"


def test_a_cancellation_stored_before_unlisted_existed_can_be_reinstated():
    import json
    ev = from_openleadr(raw_event(status="cancelled"), T0)
    old = json.loads(ev.to_json())
    del old["unlisted"]                       # a file written before the key existed
    assert Event.from_json(json.dumps(old)).unlisted
    live = json.loads(from_openleadr(raw_event(), T0).to_json())
    del live["unlisted"]
    assert not Event.from_json(json.dumps(live)).unlisted


def test_an_active_period_of_duration_zero_runs_until_cancelled():
    # rule 47 of the 2.0b conformance: overall duration 0 = no defined end; openleadr reads "P" as 0
    raw = raw_event(levels=(1, 2), step=60)
    raw["active_period"]["duration"] = timedelta(0)
    raw["event_signals"][0]["intervals"][-1]["duration"] = timedelta(0)
    ev = from_openleadr(raw, received_at=T0)
    assert ev.open_ended and ev.simple_level(T0 + timedelta(seconds=30)) == 1.0
    for later in (timedelta(seconds=61), timedelta(days=400)):
        assert ev.simple_level(T0 + later) == 2.0 and ev.phase(T0 + later) == "active"
    d = ev.describe(T0 + timedelta(days=2))
    assert d["end"] is None and d["open_ended"] and d["status"] == "active"
    assert [i["duration_seconds"] for i in d["signals"][0]["intervals"]] == [60.0, None]
    assert Event.from_json(ev.to_json()) == ev

    closed = from_openleadr(raw_event(levels=(1, 2)), received_at=T0)  # a zero interval alone is not open
    assert not closed.open_ended and closed.phase(T0 + timedelta(seconds=120)) == "completed"


def test_priority_is_read_and_kept():
    raw = raw_event()
    raw["event_descriptor"]["priority"] = 2
    ev = from_openleadr(raw, received_at=T0)
    assert ev.priority == 2 and ev.describe(T0)["priority"] == 2
    assert Event.from_json(ev.to_json()).priority == 2
    raw["event_descriptor"]["priority"] = "x"
    assert from_openleadr(raw, received_at=T0).priority == 0  # unreadable: no priority, the lowest


def test_opt_answers_keep_their_times_across_json_and_an_older_file_loads():
    import json
    ev = from_openleadr(raw_event(), received_at=T0 - timedelta(hours=1))
    assert ev.opt_log == ((T0 - timedelta(hours=1), "optIn"),)  # the answer given on arrival
    out_in = ev.opted(OPT_OUT, T0 + timedelta(seconds=30)).opted("optIn", T0 + timedelta(seconds=90))
    assert out_in.opted("optIn", T0 + timedelta(seconds=120)) == out_in  # no change, nothing logged
    assert out_in.opt_log == ((T0 - timedelta(hours=1), "optIn"), (T0 + timedelta(seconds=30), OPT_OUT),
                              (T0 + timedelta(seconds=90), "optIn"))
    again = Event.from_json(out_in.to_json())
    assert again == out_in and again.opt_log == out_in.opt_log
    assert [c["opt"] for c in again.describe(T0)["opt_changes"]] == ["optIn", OPT_OUT, "optIn"]

    old = json.loads(with_opt(ev, OPT_OUT).to_json())
    old.pop("opt_changes", None)              # a file written before the key existed
    legacy = Event.from_json(json.dumps(old))
    assert legacy.opt == OPT_OUT and legacy.opt_log == ((T0 - timedelta(hours=1), OPT_OUT),)
    assert legacy.describe(T0)["opt_changes"] == [{"at": "2026-11-21T19:00:00Z", "opt": OPT_OUT}]


def test_an_event_keeps_its_latest_answers_only():
    ev = from_openleadr(raw_event(), received_at=T0)
    for i in range(MAX_OPT_CHANGES + 5):
        ev = ev.opted(OPT_OUT if i % 2 == 0 else OPT_IN, ev.received_at + timedelta(seconds=10 * (i + 1)))
    assert len(ev.opt_changes) == MAX_OPT_CHANGES
    assert ev.opt_changes[-1] == (ev.received_at + timedelta(seconds=10 * (MAX_OPT_CHANGES + 5)), ev.opt)


def test_a_modification_adding_randomization_to_a_pending_event_draws_an_offset():
    # Every VEN got the event without startafter (offset 0); the VTN then adds a 10-minute window so the
    # sites do not all start together: each must draw its own, not keep the 0 it never drew.
    first = from_openleadr(raw_event(), T0 - timedelta(hours=1))
    assert first.start_offset == timedelta(0)
    modified = from_openleadr(raw_event(mod=1, startafter=600), T0 - timedelta(minutes=50), previous=first,
                              rng=random.Random(1))
    assert timedelta(0) < modified.start_offset <= timedelta(seconds=600)
    assert modified.start == T0 + modified.start_offset
    # drawn once: a further modification keeps it
    again = from_openleadr(raw_event(levels=(3,), mod=2, startafter=600), T0 - timedelta(minutes=40),
                           previous=modified, rng=random.Random(2))
    assert again.start_offset == modified.start_offset
    # an event already running here keeps its start: no jump back to level 0 mid-event
    running = from_openleadr(raw_event(mod=1, startafter=600), T0 + timedelta(seconds=30), previous=first,
                             rng=random.Random(1))
    assert running.start_offset == timedelta(0)


def test_a_modification_narrowing_the_window_of_an_event_running_here_keeps_its_start():
    # the offset was redrawn in the new window: the running event's next level came at the poll, not at a
    # boundary, and its end moved
    first = from_openleadr(raw_event(startafter=40), T0 - timedelta(minutes=5), rng=random.Random(0))
    assert first.start_offset > timedelta(seconds=10)
    running = first.start + timedelta(seconds=1)
    narrowed = from_openleadr(raw_event(mod=1, startafter=10), running, previous=first, rng=random.Random(5))
    assert (narrowed.start, narrowed.end) == (first.start, first.end)
    # not started here yet: the new window holds its start
    pending = from_openleadr(raw_event(mod=1, startafter=10), first.start - timedelta(seconds=30), previous=first,
                             rng=random.Random(5))
    assert pending.start_offset <= timedelta(seconds=10)


@pytest.mark.parametrize("where", ["active period", "interval", "startafter"])
def test_a_negative_duration_is_refused_as_invalid(where):
    # the schema's pattern takes a sign: such an event was answered optIn and never ran
    raw = raw_event(startafter=-30 if where == "startafter" else None)
    if where == "active period":
        raw["active_period"]["duration"] = timedelta(seconds=-5)
    elif where == "interval":
        raw["event_signals"][0]["intervals"][1]["duration"] = timedelta(seconds=-5)
    with pytest.raises(ValueError, match="negative"):
        from_openleadr(raw, T0)
