"""What check-config accepted and `run` could not honour (helper config47): periods so short the gateway ran them
back to back (a meter poll or forecast cycle of 0.001 s, a fit every 0.06 s, the VTN asked to register hundreds of
times a second), a device name no BACnet APDU carries, and a VTN URL whose scheme was written in capitals. Each is
taken at the floor (the name cut to fit) with a warning naming the key and why (tests/test_upgrade_floors.py runs
them through the CLI), or taken as meant."""
from __future__ import annotations

import logging
import os

import pytest
from test_vtn import running, said
from waiting import eventually as until

from cli_run import run_cli
from ven.config import DEVICE_NAME_MAX_BYTES, ConfigError
from ven.config_load import load_config, parse_config
from ven.vtn_server import DemoVtn


def _write(tmp_path, text: str):
    p = tmp_path / "c.toml"
    p.write_text(text, encoding="utf-8")
    return p


# (section, key, the floor, the run's cost below it as measured with `edge-gateway run` at 0.001)
FLOORS = [
    ("meter", "poll_seconds", 0.1, "reads run back to back, each a write to storage.path"),
    ("forecaster", "cycle_seconds", 0.05, "they run back to back"),
    ("forecaster", "retrain_minutes", 0.5, "one fit process follows another"),
    ("openadr", "retry_min_seconds", 0.05, "the VTN is asked again and again"),
    ("openadr", "retry_max_seconds", 0.2, "the VTN is asked more than 5 times a second while it is down"),
    ("storage", "retry_seconds", 0.2, "the gateway does little else"),
    # 0.001 was taken and never fitted a model, the log blaming the history held
    ("forecaster", "history_days", 1, "persistence serves for good"),
]


@pytest.mark.parametrize("section, key, floor, why", FLOORS)
def test_a_period_under_its_floor_that_an_earlier_release_took_is_raised_to_it_with_one_warning(
        tmp_path, section, key, floor, why):
    # 0.001 ran the meter 33 times a second (40 % of a core, a commit each), forecasts at 80 % of a core, the
    # registration hundreds of times a second; refused (0.4.5), it stopped an upgraded site's gateway instead
    # retry_min_seconds may not exceed retry_max_seconds, in 0.4.4 as now
    low = {"retry_min_seconds": 0.001} if key == "retry_max_seconds" else {}
    cfg = parse_config({section: {key: 0.001, **low}}, "gw.toml", environ={})
    assert getattr(getattr(cfg, section), key) == floor
    said = [w for w in cfg.warnings() if w.startswith(f"{section}.{key} ")]
    assert len(said) == 1 and "\n" not in said[0], cfg.warnings()
    assert said[0].startswith(f"{section}.{key} 0.001 is under its floor of {floor:g} "), said
    assert said[0].endswith(f"{why}); set {floor:g} or more"), said


@pytest.mark.parametrize("section, key, floor, why", FLOORS)
def test_each_floor_itself_is_taken(section, key, floor, why):
    # retry_min_seconds may not exceed retry_max_seconds: both at the floor's
    low = {"retry_min_seconds": 0.05} if key == "retry_max_seconds" else {}
    cfg = parse_config({section: {key: floor, **low}}, "gw.toml", environ={})
    assert getattr(getattr(cfg, section), key) == floor


def test_a_device_name_longer_than_an_apdu_carries_is_cut_to_fit_on_a_character(tmp_path):
    # 2,000 characters were taken (before 0.4.5) and served in a 2 KB I-Have, which no BACnet/IP network carries;
    # refused (0.4.5), an upgraded site's gateway stopped instead
    cfg = load_config(_write(tmp_path, f'[bacnet]\ndevice_name = "{"é" * 300}"\n'), environ={})
    assert cfg.bacnet.device_name == "é" * 225
    assert cfg.warnings()[0] == ("bacnet.device_name is 600 bytes in UTF-8, more than the 450 allowed (an I-Have "
                                 "naming it must fit one 480-byte APDU, as a BAS behind an MS/TP router receives it): "
                                 "its first 225 characters are used, 'éééééééééééé' to 'éééééééééééé'; shorten it")
    # a blank the cut leaves at its end is not the installer's: dropped, not refused
    cfg = parse_config({"bacnet": {"device_name": "N" * 449 + " tail"}}, "gw.toml", environ={})
    assert cfg.bacnet.device_name == "N" * 449
    cfg = parse_config({"bacnet": {"device_name": "N" * DEVICE_NAME_MAX_BYTES}}, "gw.toml", environ={})
    assert len(cfg.bacnet.device_name) == 450 and cfg.warnings() == []


