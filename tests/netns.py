"""A network namespace of the test's own, joined to the test's namespace by a veth pair, for what loopback
cannot show: an address that is not on any interface yet, or that goes away and comes back.

    def test_x(linked_netns):
        ns = linked_netns                       # 198.18.N.0/24; this side is ns.host_ip (198.18.N.254)
        GatewayProcess(config, log, prefix=ns.exec_prefix)   # runs inside the namespace
        ns.add_address(ns.ip(1))                # the namespace's end gets 198.18.N.1/24 now

Addresses come from 198.18.0.0/15, the range set aside for testing networks (RFC 2544), so nothing
leaves the veth pair. Needs root and iproute2 (the machines here and CI have both); without them the
fixture skips the test, saying why. The namespace and both ends of the pair are deleted afterwards.
"""
from __future__ import annotations

import errno
import itertools
import os
import random
import shutil
import socket
import subprocess

import pytest

_count = itertools.count()


def absent_address(ip: str) -> str:
    """`ip`, which no interface of this machine has (a gateway configured with it waits for it, sending nothing):
    the test is skipped where it is one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((ip, 0))
        except OSError as err:
            assert err.errno == errno.EADDRNOTAVAIL, err
            return ip
    pytest.skip(f"{ip} is an address of this machine")


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


class LinkedNamespace:
    DEVICE = "gw0"   # the namespace's end of the pair

    def __init__(self) -> None:
        k = next(_count)
        self.name = f"gwtest-{os.getpid()}-{k}"
        self.host_device = f"gwt{os.getpid()}h{k}"[:15]
        taken = _ip("-4", "route", "show", "table", "all").stdout
        free = [n for n in range(256) if f"198.18.{n}." not in taken]
        self.subnet = f"198.18.{random.choice(free)}"
        self.host_ip = self.ip(254)

    def ip(self, host: int) -> str:
        return f"{self.subnet}.{host}"

    @property
    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def create(self) -> None:
        for args in (("netns", "add", self.name),
                     ("link", "add", self.host_device, "type", "veth", "peer", "name", self.DEVICE,
                      "netns", self.name),
                     ("addr", "add", f"{self.host_ip}/24", "dev", self.host_device),
                     ("link", "set", self.host_device, "up"),
                     ("-n", self.name, "link", "set", "lo", "up"),
                     ("-n", self.name, "link", "set", self.DEVICE, "up")):
            res = _ip(*args)
            if res.returncode != 0:
                raise OSError(f"ip {' '.join(args)}: {res.stderr.strip()}")

    def add_address(self, ip: str) -> None:
        self._in_namespace("addr", "add", f"{ip}/24", "dev", self.DEVICE)

    def del_address(self, ip: str) -> None:
        self._in_namespace("addr", "del", f"{ip}/24", "dev", self.DEVICE)

    def set_link(self, up: bool) -> None:
        """The cable: down, the address stays but nothing passes; up again."""
        self._in_namespace("link", "set", self.DEVICE, "up" if up else "down")

    def _in_namespace(self, *args: str) -> None:
        res = _ip("-n", self.name, *args)
        assert res.returncode == 0, f"ip -n {self.name} {' '.join(args)}: {res.stderr}"

    def delete(self) -> None:
        _ip("netns", "del", self.name)          # takes its end of the pair, and with it the other
        _ip("link", "del", self.host_device)    # in case the namespace was never made


@pytest.fixture
def linked_netns():
    if not shutil.which("ip"):
        pytest.skip("iproute2's `ip` is not installed: network namespaces cannot be made here")
    ns = LinkedNamespace()
    try:
        ns.create()
    except OSError as err:
        ns.delete()
        pytest.skip(f"cannot make a network namespace here (root is needed): {err}")
    try:
        yield ns
    finally:
        ns.delete()
