"""OpenADR 2.0b event semantics: stale copies, eiTarget, SIMPLE range, responseRequired "never" and the
history's shading. The VTN side is a real openleadr VTN (DemoVtn) on loopback, with events built the way
another utility's VTN could send them (which DemoVtn.add_event does not)."""
from __future__ import annotations

import asyncio
import logging
import uuid
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone

import pytest
from openleadr import objects
from waiting import eventually as until

from ven.config import OpenadrConfig
from ven.events import OPT_IN, OPT_OUT, from_openleadr
from ven.history import build_history
from ven.schedule import EventSchedule
from ven.storage import Storage
from ven.telemetry import TelemetryQueue
from ven.vtn import VtnClient
from ven.vtn_server import DemoVtn

pytestmark = pytest.mark.mostly_waiting

LEVELS = {0.0, 1.0, 2.0, 3.0}


def now() -> datetime:
    return datetime.now(timezone.utc)


class Gateway:
    def __init__(self, tmp_path, url, **openadr):
        self.levels: list[float] = []   # every ADR-Event-Level published
        self.storage = Storage(tmp_path / "gw.sqlite")
        self.schedule = EventSchedule(self.storage, lambda st: self.levels.append(st.level))
        self.queue = TelemetryQueue(tmp_path / "gw.sqlite")
        self.vtn = VtnClient(OpenadrConfig(vtn_url=url, retry_min_seconds=0.05, retry_max_seconds=0.25,
                                           telemetry_seconds=1.0, **openadr), self.schedule, self.queue)

    @property
    def level(self) -> float:
        return self.schedule.state().level

    def described(self, event_id: str) -> dict:
        return next(e for e in self.schedule.events() if e["event_id"] == event_id)   # as /api/status shows it


@asynccontextmanager
async def _running(tmp_path, port, **openadr):
    async with DemoVtn(port, poll_seconds=1) as server:
        gw = Gateway(tmp_path, server.url, **openadr)
        await gw.schedule.start()
        await gw.vtn.start()
        try:
            await until(lambda: gw.vtn.connected, 10, "registration")
            yield server, gw
        finally:
            await gw.vtn.stop()
            await gw.schedule.stop()
            gw.queue.close()
            gw.storage.close()


@pytest.fixture
async def peers(tmp_path, free_tcp_port, caplog):
    caplog.set_level(logging.INFO, logger="ven")
    async with _running(tmp_path, free_tcp_port()) as pair:
        yield pair


def put_event(server: DemoVtn, levels, *, step=300, signal_name="SIMPLE", targets=None,
              response_required="always", test_event=False, market_context="oadr://utility/dr") -> objects.Event:
    """List an event at the VTN, active from a second ago, one interval per level (any payload)."""
    start = now() - timedelta(seconds=1)
    ivs = [objects.Interval(dtstart=start + i * timedelta(seconds=step), duration=timedelta(seconds=step),
                            signal_payload=float(v), uid=i) for i, v in enumerate(levels)]
    ev = objects.Event(
        event_descriptor=objects.EventDescriptor(event_id=f"evt-{uuid.uuid4().hex[:8]}", modification_number=0,
                                                 market_context=market_context, event_status="far",
                                                 test_event=test_event),
        event_signals=[objects.EventSignal(intervals=ivs, signal_name=signal_name, signal_type="level",
                                           signal_id=uuid.uuid4().hex[:8])],
        targets=targets or [objects.Target(ven_id=v) for v in server.vens],
        active_period=objects.ActivePeriod(dtstart=start, duration=timedelta(seconds=step * len(levels))),
        response_required=response_required)
    server._events.append(ev)
    server._touch()
    return ev


def messages(caplog, text: str, level=logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and text in r.getMessage()]


# -- against a real VTN ----------------------------------------------------------------------------

