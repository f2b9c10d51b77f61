"""Asking the OS why storage.path refuses a write must not drop the gateway's SQLite locks on it. POSIX drops every
lock a process holds on a file when it closes any descriptor of that file: the store that asked (a write or an open
that failed, "database is locked" beside another store's first open) opened and closed the file itself, and the
next process to close a connection to it (a CLI tool, the operator's sqlite3, the forecaster's child) took itself
for the last, checkpointed and removed the WAL the gateway still wrote in. A damaged file followed (a probe of
test_faults_storage's read-only start: one run in twenty, "database disk image is malformed" after a clean stop)."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from ven.storage import EVENTS_TABLE
from ven.storage_connect import connect
from ven.storage_fs_reason import fs_reason, os_reason, with_fs_reason


@pytest.mark.parametrize("ask", [os_reason, fs_reason, lambda p: with_fs_reason("disk I/O error", p)])
def test_asking_why_keeps_the_gateways_locks_on_the_file(tmp_path, ask):
    path = tmp_path / "gw.sqlite"
    conn = connect(path, EVENTS_TABLE)
    try:
        conn.execute("INSERT OR REPLACE INTO kv (key, value) VALUES ('a', '1')")
        ask(path)
        reader = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('SELECT * FROM kv').fetchall(); "
                  "c.close()")
        subprocess.run([sys.executable, "-c", reader, str(path)], check=True, timeout=30)
        # the other process saw the gateway's connection: it left the WAL, where the gateway's commits are
        assert os.path.exists(f"{path}-wal")
        conn.execute("INSERT OR REPLACE INTO kv (key, value) VALUES ('b', '1')")
    finally:
        conn.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert {"a", "b"} <= {k for k, in db.execute("SELECT key FROM kv")}
