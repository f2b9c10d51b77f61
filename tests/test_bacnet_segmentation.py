"""Answers too long for the asking BAS's APDU: sent in segments when it accepts them, aborted
segmentation-not-supported when it does not, and a first segment nobody acknowledged sent again.
A plain UDP socket asks, so the test decides which segment acknowledgements go back."""
from __future__ import annotations

import asyncio
import gc
import socket
import struct
import time

import pytest

from bacnet_api.points import OPT_OUT
from test_bacnet_device import DEVICE_ID, gateway, peer, port_of, where  # noqa: F401 - shared fixtures
from test_bacnet_services import errors_logged
from waiting import eventually

pytestmark = pytest.mark.timeout(60)

# ReadPropertyMultiple of the device object, property ALL: about 700 octets, 15 segments of 50
RPM_ALL = (bytes([0x0C]) + struct.pack(">I", (8 << 22) | DEVICE_ID) + bytes([0x1E, 0x09, 0x08, 0x1F]))
MAX_APDU_50 = 0x00  # max-APDU-length-accepted code for 50 octets, max-segments unspecified
# how long a test waits for an answer it expects: the wait ends when it comes, and beside the suite on 2 cores a
# 164-value ReadPropertyMultiple once took over 1 s; waits for silence name their own, short, window
ANSWER_SECONDS = 10.0


def bvlc(apdu: bytes, expecting_reply: bool = True) -> bytes:
    npdu = bytes([0x01, 0x04 if expecting_reply else 0x00]) + apdu
    return bytes([0x81, 0x0A]) + struct.pack(">H", len(npdu) + 4) + npdu


