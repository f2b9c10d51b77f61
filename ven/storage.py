"""The gateway's SQLite file (`storage.path`): demand-response events and a small key/value table.

One file, WAL mode, one connection per user: other parts of the gateway (telemetry queue, forecaster
history) open their own connections and tables in the same file with `connect(path)`.
"""
from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from .events import Event

log = logging.getLogger(__name__)

class StorageError(Exception):
    """The database file cannot be created, opened or written; the text says which and why."""


def connect(path: str | Path) -> sqlite3.Connection:
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StorageError(f"storage.path {p}: cannot create directory {p.parent}: {err.strerror}") from None
    try:
        conn = sqlite3.connect(str(p), timeout=10, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        # Probe a write now so an unwritable file fails at start-up, not mid-event.
        conn.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT OR REPLACE INTO kv (key, value) VALUES ('opened_at', datetime('now'))")
    except sqlite3.Error as err:
        raise StorageError(f"storage.path {p}: cannot open SQLite database for writing: {err}"
                           f"{_os_reason(p)}") from None
    return conn


def _os_reason(p: Path) -> str:
    """SQLite says "unable to open database file" or "disk I/O error"; the OS knows why."""
    if p == Path(":memory:"):
        return ""
    try:
        with open(p, "ab"):
            pass
        probe = p.parent / f".{p.name}.probe"
        with open(probe, "wb") as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as err:
        return f" ({err.strerror})"
    return ""


class Storage:
    """Events and settings that must survive a SIGKILL.

    A write that fails (disk full, file system gone read-only) does not stop the schedule: the change
    is kept here and written with the next write that succeeds (or `flush()`); the error is logged
    once when it starts and once when writes succeed again."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.conn = connect(self.path)
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS adr_events ("
            " event_id TEXT PRIMARY KEY, body TEXT NOT NULL, end_utc TEXT NOT NULL)")
        self._unsaved: dict[str, Event | None] = {}     # event_id -> event to write, None: to delete
        self.write_error: str | None = None

    def load_events(self) -> list[Event]:
        rows = self.conn.execute("SELECT body FROM adr_events").fetchall()
        return [Event.from_json(body) for (body,) in rows]

    def save_event(self, event: Event) -> None:
        self._unsaved[event.event_id] = event
        self.flush()

    def delete_event(self, event_id: str) -> None:
        self._unsaved[event_id] = None
        self.flush()

    def flush(self) -> bool:
        """Write what earlier failed writes left; True when nothing is left unsaved."""
        if not self._unsaved:
            return True
        try:
            self.conn.execute("BEGIN")
            for event_id, event in list(self._unsaved.items()):
                if event is None:
                    self.conn.execute("DELETE FROM adr_events WHERE event_id = ?", (event_id,))
                else:
                    self.conn.execute(
                        "INSERT INTO adr_events (event_id, body, end_utc) VALUES (?, ?, ?)"
                        " ON CONFLICT(event_id) DO UPDATE SET body=excluded.body, end_utc=excluded.end_utc",
                        (event.event_id, event.to_json(), event.end.isoformat()))
            self.conn.execute("COMMIT")
        except sqlite3.Error as err:
            if self.conn.in_transaction:
                try:
                    self.conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if self.write_error is None:
                log.error("storage.path %s: cannot save events (%s): kept in memory and written when it "
                          "can; a restart before then loses them", self.path, err)
            self.write_error = str(err)
            return False
        self._unsaved.clear()
        if self.write_error is not None:
            log.info("storage.path %s: events saved again", self.path)
            self.write_error = None
        return True

    def get(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def put(self, key: str, value: str) -> None:
        self.conn.execute("INSERT INTO kv (key, value) VALUES (?, ?)"
                          " ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))

    def close(self) -> None:
        self.flush()
        self.conn.close()
