"""Foreign-device registration with a BBMD (`bacnet.bbmd_address`), watched and said.

bacpypes3's BIPForeign registers and renews on its own, but said nothing: a BBMD that refused the gateway, or
was not there, left a BAS on another subnet unable to find it and nothing on the gateway told why. And after one
refusal it ignored every later answer (it takes an answer only while `_registration_handle` is set, which its
5 s retry does not set), so it asked again every 5 s for good, even once the BBMD accepted it.

`RegistrationWatch` looks at the link layer's state every WATCH_S: one WARNING when the registration fails
(refused, with the BBMD's BVLC result code, or unanswered for ANSWER_S), one WARNING when its cause changes, one
INFO when it holds (again).

A request that is refused or goes unanswered is asked again after RETRY_FIRST_S, doubling to RETRY_MAX_S: bacpypes3
asked every 5 s for as long as it took, 17,280 requests a day at a BBMD whose table is full, each a line in its log.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from .bug_guard import BugGuard

log = logging.getLogger(__name__)

WATCH_S = 1.0
ANSWER_S = 10.0     # a BBMD on the site answers in milliseconds; asked again after 5 s meanwhile
RETRY_FIRST_S = 5.0
RETRY_MAX_S = 60.0  # a BBMD put right is used within a minute
_RESULTS = {0x30: "Register-Foreign-Device NAK"}


def foreign_layer(app: Any) -> Any | None:
    """The app's BIPForeign link layer, if it registers with a BBMD."""
    for layer in app.link_layers.values():
        if hasattr(layer, "bbmdRegistrationStatus"):
            return layer
    return None


def take_every_answer(layer: Any) -> None:
    """Have each registration request wait for its answer, the retries after a refusal too, space the retries out,
    and keep one renewal pending however many acceptances come."""
    start = layer._start_registration
    failed = 0      # requests in a row that were refused or not answered
    # When the last request went out, and the first of those before it in a row that went unanswered (None: the one
    # before was answered): bacpypes3 keeps a refusal's code until an acceptance, so a BBMD gone silent after
    # refusing read "refused" for good (RegistrationWatch._silent_since)
    layer.last_asked = layer.unanswered_since = None

    def start_registration() -> None:
        nonlocal failed
        # a registration that holds is renewed: the last request was taken; otherwise the last one failed
        failed = 0 if layer.bbmdRegistrationStatus == 0 else failed + 1
        if _answered(layer):
            layer.unanswered_since = None
        elif layer.unanswered_since is None:
            layer.unanswered_since = layer.last_asked
        layer.last_asked = time.monotonic()
        start()
        # bacpypes3 scheduled the retry in 5 s, taken back if the answer is an acceptance
        layer._reregistration_timeout_handle.cancel()
        delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** max(0, failed - 1))
        layer._reregistration_timeout_handle = asyncio.get_running_loop().call_later(delay, layer._start_registration)
        # any truthy handle: the answer to this request is then taken (BIPForeign.confirmation)
        layer._registration_handle = layer._reregistration_timeout_handle
    layer._start_registration = start_registration

    track = layer._start_tracking_registration
    renewal: asyncio.Handle | None = None

    def start_tracking_registration() -> None:
        nonlocal renewal
        # An acceptance is taken while `_registration_handle` is set, and after one it is the renewal timer: a second
        # acceptance (twice on the wire, or late: the BBMD slower than the retry, which it accepts too) was taken as
        # well. BIPForeign.confirmation lets go of that timer uncancelled and this sets another: two request chains
        # ran side by side from then on, more with each further duplicate. One renewal at a time.
        if renewal is not None:
            renewal.cancel()
        track()
        renewal = layer._registration_handle
    layer._start_tracking_registration = start_tracking_registration


def _answered(layer: Any) -> bool:
    # an answer takes the request's handle (BIPForeign.confirmation); a registration that holds has its renewal timer
    return not layer._registration_handle or layer.bbmdRegistrationStatus == 0


