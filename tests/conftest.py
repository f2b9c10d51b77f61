"""Shared fixtures: every test gets a private HOME (BAC0 writes ~/.BAC0) and free loopback ports."""
from __future__ import annotations

import os
import socket
import time

import pytest

# The gateway warns when forecaster.timezone (UTC by default) is not the machine's zone: the suite runs
# in UTC, the examples' zone, so that warning and BACnet's localTime do not depend on where it runs.
os.environ["TZ"] = "UTC"
time.tzset()


@pytest.fixture(autouse=True)
def private_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    return home


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_udp_port():
    """A callable returning a currently free loopback UDP port (BACnet stacks need distinct ports)."""
    return lambda: _free_port(socket.SOCK_DGRAM)


@pytest.fixture
def free_tcp_port():
    return lambda: _free_port(socket.SOCK_STREAM)
