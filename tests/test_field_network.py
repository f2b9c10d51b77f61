"""The network a box next to a BAS meets: `edge-gateway run` started before its NIC has the address
bacnet.address or http.address names (DHCP late, a link up after the service), and the address or the link
going away and coming back while it runs. The gateway runs as a real process in a namespace of the test's own
(tests/netns.py); the BAS and the meter's router are BACnet stacks on the other end of the link."""
from __future__ import annotations

import asyncio
import subprocess
import sys

import aiohttp
import pytest
from bacnet_peer import BacnetPeer
from gateway_process import START_S, GatewayProcess, waiting_for_its_address, write_config
from netns import absent_address, linked_netns  # noqa: F401 - a fixture
from waiting import eventually

from bacnet_api import points as P
from bacnet_api.simulator import MeterSimulator
from cli_run import run_cli
from ven.clock_sync import NOT_SYNCHRONIZED

NOT_THERE = "is not on any interface of this machine"


async def healthz(url: str) -> int | None:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            async with session.get(url) as answer:
                return answer.status
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return None


@pytest.mark.timeout(240)
async def test_addresses_that_come_after_the_service_are_waited_for(tmp_path, free_udp_port,
                                                                     linked_netns):  # noqa: F811
    ns = linked_netns
    bacnet_ip, http_ip = ns.ip(1), ns.ip(3)   # the BAS NIC's address, and the operator API's on another
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=47808, http_port=8000, storage=tmp_path / "gw.sqlite", ven_name="late-nic",
                 device_id=500311, bacnet_ip=f"{bacnet_ip}/24", http_ip=http_ip, http_token="late-nic-token")
    gateway = GatewayProcess(config, tmp_path / "gateway.log", prefix=ns.exec_prefix)
    device = f"{bacnet_ip}:47808"
    async with BacnetPeer(free_udp_port(), host=ns.host_ip, prefix=24, timeout=1.0) as bas:
        try:
            gateway.start()
            await eventually(lambda: NOT_THERE in gateway.log() or not gateway.alive, START_S, "the gateway waiting")
            assert gateway.alive, gateway.log()

            ns.add_address(bacnet_ip)
            # the BACnet device does not wait for the operator API's address
            assert await eventually(lambda: bas.who_is(device), 30, "I-Am from the device"), gateway.log()
            # the API starts after the forecaster, seconds after the device under load
            await eventually(lambda: f"http.address {http_ip}:8000: {http_ip} {NOT_THERE}" in gateway.log(), START_S,
                             "the API waiting for its address")
            assert await healthz(f"http://{http_ip}:8000/healthz") is None

            ns.add_address(http_ip)
            await eventually(lambda: healthz(f"http://{http_ip}:8000/healthz"), 30, "/healthz answering")
            assert await healthz(f"http://{http_ip}:8000/healthz") == 200
            assert await bas.who_is(device)
        finally:
            code = gateway.stop()
    text = gateway.log()
    assert code == 0, text
    assert "Traceback" not in text and "configuration error" not in text, text
    # one line when each wait starts, one when it ends
    lines = text.splitlines()
    assert sum(NOT_THERE in line for line in lines) == 2, text
    assert sum(f"bacnet.address {bacnet_ip}/24:47808: {bacnet_ip} is there after" in line for line in lines) == 1
    assert sum(f"http dashboard on http://{http_ip}:8000/ (bearer token required), its address there after" in line
               for line in lines) == 1, text


@pytest.mark.timeout(int(START_S) + 30)   # a gateway process's start (START_S), then its stop
async def test_a_stop_while_waiting_for_the_address_is_clean(tmp_path, free_tcp_port):
    # no namespace needed: nothing is sent while the gateway waits
    gateway = waiting_for_its_address(tmp_path, absent_address("198.18.255.77"), "no-nic", free_tcp_port())
    try:
        gateway.start()
        await eventually(lambda: NOT_THERE in gateway.log() or not gateway.alive, START_S, "the gateway waiting")
        assert gateway.alive, gateway.log()
    finally:
        code = gateway.stop()
    text = gateway.log()
    assert code == 0, text
    assert "SIGTERM: stopping" in text and "Traceback" not in text, text
    assert "BACnet device" not in text and not (tmp_path / "gw.sqlite").exists(), text   # nothing was started


