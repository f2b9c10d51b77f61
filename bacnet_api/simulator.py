"""A simulated building meter behind a BACnet router, all in one process (tests, demos, bench).

    BACnet/IP (address, e.g. 127.0.0.1:47810)
        router: device `router_device_id`, IP port (network `ip_network`) + virtual network `network` at MAC 1
            virtual network `network` (12345)
                meter: device `device_id` at MAC `mac` (2), analogInput `object_instance` in `units`
                       (kilowatts unless told otherwise)

The gateway reads `12345:2 analogInput 2 presentValue` through the router. `set_silent(True)` makes
the meter stop answering while the router stays up, the way a meter with a dead RS-485 link behind a
working router looks on the wire. `units` (and `set_units`) publish the value in another unit, e.g.
watts or kilowattHours, as real meters do; `value` is in that unit. `set_status` raises the meter's own
fault or out-of-service flags while its presentValue still answers. `set_dropping(n)` loses every n-th
read of presentValue, as a busy MS/TP trunk does, and `set_answer_delay(s)` answers each request late.
`restart()` stops and starts the router and meter (a power cycle) on the same address.
`read_multiple=False` makes a meter without ReadPropertyMultiple (it rejects it as an unrecognized service, and its
protocolServicesSupported lacks it), as many small MS/TP meters are; "unanswered" one that ignores it instead, which
a few do against the standard; "whole" one of the older kind that answers the whole request with an error when one
property asked is missing (property/unknown-property), where newer meters answer that one property's error; "abort"
one that aborts it segmentation-not-supported, as a meter whose answer would not fit its small APDU does (its abort
sent as a server's: bacpypes3's own server sends it as a client's, which no client hears); `requests` counts the
confirmed requests that reached the meter, by service. `set_units_between_requests` changes the unit right after the
meter next answers a read of it, as a technician's change landing between a client's request for the units and its
request for the value.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import time
from typing import Callable, Iterable

from bacpypes3.apdu import AbortPDU, ConfirmedRequestPDU, ReadPropertyMultipleRequest, ReadPropertyRequest
from bacpypes3.app import Application
from bacpypes3.basetypes import PropertyIdentifier
from bacpypes3.errors import PropertyError, UnrecognizedService
from bacpypes3.local.analog import AnalogInputObject
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.vlan import VirtualNetwork

from . import static_lookup
from .client import BIP_MAX_APDU, close_stack, ensure_port_free, wait_bound
from .meter_units import KW_PER_UNIT
from .property_access import THIS_DEVICE

log = logging.getLogger(__name__)

_instances = itertools.count(1)


def _reads(apdu, prop: PropertyIdentifier) -> bool:
    """`apdu` is a ReadProperty or ReadPropertyMultiple that asks for `prop`."""
    if isinstance(apdu, ReadPropertyRequest):
        return apdu.propertyIdentifier == prop
    return isinstance(apdu, ReadPropertyMultipleRequest) and any(
        ref.propertyIdentifier == prop for spec in apdu.listOfReadAccessSpecs for ref in spec.listOfPropertyReferences)


class _MeterApplication(Application):
    """A bacpypes3 device that can be told to ignore every request, or every n-th read of presentValue."""

    _silent = False
    _answer_delay = 0.0
    _drop_one_in = 0
    _value_reads = 0
    _dropped: dict | None = None
    _read_multiple: bool | str = True
    _requests: collections.Counter | None = None
    _after_units: Callable[[], None] | None = None
    _missing: Callable[[], frozenset] = frozenset

    async def indication(self, apdu) -> None:
        if isinstance(apdu, ConfirmedRequestPDU) and self._requests is not None:
            self._requests[type(apdu).__name__.removesuffix("Request")] += 1
        if self._silent or self._read_multiple == "unanswered" and isinstance(apdu, ReadPropertyMultipleRequest):
            return
        if self._drop_one_in and _reads(apdu, PropertyIdentifier.presentValue) and self._drop(apdu):
            return  # lost on the trunk: the client hears nothing and times out
        if self._answer_delay:
            await asyncio.sleep(self._answer_delay)
        await super().indication(apdu)
        if self._after_units is not None and _reads(apdu, PropertyIdentifier.units):
            change, self._after_units = self._after_units, None
            change()

    async def do_ReadPropertyRequest(self, apdu) -> None:
        # device 4194303 is the device asked (clause 15.5.2), as real meters answer it: bacpypes3's check never matches
        if apdu.objectIdentifier == THIS_DEVICE and self.device_object is not None:
            apdu.objectIdentifier = self.device_object.objectIdentifier
        await super().do_ReadPropertyRequest(apdu)

    async def do_ReadPropertyMultipleRequest(self, apdu) -> None:
        if not self._read_multiple:
            raise UnrecognizedService()  # answered Reject unrecognized-service, as such a meter does
        if self._read_multiple == "abort":
            await self.response(AbortPDU(True, reason="segmentationNotSupported", context=apdu))
            return
        if self._read_multiple == "whole" and any(
                PropertyIdentifier(ref.propertyIdentifier).attr in self._missing()
                for spec in apdu.listOfReadAccessSpecs for ref in spec.listOfPropertyReferences):
            raise PropertyError("unknownProperty")  # one Error PDU for the whole request
        await super().do_ReadPropertyMultipleRequest(apdu)

    def get_services_supported(self):
        supported = super().get_services_supported()
        if self._read_multiple in (False, "unanswered"):
            supported[supported.readPropertyMultiple] = 0
        return supported

    def _drop(self, apdu) -> bool:
        # the client's stack retries a lost request (same invoke id) after its APDU timeout: lost again, and
        # not counted as a read, so "every n-th read" stays true whatever the client's retry timing
        now = time.monotonic()
        dropped = self._dropped = {k: t for k, t in (self._dropped or {}).items() if now - t < 30.0}
        key = (str(apdu.pduSource), apdu.apduInvokeID)
        if key in dropped:
            return True
        self._value_reads += 1
        if self._value_reads % self._drop_one_in:
            return False
        dropped[key] = now
        return True


class _MeterPoint(AnalogInputObject):
    """The meter's object, without the properties in `_missing` (a read of one answers unknown-property)."""

    _missing: frozenset[str] = frozenset()

    async def read_property(self, attr, index=None):
        name = PropertyIdentifier(attr).attr if isinstance(attr, int) else attr
        if name in self._missing:
            raise AttributeError(f"not a property: {name!r}")  # bacpypes3 answers unknown-property
        return await super().read_property(attr, index)


