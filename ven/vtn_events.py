"""Event intake and opt answers, mixed into VtnClient: what a poll brings is dispatched, an oadrDistributeEvent
followed into the schedule, and the VTN hears each event's optIn/optOut (oadrCreatedEvent, oadrCreateOpt).
Separate from ven/vtn.py, whose session decides when to poll and to answer, not what the answers say."""
from __future__ import annotations

import asyncio
import logging
from collections import Counter

from openleadr import utils as outils

from .events import OPT_IN, OPT_OUT, SIMPLE, enrolled, from_openleadr, id_reused, with_opt
from .schedule import UNLISTED
from .vtn_transport import INVALID_DATA, INVALID_ID, VenClient, ei_response, event_status_of, utcnow

# one logger for the VEN side, wherever its code lives: tests and log filters select its lines by this name
log = logging.getLogger("ven.vtn")

OPT_BATCH = 100                 # eventResponses per oadrCreatedEvent the gateway sends itself (about 40 KB)
MAX_LEVELS_LOGGED = 24          # SIMPLE levels named in an event's log line; the status API has them all


# A pass of answers stops after this many messages in a row that a VTN answering failed (500 server busy, a proxy's
# 503): going on past each, a VTN failing them all was sent every waiting answer, one request each, at every poll
# (10 events opted out: 111 requests in 10 s of 1 s polls). The ones failed go last in the next pass, so an answer
# the VTN fails for good (openleadr's 404 for an oadrCreateOpt) holds no other back.
OPTS_FAILED_IN_A_ROW = 2


def _refused_outright(status: int | None) -> bool:
    """An HTTP status that refuses the message itself (a 4xx): not "try later" (408, 429), nor the credentials' 401,
    403 and 407, a proxy's or the VTN's, after which the same message goes once they are put right."""
    return status is not None and 400 <= status < 500 and status not in (401, 403, 407, 408, 429)


