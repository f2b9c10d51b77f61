"""What the machine's own network settings say about a BACnet/IP port: its default gateway and DNS servers,
for the Network Port object's IP_Default_Gateway and IP_DNS_Server. Read from the kernel's routing table and
resolv.conf (files, no query sent); a value nobody configured is 0.0.0.0, or no DNS server, as BACnet has it."""
from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

NONE = bytes(4)
RTF_UP, RTF_GATEWAY = 0x1, 0x2
MAX_DNS_SERVERS = 3   # what resolv.conf uses


def _octets(hex_word: str) -> bytes:
    # /proc/net/route prints each address as one word in the host's byte order
    return struct.pack("=I", int(hex_word, 16))


def default_gateway(ip: bytes, route_table: Path = Path("/proc/net/route")) -> bytes:
    """The default gateway of the interface whose subnet holds `ip`; 0.0.0.0 when it has none (loopback, an
    isolated BACnet LAN) or the table cannot be read."""
    try:
        rows = [line.split() for line in route_table.read_text().splitlines()[1:]]
    except OSError:
        return NONE
    addr = int.from_bytes(ip, "big")
    ifaces = set()
    for row in rows:
        if len(row) < 8:
            continue
        dest, flags, mask = (int.from_bytes(_octets(row[1]), "big"), int(row[3], 16),
                             int.from_bytes(_octets(row[7]), "big"))
        if mask and flags & RTF_UP and addr & mask == dest:
            ifaces.add(row[0])
    for row in rows:
        if len(row) >= 8 and row[0] in ifaces and int(row[1], 16) == 0 and int(row[7], 16) == 0 \
                and int(row[3], 16) & (RTF_UP | RTF_GATEWAY) == RTF_UP | RTF_GATEWAY:
            return _octets(row[2])
    return NONE


def subnet_interface(ip: bytes, route_table: Path = Path("/proc/net/route")) -> str | None:
    """The interface of the directly connected route whose subnet holds `ip` (the longest), or None: how a second
    address on a NIC, which SIOCGIFADDR does not return, is tied to its interface. A route stays while the carrier
    is lost (flagged linkdown), and goes with an interface taken down."""
    try:
        rows = [line.split() for line in route_table.read_text().splitlines()[1:]]
    except OSError:
        return None
    addr, best = int.from_bytes(ip, "big"), None
    for row in rows:
        if len(row) < 8 or int(row[2], 16) != 0:
            continue
        dest, mask = int.from_bytes(_octets(row[1]), "big"), int.from_bytes(_octets(row[7]), "big")
        if mask and addr & mask == dest and (best is None or mask > best[0]):
            best = (mask, row[0])
    return best[1] if best is not None else None


def dns_servers(resolv_conf: Path = Path("/etc/resolv.conf")) -> list[bytes]:
    """The IPv4 name servers resolv.conf lists, in its order; none if it lists none or cannot be read."""
    try:
        lines = resolv_conf.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    out = []
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                out.append(ipaddress.IPv4Address(words[1]).packed)
            except ValueError:
                continue   # an IPv6 server: not the IPv4 port's
    return out[:MAX_DNS_SERVERS]
