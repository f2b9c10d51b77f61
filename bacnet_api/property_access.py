"""ReadProperty, ReadPropertyMultiple and WriteProperty answered as BACnet prescribes, where the
bacpypes3 handlers answer wrongly. `services._Services` inherits this mix-in.

- Device instance 4194303 means "the device that receives this" (clause 15.5): bacpypes3 compares
  the request's ObjectIdentifier with a plain tuple, which it never equals, so it answered
  unknown-object. Network port instance 4194303 likewise means the port the request came in on (the same
  clause: a tool asks it to learn the port's instance, address and mask without knowing them); the device has one,
  and it answered unknown-object.
- ReadPropertyMultiple ALL/REQUIRED/OPTIONAL on a missing object: bacpypes3 expands the group before
  looking whether the object exists, so the whole request failed (operational-problem and a logged
  AttributeError) instead of that object getting unknown-object beside the others' results.
- ReadPropertyMultiple ALL/REQUIRED/OPTIONAL with a propertyArrayIndex: a group is no array, so that reference gets
  property/property-is-not-an-array (as bacnet-stack answers it, and as ReadProperty answers an index on any
  property that is not an array); bacpypes3 dropped the index and answered every property of the group whole.
- WriteProperty fails in the order of clause 15.9: unknown-property (bacpypes3 raised TypeError),
  property-is-not-an-array for an array index on a property that is not an array (a command to
  presentValue[1] got write-access-denied, as if presentValue were not writable), write-access-denied
  before the value is decoded (a wrong datatype to a read-only property was rejected or failed),
  invalid-data-type for a value of the wrong datatype (bacpypes3 rejected it
  invalid-tag, which is for a malformed request), and a Null without a priority relinquishes priority 16
  (clause 19.2.1), which bacpypes3 rejected.
- WritePropertyMultiple writes each value by those same rules, in order, and stops at the first
  failure with a WritePropertyMultiple-Error naming it; the writes before it stand (clause 15.10.2: a BAS
  takes them as made). An unknown object is such a failure in its turn: it refused the whole request
  before anything was written, so a BAS took the writes before it as made when none was. bacpypes3 raised
  the error PDU without the request's context, so nothing reached the BAS and asyncio logged a traceback.
- ReadPropertyMultiple REQUIRED of the Network Port includes networkNumber, networkNumberQuality and
  apduLength: required of every port before protocol revision 24 (the device reports 22), conditional
  after it, and bacpypes3 lists them as optional. Likewise a commandable point's priorityArray,
  relinquishDefault and currentCommandPriority, and a segmenting device's maxSegmentsAccepted and
  apduSegmentTimeout (bacpypes3 called some of them required and some optional on the same kind of point).
"""
from __future__ import annotations

import inspect
from typing import Any

from bacpypes3.apdu import ReadPropertyMultipleACK, SimpleAckPDU, WritePropertyMultipleError
from bacpypes3.basetypes import (
    ErrorType,
    ObjectPropertyReference,
    PropertyIdentifier,
    ReadAccessResult,
    ReadAccessResultElement,
    ReadAccessResultElementChoice,
)
from bacpypes3.constructeddata import Array
from bacpypes3.errors import ExecutionError, ObjectError, PropertyError, RejectException
from bacpypes3.local.cmd import Commandable
from bacpypes3.primitivedata import ObjectIdentifier, Unsigned
from bacpypes3.service.object import read_property_to_result_element

THIS_DEVICE = ObjectIdentifier("device,4194303")
THIS_PORT = ObjectIdentifier("networkPort,4194303")
_GROUPS = (PropertyIdentifier.all, PropertyIdentifier.required, PropertyIdentifier.optional)
_ALSO_REQUIRED = {"network-port": ("networkNumber", "networkNumberQuality", "apduLength", "linkSpeed")}
_COMMANDABLE = ("priorityArray", "relinquishDefault", "currentCommandPriority")
_SEGMENTING = ("maxSegmentsAccepted", "apduSegmentTimeout")


def _conditionally_required(obj: Any) -> tuple[str, ...]:
    """Properties BACnet requires of this object by a condition bacpypes3's lists leave out: a commandable
    presentValue's command properties, and a segmenting device's segment limits."""
    names = _ALSO_REQUIRED.get(str(obj.objectType), ())
    if isinstance(obj, Commandable):
        names += _COMMANDABLE
    if str(obj.objectType) == "device" and str(getattr(obj, "segmentationSupported", "")) != "no-segmentation":
        names += _SEGMENTING
    return names


