"""One ReadPropertyMultiple per meter read (value, units, statusFlags, reliability), and the read property by property
of a meter without it. Real bacpypes3 stacks on loopback: the routed simulator, counting the requests that reach the
meter, and the gateway's device; no mocks."""
from __future__ import annotations

import asyncio
import logging

import pytest

from bacnet_api.meter import MeterClient, read_meter_once
from bacnet_api.simulator import MeterSimulator, run_simulator
from bacnet_peer import BacnetPeer
from raw_router import RawRouter
from test_meter import FAST, answers_within, client, gateway  # noqa: F401 - shared fixture and helpers

pytestmark = pytest.mark.timeout(60)


def meter_logs(caplog, level=logging.INFO):
    return [r.getMessage() for r in caplog.records if r.name == "bacnet_api.meter" and r.levelno >= level]


def singly(sim: MeterSimulator) -> str:
    return (f"meter {sim.meter_address} analogInput 2 does not support ReadPropertyMultiple (BACnet reject "
            "unrecognized-service): it is read property by property (presentValue, units and statusFlags in "
            "separate requests)")


async def read(meter):
    return await asyncio.wait_for(meter.read_once(), 10)


async def test_a_read_is_one_request_to_the_meter(gateway, free_udp_port, caplog):
    # three ReadProperty requests per poll (units, presentValue, statusFlags) tripled the meter's traffic on its MS/TP
    # trunk and stretched each poll by two round trips through the router
    caplog.set_level(logging.INFO, logger="bacnet_api.meter")
    async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=42500.0, units="watts") as sim:
        meter = client(gateway, sim)
        for _ in range(5):
            assert (await read(meter)).value == pytest.approx(42.5)
        assert sim.requests == {"ReadPropertyMultiple": 5}
        assert meter.read_multiple is True and meter.units == "watts"
        # a value the meter flags: its reliability came in the same answer, still one request
        sim.set_status(reliability="overRange")
        reading = await read(meter)
        assert reading.error == f"{sim.meter_address} analogInput 2: the meter flags its value as fault (reliability " \
                                "overRange)" and reading.reliability == "overRange"
        assert sim.requests == {"ReadPropertyMultiple": 6}
        # a request lost on a fresh connection: the next read asks whether the meter has the service, and reads on
        sim.set_status()
        sim.set_silent(True)
        assert (await read(answers_within(meter, FAST))).value is None
        sim.set_silent(False)
        before = sim.requests.copy()
        for _ in range(3):
            assert (await read(answers_within(meter, 2.0))).value == pytest.approx(42.5)
        assert sim.requests - before == {"ReadPropertyMultiple": 3, "ReadProperty": 1}  # protocolServicesSupported
        assert meter.read_multiple is True
    assert not [m for m in meter_logs(caplog) if "ReadPropertyMultiple" in m]  # the usual case: nothing to say


async def test_a_unit_changed_between_two_requests_lands_with_its_value(gateway, free_udp_port):
    # the meter set from kilowatts to watts between the gateway's request for its units and the one for its value:
    # 50 kW, published as 50000 W, went to the VTN as 50,000 kW, read with the unit asked a moment before
    seen = []
    async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=50.0) as sim:
        meter = client(gateway, sim, on_reading=seen.append)
        assert (await read(meter)).value == 50.0
        sim.set_units_between_requests("watts", 50000.0)
        for _ in range(2):
            assert (await read(meter)).value == pytest.approx(50.0)
        assert sim.units == "watts" and meter.units == "watts"
    assert [r.value for r in seen] == pytest.approx([50.0] * 3)


async def test_a_meter_without_read_property_multiple_is_read_property_by_property_said_once(
        gateway, free_udp_port, caplog):
    caplog.set_level(logging.INFO, logger="bacnet_api.meter")
    async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=42500.0, units="watts",
                              read_multiple=False) as sim:
        async with BacnetPeer(free_udp_port()) as peer:  # as such a meter says of itself
            await peer.add_route(sim.router_address, 12345)
            services = await peer.read(sim.meter_address, f"device {sim.device_id}", "protocolServicesSupported")
            assert services[12] == 1 and services[14] == 0, services  # readProperty, readPropertyMultiple
        meter, before = client(gateway, sim), sim.requests.copy()
        for _ in range(3):
            assert (await read(meter)).value == pytest.approx(42.5) and not meter.fault
        # asked once on the connection, then units, presentValue and statusFlags alone at each read
        assert sim.requests - before == {"ReadPropertyMultiple": 1, "ReadProperty": 9}
        assert meter.read_multiple is False
        sim.set_status(reliability="overRange")
        reading = await read(meter)
        assert reading.error.endswith("the meter flags its value as fault (reliability overRange)")
        # a failed read is a reconnection: the meter is asked again once (it may have been replaced), not logged again
        sim.set_status()
        sim.set_value(43000.0)
        before = sim.requests.copy()
        for _ in range(3):
            assert (await read(meter)).value == pytest.approx(43.0)
        assert sim.requests - before == {"ReadPropertyMultiple": 1, "ReadProperty": 9}
        # silent a while: a failed read too, so again one ReadPropertyMultiple refused, then property by property
        sim.set_silent(True)
        assert (await read(answers_within(meter, FAST))).value is None
        sim.set_silent(False)
        before = sim.requests.copy()
        for _ in range(3):
            assert (await read(answers_within(meter, 2.0))).value == pytest.approx(43.0)
        assert sim.requests - before == {"ReadPropertyMultiple": 1, "ReadProperty": 9}
    infos = [m for m in meter_logs(caplog) if "ReadPropertyMultiple" in m]
    assert infos == [singly(sim)], infos
    assert not any(r.exc_info for r in caplog.records)