def test_the_longest_device_name_fits_an_i_have_in_an_ms_tp_apdu():
    # encoded by the stack the device answers with, at the largest device instance; a ReadProperty answer of the
    # name carries a byte less around it
    from bacpypes3.apdu import IHaveRequest
    from bacpypes3.primitivedata import CharacterString, ObjectIdentifier

    name = CharacterString("N" * DEVICE_NAME_MAX_BYTES)
    device = ObjectIdentifier("device,4194302")
    i_have = IHaveRequest(deviceIdentifier=device, objectIdentifier=device, objectName=name)
    assert len(i_have.encode().encode().pduData) <= 480     # unconfirmed: a BAS gets it whole or not at all


@pytest.mark.parametrize("written, taken", [
    ("HTTPS://vtn.example/OpenADR2/Simple/2.0b", "https://vtn.example/OpenADR2/Simple/2.0b"),
    ("Http://vtn.example:8080/OpenADR2/Simple/2.0b", "http://vtn.example:8080/OpenADR2/Simple/2.0b"),
])
def test_a_vtn_url_with_its_scheme_in_capitals_is_taken_as_written_in_lower_case(written, taken):
    # "must start with http:// or https://" of HTTPS://, which RFC 3986 reads as https://
    cfg = parse_config({"openadr": {"vtn_url": written, "proxy": "HTTP://proxy.site:3128"}}, "gw.toml", environ={})
    assert cfg.openadr.vtn_url == taken and cfg.openadr.proxy == "http://proxy.site:3128"


def test_a_horizons_list_of_one_says_what_it_needs(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, "[forecaster]\nhorizons_minutes = [15]\n"), environ={})
    assert str(err.value) == (f"{tmp_path / 'c.toml'}: forecaster.horizons_minutes: must be two increasing positive "
                              f"minute counts up to 1440, e.g. [15, 60], got [15]")


@pytest.mark.timeout(30)
async def test_a_vtn_url_written_in_capitals_registers_with_a_real_vtn(tmp_path, free_tcp_port, caplog):
    caplog.set_level(logging.INFO, logger="ven")
    async with DemoVtn(free_tcp_port(), poll_seconds=1) as server:
        url = parse_config({"openadr": {"vtn_url": server.url.replace("http://", "HTTP://")}}, "gw.toml",
                           environ={}).openadr.vtn_url
        async with running(tmp_path, url) as gw:
            await until(lambda: gw.vtn.connected, 10, "registered")
            assert said(caplog, "registered with VTN")[0].startswith(f"registered with VTN {server.url} ")


def test_a_storage_path_from_a_variable_that_is_a_directory_names_the_variable(tmp_path):
    # README's install step sets EDGE_GATEWAY__STORAGE__PATH: "storage.path: /var/lib/edge-gateway is a directory"
    # sent the operator to a config file that does not hold the key
    p = _write(tmp_path, "[meter]\npoll_seconds = 10\n")
    out = run_cli(["check-config", str(p)], timeout=60,
                  env={**os.environ, "EDGE_GATEWAY__STORAGE__PATH": str(tmp_path)})
    assert out.returncode == 78, out
    assert (f"configuration error: storage.path (from EDGE_GATEWAY__STORAGE__PATH): {tmp_path} is a directory: name "
            f"a file in it, e.g. {tmp_path / 'gateway.sqlite'}") in out.stderr.splitlines(), out.stderr


