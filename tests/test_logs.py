"""The operator log's flood guard, on records as the stacks make them (pure: no handlers but a list)."""
from __future__ import annotations

import logging

from cli_run import run_cli
from ven.logs import FloodGuard


def _passed(guard: FloodGuard, name: str, msg: str, *args) -> bool:
    return guard.filter(logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args or None, None))


def test_a_stack_message_formatted_by_the_stack_itself_is_one_kind_whatever_its_numbers():
    # openleadr formats its messages itself (f-strings): keyed by their whole text, each repeat with another
    # status, port or request id was a new kind and got its own line
    guard = FloodGuard()
    assert _passed(guard, "openleadr", "Non-OK status 500 when performing a request to "
                                       "http://127.0.0.1:8080/OpenADR2/Simple/2.0b/EiEvent: 7f3a9c01 failed")
    assert not _passed(guard, "openleadr", "Non-OK status 502 when performing a request to "
                                           "http://127.0.0.1:8081/OpenADR2/Simple/2.0b/EiEvent: 0b44e2aa failed")
    assert _passed(guard, "openleadr", "The VTN could not be reached")       # another kind still gets its line


def test_templated_messages_are_keyed_by_their_template():
    guard = FloodGuard()
    assert _passed(guard, "bacpypes3.x", "decoding error from %s", "10.0.0.1")
    assert not _passed(guard, "bacpypes3.x", "decoding error from %s", "10.0.0.2")
    assert _passed(guard, "ven.vtn", "not a stack: %s", "always")            # the gateway's own lines pass
    assert _passed(guard, "ven.vtn", "not a stack: %s", "always")


_LOGS = """
import logging
from ven.logs import setup_logging
setup_logging("INFO")
log = logging.getLogger("ven.test")
log.info("meter answering again")
log.warning("meter fault: no answer")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("a bug")
"""


def _log_to(path, journal_stream: str | None) -> list[str]:
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with open(path, "wb") as err:
        st = os.fstat(err.fileno())
        if journal_stream is not None:
            env["JOURNAL_STREAM"] = journal_stream.format(dev=st.st_dev, ino=st.st_ino)
        subprocess.run([sys.executable, "-c", _LOGS], stderr=err, env=env, check=True, timeout=30)
    return path.read_text().splitlines()


def test_under_systemd_each_line_carries_its_priority_for_journalctl_p(tmp_path):
    lines = _log_to(tmp_path / "journal", "{dev}:{ino}")   # systemd names the stream it reads
    assert lines[0].startswith("<6>") and lines[0].endswith("Z meter answering again")
    assert lines[1].startswith("<4>") and "WARNING meter fault: no answer" in lines[1]
    assert lines[2].startswith("<3>") and "ERROR a bug" in lines[2]
    assert lines[3:] and all(line.startswith("<3>") for line in lines[3:])    # the traceback stays an error
    assert lines[-1] == "<3>ZeroDivisionError: division by zero"


def test_elsewhere_the_lines_are_plain(tmp_path):
    for stream in (None, "1:2", "not a pair"):   # no journal, or the service sent stderr to another file
        lines = _log_to(tmp_path / "log", stream)
        assert [line.split(" ", 1)[1] for line in lines[:2]] == ["meter answering again", "WARNING meter fault: no answer"]
        assert not any(line.startswith("<") for line in lines)


def test_at_debug_the_event_loops_own_lines_stay_out():
    # log_level DEBUG, for a line per meter reading, began with asyncio's "Using selector: EpollSelector"
    import subprocess
    import sys
    code = ("import asyncio, logging\nfrom ven.logs import setup_logging\nsetup_logging('DEBUG')\n"
            "asyncio.run(asyncio.sleep(0))\nlogging.getLogger('ven.test').debug('meter read 42.500 kW')\n")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True).stderr
    assert [line.split(" ", 1)[1] for line in err.splitlines()] == ["DEBUG meter read 42.500 kW"], err