@pytest.mark.timeout(30)
async def test_a_stale_copy_of_a_cancelled_event_does_not_revive_it(peers):
    server, gw = peers
    ev = put_event(server, [2])
    eid = ev.event_descriptor.event_id
    await until(lambda: gw.level == 2.0, 8, "level 2")
    server.cancel_event(eid)                                            # modification 1
    await until(lambda: gw.schedule.get(eid).cancelled and gw.level == 0.0, 8, "cancellation")
    seen = len(gw.levels)
    # a VTN failing over to a stale replica lists the copy from before the cancellation again:
    # modification 0, same createdDateTime, not cancelled
    ev.event_descriptor.modification_number = 0
    ev.event_descriptor.event_status = "active"
    marker = put_event(server, [0]).event_descriptor.event_id          # handled after it, in the same message
    await until(lambda: gw.schedule.get(marker) is not None, 8, "the message with the stale copy")
    stored = gw.schedule.get(eid)
    assert stored.cancelled and stored.modification_number == 1
    assert gw.level == 0.0 and 2.0 not in gw.levels[seen:]


@pytest.mark.timeout(30)
async def test_the_demo_vtn_lists_a_cancelled_event_with_current_value_0(peers, caplog):
    # 2.0b rule 14: a SIMPLE event not active has currentValue 0. DemoVtn listed a cancelled one with its interval's
    # level, which openleadr corrected with a WARNING in the demo VTN's log ("The current_value for a SIMPLE event
    # that is not yet active must be 0"), seen by an operator running demo-vtn beside the gateway (helper newcomer49)
    server, gw = peers
    eid = server.add_event([2], now() - timedelta(seconds=1), 300)
    await until(lambda: gw.level == 2.0, 8, "level 2")
    caplog.clear()
    server.cancel_event(eid)
    await until(lambda: gw.schedule.get(eid).cancelled and gw.level == 0.0, 8, "cancellation")
    assert not [r.getMessage() for r in caplog.records
                if r.levelno >= logging.WARNING and "current_value" in r.getMessage()]
    assert [sig["current_value"] for e in server._listed() for sig in e["event_signals"]] == [0.0]


@pytest.mark.timeout(30)
async def test_an_event_for_a_resource_is_followed_for_the_building_and_its_line_names_the_resource(peers, caplog):
    # the VTN meant a chiller; the BAS has one ADR-Event-Level, so the technician needs to read which equipment
    # the utility had in mind: the event was followed with nothing in the log to say it named a resource
    server, gw = peers
    ven = next(iter(server.vens))
    ev = put_event(server, [2], targets=[objects.Target(ven_id=ven), objects.Target(resource_id="chiller-2"),
                                         objects.Target(resource_id="ahu-1")])
    eid = ev.event_descriptor.event_id
    await until(lambda: gw.level == 2.0 and server.opts_for(eid), 8, "the level and the answer")
    assert server.opts_for(eid) == [OPT_IN]
    [line] = messages(caplog, f"event {eid} received")
    assert line.endswith(", for resources ahu-1, chiller-2: followed for the whole building (the gateway has no "
                         "points per resource)"), line
    plain = put_event(server, [1]).event_descriptor.event_id
    await until(lambda: server.opts_for(plain), 8, "the plain event's answer")
    [line] = messages(caplog, f"event {plain} received")
    assert "resource" not in line, line


@pytest.mark.timeout(30)
async def test_an_event_for_other_vens_is_shown_answered_opt_out_and_never_followed(peers, caplog):
    server, gw = peers
    other = put_event(server, [3], targets=[objects.Target(ven_id="ven-other-building")]).event_descriptor.event_id
    await until(lambda: server.opts_for(other), 8, "an answer to the other VEN's event")
    assert server.opts_for(other) == [OPT_OUT]
    d = gw.described(other)
    assert d["targets"] == [{"type": "ven_id", "value": "ven-other-building"}]
    assert d["for_this_ven"] is False and d["drives_points"] is False and d["opt"] == OPT_OUT
    assert gw.level == 0.0 and 3.0 not in gw.levels
    server.modify_event(other, levels=[2])                              # modified: still not ours, no new warning
    mine = put_event(server, [1]).event_descriptor.event_id
    await until(lambda: gw.schedule.get(other).modification_number == 1 and server.opts_for(mine), 8, "modification")
    assert gw.level == 1.0
    assert len(messages(caplog, "not this VEN", logging.WARNING)) == 1
    gw.vtn.set_opt_out(True)                                            # ADR-Opt-Out written and relinquished
    await until(lambda: server.opts_for(mine)[-1:] == [OPT_OUT], 5, "optOut for our event")
    gw.vtn.set_opt_out(False)
    await until(lambda: server.opts_for(mine)[-1:] == [OPT_IN], 5, "optIn for our event")
    assert set(server.opts_for(other)) == {OPT_OUT} and gw.schedule.get(other).opt == OPT_OUT
    assert 2.0 not in gw.levels and 3.0 not in gw.levels


