"""The VEN side of OpenADR 2.0b: registration, polling, event intake, opt answers and telemetry.

openleadr's OpenADRClient supplies the messages (building, signing, parsing, validating) and its
event bookkeeping; this module supplies what openleadr leaves out: retry with capped exponential
backoff for as long as the gateway runs, detection of a lost VTN context (re-registration request,
repeated poll failures) followed by a fresh registration with reports, and store-and-forward
telemetry: each sample is committed to SQLite first and deleted only after the VTN answered the
oadrUpdateReport carrying its interval (the mean over the requested granularity) with a 200.
openleadr's own scheduler is never started: polling and reporting run here, so nothing is sent that
this module cannot account for.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
import re
import ssl
from collections import Counter
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from typing import Callable

import aiohttp
import xmltodict
from lxml.etree import DocumentInvalid, XMLSyntaxError
from openleadr import OpenADRClient, enums as oenums, errors as oerrors, objects, utils as outils
from openleadr import messaging as omessaging
from openleadr.messaging import NAMESPACES
from signxml import XMLVerifier
from signxml.exceptions import InvalidSignature

from .config import OpenadrConfig, key_is_encrypted, tls_file_problems
from .tasks import cancel_and_wait
from .events import OPT_IN, OPT_OUT, SIMPLE, from_openleadr, id_reused, with_opt
from .oadr_xml import validate_xml_schema
from .report_intervals import (Interval, bucket_start, complete_intervals, effective_granularity, next_boundary,
                               report_period)
from .schedule import EventSchedule
from .telemetry import TelemetryQueue
from .wallclock import clock_suspect

log = logging.getLogger(__name__)

POLL_FAILURES_FOR_LOSS = 3      # consecutive failed polls before the VTN context counts as lost
BATCH = 100                     # intervals per oadrUpdateReport when catching up
MAX_PEEK = 20_000               # samples read at once to fill a batch (a few MB at most)
MAX_GRANULARITY = timedelta(hours=1)   # the coarsest interval offered (any multiple of the sampling works)
INVALID_ID = 452                # OpenADR 2.0b eiResponse code for an ID the VEN does not know
NOT_REGISTERED = 463            # ... and for a VEN the VTN does not know or no longer authorises
# A poll refused with one of these says the VTN has lost this VEN (a restarted VTN that answers so
# instead of oadrRequestReregistration): register again at once, not after POLL_FAILURES_FOR_LOSS polls
# (minutes at a utility's poll rate, with events missed meanwhile). Other refusals may be passing.
UNKNOWN_VEN_CODES = (INVALID_ID, NOT_REGISTERED)
OPT_BATCH = 100                 # eventResponses per oadrCreatedEvent the gateway sends itself (about 40 KB)
# what openleadr answers 200 for; it lists them with dir() anew for every event it answers
_SIGNAL_NAMES = frozenset(oenums.SIGNAL_NAME.values)
_openleadr_log = logging.getLogger("openleadr")    # its own lines, from its _on_event that _Client replaces
MAX_LEVELS_LOGGED = 24          # SIMPLE levels named in an event's log line; the status API has them all


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


# Readings dated this much before the last interval reported mean the wall clock stepped back;
# closer ones are late readings of an interval already sent, and are dropped.
CLOCK_STEP = timedelta(seconds=60)


@dataclasses.dataclass
class _Outage:
    """The VTN out of reach or refusing, from the first failed poll or registration until connected again."""
    since: float            # loop time of the first failure
    kinds: set[str]         # _fault_kind of each failure's reason so far, each said once
    reason: str             # the latest failure's reason, in vtn.last_error until the outage ends
    again: bool             # connected before it began
    registrations: int = 0  # attempts meanwhile, failed or taken
    registered: int = 0     # ... taken: a VTN that takes registrations but refuses every poll


_REFUSED = re.compile(r"VTN refused[^:]*: \d+")


def _fault_kind(reason: str) -> str:
    """What the operator does about a failure: its reason's wording varies within a kind (connection refused,
    then a timeout, while the VTN is down), and only a change of kind is worth a line of its own."""
    if reason.startswith(("TLS ", "VTN refused: certificate fingerprint", "VTN message carries an invalid XML sig")):
        return "TLS"                   # the certificates or the keys: the site's or the VTN's configuration
    if refused := _REFUSED.match(reason):
        return refused.group()         # the VTN answered, and refused: what and its code
    if reason.startswith("HTTP "):
        return " ".join(reason.split(" ", 2)[:2])   # something answers at vtn_url, not as a VTN
    if reason.startswith(("VTN unreachable", "request to ")) or reason.endswith("did not answer in time"):
        return "unreachable"           # down, or the network between
    if reason.startswith(("VTN message", "VTN answer from", "registration error")):
        return "answer"                # a VTN (or what is in front of it) answering nonsense
    return reason


class _Client(OpenADRClient):
    """OpenADRClient whose request path records why a request failed instead of only logging it."""

    last_error: str | None = None
    # "463 <description>" when the VTN's last answer carried an eiResponse code other than 200: openleadr
    # logs the reason and returns nothing, and the operator needs it in /api/status too
    refused: str | None = None
    refused_code: int | None = None
    # set once any answer was oadrRequestReregistration; a client lives for one registration
    reregistration_asked: bool = False
    # openleadr bounds only the connect (5 s) and each socket read (10 s): a VTN (or proxy) trickling
    # a byte every few seconds would hold a request, and with it registration or polling, forever.
    request_timeout_s: float = 30.0
    # openleadr reads an answer whole, and decompressed (aiohttp asks for gzip): 500 KB of gzip took the gateway
    # from 100 MB to 1.2 GB. A day-ahead program of 200 events of 60 intervals is 2.9 MB.
    max_message_bytes: int = 16 * 2**20
    # oadrCreateReport (also the requests an oadrRegisteredReport carries) goes to the VtnClient:
    # openleadr's create_report answers 200 even to a report or rID never offered
    on_create_report: Callable | None = None

    async def create_report(self, response_payload):
        await self.on_create_report(response_payload)

    async def _on_event(self, message):
        """openleadr's own, but a day-ahead program's hundreds of events no longer hold the loop once they are
        handled: openleadr answered them in one step of 20 ms for 200 events, 22-36 ms for 500 (the signal names
        listed anew with dir() for each event, the oadrCreatedEvent templated, and signed with a certificate),
        and looked each event up by scanning all it had received (0.1-0.5 s of CPU for 200-500). The answers,
        their order, what openleadr keeps and its log lines are as before."""
        events = message['events']
        try:
            results = []
            received = {}
            for e in self.received_events:
                received.setdefault(e['event_descriptor']['event_id'], e)     # find_by's: the first listed
            for event in events:
                event_id = event['event_descriptor']['event_id']
                event_status = event['event_descriptor']['event_status']
                modification_number = event['event_descriptor']['modification_number']
                _openleadr_log.info("The VEN received an event with event_id: %s, status: %s, modification_number: %s",
                                    event_id, event_status, modification_number)
                received_event = received.get(event_id)
                if received_event:
                    if received_event['event_descriptor']['modification_number'] == modification_number:
                        result = self.responded_events[event_id]
                    else:
                        # by identity: list.remove compares every dict before it by value
                        at = next(i for i, e in enumerate(self.received_events) if e is received_event)
                        del self.received_events[at]
                        self.received_events.append(event)
                        received[event_id] = event      # an id is received once: each listing replaces it
                        result = await outils.await_if_required(self.on_update_event(event))
                else:
                    self.received_events.append(event)
                    received[event_id] = event
                    result = self.on_event(event)
                if asyncio.iscoroutine(result):
                    result = await result
                results.append(result)
                if event_status in (oenums.EVENT_STATUS.COMPLETED, oenums.EVENT_STATUS.CANCELLED) \
                        and event_id in self.responded_events:
                    self.responded_events.pop(event_id)
                else:
                    self.responded_events[event_id] = result
            for i, result in enumerate(results):
                if result not in ('optIn', 'optOut') and events[i]['response_required'] == 'always':
                    _openleadr_log.error("Your on_event or on_update_event handler must return 'optIn' or 'optOut'; "
                                         f"you supplied {result}. Please fix your on_event handler.")
                    results[i] = 'optOut'
        except Exception as err:
            _openleadr_log.error("Your on_event handler encountered an error. Will Opt Out of the event. "
                                 f"The error was {err.__class__.__name__}: {str(err)}")
            results = ['optOut'] * len(events)

        # off the loop: each answer's status, and the message (templating, signing); a fresh signer per
        # message and jinja's compiled templates are safe in a thread
        created = await asyncio.to_thread(self._created_event, events, results, message['request_id'])
        if created is not None:
            await self._perform_request('EiEvent', created)

    def _created_event(self, events: list[dict], results: list[str], request_id) -> str | None:
        """oadrCreatedEvent for the events that want an answer and are not over, as openleadr builds (and logs) it;
        None when none does. Unlike openleadr's, a lower-case vtnID does not make it 452 "ERROR": the profile
        sets no case for vtnID, and the VTN would read each acknowledgement as refused."""
        response = _ei_response(request_id)
        event_responses = []
        for event, result in zip(events, results):
            if event['response_required'] == 'always' and \
                    not outils.determine_event_status(event['active_period']) == 'completed':
                signals = event['event_signals']
                if not isinstance(signals, list):
                    signals = signals['event_signals']
                unsupported = any(not isinstance(s['signal_name'], str) or s['signal_name'] not in _SIGNAL_NAMES
                                  for s in signals)
                event_responses.append({'response_code': oenums.STATUS_CODES.SIGNAL_NOT_SUPPORTED if unsupported
                                        else 200,
                                        'response_description': 'ERROR' if unsupported else 'OK',
                                        'opt_type': result,
                                        'request_id': response['request_id'],
                                        'modification_number': event['event_descriptor']['modification_number'],
                                        'event_id': event['event_descriptor']['event_id']})
        if not event_responses:
            _openleadr_log.info("Not sending any event responses, because a response was not required/allowed by "
                                "the VTN.")
            return None
        _openleadr_log.info(f"Total event_responses: {len(event_responses)}")
        return self._create_message('oadrCreatedEvent', response=response, event_responses=event_responses,
                                    ven_id=self.ven_id)

    async def _ensure_client_session(self):
        # openleadr's own: ca_file counts only beside a client certificate (a VTN on a private CA was
        # refused without one), a certificate without ca_file fails every request (cafile None), and an
        # encrypted key without its passphrase is asked for on the terminal
        if self.client_session:
            return
        ssl_context = None
        if self.cert_path or self.ca_file:
            ssl_context = ssl.create_default_context(cafile=self.ca_file)  # None: the system's trust store
            ssl_context.check_hostname = self.check_hostname
        if self.cert_path:
            passphrase = (self.passphrase or "").encode()
            ssl_context.load_cert_chain(self.cert_path, self.key_path, password=lambda: passphrase)
        self.client_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_context) if ssl_context else None,
            headers={"content-type": "application/xml"},
            timeout=aiohttp.ClientTimeout(sock_connect=5, sock_read=10))

    async def _perform_request(self, service, message):
        # Requests overlap on this client (a poll, telemetry delivery, opt answers): what one learnt is set
        # when it is done, after its last await, so its caller reads its own request's outcome, not another's.
        message_type, message_payload, self.last_error = await self._request(service, message)
        self.refused = _refusal(message_payload) if message_type else None
        self.refused_code = _response_code(message_payload) if self.refused else None
        if message_type == "oadrRequestReregistration":
            # also the answer to requests whose answer openleadr discards (its oadrCreatedEvent)
            self.reregistration_asked = True
        return message_type, message_payload

    async def _request(self, service, message) -> tuple[str | None, dict, str | None]:
        """(message type, payload, None), or (None, {}, why the request failed; None for an empty answer)."""
        await self._ensure_client_session()
        url = f"{self.vtn_url}/{service}"
        try:
            timeout = aiohttp.ClientTimeout(total=self.request_timeout_s, sock_connect=5, sock_read=10)
            async with self.client_session.post(url, data=message, timeout=timeout) as req:
                content = bytearray()
                async for chunk in req.content.iter_chunked(2**16):
                    content += chunk
                    if len(content) > self.max_message_bytes:
                        return None, {}, (f"VTN answer from {url} over {self.max_message_bytes // 2**20} MB "
                                          f"(decompressed): refused")
                content = bytes(content)
                if req.status != HTTPStatus.OK:
                    return None, {}, f"HTTP {req.status} from {url}: {content[:200].decode('utf-8', 'replace')}"
        except aiohttp.ClientConnectorCertificateError as err:
            return None, {}, f"TLS certificate of the VTN rejected: {err.certificate_error}"
        except aiohttp.ClientSSLError as err:
            return None, {}, f"TLS handshake with the VTN failed: {err}"
        except aiohttp.ClientConnectorError as err:
            return None, {}, f"VTN unreachable at {self.vtn_url}: {err.os_error.strerror or err}"
        except asyncio.TimeoutError:
            return None, {}, f"VTN at {self.vtn_url} did not answer in time"
        except aiohttp.ClientError as err:
            return None, {}, f"request to {url} failed: {err.__class__.__name__}: {err}"
        if not content:
            return None, {}, None
        try:
            # read off the event loop: openleadr takes 0.2-0.3 s for a day-ahead oadrDistributeEvent of 200 events
            # or one event of 1440 intervals, and the BACnet device and the schedule's timer would stall that long;
            # its signature check takes 0.1 s of those 200 events, 0.2 s of the 1440 intervals
            tree = await asyncio.to_thread(validate_xml_schema, content)
            if self.vtn_fingerprint:
                await asyncio.to_thread(verify_signature, tree, self.vtn_fingerprint)
                omessaging._verify_replay_protect(tree)    # its nonce cache is shared with a VTN in this process
            message_type, message_payload = await asyncio.to_thread(parse_message, content)
        except oerrors.FingerprintMismatch as err:
            return None, {}, f"VTN refused: certificate fingerprint does not match openadr.vtn_fingerprint ({err})"
        except _Unsigned:
            return None, {}, ("VTN message is not signed, while openadr.vtn_fingerprint asks for the VTN's signature "
                              "on every message")
        except InvalidSignature:
            return None, {}, "VTN message carries an invalid XML signature"
        except (XMLSyntaxError, DocumentInvalid) as err:
            return None, {}, f"VTN message failed OpenADR schema validation: {err}"
        except Exception as err:   # noqa: BLE001 - any unparsable answer is a failed request
            return None, {}, f"VTN message could not be read: {err.__class__.__name__}: {err}"
        return message_type, message_payload, None


class _Unsigned(InvalidSignature):
    """A message without an XML signature, where one is required."""


def verify_signature(tree, fingerprint: str) -> None:
    """openleadr's validate_xml_signature but its replay check, safe in a worker thread: signxml's XMLVerifier
    keeps each call's settings on itself, and openleadr's one shared verifier also checks a VTN's messages."""
    # openleadr's extract_pem_cert raises AttributeError there, which the operator read as "could not be read"
    if tree.find(".//{http://www.w3.org/2000/09/xmldsig#}X509Certificate") is None:
        raise _Unsigned("the message carries no XML signature")
    cert = outils.extract_pem_cert(tree)
    found = outils.certificate_fingerprint(cert)
    if found != fingerprint:
        raise oerrors.FingerprintMismatch(f"The certificate fingerprint was incorrect. Expected: {fingerprint}; "
                                          f"Received: {found}. Ignoring message.")
    XMLVerifier().verify(tree, x509_cert=outils.ensure_bytes(cert), expect_references=2)


