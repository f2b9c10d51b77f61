"""Reads the building meter over BACnet and owns the latest reading (coordinator pattern).

A failed read is a reading with `value=None` and a reason, never a made-up number. `fault` follows the
last read. The operator log gets one WARNING when the meter goes quiet (with the reason) and one INFO line
once it has answered steadily again: SETTLE_READS reads in a row, and `settle_seconds` since the last
failed read. A read lost on a busy trunk meanwhile folds into the same fault, so a meter that loses one read
in 30 is one fault, with its count of failed reads, not a pair of lines every few minutes. A fault that comes
back soon after the last one's end doubles the settle period, as the gateway's other faults do (settle.py).
When the router in front of the meter refuses the request (Reject-Message-To-Network, Router-Busy-To-
Network) the read ends at once and the reason names the router and why.

The meter's `units` is read once per (re)connection (the first read, and the first after a failed one):
watts, kilowatts and megawatts are converted to kW (`meter_units`), a unit that is not power is a failed
read naming it. A configured unit (`units`, the config's meter.units) decides instead, for meters that
state noUnits or nothing; a meter that names another unit then gets one warning naming both. A value the
meter itself flags fault or out of service (`statusFlags`) is a failed read too: it is not a measurement
of the building.

A read is one ReadPropertyMultiple of the value, `units`, `statusFlags` and `reliability`: one request on the trunk,
and a value and unit of one moment (asked apart, a unit changed between the two requests converted one value with the
other's unit). A meter that rejects or aborts the service (many small MS/TP meters) is read property by property
instead, as decided at each (re)connection and logged once. One that leaves it unanswered (it should reject it) is
asked at the next read whether it has the service at all (its device's protocolServicesSupported); without it, it is
read property by property until the gateway restarts, as asking again would cost a failed read each time (a device
that cannot say is read property by property until its next reconnection).
"""
from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from bacpypes3.apdu import AbortPDU, ConfirmedServiceChoice, Error, ErrorPDU, ErrorRejectAbortNack, RejectPDU
from bacpypes3.app import Application
from bacpypes3.basetypes import ErrorType, PropertyIdentifier, ServicesSupported
from bacpypes3.errors import DecodingError, RejectException
from bacpypes3.primitivedata import Boolean, Enumerated, Real

from .client import (
    RouterRefusal,
    add_static_route,
    ask_router,
    close_stack,
    error_code,
    error_text,
    forget_route,
    network_of,
    object_id,
    on_router_refusal,
    start_stack,
    to_plain,
)
from .meter_units import MeterUnits, NotPower, check_configured, meter_units
from .objects import real_as_written
from .bug_guard import BugGuard, trace_if_a_bug
from .services import CommunicationDisabled
from .settle import Flapping, span

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
SETTLE_READS = 5          # good reads in a row before a fault's end is logged
# requests in one read at most, each bounded by timeout_seconds: one ReadPropertyMultiple as a rule; after one went
# unanswered, the device's protocolServicesSupported first; the first read of a connection to a meter that rejects it
# then asks units, presentValue, statusFlags, and reliability when the flags say fault, alone
MAX_REQUESTS = 6
# asked with the value in one ReadPropertyMultiple: the unit it is in, and whether the meter trusts it
_WITH_VALUE = ("units", "statusFlags", "reliability")
_MULTIPLE_BIT = ServicesSupported.readPropertyMultiple   # its bit in a device's protocolServicesSupported


@dataclass
class _FaultWindow:
    """One fault, from its first failed read until the meter has answered steadily again."""
    since: float                 # monotonic, the first failed read
    started_at: datetime
    reads: int = 0
    failed: int = 0
    faults: int = 0              # runs of failed reads: more than one is an intermittent meter
    last_failed_at: datetime | None = None
    last_error: str | None = None
    steady_reads: int = 0        # good reads since the last failed one
    steady_since: float = 0.0    # monotonic, the first of them


LOCAL = "this machine's side, not the meter's or a router's"
_UNASKED = object()


