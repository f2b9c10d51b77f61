"""Where the bacpypes3 application BAC0 builds answers a BAS wrongly or noisily, put right.

`harden(app)` is called once by GatewayDevice.start, before the point objects are added:
- a confirmed-COV subscriber that stops answering is logged once and its subscription cancelled
  (bacpypes3 logged a traceback for every notification until the lifetime ran out);
- a change of statusFlags is a change of value for COV, as BACnet requires: bacpypes3 computes
  statusFlags from reliability, eventState and outOfService, so nobody ever assigns it and COV
  detection never saw a fault come or go;
- the device object names this project, and lists the services it executes and the object types it
  holds (bacpypes3 counts client-side handlers, numbers unconfirmed services as confirmed ones, and
  leaves the object types empty), and its activeCovSubscriptions lists the subscriptions (bacpypes3
  asks the application for a method its COV service does not have, so the list was always empty);
- every object's propertyList leaves out objectIdentifier, objectName, objectType and propertyList
  itself, as clause 12.1.x (Property_List) requires; bacpypes3 listed all four. ReadPropertyMultiple
  ALL/REQUIRED still return the first three (property_access.py walks the object's properties, not
  this list);
- reads and writes get the answers BACnet prescribes (see property_access.py).
"""
from __future__ import annotations

import asyncio
import logging
import math
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from bacpypes3.apdu import AbortPDU
from bacpypes3.basetypes import (
    COVSubscription,
    DeviceAddress,
    ListOfCOVSubscription,
    ObjectPropertyReference,
    ObjectTypesSupported,
    Recipient,
    RecipientProcess,
    ServicesSupported,
)
from bacpypes3.constructeddata import ArrayOf
from bacpypes3.errors import ExecutionError, MissingRequiredParameter
from bacpypes3.primitivedata import PropertyIdentifier

from .client import error_text
from .property_access import PropertyAccess

log = logging.getLogger(__name__)

VENDOR_NAME = "edge-gateway project"
MODEL_NAME = "edge-gateway"
# what a BAS can ask of the device and get an answer to
SERVICES = (
    "read-property",
    "read-property-multiple",
    "write-property",
    "write-property-multiple",
    "subscribe-cov",
    "who-has",
    "who-is",
)
_STATUS_FLAGS_FROM = ("reliability", "eventState", "outOfService")
# every subscription is notified in one loop turn at each change (about 0.17 ms each): a bound keeps a
# BAS that subscribes with a new process identifier at each restart from stalling the gateway
MAX_COV_SUBSCRIPTIONS = 100


def harden(app: Any) -> None:
    try:
        software = version("edge-gateway")
    except PackageNotFoundError:  # a source tree that was not installed
        software = "0.0.0+source"
    _extend(app, _Services)
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


class _Services(PropertyAccess):
    # bacpypes3's handler raises NotImplementedError (an ERROR log, answered operationalProblem);
    # without one the request is rejected as unrecognized-service, which is the truth
    do_ReadRangeRequest = None

    async def confirmation(self, apdu: Any) -> None:
        # A request given up on (a meter read past meter.timeout_seconds) stays listed until a call_soon
        # callback removes it; an answer landing in between made bacpypes3 set a result on the cancelled
        # future and log InvalidStateError with a traceback. It answers a withdrawn question: drop it.
        for request, future in self._requests.get(apdu.pduSource, ()):
            if request.apduInvokeID == apdu.apduInvokeID and future.done():
                return
        await super().confirmation(apdu)

    async def do_SubscribeCOVRequest(self, apdu: Any) -> None:
        confirmed, lifetime = apdu.issueConfirmedNotifications, apdu.lifetime
        if (confirmed is None) != (lifetime is None):
            # both absent is a cancellation; one alone is neither (clause 13.14.1.1.3-4). bacpypes3
            # failed with a TypeError (operational-problem, a traceback in the log) or subscribed "None"
            raise MissingRequiredParameter("issueConfirmedNotifications and lifetime go together")
        same = [cov for detection in self._cov_detections.values() for cov in detection.cov_subscriptions
                if (cov.client_addr, cov.proc_id, cov.obj_id)
                == (apdu.pduSource, apdu.subscriberProcessIdentifier, apdu.monitoredObjectIdentifier)]
        if confirmed is not None:
            if same:  # a renewal replaces the subscription's parameters, not only its lifetime (13.14.2)
                for cov in same:
                    cov.confirmed = confirmed
            elif sum(len(d.cov_subscriptions) for d in self._cov_detections.values()) >= MAX_COV_SUBSCRIPTIONS:
                raise ExecutionError(errorClass="resources", errorCode="noSpaceToAddListElement")
        await super().do_SubscribeCOVRequest(apdu)

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
                ends = cov.cancel_handle.when() if cov.cancel_handle else None
                listed.append(COVSubscription(
                    recipient=RecipientProcess(recipient=Recipient(address=DeviceAddress(cov.client_addr)),
                                               processIdentifier=cov.proc_id),
                    # SubscribeCOV watches the object: its presentValue (and statusFlags)
                    monitoredPropertyReference=ObjectPropertyReference(
                        objectIdentifier=cov.obj_id, propertyIdentifier="presentValue"),
                    issueConfirmedNotifications=bool(cov.confirmed),
                    # 0 means no lifetime, so a finite one never rounds down to it
                    timeRemaining=0 if ends is None else max(1, math.ceil(ends - now)),
                ))
        return ListOfCOVSubscription(listed)

    def cov_confirmation(self, cov: Any, future: Any) -> None:
        if future.cancelled() or future.exception() is None:
            return
        if cov.obj_ref is None:  # already cancelled after an earlier notification failed
            return
        error = future.exception()
        who = f"COV subscriber {cov.client_addr} (process {cov.proc_id}, {cov.obj_id})"
        if isinstance(error, AbortPDU):  # no answer after every retry, or the subscriber aborted
            self.cancel_subscription(cov)
            log.warning("%s stopped answering: %s; subscription cancelled", who, error_text(error))
        elif not getattr(cov, "_refused", False):  # it is there: its lifetime will end it
            cov._refused = True
            log.warning("%s refused a notification: %s", who, error_text(error))


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


class _Device:
    @property
    def protocolObjectTypesSupported(self) -> ObjectTypesSupported:
        supported = ObjectTypesSupported([])
        held = self._app.objectIdentifier if self._app else [self.objectIdentifier]
        for object_type, _instance in held:
            supported[int(object_type)] = 1
        return supported

    @protocolObjectTypesSupported.setter
    def protocolObjectTypesSupported(self, value: Any) -> None:
        pass  # derived from the objects the device holds