# Elements whose text is a name (xs:string in the 2.0b schema), never a number: openleadr's parser turns any
# all-digit text into an int. From a VTN that numbers its events ("1001", "0042"), itself ("4711") or the VEN
# ("90210"), each event was taken as unlisted at once (an int matches none of the ids the schedule keeps) and
# answered optOut, "0042" was answered as event 42, a numbered vtnID ended the session at every listing (str
# methods on an int), and an eiTarget naming the numbered venID was not taken as this VEN's.
_TEXT_ELEMENTS = frozenset({
    "eventID", "vtnID", "venID", "requestID", "registrationID", "reportRequestID", "reportSpecifierID", "rID",
    "eiReportID", "optID", "signalID", "resourceID", "groupID", "groupName", "partyID", "marketContext",
    "responseDescription", "modificationReason", "vtnComment"})
# The schema's date-time takes the Z as optional; openleadr's parser reads only ...Z and passes any other on as
# text, which ended the session at each listing of the event (it never ran, and was never answered)
_DATE_TIMES = frozenset({"date-time", "createdDateTime", "modificationDateTime"})
_ZONELESS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d*)?")
# An interval's xcal:uid is text too ("int-1"), and openleadr's parser took int() of it: every poll answered with
# such an event failed (the event and the others of its message never ran, nor were answered), and so did each
# registration while the VTN listed it. Numbers stay numbers: they order the intervals (ven/events.py).
_INTEGER = re.compile(r"-?\d+")
_zoneless_seen = False


