"""A VTN whose event messages are written by hand, as a commercial VTN writes them: other namespace
prefixes or a default namespace, no oadrSignedObject Id, only the elements the schema requires.

Registration, reports and oadrCreateOpt go to `upstream` (a DemoVtn), which keeps the VEN registered;
oadrPoll and oadrRequestEvent get the next hand-written message waiting in `outbox` (else go upstream),
and oadrCreatedEvent and oadrRegisteredReport are recorded and answered with a hand-written oadrResponse. Every message the VEN
sends is checked against the OpenADR 2.0b schema (`invalid` lists the ones that fail).

    raw = RawVtn(port, upstream=demo.url, vtn_id=demo.vtn_id)
    raw.send(distribute(raw.vtn_id, [event("e1", ...)]))    # answered to the next poll
    raw.answers("e1")                                      # optIn / optOut as the VEN answered
"""
from __future__ import annotations

from datetime import datetime, timezone

import aiohttp
from aiohttp import web
from lxml.etree import XMLSyntaxError
from openleadr.messaging import parse_message, validate_xml_schema

EI = "http://docs.oasis-open.org/ns/energyinterop/201110"
PYLD = "http://docs.oasis-open.org/ns/energyinterop/201110/payloads"
NS = ('xmlns:ei="http://docs.oasis-open.org/ns/energyinterop/201110" '
      'xmlns:pyld="http://docs.oasis-open.org/ns/energyinterop/201110/payloads" '
      'xmlns:cal="urn:ietf:params:xml:ns:icalendar-2.0" '
      'xmlns:strm="urn:ietf:params:xml:ns:icalendar-2.0:stream" '
      'xmlns:emix="http://docs.oasis-open.org/ns/emix/2011/06"')


def t(dt: datetime) -> str:
    """xcal date-time as a VTN that keeps milliseconds writes it."""
    dt = dt.astimezone(timezone.utc)
    return f"{dt.year:04d}" + dt.strftime("-%m-%dT%H:%M:%S.%f")[:-3] + "Z"   # %Y writes year 1 as "1"


def interval(payload: float, duration: str | None = None, uid: int | str | None = None, start: datetime | None = None) -> str:
    return ("<ei:interval>"
            + (f"<cal:dtstart><cal:date-time>{t(start)}</cal:date-time></cal:dtstart>" if start else "")
            + (f"<cal:duration><cal:duration>{duration}</cal:duration></cal:duration>" if duration else "")
            + (f"<cal:uid><cal:text>{uid}</cal:text></cal:uid>" if uid is not None else "")
            + f"<ei:signalPayload><ei:payloadFloat><ei:value>{payload:g}</ei:value></ei:payloadFloat></ei:signalPayload>"
            "</ei:interval>")


def signal(intervals: list[str], name: str = "SIMPLE", kind: str = "level", sid: str = "s0", extra: str = "") -> str:
    return (f"<ei:eiEventSignal><strm:intervals>{''.join(intervals)}</strm:intervals>"
            f"<ei:signalName>{name}</ei:signalName><ei:signalType>{kind}</ei:signalType>"
            f"<ei:signalID>{sid}</ei:signalID>{extra}</ei:eiEventSignal>")


def event(event_id: str, start: datetime, duration: str, signals: list[str], status: str = "far", mod: int = 0,
          response_required: str = "always", head: str = "", tail: str = "", target: str = "<ei:eiTarget/>",
          created: datetime | None = None, properties_extra: str = "") -> str:
    """One oadrEvent with only what 2.0b requires (no priority, vtnComment, tolerance, x-ei*, currentValue).
    `head`: eventDescriptor elements before eiMarketContext (modification*, priority); `tail`: after eventStatus."""
    return ("<oadrEvent><ei:eiEvent><ei:eventDescriptor>"
            f"<ei:eventID>{event_id}</ei:eventID><ei:modificationNumber>{mod}</ei:modificationNumber>{head}"
            "<ei:eiMarketContext><emix:marketContext>http://utility.example/programs/cpp</emix:marketContext>"
            f"</ei:eiMarketContext><ei:createdDateTime>{t(created or datetime.now(timezone.utc))}</ei:createdDateTime>"
            f"<ei:eventStatus>{status}</ei:eventStatus>{tail}</ei:eventDescriptor>"
            "<ei:eiActivePeriod><cal:properties>"
            f"<cal:dtstart><cal:date-time>{t(start)}</cal:date-time></cal:dtstart>"
            f"<cal:duration><cal:duration>{duration}</cal:duration></cal:duration>{properties_extra}"
            "</cal:properties><cal:components/></ei:eiActivePeriod>"
            f"<ei:eiEventSignals>{''.join(signals)}</ei:eiEventSignals>{target}</ei:eiEvent>"
            f"<oadrResponseRequired>{response_required}</oadrResponseRequired></oadrEvent>")


