"""A client on the network holding connections to the operator API, against the real `edge-gateway run` process
under systemd's default limit of 1024 file descriptors: the API refuses connections beyond its limit, and the
rest of the gateway (the VTN's connections, storage.path, the log) does not notice."""
from __future__ import annotations

import asyncio
import os
import re
import resource
import socket

import aiohttp
import pytest
from gateway_process import START_S, GatewayProcess, write_config
from waiting import eventually

from ven.vtn_server import DemoVtn

pytestmark = pytest.mark.timeout(180)   # a gateway process's start (START_S), then the test

HELD = 1100


async def hold_connections(port: int) -> list[socket.socket]:
    held = []
    for _ in range(HELD // 50):
        for _ in range(50):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            held.append(s)
        await asyncio.sleep(0.02)   # a listen backlog's worth at a time, as a client in a loop gets them in
    return held


async def healthz(port: int) -> int | None:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
            async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                return resp.status
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return None


async def test_held_connections_leave_the_vtn_storage_and_log_alone(tmp_path, free_udp_port, free_tcp_port):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < HELD + 200:
        pytest.skip(f"this test holds {HELD} sockets; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, HELD + 200), hard))
    config, http_port, vtn_port = tmp_path / "gw.toml", free_tcp_port(), free_tcp_port()
    write_config(config, bacnet_port=free_udp_port(), vtn_port=vtn_port, http_port=http_port,
                 storage=tmp_path / "gw.sqlite", ven_name="held")
    vtn = DemoVtn(vtn_port, poll_seconds=1)
    await vtn.start()
    held: list[socket.socket] = []
    try:
        with GatewayProcess(config, tmp_path / "gateway.log") as gw:
            await eventually(lambda: "telemetry requested" in gw.log(), START_S, "registration")
            resource.prlimit(gw.proc.pid, resource.RLIMIT_NOFILE, (1024, 1024))   # systemd's default soft limit
            held = await hold_connections(http_port)
            fds = lambda: len(os.listdir(f"/proc/{gw.proc.pid}/fd"))
            await eventually(lambda: "refusing new ones" in gw.log() or fds() > 1000, 30, "the limit reached")
            # under load, connections accepted in one go are counted open until the next turns close them
            await eventually(lambda: fds() < 200, 10, "the process's file descriptors back under 200 (the held "
                                                     "connections took them)")
            # the VTN restarts: registering again needs new connections
            await vtn.stop()
            vtn = DemoVtn(vtn_port, poll_seconds=1)
            await vtn.start()
            await eventually(lambda: vtn.vens, 20, "registration after the VTN's restart")
            assert "ERROR" not in gw.log() and "Too many open files" not in gw.log(), gw.log()[-3000:]
            # who holds them named, for the operator to find or block
            refusing = re.findall(r"http: 64 connections open \(\d+ from 127\.0\.0\.1\), refusing new ones", gw.log())
            assert len(refusing) == 1, gw.log()[-3000:]
            for s in held:
                s.close()
            await eventually(lambda: healthz(http_port), 15, "/healthz answered once they are closed")
            await eventually(lambda: "http: accepting connections again" in gw.log(), 5, "the end of refusing")
            assert gw.log().count("http: accepting connections again") == 1
    finally:
        for s in held:
            s.close()
        await vtn.stop()
