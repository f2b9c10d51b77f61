"""bas-shed-power (analogValue 10): the BAS says what it sheds on its own, and the forecaster learns the building's
load with that added back. Real gateway, real BACnet client stack, the routed meter simulator, a real SQLite file."""
from __future__ import annotations

import json
import logging
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from bacnet_peer import BacnetPeer
from test_gateway import fast_config, read, system  # noqa: F401 - the fixture
from test_schedule import make_event
from waiting import eventually

from bacnet_api import points as P
from bacnet_api.simulator import MeterSimulator
from ven import app
from ven.app import SHED_COMMANDS, Gateway
from ven.config import ForecasterConfig
from ven.device_restore import BACNET_DATABASE
from ven.forecast_service import ForecastService
from ven.storage import Storage
from ven.vtn_server import DemoVtn

pytestmark = pytest.mark.timeout(90)
SHED = P.BY_NAME[P.SHED_POWER].object_id
INPUT = P.BY_NAME[P.INPUT_POWER].object_id


def spy_samples(owner) -> list[float]:
    """The kW the forecaster of a Gateway or ForecastService is given, as it is given them (its own add_sample still
    runs)."""
    seen: list[float] = []
    fc = getattr(owner, "forecast", owner).forecaster
    add = fc.add_sample
    fc.add_sample = lambda t, kw: (seen.append(kw), add(t, kw))[1]
    return seen


async def test_the_shed_the_bas_commands_is_added_back_to_what_the_forecaster_learns(system, caplog):  # noqa: F811
    caplog.set_level(logging.INFO)
    vtn, meter, gateway, peer, gw = system
    # the range a commissioning tool reads off the object: no negative shed
    assert await peer.read(gw, SHED, "minPresValue") == 0.0
    assert await peer.read(gw, SHED, "maxPresValue") == pytest.approx(gateway.device.input_bounds[1])
    assert await read(peer, gw, P.SHED_POWER) == 0.0
    refused = await peer.write(gw, SHED, "presentValue", -5.0, priority=10)
    assert refused is not None and "valueOutOfRange" in str(refused), refused
    assert gateway.forecast.status()["shed_kw"] == 0.0

    seen = spy_samples(gateway)
    await eventually(lambda: seen, 10, "a meter reading reaches the forecaster")
    assert seen[-1] == pytest.approx(87.5)      # the meter, as read: nothing shed yet
    assert await peer.write(gw, SHED, "presentValue", 120.0, priority=10) is None
    assert gateway.forecast.status()["shed_kw"] == 120.0
    seen.clear()
    await eventually(lambda: seen, 10, "the next meter reading")
    assert seen[-1] == pytest.approx(87.5 + 120.0)
    # the BAS's own kW input likewise (forecaster.source auto takes it while it writes)
    assert await peer.write(gw, INPUT, "presentValue", 400.0, priority=16) is None
    assert seen[-1] == pytest.approx(520.0)
    assert json.loads(gateway.storage.load_value(SHED_COMMANDS)) == {"10": 120.0}
    scraped = gateway.metrics.shed_kw._value.get()
    assert scraped == 120.0
    status = gateway.forecast.status()
    assert status["shed_since"] is not None

    # the shed ends: relinquished, the kW learnt are the metered ones again
    assert await peer.relinquish(gw, SHED, priority=10) is None
    assert gateway.forecast.status()["shed_kw"] == 0.0 and gateway.forecast.status()["shed_since"] is None
    assert await peer.write(gw, INPUT, "presentValue", 410.0, priority=16) is None
    assert seen[-1] == pytest.approx(410.0)
    assert gateway.metrics.shed_kw._value.get() == 0.0
    said = [r.getMessage() for r in caplog.records if "shed" in r.getMessage() and r.name.startswith("ven")]
    # who wrote it: any device on the network may (bacnet.write_from empty), and it moves every sample (helper sec39)
    assert re.fullmatch(r"BAS sheds 120 kW \(bas-shed-power, from 127\.0\.0\.1:\d+\): the forecaster adds it back to "
                        r"the power it learns from", said[0]), said
    assert said[1].startswith("BAS shed ended after ") and re.search(
        r"\(bas-shed-power relinquished, from 127\.0\.0\.1:\d+\)$", said[1]), said
    assert len(said) == 2, said