class VtnEvents:
    """VtnClient's handling of what the VTN sends and of its opt answers; the state is VtnClient's."""

    _opts_failed_why: str | None = None     # why a message of the last pass of answers failed
    _opt_fails = 0                          # failed messages so far: orders the answers they held

    @property
    def _programmes(self) -> frozenset[str]:
        return frozenset(self._cfg.market_contexts)

    async def _dispatch(self, rtype: str, payload: dict) -> None:
        client = self._client
        if rtype == "oadrResponse":
            return
        if rtype == "oadrDistributeEvent":
            if not await self._from_our_vtn(client, payload):
                return
            events = self._once_each(payload.get("events") or [])
            payload = {**payload, "events": events}
            # oadrDistributeEvent lists every event for this VEN: anything missing was cancelled.
            listed = {e["event_descriptor"]["event_id"] for e in events}
            self._vtn_mods = {e["event_descriptor"]["event_id"]: _modification(e) for e in events}
            self._listed(listed)
            for eid in [eid for eid in self._refused_said if eid not in listed]:
                log.info("event %s, refused, is no longer listed by the VTN", eid)
                del self._refused_said[eid]
            self._sync_answer_cache(client, events)
            self._distributed_in = {k: v for k, v in self._distributed_in.items() if k in listed}
            if payload.get("request_id"):
                self._distributed_in.update(dict.fromkeys(listed, payload["request_id"]))
            if events:
                self._relisted = 0
                self._carried = []
                async with self._opts_lock:   # its answers and ours reach the VTN in the order decided
                    await client._on_event(payload)
                # answers that waited (the BAS's ADR-Opt-Out written while the VTN was away), gone in openleadr's
                # answer to the listing: said as when they go on their own, or the operator never read it
                carried, self._carried = self._carried, []
                if self._relisted:      # said at an outage's first registration, not at each after it
                    log.log(logging.DEBUG if self._repeating() or self._relisting else logging.INFO,
                            "%d event(s) listed again, unchanged", self._relisted)
                if client.reregistration_asked:  # the VTN lists the events again once registered
                    self._forgotten("the answer to its events")
                # without an event to answer openleadr sent nothing: the outcome on the client is another
                # request's (a report's)
                elif any(map(_answered_by_openleadr, events)):
                    if client.last_error:         # its one request is the answer, and it is not retried
                        self._answer_again(events, client.last_error)
                    elif client.server_failed:
                        self._answer_again(events, client.server_failed)
                    elif client.refused:
                        ids = ", ".join(e["event_descriptor"]["event_id"] for e in events)
                        self._answer_refused(f"VTN refused the answer to event(s) {ids}: {client.refused}",
                                             [(e["event_descriptor"]["event_id"],
                                               client.responded_events.get(e["event_descriptor"]["event_id"], OPT_IN))
                                              for e in events if _answered_by_openleadr(e)])
                    else:
                        self._answers_taken((e["event_descriptor"]["event_id"],
                                             client.responded_events.get(e["event_descriptor"]["event_id"], OPT_IN))
                                            for e in events if _answered_by_openleadr(e))
                        for opt in sorted({opt for _, _, opt in carried}):
                            log.info("told the VTN %s for %s (in its answer to the events listed)", opt,
                                     _events([a for a in carried if a[2] == opt]))
            # kept once its events are taken (a new one too): what the VTN says has completed is not cancelled when
            # it stops listing it (its clock may be ahead)
            self._schedule.vtn_statuses({e["event_descriptor"]["event_id"]: e["event_descriptor"].get("event_status")
                                         for e in events})
        elif rtype == "oadrCreateReport":
            await self._create_report(payload)
        elif rtype == "oadrCancelReport":
            await self._cancel_report(payload)
        elif rtype == "oadrRegisterReport":
            # 2.0b report registration goes both ways: the VTN's offer waits for an oadrRegisteredReport (a VTN
            # may offer again at every poll until it has one), here requesting none
            log.info("VTN offered reports; the gateway does not take reports from the VTN: answered requesting none")
            msg = client._create_message("oadrRegisteredReport", response=ei_response(payload.get("request_id")),
                                         ven_id=self.ven_id, report_requests=[])
            if (await client._perform_request("EiReport", msg))[0] == "oadrRequestReregistration":
                self._forgotten("the answer to its report offer")
        else:
            log.warning("VTN sent %s, which the gateway does not handle; ignored", rtype)

    def _once_each(self, events: list[dict]) -> list[dict]:
        """An event listed twice in one oadrDistributeEvent (schema-valid) counts once, as its copy with the highest
        modificationNumber: openleadr answered the second copy of a cancelled or completed event from an answer it
        had just dropped (KeyError), and then optOut to every event of the message, leaving the events after it
        unread (not followed)."""
        counts = Counter(e["event_descriptor"]["event_id"] for e in events)
        twice = {eid for eid, n in counts.items() if n > 1}
        if twice and twice != self._listed_twice:
            log.warning("the VTN lists event(s) %s more than once in one message: each is followed and answered "
                        "once, as its copy with the highest modificationNumber", ", ".join(sorted(twice)))
        self._listed_twice = twice
        if not twice:
            return events
        chosen: dict[str, dict] = {}
        for e in events:
            eid = e["event_descriptor"]["event_id"]
            if eid not in chosen or _modification(e) >= _modification(chosen[eid]):
                chosen[eid] = e
        return list(chosen.values())

    async def _from_our_vtn(self, client: VenClient, payload: dict) -> bool:
        """2.0b rule 21: an ID in a payload that is not the expected one is an error, not an instruction.
        An oadrDistributeEvent naming another vtnID than the VTN registered with (a misrouted message, a
        proxy mixing up utilities) is answered 452 and not followed: its list would cancel this VTN's
        events, and its events would shed the building for a party it is not enrolled with."""
        vtn_id = payload.get("vtn_id")
        if not vtn_id or not self.vtn_id or vtn_id == self.vtn_id:
            if self._foreign_vtn is not None:
                log.info("oadrDistributeEvent from the registered VTN %s again", self.vtn_id)
                self._foreign_vtn = None
            return True
        if vtn_id != self._foreign_vtn:
            # once for each vtnID: a VTN that changed its own (a new installation keeping its registrations) gives the
            # new one at the registration, and its events are followed again; a foreign one stays refused
            log.warning("oadrDistributeEvent from vtnID %r, not %r, the VTN this VEN registered with: answered %d, "
                        "its %d event(s) not followed; registering again, in case the VTN's vtnID changed",
                        vtn_id, self.vtn_id, INVALID_ID, len(payload.get("events") or []))
            self._foreign_vtn = vtn_id
            self._lost_said = True
            self._reregistration_requested(f"oadrDistributeEvent from vtnID {vtn_id!r}")
        msg = client._create_message(
            "oadrCreatedEvent", ven_id=self.ven_id, event_responses=None,
            response=ei_response(payload.get("request_id"),
                                 f"vtnID {vtn_id} is not the registered VTN's ({self.vtn_id})"))
        await client._perform_request("EiEvent", msg)
        return False

    def _sync_answer_cache(self, client: VenClient, events: list[dict]) -> None:
        """openleadr answers an unmodified event from its cache without asking us. Keep that cache
        right: the schedule's answer may have changed since (ADR-Opt-Out), and openleadr drops its
        answer once it sees an event completed yet raises on the next listing that still carries it,
        answering optOut to every event of that message. Events no longer listed are forgotten, so
        the cache does not grow with every event of the gateway's life."""
        listed = {e["event_descriptor"]["event_id"] for e in events}
        client.received_events[:] = [e for e in client.received_events
                                     if e["event_descriptor"]["event_id"] in listed]
        for eid in set(client.responded_events) - listed:
            del client.responded_events[eid]
        for eid in set(client.invalid_events) - listed:
            del client.invalid_events[eid]
        for e in client.received_events:
            eid = e["event_descriptor"]["event_id"]
            stored = self._schedule.get(eid)
            if eid in client.invalid_events:
                # refused as listed: the copy kept from before is not what the VTN asks about
                client.responded_events[eid] = OPT_OUT
            elif stored is not None:
                client.responded_events[eid] = _answer(stored)
            else:
                client.responded_events.setdefault(eid, OPT_IN)

    def _listed(self, listed: set[str], why: str = UNLISTED) -> None:
        """The VTN lists these events for this VEN and no others. An answer still waiting for one it no longer
        lists (a VTN restarted without its events, say) would name an event it does not have: dropped."""
        self._schedule.retain_only(listed, why)
        self._listed_since_start &= listed
        self._vtn_mods = {eid: mod for eid, mod in self._vtn_mods.items() if eid in listed}
        dropped = [(eid, self._pending_opts.pop(eid)[1]) for eid in list(self._pending_opts) if eid not in listed]
        for eid, opt in dropped:
            self._given_up(eid, opt, "the VTN no longer lists the event")
            self._singly.discard(eid)
        if dropped and self._opts_not_taken is None:
            # written while the VTN was away (it came back without the event: restarted, or the utility deleted it):
            # no line said where the BAS's optOut went, and no "told the VTN" follows
            log.info("%s, waiting for the VTN, %s not sent: the VTN no longer lists %s", answers_text(dropped),
                     "is" if len(dropped) == 1 else "are", "the event" if len(dropped) == 1 else "the events")
        if gone := [(eid, self._refused.pop(eid)) for eid in list(self._refused) if eid not in listed]:
            self._refusal_over(f"the VTN never took {answers_text(gone)} and no longer lists "
                               f"{'the event' if len(gone) == 1 else 'those events'}")

    def _answer_again(self, events: list[dict], error: str) -> None:
        # neutral: a link that lost it and a VTN that would not take it read alike from here. Within a fault of the
        # answers already said (the VTN failing them all) it is one more of them, not a new fault
        log.log(logging.DEBUG if self._opts_not_taken is not None else logging.WARNING,
                "the answer to %d event(s) did not get through (%s); it is sent again", len(events), error)
        for e in events:
            stored = self._schedule.get(e["event_descriptor"]["event_id"])
            if stored is not None and _answered_by_openleadr(e):
                self._pending_opts[stored.event_id] = (stored.modification_number, _answer(stored), False)
        self._opts_start_said = True    # this WARNING is the start: not a second one if the next send fails too
        if self._pending_opts and self._opts_not_taken is None:
            # its fault, as the one _track_opts_not_taken opens: the answers' end line, the stop line's item while they
            # wait (a stop before the next pass, or while the VTN is away, named nothing of them)
            self._opts_not_taken = {"since": utcnow().isoformat(timespec="seconds"), "count": len(self._pending_opts),
                                    "why": error}
        self._opts_changed()

    # -- events ------------------------------------------------------------------------------

    def _held_answer(self, raw: dict) -> str | None:
        """The answer for a listed event whose handling raised, if the schedule holds this modification of it all
        the same (it raised after taking it): what the site runs is what the VTN hears. None: not held."""
        ev = self._schedule.get(raw["event_descriptor"]["event_id"])
        return _answer(ev) if ev is not None and ev.modification_number == _modification(raw) else None

    async def _handle_event(self, raw: dict) -> str:
        # openleadr hands over a message's events one after the other without ever yielding: with hundreds in
        # one oadrDistributeEvent the loop would be held for all of them
        await asyncio.sleep(0)
        now = utcnow()
        eid = raw["event_descriptor"]["event_id"]
        prev = self._schedule.get(eid)
        mod = int(raw["event_descriptor"].get("modification_number") or 0)
        try:
            ev = from_openleadr(raw, now, prev, ven_id=self.ven_id, market_contexts=self._programmes)
        except (ValueError, OverflowError) as err:
            return self._refuse_event(eid, mod, prev, err)
        self._client.invalid_events.pop(eid, None)
        # readable again: its unlisting later is not a refused event's, and a refusal after it is said anew
        self._refused_said.pop(eid, None)
        # a lower modification, or the same one with other intervals after the stored event is over (a VTN
        # restarted without its events numbers from 0 again; taken as the same event it drove the level unlogged)
        if prev is not None and (mod < prev.modification_number and id_reused(prev, raw, now) or
                                 mod == prev.modification_number and now >= prev.end and ev.signals != prev.signals):
            again = "again, other intervals" if mod == prev.modification_number else f"after {prev.modification_number}"
            log.info("event %s: the VTN reused the id of an event that is over (modification %d %s): taken as a new "
                     "event", eid, mod, again)
            self._schedule.forget(eid)
            prev = None
            try:
                ev = from_openleadr(raw, now, None, ven_id=self.ven_id, market_contexts=self._programmes)
            except (ValueError, OverflowError) as err:
                return self._refuse_event(eid, mod, prev, err)
        if not ev.for_this_ven:
            # eiTarget names other VENs only (a VTN mistake or a broadcast), or the event is another programme's:
            # following it would shed this building for another site's event, or for a programme it never joined.
            # The utility hears optOut: this site will not act on it.
            if (prev is None or prev.for_this_ven) and not enrolled(ev.market_context, self._programmes):
                # a WARNING for a programme's first event (a typo in the list shows there), INFO for the rest: a VTN
                # running several sends their events every day to a site rightly enrolled in one (helper rev41)
                first = ev.market_context not in self._contexts_said
                self._contexts_said.add(ev.market_context)
                log.log(logging.WARNING if first else logging.INFO,
                        "event %s is of market context %r, not one of openadr.market_contexts (%s): kept for the "
                        "status API, not followed, answered optOut", eid, ev.market_context,
                        ", ".join(map(repr, sorted(self._programmes))))
            elif prev is None or prev.for_this_ven:
                log.warning("event %s targets %s, not this VEN (%s): kept for the status API, not followed, "
                            "answered optOut", eid, ", ".join(f"{k}={v}" for k, v in ev.targets), self.ven_id)
            ev = with_opt(ev, OPT_OUT)
            if self._schedule.upsert(ev) is not None and prev is not None:
                self._log_event(ev, prev)
            self._answer_this_modification(raw, prev)
            return _answer(self._schedule.get(eid))
        # a new event, or one back from an implied cancellation (ADR-Opt-Out may have changed meanwhile,
        # and set_opt_out leaves cancelled events alone), or one the VTN retargeted to this VEN (its optOut
        # was the other VENs' event's, not the site's), or a test event made a real one (ADR-Opt-Out leaves
        # test events alone), or one that gained a SIMPLE signal, takes the site's answer of now. One without a
        # SIMPLE signal (only LOAD_DISPATCH, a price, a vendor's x- signal) moves nothing here: answered optIn,
        # the utility counted on a shed the site would not make.
        fresh = ((prev is None or prev.unlisted or not prev.for_this_ven or prev.test_event or not prev.has_simple
                  or not ev.has_simple) and not ev.test_event and not ev.cancelled)
        if fresh:
            ev = with_opt(ev, OPT_OUT if self._schedule.opted_out or not ev.has_simple else OPT_IN)
        if self._schedule.upsert(ev) is not None:  # None: not taken (the schedule logs why)
            self._log_event(ev, prev)
            # no answer means taking part: the utility has to hear that this site will not, and, for an
            # event back from an implied cancellation that it last heard optOut for, that it now does
            heard = prev.opt if prev is not None and prev.for_this_ven else None
            stored = self._schedule.get(eid)
            # Its first listing since the start: whether the VTN heard this modification's optOut is not kept (an
            # answer still waiting at the stop, or one an earlier version never sent for a modification), and silence
            # means taking part. openleadr answers every event wanting an answer at a start; this one is told again.
            retell = eid not in self._listed_since_start and (stored.open_ended or stored.stop > utcnow())
            self._listed_since_start.add(eid)
            if fresh and ev.response_required == "never" and OPT_OUT in (ev.opt, heard):
                self._pending_opts[eid] = (ev.modification_number, ev.opt, True)
                self._opts_changed()
            elif (ev.response_required == "never" and prev is not None and stored.opt == OPT_OUT
                  and (ev.modification_number > prev.modification_number or retell)
                  and not ev.cancelled and not ev.test_event):
                # the optOut the VTN heard names an earlier modification (its qualifiedEventID), and silence on this
                # one means taking part: the utility would count on a shed the site will not make
                self._pending_opts[eid] = (ev.modification_number, OPT_OUT, True)
                self._opts_changed()
        self._answer_this_modification(raw, prev)
        return _answer(self._schedule.get(eid))

    def _refuse_event(self, eid: str, mod: int, prev, err: Exception) -> str:
        """An event this version cannot run (a time past year 9999: a start in year 9999, a ramp-up of 9000 years;
        more intervals than MAX_EVENT_INTERVALS) is answered optOut with 454 (invalid data) for itself, and said once
        for each of its modifications. A time out of range ended the session at every listing (OverflowError): the
        events listed after it were never read, none of the message's answered. A copy of an earlier modification
        stays as it was: the utility hears that the new one is refused."""
        why = ("a time beyond the years 1-9999 (a start, an end or a duration out of range)"
               if isinstance(err, OverflowError) else str(err))
        self._client.invalid_events[eid] = f"event {eid} refused: {why}"[:200]
        if self._refused_said.get(eid) != mod:
            log.warning("event %s (modification %d) refused: %s; answered optOut, code %d%s", eid, mod, why,
                        INVALID_DATA, "" if prev is None else f", modification {prev.modification_number} kept")
            self._refused_said[eid] = mod
        return OPT_OUT

    def _answer_this_modification(self, raw: dict, prev) -> None:
        """The answers still to send for an event the VTN has just listed as new or modified. One waiting for an
        older modification (an ADR-Opt-Out change the VTN had not heard yet) is no longer the answer: sent after
        openleadr's answer to this one, the VTN heard modification N after N+1 (rule 48 has the VTN refuse a
        mismatched modificationNumber). openleadr's answer carries the site's answer of now, so the waiting one
        goes; where openleadr sends none, it waits renumbered. openleadr also answers no event whose active period
        is over, a modification that ends an event early among them: rules 12 and 62 want an oadrCreatedEvent for
        every new, changed and cancelled event with oadrResponseRequired always, so the gateway sends it."""
        eid = raw["event_descriptor"]["event_id"]
        stored = self._schedule.get(eid)
        if stored is None:
            return
        waiting = self._pending_opts.get(eid)
        answered = raw.get("response_required") == "always"
        if answered and not _answered_by_openleadr(raw):
            if prev is None or stored.modification_number > prev.modification_number:
                self._pending_opts[eid] = (stored.modification_number, _answer(stored), False)
                self._opts_changed()
        elif waiting is not None and waiting[0] < stored.modification_number:
            if not answered and not stored.cancelled:
                self._pending_opts[eid] = (stored.modification_number, stored.opt, True)
            else:
                del self._pending_opts[eid]
                self._singly.discard(eid)
                if answered:
                    self._carried.append((eid, stored.modification_number, _answer(stored)))
        elif waiting is not None and answered and waiting[0] == stored.modification_number:
            # this very modification listed again (registered anew after an outage) and answered by openleadr with
            # the site's answer of now: the one that waited through the outage would be the same message twice
            del self._pending_opts[eid]
            self._singly.discard(eid)
            self._carried.append((eid, stored.modification_number, _answer(stored)))

    def _log_event(self, ev, prev) -> None:
        eid = ev.event_id
        # the utility's word on why (a heat advisory, a test of the programme): the operator reads it beside the event
        said = f' (VTN comment: "{ev.vtn_comment}")' if ev.vtn_comment else ""
        if ev.cancelled:
            log.info("event %s cancelled by the VTN (modification %d)%s%s", eid, ev.modification_number,
                     _winding_down(self._schedule.get(eid), utcnow()), said)
            return
        if prev is None:
            verb = "received"
        elif prev.unlisted:
            verb = "listed again by the VTN"
        elif ev.modification_number == prev.modification_number and ev.signals != prev.signals:
            verb = "changed by the VTN without a new modification number"   # it runs as now listed
        elif ev.modification_number == prev.modification_number:
            self._relisted += 1         # said when it was received; counted for one line per message
            return
        else:
            verb = f"modified (modification {ev.modification_number})"
        others = sorted({s.name for s in ev.signals if s.name != SIMPLE})
        # each SIMPLE signal's own: two joined read as one list of steps (helper vtns41)
        levels = " and ".join(_levels([iv.payload for iv in s.intervals]) for s in ev.signals if s.name == SIMPLE)
        extra = f", randomized start +{ev.start_offset.total_seconds():.1f} s" if ev.start_after else ""
        end = "until cancelled" if ev.open_ended else f"to {ev.end.isoformat(timespec='seconds')}"
        span_ = f"from {ev.start.isoformat(timespec='seconds')} {end}"
        if ev.test_event:
            log.info("test event %s %s: acknowledged, does not drive the points%s", eid, verb, said)
        elif not ev.has_simple:
            log.info("event %s %s: carries no SIMPLE signal, only %s, %s: kept for the status API, not followed, "
                     "answered optOut (the gateway acts on SIMPLE levels only)%s", eid, verb,
                     ", ".join(others) or "none", span_, said)
        else:
            prio = f", priority {ev.priority}" if ev.priority else ""
            over = " (over already: it drives nothing)" if not ev.open_ended and ev.end <= utcnow() else ""
            # the VTN meant one piece of equipment; the BAS sees one ADR-Event-Level for the building
            parts = sorted({v for k, v in ev.targets if k == "resource_id"})
            part = (f", for resource{'s' if len(parts) > 1 else ''} {', '.join(parts)}: followed for the whole "
                    "building (the gateway has no points per resource)") if parts else ""
            log.info("event %s %s: SIMPLE levels %s %s%s%s -> %s%s%s%s", eid, verb, levels, span_, prio, extra, ev.opt,
                     over, part, said)
        if others and ev.has_simple:
            log.info("event %s carries signal(s) %s: kept for the status API, not driving ADR-Event-Level",
                     eid, ", ".join(others))

    async def _send_opts(self) -> None:
        if (self._pending_opts or self._opt_ledger.to_cancel) and self._client is not None:
            async with self._opts_lock:
                await self._send_opts_locked()
        self._track_opts_not_taken()

    def _track_opts_not_taken(self) -> None:
        """One WARNING when a pass leaves answers the VTN did not take while it is connected (an empty or failed answer
        to oadrCreateOpt or oadrCreatedEvent), one INFO once none waits. They are sent again at each poll, and
        meanwhile the utility counts the site as it last heard it: a BAS's opt-out not taken is a shed it counts on."""
        waiting = len(self._pending_opts)
        if waiting and self.connected and self._opts_not_taken is None:
            # the pass goes on past a failed message: the last request's outcome may be another message's success
            last = self._client.last_error if self._client is not None else None
            why = self._opts_failed_why or last or "no answer"
            self._opts_not_taken = {"since": utcnow().isoformat(timespec="seconds"), "count": waiting, "why": why}
            if not self._opts_start_said:
                log.warning("the VTN did not take the answer(s) to %d event(s) (%s): sent again at each poll; the "
                            "utility counts the site as it last heard it meanwhile", waiting, why)
            self._opts_start_said = True
        elif waiting and self._opts_not_taken is not None:
            self._opts_not_taken["count"] = waiting
        elif not waiting:
            if self._opts_not_taken is not None and self._opts_given_up:
                # "took the answers again" read as if the utility had heard them: it never did
                never = "; ".join(f"{answers_text([(eid, opt)])} ({why})" for eid, opt, why in self._opts_given_up[:5])
                more = len(self._opts_given_up) - 5
                log.info("no answer to events waits for the VTN any more (not taken since %s), and it never took %s%s",
                         self._opts_not_taken["since"], never, f" and {more} more" if more > 0 else "")
            elif self._opts_not_taken is not None:
                log.info("the VTN took the answers to events again (not taken since %s)", self._opts_not_taken["since"])
            self._opts_not_taken, self._opts_start_said, self._opts_given_up = None, False, []

    async def _send_opts_locked(self) -> None:
        # One line for the answers of a kind a pass got taken: those of a batch the VTN failed go one per message
        # (openleadr's VTN fails every answer to events beside one it listed completed), and each message's own
        # line was as many INFO lines at each listing, the same news.
        told: dict[tuple[str, bool], list[tuple[str, int, str]]] = {}
        try:
            await self._send_opts_pass(told)
        finally:
            for (opt, by_create_opt), answers in told.items():
                log.info("told the VTN %s for %s%s", opt, _events(answers),
                         f" (oadrCreateOpt: {'it wants' if len(answers) == 1 else 'they want'} no answer)"
                         * by_create_opt)

    async def _send_opts_pass(self, told: dict[tuple[str, bool], list[tuple[str, int, str]]]) -> None:
        # the answers' events (and the ADR-Opt-Out command behind them) on the disk first: after a power cut the
        # gateway must not hold other answers than the ones the VTN heard
        await self._schedule.synced()
        self._opts_failed_why = None
        messages = self._opt_messages()
        if not await self._withdraw_opts():
            return
        failed_in_a_row = 0
        for by_create_opt, answers in messages:
            if self._client is None:
                return
            if failed_in_a_row >= OPTS_FAILED_IN_A_ROW:
                return      # the VTN fails what it is sent: the rest at the next poll
            # The poll reads the VTN's listing while this pass awaits the VTN (only openleadr's answer to it takes the
            # lock): an answer it dropped (the utility deleted the event) went all the same, and was refused (452),
            # and one a newer answer replaced went before it. What still waits, as built, goes.
            answers = [a for a in answers if self._pending_opts.get(a[0]) == (a[1], a[2], by_create_opt)]
            if not answers:
                continue
            if by_create_opt:
                (eid, mod, opt), = answers
                # 2.0b's optID names the opt at the VTN: one sent again (its answer lost, a time-out, a VTN failing
                # for a while, a restart) is the same opt, as first sent, not another the VTN would keep beside it.
                # A new answer, a new opt (ven/vtn_opts.py).
                sent = self._opt_ledger.for_answer(eid, mod, opt)
                msg = self._client._create_message(
                    "oadrCreateOpt", request_id=sent.request_id, ven_id=self.ven_id,
                    opt_id=sent.opt_id, opt_type=opt,
                    opt_reason="participating" if opt == OPT_IN else "notParticipating",
                    created_date_time=sent.created_at, event_id=eid, modification_number=self._on_wire(eid, mod),
                    targets=[{"ven_id": self.ven_id}])
                self._opt_ledger.tried(sent)
                rtype, payload = await self._client._perform_request("EiOpt", msg)
                status = self._client.error_status
                if self._client.refused or (status is not None and 400 <= status < 500):
                    # refused: the VTN holds no such opt, and a change of answer has none to withdraw (openleadr's VTN,
                    # serving no EiOpt, got an oadrCancelOpt failed 404 after each oadrCreateOpt failed 404)
                    self._opt_ledger.not_held(sent)
            else:
                # the eventResponse names the oadrDistributeEvent that carried the event (rule 42), so the
                # VTN can match it, as it does the answer openleadr sent on that message
                request_id = self._distributed_in.get(answers[0][0]) or outils.generate_id()
                msg = self._client._create_message(
                    "oadrCreatedEvent", ven_id=self.ven_id,
                    response={"response_code": 200, "response_description": "OK", "request_id": request_id},
                    event_responses=[{"response_code": 200, "response_description": "OK",
                                      "request_id": request_id, "event_id": eid,
                                      "modification_number": self._on_wire(eid, mod), "opt_type": opt}
                                     for eid, mod, opt in answers])
                rtype, payload = await self._client._perform_request("EiEvent", msg)
            if rtype is None and self._client.error_status is None:
                return      # out of reach: retried on the next poll or after re-registration
            if self._client.failure(rtype):
                how = "oadrCreateOpt for" if by_create_opt else "answer to"
                self._opts_failed_why = self._client.last_error or (
                    f"the VTN failed the {answers[0][2]} {how} {_events(answers)}: {self._client.refused}")
                # The VTN answered this message with an error status, and may take the others: openleadr's own VTN
                # fails (500) every answer to an event it listed completed, as it drops it from its queue then (the
                # utility ended it early; entered after the fact). Returning here held the BAS's opt-outs behind
                # that answer until the VTN changed its events. It waits and goes alone from now, so the answers
                # it shared a message with are not failed with it. So does one the VTN answered with a 5xx code in
                # its eiResponse (2.0b's codes are HTTP's: "500 server busy" is its own fault, not a refusal of the
                # answer), which was dropped, never sent again: the utility never heard the BAS's optOut.
                failed_in_a_row += 1
                self._opt_fails += 1
                self._opt_failed_at.update((eid, self._opt_fails) for eid, _, _ in answers)
                if len(answers) > 1:
                    self._singly.update(eid for eid, _, _ in answers)
                    self._opts_changed()
                else:
                    self._drop_if_over(answers[0], self._opts_failed_why)
                continue
            failed_in_a_row = 0
            for eid, _, _ in answers:
                self._opt_failed_at.pop(eid, None)
            opt = answers[0][2]     # one for all of a message's answers
            if rtype == "oadrRequestReregistration":
                self._forgotten(f"the {opt} for {_events(answers)}")
                return      # still pending: sent once registered again
            if self._client.refused and len(answers) > 1:
                # one event the VTN will not take refuses the whole message: each answer goes on its own,
                # so only the answers it refuses are lost
                log.info("the VTN refused the %s for %s in one message (%s); each is sent on its own",
                         opt, _events(answers), self._client.refused)
                self._singly.update(eid for eid, _, _ in answers)
                # each in this pass: left to the next poll, they read as answers the VTN had not taken, a WARNING
                # "(no answer)" before the one naming the answer it refused
                messages += [(False, [a]) for a in answers if self._pending_opts.get(a[0]) == (a[1], a[2], False)]
                continue
            for eid, mod, answer in answers:
                if by_create_opt and not self._client.refused:
                    self._opt_ledger.taken(eid)
                if self._pending_opts.get(eid) == (mod, answer, by_create_opt):
                    del self._pending_opts[eid]
                    self._singly.discard(eid)
                    if self._client.refused:
                        self._given_up(eid, answer, f"refused: {self._client.refused}")
            how = "oadrCreateOpt for" if by_create_opt else "answer to"
            if self._client.refused:
                self._answer_refused(f"VTN refused the {opt} {how} {_events(answers)}: {self._client.refused}",
                                     [(eid, answer) for eid, _, answer in answers])
                continue
            self._answers_taken((eid, answer) for eid, _, answer in answers)
            told.setdefault((opt, by_create_opt), []).extend(answers)

    async def _withdraw_opts(self) -> bool:
        """oadrCancelOpt for each opt the VTN holds that no longer says the site's answer (the BAS changed its mind),
        before the new opt goes: a VTN keeping opts by optID held the optOut and the optIn after it side by side, and
        the utility's operator read the site both ways. False: the VTN is out of reach."""
        failed_in_a_row = 0
        for opt_id, held in list(self._opt_ledger.to_cancel.items()):
            if self._client is None:
                return False
            if failed_in_a_row >= OPTS_FAILED_IN_A_ROW:
                return True     # a VTN failing what it is sent: the rest at the next pass, the new answers now
            msg = self._client._create_message("oadrCancelOpt", request_id=outils.generate_id(), ven_id=self.ven_id,
                                               opt_id=opt_id)
            rtype, _ = await self._client._perform_request("EiOpt", msg)
            if rtype is None and self._client.error_status is None:
                return False
            failed = self._client.failure(rtype)
            refused = self._client.refused or (failed and _refused_outright(self._client.error_status))
            if failed and not refused:
                self._opt_ledger.cancel_failed(opt_id, failed)
                failed_in_a_row += 1
                continue
            failed_in_a_row = 0
            since = self._opt_ledger.withdrawn(opt_id)
            if refused:
                # a VTN serving no oadrCancelOpt, or one that no longer has the opt: the new opt still goes
                log.info("the VTN did not withdraw %s (oadrCancelOpt %s: %s%s): the new answer goes all the same",
                         held.said, opt_id, self._client.refused or failed, since)
            else:
                log.info("withdrew %s at the VTN (oadrCancelOpt %s%s)", held.said, opt_id, since)
        return True

    def _drop_if_over(self, answer: tuple[str, int, str], why: str) -> None:
        """An answer to an event whose active period is over, failed by the VTN with an HTTP error status, is not sent
        again: openleadr's VTN fails every answer to an event it listed completed (the utility ended it early), and
        sent at each poll it kept "VTN has not taken the site's answers" red on the dashboard, and its alert, until the
        utility next changed its events, over an answer about a shed nobody counts on any more."""
        eid, mod, opt = answer
        stored = self._schedule.get(eid)
        if stored is None or stored.open_ended or stored.end > utcnow():
            return
        # Over by this clock is not enough. A VTN failing for a while ("500 server busy", a proxy's 503 while it
        # restarts) across the end of an event the BAS opted out of in its last minutes dropped the optOut at the
        # first failure after the end: the utility, well again, settled the event on the optIn. Given up on only
        # when the VTN itself listed the event completed (openleadr's VTN fails those answers for good), or refused
        # this message outright (openleadr's 404 for an oadrCreateOpt).
        refused = _refused_outright(self._client.error_status if self._client is not None else None)
        if stored.status != "completed" and not refused:
            return
        if self._pending_opts.get(eid, (None,))[0] == mod:
            del self._pending_opts[eid]
            self._singly.discard(eid)
            self._given_up(eid, opt, "failed after the event's end")
            log.info("the VTN failed the %s for event %s, over already (%s): not sent again", opt, eid, why)

    def _opt_messages(self) -> list[tuple[bool, list[tuple[str, int, str]]]]:
        """The waiting answers as messages: an oadrCreateOpt per event; one oadrCreatedEvent for the answers of
        one kind to events of one oadrDistributeEvent (up to OPT_BATCH), as openleadr answers that message. A
        BAS opting out of a day-ahead program's 200 events sent 200 messages (20 s at a TLS VTN's 100 ms each,
        polls waiting) and logged 200 lines."""
        out: list[tuple[bool, list[tuple[str, int, str]]]] = []
        groups: dict[tuple[str, str], list[tuple[str, int, str]]] = {}
        for gone in [eid for eid in self._opt_failed_at if eid not in self._pending_opts]:
            del self._opt_failed_at[gone]
        self._opt_ledger.keep_only({eid for eid, (_, _, by) in self._pending_opts.items() if by}, self._schedule.get)
        # never failed first, then the one failed longest ago: a pass that stops at failures tries each in turn
        waiting = sorted(self._pending_opts.items(), key=lambda item: self._opt_failed_at.get(item[0], 0))
        for eid, (mod, opt, by_create_opt) in waiting:
            if by_create_opt:
                self._opt_ledger.supersede(eid, mod, opt)
                out.append((True, [(eid, mod, opt)]))
                continue
            key = (self._distributed_in.get(eid) or eid, opt) if eid not in self._singly else (eid, "singly")
            if key not in groups or len(groups[key]) >= OPT_BATCH:
                groups[key] = []
                out.append((False, groups[key]))
            groups[key].append((eid, mod, opt))
        return out

    def _on_wire(self, eid: str, mod: int) -> int:
        """The modificationNumber an answer names: the event's as the VTN lists it now. It may list one older than the
        schedule follows (a VTN restarted without its events and the event entered again at 0; the schedule keeps the
        newer copy, ven/schedule.py upsert): openleadr's answer to that listing named the VTN's number, and the
        gateway's own, the BAS's optOut among them, named the followed one, which that VTN refused (452): the utility
        kept the answer openleadr had given."""
        listed = self._vtn_mods.get(eid)
        return listed if listed is not None and listed < mod else mod

    def _given_up(self, eid: str, opt: str, why: str) -> None:
        """An answer stops waiting untaken: said in the end line of the answers' fault, if one is open."""
        if self._opts_not_taken is not None:
            self._opts_given_up.append((eid, opt, why))

    def _answers_taken(self, answers) -> None:
        """The VTN took these (eventID, optType) answers: one given up before (refused for an older modification,
        say) is no longer one it never heard, and a refusal of the event's answer is over."""
        taken = dict(answers)
        self._opts_given_up = [g for g in self._opts_given_up if g[0] not in taken]
        if ended := [(eid, taken[eid]) for eid in list(self._refused) if eid in taken and self._refused.pop(eid)]:
            self._refusal_over(f"the VTN took {answers_text(ended)}")

    def _answer_refused(self, error: str, answers: list[tuple[str, str]]) -> None:
        # Not sent again: the same answer would be refused again. The utility does not know the
        # gateway's answer, so the operator has to hear of it.
        self.opt_answer_error = error
        if not self._refused:
            self._refused_since = utcnow().isoformat(timespec="seconds")
        self._refused.update(answers)
        log.warning("%s", error)

    def _refusal_over(self, how: str) -> None:
        """No refused answer stands any more: the VTN took an answer to each refused event since (a later
        modification, the BAS's next change), or stopped listing it. The refusal's WARNING had no end: the dashboard's
        "VTN refused an opt answer" stayed red after the VTN took the event's answer, until another event's answer
        went, and the log never said the refusal was over."""
        if self._refused or self.opt_answer_error is None:
            return
        log.info("%s: no answer to events stands refused any more (refused since %s)", how, self._refused_since)
        self.opt_answer_error = None

    def refused_answers(self) -> dict | None:
        """The answers the VTN refused and has not taken an answer to their events since, from the refusal's WARNING
        to its end line: answers (for a log line) and since; None when none stands."""
        if not self._refused:
            return None
        return {"answers": answers_text(list(self._refused.items())), "since": self._refused_since}