def distribute(vtn_id: str, events: list[str], request_id: str = "dist-1", response: str = "") -> bytes:
    """oadrDistributeEvent with the oadr namespace as the default one and no oadrSignedObject Id."""
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<oadrPayload xmlns="http://openadr.org/oadr-2.0b/2012/07" {NS}><oadrSignedObject>'
            f'<oadrDistributeEvent ei:schemaVersion="2.0b">{response}'
            f"<pyld:requestID>{request_id}</pyld:requestID><ei:vtnID>{vtn_id}</ei:vtnID>{''.join(events)}"
            "</oadrDistributeEvent></oadrSignedObject></oadrPayload>").encode()


def register_report(ven_id: str, request_id: str = "reg-1") -> bytes:
    """oadrRegisterReport as a VTN registers its own METADATA report with a VEN (2.0b report registration
    goes both ways): one report without descriptions."""
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<oadrPayload xmlns="http://openadr.org/oadr-2.0b/2012/07" {NS}><oadrSignedObject>'
            f'<oadrRegisterReport ei:schemaVersion="2.0b"><pyld:requestID>{request_id}</pyld:requestID>'
            "<oadrReport><ei:eiReportID>vtn-metadata</ei:eiReportID><ei:reportRequestID>0</ei:reportRequestID>"
            "<ei:reportSpecifierID>METADATA</ei:reportSpecifierID><ei:reportName>METADATA_TELEMETRY_STATUS</ei:reportName>"
            f"<ei:createdDateTime>{t(datetime.now(timezone.utc))}</ei:createdDateTime></oadrReport>"
            f"<ei:venID>{ven_id}</ei:venID></oadrRegisterReport></oadrSignedObject></oadrPayload>").encode()


def report_request(rrid: str, specifier_id: str, r_ids: list[str], granularity: str = "PT1S",
                   report_back: str = "PT1S", start: datetime | None = None, duration: str | None = None) -> str:
    """One oadrReportRequest; `start` and `duration`: its reportInterval (the overall period of reporting)."""
    window = ("" if start is None else
              "<ei:reportInterval><cal:properties>"
              f"<cal:dtstart><cal:date-time>{t(start)}</cal:date-time></cal:dtstart>"
              f"<cal:duration><cal:duration>{duration}</cal:duration></cal:duration></cal:properties></ei:reportInterval>")
    payloads = "".join(f"<ei:specifierPayload><ei:rID>{r}</ei:rID><ei:readingType>Mean</ei:readingType>"
                       "</ei:specifierPayload>" for r in r_ids)
    return (f"<oadrReportRequest><ei:reportRequestID>{rrid}</ei:reportRequestID><ei:reportSpecifier>"
            f"<ei:reportSpecifierID>{specifier_id}</ei:reportSpecifierID>"
            f"<cal:granularity><cal:duration>{granularity}</cal:duration></cal:granularity>"
            f"<ei:reportBackDuration><cal:duration>{report_back}</cal:duration></ei:reportBackDuration>"
            f"{window}{payloads}</ei:reportSpecifier></oadrReportRequest>")


def create_report(ven_id: str, requests: list[str], request_id: str = "create-1") -> bytes:
    """oadrCreateReport with one or more `report_request`s."""
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<oadrPayload xmlns="http://openadr.org/oadr-2.0b/2012/07" {NS}><oadrSignedObject>'
            f'<oadrCreateReport ei:schemaVersion="2.0b"><pyld:requestID>{request_id}</pyld:requestID>'
            f"{''.join(requests)}<ei:venID>{ven_id}</ei:venID></oadrCreateReport></oadrSignedObject></oadrPayload>").encode()


def cancel_report(ven_id: str, rrids: list[str], follow: bool = False, request_id: str = "cancel-1") -> bytes:
    """oadrCancelReport of one or more reportRequestIDs (the schema allows any number)."""
    ids = "".join(f"<ei:reportRequestID>{r}</ei:reportRequestID>" for r in rrids)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<oadrPayload xmlns="http://openadr.org/oadr-2.0b/2012/07" {NS}><oadrSignedObject>'
            f'<oadrCancelReport ei:schemaVersion="2.0b"><pyld:requestID>{request_id}</pyld:requestID>{ids}'
            f"<pyld:reportToFollow>{'true' if follow else 'false'}</pyld:reportToFollow><ei:venID>{ven_id}</ei:venID>"
            "</oadrCancelReport></oadrSignedObject></oadrPayload>").encode()


