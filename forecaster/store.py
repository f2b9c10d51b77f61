"""SQLite persistence for the forecaster: 1-minute history, the fitted model, issued forecasts.

The database file is shared with other parts of the gateway, so this module keeps to its own
`forecast_*` tables, uses WAL mode and short transactions. Each method opens its own connection,
which makes the store safe to call from a worker thread.
"""
from __future__ import annotations

import logging
import math
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Callable

from .core import DemandForecaster, Forecast
from .model import OtherSettings, OtherVersion

log = logging.getLogger(__name__)

# A file this store creates gets small pages, as ven.storage_connect.PAGE_SIZE says why (the card's wear);
# an existing file keeps its own. Both stores set these (one file), each its own: ven.storage_connect imports
# before numpy, which this package's import brings; tests/test_layering.py holds them equal.
PAGE_SIZE = 1024
WAL_SIZE_LIMIT = 4 * 1024 * 1024    # as ven.storage_connect.WAL_SIZE_LIMIT says why
# The last minute a datetime can name (year 9999): one after it is no time the meter was read at, and loading it
# asked for every minute up to it (30 GB: MemoryError, none of the history loaded).
LAST_MINUTE = 253402300799 // 60

_SCHEMA = """
CREATE TABLE IF NOT EXISTS forecast_minute (minute INTEGER PRIMARY KEY, sum_kw REAL NOT NULL, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS forecast_model (id INTEGER PRIMARY KEY CHECK (id = 1), saved_at REAL NOT NULL, blob BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS forecast_issue (issued_at REAL PRIMARY KEY, model TEXT NOT NULL, level_kw REAL,
    rate_kw_per_min REAL, high_load INTEGER NOT NULL, low_load INTEGER NOT NULL, high_threshold_kw REAL, low_threshold_kw REAL);
CREATE TABLE IF NOT EXISTS forecast_demand (issued_at REAL NOT NULL, horizon_minutes INTEGER NOT NULL,
    target_time REAL NOT NULL, forecast_kw REAL, PRIMARY KEY (issued_at, horizon_minutes));
CREATE INDEX IF NOT EXISTS forecast_demand_target ON forecast_demand (target_time);
CREATE TABLE IF NOT EXISTS forecast_set_aside (start REAL NOT NULL, end REAL NOT NULL, PRIMARY KEY (start, end));
"""


