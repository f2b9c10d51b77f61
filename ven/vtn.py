"""The VEN side of OpenADR 2.0b: registration, polling, event intake, opt answers and telemetry.

openleadr's OpenADRClient supplies the messages (building, signing, parsing, validating) and its
event bookkeeping; this module supplies what openleadr leaves out: retry with capped exponential
backoff for as long as the gateway runs, detection of a lost VTN context (re-registration request,
repeated poll failures) followed by a fresh registration with reports, and store-and-forward
telemetry: each sample is committed to SQLite first and deleted only after the VTN answered the
oadrUpdateReport carrying its interval (the mean over the requested granularity) with a 200.
openleadr's own scheduler is never started: polling and reporting run here, so nothing is sent that
this module cannot account for.
The transport (ven/vtn_transport.py), event intake and opt answers (ven/vtn_events.py), telemetry (its requests
ven/vtn_reports.py, their delivery ven/vtn_delivery.py, each update ven/vtn_updates.py), the site's status
(ven/vtn_status.py) and the outage log (ven/vtn_outage.py) are modules of their own; VtnClient, its registration
and its session are here.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from datetime import datetime, timedelta, tzinfo
from typing import Callable, Sequence

from openleadr import enums as oenums, objects, utils as outils

from bacnet_api.bug_guard import BugGuard, trace_if_a_bug
from bacnet_api.settle import RECUR_SECONDS, Flapping, span

from .cert_expiry import read_client_cert
from .config import OpenadrConfig
from .config_checks import key_is_encrypted, tls_file_problems
from .tasks import cancel_and_wait
from .schedule import EventSchedule
from .telemetry import TelemetryQueue
from .vtn_events import VtnEvents, answers_text
from .vtn_opts import OptLedger
from .vtn_outage import VtnOutage, Outage
from .vtn_delivery import VtnDelivery
from .vtn_reports import Standing, Unrequested, VtnReports
from .vtn_status import StatusRequest, VtnStatus
from .vtn_updates import VtnUpdates
from .vtn_transport import (EMPTY_ANSWER, EVENT_BUG_THEN, INVALID_ID, NOT_REGISTERED, VenClient, NoScheduler,
                            ei_response, fault_kind, iso_utc, interval_length, response_code_of, utcnow, poll_period,
                            whole_seconds)
from .wallclock import clock_suspect

log = logging.getLogger(__name__)

POLL_FAILURES_FOR_LOSS = 3      # consecutive failed polls before the VTN context counts as lost
# A telemetry update on its way when the session ends (the VTN asks to register again) or the gateway stops is let
# finish this long: closed under it, it counted as failed though the VTN took it, and its interval went again under
# the next registration's request (or the next run's), twice at the VTN
UPDATE_LANDING_S = 5.0
STOP_LANDING_S = 3.0    # within the shipped unit's 15 s for a whole stop
MAX_GRANULARITY = timedelta(hours=1)   # the coarsest interval offered (any multiple of the sampling works)
# A poll refused with one of these says the VTN has lost this VEN (a restarted VTN that answers so
# instead of oadrRequestReregistration): register again at once, not after POLL_FAILURES_FOR_LOSS polls
# (minutes at a utility's poll rate, with events missed meanwhile). Other refusals may be passing.
UNKNOWN_VEN_CODES = (INVALID_ID, NOT_REGISTERED)


class VtnClient(VtnEvents, VtnReports, VtnDelivery, VtnUpdates, VtnStatus, VtnOutage):
    def __init__(self, config: OpenadrConfig, schedule: EventSchedule, telemetry: TelemetryQueue,
                 on_connected: Callable[[bool], None] = lambda ok: None, online: Callable[[], bool] | None = None,
                 zone: tzinfo | None = None):
        """`online`: whether the site's load is under the gateway's control now (TELEMETRY_STATUS's oadrOnline);
        always, when not given. `zone`: the building's (forecaster.timezone), whose calendar days a VTN asking for
        whole days from one of its midnights gets."""
        self._cfg = config
        self._zone = zone
        self._schedule = schedule
        self._telemetry = telemetry
        self._on_connected = on_connected
        self._client: VenClient | None = None
        self._fingerprint: str | None = None  # the VEN certificate's, as last logged ("": unreadable)
        self.connected = False
        # the registration stands and was not lost to failed polls: telemetry and opt answers go out. `connected`
        # is off from the first failed poll, as the log says; delivery stops only once the polls lose the context,
        # else one failed poll at a utility's poll rate of minutes would hold the telemetry that long
        self._live = False
        self.ven_id: str | None = None
        self.registration_id: str | None = None
        # the registration the VTN asked to renew (oadrRequestReregistration): the next registration names
        # it, as the 2.0b schema says for re-registering an existing registration; the VTN may refuse it
        # (it lost its registrations), so only one attempt carries it
        self._reregister_with: str | None = None
        # the registration the VTN cancelled, until a new one stands or the VTN refuses one (then its events end)
        self._cancelled: str | None = None
        self.vtn_id: str | None = None       # the vtnID the VTN gave at registration
        # (vtnID, venID, poll frequency, whether the VTN named none) the last "registered" line said
        self._terms_said: tuple | None = None
        self._foreign_vtn: str | None = None  # another vtnID whose oadrDistributeEvent was refused, until ours again
        self._poll_unasked = False     # the registration answer named no poll period
        self._lost_said = False     # the session ended for a reason already logged: "registration lost" is DEBUG then
        # event id -> requestID of the latest oadrDistributeEvent listing it: every eventResponse about the
        # event carries it (2.0b rule 42), also the answers the gateway sends later (ADR-Opt-Out, a resend)
        self._distributed_in: dict[str, str] = {}
        self.last_poll: datetime | None = None
        self.last_error: str | None = None
        self.registration_failures = 0
        self.reregistrations = 0       # registrations the VTN asked for or forced (request or cancel)
        self.last_reregistration: str | None = None   # "<time> <why>" of the latest
        self.poll_failures = 0
        self.poll_failures_total = 0   # monotonic, for the metrics counter
        self.polls_total = 0           # polls sent, answered or not (monotonic)
        self.registration_failures_total = 0
        # An outage outlives the session it began in (polls fail, the registrations after them fail, and a VTN
        # that takes registrations but refuses every poll is registered again each cycle): one fault, logged
        # when it starts and when it ends
        self._outage: Outage | None = None
        self._was_connected = False             # connected once since start: the end line says "again"
        self._last_outage: Outage | None = None  # the last fault that ended, for /api/status
        self._settle = Flapping(config.settle_seconds)   # the settle period, doubled for a fault that comes back
        # loop time of the last fault's end or of a lone context loss: a context loss soon after is the same trouble
        # coming back (an intermittent VTN), not news each time
        self._trouble_at: float | None = None
        # the latest failed poll's reason, or lost context's in an outage: it stands while registered until a poll
        # is answered
        self._poll_error: str | None = None
        # a session ended on a lost context (the VTN asked to register again, ...) and no poll was answered since:
        # another such loss is a VTN asking again each time, an outage
        self._lost_unanswered = False
        self._lost_by_polls = False             # the last session ended on POLL_FAILURES_FOR_LOSS failures
        self._report_specifier_id = f"{config.ven_name}-telemetry"
        self._r_id = config.report_resource_id
        self._requests: dict[str, Standing] = {}   # the standing telemetry requests served, by reportRequestID
        self._one_shots: list[str] = []      # one-shot requests waiting for their single report
        self._online = online or (lambda: True)
        # the TELEMETRY_STATUS report offered beside the usage one, stable across restarts as its specifier is
        self._status_specifier_id = f"{config.ven_name}-status"
        self._status_requests: dict[str, StatusRequest] = {}     # the standing status requests served
        self._status_one_shots: list[str] = []      # one-shot status requests waiting for their single report
        self._status_wake: asyncio.Event | None = None
        self._status_failing: tuple[datetime, int, bool, str] | None = None   # (since, in a row, said, why) unanswered
        # the end of the last interval the VTN took of each granularity under a request that ended: a request of that
        # granularity goes on after it (sent again, an interval could carry another value: fewer readings queued)
        self._reported: dict[timedelta, datetime] = {}
        # the queue readers of the requests a new registration ended, by granularity, and when (the loop's clock):
        # held for the VTN's requests again, so each stream goes on where it was, whichever is asked first
        self._parked: dict[timedelta, str] = {}
        self._parked_since = 0.0
        self._sending: str | None = None        # the request whose oadrUpdateReport is on its way
        # a request that ended (cancelled, parked) while its update was on the way, until that update is back
        self._landing: Standing | None = None
        self._undated: set[timedelta] = set()   # streams whose stored place is a lower bound only (Standing.undated)
        if config.telemetry:
            self._park_stored_streams()
        self._reports_offered = False
        self.report_offer_error: str | None = None   # why the VTN did not take the offer, while it does not
        self._offer_refusal_said: str | None = None  # the fault_kind of the last refusal logged at registration
        self._offer_backoff = 0.0
        self._next_offer = 0.0
        self._report_refused: str | None = None   # why the VTN refuses telemetry, while it does
        self._report_refused_since: datetime | None = None
        self._update_failure: str | None = None   # why the last oadrUpdateReport got no answer (None: it got one)
        self._update_took = 0.0     # seconds the last oadrUpdateReport took, answered or not
        # updates without an answer in a row: (since, how many, said in the log, why the last one failed)
        self._updates_failing: tuple[datetime, int, bool, str] | None = None
        self._report_refusals = 0
        self._unrequested: Unrequested | None = None   # registered without a telemetry request, since when
        self._delivery_bug = BugGuard(log, "telemetry delivery", f"restarted after {span(config.retry_max_seconds)}",
                                      settle_s=config.retry_max_seconds)
        self._connected_bug = BugGuard(log, "VTN connected callback (vtn-connected)", "called at each change")
        self._event_bug = BugGuard(log, "handling an event from the VTN", EVENT_BUG_THEN)
        self._status_bug = BugGuard(log, "status delivery", f"restarted after {span(config.retry_max_seconds)}",
                                    settle_s=config.retry_max_seconds)
        self.bugs = (self._delivery_bug, self._connected_bug, self._event_bug, self._status_bug)
        self._bugs_traced: set = set()     # the places a session or registration error was a bug in (traced once)
        self._update_done = asyncio.Event()     # clear while an oadrUpdateReport is on its way
        self._connected_told = False     # what on_connected last took
        self._update_done.set()
        self._reoffer_delay = 0.0   # before the next offer after a refused report (doubles while refused)
        # the last telemetry update got no answer: retried at the next answered poll, not only after the backoff
        self._retry_at_poll = False
        self._tasks: list[asyncio.Task] = []
        self._wake_delivery: asyncio.Event | None = None
        self._lost: asyncio.Event | None = None
        self._opts_dirty: asyncio.Event | None = None
        # event id -> (modification, opt, by oadrCreateOpt): answers waiting for the VTN. Events whose
        # responseRequired is "never" must not get oadrCreatedEvent; their opt goes as oadrCreateOpt.
        self._pending_opts: dict[str, tuple[int, str, bool]] = {}
        self._singly: set[str] = set()      # events whose answers go one per message: their batch was refused
        self._vtn_mods: dict[str, int] = {}     # event -> its modificationNumber in the VTN's last listing
        self._opt_failed_at: dict[str, int] = {}    # event -> when its answer last failed (VtnEvents._opt_fails)
        # the opts created at the VTN (oadrCreateOpt) and those to withdraw, across restarts (ven/vtn_opts.py)
        self._opt_ledger = OptLedger(schedule.storage)
        # events of the message being handled that were listed again unchanged (each re-registration lists every
        # event to a fresh openleadr client): one line for them all, not one per event each time
        self._relisted = 0
        self._carried: list[tuple[str, int, str]] = []     # waiting answers openleadr's answer to a listing carried
        self._relisting = False     # the event list asked for after a failed poll is being handled
        self._request_said: tuple | None = None   # the last telemetry request's (granularity, back, window)
        self._odd_said: dict[str, timedelta] = {}   # what the last request served otherwise asked ("fine", "long")
        self._status_said: tuple | None = None    # ... and the last status request's (ven/vtn_status.py)
        self._listed_twice: set[str] = set()   # events the last oadrDistributeEvent listed more than once (logged)
        # events listed since the start: at its first listing, one the VTN wants no answer to and the site does not
        # take part in is told so again (VtnEvents._on_event)
        self._listed_since_start: set[str] = set()
        self._refused_said: dict[str, int] = {}   # listed events refused as unreadable: the modification logged
        self._contexts_said: set[str] = set()     # other programmes' market contexts whose first event was warned of
        self.opt_answer_error: str | None = None   # the VTN's reason for refusing our last opt answer
        # event -> the answer the VTN refused, until it takes one for the event or stops listing it: then
        # opt_answer_error's end line
        self._refused: dict[str, str] = {}
        self._refused_since = ""
        self._opts_not_taken: dict | None = None    # answers the VTN did not take while connected: since, count, why
        self._opts_start_said = False           # their WARNING said (here or as "did not get through")
        # answers that stopped waiting untaken while that fault was open (the VTN no longer lists the event, refused
        # the answer, or failed it after the event's end): (eventID, optType, why), for its end line
        self._opts_given_up: list[tuple[str, str, str]] = []
        self._clock_wrong_since: datetime | None = None   # the first reading dated by a clock not set, while so
        self.clock_wrong_why = ""       # why, as the WARNING said it ("before this version was built", ...)
        self.readings_held = 0        # readings not reported because the wall clock was not set (since start)
        self._reads_before: datetime | None = None   # the run before's last read, while this run's clock is behind it

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._wake_delivery = asyncio.Event()
        self._lost = asyncio.Event()
        self._opts_dirty = asyncio.Event()
        self._opts_lock = asyncio.Lock()
        self._status_wake = asyncio.Event()
        if self._cfg.cert:
            self._note_fingerprint()
        if not self._cfg.telemetry and (waiting := self._telemetry.pending):
            # kept, not dropped: a site that set it false by mistake loses nothing once it is true again
            log.info("openadr.telemetry is false: %d reading(s) queued for the VTN before are kept, not sent, and go "
                     "to the VTN if it is set true again", waiting)
        self._tasks = [asyncio.create_task(self._run(), name="vtn-session"),
                       asyncio.create_task(self._deliver(), name="vtn-telemetry"),
                       asyncio.create_task(self._deliver_status(), name="vtn-status")]

    async def stop(self) -> None:
        self._live = False      # no update starts now; one on its way is let land
        await self._update_landed(STOP_LANDING_S)
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        self._backlog_at_stop()
        await self._drop_client()
        self._live = False
        self._set_connected(False)

    # -- public ------------------------------------------------------------------------------

    def open_fault(self) -> dict | None:
        """The VTN fault the log has started and not yet ended, as `status()["fault"]`; None when there is none."""
        return self._outage.status(time.monotonic()) if self._outage is not None else None

    def delivered_in_fault(self) -> str:
        """The stop line's words for the telemetry queued in the open VTN fault and delivered meanwhile, which its
        end line would have said."""
        return self._outage.delivered_text() if self._outage is not None else ""

    def telemetry_fault(self) -> dict | None:
        """Telemetry the VTN does not take while it answers polls, as `status()["telemetry_fault"]`."""
        return self._telemetry_fault()

    def status_fault(self) -> dict | None:
        """TELEMETRY_STATUS updates the VTN does not answer while it answers polls, from the log's WARNING to its
        INFO: since, count (in a row), why, held (samples waiting)."""
        return self._status_fault()

    def telemetry_unrequested(self) -> dict | None:
        """Registered with no telemetry request, from the log's WARNING to the request, as in `status()`."""
        return self._unrequested_status()

    def record_sample(self, ts: datetime, kw: float) -> bool:
        """Commit one good meter reading; it reaches the VTN in its interval once that is complete and
        an update is due (ven/report_intervals.py). Logs the operator line. False: not queued, as the
        wall clock that dated it is not set (a utility would take it as a reading of that date)."""
        if not self._cfg.telemetry:
            return False
        if wrong := self._clock_not_set(ts):
            self.readings_held += 1
            if self._clock_wrong_since is None:
                self._clock_wrong_since, self.clock_wrong_why = ts, wrong
                log.warning("the wall clock reads %s, %s: meter readings are not reported until it is set", iso_utc(ts),
                            wrong)
            return False
        self._reads_before = None
        if self._clock_wrong_since is not None:
            log.info("the wall clock is set (%s): meter readings are reported again; %d reading(s) taken while it "
                     "read %s were not reported", iso_utc(ts), self.readings_held, iso_utc(self._clock_wrong_since))
            self._clock_wrong_since = None
        self._telemetry.add(ts, kw)
        # "waiting" counts the whole queue on the event loop (15-20 ms with a week's backlog at a 1 s poll):
        # only for a line that is logged
        if log.isEnabledFor(logging.DEBUG):
            if self._live and self._report_request_id:
                # its own length: a local day's interval is 23 or 25 hours at a clock change, not P1D's nominal 24
                on = self._grid(self._requests[self._report_request_id])
                start = on.start(ts)
                log.debug("telemetry %.2f kW -> TELEMETRY_USAGE (interval %s + %s, %d waiting)", kw, iso_utc(start),
                          interval_length(on.next(ts) - start), self._telemetry.pending)
            else:
                log.debug("telemetry %.2f kW -> TELEMETRY_USAGE (queued, %d waiting)", kw, self._telemetry.pending)
        if self._one_shots and self._wake_delivery is not None:
            self._wake_delivery.set()
        return True

    def hold_readings_until(self, last: datetime) -> None:
        """This start's wall clock is behind the meter's last read before it (a fake-hwclock restoring the time
        saved before a power cut): it dates readings in the run before's intervals, which the VTN has had, or is
        sent, from the readings of then. They are not reported, as a clock's not set are not, until one is dated
        after `last` (NTP set the clock)."""
        self._reads_before = last

    def report_held_readings(self) -> None:
        """This run's clock is right although behind the run before's last read (the kernel says NTP keeps it): that
        run's clock was ahead. Readings are reported again from the next one, whatever that read said."""
        self._reads_before = None

    def readings_held_before(self) -> datetime | None:
        """The run before's last read, while this start's clock is behind it (hold_readings_until)."""
        held = self._reads_before
        return held if held is not None and utcnow() <= held else None

    def opts_not_taken(self) -> dict | None:
        """From the WARNING that the VTN did not take answers to events until it takes them: since, count, why."""
        return dict(self._opts_not_taken) if self._opts_not_taken is not None else None

    def answers_waiting(self) -> str:
        """The answers to events waiting for the VTN, for a log line ("the optOut for event shed"), or ""."""
        return answers_text([(eid, opt) for eid, (_, opt, _) in self._pending_opts.items()])

    def readings_not_reported(self) -> int:
        """Readings not reported since the WARNING that the clock is not set, while it is not: 0 otherwise."""
        return self.readings_held if self._clock_wrong_since is not None else 0

    def _clock_not_set(self, ts: datetime) -> str | None:
        """Why a reading dated `ts` is dated by a clock not set, or None."""
        if clock_suspect(ts):
            return "before this version was built"
        if self._reads_before is not None and ts <= self._reads_before:
            return f"before the meter's last read of the run before ({iso_utc(self._reads_before)})"
        return None

    def record_failed_read(self, ticks: Sequence[datetime]) -> None:
        """A meter read failed, missing from the poll ticks it stood for (the one it was asked at, and those it made
        the poll skip): the intervals they fall in may go to the VTN marked as the mean of fewer readings than were
        due (ven/report_intervals.py). Not kept while the wall clock is not set, as readings are not."""
        ticks = [t for t in ticks if not self._clock_not_set(t)]
        if self._cfg.telemetry and ticks:
            self._telemetry.add_failed(*ticks)

    def set_opt_out(self, opted_out: bool) -> None:
        """ADR-Opt-Out changed: update the schedule at once, tell the VTN as soon as it can hear."""
        was = self._schedule.opted_out
        changed = self._schedule.set_opt_out(opted_out)
        if opted_out == was and not changed:
            pass    # another priority's command, the same switch: nothing for the VTN
        elif opted_out and not changed:     # a restart restoring it: the events' answers are optOut already
            log.info("ADR-Opt-Out active: no event answered optIn to opt out of; new events answered optOut")
        elif opted_out:
            log.info("ADR-Opt-Out active: opting out of %d active/pending event(s); new events answered optOut",
                     len(changed))
        else:
            log.info("ADR-Opt-Out inactive: opting back in to %d active/pending event(s)", len(changed))
        for ev in changed:
            self._pending_opts[ev.event_id] = (ev.modification_number, ev.opt, ev.response_required == "never")
        if changed:
            self._opts_changed()

    def _opts_changed(self) -> None:
        """Answers wait in _pending_opts; the delivery task sends them now, not at the next poll."""
        if self._opts_dirty is not None:
            self._opts_dirty.set()
            self._wake_delivery.set()

    @property
    def connecting(self) -> bool:
        """The run's first registration is under way and nothing has failed yet: not connected, and no fault. A
        gateway restarted with the dashboard open was called "VTN unreachable: no answer from the VTN" at the page's
        first answer, every time (helper ops52)."""
        return not self.connected and not self._was_connected and self._outage is None

    def status(self) -> dict:
        return {
            "connected": self.connected,
            # not connected yet and nothing failed (the start's first registration): no fault, not "unreachable"
            "connecting": self.connecting,
            "vtn_url": self._cfg.vtn_url_shown,
            "proxy": self._cfg.proxy_shown or None,     # openadr.proxy: the VTN is reached through it
            "ven_name": self._cfg.ven_name,             # which building this is, on a campus (the dashboard's header)
            "ven_id": self.ven_id,
            "registration_id": self.registration_id,
            # the request adopted last; report_requests lists every standing one served
            "report_request_id": self._report_request_id,
            "report_granularity_seconds": self._granularity.total_seconds() if self._report_request_id else None,
            "report_back_seconds": (self._requests[self._report_request_id].back.total_seconds()
                                    if self._report_request_id else None),
            "report_requests": self._requests_status(),
            # the TELEMETRY_STATUS requests served: the site's status, sampled for the VTN
            "status_requests": self._status_requests_status(),
            "report_offered": self._reports_offered,
            "telemetry_enabled": self._cfg.telemetry,   # openadr.telemetry: false for a programme without telemetry
            "report_offer_error": self.report_offer_error,
            "last_poll": self.last_poll.isoformat() if self.last_poll else None,
            "last_error": self.last_error,
            "registration_failures": self.registration_failures,
            "reregistrations": self.reregistrations,
            "last_reregistration": self.last_reregistration,
            "poll_failures": self.poll_failures,
            # the current VTN fault, or the last one (with "ended"): an intermittent VTN is connected most of the time
            "fault": (self._outage or self._last_outage).status(time.monotonic())   # the event loop's clock
            if self._outage or self._last_outage else None,
            "opt_answers_waiting": len(self._pending_opts),
            "opt_answer_error": self.opt_answer_error,
            # answers the VTN did not take (an empty or failed answer) while it answers polls: sent again at each
            "opt_answers_not_taken": self.opts_not_taken(),
            "telemetry": self._telemetry.status(),
            # telemetry stalled while the VTN answers polls (updates unanswered or refused), as the log says it
            "telemetry_fault": self._telemetry_fault(),
            # registered, the report offered and taken, and never requested: readings only pile up
            "telemetry_unrequested": self._unrequested_status(),
            # meter readings taken while the wall clock read a date before this version: not reported
            "readings_not_reported_clock": self.readings_held,
        }

    # -- session: register, poll, notice loss, register again ----------------------------------

    def _clear_error(self, error: str | None) -> None:
        """A fault ended: its reason leaves /api/status, unless another fault has replaced it since."""
        if error is not None and self.last_error == error:
            self.last_error = None

    def _set_connected(self, ok: bool) -> None:
        self.connected = ok
        if ok != self._connected_told:
            # told until it took it: a callback that raised is called again at the next word on the connection
            with self._connected_bug.guard():
                self._on_connected(ok)
                self._connected_told = ok

    async def _run(self) -> None:
        delay = self._cfg.retry_min_seconds
        quick_losses = 0
        while True:
            try:
                ok = await self._register()
            except (OSError, ValueError) as err:     # unreadable cert/key/CA file, wrong passphrase
                self.last_error = f"TLS setup failed (openadr.cert/key/passphrase/ca_file): {err}"
                ok = False
            except Exception as err:  # noqa: BLE001 - keep retrying whatever the VTN sent
                self.last_error = f"registration error {err.__class__.__name__}: {err}"
                trace_if_a_bug(log, "VTN registration error", err, self._bugs_traced)
                ok = False
            if not ok:
                self.registration_failures += 1
                self.registration_failures_total += 1
                self._failed("registration", self.last_error or f"no reason given ({EMPTY_ANSWER}, or a refusal "
                                                                "without a description)")
                self._outage.registrations_failed += 1
            if self._outage is not None:
                self._outage.registrations += 1
                self._outage.registered += ok
            if not ok:
                await self._drop_client()
                await asyncio.sleep(delay * random.uniform(0.9, 1.1))
                delay = min(delay * 2, self._cfg.retry_max_seconds)
                continue
            began = asyncio.get_running_loop().time()
            counted = self._outage      # the outage (if any) that counted this registration among its attempts
            # else the VTN asked for another registration while this one was under way: its reason stays, for the
            # "registration lost" line, and the session ends at once
            if not self._lost.is_set():
                if self._outage is not None and (self.poll_failures or self._outage.lost):
                    # polls refused, or the VTN asking to register again before one is answered, is not connected:
                    # the outage ends once a poll is answered (the session polls first)
                    self.last_error = self._outage.reason = self._poll_error
                else:
                    self.last_error = None
                    self._connected_again()
            self._wake_delivery.set()
            self._opts_dirty.set()
            errored = False
            try:
                await self._session()
            except Exception as err:  # noqa: BLE001 - a bad message must not end the VEN
                self.last_error = f"session error {err.__class__.__name__}: {err}"
                trace_if_a_bug(log, "VTN session error", err, self._bugs_traced)
                errored = True
            finally:
                self._live = False
                self._set_connected(False)
            now = asyncio.get_running_loop().time()
            if self._lost_by_polls:   # the outage's own doing, logged when it started and when it ends
                log.debug("VTN registration lost (%d failed poll(s): %s); registering again", self.poll_failures,
                          self.last_error)
            elif errored or self._outage is not None or self._lost_unanswered:
                # lost again before the registration after the last loss had a poll answered: a VTN asking to register
                # again each time (or answering so while polls fail) never gives a working session. One fault, not a
                # warning and a flip of `connected` at every cycle. So is a session error: the VTN may send the message
                # it raised on at every poll, and it ends once a poll is answered and its message handled
                self._poll_error = self.last_error or "unknown reason"
                self._failed("session" if errored else "context", self._poll_error)
                if self._outage is not counted:     # begun after this registration: it is one of its attempts too
                    self._outage.registrations += 1
                    self._outage.registered += 1
                if self._lost_unanswered or errored:
                    self._outage.lost += 1
            elif self._trouble_at is not None and now - self._trouble_at < RECUR_SECONDS:
                # lost again after a short working session (a load balancer whose other VTN does not know this VEN):
                # the same trouble as the last time, one intermittent fault
                self._poll_error = self.last_error or "unknown reason"
                self._failed("loss", self._poll_error)
                self._outage.registrations = self._outage.registered = 1    # the one that was just lost
            elif self._lost_said:
                log.debug("VTN registration lost (%s); registering again", self.last_error)
            else:
                log.warning("VTN registration lost (%s); registering again", self.last_error or "unknown reason")
                self._trouble_at = now
            if self._outage is not None:
                self._outage.losses += 1
            self._lost_unanswered = True
            await self._drop_client()
            delay = self._cfg.retry_min_seconds
            if asyncio.get_running_loop().time() - began < 10 * self._cfg.retry_max_seconds:
                # Lost again soon after registering: back off so a confused VTN is not hammered.
                await asyncio.sleep(min(self._cfg.retry_min_seconds * 2 ** quick_losses,
                                        self._cfg.retry_max_seconds))
                quick_losses += 1
            else:
                quick_losses = 0

    def _new_client(self) -> VenClient:
        c = self._cfg
        client = VenClient(ven_name=c.ven_name, vtn_url=c.vtn_url, ven_id=self.ven_id,
                           cert=c.cert or None, key=c.key or None,
                           # openleadr's signer refuses a passphrase for a key that has none (reissued plain)
                           passphrase=c.passphrase if c.passphrase and key_is_encrypted(c.key) else None,
                           ca_file=c.ca_file or None, vtn_fingerprint=c.vtn_fingerprint or None,
                           show_fingerprint=False, disable_signature=not c.cert)
        client.request_timeout_s = c.request_timeout_seconds
        client.proxy = c.proxy or None
        client.scheduler = NoScheduler()
        client.on_event = self._handle_event
        client.on_update_event = self._handle_event
        client.on_create_report = self._create_report
        client.before_answer = self._schedule.synced
        client.event_bug = self._event_bug
        client.held_answer = self._held_answer
        sampling = timedelta(seconds=c.telemetry_seconds)
        # min: how often the meter is sampled; max: any coarser interval is a mean of those samples
        rate = objects.SamplingRate(min_period=sampling, max_period=max(sampling, MAX_GRANULARITY), on_change=False)
        # openleadr ignores add_report's power_hertz/power_voltage (its "real_power" is a shared enum
        # member fixed at 50 Hz / 230 V, and its scale is set on that shared object): give our own copy
        voltage = int(c.power_voltage) if float(c.power_voltage).is_integer() else c.power_voltage
        measurement = dataclasses.replace(
            oenums.MEASUREMENTS.REAL_POWER, scale="k",
            power_attributes=objects.PowerAttributes(hertz=c.power_hertz, voltage=voltage, ac=True))
        # reportType usage and readingType "Direct Read": the 2.0b profile's TELEMETRY_USAGE, which the certification
        # tool requires ("Mean", each value's truth at coarser intervals, fails the offer, helper conformance40 W2).
        # openleadr's default reportType, "reading", is a register whose differences are the usage
        if not c.telemetry:
            return client
        client.add_report(callback=lambda: [], resource_id=c.report_resource_id,
                          measurement=measurement, unit="W", scale="k", sampling_rate=rate,
                          report_type=oenums.REPORT_TYPE.USAGE, reading_type=oenums.READING_TYPE.DIRECT_READ,
                          report_specifier_id=self._report_specifier_id, r_id=self._r_id,
                          # a METADATA report's duration is the history the VEN can buffer (2.0b): the queue
                          report_duration=timedelta(days=c.queue_max_days))
        self._add_status_report(client)
        return client

    async def _drop_client(self) -> None:
        if self._client is not None:
            await self._update_landed(UPDATE_LANDING_S)
        client, self._client = self._client, None
        if client is not None and client.client_session is not None:
            await client.client_session.close()

    async def _update_landed(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._update_done.wait()
        except TimeoutError:
            pass

    def _note_fingerprint(self) -> None:
        """Log the VEN certificate's fingerprint when it is first readable and whenever it changes
        (a certificate mounted after start, or rotated): the VTN operator needs the current one."""
        try:
            with open(self._cfg.cert, "rb") as f:
                fingerprint = outils.certificate_fingerprint(f.read())
        except (OSError, ValueError) as err:
            if self._fingerprint is None:
                log.error("%s %s cannot be read (%s); the VEN cannot register until it is fixed",
                          self._cfg.named("cert"), self._cfg.cert, err)
                self._fingerprint = ""
            return
        if fingerprint != self._fingerprint:
            # which file and until when, with the fingerprint: a renewed file shows here once it is in use
            cert = read_client_cert(self._cfg.cert)
            log.info("VEN certificate %s %s: fingerprint %s (give it to the VTN operator)%s", self._cfg.named("cert"),
                     self._cfg.cert, fingerprint,
                     f", subject {cert.subject}, valid until {cert.not_after:%Y-%m-%d %H:%M} UTC" if cert else "")
            self._fingerprint = fingerprint

    async def _register(self) -> bool:
        problems = tls_file_problems(self._cfg) if self._cfg.cert or self._cfg.ca_file else []
        if problems:  # say which file and why, not what openleadr trips over next
            self.last_error = "TLS files: " + "; ".join(problems)
            return False
        if self._cfg.cert:
            self._note_fingerprint()
        self._client = client = self._new_client()
        self._end_requests()
        self._end_status_requests()
        self._one_shots.clear()
        self._lost.clear()
        rtype, payload = await client.query_registration()
        if rtype is None:
            self.last_error = client.last_error
            return False
        # oadrXmlSignature says whether this VEN signs (it does with a certificate); a pull VEN has no
        # transport address, and openleadr would otherwise send the text "None" as one
        answer = await client.create_party_registration(ven_id=self.ven_id, xml_signature=bool(self._cfg.cert),
                                                        transport_address="", registration_id=self._reregister_with)
        self._reregister_with = None
        if not client.registration_id:
            self.last_error = (client.last_error or (client.refused and f"VTN refused registration: {client.refused}")
                               or "VTN refused the registration (no registrationID)")
            if self._cancelled and client.refused:
                self._deenrolled(client.refused)
            return False
        self._cancelled = None      # the event list it gives next is the truth
        if not client.ven_id:
            # openleadr takes the registrationID alone (logging that it assumes it is not registered): every message
            # would then name no VEN, and the VTN ask for a registration again at each, the log blaming a VTN that
            # no longer knows this VEN
            self.last_error = "VTN registration answer carries no venID: not registered"
            return False
        ven_id_before = self.ven_id
        self.ven_id, self.registration_id = client.ven_id, client.registration_id
        answered = answer[1] if answer else {}
        self.vtn_id = answered.get("vtn_id") or None
        # the schema lets the answer leave oadrRequestedOadrPollFreq out; openleadr then polls every 10 s
        self._poll_unasked = answered.get("requested_oadr_poll_freq") is None
        if self.vtn_id == self._foreign_vtn:    # the VTN's vtnID changed: the line below names the new one
            self._foreign_vtn = None
        offered = self._cfg.telemetry and await self._offer_reports(client)
        if self._lost.is_set():
            return True
        rtype, payload = await client.request_event()
        if rtype is None:
            self.last_error = client.last_error
            return False
        if rtype == "oadrRequestReregistration":
            self._forgotten("the event request")
            return True
        if client.refused:   # an oadrDistributeEvent listing nothing: not "no events" (all would be cancelled)
            self.last_error = f"VTN refused the event request: {client.refused}"
            return False
        # said once the registration stands: an attempt failing at its last step registered nothing. While polls
        # keep failing (or the VTN asks to register again before one is answered), each cycle's registration after
        # the first is part of that one outage.
        # ... unless the VTN settled other terms than the last line said (a VTN restarted under another vtnID, asking
        # for another poll frequency): the operator would read the old ones meanwhile
        terms = (self.vtn_id, self.ven_id, client.poll_frequency, self._poll_unasked)
        # the period polled at: a VTN asking for less than a second read "poll every 0.0 s" while polls went every 1 s
        asked, period = client.poll_frequency.total_seconds(), poll_period(client)
        log.log(logging.DEBUG if self._repeating() and terms == self._terms_said else logging.INFO,
                "registered with VTN %s (vtnID %s): venID %s%s, registrationID %s, poll every %s s%s, telemetry %s",
                self._cfg.vtn_url_shown, self.vtn_id, self.ven_id,
                # a VTN that lost its registrations gives another (its events and reports are the new one's)
                f" (a new one: it was {ven_id_before})" if ven_id_before not in (None, self.ven_id) else "",
                self.registration_id, whole_seconds(period),
                " (the VTN asked for no period: openleadr's default)" if self._poll_unasked else "" if asked == period
                else f" (the VTN asked for {whole_seconds(asked)} s; the gateway polls "
                f"{'at most once a second' if asked < period else 'at least once a day'})",
                "requested" if self._report_request_id else "not requested by the VTN" if offered
                else "not offered" if self._cfg.telemetry else "off (openadr.telemetry = false)")
        self._terms_said = terms
        if self._outage is not None:
            self._outage.said = True
        if not offered and self._cfg.telemetry:
            # the same refusal at each of an outage's registrations is said once
            kind = fault_kind(self.report_offer_error or "")
            log.log(logging.DEBUG if self._repeating() and kind == self._offer_refusal_said else logging.WARNING,
                    "the VTN did not take the telemetry report offer (%s): events are served, samples queue, "
                    "the offer is made again (every %g s at most)", self.report_offer_error,
                    self._cfg.retry_max_seconds)
            self._offer_refusal_said = kind
        await self._take_listing(rtype, payload)
        return True

    async def _take_listing(self, rtype: str, payload: dict) -> None:
        """The VTN's answer to oadrRequestEvent: its events, or an oadrResponse 200 when it lists none for us."""
        if rtype == "oadrResponse" and response_code_of(payload) == 200:
            self._listed(set())
        await self._dispatch(rtype, payload)

    async def _offer_reports(self, client: VenClient) -> bool:
        """oadrRegisterReport. openleadr carries on after a failed one, and the VTN would then never
        request telemetry: the session offers again (backing off) while events keep flowing."""
        await client.register_reports(client.reports)
        if client.reregistration_asked:   # openleadr carries on (also after its oadrCreatedReport met it)
            self._forgotten("the telemetry report offer")
            return False
        loop = asyncio.get_running_loop()
        # a refused offer (openleadr carries on) would leave the VTN never requesting telemetry
        error = client.last_error or (client.refused and f"VTN refused the report registration: {client.refused}")
        if error:
            self._offer_backoff = (min(self._offer_backoff * 2, self._cfg.retry_max_seconds) if self._offer_backoff
                                   else self._cfg.retry_min_seconds)
            self._next_offer = loop.time() + self._offer_backoff
            self._reports_offered = False
            self.report_offer_error = error
            return False
        self._reports_offered, self._offer_backoff, self.report_offer_error = True, 0.0, None
        self._offer_refusal_said = None
        return True

    async def _session(self) -> None:
        client = self._client
        period = poll_period(client)
        failed_here = 0     # this session's failed polls in a row; self.poll_failures counts across re-registrations
        # a poll failed on the way (a time-out, a reset in the middle of the answer): the VTN may have answered it
        # with events and counts them as delivered, never to send them again unless they change. The event list
        # is asked for at the next answered poll (oadrRequestEvent, as at registration)
        missed = False
        self._lost_by_polls = self._lost_said = False
        immediate = True
        while True:
            if not immediate:
                try:
                    async with asyncio.timeout(period):
                        await self._lost.wait()
                    return
                except TimeoutError:
                    pass
            if self._lost.is_set():
                return
            await self._send_opts()
            # an opt answer or the offer may meet a re-registration request: nothing more with this registration
            if (self._cfg.telemetry and not self._lost.is_set() and not self._reports_offered
                    and asyncio.get_running_loop().time() >= self._next_offer):
                if await self._offer_reports(client):
                    # offered again because the VTN refuses the updates: said when it takes one again
                    log.log(logging.DEBUG if self._report_refused is not None else logging.INFO,
                            "VTN took the telemetry report offer: telemetry %s",
                            "requested" if self._report_request_id else "not requested yet")
                    self._wake_delivery.set()
            if self._lost.is_set():
                return
            rtype, payload = await client.poll()
            self.polls_total += 1
            if rtype is None or client.refused:
                missed = missed or rtype is None
                self.poll_failures += 1
                self.poll_failures_total += 1
                failed_here += 1
                # an empty 200 is no refusal: "VTN refused the poll: None" said one (helper vtns41)
                self._poll_error = client.last_error or (f"VTN refused the poll: {client.refused}" if client.refused
                                                         else EMPTY_ANSWER)
                self._failed("poll", self._poll_error)
                self._outage.polls += 1
                self._outage.polls_failed += 1
                unknown_ven = client.refused_code in UNKNOWN_VEN_CODES
                if unknown_ven:     # a fresh registration: the VTN said it does not know this one
                    self._reregistration_requested(self.last_error, renew=False)
                if failed_here >= POLL_FAILURES_FOR_LOSS or unknown_ven:
                    self._lost_by_polls = True
                    return
                immediate = False
                continue
            self.last_poll = utcnow()
            failed_here = 0     # POLL_FAILURES_FOR_LOSS in a row: a proxy failing one poll in ten keeps the context
            if self._outage is not None:
                self._outage.polls += 1
            if rtype == "oadrRequestReregistration":
                self._reregistration_requested("the VTN asked for re-registration")
                await client.send_response(service="EiRegisterParty")
                return
            if rtype == "oadrCancelPartyRegistration":
                if await self._registration_cancelled(client, payload):
                    return
                continue        # not this VEN's registration: it stands, and polling goes on at once
            # openleadr hands out one message per poll: ask again at once after a real message.
            immediate = rtype != "oadrResponse"
            await self._dispatch(rtype, payload)
            if missed and not self._lost.is_set():
                missed = not await self._list_events_again(client)
            self._watch_requests()
            if self._retry_at_poll:
                # the VTN answers: a backoff grown while its report store was down would hold the backlog up to
                # openadr.retry_max_seconds after it takes updates again. One retry a poll at most
                self._wake_delivery.set()
            # answered, not with "register again", and the answer handled (a session error is part of the outage):
            # the registration works
            self._lost_unanswered = False
            if self._outage is not None:
                if not self.connected:      # what waited for the VTN goes now
                    self._wake_delivery.set()
                self._connected_again(poll=True)
            elif self._connected_told != self.connected:     # on_connected raised the last time: again
                self._set_connected(self.connected)

    async def _list_events_again(self, client: VenClient) -> bool:
        """oadrRequestEvent after a poll whose answer was lost on the way: an event it carried ran without the site
        (a VTN sends an event once, and again only when it changes). True once the VTN has listed them."""
        rtype, payload = await client.request_event()
        if rtype is None or client.refused:
            log.debug("the event list asked for after a failed poll did not come (%s); asked again after the next "
                      "poll", client.last_error or client.refused)
            return False
        if rtype == "oadrRequestReregistration":
            self._forgotten("the event request")
            return True
        log.debug("the event list asked for after a failed poll came: %s", rtype)
        self._relisting = True      # what it lists unchanged is no news
        try:
            await self._take_listing(rtype, payload)
        finally:
            self._relisting = False
        return True

    def _forgotten(self, what: str) -> None:
        """The VTN answered a request with oadrRequestReregistration: register at once, not at the next poll. Not
        when the request went under a registration before the current one (each registration has its client, and
        the request's was told, not this one's): the VTN forgot that one, and the one begun since stands. Registering
        for it again registered twice, and ended the VTN's requests made meanwhile. What the request carried waits,
        as for any answer of this kind, and goes under the current registration."""
        if self._client is not None and not self._client.reregistration_asked:
            log.debug("%s, sent under the registration before this one, was answered oadrRequestReregistration: this "
                      "registration stands", what)
            return
        self._reregistration_requested(
            f"the VTN no longer knows this VEN (re-registration requested in answer to {what})")

    def _reregistration_requested(self, why: str, renew: bool = True) -> None:
        # a poll and an answer or report in flight together may both meet the request (or a poll refused as
        # an unknown VEN): one re-registration
        self.last_error = why
        if not self._lost.is_set():
            self._vtn_reregisters(why)
            if renew:
                self._reregister_with = self.registration_id
        self._lost.set()

    def _vtn_reregisters(self, why: str) -> None:
        self.reregistrations += 1
        self.last_reregistration = f"{iso_utc(utcnow())} {why}"

    async def _registration_cancelled(self, client: VenClient, payload: dict) -> bool:
        """oadrCancelPartyRegistration from the VTN, answered oadrCanceledPartyRegistration (with the
        cancel's requestID). For this VEN's registrationID: 200, the session ends and the gateway registers
        anew (a VTN that means to drop the VEN refuses that registration, and the gateway backs off). For
        another registrationID: 452, and this registration stands (openleadr's own handler answers 452 too,
        but the gateway then threw its registration away)."""
        rid = payload.get("registration_id")
        ours = self.registration_id
        mine = rid in (None, ours)
        response = ei_response(payload.get("request_id"), None if mine else f"registrationID {rid} is not this VEN's")
        msg = client._create_message("oadrCanceledPartyRegistration", response=response, ven_id=self.ven_id,
                                     registration_id=ours)
        await client._perform_request("EiRegisterParty", msg)
        if not mine:
            log.warning("VTN cancelled registration %s, which is not this VEN's (%s): answered %d, the registration "
                        "stands", rid, ours, INVALID_ID)
            return False
        self._reregistration_requested(f"the VTN cancelled the registration {ours}", renew=False)
        self._cancelled, self.registration_id = ours, None
        return True

    def _deenrolled(self, refusal: str) -> None:
        """The VTN cancelled this VEN's registration and refuses a new one: the site no longer takes part, and its
        events end (an open-ended level 2 held the building shed for a VTN that had dropped it, helper
        conformance40). A VTN out of reach meanwhile is an outage, and ends nothing."""
        log.warning("the VTN cancelled registration %s and refuses a new one (%s): its events are no longer followed; "
                    "registering is tried again (backoff up to %g s)", self._cancelled, refusal,
                    self._cfg.retry_max_seconds)
        self._cancelled = None
        self._listed(set(), "of a VTN that cancelled this VEN's registration")
