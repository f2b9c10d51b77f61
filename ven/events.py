"""Demand-response events as plain values; the only place that reads openleadr's event dicts.

The rest of the gateway sees `Event` with absolute interval times. Randomization
(`tolerance.startafter`) is drawn once when an event is first seen and carried as `start_offset`,
so a restart or a modification never re-rolls it.

An event whose active period lasts 0 has no defined end and stays active until the VTN cancels it
(OpenADR 2.0b conformance rule 47): its last interval in each signal lasts OPEN_ENDED.
"""
from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass, replace
from functools import cached_property
from datetime import datetime, timedelta, timezone

OPT_IN = "optIn"
OPT_OUT = "optOut"
SIMPLE = "SIMPLE"
OPEN_ENDED = timedelta(days=36500)  # "until cancelled", as a duration the arithmetic below can carry
SIMPLE_LEVELS = (0.0, 1.0, 2.0, 3.0)   # conformance rule 9: the only payloads of a SIMPLE signal
# intervals of one event followed (a week of one-minute intervals): a VTN's 80,000 (what fits the 16 MB a message may
# have) held the loop 0.6 s on arrival, and each /api/status listed them all (0.2 s and megabytes at every refresh)
MAX_EVENT_INTERVALS = 7 * 24 * 60
MAX_OPT_CHANGES = 1000  # answers kept per event for the history (about 2 h of a BAS toggling every 10 s)
MAX_COMMENT = 200   # characters of a vtnComment kept: it goes on a log line and into every /api/status


def rank_of(priority: object) -> float:
    """Where an event of this ei:priority stands among overlapping ones: the lowest wins (1 first; 0, none, last)."""
    return priority if isinstance(priority, int) and priority > 0 else math.inf


log = logging.getLogger(__name__)


def _simple_level(payload: float) -> float:
    """A SIMPLE payload the profile forbids, made one the BAS is told to expect (0-3): clamped, then
    rounded half up (2.5 -> 3: when in doubt, the deeper shed the VTN asked for)."""
    if not math.isfinite(payload):
        return 0.0
    return float(math.floor(min(3.0, max(0.0, payload)) + 0.5))


@dataclass(frozen=True)
class Interval:
    start: datetime
    duration: timedelta
    payload: float

    @property
    def end(self) -> datetime:
        return self.start + self.duration

    @property
    def open_ended(self) -> bool:
        return self.duration >= OPEN_ENDED


@dataclass(frozen=True)
class Signal:
    name: str
    type: str
    intervals: tuple[Interval, ...]


