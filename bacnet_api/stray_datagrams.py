"""A UDP datagram on the BACnet port that is not BACnet/IP is named with its sender.

bacpypes3 logs each as a bare `unsupported message` (UDPMultiplexer.confirmation), and the flood guard lets one such
line through: it named neither the sender nor what came, so a technician could not find the device (a syslog or
SNMP sender given the wrong port, a scanner, another protocol's broadcast on 47808) that sent it. The line now names
the sender's address and the first octets; what is done with the datagram (nothing) is as before.
"""
from __future__ import annotations

import logging
from typing import Any

from bacpypes3.ipv4.service import UDPMultiplexer

# a peer's doing, as the refusals: in the log's PEER_NOISE, so a sender in a loop gets one line per 10 min
log = logging.getLogger(__name__)

_BVLL_TYPES = (0x01, 0x81)     # Annex H (BACnet tunnelling routers), Annex J (BACnet/IP)


class NamingMultiplexer(UDPMultiplexer):
    async def confirmation(self, pdu: Any) -> None:
        data = bytes(pdu.pduData or b"")
        if data and data[0] not in _BVLL_TYPES:
            log.warning("UDP datagram from %s on the BACnet port is not BACnet/IP (%d octet%s, starting %s): ignored",
                        pdu.pduSource, len(data), "" if len(data) == 1 else "s", data[:8].hex(" "))
            return
        await super().confirmation(pdu)


def name_stray_datagrams(app: Any) -> None:
    """Make the B/IP link layers of the application BAC0 built name the sender of a datagram that is not BACnet/IP."""
    for link in app.link_layers.values():
        mux = getattr(link, "multiplexer", None)
        if type(mux) is UDPMultiplexer:
            # a subclass, not a mix-in: Python refuses the __class__ swap to a mix-in class here (instance layout)
            mux.__class__ = NamingMultiplexer