@pytest.mark.timeout(30)
async def test_an_event_of_a_programme_the_site_is_not_enrolled_in_is_answered_opt_out_and_never_followed(
        tmp_path, free_tcp_port, caplog):
    # A VTN running several programmes (a critical-peak one, a capacity one) sends this VEN the events of all of
    # them: the site enrolled in one would shed for every programme of its utility (helper conformance40 C3)
    caplog.set_level(logging.INFO, logger="ven")
    async with _running(tmp_path, free_tcp_port(), market_contexts=("oadr://utility/cpp",)) as (server, gw):
        other = put_event(server, [3], market_context="oadr://utility/capacity").event_descriptor.event_id
        await until(lambda: server.opts_for(other), 8, "an answer to the other programme's event")
        assert server.opts_for(other) == [OPT_OUT]
        d = gw.described(other)
        assert d["market_context"] == "oadr://utility/capacity"
        assert d["for_this_ven"] is False and d["drives_points"] is False
        server.modify_event(other, levels=[2])                          # modified: still not ours, no new warning
        mine = put_event(server, [1], market_context="oadr://utility/cpp").event_descriptor.event_id
        await until(lambda: gw.schedule.get(other).modification_number == 1 and server.opts_for(mine), 8, "both")
        assert server.opts_for(mine) == [OPT_IN] and gw.level == 1.0
        assert 2.0 not in gw.levels and 3.0 not in gw.levels and set(server.opts_for(other)) == {OPT_OUT}
        [line] = messages(caplog, "not one of openadr.market_contexts", logging.WARNING)
        assert line == (f"event {other} is of market context 'oadr://utility/capacity', not one of "
                        "openadr.market_contexts ('oadr://utility/cpp'): kept for the status API, not followed, "
                        "answered optOut"), line
        assert messages(caplog, "not this VEN", logging.WARNING) == []
        # the programme's next event: a site rightly enrolled in one gets the others' every day, said at INFO
        second = put_event(server, [3], market_context="oadr://utility/capacity").event_descriptor.event_id
        await until(lambda: server.opts_for(second), 8, "the second event's answer")
        assert server.opts_for(second) == [OPT_OUT]
        assert len(messages(caplog, "not one of openadr.market_contexts", logging.WARNING)) == 1
        assert messages(caplog, f"event {second} is of market context", logging.INFO)


@pytest.mark.timeout(30)
async def test_a_stored_event_of_a_programme_left_while_stopped_is_not_followed_at_the_start(
        tmp_path, free_tcp_port, caplog):
    # openadr.market_contexts changed across a restart with the VTN away: the stored event went on driving level 2
    # until the VTN answered and listed it again (helper verify41)
    caplog.set_level(logging.INFO, logger="ven")
    async with _running(tmp_path, free_tcp_port()) as (server, gw):
        eid = put_event(server, [2], step=600).event_descriptor.event_id
        await until(lambda: gw.level == 2.0, 8, "followed")
    levels = []
    storage = Storage(tmp_path / "gw.sqlite")
    try:
        schedule = EventSchedule(storage, lambda st: levels.append(st.level),
                                 programmes=frozenset({"oadr://utility/cpp"}))
        await schedule.start()
        await schedule.stop()
    finally:
        storage.close()
    assert schedule.state().level == 0.0 and 2.0 not in levels, levels
    d = next(e for e in schedule.events() if e["event_id"] == eid)
    assert d["for_this_ven"] is False and d["opt"] == OPT_OUT
    assert messages(caplog, f"event {eid} is of market context 'oadr://utility/dr', not one of "
                            "openadr.market_contexts now")


@pytest.mark.timeout(30)
async def test_each_simple_signal_of_an_event_is_logged_as_its_own_levels(peers, caplog):
    # two SIMPLE signals read "SIMPLE levels [1.0, 2.0, 1.0, 0.0]": four steps, where two signals ran (vtns41)
    server, gw = peers
    ev = put_event(server, [1, 2])
    first = ev.event_signals[0].intervals
    ev.event_signals.append(objects.EventSignal(
        intervals=[objects.Interval(dtstart=i.dtstart, duration=i.duration, signal_payload=v, uid=i.uid)
                   for i, v in zip(first, (1.0, 0.0))],
        signal_name="SIMPLE", signal_type="level", signal_id=uuid.uuid4().hex[:8]))
    eid = ev.event_descriptor.event_id
    await until(lambda: messages(caplog, f"event {eid} received"), 8, "the event's line")
    [line] = messages(caplog, f"event {eid} received")
    assert "SIMPLE levels [1.0, 2.0] and [1.0, 0.0] from " in line, line


