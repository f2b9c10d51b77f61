"""Segmented requests from a BAS: up to the device's maxSegmentsAccepted (16) taken and answered, one segment more
aborted buffer-overflow, and the segments still in flight after that abort dropped without a word. A plain UDP socket
sends the segments, so the test decides how many and when."""
from __future__ import annotations

import asyncio
import struct

import pytest

from test_bacnet_device import DEVICE_ID, gateway, peer, port_of, where  # noqa: F401 - shared fixtures
from test_bacnet_segmentation import RawClient
from test_bacnet_services import errors_logged

pytestmark = pytest.mark.timeout(60)

RPM = 14        # ReadPropertyMultiple's service choice
ABORT_BUFFER_OVERFLOW = 0x71, 1      # an Abort from the server; reason buffer-overflow


def rpm_segments(invoke: int, count: int, window: int) -> list[bytes]:
    """A ReadPropertyMultiple of analogValue 1's presentValue, asked 4 times per segment, in `count` segments."""
    pieces = [bytes([0x09, 0x55]) * 4] * count
    pieces[0] = bytes([0x0C]) + struct.pack(">I", (2 << 22) | 1) + bytes([0x1E]) + pieces[0]
    pieces[-1] += bytes([0x1F])
    return [bytes([0x08 | (0x04 if n < count - 1 else 0) | 0x02, 0x05, invoke, n, window, RPM]) + piece
            for n, piece in enumerate(pieces)]


@pytest.fixture
def client(gateway):
    c = RawClient(port_of(gateway))
    yield c
    c.close()


async def sent_one_by_one(client: RawClient, segments: list[bytes]) -> list[bytes]:
    """Each segment sent once the one before is acknowledged, as a BAS with a window of 1 does; what came back."""
    got = []
    for segment in segments:
        client.send(segment)
        answer = await client.next()
        assert answer is not None, f"nothing after segment {segment[3]}"
        got.append(answer)
        if answer[0] >> 4 != 4:     # not a SegmentACK: the answer, or an abort
            break
    return got


async def test_a_request_of_as_many_segments_as_the_device_takes_is_answered(gateway, client):
    assert gateway.app.device_object.maxSegmentsAccepted == 16
    got = await sent_one_by_one(client, rpm_segments(50, 16, 1))
    assert [a[0] >> 4 for a in got] == [4] * 16, [a.hex() for a in got]      # each acknowledged, the last too
    answer = await client.next()
    assert answer is not None and answer[:3] == bytes([0x30, 50, RPM]), answer


async def test_a_request_of_more_segments_than_the_device_takes_is_aborted_buffer_overflow(gateway, client, caplog):
    # bacpypes3 kept every segment for as long as they came (2,000 of them taken, 2.3 MB, from anyone), while the
    # device says it takes 16 (maxSegmentsAccepted)
    segments = rpm_segments(51, 30, 1)
    got = await sent_one_by_one(client, segments)
    assert [a[0] >> 4 for a in got] == [4] * 16 + [7], [a.hex() for a in got]
    assert got[-1] == bytes([ABORT_BUFFER_OVERFLOW[0], 51, ABORT_BUFFER_OVERFLOW[1]])
    client.send(segments[17])       # one the BAS had sent before it had the abort: nothing more for it
    assert await client.next(0.3) is None
    assert gateway.app.asap.serverTransactions == []
    assert errors_logged(caplog) == []


async def test_segments_in_flight_after_the_abort_get_nothing_back(gateway, client):
    # A BAS with a wide window sends them all at once. bacpypes3 began a request with each segment past the abort
    # and acknowledged what it then threw away
    for segment in rpm_segments(52, 30, 127):
        client.send(segment)
    got = [apdu for _, apdu in await client.answers(1.0)]
    kinds = [a[0] >> 4 for a in got]
    assert kinds.count(7) == 1 and kinds[-1] == 7 and set(kinds[:-1]) == {4}, [a.hex() for a in got]
    assert got[-1] == bytes([ABORT_BUFFER_OVERFLOW[0], 52, ABORT_BUFFER_OVERFLOW[1]])
    await asyncio.sleep(0.1)
    assert gateway.app.asap.serverTransactions == []


async def test_a_segment_sent_again_after_its_lost_ack_is_taken_within_four_segment_timeouts(gateway, client):
    # A BAS whose SegmentACK was lost sends the window again once its own segment timeout is over (bacpypes3's is 1.5 s,
    # many BASs' 2 s or more). The device gave up its request after one of its apduSegmentTimeout (1 s), not the four
    # 5.4.5.2 gives the server, so the segment sent again met no transaction: dropped, and the BAS's read failed
    timeout = gateway.app.device_object.apduSegmentTimeout / 1000
    segments = rpm_segments(53, 3, 1)
    got = await sent_one_by_one(client, segments[:2])
    assert [a[0] >> 4 for a in got] == [4, 4], [a.hex() for a in got]
    await asyncio.sleep(timeout * 1.5)          # the ACK of segment 1 lost: the BAS's own timeout runs out
    client.send(segments[1])
    again = await client.next()
    assert again is not None and again[0] >> 4 == 4 and again[1:3] == bytes([53, 1]), again   # acknowledged again
    got = await sent_one_by_one(client, segments[2:])
    assert [a[0] >> 4 for a in got] == [4], [a.hex() for a in got]
    answer = await client.next()
    assert answer is not None and answer[:3] == bytes([0x30, 53, RPM]), answer


async def test_a_request_given_up_is_still_ended_after_four_segment_timeouts(gateway, client):
    timeout = gateway.app.device_object.apduSegmentTimeout / 1000
    got = await sent_one_by_one(client, rpm_segments(54, 3, 1)[:1])
    assert [a[0] >> 4 for a in got] == [4]
    assert len(gateway.app.asap.serverTransactions) == 1
    await asyncio.sleep(timeout * 4 + 0.5)
    assert gateway.app.asap.serverTransactions == []
