"""systemd's notification protocol (sd_notify(3)) for `run` under a Type=notify unit with WatchdogSec=.

READY=1 once the gateway has started, STOPPING=1 as it stops, and with WatchdogSec= set, WATCHDOG=1 from the
event loop every half of it. The pings come from the loop itself, not a thread: a loop that stops turning (a
call that never returns, a deadlock) leaves the process alive with every BACnet point frozen and the VTN
unanswered, which nothing else notices; without the pings systemd kills the gateway (SIGABRT: faulthandler puts
where the loop was stuck in the journal) and Restart= starts it again. While the start waits for bacnet.address
to come up, the start's time-out is extended, so a late DHCP lease is waited for, not a failed start every 90 s.
systemd arms its watchdog at the first ping, so the pings begin with READY.
Without NOTIFY_SOCKET (not under systemd, Type=simple, a container) nothing is sent.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger(__name__)

# each extension of the start's time-out while bacnet.address is waited for (sent every 1 s): systemd moves the
# deadline to now + this, so the last one, as the address comes, must leave the whole start its time (90 s, as
# TimeoutStartSec's default)
EXTEND_S = 90.0
SEND_WAIT_S = 0.5


class SystemdNotifier:
    def __init__(self, environ=os.environ):
        path = self.named = environ.get("NOTIFY_SOCKET", "")
        # an abstract socket is named with a leading "@" in the variable and a NUL on the wire
        self.address = "\0" + path[1:] if path.startswith("@") else path
        pid = environ.get("WATCHDOG_PID", "")
        ours = not pid or pid == str(os.getpid())      # a child that inherited the variables is not watched
        text = environ.get("WATCHDOG_USEC", "")
        usec = int(text) if text.isascii() and text.isdigit() else 0     # as systemd writes it: decimal digits
        self.watchdog_s = usec / 1e6 if usec > 0 and ours and path else None
        self._failed = False
        self._stopping = False
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            environ.pop(name, None)     # as sd_notify's unset_environment: not the fit child's to use

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> None:
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # PID 1 busy at boot (its queue full): READY waits a moment rather than being lost (systemd would
                # kill a running gateway at the start's time-out), and a ping cannot hold the watched loop for long
                sock.settimeout(SEND_WAIT_S)
                sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as err:
            if not self._failed:    # once: systemd gone or the socket unreachable; the watchdog will say the rest
                self._failed = True
                log.warning("systemd notification to %s failed: %s", self.named, err.strerror or err)
            return
        if self._failed:
            self._failed = False
            log.info("systemd notification to %s works again", self.named)

    def waiting(self, status: str) -> None:
        self.send(f"EXTEND_TIMEOUT_USEC={int(EXTEND_S * 1e6)}", f"STATUS={status}")

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def stopping(self) -> None:
        if not self._stopping:
            self._stopping = True
            self.send("STOPPING=1", "STATUS=stopping")

    async def keep_alive(self) -> None:
        """WATCHDOG=1 every half of WatchdogSec, while the loop turns (run as a task; returns at once without one)."""
        if self.watchdog_s is None:
            return
        log.debug("systemd watchdog: WATCHDOG=1 every %.1f s (WatchdogSec=%.0fs)", self.watchdog_s / 2, self.watchdog_s)
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_s / 2)
