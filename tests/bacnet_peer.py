"""The reusable BACnet peer for tests; it lives in the package (`bacnet_api.peer`) so the BAS
simulator and bench scripts can use it too. See that module for usage."""
from bacnet_api.peer import BacnetPeer, PeerError, Rows

__all__ = ["BacnetPeer", "PeerError", "Rows"]
