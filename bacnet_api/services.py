"""Where the bacpypes3 application BAC0 builds answers a BAS wrongly or noisily, put right.

`harden(app)` is called once by GatewayDevice.start, before the point objects are added:
- a confirmed-COV subscriber that stops answering is logged once and its confirmed subscriptions with a lifetime
  cancelled (bacpypes3 logged a traceback for every notification until the lifetime ran out); those without one,
  which a BAS never renews, are kept, one notification tried a minute, and its answer brings it every point's value;
- a change of statusFlags is a change of value for COV, as BACnet requires: bacpypes3 computes
  statusFlags from reliability, eventState and outOfService, so nobody ever assigns it and COV
  detection never saw a fault come or go;
- the device object names this project, and lists the services it executes and the object types it
  holds (bacpypes3 counts client-side handlers, numbers unconfirmed services as confirmed ones, and
  leaves the object types empty), and its activeCovSubscriptions lists the subscriptions (bacpypes3
  asks the application for a method its COV service does not have, so the list was always empty), and
  utcOffset and daylightSavingsStatus beside localTime and localDate, of the machine's zone at each read
  (bacpypes3 has none; BAC0's TimeHandler, which serves no property, counts utcOffset east positive and
  with summer time in it);
- every object's propertyList leaves out objectIdentifier, objectName, objectType and propertyList
  itself, as clause 12.1.x (Property_List) requires; bacpypes3 listed all four. ReadPropertyMultiple
  ALL/REQUIRED still return the first three (property_access.py walks the object's properties, not
  this list);
- reads and writes get the answers BACnet prescribes (see property_access.py);
- DeviceCommunicationControl is executed, guarded by a password (bacpypes3 0.0.110's Application has
  no handler, so a BAS got unrecognized-service; its mix-in for it takes no password unless one is set,
  and names an attribute the Application does not have). DISABLE, deprecated since Protocol_Revision 20
  (the device says 22), is refused with services/service-request-denied, as clause 16.1 requires, so no
  client can silence the gateway; DISABLE_INITIATION is honoured only with `bacnet.dcc_password` and
  refused with services/service-request-denied while none is set (no password would be right) and
  security/password-failure for a wrong or missing one; ENABLE needs the password too, once one is set (the
  password guards the service, clause 16.1.1.1.3), and is taken from anyone while none is. A password over the 20
  characters that clause allows is rejected parameter-out-of-range, whatever the mode, as bacnet-stack does.
  While initiation is disabled the gateway still answers, but initiates nothing but I-Am in answer to Who-Is,
  the one exception clause 16.1.1.1.2 makes (a Who-Has gets no I-Have): a request it
  would send (a meter read, a confirmed COV notification) fails at once with CommunicationDisabled
  instead of waiting for a time-out (bacpypes3 dropped it and left its future pending);
- ReinitializeDevice is not executed: it is rejected unrecognized-service, as before, but logged, so
  nobody restarts or stops the gateway over BACnet;
- with `bacnet.write_from` set, WriteProperty and WritePropertyMultiple from a source it does not list
  are refused write-access-denied before anything else is looked at, and DeviceCommunicationControl
  (an enable too, once a password is set) services/service-request-denied before the password is: the site
  has not allowed that client, and password-failure would send its technician retyping a right password
  (write_access.py keeps the list, the count and the log line). A source that came in a Forwarded-NPDU counts
  only when `bacnet.bbmd_address` sent it (forwarded.py): anyone else can write any source in one;
- COV subscriptions are shared out: one source holds at most COV_PER_SOURCE and, with `bacnet.write_from` set, the
  sources it does not list at most COV_UNLISTED together, so no client can hold the table until a restart and the
  BAS it lists finds room (bacpypes3 took any subscription while there was room, and a refusal was said nowhere: it
  is now one WARNING a spell of them, naming who holds the most);
- a confirmed request bacpypes3 cannot decode is rejected instead of dropped (rejects.py); an unconfirmed one it
  decodes but cannot carry out (a Who-Is with one range limit) gets one INFO line per source, where bacpypes3 logged
  an ERROR with a traceback for each: BACnet has no answer to give, and the fault is the sender's;
- the first segment of a segmented answer is sent again when no SegmentACK comes (server_transactions.py); bacpypes3
  resent nothing and logged a traceback at each retry. A request whose header bacpypes3 cannot use leaves no
  server transaction listed for good.
"""
from __future__ import annotations

import asyncio
import calendar
import contextvars
import functools
import logging
import math
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Callable

from bacpypes3.apdu import AbortPDU, ConfirmedRequestPDU, SimpleAckPDU, WritePropertyRequest
from bacpypes3.appservice import AWAIT_RESPONSE
from bacpypes3.basetypes import (
    COVSubscription,
    DeviceAddress,
    ErrorCode,
    ListOfCOVSubscription,
    ObjectPropertyReference,
    ObjectTypesSupported,
    Recipient,
    RecipientProcess,
    ServicesSupported,
)
from bacpypes3.constructeddata import ArrayOf
from bacpypes3.errors import (AbortException, ExecutionError, MissingRequiredParameter, ParameterOutOfRange,
                              PropertyError, RejectException, UndefinedEnumeration, UnrecognizedService)
from bacpypes3.primitivedata import Boolean, Date, Integer, PropertyIdentifier, Time

from .bug_guard import first_from
from .client import answers_withdrawn_request, error_code, error_text, same_station, to_plain
from .forwarded import note_forwarders, untrusted_forwarder
from .host_network import default_gateway, dns_servers
from .objects import WRITER, why_refused
from .points import POINTS
from .property_access import PropertyAccess, multiple_error
from .rejects import reject_undecodable
from .server_transactions import mend_server_transactions
from .settle import span
from .stray_datagrams import name_stray_datagrams
from .write_access import LOG_EVERY_SECONDS, WriteAccess

log = logging.getLogger(__name__)
# requests refused from the network: anyone on the BACnet network can send them in a loop (a password
# guesser), so the operator's log rate-limits this logger like the stacks' peer noise
refusals = logging.getLogger(f"{__name__}.refusals")
# confirmed-COV subscribers that stopped answering or refused a notification: one line each for a BAS gone offline,
# but a subscriber's address is whatever its request (or a Forwarded-NPDU) said, so the log rate-limits these too
subscribers = logging.getLogger(f"{__name__}.cov_subscribers")

