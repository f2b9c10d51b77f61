"""A BACnet router written at the byte level, for what bacpypes3's own router never sends: it answers a
request routed through it with a genuine Reject-Message-To-Network or Router-Busy-To-Network NPDU.

It routes to one network with the meter at MAC 2 and answers, per `answer`:
  "meter"       ReadProperty (or ReadPropertyMultiple) of units with kilowatts, of statusFlags with all clear, of
                reliability with noFaultDetected, of anything else with a Real `value` (as the meter would, through
                the router)
  "meter-rp"    the same for ReadProperty only, leaving ReadPropertyMultiple unanswered, and a Real for the device's
                protocolServicesSupported (an old meter, against the standard)
  "reject:<n>"  Reject-Message-To-Network with reason n for the request's DNET
  "reject:<n>:<net>"  the same, naming network <net> instead (a reject about someone else's request)
  "busy"        Router-Busy-To-Network for the request's DNET
  "busy-all"    Router-Busy-To-Network without a list (every network it serves)
  "silent"      nothing
Who-Is-Router-To-Network for its network is answered with I-Am-Router-To-Network in every mode.
"""
from __future__ import annotations

import asyncio
import struct


def bvlc(npdu: bytes) -> bytes:
    return bytes([0x81, 0x0A]) + struct.pack(">H", len(npdu) + 4) + npdu


class RawRouter(asyncio.DatagramProtocol):
    def __init__(self, network: int = 12345, answer: str = "meter", value: float = 42.5) -> None:
        self.network, self.answer, self.value = network, answer, value
        self.requests = 0  # routed confirmed requests received, whatever the answer
        self.transport: asyncio.DatagramTransport | None = None

    @property
    def address(self) -> str:
        host, port = self.transport.get_extra_info("sockname")[:2]
        return f"{host}:{port}"

    async def __aenter__(self) -> "RawRouter":
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.transport.close()
        await asyncio.sleep(0)

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        if len(data) < 6 or data[0] != 0x81 or data[1] not in (0x0A, 0x0B) or data[4] != 0x01:
            return
        control, i, dnet, dadr = data[5], 6, None, b""
        if control & 0x20:  # DNET, DLEN, DADR
            dnet, dlen = struct.unpack(">HB", data[i:i + 3])
            dadr, i = data[i + 3:i + 3 + dlen], i + 3 + dlen
        if control & 0x08:  # SNET, SLEN, SADR
            i += 3 + data[i + 2]
        if control & 0x20:  # hop count
            i += 1
        if control & 0x80:  # network layer message
            asked = data[i + 1:i + 3]
            if data[i] == 0x00 and asked in (b"", struct.pack(">H", self.network)):
                self._send(bytes([0x01, 0x80, 0x01]) + struct.pack(">H", self.network), addr)
            return
        apdu = data[i:]
        if dnet != self.network or not apdu or apdu[0] >> 4 != 0:  # only confirmed requests
            return
        self.requests += 1
        kind, _, arg = self.answer.partition(":")
        if kind == "reject":
            reason, _, about = arg.partition(":")
            self._send(bytes([0x01, 0x80, 0x03, int(reason)]) + struct.pack(">H", int(about or dnet)), addr)
        elif kind == "busy":
            self._send(bytes([0x01, 0x80, 0x04]) + struct.pack(">H", dnet), addr)
        elif kind == "busy-all":
            self._send(bytes([0x01, 0x80, 0x04]), addr)
        elif kind in ("meter", "meter-rp") and apdu[3] == 0x0C:  # ReadProperty: echo object and property, add the value
            prop = apdu[10] if apdu[9] == 0x19 else None  # context tag 1, one octet
            ack = bytes([0x30, apdu[2], 0x0C]) + apdu[4:] + b"\x3e" + self._value_of(prop) + b"\x3f"
            self._send(bytes([0x01, 0x08]) + struct.pack(">HB", self.network, len(dadr)) + dadr + ack, addr)
        elif kind == "meter" and apdu[3] == 0x0E and apdu[9] == 0x1E:  # ReadPropertyMultiple of one object
            props = [apdu[j + 1] for j in range(10, len(apdu) - 1, 2) if apdu[j] == 0x09]  # context tag 0, one octet
            results = b"".join(bytes([0x29, p, 0x4E]) + self._value_of(p) + b"\x4f" for p in props)
            ack = bytes([0x30, apdu[2], 0x0E]) + apdu[4:10] + results + b"\x1f"
            self._send(bytes([0x01, 0x08]) + struct.pack(">HB", self.network, len(dadr)) + dadr + ack, addr)

    def _value_of(self, prop: int | None) -> bytes:
        return {117: b"\x91\x30",          # units: Enumerated kilowatts (48)
                111: b"\x82\x04\x00",      # statusFlags: BitString, four bits clear
                103: b"\x91\x00",          # reliability: noFaultDetected
                }.get(prop, b"\x44" + struct.pack(">f", self.value))

    def _send(self, npdu: bytes, addr) -> None:
        self.transport.sendto(bvlc(npdu), addr)
