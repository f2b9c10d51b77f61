"""The transport to the VTN: openleadr's OpenADRClient with a bounded request path (timeouts, size caps, why a
request failed), each answer read off the event loop and checked (schema, XML signature, names kept as text),
and the eiResponse helpers; apart, so that the session in ven/vtn.py deals in requests and their outcomes."""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import ssl
import urllib.parse
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from typing import Awaitable, Callable

import aiohttp
import xmltodict
from lxml.etree import DocumentInvalid, XMLSyntaxError
from openleadr import OpenADRClient, enums as oenums, errors as oerrors, utils as outils
from openleadr.messaging import NAMESPACES
from signxml import XMLVerifier
from signxml.exceptions import InvalidSignature

from bacnet_api.bug_guard import BugGuard

from .config_text import shown_url
from .events import OPEN_ENDED, SIMPLE, raw_signals, signal_name
from .oadr_xml import validate_xml_schema

# one logger for the VEN side, wherever its code lives: tests and log filters select its lines by this name
log = logging.getLogger("ven.vtn")
# an event whose handling raised (a bug in the gateway)
EVENT_BUG_THEN = ("it is answered optOut (unless the gateway took it all the same: then as it runs), and handled "
                  "again when the VTN lists it next")

INVALID_ID = 452                # OpenADR 2.0b eiResponse code for an ID the VEN does not know
NOT_REGISTERED = 463            # ... and for a VEN the VTN does not know or no longer authorises
INVALID_DATA = 454              # ... and for an event the VEN cannot read (its eventResponse, the others' stay 200)
# what openleadr answers 200 for; it lists them with dir() anew for every event it answers
_SIGNAL_NAMES = frozenset(oenums.SIGNAL_NAME.values)
_openleadr_log = logging.getLogger("openleadr")    # its own lines, from its _on_event that VenClient replaces


