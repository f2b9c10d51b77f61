"""Who may write to the gateway's BACnet device: the allowlist `bacnet.write_from`, and the writes refused
(by the list, or a command the point cannot take).

BACnet has no authentication: any device on the BAS network could command input-power-meter (the
forecaster's input) or ADR-Opt-Out (which opts the building out of the utility's events). With the list
set, WriteProperty, WritePropertyMultiple and DeviceCommunicationControl's disables are taken only from
the sources it names (services.py asks `allows`); reads, COV subscriptions, Who-Is and Who-Has stay open.
Empty, everyone may write, as before the list existed.

An entry is a source as bacpypes3 prints a request's source, so a technician can copy it from the log:
- a BACnet/IP station on the gateway's own network (or forwarded by `bacnet.bbmd_address`, the only sender whose
  Forwarded-NPDUs' sources services.py believes): `192.168.10.20` (any UDP port), `192.168.10.20:47809` (that port
  only), or a network `192.168.10.0/24`;
- a station behind a BACnet router, `NET:MAC`: `2001:5` (MS/TP MAC 5), `2001:0x0a0b` (hex), `2001:192.168.5.10`
  or `2001:192.168.5.10:47809` (a BACnet/IP station on network 2001), and `2001:*` for the whole network.
This module needs no bacpypes3: ven.config validates the entries with `parse_entry` at check-config.
"""
from __future__ import annotations

import ipaddress
import logging
import re
import time
from datetime import datetime, timezone
from typing import Any, Iterable

log = logging.getLogger(__name__)

BACNET_IP_PORT = 47808
# one line per source at most this often, the next one counting those left out (as ven.logs.FloodGuard does
# for the DeviceCommunicationControl refusals, but per source: the technician looks for the BAS's address)
LOG_EVERY_SECONDS = 600.0
# sources whose refusals are counted for the log apart: a routed source's NET:MAC is whatever the NPDU says,
# so a sender can make up any number of them; beyond this they share one count and one line per period
MAX_SOURCES_LOGGED = 100
_OTHERS = "(other sources)"
# bacpypes3.pdu.Address.addrType of a station on the local network and of one behind a router
_LOCAL_STATION, _REMOTE_STATION = 2, 4

_IP = r"\d{1,3}(?:\.\d{1,3}){3}"
_IP_PORT = re.compile(rf"({_IP}):(\d+)")
_REMOTE = re.compile(r"(\d+):(.+)")


def _ip(text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError as err:
        raise ValueError(str(err)) from None


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"port must be 1..65535, got {text}")
    return int(text)


def _ip_mac(ip: str, port: int) -> bytes:
    return _ip(ip).packed + port.to_bytes(2, "big")   # a B/IP MAC: 4 octets of address, 2 of UDP port


def parse_entry(entry: str) -> tuple:
    """("net", IPv4Network) | ("station", ip, port) | ("remote", network, mac bytes or None for any);
    ValueError saying what is wrong with `entry`, in the words of the forms it may take."""
    text = entry.strip()
    if not text:
        raise ValueError("empty")
    if "/" in text or re.fullmatch(_IP, text):
        try:
            return ("net", ipaddress.IPv4Network(text))
        except ValueError as err:
            if "has host bits set" in str(err):
                wide = ipaddress.IPv4Network(text, strict=False)
                raise ValueError(f"has host bits set: the network is {wide}, the one station "
                                 f"{text.partition('/')[0]}") from None
            raise ValueError(f"not an IPv4 address or network (e.g. 192.168.10.0/24): {err}") from None
    if m := _IP_PORT.fullmatch(text):
        _ip(m[1])
        return ("station", m[1], _port(m[2]))
    if m := _REMOTE.fullmatch(text):
        network, mac = int(m[1]), m[2]
        if not 1 <= network <= 65534:   # 0 is the local network, 65535 the global broadcast
            raise ValueError(f"network must be 1..65534, got {network}")
        if mac == "*":
            return ("remote", network, None)
        if mac.isdigit():
            if int(mac) > 255:
                raise ValueError(f"a decimal MAC is one octet, 0..255 (MS/TP); got {mac}: write longer ones "
                                 f"in hex, e.g. {network}:0x{int(mac):04x}")
            return ("remote", network, bytes([int(mac)]))
        if re.fullmatch(r"0x(?:[0-9a-fA-F]{2})+", mac):
            return ("remote", network, bytes.fromhex(mac[2:]))
        if re.fullmatch(_IP, mac):
            return ("remote", network, _ip_mac(mac, BACNET_IP_PORT))
        if m := _IP_PORT.fullmatch(mac):
            return ("remote", network, _ip_mac(m[1], _port(m[2])))
        raise ValueError(f"the MAC after {network}: must be 0..255, hex bytes (0x0a0b), an IPv4 address[:port] "
                         f"or * (the whole network)")
    if "*" in text:
        raise ValueError("a wildcard is only NET:* (a remote network); for IP networks use CIDR, "
                         "e.g. 192.168.10.0/24")
    raise ValueError("must be an IPv4 address (192.168.10.20), ip:port, a network (192.168.10.0/24), "
                     "or a routed station NET:MAC (2001:5) or network NET:*")


