"""BACnet side of the gateway: the gateway's own BACnet/IP device, the meter client and a meter simulator.

Only this package touches bacpypes3/BAC0; everything else uses point names and plain values.
Exports load lazily so `bacnet_api.points` stays a cheap import (bacpypes3 takes about a second).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "GatewayDevice": ".device",
    "MeterClient": ".meter",
    "MeterReading": ".meter",
    "read_meter_once": ".meter",
    "MeterSimulator": ".simulator",
    "run_simulator": ".simulator",
    "POINTS": ".points",
    "BY_NAME": ".points",
    "Point": ".points",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bacnet_api' has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
