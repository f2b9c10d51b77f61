"""The gateway's BACnet device, exercised from a second real bacpypes3 stack on loopback."""
from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from pathlib import Path

import pytest
from bacpypes3.apdu import ErrorRejectAbortNack, WritePropertyRequest
from bacpypes3.basetypes import PropertyIdentifier
from bacpypes3.constructeddata import Any
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import Enumerated, ObjectIdentifier

from bacnet_api.device import GatewayDevice
from bacnet_api.points import (
    BY_NAME,
    HIGH_LOAD,
    INPUT_POWER,
    METER_FAULT,
    METER_POWER,
    ONE_HOUR_FORECAST,
    OPT_OUT,
    POINTS,
    TAKEN_NAMES,
)
from bacnet_peer import BacnetPeer, PeerError
from netns import linked_netns  # noqa: F401 - a fixture
from test_http_api import points_status
from waiting import eventually

pytestmark = pytest.mark.timeout(60)

DEVICE_ID = 500123
INPUT_MIN, INPUT_MAX = -50.0, 1000.0  # both exact in IEEE float32, so boundary writes are exact


@pytest.fixture
async def gateway(free_udp_port):
    device = GatewayDevice(address=f"127.0.0.1/8:{free_udp_port()}", device_id=DEVICE_ID,
                           device_name="TestGateway", input_min=INPUT_MIN, input_max=INPUT_MAX)
    await device.start()
    try:
        yield device
    finally:
        await device.stop()


@pytest.fixture
async def peer(free_udp_port):
    async with BacnetPeer(free_udp_port(), timeout=3.0) as p:
        yield p


def where(device: GatewayDevice) -> str:
    return device.address.replace("/8", "")


def port_of(device: GatewayDevice) -> int:
    return int(device.address.rpartition(":")[2])


async def test_answers_directed_and_broadcast_who_is(gateway, peer):
    directed = await peer.who_is(where(gateway), wait=2.0)
    assert [i.iAmDeviceIdentifier[1] for i in directed] == [DEVICE_ID]

    broadcast = await peer.who_is_broadcast(port_of(gateway), wait=0.5)
    assert [i.iAmDeviceIdentifier[1] for i in broadcast] == [DEVICE_ID]

    # a ranged Who-Is that excludes the device gets no answer
    assert await peer.who_is_broadcast(port_of(gateway), low=1, high=10, wait=0.3) == []


async def test_object_list_names_every_point(gateway, peer):
    object_list = await peer.read(where(gateway), f"device {DEVICE_ID}", "objectList")
    expected = {f"device {DEVICE_ID}", "networkPort 1"} | {p.object_id for p in POINTS}
    assert sorted(object_list) == sorted(expected)
    assert await peer.read(where(gateway), f"device {DEVICE_ID}", "objectName") == "TestGateway"
    # the names bacnet.device_name may not take (the config's check) are those of the other objects
    names = {await peer.read(where(gateway), oid, "objectName") for oid in expected - {f"device {DEVICE_ID}"}}
    assert names == TAKEN_NAMES


async def test_read_property_multiple_returns_every_point(gateway, peer):
    specs = []
    for p in POINTS:
        props = ["presentValue", "objectName", "statusFlags", "description"]
        if p.kind == "analogValue":
            props.append("units")
        specs.append((p.object_id, props))
    rows = await peer.read_multiple(where(gateway), specs)
    assert not isinstance(rows, PeerError), rows
    for p in POINTS:
        got = {prop: value for (obj, prop), value in rows.items() if obj == p.object_id}
        assert got["objectName"] == p.name
        assert got["description"] == p.description
        if p.kind == "analogValue":
            assert got["presentValue"] == pytest.approx(float(p.initial))
            assert got["units"] == p.units
        else:
            assert got["presentValue"] == ("active" if p.initial else "inactive")
        # in_alarm, fault, overridden, out_of_service
        assert got["statusFlags"] == [0, int(p.starts_in_fault), 0, 0], p.name


async def test_the_readme_point_table_says_what_the_device_answers(gateway, peer):
    # the technician programs the BAS from README's table and checks it with a BACnet workstation:
    # name, units, description and whether the point is commandable must read as the table says
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = {}
    for line in readme.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].startswith(("analogValue ", "binaryValue ")):
            rows[cells[0]] = cells[1:]
    assert sorted(rows) == sorted(p.object_id for p in POINTS)
    for obj, (name, access, units, texts, meaning) in rows.items():
        got = await peer.read_multiple(where(gateway), [(obj, ["objectName", "description", "priorityArray"])])
        assert got[(obj, "objectName")] == name
        assert got[(obj, "description")] == meaning, name
        assert isinstance(got[(obj, "priorityArray")], list) == (access == "commandable"), name
        if obj.startswith("analogValue"):
            assert await peer.read(where(gateway), obj, "units") == units.split(" ")[0], name
            assert texts == "", name
        else:   # "inactive text / active text"
            served = [await peer.read(where(gateway), obj, prop) for prop in ("inactiveText", "activeText")]
            assert texts == " / ".join(served), name


