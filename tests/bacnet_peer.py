"""The reusable BACnet peer for tests; it lives in the package (`bacnet_api.peer`) so the BAS
simulator and bench scripts can use it too. See that module for usage."""
import time

from bacnet_api.peer import BacnetPeer, PeerError, Rows

__all__ = ["BacnetPeer", "PeerError", "Rows", "answered"]


async def answered(request, timeout: float = 10.0):
    """`await request()` (one of a BacnetPeer's reads or writes), sent again while it goes unanswered within the
    peer's timeout, as a BAS sends a request again; its first other answer is returned. A single request with a short
    peer timeout, right after a gateway process's start on a loaded machine, went unanswered (CI at -n 6)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = await request()
        if not (isinstance(answer, PeerError) and answer.code == "timeout") or time.monotonic() > deadline:
            return answer