@pytest.mark.timeout(240)
async def test_the_address_and_the_link_go_away_and_come_back(tmp_path, free_udp_port, linked_netns):  # noqa: F811
    ns = linked_netns
    ns.add_address(ns.ip(1))
    meter_port = free_udp_port()
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=47808, http_port=8000, storage=tmp_path / "gw.sqlite", ven_name="flaky-nic",
                 device_id=500312, bacnet_ip=f"{ns.ip(1)}/24", meter_port=meter_port, meter_host=ns.host_ip,
                 meter_timeout_seconds=2.0)  # the faults counted are the outages', not a read slow on a busy machine
    # a fault's end waits for 5 good reads in a row and the settle period (doubled for the second outage): at the
    # helper's 0.5 s and 1 s that was 2 s and 3 s of each outage's 6 s
    text = config.read_text()
    assert "poll_seconds = 0.5\n" in text and "settle_seconds = 1\n" in text, text
    config.write_text(text.replace("poll_seconds = 0.5\n", "poll_seconds = 0.25\n")
                      .replace("settle_seconds = 1\n", "settle_seconds = 0.5\n"))
    gateway = GatewayProcess(config, tmp_path / "gateway.log", prefix=ns.exec_prefix)
    device, meter_power = f"{ns.ip(1)}:47808", P.BY_NAME[P.METER_POWER].object_id
    outages = (("the address (a DHCP renewal)", lambda: ns.del_address(ns.ip(1)), lambda: ns.add_address(ns.ip(1))),
               ("the link (the cable)", lambda: ns.set_link(False), lambda: ns.set_link(True)))
    async with MeterSimulator(address=f"{ns.host_ip}/24:{meter_port}", value=87.5), \
            BacnetPeer(free_udp_port(), host=ns.host_ip, prefix=24, timeout=1.0) as bas:

        async def meter_value():
            return await bas.read(device, meter_power, "presentValue")

        try:
            gateway.start()
            assert await eventually(meter_value, START_S, "the meter's value through the gateway") == 87.5
            for n, (what, away, back) in enumerate(outages, start=1):
                away()
                await eventually(lambda: gateway.log().count("meter fault:") == n, 30, f"{what}: meter fault logged")
                assert not await bas.who_is(device), what
                back()
                await eventually(lambda: bas.who_is(device), 30, f"{what}: I-Am again")
                await eventually(lambda: gateway.log().count("meter answering again") == n, 30,
                                 f"{what}: the meter's return logged")
                assert await meter_value() == 87.5, what
        finally:
            code = gateway.stop()
    text = gateway.log()
    assert code == 0, text
    assert "Traceback" not in text, text
    # per outage one line when the meter fault starts and one when it ends
    assert text.count("meter fault:") == text.count("meter answering again") == 2, text


def device_gateway(tmp_path, ns, ip: str, ven_name: str, device_id: int) -> GatewayProcess:
    """`edge-gateway run` in the namespace, its BACnet device on ip/24 there, nothing else it needs answering."""
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=47808, http_port=8000, storage=tmp_path / "gw.sqlite", ven_name=ven_name,
                 device_id=device_id, bacnet_ip=f"{ip}/24")
    return GatewayProcess(config, tmp_path / "gateway.log", prefix=ns.exec_prefix)


