"""A box moved to another site with its storage.path, or a card imaged from one that ran (ven/site.py)."""
from __future__ import annotations

import contextlib
import logging
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest
from bacnet_peer import BacnetPeer
from test_event_history import event
from waiting import eventually

from bacnet_api import points as P
from bacnet_api.simulator import MeterSimulator
from cli_run import run_cli
from ven.app import Gateway
from ven.config_load import parse_config
from ven.site import site_of, stored_site
from ven.vtn_server import DemoVtn


def site_config(tmp_path, bacnet_port, meter_port, vtn_url, ven_name, device_id=500401, path=None):
    return parse_config({
        "bacnet": {"address": f"127.0.0.1/8:{bacnet_port}", "device_id": device_id},
        "meter": {"router": f"127.0.0.1:{meter_port}", "poll_seconds": 0.5, "timeout_seconds": 0.5},
        "openadr": {"vtn_url": vtn_url, "ven_name": ven_name, "telemetry_seconds": 1.0, "retry_min_seconds": 0.2,
                    "retry_max_seconds": 1.0, "settle_seconds": 0.0},
        "storage": {"path": str(path or tmp_path / "gw.sqlite")},
        "http": {"enabled": False},
        "forecaster": {"cycle_seconds": 5.0},
    }, "test", environ={})


URL = "http://vtn.example/OpenADR2/Simple/2.0b"


def rows(path, table: str) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def started_and_stopped(tmp_path, ven_name: str, path=None, url: str = URL, reading: bool = False) -> None:
    """What a gateway start does to storage.path before its device (the Gateway built, its stores closed again),
    with one telemetry reading queued if `reading`."""
    gw = Gateway(site_config(tmp_path, 1, 2, url, ven_name, path=path))
    if reading:
        gw.telemetry.add(datetime.now(timezone.utc), 42.0)
    gw.telemetry.close()
    gw.storage.close()


@pytest.mark.timeout(90)
async def test_a_box_moved_to_another_site_sends_runs_and_restores_nothing_of_the_old_ones(
        tmp_path, free_udp_port, free_tcp_port, caplog):
    # Building A's readings queued for its VTN (not reachable), an event of A's VTN stored, A's BAS opted out. The
    # box went to building B, config edited, file kept: B's VTN got A's readings as B's, A's event ran in B while
    # B's VTN was not answering yet, and B's utility heard optOut to its first event. Now the file goes aside.
    caplog.set_level(logging.WARNING, logger="ven.site")
    bacnet_port, meter_port = free_udp_port(), free_udp_port()
    a_vtn = f"http://127.0.0.1:{free_tcp_port()}/OpenADR2/Simple/2.0b"   # nobody answers there
    path = tmp_path / "gw.sqlite"
    async with MeterSimulator(address=f"127.0.0.1/8:{meter_port}", value=111.0):
        a = Gateway(site_config(tmp_path, bacnet_port, meter_port, a_vtn, "building-a"))
        await a.start()
        try:
            await eventually(lambda: a.telemetry.pending >= 3, 15, "A's readings queued")
            now = datetime.now(timezone.utc)
            a.schedule.upsert(event("a-event", [2], now + timedelta(seconds=5), 10, now))
            async with BacnetPeer(free_udp_port(), timeout=5.0) as bas:
                assert await bas.write(f"127.0.0.1:{bacnet_port}", P.BY_NAME[P.OPT_OUT].object_id, "presentValue",
                                       "active", priority=8) is None
            await eventually(lambda: a.device.get(P.OPT_OUT) is True, 5, "A's BAS opted out")
        finally:
            await a.stop()
    queued = rows(path, "telemetry_queue")
    assert queued >= 3 and rows(path, "adr_events") == 1

    vtn_port = free_tcp_port()
    async with MeterSimulator(address=f"127.0.0.1/8:{meter_port}", value=555.0), \
            DemoVtn(port=vtn_port, poll_seconds=1.0) as b_vtn:
        b = Gateway(site_config(tmp_path, bacnet_port, meter_port, b_vtn.url, "building-b"))
        moved = sorted(p for p in tmp_path.glob("gw.sqlite.building-a-*") if not p.name.endswith(("-wal", "-shm")))
        started = datetime.now(timezone.utc)
        await b.start()
        try:
            # nothing of A's at start: no event to run, no opt-out, no backlog
            assert b.schedule.events() == [] and b.device.get(P.OPT_OUT) is False
            shown = b.storage_status()["moved_aside"]           # /api/status, and the dashboard from it
            assert shown["to"] == str(moved[0]) and shown["changed"] == "ven_name 'building-a' -> 'building-b'"
            assert shown["held"].startswith(f"{queued} telemetry reading(s) not yet sent, 1 event(s)"), shown
            await eventually(lambda: len([1 for _, ivs in b_vtn.updates for _ in ivs]) >= 3, 20, "B's telemetry")
            await eventually(lambda: b.device.get(P.EVENT_LEVEL) == 0.0 and datetime.now(timezone.utc) > started
                             + timedelta(seconds=6), 10, "past A's event's start")
            sent = [(ts, value) for _, ivs in b_vtn.updates for ts, _, _, value in ivs]
        finally:
            await b.stop()
    # every interval B's VTN got is B's meter's, none dated before the box came
    assert sent and all(value == pytest.approx(555.0) for _, value in sent), sent
    assert all(ts >= started.replace(microsecond=0) for ts, _ in sent), (started, sent)
    assert b_vtn.opts_for("a-event") == []
    # A's file is kept whole beside it, and said once
    [aside] = moved
    assert rows(aside, "telemetry_queue") == queued and rows(aside, "adr_events") == 1
    said = [r.getMessage() for r in caplog.records if r.name == "ven.site"]
    assert len(said) == 1 and "held the state of another VEN (ven_name 'building-a' -> 'building-b'" in said[0], said
    assert f"moved to {aside.name}" in said[0] and f"{queued} telemetry reading(s) not yet sent, 1 event(s)" in said[0]
    assert stored_site(path) == {"ven_name": "building-b", "vtn_host": "127.0.0.1"}
    # B's file is B's: the next start keeps it
    started_and_stopped(tmp_path, "building-b", url=b_vtn.url)
    assert sorted(p for p in tmp_path.glob("gw.sqlite.*") if not p.name.endswith(("-wal", "-shm"))) == [aside]


