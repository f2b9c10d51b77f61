"""One gateway per storage.path: a second `run` on the same file (other ports: started by hand beside the service,
or a container and a host install sharing the volume) registered as the same VEN and sent the VTN every reading
twice, without a word in either log; forget-forecast under a config naming other ports deleted a running gateway's
history. import-history waits likewise: the gateway would not see the rows until its next start."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cli_run import run_cli
from gateway_process import START_S, GatewayProcess, write_config
from test_faults_storage import fill, remount, tmpfs
from ven.run_lock import RunLock, held_by_another, lock_path
from ven.storage import Storage
from waiting import eventually

pytestmark = pytest.mark.timeout(150)   # a gateway process's start (START_S), then the test


async def test_a_second_gateway_on_the_same_file_is_refused_and_forget_forecast_and_import_wait(
        tmp_path, free_udp_port, free_tcp_port):
    db = tmp_path / "data" / "gateway.sqlite"
    db.parent.mkdir()
    first, second = tmp_path / "first.toml", tmp_path / "second.toml"
    write_config(first, bacnet_port=free_udp_port(), http_port=free_tcp_port(), storage=db, ven_name="ven-a")
    # the same file by another path: the service's config names it absolute, a shell's relative
    os.symlink(tmp_path / "data", tmp_path / "link")
    write_config(second, bacnet_port=free_udp_port(), http_port=free_tcp_port(), storage=tmp_path / "link" /
                 "gateway.sqlite", ven_name="ven-a")
    with GatewayProcess(first, tmp_path / "first.log") as gateway:
        await eventually(lambda: "edge-gateway ready" in gateway.log(), START_S, "the first gateway to be ready")
        assert held_by_another(db) == f"storage.path {db} is in use by process {gateway.proc.pid}"

        run = run_cli(["run", "--config", str(second)], timeout=30)
        assert run.returncode == 75, run    # may clear (that gateway stops): a service manager restarts it
        assert run.stderr.strip() == (f"cannot start now: storage.path {db} is in use by process "
                                      f"{gateway.proc.pid} (a gateway holds {db}.lock): stop that gateway first, or "
                                      f"give this one its own storage.path"), run.stderr
        forget = run_cli(["forget-forecast", "--config", str(second), "--yes"], timeout=30)
        assert forget.returncode == 1 and "is in use by process" in forget.stdout, forget
        (tmp_path / "meter.csv").write_text("time,kw\n2026-12-01T00:00:00Z,100\n")
        imported = run_cli(["import-history", "--config", str(second), "--csv", str(tmp_path / "meter.csv"),
                            "--time-column", "time", "--value-column", "kw"], timeout=30)
        assert imported.returncode == 1 and "is in use by process" in imported.stderr, imported
        assert "the gateway seems to run. Stop it first" in imported.stderr, imported
        assert gateway.alive and "Traceback" not in gateway.log()
    # stopped (or killed: the kernel drops the lock with the process), the file is free again
    assert held_by_another(db) is None
    lock = RunLock(tmp_path / "link" / "gateway.sqlite")
    try:
        assert lock.take() is None
    finally:
        lock.close()


def test_no_lock_to_be_had_is_no_refusal(tmp_path):
    # a directory that cannot be made (or a read-only one): the gateway starts, as on a file it cannot write
    (tmp_path / "a-file").write_text("")
    assert RunLock(tmp_path / "a-file" / "gateway.sqlite").take() is None
    assert held_by_another(tmp_path / "a-file" / "gateway.sqlite") is None
    assert lock_path(tmp_path / "gateway.sqlite") == tmp_path / "gateway.sqlite.lock"


def test_a_first_run_whose_directory_is_not_there_yet_is_locked_too(tmp_path):
    # the default var/gateway.sqlite on a first run: the storage makes the directory; so does the lock, first
    lock = RunLock(tmp_path / "var" / "gateway.sqlite")
    try:
        assert lock.take() is None
        assert (tmp_path / "var" / "gateway.sqlite.lock").read_text() == f"{os.getpid()}\n"
        assert held_by_another(tmp_path / "var" / "gateway.sqlite") == \
            f"storage.path {tmp_path / 'var' / 'gateway.sqlite'} is in use by process {os.getpid()}"
    finally:
        lock.close()
    assert held_by_another(tmp_path / "var" / "gateway.sqlite") is None


async def test_a_first_run_on_a_full_disk_starts_locked(tmp_path, free_udp_port, free_tcp_port):
    # the lock file was made, but the pid could not go in: a traceback and exit 1 at every restart, before BACnet
    with tmpfs(tmp_path / "card", "size=1m") as card:
        filler = fill(card)
        db = card / "gateway.sqlite"
        lock = RunLock(db)
        try:
            assert lock.take() is None
            assert held_by_another(db) == f"storage.path {db} is in use by another process"
        finally:
            lock.close()
        (card / "gateway.sqlite.lock").unlink()
        filler.unlink()
        filler = fill(card)
        conf = tmp_path / "gw.toml"
        write_config(conf, bacnet_port=free_udp_port(), http_port=free_tcp_port(), storage=db, ven_name="ven-a")
        with GatewayProcess(conf, tmp_path / "gw.log") as gateway:
            await eventually(lambda: "edge-gateway ready" in gateway.log(), START_S, "ready on a full disk")
            assert held_by_another(db) == f"storage.path {db} is in use by another process"
        assert gateway.proc.returncode == 0, gateway.log()
        assert "Traceback" not in gateway.log() and "No space left on device" in gateway.log(), gateway.log()
        filler.unlink()


def test_the_custom_handler_example_runs_as_run_does(tmp_path, free_udp_port, free_tcp_port):
    # it built its own Gateway: no lock (an `edge-gateway run` on the same file started beside it as a second VEN),
    # a traceback for a bad config or a taken port, and log_level ignored
    example = os.path.join(os.path.dirname(__file__), "..", "examples", "custom_handler.py")
    db = tmp_path / "gateway.sqlite"
    config = tmp_path / "gateway.toml"
    write_config(config, bacnet_port=free_udp_port(), http_port=free_tcp_port(), storage=db, ven_name="ven-a")
    lock = RunLock(db)
    assert lock.take() is None          # a gateway runs on that file
    try:
        run = subprocess.run([sys.executable, example, str(config)], capture_output=True, text=True, timeout=30,
                             cwd=tmp_path)
    finally:
        lock.close()
    assert run.returncode == 75 and run.stderr.strip() == (
        f"cannot start now: storage.path {db} is in use by process {os.getpid()} (a gateway holds {db}.lock): "
        "stop that gateway first, or give this one its own storage.path"), run.stderr
    config.write_text("log_level = \"LOUD\"\n" + config.read_text())
    run = subprocess.run([sys.executable, example, str(config)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 78 and "Traceback" not in run.stderr and "log_level" in run.stderr, run.stderr
    assert not (tmp_path / "dr-events.csv").exists()


async def test_the_files_a_gateway_makes_are_not_for_every_user_of_the_box(tmp_path, free_udp_port, free_tcp_port):
    # storage.path holds the site's events, its load history and the forecaster's model, which a start loads as code
    # (a pickle): a shell's usual umask (022) made them readable to every local user, writable by whoever could put
    # one in place on a box without the unit's StateDirectoryMode (helper sec39 H4)
    db = tmp_path / "gateway.sqlite"
    config = tmp_path / "gateway.toml"
    write_config(config, bacnet_port=free_udp_port(), http_port=free_tcp_port(), storage=db, ven_name="ven-a")
    before = os.umask(0o022)
    Storage(db).close()      # as an earlier version left it: 0644, and SQLite gives the -wal and -shm the file's mode
    assert oct(db.stat().st_mode & 0o777) == "0o644"
    try:
        with GatewayProcess(config, tmp_path / "gateway.log") as gateway:
            await eventually(lambda: "edge-gateway ready" in gateway.log(), START_S, "the gateway to be ready")
            made = [p for p in tmp_path.iterdir() if p.name.startswith(db.name)]
            assert {p.name for p in made} >= {db.name, f"{db.name}.lock"}, made
            assert {p.name: oct(p.stat().st_mode & 0o777) for p in made} == {p.name: "0o640" for p in made}
    finally:
        os.umask(before)


def test_a_gateway_run_from_a_program_of_its_own_makes_its_files_private_too(tmp_path):
    # examples/custom_handler.py calls run_gateway and never passes through main(): its files were 0644 (helper rev39)
    probe = ("import os, sys\nfrom ven.cli import run_gateway\nos.umask(0o022)\n"
             "try:\n    run_gateway(sys.argv[1])\nexcept SystemExit:\n    pass\nprint(oct(os.umask(0)))\n")
    run = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "absent.toml")], capture_output=True,
                         text=True, timeout=60)
    assert run.stdout.strip().splitlines()[-1] == "0o27", (run.stdout, run.stderr)


async def test_a_start_after_a_kill_says_the_run_before_ended_without_a_stop(tmp_path, free_udp_port, free_tcp_port):
    # A gateway killed (SIGKILL, the OOM killer) or cut by a power loss left a log that just ended, the next lines a
    # start as after any stop: in `docker logs` or a file nothing said that the run before had not stopped
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=free_udp_port(), http_port=free_tcp_port(), storage=tmp_path / "gw.sqlite",
                 ven_name="ven-kill")
    said = "ended without a stop"
    gateway = GatewayProcess(config, tmp_path / "gateway.log")
    with gateway:
        gateway.wait_for("edge-gateway ready", START_S)
        killed = gateway.proc.pid
        gateway.kill()
        gateway.start()
        await eventually(lambda: gateway.log().count("edge-gateway ready") == 2, START_S, "the start after the kill")
        starts = gateway.log().split("starting: device")
        assert said not in starts[1], starts[1]
        assert (f"WARNING the gateway that ran before on this storage.path (process {killed}) ended without a stop: "
                f"killed (SIGKILL, the kernel's out-of-memory killer), crashed, or the power cut; the lines before "
                f"this start are where it ended") in starts[2], starts[2]
    assert "edge-gateway stopped" in gateway.log()
    with gateway:   # after a stop: nothing to say of the run before
        await eventually(lambda: gateway.log().count("edge-gateway ready") == 3, START_S, "the start after the stop")
    starts = gateway.log().split("starting: device")
    assert len(starts) == 4 and said not in starts[3] and "Traceback" not in gateway.log(), starts[3]
    # a refusal to start is a stop too (the port or storage.path taken), not one to tell the next start of
    with GatewayProcess(config, tmp_path / "first.log") as first:
        first.wait_for("edge-gateway ready", START_S)
        assert run_cli(["run", "--config", str(config)], timeout=30).returncode == 75
    assert "edge-gateway stopped" in first.log() and said not in first.log()
    with GatewayProcess(config, tmp_path / "again.log") as again:
        again.wait_for("edge-gateway ready", START_S)
    assert said not in again.log()


def test_a_kill_is_told_once_and_not_from_a_read_only_volume(tmp_path):
    # the mark a killed run left cannot be cleared on a volume mounted read-only since: every start would tell of a
    # kill, of runs that stopped as they should
    with tmpfs(tmp_path / "card", "size=1m") as card:
        (card / "gateway.sqlite.lock").write_text("4242 running\n")
        remount(card, "ro")
        lock = RunLock(card / "gateway.sqlite")
        try:
            assert lock.take(running=True) is None and lock.ended_without_stop is None
        finally:
            lock.close()
        remount(card, "rw")
        for told in (4242, None):   # once: the start's own mark replaces the killed run's, and its stop clears it
            lock = RunLock(card / "gateway.sqlite")
            try:
                assert lock.take(running=True) is None and lock.ended_without_stop == told
                assert (card / "gateway.sqlite.lock").read_text() == f"{os.getpid()} running\n"
                lock.stopped()
                assert (card / "gateway.sqlite.lock").read_text() == f"{os.getpid()}\n"
            finally:
                lock.close()