class RegistrationWatch:
    def __init__(self, layer: Any, bbmd: str, ttl: int) -> None:
        self.layer, self.bbmd, self.ttl = layer, bbmd, ttl
        self._registered: bool | None = None     # None until the first answer or ANSWER_S
        self._since = time.monotonic()
        self._why = ""
        self._task: asyncio.Task | None = None
        self._on_registered: Callable[[], None] | None = None
        # the one thing that asks again after a lapse (bacpypes3 stops): it must not end on a bug, nor unsaid
        self.bug = BugGuard(log, f"watching the registration with BBMD {bbmd}", f"looked at again every {WATCH_S:g} s")

    def start(self, on_registered: Callable[[], None] | None = None) -> None:
        """`on_registered` is called each time the registration holds after not holding (the first time too)."""
        self._on_registered = on_registered
        self._task = asyncio.get_running_loop().create_task(self._run(), name="bbmd-registration")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def status(self) -> dict:
        return {"bbmd": self.bbmd, "ttl_seconds": self.ttl, "registered": bool(self._registered),
                "why_not": None if self._registered else (self._why or "waiting for the BBMD's first answer"),
                # refused, or no answer in time: the log's WARNING stands (not the first seconds' wait)
                "fault": self._registered is False}

    def fault(self) -> str | None:
        """The BBMD's refusal or silence while its WARNING stands (no end line yet), else None."""
        return f"foreign-device registration with BBMD {self.bbmd} {self._why}" if self._registered is False else None

    async def _run(self) -> None:
        while True:
            with self.bug.guard():
                self._look(time.monotonic())
            await asyncio.sleep(WATCH_S)

    def _silent_since(self) -> float | None:
        """Since when the BBMD has not answered the requests (None: it answered the last one)."""
        layer = self.layer
        if getattr(layer, "last_asked", None) is None or _answered(layer):
            return None
        return layer.unanswered_since if layer.unanswered_since is not None else layer.last_asked

    def _look(self, now: float) -> None:
        code = self.layer.bbmdRegistrationStatus    # -2 not registered, -1 asking, 0 registered, >0 the BBMD's NAK
        if code == 0:
            was, self._registered, self._since = self._registered, True, now
            if was is not True:
                log.info("BACnet: registered%s as a foreign device with BBMD %s (renewed every %d s)",
                         " again" if was is False else "", self.bbmd, self.ttl)
                if self._on_registered is not None:
                    try:
                        self._on_registered()
                    except Exception as err:  # noqa: BLE001 - the watch must go on: it renews a lapsed registration
                        log.warning("BACnet: announcing the device through BBMD %s failed: %s", self.bbmd, err)
            return
        if code == -2:
            # the registration lapsed (no answer to a renewal within its lifetime and 30 s): bacpypes3 stops asking
            # then, and a BBMD back later would never hear from the gateway again
            self.layer._start_registration()
        silent = self._silent_since()
        if code > 0 and (silent is None or now - silent < ANSWER_S):
            why = f"refused ({_RESULTS.get(code, 'BVLC result')} 0x{code:04x})"
        elif code > 0 or now - self._since >= ANSWER_S:
            why = f"unanswered for {ANSWER_S:g} s"
        else:
            return
        if self._registered is not False:
            log.warning("BACnet: foreign-device registration with BBMD %s %s: a BAS on another subnet cannot find "
                        "the gateway; asked again after %g s, then less often, up to every %g s", self.bbmd, why,
                        RETRY_FIRST_S, RETRY_MAX_S)
        elif why != self._why:
            # as the meter's and the VTN's faults: the one fault, its new cause said (a BBMD that went silent began
            # refusing once it was back with a full table, or one that refused went silent)
            log.warning("BACnet: foreign-device registration with BBMD %s still failing, cause changed: %s", self.bbmd,
                        why)
        self._registered, self._why = False, why