async def starts_relinquished(config, peer, gw) -> None:
    """A gateway started on `config` has bas-shed-power relinquished, and the forecaster adds no shed."""
    gateway = Gateway(config)
    await gateway.start()
    try:
        assert await read(peer, gw, P.SHED_POWER) == 0.0
        assert gateway.forecast.status()["shed_kw"] == 0.0
    finally:
        await gateway.stop()


async def test_a_shed_command_survives_a_restart_and_a_bad_stored_one_is_named(tmp_path, free_udp_port,
                                                                              free_tcp_port, caplog, monkeypatch):
    # A BAS commands the shed once at its start and relinquishes it at its end: a restart in between must keep it,
    # or the forecaster learns the rest of the shed as the building's load.
    caplog.set_level(logging.INFO)
    ports = dict(bacnet_port=free_udp_port(), meter_port=free_udp_port(), vtn_port=free_tcp_port(),
                 http_port=free_tcp_port())
    config = fast_config(tmp_path, **ports)
    gw = f"127.0.0.1:{ports['bacnet_port']}"
    monkeypatch.setattr(app, "SHED_SAVE_S", 0.5)
    async with DemoVtn(port=ports["vtn_port"], poll_seconds=1.0), \
            MeterSimulator(address=f"127.0.0.1/8:{ports['meter_port']}", value=87.5), \
            BacnetPeer(free_udp_port()) as peer:
        gateway = Gateway(config)
        await gateway.start()
        try:
            assert await peer.write(gw, SHED, "presentValue", 70.0, priority=9) is None
            assert json.loads(gateway.storage.load_value(SHED_COMMANDS)) == {"9": 70.0}   # taken: kept at once
            # a BAS writing its estimate each scan: a changed kW is kept at most a minute apart (here 0.5 s), also
            # when the BAS writes nothing after it (a crash then must not bring back the kW before)
            assert await peer.write(gw, SHED, "presentValue", 72.0, priority=9) is None
            assert json.loads(gateway.storage.load_value(SHED_COMMANDS)) == {"9": 70.0}
            await eventually(lambda: json.loads(gateway.storage.load_value(SHED_COMMANDS)) == {"9": 72.0}, 5,
                             "the changed kW written when its minute is up")
            assert await peer.write(gw, SHED, "presentValue", 75.0, priority=9) is None
            assert json.loads(gateway.storage.load_value(SHED_COMMANDS)) == {"9": 72.0}
            assert gateway.forecast.status()["shed_kw"] == 75.0
            began = gateway.forecast.status()["shed_since"]
        finally:
            await gateway.stop()    # and at the stop

        gateway = Gateway(config)
        await gateway.start()
        try:
            assert await peer.read(gw, SHED, "priorityArray") == [None] * 8 + [75.0] + [None] * 7
            assert gateway.forecast.status()["shed_kw"] == 75.0
            # the shed's age goes on: the dashboard's and the alert's "held over 12 hours" started over at each restart
            assert gateway.forecast.status()["shed_since"] == began
            seen = spy_samples(gateway)
            await eventually(lambda: seen, 10, "a meter reading reaches the forecaster")
            assert seen[-1] == pytest.approx(87.5 + 75.0)
            # a lowered bacnet.input_max_kw: the BAS still holds its command, taken at the bound and said
            gateway.storage.save_value(SHED_COMMANDS, json.dumps({"9": 2e5}))
        finally:
            await gateway.stop()

        gateway = Gateway(config)
        await gateway.start()
        try:
            bound = gateway.device.input_bounds[1]
            assert await read(peer, gw, P.SHED_POWER) == pytest.approx(bound)
            # a file edited by hand: the point starts relinquished, and says why
            gateway.storage.save_value(SHED_COMMANDS, '{"9": "lots"}')
        finally:
            await gateway.stop()

        await starts_relinquished(config, peer, gw)
    sheds = [r.getMessage() for r in caplog.records if r.getMessage().startswith("BAS shed")]
    assert re.fullmatch(r"BAS sheds 70 kW \(bas-shed-power, from 127\.0\.0\.1:\d+\): the forecaster adds it back to "
                        r"the power it learns from", sheds[0]), sheds
    assert sheds[1].startswith("BAS shed of 75 kW (bas-shed-power) goes on from before the start, since "), sheds
    said = [r.getMessage() for r in caplog.records if "bas-shed-power commands" in r.getMessage()]
    assert said[0] == "bas-shed-power commands restored from before the restart: 75 at priority 9 -> 75", said
    assert said[1] == (f"stored bas-shed-power commands outside 0..{bound:g} kW (bacnet.input_min_kw..input_max_kw, "
                       f"or the point's lowest, changed since?): 200000 at priority 9, restored at the bound"), said
    assert said[3] == ("stored bas-shed-power commands '{\"9\": \"lots\"}' unreadable (priorities 1..16 with finite "
                       "kW expected): the point starts relinquished"), said
    assert len(said) == 4, said