@pytest.mark.timeout(int(START_S) + 60)   # an exec'd gateway process's start (START_S), then the test
async def test_a_mask_that_is_not_the_interfaces_is_said_and_waited_for(tmp_path, free_udp_port,
                                                                        linked_netns):  # noqa: F811
    # /24 configured, the NIC /25 (a LAN re-subnetted, a typo): the log said "answering" and "ready", check-config
    # ok, and the device answered nothing, not even a directed read, and never read the meter (helper links41)
    ns = linked_netns
    ip = ns.ip(1)
    ns._in_namespace("addr", "add", f"{ip}/25", "dev", ns.DEVICE)
    gateway = device_gateway(tmp_path, ns, ip, "masked", 500313)
    check = subprocess.run([*ns.exec_prefix, sys.executable, "-m", "ven.cli", "check-config", str(gateway.config)],
                           capture_output=True, text=True, timeout=60)
    unmasked = f"bacnet.address {ip}/24:47808: its broadcast address {ns.subnet}.255 is not this machine's"
    assert check.returncode == 0 and f"warning: {unmasked}" in check.stdout, check
    device = f"{ip}:47808"
    async with BacnetPeer(free_udp_port(), host=ns.host_ip, prefix=24, timeout=1.0) as bas:
        try:
            gateway.start()
            await eventually(lambda: unmasked in gateway.log() or not gateway.alive, START_S, "the gateway waiting")
            assert gateway.alive and "answering on" not in gateway.log(), gateway.log()
            ns._in_namespace("addr", "del", f"{ip}/25", "dev", ns.DEVICE)      # the mask set right
            ns.add_address(ip)
            assert await eventually(lambda: bas.who_is(device), 30, "I-Am from the device"), gateway.log()
        finally:
            code = gateway.stop()
    text = gateway.log()
    assert code == 0 and "Traceback" not in text, text
    assert text.count(unmasked) == 1, text
    assert text.count(f"bacnet.address {ip}/24:47808: its interface has that mask after") == 1, text


@pytest.mark.timeout(int(START_S) + 90)   # an exec'd gateway process's start (START_S), then the test
async def test_an_address_or_link_gone_while_the_gateway_runs_is_said_once_and_its_return(tmp_path, free_udp_port,
                                                                                 linked_netns):  # noqa: F811
    # a DHCP lease that changed under a running gateway: the BAS got no answer, /api/status said nothing of the
    # address, and the log blamed the meter's router (helper links41)
    ns = linked_netns
    ip = ns.ip(1)
    ns.add_address(ip)
    gateway = device_gateway(tmp_path, ns, ip, "leased", 500314)
    device = f"{ip}:47808"
    gone = f"bacnet.address {ip}/24:47808: {ip} is not on any interface of this machine now (a DHCP lease"
    unplugged = f"bacnet.address {ip}/24:47808: the link of {ns.DEVICE}, which holds {ip}, is down (a cable"
    async with BacnetPeer(free_udp_port(), host=ns.host_ip, prefix=24, timeout=1.0) as bas:
        try:
            gateway.start()
            assert await eventually(lambda: bas.who_is(device), START_S, "I-Am from the device"), gateway.log()
            ns.del_address(ip)
            await eventually(lambda: gone in gateway.log() or not gateway.alive, 15, "the address missed")
            ns.add_address(ip)
            back = f"bacnet.address {ip}/24:47808 is this machine's again after"
            await eventually(lambda: back in gateway.log(), 15, "its return said")
            assert await eventually(lambda: bas.who_is(device), 30, "I-Am from the device again"), gateway.log()
            ns.set_link(False)      # the cable: the address stays, and sends go nowhere without an error
            await eventually(lambda: unplugged in gateway.log() or not gateway.alive, 15, "the link missed")
            ns.set_link(True)
            await eventually(lambda: gateway.log().count(back) == 2, 15, "the link's return said")
            assert await eventually(lambda: bas.who_is(device), 30, "I-Am after the link"), gateway.log()
        finally:
            code = gateway.stop()
    text = gateway.log()
    assert code == 0 and "Traceback" not in text, text
    assert text.count(gone) == 1 and text.count(unplugged) == 1, text


