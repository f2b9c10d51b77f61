"""A damaged storage.path is set aside at start: also while another process holds its write lock (a backup, an
operator's sqlite3 in a transaction). The start's check opened the file as the stores do, taking the write lock: it
got "database is locked", took the file for sound, and the gateway used and wrote the damaged file for the whole run
(met by bench/storage_locks.py: a file damaged in one cycle was used in the next)."""
from __future__ import annotations

import contextlib
import sqlite3

import pytest
from test_salvage_killed import damaged_file
from test_storage_lock_at_start import write_lock_held

from ven.storage import Storage
from ven.storage_salvage import set_aside_if_damaged

pytestmark = pytest.mark.timeout(60)


def test_a_damaged_file_another_process_holds_the_write_lock_of_is_set_aside(tmp_path):
    path = tmp_path / "gw.sqlite"
    damaged_file(path)
    with write_lock_held(path):
        aside = set_aside_if_damaged(path)
    assert aside is not None and aside.name.startswith("gw.sqlite.damaged-")
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT value FROM kv WHERE key = 'bacnet_commands:ADR-Opt-Out'").fetchone() == \
            ('{"8": true}',)


def test_a_file_whose_schema_is_torn_is_set_aside(tmp_path):
    # SQLite words a torn page of the schema table "malformed database schema": every statement fails on it, and the
    # file, taken for a passing fault, refused each write of the run, all of it kept in memory only
    path = tmp_path / "gw.sqlite"
    store = Storage(path)
    store.save_value("bacnet_commands:ADR-Opt-Out", '{"8": true}')
    store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA writable_schema=ON")
        db.execute("UPDATE sqlite_master SET sql = 'CREATE TABLE adr_events (' WHERE name = 'adr_events'")
        db.commit()
    aside = set_aside_if_damaged(path)
    assert aside is not None and aside.name.startswith("gw.sqlite.damaged-")
    store = Storage(path)       # a new file, which takes writes
    store.save_value("after", "1")
    store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
