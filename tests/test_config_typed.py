"""What an installer types or pastes into the config (helper cfg45): a control character in a name, a path or a URL,
or a blank around it, and a meter read more slowly than the forecaster calls its power stale. Each is refused naming
the key, or said as a warning, before anything starts."""
from __future__ import annotations

import subprocess

import pytest

from cli_run import run_cli
from forecaster.flags import HysteresisFlag
from ven.config import ConfigError
from ven.config_load import load_config, parse_config


def _write(tmp_path, text: str):
    p = tmp_path / "c.toml"
    p.write_text(text, encoding="utf-8")
    return p


def _cli(*args, cwd=None):
    return run_cli(args, timeout=60, cwd=cwd)


@pytest.mark.parametrize("toml, line", [
    # pasted from a mail or a portal with the blank after it: every request went to ".../2.0b%20/EiRegisterParty", 404
    ('[openadr]\nvtn_url = "https://vtn.example/OpenADR2/Simple/2.0b "\n',
     "openadr.vtn_url: holds a blank, control or invisible character (pasted with it?), got "
     "'https://vtn.example/OpenADR2/Simple/2.0b '"),
    ('[openadr]\nvtn_url = "https://vtn.example/OpenADR2/Simple/2.0b\\n"\n',
     "openadr.vtn_url: holds a blank, control or invisible character (pasted with it?), got "
     "'https://vtn.example/OpenADR2/Simple/2.0b\\n'"),
    ('[openadr]\nvtn_url = "http://vtn.example:0/OpenADR2/Simple/2.0b"\n',
     "openadr.vtn_url: 'http://vtn.example:0/OpenADR2/Simple/2.0b': port must be 1..65535"),
    ('[openadr]\nproxy = "http://proxy.site:0"\n',
     "openadr.proxy: needs a host and a port, e.g. http://proxy.site:3128 or http://user:password@proxy.site:3128, "
     "got 'http://proxy.site:0'"),
    # the VTN answered 400 to each registration (XML takes no control character)
    ('[openadr]\nven_name = "building\\u0001"\n',
     "openadr.ven_name: holds a control character ('\\x01'), got 'building\\x01'"),
    ('[openadr]\nven_name = "building-42 "\n',
     "openadr.ven_name: has a blank at its start or end, taken as part of it: remove it, got 'building-42 '"),
    ('[openadr]\nreport_resource_id = " main-meter"\n',
     "openadr.report_resource_id: has a blank at its start or end, taken as part of it: remove it, got ' main-meter'"),
    ('[bacnet]\ndevice_name = "Edge\\nGateway"\n',
     "bacnet.device_name: holds a control character ('\\n'), got 'Edge\\nGateway'"),
    ('[bacnet]\ndevice_name = "   "\n',
     "bacnet.device_name: has a blank at its start or end, taken as part of it: remove it, got '   '"),
    ('[storage]\npath = "/var/lib/edge-gateway/gateway.sqlite "\n',
     "storage.path: has a blank at its start or end, taken as part of it: remove it, got "
     "'/var/lib/edge-gateway/gateway.sqlite '"),
    ('[storage]\npath = "gw\\u0000.sqlite"\n',
     "storage.path: holds a control character ('\\x00'), got 'gw\\x00.sqlite'"),
    ('[openadr]\ncert = "ven.crt\\u0000"\nkey = "ven.key"\n',
     "openadr.cert: holds a control character ('\\x00'), got 'ven.crt\\x00'"),
    ('[openadr]\ncert = "ven.crt"\nkey = "ven.key\\t"\n',
     "openadr.key: holds a control character ('\\t'), got 'ven.key\\t'"),
    # copied from a web page: a zero-width space, invisible in every editor
    ('[openadr]\nven_name = "building\u200b42"\n',
     "openadr.ven_name: holds an invisible character ('\\u200b'), got 'building\\u200b42'"),
    ('[openadr]\nvtn_url = "https://vtn.example/OpenADR2/Simple/2.0b\ufeff"\n',
     "openadr.vtn_url: holds a blank, control or invisible character (pasted with it?), got "
     "'https://vtn.example/OpenADR2/Simple/2.0b\\ufeff'"),
    ('[openadr]\nca_file = " ca.pem"\n',
     "openadr.ca_file: has a blank at its start or end, taken as part of it: remove it, got ' ca.pem'"),
    # said "http: embedded null byte", naming neither the key nor the character
    ('[http]\ntoken_file = "tok\\u0000"\n', "http.token_file: holds a control character ('\\x00'), got 'tok\\x00'"),
])
def test_a_blank_or_control_character_typed_in_is_named(tmp_path, toml, line):
    p = _write(tmp_path, toml)
    with pytest.raises(ConfigError) as err:
        load_config(p, environ={})
    assert str(err.value) == f"{p}: {line}"