def test_a_file_from_before_the_record_is_this_vens_and_another_vtn_port_or_scheme_is_the_same_vtn(tmp_path):
    path = tmp_path / "gw.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as conn:    # an earlier version's file: no record of the VEN
        conn.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO kv VALUES ('meter_read', 'x')")
        conn.commit()
    for url in ("http://VTN.example:8080/OpenADR2/Simple/2.0b", "https://vtn.example/OpenADR2/Simple/2.0b"):
        started_and_stopped(tmp_path, "site-1", url=url)
        assert stored_site(path) == {"ven_name": "site-1", "vtn_host": "vtn.example"}
        assert list(tmp_path.glob("gw.sqlite.*")) == [], "the same VEN: kept"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT value FROM kv WHERE key = 'meter_read'").fetchone() == ("x",)
    # check-config says what `run` would do with it under another VTN host
    other = tmp_path / "other.toml"
    other.write_text(f'[openadr]\nvtn_url = "https://other-utility.example/OpenADR2/Simple/2.0b"\nven_name = "site-1"\n'
                     f'[storage]\npath = "{path}"\n')
    out = run_cli(["check-config", str(other)], timeout=60)
    assert out.returncode == 0, out.stderr
    assert (f"warning: storage.path {path} holds the state of another VEN (vtn_host 'vtn.example' -> "
            "'other-utility.example'): `run` moves it aside and begins a new file") in out.stdout, out.stdout
    assert site_of("site-1", "https://u:p@Other-Utility.example:443/x") == \
        '{"ven_name": "site-1", "vtn_host": "other-utility.example"}'