def response(ven_id: str, request_id: str, code: int = 200) -> bytes:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<p:oadrPayload xmlns:p="http://openadr.org/oadr-2.0b/2012/07" {NS}><p:oadrSignedObject>'
            f'<p:oadrResponse ei:schemaVersion="2.0b"><ei:eiResponse><ei:responseCode>{code}</ei:responseCode>'
            f"<pyld:requestID>{request_id}</pyld:requestID></ei:eiResponse><ei:venID>{ven_id}</ei:venID>"
            "</p:oadrResponse></p:oadrSignedObject></p:oadrPayload>").encode()


class RawVtn:
    def __init__(self, port: int, upstream: str, vtn_id: str, host: str = "127.0.0.1",
                 ven_ids: tuple[str, str] | None = None):
        """`ven_ids`: (upstream's venID, this VTN's): the VEN is known here by the second (e.g. a number)."""
        self.ven_ids = ven_ids
        self.url = f"http://{host}:{port}/OpenADR2/Simple/2.0b"
        self.host, self.port, self.upstream, self.vtn_id = host, port, upstream.rstrip("/"), vtn_id
        self.outbox: list[bytes] = []
        self.answered: list[tuple[str, str, str]] = []   # (eventID, modificationNumber, optType) as written
        self.answer_request_ids: list[str] = []   # each eventResponse's requestID, as written
        self.answer_codes: list[tuple[str, str]] = []   # (eventID, responseCode) of each eventResponse, as written
        self.registered: list[dict] = []   # the VEN's oadrRegisteredReport answers (to `register_report`)
        self.invalid: list[str] = []       # the VEN's messages that fail the schema, and why
        self.served = 0                    # hand-written messages the VEN has been given
        # the requests the outbox answers: ("oadrPoll",) lets each registration complete before a message arrives
        self.serve_on = ("oadrPoll", "oadrRequestEvent")
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    def send(self, message: bytes) -> None:
        validate_xml_schema(message)       # every case is a valid message, or the test is wrong
        self.outbox.append(message)

    def answers(self, event_id: str) -> list[str]:
        return [opt for eid, _, opt in self.answered if eid == event_id]

    def codes(self, event_id: str) -> list[str]:
        """The responseCode of each eventResponse to `event_id`, as written."""
        return [code for eid, code in self.answer_codes if eid == event_id]

    async def __aenter__(self) -> "RawVtn":
        app = web.Application()
        app.router.add_post("/OpenADR2/Simple/2.0b/{service}", self._handle)
        self._session = aiohttp.ClientSession()
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, shutdown_timeout=0.5).start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self._runner.cleanup()
        await self._session.close()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            tree = validate_xml_schema(body)
        except XMLSyntaxError as err:
            self.invalid.append(f"{request.match_info['service']}: {err}")
            tree = None
        if self.ven_ids:
            body = body.replace(f">{self.ven_ids[1]}<".encode(), f">{self.ven_ids[0]}<".encode())
        message_type, payload = parse_message(body)
        if message_type in self.serve_on and self.outbox:
            self.served += 1
            return web.Response(body=self.outbox.pop(0), content_type="application/xml")
        if message_type == "oadrCreatedEvent":
            # read as text from the XML: openleadr's parser would show "0042" as 42
            for r in tree.iter(f"{{{EI}}}eventResponse") if tree is not None else ():
                self.answered.append((r.findtext(f"{{{EI}}}qualifiedEventID/{{{EI}}}eventID"),
                                      r.findtext(f"{{{EI}}}qualifiedEventID/{{{EI}}}modificationNumber"),
                                      r.findtext(f"{{{EI}}}optType")))
                self.answer_request_ids.append(r.findtext(f"{{{PYLD}}}requestID"))
                self.answer_codes.append((r.findtext(f"{{{EI}}}qualifiedEventID/{{{EI}}}eventID"),
                                          r.findtext(f"{{{EI}}}responseCode")))
            answer = response(str(payload["ven_id"]), "")
        elif message_type == "oadrRegisteredReport":
            self.registered.append(payload)
            answer = response(str(payload["ven_id"]), "")
        else:
            async with self._session.post(f"{self.upstream}/{request.match_info['service']}", data=body,
                                          headers={"Content-Type": "application/xml"}) as up:
                if up.status != 200:
                    return web.Response(status=up.status, body=await up.read())
                answer = await up.read()
        if self.ven_ids:
            answer = answer.replace(f">{self.ven_ids[0]}<".encode(), f">{self.ven_ids[1]}<".encode())
        return web.Response(body=answer, content_type="application/xml")