def test_the_benches_compressed_hour_is_above_the_floors():
    # bench/memory_startup.py runs an hour of cycles in --work seconds (default 60): a retrain every 30 s. A floor of
    # 1 minute refused its config, and the bench died at its last launch with the gateway gone
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "_common.py"
    spec = importlib.util.spec_from_file_location("bench_common", path)
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    w = 60.0
    cfg = common.gateway_config_dict("gw.sqlite", 47808, 47809, 8080, 8000, poll_seconds=w / 360,
                                     cycle_seconds=w / 60, telemetry_seconds=1.0, retrain_minutes=w / 120)
    parse_config(cfg, "bench", environ={})


@pytest.mark.parametrize("address, poll, warned", [
    ("12345:2", 0.5, True),          # behind a router, twice a second
    ("12345:2", 1, False),
    ("10.0.0.5:47808", 0.2, False),  # BACnet/IP, read directly: no trunk to share
])
def test_check_config_says_once_when_a_meter_behind_a_router_is_read_more_than_once_a_second(
        tmp_path, address, poll, warned):
    # on MS/TP each read holds the trunk the building's controllers share; nothing of the gateway's uses the pace
    p = _write(tmp_path, f'[meter]\naddress = "{address}"\npoll_seconds = {poll}\n'
                         f'[storage]\npath = "{tmp_path / "gw.sqlite"}"\n')
    out = run_cli(["check-config", str(p)], timeout=60)
    assert out.returncode == 0, out
    said = [line for line in out.stdout.splitlines() if "behind a router" in line]
    assert said == ([f"{p}: warning: meter.poll_seconds (0.5) reads meter 12345:2, behind a router, 2 times a second: "
                     "on MS/TP each read holds the trunk the building's controllers share for about 30 ms at 38,400 "
                     "baud (110 ms at 9,600; three requests for a meter read property by property), and the VTN's "
                     "reports and the forecaster gain little from more than a reading a second: 1 or more is plenty "
                     "there"] if warned else []), out.stdout


@pytest.mark.parametrize("given, environ, said", [
    ({"retry_min_seconds": 0.3, "retry_max_seconds": 0.1}, {},
     "gw.toml: openadr: retry_min_seconds (0.3) must not exceed retry_max_seconds (0.1, under its floor of 0.2)"),
    # the default retry_min_seconds (1) above a retry_max_seconds set in a variable
    ({}, {"EDGE_GATEWAY__OPENADR__RETRY_MAX_SECONDS": "0.1"},
     "gw.toml, EDGE_GATEWAY__OPENADR__RETRY_MAX_SECONDS: openadr: retry_min_seconds (1) must not exceed "
     "retry_max_seconds (0.1, under its floor of 0.2)"),
])
def test_an_error_across_keys_names_a_raised_value_as_the_file_has_it(given, environ, said):
    # "retry_max_seconds (0.2)" of a file saying 0.1: the installer looked for a 0.2 that is in no file
    with pytest.raises(ConfigError) as err:
        parse_config({"openadr": given}, "gw.toml", environ=environ)
    assert str(err.value) == said


@pytest.mark.parametrize("name, why", [
    (" Building 7 " + "N" * 460, "has a blank at its start or end, taken as part of it: remove it"),
    ("Building\t7 " + "N" * 460, "holds a control character ('\\t')"),
])
def test_a_long_device_name_that_is_refused_anyway_is_quoted_as_the_file_has_it(name, why):
    # cut first, the error quoted the first 450 bytes: a name that is in no file
    with pytest.raises(ConfigError) as err:
        parse_config({"bacnet": {"device_name": name}}, "gw.toml", environ={})
    assert str(err.value) == f"gw.toml: bacnet.device_name: {why}, got {name!r}"
    # what the cut takes away is not refused: the name is cut, with its warning, as before
    cfg = parse_config({"bacnet": {"device_name": "N" * 460 + "\t "}}, "gw.toml", environ={})
    assert cfg.bacnet.device_name == "N" * 450 and cfg.warnings()[0].startswith("bacnet.device_name is 462 bytes")
