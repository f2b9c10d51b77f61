"""`run`'s exit status tells a configuration to edit (78, EX_CONFIG) from a condition that may clear by itself (75,
EX_TEMPFAIL), and the shipped unit restarts the one and not the other. Both were exit 2 under Restart=always: a
mistyped key restarted every 5 s for good, some 35,000 journal lines a day, its one line of reason scrolled away."""
from __future__ import annotations

import os
import socket

import pytest
from cli_run import run_cli
from gateway_process import write_config
from test_service_unit import _service

pytestmark = pytest.mark.timeout(120)


def _restarted(status: int) -> bool:
    """Whether the shipped unit restarts a `run` that exited with `status` (Restart=always, but for
    RestartPreventExitStatus=)."""
    service = _service()
    assert service["Restart"] == ["always"]
    return str(status) not in " ".join(service.get("RestartPreventExitStatus", [])).split()


def _run(config, **env) -> tuple[int, list[str]]:
    res = run_cli(["run", "--config", str(config)], timeout=60, env={**os.environ, **env})
    assert "Traceback" not in res.stderr, res.stderr
    return res.returncode, res.stderr.splitlines()


@pytest.mark.parametrize("fault", ["a mistyped key", "a token file not there", "storage.path a directory",
                                   "no config file"])
def test_a_configuration_to_edit_exits_78_in_one_line_and_is_not_restarted(tmp_path, free_udp_port, free_tcp_port,
                                                                           fault):
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=free_udp_port(), http_port=free_tcp_port(), storage=tmp_path / "gw.sqlite",
                 ven_name="exit-status")
    env, said = {}, None
    if fault == "a mistyped key":
        config.write_text(config.read_text().replace("settle_seconds = 1\n", "settle_seconds = 1\npoll_secs = 5\n", 1))
        said = f"configuration error: {config}: meter.poll_secs: unknown key; did you mean meter.poll_seconds?"
    elif fault == "a token file not there":
        env["EDGE_GATEWAY__HTTP__TOKEN_FILE"] = str(tmp_path / "token")
        said = f"token_file {tmp_path / 'token'}: No such file or directory"
    elif fault == "storage.path a directory":
        env["EDGE_GATEWAY__STORAGE__PATH"] = str(tmp_path)
        said = f"configuration error: storage.path (from EDGE_GATEWAY__STORAGE__PATH): {tmp_path} is a directory"
    else:
        config = tmp_path / "elsewhere.toml"
        said = f"configuration error: {config}: no such file"
    code, lines = _run(config, **env)
    assert code == 78, lines
    # one line, the key and why, and the last the journal shows: the unit stays failed with it
    assert len(lines) == 1 and lines[0].startswith("configuration error: ") and said in lines[0], lines
    assert not _restarted(code)
    assert not (tmp_path / "gw.sqlite").exists()


@pytest.mark.parametrize("fault", ["bacnet.address's port held", "http.address a name that does not resolve"])
def test_what_may_clear_by_itself_exits_75_and_is_restarted(tmp_path, free_tcp_port, fault):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        held.bind(("127.0.0.1", 0))     # another program's: it may stop, and a restart then starts the gateway
        config = tmp_path / "gw.toml"
        write_config(config, bacnet_port=held.getsockname()[1], http_port=free_tcp_port(),
                     storage=tmp_path / "gw.sqlite", ven_name="exit-status")
        if fault == "bacnet.address's port held":
            code, lines = _run(config)
            key = f"bacnet.address: BACnet/IP address 127.0.0.1:{held.getsockname()[1]} is not available"
        else:
            held.close()
            code, lines = _run(config, EDGE_GATEWAY__HTTP__ADDRESS="dashboard.invalid:8000",
                               EDGE_GATEWAY__HTTP__TOKEN="0123456789abcdef0123")
            key = "http.address dashboard.invalid:8000: cannot listen: "
    assert code == 75, lines
    assert len(lines) == 1 and lines[0].startswith(f"cannot start now: {key}"), lines
    assert _restarted(code)
