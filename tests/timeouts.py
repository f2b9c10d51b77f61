"""pytest-timeout's signal method, its alarm raised only inside a test's setup, call or teardown.

pytest-timeout arms SIGALRM for a test's whole run, which includes pytest's own work between those phases: making
the report of a failure (formatting its traceback) and, under xdist, sending it. An alarm landing there raised
`Failed` where pytest catches nothing: an INTERNALERROR, the run ended (`-n 0`: "no tests ran"; `-n 2`:
"Unexpectedly no active workers available") and the test that ran out of time unnamed. Here the alarm that lands
between phases fails the next phase instead (the call, or the teardown once it has run, so fixtures still end:
mounts, gateway processes, network namespaces); a test whose time ran out only in its last report passes as it
ran. Once the alarm has come it is armed again for _GRACE_S, so what follows is bounded too: a teardown fails then,
and a hang between phases stops the process as pytest-timeout's thread method does.

Not the thread method for every timeout: it ends the process with no teardown at all (mounts left, gateway
processes orphaned; at `-n 0` no test runs after it). Not func_only: fixtures (a gateway, a VTN, a Chromium) would
have no bound.
"""
from __future__ import annotations

import signal
import threading
import traceback

import pytest
import pytest_timeout

_GRACE_S = 30.0
_IN_PHASE = pytest.StashKey[bool]()
_RAN_OUT = pytest.StashKey[str]()       # the failure to report, when the alarm landed between phases


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_timeout_set_timer(item, settings):
    if settings.method != "signal" or threading.current_thread() is not threading.main_thread():
        return None     # pytest-timeout's own

    def handler(signum, frame):
        __tracebackhide__ = True
        signal.setitimer(signal.ITIMER_REAL, _GRACE_S)     # what comes after (a teardown, the reports) bounded too
        if item.stash.get(_IN_PHASE, False):
            pytest_timeout.timeout_sigalrm(item, settings)      # the stacks, then Failed in the phase
        elif _RAN_OUT in item.stash:        # still between phases: where, the other threads' stacks, then exit 1
            terminal = item.config.get_terminal_writer()
            terminal.line(f"{item.nodeid}: still in {_hook(frame)} {_GRACE_S:.0f} s after its timeout, at:")
            terminal.write("".join(traceback.format_stack(frame)))
            pytest_timeout.timeout_timer(item, settings)
        else:
            item.stash[_RAN_OUT] = f"{pytest_timeout.PYTEST_FAILURE_MESSAGE % settings.timeout} Its time ran " \
                                   f"out in {_hook(frame)}, between its phases"

    def cancel():
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)

    item.cancel_timeout = cancel
    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, settings.timeout)
    return True


def _hook(frame) -> str:
    """The hook pytest was in when the alarm came (pytest_runtest_makereport, pytest_runtest_logreport...)."""
    while frame is not None:
        if frame.f_code.co_name.startswith("pytest_runtest_"):
            return frame.f_code.co_name
        frame = frame.f_back
    return "pytest's own work"


def _fail(item) -> None:
    __tracebackhide__ = True
    reason = item.stash[_RAN_OUT]
    del item.stash[_RAN_OUT]
    pytest.fail(reason, pytrace=False)


def _phase(item, teardown: bool):
    __tracebackhide__ = True
    if not teardown and _RAN_OUT in item.stash:
        _fail(item)
    item.stash[_IN_PHASE] = True
    try:
        result = yield
    finally:
        item.stash[_IN_PHASE] = False
    if teardown and _RAN_OUT in item.stash:     # after the fixtures' ends, which must run whatever happened
        _fail(item)
    return result


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item):
    return (yield from _phase(item, teardown=False))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item):
    return (yield from _phase(item, teardown=False))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item, nextitem):
    return (yield from _phase(item, teardown=True))
