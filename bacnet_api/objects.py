"""bacpypes3 object classes for the gateway's points, and the network write policy they enforce.

Policy, as the point table promises the BAS:
- read-only points refuse every network write with writeAccessDenied (the application still updates
  them by plain attribute assignment, which bypasses `write_property`);
- commandable points accept writes to presentValue only, at a priority, and relinquish with null;
  analog commands must be finite and within the configured bounds (else valueOutOfRange, and nothing
  changes), binary commands must be inactive or active; after each accepted write the owner's
  callback gets the new effective value.
Every other property (names, units, outOfService ...) is fixed: writeAccessDenied. So is every
property of the device and network port objects: the device's identity comes from its configuration.
"""
from __future__ import annotations

import contextvars
import functools
import math
import struct
from typing import Any, Awaitable, Callable

from bacpypes3.errors import PropertyError
from bacpypes3.local.analog import AnalogValueObject
from bacpypes3.local.binary import BinaryValueObject
from bacpypes3.local.cmd import Commandable
from bacpypes3.primitivedata import Null

from .client import to_plain


def _property_name(obj: Any, attr: int | str) -> str:
    if isinstance(attr, int):
        return obj._property_identifier_class(attr).attr
    return str(attr)


class _ReadOnly:
    """Placed before the bacpypes3 class: nothing is writable from the network."""

    def _writable(self, attr, index=None) -> bool:  # noqa: ARG002
        """Whether a network write may reach this property (asked before the value is decoded)."""
        return False

    async def write_property(self, attr, value, index=None, priority=None):  # noqa: ARG002
        raise PropertyError("writeAccessDenied")


# the source of the write being carried out (services.py sets it per request): the log says who commanded a point
WRITER: contextvars.ContextVar[str | None] = contextvars.ContextVar("writer", default=None)


class _Commanded:
    """Placed before `Commandable`: only presentValue is writable, through the priority array."""

    # set by the device after construction (attributes must start with "_" on bacpypes3 objects); what it
    # returns, when not None, is awaited before the write returns, so before the writer's SimpleACK
    _on_accepted: Callable[[Any], Awaitable | None] | None = None
    _last_priority: int | None = None   # of the write being accepted
    _last_changed = True                # whether it changed the priority array (a BAS repeats its command each scan)

    def _check_command(self, value: Any) -> None:
        """Raise PropertyError for a value the point must not take; the default accepts all."""

    def _writable(self, attr, index=None) -> bool:
        return _property_name(self, attr) == "presentValue" and index is None

    async def write_property(self, attr, value, index=None, priority=None):
        if not self._writable(attr, index):
            raise PropertyError("writeAccessDenied")
        if priority is not None and not 1 <= int(priority) <= 16:  # clause 15.9.1.1.5: 1..16
            raise PropertyError("valueOutOfRange")
        if priority is not None and int(priority) == 6:  # reserved for Minimum On/Off (clause 19.2, Table 19-1)
            raise PropertyError("writeAccessDenied")
        if not isinstance(value, Null):
            self._check_command(value)
        before = to_plain(self.priorityArray)
        self._value_before = self.presentValue
        await super().write_property(attr, value, index, priority)
        self._last_priority = 16 if priority is None else int(priority)
        self._last_written = None if isinstance(value, Null) else value    # None: relinquished
        self._last_changed = to_plain(self.priorityArray) != before
        if self._on_accepted is not None:
            pending = self._on_accepted(self.presentValue)
            if pending is not None:
                await pending


def why_refused(obj: Any, code: str, value: Any, priority: int | None) -> str:
    """Why a network write of `value` (decoded, or None when it would not decode) to a point's presentValue
    got the error `code`, for the operator's log: a BAS programmed against the point wrongly."""
    if not isinstance(obj, _Commanded):
        return "the point is read-only: the gateway publishes it"
    if priority is not None and not 1 <= int(priority) <= 16:
        return f"priority {priority} is not 1..16"
    if priority is not None and int(priority) == 6:
        return "priority 6 is reserved for minimum on/off time"
    if code == "invalidDataType" or value is None:
        return f"the point takes {'a Real' if isinstance(obj, CommandableAnalogValue) else 'inactive or active'}"
    if isinstance(obj, CommandableAnalogValue):
        number = float(value)
        if not math.isfinite(number):
            # a BAS passes on a failed sensor's NaN as it is: "nan is outside the point's -100000..100000" read as
            # if NaN were a number too large, and sent the technician looking at the scaling, not at the sensor
            shown = "NaN" if math.isnan(number) else f"{number:g}"
            return (f"{shown} is not a number the point can take (a failed sensor's reading?): it takes "
                    f"{obj._low:g}..{obj._high:g} (minPresValue..maxPresValue)")
        if math.isfinite(number) and obj._low <= number <= obj._high and obj._judge is not None:
            judged = obj._judge(number)
            if judged:
                return judged
        return f"{number:g} is outside the point's {obj._low:g}..{obj._high:g} (minPresValue..maxPresValue)"
    return f"{int(value)} is neither inactive (0) nor active (1)"


def read_only(obj: Any) -> None:
    """Make an object the stack built (device, network port) refuse every network write."""
    if not isinstance(obj, _ReadOnly):
        obj.__class__ = _read_only_class(type(obj))


@functools.cache
def _read_only_class(cls: type) -> type:
    # one class each, not one each start: bacpypes3's metaclass reads every element's type hints (7 ms a class)
    return type(f"ReadOnly{cls.__name__}", (_ReadOnly, cls), {})


def float32(x: float) -> float:
    """x as a BACnet Real carries it: a bound of 999.9 arrives as 999.9000244 and must still pass."""
    return struct.unpack("f", struct.pack("f", x))[0] if math.isfinite(x) else x


def real_as_written(x: float) -> float:
    """A BACnet Real as the meter's display shows it: the shortest decimal that is the same Real. 1690.3 travels as
    the float32 1690.300048828125, and those digits, never measured, went on to the VTN (helper ledger41)."""
    if not math.isfinite(x):
        return x
    exact = float32(x)
    for digits in range(6, 10):     # 9 significant digits always give a float32 back
        shown = float(f"{exact:.{digits}g}")
        if float32(shown) == exact:
            return shown
    return exact


class ReadOnlyAnalogValue(_ReadOnly, AnalogValueObject):
    pass


class ReadOnlyBinaryValue(_ReadOnly, BinaryValueObject):
    pass


class CommandableAnalogValue(_Commanded, Commandable, AnalogValueObject):
    """Commandable AV whose commands must be finite and inside [_low, _high], and not implausible to `_judge`
    (the application's word on a value within them: why it cannot be one, or None)."""

    _low: float = -math.inf
    _high: float = math.inf
    _judge: Callable[[float], str | None] | None = None

    def _check_command(self, value: Any) -> None:
        number = float(value)
        if not math.isfinite(number) or not self._low <= number <= self._high:
            raise PropertyError("valueOutOfRange")
        if self._judge is not None and self._judge(number):
            raise PropertyError("valueOutOfRange")


class CommandableBinaryValue(_Commanded, Commandable, BinaryValueObject):
    """Commandable BV: BinaryPV has two values; an enumeration 2 or 255 is not 'inactive'."""

    def _check_command(self, value: Any) -> None:
        if int(value) not in (0, 1):
            raise PropertyError("valueOutOfRange")
