"""`edge-gateway read-meter` where it stands wrong, not the meter: beside the running gateway (its port taken), and
with --bind on another port but no meter.router (the router broadcast goes to that port). Each failure says what to
change, as README step 5 does. The real CLI in a subprocess, a real socket holding the port."""
from __future__ import annotations

import socket

import pytest
from cli_run import run_cli

pytestmark = pytest.mark.timeout(60)


def read_meter(config, *bind: str) -> tuple[int, str, str]:
    res = run_cli(["read-meter", "--config", str(config), *bind], timeout=45)
    return res.returncode, res.stdout, res.stderr


@pytest.mark.parametrize("router", ["127.0.0.1:{meter}", ""])
def test_a_taken_port_says_to_bind_another(tmp_path, free_udp_port, router):
    port = free_udp_port()
    config = tmp_path / "gateway.toml"
    config.write_text(f'[bacnet]\naddress = "127.0.0.1/8:{port}"\n'
                      f'[meter]\nrouter = "{router.format(meter=free_udp_port())}"\ntimeout_seconds = 0.5\n')
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gateway:   # the running gateway, as far as the port goes
        gateway.bind(("127.0.0.1", port))
        code, out, err = read_meter(config)
    # the hint alone: the meter was never asked, and "no value: ... Address already in use" above it read as the
    # meter's failure
    lines = err.strip().splitlines()
    assert code == 1 and out == "" and len(lines) == 1, err
    hint = (f"read-meter: UDP port {port} is taken (by the gateway, running on bacnet.address?), so the meter was not "
            f"read: beside a running gateway give --bind another port of the same address (e.g. --bind "
            f"127.0.0.1/8:{port + 1})")
    if router:
        assert lines[0] == hint
    else:   # the other port's broadcast would find no router: said now, not at the next try
        assert lines[0] == hint + (", and name the meter's router (meter.router, or EDGE_GATEWAY__METER__ROUTER="
                                   "ip:port): a broadcast from another port than the site's BACnet port reaches no "
                                   "router")


def test_bind_on_another_port_without_a_router_says_to_name_it(tmp_path, free_udp_port):
    own, other = free_udp_port(), free_udp_port()
    config = tmp_path / "gateway.toml"
    config.write_text(f'[bacnet]\naddress = "127.0.0.1/8:{own}"\n[meter]\nrouter = ""\ntimeout_seconds = 0.5\n')
    code, out, err = read_meter(config, "--bind", f"127.0.0.1/8:{other}")
    # the cause first, then what the read met
    lines = err.strip().splitlines()
    assert code == 1 and out == "" and len(lines) == 2, err
    assert lines[1] == ("meter 12345:2 analogInput 2 presentValue: no value: no router to network 12345 answered "
                        "Who-Is-Router-To-Network")
    assert lines[0] == (f"read-meter: --bind's port {other} is not the BACnet port {own}: name the meter's router "
                        "(meter.router, or EDGE_GATEWAY__METER__ROUTER=ip:port): a broadcast from another port than "
                        "the site's BACnet port reaches no router")


def test_a_read_that_fails_at_the_meter_gets_no_hint(tmp_path, free_udp_port):
    # the silent meter's line alone, as before: the hints are for where read-meter stood
    own = free_udp_port()
    config = tmp_path / "gateway.toml"
    config.write_text(f'[bacnet]\naddress = "127.0.0.1/8:{own}"\n'
                      f'[meter]\nrouter = "127.0.0.1:{free_udp_port()}"\ntimeout_seconds = 0.5\n')
    code, out, err = read_meter(config, "--bind", f"127.0.0.1/8:{free_udp_port()}")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "no response" in lines[0], err
