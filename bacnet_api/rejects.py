"""A confirmed request bacpypes3 cannot decode gets a Reject, as clause 18.9 requires, not silence.

bacpypes3 0.0.110 drops such a request (its ServerSSM hands an invoke-id-less Abort to the application,
which ignores it; "TODO there should be an error going back to the client" in its appservice), so the
BAS waited through every retry and reported the gateway as not answering: a service choice it does not
know (BACnet's newer ones, e.g. SubscribeCOVPropertyMultiple or AuditLogQuery, which a device that
says Protocol_Revision 22 may be sent), a service whose decoder fails on a valid request (ConfirmedTextMessage
without a message class), or a malformed request. The request is now answered unrecognized-service when
the device does not execute the service, else with the decoder's reason (missing-required-parameter,
invalid-tag, ...). The answer goes through the request's own server transaction, which it ends.

bacpypes3 also decodes a list of WritePropertyMultiple's or ReadPropertyMultiple's specifications up to the first one
it cannot read and drops that one and all after it without a word (its check for unread tags is commented out in
APCISequence.decode): a WritePropertyMultiple whose second object's value was cut off or mis-tagged wrote the first
and was acknowledged, and one whose first was bad wrote nothing and was acknowledged, so the BAS took the command as
done. Such a request is now rejected invalid-tag, before anything is written (server_transactions.py decodes
it with `decode_whole`). Any other request is decoded whole too: what was left after its last parameter was
ignored and the request carried out (a WriteProperty with a stray tag after its priority wrote); it is rejected
too-many-arguments.
"""
from __future__ import annotations

import contextvars
import logging
import time
from typing import Any

from bacpypes3.apdu import (
    APDU,
    AbortPDU,
    ConfirmedRequestPDU,
    ReadPropertyMultipleRequest,
    RejectPDU,
    WritePropertyMultipleRequest,
    confirmed_request_types,
)
from bacpypes3.appservice import ApplicationServiceAccessPoint
from bacpypes3.constructeddata import Sequence
from bacpypes3.errors import RejectException
from bacpypes3.pdu import PDU
from bacpypes3.primitivedata import TagList

log = logging.getLogger(__name__)

# per incoming packet (bacpypes3 handles each in its own task): set when its request could not be decoded
_undecodable: contextvars.ContextVar[list | None] = contextvars.ContextVar("undecodable", default=None)

# A Reject costs the event loop about a quarter of a millisecond (decoded again, encoded, sent). Answering every
# one of a flood (a fuzzer, a broken tool in a loop: 10,000 junk datagrams in 4 s) took 60 % more CPU than
# dropping them and made meter reads late; beyond this rate they are dropped as bacpypes3 drops them. A BAS
# sends a malformed request rarely, and a retry of it is answered once the budget refills.
REJECTS_PER_SECOND = 20.0


# services whose request is a list that bacpypes3 cuts short at an element it cannot read
_LISTS = {cls.service_choice: cls for cls in (WritePropertyMultipleRequest, ReadPropertyMultipleRequest)}
# the others: tags left after the last parameter were ignored and the request carried out (a WriteProperty with a
# stray tag after its priority wrote the value), where clause 18.8 answers too-many-arguments
_WHOLE = {**{k: cls for k, cls in confirmed_request_types.items() if k not in _LISTS}, **_LISTS}


def decode_whole(apdu: Any) -> Any:
    """A confirmed request decoded as bacpypes3 decodes it (consuming `apdu`), None if some of it is left unread;
    a service bacpypes3 does not know: NotImplemented, for bacpypes3 to answer. Raises as
    bacpypes3's decoder does for a request it cannot decode at all."""
    cls = _WHOLE.get(apdu.apduService)
    if cls is None:
        return NotImplemented
    tags = TagList.decode(apdu)
    decoded = Sequence.decode(tags, class_=cls)
    if len(tags):
        return None
    decoded.update(apdu)
    return decoded


def unread_tags(service: int, data: bytes) -> bool:
    """Whether bacpypes3 would decode `data`, the request's service parameters, and leave some of it unread."""
    request = ConfirmedRequestPDU(service)
    request.put_data(data)
    try:
        return decode_whole(request) is None
    except Exception:  # noqa: BLE001 - not decodable at all: bacpypes3 fails it, and it is answered as such
        return False