async def test_binary_points_serve_their_state_texts(gateway, peer):
    # a BAS graphic shows the point's inactiveText/activeText; without them the technician sees 0/1
    binary = [p for p in POINTS if p.kind == "binaryValue"]
    assert binary and all(p.texts and all(p.texts) and p.texts[0] != p.texts[1] for p in binary)
    for p in binary:
        got = await peer.read_multiple(where(gateway), [(p.object_id, ["inactiveText", "activeText",
                                                                       "propertyList"])])
        assert (got[(p.object_id, "inactiveText")], got[(p.object_id, "activeText")]) == p.texts, p.name
        assert {"inactiveText", "activeText"} <= set(got[(p.object_id, "propertyList")]), p.name
        assert await peer.read(where(gateway), p.object_id, "activeText") == p.texts[1], p.name
        refused = await peer.write(where(gateway), p.object_id, "activeText", "renamed")
        assert isinstance(refused, PeerError) and refused.code == "writeAccessDenied", (p.name, refused)
    assert (BY_NAME[METER_FAULT].texts, BY_NAME[OPT_OUT].texts) == (("normal", "fault"), ("opted in", "opted out"))
    # analog points have no state texts, and do not claim any
    assert "activeText" not in await peer.read(where(gateway), "analogValue 1", "propertyList")


async def test_input_power_commanded_and_relinquished_by_priority(gateway, peer):
    seen = []
    gateway.on_write(INPUT_POWER, seen.append)
    addr, obj = where(gateway), "analogValue 1"

    assert await peer.write(addr, obj, "presentValue", 12.5, priority=8) is None
    assert gateway.get(INPUT_POWER) == 12.5
    array = await peer.read(addr, obj, "priorityArray")
    assert array[7] == 12.5 and [v for i, v in enumerate(array) if i != 7] == [None] * 15
    assert await peer.read(addr, obj, "currentCommandPriority") == 8

    # a lower priority does not win while 8 holds
    assert await peer.write(addr, obj, "presentValue", 3.0, priority=16) is None
    assert gateway.get(INPUT_POWER) == 12.5

    # relinquish 8: the value falls to the next active slot, then to relinquishDefault
    assert await peer.relinquish(addr, obj, priority=8) is None
    assert gateway.get(INPUT_POWER) == 3.0
    assert (await peer.read(addr, obj, "priorityArray"))[7] is None
    assert await peer.relinquish(addr, obj, priority=16) is None
    assert await peer.read(addr, obj, "presentValue") == 0.0
    assert await peer.read(addr, obj, "relinquishDefault") == 0.0
    assert await peer.read(addr, obj, "priorityArray") == [None] * 16
    assert seen == [12.5, 12.5, 3.0, None]  # fully relinquished: no commanded value


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, INPUT_MAX + 1, INPUT_MIN - 1, 1e9])
async def test_input_power_refuses_bad_values(gateway, peer, bad):
    seen = []
    gateway.on_write(INPUT_POWER, seen.append)
    addr, obj = where(gateway), "analogValue 1"
    assert await peer.write(addr, obj, "presentValue", 40.0, priority=8) is None

    err = await peer.write(addr, obj, "presentValue", bad, priority=8)
    assert isinstance(err, PeerError) and err.code == "valueOutOfRange"
    assert gateway.get(INPUT_POWER) == 40.0
    array = await peer.read(addr, obj, "priorityArray")
    assert array[7] == 40.0 and array.count(None) == 15
    assert seen == [40.0]


async def test_a_command_the_point_cannot_take_is_logged_counted_and_named(gateway, peer, caplog, free_udp_port):
    # A BAS writing watts for kW got value-out-of-range on the wire, and the gateway said nothing: the operator saw
    # only the forecaster going over to the meter, worded as if the BAS had not written.
    addr = where(gateway)
    caplog.set_level(logging.WARNING, logger="bacnet_api.write_access")

    def lines():
        return [r.getMessage() for r in caplog.records if r.name == "bacnet_api.write_access"]

    for _ in range(3):
        err = await peer.write(addr, "analogValue 1", "presentValue", 250000.0, priority=8)
        assert isinstance(err, PeerError) and err.code == "valueOutOfRange"
    assert len(lines()) == 1, lines()   # a BAS repeats its write each scan: one line per source and 10 min
    assert lines()[0].startswith(
        "BACnet WriteProperty of input-power-meter (analogValue 1) presentValue at priority 8 from 127.0.0.1:")
    assert lines()[0].endswith(" refused (value-out-of-range): 250000 is outside the point's -50..1000 "
                               "(minPresValue..maxPresValue); repeats from it are counted, one line per 10 min at most")
    status = gateway.write_refusals()
    assert status["writes_refused"] == 3 and status["last_write_refused"]["why"] == lines()[0].split(": ", 1)[1] \
        .split(";")[0]

    # from another source: its own line, whatever the first one's reason
    async with BacnetPeer(free_udp_port(), device_id=4000002, timeout=3.0) as other:
        assert isinstance(await other.write(addr, "analogValue 2", "presentValue", 7.0), PeerError)
        assert isinstance(await other.write(addr, "binaryValue 4", "presentValue", "active", priority=6), PeerError)
    assert lines()[1].endswith("refused (write-access-denied): the point is read-only: the gateway publishes it; "
                               "repeats from it are counted, one line per 10 min at most"), lines()
    assert len(lines()) == 2 and gateway.write_refusals()["writes_refused"] == 5
    assert gateway.write_refusals()["last_write_refused"]["why"] == "priority 6 is reserved for minimum on/off time"
    # other properties are a tool looking around, not a BAS command: not counted
    assert isinstance(await peer.write(addr, "analogValue 1", "objectName", "x"), PeerError)
    assert gateway.write_refusals()["writes_refused"] == 5


