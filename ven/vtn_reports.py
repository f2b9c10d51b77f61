"""Telemetry to the VTN, mixed into VtnClient: the report requests served (oadrCreateReport, oadrCancelReport, the
report list asked for again), each standing request's stream from its start to its end (parked for the VTN's next
request, or landing after its last update), and the wait for a first request. Their delivery, as intervals in
oadrUpdateReport, is ven/vtn_delivery.py; one update and its answer ven/vtn_updates.py. Separate from ven/vtn.py,
whose session registers and polls."""
from __future__ import annotations

import asyncio
import copy
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo

from openleadr import utils as outils

from bacnet_api.settle import span

from .report_intervals import (EPOCH, report_window, wire_seconds, bucket_start, effective_granularity, grid,
                               report_origin, report_period)
from .vtn_transport import INVALID_ID, wire_duration, ei_response, iso_utc, refusal_of, utcnow, poll_period

# one logger for the VEN side, wherever its code lives: tests and log filters select its lines by this name
log = logging.getLogger("ven.vtn")

BATCH = 100                     # intervals per oadrUpdateReport when catching up
# Standing requests served at once (a VTN's settlement and real-time streams, say); each reads the queue
# apart, and a sample waits until the slowest took it. A request beyond this is refused (452).
MAX_STANDING = 4
# A VTN requests telemetry in its answer to the offer or on one of the next polls: registered this many polls (and
# openadr.request_wait_seconds) with the offer taken and no standing request, the operator hears of it
REQUEST_WAIT_POLLS = 3
ASKED_KEPT = 5          # what the VTN asked for instead, named in the warning: the latest few


@dataclass
class Unrequested:
    """Registered, the offer taken, and no standing TELEMETRY_USAGE request served: readings only pile up."""
    since: datetime
    began: float                    # the event loop's clock
    said: bool = False              # the WARNING is out: the status and the dashboard say it until a request
    asked: list[str] = field(default_factory=list)   # what the VTN asked for meanwhile instead (latest ASKED_KEPT)


@dataclass
class Standing:
    """One standing TELEMETRY_USAGE request being served, and where its delivery stands."""
    rrid: str
    granularity: timedelta
    back: timedelta                 # reportBackDuration: how often it wants updates
    # its reportInterval: the start of its first interval and its end (None: unbounded)
    window: tuple[datetime | None, datetime | None] = (None, None)
    origin: datetime = EPOCH                # its intervals' grid goes through this (report_origin)
    sent_until: datetime | None = None      # end of the last interval the VTN took under it
    # sent_until is at most that: a place 0.3.0 left (TelemetryQueue.places_current), where a stream it served alone
    # stood at its first update. Its next report is dated at its first interval: the intervals between were sent
    undated: bool = False
    next_report: datetime | None = None     # when its next update is due (on its grid)
    catch_up: bool = True                   # send every complete interval now (backlog, retry)
    final: bool = False                     # cancelled with reportToFollow: one last update, then it ends
    backlog: int = 0                        # intervals of a backlog sent so far (said once it is all sent)
    backlog_span: tuple[datetime, datetime] | None = None     # the first one's start, the last one's end
    backlog_first: tuple | None = None      # its first batch's line, said once a second batch follows
    batch: int = BATCH                      # intervals per update: less once the VTN could not take BATCH in time
    ahead_said: bool = False                # readings stamped by a clock that was ahead: said once
    late_dropped: int = 0                   # readings dropped as late since the WARNING that said so (0: none)
    # readings before it went to the VTN in intervals of this granularity under a request that ended (cancelled,
    # then asked again): not sent twice
    start: datetime | None = None
    # the newest reading that had left the queue when it came: an interval of it holding that one lacks readings
    left: datetime | None = None
    # the start of the first interval this process sent under it: readings of a file that opened late (after this
    # start) in intervals before it were never sent, those in intervals from it were
    first_sent: datetime | None = None
    # a request of its granularity cancelled with reportToFollow, its last update still to go, or one ended with its
    # update on the way (_landed), when this one came: this one goes on after that update, as had it gone first
    follows: str | None = None


