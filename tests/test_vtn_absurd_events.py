"""Events from a live VTN whose times fall outside what a datetime can carry (a P9999Y "until further notice", a
start in year 9999, a ramp-up of 9000 years): one such event is read as the utility meant or refused for itself,
and the events listed beside it are followed and answered as ever."""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest

from raw_vtn import distribute, event, interval, signal
from test_vtn import said
from ven.events import MAX_EVENT_INTERVALS
from test_vtn_interop import deliver, raw_gateway, simple
from waiting import eventually as until

pytestmark = [pytest.mark.timeout(60), pytest.mark.mostly_waiting]


def now() -> datetime:
    return datetime.now(timezone.utc)


def normal() -> str:
    return event("normal", now() - timedelta(minutes=1), "PT1H", [simple([2])], status="active")


async def test_an_event_lasting_p9999y_is_until_further_notice_and_the_event_beside_it_is_followed(
        tmp_path, free_tcp_port, caplog):
    # openleadr's event status (utils.determine_event_status) and the gateway's own reading added P9999Y to the
    # start: OverflowError. The session ended at every listing, the VTN was shown as lost, the events after it never
    # ran and none of the message's events was answered
    caplog.set_level(logging.INFO, logger="ven")
    async with raw_gateway(tmp_path, free_tcp_port) as (raw, gw):
        forever = event("forever", now() - timedelta(minutes=5), "P9999Y", [simple([1], "P9999Y")], status="active")
        await deliver(raw, distribute(raw.vtn_id, [forever, normal()]))
        await until(lambda: sorted(raw.answered) == [("forever", "0", "optIn"), ("normal", "0", "optIn")], 5,
                    "both answered")
        ev = gw.schedule.get("forever")
        assert ev.open_ended and gw.schedule.get("normal") is not None
        assert gw.schedule.state().level == 2.0         # the higher of the two SIMPLE levels
        listed = {e["event_id"]: e for e in gw.schedule.events()}
        assert listed["forever"]["end"] is None and listed["forever"]["open_ended"]
        assert gw.vtn.status()["last_error"] is None and gw.vtn.status()["fault"] is None
        assert said(caplog, "event forever received") and "until cancelled" in said(caplog, "event forever received")[0]
        # listed again at each poll: no new line, no fault
        await deliver(raw, distribute(raw.vtn_id, [forever, normal()], request_id="d2"))
        await until(lambda: len(raw.answered) >= 4, 5, "the second answers")
        assert not said(caplog, "session error") and not said(caplog, "VTN connection lost")
        assert gw.vtn.status()["fault"] is None
        # openleadr said at each listing that it read P9999Y as 9999 x 365 days, of an event the gateway runs until
        # cancelled: a WARNING every 10 minutes (the flood guard's) while it ran
        assert not said(caplog, "specifies years") and not said(caplog, "years or months"), said(caplog, "years")