# the router is on BACnet/IP; the meter stands for one on MS/TP, whose frames carry APDUs of 480 octets at most
MSTP_MAX_APDU = 480


def _device(instance: int, name: str, max_apdu: int) -> DeviceObject:
    return DeviceObject(
        objectIdentifier=("device", instance),
        objectName=name,
        vendorIdentifier=999,
        maxApduLengthAccepted=max_apdu,
        segmentationSupported="segmentedBoth",
    )


def _virtual_port(instance: int, vlan: str, network: int, mac: int) -> NetworkPortObject:
    return NetworkPortObject(
        objectIdentifier=("network-port", instance),
        objectName=f"NetworkPort-{instance}",
        networkType="virtual",
        protocolLevel="bacnet-application",
        networkInterfaceName=vlan,
        networkNumber=network,
        networkNumberQuality="configured",
        macAddress=bytes([mac]),
        statusFlags=[0, 0, 0, 0],
        reliability="no-fault-detected",
        outOfService=False,
        changesPending=False,
    )


class MeterSimulator:
    def __init__(
        self,
        address: str = "127.0.0.1/8:47810",
        network: int = 12345,
        mac: int = 2,
        device_id: int = 1234502,
        object_instance: int = 2,
        value: float = 0.0,
        router_device_id: int | None = None,
        ip_network: int = 1,
        units: str = "kilowatts",
        read_multiple: bool | str = True,
    ) -> None:
        if read_multiple not in (True, False, "unanswered", "whole", "abort"):
            raise ValueError(f"read_multiple must be True, False, 'unanswered', 'whole' or 'abort', "
                             f"got {read_multiple!r}")
        if not 1 <= network <= 65534:
            raise ValueError(f"network must be 1..65534, got {network}")
        if not 2 <= mac <= 254:
            raise ValueError(f"mac must be 2..254 (the router is 1), got {mac}")
        if not 0 <= device_id <= 4194302:
            raise ValueError(f"device_id must be 0..4194302, got {device_id}")
        self.address = address
        self.network = network
        self.mac = mac
        self.device_id = device_id
        self.object_instance = object_instance
        if not 1 <= ip_network <= 65534 or ip_network == network:
            raise ValueError(f"ip_network must be 1..65534 and differ from network, got {ip_network}")
        self.ip_network = ip_network
        self.router_device_id = router_device_id if router_device_id is not None else device_id - 1
        self._value = float(value)
        self._units = check_units(units)
        self._reliability = "noFaultDetected"
        self._out_of_service = False
        self._vlan_name = f"meter-sim-{network}-{next(_instances)}"
        self._router: Application | None = None
        self._meter: _MeterApplication | None = None
        self._point: AnalogInputObject | None = None
        self.read_multiple = read_multiple
        self._missing: frozenset[str] = frozenset()
        self.requests: collections.Counter[str] = collections.Counter()  # "ReadProperty": 3, across restarts

    @property
    def router_address(self) -> str:
        """The router's BACnet/IP address as a client gives it ("127.0.0.1:47810")."""
        ip, _, port = self.address.partition(":")
        return f"{ip.partition('/')[0]}:{port}"

    @property
    def meter_address(self) -> str:
        return f"{self.network}:{self.mac}"

    async def start(self) -> None:
        if self._router is not None:
            raise RuntimeError("simulator already started")
        ensure_port_free(self.address)
        static_lookup.install()
        VirtualNetwork(self._vlan_name)
        try:
            self._router = Application.from_object_list([
                _device(self.router_device_id, f"meter-router-{self.network}", BIP_MAX_APDU),
                # a router must know a number for each of its networks to route replies
                NetworkPortObject(self.address, objectIdentifier=("network-port", 1),
                                  objectName="NetworkPort-1", networkNumber=self.ip_network,
                                  networkNumberQuality="configured"),
                _virtual_port(2, self._vlan_name, self.network, 1),
            ])
            await wait_bound(self._router)
            self._meter = _MeterApplication.from_object_list([
                _device(self.device_id, "simulated-meter", MSTP_MAX_APDU),
                _virtual_port(1, self._vlan_name, self.network, self.mac),
            ])
            self._meter._read_multiple, self._meter._requests = self.read_multiple, self.requests
            self._meter._missing = lambda: self._missing
            self._point = _MeterPoint(
                objectIdentifier=("analogInput", self.object_instance),
                objectName="building-power",
                description="Simulated building demand",
                presentValue=self._value,
                units=self._units,
                statusFlags=[0, 0, 0, 0],
                eventState="normal",
                outOfService=False,
                covIncrement=0.0,
            )
            self._apply_status()
            self._point._missing = self._missing
            self._meter.add_object(self._point)
        except BaseException:
            await self.stop()
            raise
        log.info("meter simulator: router %s to network %d, meter %s analogInput %d = %.2f %s",
                 self.router_address, self.network, self.meter_address, self.object_instance, self._value,
                 self._units)

    async def stop(self) -> None:
        for app in (self._meter, self._router):
            if app is not None:
                await close_stack(app)
        self._meter = self._router = self._point = None
        VirtualNetwork._networks.pop(self._vlan_name, None)

    async def restart(self, down_seconds: float = 0.0) -> None:
        """Power-cycle the router and meter: both stacks close, stay down `down_seconds`, come back."""
        await self.stop()
        await asyncio.sleep(down_seconds)
        await self.start()

    def set_value(self, value: float) -> None:
        """The presentValue, in the meter's units."""
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"meter value must be finite, got {value!r}")
        self._value = value
        if self._point is not None:
            self._point.presentValue = value

    def set_units(self, units: str) -> None:
        """Publish in another EngineeringUnits (camelCase, e.g. "watts"); the value is not rescaled."""
        self._units = check_units(units)
        if self._point is not None:
            self._point.units = self._units

    def set_missing(self, *props: str) -> None:
        """The meter's object lacks `props` (e.g. "units", "statusFlags"): a read of one answers unknown-property,
        alone or for that one inside a ReadPropertyMultiple, as a meter's object without them does."""
        self._missing = frozenset(props)
        if self._point is not None:
            self._point._missing = self._missing

    def set_units_between_requests(self, units: str, value: float) -> None:
        """Right after the meter next answers a read of its units (the answer sent as it was), publish `value` in
        `units`: a change landing between a client's request for the units and its request for the value."""
        if self._meter is None:
            raise RuntimeError("simulator not started")
        check_units(units)

        def change() -> None:
            self.set_units(units)
            self.set_value(value)
        self._meter._after_units = change

    @property
    def units(self) -> str:
        return self._units

    def set_status(self, *, reliability: str = "noFaultDetected", out_of_service: bool = False) -> None:
        """The meter's own view of its value: a reliability other than noFaultDetected sets the fault
        flag, out_of_service the out-of-service flag; presentValue keeps answering either way."""
        self._reliability = reliability
        self._out_of_service = bool(out_of_service)
        if self._point is not None:
            self._apply_status()

    def _apply_status(self) -> None:
        point = self._point
        assert point is not None
        fault = self._reliability != "noFaultDetected"
        point.reliability = self._reliability
        point.outOfService = self._out_of_service
        point.statusFlags = [0, int(fault), 0, int(self._out_of_service)]

    @property
    def value(self) -> float:
        return self._value

    def set_silent(self, silent: bool) -> None:
        if self._meter is None:
            raise RuntimeError("simulator not started")
        self._meter._silent = bool(silent)

    def set_dropping(self, one_in: int) -> None:
        """Lose every `one_in`-th read of presentValue (0: none), as a busy MS/TP trunk loses one read in
        20-50; the meter answers everything else."""
        if self._meter is None:
            raise RuntimeError("simulator not started")
        if one_in < 0 or one_in == 1:
            raise ValueError(f"one_in must be 0 (none) or 2 or more, got {one_in}")
        self._meter._drop_one_in, self._meter._value_reads, self._meter._dropped = int(one_in), 0, None

    def set_answer_delay(self, seconds: float) -> None:
        """Answer each request `seconds` late, as a meter behind a busy router or a slow MS/TP trunk does."""
        if self._meter is None:
            raise RuntimeError("simulator not started")
        self._meter._answer_delay = float(seconds)

    @property
    def silent(self) -> bool:
        return bool(self._meter and self._meter._silent)

    async def __aenter__(self) -> "MeterSimulator":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def run_simulator(
    address: str = "127.0.0.1/8:47810",
    values: Iterable[float] | None = None,
    interval: float = 10.0,
    *,
    network: int = 12345,
    mac: int = 2,
    device_id: int = 1234502,
    object_instance: int = 2,
    repeat: bool = True,
    units: str = "kilowatts",
    read_multiple: bool | str = True,
) -> None:
    """Serve a simulated meter until cancelled; step through `values` (kW) every `interval` seconds
    (cycling when `repeat`), logging each new value. Non-finite values are skipped. `units` publishes
    the kW values in that unit (x 1000 for watts); a unit that is not power publishes them unscaled."""
    scale = 1.0 / KW_PER_UNIT.get(check_units(units), 1.0)
    # gaps in a replayed CSV (NaN) hold the previous value rather than stopping the meter
    steps = [float(v) * scale for v in values if math.isfinite(float(v))] if values is not None else []
    sim = MeterSimulator(address, network=network, mac=mac, device_id=device_id,
                         object_instance=object_instance, value=steps[0] if steps else 0.0, units=units,
                         read_multiple=read_multiple)
    async with sim:
        if len(steps) <= 1:
            await asyncio.Event().wait()  # a fixed value: serve until cancelled
        source = itertools.cycle(steps) if repeat else iter(steps)
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        for value in source:
            if value != sim.value:
                sim.set_value(value)
                log.info("meter simulator: %s analogInput %d = %.2f %s",
                         sim.meter_address, object_instance, value, units)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
        await asyncio.Event().wait()


def check_units(units: str) -> str:
    """`units` as a BACnet EngineeringUnits name (camelCase), or ValueError naming it."""
    from bacpypes3.basetypes import EngineeringUnits

    from .client import camel

    try:
        return camel(str(EngineeringUnits(units)))
    except (ValueError, TypeError, KeyError):
        raise ValueError(f"not a BACnet EngineeringUnits name: {units!r} (e.g. watts, kilowatts, megawatts)") from None
