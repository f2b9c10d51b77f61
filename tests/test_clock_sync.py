"""Whether the machine's clock is synchronized, as the kernel says through adjtimex(2) read-only: its answer decoded,
the struct laid out as glibc's, one real call on this machine, and the log's one WARNING when the clock stops being
synchronized and one INFO when it is again. Nothing here sets the clock: the reader only ever passes modes 0."""
from __future__ import annotations

import ctypes
import logging
import math
import sys

import pytest

from ven.clock_sync import (NOT_SYNCHRONIZED, STA_UNSYNC, ClockSync, SyncWatch, _Timex, decode, metric_value,
                            read_clock_sync, status_fields)
from ven.config_checks import clock_sync_warnings

pytestmark = pytest.mark.timeout(10)

STA_PLL, STA_NANO = 0x0001, 0x2000
TIME_OK, TIME_INS, TIME_WAIT, TIME_ERROR = 0, 1, 4, 5
SYNCED = ClockSync(True, 0.0125, 0.0003)
DRIFTING = ClockSync(False, 16.0, 16.0)


def test_the_answer_is_decoded_from_the_status_bit_and_the_return_value():
    # chrony keeping the clock: PLL on, the error bounded to milliseconds
    assert decode(TIME_OK, STA_PLL | STA_NANO, 12500, 300) == ClockSync(True, 0.0125, 0.0003)
    # a leap second announced or just passed is still a synchronized clock
    assert decode(TIME_INS, STA_PLL, 1000, 10).synchronized and decode(TIME_WAIT, STA_PLL, 1000, 10).synchronized
    # no time daemon (this was a VM's answer): TIME_ERROR and STA_UNSYNC, maxerror at the kernel's 16 s cap
    assert decode(TIME_ERROR, STA_UNSYNC | STA_NANO, 16_000_000, 16_000_000) == DRIFTING
    # either one alone says unsynchronized
    assert not decode(TIME_OK, STA_UNSYNC, 500, 0).synchronized
    assert not decode(TIME_ERROR, STA_PLL, 500, 0).synchronized


@pytest.mark.skipif(not sys.platform.startswith("linux") or ctypes.sizeof(ctypes.c_long) != 8,
                    reason="glibc's 64-bit layout (x86_64, aarch64)")
def test_the_struct_is_laid_out_as_glibcs_on_64_bit_linux():
    # offsetof / sizeof of glibc 2.36's struct timex (bits/timex.h) on x86_64, by gcc: the kernel writes all
    # 208 bytes, so a struct that ended at tai would have the kernel write past it
    assert ctypes.sizeof(_Timex) == 208
    assert [getattr(_Timex, f).offset for f in ("maxerror", "esterror", "status", "time", "tai")] == [24, 32, 40, 72, 160]


def test_this_machine_answers_without_raising_and_without_root():
    sync = read_clock_sync()
    assert sync is None or (isinstance(sync.synchronized, bool) and sync.max_error_s >= 0), sync
    if sys.platform.startswith("linux"):    # adjtimex read-only needs no privilege; only a seccomp filter refuses it
        assert sync is not None


def test_status_and_metric_say_true_false_or_cannot_tell():
    assert status_fields(SYNCED) == {"clock_synchronized": True, "clock_max_error_ms": 12.5}
    # the kernel holds maxerror at 16 s while unsynchronized: not a bound worth showing
    assert status_fields(DRIFTING) == {"clock_synchronized": False, "clock_max_error_ms": None}
    assert status_fields(None) == {"clock_synchronized": None, "clock_max_error_ms": None}
    assert metric_value(SYNCED) == 1 and metric_value(DRIFTING) == 0 and math.isnan(metric_value(None))


def test_check_config_warns_only_when_the_kernel_says_unsynchronized():
    assert clock_sync_warnings(lambda: DRIFTING) == [NOT_SYNCHRONIZED]
    assert clock_sync_warnings(lambda: SYNCED) == []
    assert clock_sync_warnings(lambda: None) == []      # cannot tell: not a guess either way


