"""The meter as sites have it: power in watts or megawatts, an energy register, its own fault and
out-of-service flags, a router that restarts. Real bacpypes3 stacks on loopback: the routed simulator
and the gateway's device; no mocks."""
from __future__ import annotations

import asyncio
import logging

import pytest

from bacnet_api.meter import MeterClient, MeterReading
from bacnet_api.simulator import MeterSimulator, run_simulator
from bacnet_peer import BacnetPeer
from cli_run import run_cli_async
from test_meter import ANSWERS, client, gateway, read_until_steady  # noqa: F401 - shared fixture and helpers

pytestmark = pytest.mark.timeout(60)


def meter_logs(caplog, level):
    return [r.getMessage() for r in caplog.records if r.name == "bacnet_api.meter" and r.levelno == level]


@pytest.mark.parametrize("units, value", [("watts", 42500.0), ("megawatts", 0.0425), ("kilowatts", 42.5),
                                          ("milliwatts", 42.5e6)])
async def test_power_units_are_converted_to_kw(gateway, free_udp_port, units, value, caplog):
    caplog.set_level(logging.INFO, logger="bacnet_api.meter")
    async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=value, units=units) as sim:
        meter = client(gateway, sim)
        for _ in range(3):
            reading = await asyncio.wait_for(meter.read_once(), 5)
            assert reading.error is None and reading.value == pytest.approx(42.5, rel=1e-6)
        assert meter.units == units and not meter.fault
    said = meter_logs(caplog, logging.INFO)
    if units == "kilowatts":
        assert said == []  # the expected unit: nothing to tell the operator
    else:  # a conversion is logged once, not per read
        assert said == [f"meter {sim.meter_address} analogInput 2 reports {units}: readings are converted "
                        f"to kW (x {1 / (42500.0 / 42.5) if units == 'watts' else {'megawatts': 1000, 'milliwatts': 1e-06}[units]:g})"]


async def test_a_reading_carries_the_digits_the_meter_shows_not_its_float32_noise(gateway, free_udp_port):
    # the meter's Real 1690.3 went to the VTN as 1690.300048828125: digits never measured (helper ledger41)
    async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=1690.3) as sim:
        meter = client(gateway, sim)
        assert repr((await asyncio.wait_for(meter.read_once(), 5)).value) == "1690.3"
        sim.set_units("watts")
        sim.set_value(1690.3)
        assert repr((await asyncio.wait_for(meter.read_once(), 5)).value) == "1.6903"


async def test_a_watts_meter_is_judged_against_the_kw_bounds(gateway, free_udp_port):
    # 250 kW published as 250000 W: inside a 1000 kW bound; read as kW it would be a failed read
    async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=250000.0, units="watts") as sim:
        meter = client(gateway, sim, bounds=(-1000.0, 1000.0))
        assert (await asyncio.wait_for(meter.read_once(), 5)).value == pytest.approx(250.0)
        # 2 MW published as watts is outside: the reason says what the meter said and what it is in kW
        sim.set_value(2.0e6)
        reading = await asyncio.wait_for(meter.read_once(), 5)
        assert reading.value is None
        assert "meter returned 2e+06 watts = 2000 kW, outside -1000..1000" in reading.error


@pytest.mark.parametrize("units, kind", [("kilowattHours", "energy"), ("kilovoltAmperes", "apparent power"),
                                         ("amperes", "current")])
async def test_a_unit_that_is_not_power_is_a_meter_fault_naming_it(gateway, free_udp_port, units, kind, caplog):
    caplog.set_level(logging.INFO, logger="bacnet_api.meter")
    seen: list[MeterReading] = []
    async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=123456.0, units=units) as sim:
        meter = client(gateway, sim, on_reading=seen.append)
        for _ in range(3):
            reading = await asyncio.wait_for(meter.read_once(), 5)
            assert reading.value is None and meter.fault
            assert reading.error.startswith(f"{sim.meter_address} analogInput 2: units {units} is not a power unit "
                                            f"({kind})")
        assert meter.units == units
        # the technician points the gateway at a power register (here: the meter is set right)
        sim.set_units("kilowatts")
        sim.set_value(61.0)
        assert (await asyncio.wait_for(meter.read_once(), 5)).value == 61.0 and not meter.fault
    assert [r.value for r in seen] == [None, None, None, 61.0]
    warnings = meter_logs(caplog, logging.WARNING)
    assert len(warnings) == 1 and f"units {units} is not a power unit" in warnings[0]
    assert not any(r.exc_info for r in caplog.records)