async def test_a_meter_that_leaves_read_property_multiple_unanswered_is_read_property_by_property(
        gateway, free_udp_port, caplog):
    # BACnet says a device rejects a service it lacks; one that says nothing failed every read, for good
    caplog.set_level(logging.INFO, logger="bacnet_api.meter")
    async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=42.5, read_multiple="unanswered") as sim:
        meter = client(gateway, sim)
        reading = await read(answers_within(meter, FAST))
        assert reading.error == f"no response from 12345:2 within {FAST:g} s (through router {sim.router_address})"
        answers_within(meter, 2.0)
        for _ in range(3):
            assert (await read(meter)).value == 42.5
        assert sim.requests == {"ReadPropertyMultiple": 1, "ReadProperty": 1 + 9} and meter.read_multiple is False
        # not asked again after a failed read: each time would cost another
        sim.set_silent(True)
        assert (await read(answers_within(meter, FAST))).value is None
        sim.set_silent(False)
        assert (await read(answers_within(meter, 2.0))).value == 42.5
        assert sim.requests["ReadPropertyMultiple"] == 1
    assert [m for m in meter_logs(caplog) if "ReadPropertyMultiple" in m] == [
        f"meter {sim.meter_address} analogInput 2 does not support ReadPropertyMultiple (it left it unanswered, and "
        "its protocolServicesSupported lacks it): it is read property by property (presentValue, units and statusFlags "
        "in separate requests)"]


async def test_a_meter_that_cannot_say_is_read_property_by_property_until_its_next_reconnection(gateway, caplog):
    # its ReadPropertyMultiple unanswered, and its protocolServicesSupported no list: it may have the service and have
    # lost the request, so it is not read three requests at a time for good
    caplog.set_level(logging.INFO, logger="bacnet_api.meter")
    async with RawRouter(answer="meter-rp") as router:
        meter = MeterClient(gateway, address="12345:2", object="analogInput 2", router=router.address,
                            timeout_seconds=FAST)
        assert (await read(meter)).error.startswith("no response from 12345:2")
        assert router.requests == 1
        for _ in range(2):
            assert (await read(answers_within(meter, 2.0))).value == 42.5 and meter.read_multiple is False
        assert router.requests == 1 + 1 + 3 + 3  # protocolServicesSupported, then three requests a read
        router.answer = "silent"
        assert (await read(answers_within(meter, FAST))).value is None
        router.answer = "meter"
        assert (await read(answers_within(meter, 2.0))).value == 42.5 and meter.read_multiple is True
    assert [m for m in meter_logs(caplog) if "ReadPropertyMultiple" in m] == []


async def test_a_meter_that_gains_read_property_multiple_is_read_in_one_request_again(gateway, free_udp_port, caplog):
    caplog.set_level(logging.INFO, logger="bacnet_api.meter")
    async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=42.5, read_multiple=False) as sim:
        meter = client(gateway, sim)
        assert (await read(meter)).value == 42.5 and meter.read_multiple is False
        await sim.stop()   # a firmware update
        assert (await read(answers_within(meter, FAST))).value is None
        sim.read_multiple = True
        await sim.start()
        before = sim.requests.copy()
        for _ in range(2):
            assert (await read(answers_within(meter, 2.0))).value == 42.5
        assert sim.requests - before == {"ReadPropertyMultiple": 2} and meter.read_multiple is True
    assert [m for m in meter_logs(caplog) if "ReadPropertyMultiple" in m] == [
        singly(sim), f"meter {sim.meter_address} analogInput 2 answers ReadPropertyMultiple now: read in one request"]


