"""bacnet.address as this machine has it while the device runs: its IP on an interface, its broadcast address the
interface's. The probe binds real sockets on loopback; the watch's log is driven by a probe of the test's."""
from __future__ import annotations

import errno
import logging

from bacnet_api.own_address import OwnAddressWatch, broadcast_of, missing
from netns import absent_address


def test_the_broadcast_address_is_the_one_bacpypes3_binds():
    assert broadcast_of("192.168.1.20/24:47808") == "192.168.1.255"
    assert broadcast_of("10.1.2.3/16:47809") == "10.1.255.255"
    assert broadcast_of("10.1.2.3/32:47808") is None        # no broadcast (a BBMD's foreign device)


def test_an_address_this_machine_has_is_not_missing_and_one_it_lacks_is_named():
    assert missing("127.0.0.1/8:47808") is None
    ip = absent_address("198.18.255.77")
    assert missing(f"{ip}/24:47808") == f"{ip} is not on any interface of this machine"


def test_the_watch_says_once_when_the_address_goes_and_once_when_it_is_back(caplog):
    caplog.set_level(logging.INFO, logger="bacnet_api.own_address")
    answers = iter([None, "198.18.91.1 is not on any interface of this machine",
                    "198.18.91.1 is not on any interface of this machine", None, None])
    watch = OwnAddressWatch("198.18.91.1/24:47808", probe=lambda address: next(answers))
    watch.check()
    assert watch.problem is None and watch.local_trouble() is None
    watch.check()
    assert watch.status()["problem"] == "198.18.91.1 is not on any interface of this machine"
    assert watch.status()["since"] is not None
    assert watch.local_trouble() == "198.18.91.1 is not on any interface of this machine"
    watch.check()
    watch.check()
    watch.check()
    assert watch.status() == {"problem": None, "since": None}
    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in said] == [logging.WARNING, logging.INFO], said
    assert said[0][1].startswith("bacnet.address 198.18.91.1/24:47808: 198.18.91.1 is not on any interface of this "
                                 "machine now (a DHCP lease that changed?")
    assert said[1][1].startswith("bacnet.address 198.18.91.1/24:47808 is this machine's again after ")


def test_a_link_that_is_down_is_said_for_the_interface_holding_the_address(tmp_path, monkeypatch):
    import bacnet_api.own_address as own
    net = tmp_path / "net"
    (net / "eth7").mkdir(parents=True)
    (net / "eth7" / "operstate").write_text("down\n")
    monkeypatch.setattr(own, "_interface_of", lambda ip: "eth7" if ip == "127.0.0.1" else None)
    monkeypatch.setattr(own, "_link_down", lambda name: own.Path.read_text(net / name / "operstate").strip() == "down")
    assert missing("127.0.0.1/8:47808") is None                 # the start does not wait for a link
    assert missing("127.0.0.1/8:47808", link=True) == "the link of eth7, which holds 127.0.0.1, is down (a cable, a " \
                                                        "switch port)"
    (net / "eth7" / "operstate").write_text("up\n")
    assert missing("127.0.0.1/8:47808", link=True) is None


def test_the_loopback_interface_holds_its_address_and_its_link_counts_as_up():
    from bacnet_api.own_address import _interface_of, _link_down
    assert _interface_of("127.0.0.1") == "lo" and not _link_down("lo")   # lo says "unknown", not "down"


def test_only_a_send_refused_on_this_side_is_local_trouble():
    watch = OwnAddressWatch("127.0.0.1/8:47808")
    watch.send_failed(OSError(errno.ECONNREFUSED, "Connection refused"))     # the peer's port: not ours
    assert watch.local_trouble() is None
    watch.send_failed(OSError(errno.ENETUNREACH, "Network is unreachable"))
    assert watch.local_trouble() == "a send from this machine failed: Network is unreachable"