@pytest.mark.timeout(30)
async def test_an_event_for_other_vens_retargeted_to_this_ven_is_followed_and_answered_opt_in(peers):
    # A VTN correcting an event's eiTarget (modification 1 names this VEN): the site takes part, as in any
    # event of its own, not stuck with the optOut the other VEN's event got.
    server, gw = peers
    ev = put_event(server, [3], targets=[objects.Target(ven_id="ven-other-building")])
    eid = ev.event_descriptor.event_id
    await until(lambda: server.opts_for(eid) == [OPT_OUT], 8, "optOut to the other VEN's event")
    ev.targets = [objects.Target(ven_id=v) for v in server.vens]
    ev.targets_by_type = {"ven_id": list(server.vens)}
    server._bump(ev)
    await until(lambda: gw.schedule.get(eid).modification_number == 1, 8, "the retargeted event")
    assert gw.described(eid)["for_this_ven"] is True
    assert gw.level == 3.0 and gw.schedule.get(eid).opt == OPT_IN
    await until(lambda: server.opts_for(eid)[-1:] == [OPT_IN], 5, "optIn for the retargeted event")
    assert [r["modification_number"] for c in server.created_events for r in c["event_responses"]
            if r["event_id"] == eid and r["opt_type"] == OPT_IN] == [1]


@pytest.mark.timeout(30)
async def test_a_test_event_made_a_real_one_while_opted_out_is_opted_out(peers):
    # ADR-Opt-Out leaves test events alone (they drive nothing); once the VTN modifies one into a real event it
    # is a pending or active event like any other, and the site does not take part in it.
    server, gw = peers
    gw.vtn.set_opt_out(True)
    ev = put_event(server, [3], test_event=True)
    eid = ev.event_descriptor.event_id
    await until(lambda: server.opts_for(eid), 8, "the test event acknowledged")
    ev.event_descriptor.test_event = False
    server._bump(ev)
    await until(lambda: len(server.opts_for(eid)) == 2, 8, "the modification answered")
    assert server.opts_for(eid)[-1] == OPT_OUT and gw.schedule.get(eid).opt == OPT_OUT
    assert gw.level == 0.0 and 3.0 not in gw.levels
    gw.vtn.set_opt_out(False)
    assert gw.level == 3.0
    await until(lambda: server.opts_for(eid)[-1:] == [OPT_IN], 5, "optIn once ADR-Opt-Out is relinquished")


@pytest.mark.timeout(30)
async def test_an_event_without_a_simple_signal_is_answered_opt_out_whatever_adr_opt_out_says(peers, caplog):
    # The gateway acts on SIMPLE levels only: optIn to a LOAD_DISPATCH, price or vendor (x-) event promised the
    # utility a shed the site would never make. 2.0b rule 48 has an unsupported signalName reported with a 4xx
    # in the eventResponse (openleadr's 460 for an x- name); the opt says the site will not take part.
    server, gw = peers
    ids = {name: put_event(server, [5], signal_name=name).event_descriptor.event_id
           for name in ("LOAD_DISPATCH", "ELECTRICITY_PRICE", "x-loadControlCapacity")}
    simple = put_event(server, [2]).event_descriptor.event_id
    await until(lambda: all(server.opts_for(e) for e in [*ids.values(), simple]), 8, "the four events answered")
    assert {name: server.opts_for(e) for name, e in ids.items()} == {name: [OPT_OUT] for name in ids}
    assert server.opts_for(simple) == [OPT_IN] and gw.level == 2.0
    codes = {r["event_id"]: r["response_code"] for c in server.created_events for r in c["event_responses"]}
    assert codes[ids["x-loadControlCapacity"]] == 460 and codes[ids["LOAD_DISPATCH"]] == 200
    gw.vtn.set_opt_out(True)
    await until(lambda: server.opts_for(simple)[-1:] == [OPT_OUT], 5, "optOut for the SIMPLE event")
    gw.vtn.set_opt_out(False)
    await until(lambda: server.opts_for(simple)[-1:] == [OPT_IN], 5, "optIn for the SIMPLE event")
    await asyncio.sleep(1.5)    # a poll more: an answer for the others would have gone with the SIMPLE event's
    assert {name: server.opts_for(e) for name, e in ids.items()} == {name: [OPT_OUT] for name in ids}
    assert all(gw.schedule.get(e).opt == OPT_OUT for e in ids.values())
    assert len(messages(caplog, "carries no SIMPLE signal")) == 3
    assert not messages(caplog, "SIMPLE levels []")     # said of them before the line saying they have none


