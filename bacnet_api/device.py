"""The gateway as a BACnet/IP device: one bacpypes3 object per point of the point table.

BAC0 starts the stack (device object, network port, Who-Is/ReadProperty/ReadPropertyMultiple/
WriteProperty services); the point objects are built directly from bacpypes3 classes so several
devices can live in one process (BAC0's ObjectFactory keeps a class-level registry). Nothing outside
this package touches bacpypes3 objects: the application reads and writes points by name.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from typing import Any, Awaitable, Callable, Iterable, Sequence

from bacpypes3.apdu import WhoIsRequest
from bacpypes3.appservice import AWAIT_RESPONSE
from bacpypes3.basetypes import BinaryPV, EngineeringUnits, Reliability
from bacpypes3.errors import ExecutionError
from bacpypes3.local.cmd import Commandable
from bacpypes3.pdu import GlobalBroadcast
from bacpypes3.primitivedata import Real

from . import cov_keep, static_lookup
from .bac0_notes import find_callers_by_frame
from .bug_guard import BugGuard
from .client import BIP_MAX_APDU, ensure_port_free, stop_transactions, to_plain
from .objects import (
    WRITER,
    CommandableAnalogValue,
    CommandableBinaryValue,
    ReadOnlyAnalogValue,
    ReadOnlyBinaryValue,
    float32,
    read_only,
)
from .foreign import RegistrationWatch, foreign_layer, take_every_answer
from .own_address import OwnAddressWatch
from .points import METER_POWER, POINTS, Point
from .services import harden
from .write_access import WriteAccess

log = logging.getLogger(__name__)

_NO_FAULT = Reliability("noFaultDetected")
# Why a point is in fault, as a BAS reads it in the reliability property.
_NO_VALUE_YET = Reliability("unreliableOther")
_UNUSABLE = Reliability("unreliableOther")
_SET_FAULT = {METER_POWER: Reliability("communicationFailure")}
_START_TIMEOUT = 10.0
# at a stop, how long requests being answered get to be answered: a write whose ack waits for the disk waits at
# most 0.5 s (the application's bound)
ANSWER_WAIT_S = 1.0


def _plain(point: Point, value: Any) -> float | bool:
    """A bacpypes3 presentValue as the application sees it."""
    if point.kind == "binaryValue":
        return int(value) == 1  # BinaryPV: inactive 0, active 1
    return float(value)


def _shown(point: Point, value: Any) -> str:
    """A command as a BACnet tool shows it: active / inactive, or the number."""
    plain = _plain(point, value)
    return ("active" if plain else "inactive") if point.kind == "binaryValue" else f"{plain:g}"


def _what_was_written(point: Point, obj: Any, writer: str | None) -> str:
    """The write as the writer made it, and what the point holds after it when a higher priority decides: "B wrote
    inactive at 9" said as "ADR-Opt-Out = True (priority 9, from B)" blamed B for A's opt-out at 7."""
    written, priority = obj._last_written, obj._last_priority
    in_effect = obj.currentCommandPriority
    at = None if in_effect is None or in_effect.null is not None else int(in_effect.unsigned)
    if at == priority:
        return f"{point.name} = {_shown(point, written)} (priority {at}{f', from {writer}' if writer else ''})"
    what = "relinquished" if written is None else _shown(point, written)
    held = _shown(point, obj.presentValue)
    if at is not None:
        now = f"now {held} at priority {at}" if held != _shown(point, obj._value_before) else \
            f"{held} at priority {at} stays in effect"
    elif point.kind == "analogValue":
        now = "no command left: relinquished"
    else:
        now = f"no command left: {_shown(point, obj.relinquishDefault)} (its relinquish default)"
    return f"{point.name} {what} at priority {priority}{f' (from {writer})' if writer else ''}; {now}"


def _wire(point: Point, value: float | bool) -> Any:
    if point.kind == "binaryValue":
        # bool, 0/1 and numpy booleans; anything else is a caller bug
        if isinstance(value, (str, bytes)) or value not in (0, 1):
            raise TypeError(f"{point.name} is binary, got {value!r}")
        return "active" if value else "inactive"
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{point.name} must be finite, got {value!r}")
    return number


