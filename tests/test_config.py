"""Configuration: errors name the file, the key and the reason; env vars override keys."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ven.config import ConfigError, load_config

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "gateway.toml"


def test_example_config_is_valid():
    cfg = load_config(EXAMPLE, environ={})
    assert cfg.meter.address == "12345:2"
    assert cfg.bacnet.device_id == 500001


def test_defaults_match_the_public_contract():
    cfg = load_config(None, environ={})
    assert cfg.bacnet.address == "127.0.0.1/8:47808"
    assert cfg.meter.object == "analogInput 2" and cfg.meter.poll_seconds == 10
    assert cfg.openadr.vtn_url == "http://127.0.0.1:8080/OpenADR2/Simple/2.0b"
    assert cfg.storage.path == "var/gateway.sqlite"
    assert cfg.http.address == "127.0.0.1:8000"


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.toml", environ={})


def test_bad_toml(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[meter\naddress = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p, environ={})


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[meter]\npoll_secs = 5\n')
    with pytest.raises(ConfigError) as err:
        load_config(p, environ={})
    assert "meter.poll_secs: unknown key" in str(err.value)


def test_wrong_type_is_named(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[bacnet]\ndevice_id = "five"\n')
    with pytest.raises(ConfigError) as err:
        load_config(p, environ={})
    assert "bacnet.device_id" in str(err.value) and "integer" in str(err.value)


def test_request_timeout_must_be_positive(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[openadr]\nrequest_timeout_seconds = 0\n')
    with pytest.raises(ConfigError, match=r"openadr.request_timeout_seconds: .*greater than 0"):
        load_config(p, environ={})


def test_bad_address_reason(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[bacnet]\naddress = "127.0.0.1"\n')
    with pytest.raises(ConfigError, match=r"bacnet.address: .*ip/mask:port"):
        load_config(p, environ={})


def test_env_overrides_keys(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[openadr]\nven_name = "from-file"\n')
    env = {
        "EDGE_GATEWAY__OPENADR__VTN_URL": "http://127.0.0.1:9999/OpenADR2/Simple/2.0b",
        "EDGE_GATEWAY__METER__POLL_SECONDS": "2.5",
        "EDGE_GATEWAY__BACNET__DEVICE_ID": "42",
    }
    cfg = load_config(p, environ=env)
    assert cfg.openadr.vtn_url.endswith(":9999/OpenADR2/Simple/2.0b")
    assert cfg.openadr.ven_name == "from-file"
    assert cfg.meter.poll_seconds == 2.5 and cfg.bacnet.device_id == 42


def test_env_unknown_key_is_named():
    with pytest.raises(ConfigError, match="meter.bogus: unknown key"):
        load_config(None, environ={"EDGE_GATEWAY__METER__BOGUS": "1"})


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ven.cli", *args], capture_output=True, text=True, timeout=60)


def test_check_config_cli(tmp_path):
    ok = _cli("check-config", str(EXAMPLE))
    assert ok.returncode == 0, ok.stderr
    p = tmp_path / "c.toml"
    p.write_text('[meter]\npoll_secs = 5\n')
    bad = _cli("check-config", str(p))
    assert bad.returncode != 0
    assert "meter.poll_secs: unknown key" in bad.stderr


def test_run_refuses_bad_config(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[bacnet]\ndevice_id = -3\n')
    res = _cli("run", "--config", str(p))
    assert res.returncode == 2
    assert "bacnet.device_id" in res.stderr


def test_http_off_loopback_needs_a_token():
    with pytest.raises(ConfigError, match=r"http: .*not loopback: set http.token"):
        load_config(None, environ={"EDGE_GATEWAY__HTTP__ADDRESS": "0.0.0.0:8000"})
    cfg = load_config(None, environ={"EDGE_GATEWAY__HTTP__ADDRESS": "0.0.0.0:8000",
                                     "EDGE_GATEWAY__HTTP__TOKEN": "s3cret"})
    assert cfg.http.token == "s3cret"
