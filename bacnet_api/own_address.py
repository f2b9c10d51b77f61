"""Whether this machine still has what bacnet.address names: its IP on an interface, and that interface's broadcast
address the one its mask gives. bacpypes3 binds both; without the first every send fails, and without the second
(a mask that is not the NIC's) it retries the broadcast bind for good while every send, answers to directed reads
included, waits for it. Either way the device is dead while the log said it was answering (helper links41)."""
from __future__ import annotations

import asyncio
import errno
import fcntl
import ipaddress
import logging
import socket
import struct
import time
from pathlib import Path
from typing import Callable

from .settle import span

log = logging.getLogger(__name__)

PERIOD_S = 5.0      # how often a running device looks: a bind on port 0 and a close, some tens of microseconds
# a notification that could not leave the box within this of a local send failure is not its recipient's fault
SEND_FAILURE_S = 60.0
# the errors a send gets when this side of the link is at fault (no route: the link or the address is gone)
LOCAL_SEND_ERRORS = frozenset({errno.ENETUNREACH, errno.ENETDOWN, errno.EADDRNOTAVAIL, errno.EHOSTUNREACH})
SIOCGIFADDR = 0x8915    # linux/sockios.h: an interface's IPv4 address


def broadcast_of(address: str) -> str | None:
    """The broadcast address of "ip/prefix:port" as bacpypes3 binds it; None for a /32 (no broadcast)."""
    ip_mask = address.rpartition(":")[0] or address
    if "/" not in ip_mask:
        return None
    interface = ipaddress.ip_interface(ip_mask)
    if interface.network.prefixlen >= 32:
        return None
    return str(interface.network.broadcast_address)


def missing(address: str, link: bool = False) -> str | None:
    """What of `address` ("ip/prefix:port") this machine lacks now, in words, or None. Probed on a port of the
    system's choosing: the device itself holds the configured one. `link`: also whether the link of the interface
    holding the IP is up (a cable pulled leaves the address, and sends go nowhere without an error)."""
    ip = (address.rpartition(":")[0] or address).partition("/")[0]
    if not _bindable(ip):
        return f"{ip} is not on any interface of this machine"
    # before the mask: an interface taken down loses its broadcast address with its routes
    if link and (name := _interface_of(ip)) is not None and _link_down(name):
        return f"the link of {name}, which holds {ip}, is down (a cable, a switch port)"
    broadcast = broadcast_of(address)
    if broadcast is not None and broadcast != ip and not _bindable(broadcast):
        prefix = (address.rpartition(":")[0] or address).partition("/")[2]
        return (f"its broadcast address {broadcast} is not this machine's: the interface holding {ip} has another "
                f"mask than /{prefix} (`ip -brief address` shows it)")
    return None


def _interface_of(ip: str) -> str | None:
    """The interface whose (primary) address is `ip`, or None (an alias, or a kernel that will not say)."""
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
        return None
    return None


def _link_down(name: str, net: Path = Path("/sys/class/net")) -> bool:
    try:
        return (net / name / "operstate").read_text().strip() in ("down", "lowerlayerdown")
    except OSError:
        return False        # gone between the two looks, or no sysfs: the next look says


def _bindable(ip: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((ip, 0))
        except OSError as err:
            return err.errno != errno.EADDRNOTAVAIL     # another refusal says nothing of the address
    return True


class OwnAddressWatch:
    """The running device's own address, looked at every PERIOD_S: one WARNING when the machine stops having it (a
    DHCP lease that changed, a LAN re-subnetted, its link down), one INFO when it has it again. Also told of sends that failed on
    this side (no route: the link is down), which a COV recipient that did not answer must not be blamed for."""

    def __init__(self, address: str, probe: Callable[[str], str | None] = lambda a: missing(a, link=True),
                 period: float = PERIOD_S, on_back: Callable[[], None] = lambda: None):
        self.address = address
        self._probe = probe
        self.on_back = on_back      # the device announces itself again: its I-Am at start went nowhere
        self.period = period
        self.problem: str | None = None         # what is missing, in words
        self.since: float | None = None         # time.time() it began
        self._send_failed: tuple[float, str] | None = None    # (monotonic, why) of the last local send failure
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
        while True:
            await asyncio.sleep(self.period)
            self.check()

    def check(self) -> None:
        problem = self._probe(self.address)
        if problem == self.problem:
            return
        if problem is not None and self.problem is None:
            why = "" if "link" in problem else " (a DHCP lease that changed? an interface re-addressed?)"
            log.warning("bacnet.address %s: %s now%s: the BACnet device cannot be reached and sends nothing, the "
                        "meter included, until it is back", self.address, problem, why)
            self.since = time.time()
        elif problem is None:
            log.info("bacnet.address %s is this machine's again after %s: the BACnet device answers again",
                     self.address, span(time.time() - (self.since or time.time())))
            self.since = None
        self.problem = problem
        if problem is None:
            self.on_back()

    def send_failed(self, exc: Exception) -> None:
        """A send from the device's socket failed on this side (asyncio hands it to error_received)."""
        if isinstance(exc, OSError) and exc.errno in LOCAL_SEND_ERRORS:
            self._send_failed = (time.monotonic(), exc.strerror or str(exc))

    def local_trouble(self) -> str | None:
        """Why sends may not have left this machine lately (its address missing, a send that found no route within
        SEND_FAILURE_S), or None."""
        if self.problem is not None:
            return self.problem
        if self._send_failed is not None and time.monotonic() - self._send_failed[0] <= SEND_FAILURE_S:
            return f"a send from this machine failed: {self._send_failed[1]}"
        return None

    def status(self) -> dict:
        return {"problem": self.problem,
                "since": None if self.since is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since))}