def test_a_variable_with_a_line_break_after_the_url_is_named():
    # a Kubernetes secret or `docker run -e` from a file keeps the file's last line break
    with pytest.raises(ConfigError, match=r"^EDGE_GATEWAY__OPENADR__VTN_URL: openadr.vtn_url: holds a blank"):
        load_config(None, environ={"EDGE_GATEWAY__OPENADR__VTN_URL": "https://vtn.example/OpenADR2/Simple/2.0b\n"})


def test_a_name_written_with_a_joiner_inside_a_word_stays_accepted():
    # a zero-width non-joiner is typed inside Persian (and Hindi ...) words, a joiner inside an emoji: refused as
    # "an invisible character", though the name is written so
    name, emoji = "\u0633\u0627\u062e\u062a\u0645\u0627\u0646\u200c\u0647\u0627", "GW \U0001f468\u200d\U0001f527"
    cfg = parse_config({"openadr": {"ven_name": name}, "bacnet": {"device_name": emoji}}, "gw.toml", environ={})
    assert (cfg.openadr.ven_name, cfg.bacnet.device_name) == (name, emoji)
    with pytest.raises(ConfigError, match="holds an invisible character"):    # at the end, it is pasted
        parse_config({"openadr": {"ven_name": name + "\u200c"}}, "gw.toml", environ={})


def test_names_and_paths_with_blanks_inside_stay_accepted(tmp_path):
    cfg = load_config(_write(tmp_path, '[bacnet]\ndevice_name = "Edge Gateway 1"\n[openadr]\nven_name = "building 42"\n'
                                       '[storage]\npath = "my data/gw.sqlite"\n'), environ={})
    assert (cfg.bacnet.device_name, cfg.openadr.ven_name, cfg.storage.path) == \
        ("Edge Gateway 1", "building 42", "my data/gw.sqlite")


@pytest.mark.parametrize("command", [["check-config"], ["run", "--config"], ["forget-forecast", "--config"]])
def test_a_nul_in_a_path_is_a_config_error_not_a_traceback(tmp_path, command):
    # run: "ValueError: embedded null byte" from the run lock; check-config: from reading openadr.cert
    p = _write(tmp_path, '[storage]\npath = "gw\\u0000.sqlite"\n[openadr]\ncert = "a\\u0000b"\nkey = "k"\n')
    res = _cli(*command, str(p), cwd=tmp_path)
    assert res.returncode == 78 and "Traceback" not in res.stderr, res.stderr
    assert "storage.path: holds a control character" in res.stderr and "openadr.cert: holds" in res.stderr


def _cfg(source: str, poll: float, stale: float = 300):
    return parse_config({"meter": {"poll_seconds": poll}, "openadr": {"telemetry_seconds": 900},
                         "forecaster": {"source": source, "input_stale_seconds": stale}}, "gw.toml", environ={})


def test_a_meter_read_no_faster_than_the_input_goes_stale_is_a_warning_as_the_only_source():
    # the forecast points went to fault between every two readings of a meter that answered each one, with
    # "WARNING forecaster has no power input: no meter reading for 300 s". A warning, not an error: the gateway of a
    # site upgraded with it refused to start, its demand response with it, for a fault of the forecaster's points
    assert _cfg("meter", 300).warnings() == [
        "meter.poll_seconds (300) is not under forecaster.input_stale_seconds (300): between two meter "
        "readings the forecaster has no power input, and the forecast, power-rate-of-change and load flag points "
        "show fault: read the meter more often or raise input_stale_seconds"]
    assert _cfg("meter", 299).warnings() == []