@pytest.mark.timeout(30)
async def test_an_event_over_when_it_comes_is_said_to_drive_nothing(peers, caplog):
    server, gw = peers
    ev = put_event(server, [1], step=60)
    ev.active_period.dtstart = ev.event_signals[0].intervals[0].dtstart = now() - timedelta(seconds=90)
    eid = ev.event_descriptor.event_id
    await until(lambda: gw.schedule.get(eid) is not None, 8, "the event received")
    [line] = messages(caplog, f"event {eid} received")
    assert line.endswith("-> optIn (over already: it drives nothing)"), line
    assert gw.level == 0.0


@pytest.mark.timeout(30)
async def test_an_event_with_a_vendor_signal_beside_simple_is_followed_and_answered_200(peers):
    # 460 went with its optIn: the utility read a refusal from a site that sheds, and the later answers to the same
    # modification (ADR-Opt-Out written and relinquished) said 200
    server, gw = peers
    ev = put_event(server, [2])
    ev.event_signals.append(objects.EventSignal(intervals=ev.event_signals[0].intervals, signal_id="x-1",
                                                signal_name="x-loadControlCapacity", signal_type="x-loadControlCapacity"))
    eid = ev.event_descriptor.event_id
    await until(lambda: server.opts_for(eid) == [OPT_IN] and gw.level == 2.0, 8, "the event followed")
    gw.vtn.set_opt_out(True)
    await until(lambda: server.opts_for(eid)[-1:] == [OPT_OUT], 5, "optOut")
    gw.vtn.set_opt_out(False)
    await until(lambda: server.opts_for(eid)[-1:] == [OPT_IN], 5, "optIn again")
    codes = [(r["response_code"], r["response_description"]) for c in server.created_events
             for r in c["event_responses"] if r["event_id"] == eid]
    assert set(codes) == {(200, "OK")}, codes


@pytest.mark.timeout(30)
async def test_a_cancellation_or_levels_listed_without_a_new_modification_are_run(peers, caplog):
    # openleadr answered such a listing from its cache: the cancelled event drove the BAS to its end, the other kept
    # its old level, nothing was logged, and a restart then took the same listing as it was
    server, gw = peers
    cancelled, changed = put_event(server, [2]), put_event(server, [1])
    cancelled.event_descriptor.priority = 1
    ids = [e.event_descriptor.event_id for e in (cancelled, changed)]
    await until(lambda: all(server.opts_for(e) == [OPT_IN] for e in ids) and gw.level == 2.0, 8, "both running")
    cancelled.event_descriptor.event_status = "cancelled"
    changed.event_signals[0].intervals[0].signal_payload = 3.0
    server._touch()
    await until(lambda: gw.level == 3.0, 8, "the cancellation and the new level run")
    assert gw.schedule.get(ids[0]).cancelled
    assert messages(caplog, f"event {ids[0]} cancelled by the VTN (modification 0)")
    assert messages(caplog, f"event {ids[1]} changed by the VTN without a new modification number")
    listed = len(server.created_events)
    server._touch()     # listed again as it is now: answered from the cache, nothing logged again
    await until(lambda: len(server.created_events) > listed, 8, "the listing answered")
    assert len(messages(caplog, "without a new modification number")) == 1


