"""Bytes written to storage.path a day, by source: what an SD card or eMMC under the gateway takes.

    python bench/storage_writes.py [--hours 24] [--telemetry-seconds 10] [--report-seconds 10]
                                   [--cycle-seconds 60] [--model-kb 700] [--page-size N]
                                   [--autocheckpoint PAGES] [--dir DIR]

The gateway's own classes write a real SQLite file at the default cadence on a simulated clock (a
day in a minute or two): the telemetry queue (`TelemetryQueue.add` for each meter sample, then the
VTN's acknowledgement `ack` of each update, one every `--report-seconds`, the VTN's reportBackDuration;
the demo VTN asks for one interval per update), the forecaster (`ForecastService._cycle` every
`--cycle-seconds` with the meter samples fed through `on_meter`, so the minutes, the issued forecast,
the hourly prune and a daily model of `--model-kb` are persisted as the service does it), and the event
store (two events a day with a few opt changes, through `EventSchedule`). Before the measured day the
file holds the forecaster's keep_days (44) of history and issued forecasts, as after weeks of running.
`--save-cycles`, `--page-size` (the file's) and `--autocheckpoint` (SQLite's
wal_autocheckpoint on every connection, in pages) try other settings.

How bytes are counted: every SQLite statement the gateway runs is timed by `wchar` of
/proc/thread-self/io (the bytes this thread passed to write()/pwrite(); SQLite's unix VFS writes the
db and -wal files with pwrite() and touches the -shm only through mmap), and the WAL index header in
the -shm (mxFrame, salt, nBackfill) is read before and after it. So each statement's bytes split into
WAL frames appended (frames x (page size + 24), plus the 32-byte header when the WAL restarts) and the
rest, which is the checkpoint copying pages into the db file when nBackfill moved, or else unexplained
(printed; 0 means every byte is accounted for). Each statement is charged to the innermost gateway
method running it. These are the bytes SQLite hands to the kernel, before the page cache; with
synchronous=NORMAL the WAL is not fsynced per commit, so the kernel may merge neighbouring frames into
fewer, larger writes, but it cannot skip them. `write_bytes` of /proc/self/io (what the kernel sent to
the block device for this process) is printed for the whole run as a cross-check when `--dir` is on a
disk (a tmpfs shows 0).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import sqlite3
import struct
import sys
import tempfile
import threading
import time
import types
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

from forecaster.store import ForecastStore  # noqa: E402
from ven.config import ForecasterConfig  # noqa: E402
from ven.events import OPT_IN, OPT_OUT, Event, Interval, Signal  # noqa: E402
from ven import forecast_service, wallclock  # noqa: E402
from ven.forecast_service import ForecastService, forecaster_from_config  # noqa: E402
from ven.schedule import EventSchedule  # noqa: E402
from ven.storage import Storage  # noqa: E402
from ven.telemetry import TelemetryQueue  # noqa: E402

# (class, method, source): the innermost one running a statement is charged for it
SOURCES = [
    (TelemetryQueue, "add", "telemetry enqueue"),
    (TelemetryQueue, "_bound", "telemetry age bound"),
    (TelemetryQueue, "ack", "acknowledgement delete"),
    (TelemetryQueue, "_write", "telemetry kv (last delivery, dropped)"),
    (ForecastStore, "save_minutes", "forecaster minutes"),
    (ForecastStore, "save", "forecaster minutes + issued forecasts"),   # where they go in one transaction
    (ForecastStore, "record_forecast", "issued forecasts"),
    (ForecastStore, "save_model", "model saves"),
    (ForecastStore, "prune", "forecaster prune"),
    (Storage, "flush", "events (Storage)"),
]
CHECKPOINT = "checkpoints (into the db file)"


def wchar() -> int:
    with open("/proc/thread-self/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/thread-self/io")


def write_bytes() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("write_bytes:"))


class Meter:
    """Charges each statement's written bytes to the source running it."""

    def __init__(self, db: Path):
        self.shm = Path(str(db) + "-shm")
        self.page = 4096
        self.local = threading.local()
        self.bytes: dict[str, int] = defaultdict(int)
        self.frames: dict[str, int] = defaultdict(int)
        self.commits: dict[str, int] = defaultdict(int)
        self.checkpoints = 0
        self.unexplained = 0
        self.on = False

    def _stack(self) -> list[str]:
        if not hasattr(self.local, "stack"):
            self.local.stack = []
        return self.local.stack

    def wal_index(self) -> tuple[int, bytes, int]:
        """(mxFrame, salt, nBackfill) from the -shm's first WAL-index header and its checkpoint info."""
        try:
            with open(self.shm, "rb") as f:
                head = f.read(104)
        except FileNotFoundError:
            return 0, b"", 0
        if len(head) < 104:
            return 0, b"", 0
        size = struct.unpack_from("=H", head, 14)[0]
        self.page = 65536 if size == 1 else (size or self.page)
        return struct.unpack_from("=I", head, 16)[0], head[32:40], struct.unpack_from("=I", head, 96)[0]

    def statement(self, run):
        if not self.on:
            return run()
        mx0, salt0, back0 = self.wal_index()
        w0 = wchar()
        try:
            return run()
        finally:
            spent = wchar() - w0
            mx1, salt1, back1 = self.wal_index()
            restarted = salt1 != salt0 and bool(salt0)
            frames = mx1 if restarted else max(0, mx1 - mx0)
            wal = frames * (self.page + 24) + (32 if restarted else 0)
            source = (self._stack() or ["other"])[-1]
            self.bytes[source] += wal
            self.frames[source] += frames
            self.commits[source] += frames > 0
            rest = spent - wal
            if back1 != back0 and back1 > 0:
                self.checkpoints += 1
                self.bytes[CHECKPOINT] += rest
            else:
                self.unexplained += rest

    def charge(self, source: str, fn):
        meter = self

        @functools.wraps(fn)
        def charged(*args, **kwargs):
            stack = meter._stack()
            stack.append(source)
            try:
                return fn(*args, **kwargs)
            finally:
                stack.pop()
        return charged