@pytest.mark.parametrize("bad, shown", [(math.nan, "NaN"), (math.inf, "inf"), (-math.inf, "-inf")])
async def test_a_command_that_is_no_number_is_named_so(gateway, peer, caplog, bad, shown):
    # the line said "nan is outside the point's -50..1000": a BAS passing on a failed sensor's NaN sent the
    # technician looking at the scaling
    caplog.set_level(logging.WARNING, logger="bacnet_api.write_access")
    err = await peer.write(where(gateway), "analogValue 1", "presentValue", bad, priority=8)
    assert isinstance(err, PeerError) and err.code == "valueOutOfRange"
    lines = [r.getMessage() for r in caplog.records if r.name == "bacnet_api.write_access"]
    assert len(lines) == 1 and f"refused (value-out-of-range): {shown} is not a number the point can take (a failed " \
        "sensor's reading?): it takes -50..1000 (minPresValue..maxPresValue);" in lines[0], lines


async def test_input_power_accepts_the_bounds(gateway, peer):
    addr, obj = where(gateway), "analogValue 1"
    for value in (INPUT_MIN, INPUT_MAX):
        assert await peer.write(addr, obj, "presentValue", value, priority=10) is None
        assert gateway.get(INPUT_POWER) == value


async def test_read_only_points_refuse_network_writes(gateway, peer):
    addr = where(gateway)
    for p in POINTS:
        if p.writable:
            continue
        before = gateway.get(p.name)
        value = 7.0 if p.kind == "analogValue" else "active"
        for priority in (None, 8):
            err = await peer.write(addr, p.object_id, "presentValue", value, priority=priority)
            assert isinstance(err, PeerError) and err.code == "writeAccessDenied", (p.name, err)
        assert gateway.get(p.name) == before, p.name

    # the application still updates them freely
    gateway.set(ONE_HOUR_FORECAST, 321.5)
    assert await peer.read(addr, "analogValue 2", "presentValue") == 321.5


async def test_other_properties_are_not_writable(gateway, peer):
    addr = where(gateway)
    for obj, prop, value in [("analogValue 1", "outOfService", True),
                             ("analogValue 1", "objectName", "renamed"),
                             ("binaryValue 4", "relinquishDefault", "active")]:
        err = await peer.write(addr, obj, prop, value)
        assert isinstance(err, PeerError) and err.code == "writeAccessDenied", (obj, prop, err)
    assert await peer.read(addr, "analogValue 1", "objectName") == INPUT_POWER


async def test_device_and_network_port_refuse_writes(gateway, peer):
    # One write of objectIdentifier would renumber the gateway and the BAS would lose it.
    addr, device = where(gateway), f"device {DEVICE_ID}"
    for obj, prop, value in [(device, "objectIdentifier", "device,123"), (device, "objectName", "renamed"),
                             (device, "maxApduLengthAccepted", 50), (device, "databaseRevision", 99),
                             ("networkPort 1", "objectName", "np"), ("networkPort 1", "outOfService", True)]:
        err = await peer.write(addr, obj, prop, value)
        assert isinstance(err, PeerError) and err.code == "writeAccessDenied", (obj, prop, err)
    assert await peer.read(addr, device, "objectName") == "TestGateway"
    assert await peer.read(addr, device, "maxApduLengthAccepted") == 1476
    assert await peer.read(addr, "networkPort 1", "outOfService") == 0


async def test_opt_out_refuses_enumerations_other_than_inactive_and_active(gateway, peer):
    seen = []
    gateway.on_write(OPT_OUT, seen.append)
    addr = where(gateway)
    assert await peer.write(addr, "binaryValue 4", "presentValue", "active", priority=8) is None
    for raw in (2, 255):  # before: acknowledged, read back as 2, and taken as "opt back in"
        request = WritePropertyRequest(objectIdentifier=ObjectIdentifier("binaryValue,4"),
                                       propertyIdentifier=PropertyIdentifier("presentValue"),
                                       propertyValue=Any(Enumerated(raw)), priority=8, destination=Address(addr))
        with pytest.raises(ErrorRejectAbortNack) as err:
            await asyncio.wait_for(peer.app.request(request), 5)
        assert str(err.value.errorCode) == "value-out-of-range", raw
    assert gateway.get(OPT_OUT) is True and seen == [True]


async def test_bounds_not_exact_in_float32_are_accepted_as_the_bas_sends_them(free_udp_port, peer):
    device = GatewayDevice(address=f"127.0.0.1/8:{free_udp_port()}", device_id=DEVICE_ID,
                           device_name="TestGateway", input_min=-0.3, input_max=999.9)
    await device.start()
    try:
        addr = where(device)
        for value in (-0.3, 999.9):  # a Real: 999.9 travels as 999.9000244
            assert await peer.write(addr, "analogValue 1", "presentValue", value, priority=8) is None, value
        err = await peer.write(addr, "analogValue 1", "presentValue", 999.91, priority=8)
        assert isinstance(err, PeerError) and err.code == "valueOutOfRange"
    finally:
        await device.stop()