class ForecastStore:
    def __init__(self, path: str, busy_timeout_s: float = 5.0, read_only: bool = False,
                 before_connect: Callable[[], None] | None = None):
        """read_only: a file that cannot be written (a read-only mount, a full disk) read as it is, for its history
        and model at a start; sqlite3.Error if it cannot be read either. before_connect: called before each
        connection opens (the gateway's: a file replaced under it is not paired with the old one's -wal)."""
        self.path = str(path)
        self._before_connect = before_connect
        self._timeout = busy_timeout_s
        # the unreadable minutes named already: each clock step reloads the stored minutes, and naming them again
        # made one damaged row look like a new fault at every step
        self._unreadable_said: set[int] = set()
        self._mode = "mode=rw"
        if read_only:
            self._mode = self._readable_mode()
            return
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect(create=True)) as db:
            db.execute(f"PRAGMA page_size={PAGE_SIZE}")  # before WAL mode writes the file's header
            db.execute("PRAGMA journal_mode=WAL")
            with db:
                db.executescript(_SCHEMA)

    def _connect(self, create: bool = False) -> sqlite3.Connection:
        # Only the first connection may create the file. If the file is deleted while the gateway runs,
        # the gateway's long-lived connections, which still hold the old one, recreate it with its rows;
        # an empty file made here first would be a table-less database that every save fails on.
        uri = Path(self.path).resolve().as_uri() + ("" if create else f"?{self._mode}")
        if self._before_connect is not None:
            self._before_connect()
        db = sqlite3.connect(uri, uri=True, timeout=self._timeout)
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        return db

    def _readable_mode(self) -> str:
        # immutable: where no -shm can be made beside the file (a read-only directory) WAL mode cannot read it
        # otherwise; what the WAL holds is then unread, as ven.storage reads such a file
        for mode in ("mode=ro", "immutable=1"):
            self._mode = mode
            try:
                with closing(self._connect()) as db:
                    db.execute("SELECT 1 FROM forecast_minute LIMIT 1").fetchall()
                return mode
            except sqlite3.Error as err:
                error = err
        raise error

    # ---- history and model -------------------------------------------------------------
    def save_minutes(self, minutes, sums, counts) -> int:
        return self.save(minutes, sums, counts)

    def save(self, minutes, sums, counts, forecasts=()) -> int:
        """Minutes of history and issued forecasts in one transaction; returns the number of minutes."""
        rows = list(zip((int(k) for k in minutes), (float(s) for s in sums), (int(c) for c in counts)))
        forecasts = list(forecasts)
        if not rows and not forecasts:
            return 0
        with closing(self._connect()) as db, db:
            if rows:
                db.executemany("INSERT OR REPLACE INTO forecast_minute (minute, sum_kw, count) VALUES (?, ?, ?)",
                               rows)
            for f in forecasts:
                self._record(db, f)
        return len(rows)

    def save_model(self, blob: bytes | None) -> None:
        if blob is None:
            return
        with closing(self._connect()) as db, db:
            db.execute("INSERT OR REPLACE INTO forecast_model (id, saved_at, blob) VALUES (1, ?, ?)",
                       (time.time(), sqlite3.Binary(blob)))

    def import_minutes(self, minutes, sums, counts, sheds=()) -> tuple[int, int]:
        """A building's earlier history (edge-gateway import-history), in one transaction: minutes the file holds
        already keep their readings, `sheds` ((start, end) epoch seconds of the events the building shed for) are
        kept out of learning as the events the gateway ran are. A stored model was fitted without these minutes, or
        learned those events as normal hours: it is deleted, so the next start fits one at once. Returns how many
        minutes and how many events were added."""
        rows = list(zip((int(k) for k in minutes), (float(s) for s in sums), (int(c) for c in counts)))
        with closing(self._connect()) as db, db:
            before = db.total_changes
            db.executemany("INSERT OR IGNORE INTO forecast_minute (minute, sum_kw, count) VALUES (?, ?, ?)", rows)
            added = db.total_changes - before
            db.executemany("INSERT OR IGNORE INTO forecast_set_aside (start, end) VALUES (?, ?)",
                           [(float(a), float(b)) for a, b in sheds])
            new_sheds = db.total_changes - before - added
            if added or new_sheds:
                db.execute("DELETE FROM forecast_model")
        return added, new_sheds

    def held_means(self, first: int, last: int) -> dict[int, float]:
        """minute -> mean kW of the minutes stored in first..last (both in)."""
        with closing(self._connect()) as db:
            rows = self._usable(db.execute("SELECT minute, sum_kw, count FROM forecast_minute WHERE minute BETWEEN ? "
                                           "AND ?", (int(first), int(last))))
        return {k: total / n for k, total, n in rows}

    def load_into(self, fc: DemandForecaster, now: float | None = None, model: bool = True,
                  flags: bool = False) -> dict:
        """Restore history (within fc.keep_days of now), with `model` the model, and with `flags` the load
        flags as the last issue before `now` left them (on or off, and since when); returns what was loaded."""
        now = time.time() if now is None else now
        since = int((now - fc.keep_days * 86400) // 60)
        with closing(self._connect()) as db:
            rows = self._usable(db.execute("SELECT minute, sum_kw, count FROM forecast_minute WHERE minute >= ? "
                                           "ORDER BY minute", (since,)))
            blob = db.execute("SELECT blob FROM forecast_model WHERE id = 1").fetchone()
            sheds = self._sheds(db, since * 60.0)
            states = {col: self._readable_flag(db, col, now) for col in ("high_load", "low_load")} if flags else {}
        if flags:
            fc.restore_flags(states["high_load"], states["low_load"])
        if rows:
            ks, sums, counts = zip(*rows)
            fc.load_minutes(ks, sums, counts)
        model_ok = False
        if blob is not None and model:
            try:
                fc.set_model_blob(bytes(blob[0]))
                model_ok = True
            except OtherSettings as err:  # the configuration changed since the fit: expected, not a fault
                log.info("stored forecast model not used: %s (the configuration changed); a new one is fitted from "
                         "the stored history", err)
            except OtherVersion as err:  # an upgrade or a downgrade: expected, not a fault
                log.info("stored forecast model not used: %s (fitted by another version of edge-gateway); a new one "
                         "is fitted from the stored history", err)
            except Exception as err:  # unreadable otherwise (a library changed under it, a damaged blob): refit
                log.warning("stored forecast model not usable (%s: %s); will refit", type(err).__name__, err)
        loaded = {"minutes": len(rows), "model": model_ok, "set_aside": sheds}
        return {**loaded, "flags": states} if flags else loaded

    @staticmethod
    def _sheds(db: sqlite3.Connection, since: float) -> list[tuple[float, float]]:
        """The imported history's event sheds (import_minutes) that end after `since`. A file an older version made has
        no such table until this version opens it for writing: none then."""
        try:
            rows = db.execute("SELECT start, end FROM forecast_set_aside WHERE end > ? ORDER BY start",
                              (since,)).fetchall()
        except sqlite3.OperationalError:
            return []
        return [(float(a), float(b)) for a, b in rows
                if isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isfinite(a) and a < b]

    def _usable(self, rows) -> list[tuple[int, float, int]]:
        """The (minute, sum, count) rows the forecaster can take. One it cannot (a sum that is text or inf, a count
        not a whole number above 0, a minute after year 9999: a hand edit, a damaged page, another version) made the
        whole history fail to load: the forecaster started from nothing, said the file could not be written, and
        never stored again. Named in one WARNING (once: read again, they are not named again); left in the file,
        whose age prune removes it in time."""
        good, bad = [], []
        for k, total, n in rows:
            if (isinstance(total, (int, float)) and math.isfinite(total) and isinstance(n, int) and n > 0
                    and k <= LAST_MINUTE):
                good.append((k, float(total), n))
            else:
                bad.append((k, total, n))
        bad = [row for row in bad if row[0] not in self._unreadable_said]
        self._unreadable_said.update(k for k, _, _ in bad)
        if bad:
            log.warning("storage.path %s: %d stored minute(s) of forecaster history unreadable (minute %d: sum %r, "
                        "count %r): not used; the rest of the history is", self.path, len(bad), *bad[0])
        return good

    def _readable_flag(self, db, col: str, now: float) -> tuple[bool, float] | None:
        try:
            return self._flag_state(db, col, now)
        except (ValueError, TypeError, OverflowError) as err:
            log.warning("storage.path %s: the last stored %s unreadable (%s): it starts off", self.path,
                        col.replace("_", "-"), err)
            return None

    @staticmethod
    def _flag_state(db, col: str, now: float) -> tuple[bool, float] | None:
        """(on, since) of a flag at the last issue before `now`: since is the first issue of that run."""
        last = db.execute(f"SELECT {col} FROM forecast_issue WHERE issued_at <= ? ORDER BY issued_at DESC LIMIT 1",
                          (now,)).fetchone()
        if last is None:
            return None
        on = int(last[0])
        changed = db.execute(f"SELECT MAX(issued_at) FROM forecast_issue WHERE issued_at <= ? AND {col} != ?",
                             (now, on)).fetchone()[0]
        first = db.execute("SELECT MIN(issued_at) FROM forecast_issue WHERE issued_at <= ? AND issued_at > ?",
                           (now, -math.inf if changed is None else changed)).fetchone()[0]
        return bool(on), float(first)

    def reload_into(self, fc: DemandForecaster, since: float, until: float) -> int:
        """After a clock step: the stored minutes in (since, until] that fc does not hold; returns how many.
        Nothing after `until` (now): those minutes were stamped by a clock that ran ahead."""
        with closing(self._connect()) as db:
            rows = self._usable(db.execute("SELECT minute, sum_kw, count FROM forecast_minute WHERE minute > ? AND "
                                           "minute <= ? ORDER BY minute",
                                           (math.floor(since / 60), math.ceil(until / 60))))
        if not rows:
            return 0
        ks, sums, counts = zip(*rows)
        return fc.load_minutes(ks, sums, counts, fill_only=True)

    def prune(self, before_epoch: float) -> None:
        with closing(self._connect()) as db, db:
            self._prune(db, before_epoch)

    def prune_behind_newest(self, keep_seconds: float, now: float) -> None:
        """Prune what is `keep_seconds` older than the newest stored minute not after `now`. Unlike a prune
        by the wall clock this is safe at start-up, when the clock may still be far ahead: it can only
        delete what the next hourly prune would, yet a gateway restarted more often than hourly needs it,
        or its history and issued forecasts grow without end."""
        with closing(self._connect()) as db, db:
            newest = db.execute("SELECT MAX(minute) FROM forecast_minute WHERE minute <= ?",
                                (math.floor(now / 60),)).fetchone()[0]
            if newest is not None:
                self._prune(db, newest * 60.0 - keep_seconds)

    @staticmethod
    def _prune(db: sqlite3.Connection, before_epoch: float) -> None:
        db.execute("DELETE FROM forecast_minute WHERE minute < ?", (int(before_epoch // 60),))
        db.execute("DELETE FROM forecast_issue WHERE issued_at < ?", (before_epoch,))
        db.execute("DELETE FROM forecast_demand WHERE issued_at < ?", (before_epoch,))
        db.execute("DELETE FROM forecast_set_aside WHERE end < ?", (before_epoch,))

    def contents(self) -> dict:
        """What the forecaster keeps here: its minutes (how many, first and last epoch), whether a model is
        stored, and how many forecasts were issued; for `edge-gateway forget-forecast` to say what it deletes.
        first and last are the minutes' starts, as status() gives them: minute k holds the readings of
        (k-1)*60 .. k*60, and its end named a time a minute after the readings (after the gateway stopped)."""
        with closing(self._connect()) as db:
            n, first, last = db.execute("SELECT COUNT(*), (MIN(minute) - 1) * 60.0, (MAX(minute) - 1) * 60.0 "
                                        "FROM forecast_minute").fetchone()
            model = db.execute("SELECT COUNT(*) FROM forecast_model").fetchone()[0] > 0
            issued = db.execute("SELECT COUNT(*) FROM forecast_issue").fetchone()[0]
        return {"minutes": n, "first": first, "last": last, "model": model, "forecasts": issued}

    def forget(self) -> None:
        """Delete the forecaster's history, model and issued forecasts, in one transaction; the rest of the
        file (events, ADR-Opt-Out commands, queued telemetry) is another module's and stays."""
        with closing(self._connect()) as db, db:
            for table in ("forecast_minute", "forecast_model", "forecast_issue", "forecast_demand",
                          "forecast_set_aside"):
                db.execute(f"DELETE FROM {table}")

    # ---- issued forecasts --------------------------------------------------------------
    def record_forecast(self, f: Forecast) -> None:
        with closing(self._connect()) as db, db:
            self._record(db, f)

    @staticmethod
    def _record(db: sqlite3.Connection, f: Forecast) -> None:
        # columns named: a file a newer version gave more columns (then downgraded) still takes these rows
        db.execute("INSERT OR REPLACE INTO forecast_issue (issued_at, model, level_kw, rate_kw_per_min, high_load, "
                   "low_load, high_threshold_kw, low_threshold_kw) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (f.issued_at, f.model, f.level_kw, f.rate_kw_per_min, int(f.high_load), int(f.low_load),
                    f.high_threshold_kw, f.low_threshold_kw))
        db.executemany("INSERT OR REPLACE INTO forecast_demand (issued_at, horizon_minutes, target_time, "
                       "forecast_kw) VALUES (?, ?, ?, ?)",
                       [(f.issued_at, h, f.issued_at + h * 60, kw) for h, kw in f.demand_kw.items()])

    def history(self, since_epoch: float) -> dict:
        """Plain lists for the HTTP history endpoint: 1-minute power, forecasts by target time, flags; and
        "unreadable", what a damaged page that cut one of them short said (else None)."""
        unreadable: list[str] = []

        def rows(sql: str, *params) -> list[tuple]:
            # what reads before a damaged page (a page torn while the gateway runs): a chart of the rest, not none
            out = []
            try:
                out.extend(db.execute(sql, params))
            except sqlite3.DatabaseError as err:
                if isinstance(err, sqlite3.OperationalError):   # locked, unreadable: not a page torn
                    raise
                unreadable.append(str(err))
            return out
        with closing(self._connect()) as db:
            # the rows the forecaster takes, not SQLite's sum_kw / count: that drew a sum of 'abc' as 0 kW, '12.5kW'
            # as 12.5 and a count of -2 as a negative demand, where the forecaster saw no reading
            power = [(k * 60.0, total / n) for k, total, n in self._usable(rows(
                "SELECT minute, sum_kw, count FROM forecast_minute WHERE minute >= ? ORDER BY minute",
                int(since_epoch // 60)))]
            demand = rows("SELECT horizon_minutes, target_time, issued_at, forecast_kw FROM forecast_demand "
                          "WHERE target_time >= ? ORDER BY horizon_minutes, target_time", since_epoch)
            flags = rows("SELECT issued_at, high_load, low_load, high_threshold_kw, low_threshold_kw, model "
                         "FROM forecast_issue WHERE issued_at >= ? ORDER BY issued_at", since_epoch)
        forecasts: dict[int, dict[str, list]] = {}
        for h, target, issued, kw in demand:
            f = forecasts.setdefault(h, {"target_time": [], "issued_at": [], "forecast_kw": []})
            f["target_time"].append(target)
            f["issued_at"].append(issued)
            f["forecast_kw"].append(kw)
        return {
            "power": {"time": [r[0] for r in power], "kw": [r[1] for r in power]},
            "forecasts": forecasts,
            "flags": {"time": [r[0] for r in flags], "high_load": [bool(r[1]) for r in flags],
                      "low_load": [bool(r[2]) for r in flags], "high_threshold_kw": [r[3] for r in flags],
                      "low_threshold_kw": [r[4] for r in flags], "model": [r[5] for r in flags]},
            # SQLite's words for a damaged page that cut a read short (its rows up to it are above); None: all read
            "unreadable": unreadable[0] if unreadable else None,
        }