@pytest.mark.timeout(30)
async def test_a_modification_that_ends_an_event_already_is_answered(peers):
    # A utility ending an event early by a modification whose active period is already over (not a cancel):
    # openleadr answers no event that is over by its active period, and the VTN never heard modification 1
    # acknowledged. 2.0b rules 12 and 62: every new, changed or cancelled event with responseRequired always.
    server, gw = peers
    ev = put_event(server, [2])
    eid = ev.event_descriptor.event_id
    await until(lambda: server.opts_for(eid) == [OPT_IN] and gw.level == 2.0, 8, "the event running")
    ev.active_period.dtstart = ev.event_signals[0].intervals[0].dtstart = now() - timedelta(seconds=20)
    ev.active_period.duration = ev.event_signals[0].intervals[0].duration = timedelta(seconds=10)
    server._bump(ev)
    await until(lambda: gw.schedule.get(eid).modification_number == 1, 8, "the modification")
    await until(lambda: len(server.opts_for(eid)) == 2, 5, "the modification answered")
    assert [(r["modification_number"], r["opt_type"], r["request_id"]) for c in server.created_events
            for r in c["event_responses"] if r["event_id"] == eid][-1][:2] == (1, OPT_IN)
    assert gw.level == 0.0


@pytest.mark.timeout(30)
async def test_a_simple_level_out_of_range_from_the_vtn_is_clamped(peers):
    server, gw = peers
    # openleadr's VTN checks the range only under "SIMPLE"; the lower-case name passes it
    eid = put_event(server, [7], signal_name="simple").event_descriptor.event_id
    await until(lambda: gw.schedule.get(eid) is not None, 8, "event")
    assert gw.level == 3.0 and set(gw.levels) <= LEVELS


@pytest.mark.timeout(30)
async def test_an_event_that_wants_no_response_gets_its_opt_changes_as_create_opt(peers, caplog):
    # OpenADR 2.0b: responseRequired "never" forbids oadrCreatedEvent; silence means taking part, so an
    # opt-out (and opting back in) reaches the utility as oadrCreateOpt on the EiOpt service.
    server, gw = peers
    never = put_event(server, [2], response_required="never").event_descriptor.event_id   # answers go in this order
    always = put_event(server, [1]).event_descriptor.event_id
    await until(lambda: gw.schedule.get(never) and server.opts_for(always) == [OPT_IN], 8, "both events")
    assert server.created_opts == [], "taking part needs no message"
    gw.vtn.set_opt_out(True)
    await until(lambda: server.opts_for(always)[-1:] == [OPT_OUT], 5, "optOut for the 'always' event")
    await until(lambda: server.created_opts_for(never) == [OPT_OUT], 5, "oadrCreateOpt optOut for the 'never' event")
    assert gw.schedule.get(never).opt == OPT_OUT
    gw.vtn.set_opt_out(False)
    await until(lambda: server.created_opts_for(never) == [OPT_OUT, OPT_IN], 5, "oadrCreateOpt optIn")
    await until(lambda: server.opts_for(always)[-1:] == [OPT_IN], 5, "optIn for the 'always' event")
    assert server.opts_for(never) == [], "never an oadrCreatedEvent"
    assert server.opts_for(always) == [OPT_IN, OPT_OUT, OPT_IN]
    assert [(v, e, m, r) for v, e, m, _, r in server.created_opts] == [
        (gw.vtn.ven_id, never, 0, "notParticipating"), (gw.vtn.ven_id, never, 0, "participating")]
    assert server.created_opts_for(always) == []
    # the VTN records an answer before the gateway has read its acknowledgement
    await until(lambda: gw.vtn.status()["opt_answers_waiting"] == 0, 5, "the last answer acknowledged")
    assert gw.vtn.status()["opt_answer_error"] is None


@pytest.mark.timeout(30)
async def test_the_create_opts_of_one_opt_out_are_one_line(peers, caplog):
    # an oadrCreateOpt per event, each its own message: a line each was as many lines as events for one opt-out
    caplog.set_level(logging.INFO, logger="ven")
    server, gw = peers
    ids = [put_event(server, [2], response_required="never").event_descriptor.event_id for _ in range(3)]
    await until(lambda: all(gw.schedule.get(eid) for eid in ids), 8, "the events")
    gw.vtn.set_opt_out(True)
    await until(lambda: all(server.created_opts_for(eid) == [OPT_OUT] for eid in ids)
                and gw.vtn.status()["opt_answers_waiting"] == 0, 5, "the three oadrCreateOpt taken")
    told = [r.getMessage() for r in caplog.records if r.getMessage().startswith("told the VTN")]
    assert len(told) == 1 and told[0].endswith(" (oadrCreateOpt: they want no answer)"), told
    assert sorted(told[0][len("told the VTN optOut for events "):].split(" (")[0].split(", ")) == sorted(ids), told