VENDOR_NAME = "edge-gateway project"
MODEL_NAME = "edge-gateway"
# what a BAS can ask of the device and get an answer to
SERVICES = (
    "read-property",
    "read-property-multiple",
    "write-property",
    "write-property-multiple",
    "subscribe-cov",
    "device-communication-control",
    "who-has",
    "who-is",
)
# DeviceCommunicationControl's timeDuration is in minutes; a minute is this many seconds (tests shorten it)
DCC_MINUTE_SECONDS = 60.0
DCC_MODES = ("enable", "disable", "disableInitiation")      # BACnetEnableDisable (clause 16.1.1.1.2)
DCC_MAX_MINUTES = 65535     # time-duration is an Unsigned16
DCC_PASSWORD_MAX_CHARS = 20     # clause 16.1.1.1.3 (bacnet.dcc_password is held to it too)
_STATUS_FLAGS_FROM = ("reliability", "eventState", "outOfService")
# every subscription is notified in one loop turn at each change (about 0.17 ms each): a bound keeps a
# BAS that subscribes with a new process identifier at each restart from stalling the gateway
MAX_COV_SUBSCRIPTIONS = 100
# Requests that may wait for the device's set-up at a start (a second at most, or seconds on a loaded box): a BAS
# polling a few hundred points at once gets all its reads answered; a flood beyond is dropped, as a starting device's
HELD_AT_MOST = 1000
# a confirmed-COV subscriber that stopped answering, with subscriptions without a lifetime (kept: a BAS never renews
# them): one notification is tried this often until it answers, which brings it every point it watches
COV_RETRY_SECONDS = 60.0
# what one source bacnet.write_from does not list may hold (all sources while it is empty): twice the points, so a BAS
# watching every point that restarts with new process identifiers subscribes to all of them again while the old ones
# run out (a quarter of the table left it 9 of the 16), and no one client, unconfirmed with no lifetime, can hold the
# table until a restart
COV_PER_SOURCE = 2 * len(POINTS)
# with bacnet.write_from set, what the sources it does not list may hold together: anyone can subscribe from as many
# UDP ports, or made-up routed sources, as it likes, and the other half stays for the BAS it lists
COV_UNLISTED = MAX_COV_SUBSCRIPTIONS // 2
# sources a once-a-source line was said for, per kind of line; past this many the rest are not (a scan of spoofed
# sources would otherwise grow the set and the log without bound)
_SOURCES_SAID = 64


# the errors of a command a point does not take; others (operational-problem at a stop) are not the writer's doing
_COMMAND_REFUSALS = frozenset({"valueOutOfRange", "invalidDataType", "writeAccessDenied"})


class CommunicationDisabled(Exception):
    """A request the gateway would have sent while a DeviceCommunicationControl disables initiation."""


def _writer(source: Any) -> str:
    """Who wrote, for the log: a Forwarded-NPDU's origin is its sender's word, said as the refusals say it."""
    forwarder = untrusted_forwarder()
    return str(source) if forwarder is None else f"{source} (claimed in a Forwarded-NPDU from {forwarder})"


def harden(app: Any, dcc_password: str = "", write_access: WriteAccess | None = None, own_address: str = "",
           bbmd_address: str = "", own_network: str = "",
           local_trouble: Callable[[], str | None] | None = None) -> None:
    """`dcc_password`: the DeviceCommunicationControl password; empty, DCC can only enable.
    `write_access`: who may write (`bacnet.write_from`); None, anyone. `own_address`: "ip:port" of this device,
    whose own I-Am is not another device's. `bbmd_address`: the BBMD the device registers with
    (`bacnet.bbmd_address`), the one sender whose Forwarded-NPDUs' sources are believed. `own_network`: the
    device's "ip/prefix", whose broadcast address a Forwarded-NPDU may not claim as its origin. `local_trouble`: why
    sends cannot leave this machine now (own_address.py), or None; a COV recipient is not blamed for it."""
    try:
        software = version("edge-gateway")
    except PackageNotFoundError:  # a source tree that was not installed
        software = "0.0.0+source"
    _extend(app, _Services)
    reject_undecodable(app)
    mend_server_transactions(app)
    note_forwarders(app, bbmd_address, own_network)
    name_stray_datagrams(app)
    app._dcc_password = dcc_password
    app._own_address = own_address
    app._local_trouble = local_trouble
    app._write_access = write_access
    app._bbmd_address = bbmd_address
    app._serving = asyncio.Event()
    device = app.device_object
    _extend(device, _Device)
    device.vendorName = VENDOR_NAME
    device.modelName = MODEL_NAME
    device.firmwareRevision = software
    device.applicationSoftwareVersion = software
    for obj in list(app.objectIdentifier.values()):
        _extend(obj, _PropertyList)
        _announce_status_flags(obj)
    complete_network_ports(app)


# Network Port properties that belong to one BACnet/IP mode only (clause 12.56, Table 12-71 footnotes)
_MODE_ONLY = {
    "foreign": ("fdBBMDAddress", "fdSubscriptionLifetime"),
    "bbmd": ("bbmdBroadcastDistributionTable", "bbmdAcceptFDRegistrations", "bbmdForeignDeviceTable"),
}


def complete_network_ports(app: Any) -> None:
    """BAC0 builds the network port from JSON with an empty fdBBMDAddress in every mode (reading it failed
    with operational-problem, and so did ReadPropertyMultiple ALL/OPTIONAL of the port) and without the
    required networkNumber, macAddress and apduLength. Drop what the port's mode does not use and fill in
    the rest."""
    device = app.device_object
    for obj in list(app.objectIdentifier.values()):
        if "networkType" not in obj._elements or str(obj.networkType) != "ipv4":  # IPv4 network ports
            continue
        mode = str(obj.bacnetIPMode)
        for other, names in _MODE_ONLY.items():
            if other != mode:
                for name in names:
                    obj.__dict__.pop(name, None)  # absent, not empty: unknown-property, left out of ALL
        if obj.macAddress is None:  # B/IP MAC: 4 octets of IP address, 2 of UDP port (Annex J.1.2)
            obj.macAddress = bytes(obj.ipAddress)[:4] + int(obj.bacnetIPUDPPort).to_bytes(2, "big")
        if obj.networkNumber is None:
            obj.networkNumber = 0  # not configured; networkNumberQuality says unknown
        if obj.apduLength is None:
            obj.apduLength = int(device.maxApduLengthAccepted)
        # commissioning tools show these for a B/IP port; bacpypes3 leaves them out
        if obj.ipDefaultGateway is None:
            obj.ipDefaultGateway = default_gateway(bytes(obj.ipAddress))
        if obj.ipDNSServer is None:
            obj.ipDNSServer = dns_servers()


