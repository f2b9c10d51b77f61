"""The opts this VEN created at the VTN (oadrCreateOpt, for events that want no oadrCreatedEvent) and the ones to
withdraw (oadrCancelOpt), kept in storage.path across restarts.

2.0b's EiOpt names each opt by its optID: the VTN keeps every opt created until the VEN cancels it. An answer sent
again (its answer lost, a VTN failing for a while, a restart's retelling) is the same opt, its optID, requestID and
createdDateTime as first sent, not one more the VTN would keep beside it. When the BAS changes its mind the opt the
VTN holds is withdrawn with oadrCancelOpt before the new one goes, so the VTN holds one opt of this VEN per event:
the site's answer of now, not an optOut and the optIn after it side by side."""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime

from openleadr import utils as outils

from .vtn_transport import utcnow

log = logging.getLogger("ven.vtn")

OPTS_KEY = "vtn_opts"


@dataclass(frozen=True)
class Opt:
    event_id: str
    modification: int
    opt: str
    opt_id: str
    request_id: str
    created: str        # createdDateTime, ISO 8601

    @property
    def created_at(self) -> datetime:
        return datetime.fromisoformat(self.created)

    @property
    def said(self) -> str:
        return f"the {self.opt} oadrCreateOpt for event {self.event_id} (modification {self.modification})"


class OptLedger:
    """Per event: the opt being sent, the opt the VTN took, and the opts it took that are to be withdrawn."""

    def __init__(self, storage=None):
        self._storage = storage
        self._sending: dict[str, Opt] = {}      # event -> the opt on its way (not taken yet)
        self._tried: set[str] = set()           # optIDs of those sent at least once: the VTN may hold them
        self.held: dict[str, Opt] = {}          # event -> the opt the VTN took last
        self.to_cancel: dict[str, Opt] = {}     # optID -> an opt the VTN took that no longer says the site's answer
        self._cancel_failing: dict[str, str] = {}   # optID -> since when the VTN fails its oadrCancelOpt
        saved = storage.load_value(OPTS_KEY) if storage is not None else None
        try:
            kept = json.loads(saved) if saved else {}
            self.held = {o["event_id"]: Opt(**o) for o in kept.get("held", [])}
            self.to_cancel = {o["opt_id"]: Opt(**o) for o in kept.get("cancel", [])}
            # sent, its answer not come before the stop: the VTN may hold it
            self._sending = {o["event_id"]: Opt(**o) for o in kept.get("sent", [])}
            self._tried = {o.opt_id for o in self._sending.values()}
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            log.warning("the opts kept for the VTN cannot be read (%s): the ones it holds are not withdrawn when the "
                        "site's answer changes", err)

    def for_answer(self, eid: str, mod: int, opt: str) -> Opt:
        """The opt that carries this answer: the one already sent or taken for it, else a new one."""
        for known in (self._sending.get(eid), self.held.get(eid)):
            if known is not None and (known.modification, known.opt) == (mod, opt):
                self._sending[eid] = known
                return known
        new = Opt(eid, mod, opt, outils.generate_id(), outils.generate_id(), utcnow().isoformat())
        self._sending[eid] = new
        return new

    def supersede(self, eid: str, mod: int, opt: str) -> None:
        """A new answer to the event waits: the opt the VTN holds for it is to be withdrawn first."""
        held = self.held.get(eid)
        if held is not None and (held.modification, held.opt) != (mod, opt):
            self.to_cancel[held.opt_id] = self.held.pop(eid)
            self._save()
        # one whose answer never came (a time-out, an empty answer) may be held all the same
        sent = self._sending.get(eid)
        if sent is not None and sent.opt_id in self._tried and (sent.modification, sent.opt) != (mod, opt):
            self.to_cancel[sent.opt_id] = self._sending.pop(eid)
            self._save()

    def tried(self, opt: Opt) -> None:
        if opt.opt_id not in self._tried:
            self._tried.add(opt.opt_id)
            self._save()

    def not_held(self, opt: Opt) -> None:
        if opt.opt_id in self._tried:
            self._tried.discard(opt.opt_id)
            self._save()

    def taken(self, eid: str) -> None:
        opt = self._sending.pop(eid, None)
        if opt is not None:
            self._tried.discard(opt.opt_id)
            self.held[eid] = opt
            self._save()

    def cancel_failed(self, opt_id: str, why: str) -> None:
        """The VTN failed the oadrCancelOpt (a 5xx, "try later"): sent again at each pass, and one WARNING when it
        starts failing. Meanwhile the VTN holds the opt beside the new answer, and the utility reads the site both
        ways: at DEBUG alone, nobody knew until the event left the schedule, days later."""
        if opt_id in self._cancel_failing:
            log.debug("oadrCancelOpt %s failed (%s): sent again at the next pass", opt_id, why)
            return
        self._cancel_failing[opt_id] = utcnow().isoformat(timespec="seconds")
        log.warning("the VTN failed to withdraw %s (oadrCancelOpt %s: %s): sent again at each pass; it holds that opt "
                    "beside the new answer meanwhile", self.to_cancel[opt_id].said, opt_id, why)

    def withdrawn(self, opt_id: str) -> str:
        """The opt is withdrawn (or the VTN will not withdraw it); what to add to the line saying so."""
        since = self._cancel_failing.pop(opt_id, None)
        if self.to_cancel.pop(opt_id, None) is not None:
            self._save()
        return f"; failed since {since}" if since else ""

    def keep_only(self, waiting: set[str], known) -> None:
        """Forget opts not sent for answers no longer waiting, and the opts of events the schedule no longer holds:
        the VTN dropped the event, and its opts with it. One sent may be held: kept until a new answer withdraws it."""
        sending = {eid: o for eid, o in self._sending.items()
                   if known(eid) is not None and (eid in waiting or o.opt_id in self._tried)}
        tried = self._tried & {o.opt_id for o in sending.values()}
        held = {eid: o for eid, o in self.held.items() if known(eid) is not None}
        cancel = {oid: o for oid, o in self.to_cancel.items() if known(o.event_id) is not None}
        for oid in [oid for oid in self._cancel_failing if oid not in cancel]:
            since = self._cancel_failing.pop(oid)
            if oid in self.to_cancel:
                log.info("the VTN never withdrew %s (oadrCancelOpt %s failing since %s): the event has left the "
                         "schedule, so it is not sent again", self.to_cancel[oid].said, oid, since)
        changed = (held, cancel, tried) != (self.held, self.to_cancel, self._tried)
        self._sending, self._tried, self.held, self.to_cancel = sending, tried, held, cancel
        if changed:
            self._save()

    def _save(self) -> None:
        if self._storage is not None:
            sent = [asdict(o) for o in self._sending.values() if o.opt_id in self._tried]
            self._storage.save_value(OPTS_KEY, json.dumps({"held": [asdict(o) for o in self.held.values()],
                                                           "cancel": [asdict(o) for o in self.to_cancel.values()],
                                                           "sent": sent}))
