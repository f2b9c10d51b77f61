"""Small bacpypes3 helpers for the client side: a bare stack, routes, and errors as text.

Used by the meter client, the meter simulator, the CLI's one-shot meter read and the tests' peer.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any, Callable

from bacpypes3.apdu import AbortPDU, ErrorPDU, ErrorRejectAbortNack, RejectPDU
from bacpypes3.app import Application
from bacpypes3.constructeddata import Choice
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import BitString, Enumerated, Null, ObjectIdentifier

from . import static_lookup

log = logging.getLogger(__name__)

# Errors a bacpypes3 request can raise. ErrorRejectAbortNack derives from BaseException, so
# `except Exception` alone lets a BACnet error or an APDU timeout escape.
BACNET_ERRORS: tuple[type[BaseException], ...] = (ErrorRejectAbortNack, Exception)

# The largest APDU a BACnet/IP device takes (max-APDU-length-accepted code 5, the most an Ethernet frame carries):
# what B/IP devices say, and the I-Am a BAS sizes its requests by. bacpypes3 (and BAC0 on it) say 1024 unless told.
BIP_MAX_APDU = 1476


def answers_withdrawn_request(app: Application, apdu: Any) -> bool:
    """Whether `apdu` answers a request `app` gave up on (its timeout cancelled the future). bacpypes3 unlists such a
    request only in a call_soon callback; an answer landing in between made it set a result on the cancelled future
    and log InvalidStateError with a traceback. It answers a withdrawn question: the caller drops it."""
    return any(request.apduInvokeID == apdu.apduInvokeID and future.done()
               for request, future in app._requests.get(apdu.pduSource, ()))


class ClientApplication(Application):
    """A plain bacpypes3 application that drops answers to requests it gave up on (a BAS's or a meter read's timeout
    on a loaded box), as the gateway's device does (services.py)."""

    async def confirmation(self, apdu: Any) -> None:
        if not answers_withdrawn_request(self, apdu):
            await super().confirmation(apdu)


async def start_stack(address: str, device_id: int, name: str, vendor_id: int = 999,
                      timeout: float = 15.0) -> Application:
    """A plain bacpypes3 device on `address` ("127.0.0.1/8:47809"), socket bound on return.

    bacpypes3 retries a failed bind forever; after `timeout` s this raises OSError instead. A port taken is found at
    once (ensure_port_free), so the timeout only bounds the bind task's turn: a loop busy with a gateway's start
    beside 2 loaded cores once took over 5 s to give it one."""
    ensure_port_free(address)
    static_lookup.install()
    device = DeviceObject(
        objectIdentifier=("device", device_id),
        objectName=name,
        vendorIdentifier=vendor_id,
        maxApduLengthAccepted=BIP_MAX_APDU,
        segmentationSupported="segmentedBoth",
    )
    port = NetworkPortObject(address, objectIdentifier=("network-port", 1), objectName="NetworkPort-1")
    app = ClientApplication.from_object_list([device, port])
    try:
        async with asyncio.timeout(timeout):
            await wait_bound(app)
    except TimeoutError:
        app.close()
        raise OSError(f"could not bind BACnet/IP socket {address} within {timeout:g} s") from None
    return app