class RawClient:
    """A UDP socket on loopback that sends APDUs to the gateway and collects what comes back."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)

    def close(self) -> None:
        self.sock.close()

    def send(self, apdu: bytes) -> None:
        self.sock.sendto(bvlc(apdu), ("127.0.0.1", self.port))

    async def answers(self, seconds: float) -> list[tuple[float, bytes]]:
        """(seconds since the call, APDU) of every datagram arriving within `seconds`."""
        loop, start, got = asyncio.get_running_loop(), time.monotonic(), []
        try:
            async with asyncio.timeout(seconds):
                while True:
                    data, _ = await loop.sock_recvfrom(self.sock, 2048)
                    got.append((time.monotonic() - start, data[6:]))  # past BVLC and NPDU header
        except TimeoutError:
            pass
        return got

    async def next(self, seconds: float = ANSWER_SECONDS) -> bytes | None:
        """The next APDU to arrive within `seconds`, or None."""
        try:
            async with asyncio.timeout(seconds):
                data, _ = await asyncio.get_running_loop().sock_recvfrom(self.sock, 2048)
        except TimeoutError:
            return None
        return data[6:]

    async def until_last(self) -> list[bytes]:
        """The segments that come, up to the one with none to follow."""
        got = []
        while not got or got[-1][0] & 0x04:
            apdu = await self.next()
            assert apdu is not None, f"stalled after {[a[:4].hex() for a in got]}"
            got.append(apdu)
        return got

    async def in_window(self, count: int) -> list[int]:
        """The sequence numbers of the `count` segments that come, and nothing more soon after."""
        got = []
        for _ in range(count):
            apdu = await self.next()
            assert apdu is not None, f"{len(got)} of {count} came: {got}"
            got.append(apdu[2])
        assert await self.next(0.3) is None, f"more than {count} after {got}"
        return got


@pytest.fixture
def client(gateway):
    c = RawClient(port_of(gateway))
    yield c
    c.close()


async def test_a_long_answer_goes_in_segments_to_a_bas_that_acknowledges_them(gateway, client):
    client.send(bytes([0x02, MAX_APDU_50, 1, 14]) + RPM_ALL)  # segmented-response-accepted
    segments = []
    while True:
        apdu = await client.next()
        assert apdu is not None, f"stalled after {len(segments)} segments"
        assert apdu[0] & 0xF8 == 0x38 and apdu[1] == 1, apdu.hex()  # a ComplexACK segment of invoke id 1
        assert apdu[2] == len(segments), apdu.hex()  # in order
        segments.append(apdu)
        client.send(bytes([0x40, 1, apdu[2], 1]))  # SegmentACK, window 1
        if not apdu[0] & 0x04:  # no more follow
            break
    assert len(segments) > 2
    await asyncio.sleep(0.1)
    assert gateway.app.asap.serverTransactions == []


async def test_a_long_answer_to_a_bas_that_takes_no_segments_is_aborted_as_such(gateway, client):
    client.send(bytes([0x00, MAX_APDU_50, 2, 14]) + RPM_ALL)
    assert await client.next() == bytes([0x71, 2, 4])  # Abort from the server: segmentation-not-supported


async def test_an_unacknowledged_first_segment_is_sent_again_without_a_traceback(gateway, peer, client, caplog):
    # The first segment, or the BAS's SegmentACK of it, lost on the way: bacpypes3 resent nothing, and logged
    # "Task exception was never retrieved" (AssertionError) at each retry of each such request.
    device = gateway.app.device_object
    timeout, retries = device.apduSegmentTimeout / 1000, device.numberOfApduRetries
    client.send(bytes([0x02, MAX_APDU_50, 3, 14]) + RPM_ALL)
    got = await client.answers(timeout * (retries + 1) + 0.5)
    firsts = [at for at, apdu in got if apdu[:3] == bytes([0x3C, 3, 0])]
    assert len(firsts) == retries + 1, [(round(at, 2), apdu[:4].hex()) for at, apdu in got]
    # each resend a segment timeout after the one before: the first send's own time is when this loop read it, which
    # the gateway in this same loop can delay (0.43 s at CI's load, the resend 0.59 s after that), so the chain starts
    # from the request, which the timer cannot precede
    sends = [0.0, *firsts[1:]]
    assert all(b - a >= timeout * 0.8 for a, b in zip(sends, sends[1:])), firsts
    # given up after the retries, as clause 5.4.5.3 says: the last time-out ends it, a segment timeout after the last
    # send, which a loaded machine puts past the window above (CI once saw it still listed)
    await eventually(lambda: gateway.app.asap.serverTransactions == [], timeout + 5, "the transaction given up")
    assert await client.next(0.2) is None       # and nothing sent after it
    gc.collect()  # an unretrieved task exception is logged when the task is collected
    await asyncio.sleep(0)
    assert errors_logged(caplog) == []
    assert await peer.read(where(gateway), f"device {DEVICE_ID}", "objectName") == "TestGateway"


async def test_a_late_first_acknowledgement_still_gets_the_rest(gateway, client, caplog):
    # a BAS behind a slow router acknowledges after the first resend: the rest of the answer follows
    timeout = gateway.app.device_object.apduSegmentTimeout / 1000
    client.send(bytes([0x02, MAX_APDU_50, 4, 14]) + RPM_ALL)
    got = await client.answers(timeout * 1.5)
    assert [apdu[:3] for _, apdu in got] == [bytes([0x3C, 4, 0])] * 2
    client.send(bytes([0x40, 4, 0, 127]))  # SegmentACK of segment 0, window 127: the rest at once
    rest = await client.until_last()
    assert [apdu[2] for apdu in rest] == list(range(1, len(rest) + 1)), [a[:4].hex() for a in rest]
    assert not rest[-1][0] & 0x04  # the last segment
    client.send(bytes([0x40, 4, rest[-1][2], 127]))
    await asyncio.sleep(0.1)
    assert gateway.app.asap.serverTransactions == []
    gc.collect()
    await asyncio.sleep(0)
    assert errors_logged(caplog) == []


async def test_an_acknowledgement_of_a_segment_never_sent_aborts_the_answer_without_a_traceback(
        gateway, client, caplog):
    # A SegmentACK past the answer's last segment (window 127, so "in window"): bacpypes3 moved its window there and
    # asked for segments that do not exist, three tracebacks a request, from datagrams anyone can send
    client.send(bytes([0x02, MAX_APDU_50, 8, 14]) + RPM_ALL)
    assert (await client.next())[:3] == bytes([0x3C, 8, 0])
    client.send(bytes([0x40, 8, 60, 127]))     # SegmentACK of segment 60 of about 15
    assert await client.next() == bytes([0x71, 8, 2])     # Abort from the server: invalid-apdu-in-this-state
    assert gateway.app.asap.serverTransactions == []
    timeout = gateway.app.device_object.apduSegmentTimeout / 1000
    assert await client.next(timeout * 1.5) is None     # nothing resent after it
    gc.collect()
    await asyncio.sleep(0)
    assert errors_logged(caplog) == []


async def test_a_repeated_acknowledgement_does_not_abort_the_answer(gateway, client):
    # a BAS given a window again (its ACK was slow, the gateway resent) repeats its ACK of a segment acknowledged
    # already: read as one past the answer's end, it aborted what bacpypes3 alone carries on with
    client.send(bytes([0x02, MAX_APDU_50, 9, 14]) + RPM_ALL)
    assert (await client.next())[:3] == bytes([0x3C, 9, 0])
    client.send(bytes([0x40, 9, 0, 2]))          # ACK segment 0, window 2: segments 1, 2 come
    assert [(await client.next())[2] for _ in range(2)] == [1, 2]
    client.send(bytes([0x40, 9, 2, 2]))          # ACK 2: segments 3, 4 come
    assert [(await client.next())[2] for _ in range(2)] == [3, 4]
    client.send(bytes([0x42, 9, 2, 2]))          # the ACK of 2 again (negative: it had segment 1 or 2 twice)
    answer = await client.next(0.5)
    assert answer is None or answer[0] & 0xF0 != 0x70, f"aborted: {answer.hex()}"
    client.send(bytes([0x40, 9, 4, 127]))        # and it goes on: the rest follows
    rest = await client.until_last()
    assert rest and not rest[-1][0] & 0x04, [a[:4].hex() for a in rest]


@pytest.mark.parametrize("seq", [0, 60])
async def test_an_acknowledgement_without_a_window_aborts_without_a_traceback(gateway, client, caplog, seq):
    # window 0 is none (1..127): bacpypes3 took it, and failed an assert in a traceback, from any four octets
    client.send(bytes([0x02, MAX_APDU_50, 25, 14]) + RPM_ALL)
    assert (await client.next())[:3] == bytes([0x3C, 25, 0])
    client.send(bytes([0x40, 25, seq, 0]))
    assert await client.next() == bytes([0x71, 25, 2])     # invalid-apdu-in-this-state
    gc.collect()
    await asyncio.sleep(0)
    assert errors_logged(caplog) == []


async def test_an_answer_of_more_segments_than_can_be_numbered_is_aborted_not_sent_for_ever(gateway, client):
    # 80 times the device's ALL at 50 octets: over 256 segments, "unspecified" accepted. bacpypes3 numbers segments by
    # an index the 8-bit sequence number wraps: the answer never ended (3,049 segments for 27.8 KB)
    client.send(bytes([0x02, MAX_APDU_50, 26, 14]) + RPM_ALL * 80)
    # building the answer takes the device 0.2 s alone, over 2 s beside the suite on 2 cores and over 10 s beside it
    # and more: how long is not the question, that it ends in an abort is (the test's own timeout bounds it)
    assert await client.next(45.0) == bytes([0x71, 26, 11])    # apdu-too-long
    assert gateway.app.asap.serverTransactions == []


async def test_a_bas_that_aborts_a_segmented_answer_gets_nothing_back(gateway, client):
    # its Abort was sent back to it, with the server bit clear: an abort of the BAS's own transaction of that id
    client.send(bytes([0x02, MAX_APDU_50, 7, 14]) + RPM_ALL)
    first = await client.next()
    assert first is not None and first[0] & 0xF8 == 0x38 and first[1] == 7, first
    client.send(bytes([0x70, 7, 4]))      # Abort from the client: reason 4, segmentation-not-supported
    assert [apdu for _, apdu in await client.answers(1.0) if apdu[0] & 0xF0 == 0x70] == []
    await eventually(lambda: gateway.app.asap.serverTransactions == [], 5, "the transaction ended")


async def test_a_bas_that_narrows_its_window_gets_the_rest_of_the_answer(gateway, client):
    # ACK 0 window 4 (segments 1-4 come), then ACK 4 window 2. bacpypes3 judged the ACK against the window it names
    # (4 is not within 2 of 1), not the one in force (5.4.5.3), took it for a duplicate, and the answer stalled
    client.send(bytes([0x02, MAX_APDU_50, 27, 14]) + RPM_ALL * 3)     # about 20 segments
    assert (await client.next())[:3] == bytes([0x3C, 27, 0])
    client.send(bytes([0x40, 27, 0, 4]))
    assert [(await client.next())[2] for _ in range(4)] == [1, 2, 3, 4]
    client.send(bytes([0x40, 27, 4, 2]))
    assert await client.in_window(2) == [5, 6]
    client.send(bytes([0x40, 27, 6, 127]))
    rest = await client.until_last()
    assert rest and rest[0][2] == 7 and not rest[-1][0] & 0x04, [a[:4].hex() for a in rest]
    client.send(bytes([0x40, 27, rest[-1][2], 1]))
    await eventually(lambda: gateway.app.asap.serverTransactions == [], 2, "the answer complete")


async def test_a_gap_in_the_last_window_is_sent_again_not_taken_for_the_end(gateway, client):
    # every segment sent, the BAS lost two near the end and acknowledges (negatively) the last it had in order:
    # bacpypes3 read any ACK after the last send as the final one and ended, and the BAS's read failed
    client.send(bytes([0x02, MAX_APDU_50, 28, 14]) + RPM_ALL)
    assert (await client.next())[:3] == bytes([0x3C, 28, 0])
    client.send(bytes([0x40, 28, 0, 127]))
    rest = await client.until_last()
    last = rest[-1][2]
    assert not rest[-1][0] & 0x04 and last > 4, [a[:4].hex() for a in rest]
    client.send(bytes([0x42, 28, last - 2, 127]))    # NAK: had all up to last - 2
    again = [await client.next() for _ in range(2)]
    assert [a[2] for a in again] == [last - 1, last], [a[:4].hex() for a in again]
    assert await client.next(0.3) is None
    assert again[-1] == rest[-1]
    assert gateway.app.asap.serverTransactions != []
    client.send(bytes([0x40, 28, last, 127]))
    await eventually(lambda: gateway.app.asap.serverTransactions == [], 2, "the answer complete")


async def test_an_acknowledgement_past_the_end_naming_a_small_window_aborts_without_a_traceback(gateway, client,
                                                                                               caplog):
    # every segment sent (window in force 127); an ACK of a segment past the answer's end naming window 1 was taken
    # as inside the window in force and moved past the end: four tracebacks a request, from any four octets
    client.send(bytes([0x02, MAX_APDU_50, 29, 14]) + RPM_ALL)
    assert (await client.next())[:3] == bytes([0x3C, 29, 0])
    client.send(bytes([0x40, 29, 0, 127]))
    rest = await client.until_last()
    assert rest and not rest[-1][0] & 0x04
    client.send(bytes([0x40, 29, rest[-1][2] + 3, 1]))
    assert await client.next() == bytes([0x71, 29, 2])     # invalid-apdu-in-this-state
    gc.collect()
    await asyncio.sleep(0)
    assert errors_logged(caplog) == []


async def test_a_stale_acknowledgement_does_not_change_the_window_in_force(gateway, client):
    # a stale copy of the ACK of 0 naming window 1 is a duplicate (the timer restarted, nothing else): bacpypes3
    # took its window, and the BAS's next ACK, inside the window in force, was taken for a duplicate too
    client.send(bytes([0x02, MAX_APDU_50, 30, 14]) + RPM_ALL * 3)
    assert (await client.next())[:3] == bytes([0x3C, 30, 0])
    client.send(bytes([0x40, 30, 0, 4]))
    assert [(await client.next())[2] for _ in range(4)] == [1, 2, 3, 4]
    client.send(bytes([0x40, 30, 0, 1]))
    assert await client.next(0.3) is None
    client.send(bytes([0x40, 30, 4, 2]))
    assert await client.in_window(2) == [5, 6]


async def segmented_answer(client: RawClient, invoke: int) -> list[bytes]:
    """The segments of the answer to invoke id `invoke`, each acknowledged as it comes."""
    segments = []
    while True:
        apdu = await client.next()
        assert apdu is not None, f"stalled after {len(segments)} segments"
        assert apdu[0] & 0xF8 == 0x38 and apdu[1] == invoke, apdu.hex()
        segments.append(apdu)
        client.send(bytes([0x40, invoke, apdu[2], 1]))
        if not apdu[0] & 0x04:
            return segments


# presentValue of analogValue 1, 2 and 3: 48 octets of answer, 51 with the ComplexACK's header
RPM_3_VALUES = b"".join(
    bytes([0x0C]) + struct.pack(">I", (2 << 22) | i) + bytes([0x1E, 0x09, 0x55, 0x1F]) for i in (1, 2, 3))


# ALL of analogValue 1 to 8: about 1,100 octets that do not change between two reads (the device's ALL has the time)
RPM_POINTS_ALL = b"".join(bytes([0x0C]) + struct.pack(">I", (2 << 22) | i) + bytes([0x1E, 0x09, 0x08, 0x1F])
                          for i in range(1, 9))


@pytest.mark.parametrize("code, octets, asked", [(0, 50, RPM_POINTS_ALL), (1, 128, RPM_POINTS_ALL),
                                                 (2, 206, RPM_POINTS_ALL), (3, 480, RPM_POINTS_ALL),
                                                 (0, 50, RPM_3_VALUES)],
                         ids=["50", "128", "206", "480", "50-just-over"])
async def test_every_segment_fits_the_max_apdu_the_bas_takes_header_included(gateway, client, code, octets, asked):
    # bacpypes3 cut the answer's data into pieces of the BAS's max-APDU-length-accepted and put the 5-octet segment
    # header on top: 55 octets to a BAS that takes 50, 485 to one behind an MS/TP router that takes 480
    client.send(bytes([0x00, 0x05, 31, 14]) + asked)        # max 1476 octets: the whole answer in one
    whole = await client.next()
    assert whole[0] == 0x30 and whole[1] == 31, whole.hex()

    client.send(bytes([0x02, code, 32, 14]) + asked)
    segments = await segmented_answer(client, 32)
    assert max(len(s) for s in segments) <= octets, [len(s) for s in segments]
    assert b"".join(s[5:] for s in segments) == whole[3:]    # the same answer, in pieces
    await asyncio.sleep(0.1)
    assert gateway.app.asap.serverTransactions == []


async def test_an_answer_just_over_the_max_apdu_is_aborted_for_a_bas_that_takes_no_segments(gateway, client):
    # 51 octets went whole to a BAS that said it takes 50 and no segments
    client.send(bytes([0x00, MAX_APDU_50, 33, 14]) + RPM_3_VALUES)
    assert await client.next() == bytes([0x71, 33, 4])     # Abort: segmentation-not-supported


def _present_values(count: int) -> bytes:
    """ReadPropertyMultiple of analogValue 1's presentValue `count` times: 10 + 9 * count octets of ComplexACK."""
    return bytes([0x0C]) + struct.pack(">I", (2 << 22) | 1) + bytes([0x1E]) + bytes([0x09, 0x55]) * count + \
        bytes([0x1F])