_BAC0_TASKS = "BAC0_Root.BAC0.tasks."


def _route_bac0_logging() -> None:
    """BAC0 gives each of its loggers its own stdout and ~/.BAC0 file handlers, a DEBUG level and
    propagate=False, so its INFO chatter bypasses the operator log's format and levels. Hand its
    records to the normal logging tree instead, where the "BAC0_Root" logger's level decides."""
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if not name.startswith("BAC0_Root.") or not isinstance(logger, logging.Logger):
            continue
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        # its task manager dates its tasks' runs by the wall clock: after a step ahead (NTP) it said "High latency
        # ... Avg latency: 3584 sec" in pairs of WARNINGs each minute for minutes, of a loop that was on time
        level = logging.ERROR if name.startswith(_BAC0_TASKS) else logging.NOTSET
        if logger.level != level:   # setLevel clears every logger's cache: 3 ms each in a process of many loggers
            logger.setLevel(level)
        logger.propagate = True


class GatewayDevice:
    def __init__(
        self,
        *,
        address: str,
        device_id: int,
        device_name: str,
        input_min: float = -100000.0,
        input_max: float = 100000.0,
        points: Iterable[Point] = POINTS,
        bbmd_address: str = "",
        bbmd_ttl: int = 900,
        dcc_password: str = "",
        write_from: Sequence[str] = (),
    ) -> None:
        if not 0 <= device_id <= 4194302:
            raise ValueError(f"device_id must be 0..4194302, got {device_id}")
        if not input_min < input_max:
            raise ValueError("input_min must be below input_max")
        self.address = address
        self.device_id = device_id
        self.device_name = device_name
        self.input_min = float(input_min)
        self.input_max = float(input_max)
        # "ip[:port]" of a BBMD to register with as a foreign device (a BAS on another IP subnet)
        self.bbmd_address = bbmd_address
        self.bbmd_ttl = int(bbmd_ttl)
        self._foreign: RegistrationWatch | None = None
        # DeviceCommunicationControl's password; empty, a BACnet client can only enable (services.py)
        self.dcc_password = dcc_password
        # who may write (bacnet.write_from; empty: anyone); its refusals count across restarts of the device
        self.write_access = WriteAccess(write_from)
        # whether the machine still has bacnet.address while the device runs (a lease that changed, a link down)
        self.own_address = OwnAddressWatch(address, on_back=self._back)
        self._points = {p.name: p for p in points}
        self._objects: dict[str, Any] = {}
        self._no_value_yet: set[str] = set()
        self._faulted: set[str] = set()
        self._unusable: set[str] = set()   # faulted on an answer that was no use, not on a missing one
        self._told: dict[str, Reliability] = {}    # faulted with the source's own reliability
        # by point, each with its guard: a BAS writes every few seconds, and a broken listener's traceback each time
        self._callbacks: dict[str, list[tuple[Callable[[Any], Any], BugGuard]]] = {}
        self._judges: dict[str, Callable[[float], str | None]] = {}    # judge_writes
        self._written: dict[str, set[int]] = {}   # priorities written or relinquished over the network
        self._bacnet: Any = None
        self._serving = False
        self._started = 0.0

    # ----- life cycle

    async def start(self, serve: bool = True) -> None:
        """Bind the socket and build the objects. `serve` False: requests wait until serve(), for a caller that sets
        the device up further (databaseRevision, restored commands, on_write) before a BAS may see it."""
        if self._bacnet is not None:
            raise RuntimeError("device already started")
        import BAC0  # heavy import, only when a device actually starts

        find_callers_by_frame()
        static_lookup.install()
        _route_bac0_logging()
        self._started = time.monotonic()
        ensure_port_free(self.address)
        foreign = dict(bbmdAddress=self.bbmd_address, bbmdTTL=self.bbmd_ttl) if self.bbmd_address else {}
        # The socket binds in a task of the stack's, at the first await below: everything up to it is done before a
        # datagram can arrive, and harden() makes what comes before serve() wait (services.py)
        self._bacnet = BAC0.start(
            ip=self.address, deviceId=self.device_id, localObjName=self.device_name, ping=False, **foreign
        )
        _end_bac0_i_am(self._bacnet)
        _end_bac0_cleanup(self._bacnet)
        if self.bbmd_address and (layer := foreign_layer(self.app)) is not None:
            take_every_answer(layer)    # before its first request goes: the retry that request schedules takes it
            self._foreign = RegistrationWatch(layer, self.bbmd_address, self.bbmd_ttl)
        try:
            # BAC0 leaves bacpypes3's 1024 (its own max-APDU setting goes nowhere) while the stack takes requests of
            # 1476 octets whole: said here, before the network port's apduLength is made from it, it is what the
            # I-Am, the device object and the gateway's own requests (the meter's answers) say
            self.app.device_object.maxApduLengthAccepted = BIP_MAX_APDU
            ip_mask, _, port = self.address.rpartition(":")
            harden(self.app, dcc_password=self.dcc_password, write_access=self.write_access,
                   own_address=f"{ip_mask.partition('/')[0]}:{port}", bbmd_address=self.bbmd_address,
                   own_network=ip_mask, local_trouble=self.own_address.local_trouble)
            for obj in list(self.app.objectIdentifier.values()):  # the device and network port
                read_only(obj)
            for point in self._points.values():
                obj = self._build(point)
                self.app.add_object(obj)
                self._objects[point.name] = obj
                if point.starts_in_fault:
                    self._no_value_yet.add(point.name)
            # asyncio.timeout, not wait_for: on 3.11 wait_for drops a cancellation that arrives as the
            # wait ends, and a SIGTERM during start-up was lost (everywhere else for the same reason)
            async with asyncio.timeout(_START_TIMEOUT):
                await self._socket_ready()
        except BaseException:
            await self.stop()
            raise
        if serve:
            self.serve()

    def serve(self) -> None:
        """Answer requests (those that came since the start first) and say the device is here."""
        if self._serving:
            return
        self._serving = True
        held = self.app.serve()
        log.info(
            "BACnet device %s (%d) answering on %s with %d points in %.2f s%s",
            self.device_name, self.device_id, self.address, len(self._objects),
            time.monotonic() - self._started,
            f" ({held} request(s) that came during the start answered now)" if held else "",
        )
        if self._foreign is not None:
            self._foreign.start(on_registered=self._announce)   # a broadcast before it would be dropped
        else:
            self._announce()
        self.own_address.start()
        if not self.write_access.open:
            log.info("BACnet writes (WriteProperty, WritePropertyMultiple, DeviceCommunicationControl disable) taken "
                     "only from %s (bacnet.write_from); reads, COV, Who-Is and DeviceCommunicationControl enable from "
                     "anyone", ", ".join(self.write_access.entries))

    def _announce(self) -> None:
        """Say the device is here: at start, and through a BBMD each time the registration holds (again).

        A BAS that bound the device before (an address from DHCP that changed, a restart it missed) learns it from
        the I-Am without a Who-Is of its own. A device answering as this one already (a copied configuration)
        answers the Who-Is, and is named (services.py)."""
        if self._bacnet is None or not self._serving or self.communication()["mode"] != "enable":
            return      # DeviceCommunicationControl: an I-Am goes out only in answer to a Who-Is
        self.app.request(WhoIsRequest(deviceInstanceRangeLowLimit=self.device_id,
                                      deviceInstanceRangeHighLimit=self.device_id, destination=GlobalBroadcast()))
        self.app.i_am()

    def _back(self) -> None:
        """The machine has bacnet.address (and its link) again: the I-Am a start or the outage sent went nowhere,
        and the next notification kept for a subscriber meanwhile is news again."""
        if self._bacnet is None:
            return
        self.app._cov_kept_for = None
        self._announce()

    async def _socket_ready(self) -> None:
        # BAC0 binds the UDP socket in a task; its context manager would add a fixed 1 s sleep.
        for link_layer in self.app.link_layers.values():
            server = getattr(link_layer, "server", None)
            ready = getattr(server, "_local_transport_ready", None)
            if ready is not None:
                await ready.wait()

    async def stop(self) -> None:
        await self.own_address.stop()
        if self._foreign is not None:
            await self._foreign.stop()
            self._foreign = None
        bacnet, self._bacnet = self._bacnet, None
        if bacnet is None:
            return
        self._objects.clear()
        self._written.clear()
        self._no_value_yet.clear()  # a restarted device starts from the point table again
        self._faulted.clear()
        self._unusable.clear()
        self._told.clear()
        self._serving = False
        app = getattr(getattr(bacnet, "this_application", None), "app", None)
        drop_held = getattr(app, "drop_held", None)
        if drop_held is not None:
            drop_held()
        end = getattr(app, "end_communication_control", None)
        if end is not None:  # a restarted device initiates again; no time-out fires on a closed stack
            end()
        if app is not None:
            await _let_answers_go(app, ANSWER_WAIT_S)
            stop_transactions(app)
        await _end_own_tasks(bacnet)
        await bacnet._disconnect()
        # let the transports' close callbacks run so the port is free on return
        await asyncio.sleep(0)

    @property
    def app(self):
        if self._bacnet is None:
            raise RuntimeError("device not started")
        return self._bacnet.this_application.app

    @property
    def input_bounds(self) -> tuple[float, float]:
        """input-power-meter's bounds as a written Real is compared with them (float32)."""
        return float32(self.input_min), float32(self.input_max)

    @property
    def running(self) -> bool:
        return self._bacnet is not None

    def communication(self) -> dict:
        """DeviceCommunicationControl's state: {"mode": "enable"}, or while a BACnet client has disabled
        initiation {"mode": "disableInitiation", "by": address, "since", "until": ISO times or None,
        "minutes"}."""
        if self._bacnet is None:
            return {"mode": "enable"}
        return self.app.communication_control()

    def twins(self) -> list[dict]:
        """Other devices heard answering as this device instance (a configuration copied to a second box):
        [{"address", "last_heard"}], for as long as the device runs."""
        return [] if self._bacnet is None else self.app.twins()

    def foreign_fault(self) -> str | None:
        """The BBMD refusing or not answering the foreign-device registration, while the log says so."""
        return self._foreign.fault() if self._foreign is not None else None

    def cov_refusing(self) -> str | None:
        """A spell of SubscribeCOV refusals the log said began and has not said ended, or None."""
        return self.app.cov_refusing() if self._bacnet is not None else None

    def cov_subscriptions(self) -> dict:
        """The COV subscriptions it holds, for an operator: cov_keep.summary()'s {"count", "subscribers": [{"address",
        "objects", "shortest_remaining_seconds"}]}."""
        return cov_keep.summary(self)

    def foreign_device(self) -> dict | None:
        """The registration with `bacnet.bbmd_address`: {"bbmd", "ttl_seconds", "registered", "why_not"}; None
        without a BBMD."""
        return self._foreign.status() if self._foreign is not None else None

    def write_refusals(self) -> dict:
        """{"write_from": [...], "writes_refused": count, "last_write_refused": {"by", "at", "what"} or None}."""
        return self.write_access.status()

    # ----- objects

    def _build(self, point: Point) -> Any:
        common: dict[str, Any] = dict(
            objectIdentifier=(point.kind, point.instance),
            objectName=point.name,
            description=point.description,
            eventState="normal",
            outOfService=False,
            reliability=_NO_VALUE_YET if point.starts_in_fault else _NO_FAULT,
        )
        initial = _wire(point, point.initial)
        if point.kind == "analogValue":
            common["units"] = EngineeringUnits(point.units or "noUnits")
            common["covIncrement"] = 0.0
        if point.texts is not None:   # optional (clause 12.7); set, they are in propertyList too
            common["inactiveText"], common["activeText"] = point.texts
        if point.access == "commandable":
            if point.kind == "analogValue":
                # served too (clause 12.4), so a commissioning tool reads the range a write must fall in
                low, high = self.input_bounds
                if point.lowest is not None:
                    low = float32(point.lowest)
                obj = CommandableAnalogValue(presentValue=initial, relinquishDefault=initial, minPresValue=low,
                                             maxPresValue=high, **common)
                obj._low, obj._high = low, high
                obj._judge = self._judges.get(point.name)
            else:
                obj = CommandableBinaryValue(presentValue=initial, relinquishDefault=initial, **common)
            obj._on_accepted = lambda value, p=point: self._accepted(p, value)
        elif point.access == "read-only":
            cls = ReadOnlyAnalogValue if point.kind == "analogValue" else ReadOnlyBinaryValue
            obj = cls(presentValue=initial, **common)
        else:
            raise ValueError(f"{point.name}: access {point.access!r} is not supported")
        return obj

    def point_objects(self) -> list[Any]:
        """The point objects as `start` builds them, in point-table order, built afresh and served nowhere:
        a description of the device written offline (the EDE file) reads them, so it says what the
        device serves."""
        return [self._build(point) for point in self._points.values()]

    def _object(self, name: str) -> Any:
        try:
            return self._objects[name]
        except KeyError:
            if name in self._points:
                raise RuntimeError("device not started") from None
            raise KeyError(f"no point named {name!r}") from None

    def _accepted(self, point: Point, raw: Any) -> Awaitable | None:
        value: float | bool | None = _plain(point, raw)
        obj = self._objects.get(point.name)
        if obj is None:
            # its handling had begun as the device stopped (a request that comes later is dropped unanswered, see
            # drop_held): what keeps a command is stopping, so the writer is told it failed, without a traceback
            log.log(logging.INFO if point.kind == "binaryValue" else logging.DEBUG,
                    "BACnet write of %s refused: the device is stopping", point.name)
            raise ExecutionError("device", "operationalProblem")
        self._written.setdefault(point.name, set()).add(obj._last_priority)
        priority = obj.currentCommandPriority
        if point.kind == "analogValue" and (priority is None or priority.null is not None):
            # nobody commands it any more: relinquishDefault is a placeholder, not a measurement
            value = None
        # a BAS writes its kW every few seconds (debug); a command on a binary point is an event, unless it is the
        # command the point already held (a BAS writing its switch each scan)
        level = logging.INFO if point.kind == "binaryValue" and obj._last_changed else logging.DEBUG
        # who and at what priority: an opt-out is a matter between the site and its utility, asked about later
        writer = WRITER.get()
        log.log(level, "BACnet write accepted: %s", _what_was_written(point, obj, writer))
        pending = []
        for callback, bug in self._callbacks.get(point.name, ()):
            try:
                result = callback(value)
            except Exception as err:  # noqa: BLE001 - a broken listener must not turn an accepted write into an error
                bug.failed(err)
                continue
            if inspect.isawaitable(result):
                pending.append((result, bug))   # it works when this does
            else:
                bug.worked()
        return self._acknowledge_after(pending) if pending else None

    @staticmethod
    async def _acknowledge_after(pending: list[tuple[Awaitable, BugGuard]]) -> None:
        for result, bug in pending:
            with bug.guard():   # as a callback's own failure: the write was accepted
                await result

    def _update_reliability(self, name: str) -> None:
        if name in self._told:
            reliability = self._told[name]
        elif name in self._faulted:
            reliability = _UNUSABLE if name in self._unusable else _SET_FAULT.get(name, Reliability("unreliableOther"))
        elif name in self._no_value_yet:
            reliability = _NO_VALUE_YET
        else:
            reliability = _NO_FAULT
        self._object(name).reliability = reliability

    def database_identity(self) -> list[str]:
        """Every object's identifier and name: what a BAS caches of the device, and what databaseRevision
        counts the changes of (an object created, deleted or renamed, clause 12.11.35)."""
        return sorted(f"{to_plain(oid)} {obj.objectName}" for oid, obj in self.app.objectIdentifier.items())

    @property
    def database_revision(self) -> int:
        return int(self.app.device_object.databaseRevision)

    @database_revision.setter
    def database_revision(self, revision: int) -> None:
        self.app.device_object.databaseRevision = revision

    # ----- application side

    def set(self, name: str, value: float | bool) -> None:
        """Update presentValue from the application (commandable points: priority 16)."""
        obj = self._object(name)
        wire = _wire(self._points[name], value)
        if name in self._no_value_yet:  # reliability first: a COV subscriber sees both change together
            self._no_value_yet.discard(name)
            self._update_reliability(name)
        obj.presentValue = wire

    def show_kept(self, name: str, value: float | bool) -> None:
        """A value kept from before this start (the last run's): presentValue shows it, and a point that has had no
        value yet stays in fault (reliability unreliableOther) until set() gives it one. A BAS trend that ignores
        statusFlags then draws the last value over a restart, not a dip to 0."""
        self._object(name).presentValue = _wire(self._points[name], value)

    def set_fault(self, name: str, fault: bool, *, unusable: bool = False, reliability: str | None = None) -> None:
        """`unusable`: the source answered, with a value that cannot be used (reliability unreliableOther,
        where a point's own fault reliability says nothing came, e.g. meter-power's communicationFailure).
        `reliability`: the source's own word for its fault (a meter's "overRange"), passed on to the BAS if BACnet
        has it."""
        self._object(name)
        if fault:
            self._faulted.add(name)
        else:
            self._faulted.discard(name)
        if fault and unusable:
            self._unusable.add(name)
        else:
            self._unusable.discard(name)
        self._told.pop(name, None)
        if fault and reliability is not None and reliability != "noFaultDetected":
            try:
                self._told[name] = Reliability(reliability)
            except ValueError:  # a proprietary value or one this stack does not know: unreliableOther
                pass
        self._update_reliability(name)

    def get(self, name: str) -> float | bool:
        return _plain(self._points[name], self._object(name).presentValue)

    def status_flags(self, name: str) -> dict[str, bool]:
        flags = list(self._object(name).statusFlags)
        return {
            "in_alarm": bool(flags[0]),
            "fault": bool(flags[1]),
            "overridden": bool(flags[2]),
            "out_of_service": bool(flags[3]),
        }

    def snapshot(self) -> dict[str, dict]:
        result: dict[str, dict] = {}
        for name, point in self._points.items():
            obj = self._object(name)
            entry: dict[str, Any] = {
                "object": point.object_id,
                "value": self.get(name),
                "units": point.units,
                "access": point.access,
                "description": point.description,     # the dashboard's tooltip on the point's row
                "flags": self.status_flags(name),
                "reliability": to_plain(obj.reliability),  # e.g. "communicationFailure"
            }
            if point.texts is not None:   # what a BAS graphic shows for false / true (inactiveText, activeText)
                entry["texts"] = list(point.texts)
            if point.access == "commandable":
                priority = obj.currentCommandPriority
                entry["priority"] = None if priority is None or priority.null is not None else int(priority.unsigned)
            result[name] = entry
        return result

    def commands(self, name: str) -> dict[int, float | bool]:
        """The commands a commandable point holds, by priority: what a restart must give back."""
        point = self._points[name]
        slots = to_plain(self._object(name).priorityArray)
        return {i + 1: _plain(point, v) for i, v in enumerate(slots) if v is not None}

    def written_priorities(self, name: str) -> set[int]:
        """Priorities of `name` the network wrote or relinquished since the device started."""
        return set(self._written.get(name, ()))

    async def restore_commands(self, name: str, commands: dict[int, float | bool]) -> None:
        """Put commands saved from `commands` back at their priorities, without calling on_write
        listeners (the caller applies the effective value itself)."""
        obj, point = self._object(name), self._points[name]
        for priority, value in sorted(commands.items()):
            wire = _wire(point, value)
            wire = BinaryPV(wire) if point.kind == "binaryValue" else Real(wire)
            await Commandable.write_property(obj, "presentValue", wire, None, int(priority))

    def judge_writes(self, name: str, judge: Callable[[float], str | None]) -> None:
        """Refuse (valueOutOfRange) a write of a commandable analog point within its bounds that `judge` finds
        implausible, saying why it gives in the refusal's line (watts written for kW: a building's power 1,000 times
        what it draws, which the bounds alone took)."""
        self._judges[name] = judge
        if name in self._objects:
            self._objects[name]._judge = judge

    def on_write(self, name: str, callback: Callable[[Any], Awaitable | None]) -> None:
        """Call `callback(value)` after each accepted network write or relinquish of a commandable point,
        with the new effective value; an analog point relinquished at every priority gives None. When the
        callback returns an awaitable, the writer's SimpleACK waits for it (e.g. the command on the disk);
        other requests are answered meanwhile."""
        point = self._points.get(name)
        if point is None:
            raise KeyError(f"no point named {name!r}")
        if point.access != "commandable":
            raise ValueError(f"{name} is read-only from the network; nothing to listen for")
        self._callbacks.setdefault(name, []).append(
            (callback, BugGuard(log, f"{name} write callback", "the BAS's writes are still taken")))

    @property
    def bugs(self) -> list[BugGuard]:
        watch = [self.own_address.bug] + ([self._foreign.bug] if self._foreign is not None else [])
        return [bug for listeners in self._callbacks.values() for _, bug in listeners] + watch