@pytest.mark.timeout(int(START_S) + 60)   # an exec'd gateway process's start (START_S), then the test
async def test_a_start_with_the_link_taken_down_waits_for_it_and_says_it_as_the_link(tmp_path, free_udp_port,
                                                                               linked_netns):  # noqa: F811
    # the interface taken down at boot (ip link set down): the address is there, its broadcast address is not (its
    # route goes with the link), bacpypes3 would wait on it, and the device's I-Am went nowhere (helper links41 C3)
    ns = linked_netns
    ip = ns.ip(1)
    ns.add_address(ip)
    ns.set_link(False)
    gateway = device_gateway(tmp_path, ns, ip, "unplugged", 500315)
    down = f"bacnet.address {ip}/24:47808: the link of {ns.DEVICE}, which holds {ip}, is down (a cable, a switch port)"
    async with BacnetPeer(free_udp_port(), host=ns.host_ip, prefix=24, timeout=1.0) as bas:
        try:
            gateway.start()
            await eventually(lambda: down in gateway.log() or not gateway.alive, START_S, "the gateway waiting")
            assert gateway.alive and "answering on" not in gateway.log(), gateway.log()
            ns.set_link(True)
            assert await eventually(lambda: bas.who_is(f"{ip}:47808"), 30, "I-Am from the device"), gateway.log()
        finally:
            code = gateway.stop()
    text = gateway.log()
    assert code == 0 and "Traceback" not in text and "broadcast address" not in text, text
    assert text.count(down) == 1 and text.count(f"bacnet.address {ip}/24:47808: {ip} is there after") == 1, text


@pytest.mark.timeout(int(START_S) + 60)   # an exec'd gateway process's start (START_S), then the test
async def test_a_start_with_the_cable_out_starts_says_the_link_and_announces_when_it_is_in(tmp_path, free_udp_port,
                                                                                         linked_netns):  # noqa: F811
    # a carrier lost (the switch's end down) leaves the address and its broadcast address: the gateway starts, the
    # VTN, telemetry and the API with it (waiting for the link blocked them all, helper rev41), and says the link
    from netns import _ip
    ns = linked_netns
    ns.add_address(ns.ip(1))    # the box's own address on the NIC
    ip = ns.ip(2)               # BACnet's, a second one on it: SIOCGIFADDR knows only the first (helper verify41)
    ns.add_address(ip)
    assert _ip("link", "set", ns.host_device, "down").returncode == 0      # the cable: no carrier on gw0
    gateway = device_gateway(tmp_path, ns, ip, "no-carrier", 500316)
    down = f"bacnet.address {ip}/24:47808: the link of {ns.DEVICE}, which holds {ip}, is down (a cable, a switch port)"
    async with BacnetPeer(free_udp_port(), host=ns.host_ip, prefix=24, timeout=1.0) as bas:
        try:
            gateway.start()
            await eventually(lambda: down in gateway.log() or not gateway.alive, START_S, "the link said")
            assert gateway.alive and "answering on" in gateway.log(), gateway.log()
            assert _ip("link", "set", ns.host_device, "up").returncode == 0
            await eventually(lambda: f"bacnet.address {ip}/24:47808 is this machine's again after" in gateway.log(),
                             15, "the link's return said")
            assert await eventually(lambda: bas.who_is(f"{ip}:47808"), 30, "I-Am from the device"), gateway.log()
        finally:
            code = gateway.stop()
    text = gateway.log()
    assert code == 0 and "Traceback" not in text and "waiting for it" not in text, text
    assert text.count(down) == 1, text


def test_check_config_says_when_an_address_is_on_no_interface(tmp_path, free_tcp_port):
    # `run` waits for such an address, so a mistyped one would wait forever: the installer's check says so
    absent = "198.18.255.78"
    config = tmp_path / "gw.toml"
    write_config(config, bacnet_port=47808, http_port=free_tcp_port(), storage=tmp_path / "gw.sqlite",
                 ven_name="no-nic", bacnet_ip=f"{absent}/24", http_ip=absent, http_token="t0ken")
    res = run_cli(["check-config", str(config)], timeout=60)
    assert res.returncode == 0, res
    for key in ("bacnet.address", "http.address"):
        assert f"warning: {key}: {absent} is not on any interface of this machine now" in res.stdout, res.stdout
    write_config(config, bacnet_port=47808, http_port=free_tcp_port(), storage=tmp_path / "gw.sqlite",
                 ven_name="here")
    res = run_cli(["check-config", str(config)], timeout=60)
    # the machine's clock (the test machines run no NTP) is the only warning left: none is about the file
    assert res.returncode == 0 and not [w for w in res.stdout.splitlines()
                                        if "warning" in w and not w.endswith(NOT_SYNCHRONIZED)], res
