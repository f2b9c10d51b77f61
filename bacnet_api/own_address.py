"""Whether this machine still has what bacnet.address names: its IP on an interface, that interface's broadcast
address the one its mask gives, and the interface's link up. bacpypes3 binds the first two; without the IP every
send fails, and without the broadcast address (a mask that is not the NIC's) it retries that bind for good while
every send, answers to directed reads included, waits for it. A link that is down leaves both, and sends go nowhere
without an error. Each way the device was dead while the log said it was answering (helper links41)."""
from __future__ import annotations

import asyncio
import errno
import fcntl
import ipaddress
import logging
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .bug_guard import BugGuard
from .host_network import subnet_interface
from .settle import span

log = logging.getLogger(__name__)

PERIOD_S = 5.0      # how often a running device looks: two binds on port 0, an ioctl and a sysfs read
# With the kernel's word (rtnetlink: an address added or removed, a link's state changed) the device looks when it
# comes, and this often besides: looking every 5 s for a change the kernel announces woke an idle gateway for it
# 17,000 times a day (helper idle50)
QUIET_PERIOD_S = 60.0
SETTLE_S = 0.2      # a change comes as a burst (the address, its routes, the link): looked at once it is over
_RTMGRP_LINK, _RTMGRP_IPV4_IFADDR = 0x1, 0x10
SIOCGIFADDR = 0x8915    # linux/sockios.h: an interface's IPv4 address

ADDRESS, MASK, LINK = "address", "mask", "link"


@dataclass(frozen=True)
class Missing:
    kind: str       # ADDRESS: the IP is on no interface; MASK: its broadcast address is not; LINK: its link is down
    text: str       # what is missing, in words


def broadcast_of(address: str) -> str | None:
    """The broadcast address of "ip/prefix:port" as bacpypes3 binds it; None for a /32 (no broadcast)."""
    ip_mask = address.rpartition(":")[0] or address
    if "/" not in ip_mask:
        return None
    interface = ipaddress.ip_interface(ip_mask)
    if interface.network.prefixlen >= 32:
        return None
    return str(interface.network.broadcast_address)


def missing(address: str) -> Missing | None:
    """What of `address` ("ip/prefix:port") this machine lacks now, or None. Probed on a port of the system's
    choosing: the device itself holds the configured one."""
    ip_mask = address.rpartition(":")[0] or address
    ip, _, prefix = ip_mask.partition("/")
    if not _bindable(ip):
        return Missing(ADDRESS, f"{ip} is not on any interface of this machine")
    name = _interface_of(ip)
    # before the mask: an interface taken down (ip link set down) loses its broadcast address with its routes
    if name is not None and _link_down(name):
        return Missing(LINK, f"the link of {name}, which holds {ip}, is down (a cable, a switch port)")
    if (broadcast := _unbound_broadcast(address, ip)) is not None:
        # a second address on an interface taken down has neither a primary address nor a route to name it by
        down = "" if name is not None else ", or is down"
        return Missing(MASK, f"its broadcast address {broadcast} is not this machine's: the interface holding {ip} "
                             f"has another mask than /{prefix}{down} (`ip -brief address` shows it)")
    return None


def must_wait(address: str) -> Missing | None:
    """What a start waits for: the IP, and its mask's broadcast address. Not the link (a cable out at boot): a real
    carrier loss leaves both bindable, and the rest of the gateway (the VTN, telemetry, the API) has no need of it.
    A link taken down removes the broadcast address with its routes, which is waited for, said as the link."""
    problem = missing(address)
    if problem is None or problem.kind != LINK:
        return problem
    ip = (address.rpartition(":")[0] or address).partition("/")[0]
    return problem if _unbound_broadcast(address, ip) is not None else None


def _unbound_broadcast(address: str, ip: str) -> str | None:
    """The broadcast address bacpypes3 would bind for `address`, if this machine cannot bind it."""
    broadcast = broadcast_of(address)
    return broadcast if broadcast is not None and broadcast != ip and not _bindable(broadcast) else None