def _property_error(err) -> Error:
    """One property's error in a ReadPropertyMultiple answer (`err`: an ErrorType or ErrorPDU) as the Error PDU a
    ReadProperty of it raises, so the checks after it word it alike."""
    return Error(service_choice=ConfirmedServiceChoice.readPropertyMultiple, errorClass=err.errorClass,
                 errorCode=err.errorCode)


def _fault_kind(error: str | None) -> str:
    """A failed read's cause without its numbers (times, values, addresses), so the same cause with
    another timestamp or value is not a new one. While this machine's own side is at fault, that is the cause,
    whatever the read met on the way (no answer, then no router: one cause, not a second WARNING, verify41)."""
    error = error or ""
    if error.endswith(f"{LOCAL})"):
        error = error[error.rfind(" ("):]
    return re.sub(r"\d+", "#", error)


@dataclass(frozen=True)
class MeterReading:
    timestamp: datetime  # UTC, aware
    value: float | None  # kW; None when the read failed
    error: str | None  # why it failed, for the operator
    # a failed read the meter answered (a value out of bounds, not power, flagged fault, an error): the
    # meter-power point's reliability then says the value is unusable, not that nothing came back
    answered: bool = False
    # the poll ticks it stood for: the one it was asked at, then each the poll skipped while it ran (a silent meter,
    # with timeout_seconds at or above poll_seconds), which a count of failed reads alone would miss. A failed read
    # is missing from the interval of each of these, not of its end: one asked at an interval's last tick that timed
    # out in the next was counted there.
    tick_times: tuple[datetime, ...] = ()
    # the meter's own reliability when it flagged the value fault ("overRange"), for the meter-power point's
    reliability: str | None = None

    @property
    def ok(self) -> bool:
        return self.value is not None

    def __str__(self) -> str:   # the DEBUG line of each read: its kW or why it failed, not the dataclass's fields
        at = self.timestamp.strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"{self.value:.3f} kW at {at}" if self.ok else f"failed at {at}: {self.error}"


def _utc_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _short(raw: Any) -> str:
    text = "empty (Null)" if raw == () else repr(raw)  # bacpypes3 decodes Null as ()
    return text if len(text) <= 80 else text[:77] + "..."