_EXTENDED: dict[tuple[type, type], type] = {}


def _extend(obj: Any, mixin: type) -> None:
    # BAC0 builds the application and device object itself, with no way to pass our own classes
    cls = type(obj)
    if not issubclass(cls, mixin):
        if (mixin, cls) not in _EXTENDED:  # one class per kind of object, not one per object and start
            _EXTENDED[mixin, cls] = type(f"Gateway{cls.__name__}", (mixin, cls), {})
        obj.__class__ = _EXTENDED[mixin, cls]


def _announce_status_flags(obj: Any) -> None:
    if getattr(obj, "_cov_criteria", None) is None:
        return
    last = obj.statusFlags

    def changed(_old: Any, _new: Any) -> None:
        nonlocal last
        before, last = last, obj.statusFlags
        if last != before:
            for monitor in list(obj._property_monitors["statusFlags"]):
                monitor(before, last)

    for name in _STATUS_FLAGS_FROM:
        obj._property_monitors[name].append(changed)


def _processes(subscriptions: list) -> str:
    return ", ".join(f"process {c.proc_id} {c.obj_id}" for c in subscriptions)


def _as_sent(priority: Any) -> Any:
    """WriteProperty's priority as the BAS sent it: bacpypes3 decodes it as a signed Integer where BACnet's is Unsigned,
    so 0xFE came as -2 (in the log line and the refusal's reason, a priority no BAS sent)."""
    if priority is None or priority >= 0:
        return priority
    octets = ((~priority).bit_length() + 8) // 8     # the fewest a two's-complement encoding of it takes
    return priority + (1 << 8 * octets)


