"""Shared fixtures: every test gets a private HOME (BAC0 writes ~/.BAC0) and free loopback ports."""
from __future__ import annotations

import os
import random
import socket
import time

import pytest

import run_order

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
    items[:] = [item for unit in _dealing_order(config, items) for item in unit]


_SPREAD_DONE_AT = 0.9     # the share of the run dealt when the last waiting test or shared module is
_LONG_DONE_AT = 0.5       # and when the last of the long ones is


def _dealing_order(config, items) -> list[list]:
    """The tests spread through the run by their recorded seconds (run_order.py), in four kinds.

    The test command's scheduler (--dist loadgroup, --no-loadscope-reorder: pytest_cmdline_main) gives a worker its
    next test as it finishes one, in this order. The long tests, given more than the ini's timeout (their authors
    found they need it), are dealt longest first within the run's first half: one started late could be the run's
    last minutes alone. A module whose tests share a module-scoped fixture (a Chromium, a built wheel) goes to one
    worker whole (xdist_group), or each worker would start its own; those modules, longest first, and the tests of
    the files marked mostly_waiting (they wait on report intervals and polls) are dealt by nine tenths of the run,
    so its end is packed with the others, short and busy. In alphabetical order the dashboard modules had all six
    workers driving Chromiums at once and the test_report_* files all six waiting; with the long tests all dealt
    first, the waiting ones were left to the run's second half and still waited together."""
    # without pytest-timeout (-p no:timeout) there is no such ini key: every test is then of one length
    default = float(config.getini("timeout") or 0) if config.pluginmanager.hasplugin("timeout") else 0.0
    units: dict[str, list] = {}
    shared = set()
    for item in items:
        key = item.nodeid
        if _module_scoped_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.path.stem))
            _name_group(config, item, item.path.stem)
            key = item.nodeid.split("::")[0]
            shared.add(key)
        units.setdefault(key, []).append(item)

    def timeout(unit: list) -> float:
        return max((float(mark.args[0]) if mark.args else float(mark.kwargs.get("timeout", default)))
                   if (mark := item.get_closest_marker("timeout")) else default for item in unit)

    per_test = run_order.estimator(run_order.read_table())

    def seconds(unit: list) -> float:
        return sum(per_test(item.nodeid) for item in unit)

    long = run_order.Queue(done_at=_LONG_DONE_AT)
    waiting = run_order.Queue(done_at=_SPREAD_DONE_AT)
    modules = run_order.Queue(done_at=_SPREAD_DONE_AT)
    others = run_order.Queue()
    for key, unit in units.items():
        (waiting if unit[0].get_closest_marker("mostly_waiting") else long if timeout(unit) > default else
         modules if key in shared else others).units.append(unit)
    long.units.sort(key=lambda u: (timeout(u), seconds(u)), reverse=True)
    waiting.units.sort(key=timeout, reverse=True)     # stable: each file's tests stay in order
    modules.units.sort(key=seconds, reverse=True)
    return run_order.merge([long, waiting, modules, others], seconds)


def pytest_terminal_summary(terminalreporter, config):
    if getattr(config, "workerinput", None) is not None:
        return
    try:
        missing = run_order.files_missing(run_order.read_table(), config.rootpath)
    except ValueError as err:     # the collection said it already
        missing = [str(err)]
    if missing:
        terminalreporter.write_line(
            f"tests/durations.tsv lacks {len(missing)} test file(s) ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}): their tests were dealt as the median file's; to refresh it, "
            "see tests/run_order.py")


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
_PORT_BASE, _PORT_SPAN, _MIN_BLOCKS = 20000, 12000, 8
_next_port: dict[int, int] = {}


def _port_block() -> tuple[int, int]:
    """(first port, size) of this worker's block. The span is cut into one block a worker, eight at least: with eight
    fixed blocks, a run of twelve workers gave four pairs of workers one block each, and test_restart's gateway found
    the HTTP port it was handed taken."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    blocks = max(_MIN_BLOCKS, int(count) if count.isdigit() else 1)
    size = _PORT_SPAN // blocks
    return _PORT_BASE + (index % blocks) * size, size


def _free_port(kind: int) -> int:
    first, size = _port_block()
    for _ in range(size):
        # from a random place in the block: another pytest run on the machine (a developer's beside CI's) walks
        # the same block, and from the same start both would hand out the same ports in step (not the seeded
        # generator: a test seeding it would put every run at one start again)
        offset = _next_port.setdefault(first, random.SystemRandom().randrange(size))
        _next_port[first] = (offset + 1) % size
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", first + offset))
            except OSError:     # still held by an earlier test's stack, or by something else on the machine
                continue
            return first + offset
    raise RuntimeError(f"no free port in {first}..{first + size - 1}")


@pytest.fixture
def free_udp_port():
    """A callable returning a currently free loopback UDP port (BACnet stacks need distinct ports)."""
    return lambda: _free_port(socket.SOCK_DGRAM)


@pytest.fixture
def free_tcp_port():
    return lambda: _free_port(socket.SOCK_STREAM)