def traced_connection(meter: Meter, autocheckpoint: int = 0):
    class Traced(sqlite3.Connection):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            if autocheckpoint:
                super().execute(f"PRAGMA wal_autocheckpoint={autocheckpoint}")

        def execute(self, *a, **k):
            return meter.statement(lambda: super(Traced, self).execute(*a, **k))

        def executemany(self, *a, **k):
            return meter.statement(lambda: super(Traced, self).executemany(*a, **k))

        def executescript(self, *a, **k):
            return meter.statement(lambda: super(Traced, self).executescript(*a, **k))

        def commit(self):
            return meter.statement(lambda: super(Traced, self).commit())

        def __exit__(self, *exc):
            return meter.statement(lambda: super(Traced, self).__exit__(*exc))
    return Traced


def event(eid: str, start: datetime, received: datetime) -> Event:
    ivs = tuple(Interval(start + timedelta(minutes=30 * i), timedelta(minutes=30), float(1 + i % 3)) for i in range(4))
    return Event(event_id=eid, modification_number=0, status="far", test_event=False, market_context="oadr://x",
                 signals=(Signal("SIMPLE", "level", ivs),), start_offset=timedelta(0), received_at=received)


def seed(path: Path, start: float, days: float, cycle_s: float) -> None:
    """Weeks of forecaster history and issued forecasts, written in one go (not measured)."""
    ForecastStore(str(path))
    k0, k1 = int((start - days * 86400) // 60), int(start // 60)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executemany("INSERT OR REPLACE INTO forecast_minute VALUES (?, ?, ?)",
                       ((k, 600.0 + k % 97, 6) for k in range(k0, k1)))
        issues = [k0 * 60 + i * cycle_s for i in range(int(days * 86400 / cycle_s))]
        db.executemany("INSERT OR REPLACE INTO forecast_issue VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       ((t, "15:forecaster,60:forecaster", 600.0, 0.1, 0, 0, 900.0, 300.0) for t in issues))
        db.executemany("INSERT OR REPLACE INTO forecast_demand VALUES (?, ?, ?, ?)",
                       ((t, h, t + 60 * h, 610.0) for t in issues for h in (15, 60)))


def run(args, page_note: list) -> tuple[Meter, dict]:
    work = Path(args.dir or tempfile.mkdtemp(prefix="storage-writes-"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / "gateway.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    meter = Meter(path)
    real_connect = sqlite3.connect
    sqlite3.connect = functools.partial(real_connect, factory=traced_connection(meter, args.autocheckpoint))
    for cls, name, source in SOURCES:
        if hasattr(cls, name):      # the same script measures older versions too
            setattr(cls, name, meter.charge(source, getattr(cls, name)))
    if args.save_cycles and hasattr(forecast_service, "SAVE_EVERY_CYCLES"):
        forecast_service.SAVE_EVERY_CYCLES = args.save_cycles

    t0 = math.floor(time.time() / 86400) * 86400 - 2 * 86400
    cfg = ForecasterConfig(cycle_seconds=args.cycle_seconds)
    C.use_page_size(args.page_size)
    if args.page_size:     # a version without the setting: the file made here first
        with contextlib.closing(real_connect(path)) as db:
            db.execute(f"PRAGMA page_size={args.page_size}")
            db.execute("VACUUM")
    # full to the forecaster's keep_days, so the hourly prune deletes an hour as it does after weeks
    seed(path, t0, forecaster_from_config(cfg).keep_days, args.cycle_seconds)
    now = [t0]
    queue = TelemetryQueue(path)
    storage = Storage(path)
    schedule = EventSchedule(storage, on_change=lambda state: None,
                             clock=lambda: datetime.fromtimestamp(now[0], timezone.utc))
    schedule.load()
    # the service's monotonic clock (hourly prune, clock-step watch) runs with the simulated one
    sim_time = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    sim_time.monotonic = lambda: now[0]
    forecast_service.time = wallclock.time = sim_time
    service = ForecastService(cfg, str(path), publish=lambda f: None, clock=lambda: now[0])
    service._store, _ = service._open_store()
    profile = C.building_profile(t0 + args.hours * 3600)
    blob = os.urandom(args.model_kb * 1024)
    with contextlib.closing(real_connect(path)) as db:
        page_note.append(db.execute("PRAGMA page_size").fetchone()[0])

    step = args.telemetry_seconds
    end = t0 + args.hours * 3600
    next_report, next_cycle, next_fit, next_purge = t0, t0, t0 + 86400 / 2, t0
    events_at = [t0 + h * 3600 for h in range(0, int(args.hours), 12)]
    wb0 = write_bytes()
    meter.on = True
    while now[0] < end:
        t = now[0]
        if events_at and t >= events_at[0]:
            events_at.pop(0)
            clock = datetime.fromtimestamp(t, timezone.utc)
            eid = f"ev-{int(t)}"
            schedule.upsert(event(eid, clock + timedelta(hours=1), clock))
            stored = schedule.get(eid)
            for i in range(6):
                stored = stored.opted(OPT_OUT if i % 2 == 0 else OPT_IN, clock + timedelta(minutes=i))
            storage.save_event(stored)
        if t >= next_report:        # the VTN took the update carrying every complete interval
            next_report += args.report_seconds
            waiting = [s for s in queue.peek(100_000) if s.ts.timestamp() < t]
            if waiting:
                # as VtnReports does with each update the VTN took: the stream's place, then the readings
                queue.set_place(timedelta(seconds=args.report_seconds), datetime.fromtimestamp(t, timezone.utc))
                queue.ack(waiting)
        kw = float(profile.kw(t))
        queue.add(datetime.fromtimestamp(t, timezone.utc), kw)
        service.on_meter(t, kw)
        if t >= next_fit:           # a fit came back (ForecastService.fit): stored with the next cycle's save
            next_fit += 86400
            service._unsaved_model = blob
        if t >= next_cycle:
            next_cycle += args.cycle_seconds
            service._cycle(t)
        if t >= next_purge:
            next_purge += 600
            schedule._purge(datetime.fromtimestamp(t, timezone.utc))
        now[0] = t + step
    meter.on = False
    disk = write_bytes() - wb0
    queue.close()
    storage.close()
    sqlite3.connect = real_connect
    forecast_service.time = wallclock.time = time
    return meter, {"dir": work, "disk": disk, "path": path}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--telemetry-seconds", type=float, default=10.0, help="a meter sample queued this often")
    ap.add_argument("--report-seconds", type=float, default=10.0,
                    help="the VTN acknowledges an update this often (its reportBackDuration)")
    ap.add_argument("--cycle-seconds", type=float, default=60.0)
    ap.add_argument("--model-kb", type=int, default=700,
                    help="size of the fitted model stored once a day (a fit on 35 days: 690 KB)")
    ap.add_argument("--save-cycles", type=int, default=0,
                    help="override ven.forecast_service.SAVE_EVERY_CYCLES (where the version has it)")
    ap.add_argument("--page-size", type=int, default=0, help="create the file with this page size (0: the stores' own)")
    ap.add_argument("--autocheckpoint", type=int, default=0,
                    help="wal_autocheckpoint in pages on every connection (0: SQLite's 1000)")
    ap.add_argument("--dir", default="", help="where the file goes (default: a new temporary directory)")
    args = ap.parse_args()
    C.quiet_logging()
    page: list = []
    started = time.monotonic()
    meter, info = run(args, page)
    per_day = 24.0 / args.hours
    total = sum(meter.bytes.values())
    rows = []
    for source in sorted(meter.bytes, key=lambda s: -meter.bytes[s]):
        b = meter.bytes[source]
        if source == "other" and not b:
            continue
        rows.append([source, b * per_day / 2**20, 100.0 * b / total if total else 0.0,
                     meter.commits[source] * per_day if source != CHECKPOINT else meter.checkpoints * per_day,
                     meter.frames[source] * per_day if source != CHECKPOINT else "",
                     (meter.frames[source] / meter.commits[source]) if meter.commits[source] else ""])
    rows.append(["total", total * per_day / 2**20, 100.0, "", "", ""])
    print(f"{args.hours:g} h simulated in {time.monotonic() - started:.0f} s: "
          f"a sample every {args.telemetry_seconds:g} s, "
          f"an acknowledgement every {args.report_seconds:g} s, a forecast every {args.cycle_seconds:g} s, "
          f"a {args.model_kb} KB model a day; page size {page[0]}; wal_autocheckpoint {args.autocheckpoint or 1000}; forecaster saves every "
          f"{getattr(forecast_service, 'SAVE_EVERY_CYCLES', 1)} cycle(s); {info['path']}")
    print(C.table(["source", "MB/day", "%", "commits/day", "WAL frames/day", "frames/commit"], rows))
    print(f"unexplained bytes (written outside WAL frames and checkpoints): {meter.unexplained}; "
          f"write_bytes of the process (to the block device, cross-check): {info['disk'] * per_day / 2**20:.1f} MB/day")


if __name__ == "__main__":
    main()