def ensure_port_free(address: str) -> None:
    """Raise OSError if the UDP port of `address` ("ip/mask:port") is taken.

    bacpypes3 binds with SO_REUSEPORT, so a second stack on a busy port would silently share (and
    split) the traffic of the first; a probe bind without it fails cleanly instead."""
    ip_mask, sep, port = address.rpartition(":")
    if not sep:
        ip_mask, port = address, "47808"  # BACnet/IP's default port
    ip = ip_mask.partition("/")[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((ip, int(port)))
        except OSError as err:
            raise OSError(err.errno, f"BACnet/IP address {ip}:{port} is not available: {err.strerror}") from None


async def wait_bound(app: Application) -> None:
    """Wait until every UDP link layer of `app` has its socket (binding happens in a task)."""
    for link_layer in app.link_layers.values():
        ready = getattr(getattr(link_layer, "server", None), "_local_transport_ready", None)
        if ready is not None:
            await ready.wait()


async def close_stack(app: Application) -> None:
    stop_transactions(app)
    app.close()
    await asyncio.sleep(0)  # transports close on the next loop turn


def stop_transactions(app: Any) -> None:
    """End the retry timers of requests still in flight (a read of a silent meter). bacpypes3 leaves them
    running when its transports close: the retry then sends on a closed socket, and its task dies with a
    traceback logged as "Task exception was never retrieved"."""
    asap = getattr(app, "asap", None)
    for tr in list(getattr(asap, "clientTransactions", ())) + list(getattr(asap, "serverTransactions", ())):
        tr.stop_timer()
        pending = getattr(tr, "_timer_expired_request", None)
        if pending is not None and not pending.done():
            pending.cancel()


def error_text(err: BaseException) -> str:
    """A BACnet error/reject/abort, or any other exception, as one human-readable phrase."""
    if isinstance(err, ErrorPDU):
        return f"BACnet error {err.errorClass}/{err.errorCode}"
    if isinstance(err, RejectPDU):
        return f"BACnet reject {err.apduAbortRejectReason}"
    if isinstance(err, AbortPDU):
        reason = str(err.apduAbortRejectReason)
        return "no response (APDU timeout)" if reason in ("noResponse", "no-response") else f"BACnet abort {reason}"
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def error_code(err: BaseException) -> str | None:
    """The errorCode (camelCase, e.g. "writeAccessDenied") of a BACnet ErrorPDU, else None."""
    if isinstance(err, ErrorPDU):
        return camel(str(err.errorCode))
    return None


def camel(text: str) -> str:
    """bacpypes3's hyphenated names in camelCase: "write-access-denied" -> "writeAccessDenied"."""
    head, *rest = text.split("-")
    return head + "".join(part.capitalize() for part in rest)


async def add_static_route(app: Application, router: str, network: int) -> None:
    """Reach `network` through the router at `router` ("ip:port") without any broadcast, and only through it."""
    cache = app.nsap.router_info_cache
    pins = cache.__dict__.get("_pins")
    if pins is None:
        # bacpypes3 takes the last router heard for a network: one I-Am-Router-To-Network (or a routed message) from
        # any host on the BACnet network moved the configured meter's reads to that host, for good
        pins = cache._pins = {}
        learn = cache.update_path_info

        async def update_path_info(snet, address, dnets):
            dnets = {dnet for dnet in dnets if pins.get(dnet, address) == address}
            if dnets:
                await learn(snet, address, dnets)

        cache.update_path_info = update_path_info
    pins[network] = Address(router)
    await cache.update_path_info(None, Address(router), {network})


async def forget_route(app: Application, network: int) -> None:
    """Forget how `network` is reached, so the next router to answer for it is learnt. bacpypes3 keeps two records,
    the path and each router's networks; with only the path deleted, the same router's next answer taught it
    nothing new, and every request broadcast Who-Is-Router-To-Network for as long as the process ran."""
    cache = app.nsap.router_info_cache
    await cache.delete_path_info(None, network)
    for (snet, address), networks in list(cache.router_dnets.items()):
        if snet is None and network in networks:
            if networks - {network}:
                await cache.set_router_dnets(None, address, networks - {network})
            else:
                await cache.delete_router_dnets(None, address)


async def ask_router(app: Application, network: int, router: str = "", timeout: float = 3.0) -> bool:
    """Who-Is-Router-To-Network, directed to `router` when given (else broadcast); True if answered."""
    destination = Address(router) if router else None
    try:
        async with asyncio.timeout(timeout):
            # shielded: bacpypes3 ends the request by its own timer (2 s), which set the result of a request our
            # timeout had cancelled in the same loop step when the two were equal: a traceback at every poll
            found = await asyncio.shield(app.nse.who_is_router_to_network(destination=destination, network=network))
    except (TimeoutError, *BACNET_ERRORS):
        return False
    return bool(found)


# Reject-Message-To-Network reasons (ASHRAE 135 clause 6.4.4), in the words a technician uses
REJECT_REASONS = {
    0: "other error",
    1: "not directly connected",  # and it knows no router to that network either
    2: "busy",
    3: "unknown network message type",
    4: "message too long for that network",
    5: "security error",
    6: "addressing error",
}


@dataclass(frozen=True)
class RouterRefusal:
    """A router's network-layer answer instead of the reply: Reject-Message-To-Network (`reason` set)
    or Router-Busy-To-Network (`reason` None)."""

    router: str  # the router's address, as the request went to it ("127.0.0.1:47809")
    networks: tuple[int, ...]  # the networks it refuses; empty: every network that router serves (Router-Busy only)
    reason: int | None = None

    def concerns(self, network: int, route: str | None) -> bool:
        """Whether a read of `network` through the router `route` (None: not known yet) is refused by this.

        A reject answers a message of ours, naming its network. A router busy for "all networks" means the ones it
        serves, and is broadcast: another router's (one to a network the meter is not on) refused every read."""
        if self.reason is not None:
            return network in self.networks
        ours = route is not None and same_station(self.router, route)
        return (ours and not self.networks) or (network in self.networks and (ours or route is None))

    def text(self, network: int) -> str:
        if self.reason is None:
            return (f"router {self.router} is busy and refused the request for network {network} "
                    "(Router-Busy-To-Network)")
        words = REJECT_REASONS.get(self.reason, "unknown reason")
        return f"router {self.router} rejected the request for network {network}: {words} (reason {self.reason})"


def same_station(a: str, b: str) -> bool:
    """Whether two BACnet/IP addresses are one ("192.168.1.5:47808" and "192.168.1.5", as bacpypes3 writes it). Only
    literal addresses are compared so: a host name (meter.router may be one) would be looked up on the event loop."""
    def literal(x: str) -> str:
        host, _, port = x.rpartition(":") if ":" in x else (x, "", "47808")
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return x
        return f"{host}:{port or 47808}"
    return literal(a) == literal(b)


def on_router_refusal(app: Application, listener: Callable[[RouterRefusal], None]) -> Callable[[], None]:
    """Call `listener` for every Reject-Message-To-Network and Router-Busy-To-Network `app` receives;
    returns the function that stops it.

    bacpypes3's network service element only debug-logs these two messages and the pending request
    waits for its APDU timeout. The element dispatches each network message to the method named
    after its class (`getattr(nse, "RejectMessageToNetwork")`), so methods set on the instance receive
    them; bacpypes3's own ones still run first."""
    nse = app.nse
    listeners: list[Callable[[RouterRefusal], None]] | None = getattr(nse, "_refusal_listeners", None)
    if listeners is None:
        listeners = nse._refusal_listeners = []
        reject, busy = nse.RejectMessageToNetwork, nse.RouterBusyToNetwork

        async def on_reject(adapter: Any, npdu: Any) -> None:
            await reject(adapter, npdu)
            _tell(listeners, RouterRefusal(str(npdu.pduSource), (npdu.rmtnDNET,), npdu.rmtnRejectionReason))

        async def on_busy(adapter: Any, npdu: Any) -> None:
            await busy(adapter, npdu)
            _tell(listeners, RouterRefusal(str(npdu.pduSource), tuple(npdu.rbtnNetworkList)))

        nse.RejectMessageToNetwork, nse.RouterBusyToNetwork = on_reject, on_busy
    listeners.append(listener)

    def stop() -> None:
        if listener in listeners:
            listeners.remove(listener)

    return stop


def _tell(listeners: list[Callable[[RouterRefusal], None]], refusal: RouterRefusal) -> None:
    for listener in list(listeners):
        try:
            listener(refusal)
        except Exception:  # a listener's bug must not break the network layer
            log.exception("router refusal listener failed")


def object_id(text: str) -> str:
    """"analogInput 2", "analogInput:2" or "analogInput,2" -> the "type,instance" form bacpypes3 parses."""
    kind, _, instance = text.strip().replace(":", " ").replace(",", " ").partition(" ")
    return f"{kind},{instance.strip()}"


def network_of(address: str) -> int | None:
    """12345 for "12345:2", None for a local address."""
    net, sep, _ = address.partition(":")
    if sep and net.isdigit() and "." not in net:
        return int(net)
    return None


def to_plain(value: Any) -> Any:
    """A bacpypes3 value as plain Python: Real -> float, enumerations -> camelCase names
    ("kilowatts", "active", "communicationFailure"), bit strings -> lists of 0/1, priority arrays ->
    lists with None for empty slots, object identifiers -> "analogValue 1", Null -> None."""
    if value is None or isinstance(value, Null):
        return None
    if isinstance(value, Choice):  # PriorityValue, OptionalUnsigned, ...
        choice = getattr(value, "_choice", None)
        return None if choice in (None, "null") else to_plain(getattr(value, choice))
    if isinstance(value, ObjectIdentifier):
        return f"{camel(str(value[0]))} {value[1]}"
    if isinstance(value, Enumerated):
        # a bare Enumerated (e.g. inside a priority array) has no names: give the number
        return int(value) if type(value) is Enumerated else camel(str(value))
    if isinstance(value, BitString):
        return [int(bit) for bit in value]
    if isinstance(value, bool):
        return value
    for kind in (float, int, str):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    return value
