"""The demo's BAS follows examples/bas-sequence-of-operation.md, faults included: the decision logic
alone, then the statusFlags it reads over the wire from a real Gateway, and its own sheds told through
bas-shed-power (step 4) to a real Gateway with a real VTN's event."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from waiting import eventually

from bacnet_api import points as P
from bacnet_api.bas_simulator import BasSimulator
from ven.app import Gateway
from ven.vtn_server import DemoVtn
from test_sequence_of_operation import _config

pytestmark = pytest.mark.timeout(30)


def _bas(restore_cycles=2) -> BasSimulator:
    return BasSimulator(0, "127.0.0.1:47808", lambda: 0.0, restore_cycles=restore_cycles)   # never started


def _run(bas: BasSimulator, view: dict, faults=frozenset()) -> str:
    bas.decision = bas._decide(view, set(faults))
    return bas.decision


def test_high_load_in_fault_neither_sheds_nor_releases_a_shed():
    bas = _bas()
    assert _run(bas, {P.HIGH_LOAD: False}, {P.HIGH_LOAD}) == "normal", "no basis to shed on"
    assert _run(bas, {P.HIGH_LOAD: True}) == "shed"
    for _ in range(5):   # inactive but in fault: "cannot tell", not "no peak"
        assert _run(bas, {P.HIGH_LOAD: False}, {P.HIGH_LOAD}) == "shed"
    assert [_run(bas, {P.HIGH_LOAD: False}) for _ in range(2)] == ["shed", "normal"], "then the calm cycles"


def test_a_shed_is_held_while_the_load_climbs_fast_or_its_rate_is_in_fault():
    bas = _bas(restore_cycles=1)
    assert _run(bas, {P.EVENT_LEVEL: 2.0}) == "shed"
    assert _run(bas, {P.EVENT_LEVEL: 0.0, P.RATE_OF_CHANGE: 6.0}) == "shed"
    assert _run(bas, {P.EVENT_LEVEL: 0.0, P.RATE_OF_CHANGE: 0.0}, {P.RATE_OF_CHANGE}) == "shed"
    assert _run(bas, {P.EVENT_LEVEL: 1.0, P.RATE_OF_CHANGE: 1.0}) == "shed-1"


def test_only_a_shed_begun_on_the_flag_alone_is_the_bass_own():
    bas = _bas(restore_cycles=2)

    def step(view, faults=frozenset()):
        decision = bas._decide(view, set(faults))
        bas._own = bas._own_shed(view, set(faults), decision)
        bas.decision = decision
        return decision, bas._own

    assert step({P.EVENT_LEVEL: 2.0, P.HIGH_LOAD: False}) == ("shed", False)
    assert step({P.EVENT_LEVEL: 0.0, P.HIGH_LOAD: False}) == ("shed", False), "the event's shed, held after it"
    assert step({P.EVENT_LEVEL: 0.0, P.HIGH_LOAD: False}) == ("normal", False)
    assert step({P.EVENT_LEVEL: 0.0, P.HIGH_LOAD: True}) == ("shed", True)
    assert step({P.EVENT_LEVEL: 0.0, P.HIGH_LOAD: False}) == ("shed", True), "its own, held by the calm cycles"
    assert step({P.EVENT_LEVEL: 1.0, P.HIGH_LOAD: False}) == ("shed-1", False)
    assert step({P.EVENT_LEVEL: 0.0, P.HIGH_LOAD: True}) == ("shed", True)
    assert step({P.EVENT_LEVEL: 0.0, P.HIGH_LOAD: False}, {P.HIGH_LOAD}) == ("shed", True), "cannot tell: held"
    assert step({P.EVENT_LEVEL: 2.0, P.HIGH_LOAD: True}) == ("shed", False), "an event takes it over"


async def test_the_bas_reads_the_load_flags_fault_over_the_wire(tmp_path, free_udp_port, free_tcp_port):
    # a new install: forecasts from what the BAS writes, no percentile threshold yet
    cfg = _config(tmp_path, free_udp_port(), free_tcp_port())
    gateway = Gateway(cfg)
    await gateway.start()
    bas = BasSimulator(free_udp_port(), cfg.bacnet.address.replace("/8", ""), lambda: 300.0, interval=0.3)
    await bas.start()
    try:
        await eventually(lambda: P.ONE_HOUR_FORECAST in bas.view and gateway.device.get(P.ONE_HOUR_FORECAST) > 0,
                         10, "a forecast from what the BAS writes")
        await eventually(lambda: {P.HIGH_LOAD, P.LOW_LOAD} <= bas.faults, 5, "both flags in fault")
        assert bas.decision == "normal"
    finally:
        await bas.stop()
        await gateway.stop()


async def test_the_bas_commands_its_own_shed_and_relinquishes_it_for_an_event(tmp_path, free_udp_port, free_tcp_port):
    # the flag turns on at once (a configured threshold under what the building draws), and a real VTN's event
    # comes in the middle of the BAS's own shed
    vtn_port = free_tcp_port()
    cfg = _config(tmp_path, free_udp_port(), vtn_port, high_load_kw=100.0, min_on_minutes=0, min_off_minutes=0)
    vtn = DemoVtn(port=vtn_port, poll_seconds=0.5)
    gateway = Gateway(cfg)
    bas = BasSimulator(free_udp_port(), cfg.bacnet.address.replace("/8", ""), lambda: 300.0, interval=0.3)
    await vtn.start()
    await gateway.start()
    await bas.start()
    try:
        # the BAS's state and the gateway's, both: the write's answer reaches the BAS after the gateway took it
        await eventually(lambda: gateway.forecast.status()["shed_kw"] == 60.0 and bas.reported_kw == 60.0, 15,
                         "the BAS's own shed told")
        assert bas.decision == "shed"
        await eventually(lambda: gateway.device.get(P.INPUT_POWER) == 240.0, 5, "the building, shed, as written")

        start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=1)
        vtn.add_event([2], start=start, interval_seconds=4, event_id="during-own-shed")
        await eventually(lambda: bas.view.get(P.EVENT_LEVEL) == 2.0, 10, "the event's level")
        await eventually(lambda: gateway.forecast.status()["shed_kw"] == 0.0 and bas.reported_kw is None, 5,
                         "relinquished for the event")
        assert bas.decision == "shed"
        # the event over and the flag still on: its own shed again, told again
        await eventually(lambda: gateway.forecast.status()["shed_kw"] == 60.0 and bas.reported_kw == 60.0, 15,
                         "told again after the event")
        assert bas.view.get(P.EVENT_LEVEL) == 0.0
    finally:
        await bas.stop()
        await gateway.stop()
        await vtn.stop()