@pytest.mark.timeout(30)
async def test_an_event_that_wants_no_response_arriving_while_opted_out_is_opted_out_by_create_opt(peers):
    server, gw = peers
    gw.vtn.set_opt_out(True)
    never = put_event(server, [2], response_required="never").event_descriptor.event_id
    await until(lambda: server.created_opts_for(never) == [OPT_OUT], 8, "oadrCreateOpt optOut on arrival")
    assert gw.schedule.get(never).opt == OPT_OUT and server.opts_for(never) == []


@pytest.mark.timeout(30)
async def test_an_event_that_wants_no_response_listed_again_after_opting_back_in_gets_create_opt_opt_in(peers):
    # The VTN heard optOut; the event is dropped (an implied cancellation), ADR-Opt-Out is relinquished
    # meanwhile, and the event is listed again: the site now takes part, so the VTN must hear optIn.
    server, gw = peers
    gw.vtn.set_opt_out(True)
    ev = put_event(server, [2], response_required="never")
    never = ev.event_descriptor.event_id
    await until(lambda: server.created_opts_for(never) == [OPT_OUT], 8, "oadrCreateOpt optOut on arrival")
    server.drop_event(never)
    await until(lambda: gw.schedule.get(never).cancelled, 5, "implied cancellation")
    gw.vtn.set_opt_out(False)
    server._events.append(ev)       # listed again, unchanged
    server._touch()
    await until(lambda: not gw.schedule.get(never).cancelled, 5, "listed again")
    assert gw.schedule.get(never).opt == OPT_IN
    await until(lambda: server.created_opts_for(never) == [OPT_OUT, OPT_IN], 5, "oadrCreateOpt optIn")
    assert server.opts_for(never) == []


# -- pure ------------------------------------------------------------------------------------------

T0 = datetime(2026, 11, 22, 1, 0, tzinfo=timezone.utc)


def raw_event(levels, start=T0, step=600, mod=0, name="SIMPLE", test=False, event_id="e1"):
    return {"event_descriptor": {"event_id": event_id, "modification_number": mod, "event_status": "far",
                                 "test_event": test, "market_context": "oadr://x"},
            "active_period": {"dtstart": start, "duration": timedelta(seconds=step * len(levels))},
            "event_signals": [{"signal_name": name, "signal_type": "level", "signal_id": "s1",
                               "intervals": [{"dtstart": start + timedelta(seconds=i * step),
                                              "duration": timedelta(seconds=step), "signal_payload": float(v),
                                              "uid": i} for i, v in enumerate(levels)]}]}


@pytest.mark.timeout(10)
def test_simple_levels_are_clamped_rounded_half_up_and_warned_once_per_modification(caplog):
    caplog.set_level(logging.WARNING, logger="ven")
    ev = from_openleadr(raw_event([7, -1, 2.5, 1.49], name="simple"), T0)
    assert [i.payload for i in ev.signals[0].intervals] == [3.0, 0.0, 3.0, 1.0]
    assert [ev.simple_level(T0 + timedelta(seconds=600 * k)) for k in range(4)] == [3.0, 0.0, 3.0, 1.0]
    first = len(caplog.records)
    assert first and all("e1" in r.getMessage() for r in caplog.records)
    again = from_openleadr(raw_event([7, -1, 2.5, 1.49], name="simple"), T0, previous=ev)   # listed again
    assert [i.payload for i in again.signals[0].intervals] == [3.0, 0.0, 3.0, 1.0]
    assert len(caplog.records) == first
    from_openleadr(raw_event([9, -1, 2.5, 1.49], name="simple", mod=1), T0, previous=again)  # modified
    assert len(caplog.records) == 2 * first