@pytest.mark.parametrize("missing", [("units",), ("statusFlags",), ("reliability",), ("units", "reliability")])
async def test_a_property_the_meter_lacks_reads_as_it_did_alone(gateway, free_udp_port, missing, caplog):
    # an error for one property inside the ReadPropertyMultiple answer is what a ReadProperty of it met: the same
    # readings, fault texts and log lines either way
    said = {}
    for multiple in (False, True):
        caplog.clear()
        caplog.set_level(logging.INFO, logger="bacnet_api.meter")
        async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=42.5, read_multiple=multiple) as sim:
            sim.set_missing(*missing)
            meter = client(gateway, sim)
            readings = [await read(meter)]
            sim.set_status(reliability="overRange")
            readings.append(await read(meter))
            readings.append(await read(meter))
            said[multiple] = ([(r.value, r.error, r.reliability) for r in readings], meter.units,
                              [m for m in meter_logs(caplog) if "ReadPropertyMultiple" not in m])
            assert meter.read_multiple is multiple
    assert said[True] == said[False], said
    values, units, _ = said[True]
    assert values[0] == (42.5, None, None) and units == (None if "units" in missing else "kilowatts")
    if "statusFlags" in missing:  # nothing says the value is not to be trusted: read as a value
        assert values[1:] == [(42.5, None, None)] * 2
    else:
        why = "" if "reliability" in missing else " (reliability overRange)"
        assert values[1][1] == f"{sim.meter_address} analogInput 2: the meter flags its value as fault{why}"


async def test_a_meter_that_fails_the_whole_request_for_one_missing_property_is_read_property_by_property(
        gateway, free_udp_port, caplog):
    # an older meter answers the whole ReadPropertyMultiple with property/unknown-property when it lacks one property
    # asked (here reliability): taken as the value's own error, a meter that read well property by property failed
    # every read
    caplog.set_level(logging.INFO, logger="bacnet_api.meter")
    async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=42.5, read_multiple="whole") as sim:
        sim.set_missing("reliability")
        meter = client(gateway, sim)
        assert [(await read(meter)).value for _ in range(3)] == [42.5] * 3
        assert meter.read_multiple is False
        assert sim.requests["ReadPropertyMultiple"] == 1
    assert [m for m in meter_logs(caplog) if "ReadPropertyMultiple" in m] == [
        f"meter {sim.meter_address} analogInput 2 does not support ReadPropertyMultiple (BACnet error "
        "property/unknown-property): it is read property by property (presentValue, units and statusFlags in "
        "separate requests)"]


async def test_a_meter_that_aborts_read_property_multiple_is_read_property_by_property(gateway, free_udp_port, caplog):
    # a meter whose answer would not fit its small APDU (50 bytes on many MS/TP meters) aborts the request
    # segmentation-not-supported: taken as any abort, it failed every read, for good, where three ReadProperty
    # requests had read it well (helper verify42)
    caplog.set_level(logging.INFO, logger="bacnet_api.meter")
    async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=42.5, read_multiple="abort") as sim:
        meter = client(gateway, sim)
        assert [(await read(meter)).value for _ in range(3)] == [42.5] * 3
        assert meter.read_multiple is False and not meter.fault
        assert sim.requests == {"ReadPropertyMultiple": 1, "ReadProperty": 9}
    assert [m for m in meter_logs(caplog) if "ReadPropertyMultiple" in m] == [
        f"meter {sim.meter_address} analogInput 2 does not support ReadPropertyMultiple (BACnet abort "
        "segmentation-not-supported): it is read property by property (presentValue, units and statusFlags in "
        "separate requests)"]
    assert not any(r.exc_info for r in caplog.records)


async def test_an_unknown_object_reads_as_it_did_alone(gateway, free_udp_port):
    # bacpypes3's meter answers the whole ReadPropertyMultiple with object/unknown-object
    errors = []
    for multiple in (False, True):
        async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=42.5, read_multiple=multiple) as sim:
            meter = client(gateway, sim)
            meter.object, meter.object_name = "analogInput,99", "analogInput 99"
            errors.append((await read(meter)).error)
    assert errors == [f"{sim.meter_address} analogInput 99: BACnet error object/unknown-object (analogInput 99 does "
                      "not exist on the meter: check meter.object)"] * 2


@pytest.mark.parametrize("multiple", [True, False])
async def test_read_meter_reads_a_meter_with_or_without_read_property_multiple(free_udp_port, multiple):
    async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=42500.0, units="watts",
                              read_multiple=multiple) as sim:
        reading, units = await read_meter_once(f"127.0.0.1/8:{free_udp_port()}", 500403, sim.meter_address,
                                               "analogInput 2", router=sim.router_address, timeout=2.0)
        assert reading.value == pytest.approx(42.5) and units.name == "watts"
        alone = {"ReadPropertyMultiple": 1, "ReadProperty": 3}    # the rejected request, then one per property
        assert sim.requests == ({"ReadPropertyMultiple": 1} if multiple else alone)


async def test_simulate_meter_can_serve_a_meter_without_read_property_multiple(gateway, free_udp_port):
    port = free_udp_port()
    task = asyncio.create_task(run_simulator(f"127.0.0.1/8:{port}", values=[12.5], read_multiple=False))
    try:
        meter = MeterClient(gateway, address="12345:2", object="analogInput 2", router=f"127.0.0.1:{port}",
                            timeout_seconds=FAST)

        async def answered():
            while (await meter.read_once()).value != 12.5:
                await asyncio.sleep(0.05)
        await asyncio.wait_for(answered(), 10)
        assert meter.read_multiple is False
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
