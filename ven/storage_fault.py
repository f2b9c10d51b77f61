"""One fault in the log for storage.path refusing writes, whichever part of the gateway meets it.

Three parts write the file, each on its own connection and at its own pace: the events store (ven/storage.py), the
telemetry queue (ven/telemetry.py) and the forecaster's history (ven/forecast_service.py). A read-only mount, a full
disk or a file the gateway may not write refuses all three: said by each, one fault was three ERROR lines at its
start and four INFO lines at its end. Each part reports here instead (`failed`, `written`, by its name; none knows
the others), and the log says one line when the first part fails, naming every part's consequence, and one once the
last one has written again for the settle period (storage.settle_seconds), with what went from memory to the file: a
disk that flaps (writes refused, taken, refused again every few seconds: a failing card, a full disk freed a little at
a time) said a start and an end line per flap, thousands a day; now one fault, whose end line counts the refusals. The
settle period doubles for a fault that comes back within 2 hours (bacnet_api/settle.py), as the meter's and the VTN's
do. The app owns it (ven/app.py), and looks at it (`look`) to say the end when no write comes to.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from bacnet_api.settle import Flapping, span

from .config_checks import LOW_SPACE_BYTES
from .storage_damage import UNTIL_RESTART, damaged
from .storage_retry import LOCK_GRACE_SECONDS, locked

log = logging.getLogger(__name__)

# Each part: what it does while the file refuses writes, and what it counts when the file takes them again
PARTS = {
    # the events' store holds the saved state too (ADR-Opt-Out, the meter's last read, the level said): a value is
    # no "event change", which read as events changed that had not
    "events": ("events are kept in memory", "change(s) to events and saved state"),
    "telemetry": ("telemetry readings wait in memory", "telemetry reading(s)"),
    "forecaster": ("forecast history is not stored", "minute(s) of forecast history"),
}


class StorageFault:
    """`parts`: those of PARTS this gateway runs, in the order the start line names them. Thread-safe: the
    forecaster reports from its worker thread."""

    def __init__(self, path: str | Path, retry_seconds: float, parts=tuple(PARTS), clock=time.monotonic,
                 settle_seconds: float = 60.0):
        self.path = str(path)
        self.retry_seconds = retry_seconds
        self.parts = tuple(parts)
        self._clock = clock
        # the log's end once every part has written for the settle period; /healthz and /api/status go by each part's
        # own error, so they say the file is written from the first write
        self._flap = Flapping(settle_seconds)
        self._failing: dict[str, str] = {}      # part -> why, while it refuses that part's writes
        self._writing_since: float | None = None    # every part writes again since (the fault still open)
        self._refusals = 0                      # separate stretches of refused writes in the open fault
        self._back: dict[str, int] = {}         # part -> what went from memory to the file in this fault
        self._notes: list[str] = []
        self._full = False      # the fault began with a full disk
        self._damage_said = False   # the file's damage said (an ERROR) in this run, by a write or a read
        # a write met the file's damage: the fault lasts until the restart. Writes that miss the torn page (a prune
        # beside saves into it) ended it, and the next save began it again: a pair of lines a settle period
        self._damaged = False
        self._lock = threading.Lock()

    @property
    def open(self) -> bool:
        return self._flap.open

    def failed(self, part: str, why: str, note: str = "", every: bool = False, meanwhile: str = "") -> None:
        """`part`'s write (or its opening of the file) failed, and it keeps what it writes in memory. `note`: more
        the start line says, if this starts the fault. `every`: no part can write (the file would not open at the
        start, before any did); else the others may still (a near-full disk refuses the biggest write first, the
        forecaster's model, while the events' and the queue's rows still go in). `meanwhile`: what `part` does, if not
        what PARTS says (the forecaster whose model alone was refused)."""
        # the events' and the queue's errors name the path, which the line says once (as pathlib writes it: a
        # storage.path of "./var/gateway.sqlite" is "var/gateway.sqlite" there)
        why = why.removeprefix(f"storage.path {self.path}: ").removeprefix(f"storage.path {Path(self.path)}: ")
        with self._lock:
            self._refusals += not self._failing     # all parts wrote, and one is refused again: another flap
            self._failing[part] = why
            self._damaged |= damaged(why)
            self._writing_since = None
            if not self._flap.bad(self._clock()):
                if note:
                    log.info("storage.path %s: %s", self.path, note)
                return
            self._back, self._notes, self._refusals = {}, [], 1
            self._full = "No space left on device" in why or "disk is full" in why
            ours = [p for p in self.parts if p in PARTS]
            now = [p for p in ours if every or p == part] or ours
            later = [PARTS[p][0] for p in ours if p not in now]
            # the parts it refuses now, and what the others do if it refuses them too: the line named every part as
            # refused, while /api/status named the one part that was
            waiting = _and([meanwhile if meanwhile and p == part else PARTS[p][0] for p in now])
            also = f", and {_and(later)} once it refuses their writes too" if later else ""
            if locked(why):
                # another process's lock (a backup, an sqlite3 shell) outlasting the stores' grace: nothing is wrong
                # with the file or the disk, and it passes
                log.warning("storage.path %s: another process (a backup, an sqlite3 shell) holds its write lock "
                            "past %g s (%s): %s until it lets go (tried every %s)%s; a restart before then loses "
                            "what memory holds%s", self.path, LOCK_GRACE_SECONDS, why, waiting,
                            _every(self.retry_seconds), also, f"; {note}" if note else "")
                return
            if damaged(why):   # a torn page: no retry takes the write
                # one ERROR for the damage, which a part's read may have said first (ven/storage_damage.ReadDamage)
                level, self._damage_said = logging.INFO if self._damage_said else logging.ERROR, True
                log.log(level, "storage.path %s is damaged (%s): %s meanwhile%s; %s%s", self.path, why, waiting, also,
                        UNTIL_RESTART, f"; {note}" if note else "")
                return
            log.error("storage.path %s refuses writes (%s): %s until it takes them again (tried every %s)%s; a "
                      "restart before then loses what memory holds%s", self.path, why, waiting,
                      _every(self.retry_seconds), also, f"; {note}" if note else "")

    def first_damage(self) -> bool:
        """Whether the file's damage, met by a part's read, is said as an ERROR: the first time in the run, by a read or
        a write. A part meeting it after says what it does meanwhile in an INFO line: one damage, one ERROR."""
        with self._lock:
            first, self._damage_said = not self._damage_said, True
            return first

    def written(self, part: str, moved: int = 0, note: str = "") -> None:
        """`part` writes the file again; `moved`: what it held in memory goes to it (in PARTS' unit), `note`: more
        the end line says."""
        with self._lock:
            if part not in self._failing:
                return
            del self._failing[part]
            self._back[part] = self._back.get(part, 0) + moved
            if note and part in self.parts:     # not the queue's backlog "sent after ..." with openadr.telemetry false
                self._notes.append(note)
            if self._failing or not self._flap.open or self._damaged:
                return
            now = self._writing_since = self._clock()
            self._flap.restart(now)     # the settle period runs from the last part's first write
            self._settled(now)

    def look(self) -> None:
        """Say the fault's end once every part has written for the settle period: the app looks every few seconds,
        since a part says only that it writes again, not each write after."""
        with self._lock:
            if self._flap.open and not self._failing and self._writing_since is not None:
                self._settled(self._clock())

    @property
    def look_every(self) -> float:
        """How often `look` is worth calling: a tenth of the base settle period, between 1 s and 60 s."""
        return min(60.0, max(1.0, self._flap.base / 10))

    def _settled(self, now: float) -> None:
        since, writing = self._flap.since, self._writing_since
        if not self._flap.good(now):
            return
        back = [f"{self._back[p]} {PARTS[p][1]}" for p in self.parts if self._back.get(p)]
        refused = f", refused {self._refusals} separate times" if self._refusals > 1 else ""
        steady = f" (steadily for {span(now - writing)})" if self._flap.settle else ""
        log.info("storage.path %s takes writes again after %s%s%s%s: %s%s", self.path, span(writing - since), refused,
                 steady, self._still_full(), f"{_and(back)} held in memory go to it" if back else
                 "nothing was waiting in memory", "".join(f"; {n}" for n in self._notes))

    def _still_full(self) -> str:
        """A full disk that frees a little (a log rotated) takes writes until the gateway's own writes fill it again,
        seconds to hours later, and a new fault begins: the end line says when it may, with the space left."""
        if not self._full:
            return ""
        try:
            fs = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
        except OSError:
            return ""
        free = fs.f_bavail * fs.f_frsize
        return (f", with {free / 2**20:.1f} MB free on its file system (it may fill again)"
                if free < LOW_SPACE_BYTES else "")

    def fault(self, held: dict[str, int] | None = None) -> str | None:
        """The stop line's words for the fault, while it is open. `held`: what each part still holds in memory (in
        PARTS' units), which the stop loses."""
        with self._lock:
            if not self._flap.open:
                return None
            now, since = self._clock(), self._flap.since
            if not self._failing and self._damaged:
                return (f"storage.path damaged for {span(now - since)} (the restart sets it aside and keeps every row "
                        f"of it that still reads)")
            if not self._failing:
                # every part writes again, and what they held went to the file: nothing is lost, the end line waits
                # for the settle period
                return (f"storage.path refusing writes for {span(self._writing_since - since)}, taking them again "
                        f"for {span(now - self._writing_since)} and not yet steadily")
            return f"storage.path refusing writes for {span(now - since)} ({self._lost(held)})"

    def _lost(self, held: dict[str, int] | None) -> str:
        """What a stop loses: the failing parts' memory, by what each holds. "what they held in memory is lost" of
        every part refused named parts holding nothing (the events' store, its last change refused and nothing
        changed since) beside the one that did."""
        parts = [p for p in PARTS if p in self._failing]
        if held is None:
            return f"{', '.join(parts)}: what {'they' if len(parts) > 1 else 'it'} held in memory is lost"
        lost = [f"{held[p]} {PARTS[p][1]}" for p in parts if held.get(p)]
        return (f"{', '.join(parts)} refused: {_and(lost)} held in memory are lost" if lost else
                f"{', '.join(parts)} refused, with nothing held in memory")


def _every(seconds: float) -> str:
    return f"{seconds:g} s" if seconds < 120 else span(seconds)     # a test's 0.5 s is not "0 s"


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"
