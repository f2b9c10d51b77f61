"""A small OpenADR 2.0b VTN on openleadr's OpenADRServer, for the tests and `edge-gateway demo`.

It knows its VENs (by name; the venID is derived from the name so a restarted VTN hands out the
same one), requests every TELEMETRY_USAGE report offered (and the TELEMETRY_STATUS one with `request_status`),
records what arrives (`reports`; status apart, in `status_updates`) and
every opt answer (`opts`: oadrCreatedEvent; `created_opts`: oadrCreateOpt), and lets the caller add, modify and cancel events, or drop one from the
list without a cancellation (an implied cancellation). Events go to every registered VEN.

openleadr keeps some VTN settings on a shared class (message signing, ven lookup), so only one
DemoVtn should run per process at a time.
"""
from __future__ import annotations

import contextlib
import io
import logging
import uuid
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from typing import Iterable

from aiohttp import web
from lxml.etree import DocumentInvalid, XMLSyntaxError
from openleadr import OpenADRServer, errors, objects
from openleadr.service.opt_service import OptService

from .oadr_xml import validate_xml_schema

log = logging.getLogger(__name__)


class DemoVtn:
    def __init__(self, port: int, host: str = "127.0.0.1", vtn_id: str = "DEMO-VTN",
                 poll_seconds: float = 1.0, cert: str | None = None, key: str | None = None,
                 passphrase: str | None = None, ca_file: str | None = None,
                 ven_fingerprint: str | None = None, report_granularity: timedelta | None = None,
                 report_back: timedelta | None = None, request_telemetry: bool = True, request_status: bool = False):
        """`report_granularity` / `report_back`: what to request for each TELEMETRY_USAGE offered
        (default: the offer's minimum sampling period, with updates as often). `request_telemetry` False: a
        VTN that takes the offer and requests nothing (a program without telemetry, a misconfigured VTN).
        `request_status`: the TELEMETRY_STATUS offered is requested too, at its minimum sampling period (off by
        default: a status update each sampling period beside the usage ones would change what most tests count)."""
        self.host, self.port = host, port
        self.report_granularity, self.report_back = report_granularity, report_back
        self.request_telemetry, self.request_status = request_telemetry, request_status
        # every oadrUpdateReport as it arrived: (report_request_id, [(dtstart, duration, r_id, value)])
        self.updates: list[tuple[str, list[tuple[datetime, timedelta, str, float]]]] = []
        # each TELEMETRY_USAGE report's (reportRequestID, dtstart, end of its last interval): the period it reports on
        self.report_spans: list[tuple[str, datetime | None, datetime | None]] = []
        self.created_reports: list[tuple[int, str, list[str]]] = []   # oadrCreatedReport: code, text, pending
        # oadrCanceledReport: code, text, pending; and whether it carried the cancel's requestID
        self.canceled_reports: list[tuple[int, str, list[str], bool]] = []
        self.report_metadata: list[dict] = []                        # each oadrRegisterReport's usage reports
        self.status_metadata: list[dict] = []                        # ... and its TELEMETRY_STATUS reports
        # every TELEMETRY_STATUS update's intervals: (report_request_id, [(dtstart, duration, r_id, status)]), status
        # {"online", "manual_override", "level", "min", "max", "normal"} as its oadrPayloadResourceStatus said
        self.status_updates: list[tuple[str, list[tuple[datetime, timedelta, str, dict]]]] = []
        self.report_ids: list[str | None] = []                       # each oadrUpdateReport report's eiReportID
        # every interval received: (report_request_id, dtstart, its oadrDataQuality or None)
        self.data_quality: list[tuple[str, datetime, str | None]] = []
        self.created_events: list[dict] = []      # every oadrCreatedEvent as openleadr parsed it
        self.registration_requests: list[dict] = []   # every oadrCreatePartyRegistration as parsed
        self._outbox: dict[str, list[tuple[str, dict]]] = {}
        self._forgotten: set[str] = set()
        self.vtn_id = vtn_id
        self.tls = bool(cert and key and ca_file)
        self.url = f"{'https' if self.tls else 'http'}://{host}:{port}/OpenADR2/Simple/2.0b"
        self.reports: list[tuple[str, str, str, datetime, float]] = []
        self.opts: list[tuple[str, str, str]] = []          # (ven_id, event_id, opt_type)
        # (ven_id, event_id, modification_number, opt_type, opt_reason) per oadrCreateOpt
        self.created_opts: list[tuple[str, str | None, int | None, str, str]] = []
        # optID -> (ven_id, event_id, opt_type): the opts the VTN holds, created and not cancelled
        self.held_opts: dict[str, tuple[str, str | None, str]] = {}
        # (ven_id, resource_id, measurement, unit, scale, sampling interval) per report offered
        self.report_offers: list[tuple[str, str, str, str, str, timedelta]] = []
        self.vens: dict[str, dict] = {}                       # ven_id -> ven_name, registration_id, fingerprint
        self.registrations = 0
        self._ven_fingerprint = ven_fingerprint
        self._events: list[objects.Event] = []
        self._updated: dict[str, bool] = {}
        self._server = OpenADRServer(
            vtn_id=vtn_id, http_host=host, http_port=port,
            requested_poll_freq=timedelta(seconds=poll_seconds), ven_lookup=self._ven_lookup,
            cert=cert, key=key, passphrase=passphrase,
            http_cert=cert if self.tls else None, http_key=key if self.tls else None,
            http_ca_file=ca_file if self.tls else None, http_key_passphrase=passphrase,
            show_fingerprint=False, show_server_cert_domain=False)
        s = self._server
        s.add_handler("on_create_party_registration", self._on_register)
        s.add_handler("on_register_report", self._on_register_report)
        s.add_handler("on_poll", self._on_poll)
        s.add_handler("on_request_event", self._on_request_event)
        s.add_handler("on_created_event", self._on_created_event)
        s.add_handler("on_cancel_party_registration", self._on_cancel_registration)
        self._running = False
        handlers = s.services["report_service"].handlers
        for message_type, watch in (("oadrUpdateReport", self._on_update), ("oadrCreatedReport", self._on_created),
                                    ("oadrRegisterReport", self._on_register_report_message)):
            async def watched(payload, real=handlers[message_type], watch=watch):
                watch(payload)
                return await real(payload)
            handlers[message_type] = watched
        handlers["oadrCanceledReport"] = self._on_canceled     # openleadr's VTN has no handler for it
        events = s.services["event_service"].handlers

        async def created_event(payload, real=events["oadrCreatedEvent"]):
            self.created_events.append(payload)
            return await real(payload)
        events["oadrCreatedEvent"] = created_event
        registration = s.services["registration_service"].handlers

        async def create_party_registration(payload, real=registration["oadrCreatePartyRegistration"]):
            self.registration_requests.append(payload)
            return await real(payload)
        registration["oadrCreatePartyRegistration"] = create_party_registration
        # openleadr's VTN has no EiOpt endpoint (its OptService is a stub that is never served)
        opts = OptService(vtn_id)
        opts.handlers = {"oadrCreateOpt": self._on_create_opt, "oadrCancelOpt": self._on_cancel_opt}
        s.app.add_routes([web.post(f"{s.http_path_prefix}/{opts.__service_name__}", opts.handler)])
        s.app.middlewares.append(_refuse_what_the_ven_refuses)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        with contextlib.redirect_stdout(io.StringIO()):     # openleadr prints a banner
            await self._server.run()
        self._running = True
        log.info("demo VTN listening at %s", self.url)

    async def stop(self) -> None:
        if self._running:
            await self._server.stop()
            self._running = False

    async def __aenter__(self) -> "DemoVtn":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # -- events ------------------------------------------------------------------------------

    def add_event(self, levels: Iterable[float], start: datetime, interval_seconds: float,
                  event_id: str | None = None, signal_name: str = "SIMPLE", signal_type: str = "level",
                  test_event: bool = False, start_after_seconds: float = 0.0,
                  extra_signals: Iterable[tuple[str, str, Iterable[float]]] = (),
                  market_context: str = "oadr://demo.utility/dr", priority: int = 0,
                  open_ended: bool = False, response_required: str = "always") -> str:
        """Queue an event whose signal has one interval per level, back to back from `start`.
        `open_ended`: its one level holds until the event is cancelled (duration 0, 2.0b rule 47).
        `response_required` "never": the VEN answers it by oadrCreateOpt, not oadrCreatedEvent."""
        event_id = event_id or f"evt-{uuid.uuid4().hex[:10]}"
        levels = list(levels)
        if open_ended and len(levels) != 1:
            # openleadr's preflight sets the active period to the intervals' sum: only one can be open
            raise ValueError("an open-ended event has one level here")
        signals = [self._signal(signal_name, signal_type, levels, start, interval_seconds, open_ended)]
        for name, typ, lv in extra_signals:
            signals.append(self._signal(name, typ, lv, start, interval_seconds, open_ended))
        duration = timedelta(0) if open_ended else timedelta(seconds=interval_seconds * len(signals[0].intervals))
        tolerance = {"startafter": timedelta(seconds=start_after_seconds)} if start_after_seconds else None
        event = objects.Event(
            event_descriptor=objects.EventDescriptor(
                event_id=event_id, modification_number=0, market_context=market_context,
                event_status="far", test_event=test_event, priority=priority),
            event_signals=signals,
            targets=[objects.Target(ven_id=v) for v in self.vens] or [objects.Target(group_id="all")],
            active_period=objects.ActivePeriod(dtstart=start, duration=duration, tolerance=tolerance),
            response_required=response_required)
        self._events.append(event)
        self._touch()
        log.info("demo VTN: event %s added (%s from %s)", event_id, list(levels), start.isoformat(timespec="seconds"))
        return event_id

    def modify_event(self, event_id: str, levels: Iterable[float] | None = None,
                     start: datetime | None = None, interval_seconds: float | None = None) -> int:
        """Replace the SIMPLE intervals (and/or start); bumps the modification number."""
        ev = self._find(event_id)
        sig = ev.event_signals[0]
        old = sig.intervals
        start = start or old[0].dtstart
        interval_seconds = interval_seconds or old[0].duration.total_seconds()
        levels = list(levels) if levels is not None else [i.signal_payload for i in old]
        new_sig = self._signal(sig.signal_name, sig.signal_type, levels, start, interval_seconds)
        ev.event_signals[0] = new_sig
        ev.active_period.dtstart = start
        ev.active_period.duration = timedelta(seconds=interval_seconds * len(levels))
        return self._bump(ev)

    def cancel_event(self, event_id: str) -> int:
        ev = self._find(event_id)
        ev.event_descriptor.event_status = "cancelled"
        return self._bump(ev)

    def drop_event(self, event_id: str) -> None:
        """Stop listing the event without a cancellation: the VEN must infer it."""
        self._events.remove(self._find(event_id))
        self._touch()

    def request_reregistration(self, ven_id: str) -> None:
        """Forget the VEN's registration; its next message is answered oadrRequestReregistration."""
        if ven_id in self.vens:
            self.vens[ven_id]["registration_id"] = None

    def fail_next(self, message_type: str, times: int = 1) -> None:
        """Answer the VEN's next `times` `message_type`s (e.g. "oadrRegisterReport") with HTTP 500, as
        a VTN with a passing (or, with a large `times`, a lasting) fault would."""
        for service in self._server.services.values():
            handlers = getattr(service, "handlers", {})
            if message_type in handlers:
                real, left = handlers[message_type], [times]

                async def failing(*args, handlers=handlers, real=real, **kwargs):
                    left[0] -= 1
                    if left[0] <= 0:
                        handlers[message_type] = real
                    raise RuntimeError(f"demo VTN: {message_type} failed on purpose")
                handlers[message_type] = failing
                return
        raise KeyError(f"the demo VTN handles no {message_type}")

    def create_report(self, ven_id: str, granularity: timedelta, report_back: timedelta,
                      report_specifier_id: str | None = None, r_id: str | None = None,
                      report_request_id: str | None = None, window: tuple[datetime, timedelta] | None = None) -> str:
        """Send the VEN an oadrCreateReport on its next poll (by default for the report and rID it
        offered last); returns the reportRequestID. `window`: its reportInterval (dtstart, duration)."""
        return self.create_reports(ven_id, [(granularity, report_back)], report_specifier_id, r_id,
                                   [report_request_id], window)[0]

    def create_reports(self, ven_id: str, asked: list[tuple[timedelta, timedelta]],
                       report_specifier_id: str | None = None, r_id: str | None = None,
                       report_request_ids: list[str | None] | None = None,
                       window: tuple[datetime, timedelta] | None = None) -> list[str]:
        """One oadrCreateReport holding a report request per (granularity, reportBackDuration) in `asked`
        (2.0b allows several in one message); returns their reportRequestIDs. `window`: the first one's
        reportInterval (dtstart, duration)."""
        offered = [r for r in self.report_metadata if r["ven_id"] == ven_id]
        if not offered and (report_specifier_id is None or r_id is None):
            raise KeyError(f"VEN {ven_id} offered no report")
        report_specifier_id = report_specifier_id or offered[-1]["report_specifier_id"]
        r_id = r_id or offered[-1]["r_id"]
        rrids = [rrid or f"rr-{uuid.uuid4().hex[:8]}" for rrid in report_request_ids or [None] * len(asked)]
        self._send_requests(ven_id, [(rrid, report_specifier_id, r_id, "Mean", granularity, report_back)
                                     for rrid, (granularity, report_back) in zip(rrids, asked)], window)
        return rrids

    def create_status_report(self, ven_id: str, granularity: timedelta, report_back: timedelta,
                             report_request_id: str | None = None,
                             usage: Iterable[tuple[timedelta, timedelta]] = (),
                             window: tuple[datetime, timedelta] | None = None) -> list[str]:
        """Send the VEN an oadrCreateReport for the TELEMETRY_STATUS it offered last, with TELEMETRY_USAGE requests
        for each (granularity, reportBackDuration) in `usage` in the same message; returns the reportRequestIDs,
        the status one first. `window`: the status request's reportInterval (dtstart, duration)."""
        status = [r for r in self.status_metadata if r["ven_id"] == ven_id]
        if not status:
            raise KeyError(f"VEN {ven_id} offered no TELEMETRY_STATUS report")
        specs = [(report_request_id or f"rs-{uuid.uuid4().hex[:8]}", status[-1]["report_specifier_id"],
                  status[-1]["r_id"], status[-1]["reading_type"], granularity, report_back)]
        if usage := list(usage):
            offered = [r for r in self.report_metadata if r["ven_id"] == ven_id][-1]
            specs += [(f"rr-{uuid.uuid4().hex[:8]}", offered["report_specifier_id"], offered["r_id"], "Mean", g, b)
                      for g, b in usage]
        self._send_requests(ven_id, specs, window)
        return [spec[0] for spec in specs]

    def _send_requests(self, ven_id: str, specs: list[tuple[str, str, str, str, timedelta, timedelta]],
                       window: tuple[datetime, timedelta] | None = None) -> None:
        """One oadrCreateReport of (reportRequestID, reportSpecifierID, rID, readingType, granularity, back); the
        first with `window` as its reportInterval."""
        requests = [objects.ReportRequest(
            report_request_id=rrid,
            report_specifier=objects.ReportSpecifier(
                report_specifier_id=sid, granularity=granularity, report_back_duration=report_back,
                report_interval={"dtstart": window[0], "duration": window[1]} if window and i == 0 else None,
                specifier_payloads=[objects.SpecifierPayload(r_id=r_id, reading_type=reading_type)]))
            for i, (rrid, sid, r_id, reading_type, granularity, report_back) in enumerate(specs)]
        self._outbox.setdefault(ven_id, []).append(
            ("oadrCreateReport", {"request_id": f"req-{uuid.uuid4().hex[:8]}", "report_requests": requests,
                                  "ven_id": ven_id}))

    def cancel_report(self, ven_id: str, report_request_id: str, report_to_follow: bool = False) -> None:
        """Send the VEN an oadrCancelReport on its next poll; its oadrCanceledReport lands in canceled_reports.
        (openleadr gives a poll's answer a requestID of its own, so the one set here is not what goes out.)"""
        self._outbox.setdefault(ven_id, []).append(
            ("oadrCancelReport", {"request_id": f"req-{uuid.uuid4().hex[:8]}", "report_request_id": report_request_id,
                                  "report_to_follow": report_to_follow, "ven_id": ven_id}))

    def forget_report_requests(self) -> list[str]:
        """Act as a VTN restarted with its registrations but not its report requests: every later
        oadrUpdateReport under a request issued so far is answered 452. Returns those requests."""
        issued = {rr.report_request_id for rrs in self._server.services["report_service"].requested_reports.values()
                  for rr in rrs} | {rrid for rrid, _ in self.updates}
        issued |= {rrid for _, rrs in self._outbox.items() for _, p in rrs
                   for rrid in [r.report_request_id for r in p.get("report_requests", [])]}
        self._forgotten |= issued
        return sorted(issued)

    modify = modify_event
    cancel = cancel_event

    def opts_for(self, event_id: str) -> list[str]:
        return [o for _, e, o in self.opts if e == event_id]

    # -- internals ---------------------------------------------------------------------------

    @staticmethod
    def _signal(name, typ, levels, start, interval_seconds, open_ended=False) -> objects.EventSignal:
        if interval_seconds < 1 or float(interval_seconds) != int(interval_seconds):
            # openleadr writes durations in whole seconds: 0.5 s would go out as zero.
            raise ValueError(f"interval_seconds must be a whole number of seconds >= 1, got {interval_seconds}")
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware (UTC)")
        levels = [float(v) for v in levels]
        if name.upper() == "SIMPLE" and not all(v in (0.0, 1.0, 2.0, 3.0) for v in levels):
            # openleadr would refuse to build every later message to the VEN, silently
            raise ValueError(f"SIMPLE levels must be 0, 1, 2 or 3, got {levels}")
        step = timedelta(seconds=interval_seconds)
        intervals = [objects.Interval(dtstart=start + i * step, duration=step, signal_payload=float(v), uid=i)
                     for i, v in enumerate(levels)]
        if open_ended:
            intervals[-1].duration = timedelta(0)
        return objects.EventSignal(intervals=intervals, signal_name=name, signal_type=typ,
                                   signal_id=uuid.uuid4().hex[:10])

    def _find(self, event_id: str) -> objects.Event:
        for ev in self._events:
            if ev.event_descriptor.event_id == event_id:
                return ev
        raise KeyError(f"no event {event_id!r} at the demo VTN")

    def _bump(self, ev: objects.Event) -> int:
        ev.event_descriptor.modification_number += 1
        ev.event_descriptor.modification_date_time = datetime.now(timezone.utc)
        self._touch()
        return ev.event_descriptor.modification_number

    def _touch(self) -> None:
        for ven_id in self.vens:
            self._updated[ven_id] = True

    def _listed(self) -> list[dict]:
        now = datetime.now(timezone.utc)
        # Events that ended a minute ago are no longer listed (the VEN knows they completed).
        # (an open-ended one stays listed, cancelled or not, until drop_event)
        self._events = [e for e in self._events
                        if _open(e) or e.active_period.dtstart + e.active_period.duration + timedelta(minutes=1) > now]
        out = []
        for e in self._events:
            d = asdict(e)
            end = datetime.max.replace(tzinfo=timezone.utc) if _open(e) else e.active_period.dtstart + e.active_period.duration
            if d["event_descriptor"]["event_status"] != "cancelled":
                d["event_descriptor"]["event_status"] = (
                    "completed" if now >= end else "active" if now >= e.active_period.dtstart else "far")
            # 2.0b rule 14: 0 unless active, a cancelled event's too (openleadr zeroed it saying so in a WARNING).
            # openleadr's preflight zeroes an active one as well, comparing the status with "ACTIVE"
            active = d["event_descriptor"]["event_status"] == "active"
            for sig in d["event_signals"]:
                sig["current_value"] = next((i["signal_payload"] for i in sig["intervals"]  # an open one has one
                                             if i["dtstart"] <= now < (end if _open(e) else i["dtstart"] + i["duration"])),
                                            0.0) if active else 0.0
            out.append(d)
        return out

    def _ven_lookup(self, ven_id):
        info = self.vens.get(ven_id)
        if info is None:
            # With TLS the fingerprint is needed even before (re-)registration.
            return {"ven_id": ven_id, "fingerprint": self._ven_fingerprint, "registration_id": None} \
                if self._ven_fingerprint else None
        return dict(info)

    def _on_register(self, payload):
        name = payload.get("ven_name") or "ven"
        if self._ven_fingerprint and payload.get("fingerprint") not in (None, self._ven_fingerprint):
            log.warning("demo VTN: refusing VEN %s with unknown certificate", name)
            return False
        ven_id = f"ven-{name}"
        # never all digits: openleadr's parser reads such an identifier as a number ("009523373746" came back in
        # the VEN's answers as 9523373746, and matched nothing)
        reg = f"reg-{uuid.uuid4().hex[:12]}"
        self.vens[ven_id] = {"ven_id": ven_id, "ven_name": name, "registration_id": reg,
                             "fingerprint": payload.get("fingerprint") or self._ven_fingerprint}
        self._updated[ven_id] = True
        self.registrations += 1
        return ven_id, reg

    def _on_cancel_registration(self, payload):
        self.vens.pop(payload.get("ven_id"), None)

    def _on_register_report(self, ven_id, resource_id, measurement, unit, scale,
                            min_sampling_interval, max_sampling_interval):
        if measurement == "Status":     # how openleadr's VTN names a TELEMETRY_STATUS description (it has no itemBase)
            # what arrives is recorded by _on_update (openleadr hands a callback the value alone)
            return (lambda values: None, min_sampling_interval) if self.request_status else None
        self.report_offers.append((ven_id, resource_id, measurement, unit, scale, min_sampling_interval))
        def received(values, ven_id=ven_id, resource_id=resource_id, measurement=measurement):
            for ts, value in values:
                self.reports.append((ven_id, resource_id, measurement, ts, float(value)))
        if not self.request_telemetry:
            return None
        if self.report_granularity is not None or self.report_back is not None:
            granularity = self.report_granularity if self.report_granularity is not None else min_sampling_interval
            return received, granularity, self.report_back if self.report_back is not None else granularity
        return received, min_sampling_interval

    def _on_update(self, payload):
        for report in payload.get("reports") or []:
            if report["report_request_id"] in self._forgotten:
                raise errors.InvalidIdError(f"reportRequestID {report['report_request_id']} unknown")
        for report in payload.get("reports") or []:
            if report.get("report_name") == "TELEMETRY_STATUS":
                self._on_status(report)
                continue
            self.report_ids.append(report.get("report_id"))
            last = (report.get("intervals") or [{}])[-1]
            self.report_spans.append((report["report_request_id"], report.get("dtstart"),
                                      last["dtstart"] + last["duration"] if last.get("duration") else None))
            self.data_quality += [(report["report_request_id"], i["dtstart"], i["report_payload"].get("data_quality"))
                                  for i in report.get("intervals") or []]
            self.updates.append((report["report_request_id"],
                                 [(i["dtstart"], i.get("duration"), i["report_payload"]["r_id"],
                                   float(i["report_payload"]["value"])) for i in report.get("intervals") or []]))

    def _on_status(self, report: dict) -> None:
        """openleadr's parser leaves an oadrPayloadResourceStatus as a nested dict with no value, and its VTN hands
        the callbacks of the requests made at registration `report_payload["value"]` (a KeyError, answered 500):
        the level is the value it hands on."""
        got = []
        for i in report.get("intervals") or []:
            p = i["report_payload"]
            raw = p.get("payload_resource_status") or {}
            offset = (raw.get("load_control_state") or {}).get("level_offset") or {}
            status = {"online": raw.get("online"), "manual_override": raw.get("manual_override"),
                      **{k: offset.get(k) for k in ("min", "max", "normal")}, "level": offset.get("current")}
            p.setdefault("value", status["level"])
            got.append((i["dtstart"], i.get("duration"), p["r_id"], status))
        self.status_updates.append((report["report_request_id"], got))

    def _on_created(self, payload):
        # openleadr's VTN then looks up what it requested of this VEN at registration, and has no entry (KeyError,
        # a 500 answer) for a VEN that offered no report (openadr.telemetry = false)
        self._server.services["report_service"].requested_reports.setdefault(payload.get("ven_id"), [])
        response = payload.get("response") or {}
        self.created_reports.append((int(response.get("response_code") or 0), response.get("response_description"),
                                     [p["report_request_id"] for p in payload.get("pending_reports") or []]))

    def _on_canceled(self, payload):
        response = payload.get("response") or {}
        self.canceled_reports.append((int(response.get("response_code") or 0), response.get("response_description"),
                                      [p["report_request_id"] for p in payload.get("pending_reports") or []],
                                      bool(response.get("request_id"))))

    def _on_register_report_message(self, payload):
        for report in payload.get("reports") or []:
            into = self.status_metadata if report.get("report_name") == "METADATA_TELEMETRY_STATUS" \
                else self.report_metadata
            for rd in report.get("report_descriptions") or []:
                into.append({"ven_id": payload.get("ven_id"),
                             "report_request_id": report.get("report_request_id"),
                             "message_report_request_id": payload.get("report_request_id"),
                             "report_specifier_id": report.get("report_specifier_id"),
                             "r_id": rd.get("r_id"), "sampling_rate": rd.get("sampling_rate"),
                             "duration": report.get("duration"),
                             "report_type": rd.get("report_type"),
                             "reading_type": rd.get("reading_type"),
                             "item_base": rd.get("measurement"),
                             "resource_id": (rd.get("report_data_source") or {}).get("resource_id"),
                             "power_attributes": (rd.get("measurement") or {}).get("power_attributes")})

    def _on_poll(self, ven_id):
        if self._outbox.get(ven_id):
            return self._outbox[ven_id].pop(0)
        if self._updated.get(ven_id):
            self._updated[ven_id] = False
            return "oadrDistributeEvent", {"events": self._listed()}
        return None

    def _on_request_event(self, ven_id):
        self._updated[ven_id] = False
        events = self._listed()
        return events or None

    def _on_created_event(self, ven_id, event_id, opt_type):
        self.opts.append((ven_id, event_id, opt_type))

    def _on_create_opt(self, payload):
        mod = payload.get("modification_number")
        self.created_opts.append((payload.get("ven_id"), payload.get("event_id"), None if mod is None else int(mod),
                                  payload["opt_type"], payload["opt_reason"]))
        self.held_opts[payload.get("opt_id")] = (payload.get("ven_id"), payload.get("event_id"), payload["opt_type"])
        return "oadrCreatedOpt", {"opt_id": payload.get("opt_id"),
                                  "response": {"response_code": 200, "response_description": "OK",
                                               "request_id": payload.get("request_id")}}

    def _on_cancel_opt(self, payload):
        known = self.held_opts.pop(payload.get("opt_id"), None) is not None
        return "oadrCanceledOpt", {"opt_id": payload.get("opt_id"),
                                   "response": {"response_code": 200 if known else 452,
                                                "response_description": "OK" if known else "invalid ID",
                                                "request_id": payload.get("request_id")}}

    def opts_held_for(self, event_id: str) -> list[str]:
        """The opt types the VTN holds for the event: what its operator sees of the site's answer."""
        return [o for _, e, o in self.held_opts.values() if e == event_id]

    def created_opts_for(self, event_id: str) -> list[str]:
        return [o for _, e, _, o, _ in self.created_opts if e == event_id]


@web.middleware
async def _refuse_what_the_ven_refuses(request: web.Request, handler):
    # openleadr's handler parses each request with the parser that crashes at a DTD's entities (ven/oadr_xml.py):
    # one <!ENTITY> posted to the VTN's port killed the process, and in `edge-gateway demo` the gateway with it.
    # Whatever the VEN refuses in an answer is refused here first, before openleadr parses it.
    if request.method == "POST":
        try:
            validate_xml_schema(await request.read())
        except (XMLSyntaxError, DocumentInvalid) as err:
            log.warning("demo VTN: refused a request from %s to %s: %s", request.remote, request.path, err)
            return web.Response(text=f"XML failed validation: {err}", status=400)
    return await handler(request)


def _open(e: objects.Event) -> bool:
    return e.active_period.duration == timedelta(0)
