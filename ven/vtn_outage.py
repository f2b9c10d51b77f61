"""A VTN outage as one fault in the log, mixed into VtnClient: from the first failed poll or registration until
the VTN answers steadily again, with one line at its start, one at its end, and each new kind of cause said once.
An intermittent VTN (a flaky proxy, a load balancer whose other VTN does not know this VEN) is one fault too: its
end waits for STEADY_POLLS answered polls and openadr.settle_seconds, doubled for a fault back soon
(bacnet_api/settle.py)."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
from datetime import datetime

from bacnet_api.settle import span as _span

from .vtn_transport import fault_kind, iso_utc, utcnow

# one logger for the VEN side, wherever its code lives: tests and log filters select its lines by this name
log = logging.getLogger("ven.vtn")

# A VTN fault ends, in the log, once the VTN has answered this many polls in a row and for openadr.settle_seconds
# (0: at its first answer), doubled for a fault that starts again soon (bacnet_api/settle.py, as for the meter): a
# VTN behind a flaky proxy that fails one poll in fifteen is one intermittent fault, not a WARNING and an INFO at
# each failed poll
STEADY_POLLS = 3


@dataclasses.dataclass
class Outage:
    """The VTN out of reach or refusing, from the first failed poll or registration until it has answered steadily
    (connected again from its first answer: `connected` says what is, the log what the fault was)."""
    since: float            # loop time of the first failure
    kinds: set[str]         # fault_kind of each failure's reason so far, each said once
    reason: str             # the latest failure's reason, in vtn.last_error until the outage ends
    again: bool             # connected before it began
    settle: float           # seconds of answers in a row its end needs
    recurs: bool = False    # began soon after the last fault ended: intermittent from the start
    registrations: int = 0  # attempts meanwhile, failed or taken
    registered: int = 0     # ... taken: a VTN that takes registrations but refuses every poll
    registrations_failed: int = 0
    lost: int = 0           # ... taken, then lost before a poll was answered: a VTN asking to register again each time
    said: bool = False      # "registered with VTN" logged meanwhile: also by an attempt its last step then failed
    polls: int = 0          # polls meanwhile, answered or failed
    polls_failed: int = 0
    losses: int = 0         # registrations lost meanwhile (the VTN asking to register again, failed polls dropping it)
    relapses: int = 0       # answered again, then failing again
    # readings queued while the VTN was away, delivered in its answered stretches: said in the end line, not once per
    # stretch (a VTN that flaps every 20 s was a "queued telemetry delivered" line every 20 s)
    delivered: int = 0
    delivered_span: tuple[datetime, datetime] | None = None
    folded: bool = False    # some of them said by no line of their own
    answered_since: float | None = None   # loop time of the first answer in the current run of answers
    answered: int = 0       # polls answered in that run
    down_since: float = 0.0  # loop time the current stretch without answers began (while answered_since is None)
    down: float = 0.0       # seconds without answers in the stretches over
    started: datetime = dataclasses.field(default_factory=lambda: utcnow())
    ended: datetime | None = None

    def __post_init__(self) -> None:
        self.down_since = self.since

    def delivered_text(self) -> str:
        if not self.folded:
            return ""
        return (f"; {self.delivered} interval(s) of telemetry queued meanwhile delivered in all, from "
                f"{iso_utc(self.delivered_span[0])} to {iso_utc(self.delivered_span[1])}, with their original times")

    @property
    def intermittent(self) -> bool:
        return bool(self.relapses or self.recurs)

    def status(self, now: float) -> dict:
        down = self.down + (now - self.down_since if self.answered_since is None and self.ended is None else 0.0)
        return {"since": iso_utc(self.started), "ended": iso_utc(self.ended) if self.ended else None,
                "intermittent": self.intermittent, "polls": self.polls, "polls_failed": self.polls_failed,
                "context_losses": self.losses, "registrations": self.registrations,
                "registrations_failed": self.registrations_failed, "relapses": self.relapses,
                "not_connected_seconds": round(down, 1), "settle_seconds": self.settle}


def _until_steady(settle: float) -> str:
    # openadr.settle_seconds 0 ends a fault at the VTN's first answer: "steadily for 0 s" read as a slip
    return f"once the VTN answers steadily for {_span(settle)}" if settle > 0 else "at the VTN's next answer"


class VtnOutage:
    """VtnClient's outage bookkeeping; the state is VtnClient's."""

    def _repeating(self) -> bool:
        """A registration now repeats one this outage already made: what it logs (taken, events listed again, the
        offer refused) was said then, and is DEBUG now."""
        o = self._outage
        return o is not None and bool(o.registered or o.lost or o.said)

    def _failed(self, what: str, reason: str) -> None:
        """A poll or a registration failed, the context was lost again before a poll was answered (`what`
        "context"), lost again soon after the last VTN fault ("loss": a load balancer whose other VTN does not know
        this VEN), or the session ended on an error (`what` "session": a VTN message it cannot handle, which the
        VTN may send at every poll). The first failure starts an outage: one WARNING (ERROR for a session error),
        and not connected from then on, as the log says; another failure is one more line only when its kind of
        reason is new to the outage (the operator acts otherwise), or when the VTN fails again after it had
        answered (once: the fault is intermittent), else DEBUG: a cause flipping back and forth (a proxy answering
        502 while its VTN restarts, then out of reach itself) was one more WARNING at every retry."""
        self.last_error = reason
        kind = fault_kind(reason)
        happened = "registration lost" if what in ("context", "session", "loss") else f"{what} failed"
        now = asyncio.get_running_loop().time()
        self._settle.bad(now)       # the settle period runs from the last failure
        o = self._outage
        if o is None:
            settle = self._settle.settle
            # the trouble came back within RECUR_SECONDS of the last fault's end (the settle period doubled): the
            # operator reads the two as one. ("context": the lone loss just before it is this fault's own first step)
            recurs = what != "context" and settle > self._settle.base
            o = self._outage = Outage(now, {kind}, reason, self._was_connected, settle, recurs)
            after = (f" (again, {_span(now - self._settle.ended)} after the last VTN fault: one intermittent fault, "
                     f"logged as ended {_until_steady(settle)})" if recurs else "")
            if what == "poll":
                log.warning("VTN poll failed: %s%s", reason, after)
            elif what == "context":
                log.warning("VTN registration lost again before a poll was answered (%s); registering again "
                            "(backoff up to %g s)", reason, self._cfg.retry_max_seconds)
            elif what == "loss":
                o.said = o.recurs = True    # the registration after the last loss said what this one would
                log.warning("VTN registration lost again %s after the last time (%s); registering again: one "
                            "intermittent fault, logged as ended %s", _span(now - self._trouble_at), reason,
                            _until_steady(settle))
            elif what == "session":
                log.error("VTN %s; registering again (backoff up to %g s)%s", reason, self._cfg.retry_max_seconds,
                          after)
            else:
                log.warning("VTN registration failed: %s; retrying (backoff up to %g s)%s",
                            reason, self._cfg.retry_max_seconds, after)
            self._set_connected(False)
        elif o.answered_since is not None:
            # it answered, and fails again before it answered steadily: the same fault, intermittent
            o.relapses += 1
            answered_for = now - o.answered_since
            o.down_since, o.answered_since = now, None
            if o.relapses == 1 and not o.recurs:
                log.log(logging.ERROR if what == "session" else logging.WARNING,
                        "VTN %s again %s after it answered (%s): one intermittent fault, logged as ended %s",
                        happened, _span(answered_for), reason, _until_steady(o.settle))
            elif kind not in o.kinds:
                log.log(logging.ERROR if what == "session" else logging.WARNING,
                        "VTN outage goes on with another cause: %s: %s", happened, reason)
            else:
                log.debug("VTN %s again: %s", happened, reason)
            o.kinds.add(kind)
            self._set_connected(False)
        elif kind not in o.kinds:
            log.log(logging.ERROR if what == "session" else logging.WARNING,
                    "VTN outage goes on with another cause: %s: %s", happened, reason)
            o.kinds.add(kind)
        else:
            log.debug("VTN %s: %s", happened, reason)
        o.reason = reason

    def _connected_again(self, poll: bool = False) -> None:
        """Registered, or a poll answered (`poll`): connected from the first answer after a failure, as `connected`
        and the status say. The outage ends, with the one line that says how long it lasted and what it took, once
        the VTN has answered STEADY_POLLS polls in a row for its settle period."""
        o = self._outage
        if o is not None:
            now = asyncio.get_running_loop().time()
            if o.answered_since is None:
                o.answered_since, o.answered = now, 0
                o.down += now - o.down_since
                # the settle period runs from the first answer: from the last failure, a registration backoff (up to
                # 60 s, the period's default) had passed it, and the end was said at the third poll
                self._settle.restart(now)
                # also a report's failure meanwhile (telemetry goes on while the registration stands): worded for
                # its own request (its service's URL), one of the outage's causes all the same
                if self.last_error is not None and fault_kind(self.last_error) in o.kinds:
                    self.last_error = None
                self.poll_failures = self.registration_failures = 0
            o.answered += poll
            # openadr.settle_seconds 0: the end at the first answer, intermittent or not
            if (not o.settle or o.answered >= STEADY_POLLS) and self._settle.good(now):
                self._outage_over(o, now)
        self._was_connected = self._live = True
        self._set_connected(True)

    def _outage_over(self, o: Outage, now: float) -> None:
        self._outage, self._last_outage = None, o
        o.ended = utcnow()
        self._trouble_at = now
        took = o.answered_since - o.since
        if o.intermittent:
            # only what happened: "registration lost 0 time(s), 0 registration attempt(s) of which 0 failed" says
            # nothing
            parts = [f"{o.polls_failed} of {o.polls} poll(s) failed"]
            if o.losses:
                # the operator's words, not 2.0b's "context": the VTN asked the gateway to register again, or failed
                # polls made it drop the registration and register anew
                parts.append(f"registration lost {o.losses} time(s)")
            if o.registrations:
                parts.append(f"{o.registrations} registration attempt(s) of which {o.registrations_failed} failed")
            parts.append(f"not connected {_span(o.down)} in all")
            if o.relapses:
                parts.append(f"failing again {o.relapses} time(s) after it had answered")
            log.info("VTN connected steadily again after %s: %s (intermittent)%s", _span(took), ", ".join(parts),
                     o.delivered_text())
            return
        # a poll failing and the next one answered took no registration: "0 attempt(s) of which 0" says nothing
        regs = (f", {o.registrations} registration attempt(s) of which {o.registrations_failed} failed"
                + (f" and {o.lost} lost before a poll was answered" if o.lost else "") if o.registrations else "")
        log.info("VTN connected %safter %s (%d failed poll(s)%s)%s", "again " if o.again else "", _span(took),
                 o.polls_failed, regs, o.delivered_text())
