"""bacnet.address as this machine has it while the device runs: its IP on an interface, its broadcast address the
interface's, its link up. The probe binds real sockets on loopback and reads a sysfs tree of the test's; the watch's
log is driven by a probe of the test's."""
from __future__ import annotations

import functools
import logging

import bacnet_api.own_address as own
from bacnet_api.own_address import ADDRESS, LINK, Missing, OwnAddressWatch, broadcast_of, missing
from netns import absent_address


def test_the_broadcast_address_is_the_one_bacpypes3_binds():
    assert broadcast_of("192.168.1.20/24:47808") == "192.168.1.255"
    assert broadcast_of("10.1.2.3/16:47809") == "10.1.255.255"
    assert broadcast_of("10.1.2.3/32:47808") is None        # no broadcast (a BBMD's foreign device)


def test_an_address_this_machine_has_is_not_missing_and_one_it_lacks_is_named():
    assert missing("127.0.0.1/8:47808") is None
    ip = absent_address("198.18.255.77")
    assert missing(f"{ip}/24:47808") == Missing(ADDRESS, f"{ip} is not on any interface of this machine")


def test_the_watch_says_once_when_the_address_goes_and_once_when_it_is_back(caplog):
    caplog.set_level(logging.INFO, logger="bacnet_api.own_address")
    gone = Missing(ADDRESS, "198.18.91.1 is not on any interface of this machine")
    answers = iter([None, gone, gone, None, None])
    backs = []
    watch = OwnAddressWatch("198.18.91.1/24:47808", probe=lambda address: next(answers),
                            on_back=lambda: backs.append(1))
    watch.check()
    assert watch.problem is None and watch.local_trouble() is None and backs == []
    watch.check()
    assert watch.status()["problem"] == gone.text and watch.status()["kind"] == ADDRESS
    assert watch.status()["since"] is not None and watch.local_trouble() == gone.text
    watch.check()
    watch.check()
    watch.check()
    assert watch.status() == {"problem": None, "kind": None, "since": None} and backs == [1]
    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in said] == [logging.WARNING, logging.INFO], said
    assert said[0][1].startswith("bacnet.address 198.18.91.1/24:47808: 198.18.91.1 is not on any interface of this "
                                 "machine now (a DHCP lease that changed?")
    assert said[1][1].startswith("bacnet.address 198.18.91.1/24:47808 is this machine's again after ")


def test_a_link_that_is_down_is_said_for_the_interface_holding_the_address(tmp_path, monkeypatch):
    net = tmp_path / "net"
    (net / "eth7").mkdir(parents=True)
    (net / "eth7" / "operstate").write_text("down\n")
    monkeypatch.setattr(own, "_interface_of", lambda ip: "eth7" if ip == "127.0.0.1" else None)
    monkeypatch.setattr(own, "_link_down", functools.partial(own._link_down, net=net))
    assert missing("127.0.0.1/8:47808") == Missing(LINK, "the link of eth7, which holds 127.0.0.1, is down (a cable, "
                                                         "a switch port)")
    # a cable out: its broadcast address stays bindable, and a start does not wait for the link
    assert own.must_wait("127.0.0.1/8:47808") is None
    (net / "eth7" / "operstate").write_text("lowerlayerdown\n")     # a VLAN on a NIC whose cable is out
    assert missing("127.0.0.1/8:47808").kind == LINK
    (net / "eth7" / "operstate").write_text("up\n")
    assert missing("127.0.0.1/8:47808") is None


def test_the_loopback_interface_holds_its_address_and_its_link_counts_as_up():
    assert own._interface_of("127.0.0.1") == "lo" and not own._link_down("lo")   # lo says "unknown", not "down"


def test_a_look_that_raises_is_said_once_and_the_watch_goes_on(caplog):
    import asyncio

    async def run():
        looks = iter([RuntimeError("a bug"), RuntimeError("a bug")])

        def probe(address):
            got = next(looks, None)
            if isinstance(got, Exception):
                raise got
            return got
        watch = OwnAddressWatch("127.0.0.1/8:47808", probe=probe, period=0.01)
        watch.start()
        await asyncio.sleep(0.2)
        await watch.stop()
        return watch

    caplog.set_level(logging.INFO, logger="bacnet_api.own_address")
    watch = asyncio.run(run())
    assert not watch.bug.failing
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1 and "watching bacnet.address 127.0.0.1/8:47808" in said[0], said


def test_a_second_address_on_a_nic_is_tied_to_it_by_its_subnet_s_route(tmp_path):
    from bacnet_api.host_network import subnet_interface
    table = tmp_path / "route"
    table.write_text("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
                     "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"     # default via 192.0.2.1
                     "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"     # 192.0.2.0/24
                     "eth1\t800200C0\t00000000\t0001\t0\t0\t0\t80FFFFFF\t0\t0\t0\n")    # 192.0.2.128/25
    aton = __import__("socket").inet_aton
    assert subnet_interface(aton("192.0.2.20"), table) == "eth0"
    assert subnet_interface(aton("192.0.2.200"), table) == "eth1"      # the longer mask
    assert subnet_interface(aton("10.0.0.1"), table) is None             # only the default route: no subnet
