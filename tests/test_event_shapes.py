"""Event shapes a real 2.0b VTN sends (a real openleadr VTN, DemoVtn, on loopback): what the log, the schedule and the
answers say for each, as the utility and the operator read them."""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest

from test_event_semantics import messages, peers  # noqa: F401 - fixture
from waiting import eventually as until


def now() -> datetime:
    return datetime.now(timezone.utc)


@pytest.mark.timeout(30)
async def test_a_pending_randomized_event_the_vtn_stops_listing_is_not_said_to_wind_down(peers, caplog):
    # "its level ends at <now>, at random within its startafter of 600 s" for an event two hours off: the operator
    # read that the building had been shedding for it
    server, gw = peers
    eid = server.add_event([2], now() + timedelta(hours=2), 3600, start_after_seconds=600)
    await until(lambda: gw.schedule.get(eid) is not None, 8, "the event")
    server.drop_event(eid)
    await until(lambda: gw.schedule.get(eid).cancelled, 8, "the implied cancellation")
    said = messages(caplog, f"event {eid} no longer listed")
    assert said == [f"event {eid} no longer listed by the VTN: treated as cancelled"], said
    assert gw.level == 0.0 and gw.schedule.get(eid).stop <= now()