def test_a_symlinked_storage_path_moves_its_file_not_the_link(tmp_path):
    # the run lock is on the file a symlink names (run_lock.lock_path); moving the link left the lock on the old file
    # and a second `run` on the new one started beside the first
    (tmp_path / "data").mkdir()
    link = tmp_path / "gw.sqlite"
    link.symlink_to(tmp_path / "data" / "real.sqlite")
    started_and_stopped(tmp_path, "site-1", reading=True)
    assert stored_site(link)["ven_name"] == "site-1"
    started_and_stopped(tmp_path, "site-2")
    assert link.is_symlink() and link.resolve() == tmp_path / "data" / "real.sqlite"
    [aside] = [p for p in (tmp_path / "data").glob("real.sqlite.site-1-*") if not p.name.endswith(("-wal", "-shm"))]
    assert rows(aside, "telemetry_queue") == 1 and rows(link, "telemetry_queue") == 0
    assert stored_site(link)["ven_name"] == "site-2"


def test_another_vens_file_that_cannot_be_moved_aside_is_not_used(tmp_path):
    # a read-only directory at the first start at the new site: used as it was, once writable the old backlog went
    # to this VTN and the old ADR-Opt-Out was restored. The start is refused, naming the file and what to do.
    from test_faults_storage import remount, tmpfs

    from ven.config import ConfigError

    with tmpfs(tmp_path / "data", "size=8m") as data:
        path = data / "gw.sqlite"
        started_and_stopped(tmp_path, "site-1", path, reading=True)
        remount(data, "ro")
        with pytest.raises(ConfigError, match=rf"storage.path {path} holds the state of another VEN \(ven_name "
                                              r"'site-1' -> 'site-2'\) and cannot be moved aside: Read-only file "
                                              r"system\. Move it away"):
            Gateway(site_config(tmp_path, 1, 2, URL, "site-2", path=path))
        remount(data, "rw")
        assert stored_site(path)["ven_name"] == "site-1" and rows(path, "telemetry_queue") == 1
        assert not list(data.glob("gw.sqlite.*")), "nothing moved"


def test_a_file_that_opens_only_later_is_not_recorded_as_this_vens(tmp_path):
    # a data volume mounted after the start, with another VEN's file on it: the record written at the late open
    # said it was this VEN's, and the next start kept it. Now only a file checked at the start is recorded.
    from test_faults_storage import cover, tmpfs, uncover

    with tmpfs(tmp_path / "data", "size=8m") as data:
        path = data / "gw.sqlite"
        started_and_stopped(tmp_path, "site-1", path)
        assert stored_site(path)["ven_name"] == "site-1"
        cover(data)                                 # not mounted yet at the start
        try:
            gw = Gateway(site_config(tmp_path, 1, 2, URL, "site-2", path=path))
        finally:
            uncover(data)
        gw.storage.last_try()                        # the volume is there: the file opens
        gw.telemetry.close()
        gw.storage.close()
        assert stored_site(path)["ven_name"] == "site-1"
        started_and_stopped(tmp_path, "site-2", path)   # the next start moves it aside
        assert [p.name for p in data.glob("gw.sqlite.site-1-*") if not p.name.endswith(("-wal", "-shm"))]


@pytest.mark.timeout(60)
async def test_a_box_imaged_with_its_configuration_is_named_by_the_other_in_healthz_and_status(
        tmp_path, free_udp_port, free_tcp_port):
    # two boxes with one bacnet.device_id: the BAS binds either. The one that hears the other's I-Am says so in the
    # log, /api/status device.twins and /healthz's degraded list, so the orchestrator's health log names it too.
    from bacpypes3.apdu import IAmRequest
    from bacpypes3.pdu import Address
    from bacpypes3.primitivedata import ObjectIdentifier

    bacnet_port = free_udp_port()
    url = f"http://127.0.0.1:{free_tcp_port()}/OpenADR2/Simple/2.0b"
    gw = Gateway(site_config(tmp_path, bacnet_port, free_udp_port(), url, "site-1", device_id=500402))
    await gw.start()
    try:
        async with BacnetPeer(free_udp_port(), timeout=5.0) as other:
            other.app.request(IAmRequest(iAmDeviceIdentifier=ObjectIdentifier("device,500402"),
                                         maxAPDULengthAccepted=1024, segmentationSupported="segmentedBoth",
                                         vendorID=842, destination=Address(f"127.0.0.1:{bacnet_port}")))
            await eventually(lambda: gw.status()["device"]["twins"], 5, "the twin heard")
            [twin] = gw.status()["device"]["twins"]
            ok, said = gw.health()
            assert ok and f"another device answers as device 500402, from {twin['address']}" in said, said
    finally:
        await gw.stop()