class PropertyAccess:
    def local_id(self, object_id: Any) -> Any:
        if object_id == THIS_DEVICE and self.device_object is not None:
            return self.device_object.objectIdentifier
        if object_id == THIS_PORT:
            # the port the request came in on: the gateway's device has one (BAC0's NetworkPort-1)
            ports = [known for known in self.objectIdentifier if known[0] == THIS_PORT[0]]
            if len(ports) == 1:
                return ports[0]
        return object_id

    async def do_ReadPropertyRequest(self, apdu: Any) -> None:
        apdu.objectIdentifier = self.local_id(apdu.objectIdentifier)
        await super().do_ReadPropertyRequest(apdu)

    async def do_ReadPropertyMultipleRequest(self, apdu: Any) -> None:
        results, found = [], False
        for spec in apdu.listOfReadAccessSpecs:
            object_id = self.local_id(spec.objectIdentifier)
            obj = self.get_object_id(object_id)
            found = found or obj is not None
            elements = []
            for ref in spec.listOfPropertyReferences:
                elements.extend(await _read(obj, ref.propertyIdentifier, ref.propertyArrayIndex))
            results.append(ReadAccessResult(objectIdentifier=object_id, listOfResults=elements))
        if not found:  # as bacpypes3: nothing to answer for, the request itself fails
            raise ObjectError("unknownObject")
        await self.response(ReadPropertyMultipleACK(listOfReadAccessResults=results, context=apdu))

    def write_failed(self, apdu: Any, obj: Any, prop: Any, index: Any, priority: Any, value: Any,
                     err: ExecutionError) -> None:
        """A write in `apdu` of `value` (decoded; None when it would not decode) to an existing object failed with
        `err`; the caller answers."""

    async def _write(self, apdu: Any, obj: Any, prop: Any, index: Any, priority: Any, raw: Any) -> None:
        value = None
        try:
            value = value_to_write(obj, prop, index, priority, raw)
            await obj.write_property(prop, value, index, priority)
        except ExecutionError as err:
            self.write_failed(apdu, obj, prop, index, priority, value, err)
            raise

    async def do_WritePropertyRequest(self, apdu: Any) -> None:
        obj = self.get_object_id(self.local_id(apdu.objectIdentifier))
        if obj is None:
            raise ObjectError("unknownObject")
        await self._write(apdu, obj, apdu.propertyIdentifier, apdu.propertyArrayIndex, apdu.priority,
                          apdu.propertyValue)
        await self.response(SimpleAckPDU(context=apdu))

    async def do_WritePropertyMultipleRequest(self, apdu: Any) -> None:
        specs = [(self.local_id(spec.objectIdentifier), spec.listOfProperties) for spec in apdu.listOfWriteAccessSpecs]
        try:
            for object_id, props in specs:
                obj = self.get_object_id(object_id)
                if obj is None:
                    # in its turn, as any other failure: the writes before it stand, as the BAS takes them to
                    first = props[0] if props else None
                    raise multiple_error("object", "unknownObject", object_id,
                                         first.propertyIdentifier if first else PropertyIdentifier.all,
                                         first.propertyArrayIndex if first else None)
                for p in props:
                    prop, index, priority = p.propertyIdentifier, p.propertyArrayIndex, p.priority
                    try:
                        await self._write(apdu, obj, prop, index, priority, p.value)
                    except ExecutionError as err:
                        raise multiple_error(err.errorClass, err.errorCode, object_id, prop, index) from None
        except WritePropertyMultipleError as error:
            error.set_context(apdu)
            await self.response(error)
            return
        await self.response(SimpleAckPDU(context=apdu))


def multiple_error(error_class, error_code, object_id, prop, index) -> WritePropertyMultipleError:
    failed = ObjectPropertyReference(objectIdentifier=object_id, propertyIdentifier=prop)
    if index is not None:
        failed.propertyArrayIndex = index
    return WritePropertyMultipleError(errorType=ErrorType(errorClass=error_class, errorCode=error_code),
                                      firstFailedWriteAttempt=failed)


def value_to_write(obj: Any, prop: Any, index: int | None, priority: int | None, value: Any) -> Any:
    """`value` (an Any) decoded as the property's datatype, or the PropertyError the writer gets."""
    datatype = obj.get_property_type(prop)
    if datatype is None or not _present(obj, prop.attr):  # not of this type, or not on this object
        raise PropertyError("unknownProperty")
    if index is not None and not issubclass(datatype, Array):  # as ReadProperty answers it
        raise PropertyError("propertyIsNotAnArray")
    writable = getattr(obj, "_writable", None)  # the point policy (objects.py), asked before decoding
    if writable is not None and not writable(prop, index):
        raise PropertyError("writeAccessDenied")
    if index is not None and issubclass(datatype, Array):
        datatype = Unsigned if index == 0 else datatype._subtype
    # Null relinquishes a command; with no priority a command is at 16 (clause 19.2.1)
    commanded = priority is not None or (isinstance(obj, Commandable) and prop == PropertyIdentifier.presentValue)
    try:
        return value.cast_out(datatype, null=commanded)
    except (RejectException, ValueError, TypeError):
        raise PropertyError("invalidDataType") from None


async def _read(obj: Any, prop: Any, index: int | None) -> list:
    """The result elements for one property reference: one, or one per property of a group."""
    if obj is None or prop not in _GROUPS:  # a missing object gets unknown-object here
        return [await read_property_to_result_element(obj, prop, index)]
    if index is not None:  # a group is no array: bacpypes3 dropped the index and answered every property whole
        return [ReadAccessResultElement(propertyIdentifier=prop, propertyArrayIndex=index, readResult=(
            ReadAccessResultElementChoice(propertyAccessError=ErrorType(errorClass="property",
                                                                        errorCode="propertyIsNotAnArray"))))]
    required: set[str] = set()
    for cls in type(obj).__mro__:
        required.update(getattr(cls, "_required", ()))
    required.update(_conditionally_required(obj))
    names = [name for name in obj._elements if name != "propertyList"]  # BACnet leaves it out of groups
    if prop == PropertyIdentifier.required:
        names = [name for name in names if name in required]
    elif prop == PropertyIdentifier.optional:
        names = [name for name in names if name not in required]
    elements = []
    for name in names:
        if not _present(obj, name):
            continue
        element = await read_property_to_result_element(obj, name)
        if element.readResult.propertyAccessError is None:
            elements.append(element)
    return elements


def _present(obj: Any, name: str) -> bool:
    # an optional property of the type that this object leaves out (e.g. priorityArray of a
    # read-only point); looked up without running computed properties
    return inspect.getattr_static(obj, name, None) is not None
