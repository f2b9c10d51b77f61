"""A start that finds storage.path damaged moves it aside and copies what reads whole into a new file, table by table:
a crash in the middle (the power flickering again as the box boots after the cut that damaged the file) must not
leave a file that reads whole with part of the tables, which the next start took as the file and the rest was lost
with no line about it."""
from __future__ import annotations

import contextlib
import os
import sqlite3

import pytest
from gateway_process import kill_when_said

from ven.storage import Storage
from ven.storage_salvage import set_aside_if_damaged
from ven.telemetry import QUEUE_TABLE

pytestmark = pytest.mark.timeout(60)

# set_aside_if_damaged until it is about to copy the adr_events table (kv, which holds the BAS's ADR-Opt-Out
# commands, is copied already), then a crash
SALVAGE_UNTIL_EVENTS = """
import sys, ven.storage_salvage as s
real = s.connect
def traced(*a, **k):
    conn = real(*a, **k)
    def seen(sql):
        if 'INSERT INTO main."adr_events"' in sql:
            print("copying events", flush=True)
            sys.stdin.readline()
    conn.set_trace_callback(seen)
    return conn
s.connect = traced
s.set_aside_if_damaged(sys.argv[1])
"""

# ... until the damaged file is moved aside, the new one made whole beside it and not yet in its place
MOVED_ASIDE = """
import sys, ven.storage_salvage as s
real = s.move_with_sidecars
def moving(path, to):
    real(path, to)
    if ".damaged-" in str(to):
        print("moved aside", flush=True)
        sys.stdin.readline()
s.move_with_sidecars = moving
s.set_aside_if_damaged(sys.argv[1])
"""


def damaged_file(path):
    store = Storage(path)
    store.save_value("bacnet_commands:ADR-Opt-Out", '{"8": true}')
    store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("INSERT INTO adr_events (event_id, body, end_utc) VALUES ('e1', '{}', '2026-11-21T00:00:00Z')")
        db.execute(QUEUE_TABLE)
        db.executemany("INSERT INTO telemetry_queue (ts, kw) VALUES (?, ?)",
                       [("2026-11-20T00:00:00+00:00", 1.0)] * 3000)
        db.commit()
    with open(path, "r+b") as f:      # its last pages (the telemetry backlog's), as a torn write leaves them
        f.seek(-8 * 1024, os.SEEK_END)
        f.write(os.urandom(8 * 1024))


@pytest.mark.parametrize("code, said", [(SALVAGE_UNTIL_EVENTS, "copying events"), (MOVED_ASIDE, "moved aside")])
def test_a_start_killed_while_it_saves_a_damaged_file_loses_none_of_it(tmp_path, caplog, code, said):
    path = tmp_path / "gw.sqlite"
    damaged_file(path)
    kill_when_said(code, str(path), said=said)
    set_aside_if_damaged(path)      # the next start
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT event_id FROM adr_events").fetchall() == [("e1",)]
        assert db.execute("SELECT value FROM kv WHERE key = 'bacnet_commands:ADR-Opt-Out'").fetchone() == \
            ('{"8": true}',)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert [n for n in left if "damaged-" in n and not n.endswith(("-wal", "-shm"))], left
    assert not [n for n in left if "salvag" in n], left     # nothing half made left beside it
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    if code is SALVAGE_UNTIL_EVENTS:    # saved again from the start: what it kept, what it did not
        assert len(errors) == 1 and "is damaged" in errors[0] and "table(s) kv, adr_events" in errors[0], errors
    else:
        aside = next(n for n in left if n.startswith("gw.sqlite.damaged-") and not n.endswith(("-wal", "-shm")))
        assert errors == [f"storage.path {path}: the file made from a damaged one (its start was stopped in the "
                          f"middle) put in place; the damaged file is beside it as {aside}"], errors


def test_a_start_killed_between_moving_the_damaged_file_and_its_wal_keeps_them_together(tmp_path, caplog):
    # killed after the damaged file went aside and before its -wal followed: the -wal went to <name>.damaged-wal, not
    # beside <name>.damaged-<time>, where `sqlite3 ... .recover` replays it
    path = tmp_path / "gw.sqlite"
    Storage(tmp_path / "gw.sqlite.salvaged").close()     # the file made whole, waiting to be put in place
    (tmp_path / "gw.sqlite.damaged-20261205T101500").write_bytes(b"the damaged file")
    (tmp_path / "gw.sqlite.damaged-20261101T090000").write_bytes(b"an older damaged file")
    (tmp_path / "gw.sqlite-wal").write_bytes(b"its last commits")
    set_aside_if_damaged(path)
    assert (tmp_path / "gw.sqlite.damaged-20261205T101500-wal").read_bytes() == b"its last commits"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "gw.sqlite", "gw.sqlite.damaged-20261101T090000", "gw.sqlite.damaged-20261205T101500",
        "gw.sqlite.damaged-20261205T101500-wal"]
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        f"storage.path {path}: the file made from a damaged one (its start was stopped in the middle) put in place; "
        "the damaged file is beside it as gw.sqlite.damaged-20261205T101500"]
