"""Shared fixtures: every test gets a private HOME (BAC0 writes ~/.BAC0) and free loopback ports."""
from __future__ import annotations

import os
import random
import socket
import time

import pytest

# The gateway warns when forecaster.timezone (UTC by default) is not the machine's zone: the suite runs
# in UTC, the examples' zone, so that warning and BACnet's localTime do not depend on where it runs.
os.environ["TZ"] = "UTC"
time.tzset()


def pytest_configure(config):
    workerinput = getattr(config, "workerinput", None)     # an xdist worker: see pytest_configure_node
    if workerinput is not None and workerinput.get("loadgroup"):
        config.option.loadgroup = True
    # A test run out of time named as that test (timeouts.py). It calls pytest-timeout's module functions, which a
    # release may rename: without them the run keeps pytest-timeout's own handling rather than failing to start.
    timeout = config.pluginmanager.getplugin("timeout")
    if timeout is not None and all(hasattr(timeout, name) for name in
                                   ("timeout_sigalrm", "timeout_timer", "PYTEST_FAILURE_MESSAGE")):
        import timeouts
        config.pluginmanager.register(timeouts, "edge-gateway-timeouts")


@pytest.hookimpl(tryfirst=True)     # before xdist's, which makes -n's default distribution "load"
def pytest_cmdline_main(config):
    """The test command's scheduling (pyproject's [tool.pytest.ini_options] says why), set here, not in addopts:
    xdist's options in addopts made `-p no:xdist` a usage error ("unrecognized arguments: --dist ...")."""
    if config.pluginmanager.hasplugin("xdist") and config.getoption("numprocesses") and \
            config.getoption("dist") == "no":
        config.option.dist = "loadgroup"
        config.option.loadscopereorder = False


@pytest.hookimpl(optionalhook=True)     # xdist's: a run without it has no nodes
def pytest_configure_node(node):
    """Tell each worker the distribution is loadgroup. A worker parses the command line again (its -n, no --dist),
    so it took the run for "load" and named no group in its tests' ids: since the scheduling moved out of addopts
    each dashboard module went to every worker again, a Chromium started (and again after another module's test)
    56 times in a full run at -n 6, 289 s of setups."""
    node.workerinput["loadgroup"] = node.config.getvalue("dist") == "loadgroup"


@pytest.hookimpl(tryfirst=True)     # before xdist's, which names the groups from the xdist_group marks
def pytest_collection_modifyitems(config, items):
    _spread_waiting(items)
    _long_first_and_modules_whole(config, items)


_WAITING_DONE_AT = 0.9     # the share of the other tests handed out when the last waiting test is


def _spread_waiting(items):
    """Spread the tests of the files marked mostly_waiting evenly through the run, each file's tests in order.

    Those files spend their time waiting on report intervals and polls; in alphabetical order they came last, and
    the run's second half left the CPU 40-90 % idle while its first half (the BACnet and dashboard files) kept it
    busy. xdist hands tests out in collection order, so a mixed order lets waiting overlap with work. The waiting
    files are all handed out by the time nine tenths of the others are: a run that ended on them (a 20 s wait on a
    VTN's poll period the last test of two full runs, the last minute at under half a core of demand) left the CPU
    idle while it waited; the others, short and CPU-bound, pack the run's end. Test by test, not file by file: xdist
    deals a file's tests to whichever workers are free, so a waiting file handed out whole could have all six
    workers waiting on it at once (the test_report_* files, one after another among few others' tests, left a run
    under two cores of demand for half of a minute)."""
    files: dict[str, list] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::")[0], []).append(item)
    waiting = [f for f, tests in files.items() if tests[0].get_closest_marker("mostly_waiting")]
    others = [f for f in files if f not in waiting]
    if not waiting or not others:
        return
    # like a line drawn between the two lists: at every point the share of the waiting tests taken is that of the
    # others over _WAITING_DONE_AT
    waiting = [item for f in waiting for item in files[f]]
    others = [item for f in others for item in files[f]]
    n_waiting, n_others = len(waiting), len(others)
    order, w, o = [], 0, 0
    while w < n_waiting or o < n_others:
        if o == n_others or (w < n_waiting and w * n_others * _WAITING_DONE_AT <= o * n_waiting):
            order.append(waiting[w])
            w += 1
        else:
            order.append(others[o])
            o += 1
    items[:] = order


