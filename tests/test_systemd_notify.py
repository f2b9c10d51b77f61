"""`run` under a Type=notify unit (examples/edge-gateway.service): READY=1 once started, WATCHDOG=1 from the event
loop, the start extended while bacnet.address is waited for, STOPPING=1 at the stop. systemd's side is a real
datagram socket named by NOTIFY_SOCKET, as systemd makes one; the gateway is a real `edge-gateway run` process.
And under any supervisor: a loop stuck for long exits with every thread's stack."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from bacnet_peer import BacnetPeer
from gateway_process import START_S, GatewayProcess, waiting_for_its_address, write_config
from netns import absent_address
from waiting import eventually

from ven.systemd_notify import SystemdNotifier


class NotifySocket:
    """systemd's end: each datagram, with the monotonic time it arrived (read by a thread of its own, so the
    times are the arrivals' even while the test's loop is blocked)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="notify-", dir="/tmp")    # a socket path has 108 bytes at most
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.got: list[tuple[float, list[str]]] = []
        self._open = True
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while self._open:
            try:
                data = self.sock.recv(4096)
            except (socket.timeout, OSError):
                continue
            self.got.append((time.monotonic(), data.decode().split("\n")))

    def drain(self) -> list[list[str]]:
        return [fields for _, fields in list(self.got)]

    def has(self, field: str) -> bool:
        return any(field in fields for fields in self.drain())

    def close(self):
        self._open = False
        self._reader.join(2)
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


@pytest.fixture
def notify_socket():
    ns = NotifySocket()
    yield ns
    ns.close()


@pytest.mark.timeout(150)     # a gateway process's start (START_S), then the test
async def test_run_is_ready_once_its_device_answers_pings_the_watchdog_and_says_it_stops(
        tmp_path, free_udp_port, free_tcp_port, notify_socket, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.path)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")     # WatchdogSec=2s: a ping every second
    port = free_udp_port()
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=port, http_port=free_tcp_port(), storage=tmp_path / "gw.sqlite",
                 ven_name="notify", device_id=500321)
    gateway = GatewayProcess(config, tmp_path / "gateway.log")
    try:
        gateway.start()
        await eventually(lambda: notify_socket.has("READY=1") or not gateway.alive, START_S, "READY=1")
        assert gateway.alive, gateway.log()
        # started means started: the device answers and the start's last line is out
        assert "edge-gateway ready" in gateway.log()
        async with BacnetPeer(free_udp_port(), timeout=2.0) as bas:
            assert await bas.who_is(f"127.0.0.1:{port}")
        ready = next(fields for fields in notify_socket.drain() if "READY=1" in fields)
        # systemd arms its watchdog at the first ping: none before the start is over
        assert notify_socket.drain()[0] == ready, notify_socket.drain()
        assert any(f.startswith("STATUS=ready: BACnet 127.0.0.1/8:") for f in ready), ready

        def pings():
            return [at for at, fields in list(notify_socket.got) if fields == ["WATCHDOG=1"]]
        await eventually(lambda: len(pings()) >= 3, 15, "the watchdog's pings")
        seen = pings()
        assert max(b - a for a, b in zip(seen, seen[1:])) < 2.0, "a ping late enough for systemd to kill"
    finally:
        code = gateway.stop()
    assert code == 0, gateway.log()
    assert notify_socket.has("STOPPING=1")
    assert not any("EXTEND_TIMEOUT_USEC" in f for fields in notify_socket.drain() for f in fields), "no wait"
    assert "Traceback" not in gateway.log() and "systemd notification" not in gateway.log()


@pytest.mark.timeout(60)
async def test_the_start_is_extended_while_the_bacnet_address_is_waited_for(tmp_path, free_tcp_port,
                                                                           notify_socket, monkeypatch):
    # the default TimeoutStartSec (90 s) would otherwise kill a gateway waiting for a late DHCP lease and start it
    # again, over and over; nothing is sent while it waits, so no namespace is needed
    absent = absent_address("198.18.255.78")
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.path)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    gateway = waiting_for_its_address(tmp_path, absent, "late-lease", free_tcp_port())
    try:
        gateway.start()
        extended = lambda: [fields for fields in notify_socket.drain()   # noqa: E731
                            if any(f.startswith("EXTEND_TIMEOUT_USEC=") for f in fields)]
        await eventually(lambda: len(extended()) >= 3 or not gateway.alive, 20, "the start extended, again")
        assert gateway.alive, gateway.log()
        assert f"STATUS=waiting for {absent} on an interface (bacnet.address)" in extended()[-1]
        # systemd moves the deadline to now + this: the last one, as the address comes, leaves the whole start its
        # time (TimeoutStartSec's 90 s), not a few seconds after a long wait
        assert "EXTEND_TIMEOUT_USEC=90000000" in extended()[-1]
        assert not notify_socket.has("WATCHDOG=1"), "the watchdog is not armed while the start waits"
        assert not notify_socket.has("READY=1")
    finally:
        code = gateway.stop()
    assert code == 0, gateway.log()
    assert notify_socket.has("STOPPING=1")