async def _let_answers_go(app: Any, at_most: float) -> None:
    """A stop closed the socket under a request still being answered (an ADR-Opt-Out write whose SimpleACK waits
    for the disk): the BAS got no ack for a command the gateway took, retried it or showed it failed, and bacpypes3
    logged "exception: AttributeError(...)" sending on the closed transport. Those requests are answered first."""
    loop = asyncio.get_running_loop()
    end = loop.time() + at_most
    answering = [t for t in getattr(getattr(app, "asap", None), "serverTransactions", ()) if t.state == AWAIT_RESPONSE]
    while answering and loop.time() < end:
        # a transaction leaves AWAIT_RESPONSE in the step that sends its answer
        await asyncio.sleep(0.01)
        answering = [t for t in answering if t.state == AWAIT_RESPONSE]


def _bac0_i_am(bacnet) -> list[asyncio.Task]:
    """BAC0's start announces the device from a task it keeps no handle to (Lite._i_am); its coroutine's frame
    names the Lite it belongs to."""
    return [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", "") == "Lite._i_am"
            and getattr(getattr(t.get_coro(), "cr_frame", None), "f_locals", {}).get("self") is bacnet]


def _end_bac0_i_am(bacnet) -> None:
    """That task waits for bacpypes3's i_am to become a coroutine function, which it is not: it woke every 10 ms
    for the device's life (7.8 ms of CPU a second on an idle gateway, 0.14 ms without it), and would have said the
    device was here before its objects were. serve() announces it."""
    for task in _bac0_i_am(bacnet):
        task.cancel()


def _end_bac0_cleanup(bacnet) -> None:
    """BAC0's "Cleanup Tasks List" prunes its list of its own recurring tasks each minute, of which the gateway runs
    none (its ping is off). Each run logs four DEBUG lines through BAC0's log(), which calls inspect.stack() before the
    level is asked (bac0_notes.py now makes that cheap; the task still runs for nothing): 60-90 ms of the loop a minute
    before, 1-1.5 ms of CPU a second at rest. Ended at the start; BAC0's stop ends what is left."""
    task = getattr(bacnet, "_cleanup_task", None)
    if task is not None and getattr(task, "aio_task", None) is not None:
        task.stop()


async def _end_own_tasks(bacnet) -> None:
    """A Lite._i_am still pending at a stop (one cancelled at the start and not yet ended): a closed loop reported it
    destroyed while pending."""
    own = _bac0_i_am(bacnet)
    for task in own:
        task.cancel()
    await asyncio.gather(*own, return_exceptions=True)