def _long_first_and_modules_whole(config, items):
    """Hand the long tests out first, and keep a module whose tests share a module-scoped fixture on one worker.

    The test command's scheduler (--dist loadgroup, --no-loadscope-reorder: pytest_cmdline_main) gives a worker its
    next test as it finishes one, in this order; xdist's default gave each worker a run of up to a twelfth of what was
    left (150 tests early in the run), so one worker could still hold minutes of tests while the others had none.
    The long tests are those given more than the ini's timeout (their authors found they need it): in the spread
    order they came in the run's last fifth (a 177 s replay at 1469 of 1852), where one started late could be the
    run's last minutes alone. A module-scoped fixture (a Chromium, a built wheel) serves
    only the worker that set it up, so such a module goes to one worker whole (xdist_group), or each worker
    would start its own, and again after each test of another module between its tests."""
    # without pytest-timeout (-p no:timeout) there is no such ini key: every test is then of one length
    default = float(config.getini("timeout") or 0) if config.pluginmanager.hasplugin("timeout") else 0.0
    units: dict[str, list] = {}
    for item in items:
        shared = _module_scoped_fixture(item)
        if shared:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))
            _name_group(config, item, item.path.stem)
        units.setdefault(item.nodeid.split("::")[0] if shared else item.nodeid, []).append(item)

    def timeout(unit: list) -> float:
        return max((float(mark.args[0]) if mark.args else float(mark.kwargs.get("timeout", default)))
                   if (mark := item.get_closest_marker("timeout")) else default for item in unit)

    long = sorted((u for u in units.values() if timeout(u) > default), key=timeout, reverse=True)
    rest = [u for u in units.values() if timeout(u) <= default]
    items[:] = [item for unit in long + rest for item in unit]


def _name_group(config, item, group: str) -> None:
    """What xdist's worker does with an xdist_group mark (the scheduler reads the group from the id's "@group"),
    done here for pytest 9, which keeps a node's id in `_id`: xdist 3.8 still writes `_nodeid`, the scheduler never
    saw a group, and each dashboard module was dealt to every worker, each starting a Chromium of its own."""
    if not getattr(config.option, "loadgroup", False) or "@" in item.nodeid or not hasattr(item, "_id"):
        return
    try:
        from _pytest.nodeid import coerce_node_id
    except ImportError:     # a pytest whose ids are kept otherwise: xdist's own marking is what serves there
        return
    item._id = coerce_node_id(f"{item.nodeid}@{group}")


def _module_scoped_fixture(item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    return info is not None and any(defs and defs[-1].scope == "module" for defs in info.name2fixturedefs.values())


@pytest.fixture(autouse=True)
def private_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    return home


# Ports handed to tests come from below the kernel's ephemeral range (32768 and up on Linux), one block per
# xdist worker: a port the kernel picked for "port 0" was free when asked, but any client socket of another
# worker (every outgoing UDP or TCP socket gets an ephemeral port) could take it before the test bound it.
_PORT_BASE, _PORT_BLOCK, _BLOCKS = 20000, 1500, 8
_next_port: dict[int, int] = {}


def _free_port(kind: int) -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    first = _PORT_BASE + (index % _BLOCKS) * _PORT_BLOCK
    for _ in range(_PORT_BLOCK):
        # from a random place in the block: another pytest run on the machine (a developer's beside CI's) walks
        # the same block, and from the same start both would hand out the same ports in step (not the seeded
        # generator: a test seeding it would put every run at one start again)
        offset = _next_port.setdefault(first, random.SystemRandom().randrange(_PORT_BLOCK))
        _next_port[first] = (offset + 1) % _PORT_BLOCK
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", first + offset))
            except OSError:     # still held by an earlier test's stack, or by something else on the machine
                continue
            return first + offset
    raise RuntimeError(f"no free port in {first}..{first + _PORT_BLOCK - 1}")


@pytest.fixture
def free_udp_port():
    """A callable returning a currently free loopback UDP port (BACnet stacks need distinct ports)."""
    return lambda: _free_port(socket.SOCK_DGRAM)


@pytest.fixture
def free_tcp_port():
    return lambda: _free_port(socket.SOCK_STREAM)