def _bindable(ip: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((ip, 0))
        except OSError as err:
            return err.errno != errno.EADDRNOTAVAIL     # another refusal says nothing of the address
    return True


def _interface_of(ip: str) -> str | None:
    """The interface holding `ip`: the one whose primary address it is, else the one its subnet's route is on (a
    second address on the NIC, helper verify41); None if neither says."""
    try:
        names = [name for _, name in socket.if_nameindex()]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for name in names:
                try:
                    got = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name[:15].encode()))
                except OSError:     # no IPv4 address
                    continue
                if socket.inet_ntoa(got[20:24]) == ip:
                    return name
    except OSError:
        pass
    return subnet_interface(socket.inet_aton(ip))


def _link_down(name: str, net: Path = Path("/sys/class/net")) -> bool:
    """Whether the kernel says the interface cannot pass traffic: taken down, or its carrier lost (a cable)."""
    try:
        return (net / name / "operstate").read_text().strip() in ("down", "lowerlayerdown")
    except OSError:
        return False        # gone between the two looks, or no sysfs: the next look says


def route_events() -> socket.socket | None:
    """A socket the kernel writes to when an IPv4 address or a link changes (rtnetlink), or None without one."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                             socket.NETLINK_ROUTE)
    except (OSError, AttributeError):   # not Linux, or a sandbox refusing it
        return None
    try:
        sock.bind((0, _RTMGRP_LINK | _RTMGRP_IPV4_IFADDR))
    except OSError:
        sock.close()
        return None
    return sock


class OwnAddressWatch:
    """The running device's own address, looked at when it starts, when the kernel says an address or a link changed,
    and every QUIET_PERIOD_S besides (every PERIOD_S without that word, or with a probe of a test's): one WARNING when
    the machine stops having it (a DHCP lease that changed, a LAN re-subnetted, its link down), one INFO when it has
    it again, and `on_back` then (the device announces itself again: an I-Am into a dead link went nowhere)."""

    def __init__(self, address: str, probe: Callable[[str], Missing | None] = missing,
                 period: float = PERIOD_S, on_back: Callable[[], None] = lambda: None):
        self.address = address
        self._probe = probe
        self.period = period
        self.on_back = on_back
        self.problem: Missing | None = None
        self.since: float | None = None         # time.time() it began
        again = (f"looked at again at the next change of an address or a link, and within {QUIET_PERIOD_S:g} s"
                 if probe is missing else f"looked at again every {period:g} s")
        self.bug = BugGuard(log, f"watching bacnet.address {address}", again)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="bacnet-own-address")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        events = route_events() if self._probe is missing else None
        if events is None:
            while True:
                with self.bug.guard():
                    self.check()
                await asyncio.sleep(self.period)
        loop, changed = asyncio.get_running_loop(), asyncio.Event()

        def readable() -> None:
            try:
                while events.recv(65536):
                    pass
            except OSError:     # drained (EAGAIN), or messages lost (ENOBUFS): either way, a look
                pass
            changed.set()
        loop.add_reader(events.fileno(), readable)
        try:
            while True:
                with self.bug.guard():
                    self.check()
                try:
                    async with asyncio.timeout(QUIET_PERIOD_S):
                        await changed.wait()
                    await asyncio.sleep(SETTLE_S)
                except TimeoutError:
                    pass
                changed.clear()
        finally:
            loop.remove_reader(events.fileno())
            events.close()

    def check(self) -> None:
        problem = self._probe(self.address)
        if problem == self.problem:
            return
        if problem is not None and self.problem is None:
            why = " (a DHCP lease that changed? an interface re-addressed?)" if problem.kind == ADDRESS else ""
            log.warning("bacnet.address %s: %s now%s: the BACnet device cannot be reached and sends nothing, the "
                        "meter included, until it is back", self.address, problem.text, why)
            self.since = time.time()
        elif problem is None:
            log.info("bacnet.address %s is this machine's again after %s: the BACnet device answers again",
                     self.address, span(time.time() - (self.since or time.time())))
            self.since = None
        self.problem = problem
        if problem is None:
            self.on_back()

    def local_trouble(self) -> str | None:
        """Why sends cannot leave this machine now, or None."""
        return self.problem.text if self.problem is not None else None

    def status(self) -> dict:
        return {"problem": self.local_trouble(), "kind": self.problem.kind if self.problem is not None else None,
                "since": None if self.since is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since))}