@pytest.mark.parametrize("code, octets", [(0, 50), (1, 128), (2, 206), (3, 480), (4, 1024), (5, 1476)])
async def test_at_each_max_apdu_the_longest_answer_that_fits_goes_whole_and_one_more_is_aborted(
        gateway, client, code, octets):
    # a BAS that takes no segments: an answer fits its max-APDU-length-accepted, header included, or is aborted
    # segmentation-not-supported, never sent over it nor left unanswered (checked by hand at every size, bacnet47)
    fits = (octets - 10) // 9
    client.send(bytes([0x00, code, 35, 14]) + _present_values(fits))
    answer = await client.next()
    assert answer is not None and answer[:3] == bytes([0x30, 35, 14]) and len(answer) == 10 + 9 * fits <= octets
    client.send(bytes([0x00, code, 36, 14]) + _present_values(fits + 1))
    assert await client.next() == bytes([0x71, 36, 4])     # Abort: segmentation-not-supported


async def test_the_request_again_while_its_answer_goes_in_segments_is_discarded_without_a_traceback(
        gateway, client, caplog):
    # a BAS that lost the first segment retries its request: bacpypes3 logged an ERROR with a traceback for it (and
    # for any request reusing the invoke id until the answer ended), from any datagram anyone sends
    asked = bytes([0x02, MAX_APDU_50, 34, 14]) + RPM_POINTS_ALL
    client.send(asked)
    first = await client.next()
    assert first[:3] == bytes([0x3C, 34, 0]), first.hex()
    client.send(asked)
    assert await client.next(0.3) is None        # discarded: no abort, no second answer
    client.send(bytes([0x40, 34, 0, 1]))
    rest = await segmented_answer(client, 34)
    assert rest[0][2] == 1 and not rest[-1][0] & 0x04
    gc.collect()
    await asyncio.sleep(0)
    assert errors_logged(caplog) == []