def test_the_same_is_a_warning_with_source_auto_and_nothing_without_the_meter():
    # auto: the meter stands in only while the BAS does not write
    assert _cfg("auto", 600, 120).warnings() == [
        "meter.poll_seconds (600) is not under forecaster.input_stale_seconds (120): between two meter readings the "
        "forecaster has no power input, and the forecast, power-rate-of-change and load flag points show fault "
        "whenever the meter stands in for the BAS input (forecaster.source auto)"]
    assert _cfg("bacnet_input", 600, 120).warnings() == []


@pytest.mark.parametrize("where", ["a directory", "under a file"])
def test_run_refuses_a_storage_path_that_can_never_open(tmp_path, free_udp_port, free_tcp_port, where):
    # `run` started, kept everything in memory with an ERROR per part retried every 10 s, and lost it at the next
    # restart; check-config (the unit's ExecStartPre, its failure ignored; none in Docker) alone refused it
    (tmp_path / "gw.sqlite").mkdir() if where == "a directory" else (tmp_path / "data").write_text("")
    path = tmp_path / ("gw.sqlite" if where == "a directory" else "data/gw.sqlite")
    cfg = _write(tmp_path, f'[bacnet]\naddress = "127.0.0.1/8:{free_udp_port()}"\n'
                           f'[http]\naddress = "127.0.0.1:{free_tcp_port()}"\n[storage]\npath = "{path}"\n'
                           f'[openadr]\nvtn_url = "http://127.0.0.1:{free_tcp_port()}/OpenADR2/Simple/2.0b"\n')
    try:
        res = run_cli(["run", "--config", str(cfg)], timeout=20)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"run started: {err.stderr}")
    assert res.returncode == 78 and "Traceback" not in res.stderr, res.stderr
    said = (f"{path} is a directory: name a file in it, e.g. {path / 'gateway.sqlite'}" if where == "a directory"
            else f"{path}: {tmp_path / 'data'} is not a directory")
    assert res.stderr.splitlines() == [f"configuration error: {cfg}: storage.path: {said}"]


def test_a_file_nested_too_deeply_is_named_not_a_traceback(tmp_path):
    # tomllib recurses per level: "RecursionError: maximum recursion depth exceeded" from check-config and run
    p = _write(tmp_path, "a = " + "[" * 100000 + "]" * 100000 + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(p, environ={})
    assert str(err.value) == f"{p}: not valid TOML: arrays or tables nested too deeply"
    with pytest.raises(ConfigError, match="^EDGE_GATEWAY__FORECASTER__HOLIDAYS: forecaster.holidays: Input should be "
                                          "a list"):
        load_config(None, environ={"EDGE_GATEWAY__FORECASTER__HOLIDAYS": "[" * 100000})


@pytest.mark.parametrize("name", ["EDGEGATEWAY__METER__POLL_SECONDS", "EDGE__GATEWAY__METER__POLL_SECONDS",
                                  "EDGE_GATEWAYS__METER__POLL_SECONDS"])
def test_a_squashed_or_plural_prefix_is_named_not_ignored(name):
    # the first two were not read and not said (check-config ok, the setting not applied); the third was named with
    # "did you mean EDGE_GATEWAY__S__METER__POLL_SECONDS?"
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={name: "5"})
    assert str(err.value) == (f"{name}: not read: the variables are EDGE_GATEWAY__<SECTION>__<KEY>, in upper case "
                              f"with two underscores between the parts; did you mean "
                              f"EDGE_GATEWAY__METER__POLL_SECONDS?")


def test_another_programs_variable_that_looks_alike_is_left_alone():
    assert load_config(None, environ={"EDGEGATEWAY_HOME": "/opt", "EDGEGATEWAY": "1"}).meter.poll_seconds == 10