async def test_the_pings_come_from_the_event_loop_and_stop_while_it_is_stuck(notify_socket):
    notifier = SystemdNotifier({"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "200000"})
    task = asyncio.create_task(notifier.keep_alive())
    try:
        await asyncio.sleep(0.5)
        time.sleep(0.8)        # a call that does not return to the loop
        stuck_until = time.monotonic()
        await asyncio.sleep(0.3)
    finally:
        task.cancel()
    await asyncio.sleep(0.2)    # the last datagram read
    pings = [at for at, fields in notify_socket.got if fields == ["WATCHDOG=1"]]
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert max(gaps) >= 0.75, gaps
    assert sorted(gaps)[len(gaps) // 2] < 0.2, gaps
    assert any(at > stuck_until for at in pings), "and again once the loop turns"


def test_only_the_process_systemd_watches_pings_and_the_children_do_not_inherit_the_socket(notify_socket):
    env = {"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert SystemdNotifier(env).watchdog_s is None, "another pid's watchdog"
    assert env == {}, "unset, as sd_notify's unset_environment: the fit child is not systemd's main process"
    env = {"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert SystemdNotifier(env).watchdog_s == 30.0
    assert SystemdNotifier({"WATCHDOG_USEC": "30000000"}).watchdog_s is None, "no socket to ping"
    quiet = SystemdNotifier({})
    assert not quiet.enabled
    quiet.ready("ready")       # not under systemd: nothing, and no error


def test_an_abstract_notify_socket(caplog):
    name = f"edge-gateway-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        notifier.ready("ready: test")
        assert sock.recv(4096).decode().split("\n") == ["READY=1", "STATUS=ready: test"]
    # systemd gone: one WARNING naming the socket, not one a ping
    notifier.send("WATCHDOG=1")
    notifier.send("WATCHDOG=1")
    said = [r.getMessage() for r in caplog.records if "systemd notification" in r.getMessage()]
    assert len(said) == 1 and f"@{name}" in said[0], said


@pytest.mark.timeout(90)
def test_a_loop_stuck_for_long_exits_with_every_threads_stack_for_any_supervisor(tmp_path, free_udp_port,
                                                                                 free_tcp_port):
    # no systemd here (Docker's restart policy restarts only a process that exits): `run` itself, with the
    # threshold at 2 s rather than 60, a call that never returns to the loop 3 s after the start has ended (the watch
    # begins there: a call 4 s after the start began landed inside a start slowed by load, and was never caught)
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=free_udp_port(), http_port=free_tcp_port(), storage=tmp_path / "gw.sqlite",
                 ven_name="stuck-loop", device_id=500322)
    script = tmp_path / "run_stuck.py"
    script.write_text(f"""
import asyncio, sys, time
import ven.loop_watchdog
ven.loop_watchdog.LOOP_STUCK_S, ven.loop_watchdog.BEAT_S = 2.0, 0.1
from ven.cli import run_gateway

def stuck_in_a_call():
    time.sleep(600)

def customize(gateway):
    start = gateway.start

    async def start_then_stick():
        await start()
        asyncio.get_running_loop().call_later(3.0, stuck_in_a_call)
    gateway.start = start_then_stick

sys.exit(run_gateway({str(config)!r}, customize))
""")
    # an exit within 60 s is the watchdog's, not the call's end
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1, (res.returncode, res.stderr[-3000:])
    assert "edge-gateway ready" in res.stderr, "the loop turned normally before, beyond the threshold"
    assert "edge-gateway: the event loop has not turned for 2 s: every thread's stack follows" in res.stderr, \
        res.stderr[-3000:]
    assert "stuck_in_a_call" in res.stderr, res.stderr[-3000:]


@pytest.mark.timeout(60)
def test_a_process_stopped_whole_and_continued_is_not_taken_for_a_stuck_loop(tmp_path):
    # SIGSTOP, Ctrl-Z, `docker pause`: the watch and the loop stop together, and the time they were stopped is not
    # the loop's (faulthandler's timer fired in 2 runs of 3 as the process went on). A stop twice the threshold, and
    # past the pause the watch tells by (PAUSED_S under LOOP_STUCK_S, as in the product); the loop then turns on for
    # 2 s, twenty of the watch's looks: it was 80 turns counted from the start, 8 s of waiting after a 4 s stop
    script = tmp_path / "paused.py"
    script.write_text("""
import asyncio, sys, time
import ven.loop_watchdog as watchdog
watchdog.LOOP_STUCK_S, watchdog.BEAT_S, watchdog.PAUSED_S = 2.0, 0.1, 1.0

async def main():
    task = asyncio.create_task(watchdog.exit_when_stuck())
    await asyncio.sleep(0.5)
    # the gap between two looks at the clock, the first taken before "watched": the stop falls between two of
    # them wherever it lands (a stop landing just after the print, before a turn's start was taken, went unseen)
    last = begun = time.monotonic()
    print("watched", flush=True)
    after = None
    while after is None or time.monotonic() - after < 2.0:
        await asyncio.sleep(0.1)
        now = time.monotonic()
        if after is None and now - last > 3.0:
            after = now        # the stop is over
        if after is None and now - begun > 25.0:
            break
        last = now
    task.cancel()
    print("the loop ran to its end" if after is not None else "no stop seen", flush=True)

asyncio.run(main())
""")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "watched\n", proc.stderr.read()[-2000:]
        proc.send_signal(signal.SIGSTOP)
        time.sleep(4.0)     # twice the threshold
        proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "the loop ran to its end" in out, (proc.returncode, err[-2000:])
    assert "has not turned" not in err, err[-2000:]


def test_a_notification_that_fails_is_said_once_and_its_end_too(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ven.systemd_notify")
    path = tempfile.mkdtemp(prefix="notify-", dir="/tmp") + "/late"
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    notifier.send("WATCHDOG=1")     # no socket yet: systemd restarting, say
    notifier.send("WATCHDOG=1")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        notifier.send("WATCHDOG=1")
        notifier.send("WATCHDOG=1")
    os.unlink(path)
    os.rmdir(os.path.dirname(path))
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2 and "failed" in said[0] and said[1] == f"systemd notification to {path} works again", said


@pytest.mark.parametrize("usec", ["0", "", "abc", "3_000_000", "３０００", "-5"])
def test_a_watchdog_usec_systemd_would_not_write_is_no_watchdog(notify_socket, usec):
    assert SystemdNotifier({"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": usec}).watchdog_s is None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["stderr gone", "holding the GIL"])
def test_a_stuck_loop_exits_whatever_its_stderr_and_its_grip_on_the_gil(tmp_path, case):
    # stderr a pipe whose reader died (`run 2>&1 | tee`, tee killed): the write failed and the thread with it; a
    # call that never returns holding the GIL (a runaway regex) stops the watchdog's thread: faulthandler's C timer
    script = tmp_path / "stuck.py"
    script.write_text(f"""
import asyncio, re, time
import ven.loop_watchdog as watchdog
watchdog.LOOP_STUCK_S, watchdog.BEAT_S, watchdog.GIL_BACKSTOP_S = 2.0, 0.1, 3.0

def stuck():
    if {case == "holding the GIL"!r}:
        re.match(r"(a+)+$", "a" * 40 + "b")     # minutes, in C, holding the GIL
    else:
        time.sleep(60)

async def main():
    task = asyncio.create_task(watchdog.exit_when_stuck())
    await asyncio.sleep(0.5)
    stuck()

asyncio.run(main())
""")
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if case == "stderr gone":
        proc.stderr.close()
    try:
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 1 and time.monotonic() - began < 20, (code, time.monotonic() - began)


@pytest.mark.timeout(60)
def test_the_watch_survives_threads_it_cannot_start_and_still_ends_a_stuck_loop(tmp_path):
    # at a process or memory limit (RLIMIT_NPROC, RLIMIT_AS) a thread could not start: the watch thread's own (the
    # task raised, nothing said), then faulthandler's backstop timer's, which ended the watch thread for good, so a
    # loop stuck after that was never caught
    script = tmp_path / "limited.py"
    script.write_text("""
import asyncio, faulthandler, threading, time
import ven.loop_watchdog as watchdog
watchdog.LOOP_STUCK_S, watchdog.BEAT_S, watchdog.START_AGAIN_S = 2.0, 0.1, 0.3

real_start, real_arm, refused = threading.Thread.start, faulthandler.dump_traceback_later, {"start": 1, "arm": 3}

def start(self):
    if self.name == "loop-watchdog" and refused["start"]:
        refused["start"] -= 1
        raise RuntimeError("can't start new thread")
    return real_start(self)

def arm(*args, **kwargs):
    if refused["arm"]:
        refused["arm"] -= 1
        raise RuntimeError("unable to start watchdog thread")
    return real_arm(*args, **kwargs)
threading.Thread.start, faulthandler.dump_traceback_later = start, arm

async def main():
    asyncio.create_task(watchdog.exit_when_stuck())
    await asyncio.sleep(1.5)
    time.sleep(30)      # stuck

asyncio.run(main())
""")
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=50)
    assert res.returncode == 1 and "the event loop has not turned for 2 s" in res.stderr, (res.returncode,
                                                                                          res.stderr[-3000:])
    assert "watchdog thread could not start (can't start new thread" in res.stderr, res.stderr[-3000:]
    assert res.stderr.count("backstop timer could not start (unable to start watchdog thread") == 1, res.stderr[-3000:]
    assert "backstop timer runs again" in res.stderr
