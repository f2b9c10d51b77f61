"""What wakes the gateway at rest: on a small fanless box each timer that fires for nothing costs CPU and power.
The schedule waits for the kernel's word that the wall clock was set instead of glancing at it each second; the
HTTP heartbeat and the loop watchdog beat at the periods their docs give."""
from __future__ import annotations

import asyncio
import socket
from datetime import datetime, timezone

import pytest

import ven.schedule as schedule_module
from ven import http_api, loop_watchdog
from ven.schedule import EventSchedule
from ven.storage import Storage

pytestmark = pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="timerfd is Linux's")


@pytest.fixture
def storage(tmp_path):
    s = Storage(tmp_path / "gw.sqlite")
    yield s
    s.close()


async def test_the_schedule_at_rest_does_not_look_at_the_clock_each_second(storage, monkeypatch):
    # it glanced at the wall clock every second for a step (helper idle50): 1 of the idle gateway's 19 loop turns a
    # second, for something that happens a few times a year and that the kernel signals
    looks = []

    def counted() -> datetime:
        looks.append(1)
        return datetime.now(timezone.utc)
    monkeypatch.setattr(schedule_module, "utcnow", counted)
    sched = EventSchedule(storage, lambda state: None, clock=counted)
    await sched.start()
    try:
        assert sched._clock_set is not None and sched._clock_set.watching, "the kernel's timerfd is available here"
        await asyncio.sleep(0.5)     # the first pass's looks
        before = len(looks)
        await asyncio.sleep(2.5)
        assert len(looks) == before, "nothing changed and the clock was not set: no look at it"
        # the kernel's word (the timerfd readable) re-evaluates, as a glance that saw a step did. The host's clock is
        # not set here (other work shares it): the loop's handler is called, whose read says EAGAIN, ECANCELED then
        sched._clock_set._readable()
        await asyncio.sleep(0.5)
        assert len(looks) > before and sched._clock_set.watching, "looked again, and armed for the next step"
    finally:
        await sched.stop()
    assert sched._clock_set is None


async def test_a_schedule_given_its_own_clock_still_glances(storage):
    # tests and tools that step a clock of their own get no word from the kernel
    sched = EventSchedule(storage, lambda state: None, clock=lambda: datetime.now(timezone.utc))
    await sched.start()
    try:
        assert sched._clock_set is None
    finally:
        await sched.stop()


def test_the_heartbeat_and_the_loop_watchdog_beat_as_documented():
    # docs/operator-api.md: the lag is "how late a timer due each second fired"; loop_watchdog's docstring: 5 s.
    # At 0.25 s and 1 s they were 6 of the idle gateway's 19 loop turns a second, and the watchdog's thread woke
    # each second
    server = http_api.HttpServer(view=None, metrics=None)
    assert server.heartbeat.interval == 1.0
    assert loop_watchdog.BEAT_S == 5.0 and loop_watchdog.BEAT_S + loop_watchdog.PAUSED_S < loop_watchdog.LOOP_STUCK_S


async def test_a_vtn_answer_is_read_in_one_trip_to_the_worker(tmp_path, free_tcp_port, monkeypatch):
    # the schema check and the parse each went to a worker thread: two hand-overs and two wakes of the loop for each
    # poll's answer (three signed), where one does
    from test_vtn import running
    from waiting import eventually as until

    from ven.vtn_server import DemoVtn

    trips = []
    to_thread = asyncio.to_thread

    def counted(func, *args, **kwargs):
        trips.append(getattr(func, "__name__", repr(func)))
        return to_thread(func, *args, **kwargs)
    monkeypatch.setattr(asyncio, "to_thread", counted)
    async with DemoVtn(free_tcp_port(), poll_seconds=1) as server:
        async with running(tmp_path, server.url) as gw:
            await until(lambda: gw.vtn.connected, 10, "registration")
            await until(lambda: trips.count("_read_answer") >= 3, 10, "answers read")
    assert not {"validate_xml_schema", "parse_message", "verify_signature"} & set(trips), trips


async def test_the_own_address_watch_waits_for_the_kernel_s_word(monkeypatch):
    # it looked every 5 s (two binds, an ioctl, a sysfs read) for a change rtnetlink announces (helper idle50).
    # The announcement itself is tested where an address and a link really go: test_field_network.py
    from bacnet_api import own_address

    looks = []

    def counted(address):
        looks.append(address)
        return None
    monkeypatch.setattr(own_address, "missing", counted)
    # other work on this machine may add a link meanwhile (a test's veth): each message the kernel sends may bring a
    # look, and nothing else does
    told = []
    route_events = own_address.route_events

    class Counted(socket.socket):
        def recv(self, size):
            got = super().recv(size)
            told.append(len(got))
            return got

    def counted_events():
        sock = route_events()
        assert sock is not None, "rtnetlink is there on Linux"
        return Counted(fileno=sock.detach())
    monkeypatch.setattr(own_address, "route_events", counted_events)
    watch = own_address.OwnAddressWatch("127.0.0.1/8:47808", probe=counted)
    watch.start()
    try:
        await asyncio.sleep(own_address.PERIOD_S + 1)
        assert 1 <= len(looks) <= 1 + len(told), "the first look, at the start, and one for each change at most"
    finally:
        await watch.stop()


async def test_bac0s_task_list_cleanup_does_not_run_each_minute(free_udp_port):
    # BAC0's "Cleanup Tasks List" ran each minute for a list the gateway puts nothing in, and its four DEBUG lines
    # each called inspect.stack(): 60-90 ms of the loop a minute, a BAS's read held that long (helper idle50)
    from bacnet_api.device import GatewayDevice

    device = GatewayDevice(address=f"127.0.0.1/8:{free_udp_port()}", device_id=4000991, device_name="Quiet")
    await device.start()
    try:
        await asyncio.sleep(0.05)
        names = [t.get_name() for t in asyncio.all_tasks() if not t.done()]
        assert "aioCleanup Tasks List" not in names, names
    finally:
        await device.stop()