async def test_no_units_is_taken_as_kw_with_one_warning(gateway, free_udp_port, caplog):
    caplog.set_level(logging.INFO, logger="bacnet_api.meter")
    async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=42.5, units="noUnits") as sim:
        meter = client(gateway, sim)
        assert (await asyncio.wait_for(meter.read_once(), 5)).value == 42.5
        assert (await asyncio.wait_for(meter.read_once(), 5)).value == 42.5
        assert meter.units == "noUnits"
    assert meter_logs(caplog, logging.WARNING) == [
        f"meter {sim.meter_address} analogInput 2 states noUnits: its value is taken as kW"]


async def test_a_meter_that_states_kilowatts_after_no_units_ends_the_warning(gateway, free_udp_port, caplog):
    # the WARNING "states noUnits: its value is taken as kW" had no end: a meter set right (or replaced) was said at
    # DEBUG only, and the log went on reading as if the gateway still took its values on trust
    caplog.set_level(logging.INFO, logger="bacnet_api.meter")
    async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=42.5, units="noUnits") as sim:
        meter = client(gateway, sim)
        assert (await asyncio.wait_for(meter.read_once(), 5)).value == 42.5
        await sim.stop()
        assert (await asyncio.wait_for(meter.read_once(), 5)).value is None
        sim.set_units("kilowatts")
        await sim.start()
        assert (await asyncio.wait_for(meter.read_once(), 5)).value == 42.5 and meter.units == "kilowatts"
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "bacnet_api.meter"
            and r.getMessage().startswith(f"meter {sim.meter_address} analogInput 2 ")]
    named = f"meter {sim.meter_address} analogInput 2"
    assert said == [(logging.WARNING, f"{named} states noUnits: its value is taken as kW"),
                    (logging.INFO, f"{named} reports kilowatts now: the warning about its units ends")], said


async def test_units_are_read_again_when_the_meter_comes_back(gateway, free_udp_port, caplog):
    # the router and meter restart (a power cycle, a replaced meter set up in watts): the read after the
    # outage reads the units again, so the first value after it is already in kW
    caplog.set_level(logging.INFO, logger="bacnet_api.meter")
    async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=42.5) as sim:
        meter = client(gateway, sim)
        assert (await asyncio.wait_for(meter.read_once(), 5)).value == 42.5
        await sim.stop()
        reading = await asyncio.wait_for(meter.read_once(), 5)
        assert reading.value is None and reading.error.startswith("no response from 12345:2")
        sim.set_units("watts")
        sim.set_value(43000.0)
        await sim.start()
        reading = await asyncio.wait_for(meter.read_once(), 5)
        assert reading.value == pytest.approx(43.0) and meter.units == "watts"
        await read_until_steady(meter)
    infos = meter_logs(caplog, logging.INFO)
    assert [m for m in infos if "reports" in m] == [
        f"meter {sim.meter_address} analogInput 2 reports watts: readings are converted to kW (x 0.001) (it reported "
        "kilowatts before)"]
    assert any(m.startswith("meter answering again") and "43.00 kW" in m for m in infos)


async def test_units_changed_on_a_meter_that_answers_on_are_followed_at_the_next_read(gateway, free_udp_port, caplog):
    # the meter set from kilowatts to watts in place, or power-cycled faster than a poll: no read failed, so the units
    # were not read again, and 50 kW went to the VTN, the points and the forecaster as 50,000 kW (helper meters41)
    caplog.set_level(logging.INFO, logger="bacnet_api.meter")
    seen: list[MeterReading] = []
    async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=50.0) as sim:
        meter = client(gateway, sim, on_reading=seen.append)
        assert (await asyncio.wait_for(meter.read_once(), 5)).value == 50.0
        sim.set_units("watts")
        sim.set_value(50000.0)
        for _ in range(2):
            assert (await asyncio.wait_for(meter.read_once(), 5)).value == pytest.approx(50.0)
        assert meter.units == "watts"
        sim.set_units("kilowatts")
        sim.set_value(51.0)
        assert (await asyncio.wait_for(meter.read_once(), 5)).value == 51.0 and meter.units == "kilowatts"
    assert [r.value for r in seen] == pytest.approx([50.0, 50.0, 50.0, 51.0]) and not meter.fault
    named = f"meter {sim.meter_address} analogInput 2"
    # each change said once, the way back too: the log's last word on the units was "reports watts"
    assert meter_logs(caplog, logging.INFO) == [
        f"{named} reports watts: readings are converted to kW (x 0.001) (it reported kilowatts before)",
        f"{named} reports kilowatts (it reported watts before)"]


