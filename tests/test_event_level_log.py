"""The operator log says each change of ADR-Event-Level, with the event that set it: commissioning checks there that a
level reached the BAS. Before, the log said the event was received and then nothing while it ran. Runs the real
`edge-gateway run` process against a real VTN."""
from __future__ import annotations

import re
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest
from gateway_process import START_S, GatewayProcess, write_config
from waiting import eventually

from ven.level_log import LEVEL_SAID
from ven.vtn_server import DemoVtn

pytestmark = pytest.mark.timeout(240)   # two starts of a gateway process (START_S each)


@pytest.fixture
def site(tmp_path, free_udp_port, free_tcp_port):
    """A gateway's config file, its storage.path in tmp_path, and the port of the VTN it names."""
    vtn_port = free_tcp_port()
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=free_udp_port(), vtn_port=vtn_port, http_port=free_tcp_port(),
                 storage=tmp_path / "gw.sqlite", ven_name="level-log")
    return config, vtn_port


async def test_each_level_an_event_sets_is_one_line_and_its_end_another(tmp_path, site):
    config, vtn_port = site
    async with DemoVtn(port=vtn_port, poll_seconds=0.5) as vtn:
        with GatewayProcess(config, tmp_path / "gateway.log") as gateway:
            await eventually(lambda: vtn.vens, START_S, "registration")
            start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=3)
            vtn.add_event([1, 3, 3], start=start, interval_seconds=1, event_id="level-log-evt")
            await eventually(lambda: "ADR-Event-Level 3 -> 0" in gateway.log(), 20, "the event's end")
            text = gateway.log()
    said = re.findall(r"ADR-Event-Level .*", text)
    # two intervals at 3 are one level: no line between them
    assert said == ["ADR-Event-Level 0 -> 1 (event level-log-evt)", "ADR-Event-Level 1 -> 3 (event level-log-evt)",
                    "ADR-Event-Level 3 -> 0"], text
    assert "Traceback" not in text


async def test_a_restart_in_the_middle_of_an_event_says_the_level_it_found_not_a_change_from_0(
        tmp_path, site):
    # The restarted gateway said "ADR-Event-Level 0 -> 2": the 0 was the point's own for the milliseconds before the
    # stored schedule set it, and a BAS reading through the restart saw 2 throughout. The operator read the event as
    # starting again.
    config, vtn_port = site
    async with DemoVtn(port=vtn_port, poll_seconds=0.5) as vtn:
        with GatewayProcess(config, tmp_path / "before.log") as gateway:
            await eventually(lambda: vtn.vens, START_S, "registration")
            start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=2)
            event = vtn.add_event([2], start=start, interval_seconds=600, event_id="level-log-restart")
            await eventually(lambda: "ADR-Event-Level 0 -> 2" in gateway.log(), 20, "the event's level")
        before = gateway.log()
        with GatewayProcess(config, tmp_path / "after.log") as gateway:
            await eventually(lambda: "edge-gateway ready" in gateway.log(), START_S, "the restart")
            vtn.cancel_event(event)
            await eventually(lambda: "ADR-Event-Level 2 -> 0" in gateway.log(), 20, "the cancellation")
            after = gateway.log()
    assert re.findall(r"ADR-Event-Level .*", before) == ["ADR-Event-Level 0 -> 2 (event level-log-restart)"], before
    # one line a change still: the level the start found, then its end
    assert re.findall(r"ADR-Event-Level .*", after) == [
        "ADR-Event-Level 2 at the start (event level-log-restart in force)",
        "ADR-Event-Level 2 -> 0 (event level-log-restart cancelled)"], after
    assert "Traceback" not in before + after


