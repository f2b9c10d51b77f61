"""Damage to storage.path (a page a power cut or a failing card tore), named as damage wherever it is met: at the
start, where ven/storage_salvage.py sets the file aside, or by a store's write while the gateway runs, which was taken
for a refusal that passes ("refuses writes ... until it takes them again") and named nothing."""
from __future__ import annotations

import logging
import re
import sqlite3

# What SQLite says of a file a power cut or a failing card damaged (or that was never SQLite). Unlike a lock, a
# full disk or a read-only mount, it never passes: trying it again every storage.retry_seconds kept everything
# the gateway took in memory only, for good, and a restart lost it.
# "malformed database schema": a torn page of the schema table; every statement fails on it, the file then refused
# each write of the run while it was taken for a passing fault (met by bench/storage_locks.py after an mv over it)
DAMAGED = ("file is not a database", "database disk image is malformed", "malformed database schema")
# What the lines say of damage met while the gateway runs. SQLite can neither rebuild nor drop an index one of whose
# pages has a broken layout (REINDEX and DROP INDEX both answer "malformed"): only a new file puts it right
UNTIL_RESTART = ("it does not pass while the gateway runs: restart the gateway, and its start moves the file aside "
                 "and makes a new one with every row of it that still reads (what memory holds is lost then)")
CHECK_LINES = 20    # quick_check's lines read for the pages it names


def damaged(why: str | None) -> bool:
    return why is not None and any(d in why for d in DAMAGED)


def name_damage(why: str, conn: sqlite3.Connection | None) -> str:
    """`why`, SQLite's words for a failed statement, and, when they are damage's, which tables and indexes of the file
    it is in ("...: damage in index telemetry_queue_ts"), as PRAGMA quick_check finds its pages and dbstat their
    trees. Reads every page (tens of ms a MB, on the caller's thread): once, as a fault starts."""
    if not damaged(why) or conn is None:
        return why
    try:
        found = [row[0] for row in conn.execute(f"PRAGMA quick_check({CHECK_LINES})")]
    except sqlite3.Error:   # a page whose header is gone (read back as zeros) stops quick_check too
        found = []
    if found == ["ok"]:
        return why
    pages = sorted({int(p) for line in found for p in re.findall(r"\b(?:On tree page|Page) (\d+)", line)})
    try:
        # dbstat reads past a page that is no b-tree page, which it calls corrupted
        trees = conn.execute(
            f"SELECT DISTINCT coalesce(m.type, 'table'), d.name FROM dbstat AS d LEFT JOIN sqlite_schema AS m "
            f"ON m.name = d.name WHERE d.pageno IN ({','.join('?' * len(pages))}) OR d.pagetype = 'corrupted' "
            f"ORDER BY 1, 2", pages).fetchall()
    except sqlite3.Error:   # dbstat left out of this SQLite's build, or the schema's own page: quick_check's words
        trees = []
    if trees:
        return f"{why}: damage in {', '.join(f'{kind} {name}' for kind, name in trees)}"
    said = [line for text in found for line in text.splitlines() if line and not line.startswith("***")]
    return f"{why}: {'; '.join(said[:2])}" if said else why


class ReadDamage:
    """Damage a store's read meets while the gateway runs (a torn page of a table it reads, not writes): one ERROR for
    the store's run, naming the damage and what the store goes on without, and kept for /api/status. Not the storage
    fault's, whose end a write that misses the torn page said while every read still failed on it; it does not end
    before the restart."""

    def __init__(self, path, log: logging.Logger, fault=None):
        """`fault`: the gateway's storage fault (ven/storage_fault.py), which says the file's damage once as an ERROR,
        whichever part meets it first."""
        self.path, self._log, self._fault = path, log, fault
        self.error: str | None = None

    def met(self, err: Exception, conn: sqlite3.Connection | None, meanwhile: str) -> bool:
        """Whether `err`, a read's, is damage: said once (`meanwhile`: what the store does without what it read)."""
        why = str(err)
        if not damaged(why):
            return False
        if self.error is None:
            self.error = why = name_damage(why, conn)
            first = self._fault is None or self._fault.first_damage()
            self._log.log(logging.ERROR if first else logging.INFO, "storage.path %s is damaged (%s): %s; %s",
                          self.path, why, meanwhile, UNTIL_RESTART)
        return True