@pytest.mark.parametrize("status, why", [
    (dict(reliability="overRange"), "the meter flags its value as fault (reliability overRange)"),
    (dict(reliability="communicationFailure"), "the meter flags its value as fault (reliability communicationFailure)"),
    (dict(out_of_service=True), "the meter's object is out of service, so its value is not a measurement"),
])
async def test_a_value_the_meter_flags_is_not_used(gateway, free_udp_port, status, why, caplog):
    caplog.set_level(logging.INFO, logger="bacnet_api.meter")
    async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=42.5) as sim:
        meter = client(gateway, sim)
        assert (await asyncio.wait_for(meter.read_once(), 5)).value == 42.5
        sim.set_status(**status)
        sim.set_value(999.0)  # presentValue still answers, but the meter says not to trust it
        for _ in range(2):
            reading = await asyncio.wait_for(meter.read_once(), 5)
            assert reading.value is None and meter.fault
            assert reading.error == f"{sim.meter_address} analogInput 2: {why}"
        assert meter.last_good.value == 42.5
        sim.set_status()
        assert (await asyncio.wait_for(meter.read_once(), 5)).value == 999.0 and not meter.fault
    assert meter_logs(caplog, logging.WARNING) == [f"meter fault: {sim.meter_address} analogInput 2: {why}"]


async def test_run_simulator_publishes_kw_values_in_the_chosen_unit(gateway, free_udp_port):
    port = free_udp_port()
    task = asyncio.create_task(run_simulator(f"127.0.0.1/8:{port}", values=[12.5], units="watts"))
    try:
        async with BacnetPeer(free_udp_port()) as peer:
            await peer.add_route(f"127.0.0.1:{port}", 12345)

            async def published():
                return (await peer.read("12345:2", "analogInput 2", "units"),
                        await peer.read("12345:2", "analogInput 2", "presentValue"))

            deadline = asyncio.get_running_loop().time() + 10
            while (seen := await published()) != ("watts", 12500.0):
                assert asyncio.get_running_loop().time() < deadline, seen
                await asyncio.sleep(0.05)
        meter = MeterClient(gateway, address="12345:2", object="analogInput 2", router=f"127.0.0.1:{port}",
                            timeout_seconds=ANSWERS)
        assert (await asyncio.wait_for(meter.read_once(), 5)).value == pytest.approx(12.5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_simulator_refuses_a_name_that_is_not_a_unit():
    with pytest.raises(ValueError, match="not a BACnet EngineeringUnits name: 'kW'"):
        MeterSimulator(units="kW")


# ----- meter.units: a meter that states noUnits (or nothing) but publishes watts


def _drop_units_property(sim: MeterSimulator) -> None:
    # a meter whose object has no units property at all (reading it answers unknown-property)
    sim._point.__dict__.pop("units", None)


@pytest.mark.parametrize("reported", ["noUnits", None, "watts"], ids=["noUnits", "no-units-property", "agrees"])
async def test_meter_units_names_the_unit_a_meter_does_not_state(gateway, free_udp_port, reported, caplog):
    # 42.5 kW published as 42500 with noUnits: read as kW before, 1000x what the building draws
    caplog.set_level(logging.INFO, logger="bacnet_api.meter")
    async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=42500.0, units=reported or "noUnits") as sim:
        if reported is None:
            _drop_units_property(sim)
        meter = client(gateway, sim, units="watts")
        for _ in range(2):
            reading = await asyncio.wait_for(meter.read_once(), 5)
            assert reading.error is None and reading.value == pytest.approx(42.5)
        assert meter.units == reported and not meter.fault  # what the meter said, for /api/status
    said = {"noUnits": "states noUnits; meter.units says watts",
            None: "has no units property; meter.units says watts",
            "watts": "reports watts, as meter.units says"}[reported]
    assert meter_logs(caplog, logging.INFO) == [
        f"meter {sim.meter_address} analogInput 2 {said}: readings are converted to kW (x 0.001)"]
    assert meter_logs(caplog, logging.WARNING) == []  # the technician said which unit: nothing to warn of


async def test_meter_units_does_not_make_an_energy_register_into_power(gateway, free_udp_port):
    async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=42500.0, units="kilowattHours") as sim:
        reading = await asyncio.wait_for(client(gateway, sim, units="watts").read_once(), 5)
        assert reading.value is None and "units kilowattHours is not a power unit (energy)" in reading.error


@pytest.mark.parametrize("reported", ["kilowatts", "megawatts"])
async def test_a_meter_naming_another_unit_than_meter_units_is_warned_once_and_meter_units_followed(
        gateway, free_udp_port, reported, caplog):
    caplog.set_level(logging.INFO, logger="bacnet_api.meter")
    async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=42500.0, units=reported) as sim:
        meter = client(gateway, sim, units="watts")
        assert (await asyncio.wait_for(meter.read_once(), 5)).value == pytest.approx(42.5)
        sim.set_silent(True)  # a failed read: the units are read again at the next one, and still disagree
        assert (await asyncio.wait_for(meter.read_once(), 5)).value is None
        sim.set_silent(False)
        assert (await asyncio.wait_for(meter.read_once(), 5)).value == pytest.approx(42.5)
        assert meter.units == reported and not meter.fault
    warned = [m for m in meter_logs(caplog, logging.WARNING) if not m.startswith("meter fault:")]
    assert warned == [f"meter {sim.meter_address} analogInput 2 reports {reported}, but meter.units says "
                      "watts: meter.units is followed, readings are converted to kW (x 0.001)"]