class _VenIdChanged(logging.Filter):
    """openleadr's own WARNING for a venID the VTN changed ("did not match the venID the venID that was previously
    configured ... supplied by the VEN"): the gateway's registration line says it, naming both."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("The venID that was received from the VTN")


_openleadr_log.addFilter(_VenIdChanged())


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


_REFUSED = re.compile(r"VTN refused[^:]*: \d+")
_HTTP_ERROR = re.compile(r"HTTP ([45]\d\d) from ")     # _request's reason for an error status


def fault_kind(reason: str) -> str:
    """What the operator does about a failure: its reason's wording varies within a kind (connection refused,
    then a timeout, while the VTN is down), and only a change of kind is worth a line of its own."""
    if reason.startswith(("TLS ", "VTN refused: certificate fingerprint", "VTN message carries an invalid XML sig")):
        return "TLS"                   # the certificates or the keys: the site's or the VTN's configuration
    if refused := _REFUSED.match(reason):
        return refused.group()         # the VTN answered, and refused: what and its code
    if reason.startswith("HTTP "):
        return " ".join(reason.split(" ", 2)[:2])   # something answers at vtn_url, not as a VTN
    if reason.startswith("proxy "):
        return "proxy"                 # the site's proxy, unreachable or refusing: the site's IT, not the utility
    if (reason.startswith(("VTN unreachable", "request to ", "connection to the VTN "))
            or reason.endswith("did not answer in time")):
        return "unreachable"           # down, or the network between
    if reason.startswith(("VTN message", "VTN answer from")):
        return "answer"                # a VTN (or what is in front of it) answering nonsense
    if reason.startswith(("session error ", "registration error ")):
        # the exception's class, wherever the message that raised it came (a registration's last step answers with
        # the VTN's events too): its text names the values of each message
        return "error " + reason.split(":", 1)[0].split(" ", 2)[2]
    if reason.startswith(("the VTN asked for re-registration", "the VTN no longer knows this VEN",
                          "the VTN cancelled the registration")):
        return "register again"        # worded for the message it answered, or naming each registration
    return reason


EMPTY_ANSWER = "the VTN's answer was empty (HTTP 200 with no body)"

# what each refusal of a connection says of where the fault is: asyncio's own words ("Connect call failed
# ('198.18.93.10', 16080)") were the same for a VTN that is down and a site network with no route (helper links41)
_CONNECT_FAILURES = {
    errno.ECONNREFUSED: "the host answered, nothing listens on that port (the VTN down?)",
    errno.EHOSTUNREACH: "no route to the host (the site's network, a router or firewall on the way)",
    errno.ENETUNREACH: "this machine has no route to that network (its link or default route is down?)",
    errno.ENETDOWN: "this machine's network is down",
}


def _connect_failure(err: OSError) -> str:
    if err.errno in _CONNECT_FAILURES:
        return f"{os.strerror(err.errno)}: {_CONNECT_FAILURES[err.errno]}"
    return (os.strerror(err.errno) if err.errno else None) or err.strerror or str(err)


def _error_page(content: bytes) -> str:
    """An error answer as one line of the log: a proxy's or web server's HTML page by its title."""
    text = content[:4096].decode("utf-8", "replace")
    title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    return " ".join((title.group(1) if title else text[:200]).split())


def event_status_of(event: dict) -> str | None:
    """openleadr's status of a listed event from the clock; None for one whose end is past year 9999 (its
    determine_event_status raises OverflowError): not completed, and answered."""
    try:
        return outils.determine_event_status(event["active_period"])
    except OverflowError:
        return None


def _period(event: dict) -> tuple:
    period = event.get('active_period') or {}
    return period.get('dtstart'), period.get('duration')


def _what_runs(event: dict) -> tuple:
    """What the site runs of an event listing besides its active period: cancelled or not, and its signals' intervals
    (not their currentValue, which a VTN updates as the intervals pass, nor the status's far/near/active)."""
    return (event['event_descriptor'].get('event_status') == oenums.EVENT_STATUS.CANCELLED,
            [(s.get('signal_name'), s.get('signal_type'), s.get('signal_id'),
              [(i.get('dtstart'), i.get('duration'), i.get('uid'), i.get('signal_payload'))
               for i in s.get('intervals') or []]) for s in raw_signals(event)])


class VenClient(OpenADRClient):
    """OpenADRClient whose request path records why a request failed instead of only logging it."""

    last_error: str | None = None
    # "463 <description>" when the VTN's last answer carried an eiResponse code other than 200: openleadr
    # logs the reason and returns nothing, and the operator needs it in /api/status too
    refused: str | None = None
    refused_code: int | None = None
    # the HTTP error status (400-599) the last request was answered with, None for any other outcome: the VTN (or a
    # proxy) took that message and failed it, where one out of reach fails them all alike
    error_status: int | None = None
    # set once any answer was oadrRequestReregistration; a client lives for one registration
    reregistration_asked: bool = False
    # openleadr bounds only the connect (5 s) and each socket read (10 s): a VTN (or proxy) trickling
    # a byte every few seconds would hold a request, and with it registration or polling, forever.
    request_timeout_s: float = 30.0
    # openleadr reads an answer whole, and decompressed (aiohttp asks for gzip): 500 KB of gzip took the gateway
    # from 100 MB to 1.2 GB. A day-ahead program of 200 events of 60 intervals is 2.9 MB.
    max_message_bytes: int = 16 * 2**20
    # openadr.proxy: the site's outbound HTTP proxy (CONNECT for an https:// VTN), or None to go straight there
    proxy: str | None = None
    # awaited before the oadrCreatedEvent goes: the events it answers, as handled, on the disk (VtnClient sets it)
    before_answer: Callable[[], Awaitable[None]] | None = None
    # event id -> eiResponse description, for the listed events VtnClient refused: answered INVALID_DATA
    invalid_events: dict[str, str]
    # oadrCreateReport (also the requests an oadrRegisteredReport carries) goes to the VtnClient:
    # openleadr's create_report answers 200 even to a report or rID never offered
    on_create_report: Callable | None = None

    # the answer for an event whose handling raised, if the gateway holds it all the same (else None)
    held_answer: Callable[[dict], str | None] = staticmethod(lambda raw: None)

    @property
    def server_failed(self) -> str | None:
        """Why, when the VTN's last answer carried a 5xx code in its eiResponse: 2.0b's codes are HTTP's, and "500
        server busy" is the VTN failing the message, not refusing it (a 4xx): it is sent again, as for an HTTP 5xx."""
        if self.refused_code is not None and 500 <= self.refused_code < 600:
            return f"the VTN failed it: {self.refused}"
        return None

    def failure(self, rtype: str | None) -> str | None:
        """Why the last request, answered `rtype`, was not taken and goes again: no answer, an HTTP error, or a 5xx
        code in its eiResponse ("an empty answer" when none says more); None when it was taken or refused (a 4xx
        code: `refused`). oadrRequestReregistration is an answer to any request, whatever else it carries."""
        if rtype is None:
            return self.last_error or "an empty answer"
        return self.server_failed if rtype != "oadrRequestReregistration" else None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.invalid_events = {}
        # VtnClient gives each registration's client its own, which outlasts them
        self.event_bug = BugGuard(log, "handling an event from the VTN", EVENT_BUG_THEN)

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
            failed = False      # one event's handling: the fault ends with a message handled whole
            for e in self.received_events:
                received.setdefault(e['event_descriptor']['event_id'], e)     # find_by's: the first listed
            for event in events:
                event_id = event['event_descriptor']['event_id']
                event_status = event['event_descriptor']['event_status']
                modification_number = event['event_descriptor']['modification_number']
                _openleadr_log.info("The VEN received an event with event_id: %s, status: %s, modification_number: %s",
                                    event_id, event_status, modification_number)
                received_event = received.get(event_id)
                try:
                    result = await self._handle(event, received_event, received)
                except Exception as err:  # noqa: BLE001 - a bug in the gateway's handling, not in the VTN's event
                    self.event_bug.failed(err)
                    failed = True
                    if (held := self.held_answer(event)) is not None:
                        # it raised after the schedule took it: the VTN hears what the site runs, not optOut
                        results.append(held)
                        self.responded_events[event_id] = held
                        continue
                    # not received: openleadr would answer it from its cache (optIn, once listed again) and never
                    # hand it to the gateway again; the next listing does, and it is optOut meanwhile
                    self.received_events[:] = [e for e in self.received_events if e is not event]
                    received.pop(event_id, None)
                    self.responded_events.pop(event_id, None)
                    results.append('optOut')
                    continue
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
            if not failed:
                self.event_bug.worked()
        except Exception as err:  # noqa: BLE001 - outside one event's handling: all are answered optOut
            self.event_bug.failed(err)
            results = ['optOut'] * len(events)

        # off the loop: each answer's status, and the message (templating, signing); a fresh signer per
        # message and jinja's compiled templates are safe in a thread
        created = await asyncio.to_thread(self._created_event, events, results, message['request_id'])
        if created is not None:
            if self.before_answer is not None:
                await self.before_answer()
            await self._perform_request('EiEvent', created)

    async def _handle(self, event: dict, received_event: dict | None, received: dict) -> str:
        """The gateway's answer to one listed event, from its handler or, for one received already as it is,
        openleadr's cache."""
        event_id = event['event_descriptor']['event_id']
        modification_number = event['event_descriptor']['modification_number']
        if received_event:
            # another active period at the same modification is another event under a reused id (a VTN restarted
            # without its events numbers them afresh): openleadr answered it from its cache and the gateway never saw
            # it. So was a cancellation or other levels listed without a new modification (not 2.0b's way, but what
            # the VTN lists is what it wants run): the site ran the cancelled event to its end, until a restart took
            # the listing as it was.
            if (received_event['event_descriptor']['modification_number'] == modification_number
                    and _period(received_event) == _period(event)
                    and _what_runs(received_event) == _what_runs(event)):
                return self.responded_events[event_id]
            # by identity: list.remove compares every dict before it by value
            at = next(i for i, e in enumerate(self.received_events) if e is received_event)
            del self.received_events[at]
            self.received_events.append(event)
            received[event_id] = event      # an id is received once: each listing replaces it
            result = self.on_update_event(event)
        else:
            self.received_events.append(event)
            received[event_id] = event
            result = self.on_event(event)
        return await outils.await_if_required(result)

    def _created_event(self, events: list[dict], results: list[str], request_id) -> str | None:
        """oadrCreatedEvent for the events that want an answer and are not over, as openleadr builds (and logs) it;
        None when none does. Unlike openleadr's, a lower-case vtnID does not make it 452 "ERROR": the profile
        sets no case for vtnID, and the VTN would read each acknowledgement as refused."""
        response = ei_response(request_id)
        event_responses = []
        for event, result in zip(events, results):
            invalid = self.invalid_events.get(event['event_descriptor']['event_id'])
            # one refused as invalid is answered 454 whatever its times say: they are what is wrong (one in year 1
            # reads as long completed, and went unanswered, the log saying "answered optOut, code 454")
            if event['response_required'] == 'always' and (invalid or not event_status_of(event) == 'completed'):
                signals = raw_signals(event)
                # 460 says the event is not acted on for its signal: one with a SIMPLE signal is followed whatever
                # else it carries (a vendor's x- signal beside it got 460 "ERROR" with optIn, and 200 in the later
                # answers to the same modification)
                unsupported = not any(signal_name(s) == SIMPLE for s in signals) and any(
                    not isinstance(s['signal_name'], str) or s['signal_name'] not in _SIGNAL_NAMES for s in signals)
                code = INVALID_DATA if invalid else oenums.STATUS_CODES.SIGNAL_NOT_SUPPORTED if unsupported else 200
                event_responses.append({'response_code': code,
                                        'response_description': invalid or ('ERROR' if unsupported else 'OK'),
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
            timeout=aiohttp.ClientTimeout(total=self.request_timeout_s, sock_connect=5))

    async def _perform_request(self, service, message):
        # Requests overlap on this client (a poll, telemetry delivery, opt answers): what one learnt is set
        # when it is done, after its last await, so its caller reads its own request's outcome, not another's.
        message_type, message_payload, self.last_error = await self._request(service, message)
        self.refused = refusal_of(message_payload) if message_type else None
        self.refused_code = response_code_of(message_payload) if self.refused else None
        status = _HTTP_ERROR.match(self.last_error or "")
        self.error_status = int(status.group(1)) if status else None
        if message_type == "oadrRequestReregistration":
            # also the answer to requests whose answer openleadr discards (its oadrCreatedEvent)
            self.reregistration_asked = True
        return message_type, message_payload

    def _proxy_refused(self, status: int, reason: str | None, url: str) -> str:
        """The proxy's answer in place of the VTN's: to CONNECT (an https:// VTN) or to the request (http://)."""
        where = urllib.parse.urlsplit(url)
        # tinyproxy answers a wrong password 401, no password 407
        credentials = (": it asks for credentials or refused the ones given (openadr.proxy as "
                       "http://user:password@host:port)")
        hint = {HTTPStatus.PROXY_AUTHENTICATION_REQUIRED: credentials, HTTPStatus.UNAUTHORIZED: credentials,
                HTTPStatus.FORBIDDEN: ": its rules do not let the gateway reach that host and port"}.get(
            status, ": it could not reach the VTN" if status >= 500 else "")
        port = where.port or (443 if where.scheme == "https" else 80)
        return (f"proxy at {shown_url(self.proxy)} did not open the way to {where.hostname}:{port} "
                f"(HTTP {status} {reason or ''}){hint}")

    async def _request(self, service, message) -> tuple[str | None, dict, str | None]:
        """(message type, payload, None), or (None, {}, why the request failed)."""
        await self._ensure_client_session()
        url = f"{self.vtn_url}/{service}"
        try:
            # no read bound of its own: a VTN sends nothing until it has stored the update, so a fixed 10 s read
            # bound was the request's, whatever request_timeout_seconds said, and a VTN taking 15 s got every update
            # abandoned and sent again, none acknowledged (helper ledger41)
            timeout = aiohttp.ClientTimeout(total=self.request_timeout_s, sock_connect=5)
            # a redirect is not followed: aiohttp would post the next message, and take the events, from whatever
            # host the answer names, the URL's password with it on the way
            async with self.client_session.post(url, data=message, timeout=timeout, proxy=self.proxy,
                                                allow_redirects=False) as req:
                content = bytearray()
                async for chunk in req.content.iter_chunked(2**16):
                    content += chunk
                    if len(content) > self.max_message_bytes:
                        return None, {}, (f"VTN answer from {shown_url(url)} over {self.max_message_bytes // 2**20} MB "
                                          f"(decompressed): refused")
                content = bytes(content)
                if req.status == HTTPStatus.PROXY_AUTHENTICATION_REQUIRED and self.proxy:
                    return None, {}, self._proxy_refused(req.status, req.reason, url)
                if 300 <= req.status < 400 and req.headers.get("Location"):
                    try:
                        to = shown_url(urllib.parse.urljoin(url, req.headers["Location"]))
                    except ValueError:      # "http://[bad": the peer's text, shown as it came (a password masked)
                        to = repr(shown_url(req.headers["Location"][:200]))
                    return None, {}, (f"HTTP {req.status} from {shown_url(url)}: redirected to {to}, not followed (a "
                                      f"VTN that moved is given its new address in openadr.vtn_url)")
                if req.status != HTTPStatus.OK:
                    via = f" (through the proxy at {shown_url(self.proxy)})" if self.proxy else ""
                    # openleadr's VTN fails a message with a 500 and no text: "from .../EiEvent: )" ended the line
                    page = _error_page(content) or "no text in its answer"
                    return None, {}, f"HTTP {req.status} from {shown_url(url)}{via}: {page}"
        except aiohttp.ClientHttpProxyError as err:
            return None, {}, self._proxy_refused(err.status, err.message, url)
        except aiohttp.ClientProxyConnectionError as err:
            return None, {}, (f"proxy unreachable at {shown_url(self.proxy)} (openadr.proxy): "
                              f"{_connect_failure(err.os_error)}")
        except aiohttp.ClientConnectorCertificateError as err:
            return None, {}, f"TLS certificate of the VTN rejected: {err.certificate_error}"
        except aiohttp.ClientSSLError as err:
            return None, {}, f"TLS handshake with the VTN failed: {err}"
        except aiohttp.ClientConnectorError as err:
            return None, {}, f"VTN unreachable at {shown_url(self.vtn_url)}: {_connect_failure(err.os_error)}"
        except aiohttp.ConnectionTimeoutError:
            # no connection at all (a host down, a firewall dropping): not a VTN slow to answer what it was sent
            if self.proxy:   # the connection timed out is the one to the proxy
                return None, {}, f"proxy unreachable at {shown_url(self.proxy)} (openadr.proxy): connection timed out"
            return None, {}, f"VTN unreachable at {shown_url(self.vtn_url)}: connection timed out"
        except asyncio.TimeoutError:
            return None, {}, f"VTN at {shown_url(self.vtn_url)} did not answer in time"
        # the link's faults in the link's words: aiohttp's own ("ClientPayloadError: ... <ContentLengthError: 400, ...")
        # read as the VTN answering HTTP 400, the case the field engineer has to rule out
        except aiohttp.ServerDisconnectedError:
            return None, {}, (f"connection to the VTN at {shown_url(self.vtn_url)} closed before its answer to "
                              f"{service} (by the network, a proxy or the VTN)")
        except aiohttp.ClientPayloadError as err:
            got = re.search(r"received \d+ of \d+ bytes", str(err))
            got = f" ({got.group()})" if got else ""
            return None, {}, (f"connection to the VTN at {shown_url(self.vtn_url)} broke during its answer to "
                              f"{service}{got} (reset by the network, a proxy or the VTN)")
        except aiohttp.ClientOSError as err:
            return None, {}, (f"connection to the VTN at {shown_url(self.vtn_url)} broke during the request to "
                              f"{service}: {err.strerror or err}")
        except aiohttp.ClientError as err:
            return None, {}, f"request to {shown_url(url)} failed: {err.__class__.__name__}: {err}"
        if not content:
            # no OpenADR answer, whatever the status says: not taken, whichever message it was (an answer to an event
            # and an update alike), as a VTN answers every message
            return None, {}, EMPTY_ANSWER
        try:
            # read off the event loop: openleadr takes 0.2-0.3 s for a day-ahead oadrDistributeEvent of 200 events
            # or one event of 1440 intervals, and the BACnet device and the schedule's timer would stall that long;
            # its signature check takes 0.1 s of those 200 events, 0.2 s of the 1440 intervals. In one trip to the
            # worker: each is a hand-over and a wake of the loop, and a poll's answer took two or three
            tree, (message_type, message_payload) = await asyncio.to_thread(_read_answer, content, self.vtn_fingerprint)
            if self.vtn_fingerprint:
                verify_replay_protect(tree)     # on the loop: the nonces seen are its
        except oerrors.FingerprintMismatch as err:
            return None, {}, f"VTN refused: certificate fingerprint does not match openadr.vtn_fingerprint ({err})"
        except _Replayed as err:
            return None, {}, f"VTN message refused: {err}"
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


class _Replayed(Exception):
    """A signed message seen before, or signed too long ago to tell."""


# openleadr refuses a message signed more than 5 s before the reader's clock: a VTN (or this box) a few seconds off,
# which a drifting clock soon is, and the gateway could not register at all. A message signed earlier than this is
# refused; within it each signature's nonce is taken once, which is what stops a replay.
REPLAY_WINDOW = timedelta(minutes=15)
_NS_DSP = "{http://openadr.org/oadr-2.0b/2012/07/xmldsig-properties}"
_nonces: dict[tuple[datetime, str], None] = {}   # its own, not openleadr's (shared with a VTN in this process)


def _read_answer(content: bytes, fingerprint: str | None):
    """The answer's tree (schema-valid, and signed with `fingerprint`'s certificate where given) and its message."""
    tree = validate_xml_schema(content)
    if fingerprint:
        verify_signature(tree, fingerprint)
    return tree, parse_message(content)


def verify_replay_protect(tree) -> None:
    """The signature's ReplayProtect: signed within REPLAY_WINDOW of this clock, and its nonce not seen before."""
    stamp, nonce = tree.findtext(f".//{_NS_DSP}timestamp"), tree.findtext(f".//{_NS_DSP}nonce")
    signed = outils.parse_datetime(stamp) if stamp else None
    if not isinstance(signed, datetime) or not nonce:
        raise _Replayed("its signature has no ReplayProtect timestamp and nonce")
    signed = signed.replace(tzinfo=timezone.utc) if signed.tzinfo is None else signed
    oldest = utcnow() - REPLAY_WINDOW
    if signed < oldest:
        raise _Replayed(f"signed at {iso_utc(signed)}, more than {REPLAY_WINDOW.total_seconds() / 60:g} min before "
                        f"this box's clock ({iso_utc(utcnow())}): a replayed message, or the VTN's clock or this one "
                        "is wrong")
    if (signed, nonce) in _nonces:
        raise _Replayed(f"its signature (signed at {iso_utc(signed)}, nonce {nonce}) was seen before: a replayed "
                        "message")
    for seen in [k for k in _nonces if k[0] < oldest]:
        del _nonces[seen]
    _nonces[(signed, nonce)] = None


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
# An xcal duration openleadr cannot make a timedelta of (P9999999Y, PT99999999999999H: more than 999,999,999 days)
# failed the whole message with OverflowError: every poll, while the VTN listed it, and the events beside it were never
# read. It is read as the longest a timedelta holds: as an event's or an interval's length, ven/events.py takes that
# for "until further notice" (as it takes P9999Y); anything else it is refused there for itself.
_DURATION = re.compile(r"([+-]?)P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)D)?T?(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?")
_YEAR, _MONTH = 365 * 86400, 30 * 86400     # as openleadr reads them
_LONGEST = f"P{timedelta.max.days}D"
# Years and months have no fixed length, and openleadr said so in a WARNING at each parse: every poll that listed
# the event, for as long as it ran (one line per 10 minutes through the flood guard), for a P9999Y too, which the
# gateway reads as "until further notice". They are made days here, as openleadr reads them, and said once a run
# for each such duration under that.
_calendar_said: set[str] = set()


def _readable_duration(text: str) -> str:
    found = _DURATION.fullmatch(text)
    if not found:
        return text
    y, mo, d, h, mi, s = (int(g or 0) for g in found.groups()[1:])
    seconds = y * _YEAR + mo * _MONTH + d * 86400 + h * 3600 + mi * 60 + s
    if seconds > timedelta.max.days * 86400:
        return f"{found.group(1)}{_LONGEST}"
    if not (y or mo):
        return text
    if seconds < OPEN_ENDED.total_seconds() and text not in _calendar_said and len(_calendar_said) < 100:
        _calendar_said.add(text)
        log.warning("the VTN writes a duration in years or months (%s), which have no fixed length: read as %s "
                    "(a year 365 days, a month 30)", text, f"{found.group(1)}{timedelta(seconds=seconds)}")
    return f"{found.group(1)}P{y * 365 + mo * 30 + d}DT{h}H{mi}M{s}S"


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
        if key == "duration":
            return key, _readable_duration(value)
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


class NoScheduler:
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


def iso_utc(t: datetime | None) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z") if t else "-"


POLL_MAX_S = 86400.0


def poll_period(client: OpenADRClient) -> float:
    """Seconds between the session's polls: the VTN's oadrRequestedOadrPollFreq, but at least a second and at most a
    day. Durations travel as whole seconds (openleadr writes a VTN's 0.5 s as "P" and reads "PT0.5S" as 0): 0 would be
    a busy loop. A VTN asking for polls days apart (P14D) would have its events reach the site as late, and its
    cancellations; openleadr's own client caps the period at a day too."""
    return min(POLL_MAX_S, max(1.0, client.poll_frequency.total_seconds()))


def whole_seconds(s: float) -> str:
    """Seconds as the log says them: whole ones without a ".0" nor %g's exponent (a VTN asking for P14D read
    "1.2096e+06 s")."""
    return f"{s:.0f}" if float(s).is_integer() else f"{s:g}"


def wire_duration(d: timedelta) -> str:
    """ISO 8601, as on the wire (PT10S, PT5M, PT1H30M)."""
    return outils.timedeltaformat(d)


def interval_length(d: timedelta) -> str:
    """An interval's own length: as wire_duration, but days that are not whole in hours (PT25H, a local day the clocks
    went back in), where P1DT1H would read as a nominal day (RFC 5545) and an hour."""
    if d.days and d % timedelta(days=1) and not d % timedelta(hours=1):
        return f"PT{d // timedelta(hours=1)}H"
    return wire_duration(d)


def ei_response(request_id: str | None, refusal: str | None = None) -> dict:
    """An answer's eiResponse: 200 OK, or 452 (an ID the VEN does not know) with the reason."""
    request_id = "" if request_id is None else request_id     # an empty requestID: openleadr's template writes "None"
    if refusal is None:
        return {"response_code": 200, "response_description": "OK", "request_id": request_id}
    return {"response_code": INVALID_ID, "response_description": refusal[:200], "request_id": request_id}


def refusal_of(payload: dict | None) -> str | None:
    """ "463 <description>" for an eiResponse code other than 200, None for 200 or no eiResponse."""
    code = response_code_of(payload)
    if code in (None, 200):
        return None
    description = str(payload["response"].get("response_description") or "").strip()
    return f"{code} {description}" if description else str(code)


def response_code_of(payload: dict | None):
    try:
        return int(payload["response"]["response_code"])
    except (KeyError, TypeError, ValueError):
        return None