@pytest.mark.parametrize("url, reason", [
    # a request URL copied from the VTN's log or the utility's mail: every request went to .../EiRegisterParty/
    # EiRegisterParty, a 404 at each registration, check-config ok
    ("https://vtn.example/OpenADR2/Simple/2.0b/EiRegisterParty",
     "ends in the OpenADR service EiRegisterParty (the gateway appends each service to it): did you mean "
     "'https://vtn.example/OpenADR2/Simple/2.0b'?"),
    ("https://ven:s3cret@vtn.example/OpenADR2/Simple/2.0b/OadrPoll/",
     "ends in the OpenADR service OadrPoll (the gateway appends each service to it): did you mean "
     "'https://ven:***@vtn.example/OpenADR2/Simple/2.0b'?"),
    ("https://vtn.example/OpenADR2/Simple/2.0b?site=42",
     "takes no ?query or #fragment (the gateway appends /EiEvent, /OadrPoll ... to it), got "
     "'https://vtn.example/OpenADR2/Simple/2.0b?site=42'"),
    ("https://vtn.example/OpenADR2/Simple/2.0b#top",
     "takes no ?query or #fragment (the gateway appends /EiEvent, /OadrPoll ... to it), got "
     "'https://vtn.example/OpenADR2/Simple/2.0b#top'"),
])
def test_a_vtn_url_the_services_cannot_be_appended_to_is_refused(url, reason):
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={"EDGE_GATEWAY__OPENADR__VTN_URL": url})
    assert str(err.value) == f"EDGE_GATEWAY__OPENADR__VTN_URL: openadr.vtn_url: {reason}"


def test_a_vtn_url_with_a_slash_after_it_stays_accepted():
    url = "https://vtn.example/OpenADR2/Simple/2.0b/"
    assert load_config(None, environ={"EDGE_GATEWAY__OPENADR__VTN_URL": url}).openadr.vtn_url == url


@pytest.mark.parametrize("meter, said", [
    # read, the gateway answered for the meter: "analogInput 2 does not exist on the meter: check meter.object"
    ({"address": "192.168.1.20"}, "meter.address 192.168.1.20 is the gateway's own BACnet device (bacnet.address "
                                  "192.168.1.20/24:47808): give the meter's address"),
    # through itself as the router: "no response from 12345:2 within 5 s (through router ...)"
    ({"router": "192.168.1.20:47808"}, "meter.router 192.168.1.20:47808 is the gateway's own BACnet device "
                                       "(bacnet.address 192.168.1.20/24:47808): give the ip:port of the router to "
                                       "the meter's network"),
])
def test_a_meter_at_the_gateways_own_address_is_refused(meter, said):
    with pytest.raises(ConfigError) as err:
        parse_config({"bacnet": {"address": "192.168.1.20/24:47808"}, "meter": meter}, "gw.toml", environ={})
    assert str(err.value) == f"gw.toml: {said}"


def test_a_meter_on_the_same_box_at_another_port_stays_accepted():
    cfg = parse_config({"bacnet": {"address": "192.168.1.20/24:47808"}, "meter": {"address": "192.168.1.20:47809"}},
                       "gw.toml", environ={})
    assert cfg.meter.address == "192.168.1.20:47809"


def test_a_relative_token_file_not_found_says_where_it_was_looked_for(tmp_path, monkeypatch):
    # "token_file secrets/token: No such file or directory" from a service whose working directory is /
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={"EDGE_GATEWAY__HTTP__TOKEN_FILE": "secrets/token"})
    assert str(err.value) == (f"defaults, EDGE_GATEWAY__HTTP__TOKEN_FILE: http: token_file secrets/token "
                              f"(looked for in "
                              f"{tmp_path}): No such file or directory")


@pytest.mark.parametrize("data, said", [
    # readings and forecasts above input_max_kw are refused: the flag stayed off for good, check-config ok
    ({"bacnet": {"input_max_kw": 400}, "forecaster": {"high_load_kw": 450}},
     "forecaster.high_load_kw (450) is above bacnet.input_max_kw (400): power above that is refused, so "
     "high-load-conditions never turns on"),
    ({"bacnet": {"input_min_kw": 0}, "forecaster": {"low_load_kw": -5}},
     "forecaster.low_load_kw (-5) is below bacnet.input_min_kw (0): power below that is refused, so "
     "low-load-conditions never turns on"),
])
def test_a_load_threshold_beyond_the_input_bounds_is_a_warning(data, said):
    # not an error: the flag is all it costs, and an upgraded site's gateway would not start
    assert parse_config(data, "gw.toml", environ={}).warnings() == [said]


