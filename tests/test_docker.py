"""docker/: every compose service and the image's default command run a real CLI command."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from cli_run import run_cli

DOCKER = Path(__file__).resolve().parent.parent / "docker"


def _help(argv: list[str]) -> subprocess.CompletedProcess:
    return run_cli([*argv, "--help"], timeout=60)


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
    probe = yaml.safe_load(re.search(r"^HEALTHCHECK .*\\\n\s*CMD (\[.*\])", text, re.M).group(1))
    run = yaml.safe_load(re.search(r"^CMD (\[.*\])", text, re.M).group(1))
    assert probe[:2] == ["edge-gateway", "health"], probe
    # it must read the file the gateway runs with, or it probes an address nobody serves
    assert probe[probe.index("--config") + 1] == run[run.index("--config") + 1]
    res = _help(probe[1:2])
    assert res.returncode == 0 and all(o in res.stdout for o in probe if o.startswith("--")), res


@pytest.mark.timeout(10)
def test_gateway_state_lives_on_a_volume_and_only_the_gateway_is_health_checked():
    text = (DOCKER / "Dockerfile").read_text()
    storage = re.search(r"EDGE_GATEWAY__STORAGE__PATH=(\S+)", text).group(1)
    state_dir = storage.rsplit("/", 1)[0]
    # without a volume the events, opt-outs, telemetry queue and history go with the container
    volumes = re.findall(r"^VOLUME\s+(.+)$", text, re.M)
    assert any(state_dir in yaml.safe_load(v) if v.startswith("[") else state_dir in v.split() for v in volumes), \
        f"no VOLUME for {state_dir} in the Dockerfile"
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        if service["command"][0] == "run":
            mounts = [str(v).split(":") for v in service.get("volumes", [])]
            named = [m[0] for m in mounts if len(m) >= 2 and m[1] == state_dir]
            assert named, f"service {name}: nothing mounted at {state_dir}"
            assert all(n in (compose.get("volumes") or {}) for n in named if not n.startswith((".", "/"))), named
        else:
            # the image's HEALTHCHECK probes the gateway's /healthz, which the other commands do not serve
            assert (service.get("healthcheck") or {}).get("disable") is True or \
                (service.get("healthcheck") or {}).get("test") in (["NONE"], "NONE"), \
                f"service {name} ({service['command'][0]}) inherits the gateway's HEALTHCHECK"


@pytest.mark.timeout(10)
def test_every_service_rotates_its_log():
    # a container's log on the default json-file driver is never rotated: years of it fill the gateway's disk
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        logging = service.get("logging") or {}
        options = logging.get("options") or {}
        assert logging.get("driver") == "local" or (logging.get("driver") == "json-file" and "max-size" in options), \
            f"service {name}: log not rotated ({logging or 'the default json-file driver'})"


@pytest.mark.timeout(20)
def test_the_gateway_takes_its_token_from_a_secret_and_starts_with_it(tmp_path):
    # compose passed http.token in the environment, which `docker inspect` shows to anyone with Docker access (helper
    # sec39): the gateway's environment names a file, a compose secret, and the image's config loads with it
    from ven.config_load import load_config

    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    gateway = next(s for s in compose["services"].values() if s["command"][0] == "run")
    env = {k: str(v) for k, v in gateway["environment"].items()}
    assert not [k for k in env if re.search(r"TOKEN$|PASSWORD|PASSPHRASE", k)], env
    path = env["EDGE_GATEWAY__HTTP__TOKEN_FILE"]
    [name] = gateway["secrets"]
    assert path == f"/run/secrets/{name}" and "environment" in compose["secrets"][name]
    secret = tmp_path / name
    secret.write_text("4f9c2e7a1b3d5f60a8c4e2b19d7f3a5c\n")
    env = dict(env, EDGE_GATEWAY__HTTP__TOKEN_FILE=str(secret))
    cfg = load_config(DOCKER.parent / "examples" / "gateway.toml", environ=env)
    assert cfg.http.token == "4f9c2e7a1b3d5f60a8c4e2b19d7f3a5c" and cfg.http.address == "0.0.0.0:8000"