class MeterClient:
    def __init__(
        self,
        device_or_app: Any,
        *,
        address: str,
        object: str,  # noqa: A002 - the config key's name
        property: str = "presentValue",  # noqa: A002
        router: str = "",
        poll_seconds: float = 10.0,
        timeout_seconds: float = 5.0,
        bounds: tuple[float, float] = (-math.inf, math.inf),
        on_reading: Callable[[MeterReading], None] | None = None,
        units: str | None = None,
        settle_seconds: float = 60.0,
    ) -> None:
        if poll_seconds <= 0 or timeout_seconds <= 0 or settle_seconds <= 0:
            raise ValueError("poll_seconds, timeout_seconds and settle_seconds must be positive")
        # meter.units: the unit the value is in, whatever the meter's units property says (None: it decides)
        self.configured_units = check_configured(units) if units else None
        self._source = device_or_app
        self.address = address
        self.object = object_id(object)
        self.property = property
        self.router = router
        self.poll_seconds = float(poll_seconds)
        self.timeout_seconds = float(timeout_seconds)
        self.on_reading = on_reading
        # a value outside these is a meter's "no data" sentinel (3.4e38) or a wrong point, not kW
        self.bounds = bounds
        self.network = network_of(address)
        # the router the meter's network is reached through; none for a BACnet/IP meter, read directly whatever
        # meter.router says (the fault line sent the technician to a router the reads never used)
        self.route: str | None = (router or None) if self.network is not None else None
        self._router_address: str | None = None  # meter.router as resolved for the reads (it may be a host name)
        self.latest: MeterReading | None = None       # the last attempt, answered or not
        self.last_good: MeterReading | None = None    # the last reading that carried a value
        self.fault = False
        self._fault_logged: str | None = None  # the cause of the present fault the log names last
        self._fault_next: tuple[str | None, int] = (None, 0)  # another cause, and for how many reads in a row
        self.settle_seconds = float(settle_seconds)
        self._window: _FaultWindow | None = None  # the fault the log has opened and not yet closed
        self._settle = Flapping(self.settle_seconds)  # the settle period, doubled for a fault that comes back
        # a bug met by a failed read's path only, with a meter that fails now and then, is one fault
        self._read_bug = BugGuard(log, "meter read", "the read counts as failed, the poll goes on",
                                  settle_s=3 * self.poll_seconds)
        self._callback_bug = BugGuard(log, "meter reading callback", "called again with each reading")
        self.bugs = (self._read_bug, self._callback_bug)
        self._bugs_traced: set = set()
        self.units: str | None = None  # what the meter's units property last said ("watts"), for the operator
        self._conversion: MeterUnits | None = None  # None: read units (and statusFlags support) at the next read
        self._conversion_app: Application | None = None
        self._has_status_flags = True
        self._has_units = True
        self._logged_units: MeterUnits | None = None
        # ReadPropertyMultiple on this connection: None until the first read of it says, False read property by property
        self.read_multiple: bool | None = None
        self._logged_multiple: bool | None = None
        self._multiple_unanswered = False  # the connection's first ReadPropertyMultiple got no answer
        self._never_multiple = False       # the meter's device lacks the service: not asked again
        self._answers: dict[int, Any] = {}  # the present read's ReadPropertyMultiple answer, by property
        self._route_ready = self.network is None
        self._task: asyncio.Task | None = None
        self.object_name = object
        self._what = f"{address} {object} {property}"
        self._refused: asyncio.Future[RouterRefusal] | None = None  # set while a routed read is in flight
        self._watched: Application | None = None
        self._unwatch: Callable[[], None] = lambda: None

    @property
    def _app(self) -> Application:
        # a GatewayDevice only has its Application once started, so resolve it on each read
        return self._source if isinstance(self._source, Application) else self._source.app

    # ----- one read

    async def read_once(self) -> MeterReading:
        """Read the meter once (each request bounded by timeout_seconds), record and return the reading."""
        started, began = time.monotonic(), time.time()
        silenced = False
        try:
            if not self._route_ready:
                await self._find_route(self._app)
            value = await self._read_unless_refused()
            reading = self._reading(value=value)
            await self._note_route()
        except _Refused as err:
            await self._note_route()
            reading = self._reading(error=err.refusal.text(self.network))
            if err.refusal.reason == 1 and not self.router:
                # the router we found says it cannot reach the network: ask again next time
                await forget_route(self._app, self.network)
        except TimeoutError:
            await self._note_route()
            reading = self._reading(error=f"no response from {self.address} within {self.timeout_seconds:g} s"
                                    + (f" (through router {self.route})" if self.route else "") + self._here())
            if not self.router and self.network is not None:
                # the router we found may be gone or replaced: forget it, so the next read asks again
                # (bacpypes3 keeps a learned path for good, and routers rarely announce themselves)
                await forget_route(self._app, self.network)
        except ErrorRejectAbortNack as err:  # BaseException-derived: must be named explicitly
            # an error or reject is the meter's answer; an abort is bacpypes3 giving up on one
            reading = self._reading(error=f"{self._what}: {error_text(err)}{self._hint(err)}",
                                    answered=not isinstance(err, AbortPDU))
        except CommunicationDisabled as err:  # a BACnet client told the gateway not to initiate: not sent
            reading = self._reading(error=f"{self._what} not read: {err}")
            silenced = True
        except _ReadFailed as err:
            here = self._here() if isinstance(err, _NoRoute) else ""
            reading = replace(self._reading(error=f"{err}{here}", answered=not isinstance(err, _NoRoute)),
                              reliability=err.reliability)
        except Exception as err:  # anything the stack raises is a failed read, not a crash
            reading = self._reading(error=f"{self._what}: {error_text(err)}")
            trace_if_a_bug(log, "meter read", err, self._bugs_traced)
        if reading.value is None:
            self._conversion = None  # the meter may come back replaced or reconfigured: read its units again
        if reading.value is None and not self.router and self.network is not None and not silenced:
            self._route_ready = False  # the router we found may be gone; ask again next time
        log.debug("meter read %s in %.3f s", reading, time.monotonic() - started)
        # in whole microseconds: a tick of a 0.1 s poll computed in float seconds can fall just before the interval
        # boundary it is on
        poll_us, began_us = max(1, round(self.poll_seconds * 1e6)), round(began * 1e6)
        first = began_us // poll_us
        ticks = round(time.time() * 1e6) // poll_us - first + 1
        # (bounded: a wall clock stepped during the read must not make one read a day's)
        ticks = max(1, min(ticks, math.ceil(self._read_bound / self.poll_seconds) + 1))
        reading = replace(reading, tick_times=(_utc_us(began_us), *(_utc_us((first + k) * poll_us)
                                                                   for k in range(1, ticks))))
        self._record(reading)
        return reading

    @property
    def _read_bound(self) -> float:
        return self.timeout_seconds * MAX_REQUESTS

    async def _read_unless_refused(self) -> float:
        """The read, each of its requests bounded by timeout_seconds; a router's refusal of it ends it at once."""
        app = self._app
        if self.network is None:  # no router in between to refuse it
            async with asyncio.timeout(self._read_bound):
                return await self._read()
        self._watch(app)
        refused = self._refused = asyncio.get_running_loop().create_future()
        read = asyncio.ensure_future(self._read())
        try:
            done, _ = await asyncio.wait((read, refused), timeout=self._read_bound,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._refused = None
            refused.cancel()
            read.cancel()  # bacpypes3 drops the request; its own retries run out as after a timeout
            await asyncio.gather(read, return_exceptions=True)
        if read in done:  # an answer that raced a refusal still counts
            return read.result()
        if refused in done:
            raise _Refused(refused.result())
        raise TimeoutError

    def _watch(self, app: Application) -> None:
        if self._watched is not app:  # a GatewayDevice gets a new Application when restarted
            self._unwatch()
            self._unwatch = on_router_refusal(app, self._on_refusal)
            self._watched = app

    def _on_refusal(self, refusal: RouterRefusal) -> None:
        refused = self._refused
        if refused is not None and not refused.done() and refusal.concerns(self.network,
                                                                           self._router_address or self.route):
            refused.set_result(refusal)

    async def _read(self) -> float:
        app = self._app
        fresh = self._conversion is None or self._conversion_app is not app  # a (re)connection
        if fresh:
            # asked again: a meter replaced, or its firmware, may answer it otherwise
            self.read_multiple = False if self._never_multiple else None
            if self._multiple_unanswered and not self._never_multiple:
                await self._ask_services(app)
        self._answers = await self._read_multiple(app) if self.read_multiple is not False else {}
        try:
            return await self._read_answered(app, fresh)
        finally:
            self._answers = {}

    async def _read_multiple(self, app: Application) -> dict[int, Any]:
        """The value with its units, statusFlags and reliability in one ReadPropertyMultiple, by property (an error
        for one property, as a ReadProperty of it would raise); {} when the meter rejects the service: each is then
        read alone, on this connection."""
        props = list(dict.fromkeys((self.property, *_WITH_VALUE)))
        try:
            async with asyncio.timeout(self.timeout_seconds):
                results = await app.read_property_multiple(self.address, [self.object, props])
        except TimeoutError:
            # a silent meter, a lost request, or a meter that ignores the service: the next read asks which
            self._multiple_unanswered = self.read_multiple is None
            raise
        except RejectPDU as err:
            self._read_singly(error_text(err))
            return {}
        except AbortPDU as err:
            if not err.apduSrv:  # bacpypes3's own, its retries run out: no answer, as above
                raise
            # the meter's: an answer that would not fit its APDU (segmentation-not-supported, apdu-too-long), or a
            # meter that aborts what it cannot do; alone, each property fits
            self._read_singly(error_text(err))
            return {}
        except ErrorPDU as err:
            if str(err.errorClass) == "object":
                # the object itself (unknown object): what a ReadProperty of each would answer
                return {int(PropertyIdentifier(p)): _property_error(err) for p in props}
            # the service refused, or an older meter's error for the whole request when it lacks one property asked
            # (where newer ones answer that property's error): alone, each property says what it has
            self._read_singly(error_text(err))
            return {}
        except (DecodingError, RejectException) as err:
            # an answer bacpypes3 cannot decode whole (a Null value): read alone, today's checks word it
            log.debug("meter %s: ReadPropertyMultiple answer not decoded (%s): read property by property", self.address,
                      err)
            return {}
        self._multiple_unanswered = False
        if self.read_multiple is not True:
            self.read_multiple = True
            if self._logged_multiple is False:
                log.info("meter %s %s answers ReadPropertyMultiple now: read in one request", self.address,
                         self.object_name)
            self._logged_multiple = True
        answers: dict[int, Any] = {}
        for _obj, prop, _index, value in results or ():
            if isinstance(value, ErrorType):
                value = _property_error(value)
            answers[int(prop)] = value
        return answers

    async def _ask_services(self, app: Application) -> None:
        """After a ReadPropertyMultiple got no answer: whether the meter's device has the service (a device that lacks
        it should reject it, but some say nothing, and read so they failed every read). Unanswered, the read fails as
        a silent meter's, and the next one asks again."""
        try:
            async with asyncio.timeout(self.timeout_seconds):
                services = await app.read_property(self.address, "device,4194303", "protocolServicesSupported")
        except (ErrorPDU, RejectPDU, DecodingError, RejectException):
            services = None  # a device older than the wildcard instance, or no bit string: it answers, but cannot say
        self._multiple_unanswered = False
        services = to_plain(services)
        if not isinstance(services, list):
            # read alone on this connection, asked again at the next: a meter that has the service, its request lost,
            # is not read three requests at a time for good
            log.debug("meter %s: protocolServicesSupported not read (%r): read property by property", self.address,
                      services)
            self.read_multiple = False
        elif len(services) <= _MULTIPLE_BIT or not services[_MULTIPLE_BIT]:
            self._never_multiple = True
            self._read_singly("it left it unanswered, and its protocolServicesSupported lacks it")

    def _read_singly(self, why: str) -> None:
        self.read_multiple = False
        if self._logged_multiple is not False:  # once, not at each reconnection that finds the same
            log.info("meter %s %s does not support ReadPropertyMultiple (%s): it is read property by property (%s, "
                     "units and statusFlags in separate requests)", self.address, self.object_name, why, self.property)
            self._logged_multiple = False

    async def _read_answered(self, app: Application, fresh: bool) -> float:
        if fresh:
            self._has_units = True
            self._conversion = await self._read_units(app)
            self._conversion_app = app
            self._has_status_flags = True
        elif self._has_units:
            # at every read, as statusFlags: a meter set from kilowatts to watts, or power-cycled faster than a poll,
            # answered on, and 50 kW went to the VTN, the points and the forecaster as 50,000 kW (helper meters41)
            self._conversion = await self._read_units(app)
        conversion = self._conversion
        raw = await self._ask(app, self.property)
        if raw is None:
            raise _ReadFailed(f"{self._what}: no value returned (unknown object or property?)")
        await self._check_status_flags(app)
        if isinstance(raw, (Enumerated, Boolean)):  # int subclasses: units would read as 48 kW
            raise _ReadFailed(f"{self._what}: not a number ({type(raw).__name__} {to_plain(raw)})")
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise _ReadFailed(f"{self._what}: not a number ({_short(raw)})") from None
        if not math.isfinite(value):
            raise _ReadFailed(f"{self._what}: meter returned {value}")
        if isinstance(raw, Real):
            value = real_as_written(value)
        kw = conversion.to_kw(value)
        if conversion.kw_per_unit != 1.0:
            kw = float(f"{kw:.12g}")     # 1690.3 W x 0.001 is 1.6903000000000001 in binary
        lo, hi = self.bounds
        if not lo <= kw <= hi:
            said = f"{value:g} {conversion.name} = " if conversion.stated and conversion.kw_per_unit != 1.0 else ""
            if conversion.disagrees:    # meter.units decided the kW: the setting to look at, beside the meter's word
                said = f"{value:g} (it reports {conversion.reported}, meter.units says {conversion.name}) = "
            raise _ReadFailed(f"{self._what}: meter returned {said}{kw:g} kW, outside {lo:g}..{hi:g} "
                              "(bacnet.input_min_kw..input_max_kw)")
        return kw

    async def _ask(self, app: Application, prop: str) -> Any:
        answer = self._answers.get(int(PropertyIdentifier(prop)), _UNASKED)
        if answer is not _UNASKED:  # in the read's ReadPropertyMultiple answer
            if isinstance(answer, ErrorRejectAbortNack):
                raise answer
            return answer
        # each request gets the whole bound: a meter behind a busy router answering each in 0.8 s against a 2 s bound
        # read well, until one lost read made the next one ask for the units too, and every read after failed
        async with asyncio.timeout(self.timeout_seconds):
            return await app.read_property(self.address, self.object, prop)

    async def _read_units(self, app: Application) -> MeterUnits:
        """The meter object's units and what they make of its value; NotPower is a failed read."""
        try:
            raw = await self._ask(app, "units")
        except ErrorPDU as err:
            if str(err.errorClass) != "property":  # e.g. unknown object: the value read would fail alike
                raise _ReadFailed(f"{self.address} {self.object_name}: {error_text(err)}{self._hint(err)}") from None
            name = None  # no units property (or not readable): the value is taken as kW, as configured
            self._has_units = False     # not asked again on this connection
        else:
            # an answer that is not an enumeration says no more than a missing property: taken as kW
            name = to_plain(raw) if isinstance(raw, Enumerated) else None
        self.units = name
        try:
            conversion = meter_units(name, self.configured_units)
        except NotPower as err:
            raise _ReadFailed(f"{self.address} {self.object_name}: {err}") from None
        self._log_units(conversion)
        return conversion

    def _log_units(self, conversion: MeterUnits) -> None:
        if conversion == self._logged_units:
            return  # once per unit (and, with meter.units, per unit the meter says), not once per reconnection
        before, self._logged_units = self._logged_units, conversion
        warned = before is not None and (not before.stated or before.disagrees)
        # kW is what the gateway expects (nothing to tell at INFO, unless it ends a warning or a conversion: the log's
        # last word on the units would stand); a conversion is said; an unstated unit, or one meter.units overrules,
        # is warned
        level = (logging.WARNING if not conversion.stated or conversion.disagrees
                 else logging.DEBUG if conversion.kw_per_unit == 1.0 and before is None else logging.INFO)
        # ending a warning, the line says so: "reports kilowatts" alone did not read as its end
        ends = (" now: the warning about its units ends" if warned and level == logging.INFO
                else f" (it reported {(before.reported if before.configured else before.name) or 'no units'} before)"
                if before is not None else "")
        log.log(level, "meter %s %s %s%s", self.address, self.object_name, conversion.describe(), ends)

    def _here(self) -> str:
        """Why a read that got no answer may never have left this machine (the device's own address gone, a send
        with no route): the fault line blamed the meter's router while the gateway's own link was down (links41)."""
        watch = getattr(self._source, "own_address", None)
        trouble = watch.local_trouble() if watch is not None else None
        return f" ({trouble}: {LOCAL})" if trouble else ""

    def _hint(self, err: BaseException) -> str:
        """What the meter's error means for the configuration: "BACnet error object/unknown-object" after "units" read
        as a units problem to the technician whose meter came back with another object list (helper meters41)."""
        code = error_code(err)
        if code == "unknownObject":
            return f" ({self.object_name} does not exist on the meter: check meter.object)"
        if code == "unknownProperty":
            return f" ({self.object_name} has no {self.property}: check meter.property)"
        return ""

    async def _check_status_flags(self, app: Application) -> None:
        """Refuse a value the meter flags as fault or out of service (statusFlags bits 1 and 3)."""
        if not self._has_status_flags:
            return
        try:
            flags = to_plain(await self._ask(app, "statusFlags"))
        except ErrorPDU as err:
            if error_code(err) != "unknownProperty":
                raise
            self._has_status_flags = False  # e.g. a proprietary object: nothing to check on this connection
            return
        if not isinstance(flags, list) or len(flags) < 4:
            return
        if flags[1]:
            try:
                reliability = to_plain(await self._ask(app, "reliability"))
            except ErrorPDU:
                reliability = None
            why = f" (reliability {reliability})" if reliability else ""
            raise _ReadFailed(f"{self.address} {self.object_name}: the meter flags its value as fault{why}",
                              reliability=reliability if isinstance(reliability, str) else None)
        if flags[3]:
            raise _ReadFailed(f"{self.address} {self.object_name}: the meter's object is out of service, "
                              "so its value is not a measurement")

    async def _find_route(self, app: Application) -> None:
        """A path to the meter's network: the configured router, else whoever answers a broadcast
        Who-Is-Router-To-Network (bounded by timeout_seconds, separately from the read)."""
        assert self.network is not None
        if self.router:
            try:
                await add_static_route(app, self.router, self.network)
            except RuntimeError as err:   # bacpypes3's "unable to resolve NAME", said at every read
                raise _NoRoute(f"meter.router {self.router} does not resolve: {err}") from None
            path = await app.nsap.router_info_cache.get_path_info(None, self.network)
            # a host name resolved here, off the refusals' path: they come from an address
            self._router_address = str(path[0]) if path else None
        elif (not await app.nsap.router_info_cache.get_path_info(None, self.network)  # heard already?
              and not await ask_router(app, self.network, timeout=self.timeout_seconds)):
            raise _NoRoute(f"no router to network {self.network} answered Who-Is-Router-To-Network")
        self._route_ready = True

    async def _note_route(self) -> None:
        """The router the read just went through (a later answer to Who-Is-Router-To-Network, e.g. from
        a second router claiming the network, replaces the one heard first)."""
        if self.router or self.network is None:
            return
        path = await self._app.nsap.router_info_cache.get_path_info(None, self.network)
        route = str(path[0]) if path else None
        if route is not None and route != self.route:
            if self.route is None:
                log.info("meter network %d is reached through router %s", self.network, route)
            else:
                # a replaced router says this once; two routers claiming one network number (it must be unique)
                # say it at each change, as the readings may be another device's
                log.warning("meter network %d is now reached through router %s, was %s: if both routers answer for "
                            "it, the meter read may be another device; set meter.router", self.network, route,
                            self.route)
            self.route = route

    def _reading(self, value: float | None = None, error: str | None = None, answered: bool = False) -> MeterReading:
        return MeterReading(datetime.now(timezone.utc), value, error, answered or value is not None)

    def _record(self, reading: MeterReading) -> None:
        self.latest = reading
        if reading.value is not None:
            self.last_good = reading
        failed = reading.value is None
        now = time.monotonic()
        window = self._window
        if failed:
            kind = _fault_kind(reading.error)
            if self._settle.bad(now):   # the settle period runs from the last failed read
                log.warning("meter fault: %s", reading.error)
                self._fault_logged, self._fault_next = kind, (None, 0)
                window = self._window = _FaultWindow(since=now, started_at=reading.timestamp)
            elif kind != self._fault_logged:
                # the cause changed while the fault lasts (silent, then answering in kWh): say so, else the log
                # still blames the first cause. A cause must hold for two failed reads, so two that alternate (a
                # busy router) do not log every read.
                seen = self._fault_next[1] + 1 if self._fault_next[0] == kind else 1
                self._fault_next = (kind, seen)
                if seen >= 2:
                    log.warning("meter fault, cause changed: %s", reading.error)
                    self._fault_logged, self._fault_next = kind, (None, 0)
            else:
                self._fault_next = (None, 0)
            window.reads += 1
            window.failed += 1
            window.faults += not self.fault
            window.last_failed_at, window.last_error = reading.timestamp, reading.error
            window.steady_reads = 0
        elif window is not None:
            window.reads += 1
            window.steady_reads += 1
            if window.steady_reads == 1:
                window.steady_since = now
            if window.steady_reads >= SETTLE_READS and self._settle.good(now):
                self._log_end(window, now, reading)
                self._window = None
        self.fault = failed
        if self.on_reading is not None:
            with self._callback_bug.guard():
                self.on_reading(reading)

    def _log_end(self, window: _FaultWindow, now: float, reading: MeterReading) -> None:
        # "steady for" is what meter.settle_seconds counts: the time since the last failed read. Counted from the
        # first good read after it, a 60 s setting read "steady for 57 s" at a 3 s poll, less than the rule it ended by
        lasted, steady = span(window.steady_since - window.since), span(now - self._settle.last_bad)
        if window.faults == 1:
            log.info("meter answering again after %s (%d read%s failed), steady for %s: %s = %.2f kW",
                     lasted, window.failed, "" if window.failed == 1 else "s", steady, self.address, reading.value)
        else:
            log.info("meter answering steadily again after %s: %d of %d reads failed (intermittent: %d separate "
                     "faults), steady for %s: %s = %.2f kW", lasted, window.failed, window.reads,
                     window.faults, steady, self.address, reading.value)

    def fault_window(self) -> dict | None:
        """The fault the log has opened and not yet closed (None: the meter answers steadily), for the
        operator: an intermittent meter's `fault` is mostly false, its window says how often reads fail."""
        w = self._window
        if w is None:
            return None
        return {"since": w.started_at.isoformat(timespec="seconds"), "reads": w.reads, "failed_reads": w.failed,
                "faults": w.faults, "intermittent": w.faults > 1,
                "last_failed_at": w.last_failed_at.isoformat(timespec="seconds") if w.last_failed_at else None,
                "last_failure": w.last_error, "steady_reads": w.steady_reads, "settle_seconds": self._settle.settle}

    # ----- polling

    async def start(self) -> None:
        if self._task is not None and not self._task.done():
            return
        self._task = asyncio.create_task(self._poll(), name="meter-poll")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        already = asyncio.current_task().cancelling()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling() > already:    # this stop was cancelled, not only the poll
                raise

    async def _poll(self) -> None:
        while True:
            try:
                await self.read_once()
            except Exception as err:  # noqa: BLE001 - a bug, not the meter's fault: said once, the poll goes on
                self._read_bug.failed(err)
                # a failed read, so the points, /healthz and the BAS alarm do not show the last kW as live
                try:
                    self._record(self._reading(error=f"meter read failed inside the gateway ({type(err).__name__})"))
                except Exception:  # noqa: BLE001, S110 - read_once records its reading the same way: said above
                    pass
            else:
                self._read_bug.worked()
            # next tick on the wall-clock grid (:00, :10, ...), skipping ticks a slow read overran
            now = time.time()
            next_tick = (math.floor(now / self.poll_seconds) + 1) * self.poll_seconds
            await asyncio.sleep(max(0.0, next_tick - now))


class _ReadFailed(Exception):
    """A read that got an answer which is not a usable kW value."""

    def __init__(self, text: str, reliability: str | None = None):
        super().__init__(text)
        self.reliability = reliability


class _NoRoute(_ReadFailed):
    """No router to the meter's network answered: the read never reached the meter."""


class _Refused(Exception):
    """The router to the meter's network answered the read with a refusal instead of forwarding it."""

    def __init__(self, refusal: RouterRefusal) -> None:
        super().__init__(refusal)
        self.refusal = refusal


async def read_meter_once(
    bind_address: str,
    device_id: int,
    address: str,
    object: str,  # noqa: A002
    property: str = "presentValue",  # noqa: A002
    router: str = "",
    timeout: float = 5.0,
    bounds: tuple[float, float] = (-math.inf, math.inf),
    units: str | None = None,
) -> tuple[MeterReading, MeterUnits | None]:
    """One meter read from a temporary stack bound to `bind_address` (the CLI's read-meter), and how its value was
    taken (the units the meter states, meter.units; None if they were not read)."""
    try:
        app = await start_stack(bind_address, device_id, "edge-gateway-read-meter", timeout=timeout)
    except OSError as err:
        return MeterReading(datetime.now(timezone.utc), None, str(err)), None
    try:
        client = MeterClient(app, address=address, object=object, property=property,
                             router=router, timeout_seconds=timeout, bounds=bounds, units=units)
        reading = await client.read_once()
        return reading, client._logged_units
    finally:
        await close_stack(app)