@pytest.mark.timeout(330)   # three starts
async def test_an_event_that_ended_while_the_gateway_was_stopped_is_said_at_the_next_start(
        tmp_path, site):
    # The log's last word on the event was "ADR-Event-Level 0 -> 2": the restarted gateway published 0, rightly,
    # and said nothing, so an operator reading the log took the building to be shedding still (helper verify43)
    config, vtn_port = site
    async with DemoVtn(port=vtn_port, poll_seconds=0.5) as vtn:
        with GatewayProcess(config, tmp_path / "before.log") as gateway:
            await eventually(lambda: vtn.vens, START_S, "registration")
            start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=2)
            vtn.add_event([2], start=start, interval_seconds=10, event_id="level-log-ended")
            await eventually(lambda: "ADR-Event-Level 0 -> 2" in gateway.log(), 20, "the event's level")
        before = gateway.log()
        end = start + timedelta(seconds=10)
        await eventually(lambda: datetime.now(timezone.utc) > end, 15, "the event's end")
        with GatewayProcess(config, tmp_path / "after.log") as gateway:
            await eventually(lambda: "edge-gateway ready" in gateway.log(), START_S, "the restart")
        after = gateway.log()
        with GatewayProcess(config, tmp_path / "again.log") as gateway:
            await eventually(lambda: "edge-gateway ready" in gateway.log(), START_S, "the second restart")
        again = gateway.log()
    assert re.findall(r"ADR-Event-Level .*", before) == ["ADR-Event-Level 0 -> 2 (event level-log-ended)"], before
    assert re.findall(r"ADR-Event-Level .*", after) == [
        "ADR-Event-Level 2 -> 0 while the gateway was stopped "
        f"(event level-log-ended over at {end.isoformat()})"], after
    # said once: the next start finds the 0 it stopped at
    assert re.findall(r"ADR-Event-Level .*", again) == [], again
    assert "Traceback" not in before + after + again


def level_kept(storage) -> str:
    """What storage.path holds of the level the log last said ("" before the gateway has written it)."""
    with sqlite3.connect(storage) as db:
        row = db.execute("SELECT value FROM kv WHERE key = ?", (LEVEL_SAID,)).fetchone()
    return row[0] if row else ""


async def test_a_start_names_the_event_the_level_was_last_of_when_two_overlapped(
        tmp_path, site):
    # a and b at 2 overlap; a ends (the level stays 2, no line), the gateway stops, b ends while it is down. The start
    # said "event level-log-a over at" a's end, a time before the stop, and nothing of b (helper verify44)
    config, vtn_port = site
    async with DemoVtn(port=vtn_port, poll_seconds=0.5) as vtn:
        with GatewayProcess(config, tmp_path / "before.log") as gateway:
            await eventually(lambda: vtn.vens, START_S, "registration")
            start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=2)
            vtn.add_event([2], start=start, interval_seconds=4, event_id="level-log-a")
            vtn.add_event([2], start=start + timedelta(seconds=2), interval_seconds=10, event_id="level-log-b")
            await eventually(lambda: "ADR-Event-Level 0 -> 2" in gateway.log(), 20, "the level")
            # a over, b in force: once the gateway's timer has passed a's end, storage.path names b (a loaded
            # gateway may pass it later than the wall clock does)
            await eventually(lambda: "level-log-b" in level_kept(tmp_path / "gw.sqlite"), 15, "a's end taken")
        before = gateway.log()
        end = start + timedelta(seconds=12)
        await eventually(lambda: datetime.now(timezone.utc) > end, 15, "b's end")
        with GatewayProcess(config, tmp_path / "after.log") as gateway:
            await eventually(lambda: "edge-gateway ready" in gateway.log(), START_S, "the restart")
        after = gateway.log()
    assert re.findall(r"ADR-Event-Level .*", before) == ["ADR-Event-Level 0 -> 2 (event level-log-a)"], before
    assert re.findall(r"ADR-Event-Level .*", after) == [
        f"ADR-Event-Level 2 -> 0 while the gateway was stopped (event level-log-b over at {end.isoformat()})"], after
    assert "Traceback" not in before + after
