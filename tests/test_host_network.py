"""The Network Port's IP_Default_Gateway and IP_DNS_Server, read from the routing table and resolv.conf (pure)."""
from __future__ import annotations

import ipaddress
import struct

from bacnet_api.host_network import NONE, default_gateway, dns_servers


def word(addr: str) -> str:
    """An address as /proc/net/route prints it: one word in the host's byte order."""
    return f"{struct.unpack('=I', ipaddress.IPv4Address(addr).packed)[0]:08X}"


def table(*rows) -> str:
    head = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT"
    return "\n".join([head] + ["\t".join([iface, word(dest), word(gw), flags, "0", "0", "0", word(mask), "0", "0", "0"])
                               for iface, dest, gw, flags, mask in rows]) + "\n"


ROUTES = table(("eth0", "0.0.0.0", "10.1.0.1", "0003", "0.0.0.0"),        # default via 10.1.0.1
               ("eth0", "10.1.0.0", "0.0.0.0", "0001", "255.255.0.0"),
               ("eth1", "192.168.50.0", "0.0.0.0", "0001", "255.255.255.0"),  # the BACnet LAN: no way out
               ("eth2", "172.16.0.0", "0.0.0.0", "0001", "255.240.0.0"),
               ("eth2", "0.0.0.0", "172.16.0.1", "0001", "0.0.0.0"))      # not a gateway route (no G flag)


def test_the_default_gateway_is_the_one_of_the_interface_that_holds_the_address(tmp_path):
    routes = tmp_path / "route"
    routes.write_text(ROUTES)
    ip = lambda a: ipaddress.IPv4Address(a).packed  # noqa: E731
    assert default_gateway(ip("10.1.4.20"), routes) == ip("10.1.0.1")
    assert default_gateway(ip("192.168.50.7"), routes) == NONE      # an isolated BACnet LAN
    assert default_gateway(ip("172.16.3.3"), routes) == NONE
    assert default_gateway(ip("127.0.0.1"), routes) == NONE         # loopback: in no row
    assert default_gateway(ip("10.1.4.20"), tmp_path / "missing") == NONE


def test_dns_servers_are_the_ipv4_name_servers_in_order_at_most_three(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("# generated\nsearch site.example\nnameserver 10.1.0.53\nnameserver fd00::53\n"
                    "nameserver 10.1.0.54\nnameserver 1.1.1.1\nnameserver 9.9.9.9\noptions edns0\n")
    assert dns_servers(conf) == [ipaddress.IPv4Address(a).packed for a in ("10.1.0.53", "10.1.0.54", "1.1.1.1")]
    conf.write_text("search site.example\n")
    assert dns_servers(conf) == []
    assert dns_servers(tmp_path / "missing") == []
