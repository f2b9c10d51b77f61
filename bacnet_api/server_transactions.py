"""bacpypes3's server transactions (appservice.ServerSSM, one per confirmed request) put right where they fail a BAS.

- A segmented answer whose first segment goes unacknowledged is sent again, as clause 5.4.5.3 requires. A BAS that
  accepts segments and a small APDU (480 octets behind an MS/TP router, 206, 50) gets ReadPropertyMultiple ALL of
  the device in segments; the first goes alone and waits for the BAS's SegmentACK. If that segment or its ack is
  lost, or the ack comes after apduSegmentTimeout, bacpypes3 0.0.110 (ServerSSM.segmented_response_timeout) fills a
  window whose size only a SegmentACK sets: `assert self.actualWindowSize` failed in a task nobody awaits, so nothing
  was resent, the BAS's read failed, and asyncio logged "Task exception was never retrieved" with a traceback at each
  of the numberOfApduRetries retries, for every such request (anyone on the network can send them in a loop).
  Legacy bacpypes fixed the same fault on its client side (JoelBender/bacpypes#299). Until a SegmentACK says
  otherwise, the window is the first segment alone.
- A request that fails as its transaction starts leaves nothing behind. bacpypes3 lists the transaction, then reads
  the request's header; one it cannot use (a reserved max-APDU-length-accepted code, 6..15) raised there and the
  transaction, never started, stayed listed for good: about 1.5 KB more memory and one more entry in every later
  request's duplicate search, per source address and invoke id, from datagrams anyone on the network can send.
  The request is still dropped with bacpypes3's one log line, as before.
- A SegmentACK of a segment not sent yet (or past the answer's last) aborts the answer, invalid-apdu-in-this-state:
  bacpypes3 took any sequence number inside the window the ACK itself named (127 takes nearly all), moved there,
  and asked for segments past the end: three "Task exception was never retrieved" tracebacks a request.
- A SegmentACK is judged against the window in force, as 5.4.5.3 says, and ends the answer only when it names the
  last segment: a BAS narrowing its window stalled the answer, and one acknowledging (negatively) a segment short of
  the end once all were sent was never sent the rest. One outside that window is a duplicate, which only restarts
  the timer (bacpypes3 took the window it named).
- A SegmentACK without a window (0, or over 127) aborts too; an answer of more than 256 segments (the sequence
  number wraps) is aborted apdu-too-long rather than sent for ever.
- An answer fits the client's max-APDU-length-accepted, header included: bacpypes3 weighed and cut the data alone, so
  each segment was 5 octets over it (1481 to a BAS that takes 1476, 485 behind an MS/TP router that takes 480), and an
  answer up to 3 over went unsegmented, to a BAS that takes no segments too (legacy bacpypes has the same fault,
  JoelBender/bacpypes#498). Such an answer is now segmented, or aborted segmentation-not-supported.
- A SegmentACK while an answer is made, and the request again while the answer goes in segments, are discarded:
  bacpypes3 raised RuntimeError, logged as an ERROR with a traceback for each such datagram (a WARNING "error
  processing incoming PDU" in the operator's log, which limits it to one per 10 minutes). Another request with the
  answer's invoke id ends the answer and is served: the BAS is done with it (its final SegmentACK lost), and the old
  answer's segments, sent again, would reach its new transaction.
- A segmented request of more segments than the device's maxSegmentsAccepted (16) is aborted buffer-overflow at the
  first segment over: bacpypes3 kept every segment it was sent, for as long as they came, from anyone. A segment
  other than the first with no transaction of its own (one still on the way after that abort) is dropped: bacpypes3
  began a request with it, acknowledging segments it would throw away. A request under way waits four segment
  timeouts for its next segment, as 5.4.5.2 says (bacpypes3 one): a BAS sending its window again after a lost SegmentACK
  found the request given up.
- A WritePropertyMultiple or ReadPropertyMultiple that bacpypes3 would decode only in part is failed as one it cannot
  decode, which rejects.py answers with a Reject (bacpypes3 executed the part and acknowledged the whole).
"""
from __future__ import annotations

from typing import Any

from bacpypes3.apdu import AbortPDU, AbortReason, ComplexAckPDU, ConfirmedRequestPDU, SegmentAckPDU
from bacpypes3.appservice import ABORTED, COMPLETED, IDLE, SEGMENTED_REQUEST, ServerSSM

from .rejects import decode_whole


MAX_SEGMENTS = 256     # sequence numbers 0..255
# octets of a ComplexACK's header: type and flags, invoke id, service choice; segmented, also sequence number and window
ACK_HEADER, SEGMENT_HEADER = 3, 5