@dataclass(frozen=True)
class Event:
    event_id: str
    modification_number: int
    status: str
    test_event: bool
    market_context: str
    signals: tuple[Signal, ...]
    start_offset: timedelta
    received_at: datetime
    opt: str = OPT_IN
    start_after: timedelta = timedelta(0)
    ramp_up: timedelta = timedelta(0)
    # cancelled by the gateway because the VTN stopped listing it (a restarted VTN may list it again)
    unlisted: bool = False
    # ei:priority: the lower the number the higher the priority; 0 = no priority, the lowest
    priority: int = 0
    # when a cancellation reached the gateway: what ran before it stays in the history
    cancelled_at: datetime | None = None
    # a modification of a running event rewrites its intervals, not what already ran: the SIMPLE
    # levels in force before `modified_at` (start, end, level), kept for the history
    modified_at: datetime | None = None
    ran_before: tuple[tuple[datetime, datetime, float], ...] = ()
    # every answer this event has had and when it took effect (UTC), oldest first, so the history shows
    # what was in force when, not today's answer; empty = only `opt` is known (see opt_log)
    opt_changes: tuple[tuple[datetime, str], ...] = ()
    # eventDescriptor createdDateTime (UTC): tells a reused id from a stale copy of this event
    created: datetime | None = None
    # oadrResponseRequired: "never" = the VEN must not answer this event with oadrCreatedEvent
    response_required: str = "always"
    # eiTarget as (type, value), e.g. ("ven_id", "ven-1"), ("resource_id", "chiller-2"); empty = the whole VEN
    targets: tuple[tuple[str, str], ...] = ()
    # False when the targets name venIDs and this VEN's is not among them, or the event's market context is not one
    # of openadr.market_contexts: kept and shown, never followed
    for_this_ven: bool = True
    # eventDescriptor vtnComment: the utility's word on the event ("heat advisory"), on one line
    vtn_comment: str = ""

    @property
    def cancelled(self) -> bool:
        return self.status == "cancelled"

    # start, end and boundaries are cached (the event is frozen): the schedule asks every event for them on each
    # change and timer wake, and a day-ahead list of hundreds of events, or one of 1440 intervals, made that
    # quadratic work on the event loop
    @cached_property
    def start(self) -> datetime:
        """Effective start: the earliest interval plus the randomization offset."""
        starts = [i.start for s in self.signals for i in s.intervals]
        return (min(starts) if starts else self.received_at) + self.start_offset

    @cached_property
    def end(self) -> datetime:
        ends = [i.end for s in self.signals for i in s.intervals]
        return (max(ends) if ends else self.received_at) + self.start_offset

    @property
    def open_ended(self) -> bool:
        return any(i.open_ended for s in self.signals for i in s.intervals)

    @property
    def rank(self) -> float:
        """Overlapping events: the lowest rank wins (priority 1 first; 0, no priority, last)."""
        return rank_of(self.priority)

    @cached_property
    def has_simple(self) -> bool:
        """Whether the gateway can act on this event at all: the points follow SIMPLE signals only."""
        return any(s.name == SIMPLE for s in self.signals)

    @cached_property
    def drives_points(self) -> bool:
        """Only opted-in, non-test events with a SIMPLE signal move the BACnet points, up to `stop`: a cancelled
        one up to when its cancellation takes effect here (none if that time is unknown)."""
        return (not self.test_event and (not self.cancelled or self.cancelled_at is not None) and self.opt == OPT_IN
                and self.for_this_ven and self.has_simple)

    @cached_property
    def stop(self) -> datetime:
        """When it stops here: its end, or its cancellation's (randomized within startafter, rule 65)."""
        return min(self.end, self.cancelled_at) if self.cancelled and self.cancelled_at is not None else self.end

    def simple_level(self, now: datetime) -> float | None:
        """Payload of the SIMPLE interval in effect at `now` (randomization applied), else None."""
        level = None
        for sig in self.signals:
            if sig.name != SIMPLE:
                continue
            for iv in sig.intervals:
                start = iv.start + self.start_offset
                if start <= now < start + iv.duration:
                    level = iv.payload if level is None else max(level, iv.payload)
        return level

    def phase(self, now: datetime) -> str:
        """far/near/active/completed from the clock (never from when the message arrived)."""
        if self.cancelled:
            return "cancelled"
        if now >= self.end:
            return "completed"
        if now >= self.start:
            return "active"
        if self.ramp_up and now >= self.start - self.ramp_up:
            return "near"
        return "far"

    @property
    def opt_log(self) -> tuple[tuple[datetime, str], ...]:
        """(since, opt) of each answer in force, oldest first; the first also stands for any time before it."""
        return self.opt_changes or ((self.received_at, self.opt),)

    def opted(self, opt: str, at: datetime) -> "Event":
        """This event answered `opt` from `at` on; the answers before stay in its log."""
        if opt == self.opt:
            return self
        # A BAS that toggles ADR-Opt-Out all day on an open-ended event would grow the stored event
        # (rewritten with every answer) without bound; the oldest answers go first.
        return replace(self, opt=opt, opt_changes=(self.opt_log + ((at, opt),))[-MAX_OPT_CHANGES:])

    def ran_until(self, now: datetime) -> tuple[tuple[datetime, datetime, float], ...]:
        """What this event had set on the points by `now`, earlier definitions included: level 0 too, which a
        higher-priority event holds the building at through a lower one's shed (history.curtailed_spans)."""
        since = self.modified_at
        segments = []
        for sig in self.signals:
            if sig.name != SIMPLE:
                continue
            for iv in sig.intervals:
                start = max(iv.start + self.start_offset, since or datetime.min.replace(tzinfo=timezone.utc))
                end = min(iv.end + self.start_offset, now, self.cancelled_at or now)
                if start < end:
                    segments.append((start, end, iv.payload))
        return self.ran_before + tuple(segments)

    def boundaries(self) -> tuple[datetime, ...]:
        """Every instant at which this event's contribution can change, in order."""
        return self._boundaries

    @cached_property
    def _boundaries(self) -> tuple[datetime, ...]:
        out = set()
        for sig in self.signals:
            for iv in sig.intervals:
                out.add(iv.start + self.start_offset)
                out.add(iv.end + self.start_offset)
        if self.stop < self.end:
            out = {t for t in out if t < self.stop} | {self.stop}
        return tuple(sorted(out))

    def to_json(self) -> str:
        return json.dumps({
            "event_id": self.event_id,
            "modification_number": self.modification_number,
            "status": self.status,
            "test_event": self.test_event,
            "market_context": self.market_context,
            "signals": [{"name": s.name, "type": s.type,
                         "intervals": [[i.start.isoformat(), i.duration.total_seconds(), i.payload]
                                       for i in s.intervals]} for s in self.signals],
            "start_offset": self.start_offset.total_seconds(),
            "received_at": self.received_at.isoformat(),
            "opt": self.opt,
            "start_after": self.start_after.total_seconds(),
            "ramp_up": self.ramp_up.total_seconds(),
            "unlisted": self.unlisted,
            "priority": self.priority,
            "cancelled_at": self.cancelled_at.isoformat() if self.cancelled_at else None,
            "modified_at": self.modified_at.isoformat() if self.modified_at else None,
            "ran_before": [[a.isoformat(), b.isoformat(), lv] for a, b, lv in self.ran_before],
            "opt_changes": [[at.isoformat(), opt] for at, opt in self.opt_changes],
            "created": self.created.isoformat() if self.created else None,
            "response_required": self.response_required,
            "targets": [list(t) for t in self.targets],
            "for_this_ven": self.for_this_ven,
            "vtn_comment": self.vtn_comment,
        })

    @classmethod
    def from_json(cls, text: str) -> "Event":
        """Raises ValueError (or KeyError, TypeError, OverflowError...) for a body this version cannot run."""
        d = json.loads(text)
        signals = tuple(
            Signal(s["name"], s["type"], tuple(
                Interval(aware_time(a), _stored_duration(b), _stored_payload(s["name"], c))
                for a, b, c in s["intervals"]))
            for s in d["signals"])
        if not isinstance(d["event_id"], str) or d.get("opt") not in (OPT_IN, OPT_OUT):
            raise ValueError(f"event_id {d['event_id']!r} or opt {d.get('opt')!r} is not one this version writes")
        return _in_range(cls(event_id=d["event_id"], modification_number=int(d["modification_number"]),
                   status=d["status"], test_event=bool(d["test_event"]),
                   market_context=d["market_context"], signals=signals,
                   start_offset=timedelta(seconds=d["start_offset"]),
                   received_at=aware_time(d["received_at"]), opt=d["opt"],
                   start_after=timedelta(seconds=d.get("start_after", 0)),
                   ramp_up=timedelta(seconds=d.get("ramp_up", 0)),
                   # files from before "unlisted": a VTN's own cancellation is listed as cancelled again,
                   # so taking every cancellation as possibly implied only lets a live copy reinstate it
                   unlisted=bool(d.get("unlisted", d["status"] == "cancelled")),
                   priority=int(d.get("priority", 0)),
                   cancelled_at=aware_time(d["cancelled_at"]) if d.get("cancelled_at") else None,
                   modified_at=aware_time(d["modified_at"]) if d.get("modified_at") else None,
                   ran_before=tuple((aware_time(a), aware_time(b), _finite(lv))
                                    for a, b, lv in d.get("ran_before", ())),
                   # stored before opt_changes existed: none, so opt_log knows only the answer of now
                   opt_changes=tuple((aware_time(at), str(opt)) for at, opt in d.get("opt_changes", ())),
                   created=aware_time(d["created"]) if d.get("created") else None,
                   response_required=str(d.get("response_required", "always")),
                   targets=tuple((str(k), str(v)) for k, v in d.get("targets", ())),
                   for_this_ven=bool(d.get("for_this_ven", True)),
                   vtn_comment=str(d.get("vtn_comment") or "")))

    def describe(self, now: datetime) -> dict:
        """JSON-ready view for the status API."""
        return {
            "event_id": self.event_id,
            "modification_number": self.modification_number,
            "status": self.phase(now),
            "vtn_status": self.status,
            "test_event": self.test_event,
            "market_context": self.market_context,
            "opt": self.opt,
            "priority": self.priority,
            "start": _iso(self.start),
            "end": None if self.open_ended else _iso(self.end),  # open-ended: until the VTN cancels it
            "open_ended": self.open_ended,
            "cancelled_at": _iso(self.cancelled_at) if self.cancelled_at else None,
            "modified_at": _iso(self.modified_at) if self.modified_at else None,
            "ran_before": [{"start": _iso(a), "end": _iso(b), "payload": lv} for a, b, lv in self.ran_before],
            "opt_changes": [{"at": _iso(at), "opt": opt} for at, opt in self.opt_log],
            "start_offset_seconds": self.start_offset.total_seconds(),
            "received_at": _iso(self.received_at),
            "drives_points": self.drives_points and now < self.stop,
            "targets": [{"type": k, "value": v} for k, v in self.targets],
            "for_this_ven": self.for_this_ven,
            "vtn_comment": self.vtn_comment or None,
            "signals": [{"name": s.name, "type": s.type,
                         "intervals": [{"start": _iso(i.start + self.start_offset),
                                        "duration_seconds": None if i.open_ended else i.duration.total_seconds(),
                                        "payload": i.payload} for i in s.intervals]}
                        for s in self.signals],
        }