class _Services(PropertyAccess):
    # bacpypes3's handler raises NotImplementedError (an ERROR log, answered operationalProblem);
    # without one the request is rejected as unrecognized-service, which is the truth
    do_ReadRangeRequest = None
    # the device subscribes to nothing: bacpypes3's handler answered services/unknown-subscription for a service
    # protocolServicesSupported does not claim
    do_ConfirmedCOVNotificationRequest = None
    _dcc_password = ""
    _dcc: dict | None = None  # while initiation is disabled: who disabled it, since and until when
    _dcc_timer: asyncio.TimerHandle | None = None
    _dcc_began = 0.0  # loop time of the disable: its duration, which a wall-clock step (NTP at boot) would move
    _write_access: WriteAccess | None = None
    _bbmd_address = ""
    _cov_spell: list | None = None  # while new COV subscriptions are refused: [refused, said in the log, loop time]
    _cov_said_at: float | None = None  # loop time of the last line saying they were
    _cov_unsaid = 0  # refused in spells that were not said, for the next line
    _said_for: dict[str, set] | None = None  # kind of once-a-source line -> the sources it was said for
    _own_address = ""
    _local_trouble: Callable[[], str | None] | None = None     # harden's
    _cov_kept_for: str | None = None    # the local trouble the COV-kept line was said for, this spell
    # a confirmed-COV subscriber that stopped answering, whose subscriptions without a lifetime are kept -> the timer of
    # its next retry (None while that retry's notification is under way)
    _cov_unanswered: dict[str, asyncio.TimerHandle | None] | None = None
    _twins: dict[str, str] | None = None   # another device's address answering as this one -> when last heard
    # harden's: until serve(), a request waits (see indication)
    _serving: asyncio.Event | None = None
    _waiting = 0    # requests waiting for serve()
    _said_late = False
    _stopping = False   # drop_held(): every request is dropped

    def twins(self) -> list[dict]:
        """The other devices heard answering as this one: [{"address", "last_heard"}]."""
        return [{"address": a, "last_heard": at} for a, at in sorted((self._twins or {}).items())]

    def _first_from(self, kind: str, source: str) -> bool:
        """Whether a `kind` line is to be said for `source`: the first time, for up to _SOURCES_SAID sources."""
        if self._said_for is None:  # the class's None, until this application's first
            self._said_for = {}
        sources = self._said_for.setdefault(kind, set())
        if source in sources or len(sources) >= _SOURCES_SAID:
            return False
        sources.add(source)
        return True

    async def do_IAmRequest(self, apdu: Any) -> None:
        await super().do_IAmRequest(apdu)
        device = self.device_object
        source = str(apdu.pduSource)
        # its own I-Am, come back: a BBMD on its subnet forwards it to the subnet again (bacpypes3 writes the source
        # without the standard port, the own address has it)
        if device is None or apdu.iAmDeviceIdentifier != device.objectIdentifier \
                or same_station(source, self._own_address):
            return
        # a configuration copied to a second box: the BAS binds one or the other at each discovery, and the two
        # register with the VTN as one VEN. BACnet needs the instance unique on the internetwork (clause 12.11)
        if self._twins is None:
            self._twins = {}
        if source in self._twins or len(self._twins) < _SOURCES_SAID:
            self._twins[source] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if self._first_from("twin", source):
            log.warning("another device answers as device %d, from %s: bacnet.device_id must be unique on the site "
                        "(a configuration copied to a second gateway?); the BAS may bind either",
                        device.objectIdentifier[1], source)

    def serve(self) -> int:
        """Carry out requests, first those waiting since the socket opened; how many were."""
        if self._serving is None or self._serving.is_set():
            return 0
        self._serving.set()
        return self._waiting

    def drop_held(self) -> None:
        """A stop: the requests waiting for serve() are dropped (a confirmed one's sender hears nothing, and tries
        again or says the device is offline), as those still in the socket, and so is every request from now on while
        the answers under way go. Refused (operational-problem), a write was shown failed by the BAS and not sent
        again; unanswered, it is tried again, and the retry reaches the next start."""
        self._stopping = True
        if self._serving is not None:
            self._serving.set()     # the waiting requests see _stopping, and return
        for timer in (self._cov_unanswered or {}).values():
            if timer is not None:
                timer.cancel()
        self._cov_unanswered = None

    async def _held(self, apdu: Any) -> bool:
        """Whether a request that came before serve() is to be carried out: the socket is open from the first moment
        of the stack, and the gateway sets the device up after it (the objects, databaseRevision from storage.path,
        the BAS's restored commands, what a write starts). Answered before, a BAS cached a databaseRevision of 1 and
        an object list without the points, or had a write taken that nothing acted on. It waits; past
        HELD_AT_MOST waiting, or at a stop, it is dropped, as a device that is starting drops it."""
        if self._waiting >= HELD_AT_MOST:
            return False
        # its own: a BAS's retry after the stack's server-timeout has one of its own, with the same invoke id
        transaction = self._transaction_of(apdu) if isinstance(apdu, ConfirmedRequestPDU) else None
        self._waiting += 1
        try:
            await self._serving.wait()
        finally:
            self._waiting -= 1
        if self._stopping:
            return False
        if transaction is not None and transaction.state != AWAIT_RESPONSE:
            # the stack ended its transaction after its applicationTimeout, with no answer to the BAS: carried out
            # now, a write would be taken that the BAS holds as failed, and its answer met the retry's transaction or
            # a closed one (an ERROR with a traceback). The BAS's retry is carried out
            if not self._said_late:
                self._said_late = True
                log.info("BACnet: a request from %s that came during the start waited past the stack's %g s "
                         "application timeout, which ended it unanswered: not carried out (nor any other such this "
                         "start); the BAS asks again", apdu.pduSource, self.asap.applicationTimeout / 1000)
            return False
        return True

    def _transaction_of(self, apdu: Any) -> Any:
        """The server transaction waiting for the answer to a confirmed request."""
        return next((tr for tr in self.asap.serverTransactions if tr.invokeID == apdu.apduInvokeID
                     and tr.pdu_address == apdu.pduSource and tr.state == AWAIT_RESPONSE), None)

    async def indication(self, apdu: Any) -> None:
        # one clock reading for the whole request: an RPM of localDate and localTime straddling midnight (or a
        # clock step) would otherwise answer yesterday's date with today's time, a day off for the BAS
        instant = _request_instant.set(time.time())
        try:
            await self._indication(apdu)
        finally:
            _request_instant.reset(instant)

    async def _indication(self, apdu: Any) -> None:
        if self._stopping or (self._serving is not None and not self._serving.is_set() and not await self._held(apdu)):
            return
        helper = getattr(self, f"do_{type(apdu).__name__}", None)
        if isinstance(apdu, ConfirmedRequestPDU) or helper is None:
            await super().indication(apdu)
            return
        try:
            await helper(apdu)
        except (RejectException, AbortException, ExecutionError) as err:
            source = str(apdu.pduSource)
            if self._first_from("malformed", source):
                log.info("BACnet: %s from %s not carried out: %s (an unconfirmed request gets no answer; said "
                         "once a source)", type(apdu).__name__.removesuffix("Request"), source, error_text(err))
        except Exception as err:   # a fault of ours, as bacpypes3 would have said it: once for each place, as any
            # peer can send the request that meets it again and again
            first = first_from(err, self.__dict__.setdefault("_unconfirmed_traced", set()))
            log.log(logging.ERROR if first else logging.DEBUG, "BACnet: %s from %s failed",
                    type(apdu).__name__.removesuffix("Request"), apdu.pduSource, exc_info=first)

    # ----- bacnet.write_from

    def _refused(self, apdu: Any, what: Callable[[], str], answer: str) -> bool:
        """Whether `bacnet.write_from` leaves out the request's source, or the source is only what a Forwarded-NPDU
        from elsewhere than bacnet.bbmd_address claims (forwarded.py); if so, counted and logged."""
        access = self._write_access
        if access is None or access.open:
            return False
        forwarder = untrusted_forwarder()
        if forwarder is not None:
            bbmd = f" ({self._bbmd_address})" if self._bbmd_address else ", and none is set"
            access.refuse(apdu.pduSource, what(), answer, forwarded_by=forwarder,
                          why=f"a source in a Forwarded-NPDU is believed only from bacnet.bbmd_address{bbmd}")
            return True
        if access.allows(apdu.pduSource):
            return False
        access.refuse(apdu.pduSource, what(), answer)
        return True

    def _target(self, object_id: Any, prop: Any, index: Any = None, priority: Any = None) -> str:
        # named as the BAS programmer knows the point, with the identifier a BACnet tool shows
        obj = self.get_object_id(self.local_id(object_id))
        name = to_plain(object_id) if obj is None else f"{obj.objectName} ({to_plain(obj.objectIdentifier)})"
        return (f"{name} {to_plain(prop)}" + ("" if index is None else f"[{index}]")
                + ("" if priority is None else f" at priority {priority}"))

    def write_failed(self, apdu: Any, obj: Any, prop: Any, index: Any, priority: Any, value: Any,
                     err: ExecutionError) -> None:
        # a point's presentValue the BAS could not command (watts written for kW, a forecast point written): the
        # BAS alone sees the error, and the forecaster only that the input went quiet. Counted with the
        # write_from refusals; a tool trying other properties is not
        if (self._write_access is None or err.errorCode not in _COMMAND_REFUSALS or index is not None
                or prop != PropertyIdentifier.presentValue or obj.get_property_type(prop) is None):
            return
        service = "WriteProperty" if isinstance(apdu, WritePropertyRequest) else "WritePropertyMultiple"
        what = f"{service} of {self._target(obj.objectIdentifier, prop, None, priority)}"
        self._write_access.refuse(apdu.pduSource, what, str(ErrorCode(err.errorCode)),
                                  why_refused(obj, err.errorCode, value, priority))

    async def do_WritePropertyRequest(self, apdu: Any) -> None:
        apdu.priority = _as_sent(apdu.priority)
        if self._refused(apdu, lambda: "WriteProperty of " + self._target(
                apdu.objectIdentifier, apdu.propertyIdentifier, apdu.propertyArrayIndex, apdu.priority),
                "write-access-denied"):
            raise PropertyError("writeAccessDenied")
        WRITER.set(_writer(apdu.pduSource))    # this request's own task: the next one sets its own
        await super().do_WritePropertyRequest(apdu)

    async def do_WritePropertyMultipleRequest(self, apdu: Any) -> None:
        writes = [(spec.objectIdentifier, p) for spec in apdu.listOfWriteAccessSpecs for p in spec.listOfProperties]
        if writes:
            (object_id, p), more = writes[0], len(writes) - 1
            if self._refused(apdu, lambda: "WritePropertyMultiple of " + self._target(
                    object_id, p.propertyIdentifier, p.propertyArrayIndex, p.priority)
                    + (f" and {more} more" if more else ""), "write-access-denied"):
                # the whole request, naming its first write, as for any other refusal (clause 15.10)
                error = multiple_error("property", "writeAccessDenied", self.local_id(object_id),
                                       p.propertyIdentifier, p.propertyArrayIndex)
                error.set_context(apdu)
                await self.response(error)
                return
        WRITER.set(_writer(apdu.pduSource))
        await super().do_WritePropertyMultipleRequest(apdu)

    # ----- DeviceCommunicationControl and ReinitializeDevice

    async def do_DeviceCommunicationControlRequest(self, apdu: Any) -> None:
        if apdu.enableDisable is None:  # required; bacpypes3 decodes it as optional (else an AttributeError)
            raise MissingRequiredParameter("enable-disable is required")
        who, minutes = apdu.pduSource, int(apdu.timeDuration or 0)  # absent (or 0): until enabled
        mode = apdu.enableDisable.attr  # "enable", "disable" or "disableInitiation" (it equals no str)
        # bacpypes3 decodes any number into the enumeration and any Unsigned into the duration: an undefined one
        # was carried out as disableInitiation, and one past Unsigned16 as 45 days or an overflow after the ack
        if mode not in DCC_MODES:
            refusals.warning("BACnet DeviceCommunicationControl from %s rejected (undefined-enumeration): "
                             "enable-disable %s is not enable (0), disable (1) or disableInitiation (2)",
                             who, int(apdu.enableDisable))
            raise UndefinedEnumeration("enable-disable")
        if not 0 <= minutes <= DCC_MAX_MINUTES:
            refusals.warning("BACnet DeviceCommunicationControl %s from %s rejected (parameter-out-of-range): "
                             "time-duration %d min is not an Unsigned16 (0 to %d)", mode, who, minutes,
                             DCC_MAX_MINUTES)
            raise ParameterOutOfRange("time-duration")
        if apdu.password is not None and len(str(apdu.password)) > DCC_PASSWORD_MAX_CHARS:
            # "a CharacterString of up to 20 characters" (clause 16.1.1.1.3): outside that range a parameter is
            # rejected, as bacnet-stack (the reference stack) does while decoding, whatever the mode and whether a
            # password is set. It was a password-failure, which sent the technician retyping a password no device
            # takes. Characters, not bytes: 20 accented ones are a password
            refusals.warning("BACnet DeviceCommunicationControl %s from %s rejected (parameter-out-of-range): a "
                             "password of %d characters (at most %d)", mode, who, len(str(apdu.password)),
                             DCC_PASSWORD_MAX_CHARS)
            raise ParameterOutOfRange("password")
        what = f"BACnet DeviceCommunicationControl {mode} from {who}"
        if mode == "enable" and not self._dcc_password:
            # a device that requires no password ignores the parameter (clause 16.1.1.1.3); nobody could disable
            await self.response(SimpleAckPDU(context=apdu))
            self.end_communication_control(f"enabled by DeviceCommunicationControl from {who}")
            return
        if self._refused(apdu, lambda: f"DeviceCommunicationControl {mode}", "service-request-denied"):
            raise ExecutionError(errorClass="services", errorCode="serviceRequestDenied")
        if mode == "enable":
            # the password guards the service, not one mode of it (clause 16.1.1.1.3, 16.1.2): an enable with a
            # wrong one was taken, so any client could end a disable the site's technician set, and learn by the
            # answer whether a guess was right (an ack) without the disable's line in the log
            self._check_dcc_password(apdu, what)
            await self.response(SimpleAckPDU(context=apdu))
            self.end_communication_control(f"enabled by DeviceCommunicationControl from {who}")
            return
        if mode == "disable":
            # deprecated: a device of Protocol_Revision 20 or later answers it so (clause 16.1.3.1)
            refusals.warning("%s refused (service-request-denied): DISABLE is deprecated; use disableInitiation",
                             what)
            raise ExecutionError(errorClass="services", errorCode="serviceRequestDenied")
        if not self._dcc_password:
            refusals.warning("%s refused (service-request-denied): no bacnet.dcc_password is set", what)
            raise ExecutionError(errorClass="services", errorCode="serviceRequestDenied")
        self._check_dcc_password(apdu, what)
        await self.response(SimpleAckPDU(context=apdu))
        self._disable_initiation(who, minutes)

    def _check_dcc_password(self, apdu: Any, what: str) -> None:
        if apdu.password is None or str(apdu.password) != self._dcc_password:
            refusals.warning("%s refused (password-failure): %s password", what,
                             "no" if apdu.password is None else "wrong")
            raise ExecutionError(errorClass="security", errorCode="passwordFailure")

    def _disable_initiation(self, who: Any, minutes: int) -> None:
        self._cancel_dcc_timer()
        now = datetime.now(timezone.utc)
        renewed = self._dcc is not None  # a BAS repeating its disable: the same fault goes on, with a new end
        if not renewed:
            self._dcc_began = asyncio.get_running_loop().time()
        self._dcc = {"mode": "disableInitiation", "by": str(who),
                     "since": self._dcc["since"] if renewed else now.isoformat(timespec="seconds"),
                     "minutes": minutes or None,
                     "until": (now + timedelta(minutes=minutes)).isoformat(timespec="seconds") if minutes else None}
        self.asap.dccEnableDisable = "disableInitiation"  # I-Am still goes out, and every answer
        if minutes:
            self._dcc_timer = asyncio.get_running_loop().call_later(
                minutes * DCC_MINUTE_SECONDS, self.end_communication_control, f"its {minutes} min ran out")
        duration = f"for {minutes} min" if minutes else "with no time limit"
        if renewed:
            log.info("BACnet communication initiation still disabled: DeviceCommunicationControl from %s renewed "
                     "it (%s)", who, duration)
            return
        log.warning("BACnet communication initiation disabled by DeviceCommunicationControl from %s (%s, %s): "
                    "points are still answered, but the meter is not read and COV notifications stop",
                    who, "disableInitiation", duration)

    def end_communication_control(self, why: str | None = None) -> None:
        """Initiate again; log why, unless `why` is None (the device is stopping)."""
        self._cancel_dcc_timer()
        if self._dcc is None:
            return
        self._dcc = None
        self.asap.dccEnableDisable = "enable"
        if why is not None:
            log.info("BACnet communication initiation enabled again after %s: %s",
                     span(asyncio.get_running_loop().time() - self._dcc_began), why)

    def _cancel_dcc_timer(self) -> None:
        if self._dcc_timer is not None:
            self._dcc_timer.cancel()
            self._dcc_timer = None

    def cov_refusing(self) -> str | None:
        spell = self._cov_spell
        if spell is None or not spell[1]:   # none, or its line not yet said: nothing to end
            return None
        return f"BACnet SubscribeCOV refused ({spell[0]} in this spell)"

    def communication_control(self) -> dict:
        return {"mode": "enable"} if self._dcc is None else dict(self._dcc)

    def request(self, apdu: Any) -> Any:
        if self._dcc is not None and isinstance(apdu, ConfirmedRequestPDU):
            # bacpypes3 drops it below and never settles its future: fail it now, saying why
            future = asyncio.get_running_loop().create_future()
            future.set_exception(CommunicationDisabled(
                f"BACnet initiation disabled by DeviceCommunicationControl from {self._dcc['by']}"
                + (f" until {self._dcc['until']}" if self._dcc["until"] else "")))
            return future
        return super().request(apdu)

    async def do_ReinitializeDeviceRequest(self, apdu: Any) -> None:
        # not executed: the gateway is restarted by its service manager, never from the network
        refusals.warning("BACnet ReinitializeDevice %s from %s refused (unrecognized-service): not supported",
                         apdu.reinitializedStateOfDevice.attr, apdu.pduSource)
        raise UnrecognizedService("ReinitializeDevice is not executed")

    do_ReinitializeDeviceRequest.not_executed = True    # rejects.py: a malformed one is unrecognized-service too

    async def confirmation(self, apdu: Any) -> None:
        if not answers_withdrawn_request(self, apdu):     # a meter read past meter.timeout_seconds
            await super().confirmation(apdu)

    async def do_SubscribeCOVRequest(self, apdu: Any) -> None:
        confirmed, lifetime = apdu.issueConfirmedNotifications, apdu.lifetime
        if confirmed is None and lifetime is not None:
            # both absent is a cancellation; a lifetime needs issueConfirmedNotifications (clause 13.14.1.1.3).
            # bacpypes3 failed with a TypeError (operational-problem, a traceback in the log)
            raise MissingRequiredParameter("a lifetime without issueConfirmedNotifications")
        if confirmed is not None and lifetime is None:
            # a subscription without a lifetime is an indefinite one, as lifetime 0 (clause 13.14.1.1.4), which
            # the device takes: it was rejected missing-required-parameter, and bacpypes3 would subscribe "None"
            apdu.lifetime = lifetime = 0
        obj = self.get_object_id(self.local_id(apdu.monitoredObjectIdentifier))
        if obj is not None and getattr(obj, "_cov_criteria", None) is None:
            # an object without COV (the device, the network port): bacpypes3 answered the generic
            # cov-subscription-failed, and failed a cancellation too, which always succeeds (13.14.2)
            if confirmed is None:
                await self.response(SimpleAckPDU(context=apdu))
                return
            raise ExecutionError(errorClass="object", errorCode="optionalFunctionalityNotSupported")
        key = (apdu.pduSource, apdu.subscriberProcessIdentifier, apdu.monitoredObjectIdentifier)
        same = [cov for cov in self._cov_subscriptions() if (cov.client_addr, cov.proc_id, cov.obj_id) == key]
        new = confirmed is not None and not same
        if same and confirmed is not None:  # a renewal replaces the subscription's parameters, not only its lifetime
            for cov in same:                # (13.14.2); it is always taken, whatever the shares below
                cov.confirmed = confirmed
        if new and same_station(str(apdu.pduSource), self._own_address):
            # its notifications would come back to this device (a Forwarded-NPDU may claim any origin; forwarded.py
            # drops one claiming a broadcast or multicast origin)
            log.debug("SubscribeCOV for %s refused: it is this device's own address", apdu.pduSource)
            raise ExecutionError(errorClass="services", errorCode="covSubscriptionFailed")
        if new:
            holder = self._cov_holder(apdu.pduSource)
            why = self._no_room(*holder)
            if why:
                self._cov_refused(holder[0], why)
                raise ExecutionError(errorClass="resources", errorCode="noSpaceToAddListElement")
        await super().do_SubscribeCOVRequest(apdu)
        self._answers_again(str(apdu.pduSource))
        if new:
            for cov in self._cov_subscriptions():
                if (cov.client_addr, cov.proc_id, cov.obj_id) == key and getattr(cov, "_holder", None) is None:
                    cov._holder = holder
            self._cov_accepted(holder[0])

    # ----- the COV subscriptions' shares

    def _cov_subscriptions(self) -> list:
        return [cov for detection in self._cov_detections.values() for cov in detection.cov_subscriptions]

    def _cov_holder(self, source: Any) -> tuple[str, bool]:
        """Whom a new subscription from `source`, the request being handled, counts against, and whether
        bacnet.write_from lists it."""
        forwarder = untrusted_forwarder()
        if forwarder is not None:  # the source is the sender's word (forwarded.py): held by the sender, unlisted
            return f"{forwarder} (in Forwarded-NPDUs)", False
        return str(source), self._listed(source)

    def _listed(self, source: Any) -> bool:
        access = self._write_access
        return access is not None and not access.open and access.allows(source)

    def _cov_held(self) -> list[tuple[str, bool]]:
        """The holder of each subscription, as `_cov_holder` said when it was taken (or by its address, one being
        taken as another request asks)."""
        return [getattr(cov, "_holder", None) or (str(cov.client_addr), self._listed(cov.client_addr))
                for cov in self._cov_subscriptions()]

    def _no_room(self, holder: str, listed: bool) -> str | None:
        """Why a new subscription for `holder` does not fit, None if it does."""
        held = self._cov_held()
        if len(held) >= MAX_COV_SUBSCRIPTIONS:
            return f"the device holds {MAX_COV_SUBSCRIPTIONS} subscriptions, its most"
        if listed:  # the site's own BAS: only the table bounds it
            return None
        if sum(1 for who, _ in held if who == holder) >= COV_PER_SOURCE:
            return f"it holds {COV_PER_SOURCE}, the most one source may"
        restricted = self._write_access is not None and not self._write_access.open
        if restricted and sum(1 for _, on_list in held if not on_list) >= COV_UNLISTED:
            return (f"sources bacnet.write_from does not list hold {COV_UNLISTED}, the most they may together (the "
                    f"rest is kept for those it lists)")
        return None

    def _cov_refused(self, source: Any, why: str) -> None:
        # one line a spell of refusals, which ends at the next subscription taken: a client refused in a loop is one
        # line, not one a request. Not within LOG_EVERY_SECONDS of the last line, though (the spell's line waits and
        # counts), so a client whose subscriptions come and go cannot make a pair of lines a second
        now = asyncio.get_running_loop().time()
        spell = self._cov_spell
        if spell is None:
            spell = self._cov_spell = [0, False, now]
        spell[0] += 1
        if spell[1] or (self._cov_said_at is not None and now - self._cov_said_at < LOG_EVERY_SECONDS):
            return
        spell[1] = True
        held = Counter(self._cov_held())
        most = ", ".join(f"{who} ({n})" for (who, _), n in held.most_common(3))
        unsaid = self._cov_unsaid + spell[0] - 1
        log.warning("BACnet SubscribeCOV from %s refused (no-space-to-add-list-element): %s; the most are held by %s, "
                    "of %d in all%s; further refusals are counted until one is accepted again", source, why, most,
                    sum(held.values()), f"; {unsaid} more were refused since the last such line" if unsaid else "")
        self._cov_said_at, self._cov_unsaid = now, 0

    def _cov_accepted(self, source: Any) -> None:
        spell, self._cov_spell = self._cov_spell, None
        if spell is None:
            return
        refused, said, since = spell
        if said:
            log.info("BACnet SubscribeCOV accepted again (from %s) after %d refused over %s", source, refused,
                     span(asyncio.get_running_loop().time() - since))
        else:
            self._cov_unsaid += refused

    def get_services_supported(self) -> ServicesSupported:
        return ServicesSupported(list(SERVICES))

    def add_object(self, obj: Any) -> None:
        super().add_object(obj)
        _extend(obj, _PropertyList)
        _announce_status_flags(obj)

    def get_active_cov_subscriptions(self) -> ListOfCOVSubscription:
        # the device object's activeCovSubscriptions asks for this; bacpypes3's COV service keeps the
        # subscriptions but has no such method, so the list always read empty
        now = asyncio.get_running_loop().time()
        listed = []
        for detection in self._cov_detections.values():
            for cov in detection.cov_subscriptions:
                listed.append(COVSubscription(
                    recipient=RecipientProcess(recipient=Recipient(address=DeviceAddress(cov.client_addr)),
                                               processIdentifier=cov.proc_id),
                    # SubscribeCOV watches the object: its presentValue (and statusFlags)
                    monitoredPropertyReference=ObjectPropertyReference(
                        objectIdentifier=cov.obj_id, propertyIdentifier="presentValue"),
                    issueConfirmedNotifications=bool(cov.confirmed),
                    timeRemaining=time_remaining(cov, now),
                ))
        return ListOfCOVSubscription(listed)

    def add_subscription(self, cov: Any) -> None:
        _extend(self._cov_detections[cov.obj_ref.objectIdentifier], _EndedFirst)
        super().add_subscription(cov)

    def cov_notification(self, cov: Any, apdu: Any) -> None:
        if cov.confirmed and not getattr(cov, "_retry", False) and str(cov.client_addr) in (self._cov_unanswered or {}):
            return  # it stopped answering: the retry's answer brings it the values of every point it watches
        # as activeCovSubscriptions counts it: bacpypes3 rounded the notification's down, so the first notification
        # of a lifetime of 60 said 59 where the list said 60
        apdu.timeRemaining = time_remaining(cov, asyncio.get_running_loop().time())
        super().cov_notification(cov, apdu)

    def _confirmed_of(self, key: str) -> list:
        return [c for c in self._cov_subscriptions() if str(c.client_addr) == key and c.confirmed]

    def _kept_of(self, key: str) -> list:
        """The subscriber's confirmed subscriptions without a lifetime: those kept while it does not answer."""
        return [c for c in self._confirmed_of(key) if c.cancel_handle is None]

    def _retry_later(self, key: str) -> None:
        if self._stopping:
            return
        if self._cov_unanswered is None:
            self._cov_unanswered = {}
        earlier = self._cov_unanswered.get(key)
        if earlier is not None:     # notifications under way when it stopped fail one after another: one retry
            earlier.cancel()
        self._cov_unanswered[key] = asyncio.get_running_loop().call_later(COV_RETRY_SECONDS, self._retry, key)

    def _retry(self, key: str) -> None:
        """One notification to a subscriber that stopped answering; its answer (cov_confirmation) brings the others."""
        kept = self._kept_of(key)
        if not kept or self._cov_unanswered is None:
            (self._cov_unanswered or {}).pop(key, None)     # the BAS cancelled them, or the device stops
            return
        self._cov_unanswered[key] = None
        cov = kept[0]
        cov._retry = True
        try:
            self._cov_detections[cov.obj_ref.objectIdentifier].send_cov_notifications(cov)
        finally:
            cov._retry = False

    def _answers_again(self, key: str, answered: Any = None) -> None:
        """The subscriber `key` answered (a notification, or a SubscribeCOV of its own): if it had stopped, its kept
        subscriptions are notified of the values now, the changes it missed (but `answered`, whose notification it
        has just taken)."""
        if self._cov_unanswered is None or key not in self._cov_unanswered:
            return
        timer = self._cov_unanswered.pop(key)
        if timer is not None:
            timer.cancel()
        kept = self._kept_of(key)
        subscribers.info("COV subscriber %s answers again: notified of the %d point(s) it watches without a lifetime",
                         key, len(kept))
        loop = asyncio.get_running_loop()
        for c in kept:
            if c is not answered:
                loop.call_soon(self._cov_detections[c.obj_ref.objectIdentifier].send_cov_notifications, c)

    def cov_confirmation(self, cov: Any, future: Any) -> None:
        if future.cancelled():
            return
        if future.exception() is None:
            self._answers_again(str(cov.client_addr), cov)
            return
        if isinstance(future.exception(), CommunicationDisabled):  # not sent: nothing to say of the subscriber
            return
        if cov.obj_ref is None:  # already cancelled after an earlier notification failed
            return
        error = future.exception()
        who = f"COV subscriber {cov.client_addr} (process {cov.proc_id}, {cov.obj_id})"
        trouble = self._local_trouble() if self._local_trouble is not None else None
        if isinstance(error, AbortPDU) and trouble is not None:
            # this machine's link or address was down: not the subscriber's doing. Cancelled, the BAS was never told
            # and showed a frozen value until its lifetime ended (helper links41); kept, the next change reaches it
            if self._cov_kept_for != trouble:
                self._cov_kept_for = trouble
                subscribers.info("COV notifications not delivered while %s: the subscriptions are kept, and a later "
                                 "change reaches their subscribers", trouble)
            if str(cov.client_addr) in (self._cov_unanswered or {}):
                self._retry_later(str(cov.client_addr))
            return
        key = str(cov.client_addr)
        if isinstance(error, AbortPDU):  # no answer after every retry, or the subscriber aborted
            # its other confirmed subscriptions too: a BAS gone offline would otherwise cost 12 s of retries and a
            # line per point, one at each point's next change, for hours. Those with a lifetime are cancelled: the
            # BAS renews them when it is back. Those without one it never renews: cancelled, its graphics froze at
            # the values of then for good; kept, one notification is tried each COV_RETRY_SECONDS until it answers
            mine = [cov, *(c for c in self._confirmed_of(key) if c is not cov)]
            ending = [c for c in mine if c.cancel_handle is not None]
            unending = [c for c in mine if c.cancel_handle is None]
            for c in ending:
                self.cancel_subscription(c)
            said = key in (self._cov_unanswered or {})  # a retry that got no answer either: said already
            if unending:
                self._retry_later(key)
            elif said:
                self._cov_unanswered.pop(key, None)
            if said:
                return
            parts = []
            if ending:
                parts.append(f"its confirmed subscription{'s' if len(ending) > 1 else ''} cancelled "
                             f"({_processes(ending)})")
            if unending:
                parts.append(f"{'those' if ending else 'its confirmed subscriptions'} without a lifetime kept "
                             f"({_processes(unending)}), which a BAS never renews: not notified until it answers "
                             f"again, one notification tried every {COV_RETRY_SECONDS:g} s")
            subscribers.warning("COV subscriber %s stopped answering: %s; %s", key, error_text(error), "; ".join(parts))
            return
        self._answers_again(key)    # an error is an answer: it is there
        if error_code(error) == "unknownSubscription":
            # the subscriber holds no such subscription (a BAS restarted with new process identifiers): kept, one of
            # lifetime 0 would be notified and refused at every change until the gateway restarts, holding its place
            self.cancel_subscription(cov)
            subscribers.warning("%s answered a notification unknown-subscription: it holds no such subscription (a "
                                "restart of the subscriber?); cancelled", who)
        elif not getattr(cov, "_refused", False):  # it is there: its lifetime will end it
            cov._refused = True
            subscribers.warning("%s refused a notification: %s", who, error_text(error))


