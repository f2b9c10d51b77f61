"""A utility program's volume against a real VTN: a day-ahead list of many events in one
oadrDistributeEvent, and re-registrations that list them all again. Speed is measured in
bench/event_volume.py; these check what must hold whatever the machine."""
from __future__ import annotations

import asyncio
import logging
import threading
from datetime import datetime, timedelta, timezone

from test_vtn import running, said
from waiting import eventually as until

import openleadr.client
import ven.vtn_transport
from ven.vtn_server import DemoVtn


def now() -> datetime:
    return datetime.now(timezone.utc)


def day_ahead(server: DemoVtn, n: int) -> tuple[list[str], datetime]:
    """`n` 30-minute events over 7 days, three per slot (overlapping) with priorities 0-3."""
    base = (now() + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    ids = [server.add_event([1 + i % 3], base + timedelta(days=(i // 3) % 7, minutes=30 * ((i // 3) // 7)), 1800,
                            priority=i % 4) for i in range(n)]
    return ids, base


async def test_a_day_ahead_list_of_many_events_is_read_off_the_loop_and_handled_in_slices(
        tmp_path, free_tcp_port, monkeypatch):
    # 200 events in one message took openleadr 0.2-0.3 s to read and the schedule as long again, all in one
    # step of the event loop: the BACnet device and the schedule's timer stood still meanwhile
    loop_thread = threading.get_ident()
    read_in = []
    real_parse = ven.vtn_transport.parse_message

    def parse(content):
        kind, payload = real_parse(content)
        if kind == "oadrDistributeEvent" and payload.get("events"):
            read_in.append(threading.get_ident())
        return kind, payload
    monkeypatch.setattr(ven.vtn_transport, "parse_message", parse)
    ticks = 0

    async def ticker():             # another task of the loop: how often it ran while the events were taken
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)
    async with DemoVtn(free_tcp_port(), poll_seconds=1) as server:
        async with running(tmp_path, server.url) as gw:
            await until(lambda: gw.vtn.connected, 10, "registration")
            seen_at = []
            upsert = gw.schedule.upsert

            def counted(event):
                seen_at.append(ticks)
                return upsert(event)
            gw.schedule.upsert = counted
            task = asyncio.create_task(ticker())
            try:
                ids, base = day_ahead(server, 60)
                await until(lambda: all(server.opts_for(e) for e in ids), 15, "every event answered")
            finally:
                task.cancel()
            assert read_in and loop_thread not in read_in, "the message is read in a worker thread"
            assert len(seen_at) == 60 and len(set(seen_at)) == 60, "the loop runs other tasks between events"
            assert all(server.opts_for(e) == ["optIn"] for e in ids), "each event answered once"
            assert len(server.created_events) == 1, "one oadrCreatedEvent for the message"
            first_slot = gw.schedule.state(base + timedelta(minutes=1))
            assert (first_slot.level, first_slot.level_event_id) == (2.0, ids[1]), "priority 1 wins the slot"


async def test_the_answer_to_a_day_ahead_list_is_built_off_the_loop_in_the_order_listed(
        tmp_path, free_tcp_port, monkeypatch):
    # openleadr built the oadrCreatedEvent for all of a message's events (templating, signing) on the loop after
    # the last of them, with each event's signal names listed anew: 20-50 ms in one step for 200-500 events
    loop_thread = threading.get_ident()
    built_in = []
    real_create = openleadr.client.create_message

    def create(message_type, *args, **kwargs):
        if message_type == "oadrCreatedEvent":
            built_in.append(threading.get_ident())
        return real_create(message_type, *args, **kwargs)
    monkeypatch.setattr(openleadr.client, "create_message", create)   # bound by each client the gateway makes
    async with DemoVtn(free_tcp_port(), poll_seconds=1) as server:
        async with running(tmp_path, server.url) as gw:
            await until(lambda: gw.vtn.connected, 10, "registration")
            ids, _ = day_ahead(server, 40)
            await until(lambda: all(server.opts_for(e) == ["optIn"] for e in ids), 15, "every event answered")
            for e in ids[::2]:
                server.modify_event(e, levels=[3])
            await until(lambda: all(len(server.opts_for(e)) == 2 for e in ids[::2]), 15, "the modifications answered")
            assert built_in and loop_thread not in built_in, "the answers are built in a worker thread"
            answer = server.created_events[-1]["event_responses"]
            assert [r["event_id"] for r in answer] == ids, "every listed event answered, in the order listed"
            assert [r["modification_number"] for r in answer] == [1 - i % 2 for i in range(40)]
            assert all(r["opt_type"] == "optIn" and r["response_code"] == 200 for r in answer)
            assert all(server.opts_for(e) == ["optIn", "optIn"] for e in ids), "once per listing, unchanged ones too"
            assert all(gw.schedule.get(e).modification_number == 1 for e in ids[::2])


async def test_re_registrations_list_every_event_again_in_one_line_each(tmp_path, free_tcp_port, caplog):
    # openleadr's client is new after each registration and hands every listed event over again: a VTN asking
    # for re-registration now and then, with a week of events listed, logged a line per event each time. (Asked
    # again seconds later, as here, it is one intermittent fault, and the second listing's line is DEBUG.)
    caplog.set_level(logging.DEBUG, logger="ven")
    async with DemoVtn(free_tcp_port(), poll_seconds=1) as server:
        async with running(tmp_path, server.url) as gw:
            await until(lambda: gw.vtn.connected, 10, "registration")
            ids, _ = day_ahead(server, 12)
            await until(lambda: all(server.opts_for(e) == ["optIn"] for e in ids), 10, "every event answered")
            for times in (2, 3):
                server.request_reregistration(gw.vtn.ven_id)
                await until(lambda: server.registrations == times, 10, "registered again")
                # the VTN records the answers before its reply reaches the gateway, which then logs the line
                # and a poll answered since (asked again before that, the second loss is the first one's next step,
                # logged as such: the VTN never gave a working session)
                await until(lambda: all(len(server.opts_for(e)) == times for e in ids)
                            and len(said(caplog, "listed again")) == times - 1 and not gw.vtn._lost_unanswered, 10,
                            "the events answered")
            assert all(not gw.schedule.get(e).cancelled for e in ids), "no event lost"
            assert said(caplog, "listed again") == ["12 event(s) listed again, unchanged"] * 2
            assert [r.levelname for r in caplog.records if "listed again" in r.getMessage()] == ["INFO", "DEBUG"]
            lost = said(caplog, "registration lost again")   # settle_seconds 0 here: it said "steadily for 0 s"
            assert len(lost) == 1 and lost[0].endswith("logged as ended at the VTN's next answer"), lost
            per_event = [r for r in caplog.records if r.name == "ven.vtn" and any(e in r.getMessage() for e in ids)]
            assert len(per_event) == 12, "one line per event, when it arrived"


async def test_a_day_of_one_minute_intervals_is_followed_and_logged_in_one_short_line(tmp_path, free_tcp_port, caplog):
    # 1440 levels in the event's log line made one line of 7 KB; the status API lists them all
    caplog.set_level(logging.INFO, logger="ven")
    async with DemoVtn(free_tcp_port(), poll_seconds=1) as server:
        async with running(tmp_path, server.url) as gw:
            await until(lambda: gw.vtn.connected, 10, "registration")
            start = (now() + timedelta(hours=1)).replace(second=0, microsecond=0)
            levels = [(i // 7) % 4 for i in range(1440)]
            eid = server.add_event(levels, start, 60)
            await until(lambda: server.opts_for(eid) == ["optIn"], 30, "the event answered")
            for minute in (0, 7, 14, 21, 700, 1439):
                at = start + timedelta(minutes=minute, seconds=30)
                assert gw.schedule.state(at).level == levels[minute], minute
            assert gw.schedule.state(start + timedelta(days=1)).level == 0.0
            received = said(caplog, f"event {eid} received")
            assert len(received) == 1 and "... (1440 intervals)]" in received[0] and len(received[0]) < 400
            listed = [e for e in gw.schedule.events() if e["event_id"] == eid][0]
            assert len(listed["signals"][0]["intervals"]) == 1440


async def test_opting_out_of_a_day_ahead_list_is_one_answer_message(tmp_path, free_tcp_port, caplog):
    # ADR-Opt-Out with a week of events pending sent one oadrCreatedEvent per event (about 100 ms each to a
    # TLS VTN, polls waiting behind them) and logged a line per event
    caplog.set_level(logging.INFO, logger="ven")
    async with DemoVtn(free_tcp_port(), poll_seconds=1) as server:
        async with running(tmp_path, server.url) as gw:
            await until(lambda: gw.vtn.connected, 10, "registration")
            ids, _ = day_ahead(server, 30)
            await until(lambda: all(server.opts_for(e) == ["optIn"] for e in ids), 10, "every event answered")
            before = len(server.created_events)
            gw.vtn.set_opt_out(True)
            # the VTN records the answers before its reply reaches the gateway, which then logs them
            await until(lambda: all(server.opts_for(e) == ["optIn", "optOut"] for e in ids)
                        and gw.vtn.status()["opt_answers_waiting"] == 0, 10, "every optOut, and its reply")
            assert len(server.created_events) == before + 1
            answer = server.created_events[-1]
            assert {r["request_id"] for r in answer["event_responses"]} == {gw.vtn._distributed_in[ids[0]]}, \
                "each names the oadrDistributeEvent that carried it"
            told = said(caplog, "told the VTN optOut")
            assert len(told) == 1 and "for 30 events (" in told[0]
            gw.vtn.set_opt_out(False)
            await until(lambda: all(server.opts_for(e)[-1] == "optIn" for e in ids)
                        and gw.vtn.status()["opt_answers_waiting"] == 0, 10, "every optIn, and its reply")
            assert len(server.created_events) == before + 2