class VtnReports:
    """VtnClient's telemetry requests: those it serves and their streams; the state is VtnClient's."""

    # the building's zone (forecaster.timezone): whole-day intervals from one of its midnights are its days
    _zone: tzinfo | None = None

    def _landed(self, req: Standing, end: datetime | None, taken: list | None = None) -> None:
        """An update under `req` is back: taken, up to `end`, or not (None). If the request ended while it was on the
        way (the VTN cancelled it, or parked it: a new registration, the report list asked for again), its stream
        stands at `end` now, as had the update landed first; a request of its granularity the VTN asked for meanwhile
        goes on from there. It went on from before, and sent the update's intervals to the VTN again. `taken`: the
        update's readings, taken from the followers' reads: a place covers none dated ahead of the clock."""
        if self._landing is not req:
            return
        self._landing = None
        # a place after now was dated by a clock that stepped back while the update was on its way: no place among
        # this clock's readings (as in _adopt); from it, a follower took an hour's readings as reported already
        now = utcnow()
        end = end if end is not None and end <= now else None
        if end is not None and ((reported := self._reported.get(req.granularity)) is None or reported < end):
            self._reported[req.granularity] = end
        place = end if end is not None else req.sent_until
        place = place if place is not None and place <= now else None
        for after in self._requests.values():
            if after.follows == req.rrid:
                after.follows = None
                if place is not None and after.first_sent is None:
                    after.sent_until = after.start = place
                if taken:
                    self._telemetry.ack(taken, delivered=False, reader=after.rrid)

    def _watch_requests(self) -> None:
        """After each answered poll: registered with the offer taken and no standing request served, for
        openadr.request_wait_seconds and REQUEST_WAIT_POLLS polls, is one WARNING; a request ends it (_adopt).
        Not connected, or the offer refused, are faults of their own, said by their own lines: the wait starts
        over after them, unless the warning is out already (it stays until a request comes)."""
        self._release_parked()
        u = self._unrequested
        if self._requests:
            return
        if not (self._live and self.connected and self._reports_offered and self._client is not None):
            if u is not None and not u.said:
                self._unrequested = None
            return
        now = asyncio.get_running_loop().time()
        if u is None:
            self._unrequested = Unrequested(utcnow(), now)
            return
        if u.said or now - u.began < self._request_wait():
            return
        u.said = True
        instead = f" (the VTN asked only for {'; '.join(u.asked)})" if u.asked else ""
        log.warning("no telemetry request from the VTN for %s while registered: the TELEMETRY_USAGE report offered "
                    "(report %s, rID %s) is not requested%s; readings wait in storage.path (%d now), kept for "
                    "openadr.queue_max_days (%s), then the oldest are dropped: ask the utility to have its VTN request "
                    "the report", span(now - u.began), self._report_specifier_id, self._r_id, instead,
                    self._telemetry.pending, span(self._telemetry.max_age.total_seconds()))

    def _request_wait(self) -> float:
        # as the session polls: at least every second
        poll = poll_period(self._client) if self._client is not None else 1.0
        return max(self._cfg.request_wait_seconds, REQUEST_WAIT_POLLS * poll)

    def _asked_instead(self, what: list[str]) -> None:
        """The VTN asked for something other than a standing TELEMETRY_USAGE request (a one-shot report, a report
        never offered): named in the warning if no standing request comes."""
        if not what or self._requests:
            return
        if self._unrequested is None:
            self._unrequested = Unrequested(utcnow(), asyncio.get_running_loop().time())
        self._unrequested.asked = (self._unrequested.asked + what)[-ASKED_KEPT:]

    def _unrequested_status(self) -> dict | None:
        """From the warning to the request that ends it, as `status()["telemetry_unrequested"]`."""
        u = self._unrequested
        if u is None or not u.said:
            return None
        return {"since": iso_utc(u.since), "wait_seconds": self._cfg.request_wait_seconds, "asked": list(u.asked),
                "report_specifier_id": self._report_specifier_id, "r_id": self._r_id}

    def _offer_again(self, rrid: str) -> None:
        """The VTN refuses updates under this request (452: it forgot the request, e.g. restarted with
        the registrations but not the report requests). Polls go on, so nothing else would ever let it
        request telemetry again: the reports are offered anew, and the backlog goes to its new request."""
        if rrid not in self._requests:
            return
        self._stop_serving(rrid)
        self._reports_offered = False
        self._next_offer = asyncio.get_running_loop().time() + self._reoffer_delay
        self._reoffer_delay = min(max(self._reoffer_delay * 2, self._cfg.retry_min_seconds),
                                  self._cfg.retry_max_seconds)

    async def _cancel_report(self, payload: dict) -> None:
        """oadrCancelReport: the request is no longer served, and oadrCanceledReport says so. With
        reportToFollow the standing request first gets one last update (the intervals complete by then);
        readings after it wait in the queue for the VTN's next request (other standing requests go on). A
        request the gateway does not serve is answered 452, so the VTN learns its bookkeeping and ours differ.
        One message may name several requests (the schema allows any number): each is cancelled, the 452
        names those not served."""
        rrids = payload.get("report_request_id")
        rrids = rrids if isinstance(rrids, list) else [rrids]
        follow = bool(payload.get("report_to_follow"))
        unknown = []
        for rrid in rrids:
            # INFO: the VTN's own choice, often followed at once by a new request (another granularity). Left
            # without one, the "no telemetry request" WARNING comes after openadr.request_wait_seconds
            # (_watch_requests), with its end line when a request comes: the fault's one start and one end.
            if rrid is not None and rrid in self._requests:
                if follow:
                    req = self._requests[rrid]
                    req.final, req.catch_up = True, True
                    self._wake_delivery.set()
                    log.info("the VTN cancelled the telemetry report (request %s): one last update, then %s",
                             rrid, self._then(rrid, "readings queue until it asks again"))
                else:
                    log.info("the VTN cancelled the telemetry report (request %s); %s", rrid,
                             self._then(rrid, "readings queue until it asks again"))
                    self._stop_serving(rrid)
                    if not self._requests:
                        self._no_updates_to_fail()
            elif rrid in self._one_shots:
                self._end_one_shot(rrid)
                log.info("the VTN cancelled the one-shot report %s %s", rrid,
                         "while it was on its way: it is not sent again" if rrid == self._sending
                         else "before it was sent")
            elif not self._cancel_status(rrid, follow):
                unknown.append(str(rrid))
        refusal = None
        if unknown:
            serving = ", ".join(self._served()) or "none"
            log.warning("VTN cancelled report request %s, which the gateway does not serve (serving: %s): "
                        "answered %d", ", ".join(unknown), serving, INVALID_ID)
            refusal = f"reportRequestID {', '.join(unknown)} is not served by this VEN"
        # still pending: what is served, and the cancelled request until its last update is sent
        await self._answer_report_message("oadrCanceledReport", ei_response(payload.get("request_id"), refusal))

    def _then(self, rrid: str, alone: str) -> str:
        """What follows the end of request `rrid`: `alone` when no other standing request is served."""
        others = [r for r in self._requests if r != rrid]
        return f"request {', '.join(others)} still served" if others else alone

    def _served(self) -> list[str]:
        """The report requests being served: the standing ones and the one-shots not yet sent, usage and status."""
        return [*self._requests, *self._one_shots, *self._status_served()]

    @property
    def _report_request_id(self) -> str | None:
        """The standing request adopted last (status() names it; None: none is served)."""
        return next(reversed(self._requests), None)

    @property
    def _granularity(self) -> timedelta:
        rrid = self._report_request_id
        return self._requests[rrid].granularity if rrid else timedelta(seconds=self._cfg.telemetry_seconds)

    def _requests_status(self) -> list[dict]:
        return [{"report_request_id": r.rrid, "granularity_seconds": r.granularity.total_seconds(),
                 "report_back_seconds": r.back.total_seconds(),
                 "sent_until": r.sent_until.isoformat() if r.sent_until else None}
                for r in self._requests.values()]

    async def _answer_report_message(self, message_type: str, response: dict) -> None:
        """oadrCreatedReport / oadrCanceledReport: the answer, and the requests still pending."""
        client = self._client
        msg = client._create_message(message_type, response=response, ven_id=self.ven_id,
                                     pending_reports=[{"report_request_id": r} for r in self._served()])
        _, answer = await client._perform_request("EiReport", msg)
        if refusal := refusal_of(answer):
            # the VTN may not count the requests as taken: said, as nothing else would show it (helper conformance40)
            log.warning("the VTN refused the gateway's %s (%s): it may not count the report requests as taken; "
                        "the updates for them are sent all the same", message_type, refusal)

    def _end_one_shot(self, rrid: str) -> None:
        self._one_shots.remove(rrid)
        self._forget_request(rrid)

    def _stop_serving(self, rrid: str, park: bool = False) -> None:
        """The request ends; the others served go on. What it took and they did not stays for them; with
        none left, every reading it did not take waits for the VTN's next request. `park`: its place in the
        queue is held for a request of its granularity (_end_requests)."""
        req = self._requests.pop(rrid, None)
        if req is not None:
            if landing := rrid == self._sending:
                self._landing = req     # its update on its way: where the stream stands once it is back (_landed)
            if req.sent_until is not None:
                self._reported[req.granularity] = req.sent_until
            for after in self._requests.values():
                # one following it (cancelled with reportToFollow, then outright) goes on once that update is back:
                # from here, it sent that update's intervals again
                if after.follows == rrid and not landing:
                    after.follows = None
                    if after.first_sent is None and req.sent_until is not None:
                        after.sent_until = after.start = req.sent_until
            held = f"parked {wire_duration(req.granularity)}"
            if park and req.granularity not in self._parked:
                self._telemetry.rename_reader(rrid, held)
                self._parked[req.granularity] = held
            else:
                self._telemetry.drop_reader(rrid)
                if not any(r.granularity == req.granularity for r in self._requests.values()):
                    self._telemetry.set_place(req.granularity, None)    # a restart holds nothing for it
        self._forget_request(rrid)

    def _park_stored_streams(self) -> None:
        """At start, the streams the last run served, as a new registration parks them: each held for the VTN's
        request of its granularity from the end of the last interval the VTN took. Else a stream ahead of another
        sent its intervals since the other's place again, and the one asked for first took the other's readings."""
        for seconds, until in sorted(self._telemetry.places.items()):
            granularity = timedelta(seconds=seconds)
            held = f"parked {wire_duration(granularity)}"
            self._telemetry.park_reader(held, until)
            self._parked[granularity], self._reported[granularity] = held, until
            if not self._telemetry.places_current:
                self._undated.add(granularity)

    def _end_requests(self) -> None:
        """A new registration: the VTN requests anew. Each request's place in the queue is held for the VTN's
        request of its granularity, for openadr.request_wait_seconds: a stream ahead of another went on from
        the one behind and sent its last intervals again (some with another value, from fewer readings), and the
        one behind lost the readings the one asked for first had taken."""
        for rrid in list(self._requests):
            self._stop_serving(rrid, park=True)
        if self._parked:
            self._parked_since = asyncio.get_running_loop().time()

    def _release_parked(self) -> None:
        """The VTN did not ask again for the streams it had before its registration: their readings stop waiting."""
        if not self._parked or asyncio.get_running_loop().time() - self._parked_since < self._request_wait():
            return
        gone, self._parked = self._parked, {}
        for granularity, held in gone.items():
            self._telemetry.drop_reader(held)
            self._telemetry.set_place(granularity, None)
        log.info("TELEMETRY_USAGE of %s not requested again since the VTN registration: the readings held for it "
                 "leave the queue once the requests served took them", ", ".join(map(wire_duration, gone)))

    def _forget_request(self, rrid: str) -> None:
        if self._client is not None:
            self._client.report_requests[:] = [r for r in self._client.report_requests
                                               if r["report_request_id"] != rrid]

    async def _create_report(self, payload: dict, in_place: bool = False) -> None:
        """oadrCreateReport: serve what was offered, refuse (452) what was not, answer oadrCreatedReport.
        Standing requests are served side by side (each its own intervals, MAX_STANDING at most; one
        beyond is refused 452); one with the reportRequestID of one served replaces it. `in_place`: the requests
        came in the answer to the report list offered again (METADATA), and take over the streams served."""
        client = self._client
        sampling = timedelta(seconds=self._cfg.telemetry_seconds)
        refused: list[str] = []
        over: list[str] = []
        instead: list[str] = []     # asked for, and no standing request of the report offered
        metadata: list[str] = []    # requests for the report list (2.0b: the VEN registers its reports again)
        status_refused: list[str] = []  # TELEMETRY_STATUS requests refused (offered, but not servable as asked)
        requests = payload.get("report_requests") or []
        adopted: set[str] = set()   # this message's: one does not take over another's stream
        for rr in requests:
            rrid = rr["report_request_id"]
            spec = rr.get("report_specifier") or {}
            sid = spec.get("report_specifier_id")
            r_ids = [p.get("r_id") for p in spec.get("specifier_payloads") or []]
            if sid == "METADATA":
                metadata.append(rrid)
                instead.append(f"the report list (request {rrid})")
                continue
            if not self._cfg.telemetry:
                refused.append(f"{rrid}: report {sid!r} (openadr.telemetry is false: none is offered)")
                continue
            if sid == self._status_specifier_id:     # TELEMETRY_STATUS: served by ven/vtn_status.py
                if refusal := self._take_status_request(rrid, spec, r_ids):
                    status_refused.append(refusal)
                else:
                    instead.append(f"TELEMETRY_STATUS (request {rrid})")
                continue
            if sid != self._report_specifier_id:
                refused.append(f"{rrid}: report {sid!r} was never offered (offered: {self._report_specifier_id!r}, "
                               f"{self._status_specifier_id!r})")
                continue
            unknown = [r for r in r_ids if r != self._r_id]
            if unknown or not r_ids:
                refused.append(f"{rrid}: rID {', '.join(map(repr, unknown)) or '(none)'} not in report {sid!r} "
                               f"(offered: {self._r_id!r})")
                continue
            asked = spec.get("granularity")
            back = spec.get("report_back_duration") or timedelta(0)
            one_shot = asked == timedelta(0) and back == timedelta(0)
            if not one_shot and rrid not in self._requests and len(self._requests) >= MAX_STANDING:
                over.append(rrid)
                continue
            self._forget_request(rrid)
            client.report_requests.append({"report_request_id": rrid, "report_specifier_id": sid,
                                           "report_back_duration": back, "r_ids": r_ids, "granularity": asked,
                                           "job": None})
            if one_shot:
                instead.append(f"one-shot report {rrid}")
                self._one_shots.append(rrid)
                log.info("VTN asked for one TELEMETRY_USAGE report (request %s): the latest reading is sent once",
                         rrid)
                continue
            granularity = effective_granularity(asked or None, sampling)
            if asked and asked < sampling:
                log.log(self._odd_request_level("fine", asked), "VTN request %s asks for intervals of %s, finer than "
                        "the meter is sampled (%s, openadr.telemetry_seconds): intervals of %s are sent instead",
                        rrid, wire_duration(asked), wire_duration(sampling), wire_duration(granularity))
            # readings wait in the queue for their update, and the queue drops those older than it holds: updates
            # further apart than that would lose the oldest intervals of each. Half the queue leaves the other half
            # for a VTN out of reach at an update.
            longest = max(granularity, wire_seconds(self._telemetry.max_age / 2))
            if report_period(granularity, back) > longest:
                log.log(self._odd_request_level("long", back), "VTN request %s asks for updates every %s, longer "
                        "than the gateway keeps readings (openadr.queue_max_days, %s): updates are sent every %s "
                        "instead", rrid, wire_duration(back), wire_duration(self._telemetry.max_age),
                        wire_duration(longest))
                back = longest
            origin = report_origin(spec, utcnow())
            replaced = None
            if in_place and rrid not in self._requests:
                # asked with the report list offered again: the VTN requests anew (openleadr's replaces its requests
                # so). The stream of that granularity went on beside it, and the VTN got each interval twice: this
                # one takes it over from its place in the queue, as a request after a new registration does
                replaced = next((r.rrid for r in self._requests.values()
                                 if r.granularity == granularity and not r.final and r.rrid not in adopted), None)
                if replaced is not None:
                    self._stop_serving(replaced, park=True)
            window = report_window(spec, granularity, origin, self._zone)
            self._adopt(rrid, granularity, back, window, origin, replaced)
            adopted.add(rrid)
        taken = len(requests) - len(refused) - len(over) - len(status_refused)
        self._asked_instead(instead + [f"request {r} (refused)" for r in refused])
        if refused and not self._cfg.telemetry:
            # the site set it off and the utility's VTN wants telemetry: one of the two is mistaken
            log.warning("VTN requested telemetry, and openadr.telemetry is false: refused with %d (%s); set "
                        "openadr.telemetry = true if the utility's programme takes telemetry", INVALID_ID,
                        "; ".join(refused))
        elif refused:
            log.warning("VTN requested telemetry the gateway never offered, refused with %d: %s",
                        INVALID_ID, "; ".join(refused))
        if status_refused:
            log.warning("VTN TELEMETRY_STATUS request refused with %d: %s", INVALID_ID, "; ".join(status_refused))
            refused += status_refused
        if over:
            log.warning("VTN report request %s refused with %d: %d standing telemetry requests are served already "
                        "(%s), the most served at once", ", ".join(over), INVALID_ID, MAX_STANDING,
                        ", ".join(self._requests))
            refused.append(f"{', '.join(over)}: {MAX_STANDING} standing requests are served already, the most "
                           "this VEN serves at once")
        request_id = payload.get("request_id") or (payload.get("response") or {}).get("request_id")
        response = ei_response(request_id, "; ".join(refused) if refused else None)
        if refused and taken:
            # some taken: a 452 for the message said it failed, and a VTN took the updates that followed for
            # requests it thought refused (helper conformance40 W5). The pending list names those taken
            response = dict(response, response_code=200)
        await self._answer_report_message("oadrCreatedReport", response)
        for rrid in metadata:
            await self._register_reports_again(client, rrid)
        self._wake_delivery.set()

    async def _register_reports_again(self, client, rrid: str) -> None:
        """oadrRegisterReport in answer to the VTN's METADATA request `rrid` (a VTN that lost the VEN's report
        list asks for it so): each report carries that reportRequestID. It was refused 452 as never offered."""
        reports = []
        for report in client.reports:
            report = copy.copy(report)
            report.report_request_id, report.created_date_time = rrid, utcnow()
            reports.append(report)
        msg = client._create_message("oadrRegisterReport", request_id=outils.generate_id(), ven_id=self.ven_id,
                                     reports=reports, report_request_id=rrid)
        rtype, answer = await client._perform_request("EiReport", msg)
        why = client.last_error or (client.refused and f"refused: {client.refused}")
        if rtype is None or why:
            # the session offers them again, with backoff, as after any refused offer (helper rev40)
            log.warning("the report list the VTN asked for (METADATA request %s) did not get through (%s): it is "
                        "offered again", rrid, why or "no answer")
            self._reports_offered, self.report_offer_error = False, why or "no answer to the report list"
            return
        log.info("VTN asked for the report list again (METADATA request %s): offered %s", rrid,
                 ", ".join(r.report_name for r in reports) or "none (openadr.telemetry is false)")
        # what it requests now; not the report list once more, each answer asking for the next
        requests = [r for r in answer.get("report_requests") or []
                    if (r.get("report_specifier") or {}).get("report_specifier_id") != "METADATA"]
        if requests:
            await self._create_report(dict(answer, report_requests=requests), in_place=True)

    def _odd_request_level(self, kind: str, asked: timedelta) -> int:
        """A request the gateway serves otherwise than asked is a WARNING; the same again at each registration of an
        outage (or each offer made again while the VTN refuses the updates), as its "VTN requested telemetry" line
        is, DEBUG: a VTN restarting asked for PT2S again, and the one condition was a WARNING at each."""
        repeated = ((self._outage is not None or self._report_refused is not None)
                    and self._odd_said.get(kind) == asked)
        self._odd_said[kind] = asked
        return logging.DEBUG if repeated else logging.WARNING

    def _adopt(self, rrid: str, granularity: timedelta, back: timedelta,
               window: tuple[datetime | None, datetime | None] = (None, None), origin: datetime = EPOCH,
               replaced: str | None = None) -> None:
        on_grid = origin == bucket_start(origin, granularity)   # the UTC grid of its granularity
        days = grid(granularity, origin, self._zone).zone   # set: the building's calendar days, 23 or 25 h at a change
        how = (f"intervals of {wire_duration(granularity)} (mean of the readings in each), "
               + ("" if on_grid and days is None else f"on the grid of its reportInterval's start {iso_utc(origin)}"
                  + (f" in days of {days}" if days is not None else "") + ", ")
               + (f"sent every {wire_duration(back)}" if back > granularity else "each sent as it completes")
               + (f", from {iso_utc(window[0])}" if window[0] is not None else "")
               + (f" until {iso_utc(window[1])}" if window[1] is not None else ""))
        req, others = self._requests.get(rrid), [r for r in self._requests if r != rrid]
        # the VTN's new request in place of one it cancelled with reportToFollow, that one's last update not yet out
        ending = next((r.rrid for r in self._requests.values() if r.final and r.granularity == granularity
                       and r.rrid != rrid), None) if req is None else None
        # one of its granularity ended with its update on the way: this one goes on after that update (_landed)
        landing = self._landing.rrid if self._landing is not None and self._landing.granularity == granularity else None
        u, self._unrequested = self._unrequested, None
        if u is not None and u.said:
            # the end of the warning's fault: whatever else this request's line would be
            log.info("VTN requested telemetry (request %s) after %s without a telemetry request: %s; the %d "
                     "reading(s) waiting go to it%s", rrid, span(asyncio.get_running_loop().time() - u.began), how,
                     self._telemetry.pending, "" if window[0] is None else " (those of its reportInterval)")
        elif replaced is not None:
            log.info("VTN requested telemetry (request %s) in place of %s, the reports offered again (METADATA): %s, "
                     "from the end of %s's last interval", rrid, replaced, how, replaced)
        elif ending is not None:
            log.info("VTN requested telemetry (request %s) in place of %s, cancelled: %s, after %s's last update",
                     rrid, ending, how, ending)
        elif req is None and others:
            # a settlement stream beside a real-time one, say: each gets its own intervals from the same readings
            log.info("VTN requested telemetry (request %s) beside %s: %s", rrid, ", ".join(others), how)
        elif req is None or (granularity, back, window, origin) != (req.granularity, req.back, req.window, req.origin):
            # each of an outage's registrations gets a request anew (a fresh reportRequestID), and so does each offer
            # made again while the VTN refuses the updates: only another one is news
            repeated = (self._outage is not None or self._report_refused is not None) and (
                granularity, back, window) == self._request_said
            log.log(logging.DEBUG if repeated else logging.INFO, "VTN requested telemetry (request %s): %s", rrid, how)
        if req is None:
            # A stream the VTN had before goes on after its last interval: after a new registration from its place in
            # the queue, held for it; after a cancel, past what it reported. Another, from the oldest reading queued.
            parked, reported = self._parked.pop(granularity, None), self._reported.get(granularity)
            left, now = self._telemetry.left_until, utcnow()
            # times after now were dated by a clock that stepped back since: no place among this clock's readings
            reported, left = (t if t is not None and t <= now else None for t in (reported, left))
            req = self._requests[rrid] = Standing(rrid, granularity, back, sent_until=reported, left=left,
                                                  follows=ending or landing, undated=granularity in self._undated)
            if parked is not None:
                self._telemetry.rename_reader(parked, rrid)
                self._telemetry.leave_taken()   # what the last run sent and had yet to delete
            else:
                req.start = reported
                self._telemetry.add_reader(rrid)
        self._request_said = (granularity, back, window)
        req.granularity, req.back, req.window, req.origin, req.final = granularity, back, window, origin, False
        req.next_report = self._next_update(req, utcnow())
        req.catch_up = True        # what is complete already (queued while nothing was requested) goes now