async def test_meter_units_megawatts_scales_the_value_and_the_bound_check(gateway, free_udp_port):
    async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=0.25, units="noUnits") as sim:
        meter = client(gateway, sim, units="megawatts", bounds=(-1000.0, 1000.0))
        assert (await asyncio.wait_for(meter.read_once(), 5)).value == pytest.approx(250.0)
        sim.set_value(2.0)
        reading = await asyncio.wait_for(meter.read_once(), 5)
        assert reading.value is None and "meter returned 2 megawatts = 2000 kW, outside -1000..1000" in reading.error


async def test_a_value_out_of_bounds_under_a_meter_units_the_meter_contradicts_names_both_units(
        gateway, free_udp_port):
    # meter.units kilowatts on a meter that reports watts: "meter returned 113200 kW, outside -100000..100000" named
    # neither the meter's unit nor meter.units, the setting to correct (helper newcomer49)
    async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=113200.0, units="watts") as sim:
        meter = client(gateway, sim, units="kilowatts", bounds=(-100000.0, 100000.0))
        reading = await asyncio.wait_for(meter.read_once(), 5)
    assert reading.value is None and reading.error.endswith(
        ": meter returned 113200 (it reports watts, meter.units says kilowatts) = 113200 kW, outside -100000..100000 "
        "(bacnet.input_min_kw..input_max_kw)"), reading.error


def test_meter_units_must_be_a_power_unit():
    for bad in ("kW", "Watts", "kilowattHours", "noUnits"):
        with pytest.raises(ValueError, match=f"must be one of milliwatts, watts, kilowatts, megawatts .*got '{bad}'"):
            MeterClient(object(), address="12345:2", object="analogInput 2", units=bad)


async def read_meter(config, port: int) -> tuple[int, bytes, bytes]:
    """`edge-gateway read-meter --config CONFIG`, its stack on `port`: (exit code, stdout, stderr)."""
    res = await run_cli_async(["read-meter", "--config", str(config), "--bind", f"127.0.0.1/8:{port}"], timeout=45,
                              text=False)
    return res.returncode, res.stdout, res.stderr


@pytest.mark.timeout(60)
async def test_read_meter_follows_meter_units_from_the_config(free_udp_port, tmp_path):
    # config file -> CLI -> meter reader, against a meter stating noUnits in watts
    async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=42500.0, units="noUnits") as sim:
        config = tmp_path / "gateway.toml"
        config.write_text(f'[meter]\naddress = "{sim.meter_address}"\nrouter = "{sim.router_address}"\n'
                          'timeout_seconds = 2\nunits = "watts"\n')
        code, out, err = await read_meter(config, free_udp_port())
    assert code == 0, err.decode()
    assert f"meter {sim.meter_address} analogInput 2 presentValue: 42.500 kW" in out.decode()
    assert out.decode().rstrip().endswith("; the meter states noUnits; meter.units says watts: readings are converted "
                                          "to kW (x 0.001)"), out


@pytest.mark.timeout(60)
async def test_read_meter_says_how_it_took_the_units_and_warns_as_run_would(free_udp_port, tmp_path):
    # the commissioning check printed 42500.000 kW for a watts meter stating noUnits, with nothing beside it: the
    # meter's log lines that say so in `run` were silenced with its fault line (helper meters41 W3)
    async with MeterSimulator(f"127.0.0.1/8:{free_udp_port()}", value=42500.0, units="noUnits") as sim:
        config = tmp_path / "gateway.toml"
        config.write_text(f'[meter]\naddress = "{sim.meter_address}"\nrouter = "{sim.router_address}"\n'
                          'timeout_seconds = 2\n')
        code, out, err = await read_meter(config, free_udp_port())
    assert code == 0, err.decode()
    said = out.decode().rstrip()
    assert ": 42500.000 kW at " in said and said.endswith("; the meter states noUnits: its value is taken as kW"), out
    assert err.decode().strip() == (f"read-meter: warning: meter {sim.meter_address} analogInput 2 states noUnits: "
                                    "its value is taken as kW: check meter.units"), err


@pytest.mark.timeout(60)
async def test_read_meter_says_a_silent_meter_once(free_udp_port, tmp_path):
    # the meter reader's fault WARNING came before the result line saying the same
    config = tmp_path / "gateway.toml"
    config.write_text(f'[meter]\nrouter = "127.0.0.1:{free_udp_port()}"\ntimeout_seconds = 0.5\n')
    code, out, err = await read_meter(config, free_udp_port())
    assert code == 1 and out == b""
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("meter 12345:2 analogInput 2 presentValue: no value: no response"), lines
