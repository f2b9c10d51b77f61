"""The BAS's COV subscriptions kept in storage.path and put back at the next start, so a BAS that subscribed with
lifetime 0 (or a long one) gets live values again after an upgrade's restart without subscribing again: some BAS
front-ends never do, and their graphics froze on ADR-Event-Level and the load flags."""
from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import Counter

from bacnet_api import cov_keep
from bacnet_api.device import GatewayDevice

from .storage import Storage

log = logging.getLogger(__name__)

COV_SUBSCRIPTIONS = "bacnet_cov_subscriptions"
# a BAS subscribing to (or renewing) every point sends one request a point, in one scan: one write for them all
SAVE_AFTER_S = 1.0
RAN_OUT = "ran out while the gateway was down"
RAN_OUT_LATE = "ran out before storage.path opened"


def encode(subscriptions: list[dict], now: float) -> str:
    """What storage.path keeps of cov_keep.subscriptions() at wall time `now`: each remaining lifetime as the wall
    time it ends ("ends", None if indefinite), which the next start counts the time the gateway was down against."""
    kept = []
    for sub in subscriptions:
        sub = dict(sub)
        remaining = sub.pop("remaining")
        sub["ends"] = None if remaining is None else round(now + remaining, 3)
        kept.append(sub)
    return json.dumps({"subscriptions": kept})


def decode(saved: str, now: float) -> tuple[list[dict], int]:
    """The subscriptions `saved` (encode's) holds, as cov_keep.restore takes them at wall time `now`, and how many ran
    out meanwhile; ValueError (or TypeError, RecursionError) for what this version cannot read."""
    listed = json.loads(saved)["subscriptions"]
    if not isinstance(listed, list) or not all(isinstance(sub, dict) for sub in listed):
        raise ValueError("a list of subscriptions expected")
    live, ran_out = [], 0
    for sub in listed:
        sub = dict(sub)
        ends = sub.pop("ends", None)
        if ends is not None and (not isinstance(ends, (int, float)) or isinstance(ends, bool)
                                 or not math.isfinite(ends)):
            raise ValueError(f"ends {ends!r}")
        # never more than its lifetime: a clock set back since (a box without a battery clock, before NTP) would
        # otherwise keep one for years
        sub["remaining"] = None if ends is None else min(ends - now, sub.get("lifetime") or math.inf)
        if sub["remaining"] is not None and sub["remaining"] <= 0:
            ran_out += 1
            continue
        live.append(sub)
    return cov_keep.check(live), ran_out


class CovKeeper:
    """Restores the device's COV subscriptions at the start and keeps them in `storage` as they change."""

    def __init__(self, device: GatewayDevice, storage: Storage) -> None:
        self.device = device
        self.storage = storage
        self._save: asyncio.TimerHandle | None = None
        self._waiting = False   # for storage.path to open, to put back what it keeps (late())

    async def start(self) -> int:
        """Put back the subscriptions storage.path holds (call before the device serves: their first notifications go
        out as the loop turns), then follow their changes. Returns how many were restored."""
        saved = self.storage.load_value(COV_SUBSCRIPTIONS)
        restored = await self._restore(saved)
        cov_keep.on_change(self.device, self._changed)
        # storage.path not there yet (a data volume mounted after the start): what it keeps is put back once it opens
        # (late()), and what the BAS asks meanwhile is its last word on each subscription. A file read read-only now
        # gave what it keeps already.
        self._waiting = self.storage.conn is None and not saved
        if self._waiting:
            cov_keep.note_requests(self.device, True)
        return restored

    async def late(self, saved: str | None) -> int:
        """storage.path opened after the start holding `saved` (before memory's value was written over it): what it
        kept is put back as a start does, its lifetimes counted to now, merged with the subscriptions the BAS made
        since (one it holds, renewed or cancelled since is as it left it), and the merge kept. Returns how many."""
        if not self._waiting or not self.device.running:
            return 0
        self._waiting = False
        try:
            return await self._restore(saved, late=True)
        finally:
            cov_keep.note_requests(self.device, False)

    async def _restore(self, saved: str | None, late: bool = False) -> int:
        restored = 0
        try:
            kept, ran_out = decode(saved, time.time()) if saved else ([], 0)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError) as err:
            # %.200r: JSON nested 10^5 deep (RecursionError) would be a line of 200 KB
            log.warning("stored BACnet COV subscriptions %.200r unreadable (%s: %.200s): none restored, the BAS "
                        "subscribes again", saved, type(err).__name__, err)
        else:
            left = await cov_keep.restore(self.device, kept)
            restored = len(kept) - sum(left.values())
            left[RAN_OUT if not late else RAN_OUT_LATE] += ran_out
            if kept or ran_out:
                self._said(restored, left, late)
            self.save()    # those not restored are not kept either (what could not be read stays until a change)
        return restored

    @staticmethod
    def _said(restored: int, left: Counter, late: bool) -> None:
        not_restored = "; ".join(f"{n} {why}" for why, n in left.most_common() if n)
        log.info("BACnet COV subscriptions restored from before the restart%s: %d%s",
                 " (storage.path opened late)" if late else "", restored,
                 f" (not restored: {not_restored})" if not_restored else "")

    def _changed(self) -> None:
        if self._save is None:
            self._save = asyncio.get_running_loop().call_later(SAVE_AFTER_S, self.save)

    def save(self) -> None:
        if self._save is not None:
            self._save.cancel()
            self._save = None
        if not self.device.running:
            return
        subscriptions = cov_keep.subscriptions(self.device)
        saved = self.storage.load_value(COV_SUBSCRIPTIONS)
        if saved is None and not subscriptions:
            return      # nothing to keep, nor anything kept to replace: no write at every start
        text = encode(subscriptions, time.time())
        if text != saved:
            self.storage.save_value(COV_SUBSCRIPTIONS, text)

    async def stop(self) -> None:
        """Before the device stops: what changed since the last write is kept, and the stop itself is no change."""
        if self._save is not None:
            self.save()
        if self.device.running:
            cov_keep.on_change(self.device, None)
