"""A storage.path that opens only after the start (its data volume mounted later) never had the start's check: a file
a power cut damaged was used as it was, a torn page of the telemetry backlog holding back every reading behind it until
the next restart. Its first store to open it now checks it as the start does, and sets a damaged one aside, keeping
every row that still reads. A real tmpfs hidden under an empty read-only one (root, as CI has; skipped otherwise);
the page torn as zeros, deterministically."""
from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from test_faults_storage import T0, _event, cover, tmpfs, uncover
from test_storage_damaged_reads import tear_page

from ven.storage import Storage
from ven.storage_fault import StorageFault
from ven.storage_salvage import set_aside_if_damaged
from ven.telemetry import TelemetryQueue

pytestmark = pytest.mark.timeout(60)


def test_a_damaged_file_that_opens_late_is_checked_and_set_aside_as_at_the_start(tmp_path, caplog):
    with tmpfs(tmp_path / "late", "size=4m") as disk:
        path = disk / "gw.sqlite"
        earlier = Storage(path)                      # what an earlier run left in the file
        earlier.save_event(_event("old", ""))
        earlier.close()
        q = TelemetryQueue(path, max_age=timedelta(days=1))
        for i in range(3000):
            q.add(T0 + timedelta(seconds=i), 90.0)
        q.close()
        tear_page(path, "telemetry_queue")
        cover(disk)
        try:
            caplog.set_level(logging.INFO)
            assert set_aside_if_damaged(path) is None    # the start's check: no file to check yet
            fault = StorageFault(path, retry_seconds=0.01, settle_seconds=0)
            store = Storage(path, reopen_seconds=0.0, fault=fault)
            q = TelemetryQueue(path, max_age=timedelta(days=1), reopen_seconds=0.0, fault=fault)
            q.add(T0 + timedelta(seconds=3000), 91.0)        # in memory
        finally:
            uncover(disk)
        store.save_event(_event("new", ""))     # opens the file
        q.add(T0 + timedelta(seconds=3001), 92.0)
        assert store.write_error is None and q.write_error is None
        sent = [s.ts for s in q.peek(5000)]
        q.close()
        store.close()
        aside = sorted(p.name for p in disk.iterdir() if ".damaged-" in p.name)
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(said) == 2 and "is damaged" in said[1] and "read around its damaged pages" in said[1], said
    assert aside, "the damaged file was not set aside"
    # every reading that reads, in order, then the two this run took: none held back behind the torn page
    assert 2900 < len(sent) < 3002 and sent == sorted(sent), len(sent)
    assert sent[-2:] == [T0 + timedelta(seconds=3000), T0 + timedelta(seconds=3001)]