def time_remaining(cov: Any, now: float) -> int:
    """The seconds left of `cov`'s lifetime at loop time `now`, as activeCovSubscriptions lists them and a notification
    says them: whole seconds counted up, so a lifetime of 60 says 60 at once and 1 in its last second; 0, which means
    no lifetime, only for a subscription without one."""
    if cov.cancel_handle is None:
        return 0
    return max(1, math.ceil(cov.cancel_handle.when() - now))


class _EndedFirst:
    """A point's COV detection, which ends a subscription whose lifetime is over before it notifies anyone."""

    def send_cov_notifications(self, subscription: Any = None) -> None:
        # A loop held up past a subscription's end (a loaded box) may have a change to send before the subscription's
        # timer has run: bacpypes3 computed a negative time remaining for it, failed with a traceback, and the
        # subscriptions after it in the list were not notified. It is ended here, as its timer would end it
        now = asyncio.get_running_loop().time()
        app = self.obj._app
        for cov in list(self.cov_subscriptions if subscription is None else [subscription]):
            if cov.cancel_handle is not None and cov.cancel_handle.when() <= now:
                app.cancel_subscription(cov)
        if subscription is not None and subscription.obj_ref is None:
            return
        super().send_cov_notifications(subscription)


# Property_List lists the properties an object has "other than" these (clause 12.1.x)
_NOT_IN_PROPERTY_LIST = frozenset({"objectIdentifier", "objectName", "objectType", "propertyList"})