@pytest.mark.timeout(10)
def test_history_shades_only_what_ran_after_the_event_arrived():
    now = T0.timestamp() + 50 * 60 + 30                                 # 01:50:30
    at = lambda minute: T0 + timedelta(minutes=minute)                  # noqa: E731
    events = [from_openleadr(raw, received) for raw, received in (
        (raw_event([3], start=at(20), step=3600, test=True, event_id="test"), at(10)),   # a test event
        (raw_event([2], start=at(0), step=1800, event_id="over"), at(40)),              # over when it arrived
        (raw_event([1], start=at(0), step=3600, event_id="late"), at(30)),              # arrived 30 min late
        (raw_event([2], start=at(0), step=600, event_id="timely"), at(-10)))]
    shaded = build_history(now, 1.0, {"power": {"time": [], "kw": []}}, [e.describe(at(50)) for e in events])
    assert [(s["event_id"], s["level"], s["start"], s["end"]) for s in shaded["events"]] == [
        ("late", 1, at(30).timestamp(), at(60).timestamp()),
        ("timely", 2, at(0).timestamp(), at(10).timestamp())]



class _VtnClock:
    """The VTN's wall clock as DemoVtn reads it (its event status and its list), `ahead` of this host's."""
    def __init__(self, monkeypatch):
        import ven.vtn_server as vtn_server
        self.ahead = timedelta(0)
        clock = self

        class Skewed(datetime):
            @classmethod
            def now(cls, tz=None):
                return datetime.now(tz) + clock.ahead
        monkeypatch.setattr(vtn_server, "datetime", Skewed)


@pytest.mark.timeout(40)
async def test_an_event_the_vtn_listed_completed_by_a_clock_ahead_runs_to_its_end_here(peers, monkeypatch, caplog):
    # The VEN keeps its own clock (the BAS was told when the event ends). A VTN 65 s ahead lists the event
    # completed, then stops listing it (DemoVtn: a minute after its end) 5 s before it ends here: that is the
    # end the VTN saw, not an implied cancellation, so the level holds to the end by this clock.
    server, gw = peers
    vtn_clock = _VtnClock(monkeypatch)
    start = now() - timedelta(seconds=1)
    eid = server.add_event([2], start, 10)
    end = start + timedelta(seconds=10)
    await until(lambda: gw.level == 2.0, 5, "event applied")
    vtn_clock.ahead = timedelta(seconds=65)
    server.add_event([1], now() + timedelta(hours=2), 60)            # a new list: the event is "completed" there
    await until(lambda: len(gw.schedule.events()) == 2, 5, "the second event")
    assert eid in {e.event_descriptor.event_id for e in server._events}, "still listed, completed"
    await asyncio.sleep(max(0.0, (end - timedelta(seconds=5) - now()).total_seconds()) + 0.3)
    server.add_event([1], now() + timedelta(hours=3), 60)            # a new list, without it
    await until(lambda: len(gw.schedule.events()) == 3, 5, "the third event")
    assert eid not in {e.event_descriptor.event_id for e in server._events}   # the VTN dropped it
    assert now() < end - timedelta(seconds=1)
    assert gw.level == 2.0 and not gw.schedule.get(eid).cancelled
    assert not messages(caplog, f"event {eid} no longer listed by the VTN: treated as cancelled")
    await until(lambda: gw.level == 0.0, (end - now()).total_seconds() + 2, "its end by this clock")
    assert now() >= end - timedelta(milliseconds=10)
    assert gw.described(eid)["status"] == "completed" and gw.described(eid)["cancelled_at"] is None


@pytest.mark.timeout(10)
def test_intervals_running_past_the_active_period_are_cut_at_its_end(caplog):
    # The profile has the intervals add up to the active period; a VTN whose intervals run longer ends
    # its event (completed) while the building would go on shedding past it.
    caplog.set_level(logging.WARNING, logger="ven")
    raw = raw_event([2, 3, 1])                                    # three 10-minute intervals from T0 ...
    raw["active_period"]["duration"] = timedelta(minutes=25)      # ... in a 25-minute active period
    ev = from_openleadr(raw, T0)
    assert ev.end == T0 + timedelta(minutes=25)
    assert [ev.simple_level(T0 + timedelta(minutes=m)) for m in (5, 15, 24, 26, 29)] == [2.0, 3.0, 1.0, None, None]
    assert len(caplog.records) == 1 and "past the active period's end" in caplog.records[0].getMessage()
    from_openleadr(raw, T0, previous=ev)                          # listed again: no second warning
    assert len(caplog.records) == 1
    raw["active_period"]["duration"] = timedelta(minutes=15)      # an interval wholly past the end is dropped
    assert [i.payload for i in from_openleadr(raw, T0).signals[0].intervals] == [2.0, 3.0]