@pytest.mark.parametrize("data, flag, forecast", [
    # a sub-meter's site: input_min_kw 0 refuses a negative reading, its plant off each night forecasts 0 kW
    ({"bacnet": {"input_min_kw": 0}, "forecaster": {"low_load_kw": 0}}, HysteresisFlag(False, 0.03, 0, 0), 0.0),
    ({"bacnet": {"input_max_kw": 500}, "forecaster": {"high_load_kw": 500}}, HysteresisFlag(True, 0.03, 0, 0), 500.0),
])
def test_a_load_threshold_at_an_input_bound_is_reached_so_accepted(data, flag, forecast):
    # refused "could never turn on" (an upgraded site's gateway did not start), though the bound is a value taken and
    # the flag turns on at its threshold
    cfg = parse_config(data, "gw.toml", environ={})
    threshold = cfg.forecaster.low_load_kw if not flag.above else cfg.forecaster.high_load_kw
    assert flag.update(0.0, forecast, threshold) is True


def test_thresholds_inside_the_input_bounds_stay_accepted():
    cfg = parse_config({"bacnet": {"input_min_kw": 0, "input_max_kw": 2000},
                        "forecaster": {"high_load_kw": 450, "low_load_kw": 120}}, "gw.toml", environ={})
    assert (cfg.forecaster.high_load_kw, cfg.forecaster.low_load_kw) == (450, 120)


def test_check_config_says_an_http_address_name_that_does_not_resolve(tmp_path):
    # check-config said ok; `run` then refused "http.address ...: cannot listen: Name or service not known"
    p = _write(tmp_path, '[http]\naddress = "dashboard.invalid:8000"\ntoken = "0123456789abcdef0123"\n'
                         f'[storage]\npath = "{tmp_path / "gw.sqlite"}"\n')
    res = _cli("check-config", str(p))
    assert res.returncode == 0, res.stderr
    assert (f"{p}: warning: http.address: dashboard.invalid does not resolve on this machine now: `run` refuses to "
            f"start (exit 75) until it does (an IP address does not depend on a name service)") \
        in res.stdout.splitlines()


def test_an_unquoted_holiday_date_is_the_day_it_reads_as(tmp_path):
    # holidays = [2025-12-25] is a TOML date: "forecaster.holidays.0: Input should be a valid string (got date
    # datetime.date(2025, 12, 25))"
    cfg = load_config(_write(tmp_path, '[forecaster]\nholidays = [2025-12-25, "12-26"]\n'), environ={})
    assert cfg.forecaster.holidays == ("2025-12-25", "12-26")


def test_a_ca_file_for_a_plain_http_vtn_is_a_warning():
    # the TLS files filled in, the scheme left at the example's http://: check-config said nothing of the CA
    cfg = parse_config({"openadr": {"vtn_url": "http://127.0.0.1:8080/OpenADR2/Simple/2.0b", "ca_file": "ca.pem"}},
                       "gw.toml", environ={})
    assert cfg.warnings() == ["openadr.ca_file is set but openadr.vtn_url is plain http://: it is not used, nothing "
                              "checks the VTN's certificate (https:// meant?)"]