class WriteAccess:
    """The parsed `bacnet.write_from`, and the refusals it has made."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.entries = tuple(entries)
        rules = [parse_entry(e) for e in self.entries]
        self._nets = [r[1] for r in rules if r[0] == "net"]
        self._stations = {(r[1], r[2]) for r in rules if r[0] == "station"}
        self._remote = {(r[1], r[2]) for r in rules if r[0] == "remote"}
        self.refused = 0
        self.last_refused: dict | None = None
        self._logged: dict[str, list] = {}   # source -> [monotonic time of its last line, refusals since]

    @property
    def open(self) -> bool:
        """Everyone may write: the list is empty."""
        return not self.entries

    def allows(self, source: Any) -> bool:
        """Whether the list names `source`, a request's bacpypes3 Address (pduSource)."""
        if self.open:
            return True
        kind, mac = getattr(source, "addrType", None), bytes(getattr(source, "addrAddr", None) or b"")
        if kind == _REMOTE_STATION:
            return (source.addrNet, None) in self._remote or (source.addrNet, mac) in self._remote
        if kind != _LOCAL_STATION or len(mac) != 6:   # a B/IP station's MAC: address and port
            return False
        ip = ipaddress.IPv4Address(mac[:4])
        return any(ip in net for net in self._nets) or (str(ip), int.from_bytes(mac[4:], "big")) in self._stations

    def refuse(self, source: Any, what: str, answer: str, why: str | None = None, forwarded_by: Any = None) -> None:
        """Count a request from `source` that was refused; log it, at most once per source and kind of refusal
        per LOG_EVERY_SECONDS. `what` names what it tried, `answer` the error it got, `why` the reason when it
        is not this list (a command the point cannot take, a forwarded source). `forwarded_by`: the B/IP address
        that sent the Forwarded-NPDU claiming `source`."""
        self.refused += 1
        who = str(source) if forwarded_by is None else f"{source} (claimed in a Forwarded-NPDU from {forwarded_by})"
        self.last_refused = {"by": who, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             "what": what, "why": why or "not in bacnet.write_from"}
        now = time.monotonic()
        # a forwarded source is whatever its sender wrote, one made up per datagram if it likes: counted by sender
        kind = f"{forwarded_by} (forwarding)" if forwarded_by is not None else who if why is None else f"{who} (value)"
        if kind not in self._logged and len(self._logged) >= MAX_SOURCES_LOGGED:
            self._logged = {k: v for k, v in self._logged.items() if now - v[0] < LOG_EVERY_SECONDS or v[1]}
        key = kind if kind in self._logged or len(self._logged) < MAX_SOURCES_LOGGED else _OTHERS
        seen = self._logged.get(key)
        if seen is not None and now - seen[0] < LOG_EVERY_SECONDS:
            seen[1] += 1
            return
        if seen is None:
            tail = "; repeats from it are counted, one line per 10 min at most"
        elif seen[1]:
            tail = f"; {seen[1]} more refused from it since the last line {now - seen[0]:.0f} s ago"
        else:
            tail = ""
        self._logged[key] = [now, 0]
        if why is None:
            why = f"bacnet.write_from does not list it (it lists {', '.join(self.entries)})"
        log.warning("BACnet %s from %s refused (%s): %s%s", what, who, answer, why, tail)

    def status(self) -> dict:
        """For /api/status: who may write, how many requests were refused, the last one."""
        return {"write_from": list(self.entries), "writes_refused": self.refused,
                "last_write_refused": None if self.last_refused is None else dict(self.last_refused)}