# How far the schedule reckons from an event's times: its history (schedule.KEEP_HISTORY, 35 days) and /api/history's
# reach, with room to spare. A stored time nearer than this to datetime's limits (years 1 and 9999) raised
# OverflowError out of every start.
_TIME_MARGIN = timedelta(days=400)


def _stored_duration(seconds) -> timedelta:
    """An interval's stored length. One past OPEN_ENDED (a P9999Y the VTN meant as "until further notice", edited
    in by hand, or written by another version) is what this version means by it; beyond it, the end fell past
    year 9999."""
    seconds = float(seconds)
    if math.isnan(seconds):
        raise ValueError("an interval's duration is NaN")
    return OPEN_ENDED if seconds >= OPEN_ENDED.total_seconds() else timedelta(seconds=seconds)


def _finite(value) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"payload {value} is not a number the BAS can be given")
    return value


def _stored_payload(signal: str, value) -> float:
    """As from the VTN: a SIMPLE payload is a level 0-3 (rule 9); ADR-Event-Level showed a stored inf as it was."""
    value = _finite(value)
    return _simple_level(value) if signal in (SIMPLE, "simple") and value not in SIMPLE_LEVELS else value


def _in_range(ev: "Event") -> "Event":
    """`ev`, if every time the schedule, the history and the API work out from it is a datetime."""
    try:
        times = [ev.start - ev.ramp_up, ev.end + ev.start_after, ev.stop, ev.received_at, *ev.boundaries(),
                 *(t for a, b, _ in ev.ran_before for t in (a, b)), *(at for at, _ in ev.opt_changes),
                 *(t for t in (ev.cancelled_at, ev.modified_at, ev.created) if t is not None)]
        for t in times:
            reckonable(t, _TIME_MARGIN)
    except OverflowError:
        raise ValueError("a time beyond the years 1-9999 (a start, an end or a duration out of range)") from None
    return ev


