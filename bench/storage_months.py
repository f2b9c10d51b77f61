"""Months of storage.path in a few minutes: does the SQLite file stop growing?

    python bench/storage_months.py [--days 90] [--poll-seconds 10] [--outage-days 30:40] [--page-size N]

Everything goes through the gateway's own classes with synthetic timestamps, as a gateway running that
long would write it: the telemetry queue (a sample every `--poll-seconds`, accepted by the VTN in
batches of ten, except during `--outage-days` when nothing is accepted and the backlog is bounded by
`queue_max_days`, then drained), the forecaster store (one minute of history and one issued forecast
a minute, pruned hourly to the forecaster's keep_days, and a model saved daily), and the event store
(two events a day, each with a few opt changes, purged by the schedule a day after they end). Prints,
every `--every` days, the file and WAL size, the pages in use and free, and the rows per table.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sqlite3
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

from forecaster.core import Forecast  # noqa: E402
from forecaster.store import ForecastStore  # noqa: E402
from ven.config import ForecasterConfig  # noqa: E402
from ven.events import OPT_IN, OPT_OUT, Event, Interval, Signal  # noqa: E402
from ven.forecast_service import PRUNE_EVERY_S, forecaster_from_config  # noqa: E402
from ven.schedule import EventSchedule  # noqa: E402
from ven.storage import Storage  # noqa: E402
from ven.telemetry import TelemetryQueue  # noqa: E402

TABLES = ("telemetry_queue", "forecast_minute", "forecast_issue", "forecast_demand", "forecast_model", "adr_events", "kv")


def event(eid: str, start: datetime, received: datetime) -> Event:
    ivs = tuple(Interval(start + timedelta(minutes=30 * i), timedelta(minutes=30), float(1 + i % 3)) for i in range(4))
    return Event(event_id=eid, modification_number=0, status="far", test_event=False, market_context="oadr://x",
                 signals=(Signal("SIMPLE", "level", ivs),), start_offset=timedelta(0), received_at=received)


def measure(path: Path) -> dict:
    wal = path.with_name(path.name + "-wal")
    with contextlib.closing(sqlite3.connect(path)) as db:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
        rows = {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}
    return {"db_mb": path.stat().st_size / 2**20, "wal_mb": wal.stat().st_size / 2**20 if wal.exists() else 0.0,
            "used_mb": (pages - free) * size / 2**20, "free_mb": free * size / 2**20, **rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--poll-seconds", type=float, default=10.0)
    ap.add_argument("--outage-days", default="30:40", help="first:last day the VTN takes nothing ('' for none)")
    ap.add_argument("--queue-max-days", type=float, default=7.0)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--restart-minutes", type=float, default=0.0,
                    help="the gateway restarts this often (0: never): the forecaster prunes an hour after each "
                         "start, and at start where this version does (ForecastStore.prune_behind_newest)")
    ap.add_argument("--page-size", type=int, default=0, help="create the file with this page size (0: the stores' own)")
    args = ap.parse_args()
    C.quiet_logging()
    C.use_page_size(args.page_size)
    out0, out1 = (int(x) for x in args.outage_days.split(":")) if args.outage_days else (-1, -1)

    work = Path(tempfile.mkdtemp(prefix="storage-months-"))
    path = work / "gateway.sqlite"
    t0 = math.floor(time.time() / 86400) * 86400 - args.days * 86400
    clock = [datetime.fromtimestamp(t0, timezone.utc)]
    queue = TelemetryQueue(path, max_age=timedelta(days=args.queue_max_days))
    storage = Storage(path)
    schedule = EventSchedule(storage, on_change=lambda state: None, clock=lambda: clock[0])
    schedule.load()
    store = ForecastStore(str(path))
    keep_days = forecaster_from_config(ForecasterConfig()).keep_days
    blob = os.urandom(600_000)   # a fitted model's size order
    rows, next_prune, unacked = [], t0 + PRUNE_EVERY_S, []
    started = time.monotonic()
    for day in range(args.days):
        base = t0 + day * 86400
        outage = out0 <= day < out1
        for k, eid in enumerate((f"ev-{day}-a", f"ev-{day}-b")):
            clock[0] = datetime.fromtimestamp(base + k * 43200, timezone.utc)
            schedule.upsert(event(eid, clock[0] + timedelta(hours=1), clock[0]))
            stored = schedule.get(eid)
            for i in range(6):
                stored = stored.opted(OPT_OUT if i % 2 == 0 else OPT_IN, clock[0] + timedelta(minutes=i))
            storage.save_event(stored)
        for minute in range(1440):
            now = base + minute * 60
            if args.restart_minutes and (now - t0) % (args.restart_minutes * 60) == 0:
                next_prune = now + PRUNE_EVERY_S      # as ForecastService after a start
                if hasattr(store, "prune_behind_newest"):
                    store.prune_behind_newest(keep_days * 86400, now)
            clock[0] = datetime.fromtimestamp(now, timezone.utc)
            per_minute = max(1, round(60 / args.poll_seconds))
            for i in range(per_minute):
                seq = queue.add(datetime.fromtimestamp(now + i * args.poll_seconds, timezone.utc), 100.0 + i)
                unacked.append(seq)
            if not outage and len(unacked) >= 10:
                while unacked:
                    batch = queue.peek(100)
                    queue.ack(batch)
                    unacked = unacked[len(batch):] if batch else []
            store.save_minutes([int(now // 60)], [100.0 * per_minute], [per_minute])
            store.record_forecast(Forecast(issued_at=now, demand_kw={15: 101.0, 60: 102.0}, rate_kw_per_min=0.1,
                                           high_load=False, low_load=False, high_threshold_kw=150.0,
                                           low_threshold_kw=50.0, model="15:forecaster,60:persistence",
                                           level_kw=100.0))
            if now >= next_prune:
                next_prune = now + PRUNE_EVERY_S
                store.prune(now - keep_days * 86400)
            if minute % 10 == 0:
                schedule._purge(clock[0])   # the schedule's task does this every 600 s
        store.save_model(blob)
        if (day + 1) % args.every == 0 or day == args.days - 1:
            m = measure(path)
            rows.append([day + 1, "outage" if outage else "", m["db_mb"], m["wal_mb"], m["used_mb"], m["free_mb"],
                         *(m[t] for t in TABLES)])
            print(f"day {day + 1} done, {time.monotonic() - started:.0f} s", file=sys.stderr)
    queue.close()
    storage.close()
    print(f"{args.days} days, a sample every {args.poll_seconds:g} s, VTN outage days {args.outage_days or 'none'}, "
          f"restart every {args.restart_minutes:g} min, "
          f"queue_max_days {args.queue_max_days:g}, forecaster keep_days {keep_days:g}; {work}")
    print(C.table(["day", "", "file MB", "wal MB", "used MB", "free MB", *TABLES], rows))


if __name__ == "__main__":
    main()
