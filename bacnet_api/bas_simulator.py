"""A BAS simulator: what a building controller does with the gateway's points, over real BACnet.

Every `interval` seconds it writes the building's kW into input-power-meter at its priority, reads back
the demand-response state, the forecasts and the flags by ReadPropertyMultiple, and decides whether to
shed, following examples/bas-sequence-of-operation.md: shed on level >= 2 or high-load, restore only
after `restore_cycles` calm cycles, and hold the shed while high-load or the rate is in fault ("cannot
tell" is not "no peak") or the load climbs fast. The demo prints what it sees; tests read `.view`,
`.faults` and `.decision`.

The building it controls sheds: `kw_source` is what the building would draw, and a shed takes `shed_fractions`
of it off (`drawn_kw`), both in what the BAS writes and, in the demo, on the meter. While SHED-2 runs on
high-load-conditions alone (step 4), it commands bas-shed-power with the kW the shed takes off as it begins,
once, and relinquishes it when the shed ends or an event's level comes (the gateway keeps event hours out of
what it learns by itself).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

from . import points as P
from .peer import BacnetPeer, PeerError

log = logging.getLogger(__name__)

WATCHED = (P.EVENT_LEVEL, P.EVENT_ACTIVE, P.EVENT_START_MINUTES, P.FIFTEEN_MIN_FORECAST,
           P.ONE_HOUR_FORECAST, P.RATE_OF_CHANGE, P.HIGH_LOAD, P.LOW_LOAD, P.METER_POWER,
           P.VTN_CONNECTED, P.METER_FAULT)
# statusFlags read too: a fault changes the decision (the first three), or what a graphic shows (a point in
# fault holds a placeholder, e.g. meter-power's 0 kW before the first reading)
FLAGGED = (P.HIGH_LOAD, P.LOW_LOAD, P.RATE_OF_CHANGE, P.METER_POWER, P.FIFTEEN_MIN_FORECAST, P.ONE_HOUR_FORECAST)
CLIMBING_KW_PER_MIN = 5.0                               # never restore while the load climbs faster
SHED_FRACTIONS = {"shed": 0.2, "shed-1": 0.1}           # of the load, as bench/closed_loop.py sheds


class BasSimulator:
    def __init__(self, port: int, gateway: str, kw_source: Callable[[], float], *,
                 interval: float = 10.0, priority: int = 8, restore_cycles: int = 3,
                 device_id: int = 4000100, shed_fractions: dict[str, float] | None = None,
                 on_change: Callable[[dict, str], None] | None = None) -> None:
        self.gateway = gateway
        self.kw_source = kw_source
        self.interval = interval
        self.priority = priority
        self.restore_cycles = restore_cycles
        self.on_change = on_change
        self.shed_fractions = SHED_FRACTIONS if shed_fractions is None else shed_fractions
        self.reported_kw: float | None = None   # what bas-shed-power is commanded to (None: relinquished)
        self._own = False                       # the shed running is the BAS's own (step 4), not an event's
        self._said = False                      # bas-shed-power written since start (else what it holds is unknown)
        self.view: dict[str, float | bool] = {}
        self.faults: set[str] = set()   # FLAGGED points whose statusFlags say fault
        self.decision = "normal"
        self.cycles = 0
        self._calm = 0
        self._peer = BacnetPeer(port, device_id=device_id, timeout=3.0)
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self._peer.__aenter__()
        self._task = asyncio.create_task(self._run(), name="bas-simulator")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._peer.__aexit__(None, None, None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            await self.cycle()
            next_at += self.interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    def drawn_kw(self) -> float:
        """What the building draws now, its shed taken off."""
        return self.kw_source() * (1.0 - self.shed_fractions.get(self.decision, 0.0))

    async def cycle(self) -> None:
        self.cycles += 1
        kw = self.drawn_kw()
        err = await self._peer.write(self.gateway, P.BY_NAME[P.INPUT_POWER].object_id, "presentValue",
                                     float(kw), priority=self.priority)
        if err is not None:
            log.warning("BAS: write input-power-meter %.1f kW refused: %s", kw, err.text)
        specs = [(P.BY_NAME[name].object_id, ["presentValue"] + (["statusFlags"] if name in FLAGGED else []))
                 for name in WATCHED]
        result = await self._peer.read_multiple(self.gateway, specs)
        if isinstance(result, PeerError):
            log.warning("BAS: reading the gateway failed: %s", result.text)
            return
        view, faults = {}, set()
        for name in WATCHED:
            key = P.BY_NAME[name].object_id.replace(" ", ",")
            value = result.get((key, "presentValue"))
            if isinstance(value, PeerError):
                continue
            view[name] = _plain(value, P.BY_NAME[name].kind)
            flags = result.get((key, "statusFlags"))
            if name in FLAGGED and (isinstance(flags, PeerError) or flags is None or flags[1]):
                faults.add(name)     # unreadable flags are no better than fault
        decision = self._decide(view, faults)
        changed = view != self.view or faults != self.faults or decision != self.decision
        own = self._own = self._own_shed(view, faults, decision)
        # what it decided on is its state before the command goes out: one reading them meanwhile sees both agree
        self.view, self.faults, self.decision = view, faults, decision
        if own and self.reported_kw is None:
            await self._report_shed(self.kw_source() * self.shed_fractions.get(decision, 0.0))
        elif not own and (self.reported_kw is not None or not self._said):
            await self._report_shed(None)   # the first cycle too: a command left by an earlier run of this BAS
        if changed and self.on_change is not None:
            self.on_change(dict(view), decision)

    async def _report_shed(self, kw: float | None) -> None:
        target = P.BY_NAME[P.SHED_POWER].object_id
        if kw is None:
            err = await self._peer.relinquish(self.gateway, target, self.priority)
        else:
            err = await self._peer.write(self.gateway, target, "presentValue", round(kw, 1), priority=self.priority)
        if err is not None:     # tried again next cycle
            log.warning("BAS: %s bas-shed-power refused: %s", "relinquishing" if kw is None else "commanding", err.text)
            return
        self.reported_kw = None if kw is None else round(kw, 1)
        self._said = True

    def _own_shed(self, view: dict, faults: set[str], decision: str) -> bool:
        """SHED-2 on the flag with no event level, and the hold after it; an event's shed held after its end is not."""
        return decision == "shed" and _level(view) == 0 and (_high_load(view, faults) or self._own)

    def _decide(self, view: dict, faults: set[str] = frozenset()) -> str:
        level = _level(view)
        if level >= 2 or _high_load(view, faults):
            self._calm = 0
            return "shed"
        if self.decision == "shed":
            climbing = (P.RATE_OF_CHANGE in faults
                        or float(view.get(P.RATE_OF_CHANGE, 0) or 0) > CLIMBING_KW_PER_MIN)
            if P.HIGH_LOAD in faults or climbing:
                self._calm = 0       # cannot tell, or a rebound is building: hold the shed
                return "shed"
            self._calm += 1
            if self._calm < self.restore_cycles:
                return "shed"
        return "shed-1" if level >= 1 else "normal"


def _level(view: dict) -> float:
    return float(view.get(P.EVENT_LEVEL, 0) or 0)


def _high_load(view: dict, faults) -> bool:
    """high-load-conditions on and live: in fault, it says nothing either way."""
    return bool(view.get(P.HIGH_LOAD)) and P.HIGH_LOAD not in faults


def _plain(value, kind: str) -> float | bool:
    if kind == "binaryValue":  # BinaryPV may arrive as the enumeration or its integer
        return str(value) in ("active", "1")
    return round(float(value), 2)