def test_one_warning_when_the_clock_drifts_one_info_when_it_is_synchronized_again(caplog):
    caplog.set_level(logging.DEBUG, logger="ven.clock_sync")
    answers = iter([DRIFTING, DRIFTING, DRIFTING, None, SYNCED, SYNCED, DRIFTING, DRIFTING])
    asked = []
    watch = SyncWatch(lambda: asked.append(1) or next(answers), every_s=300)

    def lines():
        return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "ven.clock_sync"]

    assert watch.check(0.0) == DRIFTING and lines() == []          # the first look: a daemon may be setting it
    assert watch.check(299.0) == DRIFTING and len(asked) == 1      # the kernel is asked every few minutes
    watch.check(300.0)
    assert lines() == [(logging.WARNING, NOT_SYNCHRONIZED)] and watch.warned
    watch.check(600.0)                                             # still drifting: nothing more
    assert len(asked) == 3 and len(lines()) == 1
    assert watch.check(900.0) is None and len(lines()) == 1        # cannot tell now: not an end
    watch.check(1200.0)
    assert lines()[1:] == [(logging.INFO, "the machine's clock is synchronized again (maximum error 12 ms)")]
    assert watch.last == SYNCED and not watch.warned
    watch.check(1500.0)
    watch.check(1800.0)
    assert len(lines()) == 2
    watch.check(2100.0)                                            # drifting again: a new fault
    assert [level for level, _ in lines()] == [logging.WARNING, logging.INFO, logging.WARNING]


def test_a_clock_a_time_daemon_sets_soon_after_boot_logs_nothing(caplog):
    # the kernel boots unsynchronized; a gateway started at boot looks before chrony has set the clock
    caplog.set_level(logging.DEBUG, logger="ven.clock_sync")
    answers = iter([DRIFTING, SYNCED, SYNCED])
    watch = SyncWatch(lambda: next(answers), every_s=300)
    assert watch.check(0.0) == DRIFTING and status_fields(watch.last)["clock_synchronized"] is False  # as it is
    assert watch.warned is False        # the dashboard names it as the log does: not at a boot's first look
    watch.check(300.0)
    watch.check(600.0)
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []


def test_a_machine_that_cannot_tell_logs_nothing(caplog):
    caplog.set_level(logging.DEBUG, logger="ven.clock_sync")
    watch = SyncWatch(lambda: None, every_s=0)
    for t in range(5):
        assert watch.check(float(t)) is None
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []


def test_a_step_of_the_wall_clock_is_one_warning_either_way(caplog):
    # NTP putting a slow box right steps its clock ahead: reports skipped the span and events jumped with it, and
    # nothing in the log said why (a step back was told only by the forecaster, and only with readings coming)
    caplog.set_level(logging.DEBUG, logger="ven.clock_sync")
    wall = [1_800_000_000.0]
    watch = SyncWatch(lambda: SYNCED, every_s=300, wall=lambda: wall[0])

    def lines():
        return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "ven.clock_sync"]

    watch.check(0.0)
    wall[0] += 20                                   # within a look's slack: time passing, or a small slew
    watch.check(1.0)
    assert lines() == []
    wall[0] += 3600
    watch.check(2.0)
    watch.check(3.0)
    wall[0] -= 2 * 86400
    watch.check(4.0)
    assert lines() == [
        (logging.WARNING, "wall clock jumped ahead 60 min (set by NTP or by hand): times stamped from now on follow it"),
        (logging.WARNING, "wall clock went back 2 days (set by NTP or by hand): times stamped from now on follow it")]


def test_the_step_that_sets_a_clock_not_yet_set_is_left_to_the_clock_not_set_lines(caplog):
    # a box without a clock battery boots in 2020 and NTP sets it: a WARNING at every boot beside the lines that
    # already say the clock was not set and then was
    from ven.wallclock import CLOCK_FLOOR

    caplog.set_level(logging.DEBUG, logger="ven.clock_sync")
    wall = [1_577_836_800.0]    # 2020-01-01
    watch = SyncWatch(lambda: SYNCED, every_s=300, wall=lambda: wall[0])
    watch.check(0.0)
    wall[0] = CLOCK_FLOOR.timestamp() + 400 * 86400
    watch.check(1.0)
    assert [r for r in caplog.records if r.name == "ven.clock_sync"] == []