async def test_input_power_serves_the_range_a_write_must_fall_in(gateway, peer):
    # a commissioning tool reads the limits from the object (the EDE file has them too); they were unknown-property
    addr, obj = where(gateway), "analogValue 1"
    low, high = await peer.read(addr, obj, "minPresValue"), await peer.read(addr, obj, "maxPresValue")
    assert (low, high) == (INPUT_MIN, INPUT_MAX)
    assert {"minPresValue", "maxPresValue"} <= {str(p) for p in await peer.read(addr, obj, "propertyList")}
    assert await peer.write(addr, obj, "presentValue", high, priority=8) is None
    err = await peer.write(addr, obj, "presentValue", high + 1, priority=8)
    assert isinstance(err, PeerError) and err.code == "valueOutOfRange"


async def test_opt_out_write_and_relinquish_fire_on_write(gateway, peer):
    seen = []
    gateway.on_write(OPT_OUT, seen.append)
    addr, obj = where(gateway), "binaryValue 4"
    assert await peer.read(addr, obj, "relinquishDefault") == "inactive"

    assert await peer.write(addr, obj, "presentValue", "active", priority=8) is None
    assert gateway.get(OPT_OUT) is True
    assert seen == [True]
    assert (await peer.read(addr, obj, "priorityArray"))[7] == 1  # active, as a bare enumeration

    assert await peer.relinquish(addr, obj, priority=8) is None
    assert gateway.get(OPT_OUT) is False
    assert await peer.read(addr, obj, "presentValue") == "inactive"
    assert seen == [True, False]


async def test_status_flags_tell_the_truth(gateway, peer):
    addr, obj = where(gateway), "analogValue 6"
    assert gateway.status_flags(METER_POWER)["fault"] is True  # no reading yet
    gateway.set(METER_POWER, 88.0)
    assert gateway.status_flags(METER_POWER) == {
        "in_alarm": False, "fault": False, "overridden": False, "out_of_service": False}
    assert await peer.read(addr, obj, "statusFlags") == [0, 0, 0, 0]

    gateway.set_fault(METER_POWER, True)  # meter went quiet
    assert await peer.read(addr, obj, "statusFlags") == [0, 1, 0, 0]
    assert await peer.read(addr, obj, "reliability") == "communicationFailure"
    gateway.set(METER_POWER, 90.0)  # a value alone does not clear an explicit fault
    assert gateway.status_flags(METER_POWER)["fault"] is True
    gateway.set_fault(METER_POWER, False)
    assert await peer.read(addr, obj, "statusFlags") == [0, 0, 0, 0]
    assert await peer.read(addr, obj, "reliability") == "noFaultDetected"


async def test_snapshot_lists_every_point(gateway):
    gateway.set(ONE_HOUR_FORECAST, 12.0)
    snap = gateway.snapshot()
    assert set(snap) == {p.name for p in POINTS}
    entry = snap[ONE_HOUR_FORECAST]
    assert entry["object"] == "analogValue 2" and entry["value"] == 12.0
    assert entry["units"] == "kilowatts" and entry["flags"]["fault"] is False
    assert snap[METER_POWER]["flags"]["fault"] is True
    assert snap[INPUT_POWER]["priority"] is None
    # the dashboard tests' points (test_http_api.points_status) are this snapshot's, reliability and all
    faulted = {name: e["reliability"] for name, e in snap.items() if e["flags"]["fault"]}
    assert points_status({name: gateway.get(name) for name in snap}, faulted=faulted) == snap


async def test_application_side_rejects_nonsense(gateway):
    with pytest.raises(KeyError):
        gateway.set("no-such-point", 1.0)
    with pytest.raises(ValueError):
        gateway.set(ONE_HOUR_FORECAST, math.nan)
    with pytest.raises(TypeError):
        gateway.set(OPT_OUT, 0.5)
    with pytest.raises(ValueError):
        gateway.on_write(ONE_HOUR_FORECAST, print)


async def test_devices_start_one_after_another_and_side_by_side(free_udp_port, peer):
    port = free_udp_port()
    for device_id in (500201, 500202):  # same port reused: stop must free the socket
        device = GatewayDevice(address=f"127.0.0.1/8:{port}", device_id=device_id, device_name=f"gw{device_id}")
        await device.start()
        try:
            found = await peer.who_is(f"127.0.0.1:{port}", wait=2.0)
            assert [i.iAmDeviceIdentifier[1] for i in found] == [device_id]
        finally:
            await device.stop()
        assert not device.running

    a = GatewayDevice(address=f"127.0.0.1/8:{free_udp_port()}", device_id=500301, device_name="a")
    b = GatewayDevice(address=f"127.0.0.1/8:{free_udp_port()}", device_id=500302, device_name="b")
    await a.start()
    await b.start()
    try:
        a.set(ONE_HOUR_FORECAST, 1.0)
        b.set(ONE_HOUR_FORECAST, 2.0)
        assert await peer.read(where(a), "analogValue 2", "presentValue") == 1.0
        assert await peer.read(where(b), "analogValue 2", "presentValue") == 2.0
    finally:
        await a.stop()
        await b.stop()


async def test_numpy_values_from_the_forecaster_are_accepted(gateway):
    np = pytest.importorskip("numpy")
    gateway.set(HIGH_LOAD, np.bool_(True))
    gateway.set(ONE_HOUR_FORECAST, np.float64(12.5))
    assert gateway.get(HIGH_LOAD) is True and gateway.get(ONE_HOUR_FORECAST) == 12.5


