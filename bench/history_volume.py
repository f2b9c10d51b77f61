"""A gateway with a year behind it: the event table at start-up and pruned, and the size and time of /api/history.

    python bench/history_volume.py [--days 365] [--per-day 1] [--model-kb 700] [--page-size N] [--cold]

Events: `--per-day` events a day for `--days` days, each opted in then out for part of it (as a BAS toggling
ADR-Opt-Out leaves them), written through the gateway's own Storage and EventSchedule (upsert, opt-out,
opt-in) with synthetic clocks; then a fresh EventSchedule loads the file as a restart would (events over for
35 days before the newest time stamp in the file go) and prunes as its timer does. Prints the rows before
and after, the load and prune times, the file size, the events /api/status lists and /api/history can shade, and the
schedule's work per timer wake (`_next_wake` + `state`) with that month of ended events kept.

History: the shipped building's 35 days of minutes (what `forecaster.history_days` keeps by default)
written into the gateway's SQLite file, forecasts every minute for both horizons, then
`ForecastService.history` + `build_history` and the JSON encoding, for 24 h, a week and 35 days, with the
events kept for them: seconds and bytes; and a fitted model's size (`--model-kb`) saved and read back.
`--page-size` creates both files with that page size; `--cold` drops the history file from the kernel's page
cache before each read (as the first read after a boot). Prints tables; nothing is asserted.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402


def seed_events(path: Path, days: int, per_day: int, now: datetime) -> int:
    from ven.events import Event, Interval, Signal
    from ven.schedule import EventSchedule
    from ven.storage import Storage

    clock = [now - timedelta(days=days + 1)]
    storage = Storage(path)
    # keep_recent of a year: this writer keeps everything, as if the gateway had been off until now
    sched = EventSchedule(storage, lambda st: None, clock=lambda: clock[0], keep_recent=timedelta(days=days + 2))
    sched.load()
    n = 0
    for d in range(days, -1, -1):
        day = (now - timedelta(days=d)).replace(hour=14, minute=0, second=0, microsecond=0)
        for k in range(per_day):
            start = day + timedelta(minutes=30 * k)
            clock[0] = start - timedelta(hours=12)
            ivs = tuple(Interval(start + timedelta(minutes=15 * j), timedelta(minutes=15), float(1 + j % 3))
                        for j in range(8))
            sched.upsert(Event(f"day-{d}-{k}", 0, "far", False, "oadr://utility/dr", (Signal("SIMPLE", "level", ivs),),
                               timedelta(0), clock[0]))
            clock[0] = start + timedelta(minutes=40)
            sched.set_opt_out(True)
            clock[0] = start + timedelta(minutes=70)
            sched.set_opt_out(False)
            n += 1
    storage.close()
    return n


def rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT count(*) FROM adr_events").fetchone()[0]


def events_part(args, tmp: Path) -> list:
    from ven.schedule import EventSchedule
    from ven.storage import Storage

    now = datetime.now(timezone.utc)
    path = tmp / "events.sqlite"
    t = time.perf_counter()
    n = seed_events(path, args.days, args.per_day, now)
    seeded = time.perf_counter() - t
    before, size = rows(path), path.stat().st_size
    t = time.perf_counter()
    storage = Storage(path)
    sched = EventSchedule(storage, lambda st: None)
    sched.load()
    loaded = time.perf_counter() - t
    t = time.perf_counter()
    sched._purge(datetime.now(timezone.utc))
    pruned = time.perf_counter() - t
    listed = len(sched.events())
    shaded = sched.history_events(now - timedelta(days=35))
    repeat = 1000
    t = time.perf_counter()
    for _ in range(repeat):
        at = datetime.now(timezone.utc)
        sched._next_wake(at)
        sched.state(at)
    wake = (time.perf_counter() - t) / repeat
    storage.close()
    return [n, seeded, before, size / 1024, loaded * 1000, pruned * 1000, rows(path), listed, len(shaded),
            wake * 1e6], shaded


def uncache(path: Path) -> None:
    """The file's pages out of the kernel's page cache: the next read goes to the disk."""
    for p in (path, Path(f"{path}-wal")):
        with contextlib.suppress(FileNotFoundError), open(p, "rb") as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def history_part(tmp: Path, events: list, model_kb: int, cold: bool) -> list[list]:
    from forecaster.store import ForecastStore
    from ven.config import ForecasterConfig
    from ven.history import build_history
    from ven.http_api import to_json

    path = tmp / "history.sqlite"
    now = time.time()
    minutes = C.seed_history(str(path), now)
    store = ForecastStore(str(path))
    # forecasts every minute for both horizons, as the forecast cycle leaves them (60 s cycle)
    with sqlite3.connect(path) as db:
        issued = [now - 60 * i for i in range(35 * 1440)]
        db.executemany("INSERT OR REPLACE INTO forecast_issue VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       [(t, "gbr", 100.0, 0.1, 0, 0, 120.0, 60.0) for t in issued])
        db.executemany("INSERT OR REPLACE INTO forecast_demand VALUES (?, ?, ?, ?)",
                       [(t, h, t + h * 60, 100.0) for t in issued for h in (15, 60)])
        db.commit()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")   # the size is the file's, not part of it in the WAL
    size = path.stat().st_size
    c = ForecasterConfig()
    out = []
    for hours in (24, 168, 840):
        if cold:
            uncache(path)
        t = time.perf_counter()
        stored = store.history(now - hours * 3600)
        read = time.perf_counter() - t
        t = time.perf_counter()
        at = datetime.fromtimestamp(now, timezone.utc)
        described = [ev.describe(at) for ev in events if ev.end >= at - timedelta(hours=hours)]
        body = build_history(now, hours, stored, described, horizons=c.horizons_minutes)
        shaped = time.perf_counter() - t
        t = time.perf_counter()
        text = json.dumps(to_json(body), separators=(",", ":"))
        encoded = time.perf_counter() - t
        out.append([hours, len(body["minutes"]), len(body["events"]), read * 1000, shaped * 1000, encoded * 1000,
                    len(text) / 1024])
    blob = os.urandom(model_kb * 1024)      # a fit's pickle barely compresses; neither does this
    t = time.perf_counter()
    store.save_model(blob)
    saved = time.perf_counter() - t
    if cold:
        uncache(path)
    t = time.perf_counter()
    with contextlib.closing(sqlite3.connect(path)) as db:
        back = db.execute("SELECT blob FROM forecast_model WHERE id = 1").fetchone()[0]
    loaded = time.perf_counter() - t
    assert back == blob
    with contextlib.closing(sqlite3.connect(path)) as db:
        page = db.execute("PRAGMA page_size").fetchone()[0]
    return out, minutes, size, page, (saved * 1000, loaded * 1000)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--per-day", type=int, default=1)
    ap.add_argument("--model-kb", type=int, default=700, help="the model saved and read (a fit on 35 days: 690 KB)")
    ap.add_argument("--page-size", type=int, default=0, help="create the files with this page size (0: the stores' own)")
    ap.add_argument("--cold", action="store_true", help="read the history file from the disk, not the page cache")
    args = ap.parse_args()
    C.quiet_logging()
    C.use_page_size(args.page_size)
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        ev, shaded = events_part(args, Path(tmp))
        hist, minutes, size, page, model = history_part(Path(tmp), shaded, args.model_kb, args.cold)
    print(C.table(["events written", "written in s", "rows in file", "file KB", "start-up load ms", "prune ms",
                   "rows after", "in /api/status", "for /api/history", "timer wake us"], [ev]))
    print()
    print(f"history file: {minutes} minutes of power, a forecast a minute; {size / 2**20:.1f} MB; page size {page}")
    print(C.table(["hours", "minutes", "event spans", "SQLite read ms", "build_history ms", "JSON encode ms",
                   "body KB"], hist))
    print(f"model of {args.model_kb} KB: saved in {model[0]:.1f} ms, read back in {model[1]:.1f} ms")
    print(f"\nload average {load0:.2f} -> {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
