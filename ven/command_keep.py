"""A commandable point's priority array kept in storage.path as the BAS changes it, for the next start to put back
(ven/device_restore.restore_commands): input-power-meter's and bas-shed-power's.

A BAS may write its kW every few seconds: a commit each time would be the SD card's busiest writer. So a change of
`kind` (by default the priorities held: a command taken or relinquished) is kept at once, on the disk before its
SimpleACK; a changed kW of the same kind at most every `save_s`, and at the stop."""
from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Awaitable, Callable

from bacnet_api.device import GatewayDevice

from .device_restore import COMMANDS
from .storage import Storage


class CommandKeep:
    def __init__(self, device: GatewayDevice, storage: Storage, name: str, save_s: float,
                 synced: Callable[[], Awaitable | None], kind: Callable[[dict], object] = set) -> None:
        self.device, self.storage, self.name, self.save_s = device, storage, name, save_s
        self.key = COMMANDS + name
        self._synced = synced   # the SimpleACK's wait for the disk (bounded by the caller)
        self._kind = kind       # what of the commands, changed, is kept at once
        self._kept: dict[int, float | bool] = {}    # as storage.path holds them
        self._kept_at = -math.inf                   # when they were written (monotonic)
        self._timer: asyncio.TimerHandle | None = None

    def restored(self) -> None:
        """The commands the start (or a late storage.path) put back, which the file holds."""
        self._kept = self.device.commands(self.name)

    def written(self, at_once: bool = False) -> Awaitable | None:
        """The BAS wrote or relinquished the point (`at_once`: while the gateway stops, when a timer would never run):
        keep it; what the SimpleACK waits for (the disk, when kept now)."""
        return self._synced() if self.keep(at_once) else None

    def keep(self, at_once: bool = True) -> bool:
        """Whether the commands were written now."""
        self.cancel()
        commands = self.device.commands(self.name)
        kept = self._kept
        if commands == kept:
            return False
        wait = self.save_s - (time.monotonic() - self._kept_at)
        if not at_once and wait > 0 and self._kind(commands) == self._kind(kept):
            # written when the time is up whether or not the BAS writes again: a kW it changed once and then held
            # must be on the disk for a crash, not only for a clean stop
            self._timer = asyncio.get_running_loop().call_later(wait, self.keep)
            return False
        self.storage.save_value(self.key, json.dumps(commands))
        self._kept, self._kept_at = commands, time.monotonic()
        return True

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