class _Text:
    """An identifier's text, which openleadr's normalize_dict leaves alone (it is not a str)."""
    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __str__(self) -> str:
        return self.text


def _keep_text(path, key, value):
    global _zoneless_seen
    if key == "uid" and isinstance(value, dict) and list(value) == ["text"]:
        text = value["text"]
        if not isinstance(text, str) or not _INTEGER.fullmatch(text):
            return key, _Text(text or "")
    if isinstance(value, str):
        if key in _TEXT_ELEMENTS:
            return key, _Text(value)
        if key in _DATE_TIMES and _ZONELESS.fullmatch(value):
            if not _zoneless_seen:
                _zoneless_seen = True
                log.warning("the VTN writes date-times without a time zone (%s): read as UTC, the time OpenADR "
                            "2.0b messages carry", value)
            return key, value + "Z"
    return key, value


def _texts(node):
    if isinstance(node, _Text):
        return node.text
    if isinstance(node, dict):
        return {k: _texts(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_texts(v) for v in node]
    return node


def parse_message(content: bytes) -> tuple[str, dict]:
    """openleadr's parse_message, with names kept as text and a date-time without a zone read as UTC."""
    message = xmltodict.parse(content, process_namespaces=True, namespaces=NAMESPACES, postprocessor=_keep_text)
    message_type, payload = message["oadrPayload"]["oadrSignedObject"].popitem()
    return message_type, _texts(outils.normalize_dict(payload))


class _NoScheduler:
    """Stands in for openleadr's APScheduler: reports and polls are timed by VtnClient instead."""

    running = False

    def add_job(self, *args, **kwargs):
        return None

    def remove_all_jobs(self):
        pass

    def shutdown(self, *args, **kwargs):
        pass


def warm_up() -> None:
    """openleadr compiles each XML template on first use (20-40 ms on the event loop per message type)
    and stats its file before every message: compile them once, off the loop, and skip the re-checks."""
    try:
        from openleadr.messaging import TEMPLATES

        TEMPLATES.auto_reload = False
        for name in TEMPLATES.list_templates():
            TEMPLATES.get_template(name)
    except Exception as err:  # an openleadr without these internals only loses the warm-up
        log.debug("openleadr template warm-up skipped: %s", err)


class VtnClient:
    def __init__(self, config: OpenadrConfig, schedule: EventSchedule, telemetry: TelemetryQueue,
                 on_connected: Callable[[bool], None] = lambda ok: None):
        self._cfg = config
        self._schedule = schedule
        self._telemetry = telemetry
        self._on_connected = on_connected
        self._client: _Client | None = None
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
        self.vtn_id: str | None = None       # the vtnID the VTN gave at registration
        self._foreign_vtn: str | None = None  # another vtnID whose oadrDistributeEvent was refused, until ours again
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
        # An outage outlives the session it began in (polls fail, the registrations after them fail, and a VTN
        # that takes registrations but refuses every poll is registered again each cycle): one fault, logged
        # when it starts and when it ends
        self._outage: _Outage | None = None
        self._was_connected = False             # connected once since start: the end line says "again"
        self._poll_error: str | None = None     # the latest failed poll's reason
        self._lost_by_polls = False             # the last session ended on POLL_FAILURES_FOR_LOSS failures
        self._report_specifier_id = f"{config.ven_name}-telemetry"
        self._r_id = config.report_resource_id
        self._report_request_id: str | None = None   # the standing telemetry request being served
        self._granularity = timedelta(seconds=config.telemetry_seconds)   # of its intervals
        self._report_back = self._granularity                             # how often it wants updates
        self._one_shots: list[str] = []      # one-shot requests waiting for their single report
        self._final_report: str | None = None   # cancelled with reportToFollow: one last update, then it ends
        # the standing request's reportInterval: the start of its first interval and its end (None: unbounded)
        self._window: tuple[datetime | None, datetime | None] = (None, None)
        self._sent_until: datetime | None = None   # end of the last interval the VTN took
        self._next_report: datetime | None = None  # when the next update is due (UTC grid)
        self._catch_up = False                     # send every complete interval now (backlog, retry)
        self._reports_offered = False
        self.report_offer_error: str | None = None   # why the VTN did not take the offer, while it does not
        self._offer_backoff = 0.0
        self._next_offer = 0.0
        self._report_refused: str | None = None   # why the VTN refuses telemetry, while it does
        self._report_refusals = 0
        self._reoffer_delay = 0.0   # before the next offer after a refused report (doubles while refused)
        self._tasks: list[asyncio.Task] = []
        self._wake_delivery: asyncio.Event | None = None
        self._lost: asyncio.Event | None = None
        self._opts_dirty: asyncio.Event | None = None
        # event id -> (modification, opt, by oadrCreateOpt): answers waiting for the VTN. Events whose
        # responseRequired is "never" must not get oadrCreatedEvent; their opt goes as oadrCreateOpt.
        self._pending_opts: dict[str, tuple[int, str, bool]] = {}
        self._singly: set[str] = set()      # events whose answers go one per message: their batch was refused
        # events of the message being handled that were listed again unchanged (each re-registration lists every
        # event to a fresh openleadr client): one line for them all, not one per event each time
        self._relisted = 0
        self._listed_twice: set[str] = set()   # events the last oadrDistributeEvent listed more than once (logged)
        self.opt_answer_error: str | None = None   # the VTN's reason for refusing our last opt answer
        self._backlog = 0
        self._clock_wrong_since: datetime | None = None   # the first reading dated before CLOCK_FLOOR, while so
        self.readings_held = 0        # readings not reported because the wall clock was not set (since start)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._wake_delivery = asyncio.Event()
        self._lost = asyncio.Event()
        self._opts_dirty = asyncio.Event()
        self._opts_lock = asyncio.Lock()
        if self._cfg.cert:
            self._note_fingerprint()
        self._tasks = [asyncio.create_task(self._run(), name="vtn-session"),
                       asyncio.create_task(self._deliver(), name="vtn-telemetry")]

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        await self._drop_client()
        self._live = False
        self._set_connected(False)

    # -- public ------------------------------------------------------------------------------

    def record_sample(self, ts: datetime, kw: float) -> bool:
        """Commit one good meter reading; it reaches the VTN in its interval once that is complete and
        an update is due (ven/report_intervals.py). Logs the operator line. False: not queued, as the
        wall clock that dated it is not set (a utility would take it as a reading of that date)."""
        if clock_suspect(ts):
            self.readings_held += 1
            if self._clock_wrong_since is None:
                self._clock_wrong_since = ts
                log.warning("the wall clock reads %s, before this version was built: meter readings are not "
                            "reported until it is set", _iso(ts))
            return False
        if self._clock_wrong_since is not None:
            log.info("the wall clock is set (%s): meter readings are reported again; %d reading(s) taken while it "
                     "read %s were not reported", _iso(ts), self.readings_held, _iso(self._clock_wrong_since))
            self._clock_wrong_since = None
        self._telemetry.add(ts, kw)
        # "waiting" counts the whole queue on the event loop (15-20 ms with a week's backlog at a 1 s poll):
        # only for a line that is logged
        if log.isEnabledFor(logging.DEBUG):
            if self._live and self._report_request_id:
                log.debug("telemetry %.2f kW -> TELEMETRY_USAGE (interval %s + %s, %d waiting)", kw,
                          _iso(bucket_start(ts, self._granularity)), _duration(self._granularity),
                          self._telemetry.pending)
            else:
                log.debug("telemetry %.2f kW -> TELEMETRY_USAGE (queued, %d waiting)", kw, self._telemetry.pending)
        if self._one_shots and self._wake_delivery is not None:
            self._wake_delivery.set()
        return True

    def set_opt_out(self, opted_out: bool) -> None:
        """ADR-Opt-Out changed: update the schedule at once, tell the VTN as soon as it can hear."""
        changed = self._schedule.set_opt_out(opted_out)
        if opted_out:
            log.info("ADR-Opt-Out active: opting out of %d active/pending event(s); new events answered optOut",
                     len(changed))
        else:
            log.info("ADR-Opt-Out relinquished: opting back in to %d active/pending event(s)", len(changed))
        for ev in changed:
            self._pending_opts[ev.event_id] = (ev.modification_number, ev.opt, ev.response_required == "never")
        if changed:
            self._opts_changed()

    def _opts_changed(self) -> None:
        """Answers wait in _pending_opts; the delivery task sends them now, not at the next poll."""
        if self._opts_dirty is not None:
            self._opts_dirty.set()
            self._wake_delivery.set()

    def status(self) -> dict:
        return {
            "connected": self.connected,
            "vtn_url": self._cfg.vtn_url,
            "ven_id": self.ven_id,
            "registration_id": self.registration_id,
            "report_request_id": self._report_request_id,
            "report_granularity_seconds": self._granularity.total_seconds() if self._report_request_id else None,
            "report_back_seconds": self._report_back.total_seconds() if self._report_request_id else None,
            "report_offered": self._reports_offered,
            "report_offer_error": self.report_offer_error,
            "last_poll": self.last_poll.isoformat() if self.last_poll else None,
            "last_error": self.last_error,
            "registration_failures": self.registration_failures,
            "reregistrations": self.reregistrations,
            "last_reregistration": self.last_reregistration,
            "poll_failures": self.poll_failures,
            "opt_answers_waiting": len(self._pending_opts),
            "opt_answer_error": self.opt_answer_error,
            "telemetry": self._telemetry.status(),
            # meter readings taken while the wall clock read a date before this version: not reported
            "readings_not_reported_clock": self.readings_held,
        }

    # -- session: register, poll, notice loss, register again ----------------------------------

    def _clear_error(self, error: str | None) -> None:
        """A fault ended: its reason leaves /api/status, unless another fault has replaced it since."""
        if error is not None and self.last_error == error:
            self.last_error = None

    def _failed(self, what: str, reason: str) -> None:
        """A poll or a registration failed. The first failure starts an outage: one WARNING, and not connected
        from then on, as the log says; another failure is one more WARNING only when its kind of reason is new to
        the outage (the operator acts otherwise), else DEBUG: a cause flipping back and forth (a proxy answering
        502 while its VTN restarts, then out of reach itself) was one more WARNING at every retry."""
        self.last_error = reason
        kind = _fault_kind(reason)
        if self._outage is None:
            self._outage = _Outage(asyncio.get_running_loop().time(), {kind}, reason, self._was_connected)
            if what == "poll":
                log.warning("VTN poll failed: %s", reason)
            else:
                log.warning("VTN registration failed: %s; retrying (backoff up to %g s)",
                            reason, self._cfg.retry_max_seconds)
            self._set_connected(False)
        elif kind not in self._outage.kinds:
            log.warning("VTN outage goes on with another cause: %s failed: %s", what, reason)
            self._outage.kinds.add(kind)
        else:
            log.debug("VTN %s failed: %s", what, reason)
        self._outage.reason = reason

    def _connected_again(self) -> None:
        """Registered, and a poll answered if polls had failed: an outage ends, with the one line that says how
        long it lasted and what it took."""
        outage, self._outage = self._outage, None
        if outage is not None:
            log.info("VTN connected %safter %.0f s (%d failed poll(s), %d registration attempt(s) of which %d "
                     "failed)", "again " if outage.again else "", asyncio.get_running_loop().time() - outage.since,
                     self.poll_failures, outage.registrations, self.registration_failures)
            # also a report's failure meanwhile (telemetry goes on while the registration stands): worded for
            # its own request (its service's URL), one of the outage's causes all the same
            if self.last_error is not None and _fault_kind(self.last_error) in outage.kinds:
                self.last_error = None
        self.poll_failures = self.registration_failures = 0
        self._was_connected = self._live = True
        self._set_connected(True)

    def _set_connected(self, ok: bool) -> None:
        if ok != self.connected:
            self.connected = ok
            try:
                self._on_connected(ok)
            except Exception:
                log.exception("on_connected callback failed")

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
                ok = False
            if not ok:
                self.registration_failures += 1
                self._failed("registration", self.last_error or "no reason given")
            if self._outage is not None:
                self._outage.registrations += 1
                self._outage.registered += ok
            if not ok:
                await self._drop_client()
                await asyncio.sleep(delay * random.uniform(0.9, 1.1))
                delay = min(delay * 2, self._cfg.retry_max_seconds)
                continue
            began = asyncio.get_running_loop().time()
            # else the VTN asked for another registration while this one was under way: its reason stays, for the
            # "context lost" line, and the session ends at once
            if not self._lost.is_set():
                if self._outage is not None and self.poll_failures:
                    # polls refused is not connected: the outage ends once one is answered (the session polls first)
                    self.last_error = self._outage.reason = self._poll_error
                else:
                    self.last_error = None
                    self._connected_again()
            self._wake_delivery.set()
            self._opts_dirty.set()
            try:
                await self._session()
            except Exception as err:  # noqa: BLE001 - a bad message must not end the VEN
                log.error("VTN session error %s: %s", err.__class__.__name__, err)
                self.last_error = f"session error {err.__class__.__name__}: {err}"
            finally:
                self._live = False
                self._set_connected(False)
            if self._lost_by_polls:   # the outage's own doing, logged when it started and when it ends
                log.debug("VTN context lost (%d failed poll(s): %s); registering again", self.poll_failures,
                          self.last_error)
            else:
                log.warning("VTN context lost (%s); registering again", self.last_error or "unknown reason")
            await self._drop_client()
            delay = self._cfg.retry_min_seconds
            if asyncio.get_running_loop().time() - began < 10 * self._cfg.retry_max_seconds:
                # Lost again soon after registering: back off so a confused VTN is not hammered.
                await asyncio.sleep(min(self._cfg.retry_min_seconds * 2 ** quick_losses,
                                        self._cfg.retry_max_seconds))
                quick_losses += 1
            else:
                quick_losses = 0

    def _new_client(self) -> _Client:
        c = self._cfg
        client = _Client(ven_name=c.ven_name, vtn_url=c.vtn_url, ven_id=self.ven_id,
                         cert=c.cert or None, key=c.key or None,
                         # openleadr's signer refuses a passphrase for a key that has none (reissued plain)
                         passphrase=c.passphrase if c.passphrase and key_is_encrypted(c.key) else None,
                         ca_file=c.ca_file or None, vtn_fingerprint=c.vtn_fingerprint or None,
                         show_fingerprint=False, disable_signature=not c.cert)
        client.request_timeout_s = c.request_timeout_seconds
        client.scheduler = _NoScheduler()
        client.on_event = self._handle_event
        client.on_update_event = self._handle_event
        client.on_create_report = self._create_report
        sampling = timedelta(seconds=c.telemetry_seconds)
        # min: how often the meter is sampled; max: any coarser interval is a mean of those samples
        rate = objects.SamplingRate(min_period=sampling, max_period=max(sampling, MAX_GRANULARITY), on_change=False)
        # openleadr ignores add_report's power_hertz/power_voltage (its "real_power" is a shared enum
        # member fixed at 50 Hz / 230 V, and its scale is set on that shared object): give our own copy
        voltage = int(c.power_voltage) if float(c.power_voltage).is_integer() else c.power_voltage
        measurement = dataclasses.replace(
            oenums.MEASUREMENTS.REAL_POWER, scale="k",
            power_attributes=objects.PowerAttributes(hertz=c.power_hertz, voltage=voltage, ac=True))
        # each value is the mean kW over its interval: "Mean" in the 2.0b schema's words. openleadr's defaults,
        # reportType "reading" and readingType "Direct Read", describe a register whose differences are the usage
        client.add_report(callback=lambda: [], resource_id=c.report_resource_id,
                          measurement=measurement, unit="W", scale="k", sampling_rate=rate,
                          report_type=oenums.REPORT_TYPE.USAGE, reading_type=oenums.READING_TYPE.MEAN,
                          report_specifier_id=self._report_specifier_id, r_id=self._r_id,
                          # a METADATA report's duration is the history the VEN can buffer (2.0b): the queue
                          report_duration=timedelta(days=c.queue_max_days))
        return client

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None and client.client_session is not None:
            await client.client_session.close()

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
            log.info("VEN certificate fingerprint %s (give it to the VTN operator)", fingerprint)
            self._fingerprint = fingerprint

    async def _register(self) -> bool:
        problems = tls_file_problems(self._cfg) if self._cfg.cert or self._cfg.ca_file else []
        if problems:  # say which file and why, not what openleadr trips over next
            self.last_error = "TLS files: " + "; ".join(problems)
            return False
        if self._cfg.cert:
            self._note_fingerprint()
        self._client = client = self._new_client()
        self._report_request_id = None
        self._final_report = None
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
            return False
        self.ven_id, self.registration_id = client.ven_id, client.registration_id
        self.vtn_id = (answer[1] if answer else {}).get("vtn_id") or None
        offered = await self._offer_reports(client)
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
        # keep failing, each cycle's registration after the first is part of that one outage.
        log.log(logging.DEBUG if self._outage is not None and self._outage.registered else logging.INFO,
                "registered with VTN %s: venID %s, registrationID %s, poll every %s s, telemetry %s",
                self._cfg.vtn_url, self.ven_id, self.registration_id,
                client.poll_frequency.total_seconds(),
                "requested" if self._report_request_id else "not requested by the VTN" if offered else "not offered")
        if not offered:
            log.warning("the VTN did not take the telemetry report offer (%s): events are served, samples queue, "
                        "the offer is made again (every %g s at most)", self.report_offer_error,
                        self._cfg.retry_max_seconds)
        if rtype == "oadrResponse" and _response_code(payload) == 200:
            self._listed(set())     # the VTN lists no events for us
        await self._dispatch(rtype, payload)
        return True

    async def _offer_reports(self, client: _Client) -> bool:
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
        return True

    async def _session(self) -> None:
        client = self._client
        # Durations travel as whole seconds; a VTN asking for 0 would mean a busy loop.
        period = max(1.0, client.poll_frequency.total_seconds())
        failed_here = 0     # this session's failed polls; self.poll_failures counts across re-registrations
        self._lost_by_polls = False
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
            if (not self._lost.is_set() and not self._reports_offered
                    and asyncio.get_running_loop().time() >= self._next_offer):
                if await self._offer_reports(client):
                    log.info("VTN took the telemetry report offer: telemetry %s",
                             "requested" if self._report_request_id else "not requested yet")
                    self._wake_delivery.set()
            if self._lost.is_set():
                return
            rtype, payload = await client.poll()
            if rtype is None or client.refused:
                self.poll_failures += 1
                self.poll_failures_total += 1
                failed_here += 1
                self._poll_error = client.last_error or f"VTN refused the poll: {client.refused}"
                self._failed("poll", self._poll_error)
                unknown_ven = client.refused_code in UNKNOWN_VEN_CODES
                if unknown_ven:     # a fresh registration: the VTN said it does not know this one
                    self._reregistration_requested(self.last_error, renew=False)
                if failed_here >= POLL_FAILURES_FOR_LOSS or unknown_ven:
                    self._lost_by_polls = True
                    return
                immediate = False
                continue
            if self._outage is not None:
                self._connected_again()
                self._wake_delivery.set()
            self.last_poll = _utcnow()
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

    def _forgotten(self, what: str) -> None:
        """The VTN answered a request with oadrRequestReregistration: register at once, not at the next poll."""
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
        self.last_reregistration = f"{_iso(_utcnow())} {why}"

    async def _registration_cancelled(self, client: _Client, payload: dict) -> bool:
        """oadrCancelPartyRegistration from the VTN, answered oadrCanceledPartyRegistration (with the
        cancel's requestID). For this VEN's registrationID: 200, the session ends and the gateway registers
        anew (a VTN that means to drop the VEN refuses that registration, and the gateway backs off). For
        another registrationID: 452, and this registration stands (openleadr's own handler answers 452 too,
        but the gateway then threw its registration away)."""
        rid = payload.get("registration_id")
        ours = self.registration_id
        mine = rid in (None, ours)
        response = _ei_response(payload.get("request_id"), None if mine else f"registrationID {rid} is not this VEN's")
        msg = client._create_message("oadrCanceledPartyRegistration", response=response, ven_id=self.ven_id,
                                     registration_id=ours)
        await client._perform_request("EiRegisterParty", msg)
        if not mine:
            log.warning("VTN cancelled registration %s, which is not this VEN's (%s): answered %d, the registration "
                        "stands", rid, ours, INVALID_ID)
            return False
        self._reregistration_requested(f"the VTN cancelled the registration {ours}", renew=False)
        return True

    async def _dispatch(self, rtype: str, payload: dict) -> None:
        client = self._client
        if rtype == "oadrResponse":
            return
        if rtype == "oadrDistributeEvent":
            if not await self._from_our_vtn(client, payload):
                return
            events = self._once_each(payload.get("events") or [])
            payload = {**payload, "events": events}
            # what the VTN says has completed is not cancelled when it stops listing it (its clock may be ahead)
            self._schedule.vtn_completed(e["event_descriptor"]["event_id"] for e in events
                                         if e["event_descriptor"].get("event_status") == "completed")
            # oadrDistributeEvent lists every event for this VEN: anything missing was cancelled.
            listed = {e["event_descriptor"]["event_id"] for e in events}
            self._listed(listed)
            self._sync_answer_cache(client, events)
            self._distributed_in = {k: v for k, v in self._distributed_in.items() if k in listed}
            if payload.get("request_id"):
                self._distributed_in.update(dict.fromkeys(listed, payload["request_id"]))
            if events:
                self._relisted = 0
                async with self._opts_lock:   # its answers and ours reach the VTN in the order decided
                    await client._on_event(payload)
                if self._relisted:
                    log.info("%d event(s) listed again, unchanged", self._relisted)
                if client.reregistration_asked:  # the VTN lists the events again once registered
                    self._forgotten("the answer to its events")
                # without an event to answer openleadr sent nothing: the outcome on the client is another
                # request's (a report's)
                elif any(map(_answered_by_openleadr, events)):
                    if client.last_error:         # its one request is the answer, and it is not retried
                        self._answer_again(events, client.last_error)
                    elif client.refused:
                        ids = ", ".join(e["event_descriptor"]["event_id"] for e in events)
                        self._answer_refused(f"VTN refused the answer to event(s) {ids}: {client.refused}")
        elif rtype == "oadrCreateReport":
            await self._create_report(payload)
        elif rtype == "oadrCancelReport":
            await self._cancel_report(payload)
        elif rtype == "oadrRegisterReport":
            # 2.0b report registration goes both ways: the VTN's offer waits for an oadrRegisteredReport (a VTN
            # may offer again at every poll until it has one), here requesting none
            log.info("VTN offered reports; the gateway does not take reports from the VTN: answered requesting none")
            msg = client._create_message("oadrRegisteredReport", response=_ei_response(payload.get("request_id")),
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

    async def _from_our_vtn(self, client: _Client, payload: dict) -> bool:
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
            log.warning("oadrDistributeEvent from vtnID %r, not %r, the VTN this VEN registered with: answered %d, "
                        "its %d event(s) not followed", vtn_id, self.vtn_id, INVALID_ID, len(payload.get("events") or []))
            self._foreign_vtn = vtn_id
        msg = client._create_message(
            "oadrCreatedEvent", ven_id=self.ven_id, event_responses=None,
            response=_ei_response(payload.get("request_id"), f"vtnID {vtn_id} is not the registered VTN's ({self.vtn_id})"))
        await client._perform_request("EiEvent", msg)
        return False

    def _sync_answer_cache(self, client: _Client, events: list[dict]) -> None:
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
        for e in client.received_events:
            eid = e["event_descriptor"]["event_id"]
            stored = self._schedule.get(eid)
            if stored is not None:
                client.responded_events[eid] = _answer(stored)
            else:
                client.responded_events.setdefault(eid, OPT_IN)

    def _listed(self, listed: set[str]) -> None:
        """The VTN lists these events for this VEN and no others. An answer still waiting for one it no longer
        lists (a VTN restarted without its events, say) would name an event it does not have: dropped."""
        self._schedule.retain_only(listed)
        for eid in [eid for eid in self._pending_opts if eid not in listed]:
            del self._pending_opts[eid]
            self._singly.discard(eid)

    def _answer_again(self, events: list[dict], error: str) -> None:
        log.warning("the VTN did not take the answer to %d event(s) (%s); it is sent again", len(events), error)
        for e in events:
            stored = self._schedule.get(e["event_descriptor"]["event_id"])
            if stored is not None and _answered_by_openleadr(e):
                self._pending_opts[stored.event_id] = (stored.modification_number, _answer(stored), False)
        self._opts_changed()

    # -- events ------------------------------------------------------------------------------

    async def _handle_event(self, raw: dict) -> str:
        # openleadr hands over a message's events one after the other without ever yielding: with hundreds in
        # one oadrDistributeEvent the loop would be held for all of them
        await asyncio.sleep(0)
        now = _utcnow()
        eid = raw["event_descriptor"]["event_id"]
        prev = self._schedule.get(eid)
        mod = int(raw["event_descriptor"].get("modification_number") or 0)
        if prev is not None and mod < prev.modification_number and id_reused(prev, raw, now):
            log.info("event %s: the VTN reused the id of an event that is over (modification %d after %d): "
                     "taken as a new event", eid, mod, prev.modification_number)
            self._schedule.forget(eid)
            prev = None
        ev = from_openleadr(raw, now, prev, ven_id=self.ven_id)
        if not ev.for_this_ven:
            # eiTarget names other VENs only: a VTN mistake or a broadcast; following it would shed this
            # building for another site's event. The utility hears optOut: this site will not act on it.
            if prev is None or prev.for_this_ven:
                log.warning("event %s targets %s, not this VEN (%s): kept for the status API, not followed, "
                            "answered optOut", eid, ", ".join(f"{k}={v}" for k, v in ev.targets), self.ven_id)
            ev = with_opt(ev, OPT_OUT)
            if self._schedule.upsert(ev) is not None and prev is not None:
                self._log_event(ev, prev)
            return _answer(self._schedule.get(eid))
        # a new event, or one back from an implied cancellation (ADR-Opt-Out may have changed meanwhile,
        # and set_opt_out leaves cancelled events alone), takes the site's answer of now
        fresh = (prev is None or prev.unlisted) and not ev.test_event and not ev.cancelled
        if fresh:
            ev = with_opt(ev, OPT_OUT if self._schedule.opted_out else OPT_IN)
        if self._schedule.upsert(ev) is not None:  # None: not taken (the schedule logs why)
            self._log_event(ev, prev)
            # no answer means taking part: the utility has to hear that this site will not, and, for an
            # event back from an implied cancellation that it last heard optOut for, that it now does
            if fresh and ev.response_required == "never" and OPT_OUT in (ev.opt, prev and prev.opt):
                self._pending_opts[eid] = (ev.modification_number, ev.opt, True)
                self._opts_changed()
        return _answer(self._schedule.get(eid))

    def _log_event(self, ev, prev) -> None:
        eid = ev.event_id
        if ev.cancelled:
            log.info("event %s cancelled by the VTN (modification %d)", eid, ev.modification_number)
            return
        if prev is None:
            verb = "received"
        elif prev.unlisted:
            verb = "listed again by the VTN"
        elif ev.modification_number == prev.modification_number:
            self._relisted += 1         # said when it was received; counted for one line per message
            return
        else:
            verb = f"modified (modification {ev.modification_number})"
        others = sorted({s.name for s in ev.signals if s.name != SIMPLE})
        levels = [iv.payload for s in ev.signals if s.name == SIMPLE for iv in s.intervals]
        if len(levels) > MAX_LEVELS_LOGGED:     # a day of 1-minute intervals made one line of 7 KB
            levels = f"{str(levels[:MAX_LEVELS_LOGGED])[:-1]}, ... ({len(levels)} intervals)]"
        extra = f", randomized start +{ev.start_offset.total_seconds():.1f} s" if ev.start_after else ""
        if ev.test_event:
            log.info("test event %s %s: acknowledged, does not drive the points", eid, verb)
        else:
            end = "until cancelled" if ev.open_ended else f"to {ev.end.isoformat(timespec='seconds')}"
            prio = f", priority {ev.priority}" if ev.priority else ""
            log.info("event %s %s: SIMPLE levels %s from %s %s%s%s -> %s", eid, verb, levels,
                     ev.start.isoformat(timespec="seconds"), end, prio, extra, ev.opt)
        if others:
            log.info("event %s carries signal(s) %s: kept for the status API, not driving ADR-Event-Level",
                     eid, ", ".join(others))

    async def _send_opts(self) -> None:
        if not self._pending_opts or self._client is None:
            return
        async with self._opts_lock:
            await self._send_opts_locked()

    async def _send_opts_locked(self) -> None:
        for by_create_opt, answers in self._opt_messages():
            if self._client is None:
                return
            if by_create_opt:
                (eid, mod, opt), = answers
                msg = self._client._create_message(
                    "oadrCreateOpt", request_id=outils.generate_id(), ven_id=self.ven_id,
                    opt_id=outils.generate_id(), opt_type=opt,
                    opt_reason="participating" if opt == OPT_IN else "notParticipating",
                    created_date_time=_utcnow(), event_id=eid, modification_number=mod,
                    targets=[{"ven_id": self.ven_id}])
                rtype, payload = await self._client._perform_request("EiOpt", msg)
            else:
                # the eventResponse names the oadrDistributeEvent that carried the event (rule 42), so the
                # VTN can match it, as it does the answer openleadr sent on that message
                request_id = self._distributed_in.get(answers[0][0]) or outils.generate_id()
                msg = self._client._create_message(
                    "oadrCreatedEvent", ven_id=self.ven_id,
                    response={"response_code": 200, "response_description": "OK", "request_id": request_id},
                    event_responses=[{"response_code": 200, "response_description": "OK",
                                      "request_id": request_id, "event_id": eid,
                                      "modification_number": mod, "opt_type": opt} for eid, mod, opt in answers])
                rtype, payload = await self._client._perform_request("EiEvent", msg)
            if rtype is None:
                return      # retried on the next poll or after re-registration
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
                self._opts_changed()
                continue
            for eid, mod, answer in answers:
                if self._pending_opts.get(eid) == (mod, answer, by_create_opt):
                    del self._pending_opts[eid]
                    self._singly.discard(eid)
            how = "oadrCreateOpt for" if by_create_opt else "answer to"
            if self._client.refused:
                self._answer_refused(f"VTN refused the {opt} {how} {_events(answers)}: {self._client.refused}")
                continue
            self.opt_answer_error = None
            log.info("told the VTN %s for %s%s", opt, _events(answers),
                     " (oadrCreateOpt: it wants no answer)" * by_create_opt)

    def _opt_messages(self) -> list[tuple[bool, list[tuple[str, int, str]]]]:
        """The waiting answers as messages: an oadrCreateOpt per event; one oadrCreatedEvent for the answers of
        one kind to events of one oadrDistributeEvent (up to OPT_BATCH), as openleadr answers that message. A
        BAS opting out of a day-ahead program's 200 events sent 200 messages (20 s at a TLS VTN's 100 ms each,
        polls waiting) and logged 200 lines."""
        out: list[tuple[bool, list[tuple[str, int, str]]]] = []
        groups: dict[tuple[str, str], list[tuple[str, int, str]]] = {}
        for eid, (mod, opt, by_create_opt) in self._pending_opts.items():
            if by_create_opt:
                out.append((True, [(eid, mod, opt)]))
                continue
            key = (self._distributed_in.get(eid) or eid, opt) if eid not in self._singly else (eid, "singly")
            if key not in groups or len(groups[key]) >= OPT_BATCH:
                groups[key] = []
                out.append((False, groups[key]))
            groups[key].append((eid, mod, opt))
        return out

    def _answer_refused(self, error: str) -> None:
        # Not sent again: the same answer would be refused again. The utility does not know the
        # gateway's answer, so the operator has to hear of it.
        self.opt_answer_error = error
        log.warning("%s", error)

    # -- telemetry ---------------------------------------------------------------------------

    async def _deliver(self) -> None:
        """Supervise delivery: an unexpected error in one pass must not end telemetry for good."""
        while True:
            try:
                await self._deliver_loop()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug, not a VTN fault (those are handled inside): say so loudly
                log.exception("telemetry delivery failed unexpectedly; restarting it")
                await asyncio.sleep(self._cfg.retry_max_seconds)

    async def _deliver_loop(self) -> None:
        backoff = self._cfg.retry_min_seconds
        while True:
            failed = False
            if self._opts_dirty.is_set() and self._live:
                self._opts_dirty.clear()
                await self._send_opts()
            if self._live and self._one_shots and self._telemetry.newest() is not None:
                failed = not await self._send_one_shots()
            if self._live and self._report_request_id and not failed:
                now = _utcnow()
                if self._catch_up or now >= self._next_report:
                    if await self._send_complete(now):
                        self._catch_up = False
                        self._next_report = self._next_update(now)
                        end = self._window[1]
                        if self._final_report is not None and self._final_report == self._report_request_id:
                            log.info("last TELEMETRY_USAGE update sent for the cancelled request %s; readings "
                                     "queue until the VTN asks again", self._final_report)
                            self._stop_serving(self._final_report)
                        elif end is not None and now >= end:
                            log.info("TELEMETRY_USAGE request %s ended: its reportInterval ended at %s; readings "
                                     "queue until the VTN asks again", self._report_request_id, _iso(end))
                            self._stop_serving(self._report_request_id)
                    else:
                        self._catch_up = True        # once the backoff has passed, whatever is complete by then
                        failed = True
            if failed:
                timeout = backoff
                backoff = min(backoff * 2, self._cfg.retry_max_seconds)
            else:
                backoff = self._cfg.retry_min_seconds
                timeout = (max(0.0, (self._next_report - _utcnow()).total_seconds())
                           if self._live and self._report_request_id else None)
            if self._backlog and not self._catch_up and self._report_request_id:
                log.info("queued telemetry delivered: %d interval(s) with their original times", self._backlog)
                self._backlog = 0
            try:
                async with asyncio.timeout(timeout):
                    await self._wake_delivery.wait()
            except TimeoutError:
                pass
            self._wake_delivery.clear()

    def _drop_before(self, first: datetime) -> None:
        """The VTN asked for reporting from `first`: readings before it are no interval of this request. All of
        them at once, in one line (a week queued at 10 s is 60,000 readings)."""
        dropped, limit = 0, BATCH       # the head, before every batch sent; beyond it once some are early
        while early := [s for s in self._telemetry.peek(limit) if s.ts < first]:
            self._telemetry.ack(early, delivered=False)
            dropped, limit = dropped + len(early), MAX_PEEK
        if dropped:
            log.info("%d reading(s) taken before %s, where the reportInterval of request %s starts, are not "
                     "reported", dropped, _iso(first), self._report_request_id)

    def _next_update(self, now: datetime) -> datetime:
        """When the next update is due: on the reportBackDuration grid, not before the request's
        reportInterval has a whole interval, and at its end at the latest."""
        first, end = self._window
        due = next_boundary(max(now, first) if first is not None else now,
                            report_period(self._granularity, self._report_back))
        return min(due, end) if end is not None and end > now else due

    def _complete(self, now: datetime) -> tuple[list[Interval], list]:
        """The complete intervals at the head of the queue (at most BATCH), and samples of periods
        already reported. A read that fills up may end inside an interval: that one waits for a read
        reaching past it (unless it is the only one, then the read is widened)."""
        per_interval = max(1, math.ceil(self._granularity / timedelta(seconds=self._cfg.telemetry_seconds)))
        limit = BATCH * per_interval + 1
        while True:
            samples = self._telemetry.peek(limit)
            intervals, late = complete_intervals(samples, self._granularity, now, self._sent_until)
            if len(samples) < limit or not intervals:
                return intervals[:BATCH], late
            whole = intervals[:-1]
            if len(whole) >= BATCH or (whole and limit >= MAX_PEEK):
                return whole[:BATCH], late
            if not whole:
                limit *= 2       # one interval holds more than was read: read until it is whole
                continue
            # The meter is read more often than openadr.telemetry_seconds: more samples per interval
            # than guessed. Read enough for a full batch (a week's backlog in 100s, not 10s, of messages).
            limit = min(MAX_PEEK, max(limit * 2, math.ceil(limit * (BATCH + 1) / len(whole))))

    async def _send_complete(self, now: datetime) -> bool:
        """Every complete interval not yet sent, oldest first, BATCH per oadrUpdateReport; each sample
        leaves the queue only once the VTN took the update that carried its interval."""
        first, end = self._window
        if end is not None:
            now = min(now, end)         # intervals reaching past the reportInterval are not this request's
        while self._live and self._report_request_id:
            if first is not None:
                self._drop_before(first)
            intervals, late = self._complete(now)
            if late and min(x.ts for x in late) < self._sent_until - max(self._granularity, CLOCK_STEP):
                # Far older than the last interval sent: not a late reading but a wall clock stepped back
                # (NTP). Dropping would lose every reading until the clock is past the old time again;
                # sent, their intervals overlap the ones stamped by the clock that was ahead.
                log.warning("telemetry samples dated up to %s before the last interval reported: the clock "
                            "stepped back; intervals are reported again from %s", self._sent_until - min(
                                x.ts for x in late), _iso(min(x.ts for x in late)))
                self._sent_until = None
                continue
            if late:
                log.warning("%d telemetry sample(s) dated before %s, the end of the last interval reported "
                            "(the clock stepped back?): dropped, as their interval cannot be sent twice",
                            len(late), _iso(self._sent_until))
                self._telemetry.ack(late, delivered=False)
            if not intervals:
                return True
            if not await self._send_report(intervals, self._report_request_id):
                return False
            self._telemetry.ack([s for iv in intervals for s in iv.samples])
            self._sent_until = intervals[-1].end
            # one line per interval is a healthy gateway's whole log: only a backlog is news, said when
            # its first batch goes and when it is all delivered, not once per batch
            log.log(logging.INFO if len(intervals) > 1 and not (self._catch_up and self._backlog) else logging.DEBUG,
                    "TELEMETRY_USAGE: %d interval(s) of %s from %s to %s sent (request %s)", len(intervals),
                     _duration(self._granularity), _iso(intervals[0].start), _iso(intervals[-1].end),
                     self._report_request_id)
            if self._catch_up and (len(intervals) > 1 or self._backlog):
                self._backlog += len(intervals)
        return False

    async def _send_one_shots(self) -> bool:
        """A one-shot request (granularity and reportBackDuration 0) gets the latest reading, once.
        The reading stays queued: it belongs to the standing request's interval too."""
        sample = self._telemetry.newest()
        step = timedelta(seconds=self._cfg.telemetry_seconds)
        interval = Interval(bucket_start(sample.ts, step), step, sample.kw, ())
        for rrid in list(self._one_shots):
            if not await self._send_report([interval], rrid):
                return False
            if rrid not in self._one_shots:
                continue                # refused: given up (logged)
            self._end_one_shot(rrid)
            log.info("one-shot report %s sent: %.2f kW read at %s; the request is finished",
                     rrid, sample.kw, _iso(sample.ts))
        return True

    def _offer_again(self, rrid: str) -> None:
        """The VTN refuses updates under this request (452: it forgot the request, e.g. restarted with
        the registrations but not the report requests). Polls go on, so nothing else would ever let it
        request telemetry again: the reports are offered anew, and the backlog goes to its new request."""
        if rrid != self._report_request_id:
            return
        self._stop_serving(rrid)
        self._reports_offered = False
        self._next_offer = asyncio.get_running_loop().time() + self._reoffer_delay
        self._reoffer_delay = min(max(self._reoffer_delay * 2, self._cfg.retry_min_seconds),
                                  self._cfg.retry_max_seconds)

    async def _cancel_report(self, payload: dict) -> None:
        """oadrCancelReport: the request is no longer served, and oadrCanceledReport says so. With
        reportToFollow the standing request first gets one last update (the intervals complete by then);
        readings after it wait in the queue for the VTN's next request. A request the gateway does not
        serve is answered 452, so the VTN learns its bookkeeping and ours differ. One message may name
        several requests (the schema allows any number): each is cancelled, the 452 names those not served."""
        rrids = payload.get("report_request_id")
        rrids = rrids if isinstance(rrids, list) else [rrids]
        follow = bool(payload.get("report_to_follow"))
        unknown = []
        for rrid in rrids:
            if rrid is not None and rrid == self._report_request_id:
                if follow:
                    self._final_report, self._catch_up = rrid, True
                    self._wake_delivery.set()
                    log.warning("the VTN cancelled the telemetry report (request %s): one last update, then "
                                "readings queue until it asks again", rrid)
                else:
                    self._stop_serving(rrid)
                    log.warning("the VTN cancelled the telemetry report (request %s); readings queue until it "
                                "asks again", rrid)
            elif rrid in self._one_shots:
                self._end_one_shot(rrid)
                log.info("the VTN cancelled the one-shot report %s before it was sent", rrid)
            else:
                unknown.append(str(rrid))
        refusal = None
        if unknown:
            serving = ", ".join(self._served()) or "none"
            log.warning("VTN cancelled report request %s, which the gateway does not serve (serving: %s): "
                        "answered %d", ", ".join(unknown), serving, INVALID_ID)
            refusal = f"reportRequestID {', '.join(unknown)} is not served by this VEN"
        # still pending: what is served, and the cancelled request until its last update is sent
        await self._answer_report_message("oadrCanceledReport", _ei_response(payload.get("request_id"), refusal))

    def _served(self) -> list[str]:
        """The report requests being served: the standing one and the one-shots not yet sent."""
        return [r for r in [self._report_request_id, *self._one_shots] if r]

    async def _answer_report_message(self, message_type: str, response: dict) -> None:
        """oadrCreatedReport / oadrCanceledReport: the answer, and the requests still pending."""
        client = self._client
        msg = client._create_message(message_type, response=response, ven_id=self.ven_id,
                                     pending_reports=[{"report_request_id": r} for r in self._served()])
        await client._perform_request("EiReport", msg)

    def _end_one_shot(self, rrid: str) -> None:
        self._one_shots.remove(rrid)
        self._forget_request(rrid)

    def _stop_serving(self, rrid: str) -> None:
        self._report_request_id = self._final_report = None
        self._window = (None, None)
        self._forget_request(rrid)

    def _forget_request(self, rrid: str) -> None:
        if self._client is not None:
            self._client.report_requests[:] = [r for r in self._client.report_requests
                                               if r["report_request_id"] != rrid]

    async def _create_report(self, payload: dict) -> None:
        """oadrCreateReport: serve what was offered, refuse (452) what was not, answer oadrCreatedReport.
        One standing request is served at a time: a newer one replaces it (logged)."""
        client = self._client
        sampling = timedelta(seconds=self._cfg.telemetry_seconds)
        refused: list[str] = []
        for rr in payload.get("report_requests") or []:
            rrid = rr["report_request_id"]
            spec = rr.get("report_specifier") or {}
            sid = spec.get("report_specifier_id")
            r_ids = [p.get("r_id") for p in spec.get("specifier_payloads") or []]
            if sid != self._report_specifier_id:
                refused.append(f"{rrid}: report {sid!r} was never offered (offered: {self._report_specifier_id!r})")
                continue
            unknown = [r for r in r_ids if r != self._r_id]
            if unknown or not r_ids:
                refused.append(f"{rrid}: rID {', '.join(map(repr, unknown)) or '(none)'} not in report {sid!r} "
                               f"(offered: {self._r_id!r})")
                continue
            asked = spec.get("granularity")
            back = spec.get("report_back_duration") or timedelta(0)
            self._forget_request(rrid)
            client.report_requests.append({"report_request_id": rrid, "report_specifier_id": sid,
                                           "report_back_duration": back, "r_ids": r_ids, "granularity": asked,
                                           "job": None})
            if asked == timedelta(0) and back == timedelta(0):
                self._one_shots.append(rrid)
                log.info("VTN asked for one TELEMETRY_USAGE report (request %s): the latest reading is sent once",
                         rrid)
                continue
            granularity = effective_granularity(asked or None, sampling)
            if asked and asked < sampling:
                log.warning("VTN request %s asks for intervals of %s, finer than the meter is sampled (%s, "
                            "openadr.telemetry_seconds): intervals of %s are sent instead",
                            rrid, _duration(asked), _duration(sampling), _duration(granularity))
            self._adopt(rrid, granularity, back, _report_window(spec, granularity))
        if refused:
            log.warning("VTN requested telemetry the gateway never offered, refused with %d: %s",
                        INVALID_ID, "; ".join(refused))
        request_id = payload.get("request_id") or (payload.get("response") or {}).get("request_id")
        await self._answer_report_message("oadrCreatedReport",
                                          _ei_response(request_id, "; ".join(refused) if refused else None))
        self._wake_delivery.set()

    def _adopt(self, rrid: str, granularity: timedelta, back: timedelta,
               window: tuple[datetime | None, datetime | None] = (None, None)) -> None:
        old = self._report_request_id
        how = (f"intervals of {_duration(granularity)} (mean of the readings in each), "
               + (f"sent every {_duration(back)}" if back > granularity else "each sent as it completes")
               + (f", from {_iso(window[0])}" if window[0] is not None else "")
               + (f" until {_iso(window[1])}" if window[1] is not None else ""))
        if old and old != rrid:
            # openleadr keeps the old one listed, so an oadrCancelReport for it is still answered
            log.info("VTN report request %s replaces %s (one telemetry request is served at a time): %s",
                     rrid, old, how)
        elif old != rrid or (granularity, back, window) != (self._granularity, self._report_back, self._window):
            log.info("VTN requested telemetry (request %s): %s", rrid, how)
        self._report_request_id, self._granularity, self._report_back = rrid, granularity, back
        self._window = window
        self._final_report = None
        self._next_report = self._next_update(_utcnow())
        self._catch_up = True        # what is complete already (queued while nothing was requested) goes now

    async def _send_report(self, intervals: list[Interval], rrid: str) -> bool:
        client = self._client
        if client is None or rrid is None:
            return False
        report_intervals = [objects.ReportInterval(dtstart=iv.start, duration=iv.duration,
                                                   report_payload=objects.ReportPayload(r_id=self._r_id,
                                                                                        value=iv.value))
                            for iv in intervals]
        report = objects.Report(report_request_id=rrid, report_specifier_id=self._report_specifier_id,
                                report_name="TELEMETRY_USAGE", intervals=report_intervals,
                                dtstart=intervals[0].start, duration=intervals[-1].end - intervals[0].start)
        # openleadr's Report has no field for eiReportID and its template then sends it empty: each report
        # instance gets its own, so a VTN can tell them apart (a resent batch is a new instance)
        report.report_id = outils.generate_id()
        msg = client._create_message("oadrUpdateReport", ven_id=self.ven_id,
                                     request_id=outils.generate_id(), reports=[report])
        rtype, payload = await client._perform_request("EiReport", msg)
        if rtype == "oadrUpdatedReport" and _response_code(payload) == 200:
            if self._report_refused is not None:
                log.info("the VTN takes telemetry again after %d refused report(s)", self._report_refusals)
                self._clear_error(self._report_refused)
                self._report_refused, self._report_refusals = None, 0
            self._reoffer_delay = 0.0
            return True
        if rtype == "oadrRequestReregistration":
            self._forgotten("the report")
        elif rtype is not None:
            # polls may go on fine meanwhile: this is the only place the operator hears of it
            self.last_error = (f"VTN refused the report: {client.refused}" if client.refused
                               else f"VTN answered the report with {rtype} code {_response_code(payload)}")
            if rrid in self._one_shots:
                self._end_one_shot(rrid)     # its one chance: the VTN does not want it
                log.warning("%s; the one-shot report %s is given up", self.last_error, rrid)
                return True
            if self.last_error != self._report_refused:
                log.warning("%s; the samples stay queued, the reports are offered again so the VTN can request "
                            "them anew (backoff up to %g s)", self.last_error, self._cfg.retry_max_seconds)
            self._report_refused = self.last_error
            self._report_refusals += 1
            self._offer_again(rrid)
        else:
            self.last_error = client.last_error
        return False


def _iso(t: datetime | None) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z") if t else "-"


def _duration(d: timedelta) -> str:
    """ISO 8601, as on the wire (PT10S, PT5M, PT1H30M)."""
    return outils.timedeltaformat(d)


def _report_window(spec: dict, granularity: timedelta) -> tuple[datetime | None, datetime | None]:
    """A request's reportInterval ("the overall period of reporting") as the intervals on the clock grid
    that overlap it: the start of the first, the end of the last (a VTN writing its request's time as
    dtstart gets the interval in progress, not the next one). A duration of 0 (or none) reports until
    cancelled, and from the queue's head: a VTN back from an outage that asks from now would otherwise
    have the readings queued meanwhile dropped, which the gateway keeps for it."""
    period = spec.get("report_interval") or {}
    start, length = period.get("dtstart"), period.get("duration")
    if not isinstance(start, datetime) or not isinstance(length, timedelta) or length <= timedelta(0):
        return None, None
    end = start + length
    return bucket_start(start, granularity), end if bucket_start(end, granularity) == end else next_boundary(
        end, granularity)


def _ei_response(request_id: str | None, refusal: str | None = None) -> dict:
    """An answer's eiResponse: 200 OK, or 452 (an ID the VEN does not know) with the reason."""
    request_id = "" if request_id is None else request_id     # an empty requestID: openleadr's template writes "None"
    if refusal is None:
        return {"response_code": 200, "response_description": "OK", "request_id": request_id}
    return {"response_code": INVALID_ID, "response_description": refusal[:200], "request_id": request_id}


def _events(answers: list[tuple[str, int, str]]) -> str:
    """'event e1', 'events e1, e2', or the first few and how many, for a log line."""
    ids = [eid for eid, _, _ in answers]
    if len(ids) == 1:
        return f"event {ids[0]}"
    shown = ", ".join(ids[:5])
    return f"{len(ids)} events ({shown}, ...)" if len(ids) > 5 else f"events {shown}"


def _answer(event) -> str:
    """One answer per event and modification: a cancellation is acknowledged with optIn."""
    return OPT_IN if event.cancelled else event.opt


def _answered_by_openleadr(event: dict) -> bool:
    """Whether openleadr's oadrCreatedEvent for its message answers this event (its own test)."""
    return (event.get("response_required") == "always"
            and outils.determine_event_status(event["active_period"]) != "completed")


def _modification(event: dict) -> int:
    return int(event["event_descriptor"].get("modification_number") or 0)


def _refusal(payload: dict | None) -> str | None:
    """ "463 <description>" for an eiResponse code other than 200, None for 200 or no eiResponse."""
    code = _response_code(payload)
    if code in (None, 200):
        return None
    description = str(payload["response"].get("response_description") or "").strip()
    return f"{code} {description}" if description else str(code)


def _response_code(payload: dict | None):
    try:
        return int(payload["response"]["response_code"])
    except (KeyError, TypeError, ValueError):
        return None