class _PropertyList:
    @property
    def propertyList(self) -> ArrayOf(PropertyIdentifier):  # type: ignore[valid-type]
        listed = super().propertyList  # bacpypes3: every property the object has, those four included
        return ArrayOf(PropertyIdentifier)([p for p in listed if p.attr not in _NOT_IN_PROPERTY_LIST])

    @propertyList.setter
    def propertyList(self, value: Any) -> None:
        pass  # derived from the object's properties


def _derived(getter: Callable[[Any], Any]) -> property:
    """A Device property worked out at each read; bacpypes3 assigns every property when it builds the object, and
    that assignment is dropped."""
    return property(getter, lambda self, value: None)


class _Device:
    @_derived
    def protocolObjectTypesSupported(self) -> ObjectTypesSupported:   # from the objects the device holds
        supported = ObjectTypesSupported([])
        held = self._app.objectIdentifier if self._app else [self.objectIdentifier]
        for object_type, _instance in held:
            supported[int(object_type)] = 1
        return supported

    # the machine's clock and zone, from one reading of the clock a request (request_instant)
    localDate = _derived(lambda self: Date.now(request_instant()))
    localTime = _derived(lambda self: Time.now(request_instant()))
    # bacpypes3 serves localTime and localDate (the machine's zone) but not these two, so a BAS or a technician
    # could not tell which zone they are in, nor see the box's zone is wrong (unknown-property)
    utcOffset = _derived(lambda self: Integer(machine_zone(request_instant())[0]))
    daylightSavingsStatus = _derived(lambda self: Boolean(machine_zone(request_instant())[1]))


