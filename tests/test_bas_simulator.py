"""The demo's BAS follows examples/bas-sequence-of-operation.md, faults included: the decision logic
alone, then the statusFlags it reads over the wire from a real Gateway."""
from __future__ import annotations

import pytest
from waiting import eventually

from bacnet_api import points as P
from bacnet_api.bas_simulator import BasSimulator
from ven.app import Gateway
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