async def test_a_shed_ended_or_begun_by_writing_0_at_the_priority_held_is_kept_at_once(system):  # noqa: F811
    # a changed kW is put off up to a minute; a shed ended by writing 0 was too, and a crash in that minute brought
    # it back at the next start, added to every sample until the BAS's next shed (it writes only at changes)
    vtn, meter, gateway, peer, gw = system
    kept = lambda: json.loads(gateway.storage.load_value(SHED_COMMANDS))   # noqa: E731
    assert await peer.write(gw, SHED, "presentValue", 70.0, priority=9) is None
    assert kept() == {"9": 70.0}
    assert await peer.write(gw, SHED, "presentValue", 0.0, priority=9) is None
    assert kept() == {"9": 0.0} and gateway.storage.load_value(SHED_COMMANDS + ":since") == ""
    assert await peer.write(gw, SHED, "presentValue", 65.0, priority=9) is None    # and one begun from a held 0
    assert kept() == {"9": 65.0}
    assert gateway.storage.load_value(SHED_COMMANDS + ":since") != ""


def test_metered_power_with_the_shed_over_the_bound_is_learnt_at_the_bound(tmp_path, caplog):
    # 430 kW metered and a 120 kW shed under bacnet.input_max_kw 500: the sum was refused whole, a hole in the history
    # at every peak of the shed, and the line named 550 kW, which no meter read and no point holds
    caplog.set_level(logging.INFO)
    service = ForecastService(ForecasterConfig(source="meter"), str(tmp_path / "gw.sqlite"), publish=print,
                              min_kw=0.0, max_kw=500.0)
    seen = spy_samples(service)
    service.on_meter(1.8e9, 450.0)
    service.on_shed(1.8e9 + 1, 120.0)
    for i in range(3):
        service.on_meter(1.8e9 + 10 + 10 * i, 430.0 - 30 * i)
    service.on_shed(1.8e9 + 60, None)
    service.on_meter(1.8e9 + 70, 460.0)
    assert seen == [450.0, 500.0, 500.0, 490.0, 460.0] and service.forecaster.rejected == 0
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert said == ["meter 430 kW with bas-shed-power 120 kW added is over bacnet.input_max_kw (500 kW): learnt as "
                    "500 kW while it is, for the rest of this shed"], said


@pytest.mark.parametrize("since, begun_again", [("1e12", False), ("-1e12", True), ("1e20", False), ("100.0", True)])
async def test_a_stored_shed_start_out_of_range_or_from_an_unset_clock_does_not_stop_the_start(
        tmp_path, free_udp_port, free_tcp_port, since, begun_again):
    # a damaged or hand-edited file made every start raise (a date past year 9999, or before 1); a start stamped by a
    # clock not yet set (1970 on a box without a battery clock) is begun again, and the file put right
    ports = dict(bacnet_port=free_udp_port(), meter_port=free_udp_port(), vtn_port=free_tcp_port(),
                 http_port=free_tcp_port())
    gateway = Gateway(fast_config(tmp_path, **ports))
    gateway.storage.save_value(SHED_COMMANDS, json.dumps({"9": 70.0}))
    gateway.storage.save_value(SHED_COMMANDS + ":since", since)
    async with MeterSimulator(address=f"127.0.0.1/8:{ports['meter_port']}", value=87.5):
        try:
            await gateway.start()
            status = gateway.forecast.status()
            assert status["shed_kw"] == 70.0
            if begun_again:
                assert status["shed_since"] > 1.7e9
                assert float(gateway.storage.load_value(SHED_COMMANDS + ":since")) > 1.7e9, "the file put right"
        finally:
            await gateway.stop()