def reckonable(t: datetime, margin: timedelta) -> datetime:
    """`t`, if the times `margin` either side of it are datetimes too (arithmetic on it near the years 1 and 9999
    raised OverflowError where it was reckoned with, not where it was read)."""
    if not datetime.min + margin <= t.replace(tzinfo=None) <= datetime.max - margin:
        raise OverflowError(f"{t} is within {margin} of the years 1-9999's ends")
    return t


def aware_time(text: str) -> datetime:
    # every time this code stores carries its offset: one without (an edit by hand) raised TypeError at the first
    # comparison with the clock, out of every start, instead of being an event this version cannot read
    t = datetime.fromisoformat(text)
    if t.tzinfo is None:
        raise ValueError(f"time {text!r} has no time zone")
    return t


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def _find(node, key):
    """First value stored under `key` anywhere in a nested dict (openleadr nests tolerance oddly)."""
    if isinstance(node, dict):
        if key in node:
            return node[key]
        for v in node.values():
            found = _find(v, key)
            if found is not None:
                return found
    return None


def _truthy(v) -> bool:
    return v is True or (isinstance(v, str) and v.strip().lower() == "true")


def _targets(raw: dict) -> tuple[tuple[str, str], ...]:
    """eiTarget as openleadr parses it: targets_by_type {"ven_id": [...], ...} (or a list of one-key dicts)."""
    by_type = raw.get("targets_by_type")
    if not isinstance(by_type, dict):
        by_type = {}
        for t in raw.get("targets") or []:
            for k, v in (t.items() if isinstance(t, dict) else ()):
                by_type.setdefault(k, []).append(v)
    out = []
    for kind, values in by_type.items():
        for v in values if isinstance(values, list) else [values]:
            if v is not None and not isinstance(v, dict):
                out.append((str(kind), str(v)))
    return tuple(sorted(set(out)))