async def test_busy_port_is_a_clear_error(gateway):
    # bacpypes3 binds with SO_REUSEPORT: without a check a second device would share the port
    other = GatewayDevice(address=gateway.address, device_id=500999, device_name="second")
    with pytest.raises(OSError, match="not available"):
        await other.start()
    assert not other.running


async def test_bac0_chatter_goes_through_logging_not_stdout(free_udp_port, capsys):
    device = GatewayDevice(address=f"127.0.0.1/8:{free_udp_port()}", device_id=500501, device_name="quiet")
    await device.start()
    await device.stop()
    captured = capsys.readouterr()
    assert "BAC0" not in captured.out and "Stopping all tasks" not in captured.out


async def test_read_property_multiple_reports_per_property_errors(gateway, peer):
    rows = await peer.read_multiple(where(gateway), [("binaryValue 1", ["presentValue", "units"]),
                                                     ("analogValue 99", ["presentValue"])])
    assert rows[("binaryValue 1", "presentValue")] == "inactive"
    assert rows[("binaryValue,1", "units")].code == "unknownProperty"  # lookups forgive the separator
    assert rows[("analogValue 99", "presentValue")].code == "unknownObject"


def i_am_of(device_id: int) -> bytes:
    """An I-Am's APDU up to its device identifier (unconfirmed request, service 0)."""
    return b"\x10\x00\xc4" + ((8 << 22) | device_id).to_bytes(4, "big")


# What a BAS station on the subnet would hear: every datagram to the port, from anyone, as "<source> <hex>".
_LISTEN = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, (host, port) = s.recvfrom(2048)
    print(f"{host}:{port} {data.hex()}", flush=True)
