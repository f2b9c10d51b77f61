"""A telemetry backlog queued in storage.path before a restart, on a disk that is full at the restart: the gateway
reports the new readings from memory, and once space returns the file's readings go to a real VTN too, each
interval once. Real tmpfs (root, as the machines here and CI have; skipped otherwise)."""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone

import pytest
from waiting import eventually

from test_faults_storage import fill, tmpfs
from ven.config import OpenadrConfig
from ven.report_intervals import bucket_start
from ven.schedule import EventSchedule
from ven.storage import Storage
from ven.telemetry import TelemetryQueue
from ven.vtn import VtnClient
from ven.vtn_server import DemoVtn

pytestmark = pytest.mark.mostly_waiting

GRANULARITY = timedelta(seconds=5)


async def test_a_backlog_in_a_file_that_opens_late_is_sent_each_interval_once(tmp_path, free_tcp_port, caplog):
    caplog.set_level(logging.INFO, logger="ven")
    with tmpfs(tmp_path / "card", "size=2m") as card:
        path = card / "gw.sqlite"
        # the run before: the VTN away, 20 readings queued in the file
        start = datetime.now(timezone.utc)
        backlog = [(start - timedelta(seconds=20 - i), 100.0 + i) for i in range(20)]
        before = TelemetryQueue(path)
        for ts, kw in backlog:
            before.add(ts, kw)
        before.close()
        filler = fill(card)     # then the card fills, and the gateway starts again

        storage = Storage(tmp_path / "events.sqlite")
        schedule = EventSchedule(storage, lambda st: None)
        queue = TelemetryQueue(path, reopen_seconds=0.3)
        assert queue.write_error, "the full card let the queue open: the test's premise"
        vtn = DemoVtn(free_tcp_port(), poll_seconds=1, report_granularity=GRANULARITY)
        client = VtnClient(OpenadrConfig(vtn_url=vtn.url, retry_min_seconds=0.2, retry_max_seconds=1.0,
                                         telemetry_seconds=1.0), schedule, queue)
        live = []
        try:
            async with vtn:
                await schedule.start()
                await client.start()
                await eventually(lambda: client.connected, 15, "registration")
                while len({ts for *_, ts, _ in vtn.reports}) < 3:      # live intervals, from memory
                    ts = datetime.now(timezone.utc)
                    client.record_sample(ts, 50.0)
                    live.append(ts)
                    await asyncio.sleep(0.5)
                    assert datetime.now(timezone.utc) - start < timedelta(seconds=30), vtn.reports
                filler.unlink()
                first_live = bucket_start(live[0], GRANULARITY)
                owed = {bucket_start(ts, GRANULARITY) for ts, _ in backlog} - {first_live}
                await eventually(lambda: owed <= {ts for *_, ts, _ in vtn.reports}, 20,
                                 f"the backlog's intervals\n{vtn.reports}")
                for _ in range(4):      # readings go on, and nothing more of the backlog comes
                    client.record_sample(datetime.now(timezone.utc), 50.0)
                    await asyncio.sleep(0.5)
        finally:
            await client.stop()
            await schedule.stop()
            queue.close()
            storage.close()

    got = [ts for *_, ts, _ in vtn.reports]
    assert len(got) == len(set(got)), f"an interval sent twice: {sorted(got)}"
    by_start = {ts: kw for *_, ts, kw in vtn.reports}
    for bucket in owed:     # each the mean of its own readings: none dropped, none mixed with the live ones
        mine = [kw for ts, kw in backlog if bucket_start(ts, GRANULARITY) == bucket]
        assert by_start[bucket] == sum(mine) / len(mine), (bucket, by_start[bucket], mine)
    in_live = [kw for ts, kw in backlog if bucket_start(ts, GRANULARITY) == first_live]
    assert queue.dropped == len(in_live), (queue.dropped, in_live)
    text = caplog.text
    assert "clock stepped back" not in text, text
    assert "queued before this start, which the file did not take, they are sent after the newer intervals" in text
    if in_live:
        assert (f"{len(in_live)} telemetry reading(s) queued in storage.path before this start fall in intervals "
                f"reported since") in text, text