_request_instant: contextvars.ContextVar[float | None] = contextvars.ContextVar("request_instant", default=None)


def request_instant() -> float:
    """The wall clock as the request being answered first read it (now, outside a request)."""
    instant = _request_instant.get()
    return time.time() if instant is None else instant


def machine_zone(now: float | None = None) -> tuple[int, bool]:
    """(utcOffset, daylightSavingsStatus) of the machine's zone at `now`, as the Device object has them
    (clause 12.11): the minutes from local standard time to UTC, west positive (UTC+1 is -60, summer and
    winter), and whether summer time is in force. Standard time is the lowest offset of the year (tzdata calls
    Dublin's winter time the daylight-saving one, and Casablanca's Ramadan month is an hour behind the rest), so
    localTime + utcOffset, less the summer hour, is UTC at every moment, as a BAS reckons it."""
    now = time.time() if now is None else now
    local = time.localtime(now)
    standard = _lowest_offset(local.tm_year, time.tzname, time.timezone, time.altzone)
    return round(-standard / 60), local.tm_gmtoff > standard


@functools.lru_cache(maxsize=4)
def _lowest_offset(year: int, *zone: object) -> int:
    """The zone's lowest UTC offset (s) in `year`, seen at noon UTC each day (every clock change lasts weeks);
    `zone` keys the cache to the TZ in force."""
    noon = calendar.timegm((year, 1, 1, 12, 0, 0))
    return min(time.localtime(noon + day * 86400).tm_gmtoff for day in range(365 + calendar.isleap(year)))