async def test_a_segment_acknowledgement_while_the_answer_is_made_is_discarded_without_a_traceback(
        gateway, client, caplog):
    begun, made = asyncio.Event(), asyncio.Event()

    async def slowly(_value):   # as the application's ADR-Opt-Out listener, whose ack waits for the disk
        begun.set()
        await asyncio.sleep(0.5)
        made.set()

    gateway.on_write(OPT_OUT, slowly)
    # WriteProperty of binaryValue 4 presentValue active at priority 8
    client.send(bytes([0x00, 0x05, 35, 15]) + bytes.fromhex("0c014000041955" "3e9101" "3f" "4908"))
    await asyncio.wait_for(begun.wait(), 5)     # the answer is being made
    client.send(bytes([0x40, 35, 0, 1]))
    assert await client.next() == bytes([0x20, 35, 15])     # its SimpleACK, when the write is made
    assert made.is_set() and gateway.get(OPT_OUT) is True
    assert errors_logged(caplog) == []


RP_OBJECT_NAME = bytes([0x0C]) + struct.pack(">I", (8 << 22) | DEVICE_ID) + bytes([0x19, 0x4D])


@pytest.mark.parametrize("acked", ["all but the last", "none"])
async def test_another_request_with_the_invoke_id_of_an_answer_in_segments_is_served_at_once(
        gateway, client, caplog, acked):
    # The BAS's final SegmentACK lost on the way, the BAS done with the answer and on to its next request with the
    # same invoke id (or one past its own time-outs): that request was dropped until the old answer's retries ran
    # out, about 6 s, while the old answer's last segment, sent again, reached the BAS's new transaction as if its
    # answer (helper verify43)
    client.send(bytes([0x02, MAX_APDU_50, 36, 14]) + RPM_POINTS_ALL)
    while True:
        apdu = await client.next()
        assert apdu[0] & 0xF8 == 0x38 and apdu[1] == 36, apdu.hex()
        if acked == "none" or not apdu[0] & 0x04:
            break
        client.send(bytes([0x40, 36, apdu[2], 1]))
    client.send(bytes([0x00, 0x05, 36, 12]) + RP_OBJECT_NAME)
    answer = await client.next()
    assert answer is not None and answer[:4] == bytes([0x30, 36, 12, 0x0C]), answer and answer.hex()
    assert answer.endswith(b"TestGateway" + bytes([0x3F]))
    assert await client.answers(2.5) == []       # nothing more of the old answer
    assert gateway.app.asap.serverTransactions == []
    gc.collect()
    await asyncio.sleep(0)
    assert errors_logged(caplog) == []
