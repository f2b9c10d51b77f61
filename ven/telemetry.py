"""Store-and-forward queue for meter samples (TELEMETRY_USAGE), in the gateway's SQLite file.

Every sample is committed here before it is offered to the VTN and deleted only after the VTN
accepted the oadrUpdateReport that carried it. The queue is bounded by age: samples older than
`max_age` behind the newest one are dropped (oldest first) and counted.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .storage import connect

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    seq: int
    ts: datetime
    kw: float


class TelemetryQueue:
    def __init__(self, path: str | Path, max_age: timedelta = timedelta(days=7)):
        self._conn = connect(path)
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS telemetry_queue ("
            " seq INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT NOT NULL, kw REAL NOT NULL)")
        self.max_age = max_age
        row = self._conn.execute("SELECT value FROM kv WHERE key = 'telemetry_dropped'").fetchone()
        self._dropped = int(row[0]) if row else 0
        row = self._conn.execute("SELECT value FROM kv WHERE key = 'telemetry_last_delivery'").fetchone()
        self.last_delivery: datetime | None = datetime.fromisoformat(row[0]) if row else None
        self.delivered = 0      # samples accepted by the VTN since this process started
        self._dropping = False

    def add(self, ts: datetime, kw: float) -> int:
        """Commit one sample; returns its sequence number."""
        ts = ts.astimezone(timezone.utc) if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
        cur = self._conn.execute("INSERT INTO telemetry_queue (ts, kw) VALUES (?, ?)",
                                 (ts.isoformat(), float(kw)))
        self._bound(ts)
        return int(cur.lastrowid)

    def _bound(self, newest: datetime) -> None:
        cutoff = (newest - self.max_age).isoformat()
        n = self._conn.execute("DELETE FROM telemetry_queue WHERE ts < ?", (cutoff,)).rowcount
        if n > 0:
            if not self._dropping:
                log.warning("telemetry queue holds %s of samples: dropping the oldest "
                            "(counted in the status) until the VTN takes the backlog", self.max_age)
                self._dropping = True
            self._dropped += n
            self._conn.execute("INSERT INTO kv (key, value) VALUES ('telemetry_dropped', ?)"
                               " ON CONFLICT(key) DO UPDATE SET value=excluded.value", (str(self._dropped),))

    def peek(self, limit: int = 100) -> list[Sample]:
        """The oldest waiting samples, in order."""
        rows = self._conn.execute(
            "SELECT seq, ts, kw FROM telemetry_queue ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [Sample(seq, datetime.fromisoformat(ts), kw) for seq, ts, kw in rows]

    def ack(self, samples: list[Sample]) -> None:
        """The VTN accepted these: forget them."""
        if not samples:
            return
        self._conn.executemany("DELETE FROM telemetry_queue WHERE seq = ?", [(s.seq,) for s in samples])
        self.delivered += len(samples)
        self._dropping = False
        self.last_delivery = datetime.now(timezone.utc)
        self._conn.execute("INSERT INTO kv (key, value) VALUES ('telemetry_last_delivery', ?)"
                           " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                           (self.last_delivery.isoformat(),))

    def contains(self, seq: int) -> bool:
        return self._conn.execute("SELECT 1 FROM telemetry_queue WHERE seq = ?", (seq,)).fetchone() is not None

    @property
    def pending(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM telemetry_queue").fetchone()[0])

    @property
    def dropped(self) -> int:
        return self._dropped

    def status(self) -> dict:
        return {"pending": self.pending, "dropped": self.dropped, "delivered": self.delivered,
                "last_delivery": self.last_delivery.isoformat() if self.last_delivery else None}

    def close(self) -> None:
        self._conn.close()