async def test_a_wall_clock_step_ahead_is_no_bac0_task_latency_warning(monkeypatch, caplog):
    # BAC0 dates its tasks' runs by the wall clock: after NTP stepped it an hour ahead it logged "High latency for
    # Cleanup Tasks List ... Avg latency : 3584.97 sec" in pairs each minute, for a loop that was on time
    import asyncio
    import time as real_time

    from BAC0.tasks import TaskManager
    from BAC0.tasks.RecurringTask import RecurringTask

    from bacnet_api.device import _route_bac0_logging

    ahead = [0.0]

    class SteppedTime:      # the time module, its wall clock stepped
        def __getattr__(self, name):
            return getattr(real_time, name)

        def time(self):
            return real_time.time() + ahead[0]

    monkeypatch.setattr(TaskManager, "time", SteppedTime())
    runs = []
    # BAC0 sleeps 0.4-0.5 s between runs: the step goes in one of those sleeps, 0.15 s after the second run, with
    # room either side for a slow loop
    tick = RecurringTask(lambda: runs.append(1), delay=0.5, name="tick", minimum_delay=0.05)
    _route_bac0_logging()       # as the gateway's device does once BAC0 made its loggers
    caplog.set_level(logging.WARNING)
    tick.start()
    try:
        async with asyncio.timeout(10):
            while len(runs) < 2:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.15)
            ahead[0] = 3600.0       # the step, between two runs
            while len(runs) < 4:
                await asyncio.sleep(0.01)
    finally:
        tick.stop()
    assert tick.average_latency > 2 * tick.delay        # what BAC0 took for a late task
    assert not [r.getMessage() for r in caplog.records if "latency" in r.getMessage()]


def _journal_env(output, journal: bool) -> dict:
    """The environment of a child whose `output` file is the journal (systemd's JOURNAL_STREAM names it), or not."""
    import os
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal:
        st = os.fstat(output.fileno())
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    return env


def test_a_refusal_before_logging_is_an_error_to_journald(tmp_path):
    # `run` refuses a bad config, a port or a storage.path in use before logging is set up: under systemd that line
    # went in at journald's default priority, so `journalctl -p warning` left out why the service would not start
    bad = tmp_path / "gw.toml"
    bad.write_text("[meter]\npoll_secs = 5\n")
    for journal in (True, False):
        with open(tmp_path / "err", "wb") as err:
            done = run_cli(["run", "--config", str(bad)], stderr=err, env=_journal_env(err, journal), timeout=60)
        assert done.returncode == 78
        lead = "<3>" if journal else ""
        assert (tmp_path / "err").read_text() == (f"{lead}configuration error: {bad}: meter.poll_secs: unknown key; did "
                                                  "you mean meter.poll_seconds?\n")


def test_check_config_warnings_are_warnings_to_journald(tmp_path):
    # the shipped unit runs check-config as ExecStartPre: its warnings (a short http.token, the clock) went to the
    # journal at its default priority, info, so `journalctl -p warning` left them out; its "ok" line stays info
    config = tmp_path / "gw.toml"
    config.write_text(f'[storage]\npath = "{tmp_path / "gw.sqlite"}"\n[http]\ntoken = "short"\n')
    for journal in (True, False):
        with open(tmp_path / "out", "wb") as out:
            done = run_cli(["check-config", str(config)], stdout=out, stderr=out, env=_journal_env(out, journal),
                           timeout=60)
        assert done.returncode == 0
        lines = (tmp_path / "out").read_text().splitlines()
        lead = "<4>" if journal else ""
        assert f"{lead}{config}: warning: http.token is 5 characters: short enough to be found by trying" in "\n".join(
            lines), lines
        assert all(line.startswith(f"{lead}{config}: warning: ") for line in lines[:-1]) and lines[-1].startswith(
            f"{config}: ok ("), lines