def why_undecodable(request: Any) -> str:
    """The Reject reason (clause 18.8) for a confirmed request bacpypes3 cannot decode (consuming `request`).

    A request that ends where a parameter it requires is due (a ReadProperty without its property identifier, a
    WriteProperty without its value, an empty ReadPropertyMultiple) is missing-required-parameter: bacpypes3 says
    only AttributeError "... is a required element", which was answered invalid-tag, although no tag was wrong (a
    BACnet test harness and a technician's protocol analyser both read that as a malformed encoding). What remains
    undecoded tells the two apart: nothing left means the request stopped short; a tag left is one that does not
    fit there, invalid-tag."""
    tags = None
    try:
        tags = TagList.decode(request)
        decoded = Sequence.decode(tags, class_=_WHOLE[request.apduService])
        if request.apduService not in _LISTS or not len(tags):
            return "other"
        # a list's specifications decode up to the first one bacpypes3 cannot read (an object identifier with nothing
        # after it, a mis-tagged one): judged as a request of its own
        cls = type(decoded)
        cls._elements[cls._order[0]]._subtype.decode(tags)
        return "invalidTag"
    except RejectException as err:
        return err.rejectReason
    except AttributeError:
        return "missingRequiredParameter" if tags is not None and not len(tags) else "invalidTag"
    except Exception:  # noqa: BLE001 - bacpypes3 raises ValueError, TypeError ... for bad encodings
        return "invalidTag"


def reject_undecodable(app: Any) -> None:
    """Make the application BAC0 built answer confirmed requests it cannot decode."""
    if type(app.asap) is ApplicationServiceAccessPoint:
        # a subclass, not a mix-in: Python refuses the __class__ swap to a mix-in class here (instance layout)
        app.asap.__class__ = RejectingServiceAccessPoint


class RejectingServiceAccessPoint(ApplicationServiceAccessPoint):
    """bacpypes3's, noting a request its server transaction could not decode and answering it."""

    _budget = REJECTS_PER_SECOND     # rejects that may be sent now, refilled at REJECTS_PER_SECOND up to that
    _budget_at = 0.0                 # monotonic, when the budget was last refilled
    rejects_dropped = 0              # over the budget: left unanswered

    def _may_reject(self) -> bool:
        now = time.monotonic()
        self._budget = min(REJECTS_PER_SECOND, self._budget + (now - self._budget_at) * REJECTS_PER_SECOND)
        self._budget_at = now
        if self._budget < 1.0:
            self.rejects_dropped += 1
            return False
        self._budget -= 1.0
        return True

    async def confirmation(self, pdu: Any) -> None:
        data = bytes(pdu.pduData)  # bacpypes3 consumes the PDU as it decodes it
        if not data or data[0] >> 4 != ConfirmedRequestPDU.pduType:
            await super().confirmation(pdu)
            return
        failed: list = []
        token = _undecodable.set(failed)
        try:
            await super().confirmation(pdu)
        finally:
            _undecodable.reset(token)
        if failed and self._may_reject():
            await self._reject(PDU(data, source=pdu.pduSource))

    async def sap_request(self, apdu: Any) -> None:
        failed = _undecodable.get()
        if failed is not None and isinstance(apdu, AbortPDU) and apdu.apduInvokeID is None:
            failed.append(apdu)  # bacpypes3's sign that it could not decode the request: answered above
            return
        await super().sap_request(apdu)

    async def _reject(self, pdu: PDU) -> None:
        request = APDU.decode(pdu)
        service = confirmed_request_types.get(request.apduService)
        handler = getattr(self.serviceElement, f"do_{service.__name__}", None) if service else None
        # a handler marked `not_executed` only refuses its service: a malformed request for it is one for a service
        # the device does not execute too (it got the decoder's reason, invalid-tag, for a service it never claims)
        if not handler or getattr(handler, "not_executed", False):
            reason = "unrecognizedService"
        elif request.apduSeg:  # only its last segment is at hand here
            reason = "other"
        elif unread_tags(request.apduService, bytes(request.pduData)):
            # a list's element it cannot read; after any other request's last parameter, more of them
            reason = why_undecodable(request) if request.apduService in _LISTS else "tooManyArguments"
        else:
            reason = why_undecodable(request)
        name = service.__name__.removesuffix("Request") if service else f"service {request.apduService}"
        log.debug("BACnet %s from %s rejected (%s): not decodable", name, pdu.pduSource, reason)
        reject = RejectPDU(request.apduInvokeID, reason)
        reject.pduDestination = pdu.pduSource
        await self.sap_confirmation(reject)  # to the request's server transaction, which sends it and ends