def _events(answers: list[tuple[str, int, str]]) -> str:
    """'event e1', 'events e1, e2', or the first few and how many, for a log line."""
    ids = [eid for eid, _, _ in answers]
    if len(ids) == 1:
        return f"event {ids[0]}"
    shown = ", ".join(ids[:5])
    return f"{len(ids)} events ({shown}, ...)" if len(ids) > 5 else f"events {shown}"


def answers_text(answers: list[tuple[str, str]]) -> str:
    """(eventID, optType) pairs for a log line: 'the optOut for event e1', 'the optOut for events e1, e2 and the optIn
    for event e3', or ""."""
    by_opt: dict[str, list[tuple[str, int, str]]] = {}
    for eid, opt in answers:
        by_opt.setdefault(opt, []).append((eid, 0, opt))
    return " and ".join(f"the {opt} for {_events(group)}" for opt, group in sorted(by_opt.items(), reverse=True))


def _winding_down(event, now) -> str:
    """For a log line: when a cancelled event's level ends, if not at once (rule 65's randomized termination)."""
    if event is None or not event.drives_points or event.stop <= now:
        return ""
    if event.stop == event.end:     # the draw fell past its end: it ends as it would have
        return f": its level ends at {event.stop.isoformat(timespec='seconds')}, the event's end"
    return (f": its level ends at {event.stop.isoformat(timespec='seconds')}, at random within its startafter "
            f"of {event.start_after.total_seconds():g} s")


def _answer(event) -> str:
    """One answer per event and modification: a cancellation is acknowledged with optIn."""
    return OPT_IN if event.cancelled else event.opt


def _levels(levels: list) -> str:
    if len(levels) > MAX_LEVELS_LOGGED:     # a day of 1-minute intervals made one line of 7 KB
        return f"{str(levels[:MAX_LEVELS_LOGGED])[:-1]}, ... ({len(levels)} intervals)]"
    return str(levels)


def _answered_by_openleadr(event: dict) -> bool:
    """Whether openleadr's oadrCreatedEvent for its message answers this event (its own test)."""
    return event.get("response_required") == "always" and event_status_of(event) != "completed"


def _modification(event: dict) -> int:
    return int(event["event_descriptor"].get("modification_number") or 0)