async def test_a_duration_in_months_is_read_as_30_days_and_said_once(tmp_path, free_tcp_port, caplog):
    # openleadr's WARNING came at each listing, through the flood guard one every 10 minutes for as long as the event
    # was listed; a month has no fixed length, so the VTN's meaning may differ by a day or two: said once
    caplog.set_level(logging.INFO, logger="ven")
    start = now().replace(microsecond=0) - timedelta(minutes=5)
    async with raw_gateway(tmp_path, free_tcp_port) as (raw, gw):
        month = event("month", start, "P1M2DT3H", [simple([1], "P1M2DT3H")], status="active")
        for n in range(2):
            await deliver(raw, distribute(raw.vtn_id, [month], request_id=f"d{n}"))
            await until(lambda: len(raw.answered) == n + 1, 5, f"answer {n + 1}")
        ev = gw.schedule.get("month")
        assert ev is not None and not ev.open_ended
        assert gw.schedule.events()[0]["end"] == (start + timedelta(days=32, hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
        lines = said(caplog, "years or months")
        assert lines == ["the VTN writes a duration in years or months (P1M2DT3H), which have no fixed length: read "
                         "as 32 days, 3:00:00 (a year 365 days, a month 30)"], lines
        assert not said(caplog, "specifies months")


@pytest.mark.parametrize("case", ["start in year 9999", "ramp-up of 9000 years", "interval in year 9999",
                                  "start in year 1"])
async def test_an_event_out_of_range_is_refused_alone_and_the_event_beside_it_is_followed(
        tmp_path, free_tcp_port, caplog, case):
    caplog.set_level(logging.INFO, logger="ven")
    far = datetime(9999, 12, 31, 23, 0, tzinfo=timezone.utc)
    bad = {
        "start in year 9999": event("bad", far, "PT1H", [simple([3])]),
        "start in year 1": event("bad", datetime(1, 1, 1, 0, 30, tzinfo=timezone.utc), "PT1H", [simple([3])]),
        "ramp-up of 9000 years": event("bad", now() + timedelta(hours=1), "PT1H", [simple([3])],
                                       properties_extra="<ei:x-eiRampUp><cal:duration>P9000Y</cal:duration>"
                                                        "</ei:x-eiRampUp>"),
        "interval in year 9999": event("bad", now() + timedelta(hours=1), "PT1H",
                                       [signal([interval(3, "PT1H", 0, start=far)])]),
    }[case]
    async with raw_gateway(tmp_path, free_tcp_port) as (raw, gw):
        await deliver(raw, distribute(raw.vtn_id, [bad, normal()]))
        await until(lambda: raw.answers("normal") == ["optIn"] and raw.answers("bad"), 5, "both answered")
        assert raw.answers("bad") == ["optOut"]
        assert raw.codes("bad") == ["454"]         # INVALID_DATA, for that event alone
        assert gw.schedule.get("bad") is None and gw.schedule.state().level == 2.0
        assert [e["event_id"] for e in gw.schedule.events()] == ["normal"]
        status = gw.vtn.status()
        assert status["last_error"] is None and status["fault"] is None
        refused = said(caplog, "event bad")
        assert len(refused) == 1 and "refused" in refused[0] and "year" in refused[0], refused
        assert [r.levelname for r in caplog.records if "event bad" in r.getMessage()] == ["WARNING"]
        # the VTN lists it again at every poll: answered again, not said again, and no fault
        await deliver(raw, distribute(raw.vtn_id, [bad, normal()], request_id="d2"))
        await until(lambda: len(raw.answers("bad")) == 2, 5, "the second answer")
        assert len(said(caplog, "event bad")) == 1
        # the VTN drops it: nothing left of it, the normal event runs on
        await deliver(raw, distribute(raw.vtn_id, [normal()], request_id="d3"))
        await until(lambda: raw.served >= 3, 5, "the third listing")
        assert gw.schedule.state().level == 2.0
        assert not said(caplog, "session error") and not said(caplog, "Traceback")
        assert gw.vtn.status()["fault"] is None


async def test_an_event_of_more_intervals_than_a_week_of_minutes_is_refused_alone(tmp_path, free_tcp_port, caplog):
    # 80,000 intervals (what fits in the 16 MB a message may have) held the loop 0.6 s on arrival, and every
    # /api/status listed them all: 0.2 s of the loop and megabytes at each dashboard refresh
    caplog.set_level(logging.INFO, logger="ven")
    async with raw_gateway(tmp_path, free_tcp_port) as (raw, gw):
        many = MAX_EVENT_INTERVALS + 1
        big = event("big", now() + timedelta(hours=1), f"PT{many}M", [signal([interval(1, "PT1M")] * many)])
        await deliver(raw, distribute(raw.vtn_id, [big, normal()]))
        # 16 MB to read before either answer: 3.8 s beside a loaded suite, over 10 s with the CPU shared four ways
        # more; the speed is not what is tested here
        await until(lambda: raw.answers("normal") == ["optIn"] and raw.answers("big"), 30, "both answered")
        assert raw.answers("big") == ["optOut"] and raw.codes("big") == ["454"] and raw.codes("normal") == ["200"]
        assert gw.schedule.get("big") is None and gw.schedule.state().level == 2.0
        refused = [r for r in caplog.records if "event big" in r.getMessage()]
        assert [r.levelname for r in refused] == ["WARNING"]
        assert f"{many} intervals, more than the {MAX_EVENT_INTERVALS}" in refused[0].getMessage()
        assert gw.vtn.status()["fault"] is None and not said(caplog, "session error")


async def test_a_modification_out_of_range_is_refused_at_each_listing_and_the_one_before_kept(
        tmp_path, free_tcp_port, caplog):
    caplog.set_level(logging.INFO, logger="ven")
    start = now() - timedelta(minutes=1)
    async with raw_gateway(tmp_path, free_tcp_port) as (raw, gw):
        await deliver(raw, distribute(raw.vtn_id, [event("e1", start, "PT1H", [simple([2])], status="active")]))
        await until(lambda: raw.answers("e1") == ["optIn"], 5, "the first answer")
        far = event("e1", start, "PT1H", [signal([interval(3, "PT1H", 0, start=datetime(9999, 12, 31, 23, 30,
                                                                                        tzinfo=timezone.utc))])],
                    status="active", mod=1)
        for n, rid in enumerate(("d2", "d3"), start=2):
            await deliver(raw, distribute(raw.vtn_id, [far], request_id=rid))
            await until(lambda: len(raw.answers("e1")) == n, 5, f"answer {n}")
        # the same answer at each listing: openleadr answers an unchanged one from its cache
        assert raw.answered[1:] == [("e1", "1", "optOut")] * 2 and raw.codes("e1") == ["200", "454", "454"]
        ev = gw.schedule.get("e1")
        assert ev.modification_number == 0 and gw.schedule.state().level == 2.0
        refused = said(caplog, "event e1 (modification 1) refused")
        assert len(refused) == 1 and "modification 0 kept" in refused[0]
        assert gw.vtn.status()["fault"] is None and not said(caplog, "session error")


@pytest.mark.parametrize("duration", ["P9999999Y", "PT99999999999999H", "P99999999999D"])
async def test_a_duration_past_what_openleadr_reads_is_until_further_notice(tmp_path, free_tcp_port, caplog, duration):
    # openleadr's parser raised OverflowError on the whole message: every poll failed while the VTN listed it, the
    # events beside it never ran nor were answered
    caplog.set_level(logging.INFO, logger="ven")
    async with raw_gateway(tmp_path, free_tcp_port) as (raw, gw):
        forever = event("forever", now() - timedelta(minutes=5), duration, [simple([1], duration)], status="active")
        await deliver(raw, distribute(raw.vtn_id, [forever, normal()]))
        await until(lambda: sorted(raw.answered) == [("forever", "0", "optIn"), ("normal", "0", "optIn")], 5,
                    "both answered")
        assert gw.schedule.get("forever").open_ended and gw.schedule.state().level == 2.0
        assert gw.vtn.status()["fault"] is None and gw.vtn.status()["last_error"] is None


async def test_a_refused_modification_followed_by_a_readable_one_is_not_called_refused_when_unlisted(
        tmp_path, free_tcp_port, caplog):
    # The refusal was remembered until the VTN stopped listing the event: a modification 2 taken and run still
    # ended in 'event e1, refused, is no longer listed by the VTN', and a later refusal of the same number unsaid
    caplog.set_level(logging.INFO, logger="ven")
    start = now() - timedelta(minutes=1)
    far = datetime(9999, 12, 31, 23, 30, tzinfo=timezone.utc)
    async with raw_gateway(tmp_path, free_tcp_port) as (raw, gw):
        await deliver(raw, distribute(raw.vtn_id, [event("e1", start, "PT1H", [simple([2])], status="active")]))
        await until(lambda: raw.answers("e1") == ["optIn"], 5, "the first answer")
        bad = event("e1", start, "PT1H", [signal([interval(3, "PT1H", 0, start=far)])], status="active", mod=1)
        await deliver(raw, distribute(raw.vtn_id, [bad], request_id="d2"))
        await until(lambda: len(raw.answers("e1")) == 2, 5, "the refusal")
        good = event("e1", start, "PT1H", [simple([3])], status="active", mod=2)
        await deliver(raw, distribute(raw.vtn_id, [good], request_id="d3"))
        await until(lambda: len(raw.answers("e1")) == 3, 5, "the readable modification answered")
        assert raw.answered[-1] == ("e1", "2", "optIn") and raw.codes("e1")[-1] == "200"
        assert gw.schedule.get("e1").modification_number == 2 and gw.schedule.state().level == 3.0
        await deliver(raw, distribute(raw.vtn_id, [], request_id="d4"))
        await until(lambda: gw.schedule.get("e1") is None or gw.schedule.get("e1").cancelled, 5, "e1 unlisted")
        assert not said(caplog, "refused, is no longer listed"), said(caplog, "event e1")
