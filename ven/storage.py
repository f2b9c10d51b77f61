"""The gateway's SQLite file (`storage.path`): demand-response events and a small key/value table.

One file, WAL mode, one connection per user: other parts of the gateway (telemetry queue, forecaster
history) open their own connections and tables in the same file with `connect(path)`.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

from .events import Event


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
    except sqlite3.Error as err:
        raise StorageError(f"storage.path {p}: cannot open SQLite database for writing: {err}") from None
    return conn


class Storage:
    """Events and settings that must survive a SIGKILL."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.conn = connect(self.path)
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS adr_events ("
            " event_id TEXT PRIMARY KEY, body TEXT NOT NULL, end_utc TEXT NOT NULL)")

    def load_events(self) -> list[Event]:
        rows = self.conn.execute("SELECT body FROM adr_events").fetchall()
        return [Event.from_json(body) for (body,) in rows]

    def save_event(self, event: Event) -> None:
        self.conn.execute(
            "INSERT INTO adr_events (event_id, body, end_utc) VALUES (?, ?, ?)"
            " ON CONFLICT(event_id) DO UPDATE SET body=excluded.body, end_utc=excluded.end_utc",
            (event.event_id, event.to_json(), event.end.isoformat()))

    def delete_event(self, event_id: str) -> None:
        self.conn.execute("DELETE FROM adr_events WHERE event_id = ?", (event_id,))

    def get(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def put(self, key: str, value: str) -> None:
        self.conn.execute("INSERT INTO kv (key, value) VALUES (?, ?)"
                          " ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))

    def close(self) -> None:
        self.conn.close()
