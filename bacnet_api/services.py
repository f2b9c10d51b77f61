"""Where the bacpypes3 application BAC0 builds answers a BAS wrongly or noisily, put right.

`harden(app)` is called once by GatewayDevice.start, before the point objects are added:
- a refused WritePropertyMultiple gets its WritePropertyMultiple-Error (bacpypes3 raises that error
  PDU without the request's context, so nothing was sent and asyncio logged a traceback);
- a confirmed-COV subscriber that stops answering is logged once and its subscription cancelled
  (bacpypes3 logged a traceback for every notification until the lifetime ran out);
- a change of statusFlags is a change of value for COV, as BACnet requires: bacpypes3 computes
  statusFlags from reliability, eventState and outOfService, so nobody ever assigns it and COV
  detection never saw a fault come or go;
- the device object names this project, and lists the services it executes and the object types it
  holds (bacpypes3 counts client-side handlers, numbers unconfirmed services as confirmed ones, and
  leaves the object types empty).
"""
from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from bacpypes3.apdu import AbortPDU, WritePropertyMultipleError
from bacpypes3.basetypes import ErrorType, ObjectPropertyReference, ObjectTypesSupported, ServicesSupported

from .client import error_text

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
        _announce_status_flags(obj)


def _extend(obj: Any, mixin: type) -> None:
    # BAC0 builds the application and device object itself, with no way to pass our own classes
    cls = type(obj)
    if not issubclass(cls, mixin):
        obj.__class__ = type(f"Gateway{cls.__name__}", (mixin, cls), {})


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


class _Services:
    # bacpypes3's handler raises NotImplementedError (an ERROR log, answered operationalProblem);
    # without one the request is rejected as unrecognized-service, which is the truth
    do_ReadRangeRequest = None

    def get_services_supported(self) -> ServicesSupported:
        return ServicesSupported(list(SERVICES))

    def add_object(self, obj: Any) -> None:
        super().add_object(obj)
        _announce_status_flags(obj)

    async def do_WritePropertyMultipleRequest(self, apdu: Any) -> None:
        try:
            # For an unknown object bacpypes3 builds a reference without a property, or a plain Error
            # that WritePropertyMultiple may not carry: nothing reaches the BAS. Refuse such a request
            # before any of it is written.
            for spec in apdu.listOfWriteAccessSpecs:
                wildcard = spec.objectIdentifier == ("device", 4194303)
                if not wildcard and self.get_object_id(spec.objectIdentifier) is None:
                    first = spec.listOfProperties[0].propertyIdentifier if spec.listOfProperties else "all"
                    raise WritePropertyMultipleError(
                        errorType=ErrorType(errorClass="object", errorCode="unknownObject"),
                        firstFailedWriteAttempt=ObjectPropertyReference(
                            objectIdentifier=spec.objectIdentifier, propertyIdentifier=first),
                    )
            await super().do_WritePropertyMultipleRequest(apdu)
        except WritePropertyMultipleError as error:
            error.set_context(apdu)
            await self.response(error)

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