@pytest.mark.parametrize("commanded, event_in_force", [(True, True), (True, False), (False, False)])
async def test_a_damaged_stored_shed_start_is_named_and_the_shed_goes_on(tmp_path, free_udp_port, free_tcp_port, caplog,
                                                                         commanded, event_in_force):
    # A byte of the file changed under the stored start of the shed in force: it read as none, the shed taken as
    # begun at this start with nothing said, its 12 hours ("held for over 12 hours") counted over again
    caplog.set_level(logging.INFO)
    ports = dict(bacnet_port=free_udp_port(), meter_port=free_udp_port(), vtn_port=free_tcp_port(),
                 http_port=free_tcp_port())
    config = fast_config(tmp_path, **ports)
    key, began = SHED_COMMANDS + ":since", f"{time.time() - 3 * 3600:.6f}"
    event_start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=2)
    store = Storage(config.storage.path)
    store.save_value(SHED_COMMANDS, json.dumps({"9": 70.0} if commanded else {}))
    store.save_value(key, began)
    if event_in_force:
        store.save_event(make_event("shed-for-it", [2], event_start, 4 * 3600))
    store.close()
    data = bytearray(Path(config.storage.path).read_bytes())
    at = data.index(began.encode())
    data[at + 4] = ord("#")
    Path(config.storage.path).write_bytes(data)
    found = began[:4] + "#" + began[5:]
    gateway = Gateway(config)
    async with MeterSimulator(address=f"127.0.0.1/8:{ports['meter_port']}", value=87.5):
        start = time.time()
        await gateway.start()
        try:
            status = gateway.forecast.status()
            kept = gateway.storage.load_value(key)
        finally:
            await gateway.stop()
    said = [r for r in caplog.records if key in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "WARNING", [r.getMessage() for r in said]
    assert said[0].getMessage().startswith(f"stored {key} '{found}' unreadable (Unix seconds expected): "), said
    if not commanded:
        assert status["shed_kw"] == 0.0 and status["shed_since"] is None and kept == ""
        assert said[0].getMessage().endswith("no shed is commanded (bas-shed-power relinquished or 0): none in "
                                             "force, cleared")
        return
    assert status["shed_kw"] == 70.0, "the shed goes on"
    assert float(kept) == status["shed_since"], "the file put right"
    if event_in_force:
        assert status["shed_since"] == event_start.timestamp()
        assert said[0].getMessage().endswith(f"the 70 kW shed restored from its commands goes on, its age counted "
                                             f"from the start of event shed-for-it ({event_start.isoformat()}), in "
                                             f"force at level 2")
    else:
        assert start <= status["shed_since"] <= time.time()
        assert said[0].getMessage().endswith("its age counted from now (no event in force to date it)")


async def test_a_shed_kept_from_before_a_run_without_the_point_is_not_brought_back(tmp_path, free_udp_port,
                                                                                   free_tcp_port, caplog):
    # Rolled back to a release without bas-shed-power, the BAS's relinquish at the end of its shed was refused there
    # (unknown-object); back on this one, the stored 20 kW came back, "goes on from before the start", and was added
    # to every sample learnt until the BAS wrote the point again (helper upgrade39 W1)
    caplog.set_level(logging.INFO)
    ports = dict(bacnet_port=free_udp_port(), meter_port=free_udp_port(), vtn_port=free_tcp_port(),
                 http_port=free_tcp_port())
    config = fast_config(tmp_path, **ports)
    gw = f"127.0.0.1:{ports['bacnet_port']}"
    async with BacnetPeer(free_udp_port()) as peer:
        gateway = Gateway(config)
        await gateway.start()
        try:
            assert await peer.write(gw, SHED, "presentValue", 20.0, priority=8) is None
        finally:
            await gateway.stop()
        storage = Storage(config.storage.path)      # as the earlier release's run left it: no such object
        db = json.loads(storage.load_value(BACNET_DATABASE))
        db["objects"] = [o for o in db["objects"] if not o.endswith(" " + P.SHED_POWER)]
        storage.save_value(BACNET_DATABASE, json.dumps(db))
        storage.close()
        for _ in range(2):      # and not at the start after that either
            await starts_relinquished(config, peer, gw)
    said = [r.getMessage() for r in caplog.records if "bas-shed-power commands" in r.getMessage()]
    assert said == ["stored bas-shed-power commands {\"8\": 20.0} not restored: the last run (an earlier version?) "
                    "served no bas-shed-power, so what the BAS wrote since never reached them"], said
