"""docker/: every compose service and the image's default command run a real CLI command."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parent.parent / "docker"


def _help(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ven.cli", *argv, "--help"],
                          capture_output=True, text=True, timeout=60)


def _services():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return sorted(compose["services"].items())


@pytest.mark.parametrize("name,service", _services(), ids=[n for n, _ in _services()])
def test_compose_service_command_is_a_cli_command(name, service):
    command = service["command"]
    res = _help(command[:1])
    assert res.returncode == 0, f"service {name}: `edge-gateway {command[0]}` is not a command: {res.stderr}"
    # every --option the service passes must be one the command accepts
    for opt in (a for a in command if a.startswith("--")):
        assert opt in res.stdout, f"service {name}: {command[0]} has no option {opt}"


def test_dockerfile_default_command_is_a_cli_command():
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["edge-gateway"\]', text, re.M)
    cmd = re.search(r"^CMD (\[.*\])", text, re.M).group(1)
    argv = yaml.safe_load(cmd)
    res = _help(argv[:1])
    assert res.returncode == 0, res.stderr
    assert all(o in res.stdout for o in argv if o.startswith("--"))


def test_dockerfile_runs_as_non_root_with_healthcheck():
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    assert "HEALTHCHECK" in text and "/healthz" in text