@pytest.mark.parametrize("toml, said", [
    # "Cannot overwrite a value (at line 3, column 17)" named no key
    ('[meter]\npoll_seconds = 5\npoll_seconds = 6\n',
     "Cannot overwrite a value (at line 3, column 17): 'poll_seconds = 6' (a key given twice?)"),
    ('[meter]\npoll_seconds: 5\n',
     "Expected '=' after a key in a key/value pair (at line 2, column 13): 'poll_seconds: 5'"),
    # never a secret nor a URL's password: check-config's errors go to the journal
    ('[http]\ntoken = "s3cret\n',
     "Illegal character '\\n' (at line 2, column 16): 'token = ... (a secret: not shown)'"),
    ('[openadr]\nvtn_url = "https://ven:s3cret@vtn.example/x" x\n',
     "Expected newline or end of document after a statement (at line 2, column 46): "
     "'vtn_url = \"https://ven:***@vtn.example/x\" x'"),
    # a secret in an inline table: the line's key is the section's (helper verify45: the token was shown)
    ('http = { address = "0.0.0.0:8000", token = "s3cret-s3cret-s3cret" x}\n',
     "Unclosed inline table (at line 1, column 67): 'http = ... (a secret: not shown)'"),
    ('openadr = { "passphrase" = "s3cret", x }\n',
     "Expected '=' after a key in a key/value pair (at line 1, column 40): 'openadr = ... (a secret: not shown)'"),
    # the line named is inside a multi-line secret: it was quoted, a piece of the secret with it
    ('[openadr]\npassphrase = """s3cret\nmore\\q s3cret"""\n',
     "Unescaped '\\' in a string (at line 3, column 7): 'passphrase = ... (a secret: not shown)'"),
    # a multi-line secret closed before the line named, a multi-line name open at it: the line is the name's
    ("[http]\ntoken = '''\ns3cret\n'''\n[bacnet]\ndevice_name = \"\"\"a\nb\\q\"\"\"\n",
     "Unescaped '\\' in a string (at line 7, column 4): 'b\\\\q\"\"\"'"),
])
def test_a_syntax_error_quotes_its_line(tmp_path, toml, said):
    p = _write(tmp_path, toml)
    with pytest.raises(ConfigError) as err:
        load_config(p, environ={})
    assert str(err.value) == f"{p}: not valid TOML: {said}"


def test_a_token_with_a_blank_around_it_is_refused_without_showing_it(tmp_path):
    # "Authorization: Bearer s3cr3t-... " reaches the API trimmed: every request with it was refused 401
    p = _write(tmp_path, '[http]\ntoken = "0123456789abcdef-s3cr3t "\n')
    with pytest.raises(ConfigError) as err:
        load_config(p, environ={})
    assert str(err.value) == (f"{p}: http.token: has a blank at its start or end, which no HTTP client sends (a "
                              f"header's value is trimmed): remove it")


@pytest.mark.parametrize("value", [" 10.0.0.1", "10.0.0.1:0"])
def test_a_bad_bbmd_address_is_shown_as_written(value):
    # " 10.0.0.1" was said as "got ' 10.0.0.1:47808'", a port the installer never wrote
    with pytest.raises(ConfigError) as err:
        parse_config({"bacnet": {"bbmd_address": value}}, "gw.toml", environ={})
    assert str(err.value) == (f"gw.toml: bacnet.bbmd_address: must be an IPv4 address with an optional :port 1..65535, "
                              f"e.g. 10.0.0.5:47808, got {value!r}")


@pytest.mark.parametrize("address, kind", [
    # bound anyway: "BACnet device ... answering on 224.0.0.1/8:47808", and no unicast ever reached it
    ("224.0.0.1/8:47808", "a multicast address"),
    # each broadcast (the start's I-Am) failed in a "RuntimeError('no broadcast')" traceback
    ("192.168.1.255/24:47808", "the broadcast address of 192.168.1.0/24"),
    ("192.168.1.0/24:47808", "the network address of 192.168.1.0/24"),
    ("0.0.0.0/24:47808", "any address"),
])
def test_a_bacnet_address_no_nic_can_hold_is_refused(address, kind):
    with pytest.raises(ConfigError) as err:
        parse_config({"bacnet": {"address": address}}, "gw.toml", environ={})
    ip = address.partition("/")[0]
    assert str(err.value) == (f"gw.toml: bacnet.address: {address!r}: {ip} is {kind}, not a station's: give the "
                              f"address of the NIC that faces the BAS")


def test_a_point_to_point_31_takes_both_its_addresses():
    for address in ("10.0.0.0/31:47808", "10.0.0.1/31:47808"):    # RFC 3021: no network or broadcast address
        assert parse_config({"bacnet": {"address": address}}, "gw.toml", environ={}).bacnet.address == address