class GatewayServerSSM(ServerSSM):
    async def idle(self, apdu: Any) -> None:
        if isinstance(apdu, ConfirmedRequestPDU) and apdu.apduSeg and apdu.apduSeq != 0:
            # a segment of a request whose transaction is over (aborted: more segments in flight, or done: its last
            # segment sent again): bacpypes3 began a request with it and acknowledged segments it then threw away
            self.set_state(ABORTED)
            return
        self._asked = _request_key(apdu)
        # what the device says it takes (its maxSegmentsAccepted), before the request's header replaces it with the
        # BAS's; the first segment is the first taken
        self._segments_accepted = getattr(self.ssmSAP.device_object, "maxSegmentsAccepted", None)
        self._segments_taken = 1
        try:
            await super().idle(apdu)
        except BaseException:
            if self.state == IDLE:  # never started, so no timer will end it: unlisted here
                self.set_state(ABORTED)
            raise

    # A segmented request is given up after four segment timeouts (5.4.5.2 SEGMENTED_REQUEST, Timeout): bacpypes3 gave
    # it up after one, so a BAS whose SegmentACK was lost, sending its window again after its own segment timeout (as
    # long as the device's or longer), met no transaction and its request failed
    def set_state(self, newState: int, timer: int = 0) -> None:
        super().set_state(newState, timer * 4 if newState == SEGMENTED_REQUEST else timer)

    def restart_timer(self, msecs: int) -> None:
        super().restart_timer(msecs * 4 if self.state == SEGMENTED_REQUEST else msecs)

    async def request(self, apdu: Any) -> None:
        if not isinstance(apdu, ConfirmedRequestPDU):
            await super().request(apdu)
            return
        # decoded here, once, as bacpypes3's request() would, but whole or not at all
        try:
            decoded = decode_whole(apdu)
        except Exception:  # noqa: BLE001 - bacpypes3 raises ValueError, TypeError ... for bad encodings
            decoded = None
        if decoded is NotImplemented:
            await super().request(apdu)
            return
        if decoded is None:
            # what bacpypes3's request() does with a request it cannot decode; rejects.py answers it
            abort = AbortPDU(reason=AbortReason.other)
            abort.pduSource, abort.pduDestination = self.pdu_address, None
            await self.ssmSAP.sap_request(abort)
            return
        decoded.pduSource, decoded.pduDestination = self.pdu_address, None
        await self.ssmSAP.sap_request(decoded)

    # bacpypes3 hands a client's Abort of a transaction under way to response(), which sends it back to the client:
    # an Abort with the server bit clear, telling the BAS its own transaction of that invoke id (a confirmed COV
    # notification it is answering) was aborted. The server ends the transaction and sends nothing (5.4.5.2, 5.4.5.3).
    async def segmented_request(self, apdu: Any) -> None:
        if apdu.apduType == AbortPDU.pduType:
            self.set_state(COMPLETED)
            return
        if apdu.apduType == ConfirmedRequestPDU.pduType and apdu.apduSeg and \
                apdu.apduSeq == (self.lastSequenceNumber + 1) % 256:    # the next segment, which would be kept
            self._segments_taken += 1
            if self._segments_accepted and self._segments_taken > self._segments_accepted:
                # more segments than the device's maxSegmentsAccepted: bacpypes3 kept every one, without end (2,000
                # segments of anyone's request were taken, 2.3 MB). The segment cannot be kept: Abort buffer-overflow
                # (5.4.4.4 NewSegmentReceived_NoSpace; 5.4.5.2 names no case of its own)
                await self.response(self.abort(AbortReason.bufferOverflow))
                return
        await super().segmented_request(apdu)

    # A request's invoke id stays its transaction's while the answer is made and sent, and bacpypes3 met two things a
    # BAS sends meanwhile with RuntimeError, logged as an ERROR with a traceback (the operator's log shows it as a
    # WARNING "error processing incoming PDU", once per 10 minutes: a fault of the gateway's stack, to the reader): a
    # SegmentACK while the answer is made (nothing to acknowledge yet), and the request again while the answer goes in
    # segments (its first segment lost, the BAS retried). Both are discarded, as bacpypes3 discards the request again
    # while the answer is made (5.4.5.2); the segments keep coming.
    async def await_response(self, apdu: Any) -> None:
        if apdu.apduType == SegmentAckPDU.pduType:
            return
        await super().await_response(apdu)

    async def segmented_response(self, apdu: Any) -> None:
        if apdu.apduType == ConfirmedRequestPDU.pduType:
            if _request_key(apdu) != getattr(self, "_asked", None):
                # another request with this invoke id: the BAS is done with this answer (its final SegmentACK lost
                # on the way), and the segments sent again would reach its new transaction as that one's answer.
                # This one ends and the new request is served: it was dropped until this one's retries ran out
                await self._served_anew(apdu)
            return
        if apdu.apduType == AbortPDU.pduType:
            self.set_state(COMPLETED)
            return
        if apdu.apduType == SegmentAckPDU.pduType and not 1 <= apdu.apduWin <= 127:
            # no window (20.1.6.5): bacpypes3 took 0 and failed an assert in a traceback, from any four octets
            await self.response(self.abort(AbortReason.invalidApduInThisState))
            return
        if apdu.apduType == SegmentAckPDU.pduType and self.segmentCount is not None:
            window = self.actualWindowSize or 1        # the window in force (the first segment alone until an ACK)
            ahead = (apdu.apduSeq - self.initialSequenceNumber) % 256
            if ahead < max(window, apdu.apduWin) and self.initialSequenceNumber + ahead > getattr(
                    self, "_sent_through", self.initialSequenceNumber):
                # an acknowledgement of a segment not sent: bacpypes3 moved its window past the answer's end and asked
                # for segments that do not exist, three tracebacks a request (or skipped those the BAS never had)
                await self.response(self.abort(AbortReason.invalidApduInThisState))
                return
            if ahead >= window:
                # DuplicateACK_Received: the timer restarted, the window in force unchanged (bacpypes3 took the
                # window a stale ACK named, and the answer stalled at the next)
                self.restart_timer(self.segmentTimeout)
                return
            await self._new_ack(apdu)
            return
        await super().segmented_response(apdu)

    async def _served_anew(self, apdu: Any) -> None:
        self.set_state(COMPLETED)
        transaction = GatewayServerSSM(self.ssmSAP, self.pdu_address)
        self.ssmSAP.serverTransactions.append(transaction)
        await transaction.indication(apdu)

    async def _new_ack(self, apdu: Any) -> None:
        # An ACK inside the window in force (5.4.5.3 judges it there, then takes the window it names). bacpypes3
        # judged it against the window it names, so a BAS narrowing its window was taken for repeating itself and
        # the answer stalled; and it took any such ACK after the last send for the final one, so segments the BAS
        # said it lacked (a negative ACK short of the end) were never sent again and its read failed
        self.actualWindowSize = apdu.apduWin
        if apdu.apduSeq == (self.segmentCount - 1) % 256:
            self.set_state(COMPLETED)
            return
        self.initialSequenceNumber = (apdu.apduSeq + 1) % 256
        self.segmentRetryCount = 0
        self.sentAllSegments = False
        await self.fill_window(self.initialSequenceNumber)
        self.restart_timer(self.segmentTimeout)

    async def confirmation(self, apdu: Any) -> None:
        # bacpypes3 numbers segments by their index, which the 8-bit sequence number wraps past 255: an answer of
        # more never ends. A client that accepts "unspecified" segments is held to what can be numbered, the longer
        # answer aborted apdu-too-long (as for a client that said how many it takes)
        if self.maxSegmentsAccepted is None or self.maxSegmentsAccepted > MAX_SEGMENTS:
            self.maxSegmentsAccepted = MAX_SEGMENTS
        if apdu.apduType == ComplexAckPDU.pduType:
            # bacpypes3 weighs the answer's data alone against the client's max-APDU-length-accepted, and cuts it into
            # pieces of that size: each APDU went out with its header on top, over what the client takes
            limit = self.maxApduLengthAccepted
            if getattr(self.device_info, "max_npdu_length", None):
                limit = min(limit, self.device_info.max_npdu_length)
            if len(apdu.pduData) + ACK_HEADER > limit:
                self.maxApduLengthAccepted = limit - SEGMENT_HEADER
        await super().confirmation(apdu)

    async def fill_window(self, seqNum: int) -> None:
        await super().fill_window(seqNum)
        self._sent_through = min(seqNum + self.actualWindowSize, self.segmentCount) - 1

    async def segmented_response_timeout(self) -> None:
        if not self.actualWindowSize:  # no SegmentACK yet (or one that said 0, which cannot be a window)
            self.actualWindowSize = 1
        await super().segmented_response_timeout()


def _request_key(apdu: Any) -> tuple:
    """What tells a request again (a BAS's retry) from another request with its invoke id."""
    return (apdu.apduService, apdu.apduSeg, apdu.apduSeq if apdu.apduSeg else None, bytes(apdu.pduData))


class _ServerTransactions(list):
    # bacpypes3's ApplicationServiceAccessPoint builds each ServerSSM itself, with no way to pass a class, and lists
    # it here before the request is looked at: made ours as it is listed
    def append(self, transaction: Any) -> None:
        if type(transaction) is ServerSSM:
            transaction.__class__ = GatewayServerSSM
        super().append(transaction)


def mend_server_transactions(app: Any) -> None:
    """Make the application BAC0 built use GatewayServerSSM for each confirmed request it serves."""
    asap = app.asap
    if not isinstance(asap.serverTransactions, _ServerTransactions):
        asap.serverTransactions = _ServerTransactions(asap.serverTransactions)
