"""A second BACnet stack: a BAS-like client on its own loopback UDP port (tests, BAS simulator, bench).

    async with BacnetPeer(free_udp_port()) as peer:
        iams = await peer.who_is("127.0.0.1:47808")                # directed Who-Is -> [IAmRequest]
        iams = await peer.who_is_broadcast(47808)                  # Who-Is to 127.255.255.255:47808
        value = await peer.read("127.0.0.1:47808", "analogValue 1", "presentValue")
        rows = await peer.read_multiple("127.0.0.1:47808", [("analogValue 1", ["presentValue", "units"])])
        err = await peer.write("127.0.0.1:47808", "analogValue 1", "presentValue", 12.5, priority=8)
        err = await peer.relinquish("127.0.0.1:47808", "analogValue 1", priority=8)

`read_multiple` keys are (object, property) with the object as in the point table ("analogValue 1");
lookups also accept "analogValue,1" and "analogValue:1".
BACnet errors come back as values, never raised: `read` returns a `PeerError` instead of a value,
`write` returns None on success or a `PeerError` (`.code` is camelCase, e.g. "writeAccessDenied").
Every request is bounded by `timeout` seconds (a timeout is a PeerError with code "timeout").
Loopback stacks must use different ports (bacpypes3 treats 127.x on its own port as itself).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from bacpypes3.apdu import ErrorRejectAbortNack, WhoIsRequest
from bacpypes3.basetypes import ErrorType
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import Null
from bacpypes3.service.device import WhoIsFuture

from .client import (
    camel,
    add_static_route,
    close_stack,
    error_code,
    error_text,
    object_id,
    start_stack,
    to_plain,
)


@dataclass(frozen=True)
class PeerError:
    code: str  # camelCase errorCode, "timeout", or the reject/abort reason
    text: str

    def __bool__(self) -> bool:  # an error is never a truthy "value"
        return False


class Rows(dict):
    """ReadPropertyMultiple results keyed by ("analogValue 1", "presentValue"), forgiving about the
    separator in the object part of a lookup key."""

    @staticmethod
    def _key(key: Any) -> Any:
        if isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], str):
            return (object_id(key[0]).replace(",", " "), key[1])
        return key

    def __getitem__(self, key: Any) -> Any:
        return super().__getitem__(self._key(key))

    def __contains__(self, key: object) -> bool:
        return super().__contains__(self._key(key))

    def get(self, key: Any, default: Any = None) -> Any:
        return super().get(self._key(key), default)


def _as_error(err: BaseException) -> PeerError:
    if isinstance(err, asyncio.TimeoutError):
        return PeerError("timeout", "no answer within the timeout")
    return PeerError(error_code(err) or error_text(err), error_text(err))


class BacnetPeer:
    def __init__(self, port: int, *, device_id: int = 4000001, timeout: float = 5.0,
                 host: str = "127.0.0.1", prefix: int = 8) -> None:
        # prefix: the subnet's, so the broadcast socket bacpypes3 also binds is this host's (loopback: /8)
        self.address = f"{host}/{prefix}:{port}"
        self.device_id = device_id
        self.timeout = timeout
        self.app: Any = None

    async def __aenter__(self) -> "BacnetPeer":
        self.app = await start_stack(self.address, self.device_id, f"test-peer-{self.device_id}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.app is not None:
            await close_stack(self.app)
            self.app = None

    async def _bounded(self, coro) -> Any:
        try:
            async with asyncio.timeout(self.timeout):
                return await coro
        except (ErrorRejectAbortNack, TimeoutError) as err:
            return _as_error(err)

    async def who_is(self, address: str | None = None, low: int | None = None,
                     high: int | None = None, wait: float = 1.0) -> list:
        """I-Am requests received within `wait` s (a directed Who-Is returns as soon as one arrives)."""
        dest = Address(address) if address else None
        return list(await self.app.who_is(low, high, dest, timeout=wait))

    async def who_is_broadcast(self, port: int, low: int | None = None, high: int | None = None,
                               wait: float = 1.0) -> list:
        """Who-Is to the loopback broadcast address 127.255.255.255 on `port`: how a BAS's broadcast
        reaches a device on loopback (bacpypes3's own broadcast only goes to the sender's port).
        Returns every I-Am received within `wait` s."""
        if not hasattr(self.app, "_who_is_futures"):
            self.app._who_is_futures = []
        future = WhoIsFuture(self.app, None, low, high, wait)
        self.app._who_is_futures.append(future)
        request = WhoIsRequest(destination=Address(f"127.255.255.255:{port}"))
        if low is not None:
            request.deviceInstanceRangeLowLimit = low
            request.deviceInstanceRangeHighLimit = high
        self.app.request(request)
        return list(await future.future)

    async def add_route(self, router: str, network: int) -> None:
        await add_static_route(self.app, router, network)

    async def read(self, address: str, obj: str, prop: str, index: int | None = None) -> Any:
        return to_plain(await self._bounded(self.app.read_property(Address(address), object_id(obj), prop, index)))

    async def read_multiple(self, address: str, specs: list[tuple[str, list[str]]]) -> Any:
        """ReadPropertyMultiple; returns {("analogValue 1", "presentValue"): value or PeerError}."""
        flat: list[Any] = []
        for obj, props in specs:
            flat.extend([object_id(obj), props])
        result = await self._bounded(self.app.read_property_multiple(Address(address), flat))
        if isinstance(result, PeerError):
            return result
        out = Rows()
        for objid, prop, _index, value in result:
            key = (to_plain(objid), to_plain(prop))
            if isinstance(value, ErrorType):  # a per-property error inside a good answer
                code = camel(str(value.errorCode))
                out[key] = PeerError(code, f"BACnet error {value.errorClass}/{value.errorCode}")
            elif isinstance(value, ErrorRejectAbortNack):
                out[key] = _as_error(value)
            else:
                out[key] = to_plain(value)
        return out

    async def write(self, address: str, obj: str, prop: str, value: Any,
                    priority: int | None = None) -> PeerError | None:
        result = await self._bounded(
            self.app.write_property(Address(address), object_id(obj), prop, value, None, priority)
        )
        if isinstance(result, PeerError):
            return result
        if isinstance(result, ErrorRejectAbortNack):
            return _as_error(result)
        return None

    async def relinquish(self, address: str, obj: str, priority: int,
                         prop: str = "presentValue") -> PeerError | None:
        return await self.write(address, obj, prop, Null(()), priority)
