"""examples/edge-gateway.service: what it runs is a real command, and its state is where it may write."""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_run import run_cli

UNIT = Path(__file__).resolve().parent.parent / "examples" / "edge-gateway.service"


def _service() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    section = None
    for line in UNIT.read_text().splitlines():   # keys repeat (Environment=)
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_exec_lines_are_cli_commands():
    service = _service()
    for line in service["ExecStartPre"] + service["ExecStart"]:
        argv = shlex.split(line)
        assert argv[0].endswith("/edge-gateway"), argv
        res = run_cli([argv[1], "--help"], timeout=60)
        assert res.returncode == 0, res.stderr
        assert all(o in res.stdout for o in argv if o.startswith("--"))


def test_storage_path_is_where_systemd_lets_the_service_write():
    service = _service()
    env = dict(e.split("=", 1) for e in service["Environment"])
    storage = Path(env["EDGE_GATEWAY__STORAGE__PATH"])
    # under ProtectSystem=strict only the state directory (and ReadWritePaths) can be written
    writable = [Path("/var/lib") / d for d in service.get("StateDirectory", [""])[0].split()]
    writable += [Path(p) for p in " ".join(service.get("ReadWritePaths", [])).split()]
    assert any(storage.parent == w or w in storage.parents for w in writable), (storage, writable)
    assert Path(service["WorkingDirectory"][0]) in writable
    # systemd creates the state directory for the service's user; a missing home is not a failed start
    assert service.get("StateDirectory"), "no StateDirectory: the unit fails if /var/lib/edge-gateway is missing"


def test_a_fit_the_kernel_kills_short_of_memory_does_not_stop_the_gateway():
    # systemd's default OOMPolicy (stop) ends the unit when the OOM killer ends any of its processes, the fit
    # child included; Restart= then brings a gateway that fits at once, and is stopped again: a restart loop
    assert _service().get("OOMPolicy") == ["continue"]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_it(tmp_path):
    # verify insists the binaries exist: point them at this interpreter, the rest is checked as written
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/edge-gateway/bin/edge-gateway", sys.executable))
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # a value it cannot parse (RestartPreventExitStatus=CONFIGX) is "Failed to parse value, ignoring", exit 0: the
    # unit runs without it, and restarts a bad key every 5 s again
    assert res.returncode == 0 and "ignoring" not in res.stderr, res.stderr


@pytest.mark.timeout(60)
def test_a_client_certificate_expired_over_a_reboot_still_lets_the_gateway_start(tmp_path):
    # check-config refuses an expired (or not yet mounted) openadr.cert with exit 78, where `run` serves the BAS
    # and the dashboard and retries the VTN as README says. As a plain ExecStartPre it kept the unit from
    # starting: after a reboot the BACnet points, the meter's telemetry queue and /metrics were all gone
    import datetime as dt

    from test_tls import _ca, _issue

    expired = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(days=1)
    _issue(*_ca(tmp_path), "ven-site-17", tmp_path / "ven.pem", tmp_path / "ven.key", not_after=expired)
    conf = tmp_path / "gateway.toml"
    conf.write_text(f'[openadr]\nvtn_url = "https://127.0.0.1:1/OpenADR2/Simple/2.0b"\ncert = "{tmp_path / "ven.pem"}"\n'
                    f'key = "{tmp_path / "ven.key"}"\n[storage]\npath = "{tmp_path / "gw.sqlite"}"\n')
    for line in _service()["ExecStartPre"]:
        may_fail = line.startswith("-")     # systemd's prefix: a failure does not fail the start
        argv = [a.replace("/etc/edge-gateway/gateway.toml", str(conf)) for a in shlex.split(line.lstrip("-"))]
        res = run_cli(argv[1:], timeout=60, stdin=subprocess.DEVNULL)
        assert res.returncode == 0 or may_fail, f"the unit would not start: {line}: exit {res.returncode}: {res.stderr}"
        # the journal still says why the VTN will refuse the gateway
        assert res.returncode == 0 or "expired" in res.stderr, res.stderr
