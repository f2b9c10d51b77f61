"""The start's check of storage.path: what PRAGMA quick_check and integrity_check cost on a gateway's file with 35 days
behind it, and what damage each finds.

    python bench/storage_checks.py [--days 35] [--queue-days 7] [--poll-seconds 10] [--cold] [--repeat 3]

The file is made by the gateway's own stores: `--days` of events (one a day, as bench/history_volume.py writes them),
the shipped building's `--days` of forecast history with a forecast every minute for both horizons (the forecaster's
index on target_time over them), and a telemetry backlog of `--queue-days` at `--poll-seconds` (a VTN away that
long). Times quick_check and integrity_check (`--cold`: the file dropped from the page cache before each, as at a
boot). Then, on copies: an index leaf page whose keys are changed but whose layout stays valid (a bit flipped by a
card that still checksums its sectors, a write torn inside one page), and an index page overwritten with garbage:
what each check says, what a query that goes by the index returns, and what the start's
ven.storage_salvage.set_aside_if_damaged and the check after it, ven.storage_indexes.check_indexes, do.
Prints tables; nothing is asserted.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sqlite3
import struct
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _common as C  # noqa: E402
from history_volume import seed_events, uncache  # noqa: E402


def build(path: Path, days: int, queue_days: int, poll_seconds: float) -> dict:
    from ven.telemetry import TelemetryQueue

    now = datetime.now(timezone.utc)
    seed_events(path, days, 1, now)
    C.seed_history(str(path), now.timestamp())
    q = TelemetryQueue(path, max_age=timedelta(days=queue_days + 1))
    q.close()
    t = now.timestamp()
    with contextlib.closing(sqlite3.connect(path)) as db:
        issued = [t - 60 * i for i in range(days * 1440)]
        db.executemany("INSERT OR REPLACE INTO forecast_issue VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       [(i, "gbr", 100.0, 0.1, 0, 0, 120.0, 60.0) for i in issued])
        db.executemany("INSERT OR REPLACE INTO forecast_demand VALUES (?, ?, ?, ?)",
                       [(i, h, i + h * 60, 100.0) for i in issued for h in (15, 60)])
        n = int(queue_days * 86400 / poll_seconds)
        start = now - timedelta(days=queue_days)
        db.executemany("INSERT INTO telemetry_queue (ts, kw) VALUES (?, ?)",
                       [((start + timedelta(seconds=poll_seconds * k)).isoformat(), 100.0 + k % 50)
                        for k in range(n)])
        db.commit()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        counts = {name: db.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0] for name, in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'").fetchall()}
    return counts


def timed(path: Path, pragma: str, cold: bool, repeat: int) -> tuple[float, str]:
    best, said = float("inf"), ""
    for _ in range(repeat):
        if cold:
            uncache(path)
        t = time.perf_counter()
        with contextlib.closing(sqlite3.connect(path)) as db:
            said = " | ".join(r[0] for r in db.execute(f"PRAGMA {pragma}").fetchall())
        best = min(best, time.perf_counter() - t)
    return best, said


def index_leaf(path: Path, index: str) -> tuple[int, int]:
    """(page number, page size) of a leaf page in the middle of `index`."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        size = db.execute("PRAGMA page_size").fetchone()[0]
        pages = [p for p, in db.execute("SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' "
                                        "ORDER BY pageno", (index,))]
    return pages[len(pages) // 2], size


def change_keys(path: Path, index: str) -> tuple[str, float]:
    """Each cell's key (its first column, a REAL) on one leaf page of `index` made 1e9: the page's layout stays
    valid, its keys no longer those of the rows they point to."""
    page, size = index_leaf(path, index)
    with open(path, "r+b") as f:
        f.seek((page - 1) * size)
        data = bytearray(f.read(size))
        ncells = int.from_bytes(data[3:5], "big")
        changed, first = 0, float("inf")
        for k in range(ncells):
            cell = int.from_bytes(data[8 + 2 * k:10 + 2 * k], "big")
            # cell: payload size (varint, < 128 here), record header (size, types), values
            hdr = data[cell + 1]
            if data[cell + 2] != 7:     # first column a REAL (serial type 7)
                continue
            at = cell + 1 + hdr
            first = min(first, struct.unpack(">d", data[at:at + 8])[0])
            data[at:at + 8] = struct.pack(">d", 1e9)
            changed += 1
        f.seek((page - 1) * size)
        f.write(data)
    return f"{changed} key(s) of leaf page {page} of {index} changed", first


def garbage(path: Path, index: str) -> tuple[str, float]:
    page, size = index_leaf(path, index)
    with contextlib.closing(sqlite3.connect(path)) as db:
        first = db.execute("SELECT MIN(target_time) FROM forecast_demand").fetchone()[0]
    with open(path, "r+b") as f:
        f.seek((page - 1) * size + 8)
        f.write(os.urandom(size - 8))
    return f"leaf page {page} of {index} overwritten past its header", first


def query(path: Path, since: float) -> str:
    """What /api/history reads of the forecasts (ForecastStore.history, by target_time through the index) from
    `since`: the rows it returns, those of them whose target time is not the table's, and the rows there are."""
    from forecaster.store import ForecastStore

    try:
        got = ForecastStore(str(path)).history(since)["forecasts"]
        with contextlib.closing(sqlite3.connect(path)) as db:
            table = {t for t, in db.execute(
                "SELECT target_time FROM forecast_demand NOT INDEXED WHERE target_time >= ?", (since,))}
            there = db.execute("SELECT COUNT(*) FROM forecast_demand NOT INDEXED WHERE target_time >= ?",
                               (since,)).fetchone()[0]
        times = [t for f in got.values() for t in f["target_time"]]
        wrong = sum(1 for t in times if t not in table)
        return f"history() {len(times)} forecast(s), {wrong} of them at a time not in the table; {there} in the table"
    except sqlite3.Error as err:
        return f"{type(err).__name__}: {err}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=int, default=35)
    ap.add_argument("--queue-days", type=float, default=7)
    ap.add_argument("--poll-seconds", type=float, default=10)
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    C.quiet_logging()
    from ven import storage_salvage
    from ven.storage_indexes import check_indexes

    with tempfile.TemporaryDirectory(prefix="bench-checks-", dir=os.environ.get("BENCH_DIR")) as tmp:
        path = Path(tmp) / "gw.sqlite"
        t = time.perf_counter()
        counts = build(path, args.days, args.queue_days, args.poll_seconds)
        print(f"built in {time.perf_counter() - t:.1f} s: {path.stat().st_size / 2**20:.1f} MB, rows {counts}")
        for pragma in ("quick_check(1)", "integrity_check(1)", "integrity_check(100)"):
            s, said = timed(path, pragma, args.cold, args.repeat)
            print(f"{pragma:22} {'cold' if args.cold else 'warm'} {s * 1000:8.0f} ms  {said[:100]}")
        for name, damage in (("keys changed", change_keys), ("garbage", garbage)):
            copy = Path(tmp) / f"{name.replace(' ', '-')}.sqlite"
            shutil.copy(path, copy)
            what, since = damage(copy, "forecast_demand_target")
            print(f"\n{name}: {what}")
            for pragma in ("quick_check(5)", "integrity_check(5)"):
                print(f"  {pragma:20} {timed(copy, pragma, False, 1)[1][:300]}")
            print(f"  query                {query(copy, since)}")
            aside = storage_salvage.set_aside_if_damaged(copy)
            print(f"  set_aside_if_damaged {aside.name if aside else None}; then: {query(copy, since)}")
            t = time.perf_counter()
            rebuilt = check_indexes(copy)
            print(f"  check_indexes        {rebuilt} in {(time.perf_counter() - t) * 1000:.0f} ms; then: "
                  f"{query(copy, since)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