def id_reused(prev: Event, raw: dict, now: datetime) -> bool:
    """A lower modification number under a known id is a new event only if the stored one is over by the
    clock, or was cancelled and the new copy was created after it (eventDescriptor createdDateTime). A
    cancellation alone is not enough: the copy from before the cancellation (a VTN failing over to a stale
    replica, a replayed message) has a lower number too, and taking it as new would drive the building
    through an event the utility cancelled."""
    if now >= prev.end:
        return True
    if not prev.cancelled:
        return False
    created = raw["event_descriptor"].get("created_date_time")
    if isinstance(created, datetime) and prev.created is not None:
        return _utc(created) > prev.created
    return True     # nothing tells them apart (stored before `created` was kept): as before


def raw_signals(raw: dict) -> list:
    """An event dict's signals as openleadr's parser delivers them (a list, or a list wrapped in a dict)."""
    signals = raw.get("event_signals") or []
    return signals.get("event_signals") or [] if isinstance(signals, dict) else signals


def signal_name(raw_signal: dict) -> str:
    name = str(raw_signal.get("signal_name"))
    return SIMPLE if name == "simple" else name     # the 2.0b schema's backwards-compatible spelling of SIMPLE


def from_openleadr(raw: dict, received_at: datetime, previous: Event | None = None,
                   rng: random.Random | None = None, ven_id: str | None = None,
                   market_contexts: frozenset[str] = frozenset()) -> Event:
    """Convert one event dict as openleadr's parser delivers it. Raises ValueError or OverflowError for one this
    version cannot run (a time past year 9999: a start in year 9999, a ramp-up of 9000 years; more than
    MAX_EVENT_INTERVALS intervals).

    `previous` is the stored copy of the same event, if any: its randomization offset and opt
    answer survive a modification (the offset is redrawn only if the new window no longer holds it and the event
    has not started here, and drawn when a modification adds a startafter to an event that has not started here).
    """
    desc = raw["event_descriptor"]
    active = dict(raw.get("active_period") or {})
    if active.get("duration") is not None:
        active["duration"] = _until_further_notice(active["duration"])
        if active["duration"] < timedelta(0):     # the schema's duration pattern takes a sign: a VTN's bug
            raise ValueError(f"an active period of negative duration ({active['duration']})")
    ap_start = _utc(active["dtstart"]) if active.get("dtstart") else None
    signals_raw = raw_signals(raw)
    count = sum(len(s.get("intervals") or []) for s in signals_raw)
    if count > MAX_EVENT_INTERVALS:
        raise ValueError(f"{count} intervals, more than the {MAX_EVENT_INTERVALS} (a week of one-minute intervals) "
                         f"this gateway follows in one event")
    # rule 47: an active period of duration 0 (openleadr reads "P" and "PT0S" as 0) never ends by itself
    open_ended = active.get("duration") is not None and active["duration"] == timedelta(0)
    signals = []
    guessed = 0     # intervals without a duration, given one
    for s in signals_raw:
        name = signal_name(s)
        intervals = []
        cursor = ap_start
        for iv in _in_order(s.get("intervals") or []):
            start = _utc(iv["dtstart"]) if iv.get("dtstart") else cursor
            duration = _until_further_notice(iv.get("duration") or timedelta(0))
            if duration < timedelta(0):
                raise ValueError(f"a {name} interval of negative duration ({duration})")
            if start is None:
                raise ValueError(f"event {desc.get('event_id')}: interval without a start")
            payload = float(iv.get("signal_payload", 0.0))
            if name == SIMPLE and payload not in SIMPLE_LEVELS:
                if previous is None or previous.modification_number != int(desc.get("modification_number") or 0):
                    log.warning("event %s: SIMPLE level %g is not 0, 1, 2 or 3 (OpenADR 2.0b rule 9): %g is used",
                                desc.get("event_id"), payload, _simple_level(payload))
                payload = _simple_level(payload)
            intervals.append(Interval(start, duration, payload))
            cursor = start + duration
        if any(i.duration <= timedelta(0) for i in intervals):
            # xcal:duration is optional in an interval: taken as 0 s, a one-interval event never ran here while the
            # VTN heard optIn. Such an interval lasts until the next one starts; the last, to the active period's end
            # (an open-ended event's last interval has no end: below).
            ap_end = ap_start + active["duration"] if ap_start is not None and active.get("duration") else None
            filled = []
            for k, iv in enumerate(intervals):
                until = intervals[k + 1].start if k + 1 < len(intervals) else ap_end
                if iv.duration <= timedelta(0) and until is not None and until > iv.start:
                    iv = replace(iv, duration=until - iv.start)
                    guessed += 1
                filled.append(iv)
            intervals = filled
            cursor = intervals[-1].end
        if open_ended and intervals:
            intervals[-1] = replace(intervals[-1], duration=OPEN_ENDED)
        elif ap_start is not None and active.get("duration") and intervals and cursor > ap_start + active["duration"]:
            # The profile has the intervals add up to the active period. Past it, the VTN's own event is
            # over (its status says completed): the active period is the limit, not a shed beyond it.
            ap_end = ap_start + active["duration"]
            if previous is None or previous.modification_number != int(desc.get("modification_number") or 0):
                log.warning("event %s: %s intervals run to %s, past the active period's end %s: cut there",
                            desc.get("event_id"), name, cursor.isoformat(), ap_end.isoformat())
            intervals = [replace(i, duration=min(i.duration, ap_end - i.start)) for i in intervals if i.start < ap_end]
        signals.append(Signal(name, str(s.get("signal_type")), tuple(intervals)))

    if guessed and (previous is None or previous.modification_number != int(desc.get("modification_number") or 0)):
        log.warning("event %s: %d interval(s) without a duration: each taken to last until the next one starts, the "
                    "last until the active period ends", desc.get("event_id"), guessed)
    start_after = _find(active.get("tolerance"), "startafter") or timedelta(0)
    if start_after < timedelta(0):
        raise ValueError(f"a negative startafter ({start_after})")
    ramp_up = active.get("ramp_up_period") or active.get("ramp_up")  # openleadr parses x-eiRampUp as ramp_up
    ramp_up = _find(ramp_up, "duration") if isinstance(ramp_up, dict) else ramp_up
    # An offset is kept once drawn, or once the event runs here; a 0 that was never drawn (the event had no
    # startafter) is not one: a VTN adding randomization to a pending event has each VEN draw its own, or
    # every site of the program would still start together.
    kept = previous is not None and (previous.start_after > timedelta(0) or previous.start_offset > timedelta(0)
                                     or previous.start <= received_at)
    # running here, it keeps its start whatever the new window: a redraw moved its remaining intervals and its end
    if kept and (timedelta(0) <= previous.start_offset <= start_after or previous.start <= received_at):
        offset = previous.start_offset
    elif start_after > timedelta(0):
        offset = timedelta(seconds=(rng or random).uniform(0.0, start_after.total_seconds()))
    else:
        offset = timedelta(0)
    return _in_range(Event(
        event_id=str(desc["event_id"]),
        modification_number=int(desc.get("modification_number") or 0),
        status=str(desc.get("event_status") or "far"),
        test_event=_truthy(desc.get("test_event")),
        market_context=str(desc.get("market_context") or ""),
        signals=tuple(signals),
        start_offset=offset,
        received_at=received_at if previous is None else previous.received_at,
        opt=previous.opt if previous is not None else OPT_IN,
        start_after=start_after,
        ramp_up=ramp_up if isinstance(ramp_up, timedelta) else timedelta(0),
        priority=_priority(desc.get("priority")),
        created=_utc(desc["created_date_time"]) if isinstance(desc.get("created_date_time"), datetime) else None,
        response_required="never" if raw.get("response_required") == "never" else "always",
        targets=(targets := _targets(raw)),
        for_this_ven=(ven_id is None or not (vens := {v for k, v in targets if k == "ven_id"}) or ven_id in vens)
        and enrolled(str(desc.get("market_context") or ""), market_contexts),
        vtn_comment=one_line(desc.get("vtn_comment")),
    ))