def test_log_level_below_a_section_says_where_it_goes(tmp_path):
    # appended at the end of the file, it lands in the last section: "forecaster.log_level: unknown key; edge-gateway
    # 0.4.2 has no such key: remove it (one a newer version added, after a downgrade?)"
    p = _write(tmp_path, '[forecaster]\ntimezone = "Europe/Rome"\nlog_level = "DEBUG"\n')
    with pytest.raises(ConfigError) as err:
        load_config(p, environ={})
    assert str(err.value) == (f"{p}: forecaster.log_level: unknown key; log_level goes at the top of the file, above "
                              f"the first [section] line (a key below one belongs to that section)")


@pytest.mark.parametrize("toml, line", [
    # "should be 50 or 60 (got '60')": the quotes were the whole mistake, and nothing said so
    ('[openadr]\npower_hertz = "60"\n', "openadr.power_hertz: Input should be 50 or 60 (got '60'): write the number "
                                        "without quotes"),
    ('[bacnet]\ndevice_id = "500001"\n', "bacnet.device_id: Input should be a valid integer (got str '500001'): write "
                                         "the number without quotes"),
    ('[meter]\npoll_seconds = "10"\n', "meter.poll_seconds: Input should be a valid number (got str '10'): write the "
                                       "number without quotes"),
    ('[http]\nenabled = "false"\n', "http.enabled: Input should be a valid boolean (got str 'false'): write true or "
                                    "false, in lower case, without quotes"),
    ('[http]\nenabled = 0\n', "http.enabled: Input should be a valid boolean (got int 0): write true or false"),
    ('log_level = "debug"\n', "log_level: Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR' (got 'debug'): write "
                              "it in upper case"),
    ('[openadr]\nven_name = 4711\n', "openadr.ven_name: Input should be a valid string (got int 4711): put it in "
                                     "quotes"),
    # a PIN: still not shown
    ('[bacnet]\ndcc_password = 4711\n', "bacnet.dcc_password: Input should be a valid string (got int not shown: a "
                                        "secret): put it in quotes"),
    # no hint where none fits
    ('[openadr]\npower_hertz = "sixty"\n', "openadr.power_hertz: Input should be 50 or 60 (got 'sixty')"),
    ('[bacnet]\ndevice_id = 5.5\n', "bacnet.device_id: Input should be a valid integer (got float 5.5)"),
])
def test_a_value_of_the_wrong_toml_type_that_reads_right_says_what_to_write(tmp_path, toml, line):
    p = _write(tmp_path, toml)
    with pytest.raises(ConfigError) as err:
        load_config(p, environ={})
    assert str(err.value) == f"{p}: {line}"


def test_a_variables_boolean_in_another_case_says_what_to_write():
    # a compose file's EDGE_GATEWAY__HTTP__ENABLED=False (YAML's, Python's) is TOML's false
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={"EDGE_GATEWAY__HTTP__ENABLED": "False"})
    assert str(err.value) == ("EDGE_GATEWAY__HTTP__ENABLED: http.enabled: Input should be a valid boolean (got str "
                              "'False'): write true or false, in lower case, without quotes")


def test_a_variable_that_sets_a_section_to_a_value_says_how_to_set_its_keys():
    # EDGE_GATEWAY__METER=12345:2 (meant as the meter's address) said "put its keys under a [meter] line": a file
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={"EDGE_GATEWAY__METER": "12345:2"})
    assert str(err.value) == ("EDGE_GATEWAY__METER: meter: must be a table: set its keys with "
                              "EDGE_GATEWAY__METER__<KEY>, or an inline table EDGE_GATEWAY__METER='{key = value}' "
                              "(got str '12345:2')")


def test_a_relative_config_file_that_is_not_there_says_where_it_was_looked_for(tmp_path):
    # `--config gateway.toml` in a unit runs in its WorkingDirectory (/ by default): "gateway.toml: no such file" read
    # as if the file the operator could see beside them had vanished
    res = _cli("check-config", "gateway.toml", cwd=tmp_path)
    assert res.returncode == 78
    assert res.stderr.splitlines() == [f"configuration error: gateway.toml: no such file (looked for in {tmp_path})"]
    res = _cli("check-config", str(tmp_path / "gateway.toml"))
    assert res.stderr.splitlines() == [f"configuration error: {tmp_path / 'gateway.toml'}: no such file"]
