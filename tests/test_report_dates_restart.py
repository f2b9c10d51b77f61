"""The period (dtstart) of the first report after an upgrade from 0.3.0, or a start after a rollback to it. A report
starts at the end of the last interval the VTN took, so that intervals missing in it read as not measured; across a
restart that end comes from the file (telemetry_places), where 0.3.0 kept a stream served alone only at its first
update: the first report went back there, hours or weeks of intervals the VTN had taken reading as not measured.
A real openleadr VTN (DemoVtn) on loopback, a real SQLite file, a VEN stopped and started again."""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone

import pytest
from test_report_requests import drained, running
from waiting import eventually

from ven.vtn_server import DemoVtn

pytestmark = [pytest.mark.timeout(60), pytest.mark.mostly_waiting]


async def _serve(tmp_path, vtn: DemoVtn, reports: int) -> set[str]:
    """A VEN run on tmp_path's file: telemetry requested, a meter read until the VTN has `reports` reports more,
    every reading sent, stopped cleanly. Its reportRequestIDs."""
    async with running(tmp_path, vtn.url) as rig:
        await eventually(lambda: rig.vtn.status()["report_request_id"], 10, "telemetry requested")
        had = len(vtn.report_spans)
        rig.start_meter(0.25)
        await eventually(lambda: len(vtn.report_spans) >= had + reports, 20, f"{reports} reports")
        await rig.stop_meter()
        await eventually(lambda: drained(rig), 10, "every reading sent")
        return {r for r, *_ in vtn.report_spans}


def _spans(vtn: DemoVtn, rrids: set[str]):
    return sorted((start, end) for r, start, end in vtn.report_spans if r in rrids)


def _as_left_by(path, how: str, first_end) -> None:
    """The file as 0.3.0 left it: one stream's place where it stood after its first report."""
    with sqlite3.connect(path) as db:
        db.execute("UPDATE kv SET value = ? WHERE key = 'telemetry_places'",
                   (json.dumps({"1": first_end.isoformat()}),))
        if how == "0.3.0":      # which kept no record of the delivery its places were written with
            db.execute("DELETE FROM kv WHERE key = 'telemetry_places_delivery'")
        else:   # rolled back to 0.3.0 after a stop of this version: the older one delivered since
            db.execute("UPDATE kv SET value = ? WHERE key = 'telemetry_last_delivery'",
                       (datetime.now(timezone.utc).isoformat(),))
    db.close()


@pytest.mark.parametrize("how", ["0.3.0", "rolled back since"])
async def test_a_place_left_behind_does_not_date_the_first_report_back_over_intervals_sent(
        tmp_path, free_tcp_port, how):
    # an upgrade from 0.3.0 (its one stream's place written once, at its first report), or a start after a rollback
    # to it: the first report went back to that place, every interval the VTN took since read as not measured
    async with DemoVtn(free_tcp_port(), poll_seconds=1) as vtn:
        first = await _serve(tmp_path, vtn, 3)
        before = _spans(vtn, first)
        _as_left_by(tmp_path / "gw.sqlite", how, before[0][1])
        after = _spans(vtn, await _serve(tmp_path, vtn, 2) - first)
    assert len(before) >= 3 and after, (before, after)
    assert after[0][0] >= before[-1][1], (before, after)     # not back over what the VTN took
    assert all(a[1] == b[0] for a, b in zip(after, after[1:])), after


async def test_a_stop_of_this_version_still_dates_the_first_report_from_the_last_interval_the_vtn_took(
        tmp_path, free_tcp_port):
    # the stop and start between are a gap: a period the meter was not read in, right after the last one sent
    async with DemoVtn(free_tcp_port(), poll_seconds=1) as vtn:
        first = await _serve(tmp_path, vtn, 2)
        before, after = _spans(vtn, first), _spans(vtn, await _serve(tmp_path, vtn, 2) - first)
    assert before and after and after[0][0] == before[-1][1], (before, after)