"""


@pytest.mark.timeout(60)
async def test_the_device_says_i_am_to_its_subnet_when_it_starts(free_udp_port, linked_netns):  # noqa: F811
    # It only answered Who-Is: a BAS that had bound the gateway at an address DHCP has since changed, or that missed
    # its restart, did not hear of it until it asked again. Now a broadcast I-Am goes out at start, as BACnet devices
    # do, heard here by a station in another network namespace on the gateway's /24.
    import sys

    ns = linked_netns
    ns.add_address(ns.ip(1))
    port = free_udp_port()
    station = await asyncio.create_subprocess_exec(*ns.exec_prefix, sys.executable, "-c", _LISTEN, str(port),
                                                   stdout=asyncio.subprocess.PIPE)
    device = GatewayDevice(address=f"{ns.host_ip}/24:{port}", device_id=DEVICE_ID, device_name="TestGateway")
    heard: list[tuple[str, bytes]] = []
    try:
        assert await asyncio.wait_for(station.stdout.readline(), 10) == b"ready\n"
        await device.start()
        async with asyncio.timeout(10):
            while not any(i_am_of(DEVICE_ID) in data for _, data in heard):
                source, data = (await station.stdout.readline()).decode().split()
                heard.append((source, bytes.fromhex(data)))
    finally:
        await device.stop()
        station.kill()
        await station.wait()
    source, data = next((s, d) for s, d in heard if i_am_of(DEVICE_ID) in d)
    assert source == f"{ns.host_ip}:{port}"
    # Original-Broadcast-NPDU, to every network (global broadcast), max APDU 1476, segmented-both, vendor 842
    assert data[:2] == b"\x81\x0b" and data[4:10] == b"\x01\x20\xff\xff\x00\xff", data.hex()
    assert data.endswith(i_am_of(DEVICE_ID) + b"\x22\x05\xc4\x91\x00\x22\x03\x4a"), data.hex()


@pytest.mark.timeout(20)
async def test_registers_as_a_foreign_device_so_a_bas_behind_a_bbmd_finds_it(free_udp_port):
    # On loopback: a BBMD, and a BAS registered with it as a foreign device (as on another IP subnet).
    # The BAS's broadcast Who-Is goes out through the BBMD, which forwards it to its foreign devices only.
    from bacpypes3.app import Application
    from bacpypes3.basetypes import BDTEntry, HostNPort
    from bacpypes3.local.device import DeviceObject
    from bacpypes3.local.networkport import NetworkPortObject

    from bacnet_api.client import close_stack, wait_bound

    def stack(device_id: int, port: int, **network_port) -> Application:
        device = DeviceObject(objectIdentifier=("device", device_id), objectName=f"d{device_id}", vendorIdentifier=999,
                              maxApduLengthAccepted=1024, segmentationSupported="segmentedBoth")
        return Application.from_object_list([device, NetworkPortObject(
            f"127.0.0.1/8:{port}", objectIdentifier=("network-port", 1), objectName="np", **network_port)])

    b = free_udp_port()
    bbmd = stack(4000201, b, bacnetIPMode="bbmd", bbmdAcceptFDRegistrations=True, bbmdForeignDeviceTable=[],
                 bbmdBroadcastDistributionTable=[BDTEntry(f"127.0.0.1:{b}")])
    stacks = [bbmd]
    device = GatewayDevice(address=f"127.0.0.1/8:{free_udp_port()}", device_id=DEVICE_ID, device_name="TestGateway",
                           bbmd_address=f"127.0.0.1:{b}", bbmd_ttl=60)
    try:
        await wait_bound(bbmd)
        bas = stack(4000202, free_udp_port(), bacnetIPMode="foreign", fdBBMDAddress=HostNPort(f"127.0.0.1:{b}"),
                    fdSubscriptionLifetime=60)
        stacks.append(bas)
        await wait_bound(bas)
        heard = []
        taken = bas.do_IAmRequest

        async def i_am(apdu) -> None:
            heard.append(apdu.iAmDeviceIdentifier[1])
            await taken(apdu)
        bas.do_IAmRequest = i_am

        link = next(iter(bbmd.link_layers.values()))
        def registered() -> set[str]:
            return {str(e.fdAddress) for e in (link.bbmdFDT if hasattr(link, "bbmdFDT") else link.bbmd.bbmdFDT)}
        await eventually(lambda: len(registered()) == 1, 5, "the BAS registered")
        await device.start()
        await eventually(lambda: where(device) in registered(), 5, "the gateway registered")
        # announced through the BBMD once registered, before anyone asked
        await eventually(lambda: DEVICE_ID in heard, 5, "the gateway's I-Am at the BAS")

        i_ams = await asyncio.wait_for(bas.who_is(timeout=1.0), 5)  # a broadcast, through the BBMD
        [i_am] = [i for i in i_ams if i.iAmDeviceIdentifier[1] == DEVICE_ID]
        name = await asyncio.wait_for(bas.read_property(
            i_am.pduSource, ObjectIdentifier(f"device,{DEVICE_ID}"), "objectName"), 5)
        assert str(name) == "TestGateway"
        port = device.app.get_object_id(ObjectIdentifier("network-port,1"))
        assert str(port.bacnetIPMode) == "foreign" and str(port.fdBBMDAddress.address) == f"127.0.0.1:{b}"
    finally:
        await device.stop()
        for app in reversed(stacks):
            await close_stack(app)


@pytest.mark.timeout(30)
async def test_a_bbmd_that_never_takes_the_registration_is_asked_less_and_less_often(free_udp_port, monkeypatch):
    # bacpypes3 asked every 5 s for good: 17,280 requests a day at a BBMD whose table is full. Now the wait doubles,
    # up to a bound (the real one 5 s to 60 s; shortened here). A BBMD played by a socket that refuses every time.

    from bacnet_api import foreign

    monkeypatch.setattr(foreign, "RETRY_FIRST_S", 0.25)
    monkeypatch.setattr(foreign, "RETRY_MAX_S", 1.0)
    bbmd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    bbmd.bind(("127.0.0.1", free_udp_port()))
    bbmd.setblocking(False)
    loop = asyncio.get_running_loop()
    asked: list[float] = []

    async def refuse() -> None:
        while True:
            data, sender = await loop.sock_recvfrom(bbmd, 1500)
            if data[:2] == b"\x81\x05":
                asked.append(time.monotonic())
                bbmd.sendto(b"\x81\x00\x00\x06\x00\x30", sender)

    serving = asyncio.create_task(refuse())
    device = GatewayDevice(address=f"127.0.0.1/8:{free_udp_port()}", device_id=DEVICE_ID, device_name="TestGateway",
                           bbmd_address=f"127.0.0.1:{bbmd.getsockname()[1]}", bbmd_ttl=60)
    try:
        await device.start()
        await eventually(lambda: len(asked) >= 6, 15, "six requests")
    finally:
        serving.cancel()
        await device.stop()
        bbmd.close()
    # the first retry is bacpypes3's own, scheduled as the device starts (5 s, as RETRY_FIRST_S really is)
    gaps = [b - a for a, b in zip(asked, asked[1:])][1:5]
    for gap, expected in zip(gaps, (0.25, 0.5, 1.0, 1.0)):
        assert expected - 0.05 < gap < expected + 0.5, gaps


async def test_a_request_that_comes_while_the_device_stops_gets_no_answer_and_no_traceback(
        free_udp_port, monkeypatch, caplog):
    # A stop lets the answers under way go first (an ADR-Opt-Out ack waiting for the disk): a BAS write that came
    # meanwhile (its input-power-meter every few seconds) found the device's points gone, and the log had
    # "ERROR exception: KeyError('input-power-meter')" and a traceback at every such stop. Then it was refused
    # operational-problem, which a BAS shows as a failed command and does not send again: it now gets no answer, as a
    # request that comes while the device starts, and the BAS's retry reaches the next start.
    import bacnet_api.device as device_module
    monkeypatch.setattr(device_module, "ANSWER_WAIT_S", 10.0)      # the window held open until the test is done
    device = GatewayDevice(address=f"127.0.0.1/8:{free_udp_port()}", device_id=DEVICE_ID, device_name="Stopping",
                           input_min=INPUT_MIN, input_max=INPUT_MAX)
    await device.start()
    release, seen = asyncio.Event(), []
    device.on_write(OPT_OUT, lambda value: release.wait())         # its ack waits, as for the disk
    device.on_write(INPUT_POWER, seen.append)
    stop = None
    try:
        async with BacnetPeer(free_udp_port(), timeout=10.0) as bas, BacnetPeer(free_udp_port(), timeout=1.0) as bas2:
            first = asyncio.create_task(bas.write(where(device), "binaryValue 4", "presentValue", "active", priority=8))
            await eventually(lambda: device.get(OPT_OUT) is True, 5, "the opt-out write taken")
            stop = asyncio.create_task(device.stop())
            await eventually(lambda: not device.running, 5, "the stop begun")
            # within the write under way's first APDU timeout (3 s), after which its sender would send it again
            second, read = await asyncio.gather(
                bas2.write(where(device), "analogValue 1", "presentValue", 42.0, priority=8),
                bas2.read(where(device), f"device {DEVICE_ID}", "objectName"))
            release.set()
            assert await first is None, "the write under way is still acknowledged"
            await asyncio.wait_for(stop, 10)
    finally:
        release.set()
        if stop is None:
            await device.stop()
    assert isinstance(second, PeerError) and second.code == "timeout" and seen == [], second
    assert isinstance(read, PeerError) and read.code == "timeout", read
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info], \
        [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


@pytest.mark.timeout(40)
async def test_a_bbmd_that_refuses_the_registration_is_said_and_its_acceptance_later_is_taken(free_udp_port, caplog):
    # The BBMD refused (a full foreign-device table, a disabled one) and nothing said so: the BAS on the other subnet
    # never found the gateway. Then bacpypes3 ignored every answer after the refusal and asked again every 5 s for
    # good, the BBMD's acceptance included. A BBMD played by a socket: it refuses once, then accepts.
    import struct

    from bacnet_api import foreign

    caplog.set_level(logging.INFO, logger="bacnet_api")
    bbmd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    bbmd.bind(("127.0.0.1", free_udp_port()))
    bbmd.setblocking(False)
    loop = asyncio.get_running_loop()
    asked: list[float] = []

    broadcasts: list[tuple[int, bytes]] = []    # (registration requests by then, Distribute-Broadcast-To-Network)

    async def serve() -> None:
        while True:
            data, sender = await loop.sock_recvfrom(bbmd, 1500)
            if data[:2] == b"\x81\x05":       # Register-Foreign-Device
                asked.append(time.monotonic())
                code = 0x0030 if len(asked) == 1 else 0
                bbmd.sendto(b"\x81\x00\x00\x06" + struct.pack(">H", code), sender)
            elif data[:2] == b"\x81\x09":
                broadcasts.append((len(asked), data))

    serving = asyncio.create_task(serve())
    device = GatewayDevice(address=f"127.0.0.1/8:{free_udp_port()}", device_id=DEVICE_ID, device_name="TestGateway",
                           bbmd_address=f"127.0.0.1:{bbmd.getsockname()[1]}", bbmd_ttl=60)
    try:
        await device.start()
        bbmd_name = f"127.0.0.1:{bbmd.getsockname()[1]}"
        # refused at once, then asked again 5 s later: accepted
        await eventually(lambda: device.foreign_fault(), 5, "the refusal")
        assert device.foreign_device()["fault"] is True     # the dashboard's "BBMD registration failing"
        assert device.foreign_fault() == f"foreign-device registration with BBMD {bbmd_name} refused " \
            "(Register-Foreign-Device NAK 0x0030)", "what a stop meanwhile names"
        await eventually(lambda: device.foreign_device()["registered"], 10, "the registration taken")
        assert device.foreign_fault() is None
        said = [r.getMessage() for r in caplog.records if "foreign" in r.getMessage()]
        assert said == [f"BACnet: foreign-device registration with BBMD {bbmd_name} refused (Register-Foreign-Device "
                        "NAK 0x0030): a BAS on another subnet cannot find the gateway; asked again after 5 s, then "
                        "less often, up to every 60 s",
                        f"BACnet: registered again as a foreign device with BBMD {bbmd_name} (renewed every 60 s)"], said
        assert device.foreign_device() == {"bbmd": bbmd_name, "ttl_seconds": 60, "registered": True, "why_not": None,
                                           "fault": False}
        # the I-Am goes out through the BBMD once it took the registration: one sent while refused was dropped
        await eventually(lambda: any(i_am_of(DEVICE_ID) in data for _, data in broadcasts), 5, "the I-Am")
        assert [n for n, data in broadcasts if i_am_of(DEVICE_ID) in data] == [2], broadcasts
        # taken: the next request is the renewal, a lifetime away, not another every 5 s
        accepted = len(asked)
        await asyncio.sleep(5.5 + foreign.WATCH_S)
        assert len(asked) == accepted, asked
    finally:
        serving.cancel()
        await device.stop()
        bbmd.close()


REFUSED = "refused (Register-Foreign-Device NAK 0x0030)"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("first, then", [(None, 0x0030), (0x0030, None)],
                         ids=["silent-then-refusing", "refusing-then-silent"])
async def test_a_bbmd_that_changes_how_it_fails_is_one_fault_whose_new_cause_is_said(
        first, then, free_udp_port, caplog, monkeypatch):
    # Silent, then refusing (back, its table full): the log said nothing, only /api/status's why_not changed. Refusing,
    # then silent (powered off): bacpypes3 keeps a refusal's code until an acceptance, so it still read "refused" in
    # the log, /api/status and the dashboard, sending the installer to its table. One fault, its new cause said
    import struct

    from bacnet_api import foreign

    # 1 s to answer, so silence is found fast; 3 s where the refusal comes first: the BBMD here is played on the
    # device's own loop, and beside the suite at -n 8 its NAK came after 1 s, read as silence
    answer_s = 1.0 if first is None else 3.0
    monkeypatch.setattr(foreign, "ANSWER_S", answer_s)
    monkeypatch.setattr(foreign, "RETRY_FIRST_S", 0.5)
    caplog.set_level(logging.INFO, logger="bacnet_api")
    bbmd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    bbmd.bind(("127.0.0.1", free_udp_port()))
    bbmd.setblocking(False)
    loop = asyncio.get_running_loop()
    answer = {"code": first}     # None: silent

    async def serve() -> None:
        while True:
            data, sender = await loop.sock_recvfrom(bbmd, 1500)
            if data[:2] == b"\x81\x05" and answer["code"] is not None:
                bbmd.sendto(b"\x81\x00\x00\x06" + struct.pack(">H", answer["code"]), sender)

    serving = asyncio.create_task(serve())
    name = f"127.0.0.1:{bbmd.getsockname()[1]}"
    device = GatewayDevice(address=f"127.0.0.1/8:{free_udp_port()}", device_id=DEVICE_ID, device_name="TestGateway",
                           bbmd_address=name, bbmd_ttl=60)
    silent = f"unanswered for {answer_s:g} s"
    was, now = (silent, REFUSED) if first is None else (REFUSED, silent)

    def said():
        return [(r.levelno, r.getMessage()) for r in caplog.records if "foreign" in r.getMessage()]
    try:
        await device.start()
        await eventually(lambda: device.foreign_fault(), 5, "the first cause")
        assert device.foreign_fault() == f"foreign-device registration with BBMD {name} {was}"
        answer["code"] = then
        await eventually(lambda: len(said()) == 2, 20, "the new cause said")
        assert said()[1] == (logging.WARNING, f"BACnet: foreign-device registration with BBMD {name} still failing, "
                                              f"cause changed: {now}"), said()
        assert device.foreign_fault() == f"foreign-device registration with BBMD {name} {now}"
        answer["code"] = 0
        await eventually(lambda: device.foreign_device()["registered"], 10, "the registration taken")
        assert [level for level, _ in said()] == [logging.WARNING, logging.WARNING, logging.INFO], said()
        assert said()[0][1].startswith(f"BACnet: foreign-device registration with BBMD {name} {was}")
    finally:
        serving.cancel()
        await device.stop()
        bbmd.close()


@pytest.mark.timeout(45)
@pytest.mark.parametrize("answer", ["twice", "late"])
async def test_an_acceptance_that_comes_twice_or_late_leaves_one_renewal(free_udp_port, answer):
    # A BBMD's acceptance was taken again when a second one came: twice on the wire, or late (the BBMD slower than the
    # first retry, which it then accepts as well). bacpypes3 let go of the renewal set for the first one without
    # cancelling it and set another: from then on two request chains ran side by side, each further duplicate adding
    # more (a duplicate: 49 requests in 8 s where 4 were due). A BBMD played by a socket; renewals every second.
    bbmd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    bbmd.bind(("127.0.0.1", free_udp_port()))
    bbmd.setblocking(False)
    loop = asyncio.get_running_loop()
    accept = b"\x81\x00\x00\x06\x00\x00"
    asked: list[float] = []
    first = None

    async def serve() -> None:
        nonlocal first
        while True:
            data, sender = await loop.sock_recvfrom(bbmd, 1500)
            if data[:2] != b"\x81\x05":     # Register-Foreign-Device
                continue
            asked.append(time.monotonic())
            if answer == "twice" and len(asked) == 1:
                bbmd.sendto(accept, sender)
                bbmd.sendto(accept, sender)
            elif answer == "late" and len(asked) == 1:
                first = sender              # answered once the retry came (1 s later: the lifetime is below 5 s)
            else:
                if first is not None:
                    bbmd.sendto(accept, first)
                    first = None
                bbmd.sendto(accept, sender)

    serving = asyncio.create_task(serve())
    device = GatewayDevice(address=f"127.0.0.1/8:{free_udp_port()}", device_id=DEVICE_ID, device_name="TestGateway",
                           bbmd_address=f"127.0.0.1:{bbmd.getsockname()[1]}", bbmd_ttl=1)
    try:
        await device.start()
        layer = next(iter(device.app.link_layers.values()))
        # at least: a start slowed by load can return after the first renewal has been asked too (a second chain
        # shows in the gaps below however late this is seen)
        await eventually(lambda: layer.bbmdRegistrationStatus == 0 and len(asked) >= (1 if answer == "twice" else 2),
                         15, "the registration taken")
        since = len(asked)
        # counted over the renewals seen, not in a fixed sleep: a loaded machine renews every 1.3 s
        await eventually(lambda: len(asked) >= since + 3, 10, "three renewals")
    finally:
        serving.cancel()
        await device.stop()
        bbmd.close()
    renewals = asked[since:]
    gaps = [round(b - a, 2) for a, b in zip(asked[since - 1:], renewals)]
    # each renewal a second or more after the one before: a second request chain shows as gaps far under it
    assert len(renewals) >= 3 and min(gaps) > 0.8, gaps


async def test_a_stopped_device_leaves_no_task_of_its_own_behind(free_udp_port):
    # BAC0 announces the device from a task it keeps no handle to; each stop left it pending, which a closed loop
    # reports as "Task was destroyed but it is pending!" (pytest-asyncio before 1.1 failed later tests on it)
    port = free_udp_port()
    for _ in range(2):      # and a device started again on the same port
        device = GatewayDevice(address=f"127.0.0.1/8:{port}", device_id=DEVICE_ID, device_name="TestGateway")
        await device.start()
        await asyncio.sleep(0.2)
        await device.stop()
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert left == [], left
