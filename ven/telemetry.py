"""Store-and-forward queue for meter samples (TELEMETRY_USAGE), in the gateway's SQLite file.

Every sample is committed here before it is offered to the VTN and deleted only after the VTN
accepted the oadrUpdateReport that carried it. The queue is bounded by age: samples older than
`max_age` behind the newest one are dropped (oldest first) and counted.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import sqlite3
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from bacnet_api.settle import span

from .events import aware_time, reckonable
from .storage_connect import StorageError, connect
from .storage_damage import UNTIL_RESTART, ReadDamage, damaged, name_damage
from .storage_follow import follow_file
from .storage_fs_reason import with_fs_reason
from .storage_retry import LOCK_GRACE_SECONDS, LOCK_RETRY_SECONDS, Opening, ReopenTimer, locked
from .storage_salvage import check_late
from .storage_sidecars import file_identity

log = logging.getLogger(__name__)
QUEUE_TABLE = ("CREATE TABLE IF NOT EXISTS telemetry_queue ("
               " seq INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT NOT NULL, kw REAL NOT NULL)")
# Bounding by age runs with every sample: without this index each one scanned the whole queue (a week
# at a 1 s poll is 600k rows, tens of ms per sample on the event loop, more on a small box).
QUEUE_TS_INDEX = "CREATE INDEX IF NOT EXISTS telemetry_queue_ts ON telemetry_queue (ts)"
# The times of failed meter reads: an interval's mean taken from fewer readings than the meter was read for is
# marked so to the VTN (ven/report_intervals.py), after a restart too. A row per poll tick a failed read missed (the
# one it was asked at, those it overran), dated at that tick, is what a good one costs in the queue; they age out
# with it. `reads` is 1 (rows of the release before count for the ticks they took). Created on open, so a file from
# before it gains it (and an older release ignores it).
FAILED_TABLE = ("CREATE TABLE IF NOT EXISTS telemetry_failed_reads"
                " (ts TEXT PRIMARY KEY, reads INTEGER NOT NULL) WITHOUT ROWID")
# Where the gateway was not running (stopped, crashed, the machine off): from the meter's last read before (the
# newest reading or failed read stored, or the time a clean stop noted) to the first read after, with the poll then.
# Its poll ticks count as failed reads of the intervals they fall in: an interval sent from the readings before and
# after such a gap passed for one read throughout, and the utility settled on it so. One row a start (none when no
# tick was missed), pruned with the next; created on open, as telemetry_failed_reads.
GAPS_TABLE = ("CREATE TABLE IF NOT EXISTS telemetry_gaps (last_read TEXT PRIMARY KEY, resumed TEXT NOT NULL,"
              " poll_seconds REAL NOT NULL) WITHOUT ROWID")
# kv: a clean stop's last meter read. A crash leaves the newest row to say it, but a stop deletes the rows the VTN
# took, which may have been the newest.
LAST_READ_KEY = "meter_last_read"
# kv: the telemetry_last_delivery written with this version's places (a stream served alone: a minute apart and at
# the stop). One that differs, or none, says a version that wrote one stream's place only at its first update
# (0.3.0) ran on the file since: its places are lower bounds (TelemetryQueue.places_current)
PLACES_KEPT_KEY = "telemetry_places_delivery"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# A file from before the index that cannot take it (an upgrade over a week's backlog on a nearly full
# card: the index and its WAL need tens of MB) is used without it; building it is tried after this long,
# then twice as long each time up to an hour: each try reads the whole queue on the event loop.
INDEX_RETRY_SECONDS = 60.0
INDEX_RETRY_MAX_SECONDS = 3600.0
# Storage is often an SD card or eMMC, which small writes wear. The VTN's acceptance of a sample is
# committed with the next sample's INSERT, which rewrites the same pages (the queue's leaf, its index
# leaf) anyway, instead of in commits of its own: 2-3 WAL pages less per sample, 100 MB a day at the
# default cadence (bench/storage_writes.py). Until then the sample is only marked acknowledged in
# memory; a crash in between sends it again (delivery is at least once), and at most this many:
ACK_DEFER_MAX = 60
# telemetry_last_delivery (the status after a restart) is written with them at most this often
LAST_DELIVERY_SAVE_SECONDS = 60.0


@dataclass
class _Reader:
    """Where one of several report requests stands in the queue, in memory (a restart parks one per stored
    place, TelemetryQueue.places): every file row up to `floor` is taken, and `taken` holds the rows
    after it (and samples in memory) taken out of order, so its reads start at the floor."""
    floor: int = 0
    taken: set[int] = field(default_factory=set)

    def has(self, seq: int) -> bool:
        return 0 < seq <= self.floor or seq in self.taken


@dataclass(frozen=True)
class Sample:
    seq: int
    ts: datetime
    kw: float


class TelemetryQueue:
    """When the file stops taking writes (disk full, read-only), samples wait in memory instead, in
    order with the ones on disk, and are delivered from there; one ERROR line when that starts, one
    INFO line when the file takes writes again. Memory-held samples do not survive a restart.

    With `reopen_seconds`, a file that cannot be opened at start is the same case: samples wait in
    memory and the file is tried again at most that often; without it, StorageError."""

    def __init__(self, path: str | Path, max_age: timedelta = timedelta(days=7),
                 reopen_seconds: float | None = None, lock_grace_seconds: float = LOCK_GRACE_SECONDS, fault=None):
        """`fault`: the gateway's one storage fault (ven/storage_fault.py), told of the queue's writes failing and
        working again in place of the queue's own lines."""
        self.path = path
        self._fault = fault
        self._moved_out = 0     # samples memory held that went to the file since its writes failed
        self._found_note = ""   # what a file that opened late held, for the fault's end line
        self.max_age = max_age
        self._conn: sqlite3.Connection | None = None
        self._ident: tuple[int, int] | None = None
        self._dropped = 0
        self._dropped_saved = 0             # the count as telemetry_dropped holds it
        self.last_delivery: datetime | None = None
        self.delivered = 0      # samples accepted by the VTN since this process started
        self._dropping = False
        self._dropped_at_start = 0          # the count when the present episode of dropping began
        self._memory: list[Sample] = []     # samples the file would not take; negative seq numbers
        self._failed_memory: list[datetime] = []    # poll ticks of failed reads the file would not take (add_failed)
        self._failed_unreadable_said = False    # a stored failed read that is not a count: said once
        self._bound_damage_said = False     # damage that keeps the queue from dropping its oldest: said once
        self.read_damage = ReadDamage(path, log, fault)    # damage met by a read of the backlog (said once)
        self._acks_stuck = False    # the rows the VTN took are not deleted: their deletion meets damage
        self._counted: int | None = None        # the rows the file held, as last counted (pending)
        self._last_added: Sample | None = None  # the newest reading this run took (newest, on a torn last page)
        self._next_memory_seq = -1
        self.sent_total = 0                 # samples the VTN accepted since start (metrics)
        self._acked: set[int] = set()       # rows the VTN accepted not yet deleted (ACK_DEFER_MAX): never resent
        self._delivery_saved: datetime | None = None     # last_delivery as the file holds it
        self._moved: dict[int, int] = {}    # memory seq -> its row after the move to the file
        self._moved_back: dict[int, int] = {}   # the reverse: the move is forgotten once its row left
        # report requests served at once, each at its own place: a sample leaves the queue once all took it
        self._readers: dict[str, _Reader] = {}
        self._sent: set[int] = set()        # samples one request delivered that another has yet to take
        # samples a wall clock that was ahead dated (mark_ahead), by number: kept out of the intervals of those times
        self.ahead: dict[int, Sample] = {}
        # the time of the newest reading that left the queue (every request took it, or it aged out): a report
        # interval of a request that came after it and holding it is the mean of only the readings still queued
        self.left_until: datetime | None = None
        # per granularity in seconds, the end of the last interval the VTN took of that stream: kept in the file with
        # the deletions of its readings, so that after a restart a stream ahead of another goes on where it was
        self.places: dict[int, datetime] = {}
        self._places_saved: dict[int, datetime] = {}
        self._places_writing: dict[int, datetime] | None = None
        # the places the file held at the start are where the streams stood (within a minute), not where one served
        # alone stood when 0.3.0, run on the file since, first served it: a report may be dated from them
        self.places_current = False
        # the newest reading the file held when it opened only after the start (a full or read-only disk then): the
        # readings up to it were queued before this start, and are sent after the newer intervals (VtnReports)
        self.found_late_until: datetime | None = None
        # while the file refuses writes, samples go to memory and the file is tried this often, not
        # with every sample: each try can wait BUSY_TIMEOUT_SECONDS on the event loop
        self._retry_seconds = reopen_seconds or 0.0
        self._retry: ReopenTimer | None = None
        self._index_retry: ReopenTimer | None = None     # set while the queue has no index on ts
        self._opening = Opening(self._open, reopen_seconds, "telemetry samples wait in memory until it opens",
                                say=fault is None, grace_seconds=lock_grace_seconds)
        self.write_error = self._opening.error
        if self.write_error is not None and not self._opening.quiet:    # a lock at the start is said by _failed
            if fault is not None:
                fault.failed("telemetry", self.write_error)
            elif locked(self.write_error):     # open_or_retry_later said the other faults
                log.warning("storage.path %s: cannot write the telemetry queue (%s): samples wait in memory until it "
                            "can; a restart before then loses them", self.path,
                            self.write_error.removeprefix(f"storage.path {self.path}: "))

    def _open(self, late: bool = False) -> None:
        conn = connect(self.path, QUEUE_TABLE)
        try:
            conn.execute(FAILED_TABLE)
            conn.execute(GAPS_TABLE)
        except sqlite3.Error as err:
            conn.close()
            raise StorageError(f"storage.path {self.path}: cannot open SQLite database for writing: {err}") from None
        self._index(conn)
        dropped = conn.execute("SELECT value FROM kv WHERE key = 'telemetry_dropped'").fetchone()
        last = conn.execute("SELECT value FROM kv WHERE key = 'telemetry_last_delivery'").fetchone()
        places = conn.execute("SELECT value FROM kv WHERE key = 'telemetry_places'").fetchone()
        kept = conn.execute("SELECT value FROM kv WHERE key = ?", (PLACES_KEPT_KEY,)).fetchone()
        self.places_current = places is None or (last is not None and kept == last)
        self._conn, self._ident = conn, file_identity(self.path)
        self._dropped_saved = self._stored("telemetry_dropped", dropped, int) or 0
        self._dropped += self._dropped_saved
        stored = self._stored("telemetry_last_delivery", last, aware_time)
        if stored is not None:
            self.last_delivery = stored if self.last_delivery is None else max(stored, self.last_delivery)
        self._places_saved = self._stored("telemetry_places", places, _places) or {}
        self.places = {**self._places_saved, **self.places}
        waiting, oldest, newest = conn.execute("SELECT COUNT(*), MIN(ts), MAX(ts) FROM telemetry_queue").fetchone()
        if waiting:
            # after a crash with the VTN away, the operator's question is whether the backlog survived; it was
            # said only once delivered, which the VTN's absence could put off for days
            oldest = _stamp(oldest)
            if late and self._fault is not None:    # said in the storage fault's end line
                self._found_note = (f"{waiting} telemetry reading(s) queued in it before this start (the oldest "
                                    f"{oldest}) are sent after the newer intervals")
            else:
                log.info("storage.path %s: %d telemetry reading(s) in it wait for the VTN (the oldest %s)%s",
                         self.path, waiting, oldest, "; queued before this start, which the file did not take, they "
                         "are sent after the newer intervals" if late else "")
            if late:
                self.found_late_until = self._stored("the newest queued reading", (newest,), aware_time)

    def _stored(self, key: str, row, parse):
        # A value in another form (a newer version's, after a downgrade; an edit by hand) raised out of every
        # start: these are the status's counts, not worth the BAS's device. Written again in this form.
        if row is None:
            return None
        try:
            return parse(row[0])
        except (ValueError, TypeError) as err:
            log.warning("storage.path %s: stored %s %.80r unreadable (%.80s), perhaps written by a newer edge-gateway: "
                        "not used, and replaced by this version's own once that changes", self.path, key, row[0], err)
            return None

    def _index(self, conn: sqlite3.Connection) -> None:
        """Index the queue on ts (a file from before the index gets it at the first start). The index
        only speeds bounding up: a file that cannot take it still queues and delivers what it holds,
        bounding by a scan as before, and the index is tried again later (INDEX_RETRY_SECONDS, doubling)."""
        try:
            conn.execute(QUEUE_TS_INDEX)
        except sqlite3.Error as err:
            if self._index_retry is None:
                log.warning("storage.path %s: cannot index the telemetry queue (%s): the queue works without "
                            "the index (bounding its age scans it, slower with a large backlog); tried again "
                            "in %g s, then less and less often", self.path, err, INDEX_RETRY_SECONDS)
            delay = INDEX_RETRY_SECONDS if self._index_retry is None else min(
                2 * self._index_retry.seconds, INDEX_RETRY_MAX_SECONDS)
            self._index_retry = ReopenTimer(delay)
            return
        if self._index_retry is not None:
            log.info("storage.path %s: telemetry queue indexed", self.path)
            self._index_retry = None

    def _db(self) -> sqlite3.Connection:
        """The file's connection; opens it if it was not there at start and it is time to try again."""
        if self._conn is None:
            if not self._opening.timer.due():
                raise sqlite3.OperationalError(self.write_error)
            check_late(self.path)
            try:
                self._open(late=True)
            except StorageError as err:
                raise sqlite3.OperationalError(str(err)) from None
        try:
            conn, self._ident = follow_file(self._conn, Path(self.path), self._ident, QUEUE_TABLE)
        except StorageError as err:
            raise sqlite3.OperationalError(str(err)) from None
        if conn is not self._conn:
            self._conn = conn
            conn.execute(FAILED_TABLE)      # another connection may have made the file anew without them
            conn.execute(GAPS_TABLE)
        return self._conn

    def _failed(self, err: sqlite3.Error) -> None:
        unsaid = self.write_error is None or self._opening.quiet
        if self._opening.excuses(err, failing=self.write_error is not None):
            # samples wait in memory; the next one tries again if a second has passed
            self._retry = ReopenTimer(min(LOCK_RETRY_SECONDS, self._retry_seconds))
            return
        why = with_fs_reason(str(err), self.path)
        if unsaid:
            why = name_damage(why, self._conn)
            if self._fault is not None:
                self._fault.failed("telemetry", why)
            elif damaged(why):
                log.error("storage.path %s is damaged (%s): samples wait in memory; %s", self.path, why,
                          UNTIL_RESTART)
            else:   # a lock is another process's, and passes: a warning, as the storage fault says it
                log.log(logging.WARNING if locked(why) else logging.ERROR, "storage.path %s: cannot write the "
                        "telemetry queue (%s): samples wait in memory until it can; a restart before then loses "
                        "them", self.path, why)
            self._moved_out = 0
        if unsaid or not damaged(self.write_error):     # one named, kept: the same damage met again
            self.write_error = why
        self._retry = ReopenTimer(self._retry_seconds)

    def _write(self, sql: str, params=()) -> bool:
        try:
            self._db().execute(sql, params)
        except sqlite3.Error as err:
            self._failed(err)
            return False
        return True

    def _memory_to_file(self) -> bool:
        """Move the samples held in memory into the file, in one transaction; True if memory is empty."""
        if not self._memory and not self._failed_memory:
            return True
        moved = []
        try:
            db = self._db()
            db.execute("BEGIN")
            for s in self._memory:
                cur = db.execute("INSERT INTO telemetry_queue (ts, kw) VALUES (?, ?)", (s.ts.isoformat(), s.kw))
                moved.append((s.seq, int(cur.lastrowid)))
            db.executemany("INSERT OR IGNORE INTO telemetry_failed_reads (ts, reads) VALUES (?, 1)",
                           [(ts.isoformat(),) for ts in self._failed_memory])
            db.execute("COMMIT")
        except sqlite3.Error as err:
            self._rollback()
            self._failed(err)
            return False
        self._moved.update(moved)       # a batch peeked before the move is acked by its old numbers
        self._moved_back.update((row, seq) for seq, row in moved)
        moved_to = dict(moved)
        for r in self._readers.values():
            r.taken = {moved_to.get(seq, seq) for seq in r.taken}
        self._sent = {moved_to.get(seq, seq) for seq in self._sent}
        self.ahead = {moved_to.get(seq, seq): replace(x, seq=moved_to.get(seq, seq)) for seq, x in self.ahead.items()}
        self._moved_out += len(moved)
        self._memory.clear()
        self._failed_memory.clear()
        return True

    def _rollback(self) -> None:
        if self._conn is not None and self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _write_acks(self, db: sqlite3.Connection, every: float = LAST_DELIVERY_SAVE_SECONDS) -> datetime | None:
        """In the caller's transaction: delete the acknowledged rows, and save last_delivery if it moved
        `every` seconds since it was; returns the last_delivery written."""
        if self._acked and not self._acks_stuck:
            db.executemany("DELETE FROM telemetry_queue WHERE seq = ?", [(seq,) for seq in self._acked])
        if self._dropped != self._dropped_saved:
            # the unreadable rows (_samples) leave the file here: their count with them, or a restart forgot it
            db.execute("INSERT INTO kv (key, value) VALUES ('telemetry_dropped', ?)"
                       " ON CONFLICT(key) DO UPDATE SET value=excluded.value", (str(self._dropped),))
        self._places_writing = None
        if self._acks_stuck:
            # the readings the VTN took stay in the file now, and only the stream's place keeps the next run from
            # sending them again: a place a minute old sent that minute's again after a crash, thousands of readings
            # while a backlog went (not the ACK_DEFER_MAX a deletion waits for)
            every = 0.0
        due, saved = self.last_delivery, self._delivery_saved
        delivery_due = not (due is None or due == saved
                            or (saved is not None and abs(due - saved) < timedelta(seconds=every)))
        # A place matters beside another stream: one stream alone deletes what it took. Written with every update
        # it cost a page of the kv table per sample's commit: 42.4 MB a day instead of 33.5 (storage_writes.py).
        # Alone, it is written with last_delivery (a minute apart, and at the stop): the next run's first report is
        # dated from it, and one kept from the stream's first update dated it hours back, over intervals the VTN
        # had, which then read as not measured
        if self.places != self._places_saved and (len(self._readers) > 1 or delivery_due or every == 0
                                                   or self.places.keys() != self._places_saved.keys()):
            self._places_writing = dict(self.places)
            db.execute("INSERT INTO kv (key, value) VALUES ('telemetry_places', ?)"
                       " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                       (json.dumps({str(g): t.isoformat() for g, t in sorted(self.places.items())}),))
        if not delivery_due:
            return None
        db.execute("INSERT INTO kv (key, value) VALUES ('telemetry_last_delivery', ?)"
                   " ON CONFLICT(key) DO UPDATE SET value=excluded.value", (due.isoformat(),))
        db.execute("INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                   (PLACES_KEPT_KEY, due.isoformat()))
        return due

    def _acks_written(self, saved: datetime | None) -> None:
        if not self._acks_stuck:
            self._acked.clear()
        if self._places_writing is not None:
            self._places_saved = self._places_writing
        self._dropped_saved = self._dropped
        if saved is not None:
            self._delivery_saved = saved

    def _save_acks(self, every: float = LAST_DELIVERY_SAVE_SECONDS) -> None:
        """Write the acknowledgements now, in a transaction of their own; kept for the next try if it fails."""
        try:
            db = self._db()
            db.execute("BEGIN")
            saved = self._write_acks(db, every)
            db.execute("COMMIT")
        except sqlite3.Error:
            self._rollback()
        else:
            self._acks_written(saved)

    def _writable_again(self) -> None:
        self._retry = None
        unsaid = self._opening.done()
        if self.write_error is not None:
            self.write_error = None
            if self._fault is not None:
                self._fault.written("telemetry", self._moved_out, self._found_note)
            elif not unsaid:
                log.info("storage.path %s: telemetry queue written to disk again", self.path)
        self._moved_out, self._found_note = 0, ""

    def try_file(self) -> None:
        """While the file refuses the queue's writes, try it again when due, with nothing new to write: with
        openadr.telemetry false no reading comes to try it, and the queue's error kept the storage fault (its end
        line, /healthz, edge_gateway_storage_writable) open until a restart, long after the file took writes."""
        if self.write_error is None or (self._retry is not None and not self._retry.due()):
            return
        if self._memory or self._failed_memory:
            if self._memory_to_file():
                self._writable_again()
            return
        try:
            db = self._db()     # a file that would not open: opening it probes a write
            # one that refused a write: write a row again (SQLite writes a row updated to its own value)
            db.execute("UPDATE kv SET value = value WHERE key = 'opened_at'")
        except sqlite3.Error as err:
            self._failed(err)
            return
        self._writable_again()

    def add(self, ts: datetime, kw: float) -> int:
        """Commit one sample (to memory while the file fails); returns its sequence number."""
        ts = _utc(ts)
        # while older samples wait in memory, newer ones queue behind them
        if (self._retry is None or self._retry.due()) and self._memory_to_file():
            try:
                cur, saved = self._insert(ts, kw)
            except sqlite3.Error as err:
                self._rollback()
                if not (damaged(str(err)) and self._acked and not self._acks_stuck):
                    self._failed(err)
                    cur = None
                else:
                    # the readings the VTN took, deleted beside a torn page of the backlog (which SQLite rebalances
                    # into): that failed each reading's write, and every reading after went to memory, which the
                    # restart the damage asks for loses. They stay in the file, not sent again in this run; the next
                    # one drops them as reported (its place in the stream)
                    self._acks_stuck = True
                    try:
                        cur, saved = self._insert(ts, kw)
                    except sqlite3.Error as again:
                        self._rollback()
                        self._failed(again)
                        cur = None
            if cur is not None:
                self._acks_written(saved)
                self._writable_again()
                self._last_added = Sample(int(cur.lastrowid), ts, float(kw))
                self._bound(ts)
                return int(cur.lastrowid)
        seq = self._next_memory_seq
        self._next_memory_seq -= 1
        self._memory.append(Sample(seq, ts, float(kw)))
        self._last_added = self._memory[-1]
        self._bound(ts)
        return seq

    def _insert(self, ts: datetime, kw: float) -> tuple[sqlite3.Cursor, datetime | None]:
        """One sample and the acknowledgements waiting, in one transaction: (its cursor, the last_delivery written)."""
        db = self._db()
        db.execute("BEGIN")
        cur = db.execute("INSERT INTO telemetry_queue (ts, kw) VALUES (?, ?)", (ts.isoformat(), float(kw)))
        saved = self._write_acks(db)
        db.execute("COMMIT")
        return cur, saved

    def add_failed(self, *ticks: datetime) -> None:
        """Commit one failed meter read (to memory while the file fails): the poll ticks it was missing from, a row
        each; and forget those older than the queue keeps readings. Their intervals then go to the VTN marked as the
        mean of fewer readings than were due (ven/report_intervals.py)."""
        ticks = tuple(_utc(ts) for ts in ticks)
        cutoff = max(ticks) - self.max_age
        self._failed_memory = [t for t in self._failed_memory if t >= cutoff]
        if (self._retry is None or self._retry.due()) and self._memory_to_file():
            try:
                db = self._db()
                db.execute("BEGIN")
                db.executemany("INSERT OR IGNORE INTO telemetry_failed_reads (ts, reads) VALUES (?, 1)",
                               [(ts.isoformat(),) for ts in ticks])
                db.execute("DELETE FROM telemetry_failed_reads WHERE ts < ?", (cutoff.isoformat(),))
                db.execute("COMMIT")
            except sqlite3.Error as err:
                self._rollback()
                self._failed(err)
            else:
                self._writable_again()
                return
        self._failed_memory += ticks

    def note_last_read(self, ts: datetime) -> None:
        """A clean stop: the time of the meter's last read, where the next start's gap begins (note_gap)."""
        self._write("INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                    (LAST_READ_KEY, _utc(ts).isoformat()))

    def last_read(self) -> datetime | None:
        """The meter's last read before this start: the newest stored, or the one a clean stop noted."""
        try:
            db = self._db()
            said = [db.execute("SELECT value FROM kv WHERE key = ?", (LAST_READ_KEY,)).fetchall(),
                    # a few: a row that is not a time (kept until the queue drops it) must not hide the rest
                    db.execute("SELECT ts FROM telemetry_queue ORDER BY ts DESC LIMIT 4").fetchall(),
                    db.execute("SELECT ts FROM telemetry_failed_reads ORDER BY ts DESC LIMIT 4").fetchall()]
        except sqlite3.Error:
            return None     # unreadable now: the gap goes unmarked, as a failed read is then
        newest = [next((t for t in (_time_or_none(ts) for ts, in rows) if t is not None), None) for rows in said]
        return max((t for t in newest if t is not None), default=None)

    def note_gap(self, last: datetime, resumed: datetime, poll_seconds: float) -> bool:
        """The meter is read again from `resumed` after the gateway was not running since `last` (last_read): keep
        the poll ticks missed between, which count as failed reads of their intervals, in place of any kept for
        that `last` (a start re-dated when the wall clock stepped). True if a tick was missed."""
        last, resumed = _utc(last), _utc(resumed)
        missed = _ticks_missed(last, resumed, poll_seconds)
        try:
            db = self._db()
            db.execute("BEGIN")
            if missed:
                db.execute("INSERT OR REPLACE INTO telemetry_gaps (last_read, resumed, poll_seconds) VALUES (?, ?, ?)",
                           (last.isoformat(), resumed.isoformat(), float(poll_seconds)))
                db.execute("DELETE FROM telemetry_gaps WHERE resumed < ?", ((resumed - self.max_age).isoformat(),))
            else:
                db.execute("DELETE FROM telemetry_gaps WHERE last_read = ?", (last.isoformat(),))
            db.execute("DELETE FROM kv WHERE key = ?", (LAST_READ_KEY,))     # the next gap begins at a later read
            db.execute("COMMIT")
        except sqlite3.Error as err:
            self._rollback()
            self._failed(err)
            return False
        return missed

    def mark_ahead(self, now: datetime) -> int:
        """The wall clock stepped back to `now`: the samples queued dated after it were dated by the clock that was
        ahead. Marked, so that a request reporting them once their times have come does not average them with the
        readings really taken then (helper ledger41). Returns how many."""
        cut = _utc(now)
        found = [x for x in self._memory if x.ts > cut]
        try:
            rows = self._db().execute("SELECT seq, ts, kw FROM telemetry_queue WHERE ts > ?",
                                      (cut.isoformat(),)).fetchall()
            found += self._samples([r for r in rows if r[0] not in self._acked])
        except sqlite3.Error:
            pass    # the file unreadable now: only those in memory are known
        self.ahead.update((x.seq, x) for x in found)
        return len(found)

    def ahead_due(self, reader: str | None, until: datetime) -> list[Sample]:
        """The marked samples `reader` has not taken, dated up to `until` (no longer ahead of the clock)."""
        r = self._readers.get(reader) if reader is not None else None
        return sorted((x for seq, x in self.ahead.items() if x.ts <= until and seq not in self._acked
                       and (r is None or not r.has(seq))), key=lambda x: x.seq)

    def end_gaps_at(self, ts: datetime) -> None:
        """The clock stepped back to `ts`: a gap noted as running past it (to a time of the clock that was ahead)
        ends there, and one that began after it never was."""
        at = _utc(ts).isoformat()
        try:
            db = self._db()
            db.execute("BEGIN")
            db.execute("DELETE FROM telemetry_gaps WHERE last_read >= ?", (at,))
            db.execute("UPDATE telemetry_gaps SET resumed = ? WHERE resumed > ?", (at, at))
            db.execute("COMMIT")
        except sqlite3.Error as err:
            self._rollback()
            self._failed(err)

    def _gap_ticks(self, db: sqlite3.Connection, start: datetime, end: datetime) -> int:
        """The poll ticks in [start, end) the gateway was not running for (note_gap)."""
        n = 0
        s, e = _us(start), _us(end)
        for row in db.execute("SELECT last_read, resumed, poll_seconds FROM telemetry_gaps"
                              " WHERE last_read < ? AND resumed > ?", (end.isoformat(), start.isoformat())):
            last, resumed, poll = _time_or_none(row[0]), _time_or_none(row[1]), row[2]
            if last is None or resumed is None or isinstance(poll, bool) or not isinstance(poll, (int, float)) \
                    or not 1e-6 <= poll <= 86400:
                self._unreadable("not running from %.40r to %.40r, poll %.40r" % row)
                continue
            poll_us = round(poll * 1e6)
            # the ticks after the last read's, before the one the first read after stood for
            first = max(_us(last) // poll_us + 1, -(-s // poll_us))
            final = min(_us(resumed) // poll_us - 1, -(-e // poll_us) - 1)
            n += max(0, final - first + 1)
        return n

    def failed_reads(self, start: datetime, end: datetime) -> int:
        """How many poll ticks in [start, end) the meter's reads failed for, or the gateway was not running."""
        n = sum(start <= t < end for t in self._failed_memory)
        try:
            db = self._db()
            rows = db.execute("SELECT ts, reads FROM telemetry_failed_reads WHERE ts >= ? AND ts < ?",
                              (start.isoformat(), end.isoformat())).fetchall()
            n += self._gap_ticks(db, start, end)
        except sqlite3.Error as err:
            # unreadable now: the interval goes unmarked rather than not at all; a torn page of the table said once
            self.read_damage.met(err, self._conn, "the telemetry queue cannot read the meter's failed reads stored "
                                 "in it, and reports their intervals as if they had been read")
            return n
        # a count that is not one (1e400 reads, text: a hand edit, a damaged page, another version) raised
        # OverflowError out of every update, and no telemetry reached the VTN: skipped, and aged out with the rest
        good = [reads for _, reads in rows if isinstance(reads, int) and reads >= 1]
        bad = [(ts, reads) for ts, reads in rows if not (isinstance(reads, int) and reads >= 1)]
        if bad:
            self._unreadable("at %.40r: reads %.40r" % bad[0])
        return n + sum(good)

    def _unreadable(self, what: str) -> None:
        if not self._failed_unreadable_said:
            self._failed_unreadable_said = True
            log.warning("storage.path %s: stored failed meter read(s) unreadable (%s): not counted; the intervals are "
                        "sent", self.path, what)

    def _bound(self, newest: datetime) -> None:
        cutoff = newest - self.max_age
        gone = {s.seq for s in self._memory if s.ts < cutoff}
        self._memory = [s for s in self._memory if s.ts >= cutoff]
        self._failed_memory = [t for t in self._failed_memory if t >= cutoff]
        n = len(gone)
        first_row = 0
        if self._retry is None:  # while writes fail, the file's rows are bounded once it takes them again
            if self._index_retry is not None and self._index_retry.due():
                try:
                    self._index(self._db())
                except sqlite3.Error:
                    pass
            try:
                deleted = self._db().execute("DELETE FROM telemetry_queue WHERE ts < ?", (cutoff.isoformat(),)).rowcount
                self._db().execute("DELETE FROM telemetry_failed_reads WHERE ts < ?", (cutoff.isoformat(),))
                n += deleted
                if deleted:
                    first_row = self._db().execute("SELECT MIN(seq) FROM telemetry_queue").fetchone()[0] or math.inf
            except sqlite3.Error as err:
                # the rows stay queued; bounding is retried with the next sample. Damage (a torn page of the index it
                # goes by) fails it at every sample for the rest of the run, while the readings still go in: the
                # queue grew past max_age with nothing said
                if damaged(str(err)) and not self._bound_damage_said and self.read_damage.error is None:
                    self._bound_damage_said = True
                    log.error("storage.path %s is damaged (%s): the telemetry queue cannot drop its readings older "
                              "than %s, and grows; %s", self.path, name_damage(str(err), self._conn),
                              span(self.max_age.total_seconds()), UNTIL_RESTART)
        if gone or first_row:
            # those one request delivered, held for another, reached the VTN: counted delivered then, not dropped now
            n -= sum(1 for seq in self._sent if seq in gone or 0 < seq < first_row)
            self._forget(lambda seq: seq in gone or 0 < seq < first_row)
        if n > 0:
            self._left(cutoff)      # the rows deleted were dated before it
            if not self._dropping:
                log.warning("telemetry queue holds %s of samples: dropping the oldest "
                            "(counted in the status) until the VTN takes the backlog", span(self.max_age.total_seconds()))
                self._dropping, self._dropped_at_start = True, self._dropped
            self._dropped += n
            if self._write("INSERT INTO kv (key, value) VALUES ('telemetry_dropped', ?)"
                           " ON CONFLICT(key) DO UPDATE SET value=excluded.value", (str(self._dropped),)):
                self._dropped_saved = self._dropped

    def drop_after(self, ts: datetime) -> int:
        """Forget the samples and failed reads dated after `ts`, by a clock that was ahead (the run before's, when NTP
        keeps this one): reported, they would join intervals not theirs. Those not yet delivered are counted as
        dropped; returns how many."""
        cut = _utc(ts)
        gone = {s.seq for s in self._memory if s.ts > cut}
        self._memory = [s for s in self._memory if s.ts <= cut]
        self._failed_memory = [t for t in self._failed_memory if t <= cut]
        try:
            db = self._db()
            db.execute("BEGIN")
            gone |= {seq for seq, in db.execute("SELECT seq FROM telemetry_queue WHERE ts > ?", (cut.isoformat(),))}
            db.execute("DELETE FROM telemetry_queue WHERE ts > ?", (cut.isoformat(),))
            db.execute("DELETE FROM telemetry_failed_reads WHERE ts > ?", (cut.isoformat(),))
            db.execute("COMMIT")
        except sqlite3.Error as err:
            self._rollback()
            self._failed(err)
        delivered = gone & self._acked    # taken by the VTN, their deletion deferred: not lost
        self._acked -= gone
        self._forget(gone.__contains__)
        self._dropped += len(gone) - len(delivered)     # written with the next acknowledgements
        return len(gone) - len(delivered)

    def _forget(self, gone: Callable[[int], bool]) -> None:
        """Forget the samples `gone` names, left the queue: what one request took of them, the others behind, and
        their moves to the file; else kept for good, a number a reading."""
        self._sent = {seq for seq in self._sent if not gone(seq)}
        self.ahead = {seq: x for seq, x in self.ahead.items() if not gone(seq)}
        for r in self._readers.values():
            r.taken = {seq for seq in r.taken if not gone(seq)}
        for row in [row for row in self._moved_back if gone(row)]:
            self._moved.pop(self._moved_back.pop(row), None)

    def _file_rows(self, limit: int, reader: _Reader | None = None) -> tuple[list[Sample], bool]:
        """The oldest rows `reader` has not taken, and whether they read to the end asked (no damage met)."""
        floor, taken = (reader.floor, reader.taken) if reader is not None else (0, set())
        rows = []
        try:
            # row by row: those before a damaged page still go to the VTN, in order
            rows.extend(self._db().execute("SELECT seq, ts, kw FROM telemetry_queue WHERE seq > ? ORDER BY seq LIMIT ?",
                                           (floor, limit + len(self._acked) + len(taken))))
        except sqlite3.Error as err:
            # a torn page of the backlog: every read of it failed and returned nothing, and no reading reached the
            # VTN from then on, with nothing said. What lies behind it stays in the file, in order, for the restart
            # (whose salvage keeps every row that reads), and what memory holds behind that: reported after newer
            # ones, they could not be reported then
            if self._backlog_damaged(err):
                return self._samples([r for r in rows if r[0] not in self._acked and r[0] not in taken]), False
        return self._samples([r for r in rows if r[0] not in self._acked and r[0] not in taken]), True

    def _backlog_damaged(self, err: sqlite3.Error) -> bool:
        damage = self.read_damage.met(
            err, self._conn, "the telemetry queue cannot read the readings queued past its damaged page, and none of "
            "them or after them go to the VTN until a restart (they stay in the file)")
        self._bound_damage_said |= damage
        return damage

    def peek(self, limit: int = 100, reader: str | None = None) -> list[Sample]:
        """The oldest waiting samples, in order; with `reader`, those that report request has not taken."""
        r = self._readers.get(reader) if reader is not None else None
        rows, whole = self._file_rows(limit, r)
        rows = rows[:limit]
        if not whole:
            return rows
        # Memory only ever holds samples newer than every row in the file (see add). Only what is wanted of it
        # is copied: /metrics peeks at the oldest one at each scrape, with an outage's samples held here.
        memory = self._memory if r is None else (s for s in self._memory if s.seq not in r.taken)
        return rows + list(itertools.islice(memory, limit - len(rows)))

    def add_reader(self, name: str) -> None:
        """A report request served beside others: it reads from the oldest sample queued."""
        self._readers.setdefault(name, _Reader())

    def drop_reader(self, name: str) -> None:
        """The request is no longer served: what every request left has taken leaves the queue now. With none
        left, what it took stays for the next request (it took it, the others never did)."""
        if self._readers.pop(name, None) is not None:
            self.leave_taken()

    def leave_taken(self) -> None:
        """The readings every request served has taken leave the queue."""
        if not self._readers:
            return
        readers = list(self._readers.values())
        # rows up to the furthest any took, with their times: what leaves now is said in left_until
        last = max([r.floor for r in readers] + [seq for r in readers for seq in r.taken])
        try:
            rows = dict(self._db().execute("SELECT seq, ts FROM telemetry_queue WHERE seq <= ?", (last,)))
        except sqlite3.Error:
            rows = {}
        done = {seq for seq in {*rows, *(seq for r in readers for seq in r.taken)}
                if seq not in self._acked and all(r.has(seq) for r in readers)}
        for r in readers:
            r.taken -= done
        if done:
            stamps = [rows[seq] for seq in done if seq in rows and isinstance(rows[seq], str)]
            try:
                newest = [aware_time(max(stamps))] if stamps else []     # one zone: ISO text sorts as the times do
            except ValueError:
                newest = []     # a damaged row: _samples drops and names it
            self._left(max(newest + [s.ts for s in self._memory if s.seq in done], default=None))
            self._remove(done)

    def park_reader(self, name: str, before: datetime) -> None:
        """A stream of the last run, whose readings dated before `before` went to the VTN (its place): a reader
        that has taken them, held for the same stream requested again."""
        try:
            rows = self._db().execute("SELECT seq FROM telemetry_queue WHERE ts < ?", (_utc(before).isoformat(),))
            taken = {seq for seq, in rows}
        except sqlite3.Error:
            taken = set()
        self._readers[name] = reader = _Reader(taken=taken)
        # delivered by that stream in the run before: held for the others, not `pending` again (helper verify41)
        self._sent |= taken
        if taken:
            self._raise_floor(reader)

    def set_place(self, granularity: timedelta, until: datetime | None) -> None:
        """Where the stream of this granularity stands (None: it stands nowhere), written with the next deletions."""
        key = round(granularity.total_seconds())
        if until is None:
            self.places.pop(key, None)
        else:
            self.places[key] = _utc(until)

    def rename_reader(self, old: str, new: str) -> None:
        """A request takes up the place in the queue of one that ended (the same stream, requested again)."""
        if old in self._readers and new not in self._readers:
            self._readers[new] = self._readers.pop(old)

    def _left(self, ts: datetime | None) -> None:
        if ts is not None and (self.left_until is None or ts > self.left_until):
            self.left_until = ts

    def _take(self, name: str, seqs: set[int], delivered: bool) -> set[int]:
        """`name` took these: the ones every request has taken now, which leave the queue."""
        reader = self._readers.get(name)     # None: the request ended, only the others count
        seqs = {self._moved.get(seq, seq) for seq in seqs}     # a batch peeked before a move to the file
        others = [r for n, r in self._readers.items() if n != name]
        done = {seq for seq in seqs if all(r.has(seq) for r in others)}
        if reader is not None:
            reader.taken |= seqs - done
        if delivered:
            # counted as delivered now, not once the last request has taken them too: with a stream parked for its
            # request (one of the run before), `delivered` stayed 0 while the VTN took every interval (helper ledger41)
            first = seqs - done - self._sent
            self.delivered += len(first)
            self.sent_total += len(first)
            self._sent |= first
        for r in self._readers.values():
            r.taken -= done
        if reader is not None and any(seq > 0 for seq in reader.taken):
            self._raise_floor(reader)
        return done

    def _raise_floor(self, reader: _Reader) -> None:
        """Move the floor over the rows taken in order: its reads skip them in SQL, not in Python."""
        try:
            rows = self._db().execute("SELECT seq FROM telemetry_queue WHERE seq > ? ORDER BY seq LIMIT ?",
                                      (reader.floor, len(reader.taken) + len(self._acked) + 1)).fetchall()
        except sqlite3.Error:
            return
        for seq, in rows:
            if seq not in reader.taken and seq not in self._acked:
                break
            reader.floor = seq
        reader.taken = {seq for seq in reader.taken if seq < 0 or seq > reader.floor}

    def newest(self) -> Sample | None:
        """The latest waiting sample (a one-shot report sends it without taking it from the queue)."""
        if self._memory:
            return self._memory[-1]
        try:
            rows = self._db().execute("SELECT seq, ts, kw FROM telemetry_queue ORDER BY seq DESC LIMIT ?",
                                      (1 + len(self._acked),)).fetchall()
        except sqlite3.Error as err:
            # a torn last page: a one-shot request waited for a reading for good, with nothing said. The one added
            # last is the newest (memory holds none: they would be above)
            if not self.read_damage.met(err, self._conn, "the telemetry queue cannot read its newest readings, and "
                                        "one-shot reports get the one it took last"):
                return None
            last = self._last_added
            return last if last is not None and last.seq not in self._acked else None
        return next(iter(self._samples([r for r in rows if r[0] not in self._acked])), None)

    def _samples(self, rows) -> list[Sample]:
        """The queue's (seq, ts, kw) rows as samples. A row that is not one (a time that does not parse or has no
        zone, a kW that is text or inf: a hand edit, a damaged page, another version) raised out of every report
        and /metrics scrape, and the queue behind it was never sent. Dropped as the VTN's rows are (deleted with the
        next write), counted in the status, and named in a WARNING."""
        out, bad = [], []
        for seq, ts, kw in rows:
            try:
                t = reckonable(aware_time(ts), timedelta(days=1))  # report intervals reckon around it
                if isinstance(kw, bool) or not isinstance(kw, (int, float)) or not math.isfinite(kw):
                    raise ValueError("not a number of kW")
            except (ValueError, TypeError, OverflowError) as err:
                bad.append((seq, ts, kw, err))
                continue
            out.append(Sample(seq, t, float(kw)))
        if bad:
            self._acked |= {seq for seq, *_ in bad}
            self._dropped += len(bad)
            seq, ts, kw, err = bad[0]
            log.warning("storage.path %s: %d queued telemetry sample(s) unreadable (row %d: ts %r, kW %r: %s): dropped "
                        "from the queue (counted in the status); the rest are sent", self.path, len(bad), seq, ts, kw,
                        err)
        return out

    def ack(self, samples: list[Sample], delivered: bool = True, reader: str | None = None,
            lost: bool = False) -> None:
        """The VTN accepted these: forget them (never offered again; deleted from the file with the
        next sample, or now once ACK_DEFER_MAX wait). `delivered=False`: forget them uncounted (samples
        of an interval already reported, which cannot be sent again), `lost` too: counted as dropped. With
        `reader`: that request took them; they leave the queue once every request served has (counted once,
        if one delivered them)."""
        if not samples and not self._acked:
            return
        done = {s.seq for s in samples}
        # a request ended while its update was on the way (the VTN cancelled it on a poll meanwhile) has no reader
        # now: what it took leaves only once the requests still served took it too
        if reader is not None and (len(self._readers) > 1 or reader not in self._readers):
            done = self._take(reader, done, delivered)
        if lost and not delivered:
            self._dropped += len(done - self._sent)
        self._left(max((s.ts for s in samples if s.seq in done or self._moved.get(s.seq) in done), default=None))
        if samples and delivered:
            self.last_delivery = datetime.now(timezone.utc)
        self._remove(done, delivered)
        if samples and delivered and self._dropping:
            self._end_dropping()
        if self.found_late_until is not None and not any(s.ts <= self.found_late_until for s in self.peek(1)):
            self.found_late_until = None    # the readings found late have all gone

    @property
    def dropping(self) -> bool:
        """Whether the log's WARNING that the queue drops its oldest samples is in force (its end not yet said)."""
        return self._dropping

    def _end_dropping(self) -> None:
        # Ended once the VTN has taken half the backlog, not at its first update: a request that keeps
        # falling just behind the bound would otherwise begin a new episode, and a WARNING, every few samples.
        oldest, newest = self.peek(1), self.newest()
        if oldest and newest and newest.ts - oldest[0].ts > self.max_age / 2:
            return
        self._dropping = False
        log.info("telemetry queue: the VTN is taking the backlog; %d sample(s) older than %s were dropped",
                 self._dropped - self._dropped_at_start, span(self.max_age.total_seconds()))

    def _remove(self, done: set[int], delivered: bool = False) -> None:
        done = {self._moved.pop(seq, seq) for seq in done}      # a batch peeked before a move: its rows
        # rows that moved leave by their new numbers too (the request behind read them after the move)
        for row in done & self._moved_back.keys():
            self._moved.pop(self._moved_back.pop(row), None)
        counted = len(done - self._sent) if delivered else 0    # the others were when a request first took them
        self._sent -= done
        for seq in done:
            self.ahead.pop(seq, None)
        self.sent_total += counted
        self.delivered += counted
        self._memory = [s for s in self._memory if s.seq not in done]
        self._acked |= {seq for seq in done if seq > 0}
        if len(self._acked) >= ACK_DEFER_MAX:
            self._save_acks()

    @property
    def pending(self) -> int:
        """Readings queued that no request has delivered yet (those held for another request are `held`)."""
        return self._on_disk() - len(self._acked) + len(self._memory) - len(self._sent)

    def _on_disk(self) -> int:
        """The rows the file holds; with a torn page, the count last read (said once)."""
        err = None
        # SQLite counts by the smallest b-tree, the index on ts: a torn page of it failed the count while the table's
        # own pages gave it, and the status said 0 readings waiting behind a stalled backlog, with nothing said
        for sql in ("SELECT COUNT(*) FROM telemetry_queue", "SELECT COUNT(*) FROM telemetry_queue NOT INDEXED"):
            try:
                self._counted = int(self._db().execute(sql).fetchone()[0])
                return self._counted
            except sqlite3.Error as e:
                err = e
                if not damaged(str(e)):
                    break
        if self.read_damage.met(err, self._conn, "the telemetry queue cannot count the readings queued in it, and its "
                                "status gives the count it last read") and self._counted is not None:
            return self._counted
        return len(self._acked)

    @property
    def held(self) -> int:
        """Readings the VTN took under one request, kept for another that has not taken them yet."""
        return len(self._sent)

    def oldest_undelivered(self) -> Sample | None:
        """The oldest reading no request has delivered, near enough: the one the request furthest ahead has not
        taken (a stream parked for its request holds older ones, which the VTN has had)."""
        if not self._readers:
            oldest = self.peek(1)
        else:   # one parked stream alone too: what it took before a restart is not the backlog
            ahead = max(self._readers, key=lambda name: self._readers[name].floor)
            oldest = self.peek(1, reader=ahead)
        return oldest[0] if oldest else None

    @property
    def dropped(self) -> int:
        return self._dropped

    def status(self) -> dict:
        return {"pending": self.pending, "held": self.held, "dropped": self.dropped, "dropping": self._dropping,
                "delivered": self.delivered, "last_delivery": self.last_delivery.isoformat() if self.last_delivery else None,
                "in_memory": len(self._memory), "storage_error": self.write_error or self.read_damage.error}

    def last_try(self) -> None:
        """At a stop, before note_last_read and close: a file that would not open or take writes is tried once
        more now, not at the next retry, which never comes; the samples waiting in memory go to it if it can."""
        if self.write_error is None and not self._memory and not self._failed_memory:
            return
        if self._opening.timer is not None:
            self._opening.timer.expire()
        try:
            self._db()
        except sqlite3.Error:
            return
        if self._memory_to_file():
            self._writable_again()

    def close(self) -> None:
        if self._conn is not None:
            self._save_acks(every=0.0)
            self._conn.close()

    @property
    def taken_in_file(self) -> int:
        """After close: readings the VTN took whose deletion the file refused (a full disk at the stop; deletions wait
        for ACK_DEFER_MAX of them), so the next start reports them again."""
        return len(self._acked)


def _stamp(text) -> str:
    """A stored time as the log's own stamps read (2026-12-05T22:03:20Z), not to the microsecond with +00:00."""
    t = _time_or_none(text)
    return text if t is None else _utc(t).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc(ts: datetime) -> datetime:
    return ts.astimezone(timezone.utc) if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def _us(ts: datetime) -> int:
    """Microseconds since the epoch: poll ticks on the UTC grid, exactly (float seconds put some just before it)."""
    return (ts - _EPOCH) // timedelta(microseconds=1)


def _ticks_missed(last: datetime, now: datetime, poll_seconds: float) -> bool:
    """Whether a poll tick of the UTC grid fell between the read at `last` and a start at `now` (none was read)."""
    poll_us = max(1, round(poll_seconds * 1e6))
    return _us(now) // poll_us - _us(last) // poll_us > 1


def _places(text) -> dict[int, datetime]:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not an object of granularities")
    places = {int(g): aware_time(t) for g, t in data.items()}
    if any(g <= 0 for g in places):
        raise ValueError("a granularity that is not a positive number of seconds")
    return places


def _time_or_none(text) -> datetime | None:
    try:
        return reckonable(aware_time(text), timedelta(days=1))     # reckoned around (_us, intervals)
    except (ValueError, TypeError, OverflowError):
        return None
