"""Which request came in a BVLL Forwarded-NPDU that the configured BBMD did not send, and who sent it.

A Forwarded-NPDU (Annex J.2.5) carries the B/IP address of the station a BBMD heard a broadcast from, and
bacpypes3 makes that originating-address field the request's source. The field is whatever the datagram's sender
wrote in it: one ordinary UDP datagram from any host and port, claiming the BAS's address, passed
`bacnet.write_from` (a WriteProperty of ADR-Opt-Out was taken). A BBMD forwards broadcasts to its foreign devices;
it never forwards a confirmed request sent to one station. So a forwarded source is believed only from the
configured `bacnet.bbmd_address` (bacpypes3 already drops a Forwarded-NPDU from anyone else on a foreign device;
without a BBMD it took them all). services.py asks `untrusted_forwarder()` before it asks `bacnet.write_from`;
what a forwarded request may do otherwise (read, Who-Is) is unchanged.
"""
from __future__ import annotations

import contextvars
import ipaddress
import logging
from typing import Any

from bacpypes3.ipv4.bvll import ForwardedNPDU
from bacpypes3.ipv4.service import BVLLServiceAccessPoint
from bacpypes3.pdu import IPv4Address

log = logging.getLogger(__name__)

# per incoming datagram (bacpypes3 handles each in its own task, and the tasks it starts inherit this): the UDP
# sender of a Forwarded-NPDU that did not come from the configured BBMD
_untrusted: contextvars.ContextVar[Any] = contextvars.ContextVar("untrusted_forwarder", default=None)


def untrusted_forwarder() -> Any:
    """The B/IP address that sent the request being handled in a Forwarded-NPDU, when that is not
    `bacnet.bbmd_address`; None for any other request."""
    return _untrusted.get()


def note_forwarders(app: Any, bbmd_address: str = "", own_network: str = "") -> None:
    """Make the B/IP link layers of the application BAC0 built say which requests `untrusted_forwarder` names.
    `own_network`: the device's "ip/prefix", whose broadcast address is no origin either."""
    bbmd = IPv4Address(bbmd_address) if bbmd_address else None
    broadcast = None
    try:
        net = ipaddress.IPv4Interface(own_network).network if own_network else None
    except ValueError:      # not "ip/prefix": no network to know the broadcast address of
        net = None
    if net is not None and net.prefixlen < 31:
        broadcast = net.broadcast_address
    for link in app.link_layers.values():
        if isinstance(link, BVLLServiceAccessPoint):
            if not getattr(link, "_notes_forwarders", False):
                # BAC0 builds the link layer itself, with no way to pass a class of our own
                link.__class__ = _noting(type(link))
            link._trusted_forwarder = bbmd
            link._own_broadcast = broadcast


_NOTING: dict[type, type] = {}


def _one_station(address: Any, own_broadcast: Any = None) -> bool:
    """Whether a B/IP address (bacpypes3's IPv4Address) can be one station's: not multicast, 255.255.255.255, 0.0.0.0
    or the device's own network's broadcast address (192.168.1.255 on a /24: every station on the BAS LAN)."""
    mac = bytes(getattr(address, "addrAddr", None) or b"")
    if len(mac) != 6:
        return False
    ip = ipaddress.IPv4Address(mac[:4])
    return not (ip.is_multicast or ip.is_unspecified or ip == ipaddress.IPv4Address("255.255.255.255")
                or ip == own_broadcast)


def _noting(cls: type) -> type:
    # a subclass of the link layer's own class, not a mix-in: Python refuses the __class__ swap to a class with two
    # bases here (instance layout); one per kind of link layer, not one per start
    if cls not in _NOTING:
        class Noting(cls):  # type: ignore[valid-type,misc]
            _notes_forwarders = True
            _trusted_forwarder: Any = None
            _own_broadcast: Any = None

            async def confirmation(self, lpdu: Any) -> None:
                trusted = self._trusted_forwarder
                if isinstance(lpdu, ForwardedNPDU) and not _one_station(lpdu.bvlciAddress, self._own_broadcast):
                    # no station sends from a broadcast or multicast address: answered, or subscribed to COV, that
                    # "origin" had the device send to every station there is (off the box, from a test on loopback)
                    log.debug("Forwarded-NPDU from %s claiming origin %s dropped", lpdu.pduSource, lpdu.bvlciAddress)
                    return
                if not isinstance(lpdu, ForwardedNPDU) or (trusted is not None and lpdu.pduSource == trusted):
                    await super().confirmation(lpdu)
                    return
                token = _untrusted.set(lpdu.pduSource)
                try:
                    await super().confirmation(lpdu)
                finally:
                    _untrusted.reset(token)

        Noting.__name__ = Noting.__qualname__ = f"Gateway{cls.__name__}"
        _NOTING[cls] = Noting
    return _NOTING[cls]