def one_line(text) -> str:
    """A VTN's free text as one log line carries it: runs of white space (new lines too) as one space, at most
    MAX_COMMENT characters."""
    words = " ".join(str(text or "").split())
    return words if len(words) <= MAX_COMMENT else words[:MAX_COMMENT - 3] + "..."


def enrolled(market_context: str, market_contexts: frozenset[str]) -> bool:
    """Whether the site takes part in the event's programme: openadr.market_contexts lists it, or lists none."""
    return not market_contexts or market_context in market_contexts


def _until_further_notice(duration):
    """A VTN's duration of OPEN_ENDED or more (P9999Y, its way of writing "until further notice") as OPEN_ENDED, what
    this version means by it and can add to a time: P9999Y ran past year 9999 (OverflowError), as stored events did."""
    return OPEN_ENDED if isinstance(duration, timedelta) and duration > OPEN_ENDED else duration


def _in_order(intervals: list[dict]) -> list[dict]:
    """A stream's intervals follow one another as written; numbered uids (openleadr's 0, 1, 2...) say the order
    when they are all numbers. Text uids ("int-1") only name an interval: "int-10" does not come before "int-2"."""
    if all(isinstance(iv.get("uid") or 0, int) for iv in intervals):
        return sorted(intervals, key=lambda iv: iv.get("uid") or 0)
    return intervals


def _priority(value) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0  # unreadable: treated as "no priority", the lowest


def with_opt(event: Event, opt: str) -> Event:
    return replace(event, opt=opt)
